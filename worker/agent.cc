// The worker agent (see agent.h): the session with the coordinator.
//
// Threads: the session thread reads the coordinator's stream and dispatches; a heartbeat thread
// keeps the lease (and escalates a job thread that does not stop after its abort); a job thread
// (JobRunner, job_runner.h) runs the assignment from a queue the session thread fills. Writes
// to the stream are serialised by the Connection's mutex.
#include "worker/agent.h"

#include <omp.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/flags.h"
#include "common/http_server.h"
#include "common/log.h"
#include "common/metrics.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/credentials.h"
#include "raptr/v1/control.grpc.pb.h"
#include "raptr/v1/control.pb.h"
#include "worker/engine/backend_factory.h"
#include "worker/engine/device_info.h"
#include "worker/job_runner.h"
#include "worker/process_metrics.h"

namespace raptr {
namespace {

constexpr char kVersion[] = "0.1.0";

double Now() { return MonotonicSeconds(); }

enum class SessionEnd {
  kUnreachable,  // never got a Welcome
  kRejected,     // the coordinator refused the Hello: retrying will not help
  kEnded,        // the session ran and ended (coordinator restart, network)
  kJobDone,      // exit_after_job and the job ended
  kShutdown,     // the coordinator said Shutdown, or we are stopping
  kDeviceFault,  // a job ended with the device faulted: reported; the process exits
};

// "NVIDIA H200 (139.8 GiB, sm_90)".
std::string DescribeDevice(const CudaDeviceInfo& device) {
  return absl::StrFormat("%s (%.1f GiB, sm_%d%d)", device.name,
                         static_cast<double>(device.total_bytes) / (1 << 30),
                         device.compute_major, device.compute_minor);
}

class Agent {
 public:
  // `device`: the CUDA device a CUDA worker trains on (announced in its Hello); none for CPU.
  Agent(const AgentOptions& options, std::string worker_id, std::string host,
        std::optional<CudaDeviceInfo> device, ProcessMetrics* metrics)
      : options_(options),
        worker_id_(std::move(worker_id)),
        host_(std::move(host)),
        device_(std::move(device)),
        instance_id_(NewInstanceId()),
        metrics_(metrics) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    if (!options.tls.server_name.empty()) args.SetSslTargetNameOverride(options.tls.server_name);
    std::shared_ptr<grpc::ChannelCredentials> channel_credentials =
        options.credentials != nullptr ? options.credentials : grpc::InsecureChannelCredentials();
    channel_ = grpc::CreateCustomChannel(options.coordinator, channel_credentials, args);
    stub_ = v1::ControlService::NewStub(channel_);
  }

  int Run() {
    double backoff = 0.25;
    double last_contact = Now();
    bool announced_wait = false;
    while (!stopping()) {
      const SessionEnd end = RunSession();
      if (end == SessionEnd::kDeviceFault) {
        Log(absl::StrCat("exiting with status ", kExitDeviceFault, " (device fault: ",
                         DeviceFault(), "); restart the worker once the device is healthy"));
        return kExitDeviceFault;
      }
      if (end == SessionEnd::kShutdown || end == SessionEnd::kJobDone || stopping()) return 0;
      if (end == SessionEnd::kRejected) return 1;
      if (end == SessionEnd::kEnded) {
        backoff = 0.25;
        last_contact = Now();
        announced_wait = false;
      }
      if (options_.connect_timeout_seconds > 0 &&
          Now() - last_contact > options_.connect_timeout_seconds) {
        Log(absl::StrCat("no coordinator at ", options_.coordinator, " for ",
                         options_.connect_timeout_seconds, " s; giving up",
                         options_.tls.enabled()
                             ? " (a TLS handshake that fails, e.g. a certificate of another CA or "
                               "out of its dates, or a wrong --tls-ca, looks the same: see the "
                               "coordinator's log)"
                             : ""));
        return 1;
      }
      if (!announced_wait) {
        Log(absl::StrCat("waiting for the coordinator at ", options_.coordinator,
                         " (retrying with backoff up to ", options_.max_backoff_seconds, " s)"));
        announced_wait = true;
      }
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Seconds(backoff));
      backoff = std::min(backoff * 2, options_.max_backoff_seconds);
    }
    return 0;
  }

