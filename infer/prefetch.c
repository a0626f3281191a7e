/* prefetch.c — router-driven expert prefetch, on the backend's ops. After
 * layer l has produced the hidden states x, the next MoE layer's router (its
 * post_attention_layernorm and gate, with the same group-limited top-k) is
 * applied to x to predict which experts that layer will use; the union over
 * the batch goes to k2fs as one setxattr user.k2.prefetch on experts/LLL and
 * into the expert directory's compute tier as background loads. The prediction is compared with the
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

int inf_prefetch_after_layer(inf_engine *e, uint32_t layer, uint32_t n, k2_err *err)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	const kern_backend_ops *B = e->ops;
	kern_backend *be = e->be;
	if (e->opts.prefetch != INF_PREFETCH_ROUTER || !e->experts)
		return 0;
	const uint32_t next = inf_next_moe_layer(m, layer);
	if (next == UINT32_MAX)
		return 0;
	const inf_blayer *bl = &e->w.layers[next];
	const uint32_t H = c->hidden_size, E = e->rp.n_experts, k = e->rp.top_k;
	int rc;
	/* y is free once added to x: it holds the next layer's normed input */
	if ((rc = B->rmsnorm(be, e->y, e->x, bl->mlp_norm, n, H, c->rms_norm_eps)) < 0 ||
	    (rc = B->matmul(be, &bl->router, e->y, n, e->logits, KERN_MM_EXACT)) < 0 ||
	    (rc = B->router(be, &e->rp, e->logits, bl->router_bias, n, e->route,
			    (float *)(e->route + (size_t)n * k))) < 0 ||
	    (rc = B->download(be, e->route_h, e->route, sizeof(int32_t) * n * k)) < 0)
		return inf_op_failed(e, rc, "prefetch router", layer, err);
	int32_t *pred = e->pf_pred + (size_t)next * E;
	memset(pred, 0, sizeof(int32_t) * E);
	for (uint32_t i = 0; i < n * k; i++)
		if (e->route_h[i] >= 0 && (uint32_t)e->route_h[i] < E)
			pred[e->route_h[i]] = 1;
	uint32_t cnt = 0;
	for (uint32_t x = 0; x < E; x++)
		if (pred[x])
			e->pf_list[cnt++] = (int32_t)x;
	e->pf_has[next] = 1;
	e->pf.predicted += cnt;
	e->pf.hints++;
	inf_experts_prefetch(e->experts, next, e->pf_list, cnt);
	return 0;
}

void inf_prefetch_account(inf_engine *e, uint32_t layer, const int32_t *routes, uint32_t n)
{
	const k2_model_config *c = &e->m->cfg;
	if (!e->pf_has || !e->pf_has[layer])
		return;
	const uint32_t E = c->n_routed_experts, k = c->num_experts_per_tok;
	const uint32_t L = c->num_hidden_layers;
	int32_t *pred = e->pf_pred + (size_t)layer * E;
	uint8_t used[KERN_MAX_EXPERTS];
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
	char path[INF_PATH_MAX];
	if (inf_path(path, sizeof(path), "%s/experts/%03" PRIu32, dir, layer) < 0)
		return;
	/* k2fs takes it; a plain directory may refuse it */
	(void)setxattr(path, "user.k2.prefetch", hint, strlen(hint), 0);
}
