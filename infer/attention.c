/* attention.c — the attention half of a decoder layer: Multi-head Latent
 * Attention (MLA) of DeepSeek-V3 with YaRN RoPE over the compressed KV cache,
 * as transformers' DeepseekV3Attention computes it, on the backend's ops:
 *
 *   q     = q_b(rmsnorm(q_a(x), q_a_layernorm))   or q_proj(x); per head [nope | rope]
 *   kv_a  = kv_a_proj_with_mqa(x) = [c' (R) | k_pe (rope)]
 *   rope(q_pe); cache: c = rmsnorm(c', kv_a_layernorm), rope(k_pe)  (mla_cache_write)
 *   out   = o_proj(attention(q, cache))                              (mla_attn)
 *
 * and the YaRN parameters the rotations use (inf_rope_params). */
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

int inf_attn_forward(inf_engine *e, uint32_t l, uint32_t n, float *out, k2_err *err)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	const kern_backend_ops *B = e->ops;
	kern_backend *be = e->be;
	const inf_blayer *bl = &e->w.layers[l];
	const uint32_t nh = c->num_attention_heads, nope = c->qk_nope_head_dim;
	const uint32_t rope = c->qk_rope_head_dim, R = c->kv_lora_rank, qk = nope + rope;
	const size_t L = c->num_hidden_layers, P = e->max_ctx;
	int rc;
#define TRY(call, what) \
	if ((rc = (call)) < 0) \
		return inf_op_failed(e, rc, what, l, err);
	if (c->q_lora_rank) {
		TRY(B->matmul(be, &bl->q_a, e->xn, n, e->qa, e->mm), "q_a_proj");
		TRY(B->rmsnorm(be, e->qa, e->qa, bl->q_a_norm, n, c->q_lora_rank, INF_LORA_NORM_EPS),
		    "q_a_layernorm");
		TRY(B->matmul(be, &bl->q_b, e->qa, n, e->q, e->mm), "q_b_proj");
	} else
		TRY(B->matmul(be, &bl->q_proj, e->xn, n, e->q, e->mm), "q_proj");
	TRY(B->matmul(be, &bl->kv_a, e->xn, n, e->kva, e->mm), "kv_a_proj_with_mqa");
	/* the products above ran for every token; positions, the cache and the
	 * attention itself are each segment's own */
	uint32_t t = 0;
	for (uint32_t i = 0; i < e->n_segs; i++) {
		const uint32_t s = e->segs[i].seq, sn = e->segs[i].n, pos = e->seq_pos[s];
		float *ckv = e->ckv + ((size_t)s * L + l) * P * R;
		float *kpe = e->kpe + ((size_t)s * L + l) * P * rope;
		float *q = e->q + (size_t)t * nh * qk, *kva = e->kva + (size_t)t * (R + rope);
		TRY(B->rope(be, q, sn, nh, nh * qk, qk, nope, rope, pos, e->w.inv_freq,
			    m->rope_mscale), "rope of q");
		TRY(B->mla_cache_write(be, &e->md, kva, sn, pos, bl->kv_a_norm, INF_LORA_NORM_EPS,
				       e->w.inv_freq, m->rope_mscale, ckv, kpe), "KV cache write");
		TRY(B->mla_attn(be, bl->attn, q, ckv, kpe, sn, pos, m->attn_scale,
				e->attn + (size_t)t * nh * c->v_head_dim), "attention");
		t += sn;
	}
	TRY(B->matmul(be, &bl->o_proj, e->attn, n, out, e->mm), "o_proj");
#undef TRY
	return 0;
}
