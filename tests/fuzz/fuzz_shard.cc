// libFuzzer target: the llm.c token-shard reader (worker/engine/data/shard.h). ReadShard only
// takes a path, so each input is written to one temporary file per process and read back.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "worker/engine/data/shard.h"

namespace {

const std::string& ShardPath() {
  static const std::string* path = [] {
    const char* dir = std::getenv("TMPDIR");
    auto* p = new std::string(std::string(dir != nullptr && *dir != '\0' ? dir : "/tmp") +
                              "/raptr_fuzz_shard." + std::to_string(::getpid()) + ".bin");
    std::atexit([] { ::unlink(ShardPath().c_str()); });
    return p;
  }();
  return *path;
}

void WriteInput(const uint8_t* data, size_t size) {
  const int fd = ::open(ShardPath().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::perror("fuzz_shard: open");
    std::abort();
  }
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) {
      std::perror("fuzz_shard: write");
      std::abort();
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  WriteInput(data, size);
  absl::StatusOr<std::vector<uint16_t>> tokens = raptr::ReadShard(ShardPath());
  if (!tokens.ok()) return 0;
  // Accepted: the header's count matched the file size, and the tokens are the bytes after it.
  const size_t header = static_cast<size_t>(raptr::kShardHeaderBytes);
  if (size < header || tokens->size() * sizeof(uint16_t) != size - header ||
      (size > header && std::memcmp(tokens->data(), data + header, size - header) != 0)) {
    std::fprintf(stderr, "fuzz_shard: accepted %zu bytes as %zu tokens that are not the input's\n",
                 size, tokens->size());
    std::abort();
  }
  return 0;
}
