/* moe.c — the feed-forward half of a decoder layer, on the backend's ops: the
 * dense SwiGLU MLP (first_k_dense_replace layers, and the shared experts), and
 * the MoE layer with its routed experts taken from the expert directory.
 *
 * A MoE layer over n tokens:
 *   1. router logits and the noaux_tc router on the backend; the top-k ids and
 *      weights come to the host (the one wait on the backend per layer);
 *   2. each used expert gets its tokens as rows j·n + t of xk (k copies of
 *      xn) and moe_out, so every (token, j) row is written by one expert
 *      exactly once: out[t] = Σ_j moe_out[j·n + t] is summed in j order, and
 *      the result does not depend on the order experts are computed in, on
 *      prefetch or on the cache size (a cache of 1 gives the same bits as a
 *      full one);
 *   3. where each used expert is in the compute tier is read ONCE: background
 *      loads change it meanwhile, and an expert read as loading in one pass
 *      and ready in the next would be left out;
 *   4. order: ready experts first, then those loading, then the CPU's share
 *      (--cpu-experts: computed from RAM while the device works and the loads
 *      run), then the misses, whose loads were all started before the first
 *      expert ran. */
#include "infer_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void inf_router_params(const k2_model_config *c, kern_router_params *p)
{
	*p = (kern_router_params){.n_experts = c->n_routed_experts,
				  .n_group = c->n_group ? c->n_group : 1,
				  .topk_group = c->n_group ? c->topk_group : 1,
				  .top_k = c->num_experts_per_tok,
				  .norm_topk_prob = c->norm_topk_prob,
				  .routed_scaling_factor = c->routed_scaling_factor};
}

int inf_op_failed(inf_engine *e, int rc, const char *what, uint32_t layer, k2_err *err)
{
	return k2_err_set(err, rc, "layer %u: %s on the %s backend: %s", layer, what,
			  e->ops->name, e->ops->error(e->be));
}

int inf_mlp_forward(inf_engine *e, uint32_t layer, uint32_t n, float *out, int accumulate,
		    k2_err *err)
{
	const inf_layer *ly = &e->m->layers[layer];
	const inf_blayer *bl = &e->w.layers[layer];
	const kern_backend_ops *B = e->ops;
	kern_backend *be = e->be;
	const uint32_t H = e->m->cfg.hidden_size;
	int rc;
	if (!ly->has_mlp) {
		if (!accumulate && (rc = B->memset(be, out, 0, sizeof(float) * n * H)) < 0)
			return inf_op_failed(e, rc, "MLP", layer, err);
		return 0;
	}
	if ((rc = B->matmul(be, &bl->gate, e->xn, n, e->mlp_g, e->mm)) < 0 ||
	    (rc = B->matmul(be, &bl->up, e->xn, n, e->mlp_u, e->mm)) < 0 ||
	    (rc = B->silu_mul(be, e->mlp_g, e->mlp_u, n * ly->mlp_inter)) < 0 ||
	    (rc = B->matmul(be, &bl->down, e->mlp_g, n, out,
			    e->mm | (accumulate ? KERN_MM_ACCUMULATE : 0))) < 0)
		return inf_op_failed(e, rc, ly->moe ? "shared experts" : "MLP", layer, err);
	return 0;
}

/* Router of MoE layer `layer` over xn: ids and weights into route_h, logits
 * and weights kept on the host; checks the ids. */
static int route(inf_engine *e, uint32_t layer, uint32_t n, k2_err *err)
{
	const kern_backend_ops *B = e->ops;
	kern_backend *be = e->be;
	const inf_blayer *bl = &e->w.layers[layer];
	const uint32_t E = e->rp.n_experts, k = e->rp.top_k;
	float *lg_h = e->router_logits + (size_t)layer * e->max_batch * E;
	int rc;
	if ((rc = B->matmul(be, &bl->router, e->xn, n, e->logits, KERN_MM_EXACT)) < 0 ||
	    (rc = B->router(be, &e->rp, e->logits, bl->router_bias, n, e->route,
			    (float *)(e->route + (size_t)n * k))) < 0 ||
	    (rc = B->download(be, e->route_h, e->route, sizeof(int32_t) * 2 * n * k)) < 0 ||
	    (rc = B->download(be, lg_h, e->logits, sizeof(float) * n * E)) < 0)
		return inf_op_failed(e, rc, "router", layer, err);
	for (uint32_t i = 0; i < n * k; i++)
		if (e->route_h[i] < 0 || (uint32_t)e->route_h[i] >= E)
			return k2_err_set(err, -EIO, "layer %u: the router gave expert %d of %u",
					  layer, e->route_h[i], E);
	memcpy(e->route_w + (size_t)layer * e->max_batch * k, e->route_h + (size_t)n * k,
	       sizeof(float) * n * k);
	return 0;
}

