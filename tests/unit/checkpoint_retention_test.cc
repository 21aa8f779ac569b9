// Checkpoint retention on a real directory tree: which records go, and that only the job's own
// superseded directories are removed.
#include "coordinator/checkpoint_retention.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace raptr {
namespace {

namespace fs = std::filesystem;

CheckpointRecord Record(const std::string& job_dir, int generation, int64_t step,
                        bool rejected = false) {
  CheckpointRecord record;
  record.step = step;
  record.path = absl::StrFormat("%s/generation-%d/checkpoints/step_%08d", job_dir, generation, step);
  record.rejected = rejected;
  return record;
}

std::vector<int64_t> StepsOf(const std::vector<CheckpointRecord>& records) {
  std::vector<int64_t> steps;
  for (const CheckpointRecord& r : records) steps.push_back(r.step);
  return steps;
}

TEST(CheckpointsToDrop, KeepsTheNewestUsableOnesAndRejectedOnesAmongThem) {
  const std::string dir = "/ckpt/job-1";
  std::vector<CheckpointRecord> all = {Record(dir, 1, 25), Record(dir, 1, 50),
                                       Record(dir, 2, 75, /*rejected=*/true), Record(dir, 2, 100),
                                       Record(dir, 2, 125)};
  // keep 2: 125 and 100 are the newest usable; the rejected 75 is older than both: it goes.
  EXPECT_EQ(StepsOf(CheckpointsToDrop(all, 2)), (std::vector<int64_t>{75, 50, 25}));
  // keep 3: 125, 100 and 50; the rejected 75 lies among them and stays, for the record.
  EXPECT_EQ(StepsOf(CheckpointsToDrop(all, 3)), (std::vector<int64_t>{25}));
  EXPECT_TRUE(CheckpointsToDrop(all, 0).empty()) << "0 keeps everything";
  EXPECT_TRUE(CheckpointsToDrop(all, 10).empty());
  EXPECT_TRUE(CheckpointsToDrop({}, 3).empty());
}

class RetentionFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            absl::StrCat("raptr_retention_test_", getpid(), "_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    job_dir_ = (root_ / "job-1").string();
  }
  void TearDown() override { fs::remove_all(root_); }

  // A checkpoint directory with a file in it.
  std::string Make(const std::string& path) {
    fs::create_directories(path);
    std::ofstream(path + "/model.safetensors") << "weights";
    return path;
  }

  fs::path root_;
  std::string job_dir_;
};

TEST_F(RetentionFilesTest, RemovesDroppedAndSupersededGenerationsOnly) {
  const CheckpointRecord g1_25 = Record(job_dir_, 1, 25), g1_50 = Record(job_dir_, 1, 50);
  const CheckpointRecord g2_75 = Record(job_dir_, 2, 75), g3_100 = Record(job_dir_, 3, 100);
  for (const auto* r : {&g1_25, &g1_50, &g2_75, &g3_100}) Make(r->path);
  // Written by generation 2 but never committed (a vote that failed), and one in progress in the
  // current generation: the first is superseded, the second is not touched.
  Make(absl::StrCat(job_dir_, "/generation-2/checkpoints/step_00000090"));
  const std::string in_flight = Make(absl::StrCat(job_dir_, "/generation-3/checkpoints/step_00000110.tmp"));
  // Another job's checkpoint, and a file outside the root.
  const std::string other = Make((root_ / "job-2/generation-1/checkpoints/step_00000025").string());

  // Keep 75 and 100 (generations 2 and 3); drop 25 and 50: generation 1 holds nothing kept.
  RetentionResult result =
      RemoveUnreferencedCheckpoints(job_dir_, {g1_25, g1_50}, {g2_75, g3_100}, /*current=*/3);
  EXPECT_TRUE(result.errors.empty()) << result.errors[0];
  EXPECT_FALSE(fs::exists(g1_25.path));
  EXPECT_FALSE(fs::exists(job_dir_ + "/generation-1"));
  EXPECT_TRUE(fs::exists(g2_75.path));
  EXPECT_TRUE(fs::exists(g3_100.path));
  EXPECT_TRUE(fs::exists(in_flight));
  EXPECT_TRUE(fs::exists(other));
  // Generation 2 holds a kept checkpoint, so its uncommitted step_90 stays until that goes.
  EXPECT_TRUE(fs::exists(job_dir_ + "/generation-2/checkpoints/step_00000090"));

  // Later 75 is dropped too: all of generation 2 goes.
  result = RemoveUnreferencedCheckpoints(job_dir_, {g2_75}, {g3_100}, 3);
  EXPECT_TRUE(result.errors.empty());
  EXPECT_FALSE(fs::exists(job_dir_ + "/generation-2"));
  EXPECT_TRUE(fs::exists(g3_100.path));
  EXPECT_TRUE(fs::exists(in_flight));
}

TEST_F(RetentionFilesTest, PathsOutsideTheJobDirectoryAreNeverRemoved) {
  const std::string outside = Make((root_ / "elsewhere/step_00000025").string());
  const std::string sibling = Make((root_ / "job-10/generation-1/checkpoints/step_1").string());
  CheckpointRecord evil;
  evil.step = 25;
  evil.path = outside;
  CheckpointRecord dotdot;
  dotdot.step = 26;
  dotdot.path = job_dir_ + "/../elsewhere";
  CheckpointRecord prefix;  // "job-10" starts with "job-1" but is another job
  prefix.step = 27;
  prefix.path = (root_ / "job-10").string();
  CheckpointRecord itself;
  itself.step = 28;
  itself.path = job_dir_;
  fs::create_directories(job_dir_);
  RetentionResult result =
      RemoveUnreferencedCheckpoints(job_dir_, {evil, dotdot, prefix, itself}, {}, 1);
  EXPECT_EQ(result.errors.size(), 4u);
  EXPECT_TRUE(result.removed.empty());
  EXPECT_TRUE(fs::exists(outside));
  EXPECT_TRUE(fs::exists(sibling));
  EXPECT_TRUE(fs::exists(job_dir_));
}

// A worker can write the checkpoint directories: a generation directory it replaced with a link
// must not lead the coordinator's delete outside the job's directory.
TEST_F(RetentionFilesTest, ALinkBelowTheJobDirectoryIsNotFollowed) {
  const std::string precious = Make((root_ / "precious/step_00000025").string());
  fs::create_directories(job_dir_);
  fs::create_directory_symlink(root_ / "precious", fs::path(job_dir_) / "generation-1");
  CheckpointRecord linked;
  linked.step = 25;
  linked.path = job_dir_ + "/generation-1/step_00000025";
  RetentionResult result = RemoveUnreferencedCheckpoints(job_dir_, {linked}, {}, 2);
  ASSERT_FALSE(result.errors.empty());
  EXPECT_NE(result.errors[0].find("is a symbolic link"), std::string::npos) << result.errors[0];
  EXPECT_TRUE(fs::exists(precious + "/model.safetensors"));
}

TEST_F(RetentionFilesTest, MissingDirectoriesAreNotErrors) {
  RetentionResult result =
      RemoveUnreferencedCheckpoints(job_dir_, {Record(job_dir_, 1, 25)}, {}, 2);
  EXPECT_TRUE(result.errors.empty());
  EXPECT_TRUE(result.removed.empty());
}

}  // namespace
}  // namespace raptr
