// The metrics registry's text exposition (exact output, escaping, histogram buckets) and the
// HTTP server that serves it, over a real loopback socket.
#include "common/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <string>

#include "common/http_server.h"
#include "gtest/gtest.h"

namespace raptr {
namespace {

TEST(Metrics, RendersCountersGaugesAndHistogramsExactly) {
  metrics::Registry registry;
  metrics::Family* steps = registry.Counter("raptr_steps_total", "Steps run.", {"job_id"});
  metrics::Family* loss = registry.Gauge("raptr_loss", "Loss.\nSecond line \\ here.", {"job_id"});
  metrics::Family* seconds =
      registry.Histogram("raptr_step_seconds", "Step time.", {"phase"}, {0.1, 1});
  steps->Add({"job-2"}, 2);
  steps->Add({"job-1"}, 1);
  steps->Add({"job-1"}, -5);  // counters never go down
  loss->Set({"a\"b\\c\nd"}, 1.5);
  seconds->Observe({"total"}, 0.05);
  seconds->Observe({"total"}, 0.5);
  seconds->Observe({"total"}, 5);
  EXPECT_EQ(registry.Render(),
            "# HELP raptr_steps_total Steps run.\n"
            "# TYPE raptr_steps_total counter\n"
            "raptr_steps_total{job_id=\"job-1\"} 1\n"
            "raptr_steps_total{job_id=\"job-2\"} 2\n"
            "# HELP raptr_loss Loss.\\nSecond line \\\\ here.\n"
            "# TYPE raptr_loss gauge\n"
            "raptr_loss{job_id=\"a\\\"b\\\\c\\nd\"} 1.5\n"
            "# HELP raptr_step_seconds Step time.\n"
            "# TYPE raptr_step_seconds histogram\n"
            "raptr_step_seconds_bucket{phase=\"total\",le=\"0.1\"} 1\n"
            "raptr_step_seconds_bucket{phase=\"total\",le=\"1\"} 2\n"
            "raptr_step_seconds_bucket{phase=\"total\",le=\"+Inf\"} 3\n"
            "raptr_step_seconds_sum{phase=\"total\"} 5.55\n"
            "raptr_step_seconds_count{phase=\"total\"} 3\n");
  steps->Remove({"job-2"});
  EXPECT_EQ(registry.Render().find("job-2"), std::string::npos);
}

TEST(Metrics, FormatsSpecialValuesAndRoundTrips) {
  EXPECT_EQ(metrics::FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(metrics::FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(metrics::FormatValue(std::nan("")), "NaN");
  EXPECT_EQ(metrics::FormatValue(0.1), "0.1");
  EXPECT_EQ(std::stod(metrics::FormatValue(1.0 / 3)), 1.0 / 3);
  EXPECT_EQ(metrics::FormatValue(1e21), "1e+21");
}

TEST(MetricsDeathTest, RejectsMisnamedCountersAndBadBuckets) {
  EXPECT_DEATH(
      {
        metrics::Registry r;
        r.Counter("raptr_steps", "no _total");
      },
      "must end in _total");
  EXPECT_DEATH(
      {
        metrics::Registry r;
        r.Histogram("raptr_h", "h", {}, {1, 1});
      },
      "strictly increasing");
  EXPECT_DEATH(
      {
        metrics::Registry r;
        r.Gauge("raptr_g", "g", {"le"});
      },
      "bad or repeated label");
}

// One HTTP/1.0-style request over a fresh connection; returns the whole response.
std::string Fetch(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  (void)send(fd, request.data(), request.size(), 0);
  std::string response;
  char buffer[4096];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) response.append(buffer, n);
  close(fd);
  return response;
}

TEST(HttpServer, ServesRoutesOverLoopback) {
  metrics::Registry registry;
  registry.Gauge("raptr_up", "Up.")->Set({}, 1);
  HttpServer server;
  server.Handle("/metrics", "text/plain; version=0.0.4", [&] { return registry.Render(); });
  absl::StatusOr<int> port = server.Start("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string ok = Fetch(*port, "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(ok.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << ok;
  EXPECT_NE(ok.find("Content-Type: text/plain; version=0.0.4\r\n"), std::string::npos);
  EXPECT_NE(ok.find("\r\n\r\n# HELP raptr_up Up.\n# TYPE raptr_up gauge\nraptr_up 1\n"),
            std::string::npos);
  const std::string head = Fetch(*port, "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(head.find("raptr_up 1"), std::string::npos);
  EXPECT_EQ(Fetch(*port, "GET /other HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_EQ(Fetch(*port, "POST /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 405", 0), 0u);
  // A taken port is an error, not a silent second server.
  HttpServer second;
  absl::StatusOr<int> clash = second.Start("127.0.0.1:" + std::to_string(*port));
  EXPECT_FALSE(clash.ok());
  EXPECT_FALSE(HttpServer().Start("no-port").ok());
  server.Stop();
  EXPECT_EQ(Fetch(*port, "GET /metrics HTTP/1.1\r\n\r\n"), "");
}

}  // namespace
}  // namespace raptr
