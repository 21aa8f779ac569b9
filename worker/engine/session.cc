// One rank's training state and its step, evaluation and checkpoint operations (see session.h).
#include "worker/engine/session.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <new>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/failpoint.h"
#include "common/status.h"
#include "worker/engine/data/mlm.h"
#include "worker/engine/flops.h"

namespace raptr {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Evaluation masks (BERT) never change between evaluations, so eval losses are comparable.
constexpr uint64_t kEvalMaskSeed = 0x6576616cULL;

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

// FNV-1a over raw bytes, continuing from `hash`.
uint64_t Fnv1a(const void* data, size_t bytes, uint64_t hash) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    hash ^= p[i];
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

// The most blocks a training step of this schedule can run: what the activations must hold.
int MaxTrainingPath(const PathScheduleConfig& schedule, int num_layers) {
  using Kind = PathScheduleConfig::Kind;
  const bool bounded =
      schedule.kind == Kind::kStacking ||
      (schedule.kind == Kind::kRaptr && schedule.sampling == PathSampling::kExact &&
       schedule.full_warmup_steps == 0);
  if (!bounded) return num_layers;  // any path may come up (Bernoulli draws, PLD, LayerDrop, full)
  int longest = schedule.kind == Kind::kRaptr ? static_cast<int>(schedule.fixed_layers.size()) : 1;
  for (const RaptrStage& st : schedule.stages) longest = std::max(longest, st.path_length);
  return std::min(longest, num_layers);
}

std::string Gib(double bytes) { return absl::StrFormat("%.2f GiB", bytes / (1 << 30)); }

}  // namespace

MemoryPlan PlanMemory(const TrainerConfig& config, int world_size) {
  MemoryPlan plan;
  const int local_batch = world_size > 0 ? config.batch / world_size : config.batch;
  plan.max_path = MaxTrainingPath(config.schedule, config.model.num_layers);
  plan.parameter_bytes = Model<float>::ParameterBytes(config.model);
  plan.optimizer_bytes = plan.parameter_bytes;  // m and v, one float each per parameter
  plan.attention = ResolvedAttention(config);
  plan.activation_bytes = Model<float>::ActivationBytes(config.model, local_batch, config.seq,
                                                        plan.max_path, plan.attention);
  return plan;
}

std::string MemoryPlan::DebugString() const {
  return absl::StrCat(Gib(static_cast<double>(total())), " = parameters and gradients ",
                      Gib(static_cast<double>(parameter_bytes)), " + AdamW moments ",
                      Gib(static_cast<double>(optimizer_bytes)), " + activations of a ", max_path,
                      "-block path ", Gib(static_cast<double>(activation_bytes)), " (",
                      AttentionKindName(attention), " attention)");
}

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
                    {"skipped", SkippedLayerPolicyName(o.skipped)}};
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
    // Only when not the default, so earlier PLD checkpoints keep their fingerprint.
    if (p.pld_indexing == PldIndexing::kDeepSpeed) j["schedule"]["pld_indexing"] = "deepspeed";
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

TrainingSession::TrainingSession(const TrainerConfig& config, int rank, int world_size)
    : config_(config),
      rank_(rank),
      world_size_(world_size),
      local_batch_(config.batch / world_size),
      train_(std::vector<uint16_t>{}),
      val_(std::vector<uint16_t>{}) {}

