// The worker agent (`raptr-worker serve`): connects to a coordinator, announces itself, and runs
// the assignments it is given: one rank of a data-parallel group following the coordinator's
// step plans with the engine, reporting every step, evaluation and checkpoint back.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/data_roots.h"
#include "common/security.h"
#include "grpcpp/security/credentials.h"
#include "worker/engine/backend_factory.h"

namespace raptr {

// Exit statuses of `raptr-worker serve` besides 0 (stopped: SIGINT/SIGTERM, a Shutdown, or
// --exit-after-job), 1 (the coordinator stayed unreachable past --connect-timeout, refused this
// worker, or --metrics-listen could not bind) and 2 (bad flags). docs/OPERATIONS.md lists them.
// --backend cuda: no usable CUDA device --device at startup (a binary without the CUDA backend,
// no driver, no such device). Nothing was announced to the coordinator.
inline constexpr int kExitNoDevice = 69;
// A job thread did not stop after its abort and the process could not restart itself (execv).
inline constexpr int kExitStuckJob = 70;
// The device failed stickily during a job (TrainingSession::DeviceFault): the error was reported
// to the coordinator, which recovers the job on other workers; this process takes no other job
// and exits for its supervisor to restart it (on a healthy device, or not at all).
inline constexpr int kExitDeviceFault = 71;

struct AgentOptions {
  std::string coordinator = "127.0.0.1:50051";  // HOST:PORT of raptr-coordinator
  // Stable identity; empty: <hostname>/gpu<device> for a CUDA worker, <hostname>-<pid> for CPU.
  std::string worker_id;
  std::string host;  // address peers reach this worker at (Gloo); empty: derived
  int threads = 0;   // CPU threads for the kernels; 0: OpenMP's default
  // What this worker trains on (--backend, --device): announced in its Hello, so the coordinator
  // gives it only jobs of that backend; every job's sessions run on it.
  BackendOptions backend;
  // The data-parallel all-reduce of a CUDA worker: "nccl" (device to device; the default when the
  // build has NCCL) or "gloo" (staged through host memory: for ranks sharing one GPU, which NCCL
  // refuses, or a build without NCCL). CPU workers always use Gloo.
  std::string collectives = "auto";
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
  // TLS to the coordinator (--tls-ca, --tls-cert, --tls-key, --tls-server-name): the worker's
  // certificate is its identity (spiffe://<domain>/worker/<name>); none: plaintext.
  ClientTlsOptions tls;
  // The credentials built from `tls` (and the join token) once, at start (RunServe); a file that
  // changes later cannot turn them into anything else. Null: plaintext (only without `tls`).
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // A join token of role worker (--join-token-file), sent on every call; needs TLS.
  std::string join_token;
  // Directories every data path of a job (its shards) must resolve inside before this worker
  // opens it (--data-root, repeatable; symlinks resolved), canonicalized once at startup (so a
  // root later replaced by a symlink does not widen it); default: no confinement.
  DataRoots data_roots;
  // HOST:PORT of the Prometheus /metrics endpoint; port 0 picks a free one; empty: none.
  std::string metrics_listen = "127.0.0.1:9402";
  // A bearer token /metrics requires (--metrics-token-file); empty: none.
  std::string metrics_token;
};

// Runs until SIGINT/SIGTERM, a Shutdown from the coordinator, a connection timeout or a device
// fault; returns the process exit code (0, 1, kExitNoDevice or kExitDeviceFault, see above).
int RunAgent(const AgentOptions& options);

}  // namespace raptr
