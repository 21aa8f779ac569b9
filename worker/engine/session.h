// TrainingSession: one rank's training state (data, model, AdamW) and the step, evaluation and
// checkpoint operations that a training loop or a coordinator's step plans drive.
//
// Train() (trainer.h) drives a session from PlanPath for a single process; raptr-worker drives
// one per rank from the coordinator's StepPlans, with a GradientReducer over Gloo. Both run the
// same code per step, so a service run and a local run of the same job agree.
//
// Data parallelism: every rank derives the step's whole global batch (a pure function of seed and
// step, cheap next to the model) and trains on its slice of each micro-batch, rows
// [rank*B/W, (rank+1)*B/W). Because every rank sees the global batch it also knows the global
// number of scored targets, so each rank scales its gradient by 1/global_targets and a SUM
// all-reduce yields exactly the single-process gradient: no extra communication for the loss
// normaliser, even for BERT whose masked-target count varies per batch.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/active_layer_set.h"
#include "worker/engine/backend.h"
#include "worker/engine/checkpoint/checkpoint.h"
#include "worker/engine/data/data_loader.h"
#include "worker/engine/model.h"
#include "worker/engine/optimizer.h"
#include "worker/engine/trainer.h"

namespace raptr {

// Sums buffers across the ranks of a data-parallel group. Every rank makes the same calls with
// the same sizes in the same order.
// One buffer of an all-reduce: `count` floats at `data`.
struct ReduceRange {
  float* data = nullptr;
  size_t count = 0;
};

class GradientReducer {
 public:
  virtual ~GradientReducer() = default;
  // Replaces data[0 .. count) on every rank by its sum over all ranks. An error (a lost peer, a
  // timeout) leaves the group unusable.
  virtual absl::Status AllReduceSum(float* data, size_t count) = 0;
  // AllReduceSum over each range, in order. A reducer may batch them (NCCL: one group call, one
  // wait); the default makes one call each.
  virtual absl::Status AllReduceSumRanges(std::span<const ReduceRange> ranges) {
    for (const ReduceRange& r : ranges) {
      absl::Status s = AllReduceSum(r.data, r.count);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  // True when AllReduceSum takes device addresses of the session's backend (NCCL on the
  // backend's GPU); false (Gloo): host memory, so a session on a GPU stages the gradients through
  // the host.
  virtual bool accepts_device_memory() const { return false; }
  // Ends the current and every later collective with an error, from any thread (the
  // coordinator's abort reaching a rank blocked on a lost peer). Default: nothing to interrupt.
  virtual void Abort() {}
};

// What one step runs: the coordinator's StepPlan, or PlanPath's for a local run.
struct StepInput {
  int64_t step = 0;  // 0-based optimizer step.
  int stage = -1;    // Schedule stage; -1 for full-model steps.
  ActiveLayerSet active;
  // Learning rate of the update; nullopt: the optimizer's schedule for `step`.
  std::optional<double> learning_rate;
  // Stacking growth to apply before the step: (destination, source) pairs.
  std::vector<std::pair<int, int>> copies;
};

// Wall time of a step's phases on this rank, seconds.
struct StepTimes {
  double total = 0;
  double forward = 0;
  double backward = 0;
  double allreduce = 0;
  double optimizer = 0;
};

// One step's outcome on this rank.
struct StepOutcome {
  double local_loss = 0;        // Mean over this rank's scored targets (0 when it has none).
  int64_t local_targets = 0;    // This rank's scored targets.
  int64_t global_targets = 0;   // Scored targets of the whole global batch.
  int64_t local_tokens = 0;     // Tokens this rank consumed.
  double local_flops = 0;       // FLOPs this rank spent.
  double local_flops_full = 0;  // FLOPs this rank would have spent training every block.
  double lr = 0;
  double grad_norm = 0;  // Global, before clipping (identical on every rank).
  StepTimes times;
};

// This rank's share of an evaluation.
struct EvalOutcome {
  double loss = 0;  // Mean over this rank's scored targets.
  int64_t scored_targets = 0;
  int batches = 0;
  double seconds = 0;
};

class TrainingSession {
 public:
  // Validates `config`, opens the data and builds the model and optimizer (weights initialised
  // from the config's seed). `rank` of `world_size` selects the data slice; world_size must
  // divide config.batch. The session trains on `backend` when given (tests), else on
  // MakeBackend(config.backend). Before allocating anything it checks that the parameters, the
  // AdamW state and the activations of the schedule's longest path fit the backend's memory
  // (RESOURCE_EXHAUSTED with the numbers, see PlanMemory). Errors name the setting or file at
  // fault.
  static absl::StatusOr<std::unique_ptr<TrainingSession>> Create(
      const TrainerConfig& config, int rank = 0, int world_size = 1,
      std::unique_ptr<Backend<float>> backend = nullptr);

  TrainingSession(const TrainingSession&) = delete;
  TrainingSession& operator=(const TrainingSession&) = delete;

  // Loads a checkpoint directory (weights, moments, step, counters) and checks that it belongs to
  // a run with this config's settings (FAILED_PRECONDITION naming the first difference).
  absl::Status Restore(const std::string& checkpoint_dir);

  // Runs one step: the stacking copies, forward and backward of this rank's slice of every
  // micro-batch, the all-reduce of the active blocks' and shared tensors' gradients (when
  // `reducer` is set), and the AdamW update. Steps must be run in order, starting at step().
  absl::StatusOr<StepOutcome> RunStep(const StepInput& input, GradientReducer* reducer);

  // Evaluates validation batches 0 .. batches-1 (this rank's rows of each) with `active`'s blocks
  // (every block for the full model) and no dropout of any kind.
  absl::StatusOr<EvalOutcome> Evaluate(int batches, const ActiveLayerSet& active);

  // Writes a checkpoint of the current state with SaveCheckpoint (run_dir/checkpoints/
  // step_NNNNNNNN, atomically, then LATEST). Returns the checkpoint directory.
  absl::StatusOr<std::string> Save(const std::string& run_dir);

  // Counts work as it is done, for a caller that reports liveness from another thread (the
  // worker's heartbeats): +1 after each micro-batch's forward and backward, each evaluation batch,
  // and each checkpoint save or restore. nullptr (the default): not counted. REQUIRES: `counter`
  // outlives the session.
  void CountWorkIn(std::atomic<int64_t>* counter) { work_done_ = counter; }

  // 64-bit FNV-1a digest of the parameters and AdamW moments (their bytes, staged to the host
  // from a device): replicas of a data-parallel group must agree on it bit for bit.
  absl::StatusOr<uint64_t> StateDigest();

  // Empty while this session's device is usable; else why not (Backend::device_fault). After an
  // error from any call above, a caller checks it: a faulted device must not be given another
  // job, so a worker reports it and exits. The failpoint session.device-fault (common/failpoint.h)
  // makes RunStep fail as a sticky device error would, for tests on the CPU.
  std::string DeviceFault() const;
  Backend<float>& backend() { return *backend_; }

  // Steps done: the next step to run.
  int64_t step() const { return state_.step; }
  const TrainState& state() const { return state_; }
  const TrainerConfig& config() const { return config_; }
  Model<float>& model() { return *model_; }
  AdamWOptimizer<float>& optimizer() { return *optimizer_; }

 private:
  TrainingSession(const TrainerConfig& config, int rank, int world_size);
  static absl::StatusOr<std::unique_ptr<TrainingSession>> CreateUnguarded(
      const TrainerConfig& config, int rank, int world_size,
      std::unique_ptr<Backend<float>> backend);

  // The public calls' bodies; the public calls turn their exceptions into Statuses (Guard).
  absl::Status RestoreUnguarded(const std::string& checkpoint_dir);
  absl::StatusOr<std::string> SaveUnguarded(const std::string& run_dir);
  absl::StatusOr<StepOutcome> RunStepUnguarded(const StepInput& input, GradientReducer* reducer);
  absl::StatusOr<EvalOutcome> EvaluateUnguarded(int batches, const ActiveLayerSet& active);
  // Runs `body`; std::bad_alloc becomes RESOURCE_EXHAUSTED and any other std::exception
  // INTERNAL, each naming `what` and the step.
  template <typename F>
  auto Guard(const char* what, F body) -> decltype(body());

  void CountWork() {
    if (work_done_ != nullptr) work_done_->fetch_add(1, std::memory_order_relaxed);
  }
  std::atomic<int64_t>* work_done_ = nullptr;

  // FAILED_PRECONDITION once DeviceFault() is set: nothing runs on a faulted device.
  absl::Status CheckDevice() const;
  // Runs body(params, m, v) over host memory holding the parameters and AdamW moments: the
  // buffers themselves on a host backend, else staged copies (downloaded first, or, with
  // write_back, uploaded after body returns OK).
  absl::Status WithHostState(bool write_back,
                             const std::function<absl::Status(float*, float*, float*)>& body);

  // Reduces the gradients of the shared tensors and of `active`'s blocks, coalescing neighbours
  // into one call each.
  absl::Status ReduceGradients(const ActiveLayerSet& active, GradientReducer* reducer);

  TrainerConfig config_;
  int rank_ = 0;
  int world_size_ = 1;
  int local_batch_ = 0;  // config.batch / world_size
  TokenDataset train_;
  TokenDataset val_;
  std::unique_ptr<Backend<float>> backend_;
  std::string simulated_fault_;  // set by the failpoint session.device-fault
  std::unique_ptr<Model<float>> model_;
  std::unique_ptr<AdamWOptimizer<float>> optimizer_;
  nlohmann::json fingerprint_;
  TrainState state_;
  // The global micro-batches of a step, and the eval batch.
  std::vector<int32_t> inputs_, targets_;
  std::vector<float> staged_grads_;  // host staging of a device backend's gradients for Gloo
};

// What a session will allocate on its backend, from the config alone (the preflight's numbers).
struct MemoryPlan {
  int max_path = 0;  // longest training path of the schedule
  AttentionKind attention = AttentionKind::kMaterialized;
  size_t parameter_bytes = 0;   // parameters + gradients
  size_t optimizer_bytes = 0;   // AdamW m + v
  size_t activation_bytes = 0;  // activations of a max_path path, evaluation, backward scratch
  size_t total() const { return parameter_bytes + optimizer_bytes + activation_bytes; }
  std::string DebugString() const;  // "3.10 GiB = parameters and gradients ... + ..."
};
MemoryPlan PlanMemory(const TrainerConfig& config, int world_size = 1);

// What determines a run's trajectory besides the model shape (which a checkpoint checks itself).
// A resumed run must match it, or it would silently continue with another schedule, learning
// rate or data order. The data-parallel world size is not part of it: a job may resume on
// another number of workers.
nlohmann::json RunFingerprint(const TrainerConfig& config);

}  // namespace raptr
