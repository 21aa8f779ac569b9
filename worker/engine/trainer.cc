// The training loop (see trainer.h).
#include "worker/engine/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "worker/engine/checkpoint/checkpoint.h"
#include "worker/engine/cpu/cpu_backend.h"
#include "worker/engine/data/data_loader.h"
#include "worker/engine/flops.h"
#include "worker/engine/model.h"

namespace raptr {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr uint64_t kEvalMaskSeed = 0x6576616cULL;  // eval masks never change between evals

ActiveLayerSet ToActiveSet(const PathPlan& plan) {
  const int L = static_cast<int>(plan.active.size());
  ActiveLayerSet s = ActiveLayerSet::Of(L, {});
  for (int l = 0; l < L; ++l) {
    s.set_active(l, plan.active[l]);
    s.set_scale(l, plan.scale[l]);
  }
  return s;
}

// Mean full-model loss over the first `batches` validation batches.
absl::StatusOr<double> Evaluate(Model<float>& model, const TokenDataset& val,
                                const TrainerConfig& cfg, std::vector<int32_t>& inputs,
                                std::vector<int32_t>& targets, int64_t step) {
  const int64_t available = val.NumEvalBatches(cfg.batch, cfg.seq);
  const int64_t n = std::min<int64_t>(cfg.eval_batches, available);
  if (n <= 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "validation set has too few tokens for one batch of ", cfg.batch, "x", cfg.seq));
  }
  // Weighted by scored positions, so BERT batches with more masked tokens count for more.
  double total = 0;
  int64_t scored = 0;
  // The model as it stands: every block, except under stacking, whose model at this step is
  // its first k_s blocks (the rest are not trained yet; the paper's point is that stacking
  // cannot evaluate the full model early).
  ActiveLayerSet model_now = ActiveLayerSet::Full(cfg.model.num_layers);
  if (cfg.schedule.kind == PathScheduleConfig::Kind::kStacking) {
    const PathPlan plan = PlanPath(cfg.schedule, cfg.model.num_layers, cfg.seed, step);
    for (int l = 0; l < cfg.model.num_layers; ++l) model_now.set_active(l, plan.active[l]);
  }
  for (int64_t i = 0; i < n; ++i) {
    RETURN_IF_ERROR(val.GetEvalBatch(i, cfg.batch, cfg.seq, inputs.data(), targets.data()));
    if (cfg.model.kind == ModelKind::kBert) {
      MlmOptions mlm{cfg.model.vocab_size, cfg.mask_id, 0.15};
      ApplyMlmMask(mlm, kEvalMaskSeed, i, 0, cfg.batch, cfg.seq, inputs.data(), targets.data());
    }
    ASSIGN_OR_RETURN(double loss, model.Forward(inputs.data(), targets.data(), cfg.batch, cfg.seq,
                                                model_now, /*training=*/false));
    total += loss * static_cast<double>(model.last_num_targets());
    scored += model.last_num_targets();
  }
  if (scored == 0) return absl::FailedPreconditionError("no scored positions in the eval batches");
  return total / static_cast<double>(scored);
}

// metrics.csv: one row per step; on resume, rows past the checkpoint are dropped so the file
// reads as one uninterrupted run.
class MetricsCsv {
 public:
  absl::Status Open(const std::string& run_dir, int64_t resume_step) {
    if (run_dir.empty()) return absl::OkStatus();
    path_ = run_dir + "/metrics.csv";
    std::vector<std::string> kept;
    if (resume_step > 0) {
      std::ifstream in(path_);
      std::string line;
      while (std::getline(in, line)) {
        if (kept.empty()) {
          kept.push_back(line);  // header
          continue;
        }
        int64_t step = std::atoll(line.c_str());
        if (step < resume_step) kept.push_back(line);
      }
    }
    out_.open(path_, std::ios::trunc);
    if (!out_) return absl::InternalError(absl::StrCat("cannot write ", path_));
    if (kept.empty()) {
      out_ << "step,stage,path_length,loss,eval_loss,lr,grad_norm,tokens,flops,flops_full,"
              "total_flops,total_flops_full,seconds,forward_s,backward_s,optimizer_s,eval_s\n";
    }
    for (const auto& l : kept) out_ << l << "\n";
    out_.flush();
    return absl::OkStatus();
  }
  void Write(const StepReport& r) {
    if (!out_.is_open()) return;
    out_ << absl::StrFormat(
        "%d,%d,%d,%.6f,%s,%.6g,%.6g,%d,%.6g,%.6g,%.6g,%.6g,%.5f,%.5f,%.5f,%.5f,%.5f\n", r.step,
        r.stage, r.path_length, r.loss,
        r.eval_loss >= 0 ? absl::StrFormat("%.6f", r.eval_loss) : "", r.lr, r.grad_norm, r.tokens,
        r.flops, r.flops_full, r.total_flops, r.total_flops_full, r.seconds, r.forward_seconds,
        r.backward_seconds, r.optimizer_seconds, r.eval_seconds);
    out_.flush();
  }

