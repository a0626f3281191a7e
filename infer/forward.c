/* forward.c — the engine: its state on the backend, and the forward pass of
 * DeepseekV3ForCausalLM, written once for every backend as one sequence of
 * steps per layer:
 *
 *   x = embed[ids]
 *   per layer l:  xn = rmsnorm(x, input_layernorm)      x += attn(xn)      (attention.c)
 *                 xn = rmsnorm(x, post_attention_layernorm)
 *                 x += mlp(xn) or moe(xn)                                   (moe.c)
 *                 prefetch: predict the next MoE layer's experts from x     (prefetch.c)
 *   logits = lm_head(rmsnorm(x, norm))  → host
 *
 * A batch of tokens (the prompt) goes through every matrix as one product of
 * batch n, in chunks of at most max_batch tokens; decode runs one token. A
 * step of several sequences (inf_engine_step) is one batch too: only the
 * attention runs per sequence, each on its own KV cache. The
 * host waits on the backend only for each MoE layer's routing (and, with
 * --prefetch router, the prediction) and for the logits. */
#include "infer_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Prompt tokens per forward chunk when the options give none. */
#define INF_DEFAULT_BATCH 256u
/* Positions of the KV cache when the options give none. */
#define INF_DEFAULT_CTX 4096u
/* RAM-tier readers with --prefetch router when the options give none. */
#define INF_DEFAULT_READERS 2

static uint32_t max2(uint32_t a, uint32_t b) { return a > b ? a : b; }

