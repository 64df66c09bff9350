// m2mvault: the command-line client of m2mvaultd.
//
// Every error is one line on stderr, "m2mvault: <code>: <message>", and a
// non-zero exit status (docs/CLI.md lists them). Key values are accepted on
// the way in (import) and never printed.
#include <fmt/format.h>
#include <openssl/crypto.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "api/client.h"
#include "api/encoding.h"
#include "api/error.h"
#include "engine/provider/key_reference.h"
#include "tools/psk_table.h"
#include "tools/tls_relay.h"

namespace {

using m2mvault::Error;
using m2mvault::ErrorCode;
using nlohmann::json;

constexpr int kUsageExit = 2;

int exit_status(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument:
      return 10;
    case ErrorCode::not_found:
      return 11;
    case ErrorCode::denied:
      return 12;
    case ErrorCode::conflict:
      return 13;
    case ErrorCode::expired:
      return 14;
    case ErrorCode::unsupported:
      return 15;
    case ErrorCode::backend_unavailable:
      return 16;
    case ErrorCode::internal:
      return 17;
    case ErrorCode::handshake_failed:
      return 18;
  }
  return 1;
}

// Wipes a string or vector that held key material.
template <typename T>
void wipe(T& buffer) {
  if (!buffer.empty()) OPENSSL_cleanse(buffer.data(), buffer.size() * sizeof(buffer[0]));
  buffer.clear();
}

std::string text_or_dash(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return "-";
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

void print_key_human(const json& key) {
  static const char* kFields[] = {"name",        "kind",      "id",       "entity",
                                  "created",     "expires",   "storage",  "length",
                                  "check_value", "algorithm", "parent",   "peer",
                                  "token_label", "object_id", "max_uses", "uses"};
  for (const char* field : kFields) {
    if (key.contains(field))
      fmt::print("{:<12} {}\n", std::string(field) + ":", text_or_dash(key, field));
  }
  if (key.contains("certificate")) {
    const json& c = key["certificate"];
    std::string san;
    for (const auto& s : c.value("san", json::array()))
      san += (san.empty() ? "" : ", ") + s.get<std::string>();
    fmt::print(
        "certificate: {}\n  issuer:    {}\n  valid:     {} .. {}\n  san:       {}\n  chain:     {} "
        "certificate(s)\n",
        text_or_dash(c, "subject"), text_or_dash(c, "issuer"), text_or_dash(c, "not_before"),
        text_or_dash(c, "not_after"), san.empty() ? "-" : san, text_or_dash(c, "chain_length"));
  }
}

void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width(rows[0].size(), 0);
  for (const auto& row : rows)
    for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += i + 1 < row.size() ? fmt::format("{:<{}}  ", row[i], width[i]) : row[i];
    }
    fmt::print("{}\n", line);
  }
}

void print_key_table(const json& keys) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"NAME", "KIND", "ID", "ENTITY", "EXPIRES", "CHECK/ALG"});
  for (const auto& k : keys) {
    std::string check =
        k.contains("check_value") ? text_or_dash(k, "check_value") : text_or_dash(k, "algorithm");
    rows.push_back({text_or_dash(k, "name"), text_or_dash(k, "kind"), text_or_dash(k, "id"),
                    text_or_dash(k, "entity"), text_or_dash(k, "expires"), check});
  }
  print_table(rows);
}

std::vector<std::uint8_t> read_key_file(const std::string& path) {
  std::vector<std::uint8_t> bytes;
  if (path == "-") {
    bytes.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in)
      throw Error(ErrorCode::invalid_argument, fmt::format("cannot read key file '{}'", path));
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (bytes.empty())
    throw Error(ErrorCode::invalid_argument, fmt::format("key file '{}' is empty", path));
  return bytes;
}

struct Options {
  std::string socket;
  bool json_output = false;
};

m2mvault::api::Client connect(const Options& o) {
  return m2mvault::api::Client(o.socket.empty() ? m2mvault::api::default_socket_path()
                                                : std::filesystem::path(o.socket));
}

void emit_key(const Options& o, const json& key) {
  if (o.json_output) {
    fmt::print("{}\n", key.dump(2));
  } else {
    print_key_human(key);
  }
}

// The command line: each verb's options live here and its callback sets
// `action`, which main runs after parsing.
struct Cli {
  Options o;
  std::function<void()> action;

  // key import / generate / adopt / list / show / public / delete / check / set-id
  std::string kind, id, name, entity, expires, hex, in_file, alg = "ec-p256";
  std::string token_label, object, key_ref, new_id;
  // derive
  std::string ke, subject;
  int suid = -1;
  std::int64_t max_uses = 0;  // 0: no usage limit

  void add_status(CLI::App& app);
  void add_key_import(CLI::App& key);
  void add_key_generate(CLI::App& key);
  void add_key_adopt(CLI::App& key);
  void add_key_queries(CLI::App& key);
  void add_key_set_id(CLI::App& key);
  void add_derive(CLI::App& app);
  void add_key_psk(CLI::App& key);
  void add_key_reference(CLI::App& key);
  void add_psk_table(CLI::App& app);
  void import_psk_rows(m2mvault::tools::PskTable& table);
  void add_max_uses(CLI::App* cmd);
  void put_max_uses(json& params) const {
    if (max_uses > 0) params["max_uses"] = max_uses;
  }

  // enrol / maf-handshake / escertke / cert
  std::string peer_address, fqdn, psk_key, signing_key, peer_name, root_of_trust, ca_file;
  std::string id_format, target, peer, ciphers, session, message, subject_dn, out_file, cert_file;
  std::vector<std::string> sans;
  bool message_mode = false;
  int timeout_s = 30;

  void add_handshake_common(CLI::App* cmd, bool certificate_only);
  json handshake_params(const std::string& procedure) const;
  void run_tcp_handshake(const std::string& procedure, bool listen);
  void print_handshake_result(const json& progress) const;
  void print_message(const json& progress) const;
  void add_enrol(CLI::App& app);
  void add_maf_handshake(CLI::App& app);
  void add_escertke(CLI::App& app);
  void add_cert(CLI::App& app);

