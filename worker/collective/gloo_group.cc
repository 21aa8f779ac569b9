// Gloo collectives for data-parallel CPU training (see gloo_group.h).
#include "worker/collective/gloo_group.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gloo/allreduce.h"
#include "gloo/math.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/address.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/tcp/pair.h"

namespace raptr {

GlooGroup::GlooGroup(std::shared_ptr<gloo::Context> context, int rank, int size,
                     std::chrono::milliseconds timeout)
    : context_(std::move(context)), rank_(rank), size_(size), timeout_(timeout) {}

GlooGroup::~GlooGroup() = default;

namespace {

// The IP of a socket address, as text; IPv4-mapped IPv6 addresses as their IPv4 form, so the two
// spellings of one peer compare equal.
std::string IpOf(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = {0};
  if (address.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(address).sin_addr, text, sizeof(text));
    return text;
  }
  if (address.ss_family == AF_INET6) {
    const in6_addr& ip = reinterpret_cast<const sockaddr_in6&>(address).sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&ip)) {
      inet_ntop(AF_INET, &ip.s6_addr[12], text, sizeof(text));
    } else {
      inet_ntop(AF_INET6, &ip, text, sizeof(text));
    }
    return text;
  }
  return absl::StrCat("(address family ", address.ss_family, ")");
}

// The IPs `host` (a name or an address) resolves to.
std::vector<std::string> IpsOf(const std::string& host) {
  std::vector<std::string> ips;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0) return ips;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    sockaddr_storage address{};
    std::memcpy(&address, a->ai_addr, a->ai_addrlen);
    ips.push_back(IpOf(address));
  }
  freeaddrinfo(found);
  return ips;
}

std::string HostKey(int rank) { return absl::StrCat("raptr/gloo-host/", rank); }

// Gloo's TCP transport accepts a pair's connection from any address that presents the right
// (guessable) sequence number, and then takes the peer's address from the accepted socket. So
// each rank also publishes its host in the store (written only by authenticated members of the
// group, through the coordinator's rendezvous), and every pair's socket must come from an IP of
// the host its rank published: a connection from elsewhere is someone else's, and the group
// fails before any gradient crosses it. The socket is a protected member of tcp::Pair, reached
// as PairAccess does below.
struct PeerAccess : gloo::transport::tcp::Pair {
  static std::string RemoteIp(gloo::transport::tcp::Pair* pair) {
    std::lock_guard<std::mutex> lock(pair->*(&PeerAccess::m_));
    const int fd = pair->*(&PeerAccess::fd_);
    if (fd < 0) return "";
    return IpOf(gloo::transport::tcp::Address::fromPeerName(fd).getSockaddr());
  }
};

}  // namespace

absl::Status GlooGroup::CheckPeerAddresses(gloo::rendezvous::Store& store) {
  for (int peer = 0; peer < size_; ++peer) {
    if (peer == rank_) continue;
    const std::vector<char> published = store.get(HostKey(peer));
    const std::string host(published.begin(), published.end());
    auto* pair = dynamic_cast<gloo::transport::tcp::Pair*>(context_->getPair(peer).get());
    if (pair == nullptr) return absl::InternalError("Gloo's pair is not a TCP pair");
    const std::string actual = PeerAccess::RemoteIp(pair);
    const std::vector<std::string> allowed = IpsOf(host);
    if (actual.empty() || std::find(allowed.begin(), allowed.end(), actual) == allowed.end()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "the connection of rank ", peer, " comes from ", actual.empty() ? "nowhere" : actual,
          ", not from ", host, " (", absl::StrJoin(allowed, ", "), "), the host rank ", peer,
          " published in the rendezvous; refusing the group"));
    }
  }
  return absl::OkStatus();
}

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
    store.set(HostKey(rank), std::vector<char>(host.begin(), host.end()));
    context->connectFullMesh(store, device);
    std::unique_ptr<GlooGroup> group(new GlooGroup(std::move(context), rank, size, timeout));
    if (absl::Status checked = group->CheckPeerAddresses(store); !checked.ok()) {
      return absl::Status(checked.code(), absl::StrCat("Gloo rendezvous of rank ", rank, " of ",
                                                       size, ": ", checked.message()));
    }
    return group;
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
