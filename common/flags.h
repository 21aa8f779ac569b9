// Command-line flags for raptr's binaries and subcommands, parsed by CLI11 (Debian's
// libcli11-dev), behind the small interface every command already uses.
//
//   --name=value / --name value      any flag; the last occurrence wins (repeatable flags: all)
//   --flag / --flag=1|0|true|false|yes|no|on|off / --no-flag   flags whose default is true/false
//   -h / --help                      the flag "help", where a command defines it
//   $VAR                             a flag's value when Env(name, VAR) was declared and the
//                                    command line does not give it (command line > env > default)
// Unknown flags and malformed or out-of-range values are errors that name the flag (with the
// nearest known name for a typo), so a mistake never silently falls back to a default.
// Not thread-safe; parse once at startup.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace raptr {

class Flags {
 public:
  // Declares a flag with a default and a one-line help text; call before Parse. A default of
  // "true" or "false" makes it a boolean flag (--name, --no-name, --name=VALUE).
  void Define(const std::string& name, const std::string& default_value, const std::string& help);
  // Declares a flag that may be given any number of times (--data-root=A --data-root=B); its
  // values, in order, come from GetAll. Get returns the last one ("" when none).
  void DefineRepeated(const std::string& name, const std::string& help);
  // The environment variable that supplies a defined flag's value when the command line does not.
  void Env(const std::string& name, const std::string& variable);
  // The closed range a defined numeric flag's value must lie in, checked by Parse.
  void Range(const std::string& name, double lo, double hi);
  // A one-letter alias (-o for --out).
  void Short(const std::string& name, char letter);

  // Parses argv[first..argc). Positional arguments are collected in order.
  absl::Status Parse(int argc, char** argv, int first);

  std::string Get(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name) const;
  // An integer that must fit in int (sizes, counts): an error, never a silent truncation.
  absl::StatusOr<int> GetInt32(const std::string& name) const;
  absl::StatusOr<double> GetDouble(const std::string& name) const;
  absl::StatusOr<bool> GetBool(const std::string& name) const;
  std::vector<std::string> GetAll(const std::string& name) const;
  // Given on the command line or through its environment variable.
  bool IsSet(const std::string& name) const { return set_.count(name) > 0; }
  const std::vector<std::string>& positional() const { return positional_; }

  // "  --name  help (default: x)" lines, sorted by name, with each flag's variable and range.
  std::string Usage() const;

 private:
  struct Entry {
    std::string value;
    std::string default_value;
    std::string help;
    bool repeated = false;
    bool boolean = false;
    std::string env;
    char letter = 0;
    std::optional<std::pair<double, double>> range;
    std::vector<std::string> values;  // every value given, for repeated flags
  };
  std::map<std::string, Entry> flags_;
  std::set<std::string> set_;
  std::vector<std::string> positional_;
};

}  // namespace raptr
