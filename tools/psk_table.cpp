#include "tools/psk_table.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <toml++/toml.h>

#include <algorithm>
#include <array>
#include <cctype>

#include "api/encoding.h"
#include "api/error.h"

namespace m2mvault::tools {
namespace {

enum class Column { entity, id, psk, name, expires, kind, max_uses, unknown };

std::string lowercase(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

Column column_named(std::string_view header) {
  const std::string h = lowercase(header);
  if (h == "entity" || h == "ae-id" || h == "cse-id" || h == "ae-id/cse-id") return Column::entity;
  if (h == "id" || h == "kpsaid" || h == "kpsa_id" || h == "kpsa-id") return Column::id;
  if (h == "psk" || h == "kpsa" || h == "value") return Column::psk;
  if (h == "name") return Column::name;
  if (h == "expires") return Column::expires;
  if (h == "kind") return Column::kind;
  if (h == "max_uses") return Column::max_uses;
  return Column::unknown;
}

// Text from the file, for a message: short, and printable ASCII only.
std::string printable_excerpt(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 64)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (text.size() > 64) out += "...";
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// One CSV record of one line: fields split at commas; a field may be
// quoted ("a,b" and "" for a quote). Returns nullopt for unbalanced quotes.
std::optional<std::vector<std::string>> split_csv(std::string_view line) {
  std::vector<std::string> fields;
  std::string field;
  std::size_t i = 0;
  while (true) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    field.clear();
    if (i < line.size() && line[i] == '"') {
      ++i;
      bool closed = false;
      while (i < line.size()) {
        if (line[i] == '"') {
          if (i + 1 < line.size() && line[i + 1] == '"') {
            field += '"';
            i += 2;
            continue;
          }
          ++i;
          closed = true;
          break;
        }
        field += line[i++];
      }
      if (!closed) return std::nullopt;
      while (i < line.size() && line[i] != ',') {
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r') return std::nullopt;
        ++i;
      }
    } else {
      const std::size_t end = line.find(',', i);
      field = std::string(trim(line.substr(i, end == std::string_view::npos ? end : end - i)));
      i = end == std::string_view::npos ? line.size() : end;
    }
    fields.push_back(field);
    if (i >= line.size()) break;
    ++i;  // the comma
  }
  return fields;
}

void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

// Fills the row's fields from named values; returns the problem, if any.
// `psk` is wiped here whatever happens.
std::optional<std::string> complete_row(PskRow& row, std::string& psk) {
  std::optional<std::string> problem;
  if (row.entity.empty()) {
    problem = "the AE-ID/CSE-ID (entity) is empty";
  } else if (row.id.empty()) {
    problem = "the KpsaID (id) is empty";
  } else if (psk.empty()) {
    problem = "the Kpsa (psk) is empty";
  } else if (row.kind != "kpsa" && row.kind != "kc") {
    problem = fmt::format("kind '{}' is not a TLS PSK kind (kpsa or kc)", row.kind);
  } else {
    auto value = encoding::hex_decode(psk);
    if (!value || value->empty()) {
      problem = "the Kpsa (psk) is not an even-length hex string";
    } else if (value->size() > 1024) {
      problem = fmt::format("the Kpsa is {} bytes; at most 1024", value->size());
      OPENSSL_cleanse(value->data(), value->size());
    } else {
      row.value = std::move(*value);
    }
  }
  wipe(psk);
  return problem;
}

std::optional<std::int64_t> parse_count(std::string_view text) {
  if (text.empty() || text.size() > 18) return std::nullopt;
  std::int64_t n = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  if (n < 1) return std::nullopt;
  return n;
}

PskTable parse_csv(std::string_view text) {
  PskTable table;
  std::vector<Column> columns;
  std::size_t line_number = 0;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    const std::size_t end = text.find('\n', pos);
    std::string_view line =
        text.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    pos = end == std::string_view::npos ? text.size() + 1 : end + 1;
    ++line_number;
    const std::string_view content = trim(line);
    if (content.empty() || content.front() == '#') continue;
    auto fields = split_csv(line);
    if (columns.empty()) {
      if (!fields) {
        throw Error(ErrorCode::invalid_argument,
                    fmt::format("line {}: the header has an unbalanced quote", line_number));
      }
      for (const auto& f : *fields) {
        Column c = column_named(f);
        if (c == Column::unknown) {
          throw Error(ErrorCode::invalid_argument,
                      fmt::format("line {}: unknown column '{}' (expected entity, id, psk, name, "
                                  "expires, kind, max_uses)",
                                  line_number, printable_excerpt(f)));
        }
        if (std::find(columns.begin(), columns.end(), c) != columns.end()) {
          throw Error(ErrorCode::invalid_argument,
                      fmt::format("line {}: column '{}' appears twice", line_number, f));
        }
        columns.push_back(c);
      }
      for (Column required : {Column::entity, Column::id, Column::psk}) {
        if (std::find(columns.begin(), columns.end(), required) == columns.end()) {
          throw Error(ErrorCode::invalid_argument,
                      fmt::format("line {}: the header needs the columns entity (AE-ID/CSE-ID), id "
                                  "(KpsaID) and psk (Kpsa)",
                                  line_number));
        }
      }
      continue;
    }
    PskRow row;
    row.line = line_number;
    std::string psk;
    if (!fields) {
      table.problems.push_back({line_number, "unbalanced quote"});
      continue;
    }
    if (fields->size() != columns.size()) {
      table.problems.push_back({line_number, fmt::format("{} fields, the header has {}",
                                                         fields->size(), columns.size())});
      for (auto& f : *fields) wipe(f);
      continue;
    }
    std::optional<std::string> problem;
    for (std::size_t i = 0; i < columns.size(); ++i) {
      std::string& f = (*fields)[i];
      switch (columns[i]) {
        case Column::entity:
          row.entity = f;
          break;
        case Column::id:
          row.id = f;
          break;
        case Column::psk:
          psk = std::move(f);
          break;
        case Column::name:
          if (!f.empty()) row.name = f;
          break;
        case Column::expires:
          if (!f.empty()) row.expires = f;
          break;
        case Column::kind:
          if (!f.empty()) row.kind = lowercase(f);
          break;
        case Column::max_uses:
          if (!f.empty()) {
            row.max_uses = parse_count(f);
            if (!row.max_uses) problem = fmt::format("max_uses '{}' is not a positive integer", f);
          }
          break;
        case Column::unknown:
          break;
      }
    }
    for (auto& f : *fields) wipe(f);
    auto incomplete = complete_row(row, psk);
    if (!problem) problem = incomplete;
    if (problem) {
      table.problems.push_back({line_number, *problem});
    } else {
      table.rows.push_back(std::move(row));
    }
  }
  if (columns.empty()) {
    throw Error(ErrorCode::invalid_argument, "the table is empty: it needs a header line");
  }
  return table;
}

PskTable parse_toml(std::string_view text) {
  toml::table doc;
  try {
    doc = toml::parse(text);
  } catch (const toml::parse_error& e) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("line {}: {}", e.source().begin.line, e.description()));
  }
  PskTable table;
  for (const auto& [key, node] : doc) {
    if (key.str() != "psk") {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("line {}: unknown key '{}' (rows are [[psk]] tables)",
                              node.source().begin.line, printable_excerpt(key.str())));
    }
  }
  const toml::array* rows = doc["psk"].as_array();
  if (!rows) {
    throw Error(ErrorCode::invalid_argument, "the table has no [[psk]] rows");
  }
  for (const auto& node : *rows) {
    const std::size_t line = node.source().begin.line;
    const toml::table* t = node.as_table();
    if (!t) {
      table.problems.push_back({line, "a row must be a [[psk]] table"});
      continue;
    }
    PskRow row;
    row.line = line;
    std::string psk;
    std::optional<std::string> problem;
    for (const auto& [k, v] : *t) {
      const Column c = column_named(k.str());
      if (c == Column::max_uses) {
        auto n = v.value<std::int64_t>();
        if (!n || *n < 1)
          problem = "max_uses must be a positive integer";
        else
          row.max_uses = *n;
        continue;
      }
      auto s = v.value<std::string>();
      if (c == Column::unknown || !s) {
        problem = c == Column::unknown ? fmt::format("unknown key '{}'", printable_excerpt(k.str()))
                                       : fmt::format("'{}' must be a string", k.str());
        continue;
      }
      switch (c) {
        case Column::entity:
          row.entity = *s;
          break;
        case Column::id:
          row.id = *s;
          break;
        case Column::psk:
          psk = std::move(*s);
          break;
        case Column::name:
          row.name = *s;
          break;
        case Column::expires:
          row.expires = *s;
          break;
        case Column::kind:
          row.kind = lowercase(*s);
          break;
        default:
          break;
      }
      if (s) wipe(*s);
    }
    auto incomplete = complete_row(row, psk);
    if (!problem) problem = incomplete;
    if (problem) {
      table.problems.push_back({line, *problem});
    } else {
      table.rows.push_back(std::move(row));
    }
  }
  return table;
}

}  // namespace

PskRow::~PskRow() {
  if (!value.empty()) OPENSSL_cleanse(value.data(), value.size());
}

TableFormat format_of(std::string_view path) {
  return lowercase(path).ends_with(".toml") ? TableFormat::toml : TableFormat::csv;
}

PskTable parse_psk_table(std::string_view text, TableFormat format) {
  return format == TableFormat::toml ? parse_toml(text) : parse_csv(text);
}

}  // namespace m2mvault::tools
