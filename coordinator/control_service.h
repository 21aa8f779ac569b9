// ControlServiceImpl: the gRPC ControlService (worker sessions and rendezvous) over a Cluster.
#pragma once

#include <string>

#include "coordinator/auth.h"
#include "coordinator/cluster.h"
#include "grpcpp/grpcpp.h"
#include "raptr/v1/control.grpc.pb.h"

namespace raptr {

// Each Connect call runs on its gRPC thread: that thread reads the worker's messages and hands
// them to the Cluster, while a writer thread of the session drains its outbox onto the stream
// (gRPC allows one reader and one writer at a time), so the Cluster never blocks on a slow
// worker. KvGet waits on the Cluster's mutex condition, not by polling.
class ControlServiceImpl final : public v1::ControlService::Service {
 public:
  // REQUIRES: `cluster` outlives the service.
  // `authorizer` (optional; auth.h): every call needs a worker credential that authorizes the
  // worker id it acts as (Hello.worker_id, the rendezvous requests' worker_id).
  explicit ControlServiceImpl(Cluster* cluster, Authorizer* authorizer = nullptr)
      : cluster_(cluster), authorizer_(authorizer) {}

  grpc::Status Connect(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::CoordinatorMessage, v1::WorkerMessage>* stream) override;
  grpc::Status KvSet(grpc::ServerContext* context, const v1::KvSetRequest* request,
                     v1::KvSetResponse* response) override;
  grpc::Status KvGet(grpc::ServerContext* context, const v1::KvGetRequest* request,
                     v1::KvGetResponse* response) override;

 private:
  // OK when the caller may act as worker `worker_id`.
  grpc::Status AuthorizeWorker(const grpc::ServerContext* context,
                               const std::string& worker_id) const;

  Cluster* const cluster_;
  Authorizer* const authorizer_;
};

}  // namespace raptr
