// HttpServer over real loopback sockets (IPv4 and IPv6): routes, methods and addresses, and the
// misbehaving clients of review finding 6 (a silent one, one that never reads a large body),
// which must delay neither /healthz nor Stop(). The clients are raw sockets with receive and send
// timeouts, so a stalled server fails a test instead of hanging it.
#include "common/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "common/metrics.h"
#include "gtest/gtest.h"

namespace raptr {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A raw TCP client of the loopback address of `family`.
class Client {
 public:
  // `timeout`: the socket's receive and send timeouts. `receive_buffer` (bytes, 0: the default)
  // is set before connecting, so that it bounds the window the server sees.
  Client(int family, int port, std::chrono::seconds timeout = std::chrono::seconds(5),
         int receive_buffer = 0) {
    fd_ = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return;
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count());
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (receive_buffer > 0) {
      setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof(receive_buffer));
    }
    int rc = -1;
    if (family == AF_INET6) {
      sockaddr_in6 addr{};
      addr.sin6_family = AF_INET6;
      addr.sin6_port = htons(static_cast<uint16_t>(port));
      addr.sin6_addr = in6addr_loopback;
      rc = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    } else {
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<uint16_t>(port));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      rc = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    }
    if (rc != 0) {
      close(fd_);
      fd_ = -1;
    }
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client() {
    if (fd_ >= 0) close(fd_);
  }

  bool connected() const { return fd_ >= 0; }

  bool Send(const std::string& data) {
    size_t done = 0;
    while (done < data.size()) {
      const ssize_t n = send(fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL);
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }

  // Everything until the server closes the connection (or the receive timeout).
  std::string ReadUntilClosed() {
    while (Receive()) {
    }
    return std::exchange(pending_, "");
  }

  // One response, framed by its Content-Length; "" when it does not arrive whole.
  std::string ReadResponse() {
    size_t head_end;
    while ((head_end = pending_.find("\r\n\r\n")) == std::string::npos) {
      if (!Receive()) return "";
    }
    head_end += 4;
    const std::string head = absl::AsciiStrToLower(pending_.substr(0, head_end));
    size_t length = 0;
    if (const size_t at = head.find("\r\ncontent-length:"); at != std::string::npos) {
      const size_t value = at + std::string("\r\ncontent-length:").size();
      if (!absl::SimpleAtoi(head.substr(value, head.find("\r\n", value) - value), &length)) {
        return "";
      }
    }
    while (pending_.size() < head_end + length) {
      if (!Receive()) return "";
    }
    std::string response = pending_.substr(0, head_end + length);
    pending_.erase(0, head_end + length);
    return response;
  }

  // Seconds until the server closes the connection; a negative value when it has not by the
  // receive timeout or sends something instead.
  double SecondsUntilClosed(Clock::time_point since) {
    char byte;
    const ssize_t n = recv(fd_, &byte, 1, 0);
    return n == 0 ? SecondsSince(since) : -1;
  }

 private:
  bool Receive() {
    char buffer[65536];
    const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
    if (n <= 0) return false;
    pending_.append(buffer, static_cast<size_t>(n));
    return true;
  }

  int fd_ = -1;
  std::string pending_;
};

// One request over a fresh connection; returns everything the server sent before closing it
// ("" when the connection is refused). Requests carry "Connection: close".
std::string Fetch(int port, const std::string& request, int family = AF_INET) {
  Client client(family, port);
  if (!client.connected() || !client.Send(request)) return "";
  return client.ReadUntilClosed();
}

// What follows the response head.
std::string BodyOf(const std::string& response) {
  const size_t head_end = response.find("\r\n\r\n");
  return head_end == std::string::npos ? "(no response head)" : response.substr(head_end + 4);
}

