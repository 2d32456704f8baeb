// The speculative decoding loop (see speculative.h). The prefill is host-driven like plain
// decoding's; each cycle after it is a few steps of device ops (draft-tree ops, the head's and
// the target's forwards), captured as CUDA graphs by Engine::run_step, and one read of the cycle
// record. The host keeps only what it emits: the committed length and the generated tokens.
#include "specula/engine/speculative.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "specula/core/error.h"
#include "specula/engine/engine.h"
#include "specula/engine/step_plan.h"
#include "specula/ops/draft_tree.h"
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

// The tree of the last selection, copied from the device (traces and tests only).
spec::DraftTree download_tree(Engine& engine, const ops::DraftTreeState& t) {
  spec::DraftTree tree;
  const size_t n = static_cast<size_t>(t.size);
  tree.tokens.resize(n);
  tree.parents.resize(n);
  tree.depths.resize(n);
  tree.scores.resize(n);
  engine.download(tree.tokens.data(), t.node_token, n * sizeof(int32_t));
  engine.download(tree.parents.data(), t.node_parent, n * sizeof(int32_t));
  engine.download(tree.depths.data(), t.node_depth, n * sizeof(int32_t));
  engine.download(tree.scores.data(), t.node_score, n * sizeof(float));
  return tree;
}
}  // namespace

SpeculativeGenerator::SpeculativeGenerator(Engine& engine, bool time_phases)
    : engine_(engine), time_phases_(time_phases) {
  SPECULA_CHECK(engine.draft() != nullptr, "speculative decoding needs an engine loaded with a draft head (--draft)");
}

