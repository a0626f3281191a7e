/* cuemu.h — a small SIMT emulator that runs the CUDA backend's kernels on the
 * CPU, for machines without a GPU: every CUDA thread of a block is a coroutine
 * (own stack, hand-written x86-64 switch) on the calling thread, __syncthreads / __syncwarp / warp shuffles
 * are barriers between them, blocks run one after the other (so a `static`
 * variable is the block's shared memory; CUEMU_BLOCKS=reverse runs the last
 * first), and the CUDA runtime and cuBLAS calls
 * the backend makes are replaced by host versions (runtime.cc) whose streams
 * really are asynchronous: work queued on a stream runs only when the host
 * makes it (a synchronize, a copy into pageable memory, a free) or another
 * stream waits for it, and then in stream order (see runtime.cc).
 *
 * Included (g++ -include) before a copy of a .cu file of kernels/ whose kernel
 * launches `k<<<g, b, s, st>>>(args)` were rewritten by tests/cuemu/build.sh into
 * `cuemu::launch([=] { k(args); }, g, b, s, st)`: the arguments are copied at
 * the launch, as CUDA copies kernel parameters.
 *
 * What it checks: indexing, bounds, barriers and shuffles (lanes run one after
 * the other between barriers, so a missing barrier shows), shared-memory use,
 * the host code around the launches, the cache's threads, and the ordering of
 * work between streams, events and the host (a kernel that reads a slot
 * without waiting for its copy, a copy that overwrites what queued kernels
 * still read, a staging buffer refilled before its copy ran, a result read
 * before its stream was synchronized), and, with CUEMU_BLOCKS=reverse, blocks
 * of one launch that depend on each other. What it cannot: speed, the PTX of
 * the sm_80+ paths (ld_stream's asm; the fp8 conversion's runs through the
 * intrinsic's host version with -DK2_CUEMU_FP8_CVT), memory ordering between
 * real concurrent threads of a GPU. A test tool only: nothing of the
 * build links it. */
#ifndef K2_CUEMU_H
#define K2_CUEMU_H

#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>

namespace cuemu {

struct thread_pos {
	uint3 tid, bid;
};

extern thread_pos *cur;           /* the running emulated thread */
extern dim3 block_dim, grid_dim;

void syncthreads();
void syncwarp();
void *dyn_smem();                 /* the launch's dynamic shared memory */
float shfl_xor_f(float v, int lane_mask);
int shfl_xor_i(int v, int lane_mask);

/* Runs a kernel's grid now, block after block (cuemu.cc). */
void launch_fn(const std::function<void()> &body, dim3 grid, dim3 block, size_t smem);
/* Aborts on a launch configuration a GPU would refuse. */
void check_launch(dim3 grid, dim3 block, size_t smem);
/* Queues a kernel's grid on a stream (runtime.cc; 0 is the null stream). */
void enqueue_launch(std::function<void()> body, dim3 grid, dim3 block, size_t smem,
		    cudaStream_t stream);

template <class F> inline void launch(F f, dim3 g, dim3 b) { enqueue_launch(f, g, b, 0, 0); }
template <class F> inline void launch(F f, dim3 g, dim3 b, size_t s)
{
	enqueue_launch(f, g, b, s, 0);
}
template <class F> inline void launch(F f, dim3 g, dim3 b, size_t s, cudaStream_t st)
{
	enqueue_launch(f, g, b, s, st);
}

inline float shfl_xor(float v, int m) { return shfl_xor_f(v, m); }
inline int shfl_xor(int v, int m) { return shfl_xor_i(v, m); }
inline unsigned shfl_xor(unsigned v, int m) { return (unsigned)shfl_xor_i((int)v, m); }

} // namespace cuemu

#define threadIdx (cuemu::cur->tid)
#define blockIdx (cuemu::cur->bid)
#define blockDim (cuemu::block_dim)
#define gridDim (cuemu::grid_dim)
#define __syncthreads() cuemu::syncthreads()
#define __syncwarp(...) cuemu::syncwarp()
#define __shfl_xor_sync(mask, v, o) cuemu::shfl_xor((v), (o))

#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

static inline float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __int_as_float(int32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t __float_as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline int32_t __float_as_int(float f) { int32_t u; memcpy(&u, &f, 4); return u; }

/* PTX prmt (default mode): byte n of the result is byte s[n] of {y:x}. */
static inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s)
{
	const uint64_t v = ((uint64_t)y << 32) | x;
	uint32_t r = 0;
	for (int n = 0; n < 4; n++) {
		const uint32_t sel = (s >> (4 * n)) & 7;
		r |= (uint32_t)((v >> (8 * sel)) & 0xff) << (8 * n);
	}
	return r;
}

template <class T> static inline T __ldg(const T *p) { return *p; }

/* nvcc's typed overload, which cuda_runtime.h declares only for nvcc */
template <class T>
static inline cudaError_t cudaFuncSetAttribute(T *f, enum cudaFuncAttribute a, int v)
{
	return cudaFuncSetAttribute((const void *)f, a, v);
}

#endif /* K2_CUEMU_H */
