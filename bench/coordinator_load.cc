// coordinator_load: a bounded capacity test of raptr-coordinator with simulated workers.
//
// Starts a real coordinator on loopback (a temporary store and checkpoint directory), submits one
// single-worker job per simulated worker, and runs that many simulated workers, each on its own
// ControlService.Connect stream, reporting steps at a fixed rate on an absolute schedule. Each
// report releases the plan `window` steps ahead; the plan delivery latency is the time from just
// before the report is written until that plan is read. Also measures the coordinator process's
// CPU (and this client's) over the measured window.
//
// Prints a summary on stderr and one JSON line on stdout. Exits 1 when anything failed (a stream
// broke, the coordinator died, a plan did not come within 5 s), so it never reports nonsense.
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/flags.h"
#include "grpcpp/grpcpp.h"
#include "raptr/v1/control.grpc.pb.h"
#include "raptr/v1/control.pb.h"
#include "raptr/v1/job.grpc.pb.h"
#include "raptr/v1/job.pb.h"

namespace raptr {
namespace {

constexpr int kWorkersPerChannel = 32;  // well under HTTP/2's usual 100 concurrent streams
constexpr double kPlanTimeoutSeconds = 5.0;
constexpr double kStartupTimeoutSeconds = 60.0;
constexpr double kCloseTimeoutSeconds = 60.0;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void SleepUntil(double t) {
  const double dt = t - Now();
  if (dt > 0) std::this_thread::sleep_for(std::chrono::duration<double>(dt));
}

// utime + stime of a process in seconds (/proc/<pid>/stat fields 14 and 15); nullopt when gone.
std::optional<double> ProcessCpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const size_t paren = line.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(line.substr(paren + 2));
  std::string field;
  // After "pid (comm) " come state (field 3) .. utime (14), stime (15).
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
    if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

std::string UtcTimestamp() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buffer;
}

// Nearest-rank percentile of sorted values.
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0.0;
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return sorted[rank - 1];
}

// The coordinator under test: a child process with its output in a log file.
class Coordinator {
 public:
  ~Coordinator() { Stop(); }

  // Starts `binary` and waits for its "listening on HOST:PORT" line; returns HOST:PORT or "".
  std::string Start(const std::string& binary, const std::string& dir, int window) {
    log_path_ = dir + "/coordinator.log";
    const std::string store = dir + "/c.db", checkpoints = dir + "/ckpt";
    const std::string window_text = std::to_string(window);
    pid_ = fork();
    if (pid_ < 0) return "";
    if (pid_ == 0) {
      FILE* log = std::fopen(log_path_.c_str(), "w");
      if (log == nullptr) _exit(127);
      dup2(fileno(log), STDOUT_FILENO);
      dup2(fileno(log), STDERR_FILENO);
      execl(binary.c_str(), binary.c_str(), "--listen", "127.0.0.1:0", "--store", store.c_str(),
            "--checkpoint-dir", checkpoints.c_str(), "--plan-window", window_text.c_str(),
            "--lease", "30", "--metrics-listen", "127.0.0.1:0", static_cast<char*>(nullptr));
      std::fprintf(stderr, "exec %s: %s\n", binary.c_str(), std::strerror(errno));
      _exit(127);
    }
    const std::string marker = "raptr-coordinator listening on ";
    const double deadline = Now() + 20.0;
    while (Now() < deadline) {
      std::ifstream in(log_path_);
      std::string line;
      while (std::getline(in, line)) {
        const size_t at = line.find(marker);
        if (at != std::string::npos) return line.substr(at + marker.size());
      }
      if (!Alive()) return "";
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return "";
  }

  // False once the process has exited (it is reaped then).
  bool Alive() {
    if (pid_ <= 0) return false;
    if (exited_) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exited_ = true;
      exit_status_ = status;
      return false;
    }
    return true;
  }

