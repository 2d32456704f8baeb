// CUDA draft-tree ops (ops/draft_tree.h): the EAGLE-2 tree rule on the device, so a speculative
// cycle needs no host round trip between draft levels. Each op is one single-block kernel (a tree
// is at most kMaxDraftCandidates candidates, a level at most 64^2): the cost is a launch, not the
// arithmetic. Ranks use one key per candidate that packs the score's order-preserving bits above
// the complemented index, so one unsigned comparison ranks by score and then by lower index (the
// CPU reference's rule); NaN scores count as -inf on both backends.
//
// The kernels are launched plainly (no programmatic dependent launch): they read what the
// previous kernel wrote and are too short for early launch to matter. An inconsistent tree (a
// chosen candidate whose parent was not chosen, a draft id outside the FR-Spec list) cannot
// throw on the device: it sets kErrorDraftTree in the context's error word, which the engine
// reports at its next synchronize().
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "specula/core/error.h"
#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/draft_tree.h"
#include "specula/ops/cuda/kernel_utils.cuh"
#include "specula/ops/ops.h"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kExpandThreads = 1024;
constexpr int kSelectThreads = 1024;
constexpr int kMaxLevelCandidates = static_cast<int>(kMaxTopK * kMaxTopK);

// The state's device pointers, by value in the kernel parameters.
struct TreeView {
  int top_k, depth, size, candidates;
  int32_t* cycle;
  float* cand_score;
  int32_t *cand_token, *cand_parent, *cand_node, *frontier, *frontier_parent;
  int32_t *node_cand, *node_token, *node_parent, *node_depth;
  float* node_score;
  int32_t* record;
  uint32_t* error_word;
};

struct LevelView {
  int32_t *tokens, *positions, *slots, *gather, *mask;
};

TreeView view_of(CudaContext& ctx, DraftTreeState& t) {
  return TreeView{t.top_k,
                  t.depth,
                  t.size,
                  static_cast<int>(t.candidates()),
                  t.cycle.as<int32_t>(),
                  t.cand_score.as<float>(),
                  t.cand_token.as<int32_t>(),
                  t.cand_parent.as<int32_t>(),
                  t.cand_node.as<int32_t>(),
                  t.frontier.as<int32_t>(),
                  t.frontier_parent.as<int32_t>(),
                  t.node_cand.as<int32_t>(),
                  t.node_token.as<int32_t>(),
                  t.node_parent.as<int32_t>(),
                  t.node_depth.as<int32_t>(),
                  t.node_score.as<float>(),
                  t.record.as<int32_t>(),
                  ctx.error_word()};
}

LevelView view_of(DraftLevelInputs& in) {
  if (in.tokens.empty()) return LevelView{};
  return LevelView{in.tokens.as<int32_t>(), in.positions.as<int32_t>(), in.slots.as<int32_t>(),
                   in.gather.as<int32_t>(), in.mask.as<int32_t>()};
}

__device__ __forceinline__ float sanitize(float v) { return v != v ? -INFINITY : v; }

// Descending key: higher score first, then lower index.
__device__ __forceinline__ uint64_t rank_key(float score, int index) {
  uint32_t u = __float_as_uint(score);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<uint64_t>(u) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(index));
}
__device__ __forceinline__ int key_index(uint64_t key) {
  return static_cast<int>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFu));
}

__device__ __forceinline__ int32_t full_id(const int32_t* vocab_map, int map_size, int32_t id, uint32_t* error_word) {
  if (vocab_map == nullptr) return id;
  if (id < 0 || id >= map_size) {
    report_device_error(error_word, specula::cuda::kErrorDraftTree);
    return 0;
  }
  return vocab_map[id];
}

// Node f of level `level`'s head inputs (one thread per node; the frontier history of every
// level up to this one is visible to the calling thread).
__device__ void write_level_row(const TreeView& t, const LevelView& in, int level, int f, int32_t gather) {
  const int k = t.top_k;
  const int32_t L = t.cycle[kCycleCommitted];
  in.tokens[f] = t.cand_token[t.frontier[(level - 1) * k + f]];
  in.positions[f] = L + level - 1;
  in.slots[f] = L + (level - 1) * k + f;
  in.gather[f] = gather;
  const int words = (level * k + 31) / 32;
  int32_t* row = in.mask + f * words;
  for (int w = 0; w < words; ++w) row[w] = 0;
  for (int l = level, slot = f; l >= 1; --l) {
    const int bit = (l - 1) * k + slot;
    row[bit / 32] |= static_cast<int32_t>(1u << (bit % 32));
    slot = t.frontier_parent[(l - 1) * k + slot];
  }
}

