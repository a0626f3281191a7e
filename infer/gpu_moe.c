/* gpu_moe.c — the feed-forward half of a layer on the CUDA backend: the dense
 * SwiGLU MLP, and the MoE layer with its routed experts read in place from
 * GPU cache slots (or, with --cpu-experts, some computed on the CPU), plus the
 * router-driven prefetch.
 *
 * A MoE layer over n tokens:
 *   1. router logits and kcu_router on the device; the top-k ids and weights
 *      come to the host (the one wait on the device per layer);
 *   2. each used expert gets its tokens as rows j·n + t of xk (k copies of
 *      xn) and moe_out, so every (token, j) row is written by one expert
 *      exactly once: out[t] = Σ_j moe_out[j·n + t] is summed in j order, and
 *      the result does not depend on the order experts are computed in, on
 *      prefetch or on the cache size (a cache of 4 gives the same bits as a
 *      full one);
 *   3. order: resident experts first (queued at once), then those in flight,
 *      then the CPU's share (computed while the GPU works and the loads run),
 *      then the misses, whose loads were all started in step 2. */
#include "gpu_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int gpu_mlp_forward(inf_engine *e, const gpu_layer *gl, const inf_layer *ly, uint32_t n,
		    float *out, int accumulate)
{
	inf_gpu *g = e->gpu;
	const uint32_t H = e->m->cfg.hidden_size, I = ly->mlp_inter;
	int rc;
	if (!ly->has_mlp)
		return accumulate ? 0 : kcu_memset(g->ctx, out, 0, sizeof(float) * n * H);
	if ((rc = kcu_matmul(g->ctx, &gl->gate, g->xn, n, g->mlp_g, gpu_mm_flags(n))) < 0 ||
	    (rc = kcu_matmul(g->ctx, &gl->up, g->xn, n, g->mlp_u, gpu_mm_flags(n))) < 0 ||
	    (rc = kcu_silu_mul(g->ctx, g->mlp_g, g->mlp_u, n * I)) < 0)
		return rc;
	return kcu_matmul(g->ctx, &gl->down, g->mlp_g, n, out,
			  gpu_mm_flags(n) | (accumulate ? KCU_MM_ACCUMULATE : 0));
}

/* One routed expert on the GPU over its `cnt` rows starting at rows_d[off]. */
static int gpu_expert(inf_engine *e, uint32_t layer, uint32_t x, uint32_t off, uint32_t cnt,
		      k2_err *err)
{
	inf_gpu *g = e->gpu;
	kern_mat mats[3];
	int rc = gpu_cache_begin(g->cache, layer, x, mats, err);
	if (rc < 0)
		return rc;
	rc = kcu_expert_ffn(g->ctx, mats, g->xk, cnt, g->rows_d + off, g->wsel_d + off,
			    g->moe_out, g->mlp_g);
	gpu_cache_end(g->cache, layer, x);
	if (rc < 0)
		return k2_err_set(err, rc, "layer %u expert %u on the GPU: %s", layer, x,
				  kcu_ctx_error(g->ctx));
	g->st.gpu_experts++;
	e->expert_bytes_used += gpu_cache_image_bytes(g->cache, layer);
	return 0;
}

/* One routed expert on the CPU from its RAM copy: rows rows_h[off…] (j·n + t)
 * of token t, weights wsel_h; outputs into cpu_out_h and queued to moe_out. */
