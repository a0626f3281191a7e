/* cuda_ops.cu — the small ops of the forward pass on the GPU: RMSNorm,
 * SwiGLU (silu · up), softmax, axpy, YaRN RoPE (interleaved pairs in,
 * de-interleaved out, as transformers' DeepSeek-V3 leaves them), the sigmoid
 * noaux_tc router with group-limited top-k, and the MLA cache append (RMSNorm of
 * the latent and RoPE of k_pe fused in one launch). Each is a `static
 * __global__` kernel, a launcher that checks the contract, and one exported op.
 * Their plain C references: kern_rmsnorm, kern_silu_mul, kern_softmax,
 * kern_axpy, kern_rope (kernels.h); the router and the cache append are
 * checked against the scalar versions in tests/prog_gpu_kernels.c. */
#include "cuda_common.cuh"

#include <limits.h>

#define OPS_THREADS 256

static unsigned grid_for(size_t n)
{
	unsigned b = kcu_div_up(n, OPS_THREADS);
	return b == 0 ? 1 : (b > 8192 ? 8192 : b);
}

/* ---------------------------------------------------------------- RMSNorm */

static __global__ void __launch_bounds__(OPS_THREADS)
rmsnorm_kernel(float *out, const float *x, const float *w, uint32_t n, float eps)
{
	__shared__ float red[32];
	const float *xr = x + (size_t)blockIdx.x * n;
	float *orow = out + (size_t)blockIdx.x * n;
	float ss = 0.0f;
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
		ss = fmaf(xr[i], xr[i], ss);
	ss = kcu_block_sum(ss, red);
	const float inv = 1.0f / sqrtf(ss / (float)n + eps);
	/* each thread rewrites only the elements it read: out may equal x */
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
		orow[i] = xr[i] * inv * w[i];
}

extern "C" int kcu_rmsnorm(kcu_ctx *ctx, float *out, const float *x, const float *w,
			   uint32_t rows, uint32_t n, float eps)
{
	if (rows == 0 || n == 0)
		return 0;
	if (!out || !x || !w)
		return kcu_bad_arg(ctx, "kcu_rmsnorm", "null pointer");
	if (rows > INT32_MAX)
		return kcu_bad_arg(ctx, "kcu_rmsnorm", "too many rows");
	rmsnorm_kernel<<<rows, OPS_THREADS, 0, ctx->stream>>>(out, x, w, n, eps);
	KCU_CHECK_LAUNCH(ctx, "rmsnorm_kernel");
	return 0;
}

/* ---------------------------------------------------------------- SwiGLU, axpy */

static __global__ void silu_mul_kernel(float *gate, const float *up, uint32_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		const float g = gate[i];
		gate[i] = g / (1.0f + expf(-g)) * up[i];
	}
}

extern "C" int kcu_silu_mul(kcu_ctx *ctx, float *gate, const float *up, uint32_t n)
{
	if (n == 0)
		return 0;
	if (!gate || !up)
		return kcu_bad_arg(ctx, "kcu_silu_mul", "null pointer");
	silu_mul_kernel<<<grid_for(n), OPS_THREADS, 0, ctx->stream>>>(gate, up, n);
	KCU_CHECK_LAUNCH(ctx, "silu_mul_kernel");
	return 0;
}

static __global__ void axpy_kernel(float *y, float a, const float *x, uint32_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		y[i] = fmaf(a, x[i], y[i]);
}

extern "C" int kcu_axpy(kcu_ctx *ctx, float *y, float a, const float *x, uint32_t n)
{
	if (n == 0)
		return 0;
	if (!y || !x)
		return kcu_bad_arg(ctx, "kcu_axpy", "null pointer");
	axpy_kernel<<<grid_for(n), OPS_THREADS, 0, ctx->stream>>>(y, a, x, n);
	KCU_CHECK_LAUNCH(ctx, "axpy_kernel");
	return 0;
}

/* ---------------------------------------------------------------- softmax */

static __global__ void __launch_bounds__(OPS_THREADS) softmax_kernel(float *x, uint32_t n)
{
	__shared__ float red[32];
	float *row = x + (size_t)blockIdx.x * n;
	float m = -INFINITY;
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
		m = fmaxf(m, row[i]);
	m = kcu_block_max(m, red);
	float s = 0.0f;
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
		s += expf(row[i] - m);
	s = kcu_block_sum(s, red);
	const float inv = 1.0f / s;
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
		row[i] = expf(row[i] - m) * inv;
}