absl::StatusOr<std::unique_ptr<TrainingSession>> TrainingSession::Create(
    const TrainerConfig& cfg, int rank, int world_size, std::unique_ptr<Backend<float>> backend) {
  // The same boundary as the other calls (Guard): starting a session runs backend calls too
  // (the memory query, allocations, the weights' upload), and a CUDA error there must be a
  // Status, not std::terminate on the worker's job thread.
  try {
    return CreateUnguarded(cfg, rank, world_size, std::move(backend));
  } catch (const BackendOutOfMemory& e) {
    return absl::ResourceExhaustedError(absl::StrCat("starting the session: ", e.what()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("starting the session: out of memory");
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("starting the session: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<TrainingSession>> TrainingSession::CreateUnguarded(
    const TrainerConfig& cfg, int rank, int world_size, std::unique_ptr<Backend<float>> backend) {
  RETURN_IF_ERROR(cfg.model.Validate());
  RETURN_IF_ERROR(ValidatePathSchedule(cfg.schedule, cfg.model.num_layers));
  if (cfg.batch <= 0 || cfg.seq <= 0 || cfg.micro_batches <= 0 || cfg.steps <= 0) {
    return absl::InvalidArgumentError("batch, seq, micro_batches and steps must be > 0");
  }
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " is not in a world of ", world_size, " workers"));
  }
  if (cfg.batch % world_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("batch ", cfg.batch, " does not split over ",
                                                   world_size, " data-parallel workers"));
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
  std::unique_ptr<TrainingSession> session(new TrainingSession(cfg, rank, world_size));
  ASSIGN_OR_RETURN(session->train_, TokenDataset::Open(cfg.train_shards));
  ASSIGN_OR_RETURN(session->val_, TokenDataset::Open(cfg.val_shards));
  for (const TokenDataset* ds : {&session->train_, &session->val_}) {
    for (uint16_t t : ds->tokens()) {
      if (t >= cfg.model.vocab_size) {
        // The id itself is not named: errors reach every client, and a spec with a small
        // vocab_size would otherwise read the data out a token at a time.
        return absl::InvalidArgumentError(
            absl::StrCat(ds == &session->train_ ? "the train" : "the val",
                         " shards hold a token id >= model.vocab_size (", cfg.model.vocab_size,
                         "): they were tokenized with a larger vocabulary"));
      }
    }
  }
  if (backend == nullptr) {
    ASSIGN_OR_RETURN(backend, MakeBackend(cfg.backend));
  }
  session->backend_ = std::move(backend);
  // Attention: auto picks flash where the backend runs it at this head size; an explicit flash it
  // cannot run is the spec's error, now rather than at the first step.
  TrainerConfig resolved = cfg;
  resolved.attention = ResolvedAttention(cfg);
  if (*resolved.attention == AttentionKind::kFlash &&
      !session->backend_->SupportsFlashAttention(cfg.model.head_dim())) {
    if (cfg.attention.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "resources.attention: flash does not run on this ", session->backend_->name(),
          " backend at head size ", cfg.model.head_dim(), " (d_model / heads); use materialized"));
    }
    resolved.attention = AttentionKind::kMaterialized;
  }
  // The preflight: a run that cannot hold its longest path fails now, with the numbers, not at
  // the first long stage hours in (activations grow with the path, model.h).
  const MemoryPlan plan = PlanMemory(resolved, world_size);
  const std::optional<size_t> available = session->backend_->AvailableBytes();
  if (available.has_value() && plan.total() > *available) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the job needs ", plan.DebugString(), " of ", session->backend_->name(),
        " memory at a local batch of ", cfg.batch / world_size, "x", cfg.seq, ", but only ",
        Gib(static_cast<double>(*available)),
        " is free: lower the batch (more micro-batches or workers) or the sequence length"));
  }
  try {
    session->model_ =
        std::make_unique<Model<float>>(cfg.model, session->backend_.get(), *resolved.attention);
    session->optimizer_ = std::make_unique<AdamWOptimizer<float>>(
        cfg.optimizer, session->model_->layout(), session->backend_.get());
    // On a device every buffer of the plan now: what the preflight promised is then held, and
    // another process cannot take it before the long stages (host memory grows as paths do).
    if (!session->backend_->host_accessible()) {
      session->model_->Reserve(session->local_batch_, cfg.seq, plan.max_path);
    }
    session->inputs_.resize(static_cast<size_t>(cfg.batch) * cfg.seq * cfg.micro_batches);
    session->targets_.resize(session->inputs_.size());
  } catch (const BackendOutOfMemory& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("not enough memory for ", plan.DebugString(), ": ", e.what()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("not enough memory for the parameters, gradients and AdamW moments of ",
                     cfg.model.DebugString()));
  }
  session->model_->InitWeights(cfg.init_seed != 0 ? cfg.init_seed : cfg.seed);
  session->fingerprint_ = RunFingerprint(cfg);
  session->state_.seed = cfg.seed;
  return session;
}