 private:
  std::string path_;
  std::ofstream out_;
};

// What determines a run's trajectory besides the model shape (which the checkpoint checks
// itself). A resumed run must match it, or it would silently continue with another schedule,
// learning rate or data order.
nlohmann::json RunFingerprint(const TrainerConfig& c) {
  nlohmann::json j;
  const OptimizerConfig& o = c.optimizer;
  j["optimizer"] = {{"lr", o.lr},
                    {"min_lr_ratio", o.min_lr_ratio},
                    {"warmup_steps", o.warmup_steps},
                    {"total_steps", o.total_steps},
                    {"decay", static_cast<int>(o.decay)},
                    {"beta1", o.beta1},
                    {"beta2", o.beta2},
                    {"eps", o.eps},
                    {"weight_decay", o.weight_decay},
                    {"grad_clip", o.grad_clip},
                    {"skipped", o.skipped == SkippedLayerPolicy::kFrozen ? "frozen" : "zero_grad"}};
  const PathScheduleConfig& p = c.schedule;
  nlohmann::json stages = nlohmann::json::array();
  for (const RaptrStage& st : p.stages) stages.push_back({st.path_length, st.steps});
  j["schedule"] = {
      {"kind", PathScheduleKindName(p.kind)},
      {"stages", stages},
      {"fixed_layers", p.fixed_layers},
      {"sampling", p.sampling == PathSampling::kExact ? "exact" : "bernoulli"},
      {"scaling", p.scaling == PathScaling::kInverseKeepProb ? "inverse_keep_prob" : "none"},
      {"full_warmup_steps", p.full_warmup_steps}};
  // Only the kinds that use them add these, so raptr and full runs keep the fingerprint (and
  // resume the checkpoints) they had before the baselines existed.
  if (p.kind == PathScheduleConfig::Kind::kPld) {
    j["schedule"]["pld_theta_bar"] = p.pld_theta_bar;
    j["schedule"]["pld_gamma"] = p.pld_gamma;
  }
  if (p.kind == PathScheduleConfig::Kind::kLayerDrop) {
    j["schedule"]["keep_prob"] = p.keep_prob;
    j["schedule"]["layerdrop_scale"] = p.layerdrop_scale;
  }
  j["batch"] = c.batch;
  j["seq"] = c.seq;
  j["micro_batches"] = c.micro_batches;
  j["steps"] = c.steps;
  j["seed"] = c.seed;
  j["init_seed"] = c.init_seed;
  j["mask_id"] = c.mask_id;
  return j;
}

// Names the first field where two fingerprints differ ("optimizer.lr: 0.001 vs 0.002").
std::string FirstDifference(const nlohmann::json& a, const nlohmann::json& b,
                            const std::string& prefix = "") {
  if (a.is_object() && b.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it) {
      const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
      if (!b.contains(it.key())) return key + ": missing in the checkpoint";
      std::string d = FirstDifference(it.value(), b[it.key()], key);
      if (!d.empty()) return d;
    }
    return "";
  }
  return a == b ? ""
                : absl::StrCat(prefix, ": ", b.dump(), " in the checkpoint, ", a.dump(), " now");
}

}  // namespace

