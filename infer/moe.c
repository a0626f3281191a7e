/* moe.c — the feed-forward half of a decoder layer: the dense SwiGLU MLP
 * (first_k_dense_replace layers, and the shared experts), the DeepSeek-V3
 * noaux_tc router, and the routed experts read through the expert cache.
 *
 * Router (transformers' DeepseekV3TopkRouter): s = sigmoid(x·gateᵀ);
 * choice = s + e_score_correction_bias; group score = sum of the top 2 choices
 * of each of n_group groups; the topk_group best groups are kept, the others'
 * choices set to 0.0; top_k of choice; weights = s at those experts,
 * / (sum + 1e-20) when norm_topk_prob, × routed_scaling_factor.
 *
 * Each routed expert used by the batch is acquired once, applied to all the
 * tokens routed to it, and released; its outputs land in a per-(token, slot)
 * buffer summed afterwards in top-k order, so the result does not depend on
 * the order experts arrive in (cache hits first), on prefetching or on the
 * cache size. */
#include "infer_impl.h"

#include <errno.h>
#include <math.h>
#include <string.h>

int inf_route(const k2_model_config *c, const float *logits, const float *bias,
	      float *scratch, int32_t *idx, float *w)
{
	const uint32_t E = c->n_routed_experts, k = c->num_experts_per_tok;
	const uint32_t ng = c->n_group ? c->n_group : 1;
	const uint32_t kg = c->n_group ? c->topk_group : 1;
	if (E == 0 || k == 0 || k > E || E % ng || kg == 0 || kg > ng)
		return -EINVAL;
	const uint32_t gs = E / ng;
	float *s = scratch, *choice = scratch + E;
	for (uint32_t i = 0; i < E; i++) {
		s[i] = 1.0f / (1.0f + expf(-logits[i]));
		choice[i] = s[i] + (bias ? bias[i] : 0.0f);
	}
	if (ng > 1) {
		float gscore[1024];
		uint8_t keep[1024];
		if (ng > 1024)
			return -EINVAL;
		for (uint32_t g = 0; g < ng; g++) {
			float a = -INFINITY, b = -INFINITY;
			for (uint32_t i = g * gs; i < (g + 1) * gs; i++) {
				float v = choice[i];
				if (v > a) {
					b = a;
					a = v;
				} else if (v > b)
					b = v;
			}
			gscore[g] = gs > 1 ? a + b : a;
			keep[g] = 0;
		}
		for (uint32_t r = 0; r < kg; r++) {
			int best = -1;
			for (uint32_t g = 0; g < ng; g++)
				if (!keep[g] && (best < 0 || gscore[g] > gscore[best]))
					best = (int)g;
			keep[best] = 1;
		}
		for (uint32_t g = 0; g < ng; g++)
			if (!keep[g])
				for (uint32_t i = g * gs; i < (g + 1) * gs; i++)
					choice[i] = 0.0f;
	}
	/* top k by choice, descending; ties to the lower index; NaN ranks last */
	uint8_t taken[4096];
	if (E > 4096)
		return -EINVAL;
	memset(taken, 0, E);
	for (uint32_t j = 0; j < k; j++) {
		int best = -1;
		float bv = 0;
		for (uint32_t i = 0; i < E; i++) {
			if (taken[i])
				continue;
			float v = isnan(choice[i]) ? -INFINITY : choice[i];
			if (best < 0 || v > bv) {
				best = (int)i;
				bv = v;
			}
		}
		idx[j] = best;
		taken[best] = 1;
	}
	float sum = 0;
	for (uint32_t j = 0; j < k; j++) {
		w[j] = s[idx[j]];
		sum += w[j];
	}
	if (c->norm_topk_prob) {
		float den = sum + 1e-20f;
		for (uint32_t j = 0; j < k; j++)
			w[j] /= den;
	}
	for (uint32_t j = 0; j < k; j++)
		w[j] *= c->routed_scaling_factor;
	return 0;
}

int inf_mlp_forward(inf_engine *e, const inf_layer *ly, const float *xn, uint32_t n,
		    float *out)
{
	inf_scratch *s = &e->s;
	const uint32_t I = ly->mlp_inter;
	if (!ly->has_mlp) {
		memset(out, 0, sizeof(float) * n * e->m->cfg.hidden_size);
		return 0;
	}
	kern_matmul(&ly->gate, xn, n, s->mlp_g);
	kern_matmul(&ly->up, xn, n, s->mlp_u);
	kern_silu_mul(s->mlp_g, s->mlp_u, n * I);
	kern_matmul(&ly->down, s->mlp_g, n, out);
	return 0;
}

