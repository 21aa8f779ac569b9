// The Cluster's Prometheus metrics: families declared once, gauges set at each scrape (see
// cluster.h).
#include "coordinator/cluster.h"

#include <algorithm>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "coordinator/cluster_util.h"

namespace raptr {

using cluster_util::JobLabels;

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

namespace {

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

}  // namespace

void Cluster::RefreshMetrics() {
  if (metrics_.job_state == nullptr) return;
  const Metrics& m = metrics_;
  absl::MutexLock metrics_lock(&metrics_mu_);
  // The store first, without mu_. The exported set: every job not finished (their state and
  // progress change; read without their specs) and the latest finished ones (so dashboards can
  // compare a finished baseline with a running job, and a job's final state is seen), each read
  // once more when it finishes and then not again. A job is read in full (with its spec) the
  // first time it is exported: its labels and spec-derived gauges are kept from then on.
  JobFilter active;
  active.states = {v1::JOB_STATE_PENDING, v1::JOB_STATE_RUNNING, v1::JOB_STATE_RECOVERING};
  active.limit = 1 << 30;
  active.with_spec = false;
  absl::StatusOr<std::vector<v1::Job>> jobs = store_->ListJobs(active);
  absl::StatusOr<std::vector<std::string>> finished = std::vector<std::string>();
  if (options_.metrics_finished_jobs > 0) {
    finished = store_->LatestFinishedJobIds(options_.metrics_finished_jobs);
  }
  // Either read failing leaves the job series as they are: a set computed from half the store
  // would remove series that are still wanted.
  const bool jobs_read = jobs.ok() && finished.ok();
  std::set<std::string> keep;
  std::vector<v1::Job> partial;  // known labels, no spec
  std::vector<v1::Job> full;     // first export, or the final state of a finished job
  if (jobs_read) {
    for (v1::Job& job : *jobs) {
      keep.insert(job.id());
      if (exported_jobs_.count(job.id()) != 0) {
        partial.push_back(std::move(job));
      } else if (absl::StatusOr<v1::Job> read = store_->GetJob(job.id()); read.ok()) {
        full.push_back(*std::move(read));
      }
    }
    for (const std::string& id : *finished) {
      keep.insert(id);
      auto it = exported_jobs_.find(id);
      if (it != exported_jobs_.end() && it->second.final) continue;
      if (absl::StatusOr<v1::Job> read = store_->GetJob(id); read.ok()) {
        full.push_back(*std::move(read));
      }
    }
  }
  if (!departed_seeded_) {
    // Workers the store knew before this start that have not reconnected count as departed when
    // they were last heard from (a clean stop recorded each as gone then) or, for those the
    // previous coordinator still had connected when it died, now.
    if (absl::StatusOr<std::vector<WorkerRecord>> known = store_->ListWorkers(); known.ok()) {
      const double now = Now();
      const int64_t wall_ms = absl::ToUnixMillis(absl::Now());
      absl::MutexLock lock(&mu_);
      for (const WorkerRecord& worker : *known) {
        if (session_of_worker_.count(worker.worker_id) != 0) continue;
        const double ago = std::max<double>(0, (wall_ms - worker.last_seen_ms) / 1000.0);
        departed_.try_emplace(worker.worker_id, worker.state == "gone" ? now - ago : now);
      }
      departed_seeded_ = true;
    }
  }
  absl::MutexLock lock(&mu_);
  static const std::pair<v1::JobState, const char*> kStates[] = {
      {v1::JOB_STATE_PENDING, "pending"},       {v1::JOB_STATE_RUNNING, "running"},
      {v1::JOB_STATE_RECOVERING, "recovering"}, {v1::JOB_STATE_SUCCEEDED, "succeeded"},
      {v1::JOB_STATE_FAILED, "failed"},         {v1::JOB_STATE_CANCELLED, "cancelled"}};
  // The gauges that change while a job runs; `labels` are its cached ones (a job read without
  // its spec has only spec.name).
  auto set_job = [&](const v1::Job& job,
                     const std::vector<std::string>& labels) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const auto& [state, name] : kStates) {
      m.job_state->Set({labels[0], labels[1], labels[2], name}, job.state() == state ? 1 : 0);
    }
    const v1::JobProgress& p = job.progress();
    m.job_step->Set(labels, static_cast<double>(p.step()));
    m.job_stage->Set(labels, p.stage());
    m.job_path_length->Set(labels, p.path_length());
    if (p.step() > 0) m.job_train_loss->Set(labels, p.loss());
    if (p.has_eval_loss()) m.job_eval_loss->Set(labels, p.eval_loss());
    m.job_generation->Set(labels, static_cast<double>(job.generation()));
    m.job_world_size->Set(labels, job.world_size());
    auto run = running_.find(job.id());
    if (run != running_.end()) {
      m.job_tokens_per_second->Set(labels, run->second.tokens_per_second);
    } else {
      m.job_tokens_per_second->Remove(labels);
    }
  };
  for (const v1::Job& job : partial) set_job(job, exported_jobs_.at(job.id()).labels);
  for (const v1::Job& job : full) {
    ExportedJob& exported = exported_jobs_[job.id()];
    exported.labels = JobLabels(job);
    exported.final = IsTerminal(job.state());
    const std::vector<std::string>& labels = exported.labels;
    m.job_steps->Set(labels, static_cast<double>(job.spec().training().steps()));
    m.job_layers->Set(labels, job.spec().model().layers());
    // Counters exist from the job's first scrape, at 0: a series that first appears at 1 hides
    // that first increase from rate() and increase() (and from the recovery-loop alert).
    m.job_recoveries->Add(labels, 0);
    m.job_tokens->Add(labels, 0);
    m.job_flops->Add(labels, 0);
    m.job_flops_full->Add(labels, 0);
    set_job(job, labels);
  }
  if (jobs_read) {
    // A job leaves the set only once finished and older than the latest finished ones, and a
    // finished job never changes again: its series, counters included, are never recreated.
    for (auto it = exported_jobs_.begin(); it != exported_jobs_.end();) {
      if (keep.count(it->first) != 0) {
        ++it;
        continue;
      }
      const std::vector<std::string>& labels = it->second.labels;
      for (metrics::Family* family :
           {m.job_step, m.job_steps, m.job_stage, m.job_path_length, m.job_layers, m.job_train_loss,
            m.job_eval_loss, m.job_tokens, m.job_flops, m.job_flops_full, m.job_tokens_per_second,
            m.job_recoveries, m.job_generation, m.job_world_size}) {
        family->Remove(labels);
      }
      m.job_state->RemoveWithPrefix(labels);  // one series per state
      it = exported_jobs_.erase(it);
    }
  }
  const double now = Now();
  for (const auto& [id, worker] : sessions_) {
    const std::string& name = worker.hello.worker_id();
    departed_.erase(name);
    m.worker_connected->Set({name}, 1);
    if (worker.last_report > 0) m.worker_report_age->Set({name}, now - worker.last_report);
    m.worker_tokens_per_second->Set({name}, worker.job_id.empty() ? 0 : worker.tokens_per_second);
  }
  for (auto it = departed_.begin(); it != departed_.end();) {
    const std::string& name = it->first;
    if (now - it->second < options_.metrics_worker_retention_seconds) {
      m.worker_connected->Set({name}, 0);
      m.worker_report_age->Remove({name});
      m.worker_tokens_per_second->Remove({name});
      ++it;
      continue;
    }
    // A worker that comes back after this starts its series again, the step-time histogram
    // from 0: rate() and increase() read that as a counter reset, which they handle.
    m.worker_connected->Remove({name});
    m.worker_report_age->Remove({name});
    m.worker_tokens_per_second->Remove({name});
    m.worker_step_seconds->RemoveWithPrefix({name});  // every phase
    it = departed_.erase(it);
  }
  m.workers->Set({}, static_cast<double>(sessions_.size()));
  m.reports->Set({}, static_cast<double>(reports_received_));
  m.plans->Set({}, static_cast<double>(plans_sent_));
}

}  // namespace raptr
