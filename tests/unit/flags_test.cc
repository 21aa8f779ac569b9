// common/flags (CLI11 underneath): repeatable flags keep every value in order; single flags keep
// the last; booleans take --x, --x=1/0/true/false/yes/no/on/off and --no-x; environment
// fallbacks and ranges; unknown flags named with the nearest known one.
#include "common/flags.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace raptr {
namespace {

absl::Status ParseArgs(Flags& flags, std::vector<std::string> args) {
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  return flags.Parse(static_cast<int>(argv.size()), argv.data(), 0);
}

TEST(FlagsTest, RepeatedFlagKeepsEveryValueInOrder) {
  Flags flags;
  flags.DefineRepeated("data-root", "a root");
  flags.Define("listen", "x", "address");
  ASSERT_TRUE(ParseArgs(flags, {"--data-root=/a", "--listen", "y", "--data-root", "/b"}).ok());
  EXPECT_EQ(flags.GetAll("data-root"), (std::vector<std::string>{"/a", "/b"}));
  EXPECT_EQ(flags.Get("listen"), "y");
  EXPECT_TRUE(flags.IsSet("data-root"));
  EXPECT_NE(flags.Usage().find("--data-root"), std::string::npos);
  EXPECT_NE(flags.Usage().find("(repeatable)"), std::string::npos);
}

TEST(FlagsTest, RepeatedFlagAbsentIsEmpty) {
  Flags flags;
  flags.DefineRepeated("data-root", "a root");
  ASSERT_TRUE(ParseArgs(flags, {}).ok());
  EXPECT_TRUE(flags.GetAll("data-root").empty());
  EXPECT_FALSE(flags.IsSet("data-root"));
}

TEST(FlagsTest, UnknownFlagIsNamed) {
  Flags flags;
  absl::Status parsed = ParseArgs(flags, {"--nope=1"});
  EXPECT_FALSE(parsed.ok());
  EXPECT_NE(parsed.message().find("--nope"), std::string_view::npos);
}

TEST(FlagsTest, BooleansTakeEverySpellingAndNegation) {
  for (const auto& [arg, want] : std::vector<std::pair<std::string, bool>>{
           {"--exit-after-job", true},       {"--exit-after-job=1", true},
           {"--exit-after-job=true", true},  {"--exit-after-job=yes", true},
           {"--exit-after-job=on", true},    {"--exit-after-job=0", false},
           {"--exit-after-job=false", false}, {"--exit-after-job=no", false},
           {"--no-exit-after-job", false}}) {
    Flags flags;
    flags.Define("exit-after-job", arg == "--no-exit-after-job" ? "true" : "false", "exit");
    ASSERT_TRUE(ParseArgs(flags, {arg}).ok()) << arg;
    EXPECT_EQ(flags.Get("exit-after-job"), want ? "true" : "false") << arg;
    EXPECT_EQ(*flags.GetBool("exit-after-job"), want) << arg;
    EXPECT_TRUE(flags.IsSet("exit-after-job"));
  }
  Flags flags;
  flags.Define("resume", "true", "resume");
  absl::Status bad = ParseArgs(flags, {"--resume=maybe"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("--resume"), std::string_view::npos) << bad;
  EXPECT_NE(flags.Usage().find("--[no-]resume"), std::string::npos) << flags.Usage();
}

TEST(FlagsTest, HelpIsAFlagOfItsOwn) {
  for (const char* arg : {"--help", "-h"}) {
    Flags flags;
    flags.Define("help", "false", "print this help");
    ASSERT_TRUE(ParseArgs(flags, {arg}).ok()) << arg;
    EXPECT_EQ(flags.Get("help"), "true") << arg;
  }
}

TEST(FlagsTest, LastValueWinsAndValuesMayLookNegative) {
  Flags flags;
  flags.Define("stop-after", "-1", "step");
  flags.Define("lr", "1e-3", "lr");
  ASSERT_TRUE(ParseArgs(flags, {"--stop-after", "5", "--stop-after=7", "--lr", "-2.5", "pos"}).ok());
  EXPECT_EQ(flags.Get("stop-after"), "7");
  EXPECT_EQ(*flags.GetDouble("lr"), -2.5);
  EXPECT_EQ(flags.positional(), (std::vector<std::string>{"pos"}));
}

TEST(FlagsTest, EnvironmentFallsBehindTheCommandLine) {
  ::setenv("RAPTR_FLAGS_TEST_ADDR", "10.0.0.1:5", 1);
  {
    Flags flags;
    flags.Define("coordinator", "127.0.0.1:50051", "address");
    flags.Env("coordinator", "RAPTR_FLAGS_TEST_ADDR");
    ASSERT_TRUE(ParseArgs(flags, {}).ok());
    EXPECT_EQ(flags.Get("coordinator"), "10.0.0.1:5");
    EXPECT_TRUE(flags.IsSet("coordinator"));
    EXPECT_NE(flags.Usage().find("$RAPTR_FLAGS_TEST_ADDR"), std::string::npos);
  }
  {
    Flags flags;
    flags.Define("coordinator", "127.0.0.1:50051", "address");
    flags.Env("coordinator", "RAPTR_FLAGS_TEST_ADDR");
    ASSERT_TRUE(ParseArgs(flags, {"--coordinator=h:1"}).ok());
    EXPECT_EQ(flags.Get("coordinator"), "h:1");
  }
  ::unsetenv("RAPTR_FLAGS_TEST_ADDR");
  Flags flags;
  flags.Define("coordinator", "127.0.0.1:50051", "address");
  flags.Env("coordinator", "RAPTR_FLAGS_TEST_ADDR");
  ASSERT_TRUE(ParseArgs(flags, {}).ok());
  EXPECT_EQ(flags.Get("coordinator"), "127.0.0.1:50051");
  EXPECT_FALSE(flags.IsSet("coordinator"));
}

TEST(FlagsTest, RangesAreChecked) {
  Flags flags;
  flags.Define("threads", "1", "threads");
  flags.Range("threads", 1, 1024);
  absl::Status low = ParseArgs(flags, {"--threads=0"});
  ASSERT_FALSE(low.ok());
  EXPECT_NE(low.message().find("--threads"), std::string_view::npos) << low;
  EXPECT_NE(low.message().find("[1, 1024]"), std::string_view::npos) << low;
  Flags ok;
  ok.Define("threads", "1", "threads");
  ok.Range("threads", 1, 1024);
  ASSERT_TRUE(ParseArgs(ok, {"--threads", "8"}).ok());
  EXPECT_EQ(*ok.GetInt32("threads"), 8);
  Flags nan;
  nan.Define("threads", "1", "threads");
  nan.Range("threads", 1, 1024);
  EXPECT_FALSE(ParseArgs(nan, {"--threads=eight"}).ok());
}

TEST(FlagsTest, TyposGetTheNearestName) {
  Flags flags;
  flags.Define("exit-after-job", "false", "exit");
  absl::Status typo = ParseArgs(flags, {"--exit-after-jbo"});
  ASSERT_FALSE(typo.ok());
  EXPECT_NE(typo.message().find("did you mean --exit-after-job?"), std::string_view::npos) << typo;
  Flags value;
  value.Define("listen", "x", "address");
  absl::Status missing = ParseArgs(value, {"--listen"});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find("--listen"), std::string_view::npos) << missing;
}

}  // namespace
}  // namespace raptr
