// `raptrctl token new` (see token_command.h).
#include "cli/token_command.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/file_io.h"
#include "common/flags.h"
#include "common/security.h"

namespace raptr::cli {
namespace {

constexpr char kUsage[] =
    "usage: raptrctl token new --name NAME --role ROLE --out FILE\n"
    "Writes a fresh token to FILE (mode 0600; an existing FILE is an error) and prints the line\n"
    "for the coordinator's --auth-tokens file. Roles: reader, submitter, admin, worker (a join\n"
    "token for raptr-worker serve --join-token-file). The token is printed nowhere.\n\nflags:\n";

}  // namespace

int RunTokenNew(int argc, char** argv, int first) {
  Flags flags;
  flags.Define("name", "", "who the token is for (letters, digits, - _ . @ /)");
  flags.Define("role", "submitter", "reader, submitter, admin or worker");
  flags.Define("out", "", "file the token is written to (mode 0600; must not exist)");
  flags.Define("help", "false", "print this help");
  auto usage_error = [&](const std::string& message) {
    std::fprintf(stderr, "raptrctl token new: %s\n\n%s%s", message.c_str(), kUsage,
                 flags.Usage().c_str());
    return 2;
  };
  if (absl::Status parsed = flags.Parse(argc, argv, first); !parsed.ok()) {
    return usage_error(std::string(parsed.message()));
  }
  if (flags.Get("help") == "true") {
    std::printf("%s%s", kUsage, flags.Usage().c_str());
    return 0;
  }
  if (!flags.positional().empty()) return usage_error("takes no arguments");
  const std::string name = flags.Get("name");
  const std::string out = flags.Get("out");
  if (name.empty() || out.empty()) return usage_error("--name and --out are required");
  absl::StatusOr<Role> role = ParseRole(flags.Get("role"));
  if (!role.ok()) return usage_error(absl::StrCat("--role: ", role.status().message()));
  absl::StatusOr<std::string> token = NewToken();
  if (!token.ok()) {
    std::fprintf(stderr, "raptrctl token new: %s\n", std::string(token.status().message()).c_str());
    return 1;
  }
  const std::string line = absl::StrCat(name, " ", RoleName(*role), " ", HashToken(*token));
  // The line must parse as the coordinator will parse it (the name's characters, say).
  if (absl::StatusOr<TokenTable> check = TokenTable::Parse(line, "--name"); !check.ok()) {
    return usage_error(std::string(check.status().message()));
  }
  const int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::fprintf(stderr, "raptrctl token new: cannot create %s: %s\n", out.c_str(),
                 std::strerror(errno));
    return 1;
  }
  ScopedFd file(fd);
  const std::string content = *token + "\n";
  if (absl::Status written = WriteAll(file.get(), content.data(), content.size(), out);
      !written.ok() || file.Close() != 0) {
    std::fprintf(stderr, "raptrctl token new: cannot write %s\n", out.c_str());
    unlink(out.c_str());
    return 1;
  }
  std::printf("%s\n", line.c_str());
  return 0;
}

}  // namespace raptr::cli
