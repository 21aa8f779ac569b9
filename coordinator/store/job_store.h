// The coordinator's durable state: jobs, step summaries, committed checkpoints and workers.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "raptr/v1/job.pb.h"

struct sqlite3;

namespace raptr {

// One completed training step of a job, as the coordinator aggregated it from every rank.
struct StepSummaryRecord {
  int64_t step = 0;                 // 0-based optimizer step.
  int32_t stage = -1;               // 0-based schedule stage; -1 for full-model steps.
  int32_t path_length = 0;          // Active blocks in the step's path.
  double loss = 0;                  // Training loss, all ranks.
  std::optional<double> eval_loss;  // Validation loss when an evaluation ran after this step.
  double learning_rate = 0;
  int64_t tokens = 0;     // Tokens consumed by this step, all ranks.
  double flops = 0;       // FLOPs spent by this step, all ranks.
  double flops_full = 0;  // FLOPs full training would have spent on this step, all ranks.
  double seconds = 0;     // Wall time of the step (the slowest rank).
};

// A committed checkpoint: every rank wrote it and the coordinator recorded it.
struct CheckpointRecord {
  int64_t step = 0;             // Weights after this 0-based step.
  std::string path;             // The checkpoint's directory.
  int64_t committed_at_ms = 0;  // Unix milliseconds of the commit.
  uint64_t state_digest = 0;    // The ranks' state digest at the commit; 0: not recorded.
  bool rejected = false;        // Found unusable (RejectCheckpoint); never resumed from.
};

// A worker the coordinator has seen (from its Hello and heartbeats).
struct WorkerRecord {
  std::string worker_id;  // Stable identity, e.g. "host-a/gpu0".
  v1::Backend backend = v1::BACKEND_UNSPECIFIED;
  int32_t devices = 0;       // Accelerators it uses (0 for CPU workers).
  int64_t memory_bytes = 0;  // Host memory available to training.
  int64_t last_seen_ms = 0;  // Unix milliseconds of its last message; 0 in UpsertWorker: now.
  std::string state;         // Free-form membership state, e.g. "idle", "busy", "gone".
};

// A job and the seq of its last logged event, read at one instant (GetJobWithEventSeq).
struct JobWithEventSeq {
  v1::Job job;
  int64_t last_event_seq = 0;  // 0 when the job has no events yet.
};

// Which jobs ListJobs returns: in submission order (oldest first).
struct JobFilter {
  std::vector<v1::JobState> states;  // Only jobs in one of these states; empty: every state.
  int limit = 100;                   // Most jobs returned; >= 1.
  std::string after_id;              // Only jobs submitted after this one (paging); empty: all.
  // false: each job's spec holds only its name (from a column of its own); the stored spec is
  // neither read nor parsed. For readers that need a job's state and progress but not its spec
  // (the metrics scrape, which caches each job's spec-derived labels).
  bool with_spec = true;
};

// JobStore persists everything the coordinator must not lose across a restart in one SQLite
// database file (WAL journal, foreign keys on): jobs with their validated specs and states, the
// per-step summaries their progress is computed from, committed checkpoints, a per-job event
// log, and workers. Every mutating call is one transaction: it is either entirely durable when it
// returns OK or has changed nothing.
//
// The event log (table job_events, schema version 2) holds one serialized v1::JobEvent per state
// change (UpdateJobState) and per committed checkpoint (CommitCheckpoint), written in the same
// transaction as the change, so it never disagrees with the job and survives restarts. Each event
// has a seq, increasing across the whole store in commit order: a reader that saw seq N finds
// every later event with seq > N (JobEvents), which is how WatchJob delivers every change, even
// ones that come and go between its polls. Job creation writes no event (a snapshot covers it).
//
// Job ids are "job-" followed by at least six digits from an AUTOINCREMENT counter, so an id is
// never reused, even after its job is gone. A Job's progress (step, loss, eval loss, tokens,
// FLOPs, train seconds, checkpoint step) is derived from the step summaries and checkpoints on
// every read, so it cannot drift from them.
//
// Thread safety: a JobStore is thread-safe; one mutex serialises every call on its connection.
// Several JobStore objects (or processes) may open the same file: SQLite's locks serialise their
// writes (writers wait up to the busy timeout, then get UNAVAILABLE) and WAL lets readers run
// beside a writer.
class JobStore {
 public:
  // Opens (creating when absent) the store at `path` and creates the schema in an empty file.
  // An older store (version 1, before the event log) is migrated in place, keeping its data.
  // Errors name the path: DATA_LOSS for a file that is not an SQLite database or is corrupt,
  // FAILED_PRECONDITION for an SQLite file that is not a raptr store or has a schema version
  // newer than this build knows, UNAVAILABLE when another writer holds the file too long.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);

  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;
  ~JobStore();

  // The schema version this build writes and reads.
  // 1: jobs, step summaries, checkpoints, workers. 2: + job_events.
  static constexpr int kSchemaVersion = 4;

