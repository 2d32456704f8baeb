// The draft-tree ops (ops/draft_tree.h): the CPU reference against spec::TreeBuilder (the host
// builder, written independently) on random draft rows, level by level (frontier tokens, parent
// slots, masks), then the selected tree and the verification inputs, then the acceptance walk
// against a walk over DraftTree::children; and the CUDA kernels against the CPU reference, field by
// field and exactly, on the same inputs. Shapes go from one node per level to 64-wide levels
// (4160 candidates) and 32 levels, with and without an FR-Spec id map, with and without ties.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/ops/draft_tree.h"
#include "specula/spec/draft_tree.h"

using namespace specula;

namespace {

struct Shape {
  int top_k, depth, size;
  bool frspec, ties;
};

std::string describe(const Shape& s) {
  return "top_k " + std::to_string(s.top_k) + " depth " + std::to_string(s.depth) + " size " +
         std::to_string(s.size) + (s.frspec ? " frspec" : "") + (s.ties ? " ties" : "");
}

const Shape kShapes[] = {
    {1, 1, 2, false, false},   {1, 5, 6, true, false},    {3, 4, 20, false, true},  {10, 6, 60, false, false},
    {10, 6, 60, true, true},   {10, 6, 128, false, false}, {7, 3, 57, true, false},  {16, 5, 300, false, true},
    {64, 2, 1024, true, false}, {4, 32, 400, false, true},  {2, 32, 64, true, false},
};

constexpr int32_t kVocab = 1000;
constexpr int32_t kDraftVocab = 300;
constexpr int32_t kCommitted = 37, kRoot = 5, kRootRow = 3;

// Every buffer the ops read or write, on the host.
struct HostTree {
  std::vector<int32_t> cycle, cand_token, cand_parent, cand_node, frontier, frontier_parent, node_cand, node_token,
      node_parent, node_depth, record;
  std::vector<float> cand_score, node_score;
  std::vector<int32_t> lvl_tokens, lvl_positions, lvl_slots, lvl_gather, lvl_mask;
  std::vector<int32_t> v_tokens, v_positions, v_slots, v_mask;
  std::vector<int32_t> c_tokens, c_positions, c_slots, c_gather, c_src, c_dst, c_count;
  std::vector<int32_t> walk, walk_targets, drawn;
};

using IntField = std::vector<int32_t> HostTree::*;
using FloatField = std::vector<float> HostTree::*;
const std::pair<const char*, IntField> kIntFields[] = {
    {"cycle", &HostTree::cycle},
    {"cand_token", &HostTree::cand_token},
    {"cand_parent", &HostTree::cand_parent},
    {"cand_node", &HostTree::cand_node},
    {"frontier", &HostTree::frontier},
    {"frontier_parent", &HostTree::frontier_parent},
    {"node_cand", &HostTree::node_cand},
    {"node_token", &HostTree::node_token},
    {"node_parent", &HostTree::node_parent},
    {"node_depth", &HostTree::node_depth},
    {"record", &HostTree::record},
    {"level tokens", &HostTree::lvl_tokens},
    {"level positions", &HostTree::lvl_positions},
    {"level slots", &HostTree::lvl_slots},
    {"level gather", &HostTree::lvl_gather},
    {"level mask", &HostTree::lvl_mask},
    {"verify tokens", &HostTree::v_tokens},
    {"verify positions", &HostTree::v_positions},
    {"verify slots", &HostTree::v_slots},
    {"verify mask", &HostTree::v_mask},
    {"catch-up tokens", &HostTree::c_tokens},
    {"catch-up positions", &HostTree::c_positions},
    {"catch-up slots", &HostTree::c_slots},
    {"catch-up gather", &HostTree::c_gather},
    {"kv src", &HostTree::c_src},
    {"kv dst", &HostTree::c_dst},
    {"kv count", &HostTree::c_count},
    {"walk", &HostTree::walk},
    {"walk targets", &HostTree::walk_targets},
    {"drawn", &HostTree::drawn},
};
const std::pair<const char*, FloatField> kFloatFields[] = {{"cand_score", &HostTree::cand_score},
                                                           {"node_score", &HostTree::node_score}};

int64_t words(int64_t width) { return (width + 31) / 32; }

HostTree make_host(const Shape& s) {
  HostTree h;
  const int64_t C = s.top_k + static_cast<int64_t>(s.depth - 1) * s.top_k * s.top_k;
  const size_t k = static_cast<size_t>(s.top_k), n = static_cast<size_t>(s.size), d = static_cast<size_t>(s.depth);
  // Poisoned, so an entry an op should write and does not shows up as a difference or a failure.
  auto ints = [](size_t count) { return std::vector<int32_t>(count, -777); };
  h.cycle = {kCommitted, kRoot, kRootRow};
  for (IntField f : {&HostTree::cand_token, &HostTree::cand_parent, &HostTree::cand_node}) h.*f = ints(size_t(C));
  h.cand_score.assign(size_t(C), -777.0f);
  h.frontier = ints(d * k);
  h.frontier_parent = ints(d * k);
  for (IntField f : {&HostTree::node_cand, &HostTree::node_token, &HostTree::node_parent, &HostTree::node_depth})
    h.*f = ints(n);
  h.node_score.assign(n, -777.0f);
  h.record = ints(size_t(ops::DraftTreeState::record_words(s.depth)));
  for (IntField f : {&HostTree::lvl_tokens, &HostTree::lvl_positions, &HostTree::lvl_slots, &HostTree::lvl_gather})
    h.*f = ints(k);
  h.lvl_mask = ints(k * size_t(words(int64_t(d) * s.top_k)));
  for (IntField f : {&HostTree::v_tokens, &HostTree::v_positions, &HostTree::v_slots}) h.*f = ints(n);
  h.v_mask = ints(n * size_t(words(s.size)));
  for (IntField f : {&HostTree::c_tokens, &HostTree::c_positions, &HostTree::c_slots, &HostTree::c_gather})
    h.*f = ints(d + 1);
  h.c_src = ints(d);
  h.c_dst = ints(d);
  h.c_count = ints(1);
  h.walk = ints(2);
  h.walk_targets = ints(n);
  h.drawn = ints(1);
  return h;
}

Tensor view(std::vector<int32_t>& v) { return Tensor(v.data(), DType::I32, {static_cast<int64_t>(v.size())}); }
Tensor view(std::vector<float>& v) { return Tensor(v.data(), DType::F32, {static_cast<int64_t>(v.size())}); }

// The ops' views of a set of buffers (host vectors, or device tensors built by `make`).
struct Views {
  ops::DraftTreeState state;
  Tensor lvl_tokens, lvl_positions, lvl_slots, lvl_gather, lvl_mask_all, walk_targets, drawn;
  ops::VerifyInputs verify;
  ops::CatchUpInputs catch_up;
  ops::DraftLevelInputs level(int level, int top_k) const {
    const int64_t w = words(static_cast<int64_t>(level) * top_k);
    Tensor mask(lvl_mask_all.data, DType::I32, {top_k, w}, lvl_mask_all.device);
    return {lvl_tokens, lvl_positions, lvl_slots, lvl_gather, mask};
  }
};

template <typename MakeInt, typename MakeFloat>
Views make_views(const Shape& s, MakeInt&& i, MakeFloat&& f) {
  Views v;
  ops::DraftTreeState& t = v.state;
  t.top_k = s.top_k;
  t.depth = s.depth;
  t.size = s.size;
  t.cycle = i(&HostTree::cycle);
  t.cand_score = f(&HostTree::cand_score);
  t.cand_token = i(&HostTree::cand_token);
  t.cand_parent = i(&HostTree::cand_parent);
  t.cand_node = i(&HostTree::cand_node);
  t.frontier = i(&HostTree::frontier);
  t.frontier_parent = i(&HostTree::frontier_parent);
  t.node_cand = i(&HostTree::node_cand);
  t.node_token = i(&HostTree::node_token);
  t.node_parent = i(&HostTree::node_parent);
  t.node_depth = i(&HostTree::node_depth);
  t.node_score = f(&HostTree::node_score);
  t.record = i(&HostTree::record);
  t.walk = i(&HostTree::walk);
  v.walk_targets = i(&HostTree::walk_targets);
  v.drawn = i(&HostTree::drawn);
  v.lvl_tokens = i(&HostTree::lvl_tokens);
  v.lvl_positions = i(&HostTree::lvl_positions);
  v.lvl_slots = i(&HostTree::lvl_slots);
  v.lvl_gather = i(&HostTree::lvl_gather);
  v.lvl_mask_all = i(&HostTree::lvl_mask);
  const int64_t n = s.size;
  v.verify = {i(&HostTree::v_tokens), i(&HostTree::v_positions), i(&HostTree::v_slots), i(&HostTree::v_mask)};
  v.verify.mask = Tensor(v.verify.mask.data, DType::I32, {n, words(n)}, v.verify.mask.device);
  v.catch_up = {i(&HostTree::c_tokens), i(&HostTree::c_positions), i(&HostTree::c_slots), i(&HostTree::c_gather),
                i(&HostTree::c_src),    i(&HostTree::c_dst),       i(&HostTree::c_count)};
  return v;
}

// Random draft rows: `rows` rows of top_k (log-probability, draft id), each row ranked (values
// descending, distinct ids) as top_k_log_softmax returns them; with ties, values on a coarse grid.
struct TopRows {
  std::vector<float> values;
  std::vector<int32_t> ids;
};
TopRows random_rows(int rows, int k, bool ties, int32_t id_range, std::mt19937_64& rng) {
  TopRows t;
  std::uniform_real_distribution<float> logp(-6.0f, 0.0f);
  for (int r = 0; r < rows; ++r) {
    std::vector<float> v(static_cast<size_t>(k));
    for (float& x : v) x = ties ? std::round(logp(rng) * 2.0f) / 2.0f : logp(rng);
    std::sort(v.begin(), v.end(), std::greater<>());
    std::set<int32_t> used;
    while (static_cast<int>(used.size()) < k) used.insert(static_cast<int32_t>(rng() % static_cast<uint64_t>(id_range)));
    std::vector<int32_t> ids(used.begin(), used.end());
    std::shuffle(ids.begin(), ids.end(), rng);
    t.values.insert(t.values.end(), v.begin(), v.end());
    t.ids.insert(t.ids.end(), ids.begin(), ids.end());
  }
  return t;
}

// The target's token at each node: a child's token with probability 3/4 (so walks go deep), else
// a token no child carries.
std::vector<int32_t> random_target_tokens(const spec::DraftTree& tree, std::mt19937_64& rng) {
  std::vector<int32_t> x(static_cast<size_t>(tree.size()));
  for (int32_t u = 0; u < tree.size(); ++u) {
    const std::vector<int32_t> kids = tree.children(u);
    if (!kids.empty() && rng() % 4 != 0)
      x[static_cast<size_t>(u)] = tree.tokens[static_cast<size_t>(kids[rng() % kids.size()])];
    else
      x[static_cast<size_t>(u)] = kVocab + static_cast<int32_t>(rng() % 50);  // in no tree
  }
  return x;
}

// The run of one tree on one backend: begin, expansions, selection, acceptance, calling `check`
// after each op with what it is.
struct TreeInputs {
  TopRows root;
  std::vector<TopRows> levels;
  std::vector<int32_t> map;  // FR-Spec map (empty: identity)
};

TreeInputs random_inputs(const Shape& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  TreeInputs in;
  const int32_t range = s.frspec ? kDraftVocab : kVocab;
  in.root = random_rows(1, s.top_k, s.ties, range, rng);
  for (int l = 1; l < s.depth; ++l) in.levels.push_back(random_rows(s.top_k, s.top_k, s.ties, range, rng));
  if (s.frspec) {
    std::vector<int32_t> all(kVocab);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    in.map.assign(all.begin(), all.begin() + kDraftVocab);
  }
  return in;
}

int32_t mapped(const TreeInputs& in, int32_t id) { return in.map.empty() ? id : in.map[static_cast<size_t>(id)]; }

std::vector<spec::ScoredToken> scored(const TreeInputs& in, const TopRows& rows) {
  std::vector<spec::ScoredToken> out;
  for (size_t i = 0; i < rows.values.size(); ++i) out.push_back({rows.values[i], mapped(in, rows.ids[i])});
  return out;
}

template <typename T>
std::vector<T> head(const std::vector<T>& v, size_t n) {
  return std::vector<T>(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(std::min(n, v.size())));
}

TEST(DraftTreeOps, CpuMatchesTheHostBuilderAndWalk) {
  test::CpuTestContext cpu = test::make_cpu_context(1);
  uint64_t seed = test::test_seed();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s));
    const int k = s.top_k;
    TreeInputs in = random_inputs(s, ++seed);
    HostTree h = make_host(s);
    Views v = make_views(s, [&](IntField f) { return view(h.*f); }, [&](FloatField f) { return view(h.*f); });
    Tensor map = in.map.empty() ? Tensor() : view(in.map);
    spec::DraftTreeParams params{k, s.depth, s.size};
    spec::TreeBuilder builder(params);

    auto expect_level_inputs = [&](int level, const std::vector<int32_t>& gather) {
      SCOPED_TRACE("level " + std::to_string(level));
      const auto tokens = builder.frontier_tokens();
      EXPECT_EQ(h.lvl_tokens, std::vector<int32_t>(tokens.begin(), tokens.end()));
      EXPECT_EQ(h.lvl_positions, std::vector<int32_t>(size_t(k), kCommitted + level - 1));
      std::vector<int32_t> slots(static_cast<size_t>(k));
      std::iota(slots.begin(), slots.end(), kCommitted + (level - 1) * k);
      EXPECT_EQ(h.lvl_slots, slots);
      EXPECT_EQ(h.lvl_gather, gather);
      EXPECT_EQ(head(h.lvl_mask, size_t(k * words(int64_t(level) * k))), builder.frontier_mask_bits());
    };

    Tensor rv = view(in.root.values), ri = view(in.root.ids);
    rv = Tensor(rv.data, DType::F32, {1, k});
    ri = Tensor(ri.data, DType::I32, {1, k});
    ops::DraftLevelInputs level1 = v.level(1, k);
    ops::draft_tree_begin(cpu.ops, v.state, rv, ri, map, level1);
    builder.begin(kRoot, scored(in, in.root));
    expect_level_inputs(1, std::vector<int32_t>(size_t(k), kRootRow));
    for (int level = 1; level < s.depth; ++level) {
      TopRows& rows = in.levels[size_t(level - 1)];
      Tensor lv(rows.values.data(), DType::F32, {k, k}), li(rows.ids.data(), DType::I32, {k, k});
      ops::DraftLevelInputs next = level + 1 < s.depth ? v.level(level + 1, k) : ops::DraftLevelInputs{};
      ops::draft_tree_expand(cpu.ops, v.state, level, lv, li, map, next);
      builder.expand(scored(in, rows));
      if (level + 1 < s.depth) {
        const auto slots = builder.frontier_parent_slots();
        expect_level_inputs(level + 1, std::vector<int32_t>(slots.begin(), slots.end()));
      }
    }
    ops::draft_tree_select(cpu.ops, v.state, v.verify);
    const spec::DraftTree tree = builder.finish();
    ASSERT_EQ(tree.size(), s.size);
    EXPECT_EQ(h.node_token, tree.tokens);
    EXPECT_EQ(h.node_parent, tree.parents);
    EXPECT_EQ(h.node_depth, tree.depths);
    EXPECT_EQ(h.node_score, tree.scores);
    EXPECT_EQ(h.v_tokens, tree.tokens);
    EXPECT_EQ(h.v_positions, tree.positions(kCommitted));
    std::vector<int32_t> rows(static_cast<size_t>(s.size));
    std::iota(rows.begin(), rows.end(), kCommitted);
    EXPECT_EQ(h.v_slots, rows);
    EXPECT_EQ(h.v_mask, tree.mask_bits());

    // Acceptance, several target draws on the same tree (the cycle is reset each time).
    std::mt19937_64 rng(seed * 7 + 1);
    for (int draw = 0; draw < 8; ++draw) {
      h.cycle = {kCommitted, kRoot, kRootRow};
      std::vector<int32_t> x = random_target_tokens(tree, rng);
      ops::draft_tree_accept(cpu.ops, v.state, view(x), v.catch_up);
      std::vector<int32_t> path, tokens;
      int32_t u = 0;
      for (;;) {
        int32_t next = -1;
        for (int32_t c : tree.children(u))
          if (tree.tokens[size_t(c)] == x[size_t(u)]) next = c;
        tokens.push_back(x[size_t(u)]);
        if (next < 0) break;
        path.push_back(next);
        u = next;
      }
      const int m = static_cast<int>(path.size());
      ASSERT_EQ(h.record[0], m);
      EXPECT_EQ(std::vector<int32_t>(h.record.begin() + 1, h.record.begin() + 2 + m), tokens);
      const auto p0 = h.record.begin() + ops::DraftTreeState::record_path(s.depth);
      EXPECT_EQ(std::vector<int32_t>(p0, p0 + m), path);
      EXPECT_EQ(h.cycle, (std::vector<int32_t>{kCommitted + m + 1, tokens.back(), m}));
      EXPECT_EQ(h.c_count[0], m);
      for (int i = 0; i <= m; ++i) {
        EXPECT_EQ(h.c_tokens[size_t(i)], tokens[size_t(i)]);
        EXPECT_EQ(h.c_positions[size_t(i)], kCommitted + i);
        EXPECT_EQ(h.c_slots[size_t(i)], kCommitted + i);
        EXPECT_EQ(h.c_gather[size_t(i)], i == 0 ? 0 : path[size_t(i - 1)]);
      }
      for (int i = 0; i < m; ++i) {
        EXPECT_EQ(h.c_src[size_t(i)], kCommitted + path[size_t(i)]);
        EXPECT_EQ(h.c_dst[size_t(i)], kCommitted + 1 + i);
      }

      // The sampled walk with draws x[node]: it visits the same nodes, records exactly their
      // draws, ends inactive, and acceptance over its targets gives the same record.
      const std::vector<int32_t> record = h.record;
      std::fill(h.walk_targets.begin(), h.walk_targets.end(), -1);
      ops::draft_tree_walk_begin(cpu.ops, v.state);
      for (int d = 0; d <= s.depth; ++d) {
        h.drawn[0] = h.walk[ops::kWalkActive] ? x[size_t(h.walk[ops::kWalkNode])] : -5;  // -5: a skipped draw
        ops::draft_tree_walk_step(cpu.ops, v.state, v.drawn, v.walk_targets);
      }
      EXPECT_EQ(h.walk[ops::kWalkActive], 0);
      EXPECT_EQ(h.walk[ops::kWalkNode], m == 0 ? 0 : path.back());
      std::vector<int32_t> want_targets(size_t(s.size), -1);
      want_targets[0] = x[0];
      for (int32_t node : path) want_targets[size_t(node)] = x[size_t(node)];
      EXPECT_EQ(h.walk_targets, want_targets);
      h.cycle = {kCommitted, kRoot, kRootRow};
      ops::draft_tree_accept(cpu.ops, v.state, v.walk_targets, v.catch_up);
      EXPECT_EQ(h.record, record);
    }
  }
}