__global__ void begin_kernel(TreeView t, const float* values, const int32_t* indices, const int32_t* vocab_map,
                             int map_size, LevelView in) {
  const int j = static_cast<int>(threadIdx.x);
  if (j >= t.top_k) return;
  t.cand_score[j] = sanitize(values[j]);
  t.cand_token[j] = full_id(vocab_map, map_size, indices[j], t.error_word);
  t.cand_parent[j] = -1;
  t.frontier[j] = j;
  t.frontier_parent[j] = 0;
  write_level_row(t, in, 1, j, t.cycle[kCycleRootRow]);  // reads only what this thread wrote
}

__global__ void __launch_bounds__(kExpandThreads)
    expand_kernel(TreeView t, int level, const float* values, const int32_t* indices, const int32_t* vocab_map,
                  int map_size, LevelView in, bool write_next) {
  __shared__ float scores[kMaxLevelCandidates];
  const int k = t.top_k, n = k * k, tid = static_cast<int>(threadIdx.x);
  const int first = k + (level - 1) * k * k;
  for (int i = tid; i < n; i += blockDim.x) {
    const int f = i / k;
    const int32_t parent = t.frontier[(level - 1) * k + f];
    const float s = sanitize(t.cand_score[parent] + values[i]);  // fp32, as the reference sums
    scores[i] = s;
    t.cand_score[first + i] = s;
    t.cand_token[first + i] = full_id(vocab_map, map_size, indices[i], t.error_word);
    t.cand_parent[first + i] = parent;
  }
  __syncthreads();
  for (int i = tid; i < n; i += blockDim.x) {
    const uint64_t mine = rank_key(scores[i], i);
    int rank = 0;
    for (int j = 0; j < n && rank < k; ++j) rank += rank_key(scores[j], j) > mine;
    if (rank < k) {
      t.frontier[level * k + rank] = first + i;
      t.frontier_parent[level * k + rank] = i / k;
    }
  }
  __syncthreads();
  if (write_next && tid < k) write_level_row(t, in, level + 1, tid, t.frontier_parent[level * k + tid]);
}

__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(TreeView t, int n_pow2, int32_t* tokens, int32_t* positions, int32_t* slots, int32_t* mask) {
  extern __shared__ uint64_t keys[];
  const int tid = static_cast<int>(threadIdx.x), C = t.candidates, n = t.size, k = t.top_k;
  for (int i = tid; i < n_pow2; i += blockDim.x) keys[i] = i < C ? rank_key(t.cand_score[i], i) : 0;
  for (int i = tid; i < C; i += blockDim.x) t.cand_node[i] = -1;
  __syncthreads();
  block_sort_descending(keys, n_pow2);
  // The chosen candidates, ordered by index: node = 1 + how many chosen ones have a lower index.
  for (int r = tid; r < n - 1; r += blockDim.x) {
    const int c = key_index(keys[r]);
    int node = 1;
    for (int s = 0; s < n - 1; ++s) node += key_index(keys[s]) < c;
    t.cand_node[c] = node;
    t.node_cand[node] = c;
  }
  __syncthreads();
  const int32_t L = t.cycle[kCycleCommitted];
  for (int i = tid; i < n; i += blockDim.x) {
    if (i == 0) {
      t.node_cand[0] = -1;
      t.node_token[0] = t.cycle[kCycleRoot];
      t.node_parent[0] = -1;
      t.node_depth[0] = 0;
      t.node_score[0] = 0.0f;
      continue;
    }
    const int c = t.node_cand[i];
    const int32_t parent_cand = t.cand_parent[c];
    int32_t parent = parent_cand < 0 ? 0 : t.cand_node[parent_cand];
    if (parent < 0) {
      report_device_error(t.error_word, specula::cuda::kErrorDraftTree);
      parent = 0;
    }
    t.node_token[i] = t.cand_token[c];
    t.node_parent[i] = parent;
    t.node_depth[i] = c < k ? 1 : 2 + (c - k) / (k * k);
    t.node_score[i] = t.cand_score[c];
  }
  __syncthreads();
  const int words = (n + 31) / 32;
  for (int i = tid; i < n; i += blockDim.x) {
    tokens[i] = t.node_token[i];
    positions[i] = L + t.node_depth[i];
    slots[i] = L + i;
    int32_t* row = mask + i * words;
    for (int w = 0; w < words; ++w) row[w] = 0;
    for (int a = i, steps = 0; a >= 0 && steps <= t.depth; a = t.node_parent[a], ++steps)
      row[a / 32] |= static_cast<int32_t>(1u << (a % 32));
  }
}

