// Checkpoint retention: see checkpoint_retention.h.
#include "coordinator/checkpoint_retention.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/security.h"

namespace raptr {
namespace {

namespace fs = std::filesystem;

// `path` lexically inside `dir` (both normalized), not `dir` itself.
bool Inside(const fs::path& dir, const fs::path& path) {
  const fs::path rel = path.lexically_normal().lexically_relative(dir.lexically_normal());
  return !rel.empty() && *rel.begin() != ".." && rel != ".";
}

}  // namespace

std::vector<CheckpointRecord> CheckpointsToDrop(const std::vector<CheckpointRecord>& all,
                                                int keep) {
  if (keep <= 0) return {};
  std::vector<CheckpointRecord> newest_first = all;
  std::sort(newest_first.begin(), newest_first.end(),
            [](const CheckpointRecord& a, const CheckpointRecord& b) { return a.step > b.step; });
  std::vector<CheckpointRecord> dropped;
  int usable = 0;
  for (const CheckpointRecord& checkpoint : newest_first) {
    if (usable >= keep) {
      dropped.push_back(checkpoint);
    } else if (!checkpoint.rejected) {
      ++usable;
    }
  }
  return dropped;
}

RetentionResult RemoveUnreferencedCheckpoints(const std::string& job_dir,
                                              const std::vector<CheckpointRecord>& dropped,
                                              const std::vector<CheckpointRecord>& kept,
                                              int64_t current_generation) {
  RetentionResult result;
  const fs::path dir = fs::path(job_dir).lexically_normal();
  auto remove = [&](const fs::path& path) {
    if (!Inside(dir, path)) {
      result.errors.push_back(
          absl::StrCat(path.string(), " is outside ", dir.string(), "; not removed"));
      return;
    }
    // remove_all follows links in the path's directories (not the last component): a link a
    // worker planted below the job's directory must not lead the coordinator's delete elsewhere.
    if (absl::Status links = CheckNoSymlinksBelow(dir.parent_path().string(),
                                                  path.parent_path().string());
        !links.ok()) {
      result.errors.push_back(absl::StrCat(path.string(), ": ", links.message(), "; not removed"));
      return;
    }
    std::error_code error;
    const std::uintmax_t removed = fs::remove_all(path, error);
    if (error) {
      result.errors.push_back(absl::StrCat(path.string(), ": ", error.message()));
    } else if (removed > 0) {
      result.removed.push_back(path.string());
    }
  };
  for (const CheckpointRecord& checkpoint : dropped) remove(fs::path(checkpoint.path));

  std::error_code error;
  fs::directory_iterator entries(dir, error);
  if (error) {
    // No directory (nothing was written yet, or none is visible here) is nothing to sweep.
    if (error != std::errc::no_such_file_or_directory) {
      result.errors.push_back(absl::StrCat(dir.string(), ": ", error.message()));
    }
    return result;
  }
  for (const fs::directory_entry& entry : entries) {
    const std::string name = entry.path().filename().string();
    int64_t generation = 0;
    if (!absl::StartsWith(name, "generation-") ||
        !absl::SimpleAtoi(name.substr(sizeof("generation-") - 1), &generation) ||
        generation >= current_generation) {
      continue;
    }
    const bool holds_kept = std::any_of(kept.begin(), kept.end(), [&](const CheckpointRecord& c) {
      return Inside(entry.path(), fs::path(c.path));
    });
    if (!holds_kept) remove(entry.path());
  }
  return result;
}

}  // namespace raptr