static int cpu_expert(inf_engine *e, uint32_t layer, uint32_t x, uint32_t off, uint32_t cnt,
		      uint32_t n, k2_err *err)
{
	inf_gpu *g = e->gpu;
	const uint32_t H = e->m->cfg.hidden_size, I = e->m->cfg.moe_intermediate_size;
	const inf_expert *ex;
	int rc;
	const int in_ram = inf_cache_state(g->ram, layer, x) == 2;
	double t0 = k2_now();
	if ((rc = inf_cache_acquire(g->ram, layer, x, &ex, err)) < 0)
		return rc;
	if (!in_ram)
		gpu_offload_observe_read(&g->off, k2_now() - t0);
	t0 = k2_now();
	for (uint32_t r = 0; r < cnt; r++)
		memcpy(g->cx + (size_t)r * H, g->xn_h + (size_t)(g->rows_h[off + r] % n) * H,
		       sizeof(float) * H);
	kern_matmul(&ex->gate, g->cx, cnt, g->cg);
	kern_matmul(&ex->up, g->cx, cnt, g->cu);
	kern_silu_mul(g->cg, g->cu, cnt * I);
	kern_matmul(&ex->down, g->cg, cnt, g->cy);
	const uint64_t bytes = ex->lay.image_bytes;
	inf_cache_release(g->ram, ex);
	for (uint32_t r = 0; r < cnt; r++) {
		const uint32_t row = (uint32_t)g->rows_h[off + r];
		float *dst = g->cpu_out_h + (size_t)row * H;
		const float *src = g->cy + (size_t)r * H, w = g->wsel_h[off + r];
		for (uint32_t i = 0; i < H; i++)
			dst[i] = w * src[i];
		if ((rc = kcu_copy(g->ctx, g->moe_out + (size_t)row * H, dst, sizeof(float) * H)) < 0)
			return k2_err_set(err, rc, "layer %u expert %u: copying the CPU's output: %s",
					  layer, x, kcu_ctx_error(g->ctx));
	}
	const double dt = k2_now() - t0;
	gpu_offload_observe_cpu(&g->off, cnt, dt);
	g->st.cpu_compute_s += dt;
	g->st.cpu_experts++;
	gpu_cache_count_miss(g->cache);
	e->expert_bytes_used += bytes;
	return 0;
}

/* Downloads the n·k routing ids (and, with weights, the n·k weights after
 * them) computed into g->route; checks the ids. */
static int fetch_routing(inf_engine *e, uint32_t layer, uint32_t n, int weights, k2_err *err)
{
	inf_gpu *g = e->gpu;
	const uint32_t k = e->m->cfg.num_experts_per_tok, E = e->m->cfg.n_routed_experts;
	int rc = kcu_download(g->ctx, g->route_h, g->route,
			      sizeof(int32_t) * n * k * (weights ? 2 : 1));
	if (rc < 0)
		return k2_err_set(err, rc, "layer %u: router on the GPU: %s", layer,
				  kcu_ctx_error(g->ctx));
	for (uint32_t i = 0; i < n * k; i++)
		if (g->route_h[i] < 0 || (uint32_t)g->route_h[i] >= E)
			return k2_err_set(err, -EIO, "layer %u: the GPU router gave expert %d of %u",
					  layer, g->route_h[i], E);
	return 0;
}

