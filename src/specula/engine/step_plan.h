// StepPlan: what one device step runs, as a value. The engine keeps one CUDA graph per distinct
// plan (Engine::run_step): a plan is captured the first time it runs and replayed after, with the
// step's changing inputs (token ids, positions, cache rows, masks, gather indices, counts)
// written to fixed device buffers before the launch. Everything that selects kernels or shapes
// is in the plan, so a replay can never run a graph captured for another shape or path; nothing
// is read from mutable context flags at capture time.
#pragma once

#include <compare>
#include <cstdint>

namespace specula::engine {

enum class StepKind : uint8_t {
  Decode,       // one target token (the autoregressive step)
  Speculative,  // phases of a speculative cycle: `output` holds their bits (engine/speculative.h)
};

struct StepPlan {
  StepKind kind = StepKind::Decode;
  int64_t tokens = 1;      // rows the forward runs
  int64_t logit_rows = 1;  // rows whose logits it produces
  int64_t mask_width = 0;  // tree-mask columns; 0 = prefix-causal
  int output = 0;          // Decode: what follows the logits (Engine::StepOutput); Speculative: phase bits
  bool fused_attention = false;  // Decode: the one-kernel decode attention (short caches)
  bool sparse_attention = false;  // Decode: the InfLLM-V2 path (a sparse-capable model past its switch)
  auto operator<=>(const StepPlan&) const = default;
};

}  // namespace specula::engine