  void Stop() {
    stop_requested_.store(true);
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (current_ != nullptr) current_->context.TryCancel();
  }

 private:
  bool stopping() {
    absl::MutexLock lock(&mu_);
    return stopping_;
  }

  // A job ended with its device faulted (JobRunner's callback, on the job thread, just before
  // it reports the error): this process takes no other job. The session thread ends the session
  // once the coordinator answers (the Abort of that job, or any assignment or shutdown), or the
  // heartbeat thread cancels it after kDeviceFaultGraceSeconds (or the lease expires first).
  void OnDeviceFault(const std::string& fault) {
    absl::MutexLock lock(&fault_mu_);
    if (!device_fault_.empty()) return;
    device_fault_ = fault;
    device_fault_at_ = Now();
  }
  std::string DeviceFault() {
    absl::MutexLock lock(&fault_mu_);
    return device_fault_;
  }
  // Seconds since OnDeviceFault; negative when there was none.
  double SecondsSinceDeviceFault() {
    absl::MutexLock lock(&fault_mu_);
    return device_fault_.empty() ? -1 : Now() - device_fault_at_;
  }

  SessionEnd RunSession() {
    if (!channel_->WaitForConnected(std::chrono::system_clock::now() +
                                    std::chrono::milliseconds(1000))) {
      return SessionEnd::kUnreachable;
    }
    Connection connection;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return SessionEnd::kShutdown;
      current_ = &connection;
    }
    connection.stream = stub_->Connect(&connection.context);
    v1::WorkerMessage hello_message;
    v1::Hello* hello = hello_message.mutable_hello();
    hello->set_worker_id(worker_id_);
    hello->set_backend(device_.has_value() ? v1::BACKEND_CUDA : v1::BACKEND_CPU);
    if (device_.has_value()) {
      v1::Device* device = hello->add_devices();
      device->set_index(device_->index);
      device->set_name(device_->name);
      device->set_memory_bytes(device_->total_bytes);
      device->set_compute_capability(device_->compute_major * 10 + device_->compute_minor);
    }
    hello->set_memory_bytes(static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) *
                            static_cast<int64_t>(sysconf(_SC_PAGE_SIZE)));
    hello->set_cpu_threads(omp_get_max_threads());
    hello->set_host(host_);
    hello->set_version(kVersion);
    hello->set_instance_id(instance_id_);
    v1::CoordinatorMessage message;
    if (!connection.Write(hello_message) || !connection.stream->Read(&message) ||
        !message.has_welcome()) {
      const grpc::Status status = connection.stream->Finish();
      Forget();
      // A refused credential does not mend itself by retrying: exit so the operator (or the
      // pod's restart backoff) sees it.
      if (status.error_code() == grpc::INVALID_ARGUMENT ||
          status.error_code() == grpc::FAILED_PRECONDITION ||
          status.error_code() == grpc::UNAUTHENTICATED ||
          status.error_code() == grpc::PERMISSION_DENIED) {
        Log(absl::StrCat("the coordinator refused this worker: ", status.error_message()));
        return SessionEnd::kRejected;
      }
      if (status.error_code() == grpc::ALREADY_EXISTS) {
        // Another process holds this id; it may be our own previous incarnation whose session
        // the coordinator has not dropped yet. Retry with backoff.
        Log(absl::StrCat("the coordinator refused this session for now: ", status.error_message()));
      }
      return SessionEnd::kUnreachable;
    }
    const double heartbeat = message.welcome().heartbeat_interval_seconds();
    const uint64_t session_token = message.welcome().session_token();
    Log(absl::StrCat("connected to ", options_.coordinator, " as ", worker_id_, " (",
                     device_.has_value()
                         ? absl::StrCat("cuda device ", device_->index, ": ",
                                        DescribeDevice(*device_), ", ")
                         : std::string("cpu, "),
                     omp_get_max_threads(), " threads)"));

    std::unique_ptr<JobRunner> runner;
    absl::Mutex heartbeat_mu;
    bool session_done = false;
    std::thread heartbeats([&] {
      while (true) {
        {
          absl::MutexLock lock(&heartbeat_mu);
          if (heartbeat_mu.AwaitWithTimeout(absl::Condition(&session_done),
                                            absl::Seconds(heartbeat))) {
            return;
          }
        }
        // After a device fault: no heartbeats (an idle one would make this worker placeable
        // again), and the session ends soon (see OnDeviceFault).
        if (const double since = SecondsSinceDeviceFault(); since >= 0) {
          if (since > kDeviceFaultGraceSeconds) connection.context.TryCancel();
          continue;
        }
        v1::WorkerMessage beat;
        {
          absl::MutexLock lock(&runner_mu_);
          if (runner != nullptr && !runner->finished() &&
              runner->SecondsSinceAbort() > options_.abort_timeout_seconds) {
            RestartStuck(*runner);
          }
          if (runner != nullptr && !runner->finished()) {
            beat.mutable_heartbeat()->set_job_id(runner->job_id());
            beat.mutable_heartbeat()->set_generation(runner->generation());
            beat.mutable_heartbeat()->set_step(runner->last_step());
            beat.mutable_heartbeat()->set_work_done(runner->work_done());
          } else {
            beat.mutable_heartbeat()->set_step(-1);
          }
        }
        connection.Write(beat);
      }
    });

    SessionEnd end = SessionEnd::kEnded;
    bool ran_job = false;
    while (connection.stream->Read(&message)) {
      // After a device fault: the job's Abort answers its error (the coordinator has it), and
      // an assignment is not taken; the job's other messages are stragglers.
      if (SecondsSinceDeviceFault() >= 0) {
        if (message.has_abort() || message.has_release() || message.has_assignment() ||
            message.has_shutdown()) {
          end = SessionEnd::kDeviceFault;
          break;
        }
        continue;
      }
      if (message.has_shutdown()) {
        Log(absl::StrCat("shutdown requested: ", message.shutdown().reason()));
        end = SessionEnd::kShutdown;
        break;
      }
      if (message.has_assignment()) {
        std::unique_ptr<JobRunner> old;
        {
          absl::MutexLock lock(&runner_mu_);
          old = std::move(runner);
        }
        // The coordinator assigns only once this worker said its last job thread ended, so this
        // returns at once; a thread still running is aborted, and if stuck the process restarts.
        StopRunner(std::move(old));
        auto next = std::make_unique<JobRunner>(
            message.assignment(), &connection, stub_.get(), options_, worker_id_, host_,
            session_token, metrics_,
            [this](const std::string& fault) { OnDeviceFault(fault); });
        next->Start();
        ran_job = true;
        absl::MutexLock lock(&runner_mu_);
        runner = std::move(next);
        continue;
      }
      std::string job_id;
      int64_t generation = 0;
      if (message.has_step_plan()) {
        job_id = message.step_plan().job_id();
        generation = message.step_plan().generation();
      } else if (message.has_eval_request()) {
        job_id = message.eval_request().job_id();
        generation = message.eval_request().generation();
      } else if (message.has_checkpoint_request()) {
        job_id = message.checkpoint_request().job_id();
        generation = message.checkpoint_request().generation();
      } else if (message.has_release()) {
        job_id = message.release().job_id();
        generation = message.release().generation();
      } else if (message.has_abort()) {
        job_id = message.abort().job_id();
        generation = message.abort().generation();
      }
      absl::MutexLock lock(&runner_mu_);
      if (runner == nullptr || runner->job_id() != job_id || runner->generation() != generation) {
        continue;  // a straggler of an ended generation
      }
      if (message.has_abort()) {
        Log(absl::StrCat(job_id, " generation ", generation,
                         " aborted: ", message.abort().reason()));
        runner->Abort();
      } else {
        runner->Push(message);
      }
      if (options_.exit_after_job && (message.has_abort() || message.has_release())) {
        end = SessionEnd::kJobDone;
        break;
      }
    }
    if (SecondsSinceDeviceFault() >= 0) end = SessionEnd::kDeviceFault;
    if (ran_job && options_.exit_after_job && end == SessionEnd::kEnded) end = SessionEnd::kJobDone;
    // Let a released job finish its queue (it ends at the Release); abort anything else. Either
    // way the wait is bounded: a job thread that does not end restarts the process.
    std::unique_ptr<JobRunner> last;
    {
      absl::MutexLock lock(&runner_mu_);
      last = std::move(runner);
    }
    if (last != nullptr && end == SessionEnd::kJobDone) last->WaitFinished(kReleaseSeconds);
    StopRunner(std::move(last));
    {
      absl::MutexLock lock(&heartbeat_mu);
      session_done = true;
    }
    heartbeats.join();
    connection.WritesDone();
    connection.context.TryCancel();
    const grpc::Status status = connection.stream->Finish();
    Forget();
    if (end == SessionEnd::kEnded) {
      Log(absl::StrCat("session ended: ", status.ok() ? "OK" : status.error_message()));
    }
    return end;
  }

  void Forget() {
    absl::MutexLock lock(&mu_);
    current_ = nullptr;
  }

  // Aborts `runner` and waits (bounded) for its thread to end; restarts the process if it does
  // not. Never blocks on a stuck thread for longer than the abort timeout.
  void StopRunner(std::unique_ptr<JobRunner> runner) {
    if (runner == nullptr) return;
    runner->Abort();
    if (!runner->WaitFinished(options_.abort_timeout_seconds)) RestartStuck(*runner);
    runner.reset();  // joins a thread that has ended
  }

  // A job thread did not end within the abort timeout: this process cannot be trusted to run
  // another job (the thread holds memory, threads, perhaps the device). Start afresh: execv of
  // the same binary with the same arguments (a new instance, which reconnects), or exit when
  // that is not possible, for the supervisor to restart.
  [[noreturn]] void RestartStuck(JobRunner& runner) {
    Log(absl::StrFormat("%s generation %d: the job thread has not stopped %.1f s after its abort; "
                        "restarting this worker process",
                        runner.job_id(), runner.generation(), runner.SecondsSinceAbort()));
    std::fflush(stderr);
    // A worker told to stop (SIGTERM: a deploy, the test harness) exits instead: a new image
    // would not know it was told, and would serve on.
    if (stop_requested_.load()) {
      Log("stopping: exiting without waiting for the stuck job thread");
      std::fflush(stderr);
      _exit(kExitStuckJob);
    }
    if (!options_.argv.empty()) {
      // The new image must not inherit this one's sockets (the metrics listener would keep its
      // port, and peers would keep talking to a ghost).
      closefrom(3);
      std::vector<char*> args;
      for (const std::string& arg : options_.argv) args.push_back(const_cast<char*>(arg.c_str()));
      args.push_back(nullptr);
      execv("/proc/self/exe", args.data());
      Log(absl::StrCat("execv failed: ", std::strerror(errno), "; exiting"));
    }
    _exit(kExitStuckJob);
  }

  static std::string NewInstanceId() {
    std::random_device random;
    return absl::StrFormat("%08x%08x", random(), random());
  }

  // A released job's thread ends at the Release message; this bounds that wait.
  static constexpr double kReleaseSeconds = 60;
  // After a device fault, the session ends at the coordinator's answer, or after this long.
  static constexpr double kDeviceFaultGraceSeconds = 5;

  const AgentOptions options_;
  const std::string worker_id_;
  const std::string host_;
  const std::optional<CudaDeviceInfo> device_;
  const std::string instance_id_;
  ProcessMetrics* const metrics_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ControlService::Stub> stub_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // stopping_ for RestartStuck, which may run with runner_mu_ held (no mu_ there).
  std::atomic<bool> stop_requested_{false};
  Connection* current_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Mutex runner_mu_;
  absl::Mutex fault_mu_;
  std::string device_fault_ ABSL_GUARDED_BY(fault_mu_);  // empty: none
  double device_fault_at_ ABSL_GUARDED_BY(fault_mu_) = 0;
};

