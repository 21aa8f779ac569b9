// CoordinatorStore: Gloo's rendezvous store over the coordinator's KvSet / KvGet (ControlService),
// scoped to one generation of one job and named by the caller's session token. Gloo reports
// store failures by exception (std::runtime_error with the RPC's error).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "gloo/rendezvous/store.h"
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

 private:
  std::vector<char> Get(const std::string& key, std::chrono::milliseconds timeout);

  v1::ControlService::Stub* const stub_;
  const std::string job_id_;
  const int64_t generation_;
  const std::string worker_id_;
  const uint64_t session_token_;
  const std::chrono::milliseconds timeout_;
};

}  // namespace raptr
