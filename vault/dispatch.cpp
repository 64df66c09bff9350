#include "vault/dispatch.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <ctime>

#include "api/encoding.h"
#include "api/error.h"
#include "vault/time_format.h"
#include "vault/x509_util.h"

namespace m2mvault::vault {
namespace {

using nlohmann::json;

const json* param(const json& params, std::string_view name) {
  auto it = params.find(name);
  if (it == params.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<std::string> optional_string(const json& params, std::string_view name) {
  const json* v = param(params, name);
  if (!v) return std::nullopt;
  if (!v->is_string()) {
    throw Error(ErrorCode::invalid_argument, fmt::format("parameter '{}' must be a string", name));
  }
  return v->get<std::string>();
}

std::string required_string(const json& params, std::string_view name) {
  auto v = optional_string(params, name);
  if (!v || v->empty()) {
    throw Error(ErrorCode::invalid_argument, fmt::format("parameter '{}' is required", name));
  }
  return *v;
}

std::optional<std::int64_t> optional_time(const json& params, std::string_view name) {
  auto v = optional_string(params, name);
  if (!v) return std::nullopt;
  return parse_rfc3339(*v);
}

std::vector<std::uint8_t> required_base64(const json& params, std::string_view name) {
  std::string text = required_string(params, name);
  auto bytes = encoding::base64_decode(text);
  if (!bytes) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("parameter '{}' is not valid base64", name));
  }
  return *bytes;
}

hsm::SigningAlgorithm parse_algorithm(std::string_view text) {
  if (text == "ec-p256") return hsm::SigningAlgorithm::ec_p256;
  if (text == "rsa-2048") return hsm::SigningAlgorithm::rsa_2048;
  throw Error(ErrorCode::invalid_argument,
              fmt::format("unknown algorithm '{}' (expected ec-p256 or rsa-2048)", text));
}

hsm::SignatureScheme parse_scheme(std::string_view text) {
  if (text == "ecdsa") return hsm::SignatureScheme::ecdsa;
  if (text == "rsa-pkcs1") return hsm::SignatureScheme::rsa_pkcs1;
  if (text == "rsa-pss") return hsm::SignatureScheme::rsa_pss;
  throw Error(
      ErrorCode::invalid_argument,
      fmt::format("unknown signature scheme '{}' (expected ecdsa, rsa-pkcs1 or rsa-pss)", text));
}

json optional_json(const std::optional<std::string>& v) {
  return v ? json(*v) : json(nullptr);
}

// The key named by a request, for the log line (never a value).
std::string key_of(const api::Request& request) {
  for (const char* name : {"key", "psk_key", "name", "id", "session"}) {
    auto it = request.params.find(name);
    if (it != request.params.end() && it->is_string()) return it->get<std::string>();
  }
  return "-";
}

std::string name_text(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

std::string time_text(const ASN1_TIME* t) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return "";
  return format_rfc3339(static_cast<std::int64_t>(timegm(&tm)));
}

// A signing key's certificate as key.show returns it.
json certificate_to_json(const std::string& pem) {
  auto chain = read_certificates(pem, "the key's certificate");
  X509* leaf = chain.front().get();
  const CertificateNames names = names_of(leaf);
  json san = json::array();
  for (const auto& d : names.dns) san.push_back("DNS:" + d);
  for (const auto& u : names.uri) san.push_back("URI:" + u);
  return {{"subject", name_text(X509_get_subject_name(leaf))},
          {"issuer", name_text(X509_get_issuer_name(leaf))},
          {"not_before", time_text(X509_get0_notBefore(leaf))},
          {"not_after", time_text(X509_get0_notAfter(leaf))},
          {"san", std::move(san)},
          {"chain_length", chain.size()},
          {"pem", pem}};
}

std::optional<IdFormat> optional_id_format(const json& params) {
  auto text = optional_string(params, "id_format");
  if (!text) return std::nullopt;
  if (*text == "base64") return IdFormat::base64;
  if (*text == "hex") return IdFormat::hex;
  throw Error(ErrorCode::invalid_argument,
              fmt::format("unknown id_format '{}' (expected base64 or hex)", *text));
}

std::vector<std::uint8_t> optional_base64(const json& params, std::string_view name) {
  if (!param(params, name)) return {};
  auto text = optional_string(params, name);
  if (text->empty()) return {};
  return required_base64(params, name);
}

json progress_to_json(const Handshakes::Progress& progress) {
  json j = {{"session", progress.session},
            {"output", encoding::base64_encode(progress.output)},
            {"done", progress.done}};
  if (progress.key) {
    j["key"] = key_to_json(*progress.key);
    j["cipher"] = progress.cipher;
  }
  return j;
}

}  // namespace

json key_to_json(const KeyRecord& r) {
  json j = {
      {"name", r.name},
      {"kind", std::string(to_string(r.kind))},
      {"id", optional_json(r.identifier)},
      {"entity", optional_json(r.entity)},
      {"created", format_rfc3339(r.created)},
      {"expires", r.expires ? json(format_rfc3339(*r.expires)) : json(nullptr)},
      {"storage", std::string(to_string(r.storage))},
  };
  if (is_symmetric(r.kind)) {
    j["length"] = r.length;
    j["check_value"] = optional_json(r.check_value);
  } else {
    j["algorithm"] = r.algorithm;
  }
  if (r.parent) j["parent"] = *r.parent;
  if (r.peer) j["peer"] = *r.peer;
  if (r.certificate) j["certificate"] = certificate_to_json(*r.certificate);
  if (r.storage == Storage::adopted) {
    j["token_label"] = r.token_label;
    j["object_id"] = encoding::hex_encode(r.object_id);
  }
  return j;
}

Dispatcher::Dispatcher(Vault& vault, Handshakes& handshakes, const policies::Policy& policy)
    : vault_(vault),
      handshakes_(handshakes),
      policy_(policy),
      started_(std::chrono::steady_clock::now()) {}

json Dispatcher::handle(const api::Principal& principal, const api::Request& request) {
  auto grant = policies::grant_for_operation(request.op);
  if (!grant) {
    throw Error(ErrorCode::unsupported, fmt::format("unknown operation '{}'", request.op));
  }
  auto decision = policy_.authorize({principal.uid, principal.gid, principal.groups}, *grant);
  if (!decision.allowed) {
    spdlog::warn("denied op={} key={} uid={} pid={}: {}", request.op, key_of(request),
                 principal.uid, principal.pid, decision.reason);
    throw Error(ErrorCode::denied,
                fmt::format("operation '{}' denied: {}", request.op, decision.reason));
  }
  try {
    json result = dispatch(principal, request);
    if (*grant == policies::Grant::key_create || *grant == policies::Grant::key_delete) {
      spdlog::info("op={} key={} uid={} pid={} ok", request.op, key_of(request), principal.uid,
                   principal.pid);
    }
    return result;
  } catch (const Error& e) {
    spdlog::info("op={} key={} uid={} pid={} failed: {}: {}", request.op, key_of(request),
                 principal.uid, principal.pid, to_string(e.code()), e.what());
    throw;
  }
}

json Dispatcher::dispatch(const api::Principal& principal, const api::Request& request) {
  const std::string& op = request.op;
  const json& p = request.params;

  if (op == "ping") return json::object();

  if (op == "status") {
    auto info = vault_.backend();
    auto uptime = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::steady_clock::now() - started_)
                      .count();
    return {{"version", "0.1.0"},
            {"protocol", 1},
            {"backend", info.backend},
            {"module", info.module},
            {"token_label", info.token_label},
            {"token_model", info.token_model},
            {"keys", vault_.count()},
            {"uptime_seconds", uptime}};
  }

