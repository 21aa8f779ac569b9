// DataRoots and ConfineJobSpec on real directories and real symlinks: what escapes a root (`..`,
// absolute paths, symlinks to files and through directories, /data2 next to /data) and what stays
// inside (symlinks within, files not created yet, a root that is itself a symlink).
#include "common/data_roots.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "google/protobuf/descriptor.h"
#include "tests/unit/job_fixtures.h"

namespace raptr {
namespace {

namespace fs = std::filesystem;

class DataRootsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Canonical, so expected resolutions compare equal even when /tmp is itself a symlink.
    dir_ = fs::canonical(testing::FreshTestDir("raptr_data_roots_test"));
    root_ = dir_ / "data";
    outside_ = dir_ / "outside";
    fs::create_directories(root_ / "sub");
    fs::create_directories(outside_);
    Touch(root_ / "train.bin");
    Touch(root_ / "sub" / "val.bin");
    Touch(outside_ / "secret");
  }
  void TearDown() override { fs::remove_all(dir_); }

  static void Touch(const fs::path& path) { std::ofstream(path) << "x"; }

  DataRoots Roots(const std::vector<std::string>& roots) {
    absl::StatusOr<DataRoots> created = DataRoots::Create(roots);
    EXPECT_TRUE(created.ok()) << created.status();
    return created.ok() ? *created : DataRoots();
  }

  // INVALID_ARGUMENT whose message starts with `field` and holds `text`.
  static ::testing::AssertionResult Refused(const absl::StatusOr<std::string>& got,
                                            const std::string& field, const std::string& text) {
    if (got.ok()) return ::testing::AssertionFailure() << "accepted as " << *got;
    const std::string message(got.status().message());
    if (got.status().code() != absl::StatusCode::kInvalidArgument ||
        message.rfind(absl::StrCat(field, ": "), 0) != 0 ||
        message.find(text) == std::string::npos) {
      return ::testing::AssertionFailure() << got.status();
    }
    return ::testing::AssertionSuccess();
  }

  fs::path dir_, root_, outside_;
};

TEST_F(DataRootsTest, AFileInsideResolvesToItsCanonicalPath) {
  const DataRoots roots = Roots({root_.string()});
  EXPECT_FALSE(roots.unconfined());
  EXPECT_EQ(roots.roots(), std::vector<std::string>{root_.string()});
  EXPECT_EQ(roots.Resolve((root_ / "train.bin").string(), "f").value(),
            (root_ / "train.bin").string());
  // A `..` that stays inside is fine, and the result is normalised.
  EXPECT_EQ(roots.Resolve((root_ / "sub" / ".." / "train.bin").string(), "f").value(),
            (root_ / "train.bin").string());
  // The root itself is inside (opening it as a shard then fails as "not a regular file").
  EXPECT_EQ(roots.Resolve(root_.string(), "f").value(), root_.string());
}

TEST_F(DataRootsTest, DotDotOutIsRefusedNamingFieldPathResolutionAndRoots) {
  const DataRoots roots = Roots({root_.string()});
  const std::string path = (root_ / ".." / "outside" / "secret").string();
  const absl::StatusOr<std::string> got = roots.Resolve(path, "data.train_shards[2]");
  EXPECT_TRUE(Refused(got, "data.train_shards[2]",
                      absl::StrCat("\"", path, "\" is outside the data roots (", root_.string(),
                                   ")")));
  // Never what it resolved to: a reader of the job must not learn this machine's files.
  EXPECT_EQ(got.status().message().find((outside_ / "secret").string()), std::string_view::npos);
  // Relative to a root-internal directory that does not exist yet: judged lexically.
  EXPECT_TRUE(Refused(roots.Resolve((root_ / "nope" / ".." / ".." / "outside").string(), "f"), "f",
                      "outside the data roots"));
  // Through a file: the prefix stops at train.bin, and the `..`s climb out.
  EXPECT_TRUE(Refused(roots.Resolve((root_ / "train.bin" / ".." / ".." / "outside").string(), "f"),
                      "f", "outside the data roots"));
}

