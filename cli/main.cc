// raptrctl entry point: dispatches on the leading command words to a subcommand handler.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "cli/data_command.h"
#include "cli/completion_command.h"
#include "cli/job_commands.h"
#include "cli/methods_command.h"
#include "cli/token_command.h"

namespace raptr::cli {
namespace {

// A subcommand is the command words that name it plus a handler taking the remaining arguments.
// New subcommands (submit, list, get, watch, cancel, ...) are one more row in kCommands.
struct Command {
  std::vector<std::string> words;
  const char* summary;
  int (*run)(int argc, char** argv, int first);
};

const std::vector<Command>& Commands() {
  static const std::vector<Command> kCommands = {
      {{"data", "prepare"}, "tokenize a text corpus into llm.c train/val shards", RunDataPrepare},
      {{"submit"}, "submit a job spec (-f job.yaml) to the coordinator", RunSubmit},
      {{"list"}, "list the coordinator's jobs", RunList},
      {{"get"}, "show one job", RunGet},
      {{"cancel"}, "cancel a job", RunCancel},
      {{"top"}, "a live view of the workers and the active jobs (tokens/s, FLOPs saved)", RunTop},
      {{"delete"}, "delete an ended job with its history and checkpoints", RunDelete},
      {{"retry"}, "run a FAILED job again from its last committed checkpoint", RunRetry},
      {{"watch"}, "print a job's events until it ends", RunWatch},
      {{"logs"}, "print a job's event log from its submission (-f: and follow it)", RunLogs},
      {{"plot"}, "plot jobs' loss against step and FLOPs into an SVG file", RunPlot},
      {{"export"}, "write a job's checkpoint as a Hugging Face GPT-2 (config.json, safetensors)",
       RunExport},
      {{"methods"}, "the training methods a job's schedule can name, with their options",
       RunMethods},
      {{"completion"}, "print a bash completion script (source <(raptrctl completion bash))",
       RunCompletion},
      {{"token", "new"}, "make a client or worker token and its --auth-tokens line", RunTokenNew},
  };
  return kCommands;
}

void PrintUsage(std::FILE* out) {
  std::fprintf(out, "usage: raptrctl COMMAND [flags]\n\ncommands:\n");
  for (const Command& c : Commands()) {
    std::fprintf(out, "  %-22s %s\n", absl::StrJoin(c.words, " ").c_str(), c.summary);
  }
  std::fprintf(out, "  %-22s %s\n", "help", "show this text");
  std::fprintf(out, "\nRun 'raptrctl COMMAND --help' for a command's flags.\n");
}

// The command whose words are the longest prefix of argv[at..]; nullptr if none.
const Command* FindAt(int argc, char** argv, int at) {
  const Command* best = nullptr;
  for (const Command& c : Commands()) {
    if (static_cast<int>(c.words.size()) > argc - at) continue;
    bool match = true;
    for (size_t i = 0; i < c.words.size() && match; ++i) match = c.words[i] == argv[at + i];
    if (match && (best == nullptr || c.words.size() > best->words.size())) best = &c;
  }
  return best;
}

// Flags before the command, as kubectl takes them (`raptrctl --coordinator=H:P list`): the first
// command after leading flags (and the values of `--flag VALUE`) is the command. Its index, or 0.
int CommandAfterLeadingFlags(int argc, char** argv) {
  if (argc < 2 || argv[1][0] != '-') return 0;
  for (int i = 2; i < argc; ++i) {
    if (FindAt(argc, argv, i) != nullptr) return i;
  }
  return 0;
}

int Main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  const std::string first = argv[1];
  if (first == "help" || first == "--help" || first == "-h") {
    PrintUsage(stdout);  // asked for: success, on stdout
    return 0;
  }
  // The leading flags move behind the command words, where the command's parser reads them.
  std::vector<char*> reordered;
  if (const int at = CommandAfterLeadingFlags(argc, argv); at > 0) {
    reordered.assign(argv, argv + argc);
    std::rotate(reordered.begin() + 1, reordered.begin() + at,
                reordered.begin() + at + FindAt(argc, argv, at)->words.size());
    reordered.push_back(nullptr);
    argv = reordered.data();
  }
  const Command* cmd = FindAt(argc, argv, 1);
  if (cmd == nullptr) {
    std::vector<std::string> words;
    for (int i = 1; i < argc && std::strncmp(argv[i], "-", 1) != 0; ++i) words.push_back(argv[i]);
    if (words.empty()) {
      std::fprintf(stderr, "raptrctl: no command (only flags: %s)\n\n", argv[1]);
    } else {
      std::fprintf(stderr, "raptrctl: unknown command '%s'\n\n", absl::StrJoin(words, " ").c_str());
    }
    PrintUsage(stderr);
    return 2;
  }
  return cmd->run(argc, argv, 1 + static_cast<int>(cmd->words.size()));
}

}  // namespace
}  // namespace raptr::cli

int main(int argc, char** argv) { return raptr::cli::Main(argc, argv); }
