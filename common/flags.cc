// Command-line flags (see flags.h): CLI11 parses; this file declares each flag to it, turns its
// errors into statuses that name the flag, and keeps the string-valued interface the commands use.
#include "common/flags.h"

#include <cstdint>
#include <cstdlib>
#include <utility>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace raptr {
namespace {

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// "true"/"false" for the spellings a boolean flag accepts, nullopt for anything else.
std::optional<bool> ParseBoolText(std::string text) {
  text = absl::AsciiStrToLower(text);
  if (text == "true" || text == "1" || text == "yes" || text == "on") return true;
  if (text == "false" || text == "0" || text == "no" || text == "off") return false;
  return std::nullopt;
}

}  // namespace

void Flags::Define(const std::string& name, const std::string& default_value,
                   const std::string& help) {
  Entry entry;
  entry.value = default_value;
  entry.default_value = default_value;
  entry.help = help;
  entry.boolean = default_value == "true" || default_value == "false";
  flags_[name] = std::move(entry);
}

void Flags::DefineRepeated(const std::string& name, const std::string& help) {
  Entry entry;
  entry.help = help;
  entry.repeated = true;
  flags_[name] = std::move(entry);
}

void Flags::Env(const std::string& name, const std::string& variable) {
  auto it = flags_.find(name);
  if (it != flags_.end()) it->second.env = variable;
}

void Flags::Range(const std::string& name, double lo, double hi) {
  auto it = flags_.find(name);
  if (it != flags_.end()) it->second.range = std::make_pair(lo, hi);
}

void Flags::Short(const std::string& name, char letter) {
  auto it = flags_.find(name);
  if (it != flags_.end()) it->second.letter = letter;
}

absl::Status Flags::Parse(int argc, char** argv, int first) {
  CLI::App app;
  app.set_help_flag();  // "help" is a flag like the others, where a command defines it
  app.allow_extras();   // positionals and unknown flags: sorted out below, with our messages
  app.positionals_at_end(false);
  // CLI11 writes into these; the entries take them after a successful parse.
  std::map<std::string, std::string> strings;
  std::map<std::string, std::vector<std::string>> lists;
  std::map<std::string, std::string> bools;  // the text given, checked below
  std::map<std::string, CLI::Option*> options;
  for (auto& [name, e] : flags_) {
    CLI::Option* opt = nullptr;
    const std::string names = name == "help" ? "-h,--help"
                              : e.letter  ? absl::StrCat("-", std::string(1, e.letter), ",--", name)
                                          : "--" + name;
    if (e.repeated) {
      opt = app.add_option(names, lists[name], e.help)->take_all();
    } else if (e.boolean) {
      // A flag with an optional value: --name means true, --name=VALUE is checked below,
      // --no-name means false.
      opt = app.add_flag(names + ",!--no-" + name, bools[name], e.help)
                ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    } else {
      opt = app.add_option(names, strings[name], e.help)
                ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast)
                ->allow_extra_args(false);
    }
    if (!e.env.empty()) opt->envname(e.env);
    options[name] = opt;
  }
  std::vector<std::string> args;
  for (int i = argc - 1; i >= first; --i) args.emplace_back(argv[i]);  // CLI11 takes them reversed
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return absl::InvalidArgumentError(e.what());
  }
  for (const std::string& extra : app.remaining()) {
    double number = 0;
    if (extra.size() > 1 && extra[0] == '-' && !absl::SimpleAtod(extra, &number)) {
      std::string name = extra.substr(extra.size() > 1 && extra[1] == '-' ? 2 : 1);
      name = name.substr(0, name.find('='));
      std::string best;
      size_t best_distance = 3;
      for (const auto& [known, _] : flags_) {
        const size_t d = EditDistance(name, known);
        if (d < best_distance) best = known, best_distance = d;
      }
      if (flags_.count(name) && !flags_.at(name).boolean) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag ", extra.substr(0, extra.find('=')),
                       best.empty() ? "" : absl::StrCat(" (did you mean --", best, "?)")));
    }
    positional_.push_back(extra);
  }
  for (auto& [name, e] : flags_) {
    CLI::Option* opt = options[name];
    if (opt->count() == 0 && (e.env.empty() || std::getenv(e.env.c_str()) == nullptr ||
                              std::string(std::getenv(e.env.c_str())).empty())) {
      continue;
    }
    if (opt->count() == 0 && e.repeated) {
      lists[name] = {std::getenv(e.env.c_str())};
    }
    set_.insert(name);
    if (e.repeated) {
      e.values = lists[name];
      e.value = e.values.empty() ? "" : e.values.back();
    } else if (e.boolean) {
      // CLI11 stores "-1" for --no-name, "1" for a bare --name, else the text given.
      const std::string text = bools[name];
      std::optional<bool> v = text == "-1" ? std::optional<bool>(false) : ParseBoolText(text);
      if (!v.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "flag --", name, ": '", text, "' is not true/false (or 1/0, yes/no, on/off)"));
      }
      e.value = *v ? "true" : "false";
    } else {
      e.value = strings[name];
    }
    if (e.range.has_value()) {
      double v = 0;
      if (!absl::SimpleAtod(e.value, &v)) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, ": '", e.value, "' is not a number"));
      }
      if (v < e.range->first || v > e.range->second) {
        return absl::InvalidArgumentError(absl::StrFormat("flag --%s: %s is outside [%.15g, %.15g]",
                                                          name, e.value, e.range->first,
                                                          e.range->second));
      }
    }
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
  std::optional<bool> v = ParseBoolText(Get(name));
  if (!v.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", name, ": '", Get(name), "' is not true/false"));
  }
  return *v;
}

std::string Flags::Usage() const {
  std::string out;
  for (const auto& [name, e] : flags_) {
    std::string text = e.help;
    if (e.range.has_value()) {
      absl::StrAppend(&text, absl::StrFormat(" [%.15g, %.15g]", e.range->first, e.range->second));
    }
    if (!e.env.empty()) absl::StrAppend(&text, " ($", e.env, ")");
    if (e.repeated) {
      absl::StrAppend(&text, " (repeatable)");
    } else {
      absl::StrAppend(&text, " (default: ", e.default_value.empty() ? "\"\"" : e.default_value,
                      ")");
    }
    const std::string shown = name == "help" ? "-h, --help"
                              : e.boolean  ? "--[no-]" + name
                              : e.letter   ? absl::StrCat("-", std::string(1, e.letter), ", --", name)
                                           : "--" + name;
    absl::StrAppend(&out, absl::StrFormat("  %-24s %s\n", shown, text));
  }
  return out;
}

}  // namespace raptr
