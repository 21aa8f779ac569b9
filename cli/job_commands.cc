// raptrctl's JobService commands: flags -> request, RPC with a deadline, response -> table/JSON.
#include "cli/job_commands.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/export_command.h"
#include "cli/plot.h"
#include "cli/progress.h"
#include "common/flags.h"
#include "common/job_plan.h"
#include "common/job_spec.h"
#include "common/path_schedule.h"
#include "common/security.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"
#include "raptr/v1/job.grpc.pb.h"
#include "raptr/v1/job.pb.h"

namespace raptr::cli {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitServerError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;
constexpr char kDefaultCoordinator[] = "127.0.0.1:50051";
// Setup's positional_args for commands taking a list (plot JOB...).
constexpr size_t kOneOrMore = static_cast<size_t>(-1);
constexpr size_t kZeroOrOne = static_cast<size_t>(-2);

// One parsed command line plus the channel to the coordinator it names.
struct Invocation {
  Flags flags;
  bool json = false;
  std::chrono::milliseconds timeout{10000};
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::JobService::Stub> stub;
  bool tls = false;
  std::string token;  // --token-file or $RAPTR_TOKEN; sent as `authorization: Bearer`

  std::unique_ptr<grpc::ClientContext> NewContext() const {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + timeout);
    if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
    return context;
  }
};

int UsageError(const std::string& command, const std::string& usage, const Flags& flags,
               const std::string& message) {
  std::fprintf(stderr, "raptrctl %s: %s\n\nusage: raptrctl %s\n%s", command.c_str(),
               message.c_str(), usage.c_str(), flags.Usage().c_str());
  return kExitUsage;
}

// Defines the common flags (plus the command's own, already defined on `inv->flags`), parses,
// and connects. Returns -1 when the command should go on, else the exit code to return.
int Setup(const std::string& command, const std::string& usage, int argc, char** argv, int first,
          size_t positional_args, Invocation* inv) {
  inv->flags.Define("coordinator", kDefaultCoordinator, "HOST:PORT of raptr-coordinator");
  inv->flags.Env("coordinator", "RAPTR_COORDINATOR");
  DefineClientTlsFlags(&inv->flags,
                       "a client certificate (spiffe://raptr/<role>/<name>) for mutual TLS");
  inv->flags.Define("token-file", "",
                    "file holding this client's token (or the token itself in $RAPTR_TOKEN)");
  inv->flags.Env("token-file", "RAPTR_TOKEN_FILE");
  inv->flags.Define("output", "table", "table or json");
  inv->flags.Define("timeout", "10", "deadline of each RPC, seconds");
  inv->flags.Define("help", "false", "print this help");
  // `-f FILE` is the conventional spelling of --file; Flags knows long flags only.
  std::vector<std::string> args(argv, argv + argc);
  for (int i = first; i < argc; ++i) {
    if (args[i] == "-f") args[i] = "--file";
  }
  std::vector<char*> arg_pointers;
  for (std::string& arg : args) arg_pointers.push_back(arg.data());
  if (absl::Status parsed = inv->flags.Parse(argc, arg_pointers.data(), first); !parsed.ok()) {
    return UsageError(command, usage, inv->flags, std::string(parsed.message()));
  }
  if (inv->flags.Get("help") == "true") {
    std::printf("usage: raptrctl %s\n%s", usage.c_str(), inv->flags.Usage().c_str());
    return kExitOk;
  }
  const size_t given = inv->flags.positional().size();
  if (positional_args == kOneOrMore  ? given == 0
      : positional_args == kZeroOrOne ? given > 1
                                      : given != positional_args) {
    return UsageError(command, usage, inv->flags,
                      absl::StrCat("expected ",
                                   positional_args == kOneOrMore   ? std::string("at least 1")
                                   : positional_args == kZeroOrOne ? std::string("at most 1")
                                                                   : std::to_string(positional_args),
                                   " argument(s), got ", given));
  }
  const std::string output = inv->flags.Get("output");
  if (output != "table" && output != "json") {
    return UsageError(command, usage, inv->flags,
                      absl::StrCat("--output must be table or json, got '", output, "'"));
  }
  inv->json = output == "json";
  absl::StatusOr<double> timeout = inv->flags.GetDouble("timeout");
  if (!timeout.ok() || !(*timeout > 0)) {
    return UsageError(command, usage, inv->flags, "--timeout must be a number of seconds > 0");
  }
  inv->timeout = std::chrono::milliseconds(static_cast<int64_t>(*timeout * 1000));
  const ClientTlsOptions tls = ClientTlsFromFlags(inv->flags);
  grpc::ChannelArguments channel_args;
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(tls, &channel_args);
  if (!credentials.ok()) {
    return UsageError(command, usage, inv->flags, std::string(credentials.status().message()));
  }
  inv->tls = tls.enabled();
  if (const std::string path = inv->flags.Get("token-file"); !path.empty()) {
    absl::StatusOr<std::string> token = ReadTokenFile(path, "--token-file");
    if (!token.ok()) return UsageError(command, usage, inv->flags, std::string(token.status().message()));
    inv->token = *std::move(token);
  } else if (const char* token = std::getenv("RAPTR_TOKEN"); token != nullptr) {
    inv->token = token;
  }
  const std::string coordinator = inv->flags.Get("coordinator");
  if (!inv->token.empty() && !inv->tls && !IsLoopbackAddress(coordinator)) {
    return UsageError(command, usage, inv->flags,
                      absl::StrCat("refusing to send a token in plaintext to ", coordinator,
                                   "; give the coordinator's CA with --tls-ca"));
  }
  inv->channel = grpc::CreateCustomChannel(coordinator, *credentials, channel_args);
  inv->stub = v1::JobService::NewStub(inv->channel);
  return -1;
}

