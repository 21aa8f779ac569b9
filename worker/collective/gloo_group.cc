// Gloo collectives for data-parallel CPU training (see gloo_group.h).
#include "worker/collective/gloo_group.h"

#include <sys/socket.h>

#include <exception>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "gloo/allreduce.h"
#include "gloo/math.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/tcp/pair.h"

namespace raptr {

GlooGroup::GlooGroup(std::shared_ptr<gloo::Context> context, int rank, int size,
                     std::chrono::milliseconds timeout)
    : context_(std::move(context)), rank_(rank), size_(size), timeout_(timeout) {}

GlooGroup::~GlooGroup() = default;

absl::StatusOr<std::unique_ptr<GlooGroup>> GlooGroup::Connect(gloo::rendezvous::Store& store,
                                                              int rank, int size,
                                                              const std::string& host,
                                                              std::chrono::milliseconds timeout) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is not in a group of ", size));
  }
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = host;
    std::shared_ptr<gloo::transport::Device> device = gloo::transport::tcp::CreateDevice(attr);
    auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    context->setTimeout(timeout);
    context->connectFullMesh(store, device);
    return std::unique_ptr<GlooGroup>(new GlooGroup(std::move(context), rank, size, timeout));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("Gloo rendezvous of rank ", rank, " of ", size,
                                               " at ", host, " failed: ", e.what()));
  }
}

absl::Status GlooGroup::AllReduceSum(float* data, size_t count) {
  if (size_ == 1 || count == 0) return absl::OkStatus();
  if (aborted_.load()) return AbortedError(count);
  try {
    gloo::AllreduceOptions options(context_);
    options.setOutput(data, count);
    options.setReduceFunction(
        static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
    options.setTag(tag_++);
    options.setTimeout(timeout_);
    gloo::allreduce(options);
  } catch (const std::exception& e) {
    if (aborted_.load()) return AbortedError(count);
    return absl::UnavailableError(
        absl::StrCat("all-reduce of ", count, " floats on rank ", rank_, " failed: ", e.what()));
  }
  bytes_reduced_ += static_cast<int64_t>(count * sizeof(float));
  return absl::OkStatus();
}

absl::Status GlooGroup::AbortedError(size_t count) const {
  return absl::AbortedError(absl::StrCat("all-reduce of ", count, " floats on rank ", rank_,
                                         ": the group was aborted"));
}

namespace {

// Gloo has no call that wakes a collective blocked on a live but silent peer: closeConnections()
// closes the sockets without waking the buffers' waiters (measured: the waiter slept until its
// timeout). What does wake them is the path a lost peer takes: the pair's socket reads EOF, the
// pair fails, and every waiter gets its exception. shutdown(2) of our own end of each pair's
// socket takes exactly that path (and sends the peers a FIN, so they fail fast too). The socket
// and the mutex guarding it are protected members of tcp::Pair; a member pointer named through
// a derived class reaches them without copying or changing Gloo.
struct PairAccess : gloo::transport::tcp::Pair {
  static void ShutdownSocket(gloo::transport::tcp::Pair* pair) {
    std::lock_guard<std::mutex> lock(pair->*(&PairAccess::m_));
    const int fd = pair->*(&PairAccess::fd_);
    if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
  }
};

}  // namespace

void GlooGroup::Abort() {
  if (aborted_.exchange(true)) return;
  for (int peer = 0; peer < size_; ++peer) {
    if (peer == rank_) continue;
    try {
      auto* pair = dynamic_cast<gloo::transport::tcp::Pair*>(context_->getPair(peer).get());
      if (pair != nullptr) PairAccess::ShutdownSocket(pair);
    } catch (const std::exception&) {
      // No pair to that peer (the mesh never formed): nothing to wake.
    }
  }
}

}  // namespace raptr
