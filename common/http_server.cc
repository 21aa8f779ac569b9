// HttpServer over cpp-httplib (see http_server.h).
#include "common/http_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netdb.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace raptr {
namespace {

// The limits that keep one client from stalling the others (see http_server.h).
constexpr size_t kThreads = 4;
constexpr time_t kKeepAliveTimeoutSeconds = 2;
constexpr size_t kKeepAliveMaxRequests = 5;
constexpr time_t kReadTimeoutSeconds = 3;
constexpr time_t kWriteTimeoutSeconds = 3;
// Only GET and HEAD are served; a request body is read (up to this) and dropped only so that a
// keep-alive connection stays in step after a 405.
constexpr size_t kMaxRequestBody = 64 * 1024;

struct ListenAddress {
  std::string host;
  int port = 0;
};

absl::StatusOr<ListenAddress> ParseAddress(const std::string& address) {
  const absl::Status malformed = absl::InvalidArgumentError(
      absl::StrCat("address must be HOST:PORT (an IPv6 HOST in brackets, e.g. [::1]:9401), got \"",
                   address, "\""));
  const size_t colon = address.rfind(':');
  ListenAddress parsed;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &parsed.port) ||
      parsed.port < 0 || parsed.port > 65535) {
    return malformed;
  }
  parsed.host = address.substr(0, colon);
  if (!parsed.host.empty() && parsed.host.front() == '[') {
    if (parsed.host.back() != ']') return malformed;
    parsed.host = parsed.host.substr(1, parsed.host.size() - 2);
    in6_addr unused;
    if (inet_pton(AF_INET6, parsed.host.c_str(), &unused) != 1) return malformed;
  } else if (parsed.host.find_first_of(":[]") != std::string::npos) {
    return malformed;
  }
  if (parsed.host.empty()) parsed.host = "0.0.0.0";
  return parsed;
}

// The numeric address to bind for `host`: its first IPv4 address if it has one (so "localhost"
// keeps meaning 127.0.0.1), else its first address.
absl::StatusOr<std::string> NumericHost(const std::string& host) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* resolved = nullptr;
  if (const int error = getaddrinfo(host.c_str(), nullptr, &hints, &resolved); error != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve host \"", host, "\": ", gai_strerror(error)));
  }
  const addrinfo* chosen = resolved;
  for (const addrinfo* a = resolved; a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      chosen = a;
      break;
    }
  }
  char numeric[NI_MAXHOST];
  const int error = getnameinfo(chosen->ai_addr, chosen->ai_addrlen, numeric, sizeof(numeric),
                                nullptr, 0, NI_NUMERICHOST);
  freeaddrinfo(resolved);
  if (error != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve host \"", host, "\": ", gai_strerror(error)));
  }
  return std::string(numeric);
}

void MethodNotAllowed(const httplib::Request&, httplib::Response& response) {
  response.status = 405;
  response.set_header("Allow", "GET, HEAD");
  response.set_content("only GET and HEAD are served\n", "text/plain");
}

// Whether `request` carries `Authorization: Bearer <token>` (any request, when `token` is empty).
// Constant time in the token's content, so timing reveals nothing of it.
bool Authorized(const httplib::Request& request, const std::string& token) {
  if (token.empty()) return true;
  const std::string presented = request.get_header_value("Authorization");
  const std::string expected = "Bearer " + token;
  if (presented.size() != expected.size()) return false;
  unsigned char difference = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    difference |= static_cast<unsigned char>(presented[i] ^ expected[i]);
  }
  return difference == 0;
}

}  // namespace

HttpServer::HttpServer() = default;

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Handle(const std::string& path, const std::string& content_type, Handler handler,
                        std::string bearer_token) {
  Route& route = routes_[path];
  route.content_type = content_type;
  route.handler = std::move(handler);
  route.bearer_token = std::move(bearer_token);
}

absl::StatusOr<int> HttpServer::Start(const std::string& address) {
  if (server_ != nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("already serving; cannot start on ", address));
  }
  absl::StatusOr<ListenAddress> parsed = ParseAddress(address);
  if (!parsed.ok()) return parsed.status();
  absl::StatusOr<std::string> host = NumericHost(parsed->host);
  if (!host.ok()) return host.status();

  auto server = std::make_unique<httplib::Server>();
  server->new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
  server->set_keep_alive_timeout(kKeepAliveTimeoutSeconds);
  server->set_keep_alive_max_count(kKeepAliveMaxRequests);
  server->set_read_timeout(kReadTimeoutSeconds);
  server->set_write_timeout(kWriteTimeoutSeconds);
  server->set_payload_max_length(kMaxRequestBody);
  // Replaces httplib's default SO_REUSEPORT, with which a second server on a taken port would
  // bind silently and take half the scrapes.
  server->set_socket_options([](socket_t fd) {
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  });
  // Every request is answered here, by exact path, except one with a body to a known path:
  // answering that here would leave its body unread, to be parsed as the next request on the
  // connection, so it goes on to httplib's routing, which reads the body (up to kMaxRequestBody)
  // and then calls the 405 handlers below. (httplib 0.11 reads a body only for these methods, and
  // until the connection closes when neither Content-Length nor Transfer-Encoding is sent.)
  server->set_pre_routing_handler([this](const httplib::Request& request,
                                         httplib::Response& response) {
    static const std::set<std::string> kMethodsWithBodyRead = {"POST", "PUT", "PATCH", "DELETE"};
    const auto route = routes_.find(request.path);
    if (route == routes_.end()) {
      response.status = 404;
      response.set_content("not found\n", "text/plain");
    } else if ((request.method == "GET" || request.method == "HEAD") &&
               !Authorized(request, route->second.bearer_token)) {
      response.status = 401;
      response.set_header("WWW-Authenticate", "Bearer");
      response.set_content("this endpoint needs Authorization: Bearer <token>\n", "text/plain");
    } else if (request.method == "GET" || request.method == "HEAD") {
      {
        absl::MutexLock lock(&route->second.mu);
        response.body = route->second.handler();
      }
      response.set_header("Content-Type", route->second.content_type);
    } else if (kMethodsWithBodyRead.count(request.method) != 0 &&
               (request.has_header("Content-Length") || request.has_header("Transfer-Encoding"))) {
      return httplib::Server::HandlerResponse::Unhandled;
    } else {
      MethodNotAllowed(request, response);
    }
    return httplib::Server::HandlerResponse::Handled;
  });
  const httplib::Server::Handler method_not_allowed = MethodNotAllowed;
  server->Post(".*", method_not_allowed);
  server->Put(".*", method_not_allowed);
  server->Patch(".*", method_not_allowed);
  server->Delete(".*", method_not_allowed);

  errno = 0;
  const int port = parsed->port == 0
                       ? server->bind_to_any_port(*host)
                       : (server->bind_to_port(*host, parsed->port) ? parsed->port : -1);
  if (port < 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, ": ",
                                               errno != 0 ? std::strerror(errno) : "bind failed"));
  }
  server_ = std::move(server);
  listener_ = std::thread([this, address] {
    if (!server_->listen_after_bind()) {
      std::fprintf(stderr, "HttpServer: accept failed on %s; no longer serving\n", address.c_str());
    }
    listener_done_.store(true);
  });
  // httplib's stop() does nothing until the accept loop has marked the server running; wait for
  // that, so that a Stop() right after Start() cannot miss it and then wait forever in join.
  while (!server_->is_running() && !listener_done_.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return port;
}

void HttpServer::Stop() {
  if (server_ == nullptr) return;
  server_->stop();
  if (listener_.joinable()) listener_.join();
}

}  // namespace raptr
