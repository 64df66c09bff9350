// The psk-look-up-table of TR-0038 7.1.2 (table 7.1.2-2) as a file: rows of
// AE-ID/CSE-ID, KpsaID and Kpsa, in CSV or TOML (docs/CLI.md "psk-table").
// Parsing only: the rows go to the daemon with key.import_batch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace m2mvault::tools {

struct PskRow {
  std::size_t line = 0;  // where the row starts in the file, from 1
  std::string kind = "kpsa";
  std::string entity;  // AE-ID / CSE-ID
  std::string id;      // KpsaID
  std::optional<std::string> name;
  std::optional<std::string> expires;  // RFC 3339, checked by the daemon
  std::vector<std::uint8_t> value;     // the Kpsa; wiped by ~PskRow
  std::optional<std::int64_t> max_uses;

  PskRow() = default;
  PskRow(PskRow&&) noexcept = default;
  PskRow& operator=(PskRow&&) noexcept = default;
  PskRow(const PskRow&) = delete;
  PskRow& operator=(const PskRow&) = delete;
  ~PskRow();
};

struct RowProblem {
  std::size_t line = 0;
  std::string message;  // never contains a key byte
};

struct PskTable {
  std::vector<PskRow> rows;
  std::vector<RowProblem> problems;  // every bad row, in file order
};

enum class TableFormat { csv, toml };

// The format a file name implies: .toml is TOML, anything else CSV.
TableFormat format_of(std::string_view path);

// Parses a whole table. A CSV file starts with a header naming its columns
// (entity, id and psk are required; name, expires, kind and max_uses are
// optional; TR-0038's spellings AE-ID/CSE-ID, KpsaID and Kpsa are accepted).
// A TOML file holds [[psk]] tables with the same keys. Every row with a
// problem is reported with its line; good rows are returned either way.
// Throws Error(invalid_argument) only when the file as a whole cannot be
// read (no header, TOML syntax error).
PskTable parse_psk_table(std::string_view text, TableFormat format);

}  // namespace m2mvault::tools
