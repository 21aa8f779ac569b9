// Cluster: the coordinator's live view of its workers and running jobs, and every decision about
// them: scheduling pending jobs onto free workers, forming worker groups (generations), streaming
// step plans ahead of the workers, aggregating their reports into the job store, committing
// checkpoints, finishing, cancelling and recovering jobs, and the rendezvous key-value store.
//
// The Cluster does no I/O of its own besides the JobStore: it talks to each worker through a
// WorkerLink (ControlServiceImpl's is a gRPC stream's outbox), so its logic is the same whether
// the link is a real stream or a test's. One mutex guards everything. SQLite writes happen under
// it (state changes, worker records, checkpoint commits, summaries before a commit) except the
// periodic summary batch, which Tick writes without it (see Tick).
//
// Scheduling runs once per event: the handlers of an event (a lost worker, a finished job) only
// mark that placement may have changed, and each public entry point schedules at its end, so a
// decision never runs inside another's loop.
//
// Faults and what answers them: a worker silent past its lease is dropped (Tick); a rank that
// heartbeats but stops making progress fails its group (ProgressWatchdog, Tick); a worker is
// placed again only once it says its job thread has ended (Heartbeat.job_id empty) and it has
// been heard from recently; a job the store shows RUNNING without a group here (a state write
// that failed) is moved back to RECOVERING (Tick's reconciliation).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics.h"
#include "coordinator/job_service.h"
#include "coordinator/progress_watchdog.h"
#include "coordinator/rank_votes.h"
#include "coordinator/step_planner.h"
#include "coordinator/store/job_store.h"
#include "raptr/v1/control.pb.h"
#include "raptr/v1/job.pb.h"

namespace raptr {

// The coordinator's side of one worker session.
class WorkerLink {
 public:
  virtual ~WorkerLink() = default;
  // Queues a message for the worker, in order; never blocks.
  virtual void Send(const v1::CoordinatorMessage& message) = 0;
  // Ends the session with `status` (the worker sees the RPC end); idempotent.
  virtual void Close(const absl::Status& status) = 0;
};

struct ClusterOptions {
  // Plans streamed ahead of the slowest rank's last completed step.
  int plan_window = 32;
  // Workers send a heartbeat at least this often (Welcome.heartbeat_interval_seconds).
  double heartbeat_seconds = 2.0;
  // A worker silent this long is lost (Welcome.lease_seconds).
  double lease_seconds = 15.0;
  // New step summaries are written to the store at least this often.
  double flush_seconds = 0.5;
  // Where each job's checkpoints go: checkpoint_root/<job id>. Workers must see the same path.
  std::string checkpoint_root = "runs/checkpoints";
  // A job fails after this many recoveries in a row without committing a new checkpoint.
  int max_recoveries_without_progress = 3;
  // Progress deadlines of running ranks (see progress_watchdog.h).
  ProgressWatchdogOptions progress;
  // How often Tick compares the store's RUNNING jobs with the groups it runs.
  double reconcile_seconds = 5.0;
  // Committed checkpoints kept per job (the newest usable ones; see checkpoint_retention.h);
  // older ones and superseded generations are deleted, records and files. 0 keeps all.
  int keep_checkpoints = 3;
  // A failed group re-forms no sooner than this: workers lost together (a host, a rack) are all
  // seen gone first, so one incident is one recovery and the new group has no doomed member.
  double regroup_delay_seconds = 1.0;
  // The steady clock, in seconds; empty: MonotonicSeconds. A test or fuzz target passes its own
  // to make leases, deadlines and delays deterministic.
  std::function<double()> clock;
  // What the job metrics cover (RefreshMetrics): every PENDING, RUNNING or RECOVERING job, plus
  // this many of the jobs that finished last (0: none); the series of a job that leaves that set
  // are removed, so the scrape stays bounded however many jobs the store holds.
  int metrics_finished_jobs = 200;
  // A worker's series stay this long after its session ended (raptr_worker_connected 0, which
  // the RaptrWorkerDown alert fires on), then are removed; 0: removed at the next scrape.
  double metrics_worker_retention_seconds = 600;
};

// Counts for logs, tests and metrics.
struct ClusterStats {
  int workers = 0;       // Connected.
  int idle_workers = 0;  // Connected and not in a group.
  int running_jobs = 0;  // With a group.
  int draining_workers = 0;  // Connected, out of a group, job thread not yet reported ended.
  int64_t plans_sent = 0;
  int64_t reports_received = 0;
};

class Cluster final : public JobLifecycleListener {
 public:
  // REQUIRES: `store` outlives the Cluster.
  Cluster(JobStore* store, ClusterOptions options);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Marks the jobs that were RUNNING or RECOVERING when the coordinator last stopped as
  // RECOVERING (their groups are gone) so they are scheduled again as workers connect. Call once
  // before serving.
  absl::Status RecoverJobsFromStore();