uint32_t inf_ram_tier_slots(const inf_model *m, uint32_t count, uint64_t bytes, k2_err *err)
{
	const uint64_t all = (uint64_t)m->n_moe_layers * m->cfg.n_routed_experts;
	if (count)
		return count < all ? count : (uint32_t)all;
	const uint64_t one = m->expert_image_bytes;
	if (!one) {
		k2_err_set(err, -EINVAL, "%s: no expert images to size the expert tier by", m->dir);
		return 0;
	}
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

/* Device-tier capacity: the count asked, or bytes (0: half the backend's free
 * memory) / image size; at least 1, at most every expert. */
static int device_tier_slots(inf_engine *e, uint32_t *out, k2_err *err)
{
	const inf_model *m = e->m;
	const uint64_t all = (uint64_t)m->n_moe_layers * m->cfg.n_routed_experts;
	uint64_t n = e->opts.cache_experts;
	if (n == 0) {
		uint64_t budget = e->opts.cache_bytes;
		if (budget == 0) {
			kern_backend_info info;
			int rc = e->ops->info(e->be, &info);
			if (rc < 0)
				return k2_err_set(err, rc, "expert cache: cannot ask the %s backend its "
						  "free memory: %s (give --expert-cache)", e->ops->name,
						  e->ops->error(e->be));
			budget = info.mem_free / 2;
		}
		n = m->expert_image_bytes ? budget / m->expert_image_bytes : 0;
	}
	if (n > all)
		n = all;
	*out = n < 1 ? 1 : (uint32_t)n;
	return 0;
}

/* The expert directory of the engine's options; with a device tier and
 * --cpu-experts, a RAM tier and the CPU backend that computes from it. */
static int experts_create(inf_engine *e, k2_err *err)
{
	const inf_model *m = e->m;
	const inf_engine_opts *o = &e->opts;
	const inf_policy_ops *pol = inf_policy_find(o->policy);
	int rc;
	if (!pol)
		return k2_err_set(err, -EINVAL, "unknown cache policy '%s' (lru, lfu)", o->policy);
	inf_experts_opts xo = {.be = e->be, .policy = pol};
	if (e->ops->slots_create) {
		if ((rc = device_tier_slots(e, &xo.device_slots, err)) < 0)
			return rc;
		xo.device_io_threads = o->io_threads;
		if (o->cpu_experts &&
		    !(xo.ram_slots = inf_ram_tier_slots(m, 0, o->cpu_cache_bytes, err)))
			return -EINVAL;
	} else {
		if (o->cpu_experts)
			return k2_err_set(err, -EINVAL, "--cpu-experts: the %s backend computes every "
					  "expert on the CPU already", e->ops->name);
		if (!(xo.ram_slots = inf_ram_tier_slots(m, o->cache_experts, o->cache_bytes, err)))
			return -EINVAL;
		if (o->prefetch == INF_PREFETCH_ROUTER)
			xo.io_threads = o->io_threads > 0 ? o->io_threads : INF_DEFAULT_READERS;
	}
	if ((rc = inf_experts_create(m->dir, &m->cfg, &xo, &e->experts, err)) < 0)
		return rc;
	e->tier = inf_experts_compute_tier(e->experts);
	if (o->cpu_experts) {
		if ((rc = kern_backend_open("cpu", 0, &e->cpu, err)) < 0)
			return rc;
		return inf_offload_calibrate(e, err);
	}
	return 0;
}

/* Activations in backend memory: name, bytes. */
#define BACKEND_BUFS(X) \
	X(ids, sizeof(int32_t) * B) X(x, F * B * H) X(xn, F * B * H) X(y, F * B * H) \
	X(qa, F * B * max2(c->q_lora_rank, R + rope)) X(q, F * B * nh * qk) \
	X(kva, F * B * (R + rope)) X(attn, F * B * nh * vd) X(ckv, F * S * L * P * R) \
	X(kpe, F * S * L * P * rope) X(mlp_g, F * B * I) X(mlp_u, F * B * I) \
	X(logits, F * B * max2(c->vocab_size, E)) X(route, 2 * sizeof(int32_t) * B * k) \
	X(xk, F * k * B * H) X(moe_out, F * k * B * H) X(rows_d, sizeof(int32_t) * B * k) \
	X(wsel_d, F * B * k)
/* Host memory the backend copies from. */
#define STAGING_BUFS(X) X(rows_h, sizeof(int32_t) * B * k) X(wsel_h, F * B * k)
/* Host memory of --cpu-experts. */
#define CPU_EXPERT_BUFS(X) X(cpu_out, F * k * B * H) X(xk_h, F * k * B * H)

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
	e->max_ctx = o->max_ctx ? o->max_ctx : INF_DEFAULT_CTX;
	e->max_batch = o->max_batch ? o->max_batch : INF_DEFAULT_BATCH;
	e->n_seqs = o->n_seqs ? o->n_seqs : 1;
	if (e->max_batch > e->max_ctx)
		e->max_batch = e->max_ctx;
	if (o->be)
		e->be = o->be;
	else if ((rc = kern_backend_open(o->backend, o->device, &e->be, err)) < 0)
		goto fail;
	else
		e->own_be = 1;
	e->ops = e->be->ops;
	inf_router_params(c, &e->rp);
	e->mm = o->exact ? KERN_MM_EXACT : 0;
	e->md = (kern_mla_dims){.n_heads = c->num_attention_heads, .kv_lora = c->kv_lora_rank,
				.nope = c->qk_nope_head_dim, .rope = c->qk_rope_head_dim,
				.v = c->v_head_dim};
	const size_t F = sizeof(float);
	const uint32_t B = e->max_batch, P = e->max_ctx, H = c->hidden_size;
	const size_t S = e->n_seqs;
	const uint32_t L = c->num_hidden_layers, nh = c->num_attention_heads;
	const uint32_t rope = c->qk_rope_head_dim, vd = c->v_head_dim, R = c->kv_lora_rank;
	const uint32_t qk = c->qk_nope_head_dim + rope;
	const uint32_t E = c->n_routed_experts ? c->n_routed_experts : 1;
	const uint32_t k = c->num_experts_per_tok ? c->num_experts_per_tok : 1;
	const uint32_t I = max2(max2(c->intermediate_size, c->moe_intermediate_size),
				c->moe_intermediate_size * c->n_shared_experts);
	if ((rc = inf_bweights_import(e->be, m, &e->w, err)) < 0)
		goto fail;
	e->st.dense_backend_bytes = e->w.bytes;
	kern_backend_info info;
	if (e->ops->info(e->be, &info) == 0)
		snprintf(e->st.device, sizeof(e->st.device), "%s", info.device);
#define ALLOC(buf, bytes, how, where) \
	if ((rc = e->ops->how(e->be, (bytes), (void **)&e->buf)) < 0) { \
		rc = k2_err_set(err, rc, "%s: %s (%zu bytes) for a context of %u positions and " \
				"batch %u: %s", where, #buf, (size_t)(bytes), P, B, \
				e->ops->error(e->be)); \
		goto fail; \
	}
#define ALLOC_BACKEND(buf, bytes) ALLOC(buf, bytes, alloc, e->ops->name)
#define ALLOC_HOST(buf, bytes) ALLOC(buf, bytes, host_alloc, "host memory")
	BACKEND_BUFS(ALLOC_BACKEND)
	STAGING_BUFS(ALLOC_HOST)
	if (o->cpu_experts) {
		CPU_EXPERT_BUFS(ALLOC_HOST)
	}
	e->seq_pos = calloc(S, sizeof(uint32_t));
	e->route_h = malloc(2 * sizeof(int32_t) * B * k);
	e->router_logits = malloc(F * L * B * E);
	e->route_w = malloc(F * L * B * k);
	e->start = malloc(sizeof(uint32_t) * (E + 1));
	e->used = malloc(sizeof(uint32_t) * E);
	e->miss = malloc(sizeof(uint32_t) * E);
	e->miss_rows = malloc(sizeof(uint32_t) * E);
	e->state = malloc(E);
	e->on_cpu = malloc(E);
	e->miss_ram = malloc(E);
	e->plan = malloc(E);
	e->pinned = calloc(E, 1);
	e->pf_pred = calloc((size_t)L * E, sizeof(int32_t));
	e->pf_list = malloc(sizeof(int32_t) * E);
	e->pf_has = calloc(L, 1);
	if (!e->seq_pos || !e->route_h || !e->router_logits || !e->route_w || !e->start || !e->used ||
	    !e->miss || !e->miss_rows || !e->state || !e->on_cpu || !e->miss_ram || !e->plan ||
	    !e->pinned || !e->pf_pred || !e->pf_list || !e->pf_has) {
		rc = k2_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	if (m->n_moe_layers && (rc = experts_create(e, err)) < 0)
		goto fail;
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
	inf_experts_destroy(e->experts);
	kern_backend_close(e->cpu);
	if (e->be) {
#define FREE_BACKEND(buf, bytes) e->ops->free(e->be, e->buf);
#define FREE_HOST(buf, bytes) e->ops->host_free(e->be, e->buf);
		/* (the size expressions vanish in these expansions) */
		BACKEND_BUFS(FREE_BACKEND)
		STAGING_BUFS(FREE_HOST)
		CPU_EXPERT_BUFS(FREE_HOST)
		inf_bweights_release(e->be, &e->w);
		if (e->own_be)
			kern_backend_close(e->be);
	}
	free(e->seq_pos);
	free(e->route_h);
	free(e->router_logits);
	free(e->route_w);
	free(e->start);
	free(e->used);
	free(e->miss);
	free(e->miss_rows);
	free(e->state);
	free(e->on_cpu);
	free(e->miss_ram);
	free(e->plan);
	free(e->pinned);
	free(e->pf_pred);
	free(e->pf_list);
	free(e->pf_has);
	free(e->routes);
	free(e->routes_w);
	free(e);
}

/* One chunk: the n ≤ max_batch tokens of the segments segs (checked by the
 * callers); logits downloaded when non-NULL: [n, V] when all_logits (one
 * segment), else [n_segs, V], each segment's last token. */
static int forward_chunk(inf_engine *e, const inf_seg *segs, uint32_t n_segs, const int32_t *ids,
			 uint32_t n, float *logits, int all_logits, k2_err *err)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	const kern_backend_ops *B = e->ops;
	kern_backend *be = e->be;
	const uint32_t H = c->hidden_size, V = c->vocab_size;
	const float eps = c->rms_norm_eps;
	int rc;
	e->segs = segs;
	e->n_segs = n_segs;
	if ((rc = B->upload(be, e->ids, ids, sizeof(int32_t) * n)) < 0 ||
	    (rc = B->embed(be, &e->w.embed, e->ids, n, e->x)) < 0)
		return k2_err_set(err, rc, "embedding on the %s backend: %s", B->name, B->error(be));
	for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
		const inf_blayer *bl = &e->w.layers[l];
		if ((rc = B->rmsnorm(be, e->xn, e->x, bl->attn_norm, n, H, eps)) < 0)
			return inf_op_failed(e, rc, "input_layernorm", l, err);
		if ((rc = inf_attn_forward(e, l, n, e->y, err)) < 0)
			return rc;
		if ((rc = B->add(be, e->x, e->y, (size_t)n * H)) < 0 ||
		    (rc = B->rmsnorm(be, e->xn, e->x, bl->mlp_norm, n, H, eps)) < 0)
			return inf_op_failed(e, rc, "residual / post_attention_layernorm", l, err);
		rc = m->layers[l].moe ? inf_moe_forward(e, l, n, e->y, err)
				      : inf_mlp_forward(e, l, n, e->y, 0, err);
		if (rc < 0)
			return rc;
		if ((rc = B->add(be, e->x, e->y, (size_t)n * H)) < 0)
			return inf_op_failed(e, rc, "residual", l, err);
		if ((rc = inf_prefetch_after_layer(e, l, n, err)) < 0)
			return rc;
	}
	for (uint32_t i = 0; i < n_segs; i++)
		e->seq_pos[segs[i].seq] += segs[i].n;
	e->routes_n += n;
	if (!logits)
		return 0;
	/* the final norm of the rows whose logits are wanted, packed in xn */
	uint32_t rows = 0, end = 0;
	rc = 0;
	if (all_logits)
		rc = B->rmsnorm(be, e->xn, e->x, e->w.final_norm, rows = n, H, eps);
	else
		for (uint32_t i = 0; i < n_segs && rc >= 0; i++, rows++) {
			end += segs[i].n;
			rc = B->rmsnorm(be, e->xn + (size_t)rows * H, e->x + (size_t)(end - 1) * H,
					e->w.final_norm, 1, H, eps);
		}
	if (rc < 0 || (rc = B->matmul(be, &e->w.lm_head, e->xn, rows, e->logits, e->mm)) < 0 ||
	    (rc = B->download(be, logits, e->logits, sizeof(float) * (size_t)rows * V)) < 0)
		return k2_err_set(err, rc, "lm_head on the %s backend: %s", B->name, B->error(be));
	return 0;
}

