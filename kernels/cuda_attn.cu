/* cuda_attn.cu — MLA attention over the compressed KV cache (DeepSeek-V3 /
 * Kimi-K2), for decode and prefill.
 *
 * The cache of a layer holds, per position, the normalised latent c [kv_lora]
 * and the rotated k_pe [rope] (kcu_mla_cache_write). Two ways to attend:
 *
 *   full      kv = c · kv_bᵀ is reconstructed by the caller (kcu_matmul, any
 *             format) and each head attends over [k_nope | k_pe] with its v;
 *   absorbed  kv_b is folded into the query (q_abs = W_ukᵀ q_nope) and the
 *             output (o = W_uv · Σ p c): scores and the weighted sum run on the
 *             latent directly, no per-position reconstruction (decode).
 *
 * Both run one core kernel: one block per (head, query), each warp walks its
 * share of the positions with an online softmax (running max, sum and weighted
 * accumulator in registers, lane-strided so every row read is coalesced), and
 * the warps are merged at the end. Causal: query t sees positions ≤ pos0 + t.
 * The plain C reference is in tests/prog_gpu_kernels.c. */
#include "cuda_common.cuh"

#define ATT_WARPS 8
#define ATT_THREADS (ATT_WARPS * 32)
#define ATT_MAX_PL 32   /* ≤ 1024 elements per row: 32 per lane */
#define ATT_PLB 8       /* rope ≤ 256 */

struct AttnArgs {
	const float *qa;            /* first query part, dot with ka */
	uint32_t qa_ts, qa_hs;      /* token, head strides (elements) */
	const float *qb;            /* second query part (q_pe), dot with kb */
	uint32_t qb_ts, qb_hs;
	const float *ka;            /* per position (and head) */
	uint32_t ka_ps, ka_hs;
	const float *kb;            /* k_pe, shared by the heads */
	uint32_t kb_ps;
	const float *v;             /* values (ignored when they are ka) */
	uint32_t v_ps, v_hs;
	uint32_t na, nb, nv;
	float *out;
	uint32_t o_ts, o_hs;
	uint32_t pos0;
	float scale;
};

