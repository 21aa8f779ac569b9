// The worker agent (`raptr-worker serve`): connects to a coordinator, announces itself, and runs
// the assignments it is given: one rank of a data-parallel group following the coordinator's
// step plans with the engine, reporting every step, evaluation and checkpoint back.
#pragma once

#include <string>

namespace raptr {

struct AgentOptions {
  std::string coordinator = "127.0.0.1:50051";  // HOST:PORT of raptr-coordinator
  std::string worker_id;                        // stable identity; empty: <hostname>-<pid>
  std::string host;  // address peers reach this worker at (Gloo); empty: derived
  int threads = 0;   // CPU threads for the kernels; 0: OpenMP's default
  // Give up when no connection succeeds for this long (0: retry forever).
  double connect_timeout_seconds = 0;
  double max_backoff_seconds = 10;
  // Bound on Gloo's rendezvous and on each collective: a peer that stops without closing its
  // connections fails the step after this long.
  double collective_timeout_seconds = 300;
  // Exit (status 0) after the first assignment ends, however it ends (tests, batch systems).
  bool exit_after_job = false;
  // Fault injection for recovery tests: the process dies (_exit(3), no goodbye, like a kill -9)
  // just before running this 0-based step. -1: never.
  int64_t crash_at_step = -1;
  // HOST:PORT of the Prometheus /metrics endpoint; port 0 picks a free one; empty: none.
  std::string metrics_listen = "127.0.0.1:9402";
};

// Runs until SIGINT/SIGTERM, a Shutdown from the coordinator, or a connection timeout; returns
// the process exit code (0, or 1 when the coordinator stayed unreachable).
int RunAgent(const AgentOptions& options);

}  // namespace raptr
