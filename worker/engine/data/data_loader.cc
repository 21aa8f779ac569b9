// Deterministic, regrouping-invariant batching over token shards (see data_loader.h).
#include "worker/engine/data/data_loader.h"

#include <bit>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/random.h"
#include "common/status.h"
#include "worker/engine/data/shard.h"

namespace raptr {
namespace {

// Separates the data order from any other stream derived from the same job seed.
constexpr uint64_t kPermDomain = 0x646174612D6F7264ULL;  // "data-ord"
// Luby-Rackoff: 4 rounds already give a pseudo-random permutation; 6 for margin on tiny domains.
constexpr int kFeistelRounds = 6;

}  // namespace

absl::Status ValidateBatchSpec(const BatchSpec& s) {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError(what); };
  if (s.B <= 0) return bad(absl::StrCat("batch B must be positive, got ", s.B));
  if (s.T <= 0) return bad(absl::StrCat("sequence length T must be positive, got ", s.T));
  if (s.world <= 0) return bad(absl::StrCat("world must be positive, got ", s.world));
  if (s.rank < 0 || s.rank >= s.world) {
    return bad(absl::StrCat("rank ", s.rank, " is outside [0, world=", s.world, ")"));
  }
  if (s.micro_batches <= 0) {
    return bad(absl::StrCat("micro_batches must be positive, got ", s.micro_batches));
  }
  if (s.micro < 0 || s.micro >= s.micro_batches) {
    return bad(
        absl::StrCat("micro ", s.micro, " is outside [0, micro_batches=", s.micro_batches, ")"));
  }
  if (s.step < 0) return bad(absl::StrCat("step must be non-negative, got ", s.step));
  if (s.global_batch() > std::numeric_limits<int32_t>::max()) {
    return bad(
        absl::StrCat("global batch world*micro_batches*B = ", s.global_batch(), " is too large"));
  }
  return absl::OkStatus();
}

uint64_t PermuteIndex(uint64_t seed, uint64_t epoch, uint64_t n, uint64_t i) {
  if (n <= 1) return 0;
  // Smallest even bit count whose power of two covers [0, n): the domain is < 4n, so cycle
  // walking takes under 4 rounds on average.
  int half = (std::bit_width(n - 1) + 1) / 2;
  if (half < 1) half = 1;
  const uint64_t mask = (uint64_t{1} << half) - 1;
  uint64_t keys[kFeistelRounds];
  const uint64_t base = Mix64(Mix64(seed ^ kPermDomain) + epoch);
  for (int r = 0; r < kFeistelRounds; ++r) keys[r] = Mix64(base + static_cast<uint64_t>(r));
  uint64_t x = i;
  do {
    uint64_t left = x >> half;
    uint64_t right = x & mask;
    for (int r = 0; r < kFeistelRounds; ++r) {
      const uint64_t next = left ^ (Mix64(right ^ keys[r]) & mask);
      left = right;
      right = next;
    }
    x = (left << half) | right;
  } while (x >= n);
  return x;
}

absl::StatusOr<TokenDataset> TokenDataset::Open(const std::vector<std::string>& shard_paths) {
  if (shard_paths.empty()) return absl::InvalidArgumentError("no token shards given");
  std::vector<uint16_t> all;
  for (const std::string& path : shard_paths) {
    ASSIGN_OR_RETURN(std::vector<uint16_t> tokens, ReadShard(path));
    if (all.empty()) {
      all = std::move(tokens);
    } else {
      all.insert(all.end(), tokens.begin(), tokens.end());
    }
  }
  return TokenDataset(std::move(all));
}

int64_t TokenDataset::NumWindows(int T) const {
  if (T <= 0 || num_tokens() < 1) return 0;
  return (num_tokens() - 1) / T;
}

absl::Status TokenDataset::CheckFits(int T) const {
  if (NumWindows(T) < 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dataset has ", num_tokens(), " tokens: need at least T+1 = ", T + 1, " for one sequence"));
  }
  return absl::OkStatus();
}

void TokenDataset::CopyWindow(int64_t window, int T, int32_t* inputs, int32_t* targets) const {
  const uint16_t* src = tokens_.data() + window * T;
  for (int t = 0; t < T; ++t) {
    inputs[t] = src[t];
    targets[t] = src[t + 1];
  }
}

absl::Status TokenDataset::GetBatch(const BatchSpec& spec, int32_t* inputs,
                                    int32_t* targets) const {
  RETURN_IF_ERROR(ValidateBatchSpec(spec));
  RETURN_IF_ERROR(CheckFits(spec.T));
  const uint64_t windows = static_cast<uint64_t>(NumWindows(spec.T));
  const uint64_t first =
      static_cast<uint64_t>(spec.step) * static_cast<uint64_t>(spec.global_batch()) +
      static_cast<uint64_t>(spec.sequence_offset());
  for (int b = 0; b < spec.B; ++b) {
    const uint64_t g = first + static_cast<uint64_t>(b);
    const uint64_t window = PermuteIndex(spec.seed, g / windows, windows, g % windows);
    const int64_t row = int64_t{b} * spec.T;
    CopyWindow(static_cast<int64_t>(window), spec.T, inputs + row, targets + row);
  }
  return absl::OkStatus();
}

absl::Status TokenDataset::GetMlmBatch(const BatchSpec& spec, const MlmOptions& opts,
                                       int32_t* inputs, int32_t* targets) const {
  RETURN_IF_ERROR(ValidateMlmOptions(opts));
  RETURN_IF_ERROR(GetBatch(spec, inputs, targets));
  ApplyMlmMask(opts, spec.seed, spec.step, static_cast<int>(spec.sequence_offset()), spec.B, spec.T,
               inputs, targets);
  return absl::OkStatus();
}

int64_t TokenDataset::NumEvalBatches(int B, int T) const {
  if (B <= 0) return 0;
  const int64_t windows = NumWindows(T);
  if (windows == 0) return 0;
  return windows < B ? 1 : windows / B;
}

absl::Status TokenDataset::GetEvalBatch(int64_t index, int B, int T, int32_t* inputs,
                                        int32_t* targets) const {
  if (B <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("eval batch B must be positive, got ", B));
  }
  if (T <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval sequence length T must be positive, got ", T));
  }
  if (index < 0 || index > std::numeric_limits<int64_t>::max() / B - 1) {
    return absl::InvalidArgumentError(absl::StrCat("eval batch index ", index, " is out of range"));
  }
  RETURN_IF_ERROR(CheckFits(T));
  const int64_t windows = NumWindows(T);
  for (int b = 0; b < B; ++b) {
    const int64_t window = (index * B + b) % windows;
    const int64_t row = int64_t{b} * T;
    CopyWindow(window, T, inputs + row, targets + row);
  }
  return absl::OkStatus();
}

}  // namespace raptr
