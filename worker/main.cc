// raptr-worker: the training process. Subcommands: serve (a coordinator's worker), train (local,
// one process), debug-step.
#include <cstdio>
#include <cstring>
#include <string>

#include "common/process_env.h"
#include "worker/commands.h"

namespace {

void PrintUsage() {
  std::fprintf(stderr,
               "usage: raptr-worker <command> [flags]\n"
               "commands:\n"
               "  serve        connect to raptr-coordinator and train the jobs it assigns\n"
               "  train        train a model locally in this process (see --help)\n"
               "  debug-step   one forward/backward from safetensors weights; writes loss,\n"
               "               logits and every gradient to a safetensors file\n");
}

}  // namespace

int main(int argc, char** argv) {
  raptr::EnsurePassiveOpenMpWaitPolicy(argv);
  if (argc < 2 || std::strcmp(argv[1], "help") == 0 || std::strcmp(argv[1], "--help") == 0) {
    PrintUsage();
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  if (command == "serve") return raptr::RunServe(argc, argv);
  if (command == "train") return raptr::RunLocalTrain(argc, argv);
  if (command == "debug-step") return raptr::RunDebugStep(argc, argv);
  std::fprintf(stderr, "raptr-worker: unknown command '%s'\n", command.c_str());
  PrintUsage();
  return 2;
}