  // A worker's session began with `hello`. Validates it (INVALID_ARGUMENT naming the field).
  // An older session of the same worker_id is replaced (closed with ABORTED; its job recovers)
  // when it is the same instance reconnecting or has been silent for half its lease; otherwise
  // ALREADY_EXISTS (another process uses the id). Sends Welcome on `link`. Returns the session id
  // the other calls take.
  absl::StatusOr<int64_t> Connect(const v1::Hello& hello, std::shared_ptr<WorkerLink> link);
  // A message of the session (anything but Hello). Errors end the session.
  absl::Status Receive(int64_t session, const v1::WorkerMessage& message);
  // The session ended (the worker left, the network failed, or the link was closed).
  void Disconnect(int64_t session);

  // The periodic work: lease expiry, flushing summaries, scheduling. The coordinator calls it
  // every ~100 ms; the event calls above also schedule when something changed.
  void Tick();

  // JobService's hooks: a job was submitted (schedule now) or cancelled (abort its group).
  void JobSubmitted(const std::string& job_id) override;
  void JobCancelled(const std::string& job_id) override;
  std::vector<v1::WorkerInfo> ConnectedWorkers() override;

  // Rendezvous store (ControlService.KvSet / KvGet); see control.proto for the codes.
  absl::Status KvSet(const v1::KvSetRequest& request);
  absl::StatusOr<std::string> KvGet(const v1::KvGetRequest& request,
                                    std::chrono::system_clock::time_point deadline);

  // Closes every session (workers reconnect to the next coordinator) and flushes the store. Jobs
  // stay RUNNING in the store; this is not a failure of theirs, so no recovery is counted: the
  // next coordinator resumes them from their last committed checkpoint.
  void Shutdown(const std::string& reason);

  // Declares the coordinator's metrics in `registry` (which must outlive the Cluster); events
  // update the counters and histograms from then on. Call once, before serving.
  void ExportMetrics(metrics::Registry* registry);
  // Sets the gauges (job states and progress from the store, workers, counts) for a scrape, and
  // removes the series of jobs and workers that left the exported set (see ClusterOptions
  // metrics_finished_jobs and metrics_worker_retention_seconds).
  void RefreshMetrics();

  ClusterStats Stats();

  // Why a waiting (PENDING or RECOVERING) job has no group, as of the last scheduling pass that
  // had a free worker (a pass without one changes nothing and reads no job): e.g. "no cuda
  // workers are connected (it needs 1; 2 cpu workers are)", "needs 2 free cpu workers; 1 of the
  // 3 connected is free", "waiting behind job-000004, ...". The coordinator logs each change
  // ("JOB waits: REASON"). Empty when none is known: the job has a group or ended, or no pass
  // has considered it yet.
  std::string WaitReason(const std::string& job_id);

 private:
  struct Worker {
    int64_t session = 0;
    uint64_t token = 0;  // Welcome.session_token
    v1::Hello hello;
    std::shared_ptr<WorkerLink> link;
    double last_seen = 0;  // steady seconds
    std::string job_id;    // empty when not in a group
    int rank = -1;
    // Out of its group, but its job thread has not been reported ended yet (Heartbeat): not
    // placed until it is.
    bool draining = false;
    std::string draining_job;
    double last_report = 0;        // steady seconds of its last StepReport; 0: none yet
    double tokens_per_second = 0;  // smoothed over its recent steps
    // Heartbeat.work_done of its job thread in the current group; -1: none heard yet.
    int64_t work_done = -1;
  };

  // Per-step aggregation of the ranks' reports.
  struct StepAggregate {
    int reports = 0;
    double loss_sum = 0;  // sum of loss * scored_targets
    int64_t targets = 0;
    int64_t tokens = 0;
    double flops = 0;
    double flops_full = 0;
    double seconds = 0;  // slowest rank
  };
  struct EvalAggregate {
    RankVotes votes;
    double loss_sum = 0;
    int64_t targets = 0;
    int32_t batches = 0;
    double seconds = 0;
  };
  struct CheckpointAggregate {
    RankVotes votes;
    std::string path;  // rank 0's
    std::optional<uint64_t> digest;
    bool diverged = false;
  };