  // Fills the spec's defaults, validates it (ValidateJobSpec) and stores a new PENDING job.
  // INVALID_ARGUMENT naming the field when the spec is invalid; nothing is written then.
  // A non-empty `request_id` makes the call idempotent: when a job was created with the same
  // request_id, that job is returned and nothing is written; ALREADY_EXISTS if its spec differs.
  // `owner`: the submitting principal's name, recorded on the job ("" without authentication).
  // Request ids are per owner: another owner's use of the same id neither finds nor blocks it.
  // INVALID_ARGUMENT: a request_id over 128 bytes or with control characters.
  absl::StatusOr<v1::Job> CreateJob(const v1::JobSpec& spec, const std::string& request_id,
                                    const std::string& owner = "");

  // The job with that id. NOT_FOUND naming the id.
  absl::StatusOr<v1::Job> GetJob(const std::string& id);

  // GetJob and LastEventSeq read in one transaction: the job reflects exactly the events up to
  // last_event_seq, so a watcher that sends the job as its snapshot and then JobEvents(after
  // last_event_seq) neither loses nor repeats a change. NOT_FOUND naming the id.
  absl::StatusOr<JobWithEventSeq> GetJobWithEventSeq(const std::string& id);

  // Jobs matching `filter`, oldest first. INVALID_ARGUMENT for a limit < 1.
  absl::StatusOr<std::vector<v1::Job>> ListJobs(const JobFilter& filter);

  // Moves a job to `new_state` and records `message` (Job.message: why it FAILED, was
  // CANCELLED or is RECOVERING; cleared on other states). Legal moves: PENDING -> RUNNING,
  // CANCELLED, FAILED; RUNNING -> RECOVERING, SUCCEEDED, FAILED, CANCELLED; RECOVERING ->
  // RUNNING, FAILED, CANCELLED. SUCCEEDED, FAILED and CANCELLED are final. The first RUNNING
  // sets start_time, a terminal state end_time. Logs a state_changed event (reason: `message`;
  // the job's generation and world size). Returns the updated job. NOT_FOUND for an unknown id;
  // FAILED_PRECONDITION naming both states for an illegal move (nothing is written then).
  absl::StatusOr<v1::Job> UpdateJobState(const std::string& id, v1::JobState new_state,
                                         const std::string& message);

  // Records the job's current worker group (Job.generation, Job.world_size). NOT_FOUND for an
  // unknown id.
  absl::Status SetJobGroup(const std::string& id, int64_t generation, int32_t world_size);

  // Inserts or replaces (by step) the summaries, all in one transaction. NOT_FOUND for an
  // unknown job; INVALID_ARGUMENT for a negative step.
  absl::Status RecordStepSummaries(const std::string& job_id,
                                   const std::vector<StepSummaryRecord>& summaries);

  // RecordStepSummaries for several jobs in one transaction (the coordinator flushes every
  // running job's new summaries at once, paying one fsync). Nothing is written when any job is
  // unknown (NOT_FOUND) or any step negative.
  absl::Status RecordStepSummariesBatch(
      const std::vector<std::pair<std::string, std::vector<StepSummaryRecord>>>& batch);

  // Deletes the job's summaries of steps > `step` (a recovery rewinds to its checkpoint; the
  // replayed steps are then recorded again) and, when any were deleted, logs a rewound event
  // (to_step = step + 1, with the progress after the discard) in the same transaction, so a
  // watcher sees every rewind however soon the replayed steps follow. NOT_FOUND for an unknown
  // job.
  absl::Status DiscardStepSummariesAfter(const std::string& job_id, int64_t step);

  // A FAILED job back to RECOVERING (RetryJob), in one transaction: its summaries past its latest
  // usable checkpoint are discarded (a rewind is logged when there were any), end_time is
  // cleared, `message` recorded and the state change logged. Returns the job. NOT_FOUND for an
  // unknown id; FAILED_PRECONDITION naming its state when it is not FAILED.
  absl::StatusOr<v1::Job> RetryFailedJob(const std::string& id, const std::string& message);

  // Deletes an ended job and everything the store holds of it (summaries, events, checkpoint
  // records) in one transaction. NOT_FOUND for an unknown id; FAILED_PRECONDITION naming its
  // state when it has not ended.
  absl::Status DeleteJob(const std::string& id);

  // Up to `limit` summaries of steps >= from_step, in step order. NOT_FOUND for an unknown job;
  // INVALID_ARGUMENT for a limit < 1.
  absl::StatusOr<std::vector<StepSummaryRecord>> StepSummaries(const std::string& job_id,
                                                               int64_t from_step, int limit);

  // Records a committed checkpoint of the job after `step` (replacing one of the same step) with
  // the ranks' state digest, and logs a checkpoint event (with the job's generation). NOT_FOUND
  // for an unknown job; INVALID_ARGUMENT for a negative step or an empty path.
  absl::Status CommitCheckpoint(const std::string& job_id, int64_t step, const std::string& path,
                                uint64_t state_digest);