// The address Gloo peers reach this worker at: loopback when the coordinator is local (a
// one-machine cluster), else the host name.
std::string DefaultHost(const std::string& coordinator) {
  if (coordinator.rfind("127.", 0) == 0 || coordinator.rfind("localhost", 0) == 0 ||
      coordinator.rfind("[::1]", 0) == 0) {
    return "127.0.0.1";
  }
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "127.0.0.1";
  return name;
}

// The CUDA device `index` as the driver reports it; an error saying why it cannot be used (a
// binary without the CUDA backend, no driver or no device, an index out of range).
absl::StatusOr<CudaDeviceInfo> FindCudaDevice(int index) {
  absl::StatusOr<std::vector<CudaDeviceInfo>> devices = ListCudaDevices();
  if (!devices.ok()) return devices.status();
  for (const CudaDeviceInfo& device : *devices) {
    if (device.index == index) return device;
  }
  std::string there;
  for (const CudaDeviceInfo& device : *devices) {
    absl::StrAppend(&there, there.empty() ? "" : ", ", device.index, ": ", device.name);
  }
  return absl::NotFoundError(absl::StrCat(
      "this machine has ", devices->size(), " CUDA device", devices->size() == 1 ? "" : "s",
      there.empty() ? "" : absl::StrCat(" (", there, ")")));
}

}  // namespace

