// HttpServer: the daemons' HTTP endpoints (/metrics for Prometheus, /healthz for the probes), a
// thin layer over cpp-httplib.
//
// Why cpp-httplib: it is packaged for Debian 12 (libcpp-httplib-dev), and it has what the earlier
// hand-written, single-threaded server lacked, so that one misbehaving client can no longer stall
// the probes and get a worker restarted (review finding 6): a fixed pool of connection threads,
// read and write timeouts, and bounded keep-alive.
//
// Behaviour:
// - GET and HEAD on a registered path answer 200 with the handler's body (HEAD sends the headers
//   only); the query string is ignored. Any other method on a registered path gets 405 with
//   "Allow: GET, HEAD"; an unregistered path gets 404; a malformed request gets 400. Bodies are
//   gzip- or brotli-compressed when the client asks for it (Prometheus asks for gzip).
// - 4 pool threads serve the connections. A connection is closed when its client sends no request
//   within 2 s of connecting or of its previous response (keep-alive, at most 5 requests), pauses
//   more than 3 s inside a request, or accepts no byte of the response for 3 s. A silent or
//   non-reading client therefore holds one thread for a few seconds while the others keep serving.
//   Connections beyond the pool wait in httplib's queue (unbounded in 0.11). httplib 0.11 has no
//   deadline for a whole request, so clients that trickle a byte every few seconds can still hold
//   all 4 threads; keep the port on a trusted network.
//
// Thread safety: Handle, Start and Stop are called from one thread, Handle before Start. A
// handler is called by one pool thread at a time (a mutex per path), so it need not be
// reentrant; handlers of different paths may run concurrently.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace raptr {

class HttpServer {
 public:
  // Returns the response body; called on a pool thread.
  using Handler = std::function<std::string()>;

  HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  ~HttpServer();

  // Serves `path` (exact match) with `handler` and content type `content_type`. Before Start.
  // A non-empty `bearer_token`: requests without `Authorization: Bearer <it>` get 401 (compared
  // in constant time; the token is never logged or echoed).
  void Handle(const std::string& path, const std::string& content_type, Handler handler,
              std::string bearer_token = "");

  // Binds HOST:PORT and starts serving; returns the bound port (port 0 picks a free one). HOST is
  // a name, an IPv4 address, or an IPv6 address in brackets ("[::1]:9401"; "[::]" also accepts
  // IPv4, as httplib clears IPV6_V6ONLY); an empty HOST means 0.0.0.0, and a name binds its first
  // IPv4 address if it has one. INVALID_ARGUMENT for a malformed address or a name that does not
  // resolve, UNAVAILABLE when it cannot bind (a taken port is an error: no SO_REUSEPORT),
  // FAILED_PRECONDITION when called twice.
  absl::StatusOr<int> Start(const std::string& address);

  // Stops accepting, lets the connections in progress (and any queued behind a busy pool) finish,
  // and joins the threads. It returns at once when the clients behave; an idle keep-alive
  // connection delays it by up to 2 s, a client that stopped reading by up to about 6 s (the write
  // timeout, twice). Idempotent; the destructor calls it.
  void Stop();

 private:
  struct Route {
    std::string content_type;
    Handler handler;
    std::string bearer_token;
    absl::Mutex mu;  // held while `handler` runs
  };

  std::map<std::string, Route> routes_;
  std::unique_ptr<httplib::Server> server_;
  std::thread listener_;  // runs httplib's accept loop, which owns the pool
  std::atomic<bool> listener_done_{false};
};

}  // namespace raptr
