/* forward.c — the engine: KV cache, scratch, and the plain forward pass of
 * DeepseekV3ForCausalLM, one clear sequence of steps per layer:
 *
 *   x = embed[ids]
 *   per layer l:  xn = rmsnorm(x, input_layernorm)      x += attn(xn)      (attention.c)
 *                 xn = rmsnorm(x, post_attention_layernorm)
 *                 x += mlp(xn) or moe(xn)                                   (moe.c)
 *                 prefetch: predict the next MoE layer's experts from x     (prefetch.c)
 *   logits = lm_head(rmsnorm(x, norm))
 *
 * A batch of tokens (the prompt) goes through every matrix as one product of
 * batch n, in chunks of at most max_batch tokens; decode runs one token. */
#include "infer_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint32_t max3(uint32_t a, uint32_t b, uint32_t c)
{
	uint32_t m = a > b ? a : b;
	return m > c ? m : c;
}

uint32_t inf_ram_cache_slots(const inf_model *m, uint32_t count, uint64_t bytes,
			     k2_err *err)
{
	const k2_model_config *c = &m->cfg;
	uint64_t all = (uint64_t)m->n_moe_layers * c->n_routed_experts;
	if (count)
		return count < all ? count : (uint32_t)all;
	uint32_t first = 0;
	while (first < c->num_hidden_layers && !m->layers[first].moe)
		first++;
	char rel[64], path[4096];
	inf_expert_path(rel, sizeof(rel), first, 0);
	snprintf(path, sizeof(path), "%s/%s", m->dir, rel);
	struct stat st;
	if (stat(path, &st) < 0) {
		int e = errno;
		k2_err_set(err, -e, "%s: %s", path, e == ENOENT ? "missing" : strerror(e));
		return 0;
	}
	uint64_t one = st.st_size > 0 ? (uint64_t)st.st_size : 1;
	uint64_t n;
	if (bytes)
		n = bytes / one;
	else {
		long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
		uint64_t ram = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 8ull << 30;
		n = all * one <= ram / 2 ? all : ram / 4 / one;
	}
	if (n < 1)
		n = 1;
	return n < all ? (uint32_t)n : (uint32_t)all;
}

