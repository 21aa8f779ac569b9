// common/flags: repeatable flags keep every value in order; single flags keep the last.
#include "common/flags.h"

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

}  // namespace
}  // namespace raptr