// The boundary: the backends report errors by exception (CUDA's std::runtime_error, any
// allocation's std::bad_alloc); callers get a Status and the process lives on to report it.
template <typename F>
auto TrainingSession::Guard(const char* what, F body) -> decltype(body()) {
  try {
    return body();
  } catch (const BackendOutOfMemory& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, " at step ", state_.step, ": ", e.what()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, " at step ", state_.step, ": out of memory"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, " at step ", state_.step, ": ", e.what()));
  }
}

absl::Status TrainingSession::Restore(const std::string& checkpoint_dir) {
  return Guard("restore", [&] { return RestoreUnguarded(checkpoint_dir); });
}

absl::StatusOr<std::string> TrainingSession::Save(const std::string& run_dir) {
  return Guard("checkpoint save", [&] { return SaveUnguarded(run_dir); });
}

absl::StatusOr<StepOutcome> TrainingSession::RunStep(const StepInput& input,
                                                     GradientReducer* reducer) {
  return Guard("training step", [&] { return RunStepUnguarded(input, reducer); });
}

absl::StatusOr<EvalOutcome> TrainingSession::Evaluate(int batches, const ActiveLayerSet& active) {
  return Guard("evaluation", [&] { return EvaluateUnguarded(batches, active); });
}

std::string TrainingSession::DeviceFault() const {
  if (!simulated_fault_.empty()) return simulated_fault_;
  return backend_->device_fault();
}

absl::Status TrainingSession::CheckDevice() const {
  const std::string fault = DeviceFault();
  if (fault.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("the ", backend_->name(), " device is unusable: ", fault));
}

absl::Status TrainingSession::WithHostState(
    bool write_back, const std::function<absl::Status(float*, float*, float*)>& body) {
  const DeviceSpan<float> params = model_->params(), m = optimizer_->m(), v = optimizer_->v();
  if (backend_->host_accessible()) {
    backend_->Synchronize();
    return body(params.device_data(), m.device_data(), v.device_data());
  }
  // Staged: one host copy of each (the CUDA backend moves them through pinned buffers).
  std::vector<float> hp, hm, hv;
  if (write_back) {
    hp.resize(params.size());
    hm.resize(m.size());
    hv.resize(v.size());
  } else {
    hp = Download(*backend_, params);
    hm = Download(*backend_, m);
    hv = Download(*backend_, v);
  }
  RETURN_IF_ERROR(body(hp.data(), hm.data(), hv.data()));
  if (write_back) {
    Upload(*backend_, hp.data(), params);
    Upload(*backend_, hm.data(), m);
    Upload(*backend_, hv.data(), v);
  }
  return absl::OkStatus();
}

absl::Status TrainingSession::RestoreUnguarded(const std::string& checkpoint_dir) {
  RETURN_IF_ERROR(CheckDevice());
  TrainState state;
  RETURN_IF_ERROR(WithHostState(/*write_back=*/true, [&](float* params, float* m, float* v) {
    return LoadCheckpoint(checkpoint_dir, config_.model, model_->layout(), params, m, v, &state);
  }));
  const nlohmann::json extra =
      nlohmann::json::parse(state.extra_json, nullptr, /*allow_exceptions=*/false);
  if (extra.is_discarded() || !extra.contains("run") || !extra.contains("adam")) {
    return absl::DataLossError(
        absl::StrCat("checkpoint ", checkpoint_dir, " lacks the run description (state.extra)"));
  }
  const std::string diff = FirstDifference(fingerprint_, extra["run"]);
  if (!diff.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", checkpoint_dir, " belongs to a run with other settings (", diff,
                     "): refusing to mix runs; use a fresh run directory"));
  }
  RETURN_IF_ERROR(
      optimizer_->RestoreStepCounts(extra["adam"].value("shared_steps", int64_t{0}),
                                    extra["adam"].value("layer_steps", std::vector<int64_t>{})));
  state_ = state;
  CountWork();
  return absl::OkStatus();
}