int inf_engine_create(inf_model *m, const inf_engine_opts *o, inf_engine **out, k2_err *err)
{
	const k2_model_config *c = &m->cfg;
	int rc;
	*out = NULL;
	inf_engine *e = calloc(1, sizeof(*e));
	if (!e)
		return k2_err_set(err, -ENOMEM, "out of memory");
	e->m = m;
	e->opts = *o;
	e->max_ctx = o->max_ctx ? o->max_ctx : 4096;
	e->max_batch = o->max_batch ? o->max_batch : 256;
	if (e->max_batch > e->max_ctx)
		e->max_batch = e->max_ctx;
	if (o->backend == INF_BACKEND_CUDA && e->max_batch > 65535)
		e->max_batch = 65535; /* kcu_embed, kcu_mla_attn_full: ≤ 65535 tokens a call */
	const uint32_t B = e->max_batch, H = c->hidden_size, L = c->num_hidden_layers;
	const uint32_t nh = c->num_attention_heads, nope = c->qk_nope_head_dim;
	const uint32_t rope = c->qk_rope_head_dim, vd = c->v_head_dim, R = c->kv_lora_rank;
	const uint32_t E = c->n_routed_experts, k = c->num_experts_per_tok ? c->num_experts_per_tok : 1;
	const uint32_t I = max3(c->intermediate_size, c->moe_intermediate_size * c->n_shared_experts,
				c->moe_intermediate_size);
	inf_scratch *s = &e->s;
	/* on CUDA the KV cache and the attention scratch live on the device */
	const uint32_t P = o->backend == INF_BACKEND_CUDA ? 1 : e->max_ctx;
	e->kv_c = inf_alloc(sizeof(float) * L * P * R);
	e->kv_pe = inf_alloc(sizeof(float) * L * P * rope);
	s->x = inf_alloc(sizeof(float) * B * H);
	s->xn = inf_alloc(sizeof(float) * B * H);
	s->y = inf_alloc(sizeof(float) * B * H);
	s->y2 = inf_alloc(sizeof(float) * B * H);
	s->qa = inf_alloc(sizeof(float) * B * (c->q_lora_rank > R + rope ? c->q_lora_rank : R + rope));
	s->q = inf_alloc(sizeof(float) * B * nh * (nope + rope));
	s->ckv = inf_alloc(sizeof(float) * B * (R + rope));
	s->attn = inf_alloc(sizeof(float) * B * nh * vd);
	s->kvblk = inf_alloc(sizeof(float) * INF_KVBLK * nh * (nope + vd));
	s->qT = inf_alloc(sizeof(float) * B * nh * (nope + rope));
	s->kh = inf_alloc(sizeof(float) * INF_KVBLK * (nope + rope));
	s->vth = inf_alloc(sizeof(float) * INF_KVBLK * vd);
	s->sblk = inf_alloc(sizeof(float) * B * INF_KVBLK);
	s->oblk = inf_alloc(sizeof(float) * B * vd);
	s->corr = inf_alloc(sizeof(float) * B);
	s->acc_m = inf_alloc(sizeof(float) * B * nh);
	s->acc_l = inf_alloc(sizeof(float) * B * nh);
	s->qc = inf_alloc(sizeof(float) * nh * R);
	s->oc = inf_alloc(sizeof(float) * nh * R);
	s->rowbuf = inf_alloc(sizeof(float) * (R > H ? R : H));
	s->scores = inf_alloc(sizeof(float) * nh * P);
	s->scores2 = inf_alloc(sizeof(float) * nh * P);
	s->qpe = inf_alloc(sizeof(float) * nh * rope);
	s->mlp_g = inf_alloc(sizeof(float) * B * I);
	s->mlp_u = inf_alloc(sizeof(float) * B * I);
	s->moe_x = inf_alloc(sizeof(float) * B * H);
	s->moe_y = inf_alloc(sizeof(float) * B * H);
	s->moe_out = inf_alloc(sizeof(float) * B * k * H);
	s->router_logits = inf_alloc(sizeof(float) * L * B * (E ? E : 1));
	s->route_w = inf_alloc(sizeof(float) * L * B * k);
	s->route_scratch = inf_alloc(sizeof(float) * 2 * (E ? E : 1));
	s->pf_x = inf_alloc(sizeof(float) * B * H);
	s->pf_logits = inf_alloc(sizeof(float) * B * (E ? E : 1));
	s->tok_list = inf_alloc(sizeof(uint32_t) * B * k);
	s->slot_list = inf_alloc(sizeof(uint32_t) * (B * k > E ? B * k : E));
	e->pf_pred = inf_alloc(sizeof(int32_t) * L * (E ? E : 1));
	e->pf_list = inf_alloc(sizeof(int32_t) * (E ? E : 1));
	e->pf_has = inf_alloc(L);
	void *all[] = {e->kv_c, e->kv_pe, s->x, s->xn, s->y, s->y2, s->qa, s->q, s->ckv,
		       s->attn, s->kvblk, s->qT, s->kh, s->vth, s->sblk, s->oblk, s->corr, s->acc_m, s->acc_l, s->qc, s->oc, s->rowbuf,
		       s->scores, s->scores2, s->qpe, s->mlp_g, s->mlp_u, s->moe_x, s->moe_y, s->moe_out,
		       s->router_logits, s->route_w, s->route_scratch, s->pf_x, s->pf_logits,
		       s->tok_list, s->slot_list, e->pf_pred, e->pf_list, e->pf_has};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		if (!all[i]) {
			rc = k2_err_set(err, -ENOMEM,
					"out of memory for the KV cache of %u positions and batch %u",
					e->max_ctx, B);
			goto fail;
		}
	if (o->backend == INF_BACKEND_CUDA) {
		if ((rc = inf_gpu_create(e, err)) < 0)
			goto fail;
	} else if (m->n_moe_layers) {
		const inf_policy_ops *pol = inf_policy_find(o->policy);
		if (!pol) {
			rc = k2_err_set(err, -EINVAL, "unknown cache policy '%s' (lru, lfu)",
					o->policy);
			goto fail;
		}
		uint32_t slots = inf_ram_cache_slots(m, o->cache_experts, o->cache_bytes, err);
		if (!slots) {
			rc = -ENOENT;
			goto fail;
		}
		int io = o->prefetch == INF_PREFETCH_ROUTER ? (o->io_threads > 0 ? o->io_threads : 2) : 0;
		if ((rc = inf_cache_create(m->dir, c, slots, pol, io, &e->cache, err)) < 0)
			goto fail;
	}
	*out = e;
	return 0;
fail:
	inf_engine_destroy(e);
	return rc;
}

