// `raptrctl methods` (see methods_command.h).
#include "cli/methods_command.h"

#include <cstdio>
#include <string>

#include "common/flags.h"
#include "common/methods.h"

namespace raptr::cli {

int RunMethods(int argc, char** argv, int first) {
  Flags flags;
  flags.Define("markdown", "false", "print docs/METHODS.md instead of the text table");
  flags.Define("help", "false", "print this help");
  if (absl::Status parsed = flags.Parse(argc, argv, first); !parsed.ok()) {
    std::fprintf(stderr, "raptrctl methods: %s\n\nusage: raptrctl methods [--markdown]\n%s",
                 std::string(parsed.message()).c_str(), flags.Usage().c_str());
    return 2;
  }
  if (flags.Get("help") == "true") {
    std::printf("usage: raptrctl methods [--markdown]\n%s", flags.Usage().c_str());
    return 0;
  }
  if (!flags.positional().empty()) {
    std::fprintf(stderr, "raptrctl methods: takes no arguments\n");
    return 2;
  }
  if (flags.Get("markdown") == "true") {
    std::printf("%s", MethodsMarkdown().c_str());
    return 0;
  }
  for (const Method& m : Methods()) {
    std::printf("%s\n  %s\n", m.name.c_str(), m.summary.c_str());
    if (m.source != "-") std::printf("  source: %s\n", m.source.c_str());
    for (const MethodOption& o : m.options) {
      std::printf("    %-18s %s (default: %s)\n", o.name.c_str(), o.meaning.c_str(),
                  o.default_value.c_str());
    }
    std::printf("\n");
  }
  std::printf("optimizer.skipped (every method that skips blocks)\n");
  for (const MethodOption& o : SkippedBlockPolicies()) {
    std::printf("    %-18s %s%s\n", o.name.c_str(), o.meaning.c_str(),
                o.default_value == "default" ? " (default)" : "");
  }
  return 0;
}

}  // namespace raptr::cli
