/* cuda_matmul.cu — products on the GPU with weights read in place, in their
 * stored format (bf16, fp8-b128, int8, int4-g32, f32): the dequantizing
 * matrix-vector / small-batch kernels, the fused expert FFN (gate and up in one
 * pass, then down accumulated into the token rows), and cuBLAS for bf16 products
 * over larger batches.
 *
 * The fast kernel: one warp per output row, 8 rows per block. Each lane reads
 * 16 bytes of the row per step (int4: 32 nibbles = one scale group; fp8/int8:
 * 16 elements; bf16: 8; f32: 4), consecutive lanes consecutive 16-byte chunks
 * (coalesced 512 bytes per warp per load), several loads in flight before the
 * first use, dequantizes in registers and multiplies with x staged in shared
 * memory; the warp reduces with shuffles. x sits in shared memory with 4 floats
 * of padding after every 32, so that the 16-byte reads of 8 lanes (one phase)
 * fall into 8 different bank groups whatever the format. Weights go through the
 * non-coherent path without L1 allocation: they are read once.
 *
 * Anything the fast kernel cannot take (cols not a multiple of the chunk, a
 * misaligned pointer, x too long for shared memory) goes to a scalar kernel with
 * the same results. The plain C reference is kern_matmul_ref (kernels.h). */
#include "cuda_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#define MV_WARPS 8
#define MV_THREADS (MV_WARPS * 32)
/* Shared memory the x tile of one block may take before the batch tile shrinks
 * (more blocks per SM keep more loads in flight). */
#define MV_SMEM_SOFT (80u << 10)
/* Blocks per SM the fast kernel's grid is capped at. */
#define MV_BLOCKS_PER_SM 2

/* Elements per 16-byte chunk of a row. */
template <int FMT> struct Fmt;
template <> struct Fmt<K2_FORMAT_BF16> { static constexpr int E = 8; };
template <> struct Fmt<K2_FORMAT_FP8_B128> { static constexpr int E = 16; };
template <> struct Fmt<K2_FORMAT_INT8> { static constexpr int E = 16; };
template <> struct Fmt<K2_FORMAT_INT4_G32> { static constexpr int E = 32; };
template <> struct Fmt<KERN_FORMAT_F32> { static constexpr int E = 4; };

static int chunk_elems(uint32_t fmt)
{
	switch (fmt) {
	case K2_FORMAT_BF16: return 8;
	case K2_FORMAT_FP8_B128: return 16;
	case K2_FORMAT_INT8: return 16;
	case K2_FORMAT_INT4_G32: return 32;
	case KERN_FORMAT_F32: return 4;
	}
	return 0;
}

/* x tile index with 4 floats of padding after every 32. */
static __host__ __device__ __forceinline__ uint32_t xpad(uint32_t i) { return i + ((i >> 5) << 2); }
static __host__ __device__ __forceinline__ uint32_t xpad_len(uint32_t cols)
{
	return cols + ((cols + 31) >> 5) * 4;
}

/* 16-byte streaming load through the non-coherent path, not kept in L1. */
static __device__ __forceinline__ uint4 ld_stream(const uint4 *p)
{
#if defined(__CUDA_ARCH__)
	uint4 v;
	asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
	    : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
	    : "l"(p));
	return v;
#else
	return *p; /* host compilation (tests/cuemu) */
#endif
}

/* float 2^23 + b for a byte b placed by __byte_perm into the mantissa. */
static __device__ __forceinline__ float byte_as_f(uint32_t m, int k)
{
	return __uint_as_float(__byte_perm(m, 0x4B000000u, 0x7540u | (unsigned)k));
}

/* Two e4m3 values (low byte first) to two floats: the hardware conversion on
 * sm_89+ (K2_CUEMU_FP8_CVT: the emulator runs that branch, through the host
 * version of the same intrinsic), the bit placement below elsewhere. */
static __device__ __forceinline__ float2 e4m3x2_to_f2(uint32_t pair)
{
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890) || defined(K2_CUEMU_FP8_CVT)
	__half2_raw hr = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(pair & 0xffffu), __NV_E4M3);
	return __half22float2(__half2(hr));