  // policy / audit
  unsigned check_uid = 0;
  std::string check_op, principal_filter, op_filter, result_filter, since, until;
  std::size_t limit = 0;
  void add_policy(CLI::App& app);
  void add_audit(CLI::App& app);
};

std::string read_text_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::invalid_argument, fmt::format("cannot read {} '{}'", what, path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void Cli::add_handshake_common(CLI::App* cmd, bool certificate_only) {
  cmd->add_option("--key", signing_key,
                  certificate_only
                      ? "Signing key (with a certificate attached) to authenticate with"
                      : "Certificate variant: the signing key (with a certificate "
                        "attached) to authenticate with");
  cmd->add_option("--peer-name", peer_name,
                  "The peer's Certificate Name: must equal a subjectAltName DNS/URI entry or the "
                  "Subject CN of its certificate (TS-0003 8.1.1.2.2), e.g. "
                  "my.m2mprovider.org/in-cse");
  cmd->add_option("--root-of-trust", root_of_trust,
                  "SHA-256 (64 hex digits) of the DER SubjectPublicKeyInfo of the peer's root CA, "
                  "or of its self-signed certificate");
  cmd->add_option("--ca", ca_file,
                  "PEM file with the certificate carrying the Root of Trust, for peers that do not "
                  "send it (by default the peer's chain and the key's own chain are searched)");
  cmd->add_option("--name", name, "Name of the stored key (default: its identifier)");
  cmd->add_option("--expires", expires,
                  "Expiry of the stored key, RFC 3339 (default: docs/HANDSHAKES.md; never later "
                  "than the credential's)");
  cmd->add_option("--id-format", id_format, "encode() of the key id: base64 or hex")
      ->check(CLI::IsMember({"base64", "hex"}));
  cmd->add_option("--ciphers", ciphers, "OpenSSL cipher list (default: the oneM2M suite)");
  cmd->add_option("--timeout", timeout_s,
                  "TCP mode: seconds to wait for a connection and for each answer of the peer "
                  "(the daemon ends an unfinished handshake after [handshake] timeout_s, 60)")
      ->check(CLI::Range(1, 3600));
  cmd->add_flag("--json", o.json_output, "Print the stored key as JSON");
}

json Cli::handshake_params(const std::string& procedure) const {
  json p = {{"procedure", procedure}};
  auto put = [&p](const char* field, const std::string& value) {
    if (!value.empty()) p[field] = value;
  };
  put("psk_key", psk_key);
  put("key", signing_key);
  put("peer_name", peer_name);
  put("root_of_trust", root_of_trust);
  if (!ca_file.empty()) p["anchors"] = read_text_file(ca_file, "CA file");
  put("fqdn", fqdn);
  put("id_format", id_format);
  put("expires", expires);
  put("target", target);
  put("peer", peer);
  put("name", name);
  put("cipher_suites", ciphers);
  return p;
}

void Cli::print_handshake_result(const json& progress) const {
  const json& key = progress.at("key");
  if (o.json_output) {
    json out = key;
    out["cipher"] = progress.value("cipher", "");
    fmt::print("{}\n", out.dump(2));
  } else {
    fmt::print("id:          {}\ncheck_value: {}\nname:        {}\nexpires:     {}\n",
               text_or_dash(key, "id"), text_or_dash(key, "check_value"), text_or_dash(key, "name"),
               text_or_dash(key, "expires"));
  }
}

void Cli::run_tcp_handshake(const std::string& procedure, bool listen) {
  const auto timeout = std::chrono::seconds(timeout_s);
  json params = handshake_params(procedure);
  auto client = connect(o);
  // Started first, so a bad credential fails before any connection is made.
  json started = client.call("handshake.start", params);
  auto abort = [&](const json& progress) {
    try {
      client.call("handshake.abort", {{"session", progress.at("session")}});
    } catch (...) {
    }
  };
  if (listen) {
    // A listener may wait longer than a session lives: the checked session
    // is let go, and a fresh one starts when the Initiating End-Point comes.
    abort(started);
    const int fd = m2mvault::tools::accept_one(peer_address, timeout);
    try {
      started = client.call("handshake.start", params);
    } catch (...) {
      ::close(fd);
      throw;
    }
    print_handshake_result(
        m2mvault::tools::relay_handshake(client, fd, std::move(started), timeout));
    return;
  }
  int fd = -1;
  try {
    fd = m2mvault::tools::connect_tcp(peer_address, timeout);
  } catch (...) {
    abort(started);
    throw;
  }
  print_handshake_result(m2mvault::tools::relay_handshake(client, fd, std::move(started), timeout));
}

// Message mode: the bytes of an ESCertKE message, for the caller to carry
// inside a oneM2M primitive (e.g. an <e2EKeyCSE> resource).
void Cli::print_message(const json& progress) const {
  if (o.json_output) {
    fmt::print("{}\n", progress.dump(2));
    return;
  }
  fmt::print("session: {}\nmessage: {}\n", text_or_dash(progress, "session"),
             text_or_dash(progress, "output"));
  if (progress.value("done", false)) {
    const json& key = progress.at("key");
    fmt::print("id:          {}\ncheck_value: {}\nname:        {}\n", text_or_dash(key, "id"),
               text_or_dash(key, "check_value"), text_or_dash(key, "name"));
  }
}

void Cli::add_enrol(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "enrol",
      "Enrolment, Enrolee side (TS-0003 8.3.2): a TLS 1.2 handshake with the MEF run by the "
      "daemon; exports EXPORTER-oneM2M-Bootstrap (48 bytes) and stores Ke with KeId = "
      "encode(first 16 bytes)@MEF-FQDN. The Ke never leaves the token.");
  cmd->add_option("--mef", peer_address, "The MEF's host:port")->required();
  cmd->add_option("--mef-fqdn", fqdn, "MEF-FQDN (KeId's domain, and the SNI)")->required();
  cmd->add_option("--kpm", psk_key, "PSK variant: the Kpm, by KpmId or name");
  add_handshake_common(cmd, false);
  cmd->callback([this] { action = [this] { run_tcp_handshake("enrolment", false); }; });
}