template <int PL, bool V_IS_KA>
static __global__ void __launch_bounds__(ATT_THREADS) mla_core_kernel(AttnArgs a)
{
	extern __shared__ float att_smem[]; /* [ATT_WARPS][nv] partial outputs */
	__shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
	const uint32_t h = blockIdx.x, t = blockIdx.y;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const uint32_t S = a.pos0 + t + 1;

	float qa[PL], qb[ATT_PLB], acc[PL];
	const float *qap = a.qa + (size_t)t * a.qa_ts + (size_t)h * a.qa_hs;
	const float *qbp = a.qb + (size_t)t * a.qb_ts + (size_t)h * a.qb_hs;
#pragma unroll
	for (int i = 0; i < PL; i++) {
		const uint32_t j = lane + 32 * i;
		qa[i] = j < a.na ? qap[j] : 0.0f;
		acc[i] = 0.0f;
	}
#pragma unroll
	for (int i = 0; i < ATT_PLB; i++) {
		const uint32_t j = lane + 32 * i;
		qb[i] = j < a.nb ? qbp[j] : 0.0f;
	}

	float m = -INFINITY, l = 0.0f;
	for (uint32_t s = warp; s < S; s += ATT_WARPS) {
		const float *kap = a.ka + (size_t)s * a.ka_ps + (size_t)h * a.ka_hs;
		const float *kbp = a.kb + (size_t)s * a.kb_ps;
		float k[PL];
		float dot = 0.0f;
#pragma unroll
		for (int i = 0; i < PL; i++) {
			const uint32_t j = lane + 32 * i;
			k[i] = j < a.na ? kap[j] : 0.0f;
			dot = fmaf(qa[i], k[i], dot);
		}
#pragma unroll
		for (int i = 0; i < ATT_PLB; i++) {
			const uint32_t j = lane + 32 * i;
			if (j < a.nb)
				dot = fmaf(qb[i], kbp[j], dot);
		}
		dot = kcu_warp_sum(dot) * a.scale;
		const float mn = fmaxf(m, dot);
		const float corr = expf(m - mn); /* 0 on the first position: m = −inf */
		const float p = expf(dot - mn);
		l = l * corr + p;
		if (V_IS_KA) {
#pragma unroll
			for (int i = 0; i < PL; i++)
				acc[i] = fmaf(p, k[i], acc[i] * corr);
		} else {
			const float *vp = a.v + (size_t)s * a.v_ps + (size_t)h * a.v_hs;
#pragma unroll
			for (int i = 0; i < PL; i++) {
				const uint32_t j = lane + 32 * i;
				const float vv = j < a.nv ? vp[j] : 0.0f;
				acc[i] = fmaf(p, vv, acc[i] * corr);
			}
		}
		m = mn;
	}

	/* merge the warps: a warp that saw no position has m = −inf, l = 0 */
	float *part = att_smem + (size_t)warp * a.nv;
#pragma unroll
	for (int i = 0; i < PL; i++) {
		const uint32_t j = lane + 32 * i;
		if (j < a.nv)
			part[j] = acc[i];
	}
	if (lane == 0) {
		wm[warp] = m;
		wl[warp] = l;
	}
	__syncthreads();
	float M = -INFINITY;
	for (int w = 0; w < ATT_WARPS; w++)
		M = fmaxf(M, wm[w]);
	float L = 0.0f, f[ATT_WARPS];
#pragma unroll
	for (int w = 0; w < ATT_WARPS; w++) {
		f[w] = wm[w] == -INFINITY ? 0.0f : expf(wm[w] - M);
		L = fmaf(wl[w], f[w], L);
	}
	const float invL = 1.0f / L;
	float *o = a.out + (size_t)t * a.o_ts + (size_t)h * a.o_hs;
	for (uint32_t j = threadIdx.x; j < a.nv; j += ATT_THREADS) {
		float sum = 0.0f;
#pragma unroll
		for (int w = 0; w < ATT_WARPS; w++)
			sum = fmaf(att_smem[(size_t)w * a.nv + j], f[w], sum);
		o[j] = sum * invL;
	}
}

template <bool V_IS_KA>
static int core_launch_pl(kcu_ctx *ctx, const AttnArgs &a, uint32_t n_heads, uint32_t T, int pl)
{
	const dim3 grid(n_heads, T);
	const size_t smem = (size_t)ATT_WARPS * a.nv * sizeof(float);
	void (*kern)(AttnArgs);
	switch (pl) {
	case 1: kern = mla_core_kernel<1, V_IS_KA>; break;
	case 2: kern = mla_core_kernel<2, V_IS_KA>; break;
	case 4: kern = mla_core_kernel<4, V_IS_KA>; break;
	case 8: kern = mla_core_kernel<8, V_IS_KA>; break;
	case 16: kern = mla_core_kernel<16, V_IS_KA>; break;
	default: kern = mla_core_kernel<32, V_IS_KA>; break;
	}
	if (smem > (48u << 10))
		KCU_CHECK(ctx, cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
						    (int)smem));
	kern<<<grid, ATT_THREADS, smem, ctx->stream>>>(a);
	KCU_CHECK_LAUNCH(ctx, "mla_core_kernel");
	return 0;
}

static int core_launch(kcu_ctx *ctx, const AttnArgs &a, uint32_t n_heads, uint32_t T,
		       bool v_is_ka)
{
	const uint32_t longest = a.na > a.nv ? a.na : a.nv;
	int pl = 1;
	while ((uint32_t)pl * 32 < longest)
		pl *= 2;
	return v_is_ka ? core_launch_pl<true>(ctx, a, n_heads, T, pl)
		       : core_launch_pl<false>(ctx, a, n_heads, T, pl);
}

