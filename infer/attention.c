/* attention.c — Multi-head Latent Attention (MLA) of DeepSeek-V3 with YaRN
 * RoPE and the compressed KV cache, as transformers' DeepseekV3Attention
 * computes it in float32:
 *
 *   q     = q_b(rmsnorm(q_a(x), q_a_layernorm, 1e-6))   or q_proj(x); per head [nope | rope]
 *   ckv   = kv_a_proj_with_mqa(x) = [c' (R) | k_pe (rope)]
 *   c     = rmsnorm(c', kv_a_layernorm, 1e-6)        -> cached per layer and position
 *   k_pe  = rope(k_pe) (one head, shared)             -> cached per layer and position
 *   [k_nope | v] per head = kv_b_proj(c)
 *   out   = o_proj(softmax((q_nope·k_nope + q_pe·k_pe)·scale, causal) · v)
 *
 * A batch of tokens (the prompt) expands k_nope/v from the cached c block by
 * block with kv_b_proj and folds the softmax online; one token (decode)
 * absorbs kv_b into the query and the output instead (q_c = W_knᵀ q_nope,
 * scores against c directly, out = W_v Σ p·c), so it never expands the cache.
 * Both are exact in float32 up to rounding. */
#include "infer_impl.h"

#include <math.h>
#include <string.h>

static double yarn_get_mscale(double scale, double mscale)
{
	if (scale <= 1)
		return 1.0;
	return 0.1 * mscale * log(scale) + 1.0;
}

/* The correction dimension of transformers' find_correction_dim. */
static double yarn_corr_dim(double n_rot, double dim, double base, double max_pos)
{
	return dim * log(max_pos / (n_rot * 2 * M_PI)) / (2 * log(base));
}

void inf_rope_params(const k2_model_config *c, float *inv_freq, float *attn_factor,
		     float *softmax_scale)
{
	const uint32_t d = c->qk_rope_head_dim, half = d / 2;
	const float base = c->rope_theta;
	double scale = pow((double)(c->qk_nope_head_dim + c->qk_rope_head_dim), -0.5);
	*attn_factor = 1.0f;
	for (uint32_t i = 0; i < half; i++) {
		/* float32 as torch computes base ** (arange(0, d, 2).float() / d) */
		float pos_freq = powf(base, (float)(2 * i) / (float)d);
		inv_freq[i] = 1.0f / pos_freq;
	}
	if (!c->rope_yarn) {
		*softmax_scale = (float)scale;
		return;
	}
	const double factor = c->rope_factor;
	if (c->rope_mscale != 0 && c->rope_mscale_all_dim != 0)
		*attn_factor = (float)(yarn_get_mscale(factor, c->rope_mscale) /
				       yarn_get_mscale(factor, c->rope_mscale_all_dim));
	else
		*attn_factor = (float)yarn_get_mscale(factor, 1.0);
	if (c->rope_mscale_all_dim != 0) {
		double ms = yarn_get_mscale(factor, c->rope_mscale_all_dim);
		scale = scale * ms * ms;
	}
	*softmax_scale = (float)scale;

	const double beta_fast = c->rope_beta_fast != 0 ? c->rope_beta_fast : 32;
	const double beta_slow = c->rope_beta_slow != 0 ? c->rope_beta_slow : 1;
	const double orig = c->rope_original_max_position ? c->rope_original_max_position
							  : c->max_position_embeddings;
	double low = floor(yarn_corr_dim(beta_fast, d, base, orig));
	double high = ceil(yarn_corr_dim(beta_slow, d, base, orig));
	if (low < 0)
		low = 0;
	if (high > d - 1)
		high = d - 1;
	if (low == high)
		high += 0.001;
	for (uint32_t i = 0; i < half; i++) {
		float pos_freq = powf(base, (float)(2 * i) / (float)d);
		float extra = 1.0f / pos_freq;
		float inter = 1.0f / ((float)factor * pos_freq);
		float ramp = (float)(((double)i - low) / (high - low));
		if (ramp < 0)
			ramp = 0;
		if (ramp > 1)
			ramp = 1;
		float mask = 1.0f - ramp; /* inv_freq_extrapolation_factor */
		inv_freq[i] = inter * (1.0f - mask) + extra * mask;
	}
}

/* cos/sin of pos·inv_freq[i] (float32 angle as torch forms it), × mscale. */
static void rope_cs(uint32_t half, const float *inv_freq, float mscale, uint32_t pos,
		    float *cs, float *sn)
{
	for (uint32_t i = 0; i < half; i++) {
		float ang = inv_freq[i] * (float)pos;
		cs[i] = (float)cos((double)ang) * mscale;
		sn[i] = (float)sin((double)ang) * mscale;
	}
}

/* Rotates x [2·half] with precomputed cos/sin; output in HF's de-interleaved
 * order (first the even elements rotated, then the odd ones). */
static void rope_rotate(float *x, uint32_t half, const float *cs, const float *sn)
{
	float tmp[2 * 512];
	memcpy(tmp, x, sizeof(float) * 2 * half);
	for (uint32_t i = 0; i < half; i++) {
		float a = tmp[2 * i], b = tmp[2 * i + 1];
		x[i] = a * cs[i] - b * sn[i];
		x[i + half] = b * cs[i] + a * sn[i];
	}
}

