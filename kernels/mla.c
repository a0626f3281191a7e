/* mla.c — Multi-head Latent Attention (MLA) of DeepSeek-V3 with YaRN RoPE
 * over the compressed KV cache, as transformers' DeepseekV3Attention computes
 * it in float32 (kernels.h: kern_rope_rows, kern_mla_cache_write,
 * kern_mla_prepare, kern_mla_attn):
 *
 *   c     = rmsnorm(kv_a[0 .. R))        -> cached per position
 *   k_pe  = rope(kv_a[R ..))  (one head)  -> cached per position
 *   [k_nope | v] per head = kv_b_proj(c)
 *   out   = softmax((q_nope·k_nope + q_pe·k_pe)·scale, causal) · v
 *
 * A batch of queries (a prompt chunk) expands k_nope / v from the cached c
 * block by block and folds the softmax online; one query (decode) absorbs
 * kv_b into the query and the output instead, so the cache is never expanded.
 * The products run on kern_matmul (threads, SIMD). */
#include "kernels_impl.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Cached positions expanded per block of the batch path. */
#define MLA_KVBLK 64u

/* ---------------------------------------------------------------- RoPE */

/* cos/sin of pos·inv_freq[i] (the float32 angle as torch forms it), × mscale. */
static void rope_cs(uint32_t half, const float *inv_freq, float mscale, uint32_t pos,
		    float *cs, float *sn)
{
	for (uint32_t i = 0; i < half; i++) {
		float ang = inv_freq[i] * (float)pos;
		cs[i] = (float)cos((double)ang) * mscale;
		sn[i] = (float)sin((double)ang) * mscale;
	}
}

/* Rotates v [2·half] in place: interleaved pairs in, de-interleaved out. */
static void rope_rotate(float *v, uint32_t half, const float *cs, const float *sn)
{
	float tmp[KERN_ROPE_MAX];
	memcpy(tmp, v, sizeof(float) * 2 * half);
	for (uint32_t i = 0; i < half; i++) {
		float a = tmp[2 * i], b = tmp[2 * i + 1];
		v[i] = a * cs[i] - b * sn[i];
		v[i + half] = b * cs[i] + a * sn[i];
	}
}

void kern_rope_rows(float *x, uint32_t n_tok, uint32_t n_heads, uint32_t tok_stride,
		    uint32_t head_stride, uint32_t rope_off, uint32_t rope_dim, uint32_t pos0,
		    const float *inv_freq, float mscale)
{
	const uint32_t half = rope_dim / 2;
	float cs[KERN_ROPE_MAX / 2], sn[KERN_ROPE_MAX / 2];
	if (rope_dim > KERN_ROPE_MAX)
		return;
	for (uint32_t t = 0; t < n_tok; t++) {
		rope_cs(half, inv_freq, mscale, pos0 + t, cs, sn);
		for (uint32_t h = 0; h < n_heads; h++)
			rope_rotate(x + (size_t)t * tok_stride + (size_t)h * head_stride + rope_off,
				    half, cs, sn);
	}
}

void kern_mla_cache_write(const kern_mla_dims *d, const float *kv_a, uint32_t T,
			  uint32_t pos0, const float *norm_w, float eps, const float *inv_freq,
			  float mscale, float *ckv, float *kpe)
{
	const uint32_t R = d->kv_lora, rope = d->rope;
	for (uint32_t t = 0; t < T; t++) {
		const float *src = kv_a + (size_t)t * (R + rope);
		const uint32_t pos = pos0 + t;
		kern_rmsnorm(ckv + (size_t)pos * R, src, norm_w, R, eps);
		memcpy(kpe + (size_t)pos * rope, src + R, sizeof(float) * rope);
	}
	kern_rope_rows(kpe + (size_t)pos0 * rope, T, 1, rope, 0, 0, rope, pos0, inv_freq, mscale);
}

/* ---------------------------------------------------------------- prepared weights */

