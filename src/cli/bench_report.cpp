// Benchmark result tables and JSON (see bench_report.h).
#include "bench_report.h"

#include <cstdio>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>

#include "specula/core/error.h"

namespace specula::cli {

std::string today_utc() {
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));
  return date;
}

void report_bench_rows(const std::vector<BenchRow>& rows, const std::string& device, const std::string& commit,
                       const std::string& preset, const std::string& json_path, int precision) {
  const std::string date = today_utc();
  std::printf("| metric | value | unit |\n|---|---|---|\n");
  for (const BenchRow& r : rows) std::printf("| %s | %.*f | %s |\n", r.metric.c_str(), precision, r.value, r.unit.c_str());
  if (json_path.empty()) return;
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const BenchRow& r : rows)
    out.push_back({{"device", device}, {"commit", commit}, {"date", date}, {"preset", preset}, {"metric", r.metric},
                   {"value", r.value}, {"unit", r.unit}});
  std::ofstream f(json_path);
  SPECULA_CHECK(f.good(), json_path, ": cannot write");
  f << out.dump(1) << "\n";
}

}  // namespace specula::cli
