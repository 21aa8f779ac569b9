// The training loop (see trainer.h).
#include "worker/engine/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
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
                                std::vector<int32_t>& targets) {
  const int64_t available = val.NumEvalBatches(cfg.batch, cfg.seq);
  const int64_t n = std::min<int64_t>(cfg.eval_batches, available);
  if (n <= 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "validation set has too few tokens for one batch of ", cfg.batch, "x", cfg.seq));
  }
  double total = 0;
  const ActiveLayerSet full = ActiveLayerSet::Full(cfg.model.num_layers);
  for (int64_t i = 0; i < n; ++i) {
    RETURN_IF_ERROR(val.GetEvalBatch(i, cfg.batch, cfg.seq, inputs.data(), targets.data()));
    if (cfg.model.kind == ModelKind::kBert) {
      MlmOptions mlm{cfg.model.vocab_size, cfg.mask_id, 0.15};
      ApplyMlmMask(mlm, kEvalMaskSeed, i, 0, cfg.batch, cfg.seq, inputs.data(), targets.data());
    }
    ASSIGN_OR_RETURN(double loss, model.Forward(inputs.data(), targets.data(), cfg.batch, cfg.seq,
                                                full, /*training=*/false));
    total += loss;
  }
  return total / static_cast<double>(n);
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

}  // namespace

absl::Status Train(const TrainerConfig& cfg, const StepCallback& on_step, TrainResult* result,
                   bool keep_params) {
  RETURN_IF_ERROR(cfg.model.Validate());
  RETURN_IF_ERROR(ValidatePathSchedule(cfg.schedule, cfg.model.num_layers));
  if (cfg.batch <= 0 || cfg.seq <= 0 || cfg.micro_batches <= 0 || cfg.steps <= 0) {
    return absl::InvalidArgumentError("batch, seq, micro_batches and steps must be > 0");
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
  Model<float> model(cfg.model, &backend);
  model.InitWeights(cfg.init_seed != 0 ? cfg.init_seed : cfg.seed);
  AdamWOptimizer<float> optimizer(cfg.optimizer, model.layout(), &backend);

  TrainState state;
  state.seed = cfg.seed;
  if (!cfg.run_dir.empty() && cfg.resume) {
    auto latest = LatestCheckpoint(cfg.run_dir);
    if (latest.ok()) {
      RETURN_IF_ERROR(LoadCheckpoint(*latest, cfg.model, model.layout(), model.params(),
                                     optimizer.m(), optimizer.v(), &state));
      if (state.seed != cfg.seed) {
        return absl::FailedPreconditionError(
            absl::StrCat("checkpoint ", *latest, " was trained with seed ", state.seed,
                         ", this run has ", cfg.seed, ": refusing to mix runs"));
      }
      // Always said, even when quiet: silently continuing an old run would surprise.
      std::fprintf(stderr, "resumed from %s at step %lld\n", latest->c_str(),
                   static_cast<long long>(state.step));
    } else if (!absl::IsNotFound(latest.status())) {
      return latest.status();
    }
  }
  if (!cfg.run_dir.empty()) std::filesystem::create_directories(cfg.run_dir);
  MetricsCsv csv;
  RETURN_IF_ERROR(csv.Open(cfg.run_dir, state.step));

  const int B = cfg.batch, T = cfg.seq;
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  const double t_start = Now();
  StepReport last;
  double last_eval = -1;
  auto save = [&]() -> absl::Status {
    if (cfg.run_dir.empty()) return absl::OkStatus();
    return SaveCheckpoint(cfg.run_dir, cfg.model, model.layout(), model.params(), optimizer.m(),
                          optimizer.v(), state);
  };

  for (int64_t step = state.step; step < cfg.steps; ++step) {
    const double t0 = Now();
    const PathPlan plan = PlanPath(cfg.schedule, cfg.model.num_layers, cfg.seed, step);
    const ActiveLayerSet active = ToActiveSet(plan);
    StepReport r;
    r.step = step;
    r.stage = plan.stage;
    r.path_length = active.NumActive();
    double fwd = 0, bwd = 0, loss_sum = 0;
    for (int micro = 0; micro < cfg.micro_batches; ++micro) {
      BatchSpec spec;
      spec.seed = cfg.seed;
      spec.step = step;
      spec.micro_batches = cfg.micro_batches;
      spec.micro = micro;
      spec.B = B;
      spec.T = T;
      if (cfg.model.kind == ModelKind::kBert) {
        MlmOptions mlm{cfg.model.vocab_size, cfg.mask_id, 0.15};
        RETURN_IF_ERROR(train.GetMlmBatch(spec, mlm, inputs.data(), targets.data()));
      } else {
        RETURN_IF_ERROR(train.GetBatch(spec, inputs.data(), targets.data()));
      }
      const double f0 = Now();
      ASSIGN_OR_RETURN(double loss, model.Forward(inputs.data(), targets.data(), B, T, active,
                                                  /*training=*/true));
      const double f1 = Now();
      model.Backward(1.0f / static_cast<float>(cfg.micro_batches));
      bwd += Now() - f1;
      fwd += f1 - f0;
      loss_sum += loss;
    }
    const double o0 = Now();
    const OptimizerStepInfo info = optimizer.Step(model.params(), model.grads(), active, step);
    r.optimizer_seconds = Now() - o0;
    r.forward_seconds = fwd;
    r.backward_seconds = bwd;
    r.loss = loss_sum / cfg.micro_batches;
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
      ASSIGN_OR_RETURN(r.eval_loss, Evaluate(model, val, cfg, inputs, targets));
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
