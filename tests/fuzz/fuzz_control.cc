// libFuzzer target: the coordinator's handling of its workers' ControlService messages
// (coordinator/cluster.h): what one or more buggy or hostile workers can make the real Cluster,
// over a real JobStore (SQLite), do.
//
// Each input is a script of operations on a fresh Cluster whose store (copied from a template
// made once per process) holds three PENDING jobs: "solo" (1 .. 2 CPU workers, evaluations and
// checkpoints every few steps, RaPTr), "pair" (exactly 2 CPU workers, stacking) and "gpu" (1
// CUDA worker, the full model). Up to four fake workers (slots) connect through a WorkerLink that
// records what the coordinator tells them (Welcome token, Assignment, plans, eval and checkpoint
// requests, Abort, Release, Close), so that an operation can send a message that is right for the
// worker's current assignment: without that almost every fuzzed message would be a straggler the
// Cluster ignores. A rank 0 that reports a checkpoint creates its directory, as a worker does, so
// checkpoint retention has files to remove.
//
// Input: a sequence of operations, each one byte `op` (low 4 bits: kind; bits 4-5: slot; bits
// 6-7: variant), some followed by argument bytes or by one length byte and that many bytes of a
// serialized message (Parse failures skip the operation). Missing bytes read as zero. The kinds:
//   Connect      Hello payload; variant 0 as given, 1 .. 3 patched to a valid id (1 the slot's
//                usual instance, 2 a new instance, 3 a CUDA worker)
//   Receive      WorkerMessage payload; variant bit 0: job_id / generation / rank set to the
//                slot's assignment, bit 1: step (and checkpoint path) set to what is outstanding
//   Step, Eval, Checkpoint, Heartbeat, Error
//                a message built for the slot's assignment from a few argument bytes (values
//                from tables that include NaN, infinities, negatives and off-by-one steps)
//   Disconnect, Tick (advance the fake clock, then Tick), Advance (the clock only)
//   KvSet, KvGet KvSetRequest / KvGetRequest payload, variant bit 0: caller set to the slot
//                (its session token); KvGet's deadline is now, so a wait never blocks
//   Cancel       as JobService does: the store's state, then Cluster::JobCancelled
//   Restart      Shutdown, a new Cluster over the same store, RecoverJobsFromStore (a coordinator
//                restart; the workers' sessions are gone)
//   Metrics      RefreshMetrics, Render, Stats
//   Stale        a message on a session that has ended
// Time is a fake clock (ClusterOptions::clock), so leases, progress deadlines, regroup delays and
// flushes are reached by Tick alone, and every input replays the same way.
//
// Besides "no crash, no UB, no leak", it checks what the protocol promises a worker
// (control.proto): nothing is sent on a closed session; an Assignment comes only to a worker that
// has said it is idle (Hello, or an idle Heartbeat after its last group ended) and has a world
// size that divides the batch; plans of a generation arrive in step order, within the job's
// steps; the store never refuses a write the Cluster makes (a worker's numbers must not make the
// coordinator's bookkeeping fail); and nothing outside checkpoint_root is removed, whatever path
// a worker reports (a sentinel file beside it must survive). RAPTR_FUZZ_LOG=1 prints the
// coordinator's log lines.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/job_spec.h"
#include "common/log.h"
#include "common/metrics.h"
#include "coordinator/cluster.h"
#include "coordinator/store/job_store.h"
#include "raptr/v1/control.pb.h"
#include "tests/fuzz/fuzz_control.h"

namespace {

namespace fs = std::filesystem;
using raptr::v1::CoordinatorMessage;
using raptr::v1::WorkerMessage;

constexpr int kSlots = 4;
constexpr int kMaxOps = 200;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_control: %s\n", what.c_str());
  std::abort();
}

// --- the store template -----------------------------------------------------------------------

constexpr const char* kJobSpecs[] = {
    R"(name: solo
model: {layers: 4, d_model: 8, heads: 1, vocab_size: 16}
data: {train_shards: [t.bin], val_shards: [v.bin]}
training: {batch: 4, steps: 7, eval_every: 2, eval_batches: 2, checkpoint_every: 3}
resources: {min_workers: 1, max_workers: 2, priority: 1}
)",
    R"(name: pair