absl::StatusOr<std::string> TrainingSession::SaveUnguarded(const std::string& run_dir) {
  RETURN_IF_ERROR(CheckDevice());
  std::error_code error;
  std::filesystem::create_directories(run_dir, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create checkpoint directory ", run_dir, ": ", error.message()));
  }
  nlohmann::json extra;
  extra["run"] = fingerprint_;
  extra["adam"] = {{"shared_steps", optimizer_->shared_steps()},
                   {"layer_steps", optimizer_->layer_steps()}};
  state_.extra_json = extra.dump();
  RETURN_IF_ERROR(WithHostState(/*write_back=*/false, [&](float* params, float* m, float* v) {
    return SaveCheckpoint(run_dir, config_.model, model_->layout(), params, m, v, state_);
  }));
  CountWork();
  return CheckpointPath(run_dir, state_.step);
}

absl::StatusOr<uint64_t> TrainingSession::StateDigest() {
  return Guard("state digest", [&]() -> absl::StatusOr<uint64_t> {
    RETURN_IF_ERROR(CheckDevice());
    const size_t bytes = model_->layout().total() * sizeof(float);
    uint64_t hash = 0xcbf29ce484222325ULL;
    RETURN_IF_ERROR(WithHostState(/*write_back=*/false, [&](float* params, float* m, float* v) {
      hash = Fnv1a(params, bytes, hash);
      hash = Fnv1a(m, bytes, hash);
      hash = Fnv1a(v, bytes, hash);
      return absl::OkStatus();
    }));
    return hash;
  });
}

absl::Status TrainingSession::ReduceGradients(const ActiveLayerSet& active,
                                              GradientReducer* reducer) {
  // The layout is [embeddings][block 0] .. [block L-1][final LayerNorm], each block contiguous:
  // walk it once, merging every touched slice with its touched neighbours.
  const ParamLayout& layout = model_->layout();
  std::vector<ParamRange> ranges = layout.SharedRanges();
  for (int l = 0; l < active.num_layers(); ++l) {
    if (active.active(l)) ranges.push_back(layout.LayerRange(l));
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const ParamRange& a, const ParamRange& b) { return a.begin < b.begin; });
  std::vector<ParamRange> merged;
  for (const ParamRange& r : ranges) {
    if (!merged.empty() && merged.back().end == r.begin) {
      merged.back().end = r.end;
    } else {
      merged.push_back(r);
    }
  }
  const DeviceSpan<float> grads = model_->grads();
  const bool in_place = reducer->accepts_device_memory() || backend_->host_accessible();
  if (in_place) {
    // A device reducer (NCCL) is ordered after the backward pass on the backend's stream; a host
    // one reads memory the backward pass must have finished writing.
    if (!reducer->accepts_device_memory()) backend_->Synchronize();
    std::vector<ReduceRange> ranges;
    for (const ParamRange& r : merged) {
      ranges.push_back({grads.subspan(r.begin, r.size()).device_data(), r.size()});
    }
    return reducer->AllReduceSumRanges(ranges);
  }
  for (const ParamRange& r : merged) {
    const DeviceSpan<float> slice = grads.subspan(r.begin, r.size());
    // A host collective (Gloo) over device gradients: stage each range through the host.
    staged_grads_.resize(slice.size());
    backend_->CopyToHost(staged_grads_.data(), slice.device_data(), slice.bytes());
    RETURN_IF_ERROR(reducer->AllReduceSum(staged_grads_.data(), slice.size()));
    Upload(*backend_, staged_grads_.data(), slice);
  }
  return absl::OkStatus();
}