// The canonical name of a gRPC code, e.g. "NOT_FOUND".
std::string CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  const int index = static_cast<int>(code);
  if (index < 0 || index > 16) return absl::StrCat("code ", index);
  return kNames[index];
}

// Prints a failed RPC and returns its exit code.
int RpcError(const Invocation& inv, const std::string& what, const grpc::Status& status) {
  const bool unreachable = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
                            inv.channel->GetState(/*try_to_connect=*/false) != GRPC_CHANNEL_READY);
  const std::string name = CodeName(status.error_code());
  if (unreachable) {
    // A TLS failure reaches the client as UNAVAILABLE too; say what to check.
    const std::string& message = status.error_message();
    const bool handshake = message.find("ssl") != std::string::npos ||
                           message.find("SSL") != std::string::npos ||
                           message.find("handshake") != std::string::npos ||
                           message.find("Socket closed") != std::string::npos;
    std::fprintf(stderr, "raptrctl: coordinator %s unreachable (%s: %s)%s\n",
                 inv.flags.Get("coordinator").c_str(), name.c_str(), message.c_str(),
                 !inv.tls ? (handshake ? "; does it serve TLS? then give its CA with --tls-ca" : "")
                          : (handshake ? "; the TLS handshake failed: check --tls-ca, "
                                         "--tls-server-name and the client certificate's CA and "
                                         "dates"
                                       : ""));
    return kExitUnreachable;
  }
  std::fprintf(stderr, "raptrctl: %s failed: %s: %s\n", what.c_str(), name.c_str(),
               status.error_message().c_str());
  return kExitServerError;
}

std::string StateName(v1::JobState state) {
  return std::string(absl::StripPrefix(v1::JobState_Name(state), "JOB_STATE_"));
}

std::string TimeText(const google::protobuf::Timestamp& time) {
  if (time.seconds() == 0 && time.nanos() == 0) return "-";
  return google::protobuf::util::TimeUtil::ToString(time);
}

int PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;  // The same names as the YAML job files.
  std::string json;
  if (auto printed = google::protobuf::util::MessageToJsonString(message, &json, options);
      !printed.ok()) {
    // protobuf 3.21's own Status type (not absl's).
    std::fprintf(stderr, "raptrctl: cannot print JSON: %s\n", printed.ToString().c_str());
    return kExitServerError;
  }
  std::printf("%s", json.c_str());
  if (json.empty() || json.back() != '\n') std::printf("\n");
  return kExitOk;
}

void PrintJobTable(const v1::Job& job) {
  std::printf("id:          %s\n", job.id().c_str());
  std::printf("name:        %s\n", job.spec().name().c_str());
  std::printf("owner:       %s\n", job.owner().empty() ? "-" : job.owner().c_str());
  std::printf("state:       %s\n", StateName(job.state()).c_str());
  if (!job.message().empty()) std::printf("message:     %s\n", job.message().c_str());
  std::printf("step:        %lld / %lld\n", static_cast<long long>(job.progress().step()),
              static_cast<long long>(job.spec().training().steps()));
  std::printf("workers:     %d (generation %lld)\n", job.world_size(),
              static_cast<long long>(job.generation()));
  // What the job's schedule runs with, derived values included (a PLD gamma solved from
  // mean_keep for this job's length).
  absl::StatusOr<PathScheduleConfig> schedule = PathScheduleFromJobSpec(job.spec());
  if (schedule.ok()) {
    std::string text = DescribePathSchedule(*schedule);
    if (job.spec().schedule().has_pld() && job.spec().schedule().pld().has_mean_keep()) {
      absl::StrAppend(&text, " (solved: mean keep ", job.spec().schedule().pld().mean_keep(),
                      " over ", job.spec().training().steps(), " steps)");
    }
    std::printf("schedule:    %s\n", text.c_str());
  } else {
    std::printf("schedule:    (not runnable: %s)\n", std::string(schedule.status().message()).c_str());
  }
  if (job.progress().step() > 0) std::printf("loss:        %.4f\n", job.progress().loss());
  if (job.progress().has_eval_loss()) {
    std::printf("eval loss:   %.4f (step %lld)\n", job.progress().eval_loss(),
                static_cast<long long>(job.progress().eval_step()));
  }
  std::printf("created:     %s\n", TimeText(job.create_time()).c_str());
  if (job.has_start_time()) std::printf("started:     %s\n", TimeText(job.start_time()).c_str());
  if (job.has_end_time()) std::printf("ended:       %s\n", TimeText(job.end_time()).c_str());
}