void Cli::add_maf_handshake(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "maf-handshake",
      "MAF handshake, Entity A side (TS-0003 8.2.2.3): a TLS 1.2 handshake with the MAF run by the "
      "daemon; exports EXPORTER-oneM2M-Connection (48 bytes) and stores Kc with KcId = "
      "encode(first 16 bytes)@MAF-FQDN.");
  cmd->add_option("--maf", peer_address, "The MAF's host:port")->required();
  cmd->add_option("--maf-fqdn", fqdn, "MAF-FQDN (KcId's domain, and the SNI)")->required();
  cmd->add_option("--km", psk_key, "PSK variant: the Km, by KmId or name");
  cmd->add_option("--target", target, "The AE-ID or CSE-ID the Kc is to be used with");
  add_handshake_common(cmd, false);
  cmd->callback([this] { action = [this] { run_tcp_handshake("maf", false); }; });
}

void Cli::add_escertke(CLI::App& app) {
  auto* escertke = app.add_subcommand(
      "escertke",
      "End-to-End Certificate-based Key Establishment (TS-0003 8.7.2.2): four TLS 1.2 handshake "
      "messages; both End-Points export EXPORTER-oneM2M-ESCertKE and store the pairwiseE2EKey. "
      "TCP mode (--connect/--listen) carries the messages itself; message mode prints each "
      "message (base64) for a CSE to carry in a oneM2M primitive.");
  escertke->require_subcommand(1);

  auto* initiate = escertke->add_subcommand("initiate", "As the Initiating End-Point");
  auto* connect_opt =
      initiate->add_option("--connect", peer_address, "TCP mode: the Terminating End-Point");
  auto* mm = initiate->add_flag("--message-mode", message_mode,
                                "Print ESCertKE message 1 and a session to continue with "
                                "'escertke process'");
  connect_opt->excludes(mm);
  initiate->add_option("--peer", peer,
                       "The Terminating End-Point's identity, associated with the key (default: "
                       "the Certificate Name)");
  add_handshake_common(initiate, true);
  initiate->callback([this] {
    action = [this] {
      if (message_mode) {
        print_message(connect(o).call("handshake.start", handshake_params("escertke-initiate")));
      } else if (!peer_address.empty()) {
        run_tcp_handshake("escertke-initiate", false);
      } else {
        throw Error(ErrorCode::invalid_argument, "give --connect HOST:PORT or --message-mode");
      }
    };
  });

  auto* respond = escertke->add_subcommand("respond", "As the Terminating End-Point");
  auto* listen_opt =
      respond->add_option("--listen", peer_address, "TCP mode: accept one Initiating End-Point");
  auto* msg = respond->add_option("--message", message,
                                  "Message mode: ESCertKE message 1 (base64); prints message 2 "
                                  "and a session to continue with 'escertke process'");
  listen_opt->excludes(msg);
  respond->add_option("--peer", peer,
                      "The Initiating End-Point's identity, associated with the key (default: "
                      "the Certificate Name)");
  add_handshake_common(respond, true);
  respond->callback([this] {
    action = [this] {
      if (!message.empty()) {
        json params = handshake_params("escertke-respond");
        params["input"] = message;
        print_message(connect(o).call("handshake.start", params));
      } else if (!peer_address.empty()) {
        run_tcp_handshake("escertke-respond", true);
      } else {
        throw Error(ErrorCode::invalid_argument, "give --listen HOST:PORT or --message");
      }
    };
  });

  auto* process = escertke->add_subcommand(
      "process", "Message mode: feed the peer's message to a session; prints the next message");
  process->add_option("--session", session, "The session 'initiate' or 'respond' printed")
      ->required();
  process->add_option("--message", message, "The peer's message (base64)")->required();
  process->add_flag("--json", o.json_output, "Print JSON");
  process->callback([this] {
    action = [this] {
      print_message(connect(o).call("handshake.step", {{"session", session}, {"input", message}}));
    };
  });

  auto* abort = escertke->add_subcommand("abort", "Message mode: end a session unfinished");
  abort->add_option("--session", session, "The session")->required();
  abort->callback([this] {
    action = [this] { connect(o).call("handshake.abort", {{"session", session}}); };
  });
}

void Cli::add_policy(CLI::App& app) {
  auto* policy = app.add_subcommand("policy", "The policy in force (docs/POLICY.md)");
  policy->require_subcommand(1);
  auto* reload = policy->add_subcommand(
      "reload",
      "Reload the policy file (as SIGHUP does); a broken file is refused with its line "
      "and the old policy stays in force");
  reload->callback([this] {
    action = [this] {
      json r = connect(o).call("policy.reload");
      fmt::print("policy reloaded: {}\n", text_or_dash(r, "policy"));
    };
  });
  auto* check = policy->add_subcommand(
      "check", "Explain what the policy in force decides for a uid, an operation and a key");
  check->add_option("--uid", check_uid, "The uid asking")->required();
  check
      ->add_option("--op", check_op,
                   "A wire operation (sign, key.show, ...) or a grant (psk.release, key.read, ...)")
      ->required();
  check->add_option("--key", key_ref, "The key, by name or identifier");
  check->add_flag("--json", o.json_output, "Print JSON");
  check->callback([this] {
    action = [this] {
      json params = {{"uid", check_uid}, {"op", check_op}};
      if (!key_ref.empty()) params["key"] = key_ref;
      json r = connect(o).call("policy.check", params);
      if (o.json_output) {
        fmt::print("{}\n", r.dump(2));
      } else {
        fmt::print("{}: {}\n", r.value("allowed", false) ? "allowed" : "denied",
                   text_or_dash(r, "reason"));
      }
    };
  });
}