TEST(DraftTreeOps, RefusesMismatchedBuffers) {
  test::CpuTestContext cpu = test::make_cpu_context(1);
  const Shape s{3, 2, 8, false, false};
  HostTree h = make_host(s);
  Views v = make_views(s, [&](IntField f) { return view(h.*f); }, [&](FloatField f) { return view(h.*f); });
  std::vector<float> values(6);
  std::vector<int32_t> ids(6);
  Tensor wrong_rows(values.data(), DType::F32, {2, 3}), ri(ids.data(), DType::I32, {2, 3});
  ops::DraftLevelInputs level1 = v.level(1, 3);
  EXPECT_THROW(ops::draft_tree_begin(cpu.ops, v.state, wrong_rows, ri, Tensor(), level1), Error);
  EXPECT_THROW(ops::draft_tree_expand(cpu.ops, v.state, 2, wrong_rows, ri, Tensor(), level1), Error);  // level == depth
  ops::DraftTreeState too_big = v.state;
  too_big.size = 1 + static_cast<int>(too_big.candidates()) + 1;
  EXPECT_THROW(ops::draft_tree_select(cpu.ops, too_big, v.verify), Error);
  std::vector<int32_t> short_targets(3);
  EXPECT_THROW(ops::draft_tree_accept(cpu.ops, v.state, view(short_targets), v.catch_up), Error);
}

