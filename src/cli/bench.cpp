// `specula bench`: speed of a model shape with random weights made on the device (no checkpoint
// file), so an 8B-shaped model can be measured without 16 GB of downloads. Measures prefill
// (one forward over a prompt) and decode at chosen context lengths (the KV cache is filled by a
// real prefill first), and on CUDA the device-to-device copy bandwidth in the same run, from
// which it reports decode as a percentage of the memory-bandwidth limit:
//   limit = bandwidth / (weight bytes read per token + KV bytes read at that context).
// Results print as a table and, with --json, as one object per measurement.
//
// --model DIR measures a checkpoint instead: it is loaded the way `generate` loads it (memory-
// mapped files, pinned staging to the device) and the load time and rate join the results
// (metrics load_seconds and load_gb_per_s, over the checkpoint's bytes).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "commands.h"
#include "options.h"
#include "bench_report.h"
#include "presets.h"
#include "specula/core/error.h"
#include "specula/engine/engine.h"
#include "specula/engine/limits.h"
#include "specula/sampling/params.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/core/cuda_memory.h"
#include "specula/ops/cuda/event_profiler.h"
#endif

namespace specula::cli {

namespace {

struct BenchArgs {
  std::string preset, device = "auto", json_path, commit = "unknown", model_dir;
  std::vector<int64_t> contexts{512, 8192};
  int64_t prefill = 4096, decode_steps = 64, prefill_chunk = 0;
  int threads = 0;
  int repeats = 3;
  bool profile = false;
  std::string attention = "auto", sparse_variant;
  int64_t dense_len = -2;
};

// Bounds of the measurement-size flags: far beyond a useful benchmark, far below overflow.
constexpr int64_t kMaxDecodeSteps = 1 << 20;
constexpr int kMaxRepeats = 1000;

using Measurement = BenchRow;

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs `tokens` prompt tokens starting at cache row `start`, in chunks.
void prefill(engine::Engine& e, const std::vector<int32_t>& ids, int64_t start) {
  const int64_t chunk = e.prefill_chunk(), n = static_cast<int64_t>(ids.size());
  std::vector<int32_t> pos;
  for (int64_t b = 0; b < n; b += chunk) {
    const int64_t len = std::min(chunk, n - b);
    pos.resize(static_cast<size_t>(len));
    for (int64_t i = 0; i < len; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(start + b + i);
    e.write_inputs(std::span(ids).subspan(static_cast<size_t>(b), static_cast<size_t>(len)), pos, pos);
    e.forward(len, b + len == n ? 1 : 0, start + n);
  }
  e.synchronize();
}

// Per-op GPU time of eager decode steps (CUDA events around every op), printed as a table: where
// a step's time goes. Eager launches add gaps that the captured graph does not have.
void profile_decode(engine::Engine& e, int64_t ctx, int32_t token) {
#ifdef SPECULA_WITH_CUDA
  if (e.device() != Device::CUDA) return;
  constexpr int kSteps = 8;
  ops::OpContext& oc = e.op_context();
  cuda::CudaEventProfiler profiler(*oc.cuda);
  e.decode_step(token, static_cast<int32_t>(ctx), engine::Engine::StepOutput::Logits);  // warm
  profiler.report();
  oc.profiler = &profiler;
  // The attention path the decode graph takes at this length (see Engine::decode_step).
  const cuda::ScopedFusedDecodeAttention attention_path(*oc.cuda, oc.cuda->fused_attention_for_rows(ctx + kSteps));
  for (int i = 0; i < kSteps; ++i) {
    const int32_t pos = static_cast<int32_t>(ctx + i);
    e.write_inputs(std::span(&token, 1), std::span(&pos, 1), std::span(&pos, 1));
    e.forward(1, 1);
    Tensor next = e.transformer().next_tokens(1);
    ops::argmax(oc, e.transformer().logits(1), next);
  }
  oc.profiler = nullptr;
  const auto totals = profiler.report();
  double sum = 0;
  for (const auto& [op, ct] : totals) sum += ct.second;
  std::printf("\nper-op GPU time of an eager decode step at context %lld (CUDA events)\n", static_cast<long long>(ctx));
  std::printf("| op | calls/step | us/step | share |\n|---|---|---|---|\n");
  for (const auto& [op, ct] : totals)
    std::printf("| %s | %d | %.1f | %.1f%% |\n", op.c_str(), ct.first / kSteps, 1000.0 * ct.second / kSteps,
                100.0 * ct.second / sum);
  std::printf("| total | | %.1f | |\n\n", 1000.0 * sum / kSteps);
#else
  (void)e, (void)ctx, (void)token;
#endif
}

// The GPU preset on CUDA, the CPU one on the CPU. An 8B model on the CPU takes 32 GB and many
// minutes per measurement, so asking for it there explicitly is refused with the reason.
std::string choose_preset(const std::string& asked, Device device) {
  if (asked.empty()) {
    if (device == Device::CUDA) return "llama3-8b";
    std::fprintf(stderr, "bench: no GPU in use, so measuring the cpu-100m preset (--preset picks another)\n");
    return "cpu-100m";
  }
  SPECULA_CHECK(!((asked == "llama3-8b" || asked == "minicpm4-8b") && device == Device::CPU),
                "--preset ", asked, " is a GPU benchmark (32 GB of fp32 weights, minutes per step on a CPU); use "
                "--preset cpu-100m on the CPU");
  return asked;
}

void run_bench(BenchArgs a) {
  const bool from_checkpoint = !a.model_dir.empty();
  const Device device_kind = parse_device(a.device);
  SPECULA_CHECK(!(from_checkpoint && !a.preset.empty()), "give --preset or --model, not both");
  if (!from_checkpoint) a.preset = choose_preset(a.preset, device_kind);
  const model::ModelConfig config = from_checkpoint
                                        ? model::ModelConfig::from_dir(a.model_dir)
                                        : model::ModelConfig::from_json(preset_config(a.preset), "preset " + a.preset);
  const std::string label = from_checkpoint ? a.model_dir : a.preset;
  SPECULA_CHECK(!a.contexts.empty(), "--contexts needs at least one length");
  SPECULA_CHECK(a.prefill_chunk > 0 || a.prefill <= engine::kMaxPrefillChunk, "--prefill ", a.prefill,
                " is longer than one prefill forward can be (", engine::kMaxPrefillChunk,
                " tokens); give --prefill-chunk to run it in chunks");
  const int64_t max_ctx = *std::max_element(a.contexts.begin(), a.contexts.end());
  engine::EngineOptions options;
  options.device = device_kind;
  options.threads = a.threads;
  options.max_context = std::max(max_ctx, a.prefill) + a.decode_steps + 2;
  SPECULA_CHECK(options.max_context <= engine::kMaxContextTokens, "--contexts, --prefill and --decode-steps need a "
                "cache of ", options.max_context, " tokens, more than the limit of ", engine::kMaxContextTokens);
  options.allow_context_beyond_model = !from_checkpoint;  // presets measure shapes, not a trained range
  options.prefill_chunk = a.prefill_chunk > 0 ? a.prefill_chunk : std::max<int64_t>(a.prefill, 1);
  options.attention.mode = model::parse_attention_mode(a.attention);
  if (!a.sparse_variant.empty()) options.attention.variant = model::parse_sparse_variant(a.sparse_variant);
  if (a.dense_len >= -1) options.attention.dense_len = a.dense_len;
  std::unique_ptr<engine::Engine> engine;
  if (from_checkpoint) {
    options.model_dir = a.model_dir;
    engine = engine::Engine::load(options);
  } else {
    engine = engine::Engine::create_random(config, options, 1234);
  }
  const model::ModelWeights& w = engine->transformer().weights();
  const std::string device = engine->device_description();
  std::fprintf(stderr, "bench: %s, %.2fB parameters, %.2f GB of weights, on %s (%s in %.1f s); attention %s\n",
               label.c_str(), static_cast<double>(w.parameter_count) / 1e9, static_cast<double>(w.bytes) / 1e9,
               device.c_str(), from_checkpoint ? "loaded" : "built", engine->load_seconds(),
               engine->transformer().attention_plan().describe().c_str());

  std::vector<Measurement> results;
  if (from_checkpoint) {
    results.push_back({"load_seconds", engine->load_seconds(), "s"});
    results.push_back({"load_gb_per_s", static_cast<double>(w.bytes) / 1e9 / engine->load_seconds(), "GB/s"});
  }
  double bandwidth = 0.0;
#ifdef SPECULA_WITH_CUDA
  if (engine->device() == Device::CUDA) {
    bandwidth = cuda_measure_copy_bandwidth(size_t{1} << 30, 20);
    results.push_back({"copy_bandwidth", bandwidth, "GB/s"});
  }
#endif

  std::mt19937 rng(7);
  auto random_ids = [&](int64_t n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(config.vocab_size));
    return ids;
  };

  // Prefill: the whole prompt as chunks of --prefill-chunk (default: one chunk).
  if (a.prefill > 0) {
    const std::vector<int32_t> ids = random_ids(a.prefill);
    prefill(*engine, ids, 0);  // warm-up (cuBLASLt heuristics, module loading)
    std::vector<double> times;
    for (int r = 0; r < a.repeats; ++r) {
      const auto t = std::chrono::steady_clock::now();
      prefill(*engine, ids, 0);
      times.push_back(seconds_since(t));
    }
    const double s = median(times);
    // 2 flops per multiply-add: every layer's projections over every token, the LM head for the
    // last token only, causal attention (QK^T and PV over half the square).
    const double head_params = static_cast<double>(config.vocab_size * config.hidden_size);
    const double layer_params = static_cast<double>(w.parameter_count) - head_params * (config.tie_word_embeddings ? 1 : 2);
    const double n = static_cast<double>(a.prefill);
    const double flops = 2.0 * layer_params * n + 2.0 * head_params +
                         2.0 * 2.0 * config.num_layers * config.num_heads * config.head_dim * n * n / 2.0;
    results.push_back({"prefill_tokens_per_s_" + std::to_string(a.prefill), n / s, "tok/s"});
    results.push_back({"prefill_tflops_" + std::to_string(a.prefill), flops / s / 1e12, "TFLOP/s"});
  }

  // Decode at each context: fill the cache with a real prefill, then time greedy steps.
  const double kv_bytes_per_token = 2.0 * config.num_layers * config.num_kv_heads * config.head_dim *
                                    (engine->device() == Device::CPU ? 4.0 : 2.0);
  const double weight_bytes_per_step =
      static_cast<double>(w.bytes) - (config.tie_word_embeddings ? 0.0 : static_cast<double>(w.embed.nbytes()));
  constexpr auto kGreedy = engine::Engine::StepOutput::Greedy;
  for (int64_t ctx : a.contexts) {
    // The fill is a real prefill in chunks of --prefill-chunk, timed once (after the warm-up of
    // the prefill measurement or of an earlier context): prefill time at every context.
    const std::vector<int32_t> fill = random_ids(ctx);
    engine->synchronize();
    const auto fill_start = std::chrono::steady_clock::now();
    prefill(*engine, fill, 0);
    engine->synchronize();
    const double fill_s = seconds_since(fill_start);
    int32_t token = 1;
    token = engine->decode_step(token, static_cast<int32_t>(ctx), kGreedy);  // warm-up and graph capture
    std::vector<double> times;
    for (int r = 0; r < a.repeats; ++r) {
      const auto t = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < a.decode_steps; ++i)
        token = engine->decode_step(token, static_cast<int32_t>(ctx + i), kGreedy);
      times.push_back(seconds_since(t));
    }
    engine->synchronize();
    if (a.profile) profile_decode(*engine, ctx, token);
    const double tok_s = static_cast<double>(a.decode_steps) / median(times);
    const std::string c = std::to_string(ctx);
    results.push_back({"prefill_ms_ctx" + c + "_once", 1000.0 * fill_s, "ms"});
    results.push_back({"decode_tokens_per_s_ctx" + c, tok_s, "tok/s"});
    results.push_back({"decode_ms_per_token_ctx" + c, 1000.0 / tok_s, "ms"});
    if (bandwidth > 0) {
      const double bytes = weight_bytes_per_step + kv_bytes_per_token * static_cast<double>(ctx + a.decode_steps / 2);
      const double limit = bandwidth * 1e9 / bytes;
      results.push_back({"decode_bandwidth_limit_ctx" + c, limit, "tok/s"});
      results.push_back({"decode_vs_bandwidth_limit_ctx" + c, 100.0 * tok_s / limit, "%"});
    }
  }