/* Rows (j·n + t) grouped by expert, experts ascending: rows_h / wsel_h, with
 * expert x's rows at [start[x], start[x + 1]); the experts used in used[]. */
static uint32_t group_rows(inf_engine *e, uint32_t n)
{
	const uint32_t E = e->rp.n_experts, k = e->rp.top_k;
	const int32_t *idx = e->route_h;
	const float *w = (const float *)(e->route_h + (size_t)n * k);
	uint32_t *start = e->start, n_used = 0;
	memset(start, 0, sizeof(uint32_t) * (E + 1));
	for (uint32_t i = 0; i < n * k; i++)
		start[idx[i] + 1]++;
	for (uint32_t x = 0; x < E; x++) {
		if (start[x + 1])
			e->used[n_used++] = x;
		start[x + 1] += start[x];
	}
	for (uint32_t t = 0; t < n; t++)
		for (uint32_t j = 0; j < k; j++) {
			const uint32_t x = (uint32_t)idx[(size_t)t * k + j], at = start[x]++;
			e->rows_h[at] = (int32_t)(j * n + t);
			e->wsel_h[at] = w[(size_t)t * k + j];
		}
	for (uint32_t x = E; x > 0; x--) /* start[x] is now where x ends: shift back */
		start[x] = start[x - 1];
	start[0] = 0;
	return n_used;
}

/* One routed expert on the backend, from the compute tier, over its `cnt`
 * rows starting at rows_d[off]. */
static int backend_expert(inf_engine *e, uint32_t layer, uint32_t x, uint32_t off, uint32_t cnt,
			  k2_err *err)
{
	const inf_expert *ex;
	int rc = inf_experts_acquire(e->experts, e->tier, layer, x, &ex, err);
	if (rc < 0)
		return rc;
	rc = e->ops->expert_ffn(e->be, ex->mat, e->xk, cnt, e->rows_d + off, e->wsel_d + off,
				e->moe_out, e->mm);
	const uint64_t bytes = ex->lay.image_bytes;
	inf_experts_release(e->experts, e->tier, ex);
	if (rc < 0)
		return k2_err_set(err, rc, "layer %u expert %u on the %s backend: %s", layer, x,
				  e->ops->name, e->ops->error(e->be));
	e->st.backend_experts++;
	e->expert_bytes_used += bytes;
	return 0;
}

/* --cpu-experts: one routed expert on the CPU from its RAM copy; its rows of
 * cpu_out are copied to moe_out on the backend's queue. */
static int cpu_expert(inf_engine *e, uint32_t layer, uint32_t x, uint32_t off, uint32_t cnt,
		      uint32_t n, int *have_xk, k2_err *err)
{
	const uint32_t H = e->m->cfg.hidden_size, k = e->rp.top_k;
	const kern_backend_ops *B = e->ops;
	const inf_expert *ex;
	int rc;
	if (!*have_xk) {
		if ((rc = B->download(e->be, e->xk_h, e->xk, sizeof(float) * k * n * H)) < 0)
			return inf_op_failed(e, rc, "CPU experts' input", layer, err);
		*have_xk = 1;
	}
	const int in_ram = inf_experts_state(e->experts, INF_TIER_RAM, layer, x) == 2;
	double t0 = k2_now();
	if ((rc = inf_experts_acquire(e->experts, INF_TIER_RAM, layer, x, &ex, err)) < 0)
		return rc;
	if (!in_ram)
		inf_offload_observe_read(&e->off, k2_now() - t0);
	t0 = k2_now();
	for (uint32_t r = 0; r < cnt; r++)
		memset(e->cpu_out + (size_t)e->rows_h[off + r] * H, 0, sizeof(float) * H);
	rc = e->cpu->ops->expert_ffn(e->cpu, ex->mat, e->xk_h, cnt, e->rows_h + off,
				     e->wsel_h + off, e->cpu_out, e->mm);
	const uint64_t bytes = ex->lay.image_bytes;
	inf_experts_release(e->experts, INF_TIER_RAM, ex);
	if (rc < 0)
		return k2_err_set(err, rc, "layer %u expert %u on the CPU: %s", layer, x,
				  e->cpu->ops->error(e->cpu));
	for (uint32_t r = 0; r < cnt; r++) {
		const size_t row = (size_t)e->rows_h[off + r] * H;
		if ((rc = B->copy(e->be, e->moe_out + row, e->cpu_out + row, sizeof(float) * H)) < 0)
			return inf_op_failed(e, rc, "copying a CPU expert's output", layer, err);
	}
	const double dt = k2_now() - t0;
	inf_offload_observe_cpu(&e->off, cnt, dt);
	e->st.cpu_compute_s += dt;
	e->st.cpu_experts++;
	inf_experts_count_miss(e->experts, e->tier);
	e->expert_bytes_used += bytes;
	return 0;
}

