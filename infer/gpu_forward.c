/* gpu_forward.c — infer's forward pass on the CUDA backend: the same steps as
 * forward.c and attention.c, on device memory, queued on the context's
 * compute stream:
 *
 *   x = embed[ids]
 *   per layer l:  xn = rmsnorm(x)   x += attn(xn)     (MLA over the device KV cache:
 *                                                      absorbed for one token, kv_b
 *                                                      expanded for a prompt chunk)
 *                 xn = rmsnorm(x)   x += mlp(xn) or moe(xn)           (gpu_moe.c)
 *                 prefetch: the next MoE layer's experts from x       (gpu_moe.c)
 *   logits = lm_head(rmsnorm(x))  → host
 *
 * The host waits on the device only to learn each MoE layer's routing (and,
 * with --prefetch router, the prediction), and for the logits. */
#include "gpu_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int inf_cuda_available(void)
{
	return kcu_device_count() > 0;
}

static uint32_t max2(uint32_t a, uint32_t b) { return a > b ? a : b; }

/* Device buffers of the engine: name, bytes. */
static int dalloc(inf_gpu *g, void **p, size_t bytes, const char *what, k2_err *err)
{
	int rc = kcu_alloc(g->ctx, bytes ? bytes : 4, p);
	if (rc < 0)
		return k2_err_set(err, rc, "device: %s (%zu bytes): %s", what, bytes,
				  rc == -ENOMEM ? "out of device memory" : kcu_ctx_error(g->ctx));
	return 0;
}

static int halloc(inf_gpu *g, void **p, size_t bytes, const char *what, k2_err *err)
{
	int rc = kcu_host_alloc(g->ctx, bytes ? bytes : 4, p);
	if (rc < 0)
		return k2_err_set(err, rc, "pinned host memory: %s (%zu bytes): %s", what, bytes,
				  kcu_ctx_error(g->ctx));
	return 0;
}

#define DEVICE_BUFS(X) \
	X(ids, sizeof(int32_t) * B) X(x, F * B * H) X(xn, F * B * H) X(y, F * B * H) \
	X(qa, F * B * max2(c->q_lora_rank, R + rope)) X(q, F * B * nh * qk) \
	X(kva, F * B * (R + rope)) X(attn, F * B * nh * vd) X(kvfull, F * P * nh * (nope + vd)) \
	X(mla_scratch, F * kcu_mla_scratch_floats(&g->md, 1)) X(ckv, F * L * P * R) \
	X(kpe, F * L * P * rope) X(mlp_g, F * B * I) X(mlp_u, F * B * I) \
	X(logits, F * B * max2(c->vocab_size, E)) X(route, 2 * sizeof(int32_t) * B * k) \
	X(xk, F * k * B * H) X(moe_out, F * k * B * H) X(rows_d, sizeof(int32_t) * B * k) \
	X(wsel_d, F * B * k)
#define PINNED_BUFS(X) \
	X(rows_h, sizeof(int32_t) * B * k) X(wsel_h, F * B * k)

