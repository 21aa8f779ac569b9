// The worker agent (see agent.h).
//
// Threads: the session thread reads the coordinator's stream and dispatches; a heartbeat thread
// keeps the lease; a job thread runs the assignment (engine steps, Gloo collectives) from a queue
// of plans the session thread fills. Writes to the stream are serialised by one mutex.
#include "worker/agent.h"

#include <omp.h>
#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
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
#include "common/metrics.h"
#include "common/status.h"
#include "gloo/rendezvous/store.h"
#include "grpcpp/grpcpp.h"
#include "raptr/v1/control.grpc.pb.h"
#include "raptr/v1/control.pb.h"
#include "worker/collective/gloo_group.h"
#include "worker/engine/session.h"
#include "worker/job_config.h"

namespace raptr {
namespace {

constexpr char kVersion[] = "0.1.0";

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string g_log_name = "raptr-worker";

void Log(const std::string& line) {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
  std::fprintf(stderr, "%s %s: %s\n", stamp, g_log_name.c_str(), line.c_str());
}

// Gloo's rendezvous store over the coordinator's KvSet / KvGet, scoped to one generation of one
// job. Gloo reports store failures by exception.
class CoordinatorStore final : public gloo::rendezvous::Store {
 public:
  CoordinatorStore(v1::ControlService::Stub* stub, std::string job_id, int64_t generation,
                   std::string worker_id, uint64_t session_token, std::chrono::milliseconds timeout)
      : stub_(stub),
        job_id_(std::move(job_id)),
        generation_(generation),
        worker_id_(std::move(worker_id)),
        session_token_(session_token),
        timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    v1::KvSetRequest request;
    request.set_job_id(job_id_);
    request.set_generation(generation_);
    request.set_worker_id(worker_id_);
    request.set_session_token(session_token_);
    request.set_key(key);
    request.set_value(std::string(data.begin(), data.end()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::KvSetResponse response;
    const grpc::Status status = stub_->KvSet(&context, request, &response);
    if (!status.ok()) {
      throw std::runtime_error(
          absl::StrCat("rendezvous KvSet(", key, ") failed: ", status.error_message()));
    }
  }

  std::vector<char> get(const std::string& key) override { return Get(key, timeout_); }

  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }

  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    for (const std::string& key : keys) Get(key, timeout);
  }

 private:
  std::vector<char> Get(const std::string& key, std::chrono::milliseconds timeout) {
    v1::KvGetRequest request;
    request.set_job_id(job_id_);
    request.set_generation(generation_);
    request.set_worker_id(worker_id_);
    request.set_session_token(session_token_);
    request.set_key(key);
    request.set_wait(true);
    request.set_timeout_seconds(std::chrono::duration<double>(timeout).count());
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + timeout + std::chrono::seconds(5));
    v1::KvGetResponse response;
    const grpc::Status status = stub_->KvGet(&context, request, &response);
    if (!status.ok()) {
      throw std::runtime_error(
          absl::StrCat("rendezvous KvGet(", key, ") failed: ", status.error_message()));
    }
    return std::vector<char>(response.value().begin(), response.value().end());
  }

  v1::ControlService::Stub* const stub_;
  const std::string job_id_;
  const int64_t generation_;
  const std::string worker_id_;
  const uint64_t session_token_;
  const std::chrono::milliseconds timeout_;
};

// The worker process's metrics (GET /metrics on --metrics-listen).
struct ProcessMetrics {
  explicit ProcessMetrics(metrics::Registry* r)
      : step_seconds(r->Histogram("raptr_process_step_seconds",
                                  "This process's step time: the whole step and its phases.",
                                  {"phase"}, metrics::Registry::ExponentialBuckets(0.001, 2, 17))),
        steps(r->Counter("raptr_process_steps_total", "Steps this process has run.")),
        tokens(r->Counter("raptr_process_tokens_total", "Tokens this process has trained on.")),
        resident(r->Gauge("raptr_process_resident_memory_bytes", "Resident memory.")),
        threads(r->Gauge("raptr_process_threads", "Threads of this process.")),
        cpu(r->Counter("raptr_process_cpu_seconds_total", "User and system CPU time.")),
        job_info(r->Gauge("raptr_process_job_info", "1 while running an assignment.",
                          {"job_id", "rank", "world_size"})) {}

