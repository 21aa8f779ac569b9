// Counter-based BERT masking (see mlm.h).
#include "worker/engine/data/mlm.h"

#include "absl/strings/str_cat.h"
#include "common/random.h"

namespace raptr {
namespace {

// Separates MLM draws from any other stream derived from the same job seed.
constexpr uint64_t kMlmDomain = 0x6D6C6D2D6D61736BULL;  // "mlm-mask"

// Uniform double in [0, 1) from the top 53 bits.
double Unit(uint64_t x) { return static_cast<double>(x >> 11) * 0x1.0p-53; }

}  // namespace

absl::Status ValidateMlmOptions(const MlmOptions& opts) {
  if (opts.vocab_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("mlm vocab_size must be positive, got ", opts.vocab_size));
  }
  if (opts.mask_id < 0 || opts.mask_id >= opts.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mlm mask_id ", opts.mask_id, " is outside the vocabulary [0, ", opts.vocab_size, ")"));
  }
  if (!(opts.select_prob >= 0.0 && opts.select_prob <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("mlm select_prob must be in [0, 1], got ", opts.select_prob));
  }
  return absl::OkStatus();
}

void ApplyMlmMask(const MlmOptions& opts, uint64_t seed, int64_t step, int rank_sequence_offset,
                  int B, int T, int32_t* inputs, int32_t* targets) {
  const uint64_t step_key = Mix64(Mix64(seed ^ kMlmDomain) + static_cast<uint64_t>(step));
  for (int b = 0; b < B; ++b) {
    const uint64_t seq = static_cast<uint64_t>(rank_sequence_offset) + static_cast<uint64_t>(b);
    const uint64_t seq_key = Mix64(step_key + seq);
    int32_t* in = inputs + static_cast<int64_t>(b) * T;
    int32_t* tg = targets + static_cast<int64_t>(b) * T;
    for (int t = 0; t < T; ++t) {
      const uint64_t h = Mix64(seq_key + static_cast<uint64_t>(t));
      if (Unit(h) >= opts.select_prob) {
        tg[t] = -1;
        continue;
      }
      tg[t] = in[t];
      const double action = Unit(Mix64(h + 1));
      if (action < 0.8) {
        in[t] = opts.mask_id;
      } else if (action < 0.9) {
        // Multiply-shift maps 32 random bits onto [0, vocab_size) without a modulo's bias
        // toward low ids beyond 2^-32.
        const uint64_t r = Mix64(h + 2) >> 32;
        in[t] = static_cast<int32_t>((r * static_cast<uint64_t>(opts.vocab_size)) >> 32);
      }
      // else: keep the original token; the model must still predict it.
    }
  }
}

}  // namespace raptr
