// Tests for BERT masking: selection rate, 80/10/10 split, purity and rank independence.
#include "worker/engine/data/mlm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace raptr {
namespace {

constexpr int kVocab = 1000;
constexpr int kMask = 3;

// Tokens never equal to kMask, so a masked position is recognisable.
std::vector<int32_t> Tokens(int n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = 100 + (i * 37) % 800;
  return v;
}

struct Masked {
  std::vector<int32_t> inputs, targets;
  bool operator==(const Masked&) const = default;
};

Masked Apply(const MlmOptions& opts, uint64_t seed, int64_t step, int offset, int B, int T,
             std::vector<int32_t> tokens) {
  Masked m{std::move(tokens), std::vector<int32_t>(static_cast<size_t>(B) * T, 12345)};
  ApplyMlmMask(opts, seed, step, offset, B, T, m.inputs.data(), m.targets.data());
  return m;
}

// |observed - expected| within 5 standard deviations of a binomial count.
void ExpectBinomial(int64_t count, int64_t trials, double p, const char* what) {
  const double mean = p * static_cast<double>(trials);
  const double sd = std::sqrt(static_cast<double>(trials) * p * (1 - p));
  EXPECT_NEAR(static_cast<double>(count), mean, 5 * sd)
      << what << ": " << count << " of " << trials << ", expected p=" << p;
}

TEST(MlmTest, SelectionRateAndSplit) {
  const MlmOptions opts{kVocab, kMask, 0.15};
  const int B = 16, T = 512;
  int64_t positions = 0, selected = 0, masked = 0, random = 0, kept = 0;
  for (int64_t step = 0; step < 20; ++step) {
    const std::vector<int32_t> orig = Tokens(B * T);
    const Masked m = Apply(opts, 77, step, 0, B, T, orig);
    for (size_t i = 0; i < orig.size(); ++i) {
      ++positions;
      if (m.targets[i] == -1) {
        EXPECT_EQ(m.inputs[i], orig[i]) << "unselected positions are untouched";
        continue;
      }
      ++selected;
      EXPECT_EQ(m.targets[i], orig[i]) << "targets hold the original token";
      EXPECT_GE(m.inputs[i], 0);
      EXPECT_LT(m.inputs[i], kVocab);
      if (m.inputs[i] == kMask) {
        ++masked;
      } else if (m.inputs[i] == orig[i]) {
        ++kept;
      } else {
        ++random;
      }
    }
  }
  ExpectBinomial(selected, positions, 0.15, "selected");
  // A random replacement equals the original with chance 1/kVocab: counted as kept.
  const double p_rand = 0.1 * (1.0 - 1.0 / kVocab);
  ExpectBinomial(masked, selected, 0.8, "masked");
  ExpectBinomial(random, selected, p_rand, "random");
  ExpectBinomial(kept, selected, 1.0 - 0.8 - p_rand, "kept");
}

TEST(MlmTest, RandomReplacementsCoverTheVocabulary) {
  const MlmOptions opts{50, kMask, 1.0};  // select everything
  const int B = 1, T = 20000;
  std::vector<int32_t> zeros(static_cast<size_t>(T), 0);
  const Masked m = Apply(opts, 5, 0, 0, B, T, zeros);
  std::vector<int> hist(50, 0);
  for (int32_t v : m.inputs) {
    ASSERT_GE(v, 0);
    ASSERT_LT(v, 50);
    ++hist[static_cast<size_t>(v)];
  }
  // About 10% of 20000 random ids over 50 values: every id appears.
  for (int id = 1; id < 50; ++id) {
    if (id == kMask) continue;
    EXPECT_GT(hist[static_cast<size_t>(id)], 5) << "id " << id;
  }
}

TEST(MlmTest, PureFunction) {
  const MlmOptions opts{kVocab, kMask, 0.15};
  const Masked a = Apply(opts, 1, 10, 0, 4, 64, Tokens(256));
  EXPECT_EQ(a, Apply(opts, 1, 10, 0, 4, 64, Tokens(256)));
  EXPECT_NE(a, Apply(opts, 2, 10, 0, 4, 64, Tokens(256))) << "seed changes the mask";
  EXPECT_NE(a, Apply(opts, 1, 11, 0, 4, 64, Tokens(256))) << "step changes the mask";
}

TEST(MlmTest, RankIndependent) {
  // One rank with 8 rows vs four ranks with 2 rows each at their offsets: identical.
  const MlmOptions opts{kVocab, kMask, 0.15};
  const int T = 64;
  const std::vector<int32_t> tokens = Tokens(8 * T);
  const Masked whole = Apply(opts, 3, 4, 0, 8, T, tokens);
  for (int rank = 0; rank < 4; ++rank) {
    std::vector<int32_t> slice(tokens.begin() + rank * 2 * T, tokens.begin() + (rank + 1) * 2 * T);
    const Masked part = Apply(opts, 3, 4, rank * 2, 2, T, slice);
    EXPECT_TRUE(
        std::equal(part.inputs.begin(), part.inputs.end(), whole.inputs.begin() + rank * 2 * T));
    EXPECT_TRUE(
        std::equal(part.targets.begin(), part.targets.end(), whole.targets.begin() + rank * 2 * T));
  }
  // Rows at different global indices get different masks.
  const Masked row0 = Apply(opts, 3, 4, 0, 1, T, Tokens(T));
  const Masked row1 = Apply(opts, 3, 4, 1, 1, T, Tokens(T));
  EXPECT_NE(row0.targets, row1.targets);
}

TEST(MlmTest, ZeroProbabilitySelectsNothing) {
  const MlmOptions opts{kVocab, kMask, 0.0};
  const Masked m = Apply(opts, 1, 1, 0, 2, 100, Tokens(200));
  EXPECT_EQ(m.inputs, Tokens(200));
  for (int32_t t : m.targets) EXPECT_EQ(t, -1);
}

TEST(MlmTest, ValidateOptions) {
  EXPECT_TRUE(ValidateMlmOptions(MlmOptions{kVocab, kMask, 0.15}).ok());
  EXPECT_FALSE(ValidateMlmOptions(MlmOptions{0, 0, 0.15}).ok());
  absl::Status st = ValidateMlmOptions(MlmOptions{kVocab, kVocab, 0.15});
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("mask_id"), std::string::npos) << st;
  st = ValidateMlmOptions(MlmOptions{kVocab, kMask, 1.5});
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("select_prob"), std::string::npos) << st;
}

}  // namespace
}  // namespace raptr