/* Every id within the vocabulary. */
static int check_ids(const inf_engine *e, const int32_t *ids, uint32_t n, uint32_t seq,
		     k2_err *err)
{
	const uint32_t V = e->m->cfg.vocab_size;
	for (uint32_t t = 0; t < n; t++)
		if (ids[t] < 0 || (uint32_t)ids[t] >= V)
			return k2_err_set(err, -EINVAL,
					  "token %" PRId32 " at position %u of sequence %u is out of "
					  "range (vocab_size %u in %s/config.json)",
					  ids[t], e->seq_pos[seq] + t, seq, V, e->m->dir);
	return 0;
}

/* Routes of the n tokens of a forward call, all -1 until their layer runs. */
static int routes_reset(inf_engine *e, uint32_t n, k2_err *err)
{
	const k2_model_config *c = &e->m->cfg;
	const uint32_t L = c->num_hidden_layers;
	const uint32_t k = c->num_experts_per_tok ? c->num_experts_per_tok : 1;
	int32_t *r = realloc(e->routes, sizeof(int32_t) * n * L * k);
	if (!r)
		return k2_err_set(err, -ENOMEM, "out of memory");
	e->routes = r;
	float *w = realloc(e->routes_w, sizeof(float) * n * L * k);
	if (!w)
		return k2_err_set(err, -ENOMEM, "out of memory");
	e->routes_w = w;
	for (size_t i = 0; i < (size_t)n * L * k; i++) {
		r[i] = -1;
		w[i] = 0;
	}
	e->routes_n = 0;
	e->expert_bytes_used = 0;
	return 0;
}

