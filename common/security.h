// Who a caller is, and the credentials that say so: principals, the hashed token file, SPIFFE
// identities in certificates, and the TLS credentials of the gRPC endpoints.
//
// The model (docs/SECURITY.md):
// - A principal is a name with one role: reader (get, list, watch), submitter (also submit, and
//   cancel its own jobs), admin (also cancel anyone's), worker (ControlService only).
// - Clients prove it with a bearer token (`authorization: Bearer <token>` metadata) looked up in
//   a token file that holds only SHA-256 hashes, or with a client certificate whose URI SAN is
//   `spiffe://<trust domain>/<role>/<name>`.
// - Workers prove it with a certificate `spiffe://<trust domain>/worker/<name>` (authorizes worker
//   id <name> and ids below it, "<name>/gpu0"), a pool certificate
//   `spiffe://<trust domain>/worker-pool/<prefix>` (any id starting with <prefix>: pool members can
//   impersonate one another), or a join token of role worker (authorizes ids as a certificate
//   named after the token's name would).
//
// Hand-written because no Debian library covers it: gRPC gives the peer's certificate
// properties and OpenSSL the hashing; the mapping onto roles is ours.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grpc {
class ChannelArguments;
class ChannelCredentials;
class ServerCredentials;
class AuthContext;
}  // namespace grpc

namespace raptr {

class Flags;

enum class Role { kReader, kSubmitter, kAdmin, kWorker };
absl::string_view RoleName(Role role);
absl::StatusOr<Role> ParseRole(absl::string_view name);

struct Principal {
  enum class Via { kAnonymous, kToken, kCertificate };
  Via via = Via::kAnonymous;
  std::string name;  // empty for kAnonymous
  Role role = Role::kReader;
  // Worker credentials: ids starting with `name` are authorized, not only `name` and `name/...`.
  bool pool = false;

  // The owner recorded on jobs this principal submits ("" when anonymous).
  std::string owner() const { return name; }
  // Whether this principal may act as worker `id` (workers only).
  bool AuthorizesWorkerId(absl::string_view id) const;
  // "token alice (submitter)", "certificate w1 (worker)", "anonymous": for logs and errors;
  // never a secret.
  std::string Describe() const;
};

// "sha256:<64 hex digits>" of a token, the form the token file stores.
std::string HashToken(absl::string_view token);
// A fresh token: "raptr_" and 43 base64url characters of 32 random bytes (OpenSSL RAND_bytes).
absl::StatusOr<std::string> NewToken();
// 8 random bytes from OpenSSL's CSPRNG (session tokens, nonces).
absl::StatusOr<uint64_t> RandomU64();

// The token file: one token per line, `<name> <role> sha256:<hex>`; '#' starts a comment. A name
// appears once; hashes are unique. Errors name the file and line, never echo a hash.
class TokenTable {
 public:
  static absl::StatusOr<TokenTable> Load(const std::string& path);
  static absl::StatusOr<TokenTable> Parse(absl::string_view text, absl::string_view origin);
  // The principal a presented token stands for; compares hashes in constant time.
  std::optional<Principal> Lookup(absl::string_view token) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string name;
    Role role;
    std::string hash;  // "sha256:<hex>"
  };
  std::vector<Entry> entries_;
};

// The principal a certificate's SPIFFE id names, or INVALID_ARGUMENT saying why it names none.
absl::StatusOr<Principal> PrincipalFromSpiffeId(absl::string_view uri,
                                                absl::string_view trust_domain);
// The principal of a TLS peer's verified certificate (its URI SANs), if it carries exactly one
// identity of `trust_domain`; nullopt when the peer sent no certificate, none of its URIs is
// ours, or two are.
std::optional<Principal> PrincipalFromAuthContext(const grpc::AuthContext& context,
                                                  absl::string_view trust_domain);

// Reads a whole PEM (or token) file, naming `flag` in the error.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path, absl::string_view flag);
// A secret token file's content without its trailing newline; empty is an error.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path, absl::string_view flag);

// The coordinator's side of TLS (--tls-cert, --tls-key, --tls-client-ca, --require-client-cert).
struct ServerTlsOptions {
  std::string cert_file;       // server certificate chain (PEM); empty: plaintext
  std::string key_file;        // its private key
  std::string client_ca_file;  // client certificates must chain to it; empty: none requested
  bool require_client_cert = false;  // refuse the handshake of a client without a certificate
  bool enabled() const { return !cert_file.empty(); }
};
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTlsOptions& options);

// A client's side (raptrctl, the worker): --tls-ca, --tls-cert, --tls-key, --tls-server-name.
struct ClientTlsOptions {
  std::string ca_file;      // the CA the server's certificate must chain to; empty: plaintext
  std::string cert_file;    // this client's certificate (mutual TLS); empty: none
  std::string key_file;     // its key
  std::string server_name;  // the name expected in the server's certificate; empty: the target's
  bool enabled() const { return !ca_file.empty(); }
};
// The client TLS flags raptrctl and `raptr-worker serve` share: --tls-ca, --tls-cert, --tls-key
// (defaults from $RAPTR_TLS_CA, $RAPTR_TLS_CERT, $RAPTR_TLS_KEY) and --tls-server-name.
// `cert_help` says whose certificate --tls-cert is.
void DefineClientTlsFlags(Flags* flags, const std::string& cert_help);
ClientTlsOptions ClientTlsFromFlags(const Flags& flags);
// The environment variable `name`, or "" when unset (a flag's default).
std::string EnvOrEmpty(const char* name);

// Fills `args` with what the credentials need (the server name override).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ClientTlsOptions& options, grpc::ChannelArguments* args);

// Whether `path` lies inside directory `dir` (or is it), judged lexically after normalizing both
// ("a/./b", "a/b/../b"): component-wise, so /data2 is not inside /data. No filesystem access.
bool PathIsWithin(const std::string& path, const std::string& dir);

// OK when no component of `path` below `root` (the root itself is trusted) is a symbolic link,
// as far as the path exists here; FAILED_PRECONDITION naming the link otherwise. For paths a
// worker reports into a directory workers can write (checkpoints): a link there would make the
// coordinator read, or delete, outside it. REQUIRES: PathIsWithin(path, root).
absl::Status CheckNoSymlinksBelow(const std::string& root, const std::string& path);

// Whether HOST:PORT names one loopback address (a 127.0.0.0/8 or ::1 literal, or exactly
// "localhost"); names and address lists are not. Plaintext with tokens is refused elsewhere.
bool IsLoopbackAddress(absl::string_view host_port);

}  // namespace raptr
