// The coordinator's scheduling, plan streaming, aggregation and recovery (see cluster.h).
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

namespace raptr {
namespace {

constexpr size_t kMaxKeyBytes = 256;
constexpr size_t kMaxValueBytes = 1 << 20;

v1::Backend EffectiveBackend(v1::Backend backend) {
  return backend == v1::BACKEND_UNSPECIFIED ? v1::BACKEND_CPU : backend;
}

}  // namespace

// The store's batch shape: (job id, summaries) pairs.
std::vector<std::pair<std::string, std::vector<StepSummaryRecord>>> Cluster::ToStoreBatch(
    const SummaryBatch& batch) {
  std::vector<std::pair<std::string, std::vector<StepSummaryRecord>>> out;
  out.reserve(batch.size());
  for (const SummaryBatchEntry& entry : batch) out.emplace_back(entry.job_id, entry.summaries);
  return out;
}

namespace {

// The schedule kind, the `method` label of job metrics.
std::string MethodOf(const v1::JobSpec& spec) {
  switch (spec.schedule().kind_case()) {
    case v1::ScheduleSpec::kFull:
      return "full";
    case v1::ScheduleSpec::kPld:
      return "pld";
    case v1::ScheduleSpec::kLayerdrop:
      return "layerdrop";
    case v1::ScheduleSpec::kStacking:
      return "stacking";
    default:
      return "raptr";
  }
}

std::vector<std::string> JobLabels(const v1::Job& job) {
  return {job.id(), job.spec().name(), MethodOf(job.spec())};
}

// Exponential smoothing of a rate over roughly the last 10 samples.
double Smooth(double previous, double sample) {
  return previous == 0 ? sample : 0.9 * previous + 0.1 * sample;
}

std::string BackendName(v1::Backend backend) {
  return EffectiveBackend(backend) == v1::BACKEND_CUDA ? "cuda" : "cpu";
}

}  // namespace

Cluster::Cluster(JobStore* store, ClusterOptions options)
    : store_(store), options_(std::move(options)) {}

Cluster::~Cluster() = default;

double Cluster::Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void Cluster::Log(const std::string& line) {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
  std::fprintf(stderr, "%s raptr-coordinator: %s\n", stamp, line.c_str());
}

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

void Cluster::OnHeartbeat(Worker& worker, const v1::Heartbeat& heartbeat) {
  if (heartbeat.job_id().empty()) {
    if (worker.draining) {
      worker.draining = false;
      worker.draining_job.clear();
      schedule_needed_ = true;
    }
    return;
  }
  // A job thread the coordinator does not know this session to run (a generation that ended, an
  // older session's): the worker is busy until it says otherwise.
  const bool in_group = worker.job_id == heartbeat.job_id() && worker.rank >= 0 &&
                        running_.count(worker.job_id) != 0 &&
                        running_.at(worker.job_id).generation == heartbeat.generation();
  if (!in_group && !worker.draining) {
    worker.draining = true;
    worker.draining_job = heartbeat.job_id();
  }
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
  // Strict order per backend: a job that cannot start yet holds back the jobs behind it, so a
  // large job is not starved by a stream of small ones.
  std::map<v1::Backend, bool> blocked;
  for (const v1::Job& job : jobs) {
    const v1::Backend backend = EffectiveBackend(job.spec().resources().backend());
    if (blocked[backend]) continue;
    std::vector<int64_t>& free = idle[backend];
    const int min_workers = job.spec().resources().min_workers();
    const int max_workers = job.spec().resources().max_workers();
    const int batch = job.spec().training().batch();
    int world = 0;
    for (int w = std::min<int>(max_workers, static_cast<int>(free.size())); w >= min_workers; --w) {
      if (batch % w == 0) {
        world = w;
        break;
      }
    }
    if (world == 0) {
      blocked[backend] = true;
      continue;
    }
    std::vector<int64_t> group(free.begin(), free.begin() + world);
    free.erase(free.begin(), free.begin() + world);
    StartGroup(job, std::move(group));
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

absl::Status Cluster::OnStepReport(int64_t session, const v1::StepReport& report) {
  ++reports_received_;
  RunningJob* group = GroupOf(session, report.job_id(), report.generation());
  if (group == nullptr) return absl::OkStatus();  // a straggler of an ended generation
  RunningJob& run = *group;
  const int rank = sessions_.at(session).rank;
  const int world = static_cast<int>(run.members.size());
  if (report.rank() != rank || report.step() != run.next_step_by_rank[rank] ||
      report.step() >= run.next_plan) {
    FailGroup(run.job.id(),
              absl::StrCat("rank ", rank, " reported step ", report.step(), " as rank ",
                           report.rank(), "; expected step ", run.next_step_by_rank[rank]),
              /*retryable=*/true);
    return absl::OkStatus();
  }
  auto agg_it = run.steps.find(report.step());
  StepAggregate& agg = agg_it->second;
  ++agg.reports;
  agg.loss_sum += report.loss() * static_cast<double>(report.scored_targets());
  agg.targets += report.scored_targets();
  agg.tokens += report.tokens();
  agg.flops += report.flops();
  agg.flops_full += report.flops_full();
  agg.seconds = std::max(agg.seconds, report.step_seconds());
  run.next_step_by_rank[rank] = report.step() + 1;
  Worker& reporter = sessions_.at(session);
  reporter.last_report = Now();
  run.watchdog->RankProgressed(rank, reporter.last_report);
  if (report.step_seconds() > 0) {
    reporter.tokens_per_second =
        Smooth(reporter.tokens_per_second, report.tokens() / report.step_seconds());
  }
  if (metrics_.worker_step_seconds != nullptr) {
    const std::string& id = reporter.hello.worker_id();
    metrics_.worker_step_seconds->Observe({id, "total"}, report.step_seconds());
    metrics_.worker_step_seconds->Observe({id, "forward"}, report.forward_seconds());
    metrics_.worker_step_seconds->Observe({id, "backward"}, report.backward_seconds());
    metrics_.worker_step_seconds->Observe({id, "allreduce"}, report.allreduce_seconds());
    metrics_.worker_step_seconds->Observe({id, "optimizer"}, report.optimizer_seconds());
  }
  if (agg.reports == world) {
    StepSummaryRecord summary;
    v1::StepPlan plan;
    run.planner->Fill(report.step(), &plan);
    summary.step = report.step();
    summary.stage = plan.stage();
    summary.path_length = plan.active_layers_size();
    summary.loss = agg.targets > 0 ? agg.loss_sum / static_cast<double>(agg.targets) : 0.0;
    summary.learning_rate = plan.learning_rate();
    summary.tokens = agg.tokens;
    summary.flops = agg.flops;
    summary.flops_full = agg.flops_full;
    summary.seconds = agg.seconds;
    run.steps.erase(agg_it);
    run.completed_steps = report.step() + 1;
    run.watchdog->StepCompleted(summary.seconds);
    if (summary.seconds > 0) {
      run.tokens_per_second = Smooth(run.tokens_per_second, summary.tokens / summary.seconds);
    }
    // Work done, replayed steps included (they cost compute too), so these only grow.
    if (metrics_.job_tokens != nullptr) {
      const std::vector<std::string> labels = JobLabels(run.job);
      metrics_.job_tokens->Add(labels, static_cast<double>(summary.tokens));
      metrics_.job_flops->Add(labels, summary.flops);
      metrics_.job_flops_full->Add(labels, summary.flops_full);
    }
    if (run.evals.count(summary.step) != 0) {
      run.awaiting_eval[summary.step] = summary;
    } else {
      run.unflushed.push_back(summary);
    }
  }
  SendPlans(run);
  return absl::OkStatus();
}

absl::Status Cluster::OnEvalResult(int64_t session, const v1::EvalResult& result) {
  RunningJob* group = GroupOf(session, result.job_id(), result.generation());
  if (group == nullptr) return absl::OkStatus();
  RunningJob& run = *group;
  const int rank = sessions_.at(session).rank;
  auto it = run.evals.find(result.step());
  if (it == run.evals.end() || result.step() >= run.next_step_by_rank[rank]) {
    FailGroup(run.job.id(),
              absl::StrCat("rank ", rank, " answered an evaluation after step ", result.step(),
                           " that was not requested of it"),
              /*retryable=*/true);
    return absl::OkStatus();
  }
  EvalAggregate& agg = it->second;
  if (result.rank() != rank || agg.votes.Add(rank) != RankVotes::Result::kCounted) {
    FailGroup(run.job.id(),
              absl::StrCat("rank ", rank, " answered the evaluation after step ", result.step(),
                           " twice or as rank ", result.rank()),
              /*retryable=*/true);
    return absl::OkStatus();
  }
  run.watchdog->RankProgressed(rank, Now());
  agg.loss_sum += result.loss() * static_cast<double>(result.scored_targets());
  agg.targets += result.scored_targets();
  agg.batches = result.batches();
  agg.seconds = std::max(agg.seconds, result.seconds());
  if (!agg.votes.Complete()) return absl::OkStatus();
  const int64_t step = result.step();
  if (agg.targets == 0) {
    run.evals.erase(it);
    FailGroup(run.job.id(), absl::StrCat("the evaluation after step ", step, " scored no targets"),
              /*retryable=*/false);
    return absl::OkStatus();
  }
  const double loss = agg.loss_sum / static_cast<double>(agg.targets);
  run.evals.erase(it);
  auto waiting = run.awaiting_eval.find(step);
  if (waiting != run.awaiting_eval.end()) {
    waiting->second.eval_loss = loss;
    run.unflushed.push_back(waiting->second);
    run.awaiting_eval.erase(waiting);
  }
  MaybeFinish(run.job.id());
  return absl::OkStatus();
}

absl::Status Cluster::OnCheckpointWritten(int64_t session, const v1::CheckpointWritten& written) {
  RunningJob* group = GroupOf(session, written.job_id(), written.generation());
  if (group == nullptr) return absl::OkStatus();
  RunningJob& run = *group;
  // CheckpointRequest.step is the 0-based step after which to write; the answer's step counts
  // optimizer steps done, one more.
  auto it = run.checkpoints.find(written.step() - 1);
  if (it == run.checkpoints.end()) {
    FailGroup(run.job.id(),
              absl::StrCat("a checkpoint at step ", written.step(), " was not requested"),
              /*retryable=*/true);
    return absl::OkStatus();
  }
  CheckpointAggregate& agg = it->second;
  const int rank = sessions_.at(session).rank;
  if (written.rank() != rank || agg.votes.Add(rank) != RankVotes::Result::kCounted) {
    FailGroup(run.job.id(),
              absl::StrCat("rank ", rank, " answered the checkpoint at step ", written.step(),
                           " twice or as rank ", written.rank()),
              /*retryable=*/true);
    return absl::OkStatus();
  }
  run.watchdog->RankProgressed(rank, Now());
  if (rank == 0) agg.path = written.path();
  if (agg.digest.has_value() && *agg.digest != written.state_digest()) agg.diverged = true;
  agg.digest = written.state_digest();
  if (!agg.votes.Complete()) return absl::OkStatus();
  const int64_t step = written.step();
  const bool diverged = agg.diverged;
  const std::string path = agg.path;
  const uint64_t digest = agg.digest.value_or(0);
  run.checkpoints.erase(it);
  if (diverged) {
    FailGroup(run.job.id(),
              absl::StrCat("data-parallel replicas diverged: their states differ after step ",
                           step - 1, "; not saving either"),
              /*retryable=*/false);
    return absl::OkStatus();
  }
  if (path.empty()) {
    FailGroup(run.job.id(),
              absl::StrCat("rank 0 reported no path for the checkpoint at step ", step),
              /*retryable=*/true);
    return absl::OkStatus();
  }
  // The summaries up to the checkpoint go first, so a reader never sees a checkpoint ahead of
  // the progress it implies; when they cannot be written, nothing is committed.
  if (absl::Status flushed = FlushJob(run); !flushed.ok()) {
    FailGroup(run.job.id(),
              absl::StrCat("cannot record the step summaries before the checkpoint at step ", step,
                           ", so it is not committed: ", flushed.message()),
              /*retryable=*/true);
    return absl::OkStatus();
  }
  if (absl::Status committed = store_->CommitCheckpoint(run.job.id(), step, path, digest);
      !committed.ok()) {
    FailGroup(
        run.job.id(),
        absl::StrCat("cannot commit the checkpoint at step ", step, ": ", committed.message()),
        /*retryable=*/true);
    return absl::OkStatus();
  }
  run.committed_step = step;
  recoveries_.erase(run.job.id());
  MaybeFinish(run.job.id());
  return absl::OkStatus();
}

void Cluster::OnWorkerError(int64_t session, const v1::WorkerError& error) {
  const Worker& worker = sessions_.at(session);
  Log(absl::StrCat("worker ", worker.hello.worker_id(), " error in ",
                   error.job_id().empty() ? "no job" : error.job_id(), " at step ", error.step(),
                   ": ", error.message()));
  if (error.job_id().empty()) return;
  RunningJob* run = GroupOf(session, error.job_id(), error.generation());
  if (run == nullptr) return;
  if (error.resume_checkpoint_unusable() && run->resumed_from >= 0) {
    // The next group starts from the checkpoint before it (or from step 0).
    const int64_t step = run->resumed_from;
    if (absl::Status rejected = store_->RejectCheckpoint(error.job_id(), step, error.message());
        !rejected.ok()) {
      Log(absl::StrCat(error.job_id(), ": cannot reject the checkpoint at step ", step, ": ",
                       rejected.ToString()));
    } else {
      Log(absl::StrCat(error.job_id(), ": the checkpoint at step ", step,
                       " is unusable; resuming from the one before it"));
    }
  }
  FailGroup(error.job_id(),
            absl::StrCat("worker ", worker.hello.worker_id(), " (rank ", worker.rank,
                         ") failed at step ", error.step(), ": ", error.message()),
            error.retryable());
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

bool Cluster::IsMember(const std::string& job_id, int64_t generation,
                       const std::string& worker_id, uint64_t token) const {
  auto run = running_.find(job_id);
  auto session = session_of_worker_.find(worker_id);
  if (run == running_.end() || run->second.generation != generation ||
      session == session_of_worker_.end() || sessions_.at(session->second).token != token) {
    return false;
  }
  const std::vector<int64_t>& members = run->second.members;
  return std::find(members.begin(), members.end(), session->second) != members.end();
}

absl::Status Cluster::KvSet(const v1::KvSetRequest& request) {
  if (request.key().empty() || request.key().size() > kMaxKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("key must be 1 .. ", kMaxKeyBytes, " bytes, got ", request.key().size()));
  }
  if (request.value().size() > kMaxValueBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "value of key \"", request.key(), "\" is over 1 MiB (", request.value().size(), " bytes)"));
  }
  absl::MutexLock lock(&mu_);
  if (!IsMember(request.job_id(), request.generation(), request.worker_id(),
                request.session_token())) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker \"", request.worker_id(), "\" is not in generation ",
                     request.generation(), " of job \"", request.job_id(), "\""));
  }
  kv_[{request.job_id(), request.generation()}].values[request.key()] = request.value();
  return absl::OkStatus();
}