model: {layers: 4, d_model: 8, heads: 1, vocab_size: 16}
data: {train_shards: [t.bin], val_shards: [v.bin]}
training: {batch: 4, steps: 5, eval_every: 0, checkpoint_every: 2}
schedule:
  stacking:
    stages:
      - {layers: 2, steps: 2}
      - {layers: 4, steps: 3}
resources: {min_workers: 2, max_workers: 2}
)",
    R"(name: gpu
model: {layers: 2, d_model: 8, heads: 1, vocab_size: 16}
data: {train_shards: [t.bin], val_shards: [v.bin]}
training: {batch: 2, steps: 3, eval_every: 1, checkpoint_every: 1}
schedule: {full: {}}
resources: {min_workers: 1, backend: cuda}
)",
};
constexpr int kJobs = sizeof(kJobSpecs) / sizeof(kJobSpecs[0]);

struct Env {
  fs::path dir;
  std::string store_path;
  std::string template_bytes;
  std::vector<std::string> job_ids;
  fs::path sentinel;  // outside checkpoint_root: must survive every input
  bool print_log = false;
};

// The temporary directory: tmpfs when there is one (the store fsyncs every commit).
fs::path MakeDir() {
  std::vector<std::string> parents;
  if (const char* own = std::getenv("RAPTR_FUZZ_STORE_DIR"); own != nullptr && *own != '\0') {
    parents.push_back(own);
  }
  parents.push_back("/dev/shm");
  const char* tmp = std::getenv("TMPDIR");
  parents.push_back(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp");
  for (const std::string& parent : parents) {
    std::error_code error;
    const fs::path dir = fs::path(parent) / absl::StrCat("raptr_fuzz_control.", ::getpid());
    if (fs::create_directories(dir, error) && !error) return dir;
  }
  Fail("cannot create a temporary directory");
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.good()) Fail(absl::StrCat("cannot write ", path.string()));
}

void RemoveStoreFiles(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
    std::error_code ignored;
    fs::remove(path + suffix, ignored);
  }
}

std::vector<std::string>& LogLines() {
  static std::vector<std::string> lines;
  return lines;
}

void CaptureLog(const std::string& line) {
  if (LogLines().size() < 10000) LogLines().push_back(line);
}

Env& GetEnv() {
  static Env* env = [] {
    auto* e = new Env;
    e->dir = MakeDir();
    std::atexit([] {
      std::error_code ignored;
      fs::remove_all(GetEnv().dir, ignored);
    });
    const char* log = std::getenv("RAPTR_FUZZ_LOG");
    e->print_log = log != nullptr && *log != '\0' && *log != '0';
    const std::string template_path = (e->dir / "template.db").string();
    {
      absl::StatusOr<std::unique_ptr<raptr::JobStore>> store =
          raptr::JobStore::Open(template_path);
      if (!store.ok()) Fail(store.status().ToString());
      for (const char* yaml : kJobSpecs) {
        absl::StatusOr<raptr::v1::JobSpec> spec = raptr::ParseJobSpecYaml(yaml);
        if (!spec.ok()) Fail(spec.status().ToString());
        absl::StatusOr<raptr::v1::Job> job = (*store)->CreateJob(*spec, "");
        if (!job.ok()) Fail(job.status().ToString());
        e->job_ids.push_back(job->id());
      }
    }  // closed: the WAL is checkpointed into the file and removed
    e->template_bytes = ReadFile(template_path);
    if (fs::exists(template_path + "-wal")) Fail("the template store kept its WAL");
    e->store_path = (e->dir / "store.db").string();
    fs::create_directories(e->dir / "outside");
    e->sentinel = e->dir / "outside" / "sentinel";
    WriteFile(e->sentinel, "keep");
    return e;
  }();
  return *env;
}

// --- the fake workers -------------------------------------------------------------------------