  // Process-wide figures, read at scrape time.
  void Refresh() {
    long pages = 0, resident_pages = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
      if (std::fscanf(f, "%ld %ld", &pages, &resident_pages) != 2) resident_pages = 0;
      std::fclose(f);
    }
    resident->Set({}, static_cast<double>(resident_pages) * sysconf(_SC_PAGE_SIZE));
    long count = 0;
    if (FILE* f = std::fopen("/proc/self/status", "r")) {
      char line[256];
      while (std::fgets(line, sizeof(line), f)) {
        if (std::sscanf(line, "Threads: %ld", &count) == 1) break;
      }
      std::fclose(f);
    }
    threads->Set({}, static_cast<double>(count));
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    cpu->Set({}, usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
                     usage.ru_stime.tv_usec / 1e6);
  }

  metrics::Family* step_seconds;
  metrics::Family* steps;
  metrics::Family* tokens;
  metrics::Family* resident;
  metrics::Family* threads;
  metrics::Family* cpu;
  metrics::Family* job_info;
};

using Stream = grpc::ClientReaderWriter<v1::WorkerMessage, v1::CoordinatorMessage>;

// One Connect stream; writes from several threads go through Write.
class Connection {
 public:
  grpc::ClientContext context;
  std::unique_ptr<Stream> stream;

  bool Write(const v1::WorkerMessage& message) {
    absl::MutexLock lock(&write_mu_);
    return stream->Write(message);
  }
  void WritesDone() {
    absl::MutexLock lock(&write_mu_);
    stream->WritesDone();
  }

 private:
  absl::Mutex write_mu_;
};

// Runs one assignment on its own thread.
class JobRunner {
 public:
  JobRunner(v1::Assignment assignment, Connection* connection, v1::ControlService::Stub* stub,
            const AgentOptions& options, std::string worker_id, std::string host,
            uint64_t session_token, ProcessMetrics* metrics)
      : metrics_(metrics),
        assignment_(std::move(assignment)),
        connection_(connection),
        stub_(stub),
        options_(options),
        worker_id_(std::move(worker_id)),
        host_(std::move(host)),
        session_token_(session_token) {}