int PrintJob(const Invocation& inv, const v1::Job& job) {
  if (inv.json) return PrintJson(job);
  PrintJobTable(job);
  return kExitOk;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return contents.str();
}

// One line per watch event (empty for an unknown one), as printed to pipes and logs (and above the
// live progress line).
std::string EventLine(const v1::JobEvent& event) {
  // Whole seconds: events are logged at commit time with milliseconds, summaries without;
  // one format keeps the columns aligned.
  google::protobuf::Timestamp seconds = event.time();
  seconds.set_nanos(0);
  const std::string time = TimeText(seconds);
  if (event.has_snapshot()) {
    return absl::StrFormat("%s %s: %s, step %d / %d", time, event.snapshot().id(),
                           StateName(event.snapshot().state()), event.snapshot().progress().step(),
                           event.snapshot().spec().training().steps());
  }
  if (event.has_state_changed()) {
    const v1::JobStateChanged& changed = event.state_changed();
    return absl::StrFormat("%s state %s -> %s%s%s", time, StateName(changed.old_state()),
                           StateName(changed.new_state()), changed.reason().empty() ? "" : ": ",
                           changed.reason());
  }
  if (event.has_step()) {
    const v1::StepSummary& step = event.step();
    // Steps read as counts done (1-based), like the snapshot's progress, evaluations and
    // checkpoints: "step 100" is the 100th step, after which the eval of "after step 100" ran.
    return absl::StrFormat("%s step %d stage %d path %d loss %.4f lr %.3g %.3fs", time,
                           step.step() + 1, step.stage(), step.path_length(), step.loss(),
                           step.learning_rate(), step.step_seconds());
  }
  if (event.has_eval()) {
    return absl::StrFormat("%s eval after step %d: loss %.4f", time, event.eval().step() + 1,
                           event.eval().eval_loss());
  }
  if (event.has_checkpoint()) {
    return absl::StrFormat("%s checkpoint after step %d: %s", time, event.checkpoint().step(),
                           event.checkpoint().path());
  }
  if (event.has_checkpoint_rejected()) {
    const v1::CheckpointRejected& rejected = event.checkpoint_rejected();
    return absl::StrFormat("%s checkpoint after step %d rejected (%s): %s", time, rejected.step(),
                           rejected.path(), rejected.reason());
  }
  if (event.has_rewound()) {
    const v1::JobRewound& rewound = event.rewound();
    return absl::StrFormat("%s rewound to step %d (from step %d): steps after it run again", time,
                           rewound.to_step(), rewound.from_step());
  }
  return "";  // An event this client does not know (a newer coordinator): nothing to print.
}