// Weights are copied (Reddi et al. initialise new blocks from the top trained ones); optimizer
// state is a design choice. raptr starts the new blocks with fresh AdamW moments and a zero
// update count rather than copying the sources' moments: the sources' moments estimate their
// gradients in their old position of a shallower model, which says little about the new block's
// first gradients in a new position, and a fresh start with its own bias correction gives the
// first updates the usual AdamW size. It is also what most stacking implementations do (the new
// model's optimizer is created afresh). In practice the destinations have never trained (a
// stacked model only grows), so their moments are zero already; the reset of the update count
// matters under `zero_grad`, where skipped blocks count every step.
absl::Status ApplyStackingCopies(const std::vector<std::pair<int, int>>& copies,
                                 const ParamLayout& layout, float* params,
                                 AdamWOptimizer<float>& optimizer) {
  if (copies.empty()) return absl::OkStatus();
  std::vector<int64_t> steps = optimizer.layer_steps();
  const int L = static_cast<int>(steps.size());
  for (const auto& [dst, src] : copies) {
    if (dst < 0 || dst >= L || src < 0 || src >= L) {
      return absl::InvalidArgumentError(
          absl::StrCat("stacking copy ", src, " -> ", dst, ": block out of range [0, ", L, ")"));
    }
    for (const auto& other : copies) {
      if (other.second == dst) {
        return absl::InvalidArgumentError(
            absl::StrCat("stacking copies: block ", dst, " is both a destination and a source"));
      }
    }
  }
  float* m = optimizer.m();
  float* v = optimizer.v();
  for (const auto& [dst, src] : copies) {
    const ParamRange d = layout.LayerRange(dst), s = layout.LayerRange(src);
    std::copy(params + s.begin, params + s.end, params + d.begin);  // blocks share one shape
    std::fill(m + d.begin, m + d.end, 0.0f);
    std::fill(v + d.begin, v + d.end, 0.0f);
    steps[dst] = 0;
  }
  return optimizer.RestoreStepCounts(optimizer.shared_steps(), steps);
}

