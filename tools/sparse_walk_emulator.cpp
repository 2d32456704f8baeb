// Host emulation of the CUDA block-sparse attention walk (a developer tool, not part of the build):
// the real device code of attention_sparse.cuh and of SparseMask (attention_mma.cuh), compiled for
// the host with thread shims (one std::thread per CUDA thread, std::barrier for __syncthreads,
// a mutex for the shared-memory atomics, a per-warp exchange for __shfl_up_sync), runs every
// thread block of random calls (causal and tree masks, dense markers, non-canonical lists, block
// sizes 1-128, GQA groups 1-16, invalid slots, split counts 1-6) in both tensor-core layouts and the
// generic kernel's walk, and checks that
//   - the (query row, cache row) pairs the kernels count are exactly attention_row_visible()'s,
//     each once across items and splits;
//   - no visible column lies past its item's loaded rows;
//   - without dense lists, only rows of listed blocks (or tree-window rows) are ever loaded.
// The MMA arithmetic is not emulated (the dense kernels' tests cover it); this covers the walk,
// the union, the token bits and the per-row visibility, which a GPU run cannot localise.
//
// Build and run from the repository root (needs the CUDA headers only, no device):
//   g++ -std=c++20 -O2 -w -I /usr/local/cuda/include -I src tools/sparse_walk_emulator.cpp \
//       -o /tmp/sparse_walk_emulator -lpthread && /tmp/sparse_walk_emulator SEED CASES
// Slow by design (thousands of thread barriers per block): ~5-60 s per case on two cores.
#include <cuda_runtime.h>
#include <barrier>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>
#include <algorithm>
struct Dim3T { unsigned x = 0, y = 0, z = 0; };
thread_local Dim3T threadIdx_emu;
#define threadIdx threadIdx_emu
static std::barrier<>* g_block = nullptr;
static std::barrier<>* g_warp[32];
static int g_shfl[1024];
static std::mutex g_mu;
void __syncthreads() { g_block->arrive_and_wait(); }
static int g_pred[1024];
static int g_block_threads = 0;  // threads of the running block (set where g_block is)
int __syncthreads_count(int pred) {
  g_pred[threadIdx.x] = pred != 0;
  __syncthreads();
  int c = 0;
  for (int i = 0; i < g_block_threads; ++i) c += g_pred[i];
  __syncthreads();
  return c;
}
int __syncthreads_and(int pred) { return __syncthreads_count(pred) == g_block_threads; }
int atomicMin(int* a, int v) { std::lock_guard l(g_mu); int o = *a; if (v < o) *a = v; return o; }
unsigned atomicOr(unsigned* a, unsigned v) { std::lock_guard l(g_mu); unsigned o = *a; *a |= v; return o; }
unsigned long long atomicOr(unsigned long long* a, unsigned long long v) { std::lock_guard l(g_mu); auto o = *a; *a |= v; return o; }
int __ldg(const int* p) { return *p; }
unsigned __ldg(const unsigned* p) { return *p; }
int __popc(unsigned x) { return __builtin_popcount(x); }
int __ffs(int x) { return __builtin_ffs(x); }
int __shfl_up_sync(unsigned, int v, unsigned o) {
  const int tid = threadIdx.x, w = tid / 32, lane = tid % 32;
  g_shfl[tid] = v;
  g_warp[w]->arrive_and_wait();
  const int r = lane >= (int)o ? g_shfl[tid - o] : v;
  g_warp[w]->arrive_and_wait();
  return r;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
#define __launch_bounds__(...)
extern Dim3T blockIdx, gridDim;
float __shfl_xor_sync(unsigned, float, int);
void cp_async_fence_shim();
size_t __cvta_generic_to_shared(const void*);
#include "specula/ops/cuda/attention_sparse.cuh"
#include "specula/ops/cuda/attention_mma.cuh"
#include "specula/ops/ops.h"

using namespace specula::ops::cuda_impl::attn;
namespace sops = specula::ops;

constexpr int kThreads = 128;

struct Case {
  int T, G, n_kv, cap, bs, W;
  bool tree;
  int width;
  std::vector<int32_t> slots, lists;
  std::vector<uint32_t> bits;
};

static int failures = 0;
#define CHECK(c, ...) do { if (!(c)) { if (failures++ < 20) { std::printf("FAIL %s:%d: ", __FILE__, __LINE__); std::printf(__VA_ARGS__); std::printf("\n"); } } } while (0)

#include <functional>
#include <condition_variable>
struct Pool {
  std::barrier<> start{kThreads + 1}, done{kThreads + 1};
  std::barrier<> block{kThreads};
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::function<void(int)> fn;
  bool stop = false;
  std::vector<std::thread> th;
  Pool() {
    for (int w = 0; w < kThreads / 32; ++w) { warps.push_back(std::make_unique<std::barrier<>>(32)); g_warp[w] = warps.back().get(); }
    g_block = &block;
    g_block_threads = kThreads;
    for (int t = 0; t < kThreads; ++t) th.emplace_back([this, t] {
      threadIdx.x = t;
      for (;;) { start.arrive_and_wait(); if (stop) return; fn(t); done.arrive_and_wait(); }
    });
  }
  ~Pool() { stop = true; start.arrive_and_wait(); for (auto& x : th) x.join(); }
};
static Pool* g_pool;
template <typename Fn>
void run_block(Fn f) {
  g_pool->fn = f;
  g_pool->start.arrive_and_wait();
  g_pool->done.arrive_and_wait();
}

SparseAttnParams params(const Case& c, int splits, int min_tiles) {
  SparseAttnParams p;
  p.slots = c.slots.data();
  p.tree_bits = c.tree ? c.bits.data() : nullptr;
  p.tree_words = c.tree ? (c.width + 31) / 32 : 0;
  p.tree_width = c.tree ? c.width : 0;
  p.tokens = c.T; p.n_heads = c.G * c.n_kv; p.n_kv = c.n_kv; p.group = c.G; p.head_dim = 128; p.capacity = c.cap;
  p.num_splits = splits; p.min_split_tiles = min_tiles;
  p.blocks = c.lists.data(); p.block_width = c.W; p.block_size = c.bs;
  p.sparse_words = ((c.cap + c.bs - 1) / c.bs + 31) / 32;
  return p;
}

// visible[(t * n_heads + head) * cap + row] counts
template <bool kTree>
void emulate_mma(const Case& c, int kBlockM, int kWarpsN, int splits, int min_tiles, std::vector<int>& vis, bool check_loads) {
  SparseAttnParams p = params(c, splits, min_tiles);
  const int max_tokens = std::min<int64_t>(c.T, (kBlockM + c.G - 2) / c.G + 1);
  p.sparse_union_cap = (int)std::min<int64_t>((int64_t)max_tokens * c.W, (int64_t)p.sparse_words * 32);
  const size_t bytes = sparse_smem_bytes(kBlockM, p.sparse_words, p.sparse_union_cap);
  std::vector<unsigned char> smem(bytes + 64);
  unsigned char* base = (unsigned char*)(((uintptr_t)smem.data() + 15) & ~(uintptr_t)15);
  const int total_rows = c.T * c.G, q_tiles = (total_rows + kBlockM - 1) / kBlockM, kWarpCols = 64 / kWarpsN;
  const int n_heads = c.G * c.n_kv;
  for (int kvh = 0; kvh < c.n_kv; ++kvh)
  for (int qt = 0; qt < q_tiles; ++qt)
  for (int split = 0; split < splits; ++split) {
    std::vector<int> s_len(kBlockM);
    run_block([&](int tid) {
      SparseSmem s = sparse_smem_carve(base, kBlockM, p.sparse_words, p.sparse_union_cap);
      const int m0 = qt * kBlockM, rows_here = min(kBlockM, total_rows - m0), group = c.G;
      SparseMask<kTree> mask;
      const int first_entry = mask.prefetch(p, kvh, m0, rows_here, group);
      if (tid < kBlockM) {
        int len = 0;
        if (tid < rows_here) len = attn_query_length<kTree>(p, (m0 + tid) / group, false);
        s_len[tid] = len;
        const int r = m0 + tid, t = r / group;
        if (tid < rows_here && (tid == 0 || r - t * group == 0)) sparse_store_token(p, s, kvh, t, t - m0 / group, len);
      }
      __syncthreads();
      mask.init(p);
      for (int i = 0; i < rows_here; ++i) { mask.min_len = min(mask.min_len, s_len[i]); mask.max_len = max(mask.max_len, s_len[i]); }
      const int n_items = mask.template setup<kThreads>(p, s, first_entry);
      const TileRange range = attn_split_range(n_items, p.num_splits, p.min_split_tiles, split);
      __syncthreads();
      if (tid != 0) return;
      for (int u = range.begin; u < range.end; ++u) {
        const SparseItem item = mask.item(u);
        CHECK(item.end <= c.cap && item.col0 >= 0, "item past cache");
        if (check_loads) {
          for (int j = item.col0; j < item.end; ++j) {
            const int lin_end = kTree ? c.slots[c.T - 1] - c.width + 1 : 1 << 30;
            if (j >= lin_end) continue;
            bool listed = false;
            for (int t = 0; t < c.T && !listed; ++t) listed = sops::block_listed(&c.lists[((size_t)kvh * c.T + t) * c.W], c.W, j / c.bs);
            CHECK(listed, "loaded unlisted row %d (mode %d)", j, mask.walk.mode);
          }
        }
        for (int r = 0; r < rows_here; ++r) {
          const auto st = mask.row_state(p, (m0 + r) / group, s_len[r]);
          for (int wn = 0; wn < kWarpsN; ++wn) {
            const int c0 = item.col0 + wn * kWarpCols;
            const bool whole = mask.all_visible(item, c0, c0 + kWarpCols);
            const auto ts = mask.tile_state(st, item, c0);
            for (int col = c0; col < c0 + kWarpCols; ++col) {
              const bool v = whole || mask.visible(ts, col);
              if (!v) continue;
              CHECK(col < item.end, "visible col %d past item end %d", col, item.end);
              if (col >= c.cap) continue;
              const int rr = m0 + r, t = rr / group, h = kvh * group + rr % group;
              vis[((size_t)t * n_heads + h) * c.cap + col]++;
            }
          }
        }
      }
    });
  }
}

template <bool kTree>
void emulate_generic(const Case& c, int splits, int min_tiles, std::vector<int>& vis, bool check_loads) {
  SparseAttnParams p = params(c, splits, min_tiles);
  p.sparse_union_cap = (int)std::min<int64_t>(c.W, (int64_t)p.sparse_words * 32);
  std::vector<unsigned char> smem(sparse_smem_bytes(1, p.sparse_words, p.sparse_union_cap) + 64);
  unsigned char* base = (unsigned char*)(((uintptr_t)smem.data() + 15) & ~(uintptr_t)15);
  const int n_heads = c.G * c.n_kv;
  for (int t = 0; t < c.T; ++t)
  for (int head = 0; head < n_heads; head += c.G)
  for (int split = 0; split < splits; ++split) {
    run_block([&](int tid) {
      const int kvh = head / c.G;
      const int len = attn_query_length<kTree>(p, t, false);
      const SparseSmem s = sparse_smem_carve(base, 1, p.sparse_words, p.sparse_union_cap);
      const int first_entry = sparse_prefetch_entry(p, kvh, t, 1);
      if (tid == 0) sparse_store_token(p, s, kvh, t, 0, len);
      __syncthreads();
      const int bse = kTree && len > 0 ? attn_tree_base(p) : 0;
      SparseWalk walk;
      const int n_items = sparse_setup<kThreads, kTree>(p, s, kvh, t, 1, len, bse, first_entry, walk);
      const TileRange items = attn_split_range(n_items, p.num_splits, p.min_split_tiles, split);
      __syncthreads();
      if (tid != 0) return;
      const int tree_base = kTree ? attn_tree_base(p) : 0;
      for (int u = items.begin; u < items.end; ++u) {
        const SparseItem item = walk.item(u);
        for (int j = item.col0; j < item.end; ++j) {
          if (check_loads && !(kTree && j >= tree_base)) {
            CHECK(sops::block_listed(&c.lists[((size_t)kvh * c.T + t) * c.W], c.W, j / c.bs), "generic loaded unlisted %d", j);
          }
          if (kTree && j >= tree_base) {
            const int b = j - tree_base;
            if (((c.bits[(size_t)t * p.tree_words + (b >> 5)] >> (b & 31)) & 1u) == 0u) continue;
          }
          for (int hh = head; hh < head + c.G; ++hh) vis[((size_t)t * n_heads + hh) * c.cap + j]++;
        }
      }
    });
  }
}

void compare(const Case& c, const std::vector<int>& vis, const char* what) {
  const int n_heads = c.G * c.n_kv;
  int bad = 0;
  for (int t = 0; t < c.T; ++t)
    for (int h = 0; h < n_heads; ++h) {
      const int kvh = h / c.G;
      const int32_t* list = &c.lists[((size_t)kvh * c.T + t) * c.W];
      bool valid = c.slots[t] >= 0 && c.slots[t] < c.cap;
      if (c.tree) valid = valid && c.slots[c.T - 1] >= 0 && c.slots[c.T - 1] < c.cap && c.slots[c.T - 1] - c.width + 1 >= 0;
      const int length = valid ? (c.tree ? c.slots[c.T - 1] : c.slots[t]) + 1 : 0;
      for (int j = 0; j < c.cap; ++j) {
        const bool ref = j < length && sops::attention_row_visible(c.slots.data(), c.T, c.tree ? c.bits.data() : nullptr, c.width, t, j, list, c.W, c.bs);
        const int got = vis[((size_t)t * n_heads + h) * c.cap + j];
        if (got != (ref ? 1 : 0)) { if (bad++ < 5) CHECK(false, "%s: T=%d G=%d bs=%d W=%d tree=%d: token %d head %d row %d: got %d want %d", what, c.T, c.G, c.bs, c.W, (int)c.tree, t, h, j, got, (int)ref); }
      }
    }
}

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  Pool pool;
  g_pool = &pool;
  std::mt19937 rng(argc > 1 ? atoi(argv[1]) : 1);
  const int n_cases = argc > 2 ? atoi(argv[2]) : 40;
  for (int ci = 0; ci < n_cases; ++ci) {
    Case c;
    const int Ts[] = {1, 2, 3, 5, 17, 33};
    const int Gs[] = {1, 3, 4, 16};
    const int bss[] = {1, 16, 48, 64, 64, 64, 128};
    c.T = Ts[rng() % 6]; c.G = Gs[rng() % 4]; c.n_kv = 1 + rng() % 2; c.bs = bss[rng() % 7];
    c.W = 1 + rng() % 12;
    c.cap = 200 + rng() % 1500;
    c.tree = rng() % 2;
    const double dense_share = (rng() % 3 == 0) ? 0.4 : 0.0;
    const bool noncanon = rng() % 4 == 0;
    c.slots.resize(c.T);
    if (c.tree) {
      c.width = c.T + rng() % 70;
      const int last = c.width - 1 + rng() % (c.cap - c.width);
      for (int t = 0; t < c.T; ++t) c.slots[t] = last - (c.T - 1 - t);
      const int words = (c.width + 31) / 32;
      c.bits.resize((size_t)c.T * words);
      for (auto& w : c.bits) w = rng() & rng();
    } else {
      for (auto& s : c.slots) s = rng() % c.cap;
    }
    if (rng() % 8 == 0) c.slots[rng() % c.T] = c.cap + 3;  // invalid
    c.lists.assign((size_t)c.n_kv * c.T * c.W, -1);
    bool any_dense = false;
    for (int h = 0; h < c.n_kv; ++h)
      for (int t = 0; t < c.T; ++t) {
        int32_t* l = &c.lists[((size_t)h * c.T + t) * c.W];
        if (std::uniform_real_distribution<double>(0, 1)(rng) < dense_share) { l[0] = -2; for (int j = 1; j < c.W; ++j) l[j] = rng() % 5; any_dense = true; continue; }
        const int nb = (c.cap + c.bs - 1) / c.bs;
        const int n = std::min<int>(rng() % (c.W + 1), nb + 2);  // distinct blocks in [0, nb + 2)
        std::set<int> st;
        const int own = std::max(0, std::min(c.slots[t], c.cap - 1)) / c.bs;
        st.insert(own);
        while ((int)st.size() < n) st.insert(rng() % (nb + 2));
        std::vector<int> v(st.begin(), st.end());
        if (noncanon) { std::shuffle(v.begin(), v.end(), rng); if (!v.empty()) v.push_back(v[0]); }
        for (int j = 0; j < c.W && j < (int)v.size(); ++j) l[j] = v[j];
        if (noncanon && c.W > 2) { l[c.W - 1] = rng() % nb; if (rng() % 2) l[c.W - 2] = -5; }
      }
    const bool check_loads = !any_dense;
    const int splits = 1 + rng() % 6, min_tiles = 1 + rng() % 2;
    const int n_heads = c.G * c.n_kv;
    for (int layout = 0; layout < 3; ++layout) {
      std::vector<int> vis((size_t)c.T * n_heads * c.cap, 0);
      if (layout == 0) { if (c.T * c.G > 16) continue; if (c.tree) emulate_mma<true>(c, 16, 4, splits, min_tiles, vis, check_loads); else emulate_mma<false>(c, 16, 4, splits, min_tiles, vis, check_loads); }
      if (layout == 1) { if (c.tree) emulate_mma<true>(c, 64, 1, splits, min_tiles, vis, check_loads); else emulate_mma<false>(c, 64, 1, splits, min_tiles, vis, check_loads); }
      if (layout == 2) { if (c.tree) emulate_generic<true>(c, splits, min_tiles, vis, check_loads); else emulate_generic<false>(c, splits, min_tiles, vis, check_loads); }
      compare(c, vis, layout == 0 ? "decode layout" : layout == 1 ? "prefill layout" : "generic");
    }
    std::printf("case %d T=%d G=%d kv=%d bs=%d W=%d tree=%d dense=%d noncanon=%d splits=%d: %s\n", ci, c.T, c.G, c.n_kv, c.bs, c.W, (int)c.tree, (int)any_dense, (int)noncanon, splits, failures ? "FAIL" : "ok");
    if (failures) { std::printf("case %d failed (T=%d G=%d kv=%d bs=%d W=%d tree=%d dense=%d noncanon=%d splits=%d)\n", ci, c.T, c.G, c.n_kv, c.bs, c.W, (int)c.tree, (int)any_dense, (int)noncanon, splits); return 1; }
  }
  std::printf("ok %d cases\n", n_cases);
}
