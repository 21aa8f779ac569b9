// Principals, tokens, SPIFFE identities and TLS credentials (see security.h).
#include "common/security.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/flags.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace raptr {
namespace {

constexpr absl::string_view kHashPrefix = "sha256:";
constexpr size_t kMaxSecretFileBytes = 1 << 20;

std::string Hex(const unsigned char* data, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * size);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(kDigits[data[i] >> 4]);
    out.push_back(kDigits[data[i] & 15]);
  }
  return out;
}

bool IsLowerHex(absl::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// Names and pool prefixes: what may follow the role in a SPIFFE path and name a token.
bool ValidName(absl::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.' &&
        c != '@' && c != '/') {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kReader:
      return "reader";
    case Role::kSubmitter:
      return "submitter";
    case Role::kAdmin:
      return "admin";
    case Role::kWorker:
      return "worker";
  }
  return "?";
}

absl::StatusOr<Role> ParseRole(absl::string_view name) {
  for (Role role : {Role::kReader, Role::kSubmitter, Role::kAdmin, Role::kWorker}) {
    if (name == RoleName(role)) return role;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown role \"", name, "\" (reader, submitter, admin or worker)"));
}

bool Principal::AuthorizesWorkerId(absl::string_view id) const {
  if (role != Role::kWorker) return false;
  if (via == Via::kAnonymous) return true;  // no authentication configured
  if (pool) return absl::StartsWith(id, name) && id.size() > name.size();
  return id == name || (absl::StartsWith(id, name) && id[name.size()] == '/');
}

std::string Principal::Describe() const {
  switch (via) {
    case Via::kAnonymous:
      return "anonymous";
    case Via::kToken:
      return absl::StrCat("token ", name, " (", RoleName(role), ")");
    case Via::kCertificate:
      return absl::StrCat("certificate ", name, pool ? "*" : "", " (", RoleName(role), ")");
  }
  return "?";
}

std::string HashToken(absl::string_view token) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(token.data(), token.size(), digest, &size, EVP_sha256(), nullptr);
  return absl::StrCat(kHashPrefix, Hex(digest, size));
}

absl::StatusOr<std::string> NewToken() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    return absl::InternalError("OpenSSL's RAND_bytes failed: no secure randomness");
  }
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out = "raptr_";
  // 6 bits per character over the 256 bits, the last character holding the remaining 4.
  uint32_t buffer = 0;
  int bits = 0;
  for (unsigned char byte : bytes) {
    buffer = (buffer << 8) | byte;
    bits += 8;
    while (bits >= 6) {
      out.push_back(kAlphabet[(buffer >> (bits - 6)) & 63]);
      bits -= 6;
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(buffer << (6 - bits)) & 63]);
  OPENSSL_cleanse(bytes, sizeof(bytes));
  return out;
}

absl::StatusOr<uint64_t> RandomU64() {
  uint64_t value = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&value), sizeof(value)) != 1) {
    return absl::InternalError("OpenSSL's RAND_bytes failed: no secure randomness");
  }
  return value;
}

absl::StatusOr<TokenTable> TokenTable::Load(const std::string& path) {
  absl::StatusOr<std::string> text = ReadSecretFile(path, "--auth-tokens");
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

absl::StatusOr<TokenTable> TokenTable::Parse(absl::string_view text, absl::string_view origin) {
  TokenTable table;
  std::set<std::string> names, hashes;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    auto error = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(origin, ":", line_number, ": ", why,
                                                     " (want `<name> <role> sha256:<hex>`)"));
    };
    if (fields.size() != 3) return error(absl::StrCat(fields.size(), " fields"));
    // No field's value is echoed: a token pasted into the wrong column must not reach a log.
    if (!ValidName(fields[0])) return error("the name is empty, too long or has odd characters");
    absl::StatusOr<Role> role = ParseRole(fields[1]);
    if (!role.ok()) return error("the second field is not a role (reader, submitter, admin, worker)");
    absl::string_view digest = fields[2];
    if (!absl::ConsumePrefix(&digest, kHashPrefix) || digest.size() != 64 || !IsLowerHex(digest)) {
      return error("the third field is not sha256: and 64 lowercase hex digits");
    }
    if (!names.insert(std::string(fields[0])).second) {
      return error("this name appears on an earlier line too");
    }
    if (!hashes.insert(std::string(fields[2])).second) {
      return error("this hash appears twice (two names for one token)");
    }
    table.entries_.push_back(Entry{std::string(fields[0]), *role, std::string(fields[2])});
  }
  return table;
}

