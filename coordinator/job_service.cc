// JobServiceImpl: proto requests -> JobStore calls -> proto responses and gRPC statuses.
#include "coordinator/job_service.h"

#include <algorithm>
#include <cstdint>
#include <limits>
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
constexpr size_t kMaxSpecBytes = 64 * 1024;
// Step summaries and logged events read per WatchJob poll; more wait for the next poll.
constexpr int kWatchStepBatch = 1000;
constexpr int kWatchEventBatch = 1000;

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

// A logged state change into a final state: nothing follows it in a WatchJob stream.
bool IsEndOfJob(const v1::JobEvent& event) {
  return event.has_state_changed() && IsTerminal(event.state_changed().new_state());
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

// The API form of a stored step summary (without the cumulative progress).
void FillStepSummary(const StepSummaryRecord& step, v1::StepSummary* summary) {
  summary->set_step(step.step);
  summary->set_stage(step.stage);
  summary->set_path_length(step.path_length);
  summary->set_loss(step.loss);
  summary->set_learning_rate(step.learning_rate);
  summary->set_tokens(step.tokens);
  summary->set_flops(step.flops);
  summary->set_flops_full(step.flops_full);
  summary->set_step_seconds(step.seconds);
  if (step.eval_loss.has_value()) summary->set_eval_loss(*step.eval_loss);
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
  // A spec is a few hundred bytes; the cap keeps the store, ListJobs pages and the metrics'
  // parsing of every job bounded.
  if (const size_t bytes = request->spec().ByteSizeLong(); bytes > kMaxSpecBytes) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("spec is ", bytes, " bytes encoded; at most ", kMaxSpecBytes,
                                     " are accepted"));
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
  if (listener_ != nullptr) listener_->JobCancelled(job->id());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::WatchJob(grpc::ServerContext* context,
                                      const v1::WatchJobRequest* request,
                                      grpc::ServerWriter<v1::JobEvent>* writer) {
  if (grpc::Status valid = CheckJobId(request->job_id()); !valid.ok()) return valid;
  const std::string& id = request->job_id();
  const int64_t step_every = request->step_every() <= 1 ? 1 : request->step_every();
  // The snapshot and the event log's position are read together, so tailing the log from
  // last_seq delivers exactly the changes the snapshot does not show.
  absl::StatusOr<JobWithEventSeq> start = store_->GetJobWithEventSeq(id);
  if (!start.ok()) return ToGrpcStatus(start.status());
  const v1::Job& job = start->job;
  int64_t last_seq = start->last_event_seq;

  const grpc::Status closed(grpc::StatusCode::CANCELLED, "stream closed");
  v1::JobEvent snapshot = NewEvent();
  *snapshot.mutable_snapshot() = job;
  if (!writer->Write(snapshot)) return closed;
  if (IsTerminal(job.state())) return grpc::Status::OK;

  v1::JobProgress progress = job.progress();
  const int64_t last_step = job.spec().training().steps() - 1;
  const int32_t eval_batches = job.spec().training().eval_batches();

  // Step summaries are not logged events: they are read by step from progress.step() and folded
  // into the cumulative progress. Returns false when the client is gone.
  auto write_step = [&](const StepSummaryRecord& step) {
    AdvanceProgress(step, &progress);
    if (step.step % step_every == 0 || step.step == last_step) {
      v1::JobEvent event = NewEvent();
      v1::StepSummary* summary = event.mutable_step();
      FillStepSummary(step, summary);
      *summary->mutable_progress() = progress;
      if (!writer->Write(event)) return false;
    }
    if (step.eval_loss.has_value()) {
      v1::JobEvent event = NewEvent();
      v1::EvalCompleted* eval = event.mutable_eval();
      eval->set_step(step.step);
      eval->set_eval_loss(*step.eval_loss);
      eval->set_batches(eval_batches);
      if (!writer->Write(event)) return false;
    }
    return true;
  };

  while (!context->IsCancelled()) {
    absl::SleepFor(absl::FromChrono(kWatchPollInterval));
    // The log is read before the summaries: every summary recorded before a logged change is
    // then in this poll's read too, and can be sent ahead of that change.
    absl::StatusOr<std::vector<std::pair<int64_t, v1::JobEvent>>> events =
        store_->JobEvents(id, last_seq, kWatchEventBatch);
    if (!events.ok()) return ToGrpcStatus(events.status());
    const bool ends = std::any_of(events->begin(), events->end(),
                                  [](const auto& logged) { return IsEndOfJob(logged.second); });
    absl::StatusOr<v1::Job> current = store_->GetJob(id);
    if (!current.ok()) return ToGrpcStatus(current.status());
    // A recovery rewinds to its checkpoint (the store drops the summaries past it): continue from
    // the job's own shorter progress, so the replayed steps are sent and the totals stay right.
    if (current->progress().step() < progress.step()) progress = current->progress();
    // Normally one batch a poll (the rest waits for the next); before the stream ends, every
    // summary stored.
    std::vector<StepSummaryRecord> steps;
    while (true) {
      const int64_t from = steps.empty() ? progress.step() : steps.back().step + 1;
      absl::StatusOr<std::vector<StepSummaryRecord>> batch =
          store_->StepSummaries(id, from, kWatchStepBatch);
      if (!batch.ok()) return ToGrpcStatus(batch.status());
      const bool full = static_cast<int>(batch->size()) == kWatchStepBatch;
      steps.insert(steps.end(), batch->begin(), batch->end());
      if (!ends || !full) break;
    }

    size_t next_step = 0;
    // Sends the read summaries of steps < `before`, in step order.
    auto write_steps_before = [&](int64_t before) {
      for (; next_step < steps.size() && steps[next_step].step < before; ++next_step) {
        if (!write_step(steps[next_step])) return false;
      }
      return true;
    };
    for (const auto& [seq, event] : *events) {
      last_seq = seq;
      // A checkpoint of step S holds the weights after steps 0 .. S-1: their summaries go first.
      // A terminal state is the job's last word: every summary goes before it.
      int64_t before = -1;
      if (event.has_checkpoint()) before = event.checkpoint().step();
      const bool terminal = IsEndOfJob(event);
      if (terminal) before = std::numeric_limits<int64_t>::max();
      if (!write_steps_before(before)) return closed;
      if (!writer->Write(event)) return closed;
      if (terminal) return grpc::Status::OK;
    }
    if (!write_steps_before(std::numeric_limits<int64_t>::max())) return closed;
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "WatchJob cancelled by the client");
}

grpc::Status JobServiceImpl::ListJobSteps(grpc::ServerContext* /*context*/,
                                          const v1::ListJobStepsRequest* request,
                                          v1::ListJobStepsResponse* response) {
  if (grpc::Status valid = CheckJobId(request->job_id()); !valid.ok()) return valid;
  constexpr int kDefaultPage = 1000, kMaxPage = 10000;
  if (request->from_step() < 0 || request->page_size() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "from_step and page_size must be >= 0");
  }
  const int page =
      request->page_size() == 0 ? kDefaultPage : std::min(request->page_size(), kMaxPage);
  // One more than the page, to know whether another page follows.
  absl::StatusOr<std::vector<StepSummaryRecord>> steps =
      store_->StepSummaries(request->job_id(), request->from_step(), page + 1);
  if (!steps.ok()) return ToGrpcStatus(steps.status());
  response->set_next_from_step(-1);
  for (size_t i = 0; i < steps->size(); ++i) {
    const StepSummaryRecord& step = (*steps)[i];
    if (static_cast<int>(i) == page) {
      response->set_next_from_step(step.step);
      break;
    }
    v1::StepSummary* summary = response->add_steps();
    FillStepSummary(step, summary);
  }
  return grpc::Status::OK;
}

}  // namespace raptr