// Columns of the terminal on stdout, read at each redraw so a resize takes effect at once.
int TerminalWidth() {
  struct winsize size;
  if (ioctl(fileno(stdout), TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  return 100;
}

// `watch` on a terminal: one status line redrawn in place, with state changes, evaluations and
// checkpoints printed as permanent lines above it.
class LiveProgress {
 public:
  void Update(const v1::JobEvent& event) {
    if (event.has_snapshot()) {
      const v1::Job& job = event.snapshot();
      job_id_ = job.id();
      spec_ = job.spec();
      state_ = job.state();
      progress_ = job.progress();
      throughput_.Add(progress_.step(), progress_.tokens(), progress_.train_seconds());
      PrintAbove(EventLine(event));
    } else if (event.has_state_changed()) {
      state_ = event.state_changed().new_state();
      PrintAbove(EventLine(event));
    } else if (event.has_step()) {
      progress_ = event.step().progress();
      throughput_.Add(progress_.step(), progress_.tokens(), progress_.train_seconds());
      // Steps can arrive far faster than a terminal is worth redrawing; the latest one shows at
      // the next redraw (the next event or the end of the stream).
      if (Clock::now() - last_draw_ >= kMinRedrawInterval) Draw();
    } else if (event.has_eval()) {
      // The next step summary carries it too, but the line should not lag until then.
      progress_.set_eval_loss(event.eval().eval_loss());
      progress_.set_eval_step(event.eval().step());
      PrintAbove(EventLine(event));
    } else if (event.has_checkpoint()) {
      progress_.set_checkpoint_step(event.checkpoint().step());
      PrintAbove(EventLine(event));
    }
  }

  // The stream ended: the final line stays, and a summary follows when the job's end was seen.
  void Finish(bool stream_ok) {
    if (!drawn_) return;  // Nothing arrived (the RPC failed at once): leave the terminal alone.
    Draw();
    std::printf("\n");
    if (stream_ok) std::printf("%s\n", FormatSummaryLine(View()).c_str());
    std::fflush(stdout);
  }

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kMinRedrawInterval{100};  // ~10 redraws a second

  ProgressView View() const {
    ProgressView view;
    view.job_id = job_id_;
    view.state = StateName(state_);
    view.step = progress_.step();
    view.total_steps = spec_.training().steps();
    view.stage = progress_.stage();
    const v1::ScheduleSpec& schedule = spec_.schedule();
    if (schedule.has_raptr()) view.num_stages = schedule.raptr().stages_size();
    if (schedule.has_stacking()) view.num_stages = schedule.stacking().stages_size();
    view.stage_minus_one_is_full = !schedule.has_pld() && !schedule.has_layerdrop();
    view.path_length = progress_.path_length();
    view.layers = spec_.model().layers();
    view.loss = progress_.loss();
    if (progress_.has_eval_loss()) view.eval_loss = progress_.eval_loss();
    view.tokens_per_second = throughput_.TokensPerSecond();
    view.flops = progress_.flops();
    view.flops_full = progress_.flops_full();
    const double steps_per_second = throughput_.StepsPerSecond();
    if (state_ == v1::JOB_STATE_RUNNING && steps_per_second > 0 && view.step < view.total_steps) {
      view.eta_seconds = static_cast<double>(view.total_steps - view.step) / steps_per_second;
    }
    view.train_seconds = progress_.train_seconds();
    return view;
  }

  void Draw() {
    // One column short of the width: a line that fills the last column leaves some terminals
    // wrapping, and the next '\r' would then redraw on a new line.
    const std::string line = FormatProgressLine(View(), TerminalWidth() - 1);
    std::printf("\r%s\x1b[K", line.c_str());
    std::fflush(stdout);
    drawn_ = true;
    last_draw_ = Clock::now();
  }

  void PrintAbove(const std::string& line) {
    if (line.empty()) return;
    std::printf("\r\x1b[K%s\n", line.c_str());
    Draw();
  }

  std::string job_id_;
  v1::JobSpec spec_;
  v1::JobState state_ = v1::JOB_STATE_UNSPECIFIED;
  v1::JobProgress progress_;
  ThroughputEstimator throughput_;
  bool drawn_ = false;
  Clock::time_point last_draw_;
};

}  // namespace

int RunSubmit(int argc, char** argv, int first) {
  const std::string usage = "submit -f job.yaml [--request-id ID] [--validate-only] [flags]";
  Invocation inv;
  inv.flags.Define("file", "", "the job spec (YAML; examples/)");
  inv.flags.Define("request-id", "",
                   "idempotency key: a retry with the same key and spec "
                   "returns the first job");
  inv.flags.Define("validate-only", "false", "validate and fill defaults; store nothing");
  if (int exit = Setup("submit", usage, argc, argv, first, 0, &inv); exit >= 0) return exit;
  const std::string path = inv.flags.Get("file");
  if (path.empty()) return UsageError("submit", usage, inv.flags, "-f job.yaml is required");
  absl::StatusOr<bool> validate_only = inv.flags.GetBool("validate-only");
  if (!validate_only.ok()) {
    return UsageError("submit", usage, inv.flags, std::string(validate_only.status().message()));
  }
  absl::StatusOr<std::string> yaml = ReadWholeFile(path);
  if (!yaml.ok()) {
    std::fprintf(stderr, "raptrctl submit: %s\n", std::string(yaml.status().message()).c_str());
    return kExitUsage;
  }
  // Syntax, unknown fields and types fail here, before any RPC; ranges and the schedule's fit are
  // the coordinator's to judge (it validates every spec, whoever sends it).
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(*yaml);
  if (!spec.ok()) {
    std::fprintf(stderr, "raptrctl submit: %s: %s\n", path.c_str(),
                 std::string(spec.status().message()).c_str());
    return kExitUsage;
  }
  v1::SubmitJobRequest request;
  *request.mutable_spec() = *std::move(spec);
  request.set_request_id(inv.flags.Get("request-id"));
  request.set_validate_only(*validate_only);
  v1::SubmitJobResponse response;
  grpc::Status status = inv.stub->SubmitJob(inv.NewContext().get(), request, &response);
  if (!status.ok()) return RpcError(inv, "SubmitJob", status);
  if (inv.json) return PrintJson(response.job());
  if (*validate_only) {
    std::printf("valid: %s\n", response.job().spec().name().c_str());
  } else {
    std::printf("%s\n", response.job().id().c_str());
  }
  return kExitOk;
}

int RunList(int argc, char** argv, int first) {
  const std::string usage = "list [--state STATE[,STATE...]] [--full] [flags]";
  Invocation inv;
  inv.flags.Define("state", "",
                   "only jobs in these states (pending, running, recovering, "
                   "succeeded, failed, cancelled), comma-separated; empty: all");
  inv.flags.Define("full", "false",
                   "fetch each job's whole spec (for --output json; without it a job's spec "
                   "holds its name, steps and schedule kind only)");
  if (int exit = Setup("list", usage, argc, argv, first, 0, &inv); exit >= 0) return exit;
  absl::StatusOr<bool> full = inv.flags.GetBool("full");
  if (!full.ok()) return UsageError("list", usage, inv.flags, std::string(full.status().message()));
  v1::ListJobsRequest request;
  request.set_view(*full ? v1::JOB_VIEW_FULL : v1::JOB_VIEW_BASIC);
  for (absl::string_view word : absl::StrSplit(inv.flags.Get("state"), ',', absl::SkipEmpty())) {
    v1::JobState state;
    if (!v1::JobState_Parse(absl::StrCat("JOB_STATE_", absl::AsciiStrToUpper(word)), &state) ||
        state == v1::JOB_STATE_UNSPECIFIED) {
      return UsageError("list", usage, inv.flags,
                        absl::StrCat("--state: unknown state '", word, "'"));
    }
    request.add_states(state);
  }
  v1::ListJobsResponse all;
  do {
    v1::ListJobsResponse page;
    grpc::Status status = inv.stub->ListJobs(inv.NewContext().get(), request, &page);
    if (!status.ok()) return RpcError(inv, "ListJobs", status);
    for (v1::Job& job : *page.mutable_jobs()) *all.add_jobs() = std::move(job);
    request.set_page_token(page.next_page_token());
  } while (!request.page_token().empty());
  if (inv.json) return PrintJson(all);
  std::printf("%-12s %-24s %-12s %-10s %-11s %-15s %s\n", "ID", "NAME", "OWNER", "METHOD",
              "STATE", "STEP", "CREATED");
  for (const v1::Job& job : all.jobs()) {
    std::printf(
        "%-12s %-24s %-12s %-10s %-11s %-15s %s\n", job.id().c_str(), job.spec().name().c_str(),
        job.owner().empty() ? "-" : job.owner().c_str(), MethodName(job.spec()).c_str(),
        StateName(job.state()).c_str(),
        absl::StrFormat("%d/%d", job.progress().step(), job.spec().training().steps()).c_str(),
        TimeText(job.create_time()).c_str());
  }
  return kExitOk;
}

int RunGet(int argc, char** argv, int first) {
  const std::string usage = "get JOB [flags]";
  Invocation inv;
  if (int exit = Setup("get", usage, argc, argv, first, 1, &inv); exit >= 0) return exit;
  v1::GetJobRequest request;
  request.set_job_id(inv.flags.positional()[0]);
  v1::Job job;
  grpc::Status status = inv.stub->GetJob(inv.NewContext().get(), request, &job);
  if (!status.ok()) return RpcError(inv, "GetJob", status);
  return PrintJob(inv, job);
}

int RunCancel(int argc, char** argv, int first) {
  const std::string usage = "cancel JOB [--reason TEXT] [flags]";
  Invocation inv;
  inv.flags.Define("reason", "", "why (recorded as the job's message)");
  if (int exit = Setup("cancel", usage, argc, argv, first, 1, &inv); exit >= 0) return exit;
  v1::CancelJobRequest request;
  request.set_job_id(inv.flags.positional()[0]);
  request.set_reason(inv.flags.Get("reason"));
  v1::Job job;
  grpc::Status status = inv.stub->CancelJob(inv.NewContext().get(), request, &job);
  if (!status.ok()) return RpcError(inv, "CancelJob", status);
  return PrintJob(inv, job);
}

int RunTop(int argc, char** argv, int first) {
  const std::string usage = "top [--interval S] [--once] [flags]";
  Invocation inv;
  inv.flags.Define("interval", "2", "seconds between refreshes");
  inv.flags.Range("interval", 0.2, 3600);
  inv.flags.Define("once", "false", "print one frame and exit (scripts; also when not a terminal)");
  if (int exit = Setup("top", usage, argc, argv, first, 0, &inv); exit >= 0) return exit;
  const double interval = *inv.flags.GetDouble("interval");
  const bool tty = isatty(fileno(stdout));
  const bool once = inv.flags.Get("once") == "true" || !tty;
  // Tokens per second of a job: from the progress between two frames; the first frame uses the
  // job's own average (tokens over training seconds).
  std::map<std::string, std::pair<int64_t, double>> last;  // job -> (tokens, train_seconds)
  while (true) {
    v1::ListWorkersResponse workers;
    grpc::Status status =
        inv.stub->ListWorkers(inv.NewContext().get(), v1::ListWorkersRequest(), &workers);
    if (!status.ok()) return RpcError(inv, "ListWorkers", status);
    std::vector<v1::Job> jobs;
    v1::ListJobsRequest request;
    request.add_states(v1::JOB_STATE_PENDING);
    request.add_states(v1::JOB_STATE_RUNNING);
    request.add_states(v1::JOB_STATE_RECOVERING);
    request.set_page_size(100);
    while (true) {
      v1::ListJobsResponse page;
      status = inv.stub->ListJobs(inv.NewContext().get(), request, &page);
      if (!status.ok()) return RpcError(inv, "ListJobs", status);
      for (v1::Job& job : *page.mutable_jobs()) jobs.push_back(std::move(job));
      if (page.next_page_token().empty()) break;
      request.set_page_token(page.next_page_token());
    }
    std::string frame;
    int busy = 0;
    for (const v1::WorkerInfo& w : workers.workers()) busy += w.state() == "busy";
    absl::StrAppendFormat(&frame, "raptr %s  workers %d (%d busy)  active jobs %d\n\n",
                          inv.flags.Get("coordinator"), workers.workers_size(), busy,
                          static_cast<int>(jobs.size()));
    absl::StrAppendFormat(&frame, "%-12s %-22s %-11s %11s %6s %9s %8s %8s %8s\n", "JOB", "NAME",
                          "STATE", "STEP", "%", "TOKENS/S", "LOSS", "EVAL", "SAVED");
    for (const v1::Job& job : jobs) {
      const v1::JobProgress& p = job.progress();
      const int64_t steps = job.spec().training().steps();
      double rate = p.train_seconds() > 0 ? p.tokens() / p.train_seconds() : 0;
      if (auto it = last.find(job.id()); it != last.end() && p.train_seconds() > it->second.second) {
        rate = (p.tokens() - it->second.first) / (p.train_seconds() - it->second.second);
      }
      last[job.id()] = {p.tokens(), p.train_seconds()};
      absl::StrAppendFormat(
          &frame, "%-12s %-22.22s %-11s %11s %5.1f%% %9.0f %8s %8s %7.1f%%\n", job.id(),
          job.spec().name(), StateName(job.state()), absl::StrCat(p.step(), "/", steps),
          steps > 0 ? 100.0 * p.step() / steps : 0.0, rate,
          p.step() > 0 ? absl::StrFormat("%.4f", p.loss()) : "-",
          p.has_eval_loss() ? absl::StrFormat("%.4f", p.eval_loss()) : "-",
          p.flops_full() > 0 ? 100.0 * (1 - p.flops() / p.flops_full()) : 0.0);
    }
    absl::StrAppendFormat(&frame, "\n%-20s %-5s %-9s %-12s %5s %10s %s\n", "WORKER", "KIND",
                          "STATE", "JOB", "RANK", "TOKENS/S", "LAST SEEN");
    for (const v1::WorkerInfo& w : workers.workers()) {
      absl::StrAppendFormat(
          &frame, "%-20.20s %-5s %-9s %-12s %5s %10s %s\n", w.worker_id(),
          w.backend() == v1::BACKEND_CUDA ? "cuda" : "cpu", w.state(),
          w.job_id().empty() ? "-" : w.job_id(), w.rank() >= 0 ? absl::StrCat(w.rank()) : "-",
          w.state() == "busy" ? absl::StrFormat("%.0f", w.tokens_per_second()) : "-",
          TimeText(w.last_seen()));
    }
    if (tty && !once) std::printf("\033[H\033[2J");  // home, clear
    std::printf("%s", frame.c_str());
    std::fflush(stdout);
    if (once) return kExitOk;
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(interval * 1000)));
  }
}

