// The Cluster's sessions, leases and progress deadlines, scheduling, groups, plan streaming,
// recovery and summary persistence (see cluster.h; reports, rendezvous and metrics are in the
// cluster_*.cc beside it).
#include "coordinator/cluster.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <regex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "coordinator/cluster_util.h"
#include "coordinator/placement.h"

namespace raptr {

using cluster_util::BackendName;
using cluster_util::EffectiveBackend;
using cluster_util::JobLabels;

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

double Cluster::Now() { return MonotonicSeconds(); }

absl::Status Cluster::RecoverJobsFromStore() {
  absl::StatusOr<std::vector<v1::Job>> jobs = store_->JobsToRecover();
  if (!jobs.ok()) return jobs.status();
  for (const v1::Job& job : *jobs) {
    if (job.state() == v1::JOB_STATE_RUNNING) {
      absl::StatusOr<v1::Job> moved = store_->UpdateJobState(
          job.id(), v1::JOB_STATE_RECOVERING, "the coordinator restarted; regrouping");
      if (!moved.ok()) return moved.status();
    }
    Log(absl::StrCat(job.id(), " will resume (it was ", v1::JobState_Name(job.state()),
                     " when the coordinator stopped)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Cluster::Connect(const v1::Hello& hello, std::shared_ptr<WorkerLink> link) {
  static const std::regex kWorkerId("[A-Za-z0-9._:/-]{1,128}");
  if (!std::regex_match(hello.worker_id(), kWorkerId)) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello.worker_id must be 1 .. 128 characters from [A-Za-z0-9._:/-], got \"",
                     hello.worker_id(), "\""));
  }
  if (hello.backend() == v1::BACKEND_UNSPECIFIED) {
    return absl::InvalidArgumentError("hello.backend is required");
  }
  if (hello.instance_id().empty() || hello.instance_id().size() > 64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hello.instance_id must be 1 .. 64 characters, got ", hello.instance_id().size()));
  }
  absl::MutexLock lock(&mu_);
  if (shut_down_) return absl::UnavailableError("the coordinator is shutting down");
  const double now = Now();
  if (auto old = session_of_worker_.find(hello.worker_id()); old != session_of_worker_.end()) {
    const Worker& previous = sessions_.at(old->second);
    const bool same_instance = previous.hello.instance_id() == hello.instance_id();
    const double silent = now - previous.last_seen;
    if (!same_instance && silent < options_.lease_seconds / 2) {
      // Two live processes with one id (a misconfigured --id, a zombie pod): the newcomer waits
      // instead of the two replacing each other and failing the job at every turn.
      absl::Status refused = absl::AlreadyExistsError(absl::StrFormat(
          "worker id \"%s\" is connected from another process (instance %s, heard from %.1f s "
          "ago); this is instance %s: give every worker process its own id",
          hello.worker_id(), previous.hello.instance_id(), silent, hello.instance_id()));
      Log(absl::StrCat("refused a session: ", refused.message()));
      return refused;
    }
    DropSession(old->second, same_instance
                                 ? "replaced by a reconnect of the same process"
                                 : absl::StrFormat("replaced by another process with the same id "
                                                   "(the old one was silent for %.1f s)",
                                                   silent));
  }
  const int64_t id = next_session_++;
  Worker& worker = sessions_[id];
  worker.session = id;
  worker.token = tokens_();
  worker.hello = hello;
  worker.link = std::move(link);
  worker.last_seen = now;
  session_of_worker_[hello.worker_id()] = id;
  v1::CoordinatorMessage welcome;
  welcome.mutable_welcome()->set_heartbeat_interval_seconds(options_.heartbeat_seconds);
  welcome.mutable_welcome()->set_lease_seconds(options_.lease_seconds);
  welcome.mutable_welcome()->set_session_token(worker.token);
  worker.link->Send(welcome);
  WorkerRecord record;
  record.worker_id = hello.worker_id();
  record.backend = EffectiveBackend(hello.backend());
  record.devices = hello.devices_size();
  record.memory_bytes = hello.memory_bytes();
  record.state = "idle";
  if (absl::Status upserted = store_->UpsertWorker(record); !upserted.ok()) {
    Log(absl::StrCat("cannot record worker ", hello.worker_id(), ": ", upserted.ToString()));
  }
  Log(absl::StrCat("worker ", hello.worker_id(), " connected (", BackendName(hello.backend()), ", ",
                   hello.cpu_threads(), " threads, host ", hello.host(), ")"));
  schedule_needed_ = true;
  ScheduleIfNeeded();
  return id;
}

absl::Status Cluster::Receive(int64_t session, const v1::WorkerMessage& message) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return absl::AbortedError("the session has ended");
  it->second.last_seen = Now();
  absl::Status status;
  switch (message.message_case()) {
    case v1::WorkerMessage::kHello:
      status = absl::InvalidArgumentError("Hello is only allowed as the first message");
      break;
    case v1::WorkerMessage::kHeartbeat:
      OnHeartbeat(it->second, message.heartbeat());
      break;
    case v1::WorkerMessage::kStepReport:
      status = OnStepReport(session, message.step_report());
      break;
    case v1::WorkerMessage::kEvalResult:
      status = OnEvalResult(session, message.eval_result());
      break;
    case v1::WorkerMessage::kCheckpointWritten:
      status = OnCheckpointWritten(session, message.checkpoint_written());
      break;
    case v1::WorkerMessage::kError:
      OnWorkerError(session, message.error());
      break;
    default:
      status = absl::InvalidArgumentError("empty or unknown WorkerMessage");
  }
  ScheduleIfNeeded();
  return status;
}