#else
	/* e4m3 bits shifted into a half give the value / 256, exactly (also for
	 * subnormals); NaN codes, which no quantizer writes, come out finite. */
	uint32_t h = ((pair & 0x0080u) << 8) | ((pair & 0x007fu) << 7) |
		     ((pair & 0x8000u) << 16) | ((pair & 0x7f00u) << 15);
	__half2_raw hr;
	hr.x = (unsigned short)(h & 0xffffu);
	hr.y = (unsigned short)(h >> 16);
	float2 f = __half22float2(__half2(hr));
	f.x *= 256.0f;
	f.y *= 256.0f;
	return f;
#endif
}

static __device__ __forceinline__ float e4m3_to_f(uint8_t v)
{
	return e4m3x2_to_f2(v).x;
}

/* Dequantizes one 16-byte chunk (without its scale) into wf. */
template <int FMT>
static __device__ __forceinline__ void deq_chunk(const uint4 v, float (&wf)[Fmt<FMT>::E])
{
	const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
	for (int k = 0; k < 4; k++) {
		if constexpr (FMT == K2_FORMAT_BF16) {
			wf[2 * k] = kcu_bf16_lo(u[k]);
			wf[2 * k + 1] = kcu_bf16_hi(u[k]);
		} else if constexpr (FMT == KERN_FORMAT_F32) {
			wf[k] = __uint_as_float(u[k]);
		} else if constexpr (FMT == K2_FORMAT_INT8) {
			/* q ^ 0x80 = q + 128 as a byte; 2^23 + q + 128 − (2^23 + 128) = q */
			const uint32_t m = u[k] ^ 0x80808080u;
#pragma unroll
			for (int j = 0; j < 4; j++)
				wf[4 * k + j] = byte_as_f(m, j) - 8388736.0f;
		} else if constexpr (FMT == K2_FORMAT_INT4_G32) {
			/* byte j of the word holds elements 2j (low nibble), 2j+1 (high) */
			const uint32_t lo = u[k] & 0x0f0f0f0fu, hi = (u[k] >> 4) & 0x0f0f0f0fu;
#pragma unroll
			for (int j = 0; j < 4; j++) {
				wf[8 * k + 2 * j] = byte_as_f(lo, j) - 8388616.0f;     /* n − 8 */
				wf[8 * k + 2 * j + 1] = byte_as_f(hi, j) - 8388616.0f;
			}
		} else { /* FP8_B128 */
			const float2 a = e4m3x2_to_f2(u[k] & 0xffffu), b = e4m3x2_to_f2(u[k] >> 16);
			wf[4 * k] = a.x;
			wf[4 * k + 1] = a.y;
			wf[4 * k + 2] = b.x;
			wf[4 * k + 3] = b.y;
		}
	}
}

/* The scale that multiplies the whole chunk c of row r (1 where none does). */
template <int FMT>
static __device__ __forceinline__ float chunk_scale(const void *s, uint32_t r, uint32_t c,
						    uint32_t cols)
{
	if constexpr (FMT == K2_FORMAT_INT4_G32) {
		return kcu_bf16(__ldg((const uint16_t *)s + (size_t)r * (cols >> 5) + c));
	} else if constexpr (FMT == K2_FORMAT_FP8_B128) {
		const uint32_t ncb = (cols + 127) >> 7;
		return __ldg((const float *)s + (size_t)(r >> 7) * ncb + (c >> 3));
	} else {
		return 1.0f;
	}
}

/* acc[b] += scale · Σ_e wf[e] · x_b[i0 + e] for the tokens of the tile. */
template <int FMT, int BT>
static __device__ __forceinline__ void chunk_dot(const uint4 v, float sc, const float *xs,
						 uint32_t pc, uint32_t i0, uint32_t nb,
						 float (&acc)[BT])
{
	constexpr int E = Fmt<FMT>::E;
	constexpr bool scaled = FMT == K2_FORMAT_INT4_G32 || FMT == K2_FORMAT_FP8_B128;
	float wf[E];
	deq_chunk<FMT>(v, wf);
	/* i0 is a multiple of E ≥ 4 and the chunk lies within one 32-element
	 * stretch, so its padded x is contiguous. */
	const uint32_t p0 = xpad(i0);
#pragma unroll
	for (int b = 0; b < BT; b++) {
		if (b < (int)nb) {
			const float4 *xv = (const float4 *)(xs + b * pc + p0);
			float part = scaled ? 0.0f : acc[b];
#pragma unroll
			for (int j = 0; j < E / 4; j++) {
				const float4 xx = xv[j];
				part = fmaf(wf[4 * j], xx.x, part);
				part = fmaf(wf[4 * j + 1], xx.y, part);
				part = fmaf(wf[4 * j + 2], xx.z, part);
				part = fmaf(wf[4 * j + 3], xx.w, part);
			}
			acc[b] = scaled ? fmaf(sc, part, acc[b]) : part;
		}
	}
}

