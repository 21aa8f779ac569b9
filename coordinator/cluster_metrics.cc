// The Cluster's Prometheus metrics: families declared once, gauges set at each scrape (see
// cluster.h).
#include "coordinator/cluster.h"

#include <algorithm>
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

}  // namespace raptr