void Cluster::Disconnect(int64_t session) {
  absl::MutexLock lock(&mu_);
  if (sessions_.count(session) != 0) DropSession(session, "disconnected");
  ScheduleIfNeeded();
}

void Cluster::DropSession(int64_t session, const std::string& why) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  Worker worker = std::move(it->second);
  sessions_.erase(it);
  if (auto s = session_of_worker_.find(worker.hello.worker_id());
      s != session_of_worker_.end() && s->second == session) {
    session_of_worker_.erase(s);
  }
  worker.link->Close(absl::AbortedError(why));
  if (!shut_down_) Log(absl::StrCat("worker ", worker.hello.worker_id(), " left: ", why));
  WorkerRecord record;
  record.worker_id = worker.hello.worker_id();
  record.backend = EffectiveBackend(worker.hello.backend());
  record.devices = worker.hello.devices_size();
  record.memory_bytes = worker.hello.memory_bytes();
  record.state = "gone";
  if (absl::Status upserted = store_->UpsertWorker(record); !upserted.ok()) {
    Log(absl::StrCat("cannot record worker ", record.worker_id, ": ", upserted.ToString()));
  }
  // At shutdown the sessions end because the coordinator goes, not the workers: their jobs stay
  // RUNNING for the next coordinator, and no recovery is counted.
  if (!worker.job_id.empty() && !shut_down_) {
    FailGroup(
        worker.job_id,
        absl::StrCat("worker ", worker.hello.worker_id(), " (rank ", worker.rank, ") lost: ", why),
        /*retryable=*/true);
  }
}

void Cluster::Tick() {
  SummaryBatch batch;
  mu_.Lock();
  if (shut_down_) {
    mu_.Unlock();
    return;
  }
  const double now = Now();
  // A tick that comes late (this process was stopped, or starved of CPU) has not been listening
  // either: it gives the workers a fresh lease rather than expire them all for its own silence.
  const bool late = last_tick_ > 0 && now - last_tick_ > options_.lease_seconds / 2;
  if (late) {
    Log(absl::StrFormat("tick %.1f s late: leases restart", now - last_tick_));
    for (auto& [id, worker] : sessions_) worker.last_seen = std::max(worker.last_seen, now);
  }
  last_tick_ = now;
  // Every expired session is dropped before anything is scheduled (a group must not re-form on
  // a worker that is about to expire too), so losing several workers at once is one recovery.
  std::vector<int64_t> expired;
  for (const auto& [id, worker] : sessions_) {
    if (now - worker.last_seen > options_.lease_seconds) expired.push_back(id);
  }
  for (int64_t id : expired) {
    DropSession(id, absl::StrCat("silent for over ", options_.lease_seconds, " s (lease expired)"));
  }
  CheckProgress(now);
  if (now - last_reconcile_ >= options_.reconcile_seconds) {
    last_reconcile_ = now;
    Reconcile();
  }
  if (now - last_flush_ >= options_.flush_seconds) {
    last_flush_ = now;
    batch = TakeUnflushed();
  }
  schedule_needed_ = true;  // periodically, whatever happened: cheap when no worker is free
  if (batch.empty()) {
    ScheduleIfNeeded();
    mu_.Unlock();
    return;
  }
  // The SQLite write (milliseconds for a few thousand rows) runs without mu_, so reports and
  // plans keep flowing meanwhile. store_mu_ is taken before mu_ is released: any later summary
  // write or discard (they take store_mu_ under mu_) waits for this one, so writes land in the
  // order their batches were taken and a discard is never undone by an older batch.
  store_mu_.Lock();
  mu_.Unlock();
  const absl::Status written = store_->RecordStepSummariesBatch(ToStoreBatch(batch));
  store_mu_.Unlock();
  absl::MutexLock lock(&mu_);
  if (!written.ok()) {
    Log(absl::StrCat("cannot record step summaries (will retry): ", written.ToString()));
    RestoreUnflushed(std::move(batch));
  }
  schedule_needed_ = true;
  ScheduleIfNeeded();
}

