// SPECULA_HOST_DEVICE: marks small pure functions that the CPU code and the CUDA kernels share
// (counter-based random numbers, launch-plan arithmetic), so both backends compute them from one
// definition. Under nvcc it is __host__ __device__; elsewhere it is empty.
#pragma once

#ifndef SPECULA_HOST_DEVICE
#if defined(__CUDACC__)
#define SPECULA_HOST_DEVICE __host__ __device__
#else
#define SPECULA_HOST_DEVICE
#endif
#endif
