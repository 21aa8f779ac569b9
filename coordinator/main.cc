// raptr-coordinator: serves JobService (and gRPC health) over the job store until SIGINT/SIGTERM.
#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/flags.h"
#include "common/http_server.h"
#include "common/data_roots.h"
#include "common/log.h"
#include "common/security.h"
#include "common/metrics.h"
#include "coordinator/auth.h"
#include "coordinator/cluster.h"
#include "coordinator/control_service.h"
#include "coordinator/job_service.h"
#include "coordinator/store/job_store.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/impl/server_builder_plugin.h"
#include "grpcpp/resource_quota.h"

namespace raptr {
namespace {

constexpr char kUsage[] =
    "usage: raptr-coordinator [flags]\n\n"
    "Serves raptr.v1.JobService (clients), raptr.v1.ControlService (workers),\n"
    "grpc.health.v1.Health (and, with --reflection, server reflection) until SIGINT or\n"
    "SIGTERM. Jobs that were running when it last stopped resume from their latest committed\n"
    "checkpoint as workers connect. docs/SECURITY.md: TLS, tokens, certificates.\n\nflags:\n";
// In-flight calls (a WatchJob stream, say) get this long to finish at shutdown before they are
// cancelled.
constexpr int kShutdownGraceSeconds = 5;

// Takes server reflection out of a builder. Linking gRPC's reflection plugin registers it with
// every ServerBuilder at static initialization, so "off" means removing it from the plugins the
// builder will run, not merely not initializing it.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    std::erase_if(*plugins, [](const std::unique_ptr<grpc::ServerBuilderPlugin>& plugin) {
      return plugin->name() == "proto_server_reflection";
    });
  }
};