int gpu_moe_forward(inf_engine *e, uint32_t layer, uint32_t n, float *out, k2_err *err)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	inf_gpu *g = e->gpu;
	const gpu_layer *gl = &g->w.layers[layer];
	const uint32_t E = c->n_routed_experts, k = c->num_experts_per_tok;
	const uint32_t H = c->hidden_size, L = c->num_hidden_layers;
	float *wts = g->logits; /* reused: router logits [n, E] */
	uint32_t n_used = 0;
	int rc;

	if ((rc = kcu_matmul(g->ctx, &gl->router, g->xn, n, wts, KCU_MM_NO_GEMM)) < 0 ||
	    (rc = kcu_router(g->ctx, &g->rp, wts, gl->router_bias, n, g->route,
			     (float *)(g->route + (size_t)n * k))) < 0)
		return k2_err_set(err, rc, "layer %u: router on the GPU: %s", layer,
				  kcu_ctx_error(g->ctx));
	if ((rc = fetch_routing(e, layer, n, 1, err)) < 0)
		return rc;
	if (g->cpu_experts && (rc = kcu_download(g->ctx, g->xn_h, g->xn, sizeof(float) * n * H)) < 0)
		return k2_err_set(err, rc, "layer %u: %s", layer, kcu_ctx_error(g->ctx));
	const int32_t *idx = g->route_h;
	const float *w = (const float *)(g->route_h + (size_t)n * k);
	int32_t *routes0 = e->routes + (size_t)e->routes_n * L * k;
	for (uint32_t t = 0; t < n; t++)
		memcpy(routes0 + ((size_t)t * L + layer) * k, idx + (size_t)t * k,
		       sizeof(int32_t) * k);
	inf_prefetch_account(e, layer, routes0, n);

	/* group (token, j) rows by expert, experts ascending */
	uint32_t *start = g->start, *used = g->used, *miss = g->miss, *miss_rows = g->miss_rows;
	uint8_t *state = g->state, *on_cpu = g->on_cpu, *miss_ram = g->miss_ram;
	memset(start, 0, sizeof(uint32_t) * (E + 1));
	memset(on_cpu, 0, E);
	for (uint32_t i = 0; i < n * k; i++)
		start[idx[i] + 1]++;
	for (uint32_t x = 0; x < E; x++) {
		if (start[x + 1])
			used[n_used++] = x;
		start[x + 1] += start[x];
	}
	for (uint32_t t = 0; t < n; t++)
		for (uint32_t j = 0; j < k; j++) {
			const uint32_t x = (uint32_t)idx[(size_t)t * k + j], at = start[x]++;
			g->rows_h[at] = (int32_t)(j * n + t);
			g->wsel_h[at] = w[(size_t)t * k + j];
		}
	for (uint32_t x = E; x > 0; x--) /* start[x] is now where x ends: shift back */
		start[x] = start[x - 1];
	start[0] = 0;
	if ((rc = kcu_copy(g->ctx, g->rows_d, g->rows_h, sizeof(int32_t) * n * k)) < 0 ||
	    (rc = kcu_copy(g->ctx, g->wsel_d, g->wsel_h, sizeof(float) * n * k)) < 0 ||
	    (rc = kcu_memset(g->ctx, g->moe_out, 0, sizeof(float) * k * n * H)) < 0) {
		k2_err_set(err, rc, "layer %u: %s", layer, kcu_ctx_error(g->ctx));
		goto out;
	}
	for (uint32_t j = 0; j < k; j++)
		if ((rc = kcu_copy(g->ctx, g->xk + (size_t)j * n * H, g->xn,
				   sizeof(float) * n * H)) < 0) {
			k2_err_set(err, rc, "layer %u: %s", layer, kcu_ctx_error(g->ctx));
			goto out;
		}

	/* where each expert is; the misses' share for the CPU; loads started */
	uint32_t n_miss = 0;
	for (uint32_t u = 0; u < n_used; u++) {
		const uint32_t x = used[u];
		state[x] = (uint8_t)gpu_cache_state(g->cache, layer, x);
		if (state[x])
			gpu_cache_pin(g->cache, layer, x);
		else {
			miss_rows[n_miss] = start[x + 1] - start[x];
			miss_ram[n_miss] = g->ram && inf_cache_state(g->ram, layer, x) == 2;
			miss[n_miss++] = x;
		}
	}
	if (g->cpu_experts && n_miss) {
		uint8_t *plan = g->plan;
		const double busy = gpu_cache_loading(g->cache) * g->off.upload_s /
				    (g->io_threads ? g->io_threads : 1);
		gpu_offload_plan(&g->off, miss_rows, miss_ram, n_miss, busy, (uint32_t)g->io_threads,
				 plan);
		for (uint32_t i = 0; i < n_miss; i++)
			on_cpu[miss[i]] = plan[i];
	}
	for (uint32_t i = 0; i < n_miss; i++) {
		const uint32_t x = miss[i];
		if (on_cpu[x])
			continue;
		k2_err tmp;
		rc = gpu_cache_request(g->cache, layer, x, 0, &tmp);
		if (rc == -ENOSPC)
			break; /* no slot free now: the rest load as slots are released */
		if (rc < 0) {
			*err = tmp;
			goto out;
		}
		gpu_cache_pin(g->cache, layer, x);
	}

	for (int pass = 0; pass < 4; pass++)
		for (uint32_t u = 0; u < n_used; u++) {
			const uint32_t x = used[u], off = start[x], cnt = start[x + 1] - off;
			const int want = pass == 0 ? state[x] == 2 : pass == 1 ? state[x] == 1
					 : pass == 2 ? !state[x] && on_cpu[x] : !state[x] && !on_cpu[x];
			if (!want)
				continue;
			rc = pass == 2 ? cpu_expert(e, layer, x, off, cnt, n, err)
				       : gpu_expert(e, layer, x, off, cnt, err);
			if (rc < 0)
				goto out;
		}
	gpu_cache_layer_done(g->cache, layer);
	if (g->cpu_experts) {
		const double read_s = gpu_cache_take_read_s(g->cache);
		if (read_s > 0)
			gpu_offload_observe_upload(&g->off, read_s);
	}

	if ((rc = kcu_memset(g->ctx, out, 0, sizeof(float) * n * H)) < 0)
		goto fail_op;
	for (uint32_t j = 0; j < k; j++)
		if ((rc = kcu_axpy(g->ctx, out, 1.0f, g->moe_out + (size_t)j * n * H, n * H)) < 0)
			goto fail_op;
	if ((rc = gpu_mlp_forward(e, gl, &m->layers[layer], n, out, 1)) < 0)
		goto fail_op;
	rc = 0;
	goto out;
