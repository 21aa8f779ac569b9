// The metrics registry's text exposition (exact output, escaping, histogram buckets). The HTTP
// server that serves it is tested in http_server_test.cc.
#include "common/metrics.h"

#include <cmath>
#include <limits>
#include <string>

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

TEST(Metrics, RemoveWithPrefixDropsExactlyTheMatchingSeries) {
  metrics::Registry registry;
  metrics::Family* state = registry.Gauge("raptr_state", "State.", {"job_id", "state"});
  for (const char* job : {"job-1", "job-10", "job-2"}) {
    for (const char* s : {"running", "failed"}) state->Set({job, s}, 1);
  }
  state->RemoveWithPrefix({"job-1"});  // not job-10, whose first value only starts the same
  const std::string text = registry.Render();
  EXPECT_EQ(text.find("job_id=\"job-1\""), std::string::npos) << text;
  EXPECT_NE(text.find("raptr_state{job_id=\"job-10\",state=\"failed\"} 1"), std::string::npos);
  EXPECT_NE(text.find("raptr_state{job_id=\"job-2\",state=\"running\"} 1"), std::string::npos);
  state->RemoveWithPrefix({"job-2", "running"});
  EXPECT_EQ(registry.Render().find("job_id=\"job-2\",state=\"running\""), std::string::npos);
  EXPECT_NE(registry.Render().find("job_id=\"job-2\",state=\"failed\""), std::string::npos);
  state->RemoveWithPrefix({});
  EXPECT_EQ(registry.Render(), "# HELP raptr_state State.\n# TYPE raptr_state gauge\n");
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

}  // namespace
}  // namespace raptr
