// The Cluster's handling of its workers' messages: step reports (aggregated into summaries),
// evaluation results and checkpoint votes (distinct ranks), errors and heartbeats (see cluster.h).
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
using cluster_util::Smooth;

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

}  // namespace raptr