/* One launch of a product over a tile of nb tokens. MODE 0: y (=|+=) W·x;
 * MODE 1 (expert gate/up): y = silu(W·x) ⊙ (W2·x), plain store. */
struct MvArgs {
	const uint8_t *w, *w2;   /* weights (w2: up, MODE 1) */
	const void *s, *s2;      /* scales */
	uint32_t rows, cols;
	const float *x;          /* rows of x: xrows[b] or b, stride ldx */
	const int32_t *xrows;
	uint32_t ldx;
	float *y;                /* rows of y: yrows[b] or b, stride ldy */
	const int32_t *yrows;
	const float *ywts;       /* per-token factor or NULL */
	uint32_t ldy;
	int accumulate;
	int x_vec4;              /* x rows 16-byte aligned, ldx % 4 == 0 */
	uint32_t nb;             /* tokens in this tile */
};

static __device__ __forceinline__ float silu_f(float g) { return g / (1.0f + expf(-g)); }

/* Writes one output element of token b, row r. */
static __device__ __forceinline__ void mv_store(const MvArgs &a, uint32_t b, uint32_t r, float v)
{
	const size_t yr = a.yrows ? (size_t)a.yrows[b] : b;
	if (a.ywts)
		v *= a.ywts[b];
	float *dst = a.y + yr * a.ldy + r;
	*dst = a.accumulate ? *dst + v : v;
}

/* Stages the nb rows of x into shared memory, padded (see xpad). */
static __device__ __forceinline__ void stage_x(const MvArgs &a, float *xs, uint32_t pc)
{
	const uint32_t cols = a.cols;
	for (uint32_t b = 0; b < a.nb; b++) {
		const float *xr = a.x + (size_t)(a.xrows ? a.xrows[b] : (int32_t)b) * a.ldx;
		if (a.x_vec4) { /* 16-byte aligned rows, cols % 4 == 0 */
			for (uint32_t i = threadIdx.x * 4; i < cols; i += MV_THREADS * 4)
				*(float4 *)(xs + b * pc + xpad(i)) = *(const float4 *)(xr + i);
		} else {
			for (uint32_t i = threadIdx.x; i < cols; i += MV_THREADS)
				xs[b * pc + xpad(i)] = xr[i];
		}
	}
}

/* The fast kernel. Each block stages x once, then each warp takes rows r =
 * blockIdx.x·8 + warp, + gridDim.x·8 … (the grid is capped at a few blocks per
 * SM, so x is re-read from L2 fewer times). */
