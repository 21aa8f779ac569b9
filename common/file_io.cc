// POSIX file helpers (see file_io.h).
#include "common/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace raptr {

absl::Status ErrnoError(const std::string& what, const std::string& path, int err) {
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  return err == ENOENT ? absl::NotFoundError(msg) : absl::InternalError(msg);
}

ScopedFd::~ScopedFd() {
  if (fd_ >= 0) ::close(fd_);
}

int ScopedFd::Close() {
  const int rc = ::close(fd_);
  fd_ = -1;
  return rc;
}

absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path, errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> ReadUpTo(int fd, void* data, size_t size, const std::string& path) {
  char* p = static_cast<char*>(data);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::read(fd, p + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot read", path, errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

absl::Status SyncDirectory(const std::string& dir) {
  ScopedFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.get() < 0) return ErrnoError("cannot open directory", dir, errno);
  if (::fsync(dfd.get()) != 0) return ErrnoError("cannot fsync directory", dir, errno);
  return absl::OkStatus();
}

absl::Status WriteChunksAtomically(const std::string& path, const std::vector<FileChunk>& chunks) {
  // The temporary lives next to the target so rename() stays within one filesystem; the pid
  // keeps two processes writing the same file from sharing a temporary.
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  absl::Status st;
  {
    ScopedFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) return ErrnoError("cannot create", tmp, errno);
    for (const FileChunk& c : chunks) {
      st = WriteAll(fd.get(), c.data, c.size, tmp);
      if (!st.ok()) break;
    }
    if (st.ok() && ::fsync(fd.get()) != 0) st = ErrnoError("cannot fsync", tmp, errno);
    if (fd.Close() != 0 && st.ok()) st = ErrnoError("cannot close", tmp, errno);
  }
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    st = ErrnoError(absl::StrCat("cannot rename ", tmp, " to"), path, errno);
  }
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  std::string dir = std::filesystem::path(path).parent_path().string();
  return SyncDirectory(dir.empty() ? "." : dir);
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  return WriteChunksAtomically(path, {{contents.data(), contents.size()}});
}

}  // namespace raptr