  // Sampling on the device (temperature 0.8, top-p 0.9) at the first context: what a sampled
  // request costs over greedy.
  if (engine->device() == Device::CUDA) {
    const int64_t ctx = a.contexts.front();
    const std::vector<int32_t> prompt = random_ids(ctx);
    prefill(*engine, prompt, 0);
    sampling::SamplingParams params;
    params.temperature = 0.8f;
    params.top_p = 0.9f;
    engine->begin_sampling(params, prompt);
    int32_t token = engine->sample_on_device();
    constexpr auto kSampled = engine::Engine::StepOutput::Sampled;
    token = engine->decode_step(token, static_cast<int32_t>(ctx), kSampled);
    std::vector<double> times;
    for (int r = 0; r < a.repeats; ++r) {
      const auto t = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < a.decode_steps; ++i)
        token = engine->decode_step(token, static_cast<int32_t>(ctx + 1 + i), kSampled);
      times.push_back(seconds_since(t));
    }
    engine->synchronize();
    results.push_back({"decode_top_p_tokens_per_s_ctx" + std::to_string(ctx),
                       static_cast<double>(a.decode_steps) / median(times), "tok/s"});
  }

  report_bench_rows(results, device, a.commit, label, a.json_path, 2);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Measure prefill and decode speed of a model shape with random weights built on the device, or of "
      "a checkpoint (--model)");
  cmd->add_option("--preset", a->preset,
                  "Model shape: llama3-8b (default with a GPU), minicpm4-8b (InfLLM-V2 settings) or cpu-100m (default without one)");
  cmd->add_option("--model", a->model_dir,
                  "Measure this checkpoint folder instead of a preset (also reports its load time)");
  cmd->add_option("--device", a->device, "auto, cuda or cpu")->capture_default_str();
  cmd->add_option("--contexts", a->contexts, "Context lengths to measure decode at")->capture_default_str()
      ->delimiter(',')->check(int_in_range<int64_t>(1, engine::kMaxContextTokens));
  cmd->add_option("--prefill", a->prefill,
                  "Prompt length for the prefill measurement; 0 = skip (past one chunk's limit, give --prefill-chunk)")
      ->capture_default_str()->check(int_in_range<int64_t>(0, engine::kMaxContextTokens));
  cmd->add_option("--prefill-chunk", a->prefill_chunk, "Tokens per prefill forward; 0 = the whole prompt")
      ->capture_default_str()->check(int_in_range<int64_t>(0, engine::kMaxPrefillChunk));
  cmd->add_option("--decode-steps", a->decode_steps, "Decode steps timed per repeat")->capture_default_str()
      ->check(int_in_range<int64_t>(1, kMaxDecodeSteps));
  cmd->add_option("--repeats", a->repeats, "Timed repeats (the median is reported)")->capture_default_str()
      ->check(int_in_range<int>(1, kMaxRepeats));
  cmd->add_option("--threads", a->threads, "CPU threads; 0 = all cores")->capture_default_str()
      ->check(int_in_range<int>(0, engine::kMaxThreads));
  cmd->add_option("--json", a->json_path, "Write the measurements as JSON here");
  cmd->add_option("--commit", a->commit, "Commit id recorded with the results")->capture_default_str();
  cmd->add_option("--attention", a->attention, "dense, sparse or auto (InfLLM-V2; see specula generate --help)")
      ->capture_default_str()->check(CLI::IsMember({"dense", "sparse", "auto"}));
  cmd->add_option("--sparse-variant", a->sparse_variant, "minicpm4 or minicpm4.1 (default: the model's rule)")
      ->check(CLI::IsMember({"minicpm4", "minicpm4.1"}));
  cmd->add_option("--dense-len", a->dense_len, "Override sparse_config dense_len (-1: always sparse)")
      ->check(int_in_range<int64_t>(-1, engine::kMaxContextTokens));
  cmd->add_flag("--profile", a->profile, "Also print per-op GPU time of a decode step at each context (CUDA)");
  cmd->callback([a] { run_bench(*a); });
}

}  // namespace specula::cli