int inf_moe_forward(inf_engine *e, uint32_t layer, const float *xn, uint32_t n, float *out,
		    k2_err *err)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	const inf_layer *ly = &m->layers[layer];
	const uint32_t E = c->n_routed_experts, k = c->num_experts_per_tok;
	const uint32_t H = c->hidden_size, L = c->num_hidden_layers;
	const uint32_t I = c->moe_intermediate_size;
	inf_scratch *s = &e->s;
	float *logits = s->router_logits + (size_t)layer * e->max_batch * E;
	float *rw = s->route_w + (size_t)layer * e->max_batch * k;
	int rc;

	kern_matmul(&ly->router, xn, n, logits);
	for (uint32_t t = 0; t < n; t++) {
		int32_t *idx = e->routes + ((size_t)(e->routes_n + t) * L + layer) * k;
		if ((rc = inf_route(c, logits + (size_t)t * E, ly->router_bias, s->route_scratch,
				    idx, rw + (size_t)t * k)) < 0)
			return k2_err_set(err, rc, "%s/config.json: routing parameters unusable",
					  m->dir);
	}
	const int32_t *routes0 = e->routes + (size_t)e->routes_n * L * k;
	inf_prefetch_account(e, layer, routes0, n);

	/* Experts used, ordered: resident first, then in flight, then absent;
	 * within each by index. Each expert's state is read once: background
	 * loads change it meanwhile, and an expert read as absent in one pass and
	 * in flight in the next would be left out. */
	uint32_t *count = s->slot_list; /* [E] reused as counts, then states + 1 */
	memset(count, 0, sizeof(uint32_t) * E);
	for (uint32_t t = 0; t < n; t++)
		for (uint32_t j = 0; j < k; j++)
			count[routes0[((size_t)t * L + layer) * k + j]] = 1;
	uint32_t order[4096], n_used = 0;
	if (E > 4096)
		return k2_err_set(err, -EINVAL, "%s/config.json: more than 4096 experts", m->dir);
	for (uint32_t x = 0; x < E; x++)
		if (count[x])
			count[x] = 1 + (uint32_t)inf_cache_state(e->cache, layer, x);
	for (uint32_t want = 3; want >= 1; want--)
		for (uint32_t x = 0; x < E; x++)
			if (count[x] == want)
				order[n_used++] = x;

	for (uint32_t u = 0; u < n_used; u++) {
		const uint32_t x = order[u];
		uint32_t rows = 0;
		for (uint32_t t = 0; t < n; t++)
			for (uint32_t j = 0; j < k; j++)
				if (routes0[((size_t)t * L + layer) * k + j] == (int32_t)x) {
					s->tok_list[rows] = t * k + j;
					memcpy(s->moe_x + (size_t)rows * H, xn + (size_t)t * H,
					       sizeof(float) * H);
					rows++;
				}
		const inf_expert *ex;
		if ((rc = inf_cache_acquire(e->cache, layer, x, &ex, err)) < 0)
			return rc;
		kern_matmul(&ex->gate, s->moe_x, rows, s->mlp_g);
		kern_matmul(&ex->up, s->moe_x, rows, s->mlp_u);
		kern_silu_mul(s->mlp_g, s->mlp_u, rows * I);
		kern_matmul(&ex->down, s->mlp_g, rows, s->moe_y);
		e->expert_bytes_used += ex->lay.image_bytes;
		inf_cache_release(e->cache, ex);
		for (uint32_t r = 0; r < rows; r++)
			memcpy(s->moe_out + (size_t)s->tok_list[r] * H, s->moe_y + (size_t)r * H,
			       sizeof(float) * H);
	}
	inf_cache_layer_done(e->cache, layer);

	for (uint32_t t = 0; t < n; t++) {
		float *o = out + (size_t)t * H;
		memset(o, 0, sizeof(float) * H);
		for (uint32_t j = 0; j < k; j++)
			kern_axpy(o, rw[(size_t)t * k + j], s->moe_out + ((size_t)t * k + j) * H, H);
	}
	if (ly->has_mlp) {
		inf_mlp_forward(e, ly, xn, n, s->y2);
		for (size_t i = 0; i < (size_t)n * H; i++)
			out[i] += s->y2[i];
	}
	return 0;
}
