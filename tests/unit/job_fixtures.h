// Helpers for the tests of the coordinator's parts on a real store: a small valid job spec and a
// fresh scratch directory per test.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "raptr/v1/job.pb.h"

namespace raptr::testing {

// A valid 4-block GPT spec named `name` (it is never trained; the store validates it).
inline v1::JobSpec TinyJobSpec(const std::string& name = "tiny", int64_t steps = 100) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(R"(name: tiny
model: {layers: 4, d_model: 32, heads: 2, vocab_size: 256}
data: {train_shards: [train.bin], val_shards: [val.bin]}
training: {batch: 4, steps: 100}
)");
  EXPECT_TRUE(spec.ok()) << spec.status();
  spec->set_name(name);
  spec->mutable_training()->set_steps(steps);
  return *spec;
}

// An empty directory under the system's temp directory, named by `prefix`, this process and the
// running test (so parallel test processes never share one). The caller removes it.
inline std::filesystem::path FreshTestDir(const std::string& prefix) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      absl::StrCat(prefix, "_", getpid(), "_",
                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace raptr::testing
