// Failpoints: see failpoint.h. Our own because nothing in Debian fits: the one we know of
// (fail-rs, gofail) is for other languages, and this is a few lines.
#include "common/failpoint.h"

#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/log.h"

namespace raptr {
namespace {

struct Armed {
  long long at = 1;               // the pass that kills
  std::atomic<long long> passes{0};
};

// name -> armed failpoint; built once from the environment, read-only after.
std::map<std::string, Armed>* Table() {
  static std::map<std::string, Armed>* table = [] {
    auto* armed = new std::map<std::string, Armed>();
    const char* spec = std::getenv("RAPTR_FAILPOINTS");
    if (spec == nullptr) return armed;
    for (absl::string_view entry : absl::StrSplit(spec, ',', absl::SkipEmpty())) {
      std::vector<std::string> parts = absl::StrSplit(entry, absl::MaxSplits(':', 1));
      long long at = 1;
      if (parts.size() == 2 && (!absl::SimpleAtoi(parts[1], &at) || at < 1)) {
        Log(absl::StrCat("RAPTR_FAILPOINTS: \"", entry, "\" needs a count >= 1; ignored"));
        continue;
      }
      (*armed)[parts[0]].at = at;
    }
    return armed;
  }();
  return table;
}

}  // namespace

bool FailpointHit(const char* name) {
  static std::map<std::string, Armed>* const table = Table();
  if (table->empty()) return false;
  auto it = table->find(name);
  if (it == table->end()) return false;
  if (it->second.passes.fetch_add(1) + 1 != it->second.at) return false;
  Log(absl::StrCat("failpoint ", name, " (pass ", it->second.at, ")"));
  return true;
}

void Failpoint(const char* name) {
  if (!FailpointHit(name)) return;
  Log(absl::StrCat("failpoint ", name, ": SIGKILL"));
  raise(SIGKILL);
}

}  // namespace raptr
