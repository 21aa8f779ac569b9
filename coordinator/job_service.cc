// JobServiceImpl: proto requests -> JobStore calls -> proto responses and gRPC statuses.
#include "coordinator/job_service.h"

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/job_spec.h"
#include "google/protobuf/util/time_util.h"

namespace raptr {
namespace {

using google::protobuf::util::TimeUtil;

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
constexpr size_t kMaxRequestIdLength = 128;
// Step summaries read per WatchJob poll; more wait for the next poll.
constexpr int kWatchStepBatch = 1000;

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

// Job ids are "job-" and digits (JobStore); anything else cannot name a job.
bool LooksLikeJobId(const std::string& id) {
  if (!absl::StartsWith(id, "job-") || id.size() == 4) return false;
  for (size_t i = 4; i < id.size(); ++i) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(id[i]))) return false;
  }
  return true;
}

grpc::Status CheckJobId(const std::string& id) {
  if (id.empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "job_id is required");
  return grpc::Status::OK;
}

v1::JobEvent NewEvent() {
  v1::JobEvent event;
  *event.mutable_time() = TimeUtil::GetCurrentTime();
  return event;
}

// Folds one step summary into the cumulative progress a StepSummary event carries.
void AdvanceProgress(const StepSummaryRecord& step, v1::JobProgress* progress) {
  progress->set_step(step.step + 1);
  progress->set_stage(step.stage);
  progress->set_path_length(step.path_length);
  progress->set_loss(step.loss);
  if (step.eval_loss.has_value()) {
    progress->set_eval_loss(*step.eval_loss);
    progress->set_eval_step(step.step);
  }
  progress->set_tokens(progress->tokens() + step.tokens);
  progress->set_flops(progress->flops() + step.flops);
  progress->set_flops_full(progress->flops_full() + step.flops_full);
  progress->set_train_seconds(progress->train_seconds() + step.seconds);
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode both number the canonical codes as google.rpc.Code.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

grpc::Status JobServiceImpl::SubmitJob(grpc::ServerContext* /*context*/,
                                       const v1::SubmitJobRequest* request,
                                       v1::SubmitJobResponse* response) {
  if (request->request_id().size() > kMaxRequestIdLength) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("request_id must be at most ", kMaxRequestIdLength,
                                     " characters, got ", request->request_id().size()));
  }
  if (request->validate_only()) {
    v1::JobSpec spec = request->spec();
    ApplyJobSpecDefaults(&spec);
    if (absl::Status valid = ValidateJobSpec(spec); !valid.ok()) return ToGrpcStatus(valid);
    v1::Job* job = response->mutable_job();
    *job->mutable_spec() = std::move(spec);
    job->set_state(v1::JOB_STATE_PENDING);
    return grpc::Status::OK;
  }
  absl::StatusOr<v1::Job> job = store_->CreateJob(request->spec(), request->request_id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  if (listener_ != nullptr) listener_->JobSubmitted(job->id());
  *response->mutable_job() = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext* /*context*/,
                                    const v1::GetJobRequest* request, v1::Job* response) {
  if (grpc::Status valid = CheckJobId(request->job_id()); !valid.ok()) return valid;
  absl::StatusOr<v1::Job> job = store_->GetJob(request->job_id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  if (listener_ != nullptr) listener_->JobCancelled(job->id());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext* /*context*/,
                                      const v1::ListJobsRequest* request,
                                      v1::ListJobsResponse* response) {
  const int page_size = request->page_size() == 0 ? kDefaultPageSize : request->page_size();
  if (page_size < 0 || page_size > kMaxPageSize) {
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat("page_size must be 0 .. ", kMaxPageSize, ", got ", request->page_size()));
  }
  // The page token is the id of the previous page's last job: ids are never reused, so paging
  // stays consistent while jobs are added.
  const std::string& token = request->page_token();
  if (!token.empty() && !LooksLikeJobId(token)) {
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat("page_token \"", token, "\" is not a token ListJobs returned"));
  }
  JobFilter filter;
  for (int state : request->states()) filter.states.push_back(static_cast<v1::JobState>(state));
  filter.limit = page_size + 1;  // One more tells whether another page follows.
  filter.after_id = token;
  absl::StatusOr<std::vector<v1::Job>> jobs = store_->ListJobs(filter);
  if (!jobs.ok()) {
    if (absl::IsNotFound(jobs.status())) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("page_token \"", token, "\" names no job"));
    }
    return ToGrpcStatus(jobs.status());
  }
  const bool more = static_cast<int>(jobs->size()) > page_size;
  if (more) jobs->resize(page_size);
  for (v1::Job& job : *jobs) *response->add_jobs() = std::move(job);
  if (more) response->set_next_page_token(response->jobs(page_size - 1).id());
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* /*context*/,
                                       const v1::CancelJobRequest* request, v1::Job* response) {
  if (grpc::Status valid = CheckJobId(request->job_id()); !valid.ok()) return valid;
  const std::string reason =
      request->reason().empty() ? std::string("cancelled by request") : request->reason();
  absl::StatusOr<v1::Job> job =
      store_->UpdateJobState(request->job_id(), v1::JOB_STATE_CANCELLED, reason);
  if (!job.ok() && absl::IsFailedPrecondition(job.status())) {
    // The only illegal moves to CANCELLED start from a terminal state; CANCELLED itself is the
    // idempotent case job.proto promises.
    absl::StatusOr<v1::Job> current = store_->GetJob(request->job_id());
    if (current.ok() && current->state() == v1::JOB_STATE_CANCELLED) job = std::move(current);
  }
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::WatchJob(grpc::ServerContext* context,
                                      const v1::WatchJobRequest* request,
                                      grpc::ServerWriter<v1::JobEvent>* writer) {
  if (grpc::Status valid = CheckJobId(request->job_id()); !valid.ok()) return valid;
  const std::string& id = request->job_id();
  const int64_t step_every = request->step_every() <= 1 ? 1 : request->step_every();
  absl::StatusOr<v1::Job> job = store_->GetJob(id);
  if (!job.ok()) return ToGrpcStatus(job.status());

  v1::JobEvent snapshot = NewEvent();
  *snapshot.mutable_snapshot() = *job;
  if (!writer->Write(snapshot)) return grpc::Status(grpc::StatusCode::CANCELLED, "stream closed");
  if (IsTerminal(job->state())) return grpc::Status::OK;

  v1::JobState state = job->state();
  v1::JobProgress progress = job->progress();
  std::optional<int64_t> checkpoint_step;
  if (progress.has_checkpoint_step()) checkpoint_step = progress.checkpoint_step();
  const int64_t last_step = job->spec().training().steps() - 1;

  while (!context->IsCancelled()) {
    absl::SleepFor(absl::FromChrono(kWatchPollInterval));
    absl::StatusOr<std::vector<StepSummaryRecord>> steps =
        store_->StepSummaries(id, progress.step(), kWatchStepBatch);
    if (!steps.ok()) return ToGrpcStatus(steps.status());
    for (const StepSummaryRecord& step : *steps) {
      AdvanceProgress(step, &progress);
      if (step.step % step_every == 0 || step.step == last_step) {
        v1::JobEvent event = NewEvent();
        v1::StepSummary* summary = event.mutable_step();
        summary->set_step(step.step);
        summary->set_stage(step.stage);
        summary->set_path_length(step.path_length);
        summary->set_loss(step.loss);
        summary->set_learning_rate(step.learning_rate);
        summary->set_tokens(step.tokens);
        summary->set_flops(step.flops);
        summary->set_flops_full(step.flops_full);
        summary->set_step_seconds(step.seconds);
        *summary->mutable_progress() = progress;
        if (!writer->Write(event))
          return grpc::Status(grpc::StatusCode::CANCELLED, "stream closed");
      }
      if (step.eval_loss.has_value()) {
        v1::JobEvent event = NewEvent();
        v1::EvalCompleted* eval = event.mutable_eval();
        eval->set_step(step.step);
        eval->set_eval_loss(*step.eval_loss);
        eval->set_batches(job->spec().training().eval_batches());
        if (!writer->Write(event))
          return grpc::Status(grpc::StatusCode::CANCELLED, "stream closed");
      }
    }

    job = store_->GetJob(id);
    if (!job.ok()) return ToGrpcStatus(job.status());
    // A recovery rewinds to its checkpoint: continue from the job's own (shorter) progress.
    if (job->progress().step() < progress.step()) progress = job->progress();
    if (job->progress().has_checkpoint_step() &&
        checkpoint_step != job->progress().checkpoint_step()) {
      absl::StatusOr<std::optional<CheckpointRecord>> latest = store_->LatestCheckpoint(id);
      if (!latest.ok()) return ToGrpcStatus(latest.status());
      if (latest->has_value()) {
        checkpoint_step = (*latest)->step;
        v1::JobEvent event = NewEvent();
        v1::CheckpointCommitted* checkpoint = event.mutable_checkpoint();
        checkpoint->set_step((*latest)->step);
        checkpoint->set_path((*latest)->path);
        checkpoint->set_generation(job->generation());
        if (!writer->Write(event))
          return grpc::Status(grpc::StatusCode::CANCELLED, "stream closed");
      }
    }
    if (job->state() != state) {
      v1::JobEvent event = NewEvent();
      v1::JobStateChanged* changed = event.mutable_state_changed();
      changed->set_old_state(state);
      changed->set_new_state(job->state());
      changed->set_reason(job->message());
      changed->set_generation(job->generation());
      changed->set_world_size(job->world_size());
      state = job->state();
      if (!writer->Write(event)) return grpc::Status(grpc::StatusCode::CANCELLED, "stream closed");
      if (IsTerminal(state)) return grpc::Status::OK;
    }
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "WatchJob cancelled by the client");
}

}  // namespace raptr