void inf_rope_apply(float *x, uint32_t d, const float *inv_freq, float mscale, uint32_t pos)
{
	float cs[512], sn[512];
	uint32_t half = d / 2;
	if (half > 512)
		return; /* the model loader rejects qk_rope_head_dim > 1024 */
	rope_cs(half, inv_freq, mscale, pos, cs, sn);
	rope_rotate(x, half, cs, sn);
}

/* Batch attention over cached positions [0, pos+n) for queries q [n, nh·qk]
 * at positions pos…pos+n-1; writes attn [n, nh·v]. Keys are expanded from the
 * cached c block by block (kv_b_proj), each head's scores and weighted values
 * are products (kern_matmul) and the softmax is folded online across blocks:
 *   s = Q_h K_hᵀ·scale (causal),  m' = max(m, max s),  l' = l·e^(m-m') + Σ e^(s-m'),
 *   o' = o·e^(m-m') + e^(s-m') V_h,  out = o / l. */
static void attend_batch(inf_engine *e, uint32_t layer, uint32_t n)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	const inf_layer *ly = &m->layers[layer];
	const uint32_t nh = c->num_attention_heads, nope = c->qk_nope_head_dim;
	const uint32_t rope = c->qk_rope_head_dim, vd = c->v_head_dim, R = c->kv_lora_rank;
	const uint32_t qk = nope + rope, kvw = nope + vd;
	const float scale = m->attn_scale;
	inf_scratch *s = &e->s;
	const float *kc = e->kv_c + (size_t)layer * e->max_ctx * R;
	const float *kp = e->kv_pe + (size_t)layer * e->max_ctx * rope;
	const uint32_t total = e->pos + n;

	/* queries per head: qT [nh, n, qk] */
	for (uint32_t t = 0; t < n; t++)
		for (uint32_t h = 0; h < nh; h++)
			memcpy(s->qT + ((size_t)h * n + t) * qk, s->q + ((size_t)t * nh + h) * qk,
			       sizeof(float) * qk);
	for (uint32_t i = 0; i < n * nh; i++) {
		s->acc_m[i] = -INFINITY;
		s->acc_l[i] = 0;
	}
	memset(s->attn, 0, sizeof(float) * n * nh * vd);
	for (uint32_t k0 = 0; k0 < total; k0 += INF_KVBLK) {
		const uint32_t nb = total - k0 < INF_KVBLK ? total - k0 : INF_KVBLK;
		const uint32_t t0 = k0 > e->pos ? k0 - e->pos : 0; /* first query seeing the block */
		const uint32_t nq = n - t0;
		kern_matmul(&ly->kv_b, kc + (size_t)k0 * R, nb, s->kvblk);
		for (uint32_t h = 0; h < nh; h++) {
			for (uint32_t j = 0; j < nb; j++) {
				const float *kv = s->kvblk + ((size_t)j * nh + h) * kvw;
				memcpy(s->kh + (size_t)j * qk, kv, sizeof(float) * nope);
				memcpy(s->kh + (size_t)j * qk + nope, kp + (size_t)(k0 + j) * rope,
				       sizeof(float) * rope);
				for (uint32_t r = 0; r < vd; r++)
					s->vth[(size_t)r * nb + j] = kv[nope + r];
			}
			const kern_mat km = {.format = KERN_FORMAT_F32, .rows = nb, .cols = qk, .w = s->kh};
			const kern_mat vm = {.format = KERN_FORMAT_F32, .rows = vd, .cols = nb, .w = s->vth};
			kern_matmul(&km, s->qT + ((size_t)h * n + t0) * qk, nq, s->sblk);
			for (uint32_t i = 0; i < nq; i++) {
				const uint32_t t = t0 + i, qpos = e->pos + t;
				const uint32_t valid = qpos + 1 - k0 < nb ? qpos + 1 - k0 : nb;
				float *row = s->sblk + (size_t)i * nb;
				float mx = -INFINITY;
				for (uint32_t j = 0; j < valid; j++) {
					row[j] *= scale;
					if (row[j] > mx)
						mx = row[j];
				}
				float *am = &s->acc_m[t * nh + h], *al = &s->acc_l[t * nh + h];
				const float mnew = *am > mx ? *am : mx;
				s->corr[i] = *am == -INFINITY ? 0.0f : expf(*am - mnew);
				float sum = 0;
				for (uint32_t j = 0; j < nb; j++) {
					row[j] = j < valid ? expf(row[j] - mnew) : 0.0f;
					sum += row[j];
				}
				*al = *al * s->corr[i] + sum;
				*am = mnew;
			}
			kern_matmul(&vm, s->sblk, nq, s->oblk);
			for (uint32_t i = 0; i < nq; i++) {
				float *o = s->attn + ((size_t)(t0 + i) * nh + h) * vd;
				const float *ob = s->oblk + (size_t)i * vd;
				for (uint32_t r = 0; r < vd; r++)
					o[r] = o[r] * s->corr[i] + ob[r];
			}
		}
	}
	for (uint32_t t = 0; t < n; t++)
		for (uint32_t h = 0; h < nh; h++) {
			float inv = 1.0f / s->acc_l[t * nh + h];
			float *o = s->attn + ((size_t)t * nh + h) * vd;
			for (uint32_t r = 0; r < vd; r++)
				o[r] *= inv;
		}
}