  // REQUIRES: the thread has finished (finished()), or was never started: the session never
  // joins a job thread that may be stuck (see StopRunner).
  ~JobRunner() {
    if (thread_.joinable()) thread_.join();
  }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Push(const v1::CoordinatorMessage& message) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(message);
  }
  // Stops the job from any thread: the queue ends, and the communicator is torn down so a
  // collective blocked on a peer returns at once. Idempotent.
  void Abort() {
    absl::MutexLock lock(&mu_);
    if (!aborted_) aborted_at_ = Now();
    aborted_ = true;
    if (group_ != nullptr) group_->Abort();
  }
  // Waits up to `seconds` for the job thread to end; true when it has.
  bool WaitFinished(double seconds) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&finished_locked_), absl::Seconds(seconds));
  }
  // Seconds since Abort(), or 0 when not aborted.
  double SecondsSinceAbort() {
    absl::MutexLock lock(&mu_);
    return aborted_ ? Now() - aborted_at_ : 0;
  }
  bool finished() const { return finished_.load(); }
  const std::string& job_id() const { return assignment_.job_id(); }
  int64_t generation() const { return assignment_.generation(); }
  int64_t last_step() const { return last_step_.load(); }

 private:
  // The next message of the job; nullopt once aborted.
  std::optional<v1::CoordinatorMessage> Pop() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](JobRunner* r)
             ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) { return r->aborted_ || !r->queue_.empty(); },
        this));
    if (aborted_) return std::nullopt;
    v1::CoordinatorMessage message = std::move(queue_.front());
    queue_.pop_front();
    return message;
  }
  bool aborted() {
    absl::MutexLock lock(&mu_);
    return aborted_;
  }
  // The group Abort() tears down; null outside collectives' lifetime.
  void SetGroup(GlooGroup* group) {
    absl::MutexLock lock(&mu_);
    group_ = group;
    if (group_ != nullptr && aborted_) group_->Abort();
  }

  void Run() {
    const std::vector<std::string> info = {job_id(), std::to_string(assignment_.rank()),
                                           std::to_string(assignment_.world_size())};
    if (metrics_ != nullptr) metrics_->job_info->Set(info, 1);
    const absl::Status status = RunJob();
    if (metrics_ != nullptr) metrics_->job_info->Remove(info);
    // The group is torn down (the Gloo group died with RunJob's scope) before the error goes
    // out, so peers blocked in a collective with this rank fail fast too.
    const bool was_aborted = aborted();
    if (!status.ok() && !was_aborted) {
      Log(absl::StrCat(job_id(), " failed at step ", current_step_, ": ", status.ToString()));
      v1::WorkerMessage message;
      v1::WorkerError* error = message.mutable_error();
      error->set_job_id(job_id());
      error->set_generation(generation());
      error->set_step(current_step_);
      error->set_code(static_cast<int>(status.code()));
      error->set_message(std::string(status.message()));
      error->set_resume_checkpoint_unusable(resume_unusable_);
      // Bad input (a missing shard, a spec this build cannot run, a checkpoint of another run)
      // fails the same way on any worker; lost peers and timeouts may not.
      const absl::StatusCode code = status.code();
      error->set_retryable(
          code != absl::StatusCode::kInvalidArgument && code != absl::StatusCode::kNotFound &&
          code != absl::StatusCode::kFailedPrecondition && code != absl::StatusCode::kDataLoss &&
          code != absl::StatusCode::kUnimplemented && code != absl::StatusCode::kResourceExhausted);
      // An unusable checkpoint is not the job's end: the one before it may be fine.
      if (resume_unusable_) error->set_retryable(true);
      connection_->Write(message);
    }
    {
      absl::MutexLock lock(&mu_);
      finished_locked_ = true;
      finished_.store(true);
    }
    // Free now, not at the next heartbeat: the coordinator places a worker again only once it
    // has said its job thread ended.
    v1::WorkerMessage idle;
    idle.mutable_heartbeat()->set_step(-1);
    connection_->Write(idle);
  }

  absl::Status RunJob() {
    const int rank = assignment_.rank(), world = assignment_.world_size();
    Log(absl::StrCat(job_id(), " generation ", generation(), ": rank ", rank, " of ", world,
                     assignment_.has_resume_checkpoint()
                         ? absl::StrCat(", resuming from ", assignment_.resume_checkpoint().path())
                         : std::string(", from step 0")));
    ASSIGN_OR_RETURN(TrainerConfig config, TrainerConfigFromJobSpec(assignment_.spec()));
    config.log_every = 0;
    ASSIGN_OR_RETURN(std::unique_ptr<TrainingSession> session,
                     TrainingSession::Create(config, rank, world));
    if (assignment_.has_resume_checkpoint()) {
      const v1::CheckpointRef& resume = assignment_.resume_checkpoint();
      // DATA_LOSS from here on means the checkpoint was read and is wrong: the coordinator rejects
      // it and resumes from the one before (other errors, a missing directory say, are this
      // worker's and do not condemn the checkpoint).
      absl::Status restored = session->Restore(resume.path());
      if (restored.ok() && session->step() != resume.step()) {
        restored = absl::DataLossError(absl::StrCat("checkpoint ", resume.path(), " holds step ",
                                                    session->step(), ", the coordinator committed "
                                                    "it as step ", resume.step()));
      }
      if (restored.ok() && resume.state_digest() != 0 &&
          session->StateDigest() != resume.state_digest()) {
        restored = absl::DataLossError(absl::StrFormat(
            "checkpoint %s: its state's digest %016x is not the %016x recorded when it was "
            "committed (torn or corrupted files)",
            resume.path(), session->StateDigest(), resume.state_digest()));
      }
      if (restored.code() == absl::StatusCode::kDataLoss) resume_unusable_ = true;
      RETURN_IF_ERROR(restored);
    }
    current_step_ = session->step();
    last_step_.store(session->step() - 1);
    std::unique_ptr<GlooGroup> group;
    if (world > 1) {
      const auto timeout = std::chrono::milliseconds(
          static_cast<int64_t>(options_.collective_timeout_seconds * 1000));
      CoordinatorStore store(stub_, job_id(), generation(), worker_id_, session_token_, timeout);
      ASSIGN_OR_RETURN(group, GlooGroup::Connect(store, rank, world, host_, timeout));
      SetGroup(group.get());
    }
    // The group outlives every use; Abort() must not reach it once it is gone.
    struct ClearGroup {
      JobRunner* runner;
      ~ClearGroup() { runner->SetGroup(nullptr); }
    } clear_group{this};
    const int L = config.model.num_layers;
    double last_log = Now();
    int64_t steps_since_log = 0;
    // Time blocked waiting for the next plan or request: the coordinator is meant to stay off the
    // critical path, so this should be ~0 (logged at the end).
    double waiting = 0, busy = 0, writing = 0;
    double t_wait = Now();
    while (std::optional<v1::CoordinatorMessage> message = Pop()) {
      const double t_got = Now();
      waiting += t_got - t_wait;
      v1::WorkerMessage out;
      if (message->has_step_plan()) {
        const v1::StepPlan& plan = message->step_plan();
        ASSIGN_OR_RETURN(StepInput input, ToStepInput(plan, L));
        current_step_ = plan.step();
        if (plan.step() == options_.crash_at_step) {
          Log(absl::StrCat("--crash-at-step ", plan.step(), ": dying now"));
          _exit(3);
        }
        if (plan.step() == options_.hang_at_step && generation() == 1) {
          Log(absl::StrCat("--hang-at-step ", plan.step(), ": hanging (ignoring aborts)"));
          while (true) std::this_thread::sleep_for(std::chrono::hours(1));
        }
        ASSIGN_OR_RETURN(StepOutcome step, session->RunStep(input, group.get()));
        v1::StepReport* report = out.mutable_step_report();
        report->set_job_id(job_id());
        report->set_generation(generation());
        report->set_rank(rank);
        report->set_step(plan.step());
        report->set_loss(step.local_loss);
        report->set_scored_targets(step.local_targets);
        report->set_tokens(step.local_tokens);
        report->set_flops(step.local_flops);
        report->set_flops_full(step.local_flops_full);
        report->set_grad_norm(step.grad_norm);
        report->set_step_seconds(step.times.total);
        report->set_forward_seconds(step.times.forward);
        report->set_backward_seconds(step.times.backward);
        report->set_allreduce_seconds(step.times.allreduce);
        report->set_optimizer_seconds(step.times.optimizer);
        last_step_.store(plan.step());
        ++steps_since_log;
        if (metrics_ != nullptr) {
          metrics_->step_seconds->Observe({"total"}, step.times.total);
          metrics_->step_seconds->Observe({"forward"}, step.times.forward);
          metrics_->step_seconds->Observe({"backward"}, step.times.backward);
          metrics_->step_seconds->Observe({"allreduce"}, step.times.allreduce);
          metrics_->step_seconds->Observe({"optimizer"}, step.times.optimizer);
          metrics_->steps->Add({}, 1);
          metrics_->tokens->Add({}, static_cast<double>(step.local_tokens));
        }
        if (Now() - last_log >= 10) {
          Log(absl::StrFormat("%s step %d/%d path %d loss %.4f (%.2f steps/s)", job_id(),
                              plan.step() + 1, config.steps, plan.active_layers_size(),
                              step.local_loss, steps_since_log / (Now() - last_log)));
          last_log = Now();
          steps_since_log = 0;
        }
      } else if (message->has_eval_request()) {
        const v1::EvalRequest& request = message->eval_request();
        ActiveLayerSet active = ActiveLayerSet::Full(L);
        if (request.active_layers_size() > 0) {
          std::vector<int> layers(request.active_layers().begin(), request.active_layers().end());
          for (int l : layers) {
            if (l < 0 || l >= L) {
              return absl::InvalidArgumentError(
                  absl::StrCat("eval request: block ", l, " out of range [0, ", L, ")"));
            }
          }
          active = ActiveLayerSet::Of(L, layers);
        }
        ASSIGN_OR_RETURN(EvalOutcome eval, session->Evaluate(request.batches(), active));
        v1::EvalResult* result = out.mutable_eval_result();
        result->set_job_id(job_id());
        result->set_generation(generation());
        result->set_step(request.step());
        result->set_rank(rank);
        result->set_loss(eval.loss);
        result->set_scored_targets(eval.scored_targets);
        result->set_batches(eval.batches);
        result->set_seconds(eval.seconds);
        if (rank == 0) {
          Log(absl::StrFormat("%s eval after step %d: rank 0 loss %.4f", job_id(),
                              request.step() + 1, eval.loss));
        }
      } else if (message->has_checkpoint_request()) {
        const v1::CheckpointRequest& request = message->checkpoint_request();
        if (request.step() + 1 != session->step()) {
          return absl::InternalError(absl::StrCat("checkpoint requested after step ",
                                                  request.step(), " but ", session->step(),
                                                  " steps are done"));
        }
        v1::CheckpointWritten* written = out.mutable_checkpoint_written();
        // Replicas hold the same state: rank 0 writes it, every rank vouches with its digest.
        if (rank == 0) {
          ASSIGN_OR_RETURN(std::string path, session->Save(request.path()));
          written->set_path(path);
        }
        written->set_job_id(job_id());
        written->set_generation(generation());
        written->set_step(session->step());
        written->set_rank(rank);
        written->set_state_digest(session->StateDigest());
      } else if (message->has_release()) {
        Log(absl::StrFormat(
            "%s done: %d steps; %.2f s working, %.3f s waiting for the coordinator, %.3f s "
            "sending reports",
            job_id(), session->step(), busy, waiting, writing));
        return absl::OkStatus();
      } else {
        t_wait = Now();
        continue;
      }
      const double w0 = Now();
      if (!connection_->Write(out)) {
        return absl::UnavailableError("the stream to the coordinator broke");
      }
      t_wait = Now();
      writing += t_wait - w0;
      busy += t_wait - t_got;
    }
    return absl::OkStatus();  // aborted
  }

  static absl::StatusOr<StepInput> ToStepInput(const v1::StepPlan& plan, int L) {
    StepInput input;
    input.step = plan.step();
    input.stage = plan.stage();
    input.active = ActiveLayerSet::Of(L, {});
    if (plan.layer_scales_size() != 0 && plan.layer_scales_size() != plan.active_layers_size()) {
      return absl::InvalidArgumentError(absl::StrCat("step plan ", plan.step(), ": ",
                                                     plan.layer_scales_size(), " scales for ",
                                                     plan.active_layers_size(), " active blocks"));
    }
    int previous = -1;
    for (int i = 0; i < plan.active_layers_size(); ++i) {
      const int l = plan.active_layers(i);
      if (l <= previous || l >= L) {
        return absl::InvalidArgumentError(absl::StrCat("step plan ", plan.step(),
                                                       ": active blocks must be ascending in [0, ",
                                                       L, "), got ", l, " after ", previous));
      }
      previous = l;
      input.active.set_active(l, true);
      input.active.set_scale(l, plan.layer_scales_size() > 0 ? plan.layer_scales(i) : 1.0f);
    }
    input.learning_rate = plan.learning_rate();
    for (const v1::LayerCopy& copy : plan.layer_copies()) {
      input.copies.emplace_back(copy.to_layer(), copy.from_layer());
    }
    return input;
  }

  ProcessMetrics* const metrics_;  // may be null
  const v1::Assignment assignment_;
  Connection* const connection_;
  v1::ControlService::Stub* const stub_;
  const AgentOptions options_;
  const std::string worker_id_;
  const std::string host_;
  const uint64_t session_token_;
  std::thread thread_;
  absl::Mutex mu_;
  std::deque<v1::CoordinatorMessage> queue_ ABSL_GUARDED_BY(mu_);
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
  double aborted_at_ ABSL_GUARDED_BY(mu_) = 0;
  GlooGroup* group_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool finished_locked_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> finished_{false};
  std::atomic<int64_t> last_step_{-1};
  int64_t current_step_ = -1;  // the job thread's own
  bool resume_unusable_ = false;  // the job thread's own: the resume checkpoint failed its checks
};