  // SIGTERM, then wait (SIGKILL after 15 s). Returns the wait status, or -1 if never started.
  int Stop() {
    if (pid_ <= 0) return -1;
    if (Alive()) {
      kill(pid_, SIGTERM);
      const double deadline = Now() + 15.0;
      while (Alive() && Now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (Alive()) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &exit_status_, 0);
        exited_ = true;
      }
    }
    const int status = exit_status_;
    pid_ = -1;
    return status;
  }

  pid_t pid() const { return pid_; }

  std::string LogTail(size_t bytes) const {
    std::ifstream in(log_path_);
    std::stringstream all;
    all << in.rdbuf();
    const std::string text = all.str();
    return text.size() > bytes ? text.substr(text.size() - bytes) : text;
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_status_ = 0;
  std::string log_path_;
};

// Phases a simulated worker publishes so the monitor can bound every blocking read.
enum Phase : int { kIdle = 0, kStarting = 1, kAwaitingPlan = 2, kClosing = 3 };

struct SimWorker {
  int index = 0;
  grpc::ClientContext context;
  std::atomic<int> phase{kIdle};
  std::atomic<double> blocked_since{0.0};
  std::atomic<bool> ready{false};
  std::atomic<bool> done{false};
  std::atomic<bool> cancelled{false};
  std::string error;  // written by the worker thread before done
  std::vector<double> latencies_ms;
  std::vector<double> sent_at;   // parallel to latencies_ms: send time, seconds after t0
  int64_t reports = 0;           // every report sent
  int64_t measured_reports = 0;  // reports sent inside the measured window
  double max_lag = 0.0;          // worst lateness of a send against its schedule, seconds
};

struct Run {
  int workers = 0;
  double rate = 0;
  int window = 0;
  double warmup = 0;
  double seconds = 0;
  std::atomic<bool> abort{false};
  std::atomic<bool> go{false};
  std::atomic<double> t0{0.0};   // schedule origin, set when every worker is ready
  std::atomic<int> finished{0};  // workers done with their steps
};

// Records a worker's first error and stops the run: a broken stream makes its figures worthless.
void Fail(Run& run, SimWorker& w, const std::string& message) {
  if (w.error.empty()) w.error = message;
  run.abort.store(true);
}