template <int FMT, int BT, int MODE>
static __global__ void __launch_bounds__(MV_THREADS) mv_vec_kernel(MvArgs a)
{
	extern __shared__ float4 mv_smem[];
	float *xs = (float *)mv_smem;
	constexpr int E = Fmt<FMT>::E;
	constexpr int U = MODE ? 2 : 4;  /* chunks per lane in flight, per matrix */
	const uint32_t cols = a.cols, pc = xpad_len(cols);

	stage_x(a, xs, pc);
	__syncthreads(); /* the only barrier: rows below are warp-uniform */

	const int lane = threadIdx.x & 31;
	const uint32_t nch = cols / E;
	for (uint32_t r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5); r < a.rows;
	     r += gridDim.x * MV_WARPS) {
		const uint4 *w1 = (const uint4 *)a.w + (size_t)r * nch;
		const uint4 *w2 = MODE ? (const uint4 *)a.w2 + (size_t)r * nch : w1;
		float acc1[BT], acc2[BT];
#pragma unroll
		for (int b = 0; b < BT; b++)
			acc1[b] = acc2[b] = 0.0f;

		for (uint32_t base = 0; base < nch; base += 32 * U) {
			uint4 v1[U], v2[U];
			float s1[U], s2[U];
#pragma unroll
			for (int u = 0; u < U; u++) {
				const uint32_t c = base + u * 32 + lane;
				v1[u] = v2[u] = make_uint4(0, 0, 0, 0);
				s1[u] = s2[u] = 0.0f;
				if (c < nch) {
					v1[u] = ld_stream(w1 + c);
					s1[u] = chunk_scale<FMT>(a.s, r, c, cols);
					if (MODE) {
						v2[u] = ld_stream(w2 + c);
						s2[u] = chunk_scale<FMT>(a.s2, r, c, cols);
					}
				}
			}
#pragma unroll
			for (int u = 0; u < U; u++) {
				const uint32_t c = base + u * 32 + lane;
				if (c < nch) {
					chunk_dot<FMT, BT>(v1[u], s1[u], xs, pc, c * E, a.nb, acc1);
					if (MODE)
						chunk_dot<FMT, BT>(v2[u], s2[u], xs, pc, c * E, a.nb, acc2);
				}
			}
		}

#pragma unroll
		for (int b = 0; b < BT; b++) {
			acc1[b] = kcu_warp_sum(acc1[b]);
			if (MODE)
				acc2[b] = kcu_warp_sum(acc2[b]);
		}
		if (lane == 0) {
			float rs1 = 1.0f, rs2 = 1.0f;
			if constexpr (FMT == K2_FORMAT_INT8) {
				rs1 = __ldg((const float *)a.s + r);
				if (MODE)
					rs2 = __ldg((const float *)a.s2 + r);
			}
#pragma unroll
			for (int b = 0; b < BT; b++) {
				if (b < (int)a.nb) {
					if (MODE)
						a.y[(size_t)b * a.ldy + r] =
							silu_f(acc1[b] * rs1) * (acc2[b] * rs2);
					else
						mv_store(a, b, r, acc1[b] * rs1);
				}
			}
		}
	}
}

/* One element of W [rows, cols] in format fmt, dequantized. */
static __device__ __forceinline__ float deq_elem(uint32_t fmt, const uint8_t *w, const void *s,
						 uint32_t r, uint32_t c, uint32_t cols)
{
	const size_t i = (size_t)r * cols + c;
	switch (fmt) {
	case K2_FORMAT_BF16:
		return kcu_bf16(((const uint16_t *)w)[i]);
	case K2_FORMAT_FP8_B128:
		return e4m3_to_f(w[i]) *
		       ((const float *)s)[(size_t)(r >> 7) * ((cols + 127) >> 7) + (c >> 7)];
	case K2_FORMAT_INT8:
		return (float)(int8_t)w[i] * ((const float *)s)[r];
	case K2_FORMAT_INT4_G32: {
		const uint8_t byte = w[(size_t)r * (cols >> 1) + (c >> 1)];
		const int n = (c & 1) ? byte >> 4 : byte & 15;
		return (float)(n - 8) * kcu_bf16(((const uint16_t *)s)[(size_t)r * (cols >> 5) + (c >> 5)]);
	}
	default: /* KERN_FORMAT_F32 */
		return ((const float *)w)[i];
	}
}

/* The scalar kernel: one warp per row, one token per blockIdx.y. */
template <int MODE>
static __global__ void __launch_bounds__(MV_THREADS) mv_generic_kernel(MvArgs a, uint32_t fmt)
{
	const int lane = threadIdx.x & 31;
	const uint32_t r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
	const uint32_t b = blockIdx.y;
	if (r >= a.rows || b >= a.nb)
		return;
	const float *xr = a.x + (size_t)(a.xrows ? a.xrows[b] : (int32_t)b) * a.ldx;
	float acc1 = 0.0f, acc2 = 0.0f;
	for (uint32_t c = lane; c < a.cols; c += 32) {
		const float xv = xr[c];
		acc1 = fmaf(deq_elem(fmt, a.w, a.s, r, c, a.cols), xv, acc1);
		if (MODE)
			acc2 = fmaf(deq_elem(fmt, a.w2, a.s2, r, c, a.cols), xv, acc2);
	}
	acc1 = kcu_warp_sum(acc1);
	if (MODE)
		acc2 = kcu_warp_sum(acc2);
	if (lane != 0)
		return;
	if (MODE)
		a.y[(size_t)b * a.ldy + r] = silu_f(acc1) * acc2;
	else
		mv_store(a, b, r, acc1);
}