  // Marks the job's committed checkpoint of `step` unusable (it stays in the table, for the
  // record) and logs a checkpoint_rejected event with `reason`; LatestCheckpoint skips it from
  // then on. NOT_FOUND for an unknown job or no such checkpoint.
  absl::Status RejectCheckpoint(const std::string& job_id, int64_t step, const std::string& reason);

  // Every committed checkpoint of the job, rejected ones included, in step order. NOT_FOUND for
  // an unknown job.
  absl::StatusOr<std::vector<CheckpointRecord>> ListCheckpoints(const std::string& job_id);

  // Deletes the job's checkpoint records of `steps` (retention; their files are the caller's),
  // all in one transaction. Steps without a record are ignored. NOT_FOUND for an unknown job.
  absl::Status DeleteCheckpoints(const std::string& job_id, const std::vector<int64_t>& steps);

  // The job's usable (not rejected) committed checkpoint of the highest step; std::nullopt when
  // none. NOT_FOUND for an unknown job.
  absl::StatusOr<std::optional<CheckpointRecord>> LatestCheckpoint(const std::string& job_id);

  // Up to `limit` of the job's logged events with seq > after_seq, as (seq, event) in seq order;
  // each event's time is when its change was committed. NOT_FOUND for an unknown job;
  // INVALID_ARGUMENT for a limit < 1; DATA_LOSS for a stored event that does not parse.
  absl::StatusOr<std::vector<std::pair<int64_t, v1::JobEvent>>> JobEvents(const std::string& job_id,
                                                                          int64_t after_seq,
                                                                          int limit);

  // The seq of the job's last logged event; 0 when it has none. NOT_FOUND for an unknown job.
  // To pair it with the job's state use GetJobWithEventSeq.
  absl::StatusOr<int64_t> LastEventSeq(const std::string& job_id);

  // Inserts or replaces a worker by worker_id. INVALID_ARGUMENT for an empty worker_id.
  absl::Status UpsertWorker(const WorkerRecord& worker);

  // Every worker ever upserted, by worker_id.
  absl::StatusOr<std::vector<WorkerRecord>> ListWorkers();

  // Jobs that were RUNNING or RECOVERING when the coordinator stopped (they need a new group),
  // oldest first.
  absl::StatusOr<std::vector<v1::Job>> JobsToRecover();

  // The ids of the `limit` jobs that reached a terminal state last, newest first (by end_time,
  // then by id). Walks an index (jobs_by_end) instead of sorting every finished job, so its cost
  // is `limit`, not the store's size. INVALID_ARGUMENT for a limit < 1.
  absl::StatusOr<std::vector<std::string>> LatestFinishedJobIds(int limit);

  // Change tracking, for watchers (WatchJob) that should read the store only when it changed.
  // Every committed write of a job's state, group, summaries, checkpoints or events through this
  // JobStore bumps a process-wide version and records it as the job's; other processes' writes
  // to the same file are not seen. The version a job had last; 0 if this JobStore never wrote it.
  int64_t JobVersion(const std::string& job_id) const;
  // Blocks until the process-wide version differs from `seen` or `timeout` passes; returns it.
  int64_t WaitForChange(int64_t seen, absl::Duration timeout) const;

 private:
  JobStore(std::string path, sqlite3* db);

  // The shared body of GetJob and the reads after writes. REQUIRES: mu_ held.
  absl::StatusOr<v1::Job> LoadJob(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fills job->progress from the step summaries and checkpoints. REQUIRES: mu_ held.
  absl::Status LoadProgress(v1::Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The body of LastEventSeq, for a job known to exist. REQUIRES: mu_ held.
  absl::StatusOr<int64_t> LoadLastEventSeq(const std::string& job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets event->time to `time_ms` and logs it for the job. REQUIRES: mu_ held, inside the write
  // transaction of the change the event describes.
  absl::Status AppendEvent(const std::string& job_id, int64_t time_ms, v1::JobEvent* event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK when the job exists, else NOT_FOUND naming it. REQUIRES: mu_ held.
  absl::Status CheckJobExists(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job's state; NOT_FOUND for an unknown id.
  absl::StatusOr<v1::JobState> StateLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // DiscardStepSummariesAfter inside the caller's write transaction; true when it discarded.
  absl::StatusOr<bool> DiscardAfterLocked(const std::string& job_id, int64_t step)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Bumps the versions after a committed write of the job (see JobVersion).
  void Changed(const std::string& job_id);

  const std::string path_;
  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
  // Taken alone (never with mu_ wanted after it), so watchers never wait on a write.
  mutable absl::Mutex versions_mu_;
  int64_t version_ ABSL_GUARDED_BY(versions_mu_) = 0;
  std::map<std::string, int64_t> job_versions_ ABSL_GUARDED_BY(versions_mu_);
};

}  // namespace raptr
