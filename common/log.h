// Log lines of the daemons: "HH:MM:SS NAME: line" on stderr, one write per line (so lines of
// different threads do not interleave), UTC. NAME is set once at start (SetLogName).
#pragma once

#include <string>

namespace raptr {

// The name each line carries, e.g. "raptr-worker[host-a]". Call before other threads log.
void SetLogName(std::string name);
void Log(const std::string& line);
// Sends every later line (without its time stamp and name) to `sink` instead of stderr; nullptr:
// stderr again. For the fuzz targets, which run the coordinator millions of times. Call before
// other threads log.
void SetLogSink(void (*sink)(const std::string& line));

// Seconds on the monotonic clock (for durations and deadlines, never for display).
double MonotonicSeconds();

}  // namespace raptr
