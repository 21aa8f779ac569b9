// The worker agent (`raptr-worker serve`): connects to a coordinator, announces itself, and runs
// the assignments it is given: one rank of a data-parallel group following the coordinator's
// step plans with the engine, reporting every step, evaluation and checkpoint back.
#pragma once

#include <string>
#include <vector>

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
  // connections fails the step after this long (unless the coordinator aborts the group first,
  // which tears the collective down at once).
  double collective_timeout_seconds = 300;
  // A job thread that has not ended this long after its abort is stuck (in a kernel, a read, a
  // collective Gloo cannot interrupt): the worker restarts its own process (execv of the same
  // binary and arguments) rather than keep serving with it.
  double abort_timeout_seconds = 10;
  // Exit (status 0) after the first assignment ends, however it ends (tests, batch systems).
  bool exit_after_job = false;
  // Fault injection for recovery tests: the process dies (_exit(3), no goodbye, like a kill -9)
  // just before running this 0-based step. -1: never.
  int64_t crash_at_step = -1;
  // Fault injection for hang tests: in a job's first generation, the job thread hangs (ignoring
  // aborts, while heartbeats go on) just before this 0-based step. -1: never.
  int64_t hang_at_step = -1;
  // The process's command line, for the restart after a stuck job (empty: exit instead).
  std::vector<std::string> argv;
  // HOST:PORT of the Prometheus /metrics endpoint; port 0 picks a free one; empty: none.
  std::string metrics_listen = "127.0.0.1:9402";
};

// Runs until SIGINT/SIGTERM, a Shutdown from the coordinator, or a connection timeout; returns
// the process exit code (0, or 1 when the coordinator stayed unreachable).
int RunAgent(const AgentOptions& options);

}  // namespace raptr
