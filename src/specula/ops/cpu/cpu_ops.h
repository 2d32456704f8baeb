// CPU reference implementations of the ops in ops/ops.h. Activations and KV caches are F32;
// weights may be F32, BF16 or F16 (converted on load, accumulated in fp32). These are the ground
// truth the CUDA kernels are tested against, so clarity wins over the last bit of speed, but they
// are multithreaded and vectorisable because the CPU backend also serves real generation.
#pragma once

#include "specula/core/tensor.h"
#include "specula/ops/ops.h"

namespace specula {
class ThreadPool;
}

namespace specula::ops::cpu {

void embedding(ThreadPool& pool, const Tensor& table, const Tensor& ids, float scale, Tensor& out);
void rms_norm(ThreadPool& pool, const Tensor& x, const Tensor& weight, float eps, Tensor& out);
void add_rms_norm(ThreadPool& pool, Tensor& residual, const Tensor& delta, float delta_scale, const Tensor& weight,
                  float eps, Tensor& out);
void linear(ThreadPool& pool, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float alpha,
            OutputMode mode);
void linear_swiglu(ThreadPool& pool, const Tensor& gate_up, const Tensor& weight, Tensor& out, float alpha,
                   OutputMode mode);
void qkv_rope_store(ThreadPool& pool, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm, float norm_eps,
                    const RopeParams& rope, const Tensor& positions, const Tensor& slots, Tensor& q_out,
                    Tensor& k_cache, Tensor& v_cache);
void attention(ThreadPool& pool, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& slots,
               float scale, Tensor& out, const AttentionMask& mask);
void kv_gather(ThreadPool& pool, std::span<Tensor> caches, const Tensor& src_rows, const Tensor& dst_rows,
               const Tensor& count);
void silu_mul(ThreadPool& pool, const Tensor& gate_up, Tensor& out);
void argmax(ThreadPool& pool, const Tensor& logits, Tensor& out);
void top_k_log_softmax(ThreadPool& pool, const Tensor& logits, Tensor& values, Tensor& indices);
void convert(ThreadPool& pool, const Tensor& src, Tensor& dst);
void fill_random(ThreadPool& pool, Tensor& t, uint64_t seed, float scale);

}  // namespace specula::ops::cpu