  if (op == "key.import") {
    ImportSpec spec;
    spec.kind = parse_key_kind(required_string(p, "kind"));
    spec.identifier = required_string(p, "id");
    spec.name = optional_string(p, "name");
    spec.entity = optional_string(p, "entity");
    spec.expires = optional_time(p, "expires");
    // The value is on its way into the token: held only for this call.
    auto value_text = required_string(p, "value");
    auto size = encoding::base64_decoded_size(value_text);
    if (!size) throw Error(ErrorCode::invalid_argument, "parameter 'value' is not valid base64");
    hsm::SecureBuffer secret(*size);
    if (!encoding::base64_decode_into(value_text, secret.span())) {
      throw Error(ErrorCode::invalid_argument, "parameter 'value' is not valid base64");
    }
    return key_to_json(vault_.import_key(spec, secret.span()));
  }

  if (op == "key.generate") {
    auto kind = parse_key_kind(optional_string(p, "kind").value_or("signing"));
    if (kind != KeyKind::signing) {
      throw Error(ErrorCode::unsupported,
                  fmt::format("cannot generate a {} key: only signing keys are generated; "
                              "symmetric keys are imported, derived or exported by a handshake",
                              to_string(kind)));
    }
    GenerateSpec spec;
    spec.name = required_string(p, "name");
    spec.algorithm = parse_algorithm(optional_string(p, "alg").value_or("ec-p256"));
    spec.entity = optional_string(p, "entity");
    spec.expires = optional_time(p, "expires");
    return key_to_json(vault_.generate_signing_key(spec));
  }