void Cli::add_audit(CLI::App& app) {
  auto* audit = app.add_subcommand("audit", "The audit log of every request");
  audit->require_subcommand(1);
  auto* show = audit->add_subcommand("show", "Show audit records (oldest first)");
  show->add_option("--key", key_ref, "Only records naming this key (name or identifier)");
  show->add_option("--uid", principal_filter, "Only records of this uid");
  show->add_option("--op", op_filter, "Only this operation");
  show->add_option("--result", result_filter, "Only ok, denied or error")
      ->check(CLI::IsMember({"ok", "denied", "error"}));
  show->add_option("--since", since, "Only records at or after this time (RFC 3339)");
  show->add_option("--until", until, "Only records before this time (RFC 3339)");
  show->add_option("--limit", limit, "At most this many (the newest)");
  show->add_flag("--json", o.json_output, "Print JSON lines");
  show->callback([this] {
    action = [this] {
      json params = json::object();
      auto put = [&params](const char* field, const std::string& value) {
        if (!value.empty()) params[field] = value;
      };
      put("key", key_ref);
      put("uid", principal_filter);
      put("op", op_filter);
      put("result", result_filter);
      put("since", since);
      put("until", until);
      if (limit) params["limit"] = limit;
      auto client = connect(o);
      std::vector<std::vector<std::string>> rows;
      rows.push_back({"SEQ", "TIME", "UID", "PID", "OP", "KEY", "RESULT", "ERROR", "COUNT"});
      while (true) {
        json page = client.call("audit.show", params);
        for (const auto& r : page.at("records")) {
          if (o.json_output) {
            fmt::print("{}\n", r.dump());
          } else {
            rows.push_back({text_or_dash(r, "seq"), text_or_dash(r, "time"), text_or_dash(r, "uid"),
                            text_or_dash(r, "pid"), text_or_dash(r, "op"), text_or_dash(r, "key"),
                            text_or_dash(r, "result"), text_or_dash(r, "error"),
                            text_or_dash(r, "count")});
          }
        }
        if (!page.contains("next") || page["next"].is_null()) break;
        params["after"] = page["next"];
      }
      if (!o.json_output) print_table(rows);
    };
  });
  auto* verify = audit->add_subcommand(
      "verify",
      "Verify the audit log's chain; exit 0 when intact, otherwise name the first "
      "broken record and why (modified, deleted, reordered, truncated)");
  verify->add_flag("--json", o.json_output, "Print JSON");
  verify->callback([this] {
    action = [this] {
      json r = connect(o).call("audit.verify");
      if (o.json_output) fmt::print("{}\n", r.dump(2));
      if (r.value("intact", false)) {
        if (!o.json_output)
          fmt::print("intact: {} records, seq {} to {}\n", text_or_dash(r, "records"),
                     text_or_dash(r, "first_seq"), text_or_dash(r, "last_seq"));
        return;
      }
      const json& p = r.at("problem");
      throw Error(ErrorCode::conflict, fmt::format("audit log broken at record {} ({}:{}): {}: {}",
                                                   text_or_dash(p, "seq"), text_or_dash(p, "file"),
                                                   text_or_dash(p, "line"), text_or_dash(p, "kind"),
                                                   text_or_dash(p, "detail")));
    };
  });
  auto* stats = audit->add_subcommand("stats", "Uses per key and per principal, and denials");
  stats->add_flag("--json", o.json_output, "Print JSON");
  stats->callback([this] {
    action = [this] {
      json r = connect(o).call("audit.stats");
      if (o.json_output) {
        fmt::print("{}\n", r.dump(2));
        return;
      }
      fmt::print("records: {}  requests: {}  denied: {}  errors: {}\n", text_or_dash(r, "records"),
                 text_or_dash(r, "requests"), text_or_dash(r, "denied"), text_or_dash(r, "errors"));
      std::vector<std::vector<std::string>> keys{{"KEY", "USES", "DENIED"}};
      for (const auto& [k, v] : r.at("keys").items())
        keys.push_back({k, text_or_dash(v, "uses"), text_or_dash(v, "denied")});
      print_table(keys);
      fmt::print("\n");
      std::vector<std::vector<std::string>> uids{{"UID", "REQUESTS", "DENIED"}};
      for (const auto& [k, v] : r.at("principals").items())
        uids.push_back({k, text_or_dash(v, "requests"), text_or_dash(v, "denied")});
      print_table(uids);
    };
  });
}

void Cli::add_cert(CLI::App& app) {
  auto* cert = app.add_subcommand("cert", "Certificates of signing keys (TR-0038 Annex B)");
  cert->require_subcommand(1);

  auto* csr = cert->add_subcommand(
      "csr", "Print a PKCS#10 request for a signing key, signed inside the token");
  csr->add_option("--key", key_ref, "The signing key")->required();
  csr->add_option("--subject", subject_dn, "Subject, e.g. /C=DE/O=Provider/CN=mn-cse")->required();
  csr->add_option("--san", sans,
                  "subjectAltName entry, repeatable: DNS:my.m2mprovider.org/mn-cse, URI:...");
  csr->add_option("--out", out_file, "Write the request here instead of stdout");
  csr->callback([this] {
    action = [this] {
      json params = {{"key", key_ref}, {"subject", subject_dn}, {"san", sans}};
      const std::string pem = connect(o).call("cert.csr", params).at("pem").get<std::string>();
      if (out_file.empty()) {
        fmt::print("{}", pem);
      } else {
        std::ofstream out(out_file, std::ios::binary | std::ios::trunc);
        out << pem;
        if (!out.flush())
          throw Error(ErrorCode::invalid_argument, fmt::format("cannot write '{}'", out_file));
      }
    };
  });

  auto* import = cert->add_subcommand(
      "import", "Attach the issued certificate (PEM, leaf first, then its chain) to a signing key");
  import->add_option("--key", key_ref, "The signing key")->required();
  import->add_option("file", cert_file, "PEM file")->required();
  import->add_flag("--json", o.json_output, "Print the key as JSON");
  import->callback([this] {
    action = [this] {
      json params = {{"key", key_ref}, {"pem", read_text_file(cert_file, "certificate file")}};
  emit_key(o, connect(o).call("cert.import", params));
};
}  // namespace
);
}

