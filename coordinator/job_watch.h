// JobWatch: the cursor of one WatchJob stream over a job in the store, and JobWatchHub, which
// serves every stream from one thread.
//
// A stream is the job's snapshot, then its logged events (state changes, checkpoints, rewinds)
// merged in order with its step summaries (which are not logged events: they are read by step
// and folded into the cumulative progress each StepSummary carries). JobWatch is the plain part,
// a class with no gRPC in it (tests drive it against a real store); JobWatchHub is the gRPC
// part: a callback-API reactor per stream, so an open stream holds no thread, and one thread that
// reads the store for the streams whose job changed since their last read (JobStore::JobVersion)
// and only when the stream has written what it read before (a slow client slows only itself).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/store/job_store.h"
#include "grpcpp/grpcpp.h"
#include "raptr/v1/job.pb.h"

namespace raptr {

// The API form of a stored step summary (without the cumulative progress).
void FillStepSummary(const StepSummaryRecord& step, v1::StepSummary* summary);

class JobWatch {
 public:
  // Step summaries and logged events read per Poll (more wait for the next Poll, except before
  // the end of the job, when every stored summary is read).
  static constexpr int kStepBatch = 1000;
  static constexpr int kEventBatch = 1000;

  // `step_every` > 1 sends only every step_every-th StepSummary (and the last step's); the
  // progress still counts every step.
  // `from_start` replays the job's history after the snapshot (Start reads it all); with
  // `no_follow`, Start reports the watch over once that is appended.
  JobWatch(std::string job_id, int64_t step_every, bool from_start = false,
           bool no_follow = false);

  const std::string& job_id() const { return job_id_; }

  // Appends the snapshot event. Returns true when the job is already over (nothing follows).
  // NOT_FOUND for an unknown job.
  absl::StatusOr<bool> Start(JobStore& store, std::vector<v1::JobEvent>* out);

  // Appends what changed since the last call, in order. Returns true when the job ended (the
  // last event appended is its final state change). A recovery's rewind (JobRewound) resets the
  // cumulative progress to the rewind's, and the replayed steps follow it, however soon after
  // the rewind they were recorded.
  absl::StatusOr<bool> Poll(JobStore& store, std::vector<v1::JobEvent>* out);

  // Whether the last Poll left events or summaries to read (it read a full batch).
  bool behind() const { return behind_; }

 private:
  // Summaries of steps >= from: one batch, or all of them when `all`.
  absl::StatusOr<std::vector<StepSummaryRecord>> ReadSteps(JobStore& store, int64_t from,
                                                           bool all);
  // Folds `step` into the progress and appends its events (step_every permitting).
  void AddStep(const StepSummaryRecord& step, std::vector<v1::JobEvent>* out);

  const std::string job_id_;
  const int64_t step_every_;
  const bool from_start_;
  const bool no_follow_;
  int64_t last_seq_ = 0;
  int64_t last_step_ = 0;  // the job's last step (spec)
  int32_t eval_batches_ = 0;
  v1::JobProgress progress_;  // the cumulative progress of the steps sent
  bool behind_ = false;
};

// Serves WatchJob streams. Thread-safe.
class JobWatchHub {
 public:
  struct Options {
    // Streams open at once; more are refused with RESOURCE_EXHAUSTED.
    int max_streams = 1024;
    // The hub thread waits for a store write at most this long before it looks again (at
    // streams that drained their queue, and to prune finished ones).
    absl::Duration idle_wait = absl::Milliseconds(200);
  };

  // REQUIRES: `store` outlives the hub.
  JobWatchHub(JobStore* store, Options options);
  // Stops the thread. REQUIRES: every stream is done (the gRPC server was shut down).
  ~JobWatchHub();
  JobWatchHub(const JobWatchHub&) = delete;
  JobWatchHub& operator=(const JobWatchHub&) = delete;

  // JobService.WatchJob's callback handler: a reactor that gRPC owns until its OnDone.
  grpc::ServerWriteReactor<v1::JobEvent>* Watch(grpc::CallbackServerContext* context,
                                                const v1::WatchJobRequest* request);

  // A reactor that ends at once with `status` (a caller refused before its stream starts).
  grpc::ServerWriteReactor<v1::JobEvent>* Refuse(grpc::Status status);

  // Streams open now (for tests and metrics).
  int open_streams() const;

  // Ends every open stream with `status` after what it has queued, and refuses new ones with it
  // (a coordinator shutting down).
  void EndAll(const grpc::Status& status);

 private:
  class Stream;
  class Reactor;

  void Run();

  JobStore* const store_;
  const Options options_;
  mutable absl::Mutex mu_;
  std::vector<std::shared_ptr<Stream>> streams_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> ended_ ABSL_GUARDED_BY(mu_);  // EndAll's
  std::thread thread_;
};

}  // namespace raptr
