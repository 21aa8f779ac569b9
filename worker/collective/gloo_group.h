// GlooGroup: a data-parallel group's collectives over Gloo's TCP transport, for CPU workers.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/engine/session.h"

namespace gloo {
class Context;
namespace rendezvous {
class Store;
}  // namespace rendezvous
}  // namespace gloo

namespace raptr {

class GlooGroup final : public GradientReducer {
 public:
  // Joins the group as `rank` of `size`: every member publishes its TCP address in `store` and
  // connects to every other member (a full mesh). `host` is the address peers reach this process
  // at. `timeout` bounds the rendezvous and every later collective; a lost peer fails a
  // collective at once (its connection resets). UNAVAILABLE with Gloo's reason on failure;
  // PERMISSION_DENIED when a peer's connection does not come from an IP of the host that peer
  // published in `store` (a connection someone else made; docs/SECURITY.md).
  static absl::StatusOr<std::unique_ptr<GlooGroup>> Connect(gloo::rendezvous::Store& store,
                                                            int rank, int size,
                                                            const std::string& host,
                                                            std::chrono::milliseconds timeout);
  ~GlooGroup() override;

  // Ring all-reduce (Gloo's default algorithm): every rank ends with bitwise the same sums, so
  // replicas that apply the same update stay identical.
  absl::Status AllReduceSum(float* data, size_t count) override;

  // Tears the group down from any thread: closes every connection, so a collective blocked on a
  // peer that stopped without closing its sockets (SIGSTOP, a hang) returns ABORTED at once
  // instead of waiting for the timeout, and so do the peers still blocked with this rank. Every
  // later collective fails with ABORTED. Idempotent.
  void Abort() override;
  bool aborted() const { return aborted_.load(); }

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Bytes all-reduced so far (the payload, not the ring's traffic).
  int64_t bytes_reduced() const { return bytes_reduced_; }

 private:
  // Each pair's socket must come from the IP its rank published (see Connect).
  absl::Status CheckPeerAddresses(gloo::rendezvous::Store& store);
  GlooGroup(std::shared_ptr<gloo::Context> context, int rank, int size,
            std::chrono::milliseconds timeout);
  absl::Status AbortedError(size_t count) const;

  std::shared_ptr<gloo::Context> context_;
  int rank_;
  int size_;
  std::chrono::milliseconds timeout_;
  std::atomic<bool> aborted_{false};
  uint32_t tag_ = 0;
  int64_t bytes_reduced_ = 0;
};

}  // namespace raptr
