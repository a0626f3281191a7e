/* prefetch.c — router-driven expert prefetch. After layer l has produced the
 * hidden states x, the next MoE layer's router (its post_attention_layernorm
 * and gate, with the same group-limited top-k) is applied to x to predict
 * which experts that layer will use; the union over the batch goes to k2fs
 * as one setxattr user.k2.prefetch on experts/LLL and into the expert cache
 * through its background loaders. The prediction is compared with the
 * routing actually used to count precision (correct / predicted) and recall
 * (correct / used). Prediction never changes what is computed. */
#include "infer_impl.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>

uint32_t inf_next_moe_layer(const inf_model *m, uint32_t layer)
{
	for (uint32_t l = layer + 1; l < m->cfg.num_hidden_layers; l++)
		if (m->layers[l].moe)
			return l;
	return UINT32_MAX;
}

void inf_prefetch_after_layer(inf_engine *e, uint32_t layer, const float *x, uint32_t n)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	if (e->opts.prefetch != INF_PREFETCH_ROUTER || !e->cache)
		return;
	const uint32_t next = inf_next_moe_layer(m, layer);
	if (next == UINT32_MAX)
		return;
	const inf_layer *ly = &m->layers[next];
	const uint32_t H = c->hidden_size, E = c->n_routed_experts, k = c->num_experts_per_tok;
	inf_scratch *s = &e->s;
	int32_t *pred = e->pf_pred + (size_t)next * E;
	int32_t idx[4096];
	float w[4096];
	if (k > 4096)
		return;
	for (uint32_t t = 0; t < n; t++)
		kern_rmsnorm(s->pf_x + (size_t)t * H, x + (size_t)t * H, ly->mlp_norm, H,
			     c->rms_norm_eps);
	kern_matmul(&ly->router, s->pf_x, n, s->pf_logits);
	memset(pred, 0, sizeof(int32_t) * E);
	for (uint32_t t = 0; t < n; t++) {
		if (inf_route(c, s->pf_logits + (size_t)t * E, ly->router_bias, s->route_scratch,
			      idx, w) < 0)
			return;
		for (uint32_t j = 0; j < k; j++)
			pred[idx[j]] = 1;
	}
	inf_cache_prefetch(e->cache, next, e->pf_list, inf_prefetch_collect(e, next));
}

uint32_t inf_prefetch_collect(inf_engine *e, uint32_t layer)
{
	const uint32_t E = e->m->cfg.n_routed_experts;
	const int32_t *pred = e->pf_pred + (size_t)layer * E;
	uint32_t cnt = 0;
	for (uint32_t x = 0; x < E; x++)
		if (pred[x])
			e->pf_list[cnt++] = (int32_t)x;
	e->pf_has[layer] = 1;
	e->pf.predicted += cnt;
	e->pf.hints++;
	return cnt;
}

void inf_prefetch_account(inf_engine *e, uint32_t layer, const int32_t *routes, uint32_t n)
{
	const k2_model_config *c = &e->m->cfg;
	if (!e->pf_has || !e->pf_has[layer])
		return;
	const uint32_t E = c->n_routed_experts, k = c->num_experts_per_tok;
	const uint32_t L = c->num_hidden_layers;
	int32_t *pred = e->pf_pred + (size_t)layer * E;
	uint8_t used[4096];
	if (E > 4096)
		return;
	memset(used, 0, E);
	for (uint32_t t = 0; t < n; t++)
		for (uint32_t j = 0; j < k; j++) {
			int32_t x = routes[((size_t)t * L + layer) * k + j];
			if (x >= 0 && (uint32_t)x < E)
				used[x] = 1;
		}
	for (uint32_t x = 0; x < E; x++) {
		if (!used[x])
			continue;
		e->pf.used++;
		if (pred[x])
			e->pf.correct++;
	}
	e->pf_has[layer] = 0;
}

size_t inf_prefetch_hint_text(char *buf, size_t cap, const int32_t *experts, uint32_t n)
{
	size_t o = 0;
	if (cap)
		buf[0] = 0;
	for (uint32_t i = 0; i < n && o + 12 < cap; i++)
		o += (size_t)snprintf(buf + o, cap - o, "%s%" PRId32, i ? "," : "", experts[i]);
	return o;
}

void inf_prefetch_hint_send(const char *dir, uint32_t layer, const char *hint)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/experts/%03" PRIu32, dir, layer);
	/* k2fs takes it; a plain directory may refuse it */
	(void)setxattr(path, "user.k2.prefetch", hint, strlen(hint), 0);
}