static int check_dims(kcu_ctx *ctx, const char *op, const kern_mla_dims *d, uint32_t T,
		      uint32_t pos0)
{
	if (!d)
		return kcu_bad_arg(ctx, op, "no dims");
	if (d->n_heads == 0 || d->n_heads > 65535)
		return kcu_bad_arg(ctx, op, "n_heads must be 1 … 65535");
	if (d->kv_lora == 0 || d->kv_lora > 32 * ATT_MAX_PL || d->nope == 0 ||
	    d->nope > 32 * ATT_MAX_PL || d->v == 0 || d->v > 32 * ATT_MAX_PL)
		return kcu_bad_arg(ctx, op, "kv_lora, nope and v must be 1 … 1024");
	if (d->rope == 0 || d->rope % 2 || d->rope > 32 * ATT_PLB)
		return kcu_bad_arg(ctx, op, "rope must be even, 2 … 256");
	if (T > 65535)
		return kcu_bad_arg(ctx, op, "more than 65535 queries in one call");
	if ((uint64_t)pos0 + T > UINT32_MAX)
		return kcu_bad_arg(ctx, op, "positions beyond 2^32");
	return 0;
}

extern "C" int kcu_mla_attn_full(kcu_ctx *ctx, const kern_mla_dims *d, const float *q,
				 const float *kv, const float *kpe, uint32_t T, uint32_t pos0,
				 float scale, float *out)
{
	int rc = check_dims(ctx, "kcu_mla_attn_full", d, T, pos0);
	if (rc < 0)
		return rc;
	if (T == 0)
		return 0;
	if (!q || !kv || !kpe || !out)
		return kcu_bad_arg(ctx, "kcu_mla_attn_full", "null pointer");
	const uint32_t qk = d->nope + d->rope, kvh = d->nope + d->v;
	AttnArgs a = {};
	a.qa = q;
	a.qa_ts = d->n_heads * qk;
	a.qa_hs = qk;
	a.qb = q + d->nope;
	a.qb_ts = d->n_heads * qk;
	a.qb_hs = qk;
	a.ka = kv;
	a.ka_ps = d->n_heads * kvh;
	a.ka_hs = kvh;
	a.kb = kpe;
	a.kb_ps = d->rope;
	a.v = kv + d->nope;
	a.v_ps = d->n_heads * kvh;
	a.v_hs = kvh;
	a.na = d->nope;
	a.nb = d->rope;
	a.nv = d->v;
	a.out = out;
	a.o_ts = d->n_heads * d->v;
	a.o_hs = d->v;
	a.pos0 = pos0;
	a.scale = scale;
	return core_launch(ctx, a, d->n_heads, T, false);
}

/* q_abs[t, h, j] = Σ_d kv_b[h·(nope+v) + d][j] · q[t, h, d], d < nope (W_ukᵀ q_nope). */
template <bool BF16>
static __global__ void absorb_q_kernel(const void *w, const float *q, float *qabs, uint32_t n_heads,
				       uint32_t kv_lora, uint32_t nope, uint32_t rope, uint32_t v)
{
	const uint32_t j = blockIdx.x * blockDim.x + threadIdx.x, h = blockIdx.y, t = blockIdx.z;
	if (j >= kv_lora)
		return;
	const float *qn = q + ((size_t)t * n_heads + h) * (nope + rope);
	const size_t row0 = (size_t)h * (nope + v);
	float acc = 0.0f;
	for (uint32_t d = 0; d < nope; d++) {
		const size_t i = (row0 + d) * kv_lora + j;
		const float wv = BF16 ? kcu_bf16(((const uint16_t *)w)[i]) : ((const float *)w)[i];
		acc = fmaf(wv, qn[d], acc);
	}
	qabs[((size_t)t * n_heads + h) * kv_lora + j] = acc;
}

/* out[t, h, e] = Σ_j kv_b[h·(nope+v) + nope + e][j] · olat[t, h, j] (W_uv · o_lat):
 * one warp per (head, e) row. */
template <bool BF16>
static __global__ void __launch_bounds__(ATT_THREADS)
absorb_out_kernel(const void *w, const float *olat, float *out, uint32_t n_heads, uint32_t kv_lora,
		  uint32_t nope, uint32_t v)
{
	const uint32_t row = blockIdx.x * ATT_WARPS + (threadIdx.x >> 5), t = blockIdx.y;
	const int lane = threadIdx.x & 31;
	if (row >= n_heads * v)
		return;
	const uint32_t h = row / v, e = row % v;
	const size_t wr = ((size_t)h * (nope + v) + nope + e) * kv_lora;
	const float *ol = olat + ((size_t)t * n_heads + h) * kv_lora;
	float acc = 0.0f;
	for (uint32_t j = lane; j < kv_lora; j += 32) {
		const float wv = BF16 ? kcu_bf16(((const uint16_t *)w)[wr + j]) : ((const float *)w)[wr + j];
		acc = fmaf(wv, ol[j], acc);
	}
	acc = kcu_warp_sum(acc);
	if (lane == 0)
		out[((size_t)t * n_heads + h) * v + e] = acc;
}

