// llm.c token shard files: a 256 x int32 header (magic, version, token count) then uint16 tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace raptr {

// The header layout of llm.c's data shards (dev/data/data_common.py), so shards move both ways.
inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr int kShardHeaderInts = 256;
inline constexpr int64_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);

// Writes `tokens` to `path` atomically: a temporary file in the same directory is written,
// fsynced and renamed over `path`, so readers see either the old or the complete new shard.
// Fails if the token count does not fit the header's int32.
absl::Status WriteShard(const std::string& path, const std::vector<uint16_t>& tokens);

// Reads a whole shard. NOT_FOUND for a missing file; DATA_LOSS (naming the path, what is wrong
// and the expected value) for a short header, a wrong magic or version, or a size that does not
// match the header's token count. No message echoes a value read from the file (a job's errors
// reach every client): only the file's size and the format's constants.
absl::StatusOr<std::vector<uint16_t>> ReadShard(const std::string& path);

}  // namespace raptr