absl::StatusOr<StepOutcome> TrainingSession::RunStepUnguarded(const StepInput& input,
                                                              GradientReducer* reducer) {
  // Tests make a step throw here, as a backend error (CUDA's are exceptions) would.
  if (FailpointHit("session.run-step")) throw std::runtime_error("failpoint session.run-step");
  RETURN_IF_ERROR(CheckDevice());
  // Tests make a step fail as a sticky device error (an illegal address) would: this call and
  // every later one fail, and DeviceFault() says why.
  if (FailpointHit("session.device-fault")) {
    simulated_fault_ = "failpoint session.device-fault (a simulated sticky device error)";
    return absl::InternalError(absl::StrCat("training step ", input.step, ": ", simulated_fault_));
  }
  const TrainerConfig& cfg = config_;
  if (input.step != state_.step) {
    return absl::FailedPreconditionError(
        absl::StrCat("asked to run step ", input.step, " but the next step is ", state_.step));
  }
  if (input.active.num_layers() != cfg.model.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("step ", input.step, ": the path has ",
                                                   input.active.num_layers(), " blocks, the model ",
                                                   cfg.model.num_layers));
  }
  const double t0 = Now();
  if (!input.copies.empty()) {
    RETURN_IF_ERROR(
        ApplyStackingCopies(input.copies, model_->layout(), model_->params(), *optimizer_));
  }
  StepOutcome out;
  const int B = cfg.batch, T = cfg.seq, b = local_batch_;
  const size_t row0 = static_cast<size_t>(rank_) * b * T;  // this rank's first token
  // The whole global batch first: the loss is the mean over every scored target of the step, so
  // the gradient normaliser (1 / global targets) must be known before the first Backward.
  // Batches are pure functions of (seed, step, micro), so this is cheap and changes nothing.
  for (int micro = 0; micro < cfg.micro_batches; ++micro) {
    BatchSpec spec;
    spec.seed = cfg.seed;
    spec.step = input.step;
    spec.micro_batches = cfg.micro_batches;
    spec.micro = micro;
    spec.B = B;
    spec.T = T;
    int32_t* in = inputs_.data() + static_cast<size_t>(micro) * B * T;
    int32_t* tg = targets_.data() + static_cast<size_t>(micro) * B * T;
    if (cfg.model.kind == ModelKind::kBert) {
      MlmOptions mlm{cfg.model.vocab_size, cfg.mask_id, 0.15};
      RETURN_IF_ERROR(train_.GetMlmBatch(spec, mlm, in, tg));
    } else {
      RETURN_IF_ERROR(train_.GetBatch(spec, in, tg));
    }
    for (size_t i = 0; i < static_cast<size_t>(B) * T; ++i) {
      const bool scored = tg[i] >= 0;
      out.global_targets += scored ? 1 : 0;
      const bool mine = i >= row0 && i < row0 + static_cast<size_t>(b) * T;
      out.local_targets += scored && mine ? 1 : 0;
    }
  }
  double loss_sum = 0;
  int64_t head_rows_sum = 0;  // the head's rows over the micro-batches (BERT: the masked ones)
  for (int micro = 0; micro < cfg.micro_batches && out.global_targets > 0; ++micro) {
    const int32_t* in = inputs_.data() + static_cast<size_t>(micro) * B * T + row0;
    const int32_t* tg = targets_.data() + static_cast<size_t>(micro) * B * T + row0;
    const double f0 = Now();
    ASSIGN_OR_RETURN(double loss, model_->Forward(in, tg, b, T, input.active, /*training=*/true));
    const double f1 = Now();
    // A rank whose rows score nothing (possible under BERT masking) still runs backward: its
    // gradient is zero but the all-reduce needs its share.
    RETURN_IF_ERROR(model_->Backward(1.0f / static_cast<float>(out.global_targets)));
    out.times.backward += Now() - f1;
    out.times.forward += f1 - f0;
    loss_sum += loss * static_cast<double>(model_->last_num_targets());
    head_rows_sum += model_->last_head_rows();
    CountWork();
  }
  if (reducer != nullptr) {
    const double a0 = Now();
    RETURN_IF_ERROR(ReduceGradients(input.active, reducer));
    out.times.allreduce = Now() - a0;
  }
  const double o0 = Now();
  const OptimizerStepInfo info = optimizer_->Step(model_->params(), model_->grads(), input.active,
                                                  input.step, input.learning_rate);
  out.times.optimizer = Now() - o0;
  out.local_loss = out.local_targets > 0 ? loss_sum / static_cast<double>(out.local_targets) : 0.0;
  if (!std::isfinite(out.local_loss) || !std::isfinite(info.grad_norm)) {
    return absl::InternalError(absl::StrCat("training loss ", out.local_loss, ", gradient norm ",
                                            info.grad_norm, " at step ", input.step,
                                            ": diverged (lower the learning rate?)"));
  }
  out.lr = info.lr;
  out.grad_norm = info.grad_norm;
  const int path_length = input.active.NumActive();
  out.local_tokens = static_cast<int64_t>(b) * T * cfg.micro_batches;
  // Blocks count per micro-batch, the head over the rows it ran on; the full model's baseline
  // runs the same head rows (a BERT full-training step would mask the same positions).
  const double head = static_cast<double>(TrainingFlops(cfg.model, b, T, 0, head_rows_sum));
  const double blocks = static_cast<double>(TrainingFlops(cfg.model, b, T, path_length, 0));
  const double blocks_full =
      static_cast<double>(TrainingFlops(cfg.model, b, T, cfg.model.num_layers, 0));
  out.local_flops = blocks * cfg.micro_batches + head;
  out.local_flops_full = blocks_full * cfg.micro_batches + head;
  state_.step = input.step + 1;
  // The checkpoint's counters are the whole job's (every rank's), as a single process would
  // count them, so a checkpoint does not depend on the world size that wrote it.
  state_.tokens_seen += out.local_tokens * world_size_;
  // Job-wide from global counts: ranks' head rows differ under BERT masking, so a rank's own
  // FLOPs times the world size would make the counters depend on the rank and the world size.
  const int64_t global_head_rows = cfg.model.kind == ModelKind::kBert
                                       ? out.global_targets
                                       : static_cast<int64_t>(B) * T * cfg.micro_batches;
  const double global_head =
      static_cast<double>(TrainingFlops(cfg.model, B, T, 0, global_head_rows));
  const double global_scale = static_cast<double>(world_size_) * cfg.micro_batches;
  state_.flops_spent += blocks * global_scale + global_head;
  state_.flops_full += blocks_full * global_scale + global_head;
  out.times.total = Now() - t0;
  return out;
}

