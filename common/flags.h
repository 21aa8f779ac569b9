// A small strict command-line parser for subcommands: --name=value / --name value / --flag.
//
// Unknown flags and malformed values are errors that name the flag, so a typo never silently
// falls back to a default. Not thread-safe; parse once at startup.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace raptr {

class Flags {
 public:
  // Declares a flag with a default and a one-line help text; call before Parse.
  void Define(const std::string& name, const std::string& default_value, const std::string& help);
  // Declares a flag that may be given any number of times (--data-root=A --data-root=B); its
  // values, in order, come from GetAll. Get returns the last one ("" when none).
  void DefineRepeated(const std::string& name, const std::string& help);

  // Parses argv[first..argc). Positional arguments are collected in order.
  absl::Status Parse(int argc, char** argv, int first);

  std::string Get(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name) const;
  // An integer that must fit in int (sizes, counts): an error, never a silent truncation.
  absl::StatusOr<int> GetInt32(const std::string& name) const;
  absl::StatusOr<double> GetDouble(const std::string& name) const;
  absl::StatusOr<bool> GetBool(const std::string& name) const;
  std::vector<std::string> GetAll(const std::string& name) const;
  bool IsSet(const std::string& name) const { return set_.count(name) > 0; }
  const std::vector<std::string>& positional() const { return positional_; }

  // "  --name (default: x)  help" lines, sorted by name.
  std::string Usage() const;

 private:
  struct Entry {
    std::string value;
    std::string default_value;
    std::string help;
    bool repeated = false;
    std::vector<std::string> values;  // every value given, for repeated flags
  };
  std::map<std::string, Entry> flags_;
  std::set<std::string> set_;
  std::vector<std::string> positional_;
};

}  // namespace raptr
