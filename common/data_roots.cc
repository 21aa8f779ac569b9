// Confinement of job data paths to the configured data roots (see data_roots.h).
#include "common/data_roots.h"

#include <filesystem>
#include <iterator>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status.h"

namespace raptr {
namespace {

namespace fs = std::filesystem;

// True when `root`'s components are a prefix of `path`'s: /data/x is inside /data, /data2/x is
// not (a string prefix would say it is).
bool IsInside(const fs::path& path, const fs::path& root) {
  auto p = path.begin();
  for (auto r = root.begin(); r != root.end(); ++r, ++p) {
    if (p == path.end() || *p != *r) return false;
  }
  return true;
}

// Beyond the kernel's own limit (40), a chain of dangling links is a loop or an attack.
constexpr int kMaxSymlinkHops = 40;

// `absolute` with every symlink resolved, as far as the path exists. weakly_canonical stops at
// the first component that does not exist, and a dangling symlink is such a component: it would
// be kept as it stands and judged by where the link sits, not where it points (a link in a root
// to a file outside that is created later). Each one found is followed by hand.
absl::StatusOr<fs::path> ResolveSymlinks(const fs::path& absolute, int hops) {
  std::error_code ec;
  const fs::path resolved = fs::weakly_canonical(absolute, ec);
  if (ec) return absl::InvalidArgumentError(ec.message());
  fs::path prefix;
  for (auto it = resolved.begin(); it != resolved.end(); ++it) {
    prefix /= *it;
    const fs::file_status status = fs::symlink_status(prefix, ec);
    if (status.type() == fs::file_type::not_found) return resolved;  // nothing below exists
    if (ec) return absl::InvalidArgumentError(ec.message());
    if (!fs::is_symlink(status)) continue;
    if (hops >= kMaxSymlinkHops) {
      return absl::InvalidArgumentError("too many levels of symbolic links");
    }
    const fs::path target = fs::read_symlink(prefix, ec);
    if (ec) return absl::InvalidArgumentError(ec.message());
    fs::path next = target.is_absolute() ? target : prefix.parent_path() / target;
    for (auto rest = std::next(it); rest != resolved.end(); ++rest) next /= *rest;
    return ResolveSymlinks(next, hops + 1);
  }
  return resolved;
}

absl::StatusOr<std::string> CanonicalRoot(const std::string& root) {
  const auto bad = [&root](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("--data-root ", root, ": ", why));
  };
  if (root.empty()) return bad("empty path");
  if (root.find('\0') != std::string::npos) return bad("holds a NUL byte");
  std::error_code ec;
  const fs::path canonical = fs::canonical(root, ec);
  if (ec) return bad(ec.message());
  if (!fs::is_directory(canonical, ec)) {
    return bad(ec ? ec.message() : absl::StrCat(canonical.string(), " is not a directory"));
  }
  return canonical.string();
}

}  // namespace

absl::StatusOr<DataRoots> DataRoots::Create(const std::vector<std::string>& roots) {
  std::vector<std::string> canonical;
  for (const std::string& root : roots) {
    ASSIGN_OR_RETURN(std::string resolved, CanonicalRoot(root));
    canonical.push_back(std::move(resolved));
  }
  return DataRoots(std::move(canonical));
}

absl::StatusOr<std::string> DataRoots::Resolve(const std::string& path,
                                               absl::string_view field) const {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty path"));
  if (path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": the path holds a NUL byte"));
  }
  if (unconfined()) return path;
  std::error_code ec;
  fs::path absolute = path;
  if (absolute.is_relative()) absolute = fs::current_path(ec) / absolute;
  absl::StatusOr<fs::path> resolved = absl::InvalidArgumentError(ec.message());
  if (!ec) resolved = ResolveSymlinks(absolute, 0);
  // The caller's error names the field and the path it gave, never what the path led to (a link's
  // target, whether a file exists, why it cannot be read): any reader of the job sees it, and it
  // would map this machine's files. The details go to this process's log.
  if (!resolved.ok()) {
    Log(absl::StrCat(field, ": \"", path, "\" cannot be resolved: ", resolved.status().message()));
    return absl::InvalidArgumentError(absl::StrCat(field, ": \"", path,
                                                   "\" cannot be resolved inside the data roots (",
                                                   absl::StrJoin(roots_, ", "), ")"));
  }
  for (const std::string& root : roots_) {
    if (IsInside(*resolved, root)) return resolved->string();
  }
  Log(absl::StrCat(field, ": \"", path, "\" resolves to ", resolved->string(),
                   ", outside the data roots"));
  return absl::InvalidArgumentError(absl::StrCat(field, ": \"", path,
                                                 "\" is outside the data roots (",
                                                 absl::StrJoin(roots_, ", "), ")"));
}

std::string DataRoots::DebugString() const {
  return unconfined() ? "unconfined" : absl::StrJoin(roots_, ", ");
}

namespace {

absl::Status ConfineShards(const google::protobuf::RepeatedPtrField<std::string>& shards,
                           absl::string_view field, const DataRoots& roots) {
  for (int i = 0; i < shards.size(); ++i) {
    RETURN_IF_ERROR(roots.Resolve(shards.Get(i), absl::StrCat(field, "[", i, "]")).status());
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ConfineJobSpec(const v1::JobSpec& spec, const DataRoots& roots) {
  // The spec's only file paths today: job.proto has no weights-import or tokenizer field (the
  // checkpoint directory is the coordinator's). A path field added there must be added here.
  RETURN_IF_ERROR(ConfineShards(spec.data().train_shards(), "data.train_shards", roots));
  return ConfineShards(spec.data().val_shards(), "data.val_shards", roots);
}

}  // namespace raptr
