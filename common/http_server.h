// HttpServer: a minimal HTTP/1.1 server for the daemons' /metrics (and /healthz) endpoints.
//
// One thread accepts and serves connections one at a time (a scrape is a small GET every few
// seconds): it reads the request head (at most 8 KiB, 5 s), answers GET/HEAD for the registered
// paths with the handler's body and Connection: close, and 404 / 405 / 400 otherwise.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace raptr {

class HttpServer {
 public:
  // Returns the response body; called on the server thread.
  using Handler = std::function<std::string()>;

  HttpServer() = default;
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  ~HttpServer();

  // Serves `path` with `handler` and content type `content_type`. Before Start.
  void Handle(const std::string& path, const std::string& content_type, Handler handler);

  // Binds HOST:PORT (port 0 picks a free one; HOST may be 0.0.0.0) and starts serving. Returns
  // the bound port. INVALID_ARGUMENT for a malformed address, UNAVAILABLE when it cannot bind.
  absl::StatusOr<int> Start(const std::string& address);

  // Stops serving and joins the thread; idempotent.
  void Stop();

 private:
  struct Route {
    std::string content_type;
    Handler handler;
  };
  void Serve();
  void ServeConnection(int fd);

  std::map<std::string, Route> routes_;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace raptr