// What one session has been told, as a worker would track it.
struct SessionView {
  int slot = 0;
  int64_t session = 0;
  bool closed = false;
  uint64_t token = 0;
  std::string worker_id;
  // Said idle (Hello, or an idle heartbeat when no assignment was active): may be assigned.
  bool said_idle = true;
  // The current assignment (active until Abort or Release).
  bool assigned = false;
  std::string job_id;
  int64_t generation = 0;
  int rank = -1;
  int64_t steps = 0;           // spec.training.steps
  int64_t next_plan = -1;      // the step the next plan must be for; -1: none yet
  std::deque<int64_t> planned;  // plans received, not yet reported
  int64_t reported = -1;       // the last step reported
  std::deque<int64_t> evals;   // eval requests not answered
  std::deque<std::pair<int64_t, std::string>> checkpoints;  // (step, path) not answered
  std::string ended_job;       // the last assignment that ended
  int64_t ended_generation = 0;
  int64_t messages = 0;
};

class FakeLink final : public raptr::WorkerLink {
 public:
  explicit FakeLink(std::shared_ptr<SessionView> view) : view_(std::move(view)) {}

  void Send(const CoordinatorMessage& message) override {
    SessionView& v = *view_;
    if (v.closed) Fail("a message was sent on a closed session:\n" + message.DebugString());
    ++v.messages;
    switch (message.message_case()) {
      case CoordinatorMessage::kWelcome:
        v.token = message.welcome().session_token();
        break;
      case CoordinatorMessage::kAssignment: {
        const raptr::v1::Assignment& a = message.assignment();
        if (!v.said_idle || v.assigned) {
          Fail(absl::StrCat("worker ", v.worker_id, " was assigned ", a.job_id(),
                            " before it said it is idle (busy with ",
                            v.assigned ? v.job_id : v.ended_job, ")"));
        }
        const int batch = a.spec().training().batch();
        if (a.world_size() < 1 || a.rank() < 0 || a.rank() >= a.world_size() ||
            batch % a.world_size() != 0) {
          Fail("a bad Assignment:\n" + a.DebugString());
        }
        v.said_idle = false;
        v.assigned = true;
        v.job_id = a.job_id();
        v.generation = a.generation();
        v.rank = a.rank();
        v.steps = a.spec().training().steps();
        v.next_plan = a.has_resume_checkpoint() ? a.resume_checkpoint().step() : 0;
        v.reported = v.next_plan - 1;
        v.planned.clear();
        v.evals.clear();
        v.checkpoints.clear();
        break;
      }
      case CoordinatorMessage::kStepPlan: {
        const raptr::v1::StepPlan& plan = message.step_plan();
        if (!Current(plan.job_id(), plan.generation()) || plan.step() != v.next_plan ||
            plan.step() >= v.steps) {
          Fail(absl::StrCat("worker ", v.worker_id, " (", v.job_id, " generation ", v.generation,
                            ", next plan ", v.next_plan, " of ", v.steps,
                            ") got an unexpected plan:\n", plan.DebugString()));
        }
        ++v.next_plan;
        v.planned.push_back(plan.step());
        break;
      }
      case CoordinatorMessage::kEvalRequest:
        if (!Current(message.eval_request().job_id(), message.eval_request().generation())) {
          Fail("an EvalRequest outside the assignment:\n" + message.DebugString());
        }
        v.evals.push_back(message.eval_request().step());
        break;
      case CoordinatorMessage::kCheckpointRequest:
        if (!Current(message.checkpoint_request().job_id(),
                     message.checkpoint_request().generation())) {
          Fail("a CheckpointRequest outside the assignment:\n" + message.DebugString());
        }
        v.checkpoints.emplace_back(message.checkpoint_request().step(),
                                   message.checkpoint_request().path());
        break;
      case CoordinatorMessage::kAbort:
        End(message.abort().job_id(), message.abort().generation());
        break;
      case CoordinatorMessage::kRelease:
        End(message.release().job_id(), message.release().generation());
        break;
      case CoordinatorMessage::kShutdown:
        break;
      default:
        Fail("an empty CoordinatorMessage");
    }
  }

  void Close(const absl::Status& /*status*/) override { view_->closed = true; }

 private:
  bool Current(const std::string& job_id, int64_t generation) const {
    return view_->assigned && view_->job_id == job_id && view_->generation == generation;
  }
  void End(const std::string& job_id, int64_t generation) {
    SessionView& v = *view_;
    if (!Current(job_id, generation)) {
      Fail(absl::StrCat("worker ", v.worker_id, " was told to end ", job_id, " generation ",
                        generation, ", which it does not run"));
    }
    v.assigned = false;
    v.ended_job = v.job_id;
    v.ended_generation = v.generation;
  }

