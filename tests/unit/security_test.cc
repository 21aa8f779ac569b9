// common/security: the token file, SPIFFE identities, worker-id authorization.
#include "common/security.h"

#include <unistd.h>

#include <filesystem>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace raptr {
namespace {

TEST(SecurityTest, HashTokenIsSha256Hex) {
  // sha256("abc"), FIPS 180-2's test vector.
  EXPECT_EQ(HashToken("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(SecurityTest, NewTokensAreLongAndDistinct) {
  std::set<std::string> seen;
  for (int i = 0; i < 64; ++i) {
    absl::StatusOr<std::string> token = NewToken();
    ASSERT_TRUE(token.ok());
    EXPECT_EQ(token->size(), 6u + 43u);
    EXPECT_EQ(token->rfind("raptr_", 0), 0u);
    EXPECT_TRUE(seen.insert(*token).second);
  }
}

TEST(SecurityTest, TokenTableLooksUpByHash) {
  const std::string text = "# comment\n\nalice submitter " + HashToken("a-secret") +
                           "  # trailing\nops admin " + HashToken("o-secret") + "\n";
  absl::StatusOr<TokenTable> table = TokenTable::Parse(text, "tokens");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->size(), 2u);
  std::optional<Principal> alice = table->Lookup("a-secret");
  ASSERT_TRUE(alice.has_value());
  EXPECT_EQ(alice->name, "alice");
  EXPECT_EQ(alice->role, Role::kSubmitter);
  EXPECT_EQ(alice->via, Principal::Via::kToken);
  EXPECT_EQ(table->Lookup("o-secret")->role, Role::kAdmin);
  EXPECT_FALSE(table->Lookup("a-secreT").has_value());
  EXPECT_FALSE(table->Lookup("").has_value());
}

TEST(SecurityTest, TokenTableErrorsNameTheLineNotTheHash) {
  const std::string hash = HashToken("x");
  struct Case {
    std::string text;
    std::string expect;
  } cases[] = {
      {"alice submitter\n", "tokens:1: 2 fields"},
      {"\nalice raptr_pasted-token " + hash, "tokens:2: the second field is not a role"},
      {"alice reader sha1:abc", "tokens:1: the third field"},
      {"alice reader " + hash + "\nalice admin " + HashToken("y"), "tokens:2: this name appears"},
      {"alice reader " + hash + "\nbob admin " + hash, "tokens:2: this hash appears twice"},
      {"a|b reader " + hash, "tokens:1: the name"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<TokenTable> table = TokenTable::Parse(c.text, "tokens");
    ASSERT_FALSE(table.ok()) << c.text;
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(table.status().message().find(c.expect), std::string_view::npos)
        << table.status().message();
    EXPECT_EQ(table.status().message().find(hash.substr(7)), std::string_view::npos);
    EXPECT_EQ(table.status().message().find("raptr_pasted-token"), std::string_view::npos);
  }
}

TEST(SecurityTest, SpiffeIdsMapToPrincipals) {
  absl::StatusOr<Principal> worker = PrincipalFromSpiffeId("spiffe://raptr/worker/node1", "raptr");
  ASSERT_TRUE(worker.ok());
  EXPECT_EQ(worker->role, Role::kWorker);
  EXPECT_EQ(worker->name, "node1");
  EXPECT_FALSE(worker->pool);
  EXPECT_TRUE(worker->AuthorizesWorkerId("node1"));
  EXPECT_TRUE(worker->AuthorizesWorkerId("node1/gpu3"));
  EXPECT_FALSE(worker->AuthorizesWorkerId("node10"));
  EXPECT_FALSE(worker->AuthorizesWorkerId("node"));
  EXPECT_FALSE(worker->AuthorizesWorkerId("other"));

  absl::StatusOr<Principal> pool =
      PrincipalFromSpiffeId("spiffe://raptr/worker-pool/raptr-worker-", "raptr");
  ASSERT_TRUE(pool.ok());
  EXPECT_TRUE(pool->pool);
  EXPECT_TRUE(pool->AuthorizesWorkerId("raptr-worker-3"));
  EXPECT_FALSE(pool->AuthorizesWorkerId("raptr-worker-"));
  EXPECT_FALSE(pool->AuthorizesWorkerId("evil-0"));

  absl::StatusOr<Principal> admin = PrincipalFromSpiffeId("spiffe://raptr/admin/ops", "raptr");
  ASSERT_TRUE(admin.ok());
  EXPECT_EQ(admin->role, Role::kAdmin);
  EXPECT_FALSE(admin->AuthorizesWorkerId("ops"));

  for (const char* bad : {"spiffe://other/worker/a", "spiffe://raptr/worker", "spiffe://raptr/boss/a",
                          "spiffe://raptr/worker/", "https://raptr/worker/a",
                          "spiffe://raptr/worker/a b"}) {
    EXPECT_FALSE(PrincipalFromSpiffeId(bad, "raptr").ok()) << bad;
  }
}

TEST(SecurityTest, AnonymousIsEverythingWhenNoAuthIsConfigured) {
  Principal anonymous{Principal::Via::kAnonymous, "", Role::kWorker, false};
  EXPECT_TRUE(anonymous.AuthorizesWorkerId("anything"));
  EXPECT_EQ(anonymous.Describe(), "anonymous");
}

TEST(SecurityTest, PathIsWithinIsComponentWise) {
  EXPECT_TRUE(PathIsWithin("/ck/job-1/generation-2/step-10", "/ck/job-1/generation-2"));
  EXPECT_TRUE(PathIsWithin("/ck/job-1/generation-2", "/ck/job-1/generation-2/"));
  EXPECT_TRUE(PathIsWithin("runs/ck/./job-1/generation-2/x", "runs/ck/job-1/generation-2"));
  EXPECT_FALSE(PathIsWithin("/ck/job-1/generation-20", "/ck/job-1/generation-2"));
  EXPECT_FALSE(PathIsWithin("/ck/job-1/generation-2/../../job-2/generation-1",
                            "/ck/job-1/generation-2"));
  EXPECT_FALSE(PathIsWithin("/etc/passwd", "/ck/job-1/generation-2"));
  EXPECT_FALSE(PathIsWithin("ck/job-1/generation-2", "/ck/job-1/generation-2"));
  EXPECT_FALSE(PathIsWithin("/ck/job-1", "/ck/job-1/generation-2"));
}

TEST(SecurityTest, NoSymlinksBelowTheRoot) {
  const std::filesystem::path root =
      std::filesystem::temp_directory_path() / absl::StrCat("raptr_symlinks_", getpid());
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root / "job-1" / "generation-1");
  std::filesystem::create_directories(root / "elsewhere");
  const std::string inside = (root / "job-1" / "generation-1" / "step_10").string();
  EXPECT_TRUE(CheckNoSymlinksBelow(root.string(), inside).ok());
  EXPECT_TRUE(CheckNoSymlinksBelow(root.string(), (root / "job-1" / "not-yet" / "x").string()).ok());
  std::filesystem::create_directory_symlink(root / "elsewhere", root / "job-1" / "generation-2");
  absl::Status linked =
      CheckNoSymlinksBelow(root.string(), (root / "job-1" / "generation-2" / "step_10").string());
  EXPECT_EQ(linked.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(linked.message().find("generation-2 is a symbolic link"), std::string_view::npos)
      << linked;
  // The root itself may be a link (an operator's choice): only what is below it is checked.
  std::filesystem::create_directory_symlink(root, root.string() + "-link");
  EXPECT_TRUE(CheckNoSymlinksBelow(root.string() + "-link", root.string() + "-link/job-1/generation-1").ok());
  std::filesystem::remove(root.string() + "-link");
  std::filesystem::remove_all(root);
}

TEST(SecurityTest, LoopbackAddresses) {
  for (const char* yes : {"127.0.0.1:50051", "localhost:1", "[::1]:5", "127.1.2.3:9",
                          "dns:///localhost:50051"}) {
    EXPECT_TRUE(IsLoopbackAddress(yes)) << yes;
  }
  for (const char* no : {"0.0.0.0:50051", "10.0.0.1:1", "coordinator:50051", "[::]:5", ":50051",
                         "127.0.0.1.attacker.example:50051", "ipv4:127.0.0.1:1,10.0.0.5:50051",
                         "localhost.example:1", "[::1:5"}) {
    EXPECT_FALSE(IsLoopbackAddress(no)) << no;
  }
}

}  // namespace
}  // namespace raptr
