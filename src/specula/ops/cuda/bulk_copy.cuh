// Hopper (sm_90) bulk copies into shared memory that complete on an mbarrier: the PTX wrappers the
// bulk-copy GEMV (gemv_bulk.cu) and its experiment bench (bench/gemv_lab.cu) build their weight
// rings from. One thread arms a barrier with the bytes it expects and issues the copies; the TMA
// engine moves the data and counts the bytes off; consumers wait on the barrier's phase parity.
// The wrappers are declared for every pass, but their instructions only exist from sm_90 on: on
// older targets the bodies are empty, and callers must not reach them (they guard their device
// code, and the host checks the device before launching).
// Compiled only by nvcc (included from .cu files only); no library dependencies, so a standalone
// nvcc build can include it.
#pragma once

#include <cstdint>

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define SPECULA_BULK_COPY_AVAILABLE 1
#else
#define SPECULA_BULK_COPY_AVAILABLE 0
#endif

namespace specula::ops::cuda_impl::bulk {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// A barrier that completes a phase when one thread has arrived and the expected bytes landed.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar) {
#if SPECULA_BULK_COPY_AVAILABLE
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(shared_address(bar)));
#endif
}

// Makes initialised barriers visible to the copy engine; call once after the inits, then sync.
__device__ __forceinline__ void mbarrier_init_fence() {
#if SPECULA_BULK_COPY_AVAILABLE
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

// The arriving thread's arrival, announcing `bytes` to come from bulk copies.
__device__ __forceinline__ void mbarrier_expect_bytes(uint64_t* bar, uint32_t bytes) {
#if SPECULA_BULK_COPY_AVAILABLE
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(bar)), "r"(bytes)
               : "memory");
#endif
}

// Spins until the barrier's phase with this parity has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
#if SPECULA_BULK_COPY_AVAILABLE
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(shared_address(bar)),
      "r"(parity)
      : "memory");
#endif
}

// bytes (a multiple of 16, both addresses 16-byte aligned) from global src to shared dst,
// counted off `bar` when they land.
__device__ __forceinline__ void bulk_copy_to_shared(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
#if SPECULA_BULK_COPY_AVAILABLE
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
          shared_address(dst)),
      "l"(src), "r"(bytes), "r"(shared_address(bar))
      : "memory");
#endif
}

}  // namespace specula::ops::cuda_impl::bulk
