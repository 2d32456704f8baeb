// Engine: a loaded model ready to run on one device. Loading reads config.json strictly, opens
// the checkpoint (memory-mapped), plans one arena for weights, activations and the KV cache,
// allocates it once, copies the weights in and builds the Transformer over it. Text is not its
// concern: front ends pair an Engine with a text::Tokenizer.
//
// The engine owns the backend state (thread pool, CUDA context) and passes it down explicitly;
// nothing here is global, so several engines can live in one process.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <map>

#include "specula/core/arena.h"
#include "specula/engine/logprobs.h"
#include "specula/engine/step_plan.h"
#include "specula/model/attention_plan.h"
#include "specula/core/thread_pool.h"
#include "specula/model/config.h"
#include "specula/model/transformer.h"
#include "specula/ops/ops.h"
#include "specula/spec/draft_tree.h"

namespace specula::cuda {
class CudaContext;
}
namespace specula::spec {
class EagleHead;
}
namespace specula::sampling {
struct SamplingParams;
class GpuSampler;
}

namespace specula::engine {

struct EngineOptions {
  std::string model_dir;
  Device device = Device::CPU;
  int threads = 0;                // CPU worker threads; 0 = all cores
  int64_t max_context = 0;        // KV-cache rows; 0 = default: CPU min(model limit, 4096), CUDA as
                                  // much of the model's limit as free GPU memory holds
  // A max_context above the model's max_position_embeddings is refused unless this is set.
  bool allow_context_beyond_model = false;
  int64_t prefill_chunk = 512;    // tokens per prefill forward
  int64_t max_logit_rows = 1;     // logits rows one forward can return (tests use the prompt length)
  std::optional<DType> weight_dtype;  // nullopt: checkpoint dtype on CPU, bf16/f16 on CUDA
  // CUDA only: F32 activations and KV cache instead of bf16/f16 (reference precision; see
  // model::ActivationDTypes). The CPU backend always computes in F32.
  bool full_precision = false;
  // Speculative decoding: an EAGLE draft head folder (empty: none), an FR-Spec list for its LM
  // head (empty: the full vocabulary) and the draft tree's shape.
  std::string draft_dir;
  std::string frspec_path;
  std::vector<int32_t> frspec_ids;  // an FR-Spec list in memory instead of a file (benchmarks)
  spec::DraftTreeParams tree;
  // Dense or InfLLM-V2 sparse attention, and overrides of the checkpoint's sparse_config.
  model::AttentionOptions attention;
  // Called during loading: stage ("weights"), bytes done, bytes total.
  std::function<void(std::string_view, size_t, size_t)> progress;
};

// Default context when --max-context is not given: the model's own limit, capped so a default
// run fits comfortably (CPU KV caches are F32).
int64_t default_context(const model::ModelConfig& config, Device device);

class Engine {
 public:
  static std::unique_ptr<Engine> load(const EngineOptions& options);
  // An engine over random weights of `config`'s shapes, generated on the device (benchmarks,
  // tests); options.model_dir is ignored.
  static std::unique_ptr<Engine> create_random(const model::ModelConfig& config, const EngineOptions& options,
                                               uint64_t seed);
  // The same with a random draft head of `head`'s shape (speculative benchmarks and tests);
  // options.frspec_path may name a list as usual.
  static std::unique_ptr<Engine> create_random_with_draft(const model::ModelConfig& config,
                                                          const model::ModelConfig& head, const EngineOptions& options,
                                                          uint64_t seed);
  ~Engine();

  const model::ModelConfig& config() const { return transformer_->config(); }
  model::Transformer& transformer() { return *transformer_; }
  ops::OpContext& op_context() { return op_context_; }
  Device device() const { return options_.device; }
  const EngineOptions& options() const { return options_; }
  // Committed tokens the context holds (the KV cache has room for a draft tree beyond it).
  int64_t max_context() const { return context_; }
  int64_t prefill_chunk() const { return prefill_chunk_; }
  // The draft head, or null when speculative decoding is off.
  spec::EagleHead* draft() { return draft_.get(); }
  // For the draft head's construction (engine.cpp's draft builder).
  Arena& arena_for_draft() { return arena_; }
  void set_draft(std::unique_ptr<spec::EagleHead> draft);
  // `draft` (optional) plans and builds the draft head in the same arena.
  struct DraftBuilder {
    std::function<void(ArenaPlan&, int64_t context)> plan;
    std::function<void(Engine&, int64_t context)> make;
    size_t kv_row_bytes = 0;  // draft KV bytes per context token (for sizing the default context)
  };
  size_t arena_bytes() const { return arena_.capacity(); }
  double load_seconds() const { return load_seconds_; }
  // "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)" or the CPU model name and thread count.
  std::string device_description() const;

