// DataRoots: the directories a job's data paths must resolve inside (--data-root, repeatable).
//
// A job spec names files that the workers open. Without confinement a client could point a
// worker at any file the worker can read (/etc/passwd as a "shard"). The coordinator checks every
// data path of a spec at submit (nothing is stored when one is outside), and each worker checks
// again, against its own roots, right before opening: the coordinator may not see the workers'
// files, and a worker must not trust what the coordinator let through.
//
// Resolution follows symlinks as far as the path exists (std::filesystem::weakly_canonical, and
// dangling links by hand): `..`, absolute paths elsewhere and symlinks that point out (to a file
// or through a directory) all resolve outside. A path that does not exist yet is judged by its
// existing prefix, resolved, plus the rest normalised lexically. The check is made once, on the
// path as it stands then; the caller opens the resolved path, so a later symlink swap inside a root
// is the one gap left (the roots' owners control what is created in them).
//
// Thread-safe: immutable after Create.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "raptr/v1/job.pb.h"

namespace raptr {

class DataRoots {
 public:
  // Unconfined: every path is allowed (no --data-root given).
  DataRoots() = default;

  // Canonicalizes each root (symlinks resolved); each must exist and be a directory. A bad root
  // is INVALID_ARGUMENT naming it: "--data-root <dir>: <why>". An empty list is unconfined.
  static absl::StatusOr<DataRoots> Create(const std::vector<std::string>& roots);

  bool unconfined() const { return roots_.empty(); }
  // The canonical roots, in the order given.
  const std::vector<std::string>& roots() const { return roots_; }

  // The resolved `path` when it lies inside a root (component-wise: /data2 is not inside
  // /data). A relative path resolves against the process's working directory. Otherwise
  // INVALID_ARGUMENT: "<field>: \"<path>\" is outside the data roots (<roots>)", never naming
  // what the path resolved to (that goes to the log). Unconfined: `path` unchanged. An empty path, or one holding a NUL byte (which
  // open(2) would cut short: the file opened would not be the one checked), is refused either
  // way.
  absl::StatusOr<std::string> Resolve(const std::string& path, absl::string_view field) const;

  // The roots for a log line: "/a, /b", or "unconfined".
  std::string DebugString() const;

 private:
  explicit DataRoots(std::vector<std::string> roots) : roots_(std::move(roots)) {}

  std::vector<std::string> roots_;
};

// Every file path a job spec names (data.train_shards[i], data.val_shards[i]; the checkpoint
// directory is the coordinator's, not the spec's), each checked with roots.Resolve under its
// field path. Returns the first failure; OK when unconfined.
absl::Status ConfineJobSpec(const v1::JobSpec& spec, const DataRoots& roots);

}  // namespace raptr
