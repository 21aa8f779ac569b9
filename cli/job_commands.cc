// raptrctl's JobService commands: flags -> request, RPC with a deadline, response -> table/JSON.
#include "cli/job_commands.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/flags.h"
#include "common/job_spec.h"
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

// One parsed command line plus the channel to the coordinator it names.
struct Invocation {
  Flags flags;
  bool json = false;
  std::chrono::milliseconds timeout{10000};
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::JobService::Stub> stub;

  std::unique_ptr<grpc::ClientContext> NewContext() const {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + timeout);
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
  const char* env = std::getenv("RAPTR_COORDINATOR");
  inv->flags.Define("coordinator", env != nullptr && *env != '\0' ? env : kDefaultCoordinator,
                    "HOST:PORT of raptr-coordinator ($RAPTR_COORDINATOR)");
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
    return kExitUsage;
  }
  if (inv->flags.positional().size() != positional_args) {
    return UsageError(command, usage, inv->flags,
                      absl::StrCat("expected ", positional_args, " argument(s), got ",
                                   inv->flags.positional().size()));
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
  inv->channel =
      grpc::CreateChannel(inv->flags.Get("coordinator"), grpc::InsecureChannelCredentials());
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
    std::fprintf(stderr, "raptrctl: coordinator %s unreachable (%s: %s)\n",
                 inv.flags.Get("coordinator").c_str(), name.c_str(),
                 status.error_message().c_str());
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
  std::printf("state:       %s\n", StateName(job.state()).c_str());
  if (!job.message().empty()) std::printf("message:     %s\n", job.message().c_str());
  std::printf("step:        %lld / %lld\n", static_cast<long long>(job.progress().step()),
              static_cast<long long>(job.spec().training().steps()));
  std::printf("workers:     %d (generation %lld)\n", job.world_size(),
              static_cast<long long>(job.generation()));
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
  const std::string usage = "list [--state STATE[,STATE...]] [flags]";
  Invocation inv;
  inv.flags.Define("state", "",
                   "only jobs in these states (pending, running, recovering, "
                   "succeeded, failed, cancelled), comma-separated; empty: all");
  if (int exit = Setup("list", usage, argc, argv, first, 0, &inv); exit >= 0) return exit;
  v1::ListJobsRequest request;
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
  std::printf("%-12s %-24s %-11s %-15s %s\n", "ID", "NAME", "STATE", "STEP", "CREATED");
  for (const v1::Job& job : all.jobs()) {
    std::printf(
        "%-12s %-24s %-11s %-15s %s\n", job.id().c_str(), job.spec().name().c_str(),
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

int RunWatch(int argc, char** argv, int first) {
  const std::string usage = "watch JOB [--step-every N] [flags]";
  Invocation inv;
  inv.flags.Define("step-every", "1", "print every N-th step summary (and the last)");
  if (int exit = Setup("watch", usage, argc, argv, first, 1, &inv); exit >= 0) return exit;
  absl::StatusOr<int> step_every = inv.flags.GetInt32("step-every");
  if (!step_every.ok()) {
    return UsageError("watch", usage, inv.flags, std::string(step_every.status().message()));
  }
  v1::WatchJobRequest request;
  request.set_job_id(inv.flags.positional()[0]);
  request.set_step_every(*step_every);
  // The stream lasts as long as the job, so it has no deadline (--timeout does not apply); the
  // call is not wait-for-ready, so an unreachable coordinator still fails at once.
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader = inv.stub->WatchJob(&context, request);
  v1::JobEvent event;
  while (reader->Read(&event)) {
    if (inv.json) {
      google::protobuf::util::JsonPrintOptions options;
      options.preserve_proto_field_names = true;  // One event per line.
      std::string json;
      if (!google::protobuf::util::MessageToJsonString(event, &json, options).ok()) continue;
      std::printf("%s\n", json.c_str());
    } else if (event.has_snapshot()) {
      std::printf("%s %s: %s, step %lld / %lld\n", TimeText(event.time()).c_str(),
                  event.snapshot().id().c_str(), StateName(event.snapshot().state()).c_str(),
                  static_cast<long long>(event.snapshot().progress().step()),
                  static_cast<long long>(event.snapshot().spec().training().steps()));
    } else if (event.has_state_changed()) {
      const v1::JobStateChanged& changed = event.state_changed();
      std::printf("%s state %s -> %s%s%s\n", TimeText(event.time()).c_str(),
                  StateName(changed.old_state()).c_str(), StateName(changed.new_state()).c_str(),
                  changed.reason().empty() ? "" : ": ", changed.reason().c_str());
    } else if (event.has_step()) {
      const v1::StepSummary& step = event.step();
      std::printf("%s step %lld stage %d path %d loss %.4f lr %.3g %.3fs\n",
                  TimeText(event.time()).c_str(), static_cast<long long>(step.step()), step.stage(),
                  step.path_length(), step.loss(), step.learning_rate(), step.step_seconds());
    } else if (event.has_eval()) {
      std::printf("%s eval after step %lld: loss %.4f\n", TimeText(event.time()).c_str(),
                  static_cast<long long>(event.eval().step()), event.eval().eval_loss());
    } else if (event.has_checkpoint()) {
      std::printf("%s checkpoint after step %lld: %s\n", TimeText(event.time()).c_str(),
                  static_cast<long long>(event.checkpoint().step()),
                  event.checkpoint().path().c_str());
    }
    std::fflush(stdout);
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return RpcError(inv, "WatchJob", status);
  return kExitOk;
}

}  // namespace raptr::cli