enum class SessionEnd {
  kUnreachable,  // never got a Welcome
  kRejected,     // the coordinator refused the Hello: retrying will not help
  kEnded,        // the session ran and ended (coordinator restart, network)
  kJobDone,      // exit_after_job and the job ended
  kShutdown,     // the coordinator said Shutdown, or we are stopping
};

class Agent {
 public:
  Agent(const AgentOptions& options, std::string worker_id, std::string host,
        ProcessMetrics* metrics)
      : options_(options),
        worker_id_(std::move(worker_id)),
        host_(std::move(host)),
        instance_id_(NewInstanceId()),
        metrics_(metrics) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    channel_ =
        grpc::CreateCustomChannel(options.coordinator, grpc::InsecureChannelCredentials(), args);
    stub_ = v1::ControlService::NewStub(channel_);
  }

  int Run() {
    double backoff = 0.25;
    double last_contact = Now();
    bool announced_wait = false;
    while (!stopping()) {
      const SessionEnd end = RunSession();
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
                         options_.connect_timeout_seconds, " s; giving up"));
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
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (current_ != nullptr) current_->context.TryCancel();
  }

 private:
  bool stopping() {
    absl::MutexLock lock(&mu_);
    return stopping_;
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
    hello->set_backend(v1::BACKEND_CPU);
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
      if (status.error_code() == grpc::INVALID_ARGUMENT ||
          status.error_code() == grpc::FAILED_PRECONDITION) {
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
        auto next = std::make_unique<JobRunner>(message.assignment(), &connection, stub_.get(),
                                                options_, worker_id_, host_, session_token,
                                                metrics_);
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
    _exit(kStuckExitCode);
  }

  static std::string NewInstanceId() {
    std::random_device random;
    return absl::StrFormat("%08x%08x", random(), random());
  }

  // A released job's thread ends at the Release message; this bounds that wait.
  static constexpr double kReleaseSeconds = 60;
  // Exit status when a stuck job thread cannot be escaped by execv.
  static constexpr int kStuckExitCode = 70;

  const AgentOptions options_;
  const std::string worker_id_;
  const std::string host_;
  const std::string instance_id_;
  ProcessMetrics* const metrics_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ControlService::Stub> stub_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Connection* current_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Mutex runner_mu_;
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

}  // namespace