absl::StatusOr<std::string> Cluster::KvGet(const v1::KvGetRequest& request,
                                           std::chrono::system_clock::time_point deadline) {
  absl::MutexLock lock(&mu_);
  auto member = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return IsMember(request.job_id(), request.generation(), request.worker_id(),
                    request.session_token());
  };
  if (!member()) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker \"", request.worker_id(), "\" is not in generation ",
                     request.generation(), " of job \"", request.job_id(), "\""));
  }
  const std::pair<std::string, int64_t> space{request.job_id(), request.generation()};
  auto lookup = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> const std::string* {
    auto kv = kv_.find(space);
    if (kv == kv_.end()) return nullptr;
    auto value = kv->second.values.find(request.key());
    return value == kv->second.values.end() ? nullptr : &value->second;
  };
  if (const std::string* value = lookup()) return *value;
  if (!request.wait()) {
    return absl::NotFoundError(absl::StrCat("key \"", request.key(), "\" is not set"));
  }
  absl::Time until = absl::InfiniteFuture();
  if (deadline < std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
    until = absl::FromChrono(deadline);
  }
  if (request.timeout_seconds() > 0) {
    until = std::min(until, absl::Now() + absl::Seconds(request.timeout_seconds()));
  }
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return shut_down_ || !member() || lookup() != nullptr;
  };
  mu_.AwaitWithDeadline(absl::Condition(&ready), until);
  if (shut_down_) return absl::UnavailableError("the coordinator is shutting down");
  if (!member()) {
    return absl::AbortedError(absl::StrCat("generation ", request.generation(), " of job \"",
                                           request.job_id(), "\" ended while waiting"));
  }
  if (const std::string* value = lookup()) return *value;
  return absl::DeadlineExceededError(
      absl::StrCat("key \"", request.key(), "\" was not set in time"));
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