// Creates the directory the store file lives in.
absl::Status EnsureParentDirectory(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (parent.empty()) return absl::OkStatus();
  std::error_code error;
  std::filesystem::create_directories(parent, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create directory ", parent.string(), ": ", error.message()));
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  SetLogName("raptr-coordinator");
  // Block the stop signals in every thread (gRPC's threads inherit this mask) so that only
  // sigwait below receives them. First of all: building TLS credentials starts gRPC's threads,
  // and one started before the mask would take a SIGTERM with the default action (exit 143).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  Flags flags;
  flags.Define("listen", "127.0.0.1:50051", "HOST:PORT to serve on; port 0 picks a free port");
  flags.Define("store", "runs/coordinator.db", "the SQLite job store (created when absent)");
  flags.Define("checkpoint-dir", "runs/checkpoints",
               "job checkpoints go to DIR/<job id>; workers must see the same path");
  flags.Define("keep-checkpoints", "3",
               "committed checkpoints kept per job, the newest usable ones (older ones and "
               "superseded generations are deleted); 0: keep all");
  flags.Define("plan-window", "32", "step plans streamed ahead of the slowest worker");
  flags.Define("heartbeat", "2", "seconds between worker heartbeats");
  flags.Define("lease", "15", "seconds of worker silence before it counts as lost");
  flags.Define("progress-timeout", "30",
               "least seconds a running rank may go without reporting a step (or evaluation, or "
               "checkpoint) before its group fails, even while its heartbeats go on");
  flags.Define("progress-factor", "10",
               "the progress deadline in median step times, when that is above "
               "--progress-timeout");
  flags.Define("startup-timeout", "120",
               "seconds a new group may take to its first step (rendezvous, restore, warm-up)");
  flags.Define("metrics-listen", "127.0.0.1:9401",
               "HOST:PORT serving Prometheus /metrics and /healthz; port 0 picks a free port; "
               "empty: off");
  flags.Define("metrics-finished-jobs", "200",
               "finished jobs the metrics keep, the latest ones (every unfinished job is always "
               "there); 0: none");
  flags.Define("metrics-worker-retention", "600",
               "seconds a departed worker's metrics stay (raptr_worker_connected 0) before they "
               "are removed");
  flags.Define("tls-cert", "",
               "PEM certificate chain this coordinator serves gRPC with (TLS on); needs --tls-key");
  flags.Define("tls-key", "", "PEM private key of --tls-cert");
  flags.Define("tls-client-ca", "",
               "PEM CA bundle client and worker certificates must chain to; certificates are then "
               "requested, verified, and name their callers (spiffe://<trust-domain>/<role>/<name>)");
  flags.Define("require-client-cert", "false",
               "refuse any TLS handshake without a client certificate (JobService too); needs "
               "--tls-client-ca");
  flags.Define("auth-tokens", "",
               "the token file: lines `<name> <role> sha256:<hex>` (roles reader, submitter, "
               "admin, worker); with it or --tls-client-ca every call must authenticate");
  flags.Define("trust-domain", "raptr", "the SPIFFE trust domain of certificate identities");
  flags.Define("client-rate", "20",
               "JobService requests per second each client may make (bursts of 10x); 0: no limit");
  flags.Define("reflection", "false", "serve gRPC server reflection (grpcurl, grpc_cli)");
  flags.Define("metrics-token-file", "",
               "file holding a bearer token /metrics requires (/healthz stays open for probes)");
  flags.DefineRepeated("data-root",
                       "a directory every data path of a submitted job must resolve inside "
                       "(symlinks resolved); none given: no confinement");
  flags.Define("help", "false", "print this help");
  if (absl::Status parsed = flags.Parse(argc, argv, 1); !parsed.ok()) {
    std::fprintf(stderr, "raptr-coordinator: %s\n\n%s%s", std::string(parsed.message()).c_str(),
                 kUsage, flags.Usage().c_str());
    return 2;
  }
  if (flags.Get("help") == "true") {
    std::printf("%s%s", kUsage, flags.Usage().c_str());
    return 0;
  }
  if (!flags.positional().empty()) {
    std::fprintf(stderr, "raptr-coordinator: unexpected argument '%s'\n",
                 flags.positional()[0].c_str());
    return 2;
  }
  const std::string listen = flags.Get("listen");
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size()) {
    std::fprintf(stderr, "raptr-coordinator: --listen must be HOST:PORT, got '%s'\n",
                 listen.c_str());
    return 2;
  }

  ClusterOptions options;
  options.checkpoint_root = flags.Get("checkpoint-dir");
  absl::StatusOr<int> window = flags.GetInt32("plan-window");
  absl::StatusOr<double> heartbeat = flags.GetDouble("heartbeat");
  absl::StatusOr<double> lease = flags.GetDouble("lease");
  absl::StatusOr<double> progress = flags.GetDouble("progress-timeout");
  absl::StatusOr<double> factor = flags.GetDouble("progress-factor");
  absl::StatusOr<double> startup = flags.GetDouble("startup-timeout");
  for (const absl::Status& parsed : {window.status(), heartbeat.status(), lease.status(),
                                     progress.status(), factor.status(), startup.status()}) {
    if (!parsed.ok()) {
      std::fprintf(stderr, "raptr-coordinator: %s\n", std::string(parsed.message()).c_str());
      return 2;
    }
  }
  if (*window < 1 || !(*heartbeat > 0) || !(*lease > *heartbeat)) {
    std::fprintf(stderr,
                 "raptr-coordinator: need --plan-window >= 1, --heartbeat > 0 and --lease > "
                 "--heartbeat\n");
    return 2;
  }
  options.plan_window = *window;
  options.heartbeat_seconds = *heartbeat;
  options.lease_seconds = *lease;
  if (!(*progress > 0) || !(*factor > 0) || !(*startup > 0)) {
    std::fprintf(stderr,
                 "raptr-coordinator: need --progress-timeout, --progress-factor and "
                 "--startup-timeout > 0\n");
    return 2;
  }
  options.progress.floor_seconds = *progress;
  options.progress.factor = *factor;
  options.progress.startup_seconds = *startup;
  absl::StatusOr<int> finished_jobs = flags.GetInt32("metrics-finished-jobs");
  absl::StatusOr<double> worker_retention = flags.GetDouble("metrics-worker-retention");
  for (const absl::Status& parsed : {finished_jobs.status(), worker_retention.status()}) {
    if (!parsed.ok()) {
      std::fprintf(stderr, "raptr-coordinator: %s\n", std::string(parsed.message()).c_str());
      return 2;
    }
  }
  if (*finished_jobs < 0 || !(*worker_retention >= 0)) {
    std::fprintf(stderr,
                 "raptr-coordinator: need --metrics-finished-jobs >= 0 and "
                 "--metrics-worker-retention >= 0\n");
    return 2;
  }
  absl::StatusOr<int> keep = flags.GetInt32("keep-checkpoints");
  if (!keep.ok() || *keep < 0) {
    std::fprintf(stderr, "raptr-coordinator: --keep-checkpoints must be an integer >= 0%s%s\n",
                 keep.ok() ? "" : ": ", keep.ok() ? "" : std::string(keep.status().message()).c_str());
    return 2;
  }
  options.keep_checkpoints = *keep;
  options.metrics_finished_jobs = *finished_jobs;
  options.metrics_worker_retention_seconds = *worker_retention;

  // Transport and callers. A coordinator that can be reached from elsewhere without TLS or
  // authentication lets anyone cancel jobs or pose as a worker: said at start, every time.
  ServerTlsOptions tls;
  tls.cert_file = flags.Get("tls-cert");
  tls.key_file = flags.Get("tls-key");
  tls.client_ca_file = flags.Get("tls-client-ca");
  absl::StatusOr<bool> require_client_cert = flags.GetBool("require-client-cert");
  absl::StatusOr<bool> reflection = flags.GetBool("reflection");
  for (const absl::Status& parsed : {require_client_cert.status(), reflection.status()}) {
    if (!parsed.ok()) {
      std::fprintf(stderr, "raptr-coordinator: %s\n", std::string(parsed.message()).c_str());
      return 2;
    }
  }
  tls.require_client_cert = *require_client_cert;
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(tls);
  if (!credentials.ok()) {
    std::fprintf(stderr, "raptr-coordinator: %s\n", std::string(credentials.status().message()).c_str());
    return 2;
  }
  AuthOptions auth;
  auth.client_certificates = !tls.client_ca_file.empty();
  auth.trust_domain = flags.Get("trust-domain");
  if (const std::string tokens_path = flags.Get("auth-tokens"); !tokens_path.empty()) {
    absl::StatusOr<TokenTable> tokens = TokenTable::Load(tokens_path);
    if (!tokens.ok()) {
      std::fprintf(stderr, "raptr-coordinator: --auth-tokens: %s\n",
                   std::string(tokens.status().message()).c_str());
      return 2;
    }
    if (!tls.enabled() && !IsLoopbackAddress(listen)) {
      std::fprintf(stderr,
                   "raptr-coordinator: --auth-tokens without TLS on %s would take tokens in "
                   "plaintext from the network; add --tls-cert/--tls-key or listen on loopback\n",
                   listen.c_str());
      return 2;
    }
    auth.tokens = *std::move(tokens);
  }
  absl::StatusOr<double> client_rate = flags.GetDouble("client-rate");
  if (!client_rate.ok() || !(*client_rate >= 0)) {
    std::fprintf(stderr, "raptr-coordinator: --client-rate must be a number >= 0\n");
    return 2;
  }
  auth.requests_per_second = *client_rate;
  auth.burst = std::max(1.0, 10 * *client_rate);
  std::string metrics_token;
  if (const std::string path = flags.Get("metrics-token-file"); !path.empty()) {
    absl::StatusOr<std::string> token = ReadTokenFile(path, "--metrics-token-file");
    if (!token.ok()) {
      std::fprintf(stderr, "raptr-coordinator: %s\n", std::string(token.status().message()).c_str());
      return 2;
    }
    metrics_token = *std::move(token);
  }
  absl::StatusOr<DataRoots> data_roots = DataRoots::Create(flags.GetAll("data-root"));
  if (!data_roots.ok()) {
    std::fprintf(stderr, "raptr-coordinator: %s\n", std::string(data_roots.status().message()).c_str());
    return 2;
  }
  Authorizer authorizer(auth);
  if (!tls.enabled() && !IsLoopbackAddress(listen)) {
    Log(std::string("warning: ") + absl::StrCat("serving plaintext gRPC on ", listen,
                            ": traffic (specs, rendezvous addresses) can be read and changed on "
                            "the way; add --tls-cert/--tls-key (docs/SECURITY.md)"));
  }
  if (!authorizer.enabled()) {
    Log(std::string("warning: ") + "no --auth-tokens and no --tls-client-ca: every caller may submit, cancel and "
               "act as a worker (docs/SECURITY.md)");
  }
  if (const std::string metrics = flags.Get("metrics-listen");
      !metrics.empty() && metrics_token.empty() && !IsLoopbackAddress(metrics)) {
    Log(std::string("warning: /metrics on ") + metrics +
        " needs no token (--metrics-token-file): anyone who reaches it reads every job and "
        "worker name");
  }
  if (data_roots->unconfined()) {
    Log(std::string("warning: ") + "no --data-root: jobs may name any file the workers can read as their data");
  }

  const std::string store_path = flags.Get("store");
  absl::StatusOr<std::unique_ptr<JobStore>> store = absl::InternalError("not opened");
  if (absl::Status dir = EnsureParentDirectory(store_path); !dir.ok()) {
    store = dir;
  } else {
    store = JobStore::Open(store_path);
  }
  if (!store.ok()) {
    std::fprintf(stderr, "raptr-coordinator: %s\n", store.status().ToString().c_str());
    return 1;
  }


  Cluster cluster(store->get(), options);
  if (absl::Status recovered = cluster.RecoverJobsFromStore(); !recovered.ok()) {
    std::fprintf(stderr, "raptr-coordinator: %s\n", recovered.ToString().c_str());
    return 1;
  }
  metrics::Registry registry;
  cluster.ExportMetrics(&registry);
  HttpServer metrics_server;
  if (const std::string metrics_address = flags.Get("metrics-listen"); !metrics_address.empty()) {
    metrics_server.Handle("/metrics", "text/plain; version=0.0.4; charset=utf-8",
                          [&cluster, &registry] {
                            cluster.RefreshMetrics();
                            return registry.Render();
                          },
                          metrics_token);
    metrics_server.Handle("/healthz", "text/plain", [] { return std::string("ok\n"); });
    absl::StatusOr<int> metrics_port = metrics_server.Start(metrics_address);
    if (!metrics_port.ok()) {
      std::fprintf(stderr, "raptr-coordinator: --metrics-listen: %s\n",
                   metrics_port.status().ToString().c_str());
      return 1;
    }
    std::printf("raptr-coordinator metrics on %s:%d\n",
                metrics_address.substr(0, metrics_address.rfind(':')).c_str(), *metrics_port);
  }
  JobServiceImpl job_service(store->get(), &cluster);
  job_service.set_checkpoint_root(options.checkpoint_root);
  job_service.set_authorizer(&authorizer);
  job_service.set_data_roots(&*data_roots);
  ControlServiceImpl control_service(&cluster, &authorizer);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!*reflection) builder.SetOption(std::make_unique<WithoutReflection>());
  int port = 0;
  builder.AddListeningPort(listen, *credentials, &port);
  builder.RegisterService(&job_service);
  builder.RegisterService(&control_service);
  // Workers' sessions are long-lived streams; keepalive pings find dead peers behind NATs and
  // load balancers even when a job is quiet.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  // Bounds, so no client can exhaust the coordinator: every worker session and every WatchJob
  // holds a server thread for its lifetime, so the thread quota caps them (a call past it fails
  // RESOURCE_EXHAUSTED instead of the process running out of threads); one connection may open
  // at most kMaxStreamsPerConnection calls at once; a message is at most kMaxMessageBytes (specs
  // are capped far lower, at 64 KiB; rendezvous values at 1 MiB).
  constexpr int kMaxServerThreads = 1024;
  constexpr int kMaxStreamsPerConnection = 64;
  constexpr int kMaxMessageBytes = 4 << 20;
  grpc::ResourceQuota quota("raptr-coordinator");
  quota.SetMaxThreads(kMaxServerThreads);
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxStreamsPerConnection);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "raptr-coordinator: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  Log(absl::StrCat("serving gRPC with ", tls.enabled() ? "TLS" : "no TLS",
                   tls.require_client_cert ? " (client certificates required)" : "",
                   authorizer.enabled() ? ", authenticated callers only" : ", no authentication",
                   *reflection ? ", reflection on" : ""));
  std::printf("raptr-coordinator listening on %s:%d\n", listen.substr(0, colon).c_str(), port);
  std::fflush(stdout);

  // Leases, summary flushes and scheduling run on this clock; events also act at once.
  std::atomic<bool> stopping{false};
  std::thread ticker([&cluster, &stopping] {
    while (!stopping.load()) {
      cluster.Tick();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  stopping.store(true);
  ticker.join();
  cluster.Shutdown("the coordinator is shutting down");
  // Watchers are told now (they can reconnect to the next coordinator) rather than cut off at the
  // end of the grace period.
  job_service.EndWatches(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                      "the coordinator is shutting down; watch again"));
  std::fprintf(stderr, "raptr-coordinator: %s, shutting down\n",
               signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(kShutdownGraceSeconds));
  server->Wait();
  return 0;
}

}  // namespace
}  // namespace raptr

int main(int argc, char** argv) { return raptr::Main(argc, argv); }