  // A job with a worker group.
  struct RunningJob {
    v1::Job job;
    std::optional<StepPlanner> planner;
    int64_t generation = 0;
    std::vector<int64_t> members;  // session ids by rank
    int64_t next_plan = 0;         // the next step whose plan is not sent yet
    std::vector<int64_t> next_step_by_rank;  // per rank: steps completed (the next to run)
    std::optional<ProgressWatchdog> watchdog;
    std::map<int64_t, StepAggregate> steps;
    std::map<int64_t, EvalAggregate> evals;
    std::map<int64_t, CheckpointAggregate> checkpoints;
    // Summaries complete but waiting for the evaluation after their step.
    std::map<int64_t, StepSummaryRecord> awaiting_eval;
    std::vector<StepSummaryRecord> unflushed;
    double tokens_per_second = 0;  // the job's, smoothed over recent steps
    int64_t committed_step = -1;   // the latest committed checkpoint (optimizer steps done)
    int64_t resumed_from = -1;     // the checkpoint step this generation started from; -1: none
    int64_t completed_steps = 0;   // every rank has reported steps < this
  };

  struct SummaryBatchEntry {
    std::string job_id;
    int64_t generation = 0;
    std::vector<StepSummaryRecord> summaries;
  };
  using SummaryBatch = std::vector<SummaryBatchEntry>;

  // Rendezvous keys of one generation.
  struct KvSpace {
    std::map<std::string, std::string> values;
  };

  // Steady seconds (options_.clock, or MonotonicSeconds).
  double Now() const;