int RunDelete(int argc, char** argv, int first) {
  const std::string usage = "delete JOB [flags]";
  Invocation inv;
  if (int exit = Setup("delete", usage, argc, argv, first, 1, &inv); exit >= 0) return exit;
  v1::DeleteJobRequest request;
  request.set_job_id(inv.flags.positional()[0]);
  v1::DeleteJobResponse response;
  grpc::Status status = inv.stub->DeleteJob(inv.NewContext().get(), request, &response);
  if (!status.ok()) return RpcError(inv, "DeleteJob", status);
  if (inv.json) return PrintJson(response);
  std::printf("deleted %s%s\n", request.job_id().c_str(),
              response.removed_checkpoints().empty()
                  ? ""
                  : absl::StrCat(" and its checkpoints (", response.removed_checkpoints(), ")")
                        .c_str());
  if (!response.checkpoint_error().empty()) {
    std::fprintf(stderr, "raptrctl delete: the job is deleted but its checkpoints stay: %s\n",
                 response.checkpoint_error().c_str());
    return kExitServerError;
  }
  return kExitOk;
}

int RunRetry(int argc, char** argv, int first) {
  const std::string usage = "retry JOB [--reason TEXT] [flags]";
  Invocation inv;
  inv.flags.Define("reason", "", "why (recorded with the retry)");
  if (int exit = Setup("retry", usage, argc, argv, first, 1, &inv); exit >= 0) return exit;
  v1::RetryJobRequest request;
  request.set_job_id(inv.flags.positional()[0]);
  request.set_reason(inv.flags.Get("reason"));
  v1::Job job;
  grpc::Status status = inv.stub->RetryJob(inv.NewContext().get(), request, &job);
  if (!status.ok()) return RpcError(inv, "RetryJob", status);
  return PrintJob(inv, job);
}