template <int FMT, int BT, int MODE>
static int mv_vec_launch(kcu_ctx *ctx, const MvArgs &a)
{
	const size_t smem = (size_t)a.nb * xpad_len(a.cols) * sizeof(float);
	auto kern = mv_vec_kernel<FMT, BT, MODE>;
	if (smem > (48u << 10))
		KCU_CHECK(ctx, cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
						    (int)smem));
	/* at most MV_BLOCKS_PER_SM blocks per SM, each warp then taking the same
	 * number of rows (± 1) */
	const unsigned full = kcu_div_up(a.rows, MV_WARPS);
	const unsigned cap = ctx->sm_count > 0 ? (unsigned)ctx->sm_count * MV_BLOCKS_PER_SM : full;
	const unsigned per = (full + cap - 1) / cap;
	const unsigned blocks = (full + per - 1) / per;
	kern<<<blocks, MV_THREADS, smem, ctx->stream>>>(a);
	KCU_CHECK_LAUNCH(ctx, "mv_vec_kernel");
	return 0;
}

template <int FMT, int MODE>
static int mv_vec_bt(kcu_ctx *ctx, const MvArgs &a, int bt)
{
	switch (bt) {
	case 1: return mv_vec_launch<FMT, 1, MODE>(ctx, a);
	case 2: return mv_vec_launch<FMT, 2, MODE>(ctx, a);
	case 4: return mv_vec_launch<FMT, 4, MODE>(ctx, a);
	default: return mv_vec_launch<FMT, 8, MODE>(ctx, a);
	}
}

template <int MODE>
static int mv_vec_fmt(kcu_ctx *ctx, uint32_t fmt, const MvArgs &a, int bt)
{
	switch (fmt) {
	case K2_FORMAT_BF16: return mv_vec_bt<K2_FORMAT_BF16, MODE>(ctx, a, bt);
	case K2_FORMAT_FP8_B128: return mv_vec_bt<K2_FORMAT_FP8_B128, MODE>(ctx, a, bt);
	case K2_FORMAT_INT8: return mv_vec_bt<K2_FORMAT_INT8, MODE>(ctx, a, bt);
	case K2_FORMAT_INT4_G32: return mv_vec_bt<K2_FORMAT_INT4_G32, MODE>(ctx, a, bt);
	default: return mv_vec_bt<KERN_FORMAT_F32, MODE>(ctx, a, bt);
	}
}

static int valid_format(uint32_t f)
{
	return f == K2_FORMAT_BF16 || f == K2_FORMAT_FP8_B128 || f == K2_FORMAT_INT8 ||
	       f == K2_FORMAT_INT4_G32 || f == KERN_FORMAT_F32;
}

/* Runs a product (MODE 0) or the fused gate/up (MODE 1) over `batch` tokens,
 * in tiles. a.x/xrows, a.y/yrows/ywts describe token 0; tiles advance them. */
static int mv_run(kcu_ctx *ctx, uint32_t fmt, int mode, MvArgs a, uint32_t batch,
		  int force_generic)
{
	const int E = chunk_elems(fmt);
	const size_t row_smem = (size_t)xpad_len(a.cols) * sizeof(float);
	int vec = !force_generic && E > 0 && a.cols % E == 0 &&
		  ((uintptr_t)a.w & 15) == 0 && (mode == 0 || ((uintptr_t)a.w2 & 15) == 0) &&
		  row_smem <= ctx->smem_optin;
	a.x_vec4 = ((uintptr_t)a.x & 15) == 0 && a.ldx % 4 == 0;
	int bt = 1;
	if (vec) {
		while (bt < 8 && (uint32_t)bt < batch && (size_t)(bt * 2) * row_smem <= MV_SMEM_SOFT &&
		       (size_t)(bt * 2) * row_smem <= ctx->smem_optin)
			bt *= 2;
	} else {
		bt = 65535; /* grid.y limit */
	}
	for (uint32_t b0 = 0; b0 < batch; b0 += (uint32_t)bt) {
		MvArgs t = a;
		t.nb = batch - b0 < (uint32_t)bt ? batch - b0 : (uint32_t)bt;
		if (a.xrows)
			t.xrows = a.xrows + b0;
		else
			t.x = a.x + (size_t)b0 * a.ldx;
		if (a.yrows)
			t.yrows = a.yrows + b0;
		else
			t.y = a.y + (size_t)b0 * a.ldy;
		if (a.ywts)
			t.ywts = a.ywts + b0;
		int rc;
		if (vec) {
			rc = mode ? mv_vec_fmt<1>(ctx, fmt, t, bt) : mv_vec_fmt<0>(ctx, fmt, t, bt);
		} else {
			dim3 grid(kcu_div_up(a.rows, MV_WARPS), t.nb);
			if (mode)
				mv_generic_kernel<1><<<grid, MV_THREADS, 0, ctx->stream>>>(t, fmt);
			else
				mv_generic_kernel<0><<<grid, MV_THREADS, 0, ctx->stream>>>(t, fmt);
			KCU_CHECK_LAUNCH(ctx, "mv_generic_kernel");
			rc = 0;
		}
		if (rc < 0)
			return rc;
	}
	return 0;
}

