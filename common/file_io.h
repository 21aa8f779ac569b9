// POSIX file helpers shared by every writer of durable files (shards, safetensors, checkpoints).
//
// Errors are absl::Status values naming the path and the OS's reason. The atomic writers replace
// a file by writing a temporary beside it, fsyncing it, renaming it over the target and fsyncing
// the directory, so a crash leaves either the old file or the new one, never a mix.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace raptr {

// NotFound for ENOENT, Internal otherwise: "<what> <path>: <strerror(err)>".
absl::Status ErrnoError(const std::string& what, const std::string& path, int err);

// Owns a file descriptor; closes it on every return path.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd();
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }
  // Closes now so the caller sees close()'s error (NFS reports write errors there).
  int Close();

 private:
  int fd_;
};

// Writes all `size` bytes, retrying short writes and EINTR.
absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path);
// Reads until `size` bytes or end of file; returns how many were read.
absl::StatusOr<size_t> ReadUpTo(int fd, void* data, size_t size, const std::string& path);

struct FileChunk {
  const void* data;
  size_t size;
};
// Replaces `path` with the concatenated chunks atomically (see the file comment).
absl::Status WriteChunksAtomically(const std::string& path, const std::vector<FileChunk>& chunks);
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);
// fsyncs a directory so renames and creations inside it survive a crash.
absl::Status SyncDirectory(const std::string& dir);

}  // namespace raptr
