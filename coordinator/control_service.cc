// Worker sessions over gRPC streams (see control_service.h).
#include "coordinator/control_service.h"

#include <deque>
#include <memory>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/job_service.h"

namespace raptr {
namespace {

// A session's outbox: Cluster::Send appends, the writer thread drains it onto the stream.
class StreamLink final : public WorkerLink {
 public:
  explicit StreamLink(grpc::ServerContext* context) : context_(context) {}

  void Send(const v1::CoordinatorMessage& message) override {
    absl::MutexLock lock(&mu_);
    if (!closed_) outbox_.push_back(message);
  }

  void Close(const absl::Status& status) override {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    closed_ = true;
    status_ = status;
    // Unblocks the handler's Read; the worker sees its RPC end and reconnects if it wants.
    context_->TryCancel();
  }

  // Writes queued messages until the link closes or a write fails.
  void WriteLoop(grpc::ServerReaderWriter<v1::CoordinatorMessage, v1::WorkerMessage>* stream) {
    std::deque<v1::CoordinatorMessage> batch;
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](StreamLink* link) ABSL_EXCLUSIVE_LOCKS_REQUIRED(link->mu_) {
              return link->closed_ || !link->outbox_.empty();
            },
            this));
        if (closed_) return;
        batch.swap(outbox_);
      }
      // No buffer_hint coalescing: a hinted write may sit in gRPC's buffer until the next
      // flush, which delayed a fresh session's first messages by seconds.
      for (const v1::CoordinatorMessage& message : batch) {
        if (!stream->Write(message)) {
          Close(absl::UnavailableError("the stream to the worker broke"));
          return;
        }
      }
      batch.clear();
    }
  }

  absl::Status status() {
    absl::MutexLock lock(&mu_);
    return status_;
  }

 private:
  grpc::ServerContext* const context_;
  absl::Mutex mu_;
  std::deque<v1::CoordinatorMessage> outbox_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::Status ControlServiceImpl::AuthorizeWorker(const grpc::ServerContext* context,
                                                 const std::string& worker_id) const {
  if (authorizer_ == nullptr) return grpc::Status::OK;
  if (context == nullptr) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "no call context, so no credentials");
  }
  absl::StatusOr<Principal> caller = authorizer_->AuthorizeWorker(*context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (!caller->AuthorizesWorkerId(worker_id)) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        absl::StrCat(caller->Describe(), " may not act as worker \"", worker_id,
                                     "\"; its ids are ", caller->name,
                                     caller->pool ? "..." : " and " + caller->name + "/..."));
  }
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::Connect(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::CoordinatorMessage, v1::WorkerMessage>* stream) {
  // Authenticated before anything is read: a stream holds a server thread while it waits for its
  // Hello, so streams of callers without credentials must not wait at all.
  if (authorizer_ != nullptr) {
    if (absl::StatusOr<Principal> caller = authorizer_->AuthorizeWorker(*context); !caller.ok()) {
      return ToGrpcStatus(caller.status());
    }
  }
  v1::WorkerMessage first;
  if (!stream->Read(&first)) return grpc::Status(grpc::CANCELLED, "no Hello before the end");
  if (!first.has_hello()) {
    return grpc::Status(grpc::INVALID_ARGUMENT, "the first message must be a Hello");
  }
  if (grpc::Status allowed = AuthorizeWorker(context, first.hello().worker_id()); !allowed.ok()) {
    return allowed;
  }
  auto link = std::make_shared<StreamLink>(context);
  absl::StatusOr<int64_t> session = cluster_->Connect(first.hello(), link);
  if (!session.ok()) return ToGrpcStatus(session.status());
  std::thread writer([&link, stream] { link->WriteLoop(stream); });
  v1::WorkerMessage message;
  while (stream->Read(&message)) {
    if (absl::Status received = cluster_->Receive(*session, message); !received.ok()) {
      link->Close(received);
      break;
    }
  }
  cluster_->Disconnect(*session);
  link->Close(absl::OkStatus());
  writer.join();
  return ToGrpcStatus(link->status());
}

grpc::Status ControlServiceImpl::KvSet(grpc::ServerContext* context,
                                       const v1::KvSetRequest* request,
                                       v1::KvSetResponse* /*response*/) {
  if (grpc::Status allowed = AuthorizeWorker(context, request->worker_id()); !allowed.ok()) {
    return allowed;
  }
  return ToGrpcStatus(cluster_->KvSet(*request));
}

grpc::Status ControlServiceImpl::KvGet(grpc::ServerContext* context,
                                       const v1::KvGetRequest* request,
                                       v1::KvGetResponse* response) {
  if (grpc::Status allowed = AuthorizeWorker(context, request->worker_id()); !allowed.ok()) {
    return allowed;
  }
  absl::StatusOr<std::string> value = cluster_->KvGet(*request, context->deadline());
  if (!value.ok()) return ToGrpcStatus(value.status());
  response->set_value(std::move(*value));
  return grpc::Status::OK;
}

}  // namespace raptr