TEST_F(DataRootsTest, AbsolutePathsOutsideAreRefused) {
  const DataRoots roots = Roots({root_.string()});
  EXPECT_TRUE(Refused(roots.Resolve("/etc/passwd", "data.val_shards[0]"), "data.val_shards[0]",
                      "\"/etc/passwd\" is outside the data roots"));
  EXPECT_TRUE(Refused(roots.Resolve((outside_ / "secret").string(), "f"), "f", "outside"));
  EXPECT_TRUE(Refused(roots.Resolve("/", "f"), "f", "outside"));
}

TEST_F(DataRootsTest, SymlinksPointingOutAreRefused) {
  const DataRoots roots = Roots({root_.string()});
  fs::create_symlink(outside_ / "secret", root_ / "file-link.bin");
  fs::create_symlink(outside_, root_ / "dir-link");
  fs::create_symlink("/etc/passwd", root_ / "passwd.bin");
  const absl::StatusOr<std::string> file_link = roots.Resolve((root_ / "file-link.bin").string(), "f");
  EXPECT_TRUE(Refused(file_link, "f", "is outside the data roots"));
  // The link's target is not in the error (it is in the log).
  EXPECT_EQ(file_link.status().message().find("secret"), std::string_view::npos);
  EXPECT_TRUE(Refused(roots.Resolve((root_ / "dir-link" / "secret").string(), "f"), "f",
                      "is outside the data roots"));
  // Through the directory link to a file that does not exist: still outside.
  EXPECT_TRUE(Refused(roots.Resolve((root_ / "dir-link" / "later.bin").string(), "f"), "f",
                      "outside the data roots"));
  EXPECT_TRUE(
      Refused(roots.Resolve((root_ / "passwd.bin").string(), "f"), "f", "outside the data roots"));
  EXPECT_EQ(roots.Resolve((root_ / "passwd.bin").string(), "f").status().message().find("/etc"),
            std::string_view::npos);
  // A dangling link inside that points out: judged by its target too.
  fs::create_symlink(outside_ / "not-yet", root_ / "dangling.bin");
  EXPECT_TRUE(Refused(roots.Resolve((root_ / "dangling.bin").string(), "f"), "f", "outside"));
}

TEST_F(DataRootsTest, SymlinksInsidePointingInsideAreAllowed) {
  const DataRoots roots = Roots({root_.string()});
  fs::create_symlink(root_ / "sub" / "val.bin", root_ / "val-link.bin");
  fs::create_symlink("sub", root_ / "sub-link");  // relative target
  EXPECT_EQ(roots.Resolve((root_ / "val-link.bin").string(), "f").value(),
            (root_ / "sub" / "val.bin").string());
  EXPECT_EQ(roots.Resolve((root_ / "sub-link" / "val.bin").string(), "f").value(),
            (root_ / "sub" / "val.bin").string());
  // A dangling link resolves to its target, created later.
  fs::create_symlink(root_ / "sub" / "later.bin", root_ / "later-link.bin");
  EXPECT_EQ(roots.Resolve((root_ / "later-link.bin").string(), "f").value(),
            (root_ / "sub" / "later.bin").string());
}

TEST_F(DataRootsTest, SymlinkLoopsAreRefused) {
  const DataRoots roots = Roots({root_.string()});
  fs::create_symlink(root_ / "b", root_ / "a");
  fs::create_symlink(root_ / "a", root_ / "b");
  EXPECT_TRUE(Refused(roots.Resolve((root_ / "a").string(), "f"), "f", "cannot be resolved"));
  // A chain of dangling links longer than the kernel follows.
  for (int i = 0; i < 45; ++i) {
    fs::create_symlink(root_ / absl::StrCat("c", i + 1), root_ / absl::StrCat("c", i));
  }
  EXPECT_TRUE(Refused(roots.Resolve((root_ / "c0").string(), "f"), "f", "cannot be resolved"));
}

