// Metrics registry and the Prometheus text format (see metrics.h).
#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <regex>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"

namespace raptr::metrics {
namespace {

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "metrics: %s\n", message.c_str());
  std::abort();
}

std::string EscapeHelp(const std::string& help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

const char* TypeName(Type type) {
  switch (type) {
    case Type::kCounter:
      return "counter";
    case Type::kGauge:
      return "gauge";
    case Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// {a="x",b="y"} (plus an optional extra pair, for "le"); empty when there are no labels.
std::string LabelText(const std::vector<std::string>& names, const std::vector<std::string>& values,
                      const std::string& extra_name = "", const std::string& extra_value = "") {
  if (names.empty() && extra_name.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "" : ",", names[i], "=\"", EscapeLabelValue(values[i]), "\"");
  }
  if (!extra_name.empty()) {
    absl::StrAppend(&out, names.empty() ? "" : ",", extra_name, "=\"", extra_value, "\"");
  }
  return out + "}";
}

}  // namespace

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[32];
  // The shortest of %.15g .. %.17g that reads back as the same double.
  for (int precision = 15; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof(buffer), "%.*g", precision, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  return buffer;
}

Family::Family(std::string name, std::string help, Type type, std::vector<std::string> label_names,
               std::vector<double> buckets)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)),
      bounds_(std::move(buckets)) {}

Family::Series& Family::SeriesFor(const std::vector<std::string>& label_values) {
  if (label_values.size() != label_names_.size()) {
    Die(absl::StrCat(name_, ": ", label_values.size(), " label values for ", label_names_.size(),
                     " labels"));
  }
  Series& series = series_[label_values];
  if (type_ == Type::kHistogram && series.buckets.empty()) series.buckets.assign(bounds_.size(), 0);
  return series;
}

void Family::Add(const std::vector<std::string>& label_values, double delta) {
  if (!(delta >= 0)) return;
  absl::MutexLock lock(&mu_);
  SeriesFor(label_values).value += delta;
}

void Family::Set(const std::vector<std::string>& label_values, double value) {
  absl::MutexLock lock(&mu_);
  SeriesFor(label_values).value = value;
}

void Family::Observe(const std::vector<std::string>& label_values, double value) {
  absl::MutexLock lock(&mu_);
  Series& series = SeriesFor(label_values);
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (value <= bounds_[i]) {
      ++series.buckets[i];
      break;
    }
  }
  ++series.count;
  series.sum += value;
}

void Family::Remove(const std::vector<std::string>& label_values) {
  absl::MutexLock lock(&mu_);
  series_.erase(label_values);
}

void Family::Clear() {
  absl::MutexLock lock(&mu_);
  series_.clear();
}

void Family::RemoveWithPrefix(const std::vector<std::string>& prefix) {
  absl::MutexLock lock(&mu_);
  // The map is ordered by label values, so the matching series are one contiguous run starting
  // at the first key >= prefix.
  auto it = series_.lower_bound(prefix);
  while (it != series_.end() && it->first.size() >= prefix.size() &&
         std::equal(prefix.begin(), prefix.end(), it->first.begin())) {
    it = series_.erase(it);
  }
}

void Family::Render(std::string* out) const {
  absl::MutexLock lock(&mu_);
  absl::StrAppend(out, "# HELP ", name_, " ", EscapeHelp(help_), "\n# TYPE ", name_, " ",
                  TypeName(type_), "\n");
  for (const auto& [values, series] : series_) {
    if (type_ != Type::kHistogram) {
      absl::StrAppend(out, name_, LabelText(label_names_, values), " ", FormatValue(series.value),
                      "\n");
      continue;
    }
    uint64_t cumulative = 0;
    for (size_t i = 0; i < bounds_.size(); ++i) {
      cumulative += series.buckets[i];
      absl::StrAppend(out, name_, "_bucket",
                      LabelText(label_names_, values, "le", FormatValue(bounds_[i])), " ",
                      cumulative, "\n");
    }
    absl::StrAppend(out, name_, "_bucket", LabelText(label_names_, values, "le", "+Inf"), " ",
                    series.count, "\n");
    absl::StrAppend(out, name_, "_sum", LabelText(label_names_, values), " ",
                    FormatValue(series.sum), "\n");
    absl::StrAppend(out, name_, "_count", LabelText(label_names_, values), " ", series.count, "\n");
  }
}

Family* Registry::Add(const std::string& name, const std::string& help, Type type,
                      std::vector<std::string> label_names, std::vector<double> buckets) {
  static const std::regex kMetricName("[a-zA-Z_:][a-zA-Z0-9_:]*");
  static const std::regex kLabelName("[a-zA-Z_][a-zA-Z0-9_]*");
  if (!std::regex_match(name, kMetricName)) Die(absl::StrCat("bad metric name \"", name, "\""));
  if (type == Type::kCounter && (name.size() < 6 || name.substr(name.size() - 6) != "_total")) {
    Die(absl::StrCat("counter ", name, " must end in _total"));
  }
  std::set<std::string> seen;
  for (const std::string& label : label_names) {
    if (!std::regex_match(label, kLabelName) || label.rfind("__", 0) == 0 || label == "le" ||
        !seen.insert(label).second) {
      Die(absl::StrCat(name, ": bad or repeated label name \"", label, "\""));
    }
  }
  for (size_t i = 0; i < buckets.size(); ++i) {
    if (!std::isfinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1])) {
      Die(absl::StrCat(name, ": buckets must be finite and strictly increasing"));
    }
  }
  if (type == Type::kHistogram && buckets.empty()) Die(absl::StrCat(name, ": no buckets"));
  absl::MutexLock lock(&mu_);
  for (const auto& family : families_) {
    if (family->name() == name) Die(absl::StrCat("metric ", name, " declared twice"));
  }
  families_.push_back(std::unique_ptr<Family>(
      new Family(name, help, type, std::move(label_names), std::move(buckets))));
  return families_.back().get();
}

Family* Registry::Counter(const std::string& name, const std::string& help,
                          std::vector<std::string> label_names) {
  return Add(name, help, Type::kCounter, std::move(label_names), {});
}

Family* Registry::Gauge(const std::string& name, const std::string& help,
                        std::vector<std::string> label_names) {
  return Add(name, help, Type::kGauge, std::move(label_names), {});
}

Family* Registry::Histogram(const std::string& name, const std::string& help,
                            std::vector<std::string> label_names, std::vector<double> buckets) {
  return Add(name, help, Type::kHistogram, std::move(label_names), std::move(buckets));
}

std::string Registry::Render() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const auto& family : families_) family->Render(&out);
  return out;
}

std::vector<double> Registry::ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> buckets;
  double bound = start;
  for (int i = 0; i < count; ++i, bound *= factor) buckets.push_back(bound);
  return buckets;
}

}  // namespace raptr::metrics