std::optional<Principal> TokenTable::Lookup(absl::string_view token) const {
  if (token.empty()) return std::nullopt;
  const std::string hash = HashToken(token);
  std::optional<Principal> found;
  // Every entry is compared, in constant time each, so timing tells nothing of which one matched.
  for (const Entry& entry : entries_) {
    if (entry.hash.size() == hash.size() &&
        CRYPTO_memcmp(entry.hash.data(), hash.data(), hash.size()) == 0) {
      found = Principal{Principal::Via::kToken, entry.name, entry.role, false};
    }
  }
  return found;
}

absl::StatusOr<Principal> PrincipalFromSpiffeId(absl::string_view uri,
                                                absl::string_view trust_domain) {
  absl::string_view rest = uri;
  const std::string prefix = absl::StrCat("spiffe://", trust_domain, "/");
  if (!absl::ConsumePrefix(&rest, prefix)) {
    return absl::InvalidArgumentError(
        absl::StrCat("URI \"", uri, "\" is not a SPIFFE id of trust domain ", trust_domain));
  }
  const size_t slash = rest.find('/');
  if (slash == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("SPIFFE id \"", uri, "\" has no /<role>/<name> path"));
  }
  absl::string_view kind = rest.substr(0, slash);
  absl::string_view name = rest.substr(slash + 1);
  if (!ValidName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("SPIFFE id \"", uri, "\": the name is empty, too long or has odd characters"));
  }
  Principal principal{Principal::Via::kCertificate, std::string(name), Role::kWorker, false};
  if (kind == "worker-pool") {
    principal.pool = true;
    return principal;
  }
  absl::StatusOr<Role> role = ParseRole(kind);
  if (!role.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("SPIFFE id \"", uri, "\": ", role.status().message(), " or worker-pool"));
  }
  principal.role = *role;
  return principal;
}

std::optional<Principal> PrincipalFromAuthContext(const grpc::AuthContext& context,
                                                  absl::string_view trust_domain) {
  if (!context.IsPeerAuthenticated()) return std::nullopt;
  std::optional<Principal> found;
  for (const grpc::string_ref& uri : context.FindPropertyValues(GRPC_PEER_URI_PROPERTY_NAME)) {
    absl::StatusOr<Principal> principal =
        PrincipalFromSpiffeId(absl::string_view(uri.data(), uri.size()), trust_domain);
    if (!principal.ok()) continue;
    // Two identities in one certificate: which one it means is not for the order to decide.
    if (found.has_value()) return std::nullopt;
    found = *std::move(principal);
  }
  return found;
}