constexpr char kHealthzRequest[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

bool IsHealthy(const std::string& response) {
  return response.rfind("HTTP/1.1 200 OK\r\n", 0) == 0 && response.size() >= 7 &&
         response.compare(response.size() - 7, 7, "\r\n\r\nok\n") == 0;
}

void HandleHealthz(HttpServer* server) {
  server->Handle("/healthz", "text/plain", [] { return std::string("ok\n"); });
}

bool HasIpv6Loopback() {
  const int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_loopback;
  const bool bound = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return bound;
}

TEST(HttpServer, ServesRoutesOverLoopback) {
  metrics::Registry registry;
  registry.Gauge("raptr_up", "Up.")->Set({}, 1);
  HttpServer server;
  server.Handle("/metrics", "text/plain; version=0.0.4", [&] { return registry.Render(); });
  absl::StatusOr<int> port = server.Start("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  ASSERT_GT(*port, 0);
  const std::string body = "# HELP raptr_up Up.\n# TYPE raptr_up gauge\nraptr_up 1\n";
  const std::string ok =
      Fetch(*port, "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(ok.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << ok;
  EXPECT_NE(ok.find("\r\nContent-Type: text/plain; version=0.0.4\r\n"), std::string::npos) << ok;
  EXPECT_NE(ok.find("\r\nContent-Length: " + std::to_string(body.size()) + "\r\n"),
            std::string::npos)
      << ok;
  EXPECT_EQ(BodyOf(ok), body);
  // HEAD: the same headers, no body.
  const std::string head = Fetch(*port, "HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(head.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << head;
  EXPECT_NE(head.find("\r\nContent-Length: " + std::to_string(body.size()) + "\r\n"),
            std::string::npos)
      << head;
  EXPECT_EQ(BodyOf(head), "");
  {
    // Keep-alive: two requests over one connection.
    Client client(AF_INET, *port);
    ASSERT_TRUE(client.connected());
    ASSERT_TRUE(client.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_EQ(client.ReadResponse().rfind("HTTP/1.1 200 OK\r\n", 0), 0u);
    ASSERT_TRUE(client.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_EQ(BodyOf(client.ReadResponse()), body);
  }
  server.Stop();
  EXPECT_EQ(Fetch(*port, "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"), "");
}

TEST(HttpServer, BearerTokenGuardsOnlyItsRoute) {
  HttpServer server;
  server.Handle("/metrics", "text/plain", [] { return std::string("secret metrics\n"); },
                "s3cret-token");
  server.Handle("/healthz", "text/plain", [] { return std::string("ok\n"); });
  absl::StatusOr<int> port = server.Start("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string none = Fetch(*port, "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(none.rfind("HTTP/1.1 401", 0), 0u) << none;
  EXPECT_NE(none.find("WWW-Authenticate: Bearer"), std::string::npos) << none;
  EXPECT_EQ(none.find("secret metrics"), std::string::npos);
  EXPECT_EQ(none.find("s3cret-token"), std::string::npos);
  // (Trailing whitespace is not part of a header value, per RFC 9110, so it is not tried here.)
  for (const char* wrong : {"Bearer s3cret-tokeN", "Bearer s3cret-toke", "s3cret-token",
                            "Basic s3cret-token", "Bearer "}) {
    const std::string reply = Fetch(*port, std::string("GET /metrics HTTP/1.1\r\nAuthorization: ") +
                                               wrong + "\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(reply.rfind("HTTP/1.1 401", 0), 0u) << wrong << ": " << reply;
  }
  const std::string good = Fetch(*port,
                                 "GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret-token\r\n"
                                 "Connection: close\r\n\r\n");
  EXPECT_EQ(good.rfind("HTTP/1.1 200 OK", 0), 0u) << good;
  EXPECT_EQ(BodyOf(good), "secret metrics\n");
  // The probe's path needs nothing.
  const std::string health = Fetch(*port, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(health.rfind("HTTP/1.1 200 OK", 0), 0u) << health;
}

TEST(HttpServer, ServesOverIpv6) {
  if (!HasIpv6Loopback()) GTEST_SKIP() << "this machine has no ::1";
  HttpServer loopback;
  HandleHealthz(&loopback);
  absl::StatusOr<int> port = loopback.Start("[::1]:0");
  ASSERT_TRUE(port.ok()) << port.status();
  EXPECT_TRUE(IsHealthy(Fetch(*port, kHealthzRequest, AF_INET6)));
  // [::] takes IPv6 and IPv4 clients.
  HttpServer any;
  HandleHealthz(&any);
  absl::StatusOr<int> any_port = any.Start("[::]:0");
  ASSERT_TRUE(any_port.ok()) << any_port.status();
  EXPECT_TRUE(IsHealthy(Fetch(*any_port, kHealthzRequest, AF_INET6)));
  EXPECT_TRUE(IsHealthy(Fetch(*any_port, kHealthzRequest, AF_INET)));
}

TEST(HttpServer, BindsNamesAndEmptyHostOverIpv4) {
  for (const std::string host : {"localhost", "", "0.0.0.0"}) {
    HttpServer server;
    HandleHealthz(&server);
    absl::StatusOr<int> port = server.Start(host + ":0");
    ASSERT_TRUE(port.ok()) << host << ": " << port.status();
    EXPECT_TRUE(IsHealthy(Fetch(*port, kHealthzRequest, AF_INET))) << host;
  }
}

TEST(HttpServer, AnswersUnknownPathsAndOtherMethods) {
  HttpServer server;
  server.Handle("/metrics", "text/plain", [] { return std::string("m 1\n"); });
  absl::StatusOr<int> port = server.Start("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  for (const std::string method : {"GET", "HEAD", "POST"}) {
    const std::string response =
        Fetch(*port, method + " /other HTTP/1.1\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(response.rfind("HTTP/1.1 404 Not Found\r\n", 0), 0u) << method << ": " << response;
  }
  // "/metrics" is matched exactly, not as a prefix or a pattern.
  EXPECT_EQ(
      Fetch(*port, "GET /metricsX HTTP/1.1\r\nConnection: close\r\n\r\n").rfind("HTTP/1.1 404", 0),
      0u);
  for (const std::string method : {"POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"}) {
    const std::string response =
        Fetch(*port, method + " /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(response.rfind("HTTP/1.1 405 Method Not Allowed\r\n", 0), 0u)
        << method << ": " << response;
    EXPECT_NE(response.find("\r\nAllow: GET, HEAD\r\n"), std::string::npos) << method;
  }
  // A 405 to a request with a body leaves a keep-alive connection in step.
  Client client(AF_INET, *port);
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.Send("PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"));
  const std::string put = client.ReadResponse();
  EXPECT_EQ(put.rfind("HTTP/1.1 405", 0), 0u) << put;
  EXPECT_NE(put.find("\r\nAllow: GET, HEAD\r\n"), std::string::npos) << put;
  ASSERT_TRUE(
      client.Send("POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "5\r\nhello\r\n0\r\n\r\n"));
  EXPECT_EQ(client.ReadResponse().rfind("HTTP/1.1 405", 0), 0u);
  ASSERT_TRUE(client.Send("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  const std::string after = client.ReadUntilClosed();
  EXPECT_EQ(after.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << after;
  EXPECT_EQ(BodyOf(after), "m 1\n");
  Client nonsense(AF_INET, *port);
  ASSERT_TRUE(nonsense.connected());
  ASSERT_TRUE(nonsense.Send("NONSENSE\r\n\r\n"));
  EXPECT_EQ(nonsense.ReadResponse().rfind("HTTP/1.1 400", 0), 0u);
}

TEST(HttpServer, RejectsMalformedAndTakenAddresses) {
  for (const std::string address :
       {"no-port", "127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:65536", "127.0.0.1:-1",
        "::1:0", "[::1:0", "[::1]0", "[]:0", "[localhost]:0", "[127.0.0.1]:0"}) {
    absl::StatusOr<int> port = HttpServer().Start(address);
    EXPECT_EQ(port.status().code(), absl::StatusCode::kInvalidArgument)
        << address << ": " << port.status();
  }
  HttpServer server;
  HandleHealthz(&server);
  absl::StatusOr<int> port = server.Start("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  EXPECT_EQ(server.Start("127.0.0.1:0").status().code(), absl::StatusCode::kFailedPrecondition);
  // A taken port is an error, not a silent second server.
  HttpServer second;
  absl::StatusOr<int> clash = second.Start("127.0.0.1:" + std::to_string(*port));
  EXPECT_EQ(clash.status().code(), absl::StatusCode::kUnavailable) << clash.status();
  EXPECT_TRUE(IsHealthy(Fetch(*port, kHealthzRequest)));
  server.Stop();
  server.Stop();        // idempotent
  HttpServer().Stop();  // never started
}

// Review finding 6, "stall by silence": with the old single-threaded server, each silent
// connection ahead of the probe held it for 5 s.
TEST(HttpServer, SilentClientsDoNotDelayHealthz) {
  HttpServer server;
  HandleHealthz(&server);
  absl::StatusOr<int> port = server.Start("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  // Three silent connections: one short of the pool, so the probe still finds a free thread.
  std::vector<std::unique_ptr<Client>> silent;
  const Clock::time_point connected = Clock::now();
  for (int i = 0; i < 3; ++i) {
    silent.push_back(std::make_unique<Client>(AF_INET, *port, std::chrono::seconds(15)));
    ASSERT_TRUE(silent.back()->connected());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the server takes them first
  const Clock::time_point start = Clock::now();
  const std::string response = Fetch(*port, kHealthzRequest);
  const double healthz_seconds = SecondsSince(start);
  EXPECT_TRUE(IsHealthy(response)) << response;
  EXPECT_LT(healthz_seconds, 1.0);
  // And the server hangs up on them (after its 2 s keep-alive timeout), freeing its threads.
  double closed_seconds = 0;
  for (const std::unique_ptr<Client>& client : silent) {
    const double seconds = client->SecondsUntilClosed(connected);
    EXPECT_GE(seconds, 0) << "a silent connection was not closed within 15 s";
    closed_seconds = std::max(closed_seconds, seconds);
  }
  EXPECT_LT(closed_seconds, 10.0);
  std::printf(
      "[ measured ] /healthz with 3 silent clients: %.1f ms; silent clients closed after "
      "%.3f s\n",
      healthz_seconds * 1e3, closed_seconds);
}

// Review finding 6, "stall forever": a client that asks for a body larger than the socket
// buffers and never reads blocked the old server's only thread, and its Stop(), indefinitely.
TEST(HttpServer, NonReadingClientDelaysNeitherHealthzNorStop) {
  auto server = std::make_unique<HttpServer>();
  std::atomic<int> large_bodies{0};
  server->Handle("/metrics", "text/plain", [&large_bodies] {
    large_bodies.fetch_add(1);
    return std::string(size_t{64} << 20, 'x');
  });
  HandleHealthz(server.get());
  absl::StatusOr<int> port = server->Start("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  Client hog(AF_INET, *port, std::chrono::seconds(5), /*receive_buffer=*/4096);
  ASSERT_TRUE(hog.connected());
  ASSERT_TRUE(hog.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  const Clock::time_point asked = Clock::now();
  while (large_bodies.load() == 0 && SecondsSince(asked) < 10) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(large_bodies.load(), 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the server fills the buffers
  const Clock::time_point start = Clock::now();
  const std::string response = Fetch(*port, kHealthzRequest);
  const double healthz_seconds = SecondsSince(start);
  EXPECT_TRUE(IsHealthy(response)) << response;
  EXPECT_LT(healthz_seconds, 1.0);

  // Stop while the hog is still connected, on another thread so that a hang fails the test.
  auto stopped = std::make_shared<std::promise<void>>();
  std::future<void> done = stopped->get_future();
  const Clock::time_point stop_start = Clock::now();
  std::thread stopper([raw = server.get(), stopped] {
    raw->Stop();
    stopped->set_value();
  });
  if (done.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    stopper.detach();
    (void)server.release();  // the stuck Stop() still uses it
    FAIL() << "Stop() did not return within 30 s while a client was not reading";
  }
  stopper.join();
  const double stop_seconds = SecondsSince(stop_start);
  EXPECT_LT(stop_seconds, 10.0);
  std::printf("[ measured ] /healthz beside a non-reading 64 MiB client: %.1f ms; Stop(): %.3f s\n",
              healthz_seconds * 1e3, stop_seconds);
}

// Handlers need not be reentrant, and a slow one holds up only its own path.
TEST(HttpServer, CallsAHandlerOneAtATimeWhileOtherPathsAreServed) {
  HttpServer server;
  std::atomic<int> inside{0};
  std::atomic<int> most_inside{0};
  server.Handle("/slow", "text/plain", [&] {
    const int now = inside.fetch_add(1) + 1;
    int seen = most_inside.load();
    while (now > seen && !most_inside.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    inside.fetch_sub(1);
    return std::string("slow\n");
  });
  HandleHealthz(&server);
  absl::StatusOr<int> port = server.Start("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  std::vector<std::string> slow(3);
  std::vector<std::thread> fetchers;
  for (std::string& response : slow) {
    fetchers.emplace_back([&response, port = *port] {
      response = Fetch(port, "GET /slow HTTP/1.1\r\nConnection: close\r\n\r\n");
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const Clock::time_point start = Clock::now();
  const std::string response = Fetch(*port, kHealthzRequest);
  const double healthz_seconds = SecondsSince(start);
  for (std::thread& fetcher : fetchers) fetcher.join();
  EXPECT_TRUE(IsHealthy(response)) << response;
  EXPECT_LT(healthz_seconds, 1.0);
  for (const std::string& s : slow) EXPECT_EQ(BodyOf(s), "slow\n") << s;
  EXPECT_EQ(most_inside.load(), 1);
  std::printf("[ measured ] /healthz while /slow handlers queue: %.1f ms\n", healthz_seconds * 1e3);
}

}  // namespace
}  // namespace raptr
