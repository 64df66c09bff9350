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
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "api/client.h"
#include "api/encoding.h"
#include "api/error.h"

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
  static const char* kFields[] = {"name",    "kind",        "id",       "entity",      "created",
                                  "expires", "storage",     "length",   "check_value", "algorithm",
                                  "parent",  "token_label", "object_id"};
  for (const char* field : kFields) {
    if (key.contains(field))
      fmt::print("{:<12} {}\n", std::string(field) + ":", text_or_dash(key, field));
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"m2mvault - manage the keys of an m2mvault daemon"};
  app.require_subcommand(1);
  Options o;
  app.add_option("--socket", o.socket,
                 "Daemon socket (default: $M2MVAULT_SOCKET, else /run/m2mvault/m2mvault.sock)");

  std::function<void()> action;

  // status
  auto* status = app.add_subcommand("status", "Show the daemon's backend, token and key count");
  status->add_flag("--json", o.json_output, "Print JSON");
  status->callback([&] {
    action = [&] {
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

  auto* key = app.add_subcommand("key", "Manage keys");
  key->require_subcommand(1);

  // key import
  struct {
    std::string kind, id, name, entity, expires, hex, in;
  } imp;
  auto* import = key->add_subcommand(
      "import",
      "Import a symmetric key (PSK kinds are wrapped under the token's KEK; a Ke becomes a "
      "non-extractable token object). Prefer --in over --hex: a command line is visible to "
      "other local users.");
  import->add_option("--kind", imp.kind, "kpsa | kpm | ke | km | kc | e2e")->required();
  import->add_option("--id", imp.id, "oneM2M identifier, e.g. AE123456789012-Lock@in.provider.com")
      ->required();
  import->add_option("--name", imp.name, "Key name (default: the identifier)");
  import->add_option("--entity", imp.entity, "Bound AE-ID or CSE-ID, e.g. Clock-AE1");
  import->add_option("--expires", imp.expires, "Expiry, RFC 3339 (e.g. 2027-01-01T00:00:00Z)");
  auto* hex_opt = import->add_option("--hex", imp.hex, "Key value as hex");
  auto* in_opt = import->add_option("--in", imp.in, "File holding the raw key bytes ('-': stdin)");
  hex_opt->excludes(in_opt);
  import->add_flag("--json", o.json_output, "Print JSON");
  import->callback([&] {
    if (imp.hex.empty() && imp.in.empty()) throw CLI::ValidationError("--hex or --in", "one is required");
  action = [&] {
    std::vector<std::uint8_t> value;
    if (!imp.in.empty()) {
      value = read_key_file(imp.in);
    } else {
      auto decoded = m2mvault::encoding::hex_decode(imp.hex);
      wipe(imp.hex);
      if (!decoded || decoded->empty()) {
        throw Error(ErrorCode::invalid_argument,
                    "--hex is not a non-empty, even-length hex string");
      }
      value = std::move(*decoded);
    }
    json params = {{"kind", imp.kind}, {"id", imp.id}};
    if (!imp.name.empty()) params["name"] = imp.name;
    if (!imp.entity.empty()) params["entity"] = imp.entity;
    if (!imp.expires.empty()) params["expires"] = imp.expires;
    std::string encoded = m2mvault::encoding::base64_encode(value);
    wipe(value);
    params["value"] = encoded;
    wipe(encoded);
    auto client = connect(o);
    json result;
    try {
      result = client.call("key.import", params);
    } catch (...) {
      wipe(params["value"].get_ref<std::string&>());
      throw;
    }
    wipe(params["value"].get_ref<std::string&>());
    emit_key(o, result);
  };
});

// key generate
struct {
  std::string kind = "signing", name, alg = "ec-p256", entity, expires;
} gen;
auto* generate = key->add_subcommand("generate", "Generate a signing key pair inside the token");
generate->add_option("--kind", gen.kind, "signing")->check(CLI::IsMember({"signing"}));
generate->add_option("--name", gen.name, "Key name, e.g. mn-cse-123456")->required();
generate->add_option("--alg", gen.alg, "ec-p256 (default) | rsa-2048")
    ->check(CLI::IsMember({"ec-p256", "rsa-2048"}));
generate->add_option("--entity", gen.entity, "CSE-ID or AE-ID the key belongs to");
generate->add_option("--expires", gen.expires, "Expiry, RFC 3339");
generate->add_flag("--json", o.json_output, "Print JSON");
generate->callback([&] {
  action = [&] {
    json params = {{"kind", gen.kind}, {"name", gen.name}, {"alg", gen.alg}};
    if (!gen.entity.empty()) params["entity"] = gen.entity;
    if (!gen.expires.empty()) params["expires"] = gen.expires;
    emit_key(o, connect(o).call("key.generate", params));
  };
});

// key adopt
struct {
  std::string kind = "signing", name, token_label, object, entity;
} adopt_args;
auto* adopt = key->add_subcommand(
    "adopt", "Reference a signing key that already lives in a token (never modified or deleted)");
adopt->add_option("--kind", adopt_args.kind, "signing")->check(CLI::IsMember({"signing"}));
adopt->add_option("--name", adopt_args.name, "Key name in the vault")->required();
adopt->add_option("--token-label", adopt_args.token_label, "Label of the token holding the key")
    ->required();
adopt->add_option("--object", adopt_args.object, "Object label (CKA_LABEL) or hex CKA_ID")
    ->required();
adopt->add_option("--entity", adopt_args.entity, "CSE-ID or AE-ID the key belongs to");
adopt->add_flag("--json", o.json_output, "Print JSON");
adopt->callback([&] {
  action = [&] {
    json params = {{"kind", adopt_args.kind},
                   {"name", adopt_args.name},
                   {"token_label", adopt_args.token_label},
                   {"object", adopt_args.object}};
    if (!adopt_args.entity.empty()) params["entity"] = adopt_args.entity;
    emit_key(o, connect(o).call("key.adopt", params));
  };
});

// key list
std::string list_kind;
auto* list = key->add_subcommand("list", "List keys (never their values)");
list->add_option("--kind", list_kind, "Only keys of this kind");
list->add_flag("--json", o.json_output, "Print a JSON array");
list->callback([&] {
  action = [&] {
    json params = json::object();
    if (!list_kind.empty()) params["kind"] = list_kind;
    json keys = connect(o).call("key.list", params).at("keys");
    if (o.json_output) {
      fmt::print("{}\n", keys.dump(2));
    } else {
      print_key_table(keys);
    }
  };
});

// key show / public / delete / check
std::string key_ref;
auto* show = key->add_subcommand("show", "Show one key's metadata");
show->add_option("key", key_ref, "Key name or identifier")->required();
show->add_flag("--json", o.json_output, "Print JSON");
show->callback([&] {
  action = [&] { emit_key(o, connect(o).call("key.show", {{"key", key_ref}})); };
});

auto* pub = key->add_subcommand("public", "Print a signing key's public key (PEM)");
pub->add_option("key", key_ref, "Key name")->required();
pub->callback([&] {
  action = [&] {
    fmt::print("{}",
               connect(o).call("key.public", {{"key", key_ref}}).at("pem").get<std::string>());
  };
});

auto* del = key->add_subcommand("delete", "Delete a key (adopted keys are only forgotten)");
del->add_option("key", key_ref, "Key name or identifier")->required();
del->add_flag("--json", o.json_output, "Print JSON");
del->callback([&] {
  action = [&] {
    json deleted = connect(o).call("key.delete", {{"key", key_ref}});
    if (o.json_output) {
      fmt::print("{}\n", deleted.dump(2));
    } else {
      fmt::print("deleted {} key '{}'\n", text_or_dash(deleted, "kind"),
                 text_or_dash(deleted, "name"));
    }
  };
});

auto* check = key->add_subcommand(
    "check",
    "Recompute a symmetric key's check value inside the token: the first 8 bytes of "
    "HMAC-SHA-256(key, \"m2mvault key check value\") as hex");
check->add_option("key", key_ref, "Key name or identifier")->required();
check->add_flag("--json", o.json_output, "Print JSON");
check->callback([&] {
  action = [&] {
    json c = connect(o).call("key.check", {{"key", key_ref}});
    if (o.json_output) {
      fmt::print("{}\n", c.dump(2));
    } else {
      fmt::print(
          "{} {}\n", c.at("check_value").get<std::string>(),
          c.at("matches").get<bool>() ? "matches the catalog" : "DOES NOT match the catalog");
    }
    if (!c.at("matches").get<bool>()) throw Error(ErrorCode::internal, "check value mismatch");
  };
});

try {
  app.parse(argc, argv);
} catch (const CLI::ParseError& e) {
  int code = app.exit(e);
  return code == 0 ? 0 : kUsageExit;
}
try {
  if (action) action();
  return 0;
} catch (const Error& e) {
  std::fprintf(stderr, "m2mvault: %s: %s\n", std::string(m2mvault::to_string(e.code())).c_str(),
               e.what());
  return exit_status(e.code());
} catch (const json::exception& e) {
  std::fprintf(stderr, "m2mvault: internal: unexpected response from the daemon\n");
  return exit_status(ErrorCode::internal);
} catch (const std::exception& e) {
  std::fprintf(stderr, "m2mvault: %s\n", e.what());
  return 1;
}
}
