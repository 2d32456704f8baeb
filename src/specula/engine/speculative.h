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
// Positions (reference s.7 item 2): with L tokens committed (both caches hold L rows) the root
// is the token at position L. Draft row p pairs the target feature f_p with the embedding of
// token p + 1; tree level d runs at draft position L + d - 1 in draft rows
// L + (d - 1) top_k + i; the target sees node i at position L + depth(i) in row L + i.
#pragma once

#include "specula/engine/generator.h"

namespace specula::engine {

class SpeculativeGenerator : public Decoder {
 public:
  explicit SpeculativeGenerator(Engine& engine);
  GenerationResult generate(const GenerationRequest& request, const GenerationCallbacks& callbacks = {}) override;

 private:
  Engine& engine_;
};

}  // namespace specula::engine
