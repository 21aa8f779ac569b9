// Strict command-line flag parsing (see flags.h).
#include "common/flags.h"

#include <cstdint>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace raptr {

void Flags::Define(const std::string& name, const std::string& default_value,
                   const std::string& help) {
  Entry entry;
  entry.value = default_value;
  entry.default_value = default_value;
  entry.help = help;
  flags_[name] = std::move(entry);
}

void Flags::DefineRepeated(const std::string& name, const std::string& help) {
  Entry entry;
  entry.help = help;
  entry.repeated = true;
  flags_[name] = std::move(entry);
}

absl::Status Flags::Parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto it = flags_.find(name);
    if (it == flags_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (!has_value) {
      // Boolean flags may stand alone; others take the next argument.
      bool is_bool = it->second.default_value == "true" || it->second.default_value == "false";
      if (is_bool &&
          (i + 1 >= argc || std::string(argv[i + 1]).rfind("--", 0) == 0 ||
           (std::string(argv[i + 1]) != "true" && std::string(argv[i + 1]) != "false"))) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
    }
    it->second.value = value;
    if (it->second.repeated) it->second.values.push_back(value);
    set_.insert(name);
  }
  return absl::OkStatus();
}

std::string Flags::Get(const std::string& name) const {
  auto it = flags_.find(name);
  return it == flags_.end() ? "" : it->second.value;
}

std::vector<std::string> Flags::GetAll(const std::string& name) const {
  auto it = flags_.find(name);
  return it == flags_.end() ? std::vector<std::string>{} : it->second.values;
}

absl::StatusOr<int64_t> Flags::GetInt(const std::string& name) const {
  int64_t v = 0;
  if (!absl::SimpleAtoi(Get(name), &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", name, ": '", Get(name), "' is not an integer"));
  }
  return v;
}

absl::StatusOr<int> Flags::GetInt32(const std::string& name) const {
  absl::StatusOr<int64_t> v = GetInt(name);
  if (!v.ok()) return v.status();
  if (*v < INT32_MIN || *v > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("flag --", name, ": ", *v, " is out of range"));
  }
  return static_cast<int>(*v);
}

absl::StatusOr<double> Flags::GetDouble(const std::string& name) const {
  double v = 0;
  if (!absl::SimpleAtod(Get(name), &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", name, ": '", Get(name), "' is not a number"));
  }
  return v;
}

absl::StatusOr<bool> Flags::GetBool(const std::string& name) const {
  bool v = false;
  if (!absl::SimpleAtob(Get(name), &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", name, ": '", Get(name), "' is not true/false"));
  }
  return v;
}

std::string Flags::Usage() const {
  std::string out;
  for (const auto& [name, e] : flags_) {
    if (e.repeated) {
      absl::StrAppend(&out, absl::StrFormat("  --%-22s %s (repeatable)\n", name, e.help));
      continue;
    }
    absl::StrAppend(&out, absl::StrFormat("  --%-22s %s (default: %s)\n", name, e.help,
                                          e.default_value.empty() ? "\"\"" : e.default_value));
  }
  return out;
}

}  // namespace raptr