void Cli::add_status(CLI::App& app) {
  auto* cmd = app.add_subcommand("status", "Show the daemon's backend, token and key count");
  cmd->add_flag("--json", o.json_output, "Print JSON");
  cmd->callback([this] {
    action = [this] {
      json s = connect(o).call("status");
      if (o.json_output) {
        fmt::print("{}\n", s.dump(2));
        return;
      }
      fmt::print(
          "m2mvaultd {} (protocol {})\nbackend:  {} {}\ntoken:    '{}' ({})\nkeys:     {}\nuptime: "
          "  {} s\n",
          text_or_dash(s, "version"), text_or_dash(s, "protocol"), text_or_dash(s, "backend"),
          text_or_dash(s, "module"), text_or_dash(s, "token_label"), text_or_dash(s, "token_model"),
          text_or_dash(s, "keys"), text_or_dash(s, "uptime_seconds"));
    };
  });
}

void Cli::add_key_import(CLI::App& key) {
  auto* cmd = key.add_subcommand(
      "import",
      "Import a symmetric key (PSK kinds are wrapped under the token's KEK; a Ke becomes a "
      "non-extractable token object). Prefer --in over --hex: a command line is visible to "
      "other local users.");
  cmd->add_option("--kind", kind, "kpsa | kpm | ke | km | kc | e2e | usage")->required();
  cmd->add_option("--id", id, "oneM2M identifier, e.g. AE123456789012-Lock@in.provider.com")
      ->required();
  cmd->add_option("--name", name, "Key name (default: the identifier)");
  cmd->add_option("--entity", entity, "Bound AE-ID or CSE-ID, e.g. Clock-AE1");
  cmd->add_option("--expires", expires, "Expiry, RFC 3339 (e.g. 2027-01-01T00:00:00Z)");
  add_max_uses(cmd);
  auto* hex_opt = cmd->add_option("--hex", hex, "Key value as hex");
  auto* in_opt = cmd->add_option("--in", in_file, "File holding the raw key bytes ('-': stdin)");
  hex_opt->excludes(in_opt);
  cmd->add_flag("--json", o.json_output, "Print JSON");
  cmd->callback([this] {
    if (hex.empty() && in_file.empty())
      throw CLI::ValidationError("--hex or --in", "one is required");
    action = [this] {
      std::vector<std::uint8_t> value;
      if (!in_file.empty()) {
        value = read_key_file(in_file);
      } else {
        auto decoded = m2mvault::encoding::hex_decode(hex);
        wipe(hex);
        if (!decoded || decoded->empty()) {
          throw Error(ErrorCode::invalid_argument,
                      "--hex is not a non-empty, even-length hex string");
        }
        value = std::move(*decoded);
      }
      json params = {{"kind", kind}, {"id", id}};
      if (!name.empty()) params["name"] = name;
      if (!entity.empty()) params["entity"] = entity;
      if (!expires.empty()) params["expires"] = expires;
      put_max_uses(params);
      std::string encoded = m2mvault::encoding::base64_encode(value);
      wipe(value);
      params["value"] = std::move(encoded);
      auto wipe_value = [&params] { wipe(params["value"].get_ref<std::string&>()); };
      json result;
      try {
        result = connect(o).call("key.import", params);
      } catch (...) {
        wipe_value();
        throw;
      }
      wipe_value();
      emit_key(o, result);
    };
  });
}

void Cli::add_key_generate(CLI::App& key) {
  auto* cmd = key.add_subcommand("generate", "Generate a signing key pair inside the token");
  cmd->add_option("--kind", kind, "signing")->check(CLI::IsMember({"signing"}));
  cmd->add_option("--name", name, "Key name, e.g. mn-cse-123456")->required();
  cmd->add_option("--alg", alg, "ec-p256 (default) | rsa-2048")
      ->check(CLI::IsMember({"ec-p256", "rsa-2048"}));
  cmd->add_option("--entity", entity, "CSE-ID or AE-ID the key belongs to");
  cmd->add_option("--expires", expires, "Expiry, RFC 3339");
  add_max_uses(cmd);
  cmd->add_flag("--json", o.json_output, "Print JSON");
  cmd->callback([this] {
    action = [this] {
      json params = {{"kind", "signing"}, {"name", name}, {"alg", alg}};
      if (!entity.empty()) params["entity"] = entity;
      if (!expires.empty()) params["expires"] = expires;
      put_max_uses(params);
      emit_key(o, connect(o).call("key.generate", params));
    };
  });
}

void Cli::add_key_adopt(CLI::App& key) {
  auto* cmd = key.add_subcommand(
      "adopt", "Reference a signing key that already lives in a token (never modified or deleted)");
  cmd->add_option("--kind", kind, "signing")->check(CLI::IsMember({"signing"}));
  cmd->add_option("--name", name, "Key name in the vault")->required();
  cmd->add_option("--token-label", token_label, "Label of the token holding the key")->required();
  cmd->add_option("--object", object, "Object label (CKA_LABEL) or hex CKA_ID")->required();
  cmd->add_option("--entity", entity, "CSE-ID or AE-ID the key belongs to");
  cmd->add_flag("--json", o.json_output, "Print JSON");
  cmd->callback([this] {
    action = [this] {
      json params = {
          {"kind", "signing"}, {"name", name}, {"token_label", token_label}, {"object", object}};
      if (!entity.empty()) params["entity"] = entity;
      emit_key(o, connect(o).call("key.adopt", params));
    };
  });
}