int inf_gpu_create(inf_engine *e, k2_err *err)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	const size_t F = sizeof(float);
	const uint32_t B = e->max_batch, P = e->max_ctx, H = c->hidden_size;
	const uint32_t L = c->num_hidden_layers, nh = c->num_attention_heads;
	const uint32_t nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim;
	const uint32_t vd = c->v_head_dim, R = c->kv_lora_rank, qk = nope + rope;
	const uint32_t E = c->n_routed_experts ? c->n_routed_experts : 1;
	const uint32_t k = c->num_experts_per_tok ? c->num_experts_per_tok : 1;
	const uint32_t I = max2(max2(c->intermediate_size, c->moe_intermediate_size),
				c->moe_intermediate_size * c->n_shared_experts);
	int rc;
	inf_gpu *g = calloc(1, sizeof(*g));
	if (!g)
		return k2_err_set(err, -ENOMEM, "out of memory");
	e->gpu = g;
	g->B = B;
	g->P = P;
	g->cpu_experts = e->opts.cpu_experts;
	g->io_threads = e->opts.io_threads > 0 ? e->opts.io_threads : 4;
	g->md = (kcu_mla_dims){.n_heads = nh, .kv_lora = R, .nope = nope, .rope = rope, .v = vd};
	g->rp = (kcu_router_params){.n_experts = c->n_routed_experts,
				    .n_group = c->n_group ? c->n_group : 1,
				    .topk_group = c->n_group ? c->topk_group : 1,
				    .top_k = c->num_experts_per_tok,
				    .norm_topk_prob = c->norm_topk_prob,
				    .routed_scaling_factor = c->routed_scaling_factor};
	int n_dev = kcu_device_count();
	if (n_dev == -ENOTSUP)
		return k2_err_set(err, -ENOTSUP, "--backend cuda: this build has no CUDA backend "
				  "(nvcc was not found when it was built); use --backend cpu");
	if (n_dev <= 0)
		return k2_err_set(err, -ENODEV, "--backend cuda: no CUDA device%s; use --backend "
				  "cpu", n_dev < 0 ? " (no driver answers)" : "");
	if (e->opts.device < 0 || e->opts.device >= n_dev)
		return k2_err_set(err, -ENODEV, "--device %d: there are %d CUDA devices",
				  e->opts.device, n_dev);
	if ((rc = kcu_ctx_create(e->opts.device, &g->ctx, err)) < 0)
		return rc;
	kcu_ctx_info(g->ctx, &g->info);
	snprintf(g->st.device, sizeof(g->st.device), "%s", g->info.name);
	if ((rc = gpu_weights_upload(g->ctx, m, &g->w, err)) < 0)
		return rc;
	g->st.dense_device_bytes = g->w.bytes;
