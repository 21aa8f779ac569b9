// JobRunner: one Assignment on its own thread. The session thread (agent.cc) pushes the job's
// plans, evaluation and checkpoint requests into its queue; the job thread runs them with the
// engine (TrainingSession) and its Gloo group, and writes the reports on the session's
// Connection. Abort() stops it from any thread and tears the group down; a thread that does not
// stop is the agent's to escalate (it never joins one that may be stuck).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "grpcpp/grpcpp.h"
#include "raptr/v1/control.grpc.pb.h"
#include "raptr/v1/control.pb.h"
#include "worker/agent.h"
#include "worker/collective/gloo_group.h"
#include "worker/engine/session.h"
#include "worker/kv_rendezvous_store.h"
#include "worker/process_metrics.h"

namespace raptr {
// True when this binary has the NCCL all-reduce (--collectives nccl).
bool NcclBuilt();
}  // namespace raptr

namespace raptr {

using Stream = grpc::ClientReaderWriter<v1::WorkerMessage, v1::CoordinatorMessage>;

// One Connect stream; writes from several threads go through Write.
class Connection {
 public:
  grpc::ClientContext context;
  std::unique_ptr<Stream> stream;

  bool Write(const v1::WorkerMessage& message) {
    absl::MutexLock lock(&write_mu_);
    return stream->Write(message);
  }
  void WritesDone() {
    absl::MutexLock lock(&write_mu_);
    stream->WritesDone();
  }

 private:
  absl::Mutex write_mu_;
};

// Runs one assignment on its own thread.
class JobRunner {
 public:
  // Called on the job thread when the job ended with its device faulted
  // (TrainingSession::DeviceFault, the argument), before the runner reports the error: the
  // process must not take another job. The runner then sends no "idle" heartbeat.
  using DeviceFaultCallback = std::function<void(const std::string& fault)>;

  JobRunner(v1::Assignment assignment, Connection* connection, v1::ControlService::Stub* stub,
            const AgentOptions& options, std::string worker_id, std::string host,
            uint64_t session_token, ProcessMetrics* metrics,
            DeviceFaultCallback on_device_fault = nullptr)
      : on_device_fault_(std::move(on_device_fault)),
        metrics_(metrics),
        assignment_(std::move(assignment)),
        connection_(connection),
        stub_(stub),
        options_(options),
        worker_id_(std::move(worker_id)),
        host_(std::move(host)),
        session_token_(session_token) {}

  // REQUIRES: the thread has finished (finished()), or was never started: the session never
  // joins a job thread that may be stuck (see StopRunner).
  ~JobRunner() {
    if (thread_.joinable()) thread_.join();
  }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Push(const v1::CoordinatorMessage& message) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(message);
  }
  // Stops the job from any thread: the queue ends, and the communicator is torn down so a
  // collective blocked on a peer returns at once. Idempotent.
  void Abort() {
    absl::MutexLock lock(&mu_);
    if (!aborted_) aborted_at_ = MonotonicSeconds();
    aborted_ = true;
    if (group_ != nullptr) group_->Abort();
    if (rendezvous_ != nullptr) rendezvous_->Cancel();
  }
  // Waits up to `seconds` for the job thread to end; true when it has.
  bool WaitFinished(double seconds) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&finished_locked_), absl::Seconds(seconds));
  }
  // Seconds since Abort(), or 0 when not aborted.
  double SecondsSinceAbort() {
    absl::MutexLock lock(&mu_);
    return aborted_ ? MonotonicSeconds() - aborted_at_ : 0;
  }
  bool finished() const { return finished_.load(); }
  const std::string& job_id() const { return assignment_.job_id(); }
  int64_t generation() const { return assignment_.generation(); }
  int64_t last_step() const { return last_step_.load(); }
  // Work units the job thread has done (TrainingSession::CountWorkIn): grows while it works,
  // stands still while it hangs. Heartbeats carry it.
  int64_t work_done() const { return work_done_.load(std::memory_order_relaxed); }

 private:
  // The next message of the job; nullopt once aborted.
  std::optional<v1::CoordinatorMessage> Pop() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](JobRunner* r)
             ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) { return r->aborted_ || !r->queue_.empty(); },
        this));
    if (aborted_) return std::nullopt;
    v1::CoordinatorMessage message = std::move(queue_.front());
    queue_.pop_front();
    return message;
  }
  bool aborted() {
    absl::MutexLock lock(&mu_);
    return aborted_;
  }
  // The group Abort() tears down; null outside collectives' lifetime.
  void SetGroup(GradientReducer* group) {
    absl::MutexLock lock(&mu_);
    group_ = group;
    if (group_ != nullptr && aborted_) group_->Abort();
  }
  // The rendezvous Abort() cancels (its KvGet waits for peers); null outside its lifetime.
  void SetRendezvous(CoordinatorStore* store) {
    absl::MutexLock lock(&mu_);
    rendezvous_ = store;
    if (rendezvous_ != nullptr && aborted_) rendezvous_->Cancel();
  }

  void Run();

  absl::Status RunJob();

  static absl::StatusOr<StepInput> ToStepInput(const v1::StepPlan& plan, int L);

  const DeviceFaultCallback on_device_fault_;  // may be empty
  ProcessMetrics* const metrics_;  // may be null
  const v1::Assignment assignment_;
  Connection* const connection_;
  v1::ControlService::Stub* const stub_;
  const AgentOptions options_;
  const std::string worker_id_;
  const std::string host_;
  const uint64_t session_token_;
  std::thread thread_;
  absl::Mutex mu_;
  std::deque<v1::CoordinatorMessage> queue_ ABSL_GUARDED_BY(mu_);
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
  double aborted_at_ ABSL_GUARDED_BY(mu_) = 0;
  GradientReducer* group_ ABSL_GUARDED_BY(mu_) = nullptr;  // Gloo or NCCL
  CoordinatorStore* rendezvous_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool finished_locked_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> finished_{false};
  std::atomic<int64_t> last_step_{-1};
  std::atomic<int64_t> work_done_{0};
  int64_t current_step_ = -1;  // the job thread's own
  bool resume_unusable_ = false;  // the job thread's own: the resume checkpoint failed its checks
  // The job thread's own: the session's DeviceFault() as RunJob ended (empty: the device is fine).
  std::string device_fault_;
};

}  // namespace raptr