struct kern_mla_w {
	kern_mla_dims d;
	kern_mat kv_b;       /* the caller's matrix */
	kern_mat *kn_t;      /* [n_heads] W_knᵀ [kv_lora, nope] */
	kern_mat *wv;        /* [n_heads] W_v [v, kv_lora] */
	void *bufs[2];       /* transposes, float32 W_v copies */
};

void kern_mla_free(kern_mla_w *w)
{
	if (!w)
		return;
	free(w->kn_t);
	free(w->wv);
	free(w->bufs[0]);
	free(w->bufs[1]);
	free(w);
}

const kern_mat *kern_mla_kv_b(const kern_mla_w *w) { return &w->kv_b; }

/* W_v of head h as a view into kv_b when its format allows rows to be cut
 * there (no scales, per-row scales, or fp8 blocks starting at the row). */
static int wv_view(const kern_mat *kb, uint32_t v0, uint32_t R, kern_mat *b)
{
	switch (kb->format) {
	case K2_FORMAT_BF16:
		b->w = (const uint16_t *)kb->w + (size_t)v0 * R;
		return 1;
	case KERN_FORMAT_F32:
		b->w = (const float *)kb->w + (size_t)v0 * R;
		return 1;
	case K2_FORMAT_INT8:
		b->w = (const int8_t *)kb->w + (size_t)v0 * R;
		b->s = (const float *)kb->s + v0;
		return 1;
	case K2_FORMAT_FP8_B128:
		if (v0 % 128)
			return 0;
		b->w = (const uint8_t *)kb->w + (size_t)v0 * R;
		b->s = (const float *)kb->s + (size_t)(v0 / 128) * ((R + 127) / 128);
		return 1;
	}
	return 0;
}

int kern_mla_prepare(const kern_mla_dims *d, const kern_mat *kv_b, kern_mla_w **out)
{
	const uint32_t nh = d->n_heads, nope = d->nope, vd = d->v, R = d->kv_lora;
	const uint32_t kvw = nope + vd;
	*out = NULL;
	if (kv_b->rows != nh * kvw || kv_b->cols != R || R == 0)
		return -EINVAL;
	kern_mla_w *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->d = *d;
	w->kv_b = *kv_b;
	const int bf16 = kv_b->format == K2_FORMAT_BF16;
	const size_t el = bf16 ? sizeof(uint16_t) : sizeof(float);
	w->kn_t = calloc(nh, sizeof(kern_mat));
	w->wv = calloc(nh, sizeof(kern_mat));
	w->bufs[0] = malloc(el * nh * R * nope + 1);
	float *row = malloc(sizeof(float) * R);
	uint32_t n_copies = 0;
	for (uint32_t h = 0; h < nh; h++) {
		kern_mat probe = {0};
		n_copies += !wv_view(kv_b, h * kvw + nope, R, &probe);
	}
	w->bufs[1] = malloc(sizeof(float) * n_copies * vd * R + 1);
	if (!w->kn_t || !w->wv || !w->bufs[0] || !w->bufs[1] || !row) {
		free(row);
		kern_mla_free(w);
		return -ENOMEM;
	}
	float *copies = w->bufs[1];
	for (uint32_t h = 0; h < nh; h++) {
		kern_mat *a = &w->kn_t[h], *b = &w->wv[h];
		const uint32_t r0 = h * kvw, v0 = h * kvw + nope;
		*a = (kern_mat){.format = bf16 ? K2_FORMAT_BF16 : KERN_FORMAT_F32, .rows = R,
				.cols = nope};
		if (bf16) {
			const uint16_t *src = kv_b->w;
			uint16_t *t = (uint16_t *)w->bufs[0] + (size_t)h * R * nope;
			for (uint32_t r = 0; r < nope; r++)
				for (uint32_t j = 0; j < R; j++)
					t[(size_t)j * nope + r] = src[(size_t)(r0 + r) * R + j];
			a->w = t;
		} else {
			float *t = (float *)w->bufs[0] + (size_t)h * R * nope;
			for (uint32_t r = 0; r < nope; r++) {
				kern_mat_row(kv_b, r0 + r, row);
				for (uint32_t j = 0; j < R; j++)
					t[(size_t)j * nope + r] = row[j];
			}
			a->w = t;
		}
		*b = (kern_mat){.format = kv_b->format, .rows = vd, .cols = R};
		if (!wv_view(kv_b, v0, R, b)) {
			for (uint32_t r = 0; r < vd; r++)
				kern_mat_row(kv_b, v0 + r, copies + (size_t)r * R);
			*b = (kern_mat){.format = KERN_FORMAT_F32, .rows = vd, .cols = R, .w = copies};
			copies += (size_t)vd * R;
		}
	}
	free(row);
	*out = w;
	return 0;
}