extern "C" int kcu_softmax(kcu_ctx *ctx, float *x, uint32_t rows, uint32_t n)
{
	if (rows == 0 || n == 0)
		return 0;
	if (!x)
		return kcu_bad_arg(ctx, "kcu_softmax", "null pointer");
	if (rows > INT32_MAX)
		return kcu_bad_arg(ctx, "kcu_softmax", "too many rows");
	softmax_kernel<<<rows, OPS_THREADS, 0, ctx->stream>>>(x, n);
	KCU_CHECK_LAUNCH(ctx, "softmax_kernel");
	return 0;
}

/* ---------------------------------------------------------------- RoPE */

/* The rotation of pair i at position pos: θ = (float)pos · inv_freq[i] (the
 * float32 product transformers forms), cos and sin × mscale. */
static __device__ __forceinline__ void rope_cs(uint32_t i, uint32_t pos, const float *inv_freq,
					       float mscale, float &cs, float &sn)
{
	const float th = (float)pos * inv_freq[i];
	sincosf(th, &sn, &cs); /* full range reduction: θ reaches 1e5 and more */
	cs *= mscale;
	sn *= mscale;
}

#define ROPE_MAX_PL 4 /* pairs per lane: rope ≤ 256 */

/* One warp per (token, head) vector: every lane reads its pairs into registers
 * before any lane writes, so the de-interleaving can be done in place. */
static __global__ void __launch_bounds__(OPS_THREADS)
rope_kernel(float *x, uint32_t n_tok, uint32_t n_heads, uint32_t tok_stride, uint32_t head_stride,
	    uint32_t rope_off, uint32_t half, uint32_t pos0, const float *inv_freq, float mscale)
{
	const int lane = threadIdx.x & 31;
	const size_t nvec = (size_t)n_tok * n_heads;
	const size_t wpg = (size_t)gridDim.x * (OPS_THREADS / 32);
	for (size_t k = blockIdx.x * (size_t)(OPS_THREADS / 32) + (threadIdx.x >> 5); k < nvec;
	     k += wpg) {
		const uint32_t h = (uint32_t)(k % n_heads), t = (uint32_t)(k / n_heads);
		float *v = x + (size_t)t * tok_stride + (size_t)h * head_stride + rope_off;
		float lo[ROPE_MAX_PL], hi[ROPE_MAX_PL];
#pragma unroll
		for (int j = 0; j < ROPE_MAX_PL; j++) {
			const uint32_t i = lane + 32 * j;
			lo[j] = hi[j] = 0.0f;
			if (i < half) {
				float cs, sn;
				rope_cs(i, pos0 + t, inv_freq, mscale, cs, sn);
				const float a = v[2 * i], b = v[2 * i + 1];
				lo[j] = a * cs - b * sn;
				hi[j] = b * cs + a * sn;
			}
		}
		__syncwarp();
#pragma unroll
		for (int j = 0; j < ROPE_MAX_PL; j++) {
			const uint32_t i = lane + 32 * j;
			if (i < half) {
				v[i] = lo[j];
				v[half + i] = hi[j];
			}
		}
		__syncwarp();
	}
}

extern "C" int kcu_rope(kcu_ctx *ctx, float *x, uint32_t n_tok, uint32_t n_heads,
			uint32_t tok_stride, uint32_t head_stride, uint32_t rope_off,
			uint32_t rope_dim, uint32_t pos0, const float *inv_freq, float mscale)
{
	if (n_tok == 0 || n_heads == 0 || rope_dim == 0)
		return 0;
	if (!x || !inv_freq)
		return kcu_bad_arg(ctx, "kcu_rope", "null pointer");
	if (rope_dim % 2 || rope_dim > 64 * ROPE_MAX_PL)
		return kcu_bad_arg(ctx, "kcu_rope", "rope_dim must be even, ≤ 256");
	if ((uint64_t)pos0 + n_tok > UINT32_MAX)
		return kcu_bad_arg(ctx, "kcu_rope", "positions beyond 2^32");
	const size_t nvec = (size_t)n_tok * n_heads;
	unsigned blocks = kcu_div_up(nvec, OPS_THREADS / 32);
	if (blocks > 8192)
		blocks = 8192;
	rope_kernel<<<blocks, OPS_THREADS, 0, ctx->stream>>>(x, n_tok, n_heads, tok_stride,
							     head_stride, rope_off, rope_dim / 2,
							     pos0, inv_freq, mscale);
	KCU_CHECK_LAUNCH(ctx, "rope_kernel");
	return 0;
}

/* ---------------------------------------------------------------- MLA cache append */