void WorkerMain(Run& run, SimWorker& w, v1::ControlService::Stub* stub) {
  using Stream = grpc::ClientReaderWriter<v1::WorkerMessage, v1::CoordinatorMessage>;
  auto blocking = [&w](Phase phase) {
    w.blocked_since.store(Now());
    w.phase.store(phase);
  };
  blocking(kStarting);
  std::unique_ptr<Stream> stream = stub->Connect(&w.context);
  v1::WorkerMessage hello;
  hello.mutable_hello()->set_worker_id(absl::StrFormat("sim-%03d", w.index));
  hello.mutable_hello()->set_backend(v1::BACKEND_CPU);
  hello.mutable_hello()->set_cpu_threads(1);
  hello.mutable_hello()->set_host("127.0.0.1");
  hello.mutable_hello()->set_version("0.1.0");
  hello.mutable_hello()->set_instance_id(absl::StrFormat("sim-%03d-instance", w.index));
  std::string job_id;
  int64_t generation = 0;
  int rank = 0;
  int64_t max_plan = -1;
  v1::CoordinatorMessage in;
  bool ok = stream->Write(hello);
  if (!ok) Fail(run, w, "Hello write failed");
  // Welcome, then the Assignment and the first `window` plans.
  bool welcomed = false, assigned = false;
  while (ok && max_plan < run.window - 1) {
    if (!stream->Read(&in)) {
      ok = false;
      Fail(run, w, "the stream ended during startup");
      break;
    }
    if (in.has_welcome()) {
      welcomed = true;
    } else if (in.has_assignment()) {
      assigned = true;
      job_id = in.assignment().job_id();
      generation = in.assignment().generation();
      rank = in.assignment().rank();
    } else if (in.has_step_plan() && assigned && in.step_plan().generation() == generation) {
      max_plan = std::max(max_plan, in.step_plan().step());
    }
  }
  if (ok && !welcomed) {
    ok = false;
    Fail(run, w, "no Welcome");
  }
  w.phase.store(kIdle);
  w.ready.store(true);
  while (ok && !run.go.load() && !run.abort.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (ok && !run.abort.load()) {
    const double period = 1.0 / run.rate;
    // Workers' phases spread evenly over one period, as independent workers would be.
    const double origin =
        run.t0.load() + period * static_cast<double>(w.index) / static_cast<double>(run.workers);
    const double measure_from = run.t0.load() + run.warmup;
    const double measure_to = measure_from + run.seconds;
    v1::WorkerMessage message;
    v1::StepReport* report = message.mutable_step_report();
    report->set_job_id(job_id);
    report->set_generation(generation);
    report->set_rank(rank);
    report->set_loss(1.0);
    report->set_scored_targets(1);
    report->set_tokens(512);
    report->set_flops(1e9);
    report->set_flops_full(2e9);
    report->set_step_seconds(period);
    for (int64_t step = 0; !run.abort.load(); ++step) {
      const double due = origin + static_cast<double>(step) * period;
      if (due >= measure_to) break;
      SleepUntil(due);
      report->set_step(step);
      const double sent = Now();
      w.max_lag = std::max(w.max_lag, sent - due);
      blocking(kAwaitingPlan);
      if (!stream->Write(message)) {
        ok = false;
        Fail(run, w, absl::StrCat("report write failed at step ", step));
        break;
      }
      ++w.reports;
      const int64_t awaited = step + run.window;
      bool got = false;
      while (stream->Read(&in)) {
        if (in.has_step_plan() && in.step_plan().generation() == generation &&
            in.step_plan().step() == awaited) {
          got = true;
          break;
        }
        // Anything else (nothing else is expected) is ignored.
      }
      const double received = Now();
      w.phase.store(kIdle);
      if (!got) {
        ok = false;
        Fail(run, w,
             absl::StrCat("the stream ended awaiting plan ", awaited,
                          w.cancelled.load() ? " (timed out)" : ""));
        break;
      }
      if (sent >= measure_from && sent < measure_to) {
        w.latencies_ms.push_back((received - sent) * 1e3);
        w.sent_at.push_back(sent - run.t0.load());
        ++w.measured_reports;
      }
    }
  }
  // Close once every worker has finished its steps: a closing session costs the coordinator a
  // store write and a scheduling pass under its lock, which would delay the others' last plans.
  run.finished.fetch_add(1);
  while (run.finished.load() < run.workers && !run.abort.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Close: our side first, drain what the coordinator still sends, then the status.
  blocking(kClosing);
  stream->WritesDone();
  while (stream->Read(&in)) {
  }
  stream->Finish();  // the coordinator ends the session (CANCELLED); not an error here
  w.phase.store(kIdle);
  w.done.store(true);
}

v1::JobSpec TinySpec(int index) {
  v1::JobSpec spec;
  spec.set_name(absl::StrFormat("load-%03d", index));
  spec.mutable_model()->set_layers(4);
  spec.mutable_model()->set_d_model(32);
  spec.mutable_model()->set_heads(2);
  spec.mutable_model()->set_vocab_size(300);
  // Never opened: the coordinator does not read data, and no real worker runs these jobs.
  spec.mutable_data()->add_train_shards("bench/none/train.bin");
  spec.mutable_data()->add_val_shards("bench/none/val.bin");
  spec.mutable_training()->set_steps(10000000);
  spec.mutable_training()->set_eval_every(0);
  spec.mutable_training()->set_checkpoint_every(0);
  spec.mutable_schedule()->mutable_raptr();
  spec.mutable_resources()->set_min_workers(1);
  spec.mutable_resources()->set_max_workers(1);
  return spec;
}

int Main(int argc, char** argv) {
  Flags flags;
  flags.Define("coordinator-bin", "build/coordinator/raptr-coordinator",
               "the raptr-coordinator binary to test");
  flags.Define("workers", "256", "simulated workers (one job each)");
  flags.Define("rate", "20", "steps per second per worker");
  flags.Define("seconds", "20", "measured seconds (after the warmup)");
  flags.Define("window", "32", "the coordinator's --plan-window");
  flags.Define("warmup", "3", "seconds run before measuring (latencies discarded)");
  flags.Define("samples", "",
               "also write every measured sample to this file: send time (s after the start), "
               "latency ms, worker");
  absl::Status parsed = flags.Parse(argc, argv, 1);
  absl::StatusOr<int> workers = flags.GetInt32("workers");
  absl::StatusOr<int> window = flags.GetInt32("window");
  absl::StatusOr<double> rate = flags.GetDouble("rate");
  absl::StatusOr<double> seconds = flags.GetDouble("seconds");
  absl::StatusOr<double> warmup = flags.GetDouble("warmup");
  for (const absl::Status& s :
       {workers.status(), window.status(), rate.status(), seconds.status(), warmup.status()}) {
    if (parsed.ok()) parsed = s;
  }
  if (parsed.ok() && (*workers < 1 || *window < 1 || !(*rate > 0) || !(*seconds > 0) ||
                      !(*warmup >= 0) || !flags.positional().empty())) {
    parsed = absl::InvalidArgumentError(
        "need --workers >= 1, --window >= 1, --rate > 0, --seconds > 0, --warmup >= 0 and no "
        "positional arguments");
  }
  if (!parsed.ok()) {
    std::fprintf(stderr, "coordinator_load: %s\n%s", std::string(parsed.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  Run run;
  run.workers = *workers;
  run.rate = *rate;
  run.window = *window;
  run.warmup = *warmup;
  run.seconds = *seconds;

  char dir_template[] = "/tmp/coordinator_load.XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    std::perror("coordinator_load: mkdtemp");
    return 1;
  }
  const std::string dir = dir_template;
  std::vector<std::string> errors;
  Coordinator coordinator;
  const std::string address = coordinator.Start(flags.Get("coordinator-bin"), dir, run.window);
  if (address.empty()) {
    std::fprintf(stderr, "coordinator_load: the coordinator did not start; its log:\n%s\n",
                 coordinator.LogTail(4000).c_str());
    coordinator.Stop();
    std::filesystem::remove_all(dir);
    return 1;
  }
  std::fprintf(stderr, "coordinator_load: coordinator pid %d on %s\n", coordinator.pid(),
               address.c_str());

  // Jobs first, so each worker is assigned one as it connects.
  {
    auto jobs =
        v1::JobService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    for (int i = 0; i < run.workers && errors.empty(); ++i) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      v1::SubmitJobRequest request;
      *request.mutable_spec() = TinySpec(i);
      v1::SubmitJobResponse response;
      const grpc::Status status = jobs->SubmitJob(&context, request, &response);
      if (!status.ok()) {
        errors.push_back(absl::StrCat("SubmitJob ", i, ": ", status.error_message()));
      }
    }
  }

  // One channel (one HTTP/2 connection: a local subchannel pool each) per 32 workers.
  std::vector<std::unique_ptr<v1::ControlService::Stub>> stubs;
  for (int i = 0; i < (run.workers + kWorkersPerChannel - 1) / kWorkersPerChannel; ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stubs.push_back(v1::ControlService::NewStub(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args)));
  }
  std::vector<std::unique_ptr<SimWorker>> sims;
  std::vector<std::thread> threads;
  if (errors.empty()) {
    for (int i = 0; i < run.workers; ++i) {
      sims.push_back(std::make_unique<SimWorker>());
      sims.back()->index = i;
      const size_t expected_samples = static_cast<size_t>(run.rate * run.seconds * 1.1) + 16;
      sims.back()->latencies_ms.reserve(expected_samples);
      sims.back()->sent_at.reserve(expected_samples);
    }
    for (int i = 0; i < run.workers; ++i) {
      threads.emplace_back(WorkerMain, std::ref(run), std::ref(*sims[i]),
                           stubs[i / kWorkersPerChannel].get());
    }
  }

  // Monitor: bounds every blocking read, watches the coordinator, samples CPU at the window's
  // edges, and starts the schedule once every worker holds its first plans.
  const double started = Now();
  bool coordinator_died = false;
  std::optional<double> coord_cpu0, coord_cpu1;
  double self_cpu0 = 0, self_cpu1 = 0, wall0 = 0, wall1 = 0, close_started = 0;
  auto abort_all = [&](const std::string& why) {
    if (!run.abort.exchange(true)) errors.push_back(why);
    for (auto& w : sims) {
      w->cancelled.store(true);
      w->context.TryCancel();
    }
  };
  while (true) {
    const double now = Now();
    if (!coordinator_died && !coordinator.Alive()) {
      coordinator_died = true;
      abort_all("the coordinator died");
    }
    size_t ready = 0, done = 0;
    for (auto& w : sims) {
      ready += w->ready.load() ? 1 : 0;
      done += w->done.load() ? 1 : 0;
      const int phase = w->phase.load();
      const double limit = phase == kStarting       ? kStartupTimeoutSeconds
                           : phase == kAwaitingPlan ? kPlanTimeoutSeconds
                           : phase == kClosing      ? kCloseTimeoutSeconds
                                                    : 0.0;
      if (phase != kIdle && now - w->blocked_since.load() > limit && !w->cancelled.load()) {
        w->cancelled.store(true);
        w->context.TryCancel();
        if (phase != kClosing) {
          abort_all(absl::StrCat("sim-", w->index, ": no message within ", limit, " s (",
                                 phase == kStarting ? "startup" : "awaiting a plan", ")"));
        } else {
          errors.push_back(absl::StrCat("sim-", w->index, ": the stream did not close"));
        }
      }
    }
    if (close_started == 0 && run.finished.load() == run.workers) close_started = now;
    if (done == sims.size()) break;
    if (!run.go.load() && ready == sims.size()) {
      std::fprintf(stderr,
                   "coordinator_load: %zu workers ready after %.1f s; running %.0f + %.0f s\n",
                   sims.size(), Now() - started, run.warmup, run.seconds);
      run.t0.store(Now() + 0.2);
      run.go.store(true);
    }
    if (run.go.load()) {
      const double t0 = run.t0.load();
      if (wall0 == 0 && now >= t0 + run.warmup) {
        wall0 = Now();
        coord_cpu0 = ProcessCpuSeconds(coordinator.pid());
        self_cpu0 = SelfCpuSeconds();
      }
      if (wall0 != 0 && wall1 == 0 && now >= t0 + run.warmup + run.seconds) {
        wall1 = Now();
        coord_cpu1 = ProcessCpuSeconds(coordinator.pid());
        self_cpu1 = SelfCpuSeconds();
      }
    }
    if (!run.go.load() && Now() - started > kStartupTimeoutSeconds + 5) {
      abort_all("workers not ready in time");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (std::thread& t : threads) t.join();
  // How long the coordinator took to end every session once all closed at once.
  const double close_seconds = close_started == 0 ? 0.0 : Now() - close_started;
  for (auto& w : sims) {
    if (!w->error.empty()) errors.push_back(absl::StrCat("sim-", w->index, ": ", w->error));
  }
  if (!coordinator_died && !coordinator.Alive()) errors.push_back("the coordinator died");
  const std::string log_tail = coordinator.LogTail(2000);
  const int exit_status = coordinator.Stop();
  if (!coordinator_died && !(WIFEXITED(exit_status) && WEXITSTATUS(exit_status) == 0)) {
    errors.push_back(absl::StrCat("the coordinator exited with wait status ", exit_status));
  }
  std::filesystem::remove_all(dir);

  std::vector<double> latencies;
  int64_t reports = 0, measured = 0;
  double max_lag = 0;
  for (auto& w : sims) {
    latencies.insert(latencies.end(), w->latencies_ms.begin(), w->latencies_ms.end());
    reports += w->reports;
    measured += w->measured_reports;
    max_lag = std::max(max_lag, w->max_lag);
  }
  std::sort(latencies.begin(), latencies.end());
  if (const std::string path = flags.Get("samples"); !path.empty()) {
    if (FILE* out = std::fopen(path.c_str(), "w")) {
      for (auto& w : sims) {
        for (size_t i = 0; i < w->latencies_ms.size(); ++i) {
          std::fprintf(out, "%.6f %.3f %d\n", w->sent_at[i], w->latencies_ms[i], w->index);
        }
      }
      std::fclose(out);
    } else {
      errors.push_back(absl::StrCat("cannot write ", path));
    }
  }
  const double wall = wall1 - wall0;
  const bool measured_ok = wall0 != 0 && wall1 != 0 && coord_cpu0 && coord_cpu1;
  if (errors.empty() && !measured_ok) errors.push_back("the measured window was not reached");
  const double coord_cores = measured_ok ? (*coord_cpu1 - *coord_cpu0) / wall : 0.0;
  const double client_cores = measured_ok ? (self_cpu1 - self_cpu0) / wall : 0.0;
  const double expected = static_cast<double>(run.workers) * run.rate * run.seconds;
  const double per_s = static_cast<double>(measured) / run.seconds;
  const double p50 = Percentile(latencies, 50), p90 = Percentile(latencies, 90),
               p99 = Percentile(latencies, 99);
  const double max = latencies.empty() ? 0.0 : latencies.back();
  const bool kept_pace = static_cast<double>(measured) >= 0.98 * expected;

  std::fprintf(stderr,
               "coordinator_load: %d workers x %g steps/s, window %d, %g s measured after %g s "
               "warmup\n"
               "  reports: %lld measured (%.0f/s of %.0f/s expected, %.1f%%), %lld in all; worst "
               "send lag %.1f ms%s\n"
               "  plan delivery latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f (%zu samples)"
               "%s\n"
               "  CPU (cores): coordinator %.3f, this client %.3f, over %.1f s\n"
               "  closing all %d sessions at once took %.1f s\n",
               run.workers, run.rate, run.window, run.seconds, run.warmup,
               static_cast<long long>(measured), per_s, expected / run.seconds,
               100.0 * static_cast<double>(measured) / expected, static_cast<long long>(reports),
               max_lag * 1e3,
               kept_pace ? "" : "\n  NOTE: the client did not keep pace with the schedule", p50,
               p90, p99, max, latencies.size(),
               p99 < 10.0 ? " (p99 under the 10 ms target)" : " (p99 OVER the 10 ms target)",
               coord_cores, client_cores, wall, run.workers, close_seconds);
  for (size_t i = 0; i < errors.size() && i < 10; ++i) {
    std::fprintf(stderr, "  ERROR: %s\n", errors[i].c_str());
  }
  if (errors.size() > 10) std::fprintf(stderr, "  ... %zu errors in all\n", errors.size());
  if (!errors.empty()) std::fprintf(stderr, "coordinator log (tail):\n%s\n", log_tail.c_str());

  std::printf(
      "{\"bench\":\"coordinator_load\",\"date\":\"%s\",\"workers\":%d,\"rate\":%g,\"window\":%d,"
      "\"seconds\":%g,\"warmup\":%g,\"reports\":%lld,\"expected_reports\":%.0f,"
      "\"reports_per_s\":%.1f,\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
      "\"max\":%.3f},\"max_send_lag_ms\":%.1f,\"coordinator_cpu_cores\":%.3f,"
      "\"client_cpu_cores\":%.3f,\"close_s\":%.1f,\"errors\":%zu}\n",
      UtcTimestamp().c_str(), run.workers, run.rate, run.window, run.seconds, run.warmup,
      static_cast<long long>(measured), expected, per_s, p50, p90, p99, max, max_lag * 1e3,
      coord_cores, client_cores, close_seconds, errors.size());
  std::fflush(stdout);
  return errors.empty() ? 0 : 1;
}

}  // namespace
}  // namespace raptr

int main(int argc, char** argv) { return raptr::Main(argc, argv); }
