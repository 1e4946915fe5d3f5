// CUDA device built-ins for compiling the project's unchanged .cu kernels with a host C++ compiler.
//
// Included before a kernel source (g++ -include); the launcher (launch.cpp) runs every CUDA thread of a block
// as a fiber on the launching OS thread, so that:
//   threadIdx / blockIdx / blockDim / gridDim   read the running fiber's and block's values;
//   __syncthreads()                              is a real barrier over the block's live threads;
//   __shfl_sync / __shfl_down_sync               exchange values between the 32 lanes of a warp (a warp barrier);
//   __shared__                                   is storage of the running block: static storage in one section
//                                                (rtmw_shared) that the launcher fills with fresh garbage before
//                                                every block, as a GPU gives uninitialised shared memory (one
//                                                block runs at a time: launches are serialised);
//   atomicAdd                                    is an atomic read-modify-write.
// Device math maps to the C library (expf, rintf, fminf, ...); compiled with -ffp-contract=off, the float and
// double arithmetic is IEEE op for op, as NVRTC with --fmad=false. Differences a test must allow for: expf
// (CUDA: <= 2 ulp, glibc: < 1 ulp).
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ __attribute__((section("rtmw_shared"))) static

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

namespace rtmw_host {
struct CudaThread {
    uint3 thread_idx;
};
extern thread_local const CudaThread* current;  // the CUDA thread (fiber) running now
extern thread_local uint3 block_idx;
extern thread_local dim3 block_dim;
extern thread_local dim3 grid_dim;
void syncthreads();
// every lane of `mask` publishes `value` (size bytes) and receives the value lane `src` published
void warp_exchange(unsigned mask, const void* value, void* out, int size, int src);
int lane_id();
}  // namespace rtmw_host

#define threadIdx (::rtmw_host::current->thread_idx)
#define blockIdx (::rtmw_host::block_idx)
#define blockDim (::rtmw_host::block_dim)
#define gridDim (::rtmw_host::grid_dim)
#define warpSize 32

inline void __syncthreads() { rtmw_host::syncthreads(); }

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    static_assert(sizeof(T) <= 8, "shuffles move 32/64-bit values");
    const int lane = rtmw_host::lane_id();
    const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
    T out;
    rtmw_host::warp_exchange(mask, &var, &out, sizeof(T), src);
    return out;
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    static_assert(sizeof(T) <= 8, "shuffles move 32/64-bit values");
    const int lane = rtmw_host::lane_id();
    const int src = ((lane & (width - 1)) + (int)delta < width) ? lane + (int)delta : lane;
    T out;
    rtmw_host::warp_exchange(mask, &var, &out, sizeof(T), src);
    return out;
}

inline int atomicAdd(int* address, int val) { return __atomic_fetch_add(address, val, __ATOMIC_SEQ_CST); }
inline unsigned int atomicAdd(unsigned int* address, unsigned int val) {
    return __atomic_fetch_add(address, val, __ATOMIC_SEQ_CST);
}
inline float __int_as_float(int v) {
    float f;
    memcpy(&f, &v, sizeof f);
    return f;
}
inline int __float_as_int(float f) {
    int v;
    memcpy(&v, &f, sizeof v);
    return v;
}

// CUDA's integer min/max overloads (device code calls them unqualified)
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

// kernel registration (one line per kernel in the generated translation units, see __init__.py): the thunk
// unpacks cuLaunchKernel's `void** kernelParams` exactly as the driver does (params[i] points at argument i)
namespace rtmw_host {
typedef void (*Thunk)(void** params);
void register_kernel(const char* name, Thunk thunk, int count, const int* sizes);

template <typename... A, size_t... I>
inline void invoke_unpacked(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<A*>(p[I])...);
}
template <typename... A>
inline void invoke(void (*f)(A...), void** p) {
    invoke_unpacked(f, p, std::index_sequence_for<A...>{});
}
template <typename... A>
constexpr int param_count(void (*)(A...)) {
    return (int)sizeof...(A);
}
template <typename... A>
inline const int* param_sizes(void (*)(A...)) {
    static const int sizes[] = {(int)sizeof(A)..., 0};
    return sizes;
}
}  // namespace rtmw_host

#define RTMW_HOST_KERNEL(name)                                                                              \
    static void rtmw_host_thunk_##name(void** p) { ::rtmw_host::invoke(&name, p); }                          \
    static const bool rtmw_host_registered_##name = (::rtmw_host::register_kernel(                           \
        #name, &rtmw_host_thunk_##name, ::rtmw_host::param_count(&name), ::rtmw_host::param_sizes(&name)), true);
