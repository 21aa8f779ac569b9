// A small metrics registry (counters, gauges, histograms with labels) rendered in the Prometheus
// text exposition format 0.0.4. Written here because the Prometheus C++ client is not packaged for
// Debian 12; it does what raptr's two daemons need and nothing more.
//
//   metrics::Registry registry;
//   metrics::Family* steps = registry.Counter("raptr_steps_total", "Steps run.", {"job_id"});
//   steps->Add({"job-000001"}, 1);
//   std::string text = registry.Render();  // GET /metrics
//
// Conventions the registry enforces (a programming error aborts at declaration): metric and label
// names match [a-zA-Z_:][a-zA-Z0-9_:]* / [a-zA-Z_][a-zA-Z0-9_]*, counters end in `_total`, a
// histogram's buckets are strictly increasing and finite, names are unique, and "le" is not a
// label name. Values are escaped as the format requires (\\, \" and \n in label values; \\ and \n
// in HELP). Series are rendered in a stable order (by label values).
//
// Thread safety: all methods are thread-safe (one mutex per registry).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace raptr::metrics {

enum class Type { kCounter, kGauge, kHistogram };

// One metric family: a name, its help, type and label names, and its series.
class Family {
 public:
  // Counter: adds delta (>= 0; a negative delta is ignored, counters never go down).
  void Add(const std::vector<std::string>& label_values, double delta);
  // Gauge (or counter mirroring a monotonic total kept elsewhere): sets the value.
  void Set(const std::vector<std::string>& label_values, double value);
  // Histogram: records one observation.
  void Observe(const std::vector<std::string>& label_values, double value);
  // Drops one series / every series (a job or worker that is gone).
  void Remove(const std::vector<std::string>& label_values);
  void Clear();
  // Drops every series whose first label values are `prefix` (e.g. a job's series of every
  // state, or a worker's of every phase); an empty prefix drops every series.
  void RemoveWithPrefix(const std::vector<std::string>& prefix);

  const std::string& name() const { return name_; }

 private:
  friend class Registry;
  struct Series {
    double value = 0;               // counter, gauge
    std::vector<uint64_t> buckets;  // histogram: per-bucket (not cumulative) counts
    uint64_t count = 0;
    double sum = 0;
  };
  Family(std::string name, std::string help, Type type, std::vector<std::string> label_names,
         std::vector<double> buckets);
  Series& SeriesFor(const std::vector<std::string>& label_values)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Render(std::string* out) const;

  const std::string name_;
  const std::string help_;
  const Type type_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bounds_;  // histogram bucket upper bounds, without +Inf
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, Series> series_ ABSL_GUARDED_BY(mu_);
};

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Declares a family; the returned pointer lives as long as the registry.
  Family* Counter(const std::string& name, const std::string& help,
                  std::vector<std::string> label_names = {});
  Family* Gauge(const std::string& name, const std::string& help,
                std::vector<std::string> label_names = {});
  Family* Histogram(const std::string& name, const std::string& help,
                    std::vector<std::string> label_names, std::vector<double> buckets);

  // The text exposition of every family, in declaration order.
  std::string Render() const;

  // Exponential buckets: start, start*factor, ... (count of them).
  static std::vector<double> ExponentialBuckets(double start, double factor, int count);

 private:
  Family* Add(const std::string& name, const std::string& help, Type type,
              std::vector<std::string> label_names, std::vector<double> buckets);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Family>> families_ ABSL_GUARDED_BY(mu_);
};

// Escapes a label value for the text format.
std::string EscapeLabelValue(const std::string& value);
// Formats a sample value: shortest round-trip decimal, or +Inf, -Inf, NaN.
std::string FormatValue(double value);

}  // namespace raptr::metrics