  // Assigns waiting jobs to idle workers. Only the public entry points call it (at their end,
  // through ScheduleIfNeeded); handlers mark schedule_needed_ instead.
  void Schedule() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ScheduleIfNeeded() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `worker` can be given an assignment now.
  bool Placeable(const Worker& worker, double now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fails the groups whose ranks stopped making progress.
  void CheckProgress(double now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves jobs the store shows RUNNING but that have no group here back to RECOVERING.
  void Reconcile() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forms a group of `sessions` for `job` and sends the assignments and first plans.
  void StartGroup(const v1::Job& job, std::vector<int64_t> sessions)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends plans (and the eval / checkpoint requests after them) up to the window.
  void SendPlans(RunningJob& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendToGroup(const RunningJob& run, const v1::CoordinatorMessage& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends a group: tells its remaining members (Abort with `reason`, or Release when the job
  // succeeded), which leave it and drain until their job threads end; drops the job's keys.
  enum class GroupEnd { kAbort, kRelease };
  void EndGroup(RunningJob& run, GroupEnd how, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The group failed: back to RECOVERING (or FAILED) and scheduled again from its checkpoint.
  // Takes the id by value: callers pass the RunningJob's own, which this erases.
  void FailGroup(std::string job_id, const std::string& reason, bool retryable)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static std::vector<std::pair<std::string, std::vector<StepSummaryRecord>>> ToStoreBatch(
      const SummaryBatch& batch);
  // Moves every running job's unflushed summaries out.
  SummaryBatch TakeUnflushed() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts back the summaries of a batch whose write failed (for jobs still in that generation).
  void RestoreUnflushed(SummaryBatch batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes every job's unflushed summaries in one transaction, holding mu_ (Shutdown).
  void Flush() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FlushJob(RunningJob& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job finished its last step, evaluation and checkpoint: SUCCEEDED and Release. By value,
  // as FailGroup.
  void MaybeFinish(std::string job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropSession(int64_t session, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Validates a message's (job, generation, rank) against the session's group. nullptr when it
  // is a straggler of an ended generation (to be ignored).
  RunningJob* GroupOf(int64_t session, const std::string& job_id, int64_t generation)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Status OnStepReport(int64_t session, const v1::StepReport& report)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OnEvalResult(int64_t session, const v1::EvalResult& result)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OnCheckpointWritten(int64_t session, const v1::CheckpointWritten& written)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a commit: when free workers would let the job run on more (up to max_workers, a world
  // size dividing its batch) and no job waits for them, ends its group as a planned regroup
  // (not a recovery) so that it restarts from this checkpoint on the larger group, with the same
  // global batch. By value, as FailGroup.
  void MaybeGrow(std::string job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a commit: drops the job's checkpoints past options_.keep_checkpoints (records, then
  // files) and the directories of its superseded generations.
  void ApplyCheckpointRetention(const RunningJob& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnWorkerError(int64_t session, const v1::WorkerError& error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnHeartbeat(Worker& worker, const v1::Heartbeat& heartbeat)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether (worker_id, token) names a current session that is a member of the job's generation.
  bool IsMember(const std::string& job_id, int64_t generation, const std::string& worker_id,
                uint64_t token) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  JobStore* const store_;
  const ClusterOptions options_;
  absl::Mutex mu_ ABSL_ACQUIRED_BEFORE(store_mu_);
  // Orders the writes and deletes of step summaries (see Tick). Taken after mu_, or alone by
  // Tick's write.
  absl::Mutex store_mu_;
  int64_t next_session_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<int64_t, Worker> sessions_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> session_of_worker_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, RunningJob> running_ ABSL_GUARDED_BY(mu_);
  // Consecutive recoveries without a new checkpoint, per job.
  std::map<std::string, int> recoveries_ ABSL_GUARDED_BY(mu_);
  // Jobs whose group failed: not re-formed before this steady time.
  std::map<std::string, double> regroup_after_ ABSL_GUARDED_BY(mu_);
  // Jobs ended for a planned regroup (MaybeGrow): their new group needs at least this many
  // workers until the steady-time deadline (the old members are still draining), then their
  // spec's min_workers again (a worker may have gone).
  struct PlannedWorld {
    int workers = 0;
    double until = 0;
  };
  std::map<std::string, PlannedWorld> planned_world_ ABSL_GUARDED_BY(mu_);
  // Waiting job -> why it has no group (WaitReason), rebuilt by every Schedule pass.
  std::map<std::string, std::string> wait_reasons_ ABSL_GUARDED_BY(mu_);
  // (job id, generation) -> keys.
  std::map<std::pair<std::string, int64_t>, KvSpace> kv_ ABSL_GUARDED_BY(mu_);
  double last_flush_ ABSL_GUARDED_BY(mu_) = 0;
  double last_reconcile_ ABSL_GUARDED_BY(mu_) = 0;
  double last_tick_ ABSL_GUARDED_BY(mu_) = 0;
  bool schedule_needed_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  int64_t plans_sent_ ABSL_GUARDED_BY(mu_) = 0;
  // Metric families (null until ExportMetrics).
  struct Metrics {
    metrics::Family* job_state = nullptr;
    metrics::Family* job_step = nullptr;
    metrics::Family* job_steps = nullptr;
    metrics::Family* job_stage = nullptr;
    metrics::Family* job_path_length = nullptr;
    metrics::Family* job_layers = nullptr;
    metrics::Family* job_train_loss = nullptr;
    metrics::Family* job_eval_loss = nullptr;
    metrics::Family* job_tokens = nullptr;
    metrics::Family* job_flops = nullptr;
    metrics::Family* job_flops_full = nullptr;
    metrics::Family* job_tokens_per_second = nullptr;
    metrics::Family* job_recoveries = nullptr;
    metrics::Family* job_generation = nullptr;
    metrics::Family* job_world_size = nullptr;
    metrics::Family* worker_connected = nullptr;
    metrics::Family* worker_report_age = nullptr;
    metrics::Family* worker_step_seconds = nullptr;
    metrics::Family* worker_tokens_per_second = nullptr;
    metrics::Family* workers = nullptr;
    metrics::Family* reports = nullptr;
    metrics::Family* plans = nullptr;
  };
  Metrics metrics_;  // set once before serving, then read-only pointers
  // The job series RefreshMetrics exports, by job id: their labels (to remove them later without
  // reading the job again) and whether the job's final state is exported (a finished job is not
  // read again while it stays among the latest finished).
  struct ExportedJob {
    std::vector<std::string> labels;
    bool final = false;
  };
  // Serialises scrapes (each one adds and removes series). Taken before mu_.
  absl::Mutex metrics_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::map<std::string, ExportedJob> exported_jobs_ ABSL_GUARDED_BY(metrics_mu_);
  // Whether the workers the store knew before this coordinator started were added to departed_.
  bool departed_seeded_ ABSL_GUARDED_BY(metrics_mu_) = false;
  // Workers whose session ended, with the steady time it did, while their series are retained
  // (metrics only: DropSession records, RefreshMetrics expires; a reconnect clears).
  std::map<std::string, double> departed_ ABSL_GUARDED_BY(mu_);
  int64_t reports_received_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace raptr