/* ---------------------------------------------------------------- attention */

/* What one head's share of an attention call needs. */
struct attn_ctx {
	const kern_mla_w *w;
	const float *q, *ckv, *kpe;
	uint32_t T, pos0, k0, nb;   /* the queries; the key block in hand */
	float scale;
	float *out;
	/* batch path: kvblk [nb, nh·(nope+v)] expanded keys / values; qT [nh, T, qk];
	 * per head h: kh [B, qk], vth [v, B], sblk [T, B], oblk [T, v], corr [T] at
	 * h · per_head; acc_m / acc_l [T, nh] online softmax state */
	float *kvblk, *qT, *head_scratch, *acc_m, *acc_l;
	size_t per_head;
	/* absorbed path: oc [nh, R], scores [nh, total] */
	float *oc, *scores;
};

/* One head over the key block k0 … k0 + nb of the batch path. */
static void batch_head(void *arg, uint32_t h)
{
	const struct attn_ctx *c = arg;
	const kern_mla_dims *d = &c->w->d;
	const uint32_t nh = d->n_heads, nope = d->nope, rope = d->rope, vd = d->v;
	const uint32_t qk = nope + rope, kvw = nope + vd, T = c->T, nb = c->nb, k0 = c->k0;
	const uint32_t t0 = k0 > c->pos0 ? k0 - c->pos0 : 0; /* first query seeing the block */
	const uint32_t nq = T - t0;
	float *kh = c->head_scratch + h * c->per_head, *vth = kh + (size_t)MLA_KVBLK * qk;
	float *sblk = vth + (size_t)vd * MLA_KVBLK, *oblk = sblk + (size_t)T * MLA_KVBLK;
	float *corr = oblk + (size_t)T * vd;
	for (uint32_t j = 0; j < nb; j++) {
		const float *kv = c->kvblk + ((size_t)j * nh + h) * kvw;
		memcpy(kh + (size_t)j * qk, kv, sizeof(float) * nope);
		memcpy(kh + (size_t)j * qk + nope, c->kpe + (size_t)(k0 + j) * rope, sizeof(float) * rope);
		for (uint32_t r = 0; r < vd; r++)
			vth[(size_t)r * nb + j] = kv[nope + r];
	}
	const kern_mat km = {.format = KERN_FORMAT_F32, .rows = nb, .cols = qk, .w = kh};
	const kern_mat vm = {.format = KERN_FORMAT_F32, .rows = vd, .cols = nb, .w = vth};
	kern_matmul(&km, c->qT + ((size_t)h * T + t0) * qk, nq, sblk);
	for (uint32_t i = 0; i < nq; i++) {
		const uint32_t t = t0 + i, qpos = c->pos0 + t;
		const uint32_t valid = qpos + 1 - k0 < nb ? qpos + 1 - k0 : nb;
		float *row = sblk + (size_t)i * nb;
		float mx = -INFINITY;
		for (uint32_t j = 0; j < valid; j++) {
			row[j] *= c->scale;
			if (row[j] > mx)
				mx = row[j];
		}
		float *am = &c->acc_m[t * nh + h], *al = &c->acc_l[t * nh + h];
		const float mnew = *am > mx ? *am : mx;
		corr[i] = *am == -INFINITY ? 0.0f : expf(*am - mnew);
		float sum = 0;
		for (uint32_t j = 0; j < nb; j++) {
			row[j] = j < valid ? expf(row[j] - mnew) : 0.0f;
			sum += row[j];
		}
		*al = *al * corr[i] + sum;
		*am = mnew;
	}
	kern_matmul(&vm, sblk, nq, oblk);
	for (uint32_t i = 0; i < nq; i++) {
		float *o = c->out + ((size_t)(t0 + i) * nh + h) * vd;
		const float *ob = oblk + (size_t)i * vd;
		for (uint32_t r = 0; r < vd; r++)
			o[r] = o[r] * corr[i] + ob[r];
	}
}

