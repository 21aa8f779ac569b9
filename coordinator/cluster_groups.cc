// The Cluster's worker groups: scheduling waiting jobs onto free workers, starting a group
// (generation), streaming its plans, and ending it: finished, failed (recovery), grown (a
// planned regroup) or found missing (reconciliation); and the step summaries' persistence
// (see cluster.h).
#include "coordinator/cluster.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "coordinator/cluster_util.h"
#include "coordinator/placement.h"

namespace raptr {

using cluster_util::BackendName;
using cluster_util::EffectiveBackend;
using cluster_util::JobLabels;

void Cluster::Reconcile() {
  JobFilter filter;
  filter.states = {v1::JOB_STATE_RUNNING};
  filter.limit = 1000;
  absl::StatusOr<std::vector<v1::Job>> jobs = store_->ListJobs(filter);
  if (!jobs.ok()) {
    Log(absl::StrCat("reconcile: cannot list running jobs: ", jobs.status().ToString()));
    return;
  }
  for (const v1::Job& job : *jobs) {
    if (running_.count(job.id()) != 0) continue;
    // Its group ended but the state write failed (disk full, a busy store): it recovers now.
    absl::StatusOr<v1::Job> moved = store_->UpdateJobState(
        job.id(), v1::JOB_STATE_RECOVERING, "its group ended while the store was failing writes");
    if (moved.ok()) {
      Log(absl::StrCat(job.id(), " was RUNNING in the store without a group; recovering"));
      schedule_needed_ = true;
    }
  }
}

void Cluster::ScheduleIfNeeded() {
  if (!schedule_needed_) return;
  schedule_needed_ = false;
  Schedule();
}

bool Cluster::Placeable(const Worker& worker, double now) const {
  // Heard from within half a lease: a worker about to expire gets no new group.
  return worker.job_id.empty() && !worker.draining &&
         now - worker.last_seen <= options_.lease_seconds / 2;
}

void Cluster::Schedule() {
  if (shut_down_) return;
  const double now = Now();
  // Nothing can start without a free worker; skip the store read (this runs on every tick and
  // every disconnect).
  bool any_idle = false;
  for (const auto& [id, worker] : sessions_) any_idle = any_idle || Placeable(worker, now);
  if (!any_idle) return;
  JobFilter filter;
  filter.states = {v1::JOB_STATE_PENDING, v1::JOB_STATE_RECOVERING};
  filter.limit = 1000;
  absl::StatusOr<std::vector<v1::Job>> waiting = store_->ListJobs(filter);
  if (!waiting.ok()) {
    Log(absl::StrCat("cannot list waiting jobs: ", waiting.status().ToString()));
    return;
  }
  std::vector<v1::Job> jobs;
  // Why each job still waits after this pass (see WaitReason); a job in its regroup delay keeps
  // the reason it had.
  std::map<std::string, std::string> reasons;
  for (v1::Job& job : *waiting) {
    if (running_.count(job.id()) != 0) continue;
    if (auto after = regroup_after_.find(job.id()); after != regroup_after_.end()) {
      if (now < after->second) {  // Tick schedules it once the delay is over
        if (auto old = wait_reasons_.find(job.id()); old != wait_reasons_.end()) {
          reasons.insert(*old);
        }
        continue;
      }
      regroup_after_.erase(after);
    }
    jobs.push_back(std::move(job));
  }
  if (jobs.empty()) {
    wait_reasons_ = std::move(reasons);
    return;
  }
  // Higher priority first; among equals, submission order (ids grow with submission).
  std::stable_sort(jobs.begin(), jobs.end(), [](const v1::Job& a, const v1::Job& b) {
    return a.spec().resources().priority() > b.spec().resources().priority();
  });
  WorkerPool pool;
  for (const auto& [worker_id, session] : session_of_worker_) {  // by worker_id order
    const Worker& worker = sessions_.at(session);
    const v1::Backend backend = EffectiveBackend(worker.hello.backend());
    if (Placeable(worker, now)) pool.free[backend].push_back(session);
  }
  for (const auto& [session, worker] : sessions_) {
    pool.connected[EffectiveBackend(worker.hello.backend())].push_back(session);
    pool.memory_bytes[session] = ReportedMemoryBytes(worker.hello);
  }
  std::vector<WaitingJob> waiting_jobs;
  std::map<std::string, const v1::Job*> by_id;
  for (const v1::Job& job : jobs) {
    const v1::ResourceSpec& r = job.spec().resources();
    int min_workers = r.min_workers();
    if (auto planned = planned_world_.find(job.id()); planned != planned_world_.end()) {
      if (now < planned->second.until) {
        min_workers = std::max(min_workers, planned->second.workers);
      } else {
        planned_world_.erase(planned);
      }
    }
    waiting_jobs.push_back({job.id(), EffectiveBackend(r.backend()), min_workers,
                            r.max_workers(), job.spec().training().batch(),
                            JobMinimumMemoryBytes(job.spec())});
    by_id[job.id()] = &job;
  }
  // Placement is strict FIFO per backend (the first job of a backend that cannot start holds
  // back the ones behind it), and says why each job left waiting waits.
  PlacementPass pass = Place(waiting_jobs, pool);
  for (Placement& placement : pass.placements) {
    StartGroup(*by_id.at(placement.job_id), std::move(placement.workers));
  }
  reasons.merge(pass.wait_reasons);
  for (const auto& [job_id, reason] : reasons) {
    auto old = wait_reasons_.find(job_id);
    if (old == wait_reasons_.end() || old->second != reason) {
      Log(absl::StrCat(job_id, " waits: ", reason));
    }
  }
  wait_reasons_ = std::move(reasons);
}

std::string Cluster::WaitReason(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = wait_reasons_.find(job_id);
  return it == wait_reasons_.end() ? std::string() : it->second;
}

void Cluster::StartGroup(const v1::Job& job, std::vector<int64_t> sessions) {
  absl::StatusOr<StepPlanner> planner = StepPlanner::Create(job.spec());
  if (!planner.ok()) {
    Log(absl::StrCat(job.id(), " cannot be planned: ", planner.status().ToString()));
    (void)store_->UpdateJobState(job.id(), v1::JOB_STATE_FAILED,
                                 absl::StrCat("cannot plan the job: ", planner.status().message()));
    recoveries_.erase(job.id());
    return;
  }
  absl::StatusOr<std::optional<CheckpointRecord>> latest = store_->LatestCheckpoint(job.id());
  if (!latest.ok()) {
    Log(absl::StrCat(job.id(), ": ", latest.status().ToString()));
    return;
  }
  const int64_t start = latest->has_value() ? (*latest)->step : 0;
  if (start >= planner->steps()) {
    // Every step ran and the final checkpoint committed before the coordinator stopped.
    (void)store_->UpdateJobState(job.id(), v1::JOB_STATE_SUCCEEDED, "");
    recoveries_.erase(job.id());
    return;
  }
  const int64_t generation = job.generation() + 1;
  const int world = static_cast<int>(sessions.size());
  // Steps after the checkpoint are replayed by the new group: their old summaries go, so
  // progress never counts a step twice.
  absl::Status discarded;
  {
    absl::MutexLock store_lock(&store_mu_);
    discarded = store_->DiscardStepSummariesAfter(job.id(), start - 1);
  }
  if (!discarded.ok()) {
    Log(absl::StrCat(job.id(), ": ", discarded.ToString()));
    return;
  }
  if (absl::Status grouped = store_->SetJobGroup(job.id(), generation, world); !grouped.ok()) {
    Log(absl::StrCat(job.id(), ": ", grouped.ToString()));
    return;
  }
  absl::StatusOr<v1::Job> running = store_->UpdateJobState(job.id(), v1::JOB_STATE_RUNNING, "");
  if (!running.ok()) {
    // Cancelled meanwhile: the store's state machine refuses the move.
    Log(absl::StrCat(job.id(), " not started: ", running.status().ToString()));
    return;
  }
  planned_world_.erase(job.id());
  RunningJob& run = running_[job.id()];
  run.job = *running;
  run.planner = std::move(*planner);
  run.generation = generation;
  run.members = sessions;
  run.next_plan = start;
  run.next_step_by_rank.assign(world, start);
  run.watchdog.emplace(options_.progress, world, Now());
  run.completed_steps = start;
  run.committed_step = start;
  run.resumed_from = latest->has_value() ? start : -1;
  std::string names;
  for (int rank = 0; rank < world; ++rank) {
    Worker& worker = sessions_.at(sessions[rank]);
    worker.job_id = job.id();
    worker.rank = rank;
    worker.draining = false;
    worker.work_done = -1;
    absl::StrAppend(&names, rank == 0 ? "" : ", ", worker.hello.worker_id());
    v1::CoordinatorMessage message;
    v1::Assignment* assignment = message.mutable_assignment();
    assignment->set_job_id(job.id());
    *assignment->mutable_spec() = job.spec();
    assignment->set_rank(rank);
    assignment->set_world_size(world);
    assignment->set_generation(generation);
    if (latest->has_value()) {
      assignment->mutable_resume_checkpoint()->set_step((*latest)->step);
      assignment->mutable_resume_checkpoint()->set_path((*latest)->path);
      assignment->mutable_resume_checkpoint()->set_state_digest((*latest)->state_digest);
    }
    worker.link->Send(message);
  }
  Log(absl::StrCat(job.id(), " generation ", generation, " started on ", world, " worker",
                   world == 1 ? "" : "s", " (", names, ") at step ", start));
  SendPlans(run);
}

void Cluster::SendToGroup(const RunningJob& run, const v1::CoordinatorMessage& message) {
  for (int64_t session : run.members) {
    auto it = sessions_.find(session);
    if (it != sessions_.end()) it->second.link->Send(message);
  }
}

void Cluster::SendPlans(RunningJob& run) {
  const int64_t slowest =
      *std::min_element(run.next_step_by_rank.begin(), run.next_step_by_rank.end());
  const int64_t limit = std::min(run.planner->steps(), slowest + options_.plan_window);
  const std::string& id = run.job.id();
  for (; run.next_plan < limit; ++run.next_plan) {
    const int64_t step = run.next_plan;
    v1::CoordinatorMessage message;
    v1::StepPlan* plan = message.mutable_step_plan();
    plan->set_job_id(id);
    plan->set_generation(run.generation);
    run.planner->Fill(step, plan);
    StepAggregate& aggregate = run.steps[step];
    aggregate = StepAggregate{};
    SendToGroup(run, message);
    ++plans_sent_;
    if (run.planner->EvalAfter(step)) {
      v1::CoordinatorMessage eval;
      v1::EvalRequest* request = eval.mutable_eval_request();
      request->set_job_id(id);
      request->set_generation(run.generation);
      request->set_step(step);
      request->set_batches(run.planner->eval_batches());
      for (int layer : run.planner->EvalLayers(step)) request->add_active_layers(layer);
      run.evals[step] = EvalAggregate{};
      run.evals[step].votes = RankVotes(static_cast<int>(run.members.size()));
      SendToGroup(run, eval);
    }
    if (run.planner->CheckpointAfter(step)) {
      v1::CoordinatorMessage checkpoint;
      v1::CheckpointRequest* request = checkpoint.mutable_checkpoint_request();
      request->set_job_id(id);
      request->set_generation(run.generation);
      request->set_step(step);
      // One directory per generation: a replayed step never overwrites the checkpoint an
      // earlier group wrote (and perhaps committed) for it.
      request->set_path(
          absl::StrCat(options_.checkpoint_root, "/", id, "/generation-", run.generation));
      run.checkpoints[step] = CheckpointAggregate{};
      run.checkpoints[step].votes = RankVotes(static_cast<int>(run.members.size()));
      SendToGroup(run, checkpoint);
    }
  }
}

Cluster::RunningJob* Cluster::GroupOf(int64_t session, const std::string& job_id,
                                      int64_t generation) {
  auto it = running_.find(job_id);
  if (it == running_.end() || it->second.generation != generation) return nullptr;
  const Worker& worker = sessions_.at(session);
  if (worker.job_id != job_id || worker.rank < 0 || it->second.members[worker.rank] != session) {
    return nullptr;
  }
  return &it->second;
}

void Cluster::MaybeFinish(std::string job_id) {
  auto it = running_.find(job_id);
  if (it == running_.end()) return;
  RunningJob& run = it->second;
  const int64_t steps = run.planner->steps();
  if (run.completed_steps < steps || run.committed_step < steps || !run.evals.empty() ||
      !run.awaiting_eval.empty()) {
    return;
  }
  if (absl::Status flushed = FlushJob(run); !flushed.ok()) {
    // The last checkpoint is committed: the next group finds the job done and ends it.
    FailGroup(job_id, absl::StrCat("cannot record the last step summaries: ", flushed.message()),
              /*retryable=*/true);
    return;
  }
  // When this write fails the store still says RUNNING; Reconcile moves the job to RECOVERING,
  // and its next group finds every step committed and ends it SUCCEEDED.
  absl::StatusOr<v1::Job> done = store_->UpdateJobState(job_id, v1::JOB_STATE_SUCCEEDED, "");
  if (!done.ok()) Log(absl::StrCat(job_id, ": ", done.status().ToString()));
  EndGroup(run, GroupEnd::kRelease, "");
  Log(absl::StrCat(job_id, " succeeded after ", steps, " steps"));
  running_.erase(it);
  recoveries_.erase(job_id);
  schedule_needed_ = true;
}

void Cluster::EndGroup(RunningJob& run, GroupEnd how, const std::string& reason) {
  v1::CoordinatorMessage end;
  if (how == GroupEnd::kAbort) {
    end.mutable_abort()->set_job_id(run.job.id());
    end.mutable_abort()->set_generation(run.generation);
    end.mutable_abort()->set_reason(reason);
  } else {
    end.mutable_release()->set_job_id(run.job.id());
    end.mutable_release()->set_generation(run.generation);
  }
  SendToGroup(run, end);
  for (int64_t session : run.members) {
    auto it = sessions_.find(session);
    if (it == sessions_.end() || it->second.job_id != run.job.id()) continue;
    it->second.job_id.clear();
    it->second.rank = -1;
    // Free once its heartbeat says the job thread has ended.
    it->second.draining = true;
    it->second.draining_job = run.job.id();
  }
  kv_.erase({run.job.id(), run.generation});
}

void Cluster::FailGroup(std::string job_id, const std::string& reason, bool retryable) {
  auto it = running_.find(job_id);
  if (it == running_.end()) return;
  RunningJob& run = it->second;
  EndGroup(run, GroupEnd::kAbort, reason);
  const int tries = ++recoveries_[job_id];
  if (metrics_.job_recoveries != nullptr) metrics_.job_recoveries->Add(JobLabels(run.job), 1);
  const bool give_up = !retryable || tries > options_.max_recoveries_without_progress;
  std::string message = reason;
  if (retryable && give_up) {
    message =
        absl::StrCat(reason, " (", tries - 1, " recoveries in a row made no progress; giving up)");
  }
  // Summaries past the committed checkpoint are dropped: the next group replays those steps.
  absl::Status discarded;
  {
    absl::MutexLock store_lock(&store_mu_);
    discarded = store_->DiscardStepSummariesAfter(job_id, run.committed_step - 1);
  }
  if (!discarded.ok()) {
    Log(absl::StrCat(job_id, ": ", discarded.ToString()));
  }
  // When this write fails the store keeps RUNNING with no group here: Reconcile retries it.
  absl::StatusOr<v1::Job> moved = store_->UpdateJobState(
      job_id, give_up ? v1::JOB_STATE_FAILED : v1::JOB_STATE_RECOVERING, message);
  if (!moved.ok()) Log(absl::StrCat(job_id, ": ", moved.status().ToString()));
  Log(absl::StrCat(job_id, give_up ? " failed: " : " recovering: ", message));
  running_.erase(it);
  if (give_up) {
    recoveries_.erase(job_id);
  } else {
    regroup_after_[job_id] = Now() + options_.regroup_delay_seconds;
  }
  schedule_needed_ = true;
}

void Cluster::MaybeGrow(std::string job_id) {
  auto it = running_.find(job_id);
  if (it == running_.end()) return;
  RunningJob& run = it->second;
  const v1::ResourceSpec& resources = run.job.spec().resources();
  const int world = static_cast<int>(run.members.size());
  if (world >= resources.max_workers() || run.committed_step >= run.planner->steps()) return;
  const double now = Now();
  const v1::Backend backend = EffectiveBackend(resources.backend());
  int free = 0;
  for (const auto& [session, worker] : sessions_) {
    free += Placeable(worker, now) && EffectiveBackend(worker.hello.backend()) == backend ? 1 : 0;
  }
  if (free == 0) return;
  const int target = WorldSize(world + 1, resources.max_workers(), run.job.spec().training().batch(),
                               world + free);
  if (target == 0) return;
  // Waiting jobs come first: growth only takes workers nobody else waits for.
  JobFilter filter;
  filter.states = {v1::JOB_STATE_PENDING, v1::JOB_STATE_RECOVERING};
  filter.limit = 1000;
  absl::StatusOr<std::vector<v1::Job>> waiting = store_->ListJobs(filter);
  if (!waiting.ok()) return;
  for (const v1::Job& job : *waiting) {
    if (EffectiveBackend(job.spec().resources().backend()) == backend) return;
  }
  const std::string reason = absl::StrCat(
      "growing from ", world, " to ", target, " workers at the checkpoint after step ",
      run.committed_step, " (a planned regroup, not a recovery)");
  EndGroup(run, GroupEnd::kAbort, reason);
  // The old group ran on past the checkpoint; the new one replays those steps.
  absl::Status discarded;
  {
    absl::MutexLock store_lock(&store_mu_);
    discarded = store_->DiscardStepSummariesAfter(job_id, run.committed_step - 1);
  }
  if (!discarded.ok()) Log(absl::StrCat(job_id, ": ", discarded.ToString()));
  // When this write fails the store keeps RUNNING with no group here: Reconcile moves it on.
  absl::StatusOr<v1::Job> moved =
      store_->UpdateJobState(job_id, v1::JOB_STATE_RECOVERING, reason);
  if (!moved.ok()) Log(absl::StrCat(job_id, ": ", moved.status().ToString()));
  Log(absl::StrCat(job_id, ": ", reason));
  // The old members drain first: the new group waits for all of them (up to a lease, after
  // which the job takes what its spec allows, a worker having perhaps gone).
  planned_world_[job_id] = {target, now + options_.lease_seconds};
  running_.erase(it);
  schedule_needed_ = true;
}

// The store's batch shape: (job id, summaries) pairs.
std::vector<std::pair<std::string, std::vector<StepSummaryRecord>>> Cluster::ToStoreBatch(
    const SummaryBatch& batch) {
  std::vector<std::pair<std::string, std::vector<StepSummaryRecord>>> out;
  out.reserve(batch.size());
  for (const SummaryBatchEntry& entry : batch) out.emplace_back(entry.job_id, entry.summaries);
  return out;
}

Cluster::Cluster(JobStore* store, ClusterOptions options)
    : store_(store), options_(std::move(options)) {}

Cluster::~Cluster() = default;

absl::Status Cluster::FlushJob(RunningJob& run) {
  if (run.unflushed.empty()) return absl::OkStatus();
  absl::MutexLock store_lock(&store_mu_);
  if (absl::Status written = store_->RecordStepSummaries(run.job.id(), run.unflushed);
      !written.ok()) {
    Log(absl::StrCat(run.job.id(), ": cannot record step summaries: ", written.ToString()));
    return written;
  }
  run.unflushed.clear();
  return absl::OkStatus();
}

Cluster::SummaryBatch Cluster::TakeUnflushed() {
  SummaryBatch batch;
  for (auto& [id, run] : running_) {
    if (run.unflushed.empty()) continue;
    batch.push_back({id, run.generation, std::move(run.unflushed)});
    run.unflushed.clear();
  }
  return batch;
}

void Cluster::RestoreUnflushed(SummaryBatch batch) {
  for (SummaryBatchEntry& entry : batch) {
    auto it = running_.find(entry.job_id);
    // A job that ended or regrouped meanwhile replays (or no longer needs) those steps.
    if (it == running_.end() || it->second.generation != entry.generation) continue;
    std::vector<StepSummaryRecord>& unflushed = it->second.unflushed;
    unflushed.insert(unflushed.begin(), entry.summaries.begin(), entry.summaries.end());
  }
}

void Cluster::Flush() {
  last_flush_ = Now();
  SummaryBatch batch = TakeUnflushed();
  if (batch.empty()) return;
  absl::MutexLock store_lock(&store_mu_);
  if (absl::Status written = store_->RecordStepSummariesBatch(ToStoreBatch(batch)); !written.ok()) {
    Log(absl::StrCat("cannot record step summaries (will retry): ", written.ToString()));
    RestoreUnflushed(std::move(batch));
  }
}

}  // namespace raptr
