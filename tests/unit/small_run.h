// A small training setup for tests: a synthetic corpus with structure and a 4-block model that
// trains in milliseconds.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/path_schedule.h"
#include "common/random.h"
#include "gtest/gtest.h"
#include "worker/engine/data/shard.h"
#include "worker/engine/trainer.h"

namespace raptr::testing {

namespace fs = std::filesystem;

inline std::string FreshDir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("raptr_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

// A small corpus with structure (a noisy repeating pattern), so the loss can fall.
inline std::vector<uint16_t> SyntheticTokens(size_t n, int vocab, uint64_t seed) {
  CounterRng rng(seed, 0);
  std::vector<uint16_t> t(n);
  for (size_t i = 0; i < n; ++i) {
    t[i] = rng.Uniform() < 0.8 ? static_cast<uint16_t>((i * 7) % (vocab - 4) + 4)
                               : static_cast<uint16_t>(rng.Below(vocab));
  }
  return t;
}

inline TrainerConfig SmallConfig(const std::string& dir, ModelKind kind) {
  TrainerConfig c;
  c.model.kind = kind;
  c.model.num_layers = 4;
  c.model.d_model = 32;
  c.model.num_heads = 4;
  c.model.d_ff = 64;
  c.model.vocab_size = 64;
  c.model.max_seq = 16;
  c.batch = 4;
  c.seq = 16;
  c.steps = 8;
  c.seed = 11;
  c.eval_batches = 2;
  c.log_every = 0;
  c.mask_id = 3;
  c.optimizer.lr = 3e-3;
  c.optimizer.warmup_steps = 2;
  c.optimizer.total_steps = c.steps;
  c.schedule = DefaultRaptrSchedule(c.model.num_layers, c.steps);
  const std::string train = dir + "/train.bin", val = dir + "/val.bin";
  EXPECT_TRUE(WriteShard(train, SyntheticTokens(5000, 64, 1)).ok());
  EXPECT_TRUE(WriteShard(val, SyntheticTokens(1000, 64, 2)).ok());
  c.train_shards = {train};
  c.val_shards = {val};
  return c;
}

}  // namespace raptr::testing
