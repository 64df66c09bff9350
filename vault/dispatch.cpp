#include "vault/dispatch.h"

#include <fmt/format.h>
#include <grp.h>
#include <pwd.h>
#include <spdlog/spdlog.h>

#include <algorithm>
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

// A usage limit: a positive integer, or absent.
std::optional<std::int64_t> optional_max_uses(const json& params) {
  const json* v = param(params, "max_uses");
  if (!v) return std::nullopt;
  if (!v->is_number_integer() || v->get<std::int64_t>() < 1) {
    throw Error(ErrorCode::invalid_argument, "parameter 'max_uses' must be a positive integer");
  }
  return v->get<std::int64_t>();
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
  for (const char* name : {"key", "psk_key", "ke", "name", "id", "session"}) {
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
  if (r.max_uses) {
    j["max_uses"] = *r.max_uses;
    j["uses"] = r.uses;
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

Dispatcher::Dispatcher(Vault& vault, Handshakes& handshakes, policies::PolicyStore& policies,
                       RequestAudit* audit)
    : vault_(vault),
      handshakes_(handshakes),
      policies_(policies),
      audit_(audit),
      batches_(vault),
      started_(std::chrono::steady_clock::now()) {
  if (audit_) {
    const auto& limits = policies_.current()->limits();
    audit_->set_flood_limits(limits.denial_flood_threshold, limits.denial_flood_window);
  }
}

struct Dispatcher::Context {
  const api::Principal& principal;
  std::shared_ptr<const policies::PolicyFile> policy;
  bool administrator;
};

namespace {

// Operations whose success changes what keys exist or how they are
// governed: their audit record is on disk before the response. (A handshake
// step is, when it completes and stores a key: see handle().)
bool is_durable(policies::Grant grant, std::string_view op) {
  return grant == policies::Grant::key_create || grant == policies::Grant::key_delete ||
         grant == policies::Grant::derive || op == "policy.reload";
}

policies::KeyFacts facts_of(const KeyRecord& r) {
  return {r.name, r.identifier, std::string(to_string(r.kind))};
}

}  // namespace

std::optional<policies::KeyFacts> Dispatcher::key_facts(const api::Request& request,
                                                        std::string* key_id) const {
  const json& p = request.params;
  auto text = [&](const char* name) -> std::optional<std::string> {
    auto it = p.find(name);
    if (it == p.end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
  };
  const std::string& op = request.op;
  // A key the request creates: what it will be called and of which kind.
  if (op == "key.import") {
    auto id = text("id");
    return policies::KeyFacts{text("name").value_or(id.value_or("")), id,
                              text("kind").value_or("")};
  }
  if (op == "key.generate" || op == "key.adopt") {
    return policies::KeyFacts{text("name").value_or(""), std::nullopt, "signing"};
  }
  // A key the request uses.
  std::optional<std::string> named;
  if (op == "key.derive") {
    named = text("ke");
  } else if (op == "handshake.start") {
    named = text("psk_key");
    if (!named) named = text("key");
  } else if (op == "psk.release") {
    named = text("id");
    if (!named) named = text("key");
  } else if (op.starts_with("key.") || op == "sign" || op.starts_with("cert.")) {
    named = text("key");
  }
  if (!named) return std::nullopt;
  if (auto record = vault_.find(*named)) {
    if (key_id && record->identifier) *key_id = *record->identifier;
    return facts_of(*record);
  }
  // Unknown: judged by its name alone; the operation then says not_found.
  return policies::KeyFacts{*named, *named, "unknown"};
}

json Dispatcher::handle(const api::Principal& principal, const api::Request& request) {
  auto grant = policies::grant_for_operation(request.op);
  if (!grant) {
    throw Error(ErrorCode::unsupported, fmt::format("unknown operation '{}'", request.op));
  }
  Context context{principal, policies_.current(), false};
  const policies::Principal who{principal.uid, principal.gid, principal.groups};
  context.administrator = context.policy->is_administrator(who);
  std::string key_id;
  const std::string key = key_of(request);
  RequestAudit::Entry entry{&principal, request.op, key, "", "ok", "", false};
  const bool audited = audit_ && request.op != "ping";  // ping touches no key

  auto refuse = [&](ErrorCode code, const std::string& message) -> Error {
    spdlog::warn("denied op={} key={} uid={} pid={}: {}", request.op, key, principal.uid,
                 principal.pid, message);
    if (audited) {
      entry.result = "denied";
      entry.error = to_string(code);
      entry.key_id = key_id;
      audit_->record_denial(entry);
    }
    return Error(code, message);
  };

  if (!context.administrator && context.policy->limits().requests_per_second > 0) {
    bool allowed = true;
    {
      std::lock_guard lock(limiter_mutex_);
      if (limiter_policy_ != context.policy) {  // a reload brings new limits
        limiter_ = std::make_unique<policies::RateLimiter>(
            context.policy->limits().requests_per_second, context.policy->limits().burst);
        limiter_policy_ = context.policy;
      }
      allowed = limiter_->allow(principal.uid, std::chrono::steady_clock::now());
    }
    if (!allowed) {
      throw refuse(ErrorCode::backend_unavailable,
                   fmt::format("uid {} is over its rate limit of {} requests per second",
                               principal.uid, context.policy->limits().requests_per_second));
    }
  }
  // An administrator holds every grant on every key: no lookup is needed
  // to decide (the audit record then takes the identifier from the result).
  if (*grant != policies::Grant::none && !context.administrator) {
    const auto facts = key_facts(request, &key_id);
    const auto decision = context.policy->authorize(who, *policies::as_policy_grant(*grant),
                                                    facts ? &*facts : nullptr);
    if (!decision.allowed) {
      throw refuse(ErrorCode::denied,
                   fmt::format("operation '{}' denied: {}", request.op, decision.reason));
    }
  }
  // Reading the audit log stays possible while it cannot be written: that
  // is when an operator needs `audit verify`. Everything else fails closed.
  const bool reads_audit = *grant == policies::Grant::audit_read;
  auto write_audit = [&](const RequestAudit::Entry& e) {
    if (!reads_audit) return audit_->record(e);
    try {
      audit_->record(e);
    } catch (const Error& failure) {
      spdlog::error("{} by uid {} not audited: {}", request.op, principal.uid, failure.what());
    }
  };
  entry.durable = is_durable(*grant, request.op);
  const bool handshake = request.op == "handshake.start" || request.op == "handshake.step";
  if (audited && (entry.durable || handshake)) {
    // A request that changes keys or the policy is first recorded as
    // started: if the log cannot take a record, nothing has happened yet.
    // (Any other request leaves nothing behind when its record then fails:
    // its answer is withheld, and that is enough.)
    RequestAudit::Entry started = entry;
    started.result = "started";
    started.durable = false;
    audit_->record(started);
  }
  try {
    json result = dispatch(context, request);
    // The identifier of a key the operation created (a key object, or a
    // finished handshake's `key`) when the request did not name one.
    const json* made = result.is_object() && result.contains("key") && result["key"].is_object()
                           ? &result["key"]
                           : &result;
    if (made->is_object()) {
      if (auto it = made->find("id"); it != made->end() && it->is_string()) key_id = *it;
    }
    if (*grant == policies::Grant::key_create || *grant == policies::Grant::key_delete) {
      spdlog::info("op={} key={} uid={} pid={} ok", request.op, key, principal.uid, principal.pid);
    }
    if (audited) {
      entry.key_id = key_id;
      // The step that completes a handshake has stored a key.
      if (handshake && result.is_object() && result.value("done", false)) entry.durable = true;
      write_audit(entry);
    }
    return result;
  } catch (const Error& e) {
    spdlog::info("op={} key={} uid={} pid={} failed: {}: {}", request.op, key, principal.uid,
                 principal.pid, to_string(e.code()), e.what());
    if (audited && e.code() != ErrorCode::backend_unavailable) {
      entry.result = "error";
      entry.error = to_string(e.code());
      entry.key_id = key_id;
      entry.durable = false;
      write_audit(entry);
    }
    throw;
  }
}

json Dispatcher::import_batch(const Context& context, const json& p) {
  const std::string batch = optional_string(p, "batch").value_or("");
  auto flag = [&](const char* name) {
    const json* v = param(p, name);
    if (v && !v->is_boolean()) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("parameter '{}' must be a boolean", name));
    }
    return v && v->get<bool>();
  };
  const uid_t uid = context.principal.uid;
  if (flag("abort")) {
    if (batch.empty()) throw Error(ErrorCode::invalid_argument, "parameter 'batch' is required");
    batches_.abort(uid, batch);
    return {{"batch", nullptr}, {"aborted", true}};
  }
  std::vector<ImportSpec> specs;
  std::vector<hsm::SecureBuffer> values;
  std::vector<Catalog::BatchProblem> refused;  // malformed, or not allowed by the policy
  std::vector<std::size_t> row_of;             // specs[i] is rows[row_of[i]]
  if (const json* rows = param(p, "rows")) {
    if (!rows->is_array())
      throw Error(ErrorCode::invalid_argument, "parameter 'rows' must be an array");
    const policies::Principal who{uid, context.principal.gid, context.principal.groups};
    for (std::size_t i = 0; i < rows->size(); ++i) {
      const json& row = (*rows)[i];
      ImportSpec spec;
      hsm::SecureBuffer value;
      try {
        if (!row.is_object()) throw Error(ErrorCode::invalid_argument, "a row must be an object");
        spec.kind = parse_key_kind(required_string(row, "kind"));
        spec.identifier = required_string(row, "id");
        spec.name = optional_string(row, "name");
        spec.entity = optional_string(row, "entity");
        spec.expires = optional_time(row, "expires");
        spec.max_uses = optional_max_uses(row);
        auto text = required_string(row, "value");
        auto size = encoding::base64_decoded_size(text);
        if (!size) throw Error(ErrorCode::invalid_argument, "'value' is not valid base64");
        value = hsm::SecureBuffer(*size);
        if (!encoding::base64_decode_into(text, value.span()))
          throw Error(ErrorCode::invalid_argument, "'value' is not valid base64");
        if (!context.administrator) {
          const policies::KeyFacts facts{spec.name.value_or(spec.identifier), spec.identifier,
                                         std::string(to_string(spec.kind))};
          auto decision = context.policy->authorize(who, policies::PolicyGrant::key_create, &facts);
          if (!decision.allowed) throw Error(ErrorCode::denied, decision.reason);
        }
      } catch (const Error& e) {
        refused.push_back({i, fmt::format("{}: {}", to_string(e.code()), e.what())});
        continue;
      }
      specs.push_back(std::move(spec));
      values.push_back(std::move(value));
      row_of.push_back(i);
    }
  }
  auto outcome = batches_.stage(uid, batch, specs, values, flag("commit"), !refused.empty());
  for (auto& problem : outcome.problems) problem.index = row_of[problem.index];
  outcome.problems.insert(outcome.problems.end(), refused.begin(), refused.end());
  std::sort(outcome.problems.begin(), outcome.problems.end(),
            [](const auto& a, const auto& b) { return a.index < b.index; });
  json problems = json::array();
  for (const auto& problem : outcome.problems) {
    problems.push_back({{"row", problem.index}, {"message", problem.message}});
  }
  return {{"batch", outcome.batch.empty() ? json(nullptr) : json(outcome.batch)},
          {"staged", outcome.staged},
          {"committed", outcome.committed},
          {"problems", std::move(problems)}};
}

json Dispatcher::dispatch(const Context& context, const api::Request& request) {
  const std::string& op = request.op;
  const json& p = request.params;
  const api::Principal& principal = context.principal;

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
    spec.max_uses = optional_max_uses(p);
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
    spec.max_uses = optional_max_uses(p);
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
    const policies::Principal who{principal.uid, principal.gid, principal.groups};
    for (const auto& r : page) {
      // A principal sees only the keys it may key.read.
      if (context.administrator || context.policy->may_read_key(who, facts_of(r)))
        keys.push_back(key_to_json(r));
    }
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
    spec.max_uses = optional_max_uses(p);
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

  if (op == "policy.reload") {
    const std::string described = policies_.reload();
    if (audit_) {
      const auto& limits = policies_.current()->limits();
      audit_->set_flood_limits(limits.denial_flood_threshold, limits.denial_flood_window);
    }
    spdlog::info("policy reloaded by uid {}: {}", principal.uid, described);
    return {{"policy", described}};
  }

  if (op == "policy.check") return policy_check(p);

  if (op == "audit.show" || op == "audit.verify" || op == "audit.stats") {
    if (!audit_) throw Error(ErrorCode::unsupported, "this daemon keeps no audit log");
    return audit_->query(op, p);
  }

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

  if (op == "key.import_batch") return import_batch(context, p);

  if (op == "psk.release") {
    // A TLS server passes the psk_identity it received as `id`; `key` takes
    // a name too. The answer binds the PSK to its entity and nothing else.
    auto id = optional_string(p, "id");
    auto key = optional_string(p, "key");
    if (id.has_value() == key.has_value() || (id ? *id : *key).empty()) {
      throw Error(ErrorCode::invalid_argument, "give exactly one of 'id' and 'key'");
    }
    auto released = vault_.release_psk(id ? *id : *key, id.has_value());
    const KeyRecord& r = released.record;
    return {{"name", r.name},
            {"kind", std::string(to_string(r.kind))},
            {"id", optional_json(r.identifier)},
            {"entity", optional_json(r.entity)},
            {"value", encoding::base64_encode(released.value.span())}};
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

// Explains what the policy in force decides for a uid, an operation and
// optionally a key: `m2mvault policy check`.
json Dispatcher::policy_check(const json& p) const {
  const json* uid_param = param(p, "uid");
  if (!uid_param || !uid_param->is_number_unsigned())
    throw Error(ErrorCode::invalid_argument, "parameter 'uid' (a number) is required");
  const auto uid = uid_param->get<uid_t>();
  const std::string op = required_string(p, "op");
  // A wire operation, or a grant by its policy-file name (psk.release, ...).
  auto grant = policies::grant_for_operation(op);
  if (!grant) grant = policies::grant_named(op);
  if (!grant) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("'{}' is neither an operation nor a grant", op));
  }
  // The uid's groups as the kernel would report them for its processes.
  policies::Principal who{uid, static_cast<gid_t>(-1), {}};
  if (const passwd* pw = ::getpwuid(uid)) {
    who.gid = pw->pw_gid;
    int count = 64;
    std::vector<gid_t> groups(static_cast<std::size_t>(count));
    if (::getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &count) >= 0) {
      groups.resize(static_cast<std::size_t>(count));
      who.groups = std::move(groups);
    }
  }
  if (auto gid = param(p, "gid"); gid && gid->is_number_unsigned()) who.gid = gid->get<gid_t>();
  auto policy = policies_.current();
  if (*grant == policies::Grant::none) {
    return {{"allowed", true}, {"grant", "none"}, {"reason", "operation needs no grant"}};
  }
  std::optional<policies::KeyFacts> facts;
  if (auto key = optional_string(p, "key")) {
    auto record = vault_.find(*key);
    facts = record ? facts_of(*record) : policies::KeyFacts{*key, *key, "unknown"};
  }
  auto decision =
      policy->authorize(who, *policies::as_policy_grant(*grant), facts ? &*facts : nullptr);
  return {{"allowed", decision.allowed},
          {"grant", std::string(policies::to_string(*grant))},
          {"reason", decision.reason},
          {"policy", policy->describe()}};
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
