// The training methods a job's schedule names, documented in one place: what each does, the paper
// it comes from, and every option with its default. `raptrctl methods` prints it and
// docs/METHODS.md is generated from it (tests check both against proto/raptr/v1/job.proto: every
// field of every schedule message is described here, and nothing else).
#pragma once

#include <string>
#include <vector>

namespace raptr {

struct MethodOption {
  std::string name;           // the field of the method's schedule message, e.g. "keep_prob"
  std::string default_value;  // as a person reads it
  std::string meaning;
};

struct Method {
  std::string name;     // the ScheduleSpec field: full, raptr, pld, layerdrop, stacking
  std::string message;  // its message type, e.g. "raptr.v1.RaptrSchedule"
  std::string summary;
  std::string source;   // the paper (or "-")
  std::vector<MethodOption> options;
};

const std::vector<Method>& Methods();

// The optimizer's treatment of skipped blocks (optimizer.skipped), given to every method that
// skips blocks: its values and what each does.
const std::vector<MethodOption>& SkippedBlockPolicies();

// docs/METHODS.md.
std::string MethodsMarkdown();

}  // namespace raptr