/* Batch attention of T queries over positions [0, pos0 + T), keys expanded
 * from the cached c block by block (kv_b_proj); each head's scores and
 * weighted values are products and the softmax is folded online across
 * blocks, the heads of a block in parallel:
 *   s = Q_h K_hᵀ·scale (causal),  m' = max(m, max s),  l' = l·e^(m-m') + Σ e^(s-m'),
 *   o' = o·e^(m-m') + e^(s-m') V_h,  out = o / l. */
static int attend_batch(const kern_mla_w *w, const float *q, const float *ckv,
			const float *kpe, uint32_t T, uint32_t pos0, float scale, float *out,
			kern_arena *a)
{
	const kern_mla_dims *d = &w->d;
	const uint32_t nh = d->n_heads, nope = d->nope, rope = d->rope, vd = d->v;
	const uint32_t R = d->kv_lora, qk = nope + rope, kvw = nope + vd;
	const uint32_t total = pos0 + T, B = MLA_KVBLK;
	struct attn_ctx c = {.w = w, .q = q, .ckv = ckv, .kpe = kpe, .T = T, .pos0 = pos0,
			     .scale = scale, .out = out};
	c.per_head = (size_t)B * qk + (size_t)vd * B + (size_t)T * B + (size_t)T * vd + T;
	c.per_head = (c.per_head + 15) & ~(size_t)15;
	c.kvblk = kern_arena_alloc(a, sizeof(float) * B * nh * kvw);
	c.qT = kern_arena_alloc(a, sizeof(float) * T * nh * qk);
	c.head_scratch = kern_arena_alloc(a, sizeof(float) * c.per_head * nh);
	c.acc_m = kern_arena_alloc(a, sizeof(float) * T * nh);
	c.acc_l = kern_arena_alloc(a, sizeof(float) * T * nh);
	if (!c.kvblk || !c.qT || !c.head_scratch || !c.acc_m || !c.acc_l)
		return -ENOMEM;

	/* queries per head: qT [nh, T, qk] */
	for (uint32_t t = 0; t < T; t++)
		for (uint32_t h = 0; h < nh; h++)
			memcpy(c.qT + ((size_t)h * T + t) * qk, q + ((size_t)t * nh + h) * qk,
			       sizeof(float) * qk);
	for (uint32_t i = 0; i < T * nh; i++) {
		c.acc_m[i] = -INFINITY;
		c.acc_l[i] = 0;
	}
	memset(out, 0, sizeof(float) * T * nh * vd);
	for (uint32_t k0 = 0; k0 < total; k0 += B) {
		c.k0 = k0;
		c.nb = total - k0 < B ? total - k0 : B;
		kern_matmul(&w->kv_b, ckv + (size_t)k0 * R, c.nb, c.kvblk);
		kern_parallel_for(nh, batch_head, &c);
	}
	for (uint32_t t = 0; t < T; t++)
		for (uint32_t h = 0; h < nh; h++) {
			float inv = 1.0f / c.acc_l[t * nh + h];
			float *o = out + ((size_t)t * nh + h) * vd;
			for (uint32_t r = 0; r < vd; r++)
				o[r] *= inv;
		}
	return 0;
}