int RunAgent(const AgentOptions& options) {
  std::string worker_id = options.worker_id;
  if (worker_id.empty()) {
    char name[256] = {};
    gethostname(name, sizeof(name) - 1);
    worker_id = absl::StrCat(name, "-", getpid());
  }
  g_log_name = absl::StrCat("raptr-worker[", worker_id, "]");
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
                          });
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
  Agent agent(options, worker_id, host, &process_metrics);
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
  constexpr char kUsage[] =
      "usage: raptr-worker serve [flags]\n\n"
      "Connects to raptr-coordinator (retrying with backoff) and trains the jobs it assigns,\n"
      "as one rank of a data-parallel group, until SIGINT or SIGTERM.\n\nflags:\n";
  Flags flags;
  AgentOptions defaults;
  const char* env = std::getenv("RAPTR_COORDINATOR");
  flags.Define("coordinator", env != nullptr && *env != '\0' ? env : defaults.coordinator,
               "HOST:PORT of raptr-coordinator ($RAPTR_COORDINATOR)");
  flags.Define("id", "", "stable worker id (default <hostname>-<pid>)");
  flags.Define("host", "",
               "address peers reach this worker at for Gloo (default: 127.0.0.1 with a local "
               "coordinator, else the host name)");
  flags.Define("threads", "0", "CPU threads for the kernels (0: OpenMP's default)");
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
  options.exit_after_job = flags.Get("exit-after-job") == "true";
  options.metrics_listen = flags.Get("metrics-listen");
  absl::StatusOr<int> threads = flags.GetInt32("threads");
  absl::StatusOr<double> connect = flags.GetDouble("connect-timeout");
  absl::StatusOr<double> collective = flags.GetDouble("collective-timeout");
  absl::StatusOr<int64_t> crash = flags.GetInt("crash-at-step");
  absl::StatusOr<int64_t> hang = flags.GetInt("hang-at-step");
  absl::StatusOr<double> abort_timeout = flags.GetDouble("abort-timeout");
  for (const absl::Status& s : {threads.status(), connect.status(), collective.status(),
                                crash.status(), hang.status(), abort_timeout.status()}) {
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
  options.threads = *threads;
  options.connect_timeout_seconds = *connect;
  options.collective_timeout_seconds = *collective;
  options.crash_at_step = *crash;
  options.hang_at_step = *hang;
  options.abort_timeout_seconds = *abort_timeout;
  options.argv.assign(argv, argv + argc);
  return RunAgent(options);
}

}  // namespace raptr
