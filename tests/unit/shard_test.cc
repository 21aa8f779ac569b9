// Tests for llm.c token shard reading and writing, including every corruption ReadShard rejects.
#include "worker/engine/data/shard.h"

#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace raptr {
namespace {

class ShardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("shard_test_", info->name(), "_", ::getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes a raw file: `header` ints padded to 256, then `tokens`.
  void WriteRaw(const std::string& path, std::vector<int32_t> header,
                const std::vector<uint16_t>& tokens) const {
    header.resize(kShardHeaderInts, 0);
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(header.data()), header.size() * sizeof(int32_t));
    out.write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * sizeof(uint16_t));
  }

  // The message of a failed read with the path taken out, to look for echoed file values.
  static std::string WithoutPath(const absl::Status& status, const std::string& path) {
    std::string msg(status.message());
    if (const size_t at = msg.find(path); at != std::string::npos) msg.erase(at, path.size());
    return msg;
  }

  std::filesystem::path dir_;
};

TEST_F(ShardTest, RoundTrip) {
  std::vector<uint16_t> tokens;
  for (int i = 0; i < 10000; ++i) tokens.push_back(static_cast<uint16_t>((i * 7919) % 65536));
  const std::string path = Path("a.bin");
  ASSERT_TRUE(WriteShard(path, tokens).ok());
  EXPECT_EQ(std::filesystem::file_size(path), kShardHeaderBytes + 2 * tokens.size());
  absl::StatusOr<std::vector<uint16_t>> got = ReadShard(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, tokens);
  // No temporary is left next to the shard.
  int files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir_)) ++files;
  EXPECT_EQ(files, 1);
}

TEST_F(ShardTest, HeaderMatchesLlmC) {
  const std::string path = Path("h.bin");
  ASSERT_TRUE(WriteShard(path, {1, 2, 3}).ok());
  std::ifstream in(path, std::ios::binary);
  std::array<int32_t, 3> h{};
  in.read(reinterpret_cast<char*>(h.data()), sizeof(h));
  EXPECT_EQ(h[0], 20240520);
  EXPECT_EQ(h[1], 1);
  EXPECT_EQ(h[2], 3);
}

TEST_F(ShardTest, EmptyShardRoundTrips) {
  const std::string path = Path("empty.bin");
  ASSERT_TRUE(WriteShard(path, {}).ok());
  absl::StatusOr<std::vector<uint16_t>> got = ReadShard(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->empty());
}

TEST_F(ShardTest, OverwriteReplacesContents) {
  const std::string path = Path("o.bin");
  ASSERT_TRUE(WriteShard(path, {1, 2, 3, 4}).ok());
  ASSERT_TRUE(WriteShard(path, {9}).ok());
  absl::StatusOr<std::vector<uint16_t>> got = ReadShard(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, std::vector<uint16_t>{9});
}

TEST_F(ShardTest, MissingFile) {
  const std::string path = Path("nope.bin");
  absl::StatusOr<std::vector<uint16_t>> got = ReadShard(path);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(got.status().message().find(path), std::string::npos) << got.status();
}

TEST_F(ShardTest, ShortHeader) {
  const std::string path = Path("short.bin");
  {
    std::ofstream out(path, std::ios::binary);
    const int32_t h[2] = {kShardMagic, kShardVersion};
    out.write(reinterpret_cast<const char*>(h), sizeof(h));
  }
  absl::StatusOr<std::vector<uint16_t>> got = ReadShard(path);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(got.status().message().find(path), std::string::npos) << got.status();
  EXPECT_NE(got.status().message().find("header"), std::string::npos) << got.status();
}

TEST_F(ShardTest, WrongMagic) {
  const std::string path = Path("magic.bin");
  WriteRaw(path, {12345, kShardVersion, 2}, {1, 2});
  absl::StatusOr<std::vector<uint16_t>> got = ReadShard(path);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  const std::string msg(got.status().message());
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("20240520"), std::string::npos) << msg;
  // What the file holds instead is not echoed (job errors reach every client).
  EXPECT_EQ(WithoutPath(got.status(), path).find("12345"), std::string::npos) << msg;
}

TEST_F(ShardTest, AFileThatIsNoShardLeaksNoneOfItsBytes) {
  // /etc/passwd named as a shard used to come back as "bad magic: expected 20240520, found
  // 1953460082" ("root" as an int32) to any client reading the job.
  const std::string path = Path("passwd");
  std::string text;
  while (text.size() < 4 * kShardHeaderBytes) text += "root:x:0:0:root:/root:/bin/bash\n";
  std::ofstream(path, std::ios::binary) << text;
  absl::StatusOr<std::vector<uint16_t>> got = ReadShard(path);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  const std::string msg = WithoutPath(got.status(), path);
  EXPECT_EQ(msg.find("root"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("1953460082"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not an llm.c token shard"), std::string::npos) << msg;
}

TEST_F(ShardTest, WrongVersion) {
  const std::string path = Path("version.bin");
  WriteRaw(path, {kShardMagic, 7, 2}, {1, 2});
  absl::StatusOr<std::vector<uint16_t>> got = ReadShard(path);
  ASSERT_FALSE(got.ok());
  const std::string msg(got.status().message());
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("reads version 1"), std::string::npos) << msg;
  EXPECT_EQ(WithoutPath(got.status(), path).find("7"), std::string::npos) << msg;
}

TEST_F(ShardTest, TruncatedTokens) {
  const std::string path = Path("trunc.bin");
  ASSERT_TRUE(WriteShard(path, std::vector<uint16_t>(100, 5)).ok());
  std::filesystem::resize_file(path, kShardHeaderBytes + 2 * 60 + 1);
  absl::StatusOr<std::vector<uint16_t>> got = ReadShard(path);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  const std::string msg(got.status().message());
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  // The file's size (its metadata) is named; the header's count (its content) is not.
  EXPECT_NE(msg.find(absl::StrCat(kShardHeaderBytes + 121, " bytes")), std::string::npos) << msg;
  EXPECT_EQ(WithoutPath(got.status(), path).find("100"), std::string::npos) << msg;
}

TEST_F(ShardTest, TrailingBytes) {
  const std::string path = Path("trail.bin");
  WriteRaw(path, {kShardMagic, kShardVersion, 2}, {1, 2, 3});
  absl::StatusOr<std::vector<uint16_t>> got = ReadShard(path);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find(path), std::string::npos) << got.status();
}

TEST_F(ShardTest, NegativeCount) {
  const std::string path = Path("neg.bin");
  WriteRaw(path, {kShardMagic, kShardVersion, -4}, {});
  absl::StatusOr<std::vector<uint16_t>> got = ReadShard(path);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find(path), std::string::npos) << got.status();
  EXPECT_NE(got.status().message().find("negative"), std::string::npos) << got.status();
  EXPECT_EQ(WithoutPath(got.status(), path).find("-4"), std::string::npos) << got.status();
}

TEST_F(ShardTest, DirectoryIsRejected) {
  absl::StatusOr<std::vector<uint16_t>> got = ReadShard(dir_.string());
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find(dir_.string()), std::string::npos) << got.status();
}

TEST_F(ShardTest, WriteIntoMissingDirectoryFails) {
  const std::string path = Path("no/such/dir/x.bin");
  absl::Status st = WriteShard(path, {1});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("no/such/dir"), std::string::npos) << st;
}

}  // namespace
}  // namespace raptr
