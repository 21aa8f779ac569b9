// Gloo's rendezvous store over KvSet / KvGet (see kv_rendezvous_store.h).
#include "worker/kv_rendezvous_store.h"

#include <stdexcept>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"

namespace raptr {

CoordinatorStore::CoordinatorStore(v1::ControlService::Stub* stub, std::string job_id,
                                   int64_t generation, std::string worker_id,
                                   uint64_t session_token, std::chrono::milliseconds timeout)
    : stub_(stub),
      job_id_(std::move(job_id)),
      generation_(generation),
      worker_id_(std::move(worker_id)),
      session_token_(session_token),
      timeout_(timeout) {}

void CoordinatorStore::set(const std::string& key, const std::vector<char>& data) {
  v1::KvSetRequest request;
  request.set_job_id(job_id_);
  request.set_generation(generation_);
  request.set_worker_id(worker_id_);
  request.set_session_token(session_token_);
  request.set_key(key);
  request.set_value(std::string(data.begin(), data.end()));
  v1::KvSetResponse response;
  const grpc::Status status =
      Call(absl::StrCat("KvSet(", key, ")"), std::chrono::system_clock::now() + std::chrono::seconds(30),
           [&](grpc::ClientContext* context) { return stub_->KvSet(context, request, &response); });
  if (!status.ok()) {
    throw std::runtime_error(
        absl::StrCat("rendezvous KvSet(", key, ") failed: ", status.error_message()));
  }
}

std::vector<char> CoordinatorStore::get(const std::string& key) { return Get(key, timeout_); }

void CoordinatorStore::wait(const std::vector<std::string>& keys) { wait(keys, timeout_); }

void CoordinatorStore::wait(const std::vector<std::string>& keys,
                            const std::chrono::milliseconds& timeout) {
  for (const std::string& key : keys) Get(key, timeout);
}

std::vector<char> CoordinatorStore::Get(const std::string& key, std::chrono::milliseconds timeout) {
  v1::KvGetRequest request;
  request.set_job_id(job_id_);
  request.set_generation(generation_);
  request.set_worker_id(worker_id_);
  request.set_session_token(session_token_);
  request.set_key(key);
  request.set_wait(true);
  request.set_timeout_seconds(std::chrono::duration<double>(timeout).count());
  v1::KvGetResponse response;
  const grpc::Status status =
      Call(absl::StrCat("KvGet(", key, ")"),
           std::chrono::system_clock::now() + timeout + std::chrono::seconds(5),
           [&](grpc::ClientContext* context) { return stub_->KvGet(context, request, &response); });
  if (!status.ok()) {
    throw std::runtime_error(
        absl::StrCat("rendezvous KvGet(", key, ") failed: ", status.error_message()));
  }
  return std::vector<char>(response.value().begin(), response.value().end());
}

void CoordinatorStore::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (in_flight_ != nullptr) in_flight_->TryCancel();
}

grpc::Status CoordinatorStore::Call(const std::string& what,
                                    std::chrono::system_clock::time_point deadline,
                                    const std::function<grpc::Status(grpc::ClientContext*)>& call) {
  grpc::ClientContext context;
  context.set_deadline(deadline);
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_) throw std::runtime_error(absl::StrCat("rendezvous ", what, ": aborted"));
    in_flight_ = &context;
  }
  const grpc::Status status = call(&context);
  absl::MutexLock lock(&mu_);
  in_flight_ = nullptr;
  if (cancelled_) throw std::runtime_error(absl::StrCat("rendezvous ", what, ": aborted"));
  return status;
}

}  // namespace raptr