GenerationResult SpeculativeGenerator::generate(const GenerationRequest& request, const GenerationCallbacks& callbacks) {
  check_request(engine_, request);
  // The cycle reads back accepted tokens only; log-probabilities come from the plain Generator
  // (the Scheduler routes such requests there: the output distribution is the same).
  SPECULA_CHECK(!request.logprobs, "logprobs are computed by the plain decoder, not under speculative decoding "
                "(run the request without the draft head, e.g. through the Scheduler, which does so)");
  spec::EagleHead& draft = *engine_.draft();
  model::Transformer& target = engine_.transformer();
  ops::OpContext& ctx = engine_.op_context();
  const spec::DraftTreeParams& tp = engine_.options().tree;
  const int k = tp.top_k, depth = tp.depth;
  const int64_t n = tp.size;
  const int64_t prompt_len = static_cast<int64_t>(request.prompt.size());
  const int64_t context = engine_.max_context();
  const int64_t vocab = engine_.config().vocab_size;
  const Tensor vocab_map = draft.draft_vocab() == vocab ? Tensor() : draft.vocab_map();
  sampling::Sampler sampler(request.sampling);
  const sampling::SamplingParams& sp = request.sampling;
  // Greedy without penalties: the target's token at every node is its argmax, taken on the
  // device, and the whole cycle is one step. Otherwise the request's sampler draws it on the host.
  const bool device_tokens = sp.is_greedy() && sp.repetition_penalty == 1.0f && sp.presence_penalty == 0.0f &&
                             sp.frequency_penalty == 0.0f;
  // Otherwise, on CUDA, the device sampler draws them inside the cycle's graph (the walk ops);
  // on the CPU the host Sampler draws at each visited node.
  const bool device_sampling = !device_tokens && engine_.device() == Device::CUDA;

  GenerationResult result;
  result.prompt_tokens = prompt_len;
  if (request.max_new_tokens == 0) return result;
  result.prefill_ran = true;
  const auto prefill_start = clock::now();

  std::vector<float> row_host;     // one logits row for the sampler
  std::vector<int32_t> generated;  // the tokens emitted so far (penalty history)
  std::vector<int32_t> history;    // generated + the path to the node being sampled
  // The target's token at tree node `node` of the last verification (or row 0 of the last
  // prefill forward), under the request's sampling rule, with `path` the tokens between the last
  // emitted one and this node.
  auto choose = [&](const Tensor& logits, int64_t node, std::span<const int32_t> path) -> int32_t {
    row_host.resize(static_cast<size_t>(vocab));
    engine_.download(row_host.data(), logits.slice_outer(node, 1), row_host.size() * sizeof(float));
    history.assign(generated.begin(), generated.end());
    history.insert(history.end(), path.begin(), path.end());
    return sampler.sample(row_host, request.prompt, history);
  };
  auto compute_top_k = [&] {
    Tensor values = draft.top_values(1), indices = draft.top_indices(1);
    ops::top_k_log_softmax(ctx, draft.logits(1), values, indices);
  };

  if (device_sampling) engine_.begin_sampling(sp, request.prompt);
  // Prefill: target chunk, then the draft over the same rows paired with the next tokens.
  const int64_t chunk = engine_.prefill_chunk();
  int32_t root = -1;
  int64_t draft_rows_last = 0;
  for (int64_t begin = 0; begin < prompt_len; begin += chunk) {
    const int64_t rows = std::min(chunk, prompt_len - begin);
    const bool last = begin + rows == prompt_len;
    const std::vector<int32_t> pos = iota_from(begin, rows);
    engine_.write_inputs(std::span(request.prompt).subspan(static_cast<size_t>(begin), static_cast<size_t>(rows)), pos,
                         pos);
    target.forward(ctx, rows, last ? 1 : 0, ops::AttentionMask::causal(), prompt_len);
    if (last) root = device_sampling ? engine_.sample_on_device() : choose(target.logits(1), 0, {});
    std::vector<int32_t> next(request.prompt.begin() + begin + 1, request.prompt.begin() + begin + rows);
    next.push_back(last ? root : request.prompt[static_cast<size_t>(begin + rows)]);
    engine_.upload(draft.token_ids(), next.data(), next.size() * sizeof(int32_t));
    engine_.upload(draft.positions(), pos.data(), pos.size() * sizeof(int32_t));
    engine_.upload(draft.slots(), pos.data(), pos.size() * sizeof(int32_t));
    draft.forward(ctx, rows, target.final_hidden(rows), last ? 1 : 0);
    if (last) compute_top_k();
    draft_rows_last = rows;
    if (callbacks.on_prefill_progress) {
      engine_.synchronize();
      callbacks.on_prefill_progress(begin + rows, prompt_len);
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

  // Both caches hold the committed sequence: rows [0, committed); the root sits at position
  // committed. The device's cycle state starts from the prefill.
  ops::DraftTreeState& tree = draft.tree();
  model::KvCache& target_kv = target.kv_cache();
  model::KvCache& draft_kv = draft.kv_cache();
  target_kv.truncate(0);
  draft_kv.truncate(0);
  target_kv.append(prompt_len);
  draft_kv.append(prompt_len);
  int64_t committed = prompt_len;
  const int32_t cycle_start[ops::kCycleWords] = {static_cast<int32_t>(prompt_len), root,
                                                 static_cast<int32_t>(draft_rows_last - 1)};
  engine_.upload(tree.cycle, cycle_start, sizeof(cycle_start));

  // The phases, as op sequences over fixed buffers (so each combination is one captured graph).
  const Tensor parent_hidden = draft.hidden(draft.shape().max_rows);  // the whole buffer: rows by index
  const Tensor target_tokens = target.next_tokens(n);
  auto section = [&](std::string_view label) {
    if (ctx.profiler) ctx.profiler->section(label);
  };
  auto draft_phase = [&] {
    section("draft");
    ops::DraftLevelInputs level1 = draft.level_inputs(1);
    ops::draft_tree_begin(ctx, tree, draft.top_values(1), draft.top_indices(1), vocab_map, level1);
    for (int level = 1; level < depth; ++level) {
      // Each frontier node pairs its token with its parent's draft output (gather rows).
      const ops::DraftLevelInputs in = draft.level_inputs(level);
      Tensor features = draft.feature_buffer(k);
      ops::embedding(ctx, parent_hidden, in.gather.slice_outer(0, k), 1.0f, features);
      draft.forward(ctx, k, features, k, ops::AttentionMask::tree(in.mask, static_cast<int64_t>(level) * k));
      Tensor values = draft.top_values(k), indices = draft.top_indices(k);
      ops::top_k_log_softmax(ctx, draft.logits(k), values, indices);
      ops::DraftLevelInputs next = level + 1 < depth ? draft.level_inputs(level + 1) : ops::DraftLevelInputs{};
      ops::draft_tree_expand(ctx, tree, level, values, indices, vocab_map, next);
    }
    ops::VerifyInputs verify = draft.verify_inputs(target);
    ops::draft_tree_select(ctx, tree, verify);
  };
  auto verify_phase = [&](bool greedy_tokens) {
    section("verify");
    target.forward(ctx, n, n, ops::AttentionMask::tree(draft.verify_mask(n), n));
    if (greedy_tokens) {
      Tensor next = target_tokens;
      ops::argmax(ctx, target.logits(n), next);
    }
  };
  // The walk and the target's KV compaction: the root and the accepted nodes' rows move to
  // committed, committed + 1, ...
  auto accept_phase = [&] {
    section("accept");
    ops::CatchUpInputs catch_up = draft.catch_up_inputs();
    ops::draft_tree_accept(ctx, tree, target_tokens, catch_up);
    target_kv.gather(ctx, catch_up.kv_src, catch_up.kv_dst, catch_up.kv_count);
  };
  // The draft's catch-up: rows committed .. committed + depth pair the target features of the
  // root and the accepted nodes with the next tokens (rows past the accepted ones are padding,
  // never visible to a valid row), with the next level 1's top-k from the new root's row.
  auto catch_up_phase = [&] {
    section("catch-up");
    const ops::CatchUpInputs catch_up = draft.catch_up_inputs();
    Tensor features = draft.feature_buffer(depth + 1);
    ops::embedding(ctx, target.final_hidden(n), catch_up.gather.slice_outer(0, depth + 1), 1.0f, features);
    draft.forward(ctx, depth + 1, features, 1, ops::AttentionMask::causal(), draft.root_row());
    compute_top_k();
  };
  // The target's tokens of a sampled cycle, drawn on the device along the walk (ops/draft_tree.h).
  auto sampled_walk = [&] {
    section("walk");
    ops::draft_tree_walk_begin(ctx, tree);
    Tensor row = draft.walk_row(), drawn = draft.walk_drawn(), targets = target_tokens;
    for (int d = 0; d <= depth; ++d) {
      ops::embedding(ctx, target.logits(n), draft.walk_node(), 1.0f, row);  // the walk node's row
      engine_.sample_on_device_if(row, drawn, draft.walk_active());
      ops::draft_tree_walk_step(ctx, tree, drawn, targets);
    }
  };
  auto run = [&](int phases, const auto& body) {
    engine_.run_step(StepPlan{StepKind::Speculative, n, n, 0, phases}, body);
  };

  const int64_t record_words = ops::DraftTreeState::record_words(depth);
  std::vector<int32_t> record(static_cast<size_t>(record_words));
  std::vector<int32_t> node_tokens_host, node_parents_host, target_tokens_host;
  std::vector<int32_t> path_tokens;
  auto phase_start = clock::now();
  auto lap = [&](double& into) {
    engine_.synchronize();
    const auto now = clock::now();
    into += std::chrono::duration<double>(now - phase_start).count();
    phase_start = now;
  };

  bool running = emit(root);
  while (running) {
    if (committed >= context) {
      result.finish_reason = FinishReason::ContextFull;
      break;
    }
    phase_start = clock::now();
    if (device_tokens || device_sampling) {
      // The target's tokens on the device: its argmax at every node, or the sampler's draws along
      // the walk. One step per cycle, or three with a synchronisation between them when timed.
      const int tokens_phase = device_tokens ? kPhaseGreedyTokens : kPhaseSampledTokens;
      auto verify_and_choose = [&] {
        verify_phase(device_tokens);
        if (device_sampling) sampled_walk();
      };
      if (!time_phases_) {
        run(kPhaseDraft | kPhaseVerify | tokens_phase | kPhaseAccept | kPhaseCatchUp, [&] {
          draft_phase();
          verify_and_choose();
          accept_phase();
          catch_up_phase();
        });
      } else {
        run(kPhaseDraft, draft_phase);
        lap(result.draft_seconds);
        run(kPhaseVerify | tokens_phase | kPhaseAccept, [&] {
          verify_and_choose();
          accept_phase();
        });
        lap(result.verify_seconds);
        run(kPhaseCatchUp, catch_up_phase);
        lap(result.draft_seconds);
      }
    } else {
      run(kPhaseDraft, draft_phase);
      if (time_phases_) lap(result.draft_seconds);
      run(kPhaseVerify, [&] { verify_phase(false); });
      // The walk on the host: at each visited node the sampler draws the target's token from the
      // node's logits row; the device's walk then follows the same draws.
      node_tokens_host.resize(static_cast<size_t>(n));
      node_parents_host.resize(static_cast<size_t>(n));
      target_tokens_host.assign(static_cast<size_t>(n), -1);
      engine_.download(node_tokens_host.data(), tree.node_token, node_tokens_host.size() * sizeof(int32_t));
      engine_.download(node_parents_host.data(), tree.node_parent, node_parents_host.size() * sizeof(int32_t));
      path_tokens.clear();
      for (int32_t u = 0;;) {
        const int32_t x = choose(target.logits(n), u, path_tokens);
        target_tokens_host[static_cast<size_t>(u)] = x;
        int32_t next = -1;
        for (int64_t c = u + 1; c < n && next < 0; ++c)
          if (node_parents_host[static_cast<size_t>(c)] == u && node_tokens_host[static_cast<size_t>(c)] == x)
            next = static_cast<int32_t>(c);
        if (next < 0) break;
        path_tokens.push_back(x);
        u = next;
      }
      engine_.upload(target_tokens, target_tokens_host.data(), target_tokens_host.size() * sizeof(int32_t));
      run(kPhaseAccept, accept_phase);
      if (time_phases_) lap(result.verify_seconds);
      run(kPhaseCatchUp, catch_up_phase);
      if (time_phases_) lap(result.draft_seconds);
    }
    // The one read of a cycle (with device sampling also the sampler's error word: invalid logits
    // are an error for this request, never tokens).
    engine_.download(record.data(), tree.record, record.size() * sizeof(int32_t));
    if (device_sampling) engine_.synchronize();
    const int64_t m = record[0];
    SPECULA_CHECK(m >= 0 && m <= depth, "speculative cycle: accepted count ", m, " is outside [0, ", depth,
                  "] (internal error)");
    const std::span<const int32_t> next_tokens(record.data() + 1, static_cast<size_t>(m + 1));
    const std::span<const int32_t> path_nodes(record.data() + ops::DraftTreeState::record_path(depth),
                                              static_cast<size_t>(m));
    if (callbacks.on_verification) {
      engine_.synchronize();  // device-side errors (a malformed tree) surface here, not as a wrong trace
      callbacks.on_verification(download_tree(engine_, tree), path_nodes, next_tokens.back());
    }
    ++result.verifications;
    result.drafted_tokens += n - 1;
    result.accepted_tokens += m;

    // Both caches keep the root and the accepted path; rows past them (the rest of the tree, the
    // draft levels, the catch-up's padding) are forgotten and overwritten by the next cycle.
    target_kv.append(m + 1);
    draft_kv.append(m + 1);
    committed += m + 1;
    SPECULA_CHECK(target_kv.length() == committed && draft_kv.length() == committed, "KV bookkeeping (internal error)");

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
  section("");
  engine_.synchronize();
  result.decode_seconds = std::chrono::duration<double>(clock::now() - decode_start).count();
  return result;
}

}  // namespace specula::engine