int inf_engine_forward(inf_engine *e, const int32_t *ids, uint32_t n, float *logits,
		       int all_logits, k2_err *err)
{
	const uint32_t V = e->m->cfg.vocab_size;
	int rc;
	if (n == 0)
		return 0;
	if ((rc = check_ids(e, ids, n, 0, err)) < 0)
		return rc;
	if ((uint64_t)e->seq_pos[0] + n > e->max_ctx)
		return k2_err_set(err, -ENOSPC, "context full: %u + %u tokens > %u positions",
				  e->seq_pos[0], n, e->max_ctx);
	if ((rc = routes_reset(e, n, err)) < 0)
		return rc;
	for (uint32_t t0 = 0; t0 < n; t0 += e->max_batch) {
		uint32_t cn = n - t0 < e->max_batch ? n - t0 : e->max_batch;
		int last = t0 + cn == n;
		float *lo = NULL;
		if (all_logits)
			lo = logits + (size_t)t0 * V;
		else if (last)
			lo = logits;
		const inf_seg seg = {.seq = 0, .n = cn};
		if ((rc = forward_chunk(e, &seg, 1, ids + t0, cn, lo, all_logits, err)) < 0)
			return rc;
	}
	return 0;
}

int inf_engine_step(inf_engine *e, const inf_seg *segs, uint32_t n_segs, const int32_t *ids,
		    float *logits, k2_err *err)
{
	uint32_t n = 0;
	int rc;
	for (uint32_t i = 0; i < n_segs; i++) {
		const uint32_t s = segs[i].seq;
		if (s >= e->n_seqs || segs[i].n == 0)
			return k2_err_set(err, -EINVAL, "step: segment %u: sequence %u of %u, %u tokens",
					  i, s, e->n_seqs, segs[i].n);
		for (uint32_t j = 0; j < i; j++)
			if (segs[j].seq == s)
				return k2_err_set(err, -EINVAL, "step: sequence %u appears twice", s);
		if ((uint64_t)e->seq_pos[s] + segs[i].n > e->max_ctx)
			return k2_err_set(err, -ENOSPC, "sequence %u: context full: %u + %u tokens > "
					  "%u positions", s, e->seq_pos[s], segs[i].n, e->max_ctx);
		if ((rc = check_ids(e, ids + n, segs[i].n, s, err)) < 0)
			return rc;
		n += segs[i].n;
	}
	if (n == 0)
		return 0;
	if (n > e->max_batch)
		return k2_err_set(err, -EINVAL, "step: %u tokens > the batch of %u", n, e->max_batch);
	if ((rc = routes_reset(e, n, err)) < 0)
		return rc;
	return forward_chunk(e, segs, n_segs, ids, n, logits, 0, err);
}

