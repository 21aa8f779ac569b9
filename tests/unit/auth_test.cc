// The Authorizer in front of the real JobService and ControlService, over a real gRPC server on
// loopback with a real store and Cluster: the role matrix, worker credentials on the rendezvous
// calls, the order of Connect's checks, the request rate, and the open mode without
// authentication. (TLS and certificates: tests/integration/security_test.sh.)
#include "coordinator/auth.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/security.h"
#include "coordinator/cluster.h"
#include "coordinator/control_service.h"
#include "coordinator/job_service.h"
#include "coordinator/store/job_store.h"
#include "grpcpp/grpcpp.h"
#include "raptr/v1/control.grpc.pb.h"
#include "raptr/v1/job.grpc.pb.h"
#include "tests/unit/job_fixtures.h"

namespace raptr {
namespace {

constexpr char kTokens[] = R"(alice submitter {alice}
bob submitter {bob}
viewer reader {viewer}
root admin {root}
w1 worker {w1}
)";

std::string TokenFile() {
  std::string text = kTokens;
  for (const char* name : {"alice", "bob", "viewer", "root", "w1"}) {
    const std::string placeholder = absl::StrCat("{", name, "}");
    text.replace(text.find(placeholder), placeholder.size(),
                 HashToken(absl::StrCat("secret-of-", name)));
  }
  return text;
}

class AuthTest : public ::testing::Test {
 protected:
  void Start(AuthOptions options) {
    dir_ = testing::FreshTestDir("raptr_auth_test");
    absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open((dir_ / "store.db").string());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    ClusterOptions cluster_options;
    cluster_options.checkpoint_root = (dir_ / "checkpoints").string();
    cluster_ = std::make_unique<Cluster>(store_.get(), cluster_options);
    authorizer_ = std::make_unique<Authorizer>(std::move(options));
    jobs_ = std::make_unique<JobServiceImpl>(store_.get(), cluster_.get());
    jobs_->set_authorizer(authorizer_.get());
    control_ = std::make_unique<ControlServiceImpl>(cluster_.get(), authorizer_.get());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(jobs_.get());
    builder.RegisterService(control_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                       grpc::InsecureChannelCredentials());
    job_stub_ = v1::JobService::NewStub(channel);
    control_stub_ = v1::ControlService::NewStub(channel);
  }
  void StartWithTokens(double rate = 0, double burst = 1) {
    AuthOptions options;
    absl::StatusOr<TokenTable> tokens = TokenTable::Parse(TokenFile(), "tokens");
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    options.tokens = *std::move(tokens);
    options.requests_per_second = rate;
    options.burst = burst;
    Start(std::move(options));
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    server_.reset();
    control_.reset();
    jobs_.reset();
    cluster_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  // A context carrying `who`'s token ("" none, "?" a wrong one).
  static std::unique_ptr<grpc::ClientContext> As(const std::string& who) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (who == "?") {
      context->AddMetadata("authorization", "Bearer not-a-token");
    } else if (!who.empty()) {
      context->AddMetadata("authorization", absl::StrCat("Bearer secret-of-", who));
    }
    return context;
  }

  grpc::Status Submit(const std::string& who, std::string* id = nullptr) {
    v1::SubmitJobRequest request;
    *request.mutable_spec() = testing::TinyJobSpec("auth");
    v1::SubmitJobResponse response;
    grpc::Status status = job_stub_->SubmitJob(As(who).get(), request, &response);
    if (id != nullptr) *id = response.job().id();
    return status;
  }
  grpc::Status List(const std::string& who) {
    v1::ListJobsRequest request;
    v1::ListJobsResponse response;
    return job_stub_->ListJobs(As(who).get(), request, &response);
  }
  grpc::Status Cancel(const std::string& who, const std::string& id, v1::Job* job = nullptr) {
    v1::CancelJobRequest request;
    request.set_job_id(id);
    v1::Job response;
    grpc::Status status = job_stub_->CancelJob(As(who).get(), request, &response);
    if (job != nullptr) *job = response;
    return status;
  }
  grpc::Status KvSet(const std::string& who, const std::string& worker_id) {
    v1::KvSetRequest request;
    request.set_job_id("job-000001");
    request.set_generation(1);
    request.set_worker_id(worker_id);
    request.set_key("k");
    request.set_value("v");
    v1::KvSetResponse response;
    return control_stub_->KvSet(As(who).get(), request, &response);
  }
  // Opens Connect with `who`'s token and sends a Hello of `worker_id` (none when empty);
  // returns how the stream ended, or OK once a Welcome came.
  grpc::Status ConnectAs(const std::string& who, const std::string& worker_id) {
    std::unique_ptr<grpc::ClientContext> context = As(who);
    auto stream = control_stub_->Connect(context.get());
    if (!worker_id.empty()) {
      v1::WorkerMessage hello;
      hello.mutable_hello()->set_worker_id(worker_id);
      hello.mutable_hello()->set_backend(v1::BACKEND_CPU);
      hello.mutable_hello()->set_instance_id("i");
      stream->Write(hello);
    }
    v1::CoordinatorMessage reply;
    if (stream->Read(&reply) && reply.has_welcome()) {
      context->TryCancel();
      stream->Finish().IgnoreError();
      return grpc::Status::OK;
    }
    return stream->Finish();
  }