void Cluster::CheckProgress(double now) {
  std::vector<std::pair<std::string, std::string>> stalled;  // (job, why)
  for (auto& [job_id, run] : running_) {
    const int world = static_cast<int>(run.members.size());
    std::vector<int> eval_batches(world, 0);
    std::vector<bool> checkpoint(world, false);
    for (int rank = 0; rank < world; ++rank) {
      // Requests after steps the rank has completed that it has not answered yet.
      for (const auto& [step, agg] : run.evals) {
        if (step < run.next_step_by_rank[rank] && !agg.votes.Answered(rank)) {
          eval_batches[rank] += run.planner->eval_batches();
        }
      }
      for (const auto& [step, agg] : run.checkpoints) {
        if (step < run.next_step_by_rank[rank] && !agg.votes.Answered(rank)) checkpoint[rank] = true;
      }
    }
    std::optional<ProgressWatchdog::Stall> stall = run.watchdog->Check(now, eval_batches, checkpoint);
    if (!stall.has_value()) continue;
    const auto member = sessions_.find(run.members[stall->rank]);
    const std::string who =
        member == sessions_.end() ? "a lost worker" : member->second.hello.worker_id();
    stalled.emplace_back(job_id, absl::StrCat("worker ", who, " (", stall->Describe(),
                                              "; its heartbeats go on)"));
  }
  for (auto& [job_id, why] : stalled) FailGroup(job_id, why, /*retryable=*/true);
}

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

void Cluster::JobSubmitted(const std::string& /*job_id*/) {
  absl::MutexLock lock(&mu_);
  schedule_needed_ = true;
  ScheduleIfNeeded();
}

void Cluster::JobCancelled(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  recoveries_.erase(job_id);  // a RECOVERING job has an entry and no group
  regroup_after_.erase(job_id);
  auto it = running_.find(job_id);
  if (it == running_.end()) return;
  (void)FlushJob(it->second);  // best effort: a cancelled job's progress is informational
  EndGroup(it->second, GroupEnd::kAbort, "the job was cancelled");
  running_.erase(it);
  Log(absl::StrCat(job_id, " cancelled; its workers are free once their job threads end"));
  schedule_needed_ = true;
  ScheduleIfNeeded();
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
  for (v1::Job& job : *waiting) {
    if (running_.count(job.id()) != 0) continue;
    if (auto after = regroup_after_.find(job.id()); after != regroup_after_.end()) {
      if (now < after->second) continue;  // Tick schedules it once the delay is over
      regroup_after_.erase(after);
    }
    jobs.push_back(std::move(job));
  }
  if (jobs.empty()) return;
  // Higher priority first; among equals, submission order (ids grow with submission).
  std::stable_sort(jobs.begin(), jobs.end(), [](const v1::Job& a, const v1::Job& b) {
    return a.spec().resources().priority() > b.spec().resources().priority();
  });
  std::map<v1::Backend, std::vector<int64_t>> idle;  // by worker_id order (the map's order)
  for (const auto& [worker_id, session] : session_of_worker_) {
    const Worker& worker = sessions_.at(session);
    if (Placeable(worker, now)) idle[EffectiveBackend(worker.hello.backend())].push_back(session);
  }
  std::vector<WaitingJob> waiting_jobs;
  std::map<std::string, const v1::Job*> by_id;
  for (const v1::Job& job : jobs) {
    const v1::ResourceSpec& r = job.spec().resources();
    waiting_jobs.push_back({job.id(), EffectiveBackend(r.backend()), r.min_workers(),
                            r.max_workers(), job.spec().training().batch()});
    by_id[job.id()] = &job;
  }
  for (Placement& placement : PlaceJobs(waiting_jobs, std::move(idle))) {
    StartGroup(*by_id.at(placement.job_id), std::move(placement.workers));
  }
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

void Cluster::Shutdown(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  shut_down_ = true;
  Flush();
  // Jobs stay RUNNING in the store: the next coordinator recovers them (DropSession counts no
  // recovery once shut_down_ is set). Workers see their streams end and reconnect, to this
  // coordinator's successor.
  for (auto& [id, worker] : sessions_) worker.link->Close(absl::UnavailableError(reason));
}

ClusterStats Cluster::Stats() {
  absl::MutexLock lock(&mu_);
  ClusterStats stats;
  stats.workers = static_cast<int>(sessions_.size());
  for (const auto& [id, worker] : sessions_) stats.idle_workers += worker.job_id.empty() ? 1 : 0;
  stats.running_jobs = static_cast<int>(running_.size());
  for (const auto& [id, worker] : sessions_) stats.draining_workers += worker.draining ? 1 : 0;
  stats.plans_sent = plans_sent_;
  stats.reports_received = reports_received_;
  return stats;
}

}  // namespace raptr
