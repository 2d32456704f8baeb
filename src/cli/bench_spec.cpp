// `specula bench-spec`: where the time of speculative decoding goes, on a model shape with random
// weights (a random draft head cannot be accepted, so acceptance comes from elsewhere): a plain
// decode step; per cycle the drafting time at the full vocabulary and with FR-Spec subsets, with
// the draft LM head's share; verification time for trees of several sizes against a plain step;
// and the tokens/s those give at the FR-Spec paper's acceptance lengths (Llama-3-8B, T=0:
// full 3.89, 64k 3.80, 32k 3.63, 16k 3.40, 8k 3.13, bonus token included).
//   tokens/s = acceptance length / (draft + verify time per cycle)
// With --tinygo DIR it also runs the real tinygo-llama3 pair end to end on its dev windows
// (plain, EAGLE-2 and FR-Spec; a small-model figure).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "commands.h"
#include "options.h"
#include "bench_report.h"
#include "presets.h"
#include "specula/core/error.h"
#include "specula/engine/engine.h"
#include "specula/engine/generator.h"
#include "specula/engine/speculative.h"
#include "specula/spec/eagle_head.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/ops/cuda/event_profiler.h"
#endif

namespace specula::cli {

namespace {

struct SpecBenchArgs {
  std::string preset = "llama3-8b", device = "auto", json_path, commit = "unknown", tinygo;
  int64_t context = 512, new_tokens = 64;
  std::vector<int64_t> vocabs{0, 65536, 32768, 16384, 8192};  // 0: full
  std::vector<int64_t> tree_sizes{32, 60, 128};
  bool profile = false;
};

using Row = BenchRow;

double paper_acceptance(int64_t vocab) {
  switch (vocab) {
    case 0: return 3.89;
    case 65536: return 3.80;
    case 32768: return 3.63;
    case 16384: return 3.40;
    case 8192: return 3.13;
    default: return 0.0;
  }
}

std::string vocab_name(int64_t v) { return v == 0 ? "full" : "FR-Spec " + std::to_string(v / 1024) + "k"; }

engine::EngineOptions base_options(const SpecBenchArgs& a, Device device) {
  engine::EngineOptions o;
  o.device = device;
  o.max_context = a.context + a.new_tokens + 256;
  o.prefill_chunk = 512;
  return o;
}

std::vector<int32_t> random_prompt(int64_t n, int64_t vocab) {
  std::mt19937 rng(1234);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return ids;
}

// Per cycle: the whole cycle as it runs (one graph, one read), and its split into drafting (tree
// levels, selection, catch-up) and verification (tree forward, acceptance, KV compaction) from a
// run with a synchronisation between the phases.
struct CycleTimes {
  double cycle_ms, draft_ms, verify_ms, lm_head_ms;
  int64_t cycles;
};

CycleTimes measure_cycles(engine::Engine& e, const SpecBenchArgs& a) {
  engine::GenerationRequest req;
  req.prompt = random_prompt(a.context, e.config().vocab_size);
  req.max_new_tokens = a.new_tokens;
  engine::SpeculativeGenerator whole(e), phased(e, /*time_phases=*/true);
  whole.generate(req);  // warm up (first-use costs, graph captures)
  phased.generate(req);
  const engine::GenerationResult w = whole.generate(req), r = phased.generate(req);
  const double cycles = static_cast<double>(r.verifications);
  CycleTimes t{1000.0 * w.decode_seconds / static_cast<double>(w.verifications), 1000.0 * r.draft_seconds / cycles,
               1000.0 * r.verify_seconds / cycles, 0.0, r.verifications};
  // The draft LM head alone: top_k rows against its rows, as each tree level runs it.
  spec::EagleHead& d = *e.draft();
  const int64_t k = e.options().tree.top_k;
  Tensor out = d.logits(k);
  Tensor hidden = d.hidden(k);
  constexpr int kReps = 20;
  e.synchronize();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kReps; ++i) ops::linear(e.op_context(), hidden, d.lm_head(), Tensor(), out);
  e.synchronize();
  t.lm_head_ms = 1000.0 * std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / kReps;
  return t;
}

// Per-op GPU time of a speculative cycle, by phase (CUDA events around every op; the steps run
// eagerly while the profiler is attached, so the sums include launch gaps the graphs do not have).
void profile_cycles(engine::Engine& e, const SpecBenchArgs& a, const std::string& label) {
#ifdef SPECULA_WITH_CUDA
  if (e.device() != Device::CUDA) return;
  engine::GenerationRequest req;
  req.prompt = random_prompt(a.context, e.config().vocab_size);
  req.max_new_tokens = a.new_tokens;
  ops::OpContext& oc = e.op_context();
  cuda::CudaEventProfiler profiler(*oc.cuda);
  engine::SpeculativeGenerator g(e);
  oc.profiler = &profiler;
  const engine::GenerationResult r = g.generate(req);
  oc.profiler = nullptr;
  const auto totals = profiler.report();
  const double cycles = static_cast<double>(std::max<int64_t>(1, r.verifications));
  std::printf("\nper-op GPU time of a speculative cycle, %s (eager, CUDA events, %lld cycles)\n", label.c_str(),
              static_cast<long long>(r.verifications));
  std::printf("| phase: op | calls/cycle | us/cycle |\n|---|---|---|\n");
  for (const auto& [op, ct] : totals)
    if (op.find(": ") != std::string::npos)  // the cycle's phases, not the prefill
      std::printf("| %s | %.1f | %.1f |\n", op.c_str(), ct.first / cycles, 1000.0 * ct.second / cycles);
#else
  (void)e, (void)a, (void)label;
#endif
}

double plain_step_ms(engine::Engine& e, const SpecBenchArgs& a) {
  engine::GenerationRequest req;
  req.prompt = random_prompt(a.context, e.config().vocab_size);
  req.max_new_tokens = a.new_tokens;
  engine::Generator g(e);
  g.generate(req);
  const engine::GenerationResult r = g.generate(req);
  return 1000.0 * r.decode_seconds / static_cast<double>(r.tokens.size() - 1);
}

void run_tinygo(const SpecBenchArgs& a, Device device, std::vector<Row>& rows) {
  const auto windows = nlohmann::json::parse(std::ifstream(a.tinygo + "/dev_windows.json")).at("windows");
  struct Mode {
    std::string name, frspec;
    bool draft;
  };
  const Mode modes[] = {{"plain", "", false},
                        {"EAGLE-2", "", true},
                        {"FR-Spec 32k", a.tinygo + "/frspec/freq_32768.pt", true},
                        {"FR-Spec 8k", a.tinygo + "/frspec/freq_8192.pt", true}};
  for (const Mode& m : modes) {
    engine::EngineOptions o;
    o.model_dir = a.tinygo + "/target";
    o.device = device;
    o.max_context = 192 + 32 + 8;
    o.prefill_chunk = 256;
    if (m.draft) {
      o.draft_dir = a.tinygo + "/eagle";
      o.frspec_path = m.frspec;
    }
    auto e = engine::Engine::load(o);
    auto decoder = engine::make_decoder(*e);
    double seconds = 0;
    int64_t tokens = 0, passes = 0;
    for (size_t pass = 0; pass < 2; ++pass)  // the first pass warms up
      for (const auto& w : windows) {
        engine::GenerationRequest req;
        req.prompt = w.get<std::vector<int32_t>>();
        req.max_new_tokens = 33;  // the prompt pass's token + 32 from verification (the README's setting)
        const engine::GenerationResult r = decoder->generate(req);
        if (pass == 0) continue;
        seconds += r.prefill_seconds + r.decode_seconds;
        tokens += static_cast<int64_t>(r.tokens.size());
        passes += r.verifications;
      }
    rows.push_back({"tinygo " + m.name + " tokens/s (48 windows x 33 tokens, prefill included)",
                    static_cast<double>(tokens) / seconds, "tok/s"});
    if (passes > 0)
      rows.push_back({"tinygo " + m.name + " tokens per verification pass (README figure)",
                      static_cast<double>(tokens - 48) / static_cast<double>(passes), ""});
  }
}

void run(const SpecBenchArgs& a) {
  const Device device = parse_device(a.device);
  SPECULA_CHECK(device != Device::CPU || a.preset == "cpu-100m", "--preset ", a.preset,
                " is a GPU benchmark (an 8B model in fp32 takes 32 GB and minutes per step on a CPU); use --preset "
                "cpu-100m on the CPU");
  const model::ModelConfig config = model::ModelConfig::from_json(preset_config(a.preset), "preset " + a.preset);
  nlohmann::json head_json = nlohmann::json::parse(preset_config(a.preset));
  head_json["num_hidden_layers"] = 1;
  const model::ModelConfig head = model::ModelConfig::from_json(head_json.dump(), "preset " + a.preset + " draft head");
  std::vector<Row> rows;
  std::string device_name;

  double plain_ms = 0;
  {
    auto e = engine::Engine::create_random(config, base_options(a, device), 7);
    device_name = e->device_description();
    plain_ms = plain_step_ms(*e, a);
    rows.push_back({"plain decode step (context " + std::to_string(a.context) + ")", plain_ms, "ms"});
    rows.push_back({"plain decode", 1000.0 / plain_ms, "tok/s"});
  }
  std::printf("plain decode step %.3f ms\n", plain_ms);
  std::mt19937 rng(99);
  std::vector<int32_t> permutation(static_cast<size_t>(config.vocab_size));
  std::iota(permutation.begin(), permutation.end(), 0);
  std::shuffle(permutation.begin(), permutation.end(), rng);
  double full_draft_ms = 0, full_cycle_ms = 0;
  for (int64_t v : a.vocabs) {
    engine::EngineOptions o = base_options(a, device);
    if (v > 0) o.frspec_ids.assign(permutation.begin(), permutation.begin() + v);
    auto e = engine::Engine::create_random_with_draft(config, head, o, 7);
    const CycleTimes t = measure_cycles(*e, a);
    if (a.profile) profile_cycles(*e, a, vocab_name(v));
    const double cycle = t.cycle_ms, al = paper_acceptance(v);
    if (v == 0) full_draft_ms = t.draft_ms, full_cycle_ms = cycle;
    const std::string n = vocab_name(v);
    rows.push_back({n + ": whole cycle (one graph, one read)", t.cycle_ms, "ms"});
    rows.push_back({n + ": draft per cycle (5 levels, selection, catch-up)", t.draft_ms, "ms"});
    rows.push_back({n + ": draft LM head, one level (" + std::to_string(o.tree.top_k) + " rows)", t.lm_head_ms, "ms"});
    rows.push_back({n + ": LM head share of drafting (5 levels)", 100.0 * 5 * t.lm_head_ms / t.draft_ms, "%"});
    rows.push_back({n + ": verify per cycle (60 nodes, acceptance, compaction)", t.verify_ms, "ms"});
    if (v != 0) rows.push_back({n + ": draft time vs full vocabulary", 100.0 * t.draft_ms / full_draft_ms, "%"});
    if (al > 0) {
      rows.push_back({n + ": tokens/s at the paper's acceptance " + std::to_string(al).substr(0, 4), al / cycle * 1000.0,
                      "tok/s"});
      rows.push_back({n + ": speedup over plain decoding", al / cycle * plain_ms, "x"});
      if (v != 0)
        rows.push_back({n + ": speedup over full-vocabulary EAGLE-2", (al / cycle) / (paper_acceptance(0) / full_cycle_ms), "x"});
    }
    std::printf("%s: cycle %.3f ms (draft %.3f ms, verify %.3f ms when timed apart), LM head %.3f ms per level\n",
                n.c_str(), t.cycle_ms, t.draft_ms, t.verify_ms, t.lm_head_ms);
  }
  for (int64_t size : a.tree_sizes) {
    engine::EngineOptions o = base_options(a, device);
    o.tree = {10, 6, static_cast<int>(size)};
    o.frspec_ids.assign(permutation.begin(), permutation.begin() + std::min<int64_t>(32768, config.vocab_size / 2));
    auto e = engine::Engine::create_random_with_draft(config, head, o, 7);
    const CycleTimes t = measure_cycles(*e, a);
    rows.push_back({"verify a " + std::to_string(size) + "-node tree", t.verify_ms, "ms"});
    rows.push_back({"verify a " + std::to_string(size) + "-node tree vs a plain step", t.verify_ms / plain_ms, "x"});
  }
  if (!a.tinygo.empty()) run_tinygo(a, device, rows);

  std::printf("\n%s, %s, commit %s\n", device_name.c_str(), today_utc().c_str(), a.commit.c_str());
  report_bench_rows(rows, device_name, a.commit, a.preset, a.json_path, 3);
}

}  // namespace