/* One query at position e->pos with kv_b absorbed; writes attn [nh·v]:
 *   q_c[h] = W_kn[h]ᵀ q_nope[h]                       (kn_t[h], per head)
 *   s[h, j] = (q_c[h]·c_j + q_pe[h]·k_pe_j)·scale     (the cache as a matrix, batch nh)
 *   o_c[h] = Σ_j softmax(s[h])_j c_j
 *   out[h] = W_v[h] o_c[h]                            (wv[h], per head) */
static void attend_one(inf_engine *e, uint32_t layer)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	const inf_layer *ly = &m->layers[layer];
	const uint32_t nh = c->num_attention_heads, nope = c->qk_nope_head_dim;
	const uint32_t rope = c->qk_rope_head_dim, vd = c->v_head_dim, R = c->kv_lora_rank;
	const uint32_t qk = nope + rope;
	const float scale = m->attn_scale;
	inf_scratch *s = &e->s;
	const float *kc = e->kv_c + (size_t)layer * e->max_ctx * R;
	const float *kp = e->kv_pe + (size_t)layer * e->max_ctx * rope;
	const uint32_t total = e->pos + 1;

	for (uint32_t h = 0; h < nh; h++) {
		kern_matmul(&ly->kn_t[h], s->q + (size_t)h * qk, 1, s->qc + (size_t)h * R);
		memcpy(s->qpe + (size_t)h * rope, s->q + (size_t)h * qk + nope, sizeof(float) * rope);
	}
	const kern_mat cm = {.format = KERN_FORMAT_F32, .rows = total, .cols = R, .w = kc};
	const kern_mat pm = {.format = KERN_FORMAT_F32, .rows = total, .cols = rope, .w = kp};
	kern_matmul(&cm, s->qc, nh, s->scores);
	kern_matmul(&pm, s->qpe, nh, s->scores2);
	for (uint32_t h = 0; h < nh; h++) {
		float *sc = s->scores + (size_t)h * total;
		const float *s2 = s->scores2 + (size_t)h * total;
		for (uint32_t j = 0; j < total; j++)
			sc[j] = (sc[j] + s2[j]) * scale;
		kern_softmax(sc, total);
		float *oc = s->oc + (size_t)h * R;
		memset(oc, 0, sizeof(float) * R);
		for (uint32_t j = 0; j < total; j++)
			kern_axpy(oc, sc[j], kc + (size_t)j * R, R);
		kern_matmul(&ly->wv[h], oc, 1, s->attn + (size_t)h * vd);
	}
}

int inf_attn_forward(inf_engine *e, uint32_t layer, const float *xn, uint32_t n, float *out)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	const inf_layer *ly = &m->layers[layer];
	const uint32_t nh = c->num_attention_heads, nope = c->qk_nope_head_dim;
	const uint32_t rope = c->qk_rope_head_dim, R = c->kv_lora_rank, half = rope / 2;
	const uint32_t qk = nope + rope;
	inf_scratch *s = &e->s;
	float cs[512], sn[512];

	if (c->q_lora_rank) {
		const uint32_t Q = c->q_lora_rank;
		kern_matmul(&ly->q_a, xn, n, s->qa);
		for (uint32_t t = 0; t < n; t++)
			kern_rmsnorm(s->qa + (size_t)t * Q, s->qa + (size_t)t * Q, ly->q_a_norm, Q,
				     1e-6f);
		kern_matmul(&ly->q_b, s->qa, n, s->q);
	} else
		kern_matmul(&ly->q_proj, xn, n, s->q);
	kern_matmul(&ly->kv_a, xn, n, s->ckv);

	float *kc = e->kv_c + (size_t)layer * e->max_ctx * R;
	float *kp = e->kv_pe + (size_t)layer * e->max_ctx * rope;
	for (uint32_t t = 0; t < n; t++) {
		const uint32_t pos = e->pos + t;
		const float *ck = s->ckv + (size_t)t * (R + rope);
		rope_cs(half, m->rope_inv_freq, m->rope_mscale, pos, cs, sn);
		kern_rmsnorm(kc + (size_t)pos * R, ck, ly->kv_a_norm, R, 1e-6f);
		memcpy(kp + (size_t)pos * rope, ck + R, sizeof(float) * rope);
		rope_rotate(kp + (size_t)pos * rope, half, cs, sn);
		for (uint32_t h = 0; h < nh; h++)
			rope_rotate(s->q + ((size_t)t * nh + h) * qk + nope, half, cs, sn);
	}
	if (n == 1)
		attend_one(e, layer);
	else
		attend_batch(e, layer, n);
	kern_matmul(&ly->o_proj, s->attn, n, out);
	return 0;
}