namespace {

// watch and logs: one WatchJob stream printed as it comes. `logs` replays the job's history
// first (from_start) and, unless --follow, stops once it is printed.
int StreamJobEvents(const std::string& command, int argc, char** argv, int first) {
  const bool logs = command == "logs";
  const std::string usage = logs ? "logs JOB [-f] [--step-every N] [flags]"
                                 : "watch JOB [--step-every N] [flags]";
  Invocation inv;
  inv.flags.Define("step-every", logs ? "100" : "1",
                   "print every N-th step summary (and the last)");
  inv.flags.Range("step-every", 1, 1e12);
  if (logs) {
    inv.flags.Define("follow", "false", "keep printing what happens next, until the job ends");
    inv.flags.Short("follow", 'f');
  }
  if (int exit = Setup(command, usage, argc, argv, first, 1, &inv); exit >= 0) return exit;
  absl::StatusOr<int> step_every = inv.flags.GetInt32("step-every");
  if (!step_every.ok()) {
    return UsageError(command, usage, inv.flags, std::string(step_every.status().message()));
  }
  v1::WatchJobRequest request;
  request.set_job_id(inv.flags.positional()[0]);
  request.set_step_every(*step_every);
  if (logs) {
    request.set_from_start(true);
    request.set_no_follow(inv.flags.Get("follow") != "true");
  }
  // The stream lasts as long as the job, so it has no deadline (--timeout does not apply); the
  // call is not wait-for-ready, so an unreachable coordinator still fails at once.
  grpc::ClientContext context;
  if (!inv.token.empty()) context.AddMetadata("authorization", "Bearer " + inv.token);
  std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader = inv.stub->WatchJob(&context, request);
  // The live line only where a person watches: pipes and CI logs keep one line per event.
  std::optional<LiveProgress> live;
  if (!logs && !inv.json && isatty(fileno(stdout))) live.emplace();
  v1::JobEvent event;
  while (reader->Read(&event)) {
    if (inv.json) {
      google::protobuf::util::JsonPrintOptions options;
      options.preserve_proto_field_names = true;  // One event per line.
      std::string json;
      if (!google::protobuf::util::MessageToJsonString(event, &json, options).ok()) continue;
      std::printf("%s\n", json.c_str());
    } else if (live.has_value()) {
      live->Update(event);
    } else if (std::string line = EventLine(event); !line.empty()) {
      std::printf("%s\n", line.c_str());
    }
    std::fflush(stdout);
  }
  grpc::Status status = reader->Finish();
  if (live.has_value()) live->Finish(/*stream_ok=*/status.ok());
  if (!status.ok()) return RpcError(inv, "WatchJob", status);
  return kExitOk;
}

}  // namespace