absl::StatusOr<EvalOutcome> TrainingSession::EvaluateUnguarded(int batches,
                                                               const ActiveLayerSet& active) {
  RETURN_IF_ERROR(CheckDevice());
  const TrainerConfig& cfg = config_;
  const int B = cfg.batch, T = cfg.seq, b = local_batch_;
  const int64_t available = val_.NumEvalBatches(B, T);
  if (available <= 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("validation set has too few tokens for one batch of ", B, "x", T));
  }
  const double t0 = Now();
  EvalOutcome out;
  out.batches = static_cast<int>(std::min<int64_t>(batches, available));
  const size_t row0 = static_cast<size_t>(rank_) * b * T;
  double total = 0;
  for (int64_t i = 0; i < out.batches; ++i) {
    RETURN_IF_ERROR(val_.GetEvalBatch(i, B, T, inputs_.data(), targets_.data()));
    if (cfg.model.kind == ModelKind::kBert) {
      MlmOptions mlm{cfg.model.vocab_size, cfg.mask_id, 0.15};
      ApplyMlmMask(mlm, kEvalMaskSeed, i, 0, B, T, inputs_.data(), targets_.data());
    }
    ASSIGN_OR_RETURN(double loss, model_->Forward(inputs_.data() + row0, targets_.data() + row0, b,
                                                  T, active, /*training=*/false));
    // Weighted by scored positions, so BERT batches with more masked tokens count for more.
    total += loss * static_cast<double>(model_->last_num_targets());
    out.scored_targets += model_->last_num_targets();
    CountWork();
  }
  out.loss = out.scored_targets > 0 ? total / static_cast<double>(out.scored_targets) : 0.0;
  out.seconds = Now() - t0;
  return out;
}

}  // namespace raptr