  std::filesystem::path dir_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<Cluster> cluster_;
  std::unique_ptr<Authorizer> authorizer_;
  std::unique_ptr<JobServiceImpl> jobs_;
  std::unique_ptr<ControlServiceImpl> control_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::JobService::Stub> job_stub_;
  std::unique_ptr<v1::ControlService::Stub> control_stub_;
};

TEST_F(AuthTest, JobServiceRoles) {
  StartWithTokens();
  EXPECT_EQ(List("").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(List("?").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(List("viewer").ok());
  const grpc::Status reader_submits = Submit("viewer");
  EXPECT_EQ(reader_submits.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(reader_submits.error_message().find("token viewer (reader)"), std::string::npos)
      << reader_submits.error_message();
  const grpc::Status worker_lists = List("w1");
  EXPECT_EQ(worker_lists.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(worker_lists.error_message().find("worker credential"), std::string::npos);

  std::string id;
  ASSERT_TRUE(Submit("alice", &id).ok());
  EXPECT_EQ(store_->GetJob(id)->owner(), "alice");
  EXPECT_EQ(Cancel("viewer", id).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  const grpc::Status bob_cancels = Cancel("bob", id);
  EXPECT_EQ(bob_cancels.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(bob_cancels.error_message().find("belongs to alice"), std::string::npos);
  EXPECT_EQ(store_->GetJob(id)->state(), v1::JOB_STATE_PENDING);
  v1::Job cancelled;
  ASSERT_TRUE(Cancel("root", id, &cancelled).ok());
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(cancelled.message(), "cancelled by token root (admin)");
  // No refusal carries a token.
  for (const grpc::Status& status : {reader_submits, worker_lists, bob_cancels}) {
    EXPECT_EQ(status.error_message().find("secret-of-"), std::string::npos);
  }
}

TEST_F(AuthTest, ControlServiceTakesOnlyWorkerCredentialsForTheirOwnIds) {
  StartWithTokens();
  EXPECT_EQ(KvSet("", "w1").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(KvSet("alice", "w1").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  const grpc::Status other = KvSet("w1", "w2");
  EXPECT_EQ(other.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(other.error_message().find("may not act as worker \"w2\""), std::string::npos);
  // Its own id passes authorization and meets the rendezvous' own checks (no such group).
  EXPECT_EQ(KvSet("w1", "w1").error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  // Connect refuses a caller without credentials before waiting for a Hello.
  EXPECT_EQ(ConnectAs("", "").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ConnectAs("alice", "").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(ConnectAs("w1", "w2").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(ConnectAs("w1", "w1/cpu0").ok());
}

TEST_F(AuthTest, RequestRatePerClientIncludingRefusedCalls) {
  StartWithTokens(/*rate=*/0.01, /*burst=*/3);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(List("alice").ok()) << i;
  const grpc::Status over = List("alice");
  EXPECT_EQ(over.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(over.error_message().find("token alice (submitter) is over its request rate"),
            std::string::npos)
      << over.error_message();
  // Another client has its own bucket.
  EXPECT_TRUE(List("viewer").ok());
  // Guessing tokens is limited too: refused calls count against the peer host.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(List("?").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(List("?").error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(AuthTest, WithoutAuthenticationEveryCallerMayDoEverything) {
  AuthOptions open;
  open.requests_per_second = 0;
  Start(std::move(open));
  EXPECT_FALSE(authorizer_->enabled());
  std::string id;
  ASSERT_TRUE(Submit("", &id).ok());
  EXPECT_EQ(store_->GetJob(id)->owner(), "");
  EXPECT_TRUE(Cancel("", id).ok());
  EXPECT_EQ(KvSet("", "anyone").error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

}  // namespace
}  // namespace raptr
