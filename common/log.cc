// Daemon log lines (see log.h).
#include "common/log.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <utility>

namespace raptr {
namespace {
std::string& LogName() {
  static std::string name = "raptr";
  return name;
}
using Sink = void (*)(const std::string&);
Sink& LogSink() {
  static Sink sink = nullptr;
  return sink;
}
}  // namespace

void SetLogSink(void (*sink)(const std::string& line)) { LogSink() = sink; }

void SetLogName(std::string name) { LogName() = std::move(name); }

void Log(const std::string& line) {
  if (LogSink() != nullptr) {
    LogSink()(line);
    return;
  }
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
  std::fprintf(stderr, "%s %s: %s\n", stamp, LogName().c_str(), line.c_str());
}

double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace raptr