void Cli::add_key_queries(CLI::App& key) {
  auto* list = key.add_subcommand("list", "List keys (never their values)");
  list->add_option("--kind", kind, "Only keys of this kind");
  list->add_flag("--json", o.json_output, "Print a JSON array");
  list->callback([this] {
    action = [this] {
      json params = json::object();
      if (!kind.empty()) params["kind"] = kind;
      auto client = connect(o);
      json keys = json::array();
      while (true) {  // follow the pages
        json page = client.call("key.list", params);
        for (auto& k : page.at("keys")) keys.push_back(std::move(k));
        if (!page.contains("next") || page["next"].is_null()) break;
        params["after"] = page["next"];
      }
      if (o.json_output) {
        fmt::print("{}\n", keys.dump(2));
      } else {
        print_key_table(keys);
      }
    };
  });

  auto* show = key.add_subcommand("show", "Show one key's metadata");
  show->add_option("key", key_ref, "Key name or identifier")->required();
  show->add_flag("--json", o.json_output, "Print JSON");
  show->callback([this] {
    action = [this] { emit_key(o, connect(o).call("key.show", {{"key", key_ref}})); };
  });

  auto* pub = key.add_subcommand("public", "Print a signing key's public key (PEM)");
  pub->add_option("key", key_ref, "Key name")->required();
  pub->callback([this] {
    action = [this] {
      fmt::print("{}",
                 connect(o).call("key.public", {{"key", key_ref}}).at("pem").get<std::string>());
    };
  });

  auto* del = key.add_subcommand("delete", "Delete a key (adopted keys are only forgotten)");
  del->add_option("key", key_ref, "Key name or identifier")->required();
  del->add_flag("--json", o.json_output, "Print JSON");
  del->callback([this] {
    action = [this] {
      json deleted = connect(o).call("key.delete", {{"key", key_ref}});
      if (o.json_output) {
        fmt::print("{}\n", deleted.dump(2));
      } else {
        fmt::print("deleted {} key '{}'\n", text_or_dash(deleted, "kind"),
                   text_or_dash(deleted, "name"));
      }
    };
  });

  auto* check =
      key.add_subcommand("check",
                         "Recompute a symmetric key's check value inside the token: the first 8 "
                         "bytes of HMAC-SHA-256(key, \"m2mvault key check value\") as hex");
  check->add_option("key", key_ref, "Key name or identifier")->required();
  check->add_flag("--json", o.json_output, "Print JSON");
  check->callback([this] {
    action = [this] {
      json c = connect(o).call("key.check", {{"key", key_ref}});
      const bool matches = c.at("matches").get<bool>();
      if (o.json_output) {
        fmt::print("{}\n", c.dump(2));
      } else {
        fmt::print("{} {}\n", c.at("check_value").get<std::string>(),
                   matches ? "matches the catalog" : "DOES NOT match the catalog");
      }
      if (!matches) throw Error(ErrorCode::internal, "check value mismatch");
    };
  });
}

void Cli::add_key_set_id(CLI::App& key) {
  auto* cmd = key.add_subcommand(
      "set-id",
      "Replace a key's oneM2M identifier, e.g. with the KmID the MAF assigned (TS-0003 10.6)");
  cmd->add_option("key", key_ref, "Key name or current identifier")->required();
  cmd->add_option("--id", new_id, "The new identifier")->required();
  cmd->add_flag("--json", o.json_output, "Print JSON");
  cmd->callback([this] {
    action = [this] {
      emit_key(o, connect(o).call("key.set_id", {{"key", key_ref}, {"id", new_id}}));
    };
  });
}

void Cli::add_derive(CLI::App& app) {
  auto* derive = app.add_subcommand(
      "derive",
      "Derive a key from an Enrolment Key inside the token (TS-0003 10.3). The derived value never "
      "leaves the vault; the new key's identifier and check value are printed.");
  derive->require_subcommand(1);
  auto common = [this](CLI::App* cmd, const std::string& derivation, const char* subject_param) {
    cmd->add_option("--ke", ke, "The Enrolment Key: its name or KeId")->required();
    cmd->add_option("--name", name, "Name of the new key (default: its identifier)");
    cmd->add_option("--expires", expires, "Expiry, RFC 3339 (never later than the Ke's)");
    add_max_uses(cmd);
    cmd->add_flag("--json", o.json_output, "Print the new key as JSON");
    cmd->callback([this, derivation, subject_param] {
      action = [this, derivation, subject_param] {
        json params = {{"derivation", derivation}, {"ke", ke}, {subject_param, subject}};
        if (derivation == "usage") params["suid"] = suid;
        if (!id.empty()) params["id"] = id;
        if (!name.empty()) params["name"] = name;
        if (!entity.empty()) params["entity"] = entity;
        if (!expires.empty()) params["expires"] = expires;
        put_max_uses(params);
        json k = connect(o).call("key.derive", params);
        if (o.json_output) {
          fmt::print("{}\n", k.dump(2));
        } else {
          fmt::print("id:          {}\ncheck_value: {}\n", text_or_dash(k, "id"),
                     text_or_dash(k, "check_value"));
        }
      };
    });
  };

  auto* km = derive->add_subcommand(
      "km",
      "Master Credential, 10.3.2: Km = HMAC-SHA-256(Ke, \"oneM2M Enrolment Key "
      "to Master Credential derivation\" || MAF-ID)");
  common(km, "km", "maf_id");
  km->add_option("--maf-id", subject, "MAF-ID (UTF-8, NFKC-normalized before the HMAC)")
      ->required();
  km->add_option(
      "--km-id", id,
      "KmID assigned by the MAF (default: km-<check value>@<MAF-ID>, which needs an FQDN MAF-ID; "
      "replace it later with 'key set-id')");

  auto* kpsa =
      derive->add_subcommand("kpsa",
                             "Provisioned Secure Connection Key, 10.3.3: Kpsa = HMAC-SHA-256(Ke, "
                             "\"oneM2M Enrolment Key to "
                             "Provisioned Secure Connection Key derivation\" || Enrolee-B-ID)");
  common(kpsa, "kpsa", "enrolee_b_id");
  kpsa->add_option("--enrolee-b-id", subject,
                   "Enrolee B's CSE-ID or AE-ID (UTF-8, NFKC-normalized)")
      ->required();
  kpsa->add_option("--kpsa-id", id, "KpsaID (default: kpsa-<check value>@<MEF-FQDN of the KeId>)");
  kpsa->add_option("--entity", entity, "Bound AE-ID/CSE-ID (default: the Enrolee-B-ID)");

  auto* usage = derive->add_subcommand("usage-key",
                                       "Usage-constrained symmetric key, 10.3.7: HMAC-SHA-256(Ke, "
                                       "\"oneM2M Enrolment Key to Usage-Constrained "
                                       "Symmetric Key derivation\" || SUID || "
                                       "Enrolment-Target-ID). TS-0003 does not fix how the SUID is "
                                       "encoded: m2mvault enters it as ONE OCTET (SUID 21 is the "
                                       "byte 0x15), so SUID and target cannot run "
                                       "together as decimal digits would.");
  common(usage, "usage", "target");
  usage
      ->add_option(
          "--suid", suid,
          "Security Usage Identifier (TS-0004), entered as one octet: 10-15 pre-provisioned (10 "
          "MEF, "
          "11 MAF, 12 security association, 13 ESPrim, 14 ESData encryption, 15 ESData signature), "
          "21-25 remotely provisioned, 32-35 MAF-distributed, 40-45 certificates")
      ->required()
      ->check(CLI::Range(0, 255));
  usage->add_option("--target", subject, "Enrolment-Target-ID, an FQDN (UTF-8, NFKC-normalized)")
      ->required();
  usage->add_option("--id", id, "Identifier (default: usage-<SUID>-<check value>@<target>)");
}

