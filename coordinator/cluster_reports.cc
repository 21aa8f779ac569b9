// The Cluster's handling of its workers' messages: step reports (aggregated into summaries),
// evaluation results and checkpoint votes (distinct ranks), errors and heartbeats (see cluster.h).
#include "coordinator/cluster.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "common/security.h"
#include "coordinator/checkpoint_retention.h"
#include "coordinator/cluster_util.h"

namespace raptr {

using cluster_util::JobLabels;
using cluster_util::Smooth;

namespace {

// What no correct worker reports (the engine fails a step whose loss is not finite rather than
// report it): a loss that is not a finite mean >= 0, a negative count, FLOPs that are not finite
// and >= 0. Empty when the numbers are plausible. The aggregates sum them as they are, and the
// store cannot hold a NaN (SQLite reads it as NULL, and the summary columns are NOT NULL).
std::string Implausible(double loss, int64_t targets, int64_t tokens, double flops,
                        double flops_full) {
  if (!(std::isfinite(loss) && loss >= 0)) return absl::StrCat("loss ", loss);
  if (targets < 0) return absl::StrCat("scored_targets ", targets);
  if (tokens < 0) return absl::StrCat("tokens ", tokens);
  if (!(std::isfinite(flops) && flops >= 0)) return absl::StrCat("flops ", flops);
  if (!(std::isfinite(flops_full) && flops_full >= 0)) {
    return absl::StrCat("flops_full ", flops_full);
  }
  return "";
}

}  // namespace

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
  if (!in_group) return;
  // Work done since the last heartbeat is progress, even with no step finished yet: a step of
  // many micro-batches, a long evaluation or restore. A hung thread's count stands still.
  if (worker.work_done >= 0 && heartbeat.work_done() > worker.work_done) {
    running_.at(worker.job_id).watchdog->RankProgressed(worker.rank, Now());
  }
  worker.work_done = heartbeat.work_done();
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
  std::string implausible = Implausible(report.loss(), report.scored_targets(), report.tokens(),
                                        report.flops(), report.flops_full());
  int64_t targets = 0;
  int64_t tokens = 0;
  if (implausible.empty() &&
      (__builtin_add_overflow(agg.targets, report.scored_targets(), &targets) ||
       __builtin_add_overflow(agg.tokens, report.tokens(), &tokens))) {
    implausible = "counts that overflow the step's totals";
  }
  if (!implausible.empty()) {
    FailGroup(run.job.id(),
              absl::StrCat("rank ", rank, " reported step ", report.step(), " with ", implausible),
              /*retryable=*/true);
    return absl::OkStatus();
  }
  ++agg.reports;
  agg.loss_sum += report.loss() * static_cast<double>(report.scored_targets());
  agg.targets = targets;
  agg.tokens = tokens;
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
  std::string implausible = Implausible(result.loss(), result.scored_targets(), 0, 0, 0);
  int64_t targets = 0;
  if (implausible.empty() &&
      __builtin_add_overflow(agg.targets, result.scored_targets(), &targets)) {
    implausible = "counts that overflow the evaluation's totals";
  }
  if (!implausible.empty()) {
    FailGroup(run.job.id(),
              absl::StrCat("rank ", rank, " answered the evaluation after step ", result.step(),
                           " with ", implausible),
              /*retryable=*/true);
    return absl::OkStatus();
  }
  run.watchdog->RankProgressed(rank, Now());
  agg.loss_sum += result.loss() * static_cast<double>(result.scored_targets());
  agg.targets = targets;
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
  const std::string requested_dir = absl::StrCat(options_.checkpoint_root, "/", run.job.id(),
                                                 "/generation-", run.generation);
  if (rank == 0) {
    // Every later generation would resume from (and the retention would delete under) the
    // committed path: it must be where the coordinator asked, not wherever rank 0 says, and no
    // link a worker planted below the checkpoint root may lead elsewhere.
    absl::Status inside =
        PathIsWithin(written.path(), requested_dir)
            ? CheckNoSymlinksBelow(options_.checkpoint_root, written.path())
            : absl::InvalidArgumentError(absl::StrCat("outside the requested ", requested_dir));
    if (!inside.ok()) {
      FailGroup(run.job.id(),
                absl::StrCat("rank 0 reported checkpoint path \"", written.path(), "\", ",
                             inside.message()),
                /*retryable=*/true);
      return absl::OkStatus();
    }
  }
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
  ApplyCheckpointRetention(run);
  const std::string id = run.job.id();
  MaybeFinish(id);  // may end the group: `run` is not used below
  MaybeGrow(id);
  return absl::OkStatus();
}

void Cluster::ApplyCheckpointRetention(const RunningJob& run) {
  if (options_.keep_checkpoints <= 0) return;
  const std::string& id = run.job.id();
  absl::StatusOr<std::vector<CheckpointRecord>> all = store_->ListCheckpoints(id);
  if (!all.ok()) {
    Log(absl::StrCat(id, ": checkpoint retention skipped: ", all.status().ToString()));
    return;
  }
  const std::vector<CheckpointRecord> dropped = CheckpointsToDrop(*all, options_.keep_checkpoints);
  std::vector<CheckpointRecord> kept;
  std::vector<int64_t> steps;
  for (const CheckpointRecord& checkpoint : *all) {
    const bool drop = std::any_of(dropped.begin(), dropped.end(), [&](const CheckpointRecord& d) {
      return d.step == checkpoint.step;
    });
    if (drop) {
      steps.push_back(checkpoint.step);
    } else {
      kept.push_back(checkpoint);
    }
  }
  // The records first: if the files then stay (a crash, an error), the store references nothing
  // that is gone, and the next commit's sweep finds them.
  if (!steps.empty()) {
    if (absl::Status deleted = store_->DeleteCheckpoints(id, steps); !deleted.ok()) {
      Log(absl::StrCat(id, ": checkpoint retention skipped: ", deleted.ToString()));
      return;
    }
    // Tests kill the coordinator here: the records are gone, the files still there.
    Failpoint("retention.records-deleted");
  }
  const RetentionResult result = RemoveUnreferencedCheckpoints(
      absl::StrCat(options_.checkpoint_root, "/", id), dropped, kept, run.generation);
  for (const std::string& error : result.errors) {
    Log(absl::StrCat(id, ": checkpoint retention: ", error));
  }
  if (!result.removed.empty()) {
    Log(absl::StrCat(id, ": removed ", result.removed.size(), " superseded checkpoint ",
                     result.removed.size() == 1 ? "directory" : "directories", " (keeping ",
                     kept.size(), ")"));
  }
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