int RunAgent(const AgentOptions& options) {
  const bool cuda = options.backend.kind == BackendKind::kCuda;
  std::string worker_id = options.worker_id;
  if (worker_id.empty()) {
    char name[256] = {};
    gethostname(name, sizeof(name) - 1);
    // A GPU worker is its GPU: stable across restarts (one process per device).
    worker_id = cuda ? absl::StrCat(name, "/gpu", options.backend.device)
                     : absl::StrCat(name, "-", getpid());
  }
  SetLogName(absl::StrCat("raptr-worker[", worker_id, "]"));
  std::optional<CudaDeviceInfo> device;
  if (cuda) {
    absl::StatusOr<CudaDeviceInfo> found = FindCudaDevice(options.backend.device);
    if (!found.ok()) {
      Log(absl::StrCat("cannot serve on CUDA device ", options.backend.device, ": ",
                       found.status().message(), " (exit ", kExitNoDevice, ")"));
      return kExitNoDevice;
    }
    device = *found;
    Log(absl::StrCat("training on CUDA device ", device->index, ": ", DescribeDevice(*device)));
  }
  // After the device check: a worker that cannot serve says one line, why.
  Log(options.data_roots.unconfined()
          ? std::string("job data paths are not confined (no --data-root)")
          : absl::StrCat("job data paths must resolve inside ", options.data_roots.DebugString()));
  if (options.threads > 0) omp_set_num_threads(options.threads);
  const std::string host = options.host.empty() ? DefaultHost(options.coordinator) : options.host;

  // SIGINT / SIGTERM stop the agent: the current session ends (its job is aborted; the
  // coordinator recovers it elsewhere) and the process exits 0.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  metrics::Registry registry;
  ProcessMetrics process_metrics(&registry);
  HttpServer metrics_server;
  if (!options.metrics_listen.empty()) {
    metrics_server.Handle("/metrics", "text/plain; version=0.0.4; charset=utf-8",
                          [&registry, &process_metrics] {
                            process_metrics.Refresh();
                            return registry.Render();
                          },
                          options.metrics_token);
    metrics_server.Handle("/healthz", "text/plain", [] { return std::string("ok\n"); });
    absl::StatusOr<int> port = metrics_server.Start(options.metrics_listen);
    if (!port.ok()) {
      Log(absl::StrCat("--metrics-listen: ", port.status().ToString()));
      return 1;
    }
    Log(absl::StrCat("metrics on ",
                     options.metrics_listen.substr(0, options.metrics_listen.rfind(':')), ":",
                     *port));
  }
  Agent agent(options, worker_id, host, device, &process_metrics);
  std::thread([&agent, stop_signals] {
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    Log(signal_number == SIGINT ? "SIGINT, stopping" : "SIGTERM, stopping");
    agent.Stop();
  }).detach();
  return agent.Run();
}

}  // namespace raptr