#ifdef SPECULA_WITH_CUDA
// A device copy of every buffer, built from the host buffers' current contents.
struct DeviceTree {
  std::vector<std::unique_ptr<test::DeviceTensor>> owned;
  std::vector<std::pair<IntField, Tensor>> ints;
  std::vector<std::pair<FloatField, Tensor>> floats;
  Views views;

  DeviceTree(const Shape& s, HostTree& h) {
    views = make_views(
        s,
        [&](IntField f) {
          Tensor t = upload(h.*f, DType::I32);
          ints.emplace_back(f, t);
          return t;
        },
        [&](FloatField f) {
          Tensor t = upload(h.*f, DType::F32);
          floats.emplace_back(f, t);
          return t;
        });
  }
  template <typename T>
  Tensor upload(const std::vector<T>& v, DType dtype) {
    auto d = std::make_unique<test::DeviceTensor>(test::device_tensor(dtype, {static_cast<int64_t>(v.size())}));
    d->buffer.upload(v);
    Tensor t = d->tensor;
    owned.push_back(std::move(d));
    return t;
  }
  HostTree download(HostTree shape_like) const {
    for (const auto& [f, t] : ints) {
      SPECULA_TEST_CUDA_CHECK(cudaDeviceSynchronize());
      SPECULA_TEST_CUDA_CHECK(cudaMemcpy((shape_like.*f).data(), t.data, t.nbytes(), cudaMemcpyDeviceToHost));
    }
    for (const auto& [f, t] : floats)
      SPECULA_TEST_CUDA_CHECK(cudaMemcpy((shape_like.*f).data(), t.data, t.nbytes(), cudaMemcpyDeviceToHost));
    return shape_like;
  }
};