void inf_engine_destroy(inf_engine *e)
{
	if (!e)
		return;
	inf_gpu_destroy(e->gpu);
	inf_cache_destroy(e->cache);
	inf_scratch *s = &e->s;
	void *all[] = {e->kv_c, e->kv_pe, s->x, s->xn, s->y, s->y2, s->qa, s->q, s->ckv,
		       s->attn, s->kvblk, s->qT, s->kh, s->vth, s->sblk, s->oblk, s->corr, s->acc_m, s->acc_l, s->qc, s->oc, s->rowbuf,
		       s->scores, s->scores2, s->qpe, s->mlp_g, s->mlp_u, s->moe_x, s->moe_y, s->moe_out,
		       s->router_logits, s->route_w, s->route_scratch, s->pf_x, s->pf_logits,
		       s->tok_list, s->slot_list, e->pf_pred, e->pf_list, e->pf_has, e->routes};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		free(all[i]);
	free(e);
}

/* Runs one chunk of n ≤ max_batch tokens at e->pos. */
static int forward_chunk(inf_engine *e, const int32_t *ids, uint32_t n, float *logits,
			 int all_logits, k2_err *err)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	const uint32_t H = c->hidden_size;
	inf_scratch *s = &e->s;
	int rc;

	for (uint32_t t = 0; t < n; t++)
		kern_mat_row(&m->embed, (uint32_t)ids[t], s->x + (size_t)t * H);
	for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
		const inf_layer *ly = &m->layers[l];
		for (uint32_t t = 0; t < n; t++)
			kern_rmsnorm(s->xn + (size_t)t * H, s->x + (size_t)t * H, ly->attn_norm, H,
				     c->rms_norm_eps);
		if ((rc = inf_attn_forward(e, l, s->xn, n, s->y)) < 0)
			return k2_err_set(err, rc, "layer %u: attention failed", l);
		for (size_t i = 0; i < (size_t)n * H; i++)
			s->x[i] += s->y[i];
		for (uint32_t t = 0; t < n; t++)
			kern_rmsnorm(s->xn + (size_t)t * H, s->x + (size_t)t * H, ly->mlp_norm, H,
				     c->rms_norm_eps);
		if (ly->moe)
			rc = inf_moe_forward(e, l, s->xn, n, s->y, err);
		else
			rc = inf_mlp_forward(e, ly, s->xn, n, s->y);
		if (rc < 0)
			return rc;
		for (size_t i = 0; i < (size_t)n * H; i++)
			s->x[i] += s->y[i];
		inf_prefetch_after_layer(e, l, s->x, n);
	}
	e->pos += n;
	e->routes_n += n;
	uint32_t first = all_logits ? 0 : n - 1;
	for (uint32_t t = first; t < n; t++)
		kern_rmsnorm(s->xn + (size_t)t * H, s->x + (size_t)t * H, m->final_norm, H,
			     c->rms_norm_eps);
	if (logits)
		kern_matmul(&m->lm_head, s->xn + (size_t)first * H, n - first, logits);
	return 0;
}