/* One block per token: RMSNorm of the latent into ckv, RoPE of k_pe into kpe. */
static __global__ void __launch_bounds__(OPS_THREADS)
mla_cache_write_kernel(const float *kv_a, uint32_t kv_lora, uint32_t rope, uint32_t pos0,
		       const float *norm_w, float eps, const float *inv_freq, float mscale,
		       float *ckv, float *kpe)
{
	__shared__ float red[32];
	const uint32_t t = blockIdx.x, pos = pos0 + t;
	const float *src = kv_a + (size_t)t * (kv_lora + rope);
	float ss = 0.0f;
	for (uint32_t i = threadIdx.x; i < kv_lora; i += blockDim.x)
		ss = fmaf(src[i], src[i], ss);
	ss = kcu_block_sum(ss, red);
	const float inv = 1.0f / sqrtf(ss / (float)kv_lora + eps);
	float *c = ckv + (size_t)pos * kv_lora;
	for (uint32_t i = threadIdx.x; i < kv_lora; i += blockDim.x)
		c[i] = src[i] * inv * norm_w[i];
	float *k = kpe + (size_t)pos * rope;
	const float *pe = src + kv_lora;
	const uint32_t half = rope / 2;
	for (uint32_t i = threadIdx.x; i < half; i += blockDim.x) {
		float cs, sn;
		rope_cs(i, pos, inv_freq, mscale, cs, sn);
		const float a = pe[2 * i], b = pe[2 * i + 1];
		k[i] = a * cs - b * sn;
		k[half + i] = b * cs + a * sn;
	}
}

extern "C" int kcu_mla_cache_write(kcu_ctx *ctx, const kern_mla_dims *d, const float *kv_a,
				   uint32_t T, uint32_t pos0, const float *norm_w, float eps,
				   const float *inv_freq, float mscale, float *ckv, float *kpe)
{
	if (!d)
		return kcu_bad_arg(ctx, "kcu_mla_cache_write", "no dims");
	if (T == 0)
		return 0;
	if (!kv_a || !norm_w || !inv_freq || !ckv || !kpe)
		return kcu_bad_arg(ctx, "kcu_mla_cache_write", "null pointer");
	if (d->kv_lora == 0 || d->rope == 0 || d->rope % 2)
		return kcu_bad_arg(ctx, "kcu_mla_cache_write", "kv_lora must be > 0, rope even > 0");
	if ((uint64_t)pos0 + T > UINT32_MAX || T > INT32_MAX)
		return kcu_bad_arg(ctx, "kcu_mla_cache_write", "positions beyond 2^32");
	mla_cache_write_kernel<<<T, OPS_THREADS, 0, ctx->stream>>>(
		kv_a, d->kv_lora, d->rope, pos0, norm_w, eps, inv_freq, mscale, ckv, kpe);
	KCU_CHECK_LAUNCH(ctx, "mla_cache_write_kernel");
	return 0;
}

/* ---------------------------------------------------------------- router */

#define ROUTER_THREADS 256
#define ROUTER_MAX_E 1024
#define ROUTER_MAX_GROUPS 64
#define ROUTER_MAX_K 32

/* (value, index) argmax: the larger value, ties to the lower index; NaN never wins. */
static __device__ __forceinline__ void arg_better(float &bv, int &bi, float v, int i)
{
	if (v > bv || (v == bv && i < bi)) {
		bv = v;
		bi = i;
	}
}