#define ALLOC_DEV(name, bytes) \
	if ((rc = dalloc(g, (void **)&g->name, (bytes), #name, err)) < 0) \
		return rc;
#define ALLOC_PIN(name, bytes) \
	if ((rc = halloc(g, (void **)&g->name, (bytes), #name, err)) < 0) \
		return rc;
	DEVICE_BUFS(ALLOC_DEV)
	PINNED_BUFS(ALLOC_PIN)
	g->route_h = malloc(2 * sizeof(int32_t) * B * k);
	g->start = malloc(sizeof(uint32_t) * (E + 1));
	g->used = malloc(sizeof(uint32_t) * E);
	g->miss = malloc(sizeof(uint32_t) * E);
	g->miss_rows = malloc(sizeof(uint32_t) * E);
	g->state = malloc(E);
	g->on_cpu = malloc(E);
	g->miss_ram = malloc(E);
	g->plan = malloc(E);
	g->hint = malloc((size_t)12 * E + 1);
	if (!g->route_h || !g->start || !g->used || !g->miss || !g->miss_rows || !g->state ||
	    !g->on_cpu || !g->miss_ram || !g->plan || !g->hint)
		return k2_err_set(err, -ENOMEM, "out of memory");
	if (m->n_moe_layers) {
		const inf_policy_ops *pol = inf_policy_find(e->opts.policy);
		if (!pol)
			return k2_err_set(err, -EINVAL, "unknown cache policy '%s' (lru, lfu)",
					  e->opts.policy);
		if ((rc = gpu_cache_create(g->ctx, m, e->opts.cache_experts, e->opts.cache_bytes,
					   pol, g->io_threads, &g->cache, err)) < 0)
			return rc;
		if (g->cpu_experts) {
			uint32_t slots = inf_ram_cache_slots(m, 0, e->opts.cpu_cache_bytes, err);
			if (!slots)
				return -ENOENT;
			if ((rc = inf_cache_create(m->dir, c, slots, pol, 0, &g->ram, err)) < 0)
				return rc;
			if ((rc = halloc(g, (void **)&g->cpu_out_h, F * k * B * H, "cpu_out_h",
					 err)) < 0)
				return rc;
			g->xn_h = malloc(F * B * H);
			g->cx = malloc(F * B * H);
			g->cy = malloc(F * B * H);
			g->cg = malloc(F * B * c->moe_intermediate_size);
			g->cu = malloc(F * B * c->moe_intermediate_size);
			if (!g->xn_h || !g->cx || !g->cy || !g->cg || !g->cu)
				return k2_err_set(err, -ENOMEM, "out of memory");
			if ((rc = gpu_offload_calibrate(e, err)) < 0)
				return rc;
		}
	}
	return 0;
}

void inf_gpu_destroy(inf_gpu *g)
{
	if (!g)
		return;
	gpu_cache_destroy(g->cache);
	inf_cache_destroy(g->ram);
	if (g->ctx) {
#define FREE_DEV(name, bytes) kcu_free(g->ctx, g->name);
#define FREE_PIN(name, bytes) kcu_host_free(g->ctx, g->name);
		/* (the size expressions vanish in these expansions) */
		DEVICE_BUFS(FREE_DEV)
		PINNED_BUFS(FREE_PIN)
		kcu_host_free(g->ctx, g->cpu_out_h);
		gpu_weights_free(g->ctx, &g->w);
	}
	kcu_ctx_destroy(g->ctx);
	free(g->route_h);
	free(g->start);
	free(g->used);
	free(g->miss);
	free(g->miss_rows);
	free(g->state);
	free(g->on_cpu);
	free(g->miss_ram);
	free(g->plan);
	free(g->hint);
	free(g->xn_h);
	free(g->cx);
	free(g->cy);
	free(g->cg);
	free(g->cu);
	free(g);
}

void inf_gpu_stats_get(inf_gpu *g, inf_cache_stats *cs, inf_gpu_stats *gs)
{
	if (cs)
		memset(cs, 0, sizeof(*cs));
	if (gs)
		*gs = g->st;
	if (g->cache)
		gpu_cache_get_stats(g->cache, cs, gs);
	if (gs && g->cpu_experts) {
		gs->est_upload_s = g->off.upload_s;
		gs->est_cpu_row_s = g->off.cpu_row_s;
	}
}

/* Names the failed op: kcu_ctx_error gives file, line and CUDA's message. */
static int op_failed(inf_gpu *g, int rc, const char *what, uint32_t layer, k2_err *err)
{
	return k2_err_set(err, rc, "layer %u: %s on the GPU: %s", layer, what,
			  kcu_ctx_error(g->ctx));
}

/* MLA attention of layer l over xn [n, H] at positions e->pos… into out. */
static int attn_forward(inf_engine *e, uint32_t l, uint32_t n, float *out, k2_err *err)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	inf_gpu *g = e->gpu;
	const gpu_layer *gl = &g->w.layers[l];
	const uint32_t nh = c->num_attention_heads, nope = c->qk_nope_head_dim;
	const uint32_t rope = c->qk_rope_head_dim, R = c->kv_lora_rank, qk = nope + rope;
	const uint32_t pos0 = e->pos;
	float *ckv = g->ckv + (size_t)l * g->P * R, *kpe = g->kpe + (size_t)l * g->P * rope;
	int rc = 0;
#define TRY(call, what) \
	if ((rc = (call)) < 0) \
		return op_failed(g, rc, what, l, err);
	if (c->q_lora_rank) {
		TRY(kcu_matmul(g->ctx, &gl->q_a, g->xn, n, g->qa, gpu_mm_flags(n)), "q_a_proj");
		TRY(kcu_rmsnorm(g->ctx, g->qa, g->qa, gl->q_a_norm, n, c->q_lora_rank, 1e-6f),
		    "q_a_layernorm");
		TRY(kcu_matmul(g->ctx, &gl->q_b, g->qa, n, g->q, gpu_mm_flags(n)), "q_b_proj");
	} else
		TRY(kcu_matmul(g->ctx, &gl->q_proj, g->xn, n, g->q, gpu_mm_flags(n)), "q_proj");
	TRY(kcu_matmul(g->ctx, &gl->kv_a, g->xn, n, g->kva, gpu_mm_flags(n)), "kv_a_proj_with_mqa");
	TRY(kcu_rope(g->ctx, g->q, n, nh, nh * qk, qk, nope, rope, pos0, g->w.inv_freq,
		     m->rope_mscale), "rope of q");
	TRY(kcu_mla_cache_write(g->ctx, &g->md, g->kva, n, pos0, gl->kv_a_norm, 1e-6f,
				g->w.inv_freq, m->rope_mscale, ckv, kpe), "KV cache write");
	if (n == 1) {
		TRY(kcu_mla_attn_absorbed(g->ctx, &g->md, &gl->kv_b_abs, g->q, ckv, kpe, 1, pos0,
					  m->attn_scale, g->attn, g->mla_scratch),
		    "absorbed attention");
	} else {
		TRY(kcu_matmul(g->ctx, &gl->kv_b, ckv, pos0 + n, g->kvfull, gpu_mm_flags(pos0 + n)), "kv_b_proj");
		TRY(kcu_mla_attn_full(g->ctx, &g->md, g->q, g->kvfull, kpe, n, pos0, m->attn_scale,
				      g->attn), "attention");
	}
	TRY(kcu_matmul(g->ctx, &gl->o_proj, g->attn, n, out, gpu_mm_flags(n)), "o_proj");
#undef TRY
	return 0;
}

int inf_gpu_forward_chunk(inf_engine *e, const int32_t *ids, uint32_t n, float *logits,
			  int all_logits, k2_err *err)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	inf_gpu *g = e->gpu;
	const uint32_t H = c->hidden_size, V = c->vocab_size;
	const float eps = c->rms_norm_eps;
	int rc;
	if ((rc = kcu_upload(g->ctx, g->ids, ids, sizeof(int32_t) * n)) < 0 ||
	    (rc = kcu_embed(g->ctx, &g->w.embed, g->ids, n, g->x)) < 0)
		return k2_err_set(err, rc, "embedding on the GPU: %s", kcu_ctx_error(g->ctx));
	for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
		const gpu_layer *gl = &g->w.layers[l];
		const inf_layer *ly = &m->layers[l];
		if ((rc = kcu_rmsnorm(g->ctx, g->xn, g->x, gl->attn_norm, n, H, eps)) < 0)
			return op_failed(g, rc, "input_layernorm", l, err);
		if ((rc = attn_forward(e, l, n, g->y, err)) < 0)
			return rc;
		if ((rc = kcu_axpy(g->ctx, g->x, 1.0f, g->y, n * H)) < 0 ||
		    (rc = kcu_rmsnorm(g->ctx, g->xn, g->x, gl->mlp_norm, n, H, eps)) < 0)
			return op_failed(g, rc, "residual / post_attention_layernorm", l, err);
		rc = ly->moe ? gpu_moe_forward(e, l, n, g->y, err)
			     : gpu_mlp_forward(e, gl, ly, n, g->y, 0);
		if (rc < 0)
			return ly->moe ? rc : op_failed(g, rc, "MLP", l, err);
		if ((rc = kcu_axpy(g->ctx, g->x, 1.0f, g->y, n * H)) < 0)
			return op_failed(g, rc, "residual", l, err);
		if ((rc = gpu_prefetch_after_layer(e, l, n, err)) < 0)
			return rc;
	}
	e->pos += n;
	e->routes_n += n;
	const uint32_t first = all_logits ? 0 : n - 1;
	if (!logits)
		return 0;
	if ((rc = kcu_rmsnorm(g->ctx, g->xn, g->x + (size_t)first * H, g->w.final_norm,
			      n - first, H, eps)) < 0 ||
	    (rc = kcu_matmul(g->ctx, &g->w.lm_head, g->xn, n - first, g->logits, gpu_mm_flags(n - first))) < 0 ||
	    (rc = kcu_download(g->ctx, logits, g->logits, sizeof(float) * (size_t)(n - first) * V)) < 0)
		return k2_err_set(err, rc, "lm_head on the GPU: %s", kcu_ctx_error(g->ctx));
	return 0;
}