  if (op == "key.adopt") {
    auto kind = parse_key_kind(optional_string(p, "kind").value_or("signing"));
    if (kind != KeyKind::signing) {
      throw Error(ErrorCode::unsupported, "only signing keys can be adopted from a token");
    }
    AdoptSpec spec;
    spec.name = required_string(p, "name");
    spec.token_label = required_string(p, "token_label");
    spec.object = required_string(p, "object");
    spec.entity = optional_string(p, "entity");
    return key_to_json(vault_.adopt_signing_key(spec));
  }

  if (op == "key.list") {
    // Paged so that a response stays far below the 1 MiB frame limit.
    constexpr std::size_t kDefaultPage = 500, kMaxPage = 1000;
    std::optional<KeyKind> kind;
    if (auto k = optional_string(p, "kind")) kind = parse_key_kind(*k);
    std::size_t limit = kDefaultPage;
    if (const json* l = param(p, "limit")) {
      if (!l->is_number_integer() || l->get<std::int64_t>() < 1 ||
          l->get<std::int64_t>() > std::int64_t{kMaxPage}) {
        throw Error(ErrorCode::invalid_argument,
                    fmt::format("parameter 'limit' must be 1 to {}", kMaxPage));
      }
      limit = l->get<std::size_t>();
    }
    auto page = vault_.list_page(kind, optional_string(p, "after").value_or(""), limit + 1);
    json next = nullptr;
    if (page.size() > limit) {
      page.resize(limit);
      next = page.back().name;
    }
    json keys = json::array();
    for (const auto& r : page) keys.push_back(key_to_json(r));
    return {{"keys", std::move(keys)}, {"next", std::move(next)}};
  }

  if (op == "key.show") return key_to_json(vault_.show(required_string(p, "key")));

  if (op == "key.public") {
    auto key = required_string(p, "key");
    return {{"pem", vault_.public_key_pem(key)}};
  }

  if (op == "key.check") {
    auto check = vault_.check(required_string(p, "key"));
    return {{"name", check.record.name},
            {"check_value", check.check_value},
            {"matches", check.matches}};
  }

  if (op == "key.delete") return key_to_json(vault_.remove(required_string(p, "key")));