// One warp: the walk, then the catch-up inputs and the cycle update.
__global__ void accept_kernel(TreeView t, int path_offset, const int32_t* x, int32_t* tokens, int32_t* positions, int32_t* slots,
                              int32_t* gather, int32_t* kv_src, int32_t* kv_dst, int32_t* kv_count) {
  const int lane = static_cast<int>(threadIdx.x), n = t.size, depth = t.depth;
  int32_t* record = t.record;
  int32_t* path = record + path_offset;
  const int32_t L = t.cycle[kCycleCommitted];
  int m = 0, u = 0;
  for (;;) {
    const int32_t want = x[u];
    int next = -1;
    for (int base = u + 1; base < n && next < 0; base += 32) {
      const int c = base + lane;
      const bool hit = c < n && t.node_parent[c] == u && t.node_token[c] == want;
      const unsigned ballot = __ballot_sync(0xFFFFFFFFu, hit);
      if (ballot) next = base + __ffs(ballot) - 1;
    }
    if (next < 0 || m == depth) break;
    if (lane == 0) {
      record[1 + m] = want;
      path[m] = next;
    }
    ++m;
    u = next;
  }
  const int32_t final_token = x[u];
  __syncwarp();
  if (lane == 0) {
    record[0] = m;
    record[1 + m] = final_token;
  }
  __syncwarp();
  for (int i = lane; i <= depth; i += 32) {
    const bool valid = i <= m;
    tokens[i] = valid ? record[1 + i] : final_token;
    positions[i] = L + i;
    slots[i] = L + i;
    gather[i] = valid ? (i == 0 ? 0 : path[i - 1]) : (m == 0 ? 0 : path[m - 1]);
  }
  for (int i = lane; i < depth; i += 32) {
    const int j = i < m ? i : (m > 0 ? m - 1 : 0);
    kv_src[i] = L + (m == 0 ? 0 : path[j]);
    kv_dst[i] = L + 1 + j;
  }
  __syncwarp();
  if (lane == 0) {
    *kv_count = m;
    t.cycle[kCycleCommitted] = L + m + 1;
    t.cycle[kCycleRoot] = final_token;
    t.cycle[kCycleRootRow] = m;
  }
}

__global__ void walk_begin_kernel(int32_t* walk) {
  walk[kWalkNode] = 0;
  walk[kWalkActive] = 1;
}

// One warp: the child of the walk's node that carries the drawn token, in index order.
__global__ void walk_step_kernel(TreeView t, int32_t* walk, const int32_t* drawn, int32_t* target_tokens) {
  if (walk[kWalkActive] == 0) return;  // uniform: every lane reads the same word
  const int lane = static_cast<int>(threadIdx.x), u = walk[kWalkNode];
  const int32_t x = *drawn;
  int next = -1;
  for (int base = u + 1; base < t.size && next < 0; base += 32) {
    const int c = base + lane;
    const bool hit = c < t.size && t.node_parent[c] == u && t.node_token[c] == x;
    const unsigned ballot = __ballot_sync(0xFFFFFFFFu, hit);
    if (ballot) next = base + __ffs(ballot) - 1;
  }
  __syncwarp();
  if (lane == 0) {
    target_tokens[u] = x;
    if (next >= 0) {
      walk[kWalkNode] = next;
    } else {
      walk[kWalkActive] = 0;
    }
  }
}

