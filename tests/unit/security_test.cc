// common/security: the token file, SPIFFE identities, worker-id authorization.
#include "common/security.h"

#include <set>
#include <string>

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
      {"\nalice boss " + hash, "tokens:2: unknown role \"boss\""},
      {"alice reader sha1:abc", "tokens:1: the third field"},
      {"alice reader " + hash + "\nalice admin " + HashToken("y"), "tokens:2: name \"alice\""},
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

TEST(SecurityTest, LoopbackAddresses) {
  for (const char* yes : {"127.0.0.1:50051", "localhost:1", "[::1]:5", "127.1.2.3:9",
                          "dns:///localhost:50051"}) {
    EXPECT_TRUE(IsLoopbackAddress(yes)) << yes;
  }
  for (const char* no : {"0.0.0.0:50051", "10.0.0.1:1", "coordinator:50051", "[::]:5", ":50051"}) {
    EXPECT_FALSE(IsLoopbackAddress(no)) << no;
  }
}

}  // namespace
}  // namespace raptr