int RunWatch(int argc, char** argv, int first) { return StreamJobEvents("watch", argc, argv, first); }

int RunLogs(int argc, char** argv, int first) { return StreamJobEvents("logs", argc, argv, first); }

int RunExport(int argc, char** argv, int first) {
  const std::string usage = "export JOB | --checkpoint DIR  --format hf -o DIR [flags]";
  Invocation inv;
  inv.flags.Define("out", "", "the directory to write config.json and model.safetensors into");
  inv.flags.Short("out", 'o');
  inv.flags.Define("format", "hf", "hf: Hugging Face transformers (GPT2LMHeadModel)");
  inv.flags.Define("checkpoint", "",
                   "a checkpoint directory (step_N/) to export instead of a job's latest");
  if (int exit = Setup("export", usage, argc, argv, first, kZeroOrOne, &inv); exit >= 0) {
    return exit;
  }
  if (inv.flags.Get("format") != "hf") {
    return UsageError("export", usage, inv.flags,
                      absl::StrCat("--format: '", inv.flags.Get("format"), "' is not hf"));
  }
  if (inv.flags.Get("out").empty()) return UsageError("export", usage, inv.flags, "give -o DIR");
  const bool by_job = !inv.flags.positional().empty();
  if (by_job == !inv.flags.Get("checkpoint").empty()) {
    return UsageError("export", usage, inv.flags, "give a JOB or --checkpoint DIR (one of them)");
  }
  std::string checkpoint = inv.flags.Get("checkpoint");
  std::string tokenizer;
  if (by_job) {
    v1::GetJobRequest get;
    get.set_job_id(inv.flags.positional()[0]);
    v1::Job job;
    grpc::Status status = inv.stub->GetJob(inv.NewContext().get(), get, &job);
    if (!status.ok()) return RpcError(inv, "GetJob", status);
    if (!job.progress().has_checkpoint_path()) {
      std::fprintf(stderr, "raptrctl export: %s has no committed checkpoint yet\n",
                   job.id().c_str());
      return kExitServerError;
    }
    checkpoint = job.progress().checkpoint_path();
    // `raptrctl data prepare` writes the tokenizer beside the shards.
    if (job.spec().data().train_shards_size() > 0) {
      const std::string& shard = job.spec().data().train_shards(0);
      tokenizer = shard.substr(0, shard.rfind('/') + 1) + "tokenizer.model";
    }
    std::fprintf(stderr, "raptrctl export: %s step %lld from %s\n", job.id().c_str(),
                 static_cast<long long>(job.progress().checkpoint_step()), checkpoint.c_str());
  }
  if (absl::Status exported = ExportHf(checkpoint, inv.flags.Get("out"), tokenizer);
      !exported.ok()) {
    std::fprintf(stderr, "raptrctl export: %s%s\n", std::string(exported.message()).c_str(),
                 by_job && absl::IsNotFound(exported)
                     ? " (the coordinator's checkpoint storage: run export where it is mounted, "
                       "or copy the directory here and pass --checkpoint)"
                     : "");
    return kExitServerError;
  }
  std::printf("%s/config.json\n%s/model.safetensors\n", inv.flags.Get("out").c_str(),
              inv.flags.Get("out").c_str());
  return kExitOk;
}