TEST_F(DataRootsTest, ARootIsAPrefixByComponentsNotByCharacters) {
  fs::create_directories(dir_ / "data2");
  Touch(dir_ / "data2" / "train.bin");
  const DataRoots roots = Roots({root_.string()});
  EXPECT_TRUE(Refused(roots.Resolve((dir_ / "data2" / "train.bin").string(), "f"), "f",
                      "outside the data roots"));
  // A root given with a trailing slash is the same root.
  const DataRoots slashed = Roots({root_.string() + "/"});
  EXPECT_EQ(slashed.roots(), std::vector<std::string>{root_.string()});
  EXPECT_TRUE(
      Refused(slashed.Resolve((dir_ / "data2" / "train.bin").string(), "f"), "f", "outside"));
}

TEST_F(DataRootsTest, FilesNotCreatedYetAreJudgedByWhereTheyWouldBe) {
  // The coordinator may not see the workers' files: a path under a root is allowed at submit
  // even when it does not exist (the worker checks again before opening).
  const DataRoots roots = Roots({root_.string()});
  EXPECT_EQ(roots.Resolve((root_ / "later" / "train.bin").string(), "f").value(),
            (root_ / "later" / "train.bin").string());
  EXPECT_TRUE(Refused(roots.Resolve((dir_ / "elsewhere" / "x.bin").string(), "f"), "f", "outside"));
}

TEST_F(DataRootsTest, ARootThatIsASymlinkIsItsTarget) {
  fs::create_symlink(root_, dir_ / "data-link");
  const DataRoots roots = Roots({(dir_ / "data-link").string()});
  EXPECT_EQ(roots.roots(), std::vector<std::string>{root_.string()});
  EXPECT_EQ(roots.Resolve((dir_ / "data-link" / "train.bin").string(), "f").value(),
            (root_ / "train.bin").string());
  EXPECT_EQ(roots.Resolve((root_ / "train.bin").string(), "f").value(),
            (root_ / "train.bin").string());
}

TEST_F(DataRootsTest, RelativePathsResolveAgainstTheWorkingDirectory) {
  const DataRoots roots = Roots({root_.string()});
  const fs::path relative = fs::relative(root_ / "train.bin", fs::current_path());
  ASSERT_TRUE(relative.is_relative()) << relative;
  EXPECT_EQ(roots.Resolve(relative.string(), "f").value(), (root_ / "train.bin").string());
  const fs::path out = fs::relative(outside_ / "secret", fs::current_path());
  EXPECT_TRUE(
      Refused(roots.Resolve(out.string(), "f"), "f",
              absl::StrCat("\"", out.string(), "\" is outside the data roots")));
}

TEST_F(DataRootsTest, AnyOfSeveralRootsWill) {
  fs::create_directories(dir_ / "more");
  const DataRoots roots = Roots({root_.string(), (dir_ / "more").string()});
  EXPECT_TRUE(roots.Resolve((dir_ / "more" / "x.bin").string(), "f").ok());
  EXPECT_TRUE(roots.Resolve((root_ / "train.bin").string(), "f").ok());
  EXPECT_TRUE(Refused(roots.Resolve((outside_ / "secret").string(), "f"), "f",
                      absl::StrCat("(", root_.string(), ", ", (dir_ / "more").string(), ")")));
  EXPECT_EQ(roots.DebugString(), absl::StrCat(root_.string(), ", ", (dir_ / "more").string()));
}

TEST_F(DataRootsTest, UnconfinedReturnsThePathUnchanged) {
  const DataRoots roots = Roots({});
  EXPECT_TRUE(roots.unconfined());
  EXPECT_EQ(roots.DebugString(), "unconfined");
  EXPECT_EQ(roots.Resolve("../x/./y.bin", "f").value(), "../x/./y.bin");
  EXPECT_EQ(DataRoots().Resolve("/etc/passwd", "f").value(), "/etc/passwd");
}

TEST_F(DataRootsTest, EmptyPathsAndNulBytesAreRefusedEvenUnconfined) {
  // open(2) stops at the NUL: "inside\0/../../etc/passwd" would be checked as one path and open
  // another.
  const std::string nul = (root_ / "train.bin").string() + std::string(1, '\0') + "/../x";
  for (const DataRoots& roots : {DataRoots(), Roots({root_.string()})}) {
    EXPECT_TRUE(
        Refused(roots.Resolve(nul, "data.train_shards[0]"), "data.train_shards[0]", "NUL byte"));
    EXPECT_TRUE(
        Refused(roots.Resolve("", "data.val_shards[3]"), "data.val_shards[3]", "empty path"));
  }
}

