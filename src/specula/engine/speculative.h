// SpeculativeGenerator: EAGLE-2 speculative decoding on an engine with a draft head. Each cycle
// the head grows a dynamic draft tree below the last token (spec/draft_tree.h), the target
// verifies every node in one forward pass under the tree's ancestor mask, the longest run of
// nodes the target agrees with is accepted, and both KV caches keep only that run.
//
// Acceptance, one rule for greedy and sampling (reference eagle-frspec.md s.0): at node u the
// target's token x is drawn from its processed distribution at u with the request's sampler
// (temperature 0: the argmax); if a child of u carries x, x is accepted and the walk moves to
// that child, else x is the cycle's last token. Drawing from p and accepting the child that
// matches is the tree rejection rule with q a point mass (EAGLE-2's drafts are deterministic
// top-k), so the output distribution is exactly the target's; and because the sampler draws
// token n with counter n, a seeded speculative run emits the very tokens plain sampling emits.
//
// The cycle runs on the device (ops/draft_tree.h): the draft levels, the tree's selection, the
// verification forward, the acceptance walk, the target's KV compaction and the draft's catch-up
// are ops over device state, so a greedy cycle is one CUDA graph and the host reads one small
// record per cycle (the accepted tokens). Sampling on CUDA is one graph too: the device sampler
// draws the target's token at each node the walk visits (the draft-tree walk ops), with the same
// draw counter and penalty history as plain sampling. On the CPU the host Sampler (the reference
// distribution) draws at the visited nodes between verification and acceptance.
//
// Positions (reference s.7 item 2): with L tokens committed (both caches hold L rows) the root
// is the token at position L. Draft row p pairs the target feature f_p with the embedding of
// token p + 1; tree level d runs at draft position L + d - 1 in draft rows
// L + (d - 1) top_k + i; the target sees node i at position L + depth(i) in row L + i.
#pragma once

#include "specula/engine/generator.h"

namespace specula::engine {

// Phases of a cycle, as bits of StepPlan::output for StepKind::Speculative.
enum SpeculativePhase : int {
  kPhaseDraft = 1,         // draft levels and the tree's selection
  kPhaseVerify = 2,        // the target over the tree
  kPhaseGreedyTokens = 4,  // the target's argmax at every node (greedy)
  kPhaseAccept = 8,        // the walk and the target's KV compaction
  kPhaseCatchUp = 16,      // the draft over the accepted tokens, and the next level 1's top-k
  kPhaseSampledTokens = 32,  // the target's tokens drawn on the device by the request's sampler (CUDA)
};

class SpeculativeGenerator : public Decoder {
 public:
  // `time_phases`: run the drafting (levels, selection; the catch-up) and the verification
  // (the tree forward, acceptance, compaction) as separate steps with a device synchronisation
  // between them, filling GenerationResult::draft_seconds/verify_seconds (benchmarks); the
  // default runs a greedy cycle as one step.
  explicit SpeculativeGenerator(Engine& engine, bool time_phases = false);
  GenerationResult generate(const GenerationRequest& request, const GenerationCallbacks& callbacks = {}) override;

 private:
  Engine& engine_;
  bool time_phases_;
};

}  // namespace specula::engine
