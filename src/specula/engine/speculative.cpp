// The speculative decoding loop (see speculative.h). Host-orchestrated: the tree logic runs on
// the host over top-k rows and the forwards run on the engine's device.
#include "specula/engine/speculative.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>

#include "specula/core/error.h"
#include "specula/engine/engine.h"
#include "specula/engine/step_plan.h"
#include "specula/sampling/sampler.h"
#include "specula/spec/draft_tree.h"
#include "specula/spec/eagle_head.h"

namespace specula::engine {

namespace {
using clock = std::chrono::steady_clock;

std::vector<int32_t> iota_from(int64_t first, int64_t n) {
  std::vector<int32_t> out(static_cast<size_t>(n));
  std::iota(out.begin(), out.end(), static_cast<int32_t>(first));
  return out;
}

// Host copies of device rows, reused across cycles.
struct HostRows {
  std::vector<float> values;
  std::span<const float> row(int64_t i, int64_t width) const {
    return std::span<const float>(values).subspan(static_cast<size_t>(i * width), static_cast<size_t>(width));
  }
};
}  // namespace

SpeculativeGenerator::SpeculativeGenerator(Engine& engine) : engine_(engine) {
  SPECULA_CHECK(engine.draft() != nullptr, "speculative decoding needs an engine loaded with a draft head (--draft)");
}

GenerationResult SpeculativeGenerator::generate(const GenerationRequest& request, const GenerationCallbacks& callbacks) {
  check_request(engine_, request);
  spec::EagleHead& draft = *engine_.draft();
  model::Transformer& target = engine_.transformer();
  ops::OpContext& ctx = engine_.op_context();
  const spec::DraftTreeParams& tp = engine_.options().tree;
  const int k = tp.top_k;
  const int64_t prompt_len = static_cast<int64_t>(request.prompt.size());
  const int64_t context = engine_.max_context();
  const int64_t vocab = engine_.config().vocab_size, draft_vocab = draft.draft_vocab();
  const bool full_draft_vocab = draft_vocab == vocab;
  const std::vector<int32_t>& vocab_map = draft.vocab_map_host();
  sampling::Sampler sampler(request.sampling);
  const sampling::SamplingParams& sp = request.sampling;
  const bool plain_greedy = sp.is_greedy() && sp.repetition_penalty == 1.0f && sp.presence_penalty == 0.0f &&
                            sp.frequency_penalty == 0.0f;

  GenerationResult result;
  result.prompt_tokens = prompt_len;
  if (request.max_new_tokens == 0) return result;
  result.prefill_ran = true;
  const auto prefill_start = clock::now();

  HostRows logits_host;
  std::vector<int32_t> generated;  // the tokens emitted so far (penalty history)
  std::vector<float> scratch;      // one logits row for the sampler
  std::vector<int32_t> history;    // generated + the path to the node being sampled
  // The target's token at a node from its logits row, under the request's sampling rule, with
  // `path` the tokens between the last emitted one and this node.
  auto choose = [&](std::span<const float> row, std::span<const int32_t> path) -> int32_t {
    scratch.assign(row.begin(), row.end());  // reused buffers: no allocation per node
    history.assign(generated.begin(), generated.end());
    history.insert(history.end(), path.begin(), path.end());
    return sampler.sample(scratch, request.prompt, history);
  };
  auto read_rows = [&](const Tensor& t, int64_t rows, int64_t width) {
    logits_host.values.resize(static_cast<size_t>(rows * width));
    engine_.download(logits_host.values.data(), t, logits_host.values.size() * sizeof(float));
  };
  // Top-k rows of the draft's logits for `rows` nodes (on the device), mapped to full ids.
  std::vector<spec::ScoredToken> top(static_cast<size_t>(k) * k);
  std::vector<float> top_values(static_cast<size_t>(k) * k);
  std::vector<int32_t> top_ids(static_cast<size_t>(k) * k);
  auto compute_top_k = [&](int64_t rows) {
    Tensor values = draft.top_values(rows), indices = draft.top_indices(rows);
    ops::top_k_log_softmax(ctx, draft.logits(rows), values, indices);
  };
  // One copy back: the values and the indices sit in one block.
  std::vector<int32_t> top_block(static_cast<size_t>(draft.top_block().numel()));
  const size_t top_offset = top_block.size() / 2;
  auto read_top_k = [&](int64_t rows) {
    const size_t n = static_cast<size_t>(rows * k);
    engine_.download(top_block.data(), draft.top_block(), top_block.size() * sizeof(int32_t));
    std::memcpy(top_values.data(), top_block.data(), n * sizeof(float));
    std::memcpy(top_ids.data(), top_block.data() + top_offset, n * sizeof(int32_t));
    for (size_t i = 0; i < n; ++i)
      top[i] = {top_values[i], full_draft_vocab ? top_ids[i] : vocab_map[static_cast<size_t>(top_ids[i])]};
  };
  // The step inputs go up in one copy: the host mirror's fields, then its first `end` entries.
  const spec::EagleHead::InputLayout& in = draft.input_layout();
  auto fill = [&](int64_t offset, std::span<const int32_t> values) {
    std::copy(values.begin(), values.end(), draft.host_field(offset, static_cast<int64_t>(values.size())).begin());
  };
  auto upload_inputs = [&](int64_t end) {
    engine_.upload(draft.input_block(), draft.host_inputs(), static_cast<size_t>(end) * sizeof(int32_t));
  };

  // Prefill: target chunk, then the draft over the same rows paired with the next tokens.
  const int64_t chunk = engine_.prefill_chunk();
  int32_t root = -1;
  int64_t draft_rows_last = 0;
  for (int64_t begin = 0; begin < prompt_len; begin += chunk) {
    const int64_t n = std::min(chunk, prompt_len - begin);
    const bool last = begin + n == prompt_len;
    const std::vector<int32_t> pos = iota_from(begin, n);
    engine_.write_inputs(std::span(request.prompt).subspan(static_cast<size_t>(begin), static_cast<size_t>(n)), pos, pos);
    target.forward(ctx, n, last ? 1 : 0);
    if (last) {
      read_rows(target.logits(1), 1, vocab);
      root = choose(logits_host.row(0, vocab), {});
    }
    std::vector<int32_t> next(request.prompt.begin() + begin + 1, request.prompt.begin() + begin + n);
    next.push_back(last ? root : request.prompt[static_cast<size_t>(begin + n)]);
    engine_.upload(draft.token_ids(), next.data(), next.size() * sizeof(int32_t));
    engine_.upload(draft.positions(), pos.data(), pos.size() * sizeof(int32_t));
    engine_.upload(draft.slots(), pos.data(), pos.size() * sizeof(int32_t));
    draft.forward(ctx, n, target.final_hidden(n), last ? 1 : 0);
    if (last) compute_top_k(1);
    draft_rows_last = n;
    if (callbacks.on_prefill_progress) {
      engine_.synchronize();
      callbacks.on_prefill_progress(begin + n, prompt_len);
    }
  }
  const auto decode_start = clock::now();
  result.prefill_seconds = std::chrono::duration<double>(decode_start - prefill_start).count();

  // Emits one token; false when generation ends with it (or before it).
  auto emit = [&](int32_t token) -> bool {
    if (std::find(request.stop_ids.begin(), request.stop_ids.end(), token) != request.stop_ids.end()) {
      result.finish_reason = FinishReason::Stop;
      return false;
    }
    result.tokens.push_back(token);
    generated.push_back(token);
    if (callbacks.on_token && !callbacks.on_token(token)) {
      result.finish_reason = FinishReason::Cancelled;
      return false;
    }
    if (static_cast<int64_t>(result.tokens.size()) >= request.max_new_tokens) {
      result.finish_reason = FinishReason::Length;
      return false;
    }
    return true;
  };

  spec::TreeBuilder builder(tp);
  std::vector<int32_t> parent_rows(static_cast<size_t>(k)), greedy_tokens;
  // Both caches hold the committed sequence: rows [0, committed); the root sits at position committed.
  model::KvCache& target_kv = target.kv_cache();
  model::KvCache& draft_kv = draft.kv_cache();
  target_kv.truncate(0);
  draft_kv.truncate(0);
  target_kv.append(prompt_len);
  draft_kv.append(prompt_len);
  int64_t committed = prompt_len;
  bool running = emit(root);
  auto phase_start = clock::now();
  auto lap = [&](double& into) {
    const auto now = clock::now();
    into += std::chrono::duration<double>(now - phase_start).count();
    phase_start = now;
  };
  while (running) {
    if (committed >= context) {
      result.finish_reason = FinishReason::ContextFull;
      break;
    }
    // Draft: level 1 from the last draft row's top-k (computed with it), then depth - 1
    // expansions, each one captured step: gather the parents' draft outputs, the head's forward
    // under the level's mask, the top-k of every node.
    read_top_k(1);
    builder.begin(root, std::span<const spec::ScoredToken>(top).subspan(0, static_cast<size_t>(k)));
    std::fill(parent_rows.begin(), parent_rows.end(), static_cast<int32_t>(draft_rows_last - 1));
    const Tensor parent_hidden = draft.hidden(draft.shape().max_rows);  // the whole buffer: rows by index
    for (int level = 1; level < tp.depth; ++level) {
      const auto tokens = builder.frontier_tokens();
      const std::vector<int32_t> pos(static_cast<size_t>(k), static_cast<int32_t>(committed + level - 1));
      const std::vector<int32_t> slots = iota_from(committed + static_cast<int64_t>(level - 1) * k, k);
      const std::vector<int32_t> bits = builder.frontier_mask_bits();
      const int64_t width = static_cast<int64_t>(level) * k;
      const Tensor mask = draft.draft_mask(k, width);
      // Each node is paired with its parent's draft output.
      if (level > 1) {
        const auto slots_of_parents = builder.frontier_parent_slots();
        std::copy(slots_of_parents.begin(), slots_of_parents.end(), parent_rows.begin());
      }
      fill(in.tokens, tokens);
      fill(in.positions, pos);
      fill(in.slots, slots);
      fill(in.gather, parent_rows);
      fill(in.mask, bits);
      upload_inputs(in.mask + static_cast<int64_t>(bits.size()));
      const Tensor ids = draft.gather_ids(k);
      StepPlan plan{StepKind::DraftLevel, k, k, width};
      engine_.run_step(plan, [&] {
        Tensor features = draft.feature_buffer(k);
        ops::embedding(ctx, parent_hidden, ids, 1.0f, features);
        draft.forward(ctx, k, features, k, ops::AttentionMask::tree(mask, width));
        compute_top_k(k);
      });
      read_top_k(k);
      builder.expand(top);
    }
    const spec::DraftTree tree = builder.finish();
    const int64_t n = tree.size();
    lap(result.draft_seconds);

    // Verify: every node in one target forward.
    const std::vector<int32_t> positions = tree.positions(static_cast<int32_t>(committed));
    const std::vector<int32_t> rows = iota_from(committed, n);
    const std::vector<int32_t> bits = tree.mask_bits();
    engine_.write_inputs(tree.tokens, positions, rows);
    const Tensor mask = draft.verify_mask(n);
    engine_.upload(mask, bits.data(), bits.size() * sizeof(int32_t));
    engine_.run_step(StepPlan{StepKind::Verify, n, n, n, plain_greedy ? 1 : 0}, [&] {
      target.forward(ctx, n, n, ops::AttentionMask::tree(mask, n));
      if (plain_greedy) {
        Tensor next = target.next_tokens(n);
        ops::argmax(ctx, target.logits(n), next);
      }
    });

    // Accept: walk from the root while the target's token is a child.
    std::vector<int32_t> path_nodes, path_tokens;
    int32_t final_token = -1;
    if (plain_greedy) {
      greedy_tokens.resize(static_cast<size_t>(n));
      engine_.download(greedy_tokens.data(), target.next_tokens(n), greedy_tokens.size() * sizeof(int32_t));
    }
    for (int32_t u = 0;;) {
      int32_t x;
      if (plain_greedy) {
        x = greedy_tokens[static_cast<size_t>(u)];  // the temperature-0 draw, taken on the device
      } else {
        // Only the rows on the walked path are needed: at most depth + 1 of the tree's.
        read_rows(target.logits(n).slice_outer(u, 1), 1, vocab);
        x = choose(logits_host.row(0, vocab), path_tokens);
      }
      int32_t next_node = -1;
      for (int32_t c : tree.children(u))
        if (tree.tokens[static_cast<size_t>(c)] == x) {
          next_node = c;
          break;
        }
      if (next_node < 0) {
        final_token = x;
        break;
      }
      path_nodes.push_back(next_node);
      path_tokens.push_back(x);
      u = next_node;
    }
    lap(result.verify_seconds);
    if (callbacks.on_verification) callbacks.on_verification(tree, path_nodes, final_token);
    ++result.verifications;
    result.drafted_tokens += n - 1;
    result.accepted_tokens += static_cast<int64_t>(path_nodes.size());

    // Commit: the root and the accepted nodes' rows move to committed, committed + 1, ...
    const int64_t m = static_cast<int64_t>(path_nodes.size());
    // Draft catch-up: rows committed .. committed + m pair the target features of the root and
    // the accepted nodes with the next tokens (the last one is the new root). One captured step
    // with the target's KV compaction (the root and the accepted nodes' rows move to committed,
    // committed + 1, ...) and the next level 1's top-k.
    std::vector<int32_t> feature_rows = {0}, src, dst;
    feature_rows.insert(feature_rows.end(), path_nodes.begin(), path_nodes.end());
    for (int64_t i = 0; i < m; ++i) {
      src.push_back(static_cast<int32_t>(committed + path_nodes[static_cast<size_t>(i)]));
      dst.push_back(static_cast<int32_t>(committed + 1 + i));
    }
    const int32_t count = static_cast<int32_t>(m);
    std::vector<int32_t> next_tokens = path_tokens;
    next_tokens.push_back(final_token);
    const std::vector<int32_t> catch_rows = iota_from(committed, m + 1);
    fill(in.tokens, next_tokens);
    fill(in.positions, catch_rows);
    fill(in.slots, catch_rows);
    fill(in.gather, feature_rows);
    fill(in.kv_src, src);
    fill(in.kv_dst, dst);
    fill(in.kv_count, std::span(&count, 1));
    upload_inputs(in.kv_count + 1);
    const Tensor ids = draft.gather_ids(m + 1);
    engine_.run_step(StepPlan{StepKind::DraftCatchUp, m + 1, 1, 0}, [&] {
      target.kv_cache().gather(ctx, draft.kv_src(), draft.kv_dst(), draft.kv_count());
      Tensor features = draft.feature_buffer(m + 1);
      ops::embedding(ctx, target.final_hidden(n), ids, 1.0f, features);
      draft.forward(ctx, m + 1, features, 1);
      compute_top_k(1);
    });
    draft_rows_last = m + 1;
    // Both caches keep the root and the accepted path; rows past them (the rest of the tree, the
    // draft levels) are forgotten and overwritten by the next cycle.
    target_kv.append(m + 1);
    draft_kv.append(m + 1);
    committed += m + 1;
    SPECULA_CHECK(target_kv.length() == committed && draft_kv.length() == committed, "KV bookkeeping (internal error)");
    root = final_token;

    // Emit the accepted run and the target's token, each at its position: as in plain decoding,
    // nothing is emitted past position `context` (the run can reach up to depth beyond it).
    int64_t position = committed - m;  // of the first accepted token
    for (int32_t t : next_tokens) {  // the accepted drafts, then the target's token
      if (position > context) {
        result.finish_reason = FinishReason::ContextFull;
        running = false;
        break;
      }
      if (!(running = emit(t))) break;
      ++position;
    }
  }
  engine_.synchronize();
  result.decode_seconds = std::chrono::duration<double>(clock::now() - decode_start).count();
  return result;
}

}  // namespace specula::engine