namespace raptr {

int RunServe(int argc, char** argv) {
  // The stop signals are blocked before any thread exists: building TLS credentials starts
  // gRPC's threads and finding a CUDA device the driver's, and a thread started unmasked would
  // take a SIGTERM with the default action (exit 143) instead of RunAgent's sigwait.
  {
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  }
  constexpr char kUsage[] =
      "usage: raptr-worker serve [flags]\n\n"
      "Connects to raptr-coordinator (retrying with backoff) and trains the jobs it assigns,\n"
      "as one rank of a data-parallel group, until SIGINT or SIGTERM.\n\nflags:\n";
  Flags flags;
  AgentOptions defaults;
  flags.Define("coordinator", defaults.coordinator, "HOST:PORT of raptr-coordinator");
  flags.Env("coordinator", "RAPTR_COORDINATOR");
  flags.Define("id", "",
               "stable worker id (default <hostname>/gpu<device> with --backend cuda, else "
               "<hostname>-<pid>)");
  flags.Define("host", "",
               "address peers reach this worker at for Gloo (default: 127.0.0.1 with a local "
               "coordinator, else the host name)");
  flags.Define("threads", "0", "CPU threads for the kernels (0: OpenMP's default)");
  flags.Range("threads", 0, 4096);
  flags.Define("backend", "cpu",
               absl::StrCat("what this worker trains on: cpu, or cuda (one GPU, --device; needs "
                            "the NVIDIA driver and CUDA 13 cuBLAS; exits ",
                            kExitNoDevice, " when that device is not usable)"));
  flags.Define("device", "0", "--backend cuda: the CUDA device ordinal this worker trains on");
  flags.Define("collectives", "auto",
               "--backend cuda: the all-reduce, nccl or gloo (host-staged, for several workers "
               "on one GPU); auto: nccl when built with it");
  flags.Define("connect-timeout", "0",
               "seconds without a coordinator before giving up (0: retry forever)");
  flags.Define("collective-timeout", "300",
               "seconds a Gloo rendezvous or collective may wait for a peer");
  flags.Define("exit-after-job", "false", "exit once the first assignment ends");
  flags.Define("metrics-listen", defaults.metrics_listen,
               "HOST:PORT serving Prometheus /metrics and /healthz; port 0 picks a free port; "
               "empty: off");
  flags.Define("abort-timeout", "10",
               "seconds an aborted job's thread may take to stop before the worker restarts its "
               "own process");
  flags.Define("crash-at-step", "-1",
               "testing: die abruptly before running this 0-based step (-1: never)");
  flags.Define("hang-at-step", "-1",
               "testing: in a job's first generation, hang before this 0-based step, ignoring "
               "aborts while heartbeats go on (-1: never)");
  flags.DefineRepeated("data-root",
                       "a directory job data paths must resolve inside before this worker opens "
                       "them (symlinks resolved); none given: no confinement");
  DefineClientTlsFlags(&flags,
                       "this worker's PEM certificate, its identity (spiffe://raptr/worker/<name>)");
  flags.Define("join-token-file", "",
               "file holding a join token of role worker, instead of a certificate; needs TLS");
  flags.Env("join-token-file", "RAPTR_JOIN_TOKEN_FILE");
  flags.Define("metrics-token-file", "",
               "file holding a bearer token /metrics requires (/healthz stays open)");
  flags.Define("help", "false", "print this help");
  if (absl::Status parsed = flags.Parse(argc, argv, 2); !parsed.ok()) {
    std::fprintf(stderr, "raptr-worker serve: %s\n\n%s%s", std::string(parsed.message()).c_str(),
                 kUsage, flags.Usage().c_str());
    return 2;
  }
  if (flags.Get("help") == "true") {
    std::printf("%s%s", kUsage, flags.Usage().c_str());
    return 0;
  }
  AgentOptions options;
  options.coordinator = flags.Get("coordinator");
  options.worker_id = flags.Get("id");
  options.host = flags.Get("host");
  options.exit_after_job = *flags.GetBool("exit-after-job");  // Parse checked the spelling
  options.metrics_listen = flags.Get("metrics-listen");
  // Canonicalized here, once: a root that is missing or not a directory stops the worker before
  // it announces itself, rather than failing every job it is given.
  absl::StatusOr<DataRoots> data_roots = DataRoots::Create(flags.GetAll("data-root"));
  if (!data_roots.ok()) {
    std::fprintf(stderr, "raptr-worker serve: %s\n",
                 std::string(data_roots.status().message()).c_str());
    return 2;
  }
  options.data_roots = *std::move(data_roots);
  options.tls = ClientTlsFromFlags(flags);
  {
    grpc::ChannelArguments unused;  // the Agent applies --tls-server-name to its own arguments
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
        MakeChannelCredentials(options.tls, &unused);
    if (!credentials.ok()) {
      std::fprintf(stderr, "raptr-worker serve: %s\n",
                   std::string(credentials.status().message()).c_str());
      return 2;
    }
    options.credentials = *std::move(credentials);
  }
  if (const std::string path = flags.Get("join-token-file"); !path.empty()) {
    if (!options.tls.enabled()) {
      std::fprintf(stderr,
                   "raptr-worker serve: --join-token-file needs TLS (--tls-ca): a token must not "
                   "cross the network in plaintext\n");
      return 2;
    }
    absl::StatusOr<std::string> token = ReadTokenFile(path, "--join-token-file");
    if (!token.ok()) {
      std::fprintf(stderr, "raptr-worker serve: %s\n", std::string(token.status().message()).c_str());
      return 2;
    }
    options.join_token = *std::move(token);
    // Call credentials travel only over TLS (gRPC refuses them on a plaintext channel).
    options.credentials = grpc::CompositeChannelCredentials(
        options.credentials, grpc::AccessTokenCredentials(options.join_token));
  }
  if (const std::string path = flags.Get("metrics-token-file"); !path.empty()) {
    absl::StatusOr<std::string> token = ReadTokenFile(path, "--metrics-token-file");
    if (!token.ok()) {
      std::fprintf(stderr, "raptr-worker serve: %s\n", std::string(token.status().message()).c_str());
      return 2;
    }
    options.metrics_token = *std::move(token);
  }
  absl::StatusOr<int> threads = flags.GetInt32("threads");
  absl::StatusOr<BackendKind> backend = ParseBackendKind(flags.Get("backend"));
  absl::StatusOr<int> device = flags.GetInt32("device");
  absl::StatusOr<double> connect = flags.GetDouble("connect-timeout");
  absl::StatusOr<double> collective = flags.GetDouble("collective-timeout");
  absl::StatusOr<int64_t> crash = flags.GetInt("crash-at-step");
  absl::StatusOr<int64_t> hang = flags.GetInt("hang-at-step");
  absl::StatusOr<double> abort_timeout = flags.GetDouble("abort-timeout");
  for (const absl::Status& s :
       {threads.status(), backend.status(), device.status(), connect.status(),
        collective.status(), crash.status(), hang.status(), abort_timeout.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "raptr-worker serve: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  if (*threads < 0 || *connect < 0 || !(*collective > 0) || !(*abort_timeout > 0)) {
    std::fprintf(stderr,
                 "raptr-worker serve: need --threads >= 0, --connect-timeout >= 0, "
                 "--collective-timeout > 0 and --abort-timeout > 0\n");
    return 2;
  }
  if (*device < 0 || (*backend != BackendKind::kCuda && flags.IsSet("device"))) {
    std::fprintf(stderr, "raptr-worker serve: --device needs --backend cuda and a value >= 0\n");
    return 2;
  }
  options.threads = *threads;
  options.backend.kind = *backend;
  options.backend.device = *device;
  const std::string collectives = flags.Get("collectives");
  if (collectives != "auto" && collectives != "nccl" && collectives != "gloo") {
    std::fprintf(stderr, "raptr-worker serve: --collectives must be auto, nccl or gloo, got \"%s\"\n",
                 collectives.c_str());
    return 2;
  }
  if (collectives == "nccl" && (*backend != BackendKind::kCuda || !NcclBuilt())) {
    std::fprintf(stderr, "raptr-worker serve: --collectives nccl needs --backend cuda and a build "
                         "with NCCL%s\n", NcclBuilt() ? "" : " (this one has none)");
    return 2;
  }
  options.collectives = collectives;
  options.connect_timeout_seconds = *connect;
  options.collective_timeout_seconds = *collective;
  options.crash_at_step = *crash;
  options.hang_at_step = *hang;
  options.abort_timeout_seconds = *abort_timeout;
  options.argv.assign(argv, argv + argc);
  return RunAgent(options);
}

}  // namespace raptr