  // Copies step inputs (first n entries of ids/positions/slots) to the model's device buffers.
  void write_inputs(std::span<const int32_t> ids, std::span<const int32_t> positions, std::span<const int32_t> slots);
  // Runs the transformer over the inputs written last.
  // `prefill_end`: for prompt chunks, the length the whole prompt reaches (attention_plan.h).
  void forward(int64_t tokens, int64_t logit_rows, int64_t prefill_end = 0);
  // What a decode step leaves behind.
  enum class StepOutput {
    Logits,   // logits only, for read_logits() and a host-side sampler
    Greedy,   // the argmax, taken on the device
    Sampled,  // a token drawn on the device by the sampler set up with begin_sampling() (CUDA)
  };
  // One decode step: `token` at `position` (also its cache slot). Returns the next token (Greedy,
  // Sampled) or -1 (Logits). On CUDA each output kind is captured as a CUDA graph at its first
  // call and replayed afterwards: the step's inputs travel through pinned memory inside the
  // graph, and the chosen token is the one small device-to-host copy. Each kind has two graphs,
  // each captured once: one for caches up to CudaContext::fused_attention_max_rows() rows, with
  // the fused decode attention, and one for longer caches, with the separate attention kernels
  // (faster there). Kernel-reported input errors surface at synchronize().
  int32_t decode_step(int32_t token, int32_t position, StepOutput output);
  // Runs `body` (ops on the engine's device) as the step `plan`: eagerly on the CPU; on CUDA as a
  // graph captured at the plan's first run and replayed after (body must then be the same ops on
  // the same buffers each time, which the plan's fields guarantee for the engine's steps), or
  // eagerly while an op profiler is attached to the op context.
  void run_step(const StepPlan& plan, const std::function<void()>& body);
  // CUDA: prepares the device sampler for a request (penalty state seeded with the prompt, draw
  // counter at 0); a change of parameters re-captures the sampled decode graph.
  void begin_sampling(const sampling::SamplingParams& params, std::span<const int32_t> prompt);
  // CUDA: draws the next token from logits row 0 of the last forward with the device sampler.
  int32_t sample_on_device();
  // CUDA: draws from `logits_row` ([1, vocab] F32) into `out_token` with the device sampler,
  // launches only (capturable), skipped whole when the device word `active` holds 0.
  void sample_on_device_if(const Tensor& logits_row, Tensor& out_token, const Tensor& active);
  // Host <-> device copies of small step data on the engine's stream (memcpy on the CPU).
  void upload(const Tensor& dst, const void* src, size_t bytes);
  void download(void* dst, const Tensor& src, size_t bytes);
  // Copies `rows` rows of logits to the host.
  void read_logits(int64_t rows, std::vector<float>& out);
  // Waits for the device (no-op on CPU) and reports errors flagged by kernels.
  void synchronize();
  // Log-probabilities of logits row 0 of the last forward under the model's raw distribution
  // (logprobs.h). capture_logprobs runs right after the forward, before anything rewrites the
  // logits (the device sampler applies penalties and temperature in place): it copies the row
  // within the device and runs ops::top_k_log_softmax on the copy. read_logprobs then reads back
  // only the top entries and, when the chosen token is not among them, its logit and the top
  // one's (logprob = logit - logsumexp, the log-sum-exp recovered from the top entry): at most
  // 2 * max(top_n, 1) + 2 numbers, never the row. top_n in [0, kMaxTopLogprobs]; both calls of
  // one token take the same top_n.
  void capture_logprobs(int top_n);
  TokenLogprobs read_logprobs(int32_t chosen, int top_n);

 private:
  Engine() = default;
  // Shared by load() and create_random(): backend state, arena plan and allocation, transformer.
  // `plan_weights` adds the weights to the plan; `make_weights` fills them into the arena.
  static std::unique_ptr<Engine> build(const model::ModelConfig& config, const EngineOptions& options,
                                       DType weight_dtype, const std::function<void(ArenaPlan&)>& plan_weights,
                                       const std::function<model::ModelWeights(Engine&)>& make_weights,
                                       const DraftBuilder* draft = nullptr);
  EngineOptions options_;
  std::unique_ptr<ThreadPool> pool_;
  std::shared_ptr<cuda::CudaContext> cuda_;  // shared_ptr: its deleter is bound where the type is complete
  ops::OpContext op_context_;
  Arena arena_;
  std::unique_ptr<model::Transformer> transformer_;
  std::unique_ptr<spec::EagleHead> draft_;
  int64_t context_ = 0, prefill_chunk_ = 0;
  double load_seconds_ = 0.0;
  // CUDA graphs by step plan; the decode step's pinned I/O (token, position, slot, result) and
  // the device sampler.
  std::map<StepPlan, std::shared_ptr<void>> graphs_;
  std::shared_ptr<sampling::GpuSampler> gpu_sampler_;
  void* sampler_memory_ = nullptr;  // the GPU sampler's state, in the arena
  std::shared_ptr<int32_t> step_io_;
  // capture_logprobs' device buffers (arena): the copied logits row [1, V] and the top entries.
  Tensor logprob_row_, logprob_values_, logprob_ids_;
};

}  // namespace specula::engine
