// Authorizer: who is calling the coordinator, and may they.
//
// Every JobService and ControlService method asks it first. Authentication is on when the
// coordinator has a token file (--auth-tokens) or verifies client certificates
// (--tls-client-ca); with neither, every caller is anonymous and may do everything (the
// coordinator says so loudly at start; docs/SECURITY.md).
//
// - A bearer token in the `authorization` metadata is looked up in the token file; otherwise a
//   verified certificate's SPIFFE id names the caller (common/security.h).
// - JobService: reader < submitter < admin; a worker credential is PERMISSION_DENIED there.
// - ControlService: worker credentials only; a client's is PERMISSION_DENIED.
// - Missing or unknown credentials: UNAUTHENTICATED. Messages name the principal, never a token.
// - Each client principal (or, when anonymous, each peer host) gets a token bucket of requests;
//   refused calls count against their peer host's; past it, RESOURCE_EXHAUSTED. Refusals are
//   logged, at most a line a second.
//
// Thread safety: thread-safe.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/security.h"
#include "grpcpp/grpcpp.h"

namespace raptr {

struct AuthOptions {
  std::optional<TokenTable> tokens;  // --auth-tokens
  bool client_certificates = false;  // --tls-client-ca: certificates verify and name callers
  std::string trust_domain = "raptr";
  // JobService requests per client principal: a sustained rate and a burst. 0: unlimited.
  double requests_per_second = 20;
  double burst = 200;
};

class Authorizer {
 public:
  explicit Authorizer(AuthOptions options) : options_(std::move(options)) {}

  bool enabled() const { return options_.tokens.has_value() || options_.client_certificates; }

  // A JobService caller with at least role `least` (reader < submitter < admin), within its rate.
  absl::StatusOr<Principal> AuthorizeClient(const grpc::ServerContextBase& context, Role least);
  // A ControlService caller with a worker credential.
  absl::StatusOr<Principal> AuthorizeWorker(const grpc::ServerContextBase& context);

 private:
  absl::StatusOr<Principal> Authenticate(const grpc::ServerContextBase& context) const;
  // The client principal when it may act with role `least`, or the refusal.
  absl::StatusOr<Principal> Decide(const grpc::ServerContextBase& context, Role least) const;
  // Counts a refused call against its peer host's rate and logs it (rate-limited); returns the
  // refusal, or RESOURCE_EXHAUSTED past the rate.
  absl::Status Refused(const grpc::ServerContextBase& context, absl::Status refusal);
  // One request of `key` against its token bucket.
  absl::Status Admit(const std::string& key);

  const AuthOptions options_;
  struct Bucket {
    double tokens = 0;
    double updated = 0;  // seconds on the steady clock
  };
  absl::Mutex mu_;
  std::map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mu_);
  double last_sweep_ ABSL_GUARDED_BY(mu_) = 0;
  double last_refusal_log_ ABSL_GUARDED_BY(mu_) = -1e9;
  int64_t suppressed_refusals_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace raptr