int RunPlot(int argc, char** argv, int first) {
  const std::string usage = "plot JOB... [-o FILE.svg] [--smooth N] [flags]";
  Invocation inv;
  inv.flags.Define("out", "plot.svg", "the SVG file to write (-o)");
  inv.flags.Define("smooth", "25", "moving average of the training loss over N steps (1: none)");
  // -o is the conventional short spelling of --out.
  std::vector<std::string> args(argv, argv + argc);
  for (int i = first; i < argc; ++i) {
    if (args[i] == "-o") args[i] = "--out";
  }
  std::vector<char*> pointers;
  for (std::string& arg : args) pointers.push_back(arg.data());
  if (int exit = Setup("plot", usage, argc, pointers.data(), first, kOneOrMore, &inv); exit >= 0) {
    return exit;
  }
  absl::StatusOr<int> smooth = inv.flags.GetInt32("smooth");
  if (!smooth.ok() || *smooth < 1) {
    return UsageError("plot", usage, inv.flags, "--smooth must be an integer >= 1");
  }
  PlotPanel by_step{"loss against step", "step", "loss", {}};
  PlotPanel by_flops{"loss against training FLOPs", "FLOPs spent", "loss", {}};
  int64_t total_steps = 0;
  const std::vector<std::string>& ids = inv.flags.positional();
  for (size_t j = 0; j < ids.size(); ++j) {
    v1::GetJobRequest get;
    get.set_job_id(ids[j]);
    v1::Job job;
    grpc::Status status = inv.stub->GetJob(inv.NewContext().get(), get, &job);
    if (!status.ok()) return RpcError(inv, "GetJob", status);
    std::vector<double> steps, flops, loss, eval_steps, eval_flops, eval_loss;
    double cumulative = 0;
    v1::ListJobStepsRequest request;
    request.set_job_id(ids[j]);
    request.set_page_size(10000);
    while (true) {
      v1::ListJobStepsResponse page;
      status = inv.stub->ListJobSteps(inv.NewContext().get(), request, &page);
      if (!status.ok()) return RpcError(inv, "ListJobSteps", status);
      for (const v1::StepSummary& s : page.steps()) {
        cumulative += s.flops();
        steps.push_back(static_cast<double>(s.step() + 1));
        flops.push_back(cumulative);
        loss.push_back(s.loss());
        if (s.has_eval_loss()) {
          eval_steps.push_back(static_cast<double>(s.step() + 1));
          eval_flops.push_back(cumulative);
          eval_loss.push_back(s.eval_loss());
        }
      }
      if (page.next_from_step() < 0) break;
      request.set_from_step(page.next_from_step());
    }
    total_steps += static_cast<int64_t>(steps.size());
    const std::string name = absl::StrCat(job.id(), " ", job.spec().name());
    const std::string& color = PlotColor(static_cast<int>(j));
    const std::vector<double> smoothed = MovingAverage(loss, *smooth);
    by_step.series.push_back({name + " train", steps, smoothed, color, false});
    by_flops.series.push_back({name + " train", flops, smoothed, color, false});
    if (!eval_loss.empty()) {
      by_step.series.push_back({name + " eval", eval_steps, eval_loss, color, true});
      by_flops.series.push_back({name + " eval", eval_flops, eval_loss, color, true});
    }
  }
  const std::string out = inv.flags.Get("out");
  std::ofstream file(out, std::ios::trunc);
  file << RenderSvg(absl::StrCat("raptr: ", absl::StrJoin(ids, ", ")), {by_step, by_flops});
  file.close();
  if (!file) {
    std::fprintf(stderr, "raptrctl plot: cannot write %s\n", out.c_str());
    return kExitServerError;
  }
  std::fprintf(stderr,
               "wrote %s: %zu job(s), %lld steps (training loss: %d-step moving average; "
               "eval loss dashed)\n",
               out.c_str(), ids.size(), static_cast<long long>(total_steps), *smooth);
  return kExitOk;
}

}  // namespace raptr::cli
