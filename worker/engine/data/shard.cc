// llm.c token shard reading and atomic writing (see shard.h).
#include "worker/engine/data/shard.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace raptr {
namespace {

// Shards are little-endian on disk; we copy raw memory, which is only right on such hosts.
static_assert(std::endian::native == std::endian::little, "shard I/O assumes a little-endian host");

absl::Status ErrnoError(const std::string& what, const std::string& path, int err) {
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  return err == ENOENT ? absl::NotFoundError(msg) : absl::InternalError(msg);
}

// Closes the descriptor on every return path.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now so the caller sees close()'s error (NFS reports write errors there).
  int Close() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path, errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Reads exactly `size` bytes unless the file ends first; returns the number read.
absl::StatusOr<size_t> ReadUpTo(int fd, void* data, size_t size, const std::string& path) {
  char* p = static_cast<char*>(data);
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::read(fd, p + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot read", path, errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

absl::Status WriteShard(const std::string& path, const std::vector<uint16_t>& tokens) {
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("shard ", path, ": ", tokens.size(),
                                                   " tokens exceed the header's int32 count"));
  }
  std::array<int32_t, kShardHeaderInts> header{};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(tokens.size());

  // The temporary lives next to the target so rename() stays within one filesystem.
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  {
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) return ErrnoError("cannot create", tmp, errno);
    absl::Status st = WriteAll(fd.get(), header.data(), sizeof(header), tmp);
    if (st.ok()) st = WriteAll(fd.get(), tokens.data(), tokens.size() * sizeof(uint16_t), tmp);
    if (st.ok() && ::fsync(fd.get()) != 0) st = ErrnoError("cannot fsync", tmp, errno);
    if (st.ok() && fd.Close() != 0) st = ErrnoError("cannot close", tmp, errno);
    if (!st.ok()) {
      ::unlink(tmp.c_str());
      return st;
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError(absl::StrCat("cannot rename ", tmp, " to"), path, err);
  }
  // Persist the directory entry too, so a crash after return cannot lose the rename.
  const std::string dir = DirName(path);
  Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.get() < 0) return ErrnoError("cannot open directory", dir, errno);
  if (::fsync(dfd.get()) != 0) return ErrnoError("cannot fsync directory", dir, errno);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint16_t>> ReadShard(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoError("cannot open shard", path, errno);
  struct stat sb;
  if (::fstat(fd.get(), &sb) != 0) return ErrnoError("cannot stat shard", path, errno);
  if (!S_ISREG(sb.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("shard ", path, " is not a regular file"));
  }
  const int64_t file_size = sb.st_size;

  std::array<int32_t, kShardHeaderInts> header{};
  absl::StatusOr<size_t> got = ReadUpTo(fd.get(), header.data(), sizeof(header), path);
  if (!got.ok()) return got.status();
  if (*got < sizeof(header)) {
    return absl::DataLossError(absl::StrCat("shard ", path, ": short header: expected ",
                                            kShardHeaderBytes, " bytes, found ", *got));
  }
  if (header[0] != kShardMagic) {
    return absl::DataLossError(
        absl::StrCat("shard ", path, ": bad magic: expected ", kShardMagic, ", found ", header[0]));
  }
  if (header[1] != kShardVersion) {
    return absl::DataLossError(absl::StrCat("shard ", path, ": unsupported version: expected ",
                                            kShardVersion, ", found ", header[1]));
  }
  const int64_t count = header[2];
  if (count < 0) {
    return absl::DataLossError(
        absl::StrCat("shard ", path, ": negative token count ", count, " in header"));
  }
  const int64_t expected_size = kShardHeaderBytes + count * static_cast<int64_t>(sizeof(uint16_t));
  if (file_size != expected_size) {
    return absl::DataLossError(
        absl::StrCat("shard ", path, ": header says ", count, " tokens, so expected ",
                     expected_size, " bytes, found ", file_size,
                     file_size < expected_size ? " (truncated)" : " (trailing data)"));
  }
  std::vector<uint16_t> tokens(static_cast<size_t>(count));
  const size_t want = tokens.size() * sizeof(uint16_t);
  got = ReadUpTo(fd.get(), tokens.data(), want, path);
  if (!got.ok()) return got.status();
  if (*got != want) {
    // The file shrank between fstat and read.
    return absl::DataLossError(absl::StrCat("shard ", path, ": expected ", count,
                                            " tokens, read only ", *got / sizeof(uint16_t)));
  }
  return tokens;
}

}  // namespace raptr