static __global__ void f32_to_bf16_kernel(const float *x, __nv_bfloat16 *y, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		y[i] = __float2bfloat16_rn(x[i]);
}

/* Y [batch, rows] = X · Wᵀ via cuBLAS: W row-major [rows, cols] is, column-major,
 * Wᵀ [cols, rows]; so Yᵀ (column-major [rows, batch]) = op_T(W) · Xᵀ. */
static int mm_gemm(kcu_ctx *ctx, const kern_mat *m, const float *x, uint32_t batch, float *y,
		   int accumulate)
{
	const size_t n = (size_t)batch * m->cols;
	void *xb;
	int rc = kcu_scratch(ctx, n * sizeof(__nv_bfloat16), &xb);
	if (rc < 0)
		return rc;
	unsigned blocks = kcu_div_up(n, 256);
	if (blocks > 4096)
		blocks = 4096;
	f32_to_bf16_kernel<<<blocks, 256, 0, ctx->stream>>>(x, (__nv_bfloat16 *)xb, n);
	KCU_CHECK_LAUNCH(ctx, "f32_to_bf16_kernel");
	const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
	KCU_CHECK_BLAS(ctx, cublasGemmEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)m->rows,
					 (int)batch, (int)m->cols, &alpha, m->w, CUDA_R_16BF,
					 (int)m->cols, xb, CUDA_R_16BF, (int)m->cols, &beta, y,
					 CUDA_R_32F, (int)m->rows, CUBLAS_COMPUTE_32F,
					 CUBLAS_GEMM_DEFAULT));
	return 0;
}

static int check_mat(kcu_ctx *ctx, const char *op, const kern_mat *m)
{
	if (!m || !m->w)
		return kcu_bad_arg(ctx, op, "no matrix");
	if (!valid_format(m->format))
		return kcu_bad_arg(ctx, op, "unknown weight format");
	if (m->rows == 0 || m->cols == 0)
		return kcu_bad_arg(ctx, op, "empty matrix");
	if (m->format == K2_FORMAT_INT4_G32 && m->cols % 32)
		return kcu_bad_arg(ctx, op, "int4-g32 needs cols % 32 == 0");
	if ((m->format == K2_FORMAT_FP8_B128 || m->format == K2_FORMAT_INT8 ||
	     m->format == K2_FORMAT_INT4_G32) && !m->s)
		return kcu_bad_arg(ctx, op, "format needs scales");
	return 0;
}

extern "C" int kcu_matmul(kcu_ctx *ctx, const kern_mat *m, const float *x, uint32_t batch,
			  float *y, unsigned flags)
{
	int rc = check_mat(ctx, "kcu_matmul", m);
	if (rc < 0)
		return rc;
	if (batch == 0)
		return 0;
	if (!x || !y)
		return kcu_bad_arg(ctx, "kcu_matmul", "no x or y");
	const int acc = (flags & KCU_MM_ACCUMULATE) != 0;
	if (flags & KCU_MM_GEMM) {
		if (m->format != K2_FORMAT_BF16)
			return kcu_bad_arg(ctx, "kcu_matmul", "KCU_MM_GEMM needs bf16 weights");
		if (m->rows > INT32_MAX || m->cols > INT32_MAX || batch > INT32_MAX)
			return kcu_bad_arg(ctx, "kcu_matmul", "dims beyond cuBLAS int");
		return mm_gemm(ctx, m, x, batch, y, acc);
	}
	if (m->format == K2_FORMAT_BF16 && batch >= KCU_GEMM_MIN_BATCH &&
	    !(flags & (KCU_MM_NO_GEMM | KCU_MM_GENERIC)))
		return mm_gemm(ctx, m, x, batch, y, acc);
	MvArgs a = {};
	a.w = (const uint8_t *)m->w;
	a.s = m->s;
	a.rows = m->rows;
	a.cols = m->cols;
	a.x = x;
	a.ldx = m->cols;
	a.y = y;
	a.ldy = m->rows;
	a.accumulate = acc;
	return mv_run(ctx, m->format, 0, a, batch, (flags & KCU_MM_GENERIC) != 0);
}