/* Where each used expert is (read once), the CPU's share of the misses, and
 * the misses' loads started; experts ready or loading are pinned. */
static int plan_layer(inf_engine *e, uint32_t layer, uint32_t n_used, k2_err *err)
{
	inf_experts *d = e->experts;
	uint32_t n_miss = 0;
	memset(e->on_cpu, 0, e->rp.n_experts);
	for (uint32_t u = 0; u < n_used; u++) {
		const uint32_t x = e->used[u];
		e->state[x] = (uint8_t)inf_experts_state(d, e->tier, layer, x);
		if (e->state[x]) {
			inf_experts_pin(d, e->tier, layer, x);
			e->pinned[x] = 1;
		} else {
			e->miss_rows[n_miss] = e->start[x + 1] - e->start[x];
			e->miss_ram[n_miss] = e->cpu && inf_experts_state(d, INF_TIER_RAM, layer, x) == 2;
			e->miss[n_miss++] = x;
		}
	}
	if (e->cpu && n_miss) {
		const uint32_t io = e->opts.io_threads > 0 ? (uint32_t)e->opts.io_threads : 4;
		const double busy = inf_experts_loading(d, e->tier) * e->off.upload_s / io;
		inf_offload_plan(&e->off, e->miss_rows, e->miss_ram, n_miss, busy, io, e->plan);
		for (uint32_t i = 0; i < n_miss; i++)
			e->on_cpu[e->miss[i]] = e->plan[i];
	}
	uint32_t n_load = 0;
	for (uint32_t i = 0; i < n_miss; i++)
		if (!e->on_cpu[e->miss[i]])
			e->miss[n_load++] = e->miss[i];
	int rc = inf_experts_request_loads(d, e->tier, layer, e->miss, n_load, e->plan, err);
	if (rc < 0)
		return rc;
	for (uint32_t i = 0; i < n_load; i++)
		e->pinned[e->miss[i]] = e->plan[i];
	return 0;
}

/* Runs every used expert in the order of step 4 above. */
static int run_experts(inf_engine *e, uint32_t layer, uint32_t n, uint32_t n_used, k2_err *err)
{
	int have_xk = 0, rc;
	for (int pass = 0; pass < 4; pass++)
		for (uint32_t u = 0; u < n_used; u++) {
			const uint32_t x = e->used[u], off = e->start[x], cnt = e->start[x + 1] - off;
			const uint8_t st = e->state[x];
			const int want = pass == 0 ? st == 2 : pass == 1 ? st == 1
					 : pass == 2 ? !st && e->on_cpu[x] : !st && !e->on_cpu[x];
			if (!want)
				continue;
			rc = pass == 2 ? cpu_expert(e, layer, x, off, cnt, n, &have_xk, err)
				       : backend_expert(e, layer, x, off, cnt, err);
			if (e->pinned[x]) {
				inf_experts_unpin(e->experts, e->tier, layer, x);
				e->pinned[x] = 0;
			}
			if (rc < 0)
				return rc;
		}
	return 0;
}