absl::Status Train(const TrainerConfig& cfg, const StepCallback& on_step, TrainResult* result,
                   bool keep_params) {
  RETURN_IF_ERROR(cfg.model.Validate());
  RETURN_IF_ERROR(ValidatePathSchedule(cfg.schedule, cfg.model.num_layers));
  if (cfg.batch <= 0 || cfg.seq <= 0 || cfg.micro_batches <= 0 || cfg.steps <= 0) {
    return absl::InvalidArgumentError("batch, seq, micro_batches and steps must be > 0");
  }
  const OptimizerConfig& o = cfg.optimizer;
  if (!(o.lr > 0) || !(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1) ||
      !(o.eps > 0) || !(o.weight_decay >= 0) || !(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1)) {
    return absl::InvalidArgumentError(
        "optimizer: need lr > 0, 0 <= beta1, beta2 < 1, eps > 0, weight_decay >= 0, "
        "0 <= min_lr_ratio <= 1");
  }
  if (o.warmup_steps < 0 || (o.warmup_steps > 0 && o.warmup_steps >= o.total_steps)) {
    return absl::InvalidArgumentError(absl::StrCat("warmup steps (", o.warmup_steps,
                                                   ") must be fewer than the run's steps (",
                                                   o.total_steps, ")"));
  }
  if (cfg.eval_batches <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval_batches must be > 0, got ", cfg.eval_batches));
  }
  if (cfg.seq > cfg.model.max_seq) {
    return absl::InvalidArgumentError(
        absl::StrCat("seq ", cfg.seq, " exceeds model.max_seq ", cfg.model.max_seq));
  }
  if (cfg.model.kind == ModelKind::kBert &&
      (cfg.mask_id < 0 || cfg.mask_id >= cfg.model.vocab_size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("BERT training needs the tokenizer's mask id, got ", cfg.mask_id));
  }
  ASSIGN_OR_RETURN(TokenDataset train, TokenDataset::Open(cfg.train_shards));
  ASSIGN_OR_RETURN(TokenDataset val, TokenDataset::Open(cfg.val_shards));
  for (const TokenDataset* ds : {&train, &val}) {
    for (uint16_t t : ds->tokens()) {
      if (t >= cfg.model.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "data holds token id ", t, " but model.vocab_size is ", cfg.model.vocab_size));
      }
    }
  }

  CpuBackend<float> backend;
  std::unique_ptr<Model<float>> model_owner;
  std::unique_ptr<AdamWOptimizer<float>> optimizer_owner;
  try {
    model_owner = std::make_unique<Model<float>>(cfg.model, &backend);
    optimizer_owner =
        std::make_unique<AdamWOptimizer<float>>(cfg.optimizer, model_owner->layout(), &backend);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("not enough memory for the parameters, gradients and AdamW moments of ",
                     cfg.model.DebugString()));
  }
  Model<float>& model = *model_owner;
  AdamWOptimizer<float>& optimizer = *optimizer_owner;
  model.InitWeights(cfg.init_seed != 0 ? cfg.init_seed : cfg.seed);
  const nlohmann::json fingerprint = RunFingerprint(cfg);

  TrainState state;
  state.seed = cfg.seed;
  if (!cfg.run_dir.empty()) {
    auto latest = LatestCheckpoint(cfg.run_dir);
    if (!latest.ok() && !absl::IsNotFound(latest.status())) return latest.status();
    if (latest.ok() && !cfg.resume) {
      // Training over it would interleave two runs' checkpoints in one directory.
      return absl::FailedPreconditionError(
          absl::StrCat(cfg.run_dir, " already holds a run (", *latest,
                       "): resume it, or train into a fresh run directory"));
    }
    if (latest.ok()) {
      RETURN_IF_ERROR(LoadCheckpoint(*latest, cfg.model, model.layout(), model.params(),
                                     optimizer.m(), optimizer.v(), &state));
      const nlohmann::json extra =
          nlohmann::json::parse(state.extra_json, nullptr, /*allow_exceptions=*/false);
      if (extra.is_discarded() || !extra.contains("run") || !extra.contains("adam")) {
        return absl::DataLossError(
            absl::StrCat("checkpoint ", *latest, " lacks the run description (state.extra)"));
      }
      const std::string diff = FirstDifference(fingerprint, extra["run"]);
      if (!diff.empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat("checkpoint ", *latest, " belongs to a run with other settings (", diff,
                         "): refusing to mix runs; use a fresh run directory"));
      }
      RETURN_IF_ERROR(
          optimizer.RestoreStepCounts(extra["adam"].value("shared_steps", int64_t{0}),
                                      extra["adam"].value("layer_steps", std::vector<int64_t>{})));
      // Always said, even when quiet: silently continuing an old run would surprise.
      std::fprintf(stderr, "resumed from %s at step %lld\n", latest->c_str(),
                   static_cast<long long>(state.step));
    }
  }
  if (state.step >= cfg.steps) {
    std::fprintf(stderr, "run already complete: %lld of %lld steps done\n",
                 static_cast<long long>(state.step), static_cast<long long>(cfg.steps));
  }
  if (!cfg.run_dir.empty()) std::filesystem::create_directories(cfg.run_dir);
  MetricsCsv csv;
  RETURN_IF_ERROR(csv.Open(cfg.run_dir, state.step));

  const int B = cfg.batch, T = cfg.seq;
  // One step's micro-batches; evaluation uses the first B x T of them.
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T * cfg.micro_batches),
      targets(inputs.size());
  const double t_start = Now();
  StepReport last;
  double last_eval = -1;
  auto save = [&]() -> absl::Status {
    if (cfg.run_dir.empty()) return absl::OkStatus();
    nlohmann::json extra;
    extra["run"] = fingerprint;
    extra["adam"] = {{"shared_steps", optimizer.shared_steps()},
                     {"layer_steps", optimizer.layer_steps()}};
    state.extra_json = extra.dump();
    return SaveCheckpoint(cfg.run_dir, cfg.model, model.layout(), model.params(), optimizer.m(),
                          optimizer.v(), state);
  };

  for (int64_t step = state.step; step < cfg.steps; ++step) {
    const double t0 = Now();
    // Stacking grows the model at the start of a stage's first step: a pure function of the
    // step, so a run resumed exactly at a transition (from the checkpoint written at the end of
    // the step before) grows it too, and one resumed later finds it grown in the checkpoint.
    const std::vector<std::pair<int, int>> copies =
        StackingCopiesAtStep(cfg.schedule, cfg.model.num_layers, step);
    if (!copies.empty()) {
      RETURN_IF_ERROR(ApplyStackingCopies(copies, model.layout(), model.params(), optimizer));
      if (cfg.log_every > 0) {
        std::string pairs;
        for (const auto& [dst, src] : copies) absl::StrAppend(&pairs, " ", src, "->", dst);
        std::fprintf(stderr, "step %lld: stacking grows the model, blocks copied:%s\n",
                     static_cast<long long>(step + 1), pairs.c_str());
      }
    }
    const PathPlan plan = PlanPath(cfg.schedule, cfg.model.num_layers, cfg.seed, step);
    const ActiveLayerSet active = ToActiveSet(plan);
    StepReport r;
    r.step = step;
    r.stage = plan.stage;
    r.path_length = active.NumActive();
    double fwd = 0, bwd = 0, loss_sum = 0;
    // All micro-batches first: the loss is the mean over every scored position of the step, so
    // the gradient normaliser (1 / all targets) must be known before the first Backward.
    // Batches are pure functions of (seed, step, micro), so this is cheap and changes nothing.
    int64_t step_targets = 0;
    for (int micro = 0; micro < cfg.micro_batches; ++micro) {
      BatchSpec spec;
      spec.seed = cfg.seed;
      spec.step = step;
      spec.micro_batches = cfg.micro_batches;
      spec.micro = micro;
      spec.B = B;
      spec.T = T;
      int32_t* in = inputs.data() + static_cast<size_t>(micro) * B * T;
      int32_t* tg = targets.data() + static_cast<size_t>(micro) * B * T;
      if (cfg.model.kind == ModelKind::kBert) {
        MlmOptions mlm{cfg.model.vocab_size, cfg.mask_id, 0.15};
        RETURN_IF_ERROR(train.GetMlmBatch(spec, mlm, in, tg));
      } else {
        RETURN_IF_ERROR(train.GetBatch(spec, in, tg));
      }
      for (size_t i = 0; i < static_cast<size_t>(B) * T; ++i) step_targets += tg[i] >= 0 ? 1 : 0;
    }
    for (int micro = 0; micro < cfg.micro_batches && step_targets > 0; ++micro) {
      const int32_t* in = inputs.data() + static_cast<size_t>(micro) * B * T;
      const int32_t* tg = targets.data() + static_cast<size_t>(micro) * B * T;
      const double f0 = Now();
      ASSIGN_OR_RETURN(double loss, model.Forward(in, tg, B, T, active, /*training=*/true));
      const double f1 = Now();
      RETURN_IF_ERROR(model.Backward(1.0f / static_cast<float>(step_targets)));
      bwd += Now() - f1;
      fwd += f1 - f0;
      loss_sum += loss * static_cast<double>(model.last_num_targets());
    }
    const double o0 = Now();
    const OptimizerStepInfo info = optimizer.Step(model.params(), model.grads(), active, step);
    r.optimizer_seconds = Now() - o0;
    r.forward_seconds = fwd;
    r.backward_seconds = bwd;
    r.loss = step_targets > 0 ? loss_sum / static_cast<double>(step_targets) : 0.0;
    if (!std::isfinite(r.loss)) {
      return absl::InternalError(absl::StrCat("training loss is ", r.loss, " at step ", step,
                                              ": diverged (lower the learning rate?)"));
    }
    r.lr = info.lr;
    r.grad_norm = info.grad_norm;
    r.tokens = static_cast<int64_t>(B) * T * cfg.micro_batches;
    r.flops =
        static_cast<double>(TrainingFlops(cfg.model, B, T, r.path_length)) * cfg.micro_batches;
    r.flops_full = static_cast<double>(TrainingFlops(cfg.model, B, T, cfg.model.num_layers)) *
                   cfg.micro_batches;
    state.step = step + 1;
    state.tokens_seen += r.tokens;
    state.flops_spent += r.flops;
    state.flops_full += r.flops_full;
    r.total_flops = state.flops_spent;
    r.total_flops_full = state.flops_full;
    const bool last_step = state.step == cfg.steps;
    const bool stopping = cfg.stop_after >= 0 && step >= cfg.stop_after;
    r.seconds = Now() - t0;
    if (last_step || (cfg.eval_every > 0 && state.step % cfg.eval_every == 0)) {
      const double e0 = Now();
      ASSIGN_OR_RETURN(r.eval_loss, Evaluate(model, val, cfg, inputs, targets, step));
      r.eval_seconds = Now() - e0;
      last_eval = r.eval_loss;
    }
    csv.Write(r);
    if (on_step) on_step(r);
    last = r;
    if (last_step || stopping ||
        (cfg.checkpoint_every > 0 && state.step % cfg.checkpoint_every == 0)) {
      RETURN_IF_ERROR(save());
    }
    if (stopping) break;
  }
  if (result != nullptr) {
    result->steps_done = state.step;
    result->final_loss = last.loss;
    result->final_eval_loss = last_eval;
    result->total_flops = state.flops_spent;
    result->total_flops_full = state.flops_full;
    result->seconds = Now() - t_start;
    if (keep_params) {
      result->final_params.assign(model.params(), model.params() + model.layout().total());
    }
  }
  return absl::OkStatus();
}

}  // namespace raptr
