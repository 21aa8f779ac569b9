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
#include "common/file_io.h"

namespace raptr {
// Shards are little-endian on disk; we copy raw memory, which is only right on such hosts.
static_assert(std::endian::native == std::endian::little, "shard I/O assumes a little-endian host");

absl::Status WriteShard(const std::string& path, const std::vector<uint16_t>& tokens) {
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("shard ", path, ": ", tokens.size(),
                                                   " tokens exceed the header's int32 count"));
  }
  std::array<int32_t, kShardHeaderInts> header{};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(tokens.size());

  return WriteChunksAtomically(
      path, {{header.data(), sizeof(header)}, {tokens.data(), tokens.size() * sizeof(uint16_t)}});
}

absl::StatusOr<std::vector<uint16_t>> ReadShard(const std::string& path) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
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
  // From here on the messages say what is wrong but never echo a value read from the file: job
  // errors reach every client (Job.message), and a path that is not a shard at all (a key, a
  // password file) would otherwise leak its bytes.
  const auto corrupt = [&path](const std::string& what) {
    return absl::DataLossError(absl::StrCat("shard ", path, ": ", what));
  };
  if (header[0] != kShardMagic) {
    return corrupt(absl::StrCat("not an llm.c token shard (it does not start with the magic ",
                                kShardMagic, ")"));
  }
  if (header[1] != kShardVersion) {
    return corrupt(
        absl::StrCat("unsupported header version (this build reads version ", kShardVersion, ")"));
  }
  const int64_t count = header[2];
  if (count < 0) return corrupt("the header's token count is negative");
  const int64_t expected_size = kShardHeaderBytes + count * static_cast<int64_t>(sizeof(uint16_t));
  if (file_size != expected_size) {
    return corrupt(absl::StrCat("its ", file_size,
                                " bytes do not hold the token count its header gives (truncated, "
                                "or trailing data)"));
  }
  std::vector<uint16_t> tokens(static_cast<size_t>(count));
  const size_t want = tokens.size() * sizeof(uint16_t);
  got = ReadUpTo(fd.get(), tokens.data(), want, path);
  if (!got.ok()) return got.status();
  if (*got != want) {
    // The file shrank between fstat and read.
    return corrupt(
        absl::StrCat("the file shrank to ", kShardHeaderBytes + *got, " bytes while being read"));
  }
  return tokens;
}

}  // namespace raptr
