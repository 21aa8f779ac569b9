// Replays the fuzz targets' seed corpora and crash reproducers (tests/fuzz/corpus/<target>/ and
// tests/fuzz/regressions/<target>/) through the same entry points in the ordinary test build, so
// a fixed crash stays fixed without clang or libFuzzer. Every input must come back as a value or
// an error, and the properties the fuzz targets check must hold (tests/fuzz/fuzz_*.cc).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/job_plan.h"
#include "common/job_spec.h"
#include "google/protobuf/util/message_differencer.h"
#include "tests/fuzz/fuzz_control.h"
#include "tests/unit/test_files.h"
#include "worker/engine/checkpoint/safetensors.h"
#include "worker/engine/data/shard.h"

namespace raptr {
namespace {

namespace fs = std::filesystem;

fs::path FuzzDir() { return testing::ExamplesDir().parent_path() / "tests" / "fuzz"; }

// Every file of the target's corpus and regressions, sorted.
std::vector<fs::path> Inputs(const std::string& target) {
  std::vector<fs::path> files;
  for (const char* kind : {"corpus", "regressions"}) {
    const fs::path dir = FuzzDir() / kind / target;
    if (!fs::is_directory(dir)) continue;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.is_regular_file() && entry.path().filename().string()[0] != '.') {
        files.push_back(entry.path());
      }
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string ReadBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(FuzzRegressionsTest, JobSpecInputs) {
  const std::vector<fs::path> inputs = Inputs("job_spec");
  ASSERT_FALSE(inputs.empty()) << "no inputs under " << FuzzDir();
  for (const fs::path& path : inputs) {
    SCOPED_TRACE(path.string());
    absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(ReadBytes(path));
    if (!spec.ok()) {
      EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << spec.status();
      continue;
    }
    absl::StatusOr<v1::JobSpec> reread = ParseJobSpecYaml(JobSpecToYaml(*spec));
    ASSERT_TRUE(reread.ok()) << reread.status() << "\n" << JobSpecToYaml(*spec);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*spec, *reread))
        << JobSpecToYaml(*spec);
    if (!ValidateJobSpec(*spec).ok()) continue;
    EXPECT_TRUE(OptimizerConfigFromJobSpec(*spec).ok());
    absl::StatusOr<PathScheduleConfig> schedule = PathScheduleFromJobSpec(*spec);
    ASSERT_TRUE(schedule.ok()) << schedule.status();
    if (spec->model().layers() <= 4096) {
      const PathPlan plan = PlanPath(*schedule, spec->model().layers(), spec->training().seed(), 0);
      EXPECT_EQ(static_cast<int>(plan.active.size()), spec->model().layers());
    }
  }
}

TEST(FuzzRegressionsTest, ShardInputs) {
  const std::vector<fs::path> inputs = Inputs("shard");
  ASSERT_FALSE(inputs.empty()) << "no inputs under " << FuzzDir();
  for (const fs::path& path : inputs) {
    SCOPED_TRACE(path.string());
    absl::StatusOr<std::vector<uint16_t>> tokens = ReadShard(path.string());
    if (!tokens.ok()) {
      EXPECT_EQ(tokens.status().code(), absl::StatusCode::kDataLoss) << tokens.status();
      continue;
    }
    const std::string bytes = ReadBytes(path);
    ASSERT_EQ(bytes.size(), kShardHeaderBytes + tokens->size() * sizeof(uint16_t));
    // (memcmp of an empty vector's null data() is undefined, even for 0 bytes: UBSan says so.)
    if (tokens->empty()) continue;
    EXPECT_EQ(std::memcmp(bytes.data() + kShardHeaderBytes, tokens->data(),
                          tokens->size() * sizeof(uint16_t)),
              0);
  }
}

TEST(FuzzRegressionsTest, SafetensorsInputs) {
  const std::vector<fs::path> inputs = Inputs("safetensors");
  ASSERT_FALSE(inputs.empty()) << "no inputs under " << FuzzDir();
  for (const fs::path& path : inputs) {
    SCOPED_TRACE(path.string());
    // From the file, and from memory as fuzz_safetensors does: the same verdict.
    absl::StatusOr<SafetensorsFile> from_file = ReadSafetensors(path.string());
    const std::string bytes = ReadBytes(path);
    std::vector<uint64_t> storage((bytes.size() + 7) / 8);
    if (!bytes.empty()) std::memcpy(storage.data(), bytes.data(), bytes.size());
    absl::StatusOr<SafetensorsFile> from_memory =
        ParseSafetensors(path.string(), std::move(storage), bytes.size());
    ASSERT_EQ(from_file.ok(), from_memory.ok())
        << from_file.status() << " vs " << from_memory.status();
    if (!from_file.ok()) {
      EXPECT_EQ(from_file.status().code(), absl::StatusCode::kDataLoss) << from_file.status();
      continue;
    }
    for (const std::string& name : from_file->names()) {
      const SafetensorsFile::Entry* e = from_file->Find(name);
      ASSERT_NE(e, nullptr) << name;
      EXPECT_EQ(static_cast<uint64_t>(e->numel()) * SafetensorsDtypeSize(e->dtype), e->nbytes)
          << name;
      EXPECT_LE(e->nbytes, bytes.size()) << name;
    }
  }
}

TEST(FuzzRegressionsTest, ControlInputs) {
  const std::vector<fs::path> inputs = Inputs("control");
  ASSERT_FALSE(inputs.empty()) << "no inputs under " << FuzzDir();
  for (const fs::path& path : inputs) {
    SCOPED_TRACE(path.string());
    // A broken property aborts (fuzz_control.cc): say which input it was first.
    std::fprintf(stderr, "fuzz_control input %s\n", path.c_str());
    const std::string bytes = ReadBytes(path);
    fuzz::RunControlInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }
}

}  // namespace
}  // namespace raptr