void expect_same(const HostTree& got, const HostTree& want, const std::string& after) {
  for (const auto& [name, f] : kIntFields) EXPECT_EQ(got.*f, want.*f) << name << " after " << after;
  for (const auto& [name, f] : kFloatFields) EXPECT_EQ(got.*f, want.*f) << name << " after " << after;
}

class CudaDraftTreeOps : public test::CudaOpsTest {};

TEST_F(CudaDraftTreeOps, MatchCpuExactly) {
  uint64_t seed = test::test_seed();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s));
    const int k = s.top_k;
    TreeInputs in = random_inputs(s, ++seed);
    HostTree h = make_host(s);
    Views cv = make_views(s, [&](IntField f) { return view(h.*f); }, [&](FloatField f) { return view(h.*f); });
    DeviceTree d(s, h);
    Tensor cmap = in.map.empty() ? Tensor() : view(in.map);
    Tensor gmap = in.map.empty() ? Tensor() : d.upload(in.map, DType::I32);

    auto both = [&](const std::string& what, auto&& op) {
      op(cpu_.ops, cv, cmap, false);
      op(gpu_.ops, d.views, gmap, true);
      gpu_.sync();
      expect_same(d.download(h), h, what);
      expect_no_device_errors();
    };
    auto rows_on = [&](TopRows& r, int n_rows, bool device, Tensor& values, Tensor& ids) {
      if (device) {
        values = d.upload(r.values, DType::F32);
        ids = d.upload(r.ids, DType::I32);
      } else {
        values = view(r.values);
        ids = view(r.ids);
      }
      values = Tensor(values.data, DType::F32, {n_rows, k}, values.device);
      ids = Tensor(ids.data, DType::I32, {n_rows, k}, ids.device);
    };
    both("begin", [&](ops::OpContext& ctx, Views& v, const Tensor& map, bool device) {
      Tensor values, ids;
      rows_on(in.root, 1, device, values, ids);
      ops::DraftLevelInputs level1 = v.level(1, k);
      ops::draft_tree_begin(ctx, v.state, values, ids, map, level1);
    });
    for (int level = 1; level < s.depth; ++level) {
      both("expand " + std::to_string(level), [&](ops::OpContext& ctx, Views& v, const Tensor& map, bool device) {
        Tensor values, ids;
        rows_on(in.levels[size_t(level - 1)], k, device, values, ids);
        ops::DraftLevelInputs next = level + 1 < s.depth ? v.level(level + 1, k) : ops::DraftLevelInputs{};
        ops::draft_tree_expand(ctx, v.state, level, values, ids, map, next);
      });
    }
    both("select", [&](ops::OpContext& ctx, Views& v, const Tensor&, bool) {
      ops::draft_tree_select(ctx, v.state, v.verify);
    });
    spec::DraftTree tree;
    tree.tokens = h.node_token;
    tree.parents = h.node_parent;
    std::mt19937_64 rng(seed * 7 + 1);
    for (int draw = 0; draw < 4; ++draw) {
      std::vector<int32_t> x = random_target_tokens(tree, rng);
      both("accept " + std::to_string(draw), [&](ops::OpContext& ctx, Views& v, const Tensor&, bool device) {
        Tensor targets = device ? d.upload(x, DType::I32) : view(x);
        ops::draft_tree_accept(ctx, v.state, targets, v.catch_up);
      });
      // The sampled walk, the draws taken from x at the node the CPU walk is at (the same node on
      // both backends while they agree; the comparison after each step says when not).
      both("walk begin", [&](ops::OpContext& ctx, Views& v, const Tensor&, bool) { ops::draft_tree_walk_begin(ctx, v.state); });
      for (int step = 0; step <= s.depth; ++step) {
        const int32_t token = h.walk[ops::kWalkActive] ? x[size_t(h.walk[ops::kWalkNode])] : -5;
        both("walk step " + std::to_string(step), [&](ops::OpContext& ctx, Views& v, const Tensor&, bool device) {
          if (device) {
            SPECULA_TEST_CUDA_CHECK(cudaMemcpy(v.drawn.data, &token, sizeof token, cudaMemcpyHostToDevice));
          } else {
            h.drawn[0] = token;
          }
          ops::draft_tree_walk_step(ctx, v.state, v.drawn, v.walk_targets);
        });
      }
    }
  }
}
#endif

}  // namespace

namespace {
// The device selection sorts every candidate in shared memory: a shape past kMaxCandidates is
// refused when the options are checked, naming the flags, not when a kernel would fail.
TEST(DraftTreeOps, ShapesBeyondTheCandidateLimitAreRefusedUpFront) {
  const spec::DraftTreeParams too_many{64, 3, 100};  // 64 + 2 * 4096 = 8256 candidates
  try {
    too_many.validate();
    FAIL() << "8256 candidates were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("8256 draft candidates"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--tree-topk"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW((spec::DraftTreeParams{64, 2, 1024}.validate()));  // 4160 candidates
  static_assert(spec::kMaxCandidates == ops::kMaxDraftCandidates);
}
}  // namespace
