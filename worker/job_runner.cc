// One assignment's thread (see job_runner.h).
#include "worker/job_runner.h"

#include <unistd.h>

#include <chrono>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/job_config.h"
#include "worker/kv_rendezvous_store.h"
#if RAPTR_HAVE_NCCL
#include "worker/collective/nccl_group.h"
#endif

namespace raptr {

bool NcclBuilt() {
#if RAPTR_HAVE_NCCL
  return true;
#else
  return false;
#endif
}
namespace {
double Now() { return MonotonicSeconds(); }
}  // namespace

void JobRunner::Run() {
  const std::vector<std::string> info = {job_id(), std::to_string(assignment_.rank()),
                                         std::to_string(assignment_.world_size())};
  if (metrics_ != nullptr) metrics_->job_info->Set(info, 1);
  const absl::Status status = RunJob();
  if (metrics_ != nullptr) metrics_->job_info->Remove(info);
  // The group is torn down (the Gloo group died with RunJob's scope) before the error goes
  // out, so peers blocked in a collective with this rank fail fast too.
  const bool was_aborted = aborted();
  const std::string fault = device_fault_;
  if (!fault.empty()) {
    Log(absl::StrCat(job_id(), ": ",
                     options_.backend.kind == BackendKind::kCuda
                         ? absl::StrCat("CUDA device ", options_.backend.device)
                         : std::string("the CPU backend"),
                     " is unusable (", fault,
                     "): reporting it; this worker takes no other job and exits (status ",
                     kExitDeviceFault, ")"));
    // Before the error goes out: the coordinator's answer to it (an Abort) must find the agent
    // knowing that it leaves.
    if (on_device_fault_) on_device_fault_(fault);
  }
  if (!status.ok() && !was_aborted) {
    Log(absl::StrCat(job_id(), " failed at step ", current_step_, ": ", status.ToString()));
    v1::WorkerMessage message;
    v1::WorkerError* error = message.mutable_error();
    error->set_job_id(job_id());
    error->set_generation(generation());
    error->set_step(current_step_);
    error->set_code(static_cast<int>(status.code()));
    error->set_message(fault.empty() ? std::string(status.message())
                                     : absl::StrCat(status.message(),
                                                    " (a sticky device fault: the worker exits)"));
    error->set_resume_checkpoint_unusable(resume_unusable_);
    // Bad input (a missing shard, a spec this build cannot run, a checkpoint of another run)
    // fails the same way on any worker; lost peers and timeouts may not.
    const absl::StatusCode code = status.code();
    error->set_retryable(
        code != absl::StatusCode::kInvalidArgument && code != absl::StatusCode::kNotFound &&
        code != absl::StatusCode::kFailedPrecondition && code != absl::StatusCode::kDataLoss &&
        code != absl::StatusCode::kUnimplemented && code != absl::StatusCode::kResourceExhausted);
    // An unusable checkpoint is not the job's end: the one before it may be fine. Nor is a
    // faulted device (whatever code the failing call returned): other workers have good ones.
    if (resume_unusable_ || !fault.empty()) error->set_retryable(true);
    connection_->Write(message);
  }
  {
    absl::MutexLock lock(&mu_);
    finished_locked_ = true;
    finished_.store(true);
  }
  // Not free after a device fault: the agent leaves the cluster instead of taking another job.
  if (!fault.empty()) return;
  // Free now, not at the next heartbeat: the coordinator places a worker again only once it
  // has said its job thread ended.
  v1::WorkerMessage idle;
  idle.mutable_heartbeat()->set_step(-1);
  connection_->Write(idle);
}

absl::Status JobRunner::RunJob() {
  const int rank = assignment_.rank(), world = assignment_.world_size();
  Log(absl::StrCat(job_id(), " generation ", generation(), ": rank ", rank, " of ", world,
                   assignment_.has_resume_checkpoint()
                       ? absl::StrCat(", resuming from ", assignment_.resume_checkpoint().path())
                       : std::string(", from step 0")));
  ASSIGN_OR_RETURN(TrainerConfig config,
                   TrainerConfigForWorker(assignment_.spec(), options_.backend));
  Log(absl::StrCat(job_id(), " schedule: ", DescribePathSchedule(config.schedule)));
  // Before anything opens the job's data: a path outside this worker's --data-root fails the job
  // (INVALID_ARGUMENT, which no other worker would fix either) with the file never opened. The
  // coordinator checked against its own roots at submit; this worker trusts only its own.
  RETURN_IF_ERROR(ConfineTrainerData(options_.data_roots, &config));
  config.log_every = 0;
  absl::StatusOr<std::unique_ptr<TrainingSession>> created =
      TrainingSession::Create(config, rank, world);
  if (!created.ok()) {
    // A device that faulted in an earlier job (or while this one started) fails every start:
    // without this, the worker would take and fail every job it is given.
    device_fault_ = ProcessDeviceFault();
    return created.status();
  }
  std::unique_ptr<TrainingSession> session = std::move(*created);
  // However RunJob ends (a failed call returns at once), whether the device is still usable is
  // read before the session goes: Run reports a sticky fault and the worker exits.
  struct NoteDeviceFault {
    JobRunner* runner;
    const TrainingSession* session;
    ~NoteDeviceFault() {
      runner->device_fault_ = session->DeviceFault();
      if (runner->device_fault_.empty()) runner->device_fault_ = ProcessDeviceFault();
    }
  } note_device_fault{this, session.get()};
  session->CountWorkIn(&work_done_);
  if (assignment_.has_resume_checkpoint()) {
    const v1::CheckpointRef& resume = assignment_.resume_checkpoint();
    // DATA_LOSS from here on means the checkpoint was read and is wrong: the coordinator rejects
    // it and resumes from the one before (other errors, a missing directory say, are this
    // worker's and do not condemn the checkpoint).
    absl::Status restored = session->Restore(resume.path());
    if (restored.ok() && session->step() != resume.step()) {
      restored = absl::DataLossError(absl::StrCat("checkpoint ", resume.path(), " holds step ",
                                                  session->step(),
                                                  ", the coordinator committed "
                                                  "it as step ",
                                                  resume.step()));
    }
    if (restored.ok() && resume.state_digest() != 0) {
      const absl::StatusOr<uint64_t> digest = session->StateDigest();
      if (!digest.ok()) {
        restored = digest.status();
      } else if (*digest != resume.state_digest()) {
        restored = absl::DataLossError(absl::StrFormat(
            "checkpoint %s: its state's digest %016x is not the %016x recorded when it was "
            "committed (torn or corrupted files)",
            resume.path(), *digest, resume.state_digest()));
      }
    }
    if (restored.code() == absl::StatusCode::kDataLoss) resume_unusable_ = true;
    RETURN_IF_ERROR(restored);
  }
  current_step_ = session->step();
  last_step_.store(session->step() - 1);
  // Declared after the session, so destroyed first: an NCCL group uses the backend's stream.
  std::unique_ptr<GradientReducer> group;
  if (world > 1) {
    const auto timeout =
        std::chrono::milliseconds(static_cast<int64_t>(options_.collective_timeout_seconds * 1000));
    CoordinatorStore store(stub_, job_id(), generation(), worker_id_, session_token_, timeout);
    // An abort during the rendezvous cancels its waits (the store outlives this block only).
    SetRendezvous(&store);
    // Every rank must use the same collective, whatever each worker's --collectives says: rank 0
    // decides and publishes its choice in the generation's rendezvous; the others follow it, or
    // fail at once naming the mismatch (rather than each waiting on the other's keys until the
    // collective timeout, and the job retrying that forever).
    bool nccl =
        config.backend.kind == BackendKind::kCuda && NcclBuilt() && options_.collectives != "gloo";
    absl::Status joined;
    constexpr char kCollectivesKey[] = "raptr/collectives";
    try {
      if (rank == 0) {
        const std::string choice = nccl ? "nccl" : "gloo";
        store.set(kCollectivesKey, std::vector<char>(choice.begin(), choice.end()));
      } else {
        const std::vector<char> got = store.get(kCollectivesKey);
        const std::string choice(got.begin(), got.end());
        if (choice == "nccl" && !nccl &&
            !(config.backend.kind == BackendKind::kCuda && NcclBuilt())) {
          joined = absl::FailedPreconditionError(
              absl::StrCat("rank 0 all-reduces over NCCL, but this worker cannot (",
                           config.backend.kind != BackendKind::kCuda ? "not a CUDA worker"
                                                                     : "built without NCCL",
                           "): give every CUDA worker of a job the same --collectives"));
        }
        nccl = choice == "nccl";
      }
    } catch (const std::exception& e) {
      joined = absl::UnavailableError(
          absl::StrCat("rendezvous: agreeing on the collective with rank 0: ", e.what()));
    }
    if (!joined.ok()) {
      SetRendezvous(nullptr);
      return joined;
    }
#if RAPTR_HAVE_NCCL
    if (nccl) {
      // Created first and registered, so an abort reaches the bootstrap's waits too.
      absl::StatusOr<NcclGroupOptions> options =
          NcclGroupOptionsFor(session->backend(), rank, world, timeout);
      absl::StatusOr<std::unique_ptr<NcclGroup>> created =
          options.ok() ? NcclGroup::Create(*options)
                       : absl::StatusOr<std::unique_ptr<NcclGroup>>(options.status());
      if (created.ok()) {
        NcclGroup* g = created->get();
        group = std::move(*created);
        SetGroup(g);
        joined = g->Join(store);
      } else {
        joined = created.status();
      }
    }
#endif
    if (!nccl) {
      // Gloo over host memory (a GPU session stages its gradients through the host).
      absl::StatusOr<std::unique_ptr<GlooGroup>> connected =
          GlooGroup::Connect(store, rank, world, host_, timeout);
      if (connected.ok()) {
        group = std::move(*connected);
        SetGroup(group.get());
      }
      joined = connected.status();
    }
    SetRendezvous(nullptr);
    if (!joined.ok()) SetGroup(nullptr);
    RETURN_IF_ERROR(joined);
    Log(absl::StrCat(job_id(), ": rank ", rank, " of ", world, " all-reduces over ",
                     nccl ? "NCCL" : "Gloo",
                     nccl || config.backend.kind == BackendKind::kCpu ? "" : " (host-staged)"));
  }
  // The group outlives every use; Abort() must not reach it once it is gone.
  // On any end but a release, the group is aborted before it goes: a healthy NCCL communicator
  // would otherwise be finalized (waiting up to the timeout for peers that are still in a
  // collective), and Gloo peers blocked on this rank fail at once instead of at their timeout.
  struct ClearGroup {
    JobRunner* runner;
    GradientReducer* group;
    bool released = false;
    ~ClearGroup() {
      runner->SetGroup(nullptr);
      if (group != nullptr && !released) group->Abort();
    }
  } clear_group{this, group.get()};
  const int L = config.model.num_layers;
  double last_log = Now();
  int64_t steps_since_log = 0;
  // Time blocked waiting for the next plan or request: the coordinator is meant to stay off the
  // critical path, so this should be ~0 (logged at the end).
  double waiting = 0, busy = 0, writing = 0;
  double t_wait = Now();
  while (std::optional<v1::CoordinatorMessage> message = Pop()) {
    const double t_got = Now();
    waiting += t_got - t_wait;
    v1::WorkerMessage out;
    if (message->has_step_plan()) {
      const v1::StepPlan& plan = message->step_plan();
      ASSIGN_OR_RETURN(StepInput input, ToStepInput(plan, L));
      current_step_ = plan.step();
      if (plan.step() == options_.crash_at_step) {
        Log(absl::StrCat("--crash-at-step ", plan.step(), ": dying now"));
        _exit(3);
      }
      if (plan.step() == options_.hang_at_step && generation() == 1) {
        Log(absl::StrCat("--hang-at-step ", plan.step(), ": hanging (ignoring aborts)"));
        while (true) std::this_thread::sleep_for(std::chrono::hours(1));
      }
      ASSIGN_OR_RETURN(StepOutcome step, session->RunStep(input, group.get()));
      v1::StepReport* report = out.mutable_step_report();
      report->set_job_id(job_id());
      report->set_generation(generation());
      report->set_rank(rank);
      report->set_step(plan.step());
      report->set_loss(step.local_loss);
      report->set_scored_targets(step.local_targets);
      report->set_tokens(step.local_tokens);
      report->set_flops(step.local_flops);
      report->set_flops_full(step.local_flops_full);
      report->set_grad_norm(step.grad_norm);
      report->set_step_seconds(step.times.total);
      report->set_forward_seconds(step.times.forward);
      report->set_backward_seconds(step.times.backward);
      report->set_allreduce_seconds(step.times.allreduce);
      report->set_optimizer_seconds(step.times.optimizer);
      last_step_.store(plan.step());
      ++steps_since_log;
      if (metrics_ != nullptr) {
        metrics_->step_seconds->Observe({"total"}, step.times.total);
        metrics_->step_seconds->Observe({"forward"}, step.times.forward);
        metrics_->step_seconds->Observe({"backward"}, step.times.backward);
        metrics_->step_seconds->Observe({"allreduce"}, step.times.allreduce);
        metrics_->step_seconds->Observe({"optimizer"}, step.times.optimizer);
        metrics_->steps->Add({}, 1);
        metrics_->tokens->Add({}, static_cast<double>(step.local_tokens));
      }
      if (Now() - last_log >= 10) {
        Log(absl::StrFormat("%s step %d/%d path %d loss %.4f (%.2f steps/s)", job_id(),
                            plan.step() + 1, config.steps, plan.active_layers_size(),
                            step.local_loss, steps_since_log / (Now() - last_log)));
        last_log = Now();
        steps_since_log = 0;
      }
    } else if (message->has_eval_request()) {
      const v1::EvalRequest& request = message->eval_request();
      ActiveLayerSet active = ActiveLayerSet::Full(L);
      if (request.active_layers_size() > 0) {
        std::vector<int> layers(request.active_layers().begin(), request.active_layers().end());
        for (int l : layers) {
          if (l < 0 || l >= L) {
            return absl::InvalidArgumentError(
                absl::StrCat("eval request: block ", l, " out of range [0, ", L, ")"));
          }
        }
        active = ActiveLayerSet::Of(L, layers);
      }
      ASSIGN_OR_RETURN(EvalOutcome eval, session->Evaluate(request.batches(), active));
      v1::EvalResult* result = out.mutable_eval_result();
      result->set_job_id(job_id());
      result->set_generation(generation());
      result->set_step(request.step());
      result->set_rank(rank);
      result->set_loss(eval.loss);
      result->set_scored_targets(eval.scored_targets);
      result->set_batches(eval.batches);
      result->set_seconds(eval.seconds);
      if (rank == 0) {
        Log(absl::StrFormat("%s eval after step %d: rank 0 loss %.4f", job_id(), request.step() + 1,
                            eval.loss));
      }
    } else if (message->has_checkpoint_request()) {
      const v1::CheckpointRequest& request = message->checkpoint_request();
      if (request.step() + 1 != session->step()) {
        return absl::InternalError(absl::StrCat("checkpoint requested after step ", request.step(),
                                                " but ", session->step(), " steps are done"));
      }
      v1::CheckpointWritten* written = out.mutable_checkpoint_written();
      // Replicas hold the same state: rank 0 writes it, every rank vouches with its digest.
      if (rank == 0) {
        ASSIGN_OR_RETURN(std::string path, session->Save(request.path()));
        // Failpoint job.checkpoint-path-outside: rank 0 reports a path outside the requested
        // directory, as a compromised worker would (the coordinator must not commit it).
        written->set_path(FailpointHit("job.checkpoint-path-outside") ? "/etc" : path);
      }
      written->set_job_id(job_id());
      written->set_generation(generation());
      written->set_step(session->step());
      written->set_rank(rank);
      ASSIGN_OR_RETURN(const uint64_t digest, session->StateDigest());
      written->set_state_digest(digest);
    } else if (message->has_release()) {
      Log(absl::StrFormat(
          "%s done: %d steps; %.2f s working, %.3f s waiting for the coordinator, %.3f s "
          "sending reports",
          job_id(), session->step(), busy, waiting, writing));
      clear_group.released = true;
      return absl::OkStatus();
    } else {
      t_wait = Now();
      continue;
    }
    const double w0 = Now();
    if (!connection_->Write(out)) {
      return absl::UnavailableError("the stream to the coordinator broke");
    }
    t_wait = Now();
    writing += t_wait - w0;
    busy += t_wait - t_got;
  }
  return absl::OkStatus();  // aborted
}

absl::StatusOr<StepInput> JobRunner::ToStepInput(const v1::StepPlan& plan, int L) {
  StepInput input;
  input.step = plan.step();
  input.stage = plan.stage();
  input.active = ActiveLayerSet::Of(L, {});
  if (plan.layer_scales_size() != 0 && plan.layer_scales_size() != plan.active_layers_size()) {
    return absl::InvalidArgumentError(absl::StrCat("step plan ", plan.step(), ": ",
                                                   plan.layer_scales_size(), " scales for ",
                                                   plan.active_layers_size(), " active blocks"));
  }
  int previous = -1;
  for (int i = 0; i < plan.active_layers_size(); ++i) {
    const int l = plan.active_layers(i);
    if (l <= previous || l >= L) {
      return absl::InvalidArgumentError(absl::StrCat("step plan ", plan.step(),
                                                     ": active blocks must be ascending in [0, ", L,
                                                     "), got ", l, " after ", previous));
    }
    previous = l;
    input.active.set_active(l, true);
    input.active.set_scale(l, plan.layer_scales_size() > 0 ? plan.layer_scales(i) : 1.0f);
  }
  input.learning_rate = plan.learning_rate();
  for (const v1::LayerCopy& copy : plan.layer_copies()) {
    input.copies.emplace_back(copy.to_layer(), copy.from_layer());
  }
  return input;
}

}  // namespace raptr