  if (op == "key.derive") {
    DeriveSpec spec;
    const std::string derivation = required_string(p, "derivation");
    const char* subject_param = nullptr;
    if (derivation == "km") {
      spec.derivation = Derivation::master_credential;
      subject_param = "maf_id";
    } else if (derivation == "kpsa") {
      spec.derivation = Derivation::provisioned_secure_connection_key;
      subject_param = "enrolee_b_id";
    } else if (derivation == "usage") {
      spec.derivation = Derivation::usage_constrained_key;
      subject_param = "target";
      const json* suid = param(p, "suid");
      if (!suid || !suid->is_number_integer()) {
        throw Error(ErrorCode::invalid_argument, "parameter 'suid' (an integer) is required");
      }
      spec.suid = suid->get<int>();
    } else {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("unknown derivation '{}' (expected km, kpsa or usage)", derivation));
    }
    spec.parent = required_string(p, "ke");
    // An empty identity string is allowed: the HMAC input is then the label alone.
    auto subject = optional_string(p, subject_param);
    if (!subject)
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("parameter '{}' is required", subject_param));
    spec.subject = *subject;
    spec.identifier = optional_string(p, "id");
    spec.name = optional_string(p, "name");
    spec.entity = optional_string(p, "entity");
    spec.expires = optional_time(p, "expires");
    return key_to_json(vault_.derive(spec));
  }

  if (op == "cert.csr") {
    std::vector<std::string> sans;
    if (const json* list = param(p, "san")) {
      if (!list->is_array())
        throw Error(ErrorCode::invalid_argument, "parameter 'san' must be an array of strings");
      for (const auto& v : *list) {
        if (!v.is_string())
          throw Error(ErrorCode::invalid_argument, "parameter 'san' must be an array of strings");
        sans.push_back(v.get<std::string>());
      }
    }
    return {{"pem", vault_.certificate_request(required_string(p, "key"),
                                               required_string(p, "subject"), sans)}};
  }

  if (op == "cert.import") {
    return key_to_json(
        vault_.attach_certificate(required_string(p, "key"), required_string(p, "pem")));
  }

  if (op == "handshake.start") return handshake_start(principal, p);

  if (op == "handshake.step") {
    auto input = optional_base64(p, "input");
    return progress_to_json(handshakes_.step(principal.uid, required_string(p, "session"), input));
  }

  if (op == "handshake.abort") {
    handshakes_.abort(principal.uid, required_string(p, "session"));
    return json::object();
  }

  if (op == "key.set_id") {
    return key_to_json(vault_.set_identifier(required_string(p, "key"), required_string(p, "id")));
  }

  if (op == "sign") {
    auto key = required_string(p, "key");
    auto scheme = parse_scheme(optional_string(p, "scheme").value_or("ecdsa"));
    auto digest = required_base64(p, "digest");
    auto signature = vault_.sign(key, scheme, digest);
    return {{"signature", encoding::base64_encode(signature)}};
  }

  throw Error(ErrorCode::unsupported, fmt::format("unknown operation '{}'", op));
}

json Dispatcher::handshake_start(const api::Principal& principal, const json& p) {
  HandshakeSpec spec;
  const std::string procedure = required_string(p, "procedure");
  if (procedure == "enrolment") {
    spec.procedure = HandshakeProcedure::enrolment;
  } else if (procedure == "maf") {
    spec.procedure = HandshakeProcedure::maf;
  } else if (procedure == "escertke-initiate") {
    spec.procedure = HandshakeProcedure::escertke_initiate;
  } else if (procedure == "escertke-respond") {
    spec.procedure = HandshakeProcedure::escertke_respond;
  } else {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("unknown procedure '{}' (expected enrolment, maf, escertke-initiate "
                            "or escertke-respond)",
                            procedure));
  }
  spec.psk_key = optional_string(p, "psk_key");
  spec.signing_key = optional_string(p, "key");
  spec.peer_name = optional_string(p, "peer_name").value_or("");
  if (auto rot = optional_string(p, "root_of_trust")) {
    auto bytes = encoding::hex_decode(*rot);
    if (!bytes || bytes->size() != 32) {
      throw Error(ErrorCode::invalid_argument,
                  "parameter 'root_of_trust' must be a SHA-256 hash: 64 hex digits");
    }
    std::array<std::uint8_t, 32> hash{};
    std::copy(bytes->begin(), bytes->end(), hash.begin());
    spec.root_of_trust = hash;
  }
  spec.anchors_pem = optional_string(p, "anchors").value_or("");
  spec.fqdn = optional_string(p, "fqdn").value_or("");
  spec.id_format = optional_id_format(p);
  spec.expires = optional_time(p, "expires");
  spec.target = optional_string(p, "target");
  spec.peer = optional_string(p, "peer");
  spec.name = optional_string(p, "name");
  spec.cipher_suites = optional_string(p, "cipher_suites").value_or("");
  auto input = optional_base64(p, "input");
  return progress_to_json(handshakes_.start(principal.uid, spec, input));
}

}  // namespace m2mvault::vault