void add_bench_spec_command(CLI::App& app) {
  auto a = std::make_shared<SpecBenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench-spec", "Time speculative decoding's parts (draft, verify, FR-Spec LM head) on a random model shape");
  cmd->add_option("--preset", a->preset, "Model shape (llama3-8b, minicpm4-8b, cpu-100m); the head is one layer of it")
      ->capture_default_str();
  cmd->add_option("--device", a->device, "auto, cuda or cpu")->capture_default_str();
  cmd->add_option("--context", a->context, "Prompt length before the measured cycles")
      ->capture_default_str()
      ->check(int_in_range<int64_t>(1, 1 << 20));
  cmd->add_option("--new-tokens", a->new_tokens, "Tokens generated per measurement")
      ->capture_default_str()
      ->check(int_in_range<int64_t>(2, 1 << 16));
  cmd->add_option("--vocabs", a->vocabs, "Draft vocabularies to time (0 = full)")->capture_default_str()->delimiter(',');
  cmd->add_option("--tree-sizes", a->tree_sizes, "Tree sizes whose verification is timed")->capture_default_str()->delimiter(',');
  cmd->add_flag("--profile", a->profile, "Also print per-op GPU time of a cycle, by phase (CUDA)");
  cmd->add_option("--tinygo", a->tinygo, "tinygo-llama3 folder: also run the real pair on its dev windows");
  cmd->add_option("--json", a->json_path, "Write the measurements as JSON here");
  cmd->add_option("--commit", a->commit, "Commit id recorded with the results")->capture_default_str();
  cmd->callback([a] { run(*a); });
}

}  // namespace specula::cli