void Cluster::ExportMetrics(metrics::Registry* registry) {
  const std::vector<std::string> job = {"job_id", "job_name", "method"};
  Metrics& m = metrics_;
  m.job_state =
      registry->Gauge("raptr_job_state", "1 for the job's current state, 0 for the others.",
                      {"job_id", "job_name", "method", "state"});
  m.job_step = registry->Gauge("raptr_job_step", "Steps the job has completed.", job);
  m.job_steps = registry->Gauge("raptr_job_steps", "Steps the job runs in all (its spec).", job);
  m.job_stage = registry->Gauge(
      "raptr_job_stage", "0-based schedule stage of the last step; -1 for full-model steps.", job);
  m.job_path_length =
      registry->Gauge("raptr_job_path_length", "Active blocks in the last step's path.", job);
  m.job_layers = registry->Gauge("raptr_job_layers", "Blocks in the model (L).", job);
  m.job_train_loss =
      registry->Gauge("raptr_job_train_loss", "Training loss of the last completed step.", job);
  m.job_eval_loss =
      registry->Gauge("raptr_job_eval_loss", "Validation loss of the latest evaluation.", job);
  m.job_tokens = registry->Counter("raptr_job_tokens_total",
                                   "Tokens trained on, replayed steps included.", job);
  m.job_flops = registry->Counter("raptr_job_flops_total",
                                  "Training FLOPs spent, replayed steps included.", job);
  m.job_flops_full = registry->Counter(
      "raptr_job_flops_full_total",
      "FLOPs full training would have spent on the same steps; 1 - flops/flops_full is the "
      "saving.",
      job);
  m.job_tokens_per_second = registry->Gauge(
      "raptr_job_tokens_per_second", "Training throughput of a running job (recent steps).", job);
  m.job_recoveries = registry->Counter("raptr_job_recoveries_total",
                                       "Times the job's worker group failed and re-formed.", job);
  m.job_generation =
      registry->Gauge("raptr_job_generation", "The job's worker-group generation.", job);
  m.job_world_size =
      registry->Gauge("raptr_job_world_size", "Workers in the job's current group.", job);
  m.worker_connected = registry->Gauge(
      "raptr_worker_connected", "1 while the worker's session is up, 0 once it left.", {"worker"});
  m.worker_report_age = registry->Gauge("raptr_worker_last_report_age_seconds",
                                        "Seconds since the worker's last step report.", {"worker"});
  m.worker_step_seconds =
      registry->Histogram("raptr_worker_step_seconds",
                          "Step time as the worker reported it: the whole step and its phases.",
                          {"worker", "phase"}, metrics::Registry::ExponentialBuckets(0.001, 2, 17));
  m.worker_tokens_per_second =
      registry->Gauge("raptr_worker_tokens_per_second",
                      "The worker's tokens per second (recent steps).", {"worker"});
  m.workers = registry->Gauge("raptr_coordinator_workers", "Connected workers.");
  m.reports = registry->Counter("raptr_coordinator_reports_total", "Step reports received.");
  m.plans = registry->Counter("raptr_coordinator_plans_sent_total", "Step plans sent.");
}