TEST_F(DataRootsTest, BadRootsAreRefusedNamingTheFlag) {
  const std::string missing = (dir_ / "missing").string();
  absl::StatusOr<DataRoots> got = DataRoots::Create({root_.string(), missing});
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(got.status().message().rfind(absl::StrCat("--data-root ", missing, ": "), 0), 0u)
      << got.status();
  const std::string file = (root_ / "train.bin").string();
  got = DataRoots::Create({file});
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find(absl::StrCat("--data-root ", file, ": ")),
            std::string::npos)
      << got.status();
  EXPECT_NE(got.status().message().find("is not a directory"), std::string::npos) << got.status();
  got = DataRoots::Create({""});
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("--data-root : empty path"), std::string::npos)
      << got.status();
}

// A parsed spec, as JobService checks it at submit.
v1::JobSpec SpecWithShards(const std::string& train, const std::string& val) {
  absl::StatusOr<v1::JobSpec> spec =
      ParseJobSpecYaml(absl::StrCat(R"(name: confined
model: {layers: 2, d_model: 16, heads: 2, vocab_size: 64}
data: {train_shards: [")",
                                    train, R"("], val_shards: [")", val, R"("]}
training: {steps: 10}
)"));
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : v1::JobSpec();
}

TEST_F(DataRootsTest, ConfineJobSpecChecksEveryShardNamingItsField) {
  const DataRoots roots = Roots({root_.string()});
  v1::JobSpec spec =
      SpecWithShards((root_ / "train.bin").string(), (root_ / "sub" / "val.bin").string());
  ASSERT_TRUE(ValidateJobSpec(spec).ok());
  EXPECT_TRUE(ConfineJobSpec(spec, roots).ok());
  EXPECT_TRUE(ConfineJobSpec(spec, DataRoots()).ok());

  spec.mutable_data()->add_val_shards((root_ / ".." / "outside" / "secret").string());
  absl::Status status = ConfineJobSpec(spec, roots);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message().rfind("data.val_shards[1]: ", 0), 0u) << status;
  EXPECT_NE(status.message().find("is outside the data roots"), std::string::npos) << status;
  EXPECT_TRUE(ConfineJobSpec(spec, DataRoots()).ok());  // unconfined: anything goes

  // The first failure is reported, train shards first.
  spec = SpecWithShards("/etc/passwd", "/etc/shadow");
  status = ConfineJobSpec(spec, roots);
  EXPECT_EQ(status.message().rfind("data.train_shards[0]: \"/etc/passwd\"", 0), 0u) << status;
}

// Collects "Message.field" for every string field reachable from `type`.
void StringFields(const google::protobuf::Descriptor* type, std::set<std::string>* out,
                  std::set<const google::protobuf::Descriptor*>* seen) {
  if (!seen->insert(type).second) return;
  for (int i = 0; i < type->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* field = type->field(i);
    if (field->type() == google::protobuf::FieldDescriptor::TYPE_STRING ||
        field->type() == google::protobuf::FieldDescriptor::TYPE_BYTES) {
      out->insert(absl::StrCat(type->name(), ".", field->name()));
    }
    if (field->message_type() != nullptr) StringFields(field->message_type(), out, seen);
  }
}

TEST(ConfineJobSpecCoverage, EveryStringFieldOfAJobSpecIsAPathItChecksOrTheName) {
  // A string field added to job.proto may be a path a worker opens (init weights, a tokenizer):
  // this fails until ConfineJobSpec (and the worker's check) cover it, or it is listed here as
  // not a path.
  std::set<std::string> fields;
  std::set<const google::protobuf::Descriptor*> seen;
  StringFields(v1::JobSpec::descriptor(), &fields, &seen);
  EXPECT_EQ(fields, (std::set<std::string>{"JobSpec.name", "DataSpec.train_shards",
                                           "DataSpec.val_shards"}));
}

}  // namespace
}  // namespace raptr