int inf_moe_forward(inf_engine *e, uint32_t layer, uint32_t n, float *out, k2_err *err)
{
	const k2_model_config *c = &e->m->cfg;
	const kern_backend_ops *B = e->ops;
	kern_backend *be = e->be;
	const uint32_t k = e->rp.top_k, H = c->hidden_size, L = c->num_hidden_layers;
	int rc;

	if ((rc = route(e, layer, n, err)) < 0)
		return rc;
	int32_t *routes0 = e->routes + (size_t)e->routes_n * L * k;
	float *weights0 = e->routes_w + (size_t)e->routes_n * L * k;
	const float *w_h = (const float *)(e->route_h + (size_t)n * k);
	for (uint32_t t = 0; t < n; t++) {
		memcpy(routes0 + ((size_t)t * L + layer) * k, e->route_h + (size_t)t * k,
		       sizeof(int32_t) * k);
		memcpy(weights0 + ((size_t)t * L + layer) * k, w_h + (size_t)t * k,
		       sizeof(float) * k);
	}
	inf_prefetch_account(e, layer, routes0, n);

	const uint32_t n_used = group_rows(e, n);
	if ((rc = B->copy(be, e->rows_d, e->rows_h, sizeof(int32_t) * n * k)) < 0 ||
	    (rc = B->copy(be, e->wsel_d, e->wsel_h, sizeof(float) * n * k)) < 0 ||
	    (rc = B->memset(be, e->moe_out, 0, sizeof(float) * k * n * H)) < 0)
		return inf_op_failed(e, rc, "expert rows", layer, err);
	for (uint32_t j = 0; j < k; j++)
		if ((rc = B->copy(be, e->xk + (size_t)j * n * H, e->xn, sizeof(float) * n * H)) < 0)
			return inf_op_failed(e, rc, "expert inputs", layer, err);

	if ((rc = plan_layer(e, layer, n_used, err)) == 0)
		rc = run_experts(e, layer, n, n_used, err);
	if (rc < 0) { /* unpin what this layer pinned; the slots stay valid */
		for (uint32_t u = 0; u < n_used; u++)
			if (e->pinned[e->used[u]]) {
				inf_experts_unpin(e->experts, e->tier, layer, e->used[u]);
				e->pinned[e->used[u]] = 0;
			}
		return rc;
	}
	inf_experts_layer_done(e->experts, layer);
	if (e->cpu) {
		const double read_s = inf_experts_take_read_s(e->experts);
		if (read_s > 0)
			inf_offload_observe_upload(&e->off, read_s);
	}

	if ((rc = B->memset(be, out, 0, sizeof(float) * n * H)) < 0)
		return inf_op_failed(e, rc, "expert sum", layer, err);
	for (uint32_t j = 0; j < k; j++)
		if ((rc = B->add(be, out, e->moe_out + (size_t)j * n * H, (size_t)n * H)) < 0)
			return inf_op_failed(e, rc, "expert sum", layer, err);
	return inf_mlp_forward(e, layer, n, out, 1, err);
}

/* The first MoE layer's expert 0 through both paths, once. */
int inf_offload_calibrate(inf_engine *e, k2_err *err)
{
	const k2_model_config *c = &e->m->cfg;
	uint32_t l = 0;
	while (l < c->num_hidden_layers && !e->m->layers[l].moe)
		l++;
	if (l == c->num_hidden_layers)
		return 0;
	const inf_expert *ex;
	double t0 = k2_now();
	int rc = inf_experts_acquire(e->experts, e->tier, l, 0, &ex, err);
	if (rc < 0)
		return rc;
	inf_experts_release(e->experts, e->tier, ex);
	if ((rc = e->ops->sync(e->be)) < 0)
		return inf_op_failed(e, rc, "calibrating the upload", l, err);
	inf_offload_observe_upload(&e->off, k2_now() - t0);
	if ((rc = inf_experts_acquire(e->experts, INF_TIER_RAM, l, 0, &ex, err)) < 0)
		return rc;
	memset(e->xk_h, 0, sizeof(float) * c->hidden_size);
	double best = 0;
	for (int rep = 0; rep < 3 && rc == 0; rep++) {
		t0 = k2_now();
		rc = e->cpu->ops->expert_ffn(e->cpu, ex->mat, e->xk_h, 1, NULL, NULL, e->cpu_out,
					     e->mm);
		const double dt = k2_now() - t0;
		if (rep == 0 || dt < best)
			best = dt;
	}
	inf_experts_release(e->experts, INF_TIER_RAM, ex);
	if (rc < 0)
		return k2_err_set(err, rc, "calibrating the CPU experts: %s",
				  e->cpu->ops->error(e->cpu));
	inf_offload_observe_cpu(&e->off, 1, best);
	inf_experts_take_read_s(e->experts); /* the rate starts after this load */
	inf_experts_reset_stats(e->experts);
	return 0;
}