/* One head of the absorbed path: softmax of its scores, o_c = Σ p·c, out. */
static void one_head(void *arg, uint32_t h)
{
	const struct attn_ctx *c = arg;
	const kern_mla_dims *d = &c->w->d;
	const uint32_t R = d->kv_lora, total = c->pos0 + 1;
	float *sc = c->scores + (size_t)h * total;
	kern_softmax(sc, total);
	float *o = c->oc + (size_t)h * R;
	memset(o, 0, sizeof(float) * R);
	for (uint32_t j = 0; j < total; j++)
		kern_axpy(o, sc[j], c->ckv + (size_t)j * R, R);
	kern_matmul(&c->w->wv[h], o, 1, c->out + (size_t)h * d->v);
}

/* One query at position pos0 with kv_b absorbed; writes out [nh·v]:
 *   q_c[h] = W_kn[h]ᵀ q_nope[h]                       (kn_t[h], per head)
 *   s[h, j] = (q_c[h]·c_j + q_pe[h]·k_pe_j)·scale     (the cache as a matrix, batch nh)
 *   o_c[h] = Σ_j softmax(s[h])_j c_j                  (the heads in parallel)
 *   out[h] = W_v[h] o_c[h]                            (wv[h], per head) */
static int attend_one(const kern_mla_w *w, const float *q, const float *ckv, const float *kpe,
		      uint32_t pos0, float scale, float *out, kern_arena *a)
{
	const kern_mla_dims *d = &w->d;
	const uint32_t nh = d->n_heads, nope = d->nope, rope = d->rope;
	const uint32_t R = d->kv_lora, qk = nope + rope, total = pos0 + 1;
	struct attn_ctx c = {.w = w, .ckv = ckv, .pos0 = pos0, .out = out};
	float *qc = kern_arena_alloc(a, sizeof(float) * nh * R);
	float *qpe = kern_arena_alloc(a, sizeof(float) * nh * rope);
	float *scores2 = kern_arena_alloc(a, sizeof(float) * nh * total);
	c.oc = kern_arena_alloc(a, sizeof(float) * nh * R);
	c.scores = kern_arena_alloc(a, sizeof(float) * nh * total);
	if (!qc || !c.oc || !qpe || !c.scores || !scores2)
		return -ENOMEM;
	for (uint32_t h = 0; h < nh; h++) {
		kern_matmul(&w->kn_t[h], q + (size_t)h * qk, 1, qc + (size_t)h * R);
		memcpy(qpe + (size_t)h * rope, q + (size_t)h * qk + nope, sizeof(float) * rope);
	}
	const kern_mat cm = {.format = KERN_FORMAT_F32, .rows = total, .cols = R, .w = ckv};
	const kern_mat pm = {.format = KERN_FORMAT_F32, .rows = total, .cols = rope, .w = kpe};
	kern_matmul(&cm, qc, nh, c.scores);
	kern_matmul(&pm, qpe, nh, scores2);
	for (size_t i = 0; i < (size_t)nh * total; i++)
		c.scores[i] = (c.scores[i] + scores2[i]) * scale;
	kern_parallel_for(nh, one_head, &c);
	return 0;
}

int kern_mla_attn(const kern_mla_w *w, const float *q, const float *ckv, const float *kpe,
		  uint32_t T, uint32_t pos0, float scale, float *out, kern_arena *a)
{
	if (T == 0)
		return 0;
	kern_arena_reset(a);
	if (T == 1)
		return attend_one(w, q, ckv, kpe, pos0, scale, out, a);
	return attend_batch(w, q, ckv, kpe, T, pos0, scale, out, a);
}