  std::shared_ptr<SessionView> view_;
};

// --- input decoding ---------------------------------------------------------------------------

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  // One length byte, then that many bytes (fewer at the end of the input).
  std::pair<const uint8_t*, size_t> Payload() {
    const size_t n = std::min<size_t>(Byte(), size_ - std::min(pos_, size_));
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return {p, n};
  }
  template <typename T>
  T Pick(const std::vector<T>& table) {
    return table[Byte() % table.size()];
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

template <typename Message>
std::optional<Message> Parse(std::pair<const uint8_t*, size_t> payload) {
  Message message;
  if (!message.ParseFromArray(payload.first, static_cast<int>(payload.second))) {
    return std::nullopt;
  }
  return message;
}

constexpr double kInf = std::numeric_limits<double>::infinity();
const std::vector<double> kLosses = {2.5, 0.0, 7.25, -1.0, kInf, -kInf, std::nan(""), 1e308};
const std::vector<int64_t> kTargets = {256, 1, 0, -1, 1 << 20,
                                       std::numeric_limits<int64_t>::max(),
                                       std::numeric_limits<int64_t>::min()};
const std::vector<double> kSeconds = {0.05, 0.0, 1.5, -1.0, kInf, std::nan(""), 1e-9, 40.0};
const std::vector<int64_t> kStepDelta = {0, 0, 0, 1, -1, 2, 1000000,
                                         std::numeric_limits<int64_t>::min()};
// a + b, wrapping (the deltas include the extremes).
int64_t Wrap(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}

// Clock steps of Tick and Advance: within a lease, past half of one, past one, past the progress
// deadlines.
const std::vector<double> kClockSteps = {0.0, 0.001, 0.1, 0.6, 1.1, 2.5, 5.5, 11.0, 31.0, 61.0,
                                         130.0, 1e6};

// --- one run ----------------------------------------------------------------------------------

class Harness {
 public:
  Harness() : env_(GetEnv()) {
    raptr::SetLogSink(&CaptureLog);
    std::error_code ignored;
    fs::remove_all(CheckpointRoot(), ignored);
    RemoveStoreFiles(env_.store_path);
    WriteFile(env_.store_path, env_.template_bytes);
    absl::StatusOr<std::unique_ptr<raptr::JobStore>> store = raptr::JobStore::Open(env_.store_path);
    if (!store.ok()) Fail(store.status().ToString());
    store_ = std::move(*store);
    StartCluster();
    for (const std::string& id : env_.job_ids) cluster_->JobSubmitted(id);
  }

  ~Harness() {
    cluster_->Shutdown("the input ended");
    CheckLog();
    // Checkpoint retention removes directories under checkpoint_root/<job id>/ only.
    if (!fs::exists(env_.sentinel)) Fail("a file outside the checkpoint root was removed");
    cluster_.reset();
    metrics_.reset();
    store_.reset();
    if (env_.print_log) {
      for (const std::string& line : LogLines()) std::fprintf(stderr, "log: %s\n", line.c_str());
    }
    LogLines().clear();
    raptr::SetLogSink(nullptr);
  }

  void Run(Reader& in) {
    for (int ops = 0; ops < kMaxOps && !in.empty(); ++ops) {
      const uint8_t op = in.Byte();
      const int slot = (op >> 4) & 3;
      const int variant = op >> 6;
      switch (op & 15) {
        case 0: Connect(slot, variant, in); break;
        case 1: ReceiveRaw(slot, variant, in); break;
        case 2: Step(slot, variant, in); break;
        case 3: Eval(slot, variant, in); break;
        case 4: Checkpoint(slot, variant, in); break;
        case 5: Heartbeat(slot, variant, in); break;
        case 6: Error(slot, variant, in); break;
        case 7: Disconnect(slot); break;
        case 8: now_ += in.Pick(kClockSteps); cluster_->Tick(); break;
        case 9: now_ += in.Pick(kClockSteps); break;
        case 10: KvSet(slot, variant, in); break;
        case 11: KvGet(slot, variant, in); break;
        case 12: Cancel(slot); break;
        case 13: Restart(); break;
        case 14: Metrics(); break;
        case 15: Stale(in); break;
      }
      CheckLog();
    }
  }

 private:
  void StartCluster() {
    raptr::ClusterOptions options;
    options.plan_window = 3;
    options.heartbeat_seconds = 1;
    options.lease_seconds = 10;
    options.flush_seconds = 0.5;
    options.checkpoint_root = CheckpointRoot().string();
    options.max_recoveries_without_progress = 2;
    options.progress.floor_seconds = 20;
    options.progress.factor = 10;
    options.progress.startup_seconds = 60;
    options.progress.checkpoint_seconds = 30;
    options.progress.window = 4;
    options.reconcile_seconds = 5;
    options.regroup_delay_seconds = 1;
    options.clock = [this] { return now_; };
    cluster_ = std::make_unique<raptr::Cluster>(store_.get(), std::move(options));
    metrics_ = std::make_unique<raptr::metrics::Registry>();
    cluster_->ExportMetrics(metrics_.get());
  }

  fs::path CheckpointRoot() const { return env_.dir / "checkpoints"; }

  // The store must take every write the Cluster makes: its file is private and on a healthy
  // disk, so a refused write means a worker's message made the coordinator record something the
  // store cannot hold.
  void CheckLog() {
    for (; checked_log_ < LogLines().size(); ++checked_log_) {
      const std::string& line = LogLines()[checked_log_];
      if (line.find("cannot record") != std::string::npos ||
          line.find("cannot commit") != std::string::npos ||
          line.find("cannot reject") != std::string::npos ||
          line.find("job store") != std::string::npos) {
        Fail("the store refused a write of the Cluster: " + line);
      }
    }
  }

  SessionView* Live(int slot) {
    SessionView* v = slots_[slot].get();
    return v != nullptr && !v->closed ? v : nullptr;
  }

  void Connect(int slot, int variant, Reader& in) {
    std::optional<raptr::v1::Hello> hello = Parse<raptr::v1::Hello>(in.Payload());
    if (!hello.has_value()) return;
    if (variant > 0) {
      hello->set_worker_id(absl::StrCat("worker-", slot));
      hello->set_instance_id(variant == 2 ? absl::StrCat("instance-", slot, "-", ++instances_)
                                          : absl::StrCat("instance-", slot));
      hello->set_backend(variant == 3 ? raptr::v1::BACKEND_CUDA : raptr::v1::BACKEND_CPU);
    }
    auto view = std::make_shared<SessionView>();
    view->slot = slot;
    view->worker_id = hello->worker_id();
    absl::StatusOr<int64_t> session =
        cluster_->Connect(*hello, std::make_shared<FakeLink>(view));
    if (!session.ok()) {
      if (view->messages != 0) Fail("a refused session was sent messages");
      return;
    }
    if (view->token == 0 && view->messages == 0) Fail("no Welcome");
    view->session = *session;
    all_.push_back(view);
    slots_[slot] = std::move(view);
  }

  // Sends a message of the slot's session, after noting what it answers.
  absl::Status Receive(SessionView& v, const WorkerMessage& message) {
    if (message.has_heartbeat() && message.heartbeat().job_id().empty() && !v.assigned) {
      v.said_idle = true;
    }
    const auto mine = [&v](const auto& m) {
      return v.assigned && m.job_id() == v.job_id && m.generation() == v.generation &&
             m.rank() == v.rank;
    };
    if (message.has_step_report() && mine(message.step_report()) && !v.planned.empty() &&
        message.step_report().step() == v.planned.front()) {
      v.reported = v.planned.front();
      v.planned.pop_front();
    } else if (message.has_eval_result() && mine(message.eval_result()) && !v.evals.empty() &&
               message.eval_result().step() == v.evals.front()) {
      v.evals.pop_front();
    } else if (message.has_checkpoint_written() && mine(message.checkpoint_written()) &&
               !v.checkpoints.empty() &&
               message.checkpoint_written().step() == v.checkpoints.front().first + 1) {
      v.checkpoints.pop_front();
    }
    absl::Status status = cluster_->Receive(v.session, message);
    // Errors end the session (ControlServiceImpl ends the stream, then disconnects).
    if (!status.ok()) cluster_->Disconnect(v.session);
    return status;
  }

  void ReceiveRaw(int slot, int variant, Reader& in) {
    std::optional<WorkerMessage> message = Parse<WorkerMessage>(in.Payload());
    SessionView* v = Live(slot);
    if (!message.has_value() || v == nullptr) return;
    const bool patch_job = (variant & 1) != 0;
    const bool patch_step = (variant & 2) != 0;
    switch (message->message_case()) {
      case WorkerMessage::kHeartbeat:
        if (patch_job) {
          message->mutable_heartbeat()->set_job_id(v->assigned ? v->job_id : "");
          message->mutable_heartbeat()->set_generation(v->assigned ? v->generation : 0);
        }
        if (patch_step) message->mutable_heartbeat()->set_step(v->reported);
        break;
      case WorkerMessage::kStepReport: {
        raptr::v1::StepReport* r = message->mutable_step_report();
        if (patch_job) PatchJob(*v, r);
        if (patch_step && !v->planned.empty()) r->set_step(v->planned.front());
        break;
      }
      case WorkerMessage::kEvalResult: {
        raptr::v1::EvalResult* r = message->mutable_eval_result();
        if (patch_job) PatchJob(*v, r);
        if (patch_step && !v->evals.empty()) r->set_step(v->evals.front());
        break;
      }
      case WorkerMessage::kCheckpointWritten: {
        raptr::v1::CheckpointWritten* r = message->mutable_checkpoint_written();
        if (patch_job) PatchJob(*v, r);
        if (patch_step && !v->checkpoints.empty()) {
          r->set_step(v->checkpoints.front().first + 1);
          r->set_path(v->rank == 0 ? CheckpointDir(v->checkpoints.front()) : "");
        }
        break;
      }
      case WorkerMessage::kError:
        if (patch_job) {
          message->mutable_error()->set_job_id(v->job_id);
          message->mutable_error()->set_generation(v->generation);
        }
        break;
      default:
        break;
    }
    (void)Receive(*v, *message);
  }

  template <typename M>
  static void PatchJob(const SessionView& v, M* m) {
    m->set_job_id(v.job_id);
    m->set_generation(v.generation);
    m->set_rank(v.rank);
  }

  static std::string CheckpointDir(const std::pair<int64_t, std::string>& request) {
    return request.second + absl::StrFormat("/checkpoints/step_%08d", request.first + 1);
  }

  // A StepReport for the next planned step; arguments: step delta, loss, targets, seconds, and
  // for variant 3 a rank delta.
  void Step(int slot, int variant, Reader& in) {
    SessionView* v = Live(slot);
    const int64_t delta = in.Pick(kStepDelta);
    const double loss = in.Pick(kLosses);
    const int64_t targets = in.Pick(kTargets);
    const double seconds = in.Pick(kSeconds);
    const int rank_delta = variant == 3 ? static_cast<int8_t>(in.Byte()) : 0;
    if (v == nullptr || !v->assigned) return;
    WorkerMessage message;
    raptr::v1::StepReport* r = message.mutable_step_report();
    PatchJob(*v, r);
    r->set_rank(v->rank + rank_delta);
    const int64_t step = v->planned.empty() ? v->reported + 1 : v->planned.front();
    r->set_step(Wrap(step, delta));
    r->set_loss(loss);
    r->set_scored_targets(targets);
    r->set_tokens(variant == 1 ? targets : 64);
    r->set_flops(variant == 2 ? loss : 1e6);
    r->set_flops_full(2e6);
    r->set_grad_norm(1);
    r->set_step_seconds(seconds);
    r->set_forward_seconds(seconds / 3);
    r->set_backward_seconds(seconds / 3);
    r->set_allreduce_seconds(0.001);
    r->set_optimizer_seconds(0.001);
    (void)Receive(*v, message);
  }

  // An EvalResult for the oldest eval request; arguments: step delta, loss, targets, seconds.
  void Eval(int slot, int variant, Reader& in) {
    SessionView* v = Live(slot);
    const int64_t delta = in.Pick(kStepDelta);
    const double loss = in.Pick(kLosses);
    const int64_t targets = in.Pick(kTargets);
    const double seconds = in.Pick(kSeconds);
    if (v == nullptr || !v->assigned) return;
    WorkerMessage message;
    raptr::v1::EvalResult* r = message.mutable_eval_result();
    PatchJob(*v, r);
    if (variant == 3) r->set_rank(v->rank + 1);
    r->set_step(Wrap(v->evals.empty() ? v->reported : v->evals.front(), delta));
    r->set_loss(loss);
    r->set_scored_targets(targets);
    r->set_batches(variant == 1 ? -1 : variant == 2 ? 0 : 2);
    r->set_seconds(seconds);
    (void)Receive(*v, message);
  }

  // A CheckpointWritten for the oldest checkpoint request; arguments: step delta, digest. Variant
  // 1: no path; 2: a path outside the checkpoint root; 3: the rank of another.
  void Checkpoint(int slot, int variant, Reader& in) {
    SessionView* v = Live(slot);
    const int64_t delta = in.Pick(kStepDelta);
    const uint8_t digest = in.Byte();
    if (v == nullptr || !v->assigned) return;
    WorkerMessage message;
    raptr::v1::CheckpointWritten* r = message.mutable_checkpoint_written();
    PatchJob(*v, r);
    if (variant == 3) r->set_rank(v->rank ^ 1);
    const std::pair<int64_t, std::string> request =
        v->checkpoints.empty() ? std::make_pair(v->reported, std::string("nowhere"))
                               : v->checkpoints.front();
    r->set_step(Wrap(request.first + 1, delta));
    if (v->rank == 0 && variant == 0) {
      // Written as a worker would (retention removes the directories it drops).
      const std::string dir = CheckpointDir(request);
      std::error_code ignored;
      if (fs::path(dir).lexically_normal().string().rfind(CheckpointRoot().string(), 0) == 0 &&
          fs::create_directories(dir, ignored)) {
        WriteFile(fs::path(dir) / "model.safetensors", "x");
      }
      r->set_path(dir);
    } else if (v->rank == 0 && variant == 2) {
      r->set_path(CheckpointRoot().string() + "/../outside");  // where the sentinel is
    }
    // Mostly one digest for every rank (the replicas agree); a byte < 16 makes them differ.
    r->set_state_digest(digest < 16 ? digest : 0x5eed5eedULL);
    (void)Receive(*v, message);
  }

  // Variant 0: idle; 1: running the assignment; 2: still running the job that ended; 3: another
  // job. Argument: a step delta.
  void Heartbeat(int slot, int variant, Reader& in) {
    SessionView* v = Live(slot);
    const int64_t delta = in.Pick(kStepDelta);
    if (v == nullptr) return;
    WorkerMessage message;
    raptr::v1::Heartbeat* h = message.mutable_heartbeat();
    h->set_step(Wrap(v->reported, delta));
    if (variant == 1 && v->assigned) {
      h->set_job_id(v->job_id);
      h->set_generation(v->generation);
    } else if (variant == 2 && !v->ended_job.empty()) {
      h->set_job_id(v->ended_job);
      h->set_generation(v->ended_generation);
    } else if (variant == 3) {
      h->set_job_id(env_.job_ids[slot % kJobs]);
      h->set_generation(7);
    } else {
      h->set_step(-1);
    }
    (void)Receive(*v, message);
  }

  // A job-scoped WorkerError. Variant bit 0: retryable; bit 1: the resume checkpoint is unusable.
  // Argument: a step delta, a code.
  void Error(int slot, int variant, Reader& in) {
    SessionView* v = Live(slot);
    const int64_t delta = in.Pick(kStepDelta);
    const int code = in.Byte() % 17;
    if (v == nullptr) return;
    WorkerMessage message;
    raptr::v1::WorkerError* e = message.mutable_error();
    if (v->assigned) {
      e->set_job_id(v->job_id);
      e->set_generation(v->generation);
    }
    e->set_step(Wrap(v->reported, delta));
    e->set_code(code);
    e->set_message("the worker failed");
    e->set_retryable((variant & 1) != 0);
    e->set_resume_checkpoint_unusable((variant & 2) != 0);
    (void)Receive(*v, message);
  }

  void Disconnect(int slot) {
    if (slots_[slot] == nullptr) return;
    cluster_->Disconnect(slots_[slot]->session);
    slots_[slot]->closed = true;  // the stream is gone, whatever the Cluster does
  }

  template <typename Request>
  void PatchCaller(const SessionView& v, Request* request) {
    request->set_job_id(v.assigned ? v.job_id : v.ended_job);
    request->set_generation(v.assigned ? v.generation : v.ended_generation);
    request->set_worker_id(v.worker_id);
    request->set_session_token(v.token);
  }

  void KvSet(int slot, int variant, Reader& in) {
    std::optional<raptr::v1::KvSetRequest> request =
        Parse<raptr::v1::KvSetRequest>(in.Payload());
    if (!request.has_value()) return;
    if ((variant & 1) != 0 && slots_[slot] != nullptr) PatchCaller(*slots_[slot], &*request);
    if ((variant & 2) != 0) request->set_value(std::string(1 << (in.Byte() % 21), 'v'));
    (void)cluster_->KvSet(*request);
  }

  void KvGet(int slot, int variant, Reader& in) {
    std::optional<raptr::v1::KvGetRequest> request =
        Parse<raptr::v1::KvGetRequest>(in.Payload());
    if (!request.has_value()) return;
    if ((variant & 1) != 0 && slots_[slot] != nullptr) PatchCaller(*slots_[slot], &*request);
    // A deadline already past: a wait returns at once (nothing else could set the key).
    absl::StatusOr<std::string> value =
        cluster_->KvGet(*request, std::chrono::system_clock::now() - std::chrono::seconds(1));
    (void)value;
  }

  void Cancel(int slot) {
    const std::string& id = env_.job_ids[slot % kJobs];
    absl::StatusOr<raptr::v1::Job> cancelled =
        store_->UpdateJobState(id, raptr::v1::JOB_STATE_CANCELLED, "cancelled by the fuzzer");
    if (cancelled.ok()) cluster_->JobCancelled(id);
  }

  void Restart() {
    cluster_->Shutdown("restart");
    CheckLog();
    cluster_.reset();
    metrics_.reset();
    for (auto& view : all_) view->closed = true;
    for (auto& view : slots_) view.reset();
    all_.clear();  // the new Cluster numbers its sessions from 1 again
    StartCluster();
    if (absl::Status recovered = cluster_->RecoverJobsFromStore(); !recovered.ok()) {
      Fail("RecoverJobsFromStore: " + recovered.ToString());
    }
  }

  void Metrics() {
    cluster_->RefreshMetrics();
    (void)metrics_->Render();
    const raptr::ClusterStats stats = cluster_->Stats();
    if (stats.idle_workers > stats.workers || stats.running_jobs > kJobs ||
        stats.draining_workers > stats.workers) {
      Fail("inconsistent ClusterStats");
    }
  }

  // An idle heartbeat, or a step report, on a session that has ended (closed by the Cluster or
  // disconnected): session ids are never reused, so it stays ended. Argument: which one.
  void Stale(Reader& in) {
    const uint8_t which = in.Byte();
    std::vector<const SessionView*> ended;
    for (const auto& view : all_) {
      if (view->closed) ended.push_back(view.get());
    }
    if (ended.empty()) return;
    const SessionView& v = *ended[which % ended.size()];
    WorkerMessage message;
    if (which & 1) {
      message.mutable_heartbeat()->set_step(-1);
    } else {
      raptr::v1::StepReport* r = message.mutable_step_report();
      r->set_job_id(v.job_id);
      r->set_generation(v.generation);
      r->set_rank(v.rank);
      r->set_step(v.reported + 1);
    }
    if (absl::Status status = cluster_->Receive(v.session, message);
        status.code() != absl::StatusCode::kAborted) {
      Fail(absl::StrCat("a message on ended session ", v.session, " got ", status.ToString()));
    }
  }

  Env& env_;
  double now_ = 1000.0;
  std::unique_ptr<raptr::JobStore> store_;
  std::unique_ptr<raptr::metrics::Registry> metrics_;
  std::unique_ptr<raptr::Cluster> cluster_;
  std::shared_ptr<SessionView> slots_[kSlots];
  std::vector<std::shared_ptr<SessionView>> all_;  // every session of this Cluster
  int instances_ = 0;
  size_t checked_log_ = 0;
};

}  // namespace

namespace raptr::fuzz {

void RunControlInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  Harness harness;
  harness.Run(in);
}

}  // namespace raptr::fuzz

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  (void)GetEnv();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  raptr::fuzz::RunControlInput(data, size);
  return 0;
}