extern "C" int kcu_mla_attn_absorbed(kcu_ctx *ctx, const kern_mla_dims *d, const kern_mat *kv_b,
				     const float *q, const float *ckv, const float *kpe, uint32_t T,
				     uint32_t pos0, float scale, float *out, float *scratch)
{
	int rc = check_dims(ctx, "kcu_mla_attn_absorbed", d, T, pos0);
	if (rc < 0)
		return rc;
	if (!kv_b || !kv_b->w)
		return kcu_bad_arg(ctx, "kcu_mla_attn_absorbed", "no kv_b");
	if (kv_b->format != K2_FORMAT_BF16 && kv_b->format != KERN_FORMAT_F32)
		return kcu_bad_arg(ctx, "kcu_mla_attn_absorbed", "kv_b must be bf16 or f32");
	if (kv_b->rows != d->n_heads * (d->nope + d->v) || kv_b->cols != d->kv_lora)
		return kcu_bad_arg(ctx, "kcu_mla_attn_absorbed",
				   "kv_b must be [n_heads·(nope + v), kv_lora]");
	if (T == 0)
		return 0;
	if (!q || !ckv || !kpe || !out || !scratch)
		return kcu_bad_arg(ctx, "kcu_mla_attn_absorbed", "null pointer");
	const bool bf16 = kv_b->format == K2_FORMAT_BF16;
	float *qabs = scratch, *olat = scratch + (size_t)T * d->n_heads * d->kv_lora;

	const dim3 gq(kcu_div_up(d->kv_lora, 128), d->n_heads, T);
	if (bf16)
		absorb_q_kernel<true><<<gq, 128, 0, ctx->stream>>>(kv_b->w, q, qabs, d->n_heads,
								    d->kv_lora, d->nope, d->rope, d->v);
	else
		absorb_q_kernel<false><<<gq, 128, 0, ctx->stream>>>(kv_b->w, q, qabs, d->n_heads,
								     d->kv_lora, d->nope, d->rope, d->v);
	KCU_CHECK_LAUNCH(ctx, "absorb_q_kernel");

	const uint32_t qk = d->nope + d->rope;
	AttnArgs a = {};
	a.qa = qabs;
	a.qa_ts = d->n_heads * d->kv_lora;
	a.qa_hs = d->kv_lora;
	a.qb = q + d->nope;
	a.qb_ts = d->n_heads * qk;
	a.qb_hs = qk;
	a.ka = ckv;
	a.ka_ps = d->kv_lora;
	a.ka_hs = 0;
	a.kb = kpe;
	a.kb_ps = d->rope;
	a.na = d->kv_lora;
	a.nb = d->rope;
	a.nv = d->kv_lora;
	a.out = olat;
	a.o_ts = d->n_heads * d->kv_lora;
	a.o_hs = d->kv_lora;
	a.pos0 = pos0;
	a.scale = scale;
	rc = core_launch(ctx, a, d->n_heads, T, true);
	if (rc < 0)
		return rc;

	const dim3 go(kcu_div_up((uint64_t)d->n_heads * d->v, ATT_WARPS), T);
	if (bf16)
		absorb_out_kernel<true><<<go, ATT_THREADS, 0, ctx->stream>>>(
			kv_b->w, olat, out, d->n_heads, d->kv_lora, d->nope, d->v);
	else
		absorb_out_kernel<false><<<go, ATT_THREADS, 0, ctx->stream>>>(
			kv_b->w, olat, out, d->n_heads, d->kv_lora, d->nope, d->v);
	KCU_CHECK_LAUNCH(ctx, "absorb_out_kernel");
	return 0;
}
