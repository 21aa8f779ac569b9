// JobServiceImpl: the gRPC JobService, translating requests into JobStore calls and back.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/data_roots.h"
#include "coordinator/auth.h"
#include "coordinator/job_watch.h"
#include "coordinator/store/job_store.h"
#include "grpcpp/grpcpp.h"
#include "raptr/v1/job.grpc.pb.h"
#include "raptr/v1/job.pb.h"

namespace raptr {

// The canonical gRPC status for an absl::Status: the same code (both follow google.rpc.Code) and
// message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Told about jobs JobService changed, so scheduling reacts at once rather than at its next tick.
class JobLifecycleListener {
 public:
  virtual ~JobLifecycleListener() = default;
  // A job was stored PENDING.
  virtual void JobSubmitted(const std::string& job_id) = 0;
  // A job was moved to CANCELLED (its workers should stop).
  virtual void JobCancelled(const std::string& job_id) = 0;
  // The workers connected now (ListWorkers); none by default.
  virtual std::vector<v1::WorkerInfo> ConnectedWorkers() { return {}; }
};

// JobServiceImpl is thin: every RPC validates its request's envelope (ids, page tokens, sizes),
// then calls the JobStore, which owns the job rules (spec validation, idempotency, legal state
// moves), and maps the result back. Its only state is the open WatchJob streams (JobWatchHub):
// WatchJob uses gRPC's callback API, so an open stream holds no server thread.
//
// Thread safety: thread-safe (the JobStore is); gRPC calls its methods from many threads.
class JobServiceImpl final : public v1::JobService::WithCallbackMethod_WatchJob<v1::JobService::Service> {
 public:
  // REQUIRES: `store` and `listener` (optional) outlive this service, and the service outlives
  // the gRPC server it is registered with (the server is shut down first).
  explicit JobServiceImpl(JobStore* store, JobLifecycleListener* listener = nullptr,
                          JobWatchHub::Options watch_options = {})
      : store_(store), listener_(listener), watch_hub_(store, watch_options) {}

  grpc::Status SubmitJob(grpc::ServerContext* context, const v1::SubmitJobRequest* request,
                         v1::SubmitJobResponse* response) override;
  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                      v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status RetryJob(grpc::ServerContext* context, const v1::RetryJobRequest* request,
                        v1::Job* response) override;
  grpc::Status DeleteJob(grpc::ServerContext* context, const v1::DeleteJobRequest* request,
                         v1::DeleteJobResponse* response) override;
  grpc::Status ListWorkers(grpc::ServerContext* context, const v1::ListWorkersRequest* request,
                           v1::ListWorkersResponse* response) override;
  // Where jobs' checkpoint directories live (<root>/<job id>/): DeleteJob removes them. Empty:
  // DeleteJob removes records only. REQUIRES: set before the server starts.
  void set_checkpoint_root(std::string root) { checkpoint_root_ = std::move(root); }
  grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                         v1::Job* response) override;
  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* context,
                                                  const v1::WatchJobRequest* request) override;
  // Every call is first authenticated and authorized by `authorizer` (auth.h); none: every caller
  // may do everything. REQUIRES: set before the server starts; outlives this service.
  void set_authorizer(Authorizer* authorizer) { authorizer_ = authorizer; }
  // Submitted specs' data paths must resolve inside `roots` (common/data_roots.h); none: any.
  // REQUIRES: set before the server starts; outlives this service.
  void set_data_roots(const DataRoots* roots) { data_roots_ = roots; }
  // WatchJob streams open now.
  int open_watch_streams() const { return watch_hub_.open_streams(); }
  // Ends every open WatchJob stream with `status` once it has sent what it has read; streams
  // opened later are refused with it.
  void EndWatches(const grpc::Status& status) { watch_hub_.EndAll(status); }
  grpc::Status ListJobSteps(grpc::ServerContext* context, const v1::ListJobStepsRequest* request,
                            v1::ListJobStepsResponse* response) override;

 private:
  JobStore* const store_;
  // The caller, when it may act with role `least`; an error status otherwise.
  absl::StatusOr<Principal> Authorize(const grpc::ServerContextBase* context, Role least);

  JobLifecycleListener* const listener_;
  JobWatchHub watch_hub_;
  Authorizer* authorizer_ = nullptr;
  const DataRoots* data_roots_ = nullptr;
  std::string checkpoint_root_;
};

}  // namespace raptr
