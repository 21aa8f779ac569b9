// Authentication and authorization of coordinator calls (see auth.h).
#include "coordinator/auth.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"

namespace raptr {
namespace {

// Buckets of callers not seen for this long are dropped, so the map stays bounded by the callers
// of the last few minutes.
constexpr double kBucketIdleSeconds = 300;
constexpr size_t kBucketSweepSize = 4096;
constexpr double kSweepSeconds = 10;
constexpr size_t kMaxBuckets = 65536;

double SteadySeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int ClientRank(Role role) {
  switch (role) {
    case Role::kReader:
      return 1;
    case Role::kSubmitter:
      return 2;
    case Role::kAdmin:
      return 3;
    case Role::kWorker:
      return 0;
  }
  return 0;
}

// The bearer token of the call's metadata: nullopt when there is no authorization header, an
// empty string when it is not of the Bearer form.
std::optional<std::string> BearerToken(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return std::nullopt;
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&value, "Bearer ")) return std::string();
  return std::string(value);
}

// "ipv4:127.0.0.1:5412" -> "ipv4:127.0.0.1": anonymous callers are limited per host, not per
// connection.
std::string PeerHost(const std::string& peer) {
  const size_t colon = peer.rfind(':');
  return colon == std::string::npos || colon < 5 ? peer : peer.substr(0, colon);
}

}  // namespace

absl::StatusOr<Principal> Authorizer::Authenticate(const grpc::ServerContextBase& context) const {
  if (!enabled()) return Principal{};
  if (std::optional<std::string> token = BearerToken(context)) {
    if (!options_.tokens.has_value()) {
      return absl::UnauthenticatedError(
          "this coordinator takes no tokens (no --auth-tokens); authenticate with a client "
          "certificate");
    }
    if (token->empty()) {
      return absl::UnauthenticatedError("the authorization metadata is not \"Bearer <token>\"");
    }
    if (std::optional<Principal> principal = options_.tokens->Lookup(*token)) return *principal;
    return absl::UnauthenticatedError("the token is not one this coordinator knows");
  }
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (options_.client_certificates && auth != nullptr) {
    if (std::optional<Principal> principal =
            PrincipalFromAuthContext(*auth, options_.trust_domain)) {
      return *principal;
    }
    if (auth->IsPeerAuthenticated()) {
      return absl::UnauthenticatedError(absl::StrCat(
          "the client certificate verified but carries no spiffe://", options_.trust_domain,
          "/<role>/<name> URI SAN"));
    }
  }
  return absl::UnauthenticatedError(
      options_.tokens.has_value()
          ? "no credentials: send a token (raptrctl --token-file or $RAPTR_TOKEN) or a client "
            "certificate"
          : "no credentials: this coordinator needs a client certificate (--tls-cert/--tls-key)");
}

absl::StatusOr<Principal> Authorizer::AuthorizeClient(const grpc::ServerContextBase& context,
                                                      Role least) {
  absl::StatusOr<Principal> principal = Decide(context, least);
  if (!principal.ok()) return Refused(context, principal.status());
  const std::string key = principal->via == Principal::Via::kAnonymous
                              ? absl::StrCat("peer ", PeerHost(context.peer()))
                              : principal->Describe();
  if (absl::Status admitted = Admit(key); !admitted.ok()) return admitted;
  return principal;
}

absl::StatusOr<Principal> Authorizer::Decide(const grpc::ServerContextBase& context,
                                             Role least) const {
  absl::StatusOr<Principal> principal = Authenticate(context);
  if (!principal.ok()) return principal.status();
  if (principal->via == Principal::Via::kAnonymous) {
    principal->role = Role::kAdmin;
  } else if (principal->role == Role::kWorker) {
    return absl::PermissionDeniedError(absl::StrCat(
        principal->Describe(), " is a worker credential; JobService takes client credentials"));
  } else if (ClientRank(principal->role) < ClientRank(least)) {
    return absl::PermissionDeniedError(absl::StrCat(
        principal->Describe(), " may not do this; it needs role ", RoleName(least), " or above"));
  }
  return principal;
}

absl::Status Authorizer::Refused(const grpc::ServerContextBase& context, absl::Status refusal) {
  // A refused call counts against its peer host's rate too, so guessing tokens is as slow as
  // any other flood; past the rate the answer is RESOURCE_EXHAUSTED, whatever was presented.
  const std::string host = PeerHost(context.peer());
  if (absl::Status admitted = Admit(absl::StrCat("refused from ", host)); !admitted.ok()) {
    return admitted;
  }
  // Logged for the operator (at most one line a second; the principal, never a token).
  const double now = SteadySeconds();
  bool log = false;
  int64_t suppressed = 0;
  {
    absl::MutexLock lock(&mu_);
    if (now - last_refusal_log_ >= 1) {
      log = true;
      suppressed = suppressed_refusals_;
      suppressed_refusals_ = 0;
      last_refusal_log_ = now;
    } else {
      ++suppressed_refusals_;
    }
  }
  if (log) {
    Log(absl::StrCat("refused a call from ", host, ": ", StatusCodeToString(refusal.code()), ": ",
                     refusal.message(),
                     suppressed > 0 ? absl::StrCat(" (and ", suppressed, " more since the last line)")
                                    : ""));
  }
  return refusal;
}

absl::StatusOr<Principal> Authorizer::AuthorizeWorker(const grpc::ServerContextBase& context) {
  absl::StatusOr<Principal> principal = Authenticate(context);
  if (absl::IsUnauthenticated(principal.status()) &&
      absl::StartsWith(principal.status().message(), "no credentials")) {
    return Refused(context, absl::UnauthenticatedError(
                                "no credentials: a worker needs a certificate (raptr-worker serve "
                                "--tls-cert/--tls-key) or a join token (--join-token-file)"));
  }
  if (!principal.ok()) return Refused(context, principal.status());
  if (principal->via == Principal::Via::kAnonymous) {
    principal->role = Role::kWorker;
    return principal;
  }
  if (principal->role != Role::kWorker) {
    return Refused(context, absl::PermissionDeniedError(absl::StrCat(
                                principal->Describe(),
                                " is a client credential; ControlService takes worker credentials")));
  }
  return principal;
}

absl::Status Authorizer::Admit(const std::string& key) {
  if (!(options_.requests_per_second > 0)) return absl::OkStatus();
  const double now = SteadySeconds();
  absl::MutexLock lock(&mu_);
  // Bounded: a sweep of idle buckets at most every kSweepSeconds once there are many, and past a
  // hard cap (callers that vary their address without end) every bucket starts over full.
  if (buckets_.size() > kBucketSweepSize && now - last_sweep_ >= kSweepSeconds) {
    last_sweep_ = now;
    for (auto it = buckets_.begin(); it != buckets_.end();) {
      it = now - it->second.updated > kBucketIdleSeconds ? buckets_.erase(it) : std::next(it);
    }
  }
  if (buckets_.size() >= kMaxBuckets) buckets_.clear();
  auto [it, fresh] = buckets_.try_emplace(key, Bucket{options_.burst, now});
  Bucket& bucket = it->second;
  if (!fresh) {
    bucket.tokens = std::min(options_.burst,
                             bucket.tokens + (now - bucket.updated) * options_.requests_per_second);
    bucket.updated = now;
  }
  if (bucket.tokens < 1) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s is over its request rate (%g per second, bursts of %g); retry later", key,
        options_.requests_per_second, options_.burst));
  }
  bucket.tokens -= 1;
  return absl::OkStatus();
}

}  // namespace raptr
