// CPU reference of the InfLLM-V2 selection ops (declared apart from cpu_ops.h so the op's files
// stay one pair; see ops/sparse_attention.h for the rule).
#pragma once

#include "specula/ops/sparse_attention.h"

namespace specula {
class ThreadPool;
}

namespace specula::ops::cpu {
void compress_keys(ThreadPool& pool, const Tensor& k_cache, const Tensor& slots, const AttentionMask& mask,
                   const SparseSelectParams& params, CompressedKeys& keys);
void sparse_select(ThreadPool& pool, const Tensor& q, const Tensor& k_cache, const CompressedKeys& keys,
                   const Tensor& positions, const Tensor& slots, const AttentionMask& mask,
                   const SparseSelectParams& params, Tensor& blocks);
}  // namespace specula::ops::cpu