fail_op:
	k2_err_set(err, rc, "layer %u: expert sum / shared experts on the GPU: %s", layer,
		   kcu_ctx_error(g->ctx));
out:
	if (rc < 0) /* unpin what this layer pinned; the slots stay valid */
		for (uint32_t u = 0; u < n_used; u++)
			gpu_cache_unpin(g->cache, layer, used[u]);
	return rc;
}

int gpu_prefetch_after_layer(inf_engine *e, uint32_t layer, uint32_t n, k2_err *err)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	inf_gpu *g = e->gpu;
	if (e->opts.prefetch != INF_PREFETCH_ROUTER || !g->cache)
		return 0;
	const uint32_t next = inf_next_moe_layer(m, layer);
	if (next == UINT32_MAX)
		return 0;
	const gpu_layer *gl = &g->w.layers[next];
	const uint32_t H = c->hidden_size, E = c->n_routed_experts, k = c->num_experts_per_tok;
	int rc;
	/* y is free once added to x: it holds the next layer's normed input */
	if ((rc = kcu_rmsnorm(g->ctx, g->y, g->x, gl->mlp_norm, n, H, c->rms_norm_eps)) < 0 ||
	    (rc = kcu_matmul(g->ctx, &gl->router, g->y, n, g->logits, KCU_MM_NO_GEMM)) < 0 ||
	    (rc = kcu_router(g->ctx, &g->rp, g->logits, gl->router_bias, n, g->route,
			     (float *)(g->route + (size_t)n * k))) < 0)
		return k2_err_set(err, rc, "layer %u: prefetch router on the GPU: %s", layer,
				  kcu_ctx_error(g->ctx));
	if ((rc = fetch_routing(e, next, n, 0, err)) < 0)
		return rc;
	k2_err tmp;
	int32_t *pred = e->pf_pred + (size_t)next * E;
	memset(pred, 0, sizeof(int32_t) * E);
	for (uint32_t i = 0; i < n * k; i++)
		pred[g->route_h[i]] = 1;
	const uint32_t cnt = inf_prefetch_collect(e, next);
	inf_prefetch_hint_text(g->hint, (size_t)12 * E + 1, e->pf_list, cnt);
	inf_prefetch_hint_send(m->dir, next, g->hint);
	for (uint32_t i = 0; i < cnt; i++)
		if (gpu_cache_request(g->cache, next, (uint32_t)e->pf_list[i], 1, &tmp) == -ENOSPC)
			break; /* the cache is full of pinned, loading or unused prefetched experts */
	return 0;
}

/* The first MoE layer's expert 0 through both paths, once. */
int gpu_offload_calibrate(inf_engine *e, k2_err *err)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	inf_gpu *g = e->gpu;
	const uint32_t H = c->hidden_size, I = c->moe_intermediate_size;
	uint32_t l = 0;
	while (l < c->num_hidden_layers && !m->layers[l].moe)
		l++;
	if (l == c->num_hidden_layers)
		return 0;
	kern_mat mats[3];
	double t0 = k2_now();
	int rc = gpu_cache_begin(g->cache, l, 0, mats, err);
	if (rc < 0)
		return rc;
	gpu_cache_end(g->cache, l, 0);
	if ((rc = kcu_sync(g->ctx)) < 0)
		return k2_err_set(err, rc, "calibrating the upload: %s", kcu_ctx_error(g->ctx));
	gpu_offload_observe_upload(&g->off, k2_now() - t0);
	const inf_expert *ex;
	if ((rc = inf_cache_acquire(g->ram, l, 0, &ex, err)) < 0)
		return rc;
	memset(g->cx, 0, sizeof(float) * H);
	double best = 0;
	for (int rep = 0; rep < 3; rep++) {
		t0 = k2_now();
		kern_matmul(&ex->gate, g->cx, 1, g->cg);
		kern_matmul(&ex->up, g->cx, 1, g->cu);
		kern_silu_mul(g->cg, g->cu, I);
		kern_matmul(&ex->down, g->cg, 1, g->cy);
		const double dt = k2_now() - t0;
		if (rep == 0 || dt < best)
			best = dt;
	}
	inf_cache_release(g->ram, ex);
	gpu_offload_observe_cpu(&g->off, 1, best);
	gpu_cache_take_read_s(g->cache); /* the rate starts after this load */
	gpu_cache_reset_stats(g->cache);
	return 0;
}
