/* cuda_common.cuh — internals shared by the CUDA backend's .cu files: the
 * context struct, the check macros that turn a CUDA or cuBLAS error into a
 * -errno with a one-line message in the context (never an exit), and small
 * device helpers (warp reductions, bf16 conversion). Not a public header: .c
 * files use kernels/backend_cuda.h. */
#ifndef K2_CUDA_COMMON_CUH
#define K2_CUDA_COMMON_CUH

#ifndef K2_HAVE_CUDA
#define K2_HAVE_CUDA 1
#endif

#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>

#include "backend_cuda.h"

struct kcu_ctx {
	int device;
	cudaStream_t stream;      /* compute stream: every op is queued here */
	cublasHandle_t blas;
	cudaEvent_t t0, t1;       /* kcu_timer_* */
	int timer_started;
	void *scratch;            /* device scratch of ops (bf16 copy of x for cuBLAS) */
	size_t scratch_bytes;
	int sm_count;
	size_t smem_optin;        /* largest dynamic shared memory a block may ask for */
	char err[512];            /* last error, one line */
};

/* Records "what: file:line: CUDA message" in ctx->err and returns the -errno
 * for it (-ENOMEM for allocation failures, else -EIO). */
int kcu_fail(kcu_ctx *ctx, cudaError_t e, const char *what, const char *file, int line);
int kcu_fail_blas(kcu_ctx *ctx, cublasStatus_t s, const char *what, const char *file,
		  int line);
/* Records an argument error (contract violated by the caller) and returns -EINVAL. */
int kcu_bad_arg(kcu_ctx *ctx, const char *op, const char *why);
/* Grows ctx->scratch to at least `bytes`; returns 0 or -ENOMEM. The scratch is
 * reused by the next op: only for data consumed within one op. */
int kcu_scratch(kcu_ctx *ctx, size_t bytes, void **out);

#define KCU_CHECK(ctx, call)                                                        \
	do {                                                                        \
		cudaError_t kcu_e_ = (call);                                        \
		if (kcu_e_ != cudaSuccess)                                          \
			return kcu_fail((ctx), kcu_e_, #call, __FILE__, __LINE__);  \
	} while (0)

/* After every kernel launch: the launch's own error (bad configuration, too
 * much shared memory) is caught here; faults inside the kernel come out at
 * the next synchronisation. */
#define KCU_CHECK_LAUNCH(ctx, name) KCU_CHECK(ctx, cudaGetLastError())

#define KCU_CHECK_BLAS(ctx, call)                                                   \
	do {                                                                        \
		cublasStatus_t kcu_s_ = (call);                                     \
		if (kcu_s_ != CUBLAS_STATUS_SUCCESS)                                \
			return kcu_fail_blas((ctx), kcu_s_, #call, __FILE__, __LINE__); \
	} while (0)

/* ---------------------------------------------------------------- device helpers */

static __device__ __forceinline__ float kcu_warp_sum(float v)
{
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

static __device__ __forceinline__ float kcu_warp_max(float v)
{
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

/* Sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread gets
 * the result. `red` is shared float[32]. */
static __device__ __forceinline__ float kcu_block_sum(float v, float *red)
{
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const int nw = blockDim.x >> 5;
	v = kcu_warp_sum(v);
	__syncthreads(); /* red may still be read by a previous call */
	if (lane == 0)
		red[warp] = v;
	__syncthreads();
	v = lane < nw ? red[lane] : 0.0f;
	return kcu_warp_sum(v);
}

static __device__ __forceinline__ float kcu_block_max(float v, float *red)
{
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const int nw = blockDim.x >> 5;
	v = kcu_warp_max(v);
	__syncthreads();
	if (lane == 0)
		red[warp] = v;
	__syncthreads();
	v = lane < nw ? red[lane] : -INFINITY;
	return kcu_warp_max(v);
}

static __device__ __forceinline__ float kcu_bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
static __device__ __forceinline__ float kcu_bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }
static __device__ __forceinline__ float kcu_bf16(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

static inline unsigned kcu_div_up(uint64_t a, unsigned b) { return (unsigned)((a + b - 1) / b); }

#endif /* K2_CUDA_COMMON_CUH */