absl::StatusOr<std::string> ReadSecretFile(const std::string& path, absl::string_view flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  }
  // At most one byte past the cap is read: a flag naming /dev/zero must not fill the memory.
  std::string text(kMaxSecretFileBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxSecretFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " is over 1 MiB"));
  }
  return text;
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path, absl::string_view flag) {
  absl::StatusOr<std::string> text = ReadSecretFile(path, flag);
  if (!text.ok()) return text.status();
  std::string token(absl::StripAsciiWhitespace(*text));
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " is empty"));
  if (token.find_first_of(" \t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", path, " holds more than one word; it should hold one token"));
  }
  return token;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTlsOptions& options) {
  if (!options.enabled()) {
    if (!options.key_file.empty() || !options.client_ca_file.empty() ||
        options.require_client_cert) {
      return absl::InvalidArgumentError(
          "--tls-key, --tls-client-ca and --require-client-cert need --tls-cert");
    }
    return grpc::InsecureServerCredentials();
  }
  if (options.key_file.empty()) return absl::InvalidArgumentError("--tls-cert needs --tls-key");
  if (options.require_client_cert && options.client_ca_file.empty()) {
    return absl::InvalidArgumentError("--require-client-cert needs --tls-client-ca");
  }
  absl::StatusOr<std::string> cert = ReadSecretFile(options.cert_file, "--tls-cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadSecretFile(options.key_file, "--tls-key");
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!options.client_ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadSecretFile(options.client_ca_file, "--tls-client-ca");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    // A certificate, when sent, must verify; whether one is needed at all is the handshake's
    // business only with --require-client-cert (else each service decides: ControlService wants
    // a worker identity, JobService takes a token instead).
    ssl.client_certificate_request =
        options.require_client_cert
            ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
            : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

std::string EnvOrEmpty(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

void DefineClientTlsFlags(Flags* flags, const std::string& cert_help) {
  flags->Define("tls-ca", "", "PEM CA the coordinator's certificate must chain to; turns TLS on");
  flags->Env("tls-ca", "RAPTR_TLS_CA");
  flags->Define("tls-cert", "", cert_help);
  flags->Env("tls-cert", "RAPTR_TLS_CERT");
  flags->Define("tls-key", "", "the key of --tls-cert");
  flags->Env("tls-key", "RAPTR_TLS_KEY");
  flags->Define("tls-server-name", "",
                "the name the coordinator's certificate must carry, when not the --coordinator "
                "host");
}

ClientTlsOptions ClientTlsFromFlags(const Flags& flags) {
  ClientTlsOptions tls;
  tls.ca_file = flags.Get("tls-ca");
  tls.cert_file = flags.Get("tls-cert");
  tls.key_file = flags.Get("tls-key");
  tls.server_name = flags.Get("tls-server-name");
  return tls;
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ClientTlsOptions& options, grpc::ChannelArguments* args) {
  if (!options.enabled()) {
    if (!options.cert_file.empty() || !options.key_file.empty() || !options.server_name.empty()) {
      return absl::InvalidArgumentError(
          "--tls-cert, --tls-key and --tls-server-name need --tls-ca");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> ca = ReadSecretFile(options.ca_file, "--tls-ca");
  if (!ca.ok()) return ca.status();
  ssl.pem_root_certs = *ca;
  if (!options.cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadSecretFile(options.cert_file, "--tls-cert");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadSecretFile(options.key_file, "--tls-key");
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
  }
  if (!options.server_name.empty()) {
    args->SetSslTargetNameOverride(options.server_name);
  }
  return grpc::SslCredentials(ssl);
}

bool PathIsWithin(const std::string& path, const std::string& dir) {
  const std::filesystem::path p = std::filesystem::path(path).lexically_normal();
  const std::filesystem::path d = std::filesystem::path(dir).lexically_normal();
  if (p.is_absolute() != d.is_absolute()) return false;
  auto pi = p.begin();
  for (auto di = d.begin(); di != d.end(); ++di) {
    if (di->empty()) continue;  // the trailing "" of "dir/"
    if (pi == p.end() || *pi != *di) return false;
    ++pi;
  }
  for (; pi != p.end(); ++pi) {
    if (*pi == "..") return false;
  }
  return true;
}

absl::Status CheckNoSymlinksBelow(const std::string& root, const std::string& path) {
  const std::filesystem::path r = std::filesystem::path(root).lexically_normal();
  const std::filesystem::path p = std::filesystem::path(path).lexically_normal();
  size_t root_parts = 0;
  for (const auto& part : r) {
    if (!part.empty()) ++root_parts;
  }
  std::filesystem::path prefix;
  size_t parts = 0;
  for (const auto& part : p) {
    if (part.empty()) continue;
    prefix /= part;
    if (++parts <= root_parts) continue;
    std::error_code error;
    const std::filesystem::file_status status = std::filesystem::symlink_status(prefix, error);
    if (error || !std::filesystem::exists(status)) return absl::OkStatus();  // not there (yet)
    if (std::filesystem::is_symlink(status)) {
      return absl::FailedPreconditionError(
          absl::StrCat(prefix.string(), " is a symbolic link; nothing below ", r.string(),
                       " may be one"));
    }
  }
  return absl::OkStatus();
}

bool IsLoopbackAddress(absl::string_view host_port) {
  // One address only (gRPC also takes lists: "ipv4:127.0.0.1:1,10.0.0.5:2"), and the host must be
  // a loopback literal or exactly "localhost": a name like "127.0.0.1.example.com" is not.
  if (host_port.find(',') != absl::string_view::npos) return false;
  absl::string_view host = host_port;
  absl::ConsumePrefix(&host, "dns:///");
  absl::ConsumePrefix(&host, "ipv4:");
  absl::ConsumePrefix(&host, "ipv6:");
  if (absl::ConsumePrefix(&host, "[")) {
    const size_t end = host.find(']');
    if (end == absl::string_view::npos) return false;
    host = host.substr(0, end);
  } else if (std::count(host.begin(), host.end(), ':') == 1) {
    host = host.substr(0, host.find(':'));
  }
  if (host == "localhost") return true;
  const std::string text(host);
  in_addr v4{};
  if (inet_pton(AF_INET, text.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  return inet_pton(AF_INET6, text.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

}  // namespace raptr