uint32_t inf_engine_pos(const inf_engine *e) { return e->seq_pos[0]; }
uint32_t inf_engine_n_seqs(const inf_engine *e) { return e->n_seqs; }
uint32_t inf_engine_max_ctx(const inf_engine *e) { return e->max_ctx; }
uint32_t inf_engine_max_batch(const inf_engine *e) { return e->max_batch; }
const inf_model *inf_engine_model(const inf_engine *e) { return e->m; }

uint32_t inf_engine_seq_pos(const inf_engine *e, uint32_t seq)
{
	return seq < e->n_seqs ? e->seq_pos[seq] : 0;
}

void inf_engine_seq_reset(inf_engine *e, uint32_t seq)
{
	inf_engine_seq_truncate(e, seq, 0);
}

void inf_engine_seq_truncate(inf_engine *e, uint32_t seq, uint32_t pos)
{
	/* attention reads positions below a token's own only, so the cache
	 * entries past pos are simply written over by the next tokens */
	if (seq < e->n_seqs && pos < e->seq_pos[seq])
		e->seq_pos[seq] = pos;
}

void inf_engine_set_exact(inf_engine *e, int exact)
{
	e->opts.exact = exact;
	e->mm = exact ? KERN_MM_EXACT : 0;
}

void inf_engine_reset(inf_engine *e)
{
	memset(e->seq_pos, 0, sizeof(*e->seq_pos) * e->n_seqs);
}

const int32_t *inf_engine_routes(const inf_engine *e, uint32_t *n_tokens)
{
	if (n_tokens)
		*n_tokens = e->routes_n;
	return e->routes;
}

const float *inf_engine_routes_weights(const inf_engine *e)
{
	return e->routes_w;
}

const float *inf_engine_router_logits(const inf_engine *e, uint32_t layer)
{
	if (layer >= e->m->cfg.num_hidden_layers || !e->m->layers[layer].moe)
		return NULL;
	return e->router_logits + (size_t)layer * e->max_batch * e->m->cfg.n_routed_experts;
}

const float *inf_engine_route_weights(const inf_engine *e, uint32_t layer)
{
	if (layer >= e->m->cfg.num_hidden_layers || !e->m->layers[layer].moe)
		return NULL;
	return e->route_w + (size_t)layer * e->max_batch * e->m->cfg.num_experts_per_tok;
}

void inf_engine_stats(inf_engine *e, inf_tier_stats *cache, inf_prefetch_stats *pf)
{
	if (cache)
		inf_experts_stats(e->experts, e->tier, cache);
	if (pf)
		*pf = e->pf;
}

void inf_engine_tier_stats(inf_engine *e, int tier, inf_tier_stats *out)
{
	inf_experts_stats(e->experts, tier, out);
}

void inf_engine_device_stats(inf_engine *e, inf_device_stats *out)
{
	*out = e->st;
	if (e->experts && inf_experts_has_tier(e->experts, INF_TIER_DEVICE)) {
		inf_tier_stats ts;
		inf_experts_stats(e->experts, INF_TIER_DEVICE, &ts);
		out->uploads = ts.loads;
		out->upload_bytes = ts.bytes_read + ts.bytes_moved;
		out->upload_wait_s = ts.wait_s;
	}
	if (e->cpu) {
		out->est_upload_s = e->off.upload_s;
		out->est_cpu_row_s = e->off.cpu_row_s;
	}
}

inf_experts *inf_engine_experts(inf_engine *e) { return e->experts; }
uint64_t inf_engine_expert_bytes_used(const inf_engine *e) { return e->expert_bytes_used; }
