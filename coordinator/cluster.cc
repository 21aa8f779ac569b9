// The Cluster's sessions and leases, the periodic work (Tick: expiry, progress deadlines,
// flushes, reconciliation), job lifecycle hooks and shutdown (see cluster.h; groups, reports,
// rendezvous and metrics are in the cluster_*.cc beside it).
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
#include "common/security.h"
#include "coordinator/cluster_util.h"
#include "coordinator/placement.h"
#include "google/protobuf/util/time_util.h"

namespace raptr {

using cluster_util::BackendName;
using cluster_util::EffectiveBackend;
using cluster_util::JobLabels;

double Cluster::Now() const { return options_.clock ? options_.clock() : MonotonicSeconds(); }

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
  // From OpenSSL's CSPRNG: a session token is the only credential of the unary rendezvous calls
  // besides the caller's worker identity, so no output of a seeded generator may predict another.
  absl::StatusOr<uint64_t> token = RandomU64();
  if (!token.ok()) return absl::UnavailableError(absl::StrCat("no session: ", token.status().message()));
  const int64_t id = next_session_++;
  Worker& worker = sessions_[id];
  worker.session = id;
  worker.token = *token;
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
  std::string devices;
  for (const v1::Device& device : hello.devices()) {
    absl::StrAppend(&devices, "device ", device.index(), ": ", device.name(), ", ");
  }
  Log(absl::StrCat("worker ", hello.worker_id(), " connected (", BackendName(hello.backend()), ", ",
                   devices, hello.cpu_threads(), " threads, host ", hello.host(), ")"));
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
    // Its metrics stay a while (connected 0), then go (RefreshMetrics). Not recorded without
    // metrics, where nothing would expire the entry.
    if (metrics_.worker_connected != nullptr) departed_[worker.hello.worker_id()] = Now();
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

void Cluster::JobSubmitted(const std::string& /*job_id*/) {
  absl::MutexLock lock(&mu_);
  schedule_needed_ = true;
  ScheduleIfNeeded();
}

std::vector<v1::WorkerInfo> Cluster::ConnectedWorkers() {
  absl::MutexLock lock(&mu_);
  const double now = Now();
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  std::vector<v1::WorkerInfo> out;
  for (const auto& [worker_id, session] : session_of_worker_) {
    auto it = sessions_.find(session);
    if (it == sessions_.end()) continue;
    const Worker& worker = it->second;
    v1::WorkerInfo info;
    info.set_worker_id(worker_id);
    info.set_backend(EffectiveBackend(worker.hello.backend()));
    info.set_devices(worker.hello.devices_size());
    info.set_memory_bytes(worker.hello.memory_bytes());
    info.set_state(!worker.job_id.empty() ? "busy" : worker.draining ? "draining" : "idle");
    info.set_job_id(!worker.job_id.empty() ? worker.job_id : worker.draining_job);
    info.set_rank(worker.job_id.empty() ? -1 : worker.rank);
    // Steady seconds since its last message, as wall time.
    *info.mutable_last_seen() = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(
        now_ms - static_cast<int64_t>((now - worker.last_seen) * 1000));
    if (!worker.job_id.empty()) info.set_tokens_per_second(worker.tokens_per_second);
    out.push_back(std::move(info));
  }
  return out;
}

void Cluster::JobCancelled(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  recoveries_.erase(job_id);  // a RECOVERING job has an entry and no group
  wait_reasons_.erase(job_id);
  regroup_after_.erase(job_id);
  planned_world_.erase(job_id);
  auto it = running_.find(job_id);
  if (it == running_.end()) return;
  (void)FlushJob(it->second);  // best effort: a cancelled job's progress is informational
  EndGroup(it->second, GroupEnd::kAbort, "the job was cancelled");
  running_.erase(it);
  Log(absl::StrCat(job_id, " cancelled; its workers are free once their job threads end"));
  schedule_needed_ = true;
  ScheduleIfNeeded();
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