void Cli::add_max_uses(CLI::App* cmd) {
  cmd->add_option("--max-uses", max_uses,
                  "Usage limit: the key is refused (expired) after this many signatures, PSK "
                  "releases, derivations or handshakes")
      ->check(CLI::PositiveNumber);
}

void Cli::add_key_psk(CLI::App& key) {
  auto* cmd = key.add_subcommand(
      "psk",
      "Print a TLS PSK (Kpsa or Kc) as hex, for a TLS stack or test that must hold it. Needs the "
      "psk.release grant; every release is audited. Handle the output as the secret it is.");
  cmd->add_option("key", key_ref, "The KpsaID or KcID (or the key's name)")->required();
  cmd->add_flag("--json", o.json_output, "Print name, kind, id, entity and psk as JSON");
  cmd->callback([this] {
    action = [this] {
      json released = connect(o).call("psk.release", {{"key", key_ref}});
      std::string& value = released.at("value").get_ref<std::string&>();
      auto bytes = m2mvault::encoding::base64_decode(value);
      wipe(value);
      if (!bytes) throw Error(ErrorCode::internal, "unexpected response from the daemon");
      std::string psk_hex = m2mvault::encoding::hex_encode(*bytes);
      wipe(*bytes);
      if (o.json_output) {
        released.erase("value");
        released["psk"] = psk_hex;
        std::string text = released.dump(2);
        fmt::print("{}\n", text);
        wipe(released["psk"].get_ref<std::string&>());
        wipe(text);
      } else {
        fmt::print("{}\n", psk_hex);
      }
      wipe(psk_hex);
    };
  });
}

void Cli::add_key_reference(CLI::App& key) {
  auto* cmd = key.add_subcommand(
      "reference",
      "Print a key reference file for a signing key: a PEM 'private key' that holds only the "
      "key's name, for programs that read key files (nginx, curl) once openssl.cnf loads the "
      "m2mvault provider (docs/PROVIDER.md). Not a secret.");
  cmd->add_option("key", key_ref, "Signing key name or identifier")->required();
  cmd->add_option("--out", out_file, "Write to this file instead of standard output");
  cmd->callback([this] {
    action = [this] {
      json k = connect(o).call("key.show", {{"key", key_ref}});
      if (k.value("kind", "") != "signing") {
        throw Error(ErrorCode::invalid_argument,
                    fmt::format("'{}' is a {} key; references are for signing keys", key_ref,
                                text_or_dash(k, "kind")));
      }
      auto type = m2mvault::provider::key_type_for_algorithm(k.value("algorithm", ""));
      if (!type) {
        throw Error(ErrorCode::unsupported,
                    fmt::format("the provider cannot use '{}' keys", text_or_dash(k, "algorithm")));
      }
      // The name, not the identifier: what key.show answered is canonical.
      const std::string pem =
          m2mvault::provider::encode_key_reference_pem({k.at("name").get<std::string>(), *type});
      if (out_file.empty()) {
        fmt::print("{}", pem);
        return;
      }
      std::ofstream out(out_file, std::ios::binary | std::ios::trunc);
      out << pem;
      if (!out.flush()) {
        throw Error(ErrorCode::invalid_argument, fmt::format("cannot write '{}'", out_file));
      }
    };
  });
}

void Cli::add_psk_table(CLI::App& app) {
  auto* table = app.add_subcommand(
      "psk-table", "The psk-look-up-table of TR-0038 7.1.2 (AE-ID/CSE-ID, KpsaID, Kpsa) as a file");
  table->require_subcommand(1);
  auto* import = table->add_subcommand(
      "import",
      "Import every row of a table, or none: CSV with a header (entity,id,psk; optional name, "
      "expires, kind, max_uses) or TOML [[psk]] tables (a .toml file). Every bad row is reported "
      "with its line.");
  import->add_option("file", in_file, "The table ('-': CSV on stdin)")->required();
  import->add_flag("--json", o.json_output, "Print the outcome as JSON");
  import->callback([this] {
    action = [this] {
      std::string text;
  if (in_file == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    text = read_text_file(in_file, "table");
  }
  auto parsed = m2mvault::tools::parse_psk_table(
      text, m2mvault::tools::format_of(in_file == "-" ? "stdin.csv" : in_file));
  wipe(text);
  import_psk_rows(parsed);
};
});
auto* export_cmd = table->add_subcommand(
    "export", "Write the table without key values: entity,id,kind,name,check_value,expires (CSV)");
export_cmd->add_option("--kind", kind, "kpsa (default) or kc")
    ->check(CLI::IsMember({"kpsa", "kc"}));
export_cmd->callback([this] {
  action = [this] {
    json params = {{"kind", kind.empty() ? "kpsa" : kind}};
    auto client = connect(o);
    auto field = [](const json& k, const char* f) {
      std::string v = k.contains(f) && k[f].is_string() ? k[f].get<std::string>() : "";
      if (v.find_first_of(",\"\n") == std::string::npos) return v;
      std::string quoted = "\"";
      for (char c : v) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
      return quoted + "\"";
    };
    fmt::print("entity,id,kind,name,check_value,expires\n");
    while (true) {
      json page = client.call("key.list", params);
      for (const auto& k : page.at("keys")) {
        fmt::print("{},{},{},{},{},{}\n", field(k, "entity"), field(k, "id"), field(k, "kind"),
                   field(k, "name"), field(k, "check_value"), field(k, "expires"));
      }
      if (!page.contains("next") || page["next"].is_null()) break;
      params["after"] = page["next"];
    }
  };
});
}