const int32_t* map_ptr(const Tensor& vocab_map) { return vocab_map.empty() ? nullptr : vocab_map.as<const int32_t>(); }
int map_len(const Tensor& vocab_map) { return static_cast<int>(vocab_map.numel()); }

}  // namespace

void draft_tree_begin(CudaContext& ctx, DraftTreeState& tree, const Tensor& values, const Tensor& indices,
                      const Tensor& vocab_map, DraftLevelInputs& level_inputs) {
  begin_kernel<<<1, 64, 0, stream_of(ctx)>>>(view_of(ctx, tree), values.as<const float>(), indices.as<const int32_t>(),
                                              map_ptr(vocab_map), map_len(vocab_map), view_of(level_inputs));
  SPECULA_CUDA_CHECK_LAUNCH("draft_tree_begin");
}

void draft_tree_expand(CudaContext& ctx, DraftTreeState& tree, int level, const Tensor& values, const Tensor& indices,
                       const Tensor& vocab_map, DraftLevelInputs& level_inputs) {
  const bool write_next = level + 1 < tree.depth;
  const int threads = std::min(kExpandThreads, ((tree.top_k * tree.top_k + 31) / 32) * 32);
  expand_kernel<<<1, std::max(threads, 64), 0, stream_of(ctx)>>>(
      view_of(ctx, tree), level, values.as<const float>(), indices.as<const int32_t>(), map_ptr(vocab_map),
      map_len(vocab_map), write_next ? view_of(level_inputs) : LevelView{}, write_next);
  SPECULA_CUDA_CHECK_LAUNCH("draft_tree_expand");
}

void draft_tree_select(CudaContext& ctx, DraftTreeState& tree, VerifyInputs& verify) {
  int n_pow2 = 1;
  while (n_pow2 < tree.candidates()) n_pow2 <<= 1;
  const size_t smem = static_cast<size_t>(n_pow2) * sizeof(uint64_t);
  SPECULA_CHECK(smem <= ctx.info().max_shared_memory_per_block_optin, "draft_tree_select: ", tree.candidates(),
                " candidates need ", smem, " bytes of shared memory, the device allows ",
                ctx.info().max_shared_memory_per_block_optin);
  SPECULA_CUDA_CHECK(
      cudaFuncSetAttribute(select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  select_kernel<<<1, kSelectThreads, smem, stream_of(ctx)>>>(view_of(ctx, tree), n_pow2, verify.tokens.as<int32_t>(),
                                                             verify.positions.as<int32_t>(), verify.slots.as<int32_t>(),
                                                             verify.mask.as<int32_t>());
  SPECULA_CUDA_CHECK_LAUNCH("draft_tree_select");
}

void draft_tree_accept(CudaContext& ctx, DraftTreeState& tree, const Tensor& target_tokens, CatchUpInputs& catch_up) {
  accept_kernel<<<1, 32, 0, stream_of(ctx)>>>(view_of(ctx, tree), static_cast<int>(DraftTreeState::record_path(tree.depth)),
                                               target_tokens.as<const int32_t>(),
                                               catch_up.tokens.as<int32_t>(), catch_up.positions.as<int32_t>(),
                                               catch_up.slots.as<int32_t>(), catch_up.gather.as<int32_t>(),
                                               catch_up.kv_src.as<int32_t>(), catch_up.kv_dst.as<int32_t>(),
                                               catch_up.kv_count.as<int32_t>());
  SPECULA_CUDA_CHECK_LAUNCH("draft_tree_accept");
}

void draft_tree_walk_begin(CudaContext& ctx, DraftTreeState& tree) {
  walk_begin_kernel<<<1, 1, 0, stream_of(ctx)>>>(tree.walk.as<int32_t>());
  SPECULA_CUDA_CHECK_LAUNCH("draft_tree_walk_begin");
}

void draft_tree_walk_step(CudaContext& ctx, DraftTreeState& tree, const Tensor& drawn, Tensor& target_tokens) {
  walk_step_kernel<<<1, 32, 0, stream_of(ctx)>>>(view_of(ctx, tree), tree.walk.as<int32_t>(), drawn.as<const int32_t>(),
                                                 target_tokens.as<int32_t>());
  SPECULA_CUDA_CHECK_LAUNCH("draft_tree_walk_step");
}

}  // namespace specula::ops::cuda_impl