static __global__ void __launch_bounds__(ROUTER_THREADS)
router_kernel(kern_router_params p, const float *logits, const float *bias, int32_t *idx,
	      float *wout)
{
	__shared__ float sc[ROUTER_MAX_E];     /* sigmoid scores */
	__shared__ float ch[ROUTER_MAX_E];     /* choice scores (biased, masked) */
	__shared__ float gscore[ROUTER_MAX_GROUPS];
	__shared__ int gsel[ROUTER_MAX_GROUPS];
	__shared__ float rv[32];
	__shared__ int ri[32];
	__shared__ int picked[ROUTER_MAX_K];
	const uint32_t t = blockIdx.x, E = p.n_experts, G = p.n_group, per = E / G;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

	for (uint32_t e = threadIdx.x; e < E; e += blockDim.x) {
		const float l = logits[(size_t)t * E + e];
		const float s = 1.0f / (1.0f + expf(-l));
		sc[e] = s;
		ch[e] = s + (bias ? bias[e] : 0.0f);
	}
	__syncthreads();
	if (threadIdx.x < G) {
		/* group score: sum of the two largest biased scores in the group */
		float m1 = -INFINITY, m2 = -INFINITY;
		for (uint32_t j = 0; j < per; j++) {
			const float v = ch[threadIdx.x * per + j];
			if (v > m1) {
				m2 = m1;
				m1 = v;
			} else if (v > m2) {
				m2 = v;
			}
		}
		gscore[threadIdx.x] = m1 + m2;
		gsel[threadIdx.x] = 0;
	}
	__syncthreads();
	if (threadIdx.x == 0) {
		for (uint32_t k = 0; k < p.topk_group; k++) {
			float bv = -INFINITY;
			int bi = INT_MAX;
			for (uint32_t g = 0; g < G; g++)
				if (!gsel[g])
					arg_better(bv, bi, gscore[g], (int)g);
			if (bi == INT_MAX) /* NaN scores: keep the first free group */
				for (uint32_t g = 0; g < G && bi == INT_MAX; g++)
					if (!gsel[g])
						bi = (int)g;
			gsel[bi] = 1;
		}
	}
	__syncthreads();
	for (uint32_t e = threadIdx.x; e < E; e += blockDim.x)
		if (!gsel[e / per])
			ch[e] = 0.0f; /* masked_fill(…, 0.0), as transformers does */
	__syncthreads();

	for (uint32_t k = 0; k < p.top_k; k++) {
		float bv = -INFINITY;
		int bi = INT_MAX;
		for (uint32_t e = threadIdx.x; e < E; e += blockDim.x)
			arg_better(bv, bi, ch[e], (int)e);
#pragma unroll
		for (int o = 16; o > 0; o >>= 1) {
			const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
			const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
			arg_better(bv, bi, ov, oi);
		}
		if (lane == 0) {
			rv[warp] = bv;
			ri[warp] = bi;
		}
		__syncthreads();
		if (threadIdx.x == 0) {
			float fv = -INFINITY;
			int fi = INT_MAX;
			for (int w = 0; w < (int)(blockDim.x >> 5); w++)
				arg_better(fv, fi, rv[w], ri[w]);
			if (fi == INT_MAX) { /* only NaN left: take the first not picked */
				for (uint32_t e = 0; e < E && fi == INT_MAX; e++)
					if (ch[e] != -INFINITY)
						fi = (int)e;
				if (fi == INT_MAX)
					fi = 0;
			}
			picked[k] = fi;
			ch[fi] = -INFINITY;
		}
		__syncthreads();
	}
	if (threadIdx.x == 0) {
		float sum = 0.0f;
		for (uint32_t k = 0; k < p.top_k; k++)
			sum += sc[picked[k]];
		const float norm = p.norm_topk_prob ? 1.0f / (sum + 1e-20f) : 1.0f;
		for (uint32_t k = 0; k < p.top_k; k++) {
			idx[(size_t)t * p.top_k + k] = picked[k];
			wout[(size_t)t * p.top_k + k] = sc[picked[k]] * norm * p.routed_scaling_factor;
		}
	}
}

extern "C" int kcu_router(kcu_ctx *ctx, const kern_router_params *p, const float *logits,
			  const float *bias, uint32_t T, int32_t *idx, float *weights)
{
	if (!p)
		return kcu_bad_arg(ctx, "kcu_router", "no params");
	if (p->n_experts == 0 || p->n_experts > ROUTER_MAX_E)
		return kcu_bad_arg(ctx, "kcu_router", "n_experts must be 1 … 1024");
	if (p->n_group == 0 || p->n_group > ROUTER_MAX_GROUPS || p->n_experts % p->n_group)
		return kcu_bad_arg(ctx, "kcu_router", "n_group must divide n_experts, ≤ 64");
	if (p->n_experts / p->n_group < 2)
		return kcu_bad_arg(ctx, "kcu_router", "groups need ≥ 2 experts (top-2 group score)");
	if (p->topk_group == 0 || p->topk_group > p->n_group)
		return kcu_bad_arg(ctx, "kcu_router", "topk_group must be 1 … n_group");
	if (p->top_k == 0 || p->top_k > ROUTER_MAX_K || p->top_k > p->n_experts)
		return kcu_bad_arg(ctx, "kcu_router", "top_k must be 1 … 32 and ≤ n_experts");
	if (T == 0)
		return 0;
	if (!logits || !idx || !weights)
		return kcu_bad_arg(ctx, "kcu_router", "null pointer");
	if (T > INT32_MAX)
		return kcu_bad_arg(ctx, "kcu_router", "too many tokens");
	router_kernel<<<T, ROUTER_THREADS, 0, ctx->stream>>>(*p, logits, bias, idx, weights);
	KCU_CHECK_LAUNCH(ctx, "router_kernel");
	return 0;
}
