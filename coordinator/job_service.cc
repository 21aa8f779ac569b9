// JobServiceImpl: proto requests -> JobStore calls -> proto responses and gRPC statuses.
#include "coordinator/job_service.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <system_error>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "google/protobuf/util/time_util.h"

namespace raptr {
namespace {

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
constexpr size_t kMaxRequestIdLength = 128;
constexpr size_t kMaxSpecBytes = 64 * 1024;
// A ListJobs page ends early rather than pass this many bytes of jobs: half the coordinator's
// 4 MiB message cap, which a page of 1000 full 64 KiB specs would exceed many times over.
constexpr size_t kMaxPageBytes = 2 << 20;

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

// JOB_VIEW_BASIC (job.proto): the spec shrinks to what a listing shows, its name, steps and
// schedule kind (the chosen oneof member, emptied).
void ToBasicView(v1::Job* job) {
  const v1::JobSpec& full = job->spec();
  v1::JobSpec basic;
  if (full.has_name()) basic.set_name(full.name());
  if (full.training().has_steps()) basic.mutable_training()->set_steps(full.training().steps());
  v1::ScheduleSpec* schedule = basic.mutable_schedule();
  switch (full.schedule().kind_case()) {
    case v1::ScheduleSpec::kFull:
      schedule->mutable_full();
      break;
    case v1::ScheduleSpec::kRaptr:
      schedule->mutable_raptr();
      break;
    case v1::ScheduleSpec::kPld:
      schedule->mutable_pld();
      break;
    case v1::ScheduleSpec::kLayerdrop:
      schedule->mutable_layerdrop();
      break;
    case v1::ScheduleSpec::kStacking:
      schedule->mutable_stacking();
      break;
    case v1::ScheduleSpec::KIND_NOT_SET:
      basic.clear_schedule();
      break;
  }
  *job->mutable_spec() = std::move(basic);
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode both number the canonical codes as google.rpc.Code.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::StatusOr<Principal> JobServiceImpl::Authorize(const grpc::ServerContextBase* context,
                                                    Role least) {
  if (authorizer_ == nullptr) return Principal{Principal::Via::kAnonymous, "", Role::kAdmin};
  // In-process callers (tests) may pass no context; with an authorizer, they are nobody.
  if (context == nullptr) return absl::UnauthenticatedError("no call context, so no credentials");
  return authorizer_->AuthorizeClient(*context, least);
}

grpc::ServerWriteReactor<v1::JobEvent>* JobServiceImpl::WatchJob(
    grpc::CallbackServerContext* context, const v1::WatchJobRequest* request) {
  absl::StatusOr<Principal> caller = Authorize(context, Role::kReader);
  if (!caller.ok()) return watch_hub_.Refuse(ToGrpcStatus(caller.status()));
  return watch_hub_.Watch(context, request);
}

grpc::Status JobServiceImpl::SubmitJob(grpc::ServerContext* context,
                                       const v1::SubmitJobRequest* request,
                                       v1::SubmitJobResponse* response) {
  absl::StatusOr<Principal> caller = Authorize(context, Role::kSubmitter);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
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
  // Validated here as well as in the store, so the confinement below (a filesystem lookup per
  // path) only ever sees a spec within the shard and path caps.
  v1::JobSpec spec = request->spec();
  ApplyJobSpecDefaults(&spec);
  if (absl::Status valid = ValidateJobSpec(spec); !valid.ok()) return ToGrpcStatus(valid);
  if (data_roots_ != nullptr) {
    // Before anything is stored: a path outside the roots is the client's error, naming the field.
    if (absl::Status confined = ConfineJobSpec(spec, *data_roots_); !confined.ok()) {
      return ToGrpcStatus(confined);
    }
  }
  if (request->validate_only()) {
    v1::Job* job = response->mutable_job();
    *job->mutable_spec() = std::move(spec);
    job->set_state(v1::JOB_STATE_PENDING);
    job->set_owner(caller->owner());
    return grpc::Status::OK;
  }
  absl::StatusOr<v1::Job> job =
      store_->CreateJob(request->spec(), request->request_id(), caller->owner());
  if (!job.ok()) return ToGrpcStatus(job.status());
  if (listener_ != nullptr) listener_->JobSubmitted(job->id());
  *response->mutable_job() = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext* context,
                                    const v1::GetJobRequest* request, v1::Job* response) {
  if (absl::StatusOr<Principal> caller = Authorize(context, Role::kReader); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
  if (grpc::Status valid = CheckJobId(request->job_id()); !valid.ok()) return valid;
  absl::StatusOr<v1::Job> job = store_->GetJob(request->job_id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext* context,
                                      const v1::ListJobsRequest* request,
                                      v1::ListJobsResponse* response) {
  if (absl::StatusOr<Principal> caller = Authorize(context, Role::kReader); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
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
  if (!v1::JobView_IsValid(request->view())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("view ", request->view(), " is not a JobView"));
  }
  const bool full = request->view() == v1::JOB_VIEW_FULL;
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
  bool more = static_cast<int>(jobs->size()) > page_size;
  if (more) jobs->resize(page_size);
  size_t bytes = 0;
  for (size_t i = 0; i < jobs->size(); ++i) {
    v1::Job& job = (*jobs)[i];
    if (!full) ToBasicView(&job);
    // A short page (never an empty one) keeps the response under the message cap; the token
    // resumes after its last job, as after a full page.
    bytes += job.ByteSizeLong();
    if (i > 0 && bytes > kMaxPageBytes) {
      more = true;
      break;
    }
    *response->add_jobs() = std::move(job);
  }
  if (more) response->set_next_page_token(response->jobs(response->jobs_size() - 1).id());
  return grpc::Status::OK;
}

// A submitter acts on its own jobs only; an admin on any. Owners are immutable, so checking
// before the state change cannot race with it.
static grpc::Status CheckOwner(JobStore& store, const Principal& caller, const std::string& job_id,
                        const char* verb) {
  if (caller.role == Role::kAdmin) return grpc::Status::OK;
  absl::StatusOr<v1::Job> target = store.GetJob(job_id);
  if (!target.ok()) return ToGrpcStatus(target.status());
  if (target->owner() == caller.owner()) return grpc::Status::OK;
  return grpc::Status(
      grpc::StatusCode::PERMISSION_DENIED,
      absl::StrCat(caller.Describe(), " may not ", verb, " ", target->id(), ", which ",
                   target->owner().empty() ? std::string("has no owner")
                                           : absl::StrCat("belongs to ", target->owner()),
                   "; that needs role admin"));
}

grpc::Status JobServiceImpl::RetryJob(grpc::ServerContext* context,
                                      const v1::RetryJobRequest* request, v1::Job* response) {
  absl::StatusOr<Principal> caller = Authorize(context, Role::kSubmitter);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (grpc::Status valid = CheckJobId(request->job_id()); !valid.ok()) return valid;
  if (grpc::Status owner = CheckOwner(*store_, *caller, request->job_id(), "retry");
      !owner.ok()) {
    return owner;
  }
  const std::string who = caller->via == Principal::Via::kAnonymous
                              ? std::string("retried by request")
                              : absl::StrCat("retried by ", caller->Describe());
  absl::StatusOr<v1::Job> job = store_->RetryFailedJob(
      request->job_id(),
      request->reason().empty() ? who : absl::StrCat(who, ": ", request->reason()));
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ListWorkers(grpc::ServerContext* context,
                                         const v1::ListWorkersRequest* /*request*/,
                                         v1::ListWorkersResponse* response) {
  if (absl::StatusOr<Principal> caller = Authorize(context, Role::kReader); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
  std::map<std::string, v1::WorkerInfo> by_id;
  // Every worker the store has seen, gone unless it is connected now.
  absl::StatusOr<std::vector<WorkerRecord>> known = store_->ListWorkers();
  if (!known.ok()) return ToGrpcStatus(known.status());
  for (const WorkerRecord& record : *known) {
    v1::WorkerInfo& info = by_id[record.worker_id];
    info.set_worker_id(record.worker_id);
    info.set_backend(record.backend);
    info.set_devices(record.devices);
    info.set_memory_bytes(record.memory_bytes);
    info.set_state("gone");
    info.set_rank(-1);
    *info.mutable_last_seen() =
        google::protobuf::util::TimeUtil::MillisecondsToTimestamp(record.last_seen_ms);
  }
  if (listener_ != nullptr) {
    for (v1::WorkerInfo& live : listener_->ConnectedWorkers()) {
      by_id[live.worker_id()] = std::move(live);
    }
  }
  for (auto& [id, info] : by_id) *response->add_workers() = std::move(info);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::DeleteJob(grpc::ServerContext* context,
                                       const v1::DeleteJobRequest* request,
                                       v1::DeleteJobResponse* response) {
  absl::StatusOr<Principal> caller = Authorize(context, Role::kSubmitter);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (grpc::Status valid = CheckJobId(request->job_id()); !valid.ok()) return valid;
  if (grpc::Status owner = CheckOwner(*store_, *caller, request->job_id(), "delete");
      !owner.ok()) {
    return owner;
  }
  // The records first: a crash or an I/O error after it leaves files no record names (the job is
  // gone either way), never a record whose checkpoints are half deleted.
  if (absl::Status deleted = store_->DeleteJob(request->job_id()); !deleted.ok()) {
    return ToGrpcStatus(deleted);
  }
  if (checkpoint_root_.empty()) return grpc::Status::OK;
  namespace fs = std::filesystem;
  // The id named a stored job (DeleteJob found it), and the store makes every id job-NNNNNN:
  // the directory is <root>/<id>, never above the root.
  const fs::path dir = fs::path(checkpoint_root_) / request->job_id();
  std::error_code ec;
  const fs::file_status status = fs::symlink_status(dir, ec);
  if (ec || !fs::exists(status)) return grpc::Status::OK;  // it never checkpointed here
  if (fs::is_symlink(status) || !fs::is_directory(status)) {
    // Not ours to follow: a link could point anywhere.
    response->set_checkpoint_error(
        absl::StrCat(dir.string(), " is not a directory (a link?): left as it is"));
  } else if (fs::remove_all(dir, ec); ec) {  // remove_all removes links, never their targets
    response->set_checkpoint_error(absl::StrCat("removing ", dir.string(), ": ", ec.message()));
  } else {
    response->set_removed_checkpoints(dir.string());
  }
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* context,
                                       const v1::CancelJobRequest* request, v1::Job* response) {
  absl::StatusOr<Principal> caller = Authorize(context, Role::kSubmitter);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (grpc::Status valid = CheckJobId(request->job_id()); !valid.ok()) return valid;
  if (grpc::Status owner = CheckOwner(*store_, *caller, request->job_id(), "cancel");
      !owner.ok()) {
    return owner;
  }
  // Who cancelled is recorded with the job (its message and event log): an audit trail, and the
  // answer to "why did my job stop" when someone else stopped it.
  const std::string reason =
      caller->via == Principal::Via::kAnonymous
          ? (request->reason().empty() ? std::string("cancelled by request") : request->reason())
          : absl::StrCat("cancelled by ", caller->Describe(),
                         request->reason().empty() ? "" : ": ", request->reason());
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

grpc::Status JobServiceImpl::ListJobSteps(grpc::ServerContext* context,
                                          const v1::ListJobStepsRequest* request,
                                          v1::ListJobStepsResponse* response) {
  if (absl::StatusOr<Principal> caller = Authorize(context, Role::kReader); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
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
