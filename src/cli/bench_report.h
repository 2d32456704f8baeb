// The results table and JSON file both benchmark commands write: one row per measurement, and
// per row the device, date and commit it was measured at (bench/results/ keeps these files).
#pragma once

#include <string>
#include <vector>

namespace specula::cli {

struct BenchRow {
  std::string metric;
  double value;
  std::string unit;
};

// Today's date in UTC, YYYY-MM-DD.
std::string today_utc();
// Prints the rows as a markdown table (values with `precision` decimals) and, when json_path is
// not empty, writes them there with device, commit, date and preset on every row.
void report_bench_rows(const std::vector<BenchRow>& rows, const std::string& device, const std::string& commit,
                       const std::string& preset, const std::string& json_path, int precision);

}  // namespace specula::cli