int inf_engine_forward(inf_engine *e, const int32_t *ids, uint32_t n, float *logits,
		       int all_logits, k2_err *err)
{
	const k2_model_config *c = &e->m->cfg;
	const uint32_t L = c->num_hidden_layers, V = c->vocab_size;
	const uint32_t k = c->num_experts_per_tok ? c->num_experts_per_tok : 1;
	if (n == 0)
		return 0;
	for (uint32_t t = 0; t < n; t++)
		if (ids[t] < 0 || (uint32_t)ids[t] >= V)
			return k2_err_set(err, -EINVAL,
					  "token %" PRId32 " at position %u is out of range "
					  "(vocab_size %u in %s/config.json)",
					  ids[t], e->pos + t, V, e->m->dir);
	if ((uint64_t)e->pos + n > e->max_ctx)
		return k2_err_set(err, -ENOSPC, "context full: %u + %u tokens > %u positions",
				  e->pos, n, e->max_ctx);
	int32_t *r = realloc(e->routes, sizeof(int32_t) * n * L * k);
	if (!r)
		return k2_err_set(err, -ENOMEM, "out of memory");
	e->routes = r;
	for (size_t i = 0; i < (size_t)n * L * k; i++)
		r[i] = -1;
	e->routes_n = 0;
	e->expert_bytes_used = 0;
	for (uint32_t t0 = 0; t0 < n; t0 += e->max_batch) {
		uint32_t cn = n - t0 < e->max_batch ? n - t0 : e->max_batch;
		int last = t0 + cn == n;
		float *lo = NULL;
		if (all_logits)
			lo = logits + (size_t)t0 * V;
		else if (last)
			lo = logits;
		int rc = e->gpu ? inf_gpu_forward_chunk(e, ids + t0, cn, lo, all_logits, err)
				: forward_chunk(e, ids + t0, cn, lo, all_logits, err);
		if (rc < 0)
			return rc;
	}
	return 0;
}

uint32_t inf_engine_pos(const inf_engine *e) { return e->pos; }

void inf_engine_reset(inf_engine *e)
{
	e->pos = 0;
}

const int32_t *inf_engine_routes(const inf_engine *e, uint32_t *n_tokens)
{
	if (n_tokens)
		*n_tokens = e->routes_n;
	return e->routes;
}

const float *inf_engine_router_logits(const inf_engine *e, uint32_t layer)
{
	if (layer >= e->m->cfg.num_hidden_layers || !e->m->layers[layer].moe)
		return NULL;
	return e->s.router_logits + (size_t)layer * e->max_batch * e->m->cfg.n_routed_experts;
}

const float *inf_engine_route_weights(const inf_engine *e, uint32_t layer)
{
	if (layer >= e->m->cfg.num_hidden_layers || !e->m->layers[layer].moe)
		return NULL;
	return e->s.route_w + (size_t)layer * e->max_batch * e->m->cfg.num_experts_per_tok;
}

void inf_engine_stats(inf_engine *e, inf_cache_stats *cache, inf_prefetch_stats *pf)
{
	if (cache) {
		if (e->gpu)
			inf_gpu_stats_get(e->gpu, cache, NULL);
		else
			inf_cache_get_stats(e->cache, cache);
	}
	if (pf)
		*pf = e->pf;
}

void inf_engine_gpu_stats(inf_engine *e, inf_gpu_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (e->gpu)
		inf_gpu_stats_get(e->gpu, NULL, out);
}

inf_cache *inf_engine_cache(inf_engine *e) { return e->cache; }
uint64_t inf_engine_expert_bytes_used(const inf_engine *e) { return e->expert_bytes_used; }