void Cli::import_psk_rows(m2mvault::tools::PskTable& table) {
  // Rows go in chunks well below the frame limit; the daemon stages them
  // and commits all at the end, so an interrupted import leaves nothing.
  constexpr std::size_t kChunk = 500;
  const std::size_t total = table.rows.size() + table.problems.size();
  const bool progress = !o.json_output && total > kChunk && ::isatty(2);
  auto client = connect(o);
  std::string batch;
  auto abort_batch = [&] {
    if (batch.empty()) return;
    try {
      client.call("key.import_batch", {{"batch", batch}, {"abort", true}});
    } catch (...) {
      // The daemon drops an idle batch by itself.
    }
  };
  std::vector<m2mvault::tools::RowProblem> problems = std::move(table.problems);
  try {
    for (std::size_t start = 0; start < table.rows.size(); start += kChunk) {
      const std::size_t end = std::min(table.rows.size(), start + kChunk);
      json rows = json::array();
      for (std::size_t i = start; i < end; ++i) {
        const auto& r = table.rows[i];
        json row = {{"kind", r.kind},
                    {"id", r.id},
                    {"entity", r.entity},
                    {"value", m2mvault::encoding::base64_encode(r.value)}};
        if (r.name) row["name"] = *r.name;
        if (r.expires) row["expires"] = *r.expires;
        if (r.max_uses) row["max_uses"] = *r.max_uses;
        rows.push_back(std::move(row));
      }
      json params = {{"rows", std::move(rows)}};
      if (!batch.empty()) params["batch"] = batch;
      json result;
      try {
        result = client.call("key.import_batch", params);
      } catch (...) {
        for (auto& row : params["rows"]) wipe(row["value"].get_ref<std::string&>());
        throw;
      }
      for (auto& row : params["rows"]) wipe(row["value"].get_ref<std::string&>());
      if (result.at("batch").is_string()) batch = result["batch"].get<std::string>();
      for (const auto& p : result.at("problems")) {
        const std::size_t index = start + p.at("row").get<std::size_t>();
        problems.push_back({table.rows.at(index).line, p.at("message").get<std::string>()});
      }
      if (progress) {
        std::fprintf(stderr, "\rpsk-table: %zu of %zu rows checked", end, table.rows.size());
      }
    }
    if (progress) std::fprintf(stderr, "\n");
    if (!problems.empty()) {
      abort_batch();
      std::sort(problems.begin(), problems.end(),
                [](const auto& a, const auto& b) { return a.line < b.line; });
      const std::string source = in_file == "-" ? "stdin" : in_file;
      if (o.json_output) {
        json out = json::array();
        for (const auto& p : problems) out.push_back({{"line", p.line}, {"message", p.message}});
        fmt::print("{}\n", json{{"imported", 0}, {"problems", out}}.dump(2));
      } else {
        for (const auto& p : problems) {
          std::fprintf(stderr, "%s:%zu: %s\n", source.c_str(), p.line, p.message.c_str());
        }
      }
      throw Error(
          ErrorCode::invalid_argument,
          fmt::format("{} bad row(s) in {}; nothing was imported", problems.size(), source));
    }
    if (table.rows.empty()) throw Error(ErrorCode::invalid_argument, "the table has no rows");
    client.call("key.import_batch", {{"batch", batch}, {"commit", true}});
  } catch (...) {
    abort_batch();
    throw;
  }
  if (o.json_output) {
    fmt::print("{}\n", json{{"imported", table.rows.size()}, {"problems", json::array()}}.dump(2));
  } else {
    fmt::print("imported {} key(s)\n", table.rows.size());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"m2mvault - manage the keys of an m2mvault daemon"};
  app.require_subcommand(1);
  Cli cli;
  app.add_option("--socket", cli.o.socket,
                 "Daemon socket (default: $M2MVAULT_SOCKET, else /run/m2mvault/m2mvault.sock)");
  cli.add_status(app);
  auto* key = app.add_subcommand("key", "Manage keys");
  key->require_subcommand(1);
  cli.add_key_import(*key);
  cli.add_key_generate(*key);
  cli.add_key_adopt(*key);
  cli.add_key_queries(*key);
  cli.add_key_set_id(*key);
  cli.add_key_psk(*key);
  cli.add_key_reference(*key);
  cli.add_psk_table(app);
  cli.add_derive(app);
  cli.add_enrol(app);
  cli.add_maf_handshake(app);
  cli.add_escertke(app);
  cli.add_cert(app);
  cli.add_policy(app);
  cli.add_audit(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : kUsageExit;
  }
  try {
    if (cli.action) cli.action();
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "m2mvault: %s: %s\n", std::string(m2mvault::to_string(e.code())).c_str(),
                 e.what());
    return exit_status(e.code());
  } catch (const json::type_error& e) {
    // nlohmann refuses to serialize invalid UTF-8 (type_error 316).
    if (e.id == 316) {
      std::fprintf(stderr, "m2mvault: invalid_argument: an argument is not valid UTF-8\n");
      return exit_status(ErrorCode::invalid_argument);
    }
    std::fprintf(stderr, "m2mvault: internal: unexpected response from the daemon\n");
    return exit_status(ErrorCode::internal);
  } catch (const json::exception& e) {
    std::fprintf(stderr, "m2mvault: internal: unexpected response from the daemon\n");
    return exit_status(ErrorCode::internal);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "m2mvault: %s\n", e.what());
    return 1;
  }
}
