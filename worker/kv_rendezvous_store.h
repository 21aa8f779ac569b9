// CoordinatorStore: Gloo's rendezvous store over the coordinator's KvSet / KvGet (ControlService),
// scoped to one generation of one job and named by the caller's session token. Gloo reports
// store failures by exception (std::runtime_error with the RPC's error).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "gloo/rendezvous/store.h"
#include "grpcpp/grpcpp.h"
#include "raptr/v1/control.grpc.pb.h"

namespace raptr {

class CoordinatorStore final : public gloo::rendezvous::Store {
 public:
  // `timeout` bounds each wait for a key (KvGet with wait).
  CoordinatorStore(v1::ControlService::Stub* stub, std::string job_id, int64_t generation,
                   std::string worker_id, uint64_t session_token, std::chrono::milliseconds timeout);

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;

  // From any thread: the call in flight (a KvGet waiting for a peer's key, say) ends at once and
  // every later one fails, so an aborted job thread never waits out a rendezvous timeout.
  void Cancel();

 private:
  std::vector<char> Get(const std::string& key, std::chrono::milliseconds timeout);
  // Runs `call` with a context Cancel() can reach; throws once cancelled.
  grpc::Status Call(const std::string& what, std::chrono::system_clock::time_point deadline,
                    const std::function<grpc::Status(grpc::ClientContext*)>& call);

  v1::ControlService::Stub* const stub_;
  const std::string job_id_;
  const int64_t generation_;
  const std::string worker_id_;
  const uint64_t session_token_;
  const std::chrono::milliseconds timeout_;
  absl::Mutex mu_;
  grpc::ClientContext* in_flight_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace raptr
