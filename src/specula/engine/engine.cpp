// Engine loading and step I/O (see engine.h).
#include "specula/engine/engine.h"

#include "specula/engine/speculative.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "specula/core/checked_size.h"
#include "specula/core/error.h"
#include "specula/engine/limits.h"
#include "specula/io/checkpoint.h"
#include "specula/sampling/gpu_sampler.h"
#include "specula/sampling/params.h"
#include "specula/spec/eagle_head.h"
#include "specula/spec/frspec.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/core/cuda_graph.h"
#include "specula/core/cuda_memory.h"
#include "specula/ops/cuda/cuda_context.h"
#endif

namespace specula::engine {

namespace {
constexpr int64_t kDefaultCpuContext = 4096;

// What the CUDA engine keeps in its arena besides the weights and the model's buffers, in the
// order build() allocates it after them: the context's workspace, then the GPU sampler's state.
void plan_device_scratch(const model::ModelConfig& config, ArenaPlan& plan) {
#ifdef SPECULA_WITH_CUDA
  plan.add(cuda::kDefaultWorkspaceBytes);
  plan.add(sampling::GpuSampler::device_bytes(config.vocab_size));
#else
  (void)config;
  (void)plan;
#endif
}

// capture_logprobs' buffers, in the order build() allocates them: a copy of one logits row and
// the top entries (values, ids).
void plan_logprob_buffers(const model::ModelConfig& config, ArenaPlan& plan) {
  plan.add(DType::F32, {1, config.vocab_size});
  plan.add(DType::F32, {1, kMaxTopLogprobs});
  plan.add(DType::I32, {1, kMaxTopLogprobs});
}

// The sizes a caller asked for, against engine/limits.h and the model's own context limit: checked
// before anything is planned, so a huge value is an error naming the option, not a wrapped size.
void validate_options(const model::ModelConfig& config, const EngineOptions& options) {
  SPECULA_CHECK(options.threads >= 0 && options.threads <= kMaxThreads, "--threads must be from 0 (all cores) to ",
                kMaxThreads, ", got ", options.threads);
  SPECULA_CHECK(options.max_context >= 0 && options.max_context <= kMaxContextTokens,
                "--max-context must be from 0 (the default) to ", kMaxContextTokens, " tokens, got ",
                options.max_context);
  SPECULA_CHECK(options.prefill_chunk >= 1 && options.prefill_chunk <= kMaxPrefillChunk,
                "--prefill-chunk must be from 1 to ", kMaxPrefillChunk, " tokens, got ", options.prefill_chunk);
  SPECULA_CHECK(options.max_logit_rows >= 1 && options.max_logit_rows <= kMaxPrefillChunk,
                "max_logit_rows must be from 1 to ", kMaxPrefillChunk, ", got ", options.max_logit_rows);
  SPECULA_CHECK(options.max_context <= config.max_position_embeddings || options.allow_context_beyond_model,
                "--max-context ", options.max_context, " exceeds the model's own limit of ",
                config.max_position_embeddings, " tokens (max_position_embeddings in ", config.source,
                "); pass --allow-long-context to run past it anyway");
}
}  // namespace

int64_t default_context(const model::ModelConfig& config, Device device) {
  // CUDA: the model's own limit; Engine::load lowers it to what free device memory holds.
  return device == Device::CPU ? std::min(config.max_position_embeddings, kDefaultCpuContext)
                               : config.max_position_embeddings;
}

Engine::~Engine() = default;

void Engine::set_draft(std::unique_ptr<spec::EagleHead> draft) { draft_ = std::move(draft); }

std::unique_ptr<Engine> Engine::build(const model::ModelConfig& config, const EngineOptions& options,
                                      DType weight_dtype, const std::function<void(ArenaPlan&)>& plan_weights,
                                      const std::function<model::ModelWeights(Engine&)>& make_weights,
                                      const DraftBuilder* draft) {
  const auto start = std::chrono::steady_clock::now();
  validate_options(config, options);
  std::unique_ptr<Engine> engine(new Engine());
  engine->options_ = options;
  engine->pool_ = std::make_unique<ThreadPool>(options.threads);
  engine->op_context_.pool = engine->pool_.get();
  if (options.device == Device::CUDA) {
#ifdef SPECULA_WITH_CUDA
    // No workspace of its own: the engine gives it one from the arena below.
    engine->cuda_ = cuda::CudaContext::create(0, 0);
    engine->op_context_.cuda = engine->cuda_.get();
#else
    fail("--device cuda: this build of specula has no CUDA backend (rebuild with nvcc available)");
#endif
  }
  if (draft) options.tree.validate();
  model::AttentionPlan attention = model::AttentionPlan::resolve(config, options.attention, options.model_dir);
  if (draft && attention.sparse_enabled())
    SPECULA_CHECK(options.tree.depth <= attention.max_tree_depth(), "--tree-depth ", options.tree.depth,
                  " exceeds what sparse attention's local blocks keep visible (", attention.max_tree_depth(),
                  " tokens with window_size ", attention.config.window_size, "); use a shallower tree");
  // With a draft head the target verifies whole trees: one forward of tree.size tokens, logits
  // for each, and room for the tree's rows past the committed context.
  const int64_t tree_rows = draft ? options.tree.size : 0;
  model::ForwardShape shape;
  shape.max_tokens = std::max<int64_t>({1, options.prefill_chunk, options.max_logit_rows, tree_rows});
  shape.max_logit_rows = std::max<int64_t>({1, options.max_logit_rows, tree_rows});
  const model::ActivationDTypes dtypes =
      model::ActivationDTypes::for_device(options.device, weight_dtype, options.full_precision);
  int64_t context = options.max_context > 0 ? options.max_context : default_context(config, options.device);
#ifdef SPECULA_WITH_CUDA
  if (options.device == Device::CUDA && options.max_context <= 0) {
    // No --max-context: as much of the model's own context as free device memory holds after the
    // weights, buffers, workspace and sampler, keeping a reserve for the CUDA and cuBLASLt
    // libraries' own memory and the captured graphs.
    constexpr size_t kReserveBytes = size_t{2} << 30;
    ArenaPlan fixed;
    plan_weights(fixed);
    model::ForwardShape no_cache = shape;
    no_cache.kv_capacity = 0;
    model::Transformer::plan(config, no_cache, dtypes, fixed, attention);
    plan_device_scratch(config, fixed);
    plan_logprob_buffers(config, fixed);
    if (draft) draft->plan(fixed, 0);
    const size_t free_bytes = cuda_free_memory();
    const size_t row_bytes = checked_nbytes(
        checked_numel({2, config.num_layers, config.num_kv_heads, config.head_dim}, "KV-cache row"), dtypes.kv_cache,
        "KV-cache row") + (draft ? draft->kv_row_bytes : 0);
    const size_t available = free_bytes > fixed.total() + kReserveBytes ? free_bytes - fixed.total() - kReserveBytes : 0;
    context = std::min<int64_t>(config.max_position_embeddings, static_cast<int64_t>(available / row_bytes));
    SPECULA_CHECK(context >= shape.max_tokens, config.source, ": the weights and buffers need ", fixed.total() >> 20,
                  " MiB of the ", free_bytes >> 20, " MiB free on the GPU, leaving no room for a KV cache");
  }
#endif
  SPECULA_CHECK(context <= config.max_position_embeddings || config.rope.type != model::RopeType::LongRope,
                "--max-context ", context, " exceeds max_position_embeddings ", config.max_position_embeddings,
                " of a LongRoPE model (its rotary table is defined only up to that length)");
  if (draft) context = std::min<int64_t>(context, kMaxContextTokens);
  // auto with a context that never reaches dense_len is dense at every length: no sparse state.
  if (attention.mode == model::AttentionMode::Auto && !attention.sparse_at(context)) {
    attention.mode = model::AttentionMode::Dense;
    attention.config_source = "the context of " + std::to_string(context) + " tokens stays below dense_len " +
                              std::to_string(attention.config.dense_len);
  }
  shape.kv_capacity = context + tree_rows;
  ArenaPlan plan;
  plan_weights(plan);
  model::Transformer::plan(config, shape, dtypes, plan, attention);
  if (options.device == Device::CUDA) plan_device_scratch(config, plan);
  plan_logprob_buffers(config, plan);
  if (draft) draft->plan(plan, context);
#ifdef SPECULA_WITH_CUDA
  if (options.device == Device::CUDA) {
    const size_t free_bytes = cuda_free_memory();
    SPECULA_CHECK(plan.total() < free_bytes, config.source, ": the model needs ", plan.total() >> 20,
                  " MiB on the GPU (weights, activations, KV cache for ", context, " tokens) but only ",
                  free_bytes >> 20, " MiB are free; lower --max-context");
  }
#endif
  engine->arena_ = Arena(options.device, plan.total());
  model::ModelWeights weights = make_weights(*engine);
  engine->transformer_ =
      std::make_unique<model::Transformer>(config, std::move(weights), shape, dtypes, engine->arena_, attention);
#ifdef SPECULA_WITH_CUDA
  if (options.device == Device::CUDA) {  // the rest of the plan, in plan_device_scratch's order
    engine->cuda_->adopt_workspace(engine->arena_.alloc_bytes(cuda::kDefaultWorkspaceBytes),
                                  cuda::kDefaultWorkspaceBytes);
    engine->sampler_memory_ = engine->arena_.alloc_bytes(sampling::GpuSampler::device_bytes(config.vocab_size));
  }
#endif
  engine->logprob_row_ = engine->arena_.alloc(DType::F32, {1, config.vocab_size});
  engine->logprob_values_ = engine->arena_.alloc(DType::F32, {1, kMaxTopLogprobs});
  engine->logprob_ids_ = engine->arena_.alloc(DType::I32, {1, kMaxTopLogprobs});
  engine->context_ = context;
  engine->prefill_chunk_ = std::max<int64_t>(1, options.prefill_chunk);
  if (draft) draft->make(*engine, context);
  engine->synchronize();
  engine->load_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return engine;
}

namespace {
// The draft head's part of the arena plan and its construction, shared by load() and the random
// variant: `plan_weights`/`make_weights` differ (checkpoint or random), the rest is the same.
Engine::DraftBuilder draft_builder(const model::ModelConfig& target, const spec::EagleHeadConfig& head,
                                   const EngineOptions& options, DType weight_dtype,
                                   std::shared_ptr<const std::vector<int32_t>> frspec,
                                   std::function<void(ArenaPlan&)> plan_weights,
                                   std::function<spec::EagleHeadWeights(Arena&, ops::OpContext&)> make_weights) {
  const model::ActivationDTypes dtypes =
      model::ActivationDTypes::for_device(options.device, weight_dtype, options.full_precision);
  auto shape_for = [&target, &options, frspec, head](int64_t context) {
    const spec::DraftTreeParams& t = options.tree;
    spec::EagleHeadShape shape;
    shape.max_rows = std::max<int64_t>({options.prefill_chunk, t.top_k, t.depth + 1});
    shape.max_logit_rows = std::max<int64_t>(1, t.top_k);
    shape.kv_capacity = context + static_cast<int64_t>(t.depth) * t.top_k + 1;
    shape.draft_vocab = frspec->empty() ? target.vocab_size : static_cast<int64_t>(frspec->size());
    shape.max_mask_width = static_cast<int64_t>(t.depth) * t.top_k;
    shape.tree_size = t.size;
    shape.max_accepted = t.depth + 1;
    shape.top_k = t.top_k;
    shape.tree_depth = t.depth;
    shape.target_vocab = target.vocab_size;
    return shape;
  };
  Engine::DraftBuilder builder;
  builder.kv_row_bytes = static_cast<size_t>(2 * head.layer.num_kv_heads * head.layer.head_dim) * dtype_size(dtypes.kv_cache);
  builder.plan = [=](ArenaPlan& plan, int64_t context) {
    plan_weights(plan);
    spec::EagleHead::plan(head, shape_for(context), dtypes, weight_dtype, !frspec->empty(), plan);
  };
  builder.make = [=](Engine& engine, int64_t context) {
    spec::EagleHeadWeights weights = make_weights(engine.arena_for_draft(), engine.op_context());
    const model::ModelWeights& tw = engine.transformer().weights();
    engine.set_draft(std::make_unique<spec::EagleHead>(head, std::move(weights), target, tw.embed, tw.lm_head, *frspec,
                                                       shape_for(context), dtypes, engine.arena_for_draft(),
                                                       engine.op_context()));
  };
  return builder;
}

// The FR-Spec list of options.frspec_path (empty without one).
std::shared_ptr<const std::vector<int32_t>> read_frspec(const EngineOptions& options, const model::ModelConfig& config) {
  SPECULA_CHECK(options.frspec_path.empty() || options.frspec_ids.empty(), "give an FR-Spec list as a file or in memory, not both");
  if (!options.frspec_ids.empty()) {
    const std::vector<int64_t> wide(options.frspec_ids.begin(), options.frspec_ids.end());
    spec::check_frspec_list(wide, config.vocab_size, "the in-memory FR-Spec list");
    return std::make_shared<const std::vector<int32_t>>(options.frspec_ids);
  }
  return std::make_shared<const std::vector<int32_t>>(
      options.frspec_path.empty() ? std::vector<int32_t>{} : spec::load_frspec_list(options.frspec_path, config.vocab_size));
}
}  // namespace

std::unique_ptr<Engine> Engine::load(const EngineOptions& options) {
  const model::ModelConfig config = model::ModelConfig::from_dir(options.model_dir);
  const io::Checkpoint checkpoint = io::Checkpoint::open(options.model_dir);
  model::WeightFormat format{options.device, options.weight_dtype};
  if (options.device == Device::CUDA && !format.dtype) {
    const DType file_dtype = config.dtype.value_or(DType::BF16);
    format.dtype = file_dtype == DType::F16 ? DType::F16 : DType::BF16;
  }
  const DType weight_dtype = format.dtype.value_or(config.dtype.value_or(DType::F32));
  SPECULA_CHECK((options.frspec_path.empty() && options.frspec_ids.empty()) || !options.draft_dir.empty(),
                "--frspec restricts a draft head's vocabulary: it needs --draft");
  const auto frspec = read_frspec(options, config);
  std::optional<DraftBuilder> draft;
  std::shared_ptr<io::Checkpoint> head_checkpoint;
  if (!options.draft_dir.empty()) {
    spec::EagleHeadConfig head = spec::EagleHeadConfig::read(options.draft_dir, config);
    head_checkpoint = std::make_shared<io::Checkpoint>(io::Checkpoint::open(options.draft_dir));
    head.prefix = spec::detect_head_prefix(*head_checkpoint, head);
    // On CUDA the head is stored in the target's device dtype (the kernels pair one 16-bit type
    // with its activations; published pairs mix float16 heads with bfloat16 targets), converted
    // on load. The CPU computes in fp32 from any stored dtype, so it keeps the file's.
    const model::WeightFormat head_format{options.device,
                                          options.device == Device::CPU ? options.weight_dtype : weight_dtype};
    const model::WeightLayout layout = spec::eagle_head_layout(head);
    draft = draft_builder(
        config, head, options, weight_dtype, frspec,
        [=](ArenaPlan& plan) { model::plan_layout(layout, *head_checkpoint, head_format, plan); },
        [=](Arena& arena, ops::OpContext&) {
          return spec::EagleHeadWeights::from(model::load_layout(layout, *head_checkpoint, head_format, arena));
        });
  }
  return build(
      config, options, weight_dtype, [&](ArenaPlan& plan) { model::plan_weights(config, checkpoint, format, plan); },
      [&](Engine& engine) {
        return model::load_weights(config, checkpoint, format, engine.arena_, [&](size_t done, size_t total) {
          if (options.progress) options.progress("weights", done, total);
        });
      },
      draft ? &*draft : nullptr);
}

std::unique_ptr<Engine> Engine::create_random(const model::ModelConfig& config, const EngineOptions& options,
                                              uint64_t seed) {
  SPECULA_CHECK(options.draft_dir.empty(), "create_random: a draft folder needs load(); use create_random_with_draft");
  const DType dtype = options.weight_dtype.value_or(DType::BF16);
  return build(
      config, options, dtype, [&](ArenaPlan& plan) { model::plan_random_weights(config, dtype, plan); },
      [&](Engine& engine) { return model::random_weights(config, dtype, engine.arena_, engine.op_context_, seed); });
}

std::unique_ptr<Engine> Engine::create_random_with_draft(const model::ModelConfig& config,
                                                         const model::ModelConfig& head_config,
                                                         const EngineOptions& options, uint64_t seed) {
  const DType dtype = options.weight_dtype.value_or(DType::BF16);
  spec::EagleHeadConfig head;
  head.dir = "(random draft head)";
  head.layer = head_config;
  head.layout = config.family == model::ModelFamily::MiniCPM4 ? spec::HeadLayout::MiniCPM4 : spec::HeadLayout::Eagle;
  if (head.layout == spec::HeadLayout::MiniCPM4)
    head.residual_scale = config.scale_depth / std::sqrt(static_cast<double>(config.num_layers + 1));
  const model::WeightLayout layout = spec::eagle_head_layout(head);
  const DraftBuilder draft = draft_builder(
      config, head, options, dtype, read_frspec(options, config),
      [=](ArenaPlan& plan) { model::plan_random_layout(layout, dtype, plan); },
      [=](Arena& arena, ops::OpContext& ctx) {
        return spec::EagleHeadWeights::from(model::random_layout(layout, dtype, arena, ctx, seed + 1000003));
      });
  return build(
      config, options, dtype, [&](ArenaPlan& plan) { model::plan_random_weights(config, dtype, plan); },
      [&](Engine& engine) { return model::random_weights(config, dtype, engine.arena_, engine.op_context_, seed); },
      &draft);
}

void Engine::write_inputs(std::span<const int32_t> ids, std::span<const int32_t> positions,
                          std::span<const int32_t> slots) {
  SPECULA_CHECK(ids.size() == positions.size() && ids.size() == slots.size(), "write_inputs: length mismatch");
  SPECULA_CHECK(static_cast<int64_t>(ids.size()) <= transformer_->shape().max_tokens, "write_inputs: ", ids.size(),
                " tokens exceed the buffer of ", transformer_->shape().max_tokens);
  const size_t bytes = ids.size() * sizeof(int32_t);
  const std::pair<std::span<const int32_t>, Tensor> copies[] = {
      {ids, transformer_->token_ids()}, {positions, transformer_->positions()}, {slots, transformer_->slots()}};
  for (const auto& [src, dst] : copies) {
    if (options_.device == Device::CPU) {
      std::memcpy(dst.data, src.data(), bytes);
    } else {
#ifdef SPECULA_WITH_CUDA
      cuda_copy_to_device_on(cuda_->stream(), dst.data, src.data(), bytes);
#endif
    }
  }
}

void Engine::forward(int64_t tokens, int64_t logit_rows, int64_t prefill_end) {
  transformer_->forward(op_context_, tokens, logit_rows, ops::AttentionMask::causal(), prefill_end);
}

int32_t Engine::decode_step(int32_t token, int32_t position, StepOutput output) {
  if (options_.device == Device::CPU) {
    SPECULA_CHECK(output != StepOutput::Sampled, "decode_step: device sampling is a CUDA feature");
    write_inputs(std::span(&token, 1), std::span(&position, 1), std::span(&position, 1));
    transformer_->forward(op_context_, 1, 1);
    if (output == StepOutput::Logits) return -1;
    Tensor next = transformer_->next_tokens(1);
    ops::argmax(op_context_, transformer_->logits(1), next);
    return next.as<int32_t>()[0];
  }
#ifdef SPECULA_WITH_CUDA
  SPECULA_CHECK(output != StepOutput::Sampled || gpu_sampler_, "decode_step: begin_sampling() was not called");
  if (!step_io_)
    step_io_ = std::shared_ptr<int32_t>(static_cast<int32_t*>(cuda_host_alloc(4 * sizeof(int32_t))), cuda_host_free);
  int32_t* io = step_io_.get();
  io[0] = token;
  io[1] = position;
  io[2] = position;
  void* stream = cuda_->stream();
  // The attention path for this cache length travels in the plan: the fused one-kernel attention
  // where it is the faster one (and not switched off), the separate kernels beyond.
  StepPlan plan;
  plan.kind = StepKind::Decode;
  plan.output = static_cast<int>(output);
  plan.fused_attention = cuda_->fused_attention_for_rows(int64_t{position} + 1);
  // Below the sparse switch a sparse-capable model decodes with plain dense attention.
  plan.sparse_attention = transformer_->sparse_path(position);
  run_step(plan, [&] {
    // The setting is read while the ops are captured; the context's own setting comes back after.
    const cuda::ScopedFusedDecodeAttention attention_path(*cuda_, plan.fused_attention);
    cuda_copy_async_on(stream, transformer_->token_ids().data, io + 0, sizeof(int32_t));
    cuda_copy_async_on(stream, transformer_->positions().data, io + 1, sizeof(int32_t));
    cuda_copy_async_on(stream, transformer_->slots().data, io + 2, sizeof(int32_t));
    transformer_->forward(op_context_, 1, 1, ops::AttentionMask::causal(), 0,
                          plan.sparse_attention ? -1 : int64_t{position});
    Tensor next = transformer_->next_tokens(1);
    if (output == StepOutput::Greedy) ops::argmax(op_context_, transformer_->logits(1), next);
    if (output == StepOutput::Sampled) gpu_sampler_->sample(transformer_->logits(1), next);
    if (output != StepOutput::Logits) cuda_copy_async_on(stream, io + 3, next.data, sizeof(int32_t));
  });
  if (output == StepOutput::Logits) return -1;
  cuda_->synchronize();
  return io[3];
#else
  fail("decode_step: this build has no CUDA backend");
#endif
}

void Engine::begin_sampling(const sampling::SamplingParams& params, std::span<const int32_t> prompt) {
#ifdef SPECULA_WITH_CUDA
  SPECULA_CHECK(cuda_ != nullptr, "begin_sampling: device sampling needs the CUDA backend");
  if (!gpu_sampler_)
    gpu_sampler_ = std::make_shared<sampling::GpuSampler>(*cuda_, config().vocab_size, 1, sampler_memory_);
  const sampling::SamplingParams& old = gpu_sampler_->params();
  const bool same = old.temperature == params.temperature && old.top_k == params.top_k && old.top_p == params.top_p &&
                    old.min_p == params.min_p && old.repetition_penalty == params.repetition_penalty &&
                    old.presence_penalty == params.presence_penalty &&
                    old.frequency_penalty == params.frequency_penalty && old.seed == params.seed;
  gpu_sampler_->begin(params, prompt);
  // The sampler bakes its parameters into its launches: a graph captured with others is stale.
  if (!same)
    std::erase_if(graphs_, [](const auto& entry) {
      return (entry.first.kind == StepKind::Decode && entry.first.output == static_cast<int>(StepOutput::Sampled)) ||
             (entry.first.kind == StepKind::Speculative && (entry.first.output & kPhaseSampledTokens) != 0);
    });
#else
  (void)params;
  (void)prompt;
  fail("begin_sampling: this build has no CUDA backend");
#endif
}

void Engine::sample_on_device_if(const Tensor& logits_row, Tensor& out_token, const Tensor& active) {
#ifdef SPECULA_WITH_CUDA
  SPECULA_CHECK(gpu_sampler_ != nullptr, "sample_on_device_if: begin_sampling() was not called");
  gpu_sampler_->sample_if(logits_row, out_token, active);
#else
  (void)logits_row, (void)out_token, (void)active;
  fail("sample_on_device_if: this build has no CUDA backend");
#endif
}

int32_t Engine::sample_on_device() {
#ifdef SPECULA_WITH_CUDA
  SPECULA_CHECK(gpu_sampler_ != nullptr, "sample_on_device: begin_sampling() was not called");
  Tensor next = transformer_->next_tokens(1);
  gpu_sampler_->sample(transformer_->logits(1), next);
  int32_t token = 0;
  cuda_copy_to_host_on(cuda_->stream(), &token, next.data, sizeof token);
  gpu_sampler_->check_errors();
  return token;
#else
  fail("sample_on_device: this build has no CUDA backend");
#endif
}

void Engine::run_step(const StepPlan& plan, const std::function<void()>& body) {
  // With a profiler attached the step runs eagerly, so each op can be timed on its own.
  if (options_.device == Device::CPU || op_context_.profiler != nullptr) {
    body();
    return;
  }
#ifdef SPECULA_WITH_CUDA
  void* stream = cuda_->stream();
  std::shared_ptr<void>& slot = graphs_[plan];
  if (!slot) {
    auto graph = std::make_shared<CudaGraph>();
    graph->begin_capture(stream);
    try {
      body();
    } catch (...) {
      graph->abort_capture(stream);
      graphs_.erase(plan);
      throw;
    }
    graph->end_capture(stream);
    slot = graph;
  }
  static_cast<CudaGraph*>(slot.get())->launch(stream);
#endif
}

void Engine::upload(const Tensor& dst, const void* src, size_t bytes) {
  SPECULA_CHECK(bytes <= dst.nbytes(), "upload: ", bytes, " bytes into a tensor of ", dst.nbytes());
  if (dst.device == Device::CPU) {
    std::memcpy(dst.data, src, bytes);
  } else {
#ifdef SPECULA_WITH_CUDA
    cuda_copy_to_device_on(cuda_->stream(), dst.data, src, bytes);
#endif
  }
}

void Engine::download(void* dst, const Tensor& src, size_t bytes) {
  SPECULA_CHECK(bytes <= src.nbytes(), "download: ", bytes, " bytes from a tensor of ", src.nbytes());
  if (src.device == Device::CPU) {
    std::memcpy(dst, src.data, bytes);
  } else {
#ifdef SPECULA_WITH_CUDA
    cuda_copy_to_host_on(cuda_->stream(), dst, src.data, bytes);
    cuda_->check_device_errors();
#endif
  }
}

void Engine::read_logits(int64_t rows, std::vector<float>& out) {
  const Tensor logits = transformer_->logits(rows);
  out.resize(static_cast<size_t>(logits.numel()));
  if (options_.device == Device::CPU) {
    std::memcpy(out.data(), logits.data, logits.nbytes());
  } else {
#ifdef SPECULA_WITH_CUDA
    cuda_copy_to_host_on(cuda_->stream(), out.data(), logits.data, logits.nbytes());
    cuda_->check_device_errors();
#endif
  }
}

void Engine::capture_logprobs(int top_n) {
  SPECULA_CHECK(top_n >= 0 && top_n <= kMaxTopLogprobs, "capture_logprobs: top_n must be from 0 to ",
                kMaxTopLogprobs, ", got ", top_n);
  const int64_t k = std::min<int64_t>(std::max(top_n, 1), config().vocab_size);
  ops::convert(op_context_, transformer_->logits(1), logprob_row_);
  Tensor values(logprob_values_.data, DType::F32, {1, k}, logprob_values_.device);
  Tensor ids(logprob_ids_.data, DType::I32, {1, k}, logprob_ids_.device);
  ops::top_k_log_softmax(op_context_, logprob_row_, values, ids);
}

TokenLogprobs Engine::read_logprobs(int32_t chosen, int top_n) {
  const int64_t vocab = config().vocab_size;
  SPECULA_CHECK(chosen >= 0 && chosen < vocab, "read_logprobs: token ", chosen, " is outside the vocabulary");
  const size_t k = static_cast<size_t>(std::min<int64_t>(std::max(top_n, 1), vocab));
  float values[kMaxTopLogprobs];
  int32_t ids[kMaxTopLogprobs];
  download(values, logprob_values_, k * sizeof(float));
  download(ids, logprob_ids_, k * sizeof(int32_t));
  TokenLogprobs out;
  out.token = chosen;
  for (size_t j = 0; j < std::min(k, static_cast<size_t>(top_n)); ++j) out.top.push_back({ids[j], values[j]});
  const auto found = std::find(ids, ids + k, chosen);
  if (found != ids + k) {
    out.logprob = values[found - ids];
  } else {
    // logsumexp = logit[top] - logprob[top]; one logit each for the chosen and the top token.
    auto logit_at = [&](int32_t id) {
      float v = 0.0f;
      download(&v, Tensor(logprob_row_.as<float>() + id, DType::F32, {1}, logprob_row_.device), sizeof v);
      return v;
    };
    out.logprob = logit_at(chosen) - (logit_at(ids[0]) - values[0]);
  }
  return out;
}

std::string Engine::device_description() const {
#ifdef SPECULA_WITH_CUDA
  if (cuda_) {
    const auto& info = cuda_->info();
    return info.name + " (sm_" + std::to_string(info.sm_major) + std::to_string(info.sm_minor) + ", " +
           std::to_string(info.multiprocessors) + " SMs)";
  }
#endif
  std::string cpu = "CPU";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  return cpu + " (" + std::to_string(pool_->size()) + " threads)";
}

void Engine::synchronize() {
#ifdef SPECULA_WITH_CUDA
  if (cuda_) {
    cuda_->synchronize();
    cuda_->check_device_errors();
    if (gpu_sampler_) gpu_sampler_->check_errors();
  }
#endif
}

}  // namespace specula::engine