void Cluster::RefreshMetrics() {
  if (metrics_.job_state == nullptr) return;
  const Metrics& m = metrics_;
  // The store first, without mu_: every job it holds (finished ones too, so dashboards can
  // compare a finished baseline with a running job).
  JobFilter filter;
  filter.limit = 1000;
  absl::StatusOr<std::vector<v1::Job>> jobs = store_->ListJobs(filter);
  absl::StatusOr<std::vector<WorkerRecord>> known = store_->ListWorkers();
  absl::MutexLock lock(&mu_);
  static const std::pair<v1::JobState, const char*> kStates[] = {
      {v1::JOB_STATE_PENDING, "pending"},       {v1::JOB_STATE_RUNNING, "running"},
      {v1::JOB_STATE_RECOVERING, "recovering"}, {v1::JOB_STATE_SUCCEEDED, "succeeded"},
      {v1::JOB_STATE_FAILED, "failed"},         {v1::JOB_STATE_CANCELLED, "cancelled"}};
  if (jobs.ok()) {
    for (const v1::Job& job : *jobs) {
      const std::vector<std::string> labels = JobLabels(job);
      for (const auto& [state, name] : kStates) {
        m.job_state->Set({labels[0], labels[1], labels[2], name}, job.state() == state ? 1 : 0);
      }
      const v1::JobProgress& p = job.progress();
      m.job_step->Set(labels, static_cast<double>(p.step()));
      m.job_steps->Set(labels, static_cast<double>(job.spec().training().steps()));
      m.job_stage->Set(labels, p.stage());
      m.job_path_length->Set(labels, p.path_length());
      m.job_layers->Set(labels, job.spec().model().layers());
      if (p.step() > 0) m.job_train_loss->Set(labels, p.loss());
      if (p.has_eval_loss()) m.job_eval_loss->Set(labels, p.eval_loss());
      m.job_generation->Set(labels, static_cast<double>(job.generation()));
      // Counters exist from the job's first scrape, at 0: a series that first appears at 1 hides
      // that first increase from rate() and increase() (and from the recovery-loop alert).
      m.job_recoveries->Add(labels, 0);
      m.job_tokens->Add(labels, 0);
      m.job_flops->Add(labels, 0);
      m.job_flops_full->Add(labels, 0);
      m.job_world_size->Set(labels, job.world_size());
      auto run = running_.find(job.id());
      if (run != running_.end()) {
        m.job_tokens_per_second->Set(labels, run->second.tokens_per_second);
      } else {
        m.job_tokens_per_second->Remove(labels);
      }
    }
  }
  const double now = Now();
  if (known.ok()) {
    for (const WorkerRecord& worker : *known) {
      const bool connected = session_of_worker_.count(worker.worker_id) != 0;
      m.worker_connected->Set({worker.worker_id}, connected ? 1 : 0);
      if (!connected) {
        m.worker_report_age->Remove({worker.worker_id});
        m.worker_tokens_per_second->Remove({worker.worker_id});
      }
    }
  }
  for (const auto& [id, worker] : sessions_) {
    const std::string& name = worker.hello.worker_id();
    m.worker_connected->Set({name}, 1);
    if (worker.last_report > 0) m.worker_report_age->Set({name}, now - worker.last_report);
    m.worker_tokens_per_second->Set({name}, worker.job_id.empty() ? 0 : worker.tokens_per_second);
  }
  m.workers->Set({}, static_cast<double>(sessions_.size()));
  m.reports->Set({}, static_cast<double>(reports_received_));
  m.plans->Set({}, static_cast<double>(plans_sent_));
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