extern "C" int kcu_expert_ffn(kcu_ctx *ctx, const kern_mat mats[3], const float *x,
			      uint32_t batch, const int32_t *rows, const float *weights,
			      float *y, float *scratch)
{
	for (int i = 0; i < 3; i++) {
		int rc = check_mat(ctx, "kcu_expert_ffn", &mats[i]);
		if (rc < 0)
			return rc;
	}
	const uint32_t I = mats[0].rows, H = mats[0].cols;
	if (mats[1].rows != I || mats[1].cols != H || mats[2].rows != H || mats[2].cols != I)
		return kcu_bad_arg(ctx, "kcu_expert_ffn",
				   "shapes must be gate, up [I, H] and down [H, I]");
	if (mats[1].format != mats[0].format)
		return kcu_bad_arg(ctx, "kcu_expert_ffn", "gate and up differ in format");
	if (batch == 0)
		return 0;
	if (!x || !y || !scratch)
		return kcu_bad_arg(ctx, "kcu_expert_ffn", "no x, y or scratch");

	MvArgs g = {};
	g.w = (const uint8_t *)mats[0].w;
	g.s = mats[0].s;
	g.w2 = (const uint8_t *)mats[1].w;
	g.s2 = mats[1].s;
	g.rows = I;
	g.cols = H;
	g.x = x;
	g.xrows = rows;
	g.ldx = H;
	g.y = scratch;
	g.ldy = I;
	int rc = mv_run(ctx, mats[0].format, 1, g, batch, 0);
	if (rc < 0)
		return rc;

	MvArgs d = {};
	d.w = (const uint8_t *)mats[2].w;
	d.s = mats[2].s;
	d.rows = H;
	d.cols = I;
	d.x = scratch;
	d.ldx = I;
	d.y = y;
	d.yrows = rows;
	d.ywts = weights;
	d.ldy = H;
	d.accumulate = 1;
	return mv_run(ctx, mats[2].format, 0, d, batch, 0);
}

/* ---------------------------------------------------------------- embedding */

static __global__ void embed_kernel(uint32_t fmt, const uint8_t *w, const void *s, uint32_t rows,
				    uint32_t cols, const int32_t *ids, float *out)
{
	const uint32_t t = blockIdx.y;
	const int32_t id = ids[t];
	float *o = out + (size_t)t * cols;
	for (uint32_t c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
		o[c] = (id >= 0 && (uint32_t)id < rows) ? deq_elem(fmt, w, s, (uint32_t)id, c, cols)
							: __int_as_float(0x7fc00000);
}

extern "C" int kcu_embed(kcu_ctx *ctx, const kern_mat *m, const int32_t *ids, uint32_t n,
			 float *out)
{
	int rc = check_mat(ctx, "kcu_embed", m);
	if (rc < 0)
		return rc;
	if (n == 0)
		return 0;
	if (!ids || !out)
		return kcu_bad_arg(ctx, "kcu_embed", "null pointer");
	if (n > 65535)
		return kcu_bad_arg(ctx, "kcu_embed", "more than 65535 ids in one call");
	unsigned bx = kcu_div_up(m->cols, 256);
	if (bx > 64)
		bx = 64;
	embed_kernel<<<dim3(bx, n), 256, 0, ctx->stream>>>(m->format, (const uint8_t *)m->w, m->s,
							     m->rows, m->cols, ids, out);
	KCU_CHECK_LAUNCH(ctx, "embed_kernel");
	return 0;
}
