/* gpu_cache.c — the GPU expert cache's policy (gpu_impl.h): a key map (layer ·
 * E + expert → slot), slot states, pins and an inf_policy_ops replacement
 * policy over the slots of a kcu_cache, whose I/O threads, pinned staging
 * ring, copy stream and per-slot events do the moving (kernels/cuda_cache.cu).
 *
 * A slot's life here: EMPTY → LOADING (kcu_cache_load_fd issued, the file
 * descriptor held by the slot) → READY (gpu_cache_begin met the load, or a
 * poll saw it land; the descriptor is closed) → evicted for another key. A
 * failed load empties the slot and is reported by gpu_cache_begin with the
 * file's path. Only the engine's thread calls these functions. */
#include "gpu_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

enum { G_EMPTY = 0, G_LOADING, G_READY };

struct gslot {
	int state;
	uint32_t key;
	int fd;               /* open while LOADING */
	uint8_t pinned;
	uint8_t prefetched;   /* loaded by a prefetch, not used yet */
	uint8_t demand;       /* its load was started by gpu_cache_begin's caller */
	double t_issue;       /* k2_now() when the load was issued */
};

struct gpu_cache {
	kcu_cache *kc;
	char *dir;
	uint32_t n_layers, n_experts, n_keys, n_slots;
	k2x_layout *lay;      /* [n_layers]; image_bytes 0 for dense layers */
	int32_t *key_slot;    /* [n_keys] */
	struct gslot *slots;
	uint32_t *free_slots, n_free;
	const inf_policy_ops *pol;
	void *pst;
	int for_prefetch;     /* victim filter mode */
	uint32_t n_loading;
	inf_cache_stats st;
	double wait_s;
	uint64_t rate_loads;  /* kcu_cache loads and read seconds at the last */
	double rate_read_s;   /* gpu_cache_take_read_s */
};

static void path_of(const gpu_cache *g, uint32_t layer, uint32_t expert, char *buf, size_t n)
{
	char rel[64];
	inf_expert_path(rel, sizeof(rel), layer, expert);
	snprintf(buf, n, "%s/%s", g->dir, rel);
}

/* Reads and checks the header of experts/LLL/000 of every MoE layer. */
static int read_layouts(gpu_cache *g, const inf_model *m, uint64_t *max_bytes, k2_err *err)
{
	const k2_model_config *c = &m->cfg;
	*max_bytes = 0;
	for (uint32_t l = 0; l < g->n_layers; l++) {
		if (!m->layers[l].moe)
			continue;
		char path[4096];
		path_of(g, l, 0, path, sizeof(path));
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			int e = errno;
			return k2_err_set(err, -e, "%s: %s", path, e == ENOENT ? "missing" : strerror(e));
		}
		struct stat st;
		uint8_t *hdr = malloc(K2X_HEADER_BYTES);
		int rc = hdr ? 0 : -ENOMEM;
		if (rc == 0 && fstat(fd, &st) < 0)
			rc = k2_err_set(err, -errno, "%s: stat: %s", path, strerror(errno));
		else if (rc == 0 && (uint64_t)st.st_size < K2X_HEADER_BYTES)
			rc = k2_err_set(err, -EINVAL, "%s: %lld bytes is not the size of an expert "
					"image", path, (long long)st.st_size);
		else if (rc == 0)
			rc = k2_pread_exact(fd, hdr, K2X_HEADER_BYTES, 0, path, err);
		if (rc == 0)
			rc = k2x_header_parse(hdr, K2X_HEADER_BYTES, (uint64_t)st.st_size, path,
					      &g->lay[l], err);
		close(fd);
		free(hdr);
		if (rc == -ENOMEM)
			return k2_err_set(err, rc, "out of memory");
		if (rc < 0)
			return rc;
		const k2x_layout *y = &g->lay[l];
		if (y->layer != l || y->expert != 0)
			return k2_err_set(err, -EINVAL, "%s: header says layer %u expert %u", path,
					  y->layer, y->expert);
		if (y->hidden != c->hidden_size || y->inter != c->moe_intermediate_size)
			return k2_err_set(err, -EINVAL,
					  "%s: header says hidden %u intermediate %u, config.json "
					  "says hidden_size %u moe_intermediate_size %u", path,
					  y->hidden, y->inter, c->hidden_size,
					  c->moe_intermediate_size);
		if (y->image_bytes > *max_bytes)
			*max_bytes = y->image_bytes;
	}
	return 0;
}

int gpu_cache_create(kcu_ctx *ctx, const inf_model *m, uint32_t n_slots, uint64_t cache_bytes,
		     const inf_policy_ops *pol, int io_threads, gpu_cache **out, k2_err *err)
{
	const k2_model_config *c = &m->cfg;
	int rc;
	*out = NULL;
	gpu_cache *g = calloc(1, sizeof(*g));
	if (!g)
		return k2_err_set(err, -ENOMEM, "out of memory");
	g->n_layers = c->num_hidden_layers;
	g->n_experts = c->n_routed_experts;
	g->n_keys = g->n_layers * g->n_experts;
	g->pol = pol;
	g->dir = strdup(inf_model_dir(m));
	g->lay = calloc(g->n_layers ? g->n_layers : 1, sizeof(k2x_layout));
	g->key_slot = malloc(sizeof(int32_t) * (g->n_keys ? g->n_keys : 1));
	if (!g->dir || !g->lay || !g->key_slot) {
		rc = k2_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (uint32_t k = 0; k < g->n_keys; k++)
		g->key_slot[k] = -1;
	uint64_t slot_bytes;
	if ((rc = read_layouts(g, m, &slot_bytes, err)) < 0)
		goto fail;
	const uint64_t all = (uint64_t)m->n_moe_layers * g->n_experts;
	uint64_t n = n_slots;
	if (n == 0) {
		uint64_t budget = cache_bytes;
		if (budget == 0) {
			kcu_info info;
			if ((rc = kcu_ctx_info(ctx, &info)) < 0) {
				k2_err_set(err, rc, "expert cache: cannot ask the device its free "
					   "memory: %s (give --expert-cache)", kcu_ctx_error(ctx));
				goto fail;
			}
			budget = info.mem_free / 2;
		}
		n = slot_bytes ? budget / slot_bytes : 0;
	}
	if (n > all)
		n = all;
	if (n < 1)
		n = 1;
	g->n_slots = (uint32_t)n;
	kcu_cache_opts ko = {.n_slots = g->n_slots, .slot_bytes = slot_bytes,
			     .io_threads = io_threads > 0 ? (uint32_t)io_threads : 0};
	if ((rc = kcu_cache_create(ctx, &ko, &g->kc, err)) < 0)
		goto fail;
	g->slots = calloc(g->n_slots, sizeof(struct gslot));
	g->free_slots = malloc(sizeof(uint32_t) * g->n_slots);
	g->pst = pol->create(g->n_slots, g->n_keys);
	if (!g->slots || !g->free_slots || !g->pst) {
		rc = k2_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (uint32_t s = 0; s < g->n_slots; s++) {
		g->slots[s].fd = -1;
		g->free_slots[g->n_free++] = g->n_slots - 1 - s;
	}
	g->st.slots = g->n_slots;
	g->st.slot_bytes = slot_bytes;
	/* every load in flight holds a descriptor: allow as many as there are slots */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max &&
	    rl.rlim_cur < (rlim_t)g->n_slots + 256) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	*out = g;
	return 0;
fail:
	gpu_cache_destroy(g);
	return rc;
}

void gpu_cache_destroy(gpu_cache *g)
{
	if (!g)
		return;
	kcu_cache_destroy(g->kc); /* finishes the reads in flight before fds close */
	if (g->slots)
		for (uint32_t s = 0; s < g->n_slots; s++)
			if (g->slots[s].fd >= 0)
				close(g->slots[s].fd);
	if (g->pst)
		g->pol->destroy(g->pst);
	free(g->slots);
	free(g->free_slots);
	free(g->key_slot);
	free(g->lay);
	free(g->dir);
	free(g);
}

/* The slot's load was met or landed: it holds its expert. */
static void mark_ready(gpu_cache *g, struct gslot *sl)
{
	if (sl->state != G_LOADING)
		return;
	sl->state = G_READY;
	if (sl->fd >= 0)
		close(sl->fd);
	sl->fd = -1;
	g->n_loading--;
}

/* Empties a slot (its load failed, or it is evicted). */
static void drop_slot(gpu_cache *g, uint32_t s)
{
	struct gslot *sl = &g->slots[s];
	if (sl->state == G_LOADING)
		g->n_loading--;
	if (sl->fd >= 0)
		close(sl->fd);
	sl->fd = -1;
	g->pol->remove(g->pst, s, sl->key);
	g->key_slot[sl->key] = -1;
	sl->state = G_EMPTY;
	sl->pinned = sl->prefetched = sl->demand = 0;
}

/* An unpinned slot whose load has ended: landed, it becomes READY (its
 * descriptor closed); failed, it is emptied (a later use loads it again and
 * meets the error itself). Returns the slot's state after. */
static int settle(gpu_cache *g, uint32_t s)
{
	struct gslot *sl = &g->slots[s];
	if (sl->state != G_LOADING || sl->pinned)
		return sl->state;
	int p = kcu_cache_poll(g->kc, s);
	if (p == 1)
		mark_ready(g, sl);
	else if (p < 0) {
		if (sl->prefetched)
			g->st.prefetch_dropped++;
		drop_slot(g, s);
		g->free_slots[g->n_free++] = s;
	}
	return sl->state;
}

/* Settles every load in flight. */
static void sweep_landed(gpu_cache *g)
{
	for (uint32_t s = 0; s < g->n_slots && g->n_loading; s++)
		settle(g, s);
}

/* A demand load found no READY victim: waits for an unpinned load in flight
 * to land and returns its slot, now evictable (or free, if that load failed);
 * -1 when every slot is pinned. */
static int64_t wait_for_victim(gpu_cache *g)
{
	for (uint32_t s = 0; s < g->n_slots; s++) {
		struct gslot *sl = &g->slots[s];
		if (sl->state != G_LOADING || sl->pinned)
			continue;
		k2_err e;
		if (kcu_cache_wait(g->kc, s, &e) == 0) {
			mark_ready(g, sl);
			return s;
		}
		drop_slot(g, s);
		g->free_slots[g->n_free++] = s;
		return s;
	}
	return -1;
}

static int victim_ok(void *ctx, uint32_t s)
{
	const gpu_cache *g = ctx;
	const struct gslot *sl = &g->slots[s];
	return sl->state == G_READY && !sl->pinned && !(g->for_prefetch && sl->prefetched);
}

int gpu_cache_state(gpu_cache *g, uint32_t layer, uint32_t expert)
{
	if (!g || layer >= g->n_layers || expert >= g->n_experts)
		return 0;
	int32_t s = g->key_slot[layer * g->n_experts + expert];
	if (s < 0)
		return 0;
	int st = settle(g, (uint32_t)s);
	return st == G_READY ? 2 : st == G_LOADING ? 1 : 0;
}

uint32_t gpu_cache_loading(gpu_cache *g) { return g ? g->n_loading : 0; }

uint64_t gpu_cache_image_bytes(const gpu_cache *g, uint32_t layer)
{
	return layer < g->n_layers ? g->lay[layer].image_bytes : 0;
}

/* A slot for a new load: a free one, else a victim of the policy (for a
 * demand load, after waiting for a load in flight if need be). -1 when none. */
static int64_t claim_slot(gpu_cache *g, int prefetch)
{
	if (!g->n_free)
		sweep_landed(g);
	if (g->n_free)
		return g->free_slots[--g->n_free];
	g->for_prefetch = prefetch;
	int64_t s = g->pol->victim(g->pst, victim_ok, g);
	if (s < 0 && !prefetch && wait_for_victim(g) >= 0) {
		if (g->n_free)
			return g->free_slots[--g->n_free];
		s = g->pol->victim(g->pst, victim_ok, g);
	}
	if (s < 0)
		return -1;
	if (g->slots[s].prefetched)
		g->st.prefetch_unused++;
	drop_slot(g, (uint32_t)s);
	g->st.evictions++;
	return s;
}

int gpu_cache_request(gpu_cache *g, uint32_t layer, uint32_t expert, int prefetch, k2_err *err)
{
	if (layer >= g->n_layers || expert >= g->n_experts || !g->lay[layer].image_bytes)
		return k2_err_set(err, -EINVAL, "layer %u expert %u: not a routed expert", layer,
				  expert);
	const uint32_t key = layer * g->n_experts + expert;
	if (g->key_slot[key] >= 0)
		return 0;
	char path[4096];
	path_of(g, layer, expert, path, sizeof(path));
	const uint64_t bytes = g->lay[layer].image_bytes;
	int rc = 0, fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0) {
		int e = errno;
		rc = k2_err_set(err, -e, "%s: %s", path, e == ENOENT ? "missing" : strerror(e));
	} else if (fstat(fd, &st) < 0) {
		rc = k2_err_set(err, -errno, "%s: stat: %s", path, strerror(errno));
	} else if ((uint64_t)st.st_size != bytes) {
		rc = k2_err_set(err, -EINVAL, "%s: %lld bytes, but the images of layer %u are "
				"%" PRIu64 " bytes (experts/%03u/000)", path,
				(long long)st.st_size, layer, bytes, layer);
	}
	int64_t s = -1;
	if (rc == 0 && (s = claim_slot(g, prefetch)) < 0)
		rc = k2_err_set(err, -ENOSPC, "expert cache: all %u slots are in use", g->n_slots);
	if (rc == 0 && (rc = kcu_cache_load_fd(g->kc, (uint32_t)s, fd, 0, bytes, !prefetch)) < 0) {
		k2_err_set(err, rc, "%s: cannot start its upload (slot %lld)", path, (long long)s);
		g->free_slots[g->n_free++] = (uint32_t)s;
	}
	if (rc < 0) {
		if (fd >= 0)
			close(fd);
		if (prefetch)
			g->st.prefetch_dropped++;
		return rc;
	}
	struct gslot *sl = &g->slots[s];
	sl->state = G_LOADING;
	sl->key = key;
	sl->fd = fd;
	sl->pinned = 0;
	sl->prefetched = (uint8_t)prefetch;
	sl->demand = (uint8_t)!prefetch;
	g->key_slot[key] = (int32_t)s;
	g->n_loading++;
	g->pol->insert(g->pst, (uint32_t)s, key);
	g->st.loads++;
	g->st.bytes_read += bytes;
	if (prefetch)
		g->st.prefetch_loads++;
	else
		g->st.misses++;
	return 0;
}

void gpu_cache_pin(gpu_cache *g, uint32_t layer, uint32_t expert)
{
	int32_t s = g->key_slot[layer * g->n_experts + expert];
	if (s >= 0)
		g->slots[s].pinned = 1;
}

int gpu_cache_begin(gpu_cache *g, uint32_t layer, uint32_t expert, kern_mat mats[3],
		    k2_err *err)
{
	const uint32_t key = layer * g->n_experts + expert;
	int rc;
	if (g->key_slot[key] < 0) {
		if ((rc = gpu_cache_request(g, layer, expert, 0, err)) < 0)
			return rc;
	} else if (!g->slots[g->key_slot[key]].demand) { /* a demand load counted its miss */
		g->st.hits++;
		if (g->slots[g->key_slot[key]].state == G_LOADING)
			g->st.inflight++;
	}
	const uint32_t s = (uint32_t)g->key_slot[key];
	struct gslot *sl = &g->slots[s];
	sl->pinned = 1;
	const double t0 = k2_now();
	rc = kcu_cache_begin_use(g->kc, s, err);
	const double dt = k2_now() - t0;
	g->wait_s += dt;
	g->st.wait_s += dt;
	if (rc < 0) {
		char path[4096], msg[sizeof(err->msg)];
		path_of(g, layer, expert, path, sizeof(path));
		snprintf(msg, sizeof(msg), "%s", err->msg);
		k2_err_set(err, rc, "%s: loading into the GPU cache failed: %s", path, msg);
		(void)kcu_cache_end_use(g->kc, s); /* in case only the stream wait failed */
		drop_slot(g, s);
		g->free_slots[g->n_free++] = s;
		return rc;
	}
	mark_ready(g, sl);
	sl->prefetched = 0;
	sl->demand = 0;
	g->pol->touch(g->pst, s, key);
	kcu_expert_mats(&g->lay[layer], kcu_cache_slot(g->kc, s), mats);
	return 0;
}

void gpu_cache_end(gpu_cache *g, uint32_t layer, uint32_t expert)
{
	int32_t s = g->key_slot[layer * g->n_experts + expert];
	if (s < 0)
		return;
	kcu_cache_end_use(g->kc, (uint32_t)s);
	g->slots[s].pinned = 0;
}

void gpu_cache_unpin(gpu_cache *g, uint32_t layer, uint32_t expert)
{
	int32_t s = g->key_slot[layer * g->n_experts + expert];
	if (s >= 0)
		g->slots[s].pinned = 0;
}

void gpu_cache_layer_done(gpu_cache *g, uint32_t layer)
{
	sweep_landed(g); /* closes the descriptors of loads that have ended */
	for (uint32_t x = 0; x < g->n_experts; x++) {
		int32_t s = g->key_slot[layer * g->n_experts + x];
		if (s >= 0 && g->slots[s].prefetched) {
			g->slots[s].prefetched = 0;
			g->st.prefetch_unused++;
		}
	}
}

void gpu_cache_count_miss(gpu_cache *g)
{
	g->st.misses++;
}

double gpu_cache_take_read_s(gpu_cache *g)
{
	kcu_cache_stats ks;
	kcu_cache_stats_get(g->kc, &ks);
	if (ks.loads <= g->rate_loads)
		return 0;
	const double per = (ks.read_seconds - g->rate_read_s) / (double)(ks.loads - g->rate_loads);
	g->rate_loads = ks.loads;
	g->rate_read_s = ks.read_seconds;
	return per;
}

void gpu_cache_reset_stats(gpu_cache *g)
{
	const uint32_t slots = g->st.slots;
	const uint64_t slot_bytes = g->st.slot_bytes;
	memset(&g->st, 0, sizeof(g->st));
	g->st.slots = slots;
	g->st.slot_bytes = slot_bytes;
	g->wait_s = 0;
}

void gpu_cache_get_stats(gpu_cache *g, inf_cache_stats *cs, inf_gpu_stats *gs)
{
	if (cs)
		*cs = g->st;
	if (gs) {
		kcu_cache_stats ks;
		kcu_cache_stats_get(g->kc, &ks);
		gs->uploads = ks.loads - ks.failed;
		gs->upload_bytes = ks.bytes;
		gs->upload_wait_s = g->wait_s;
	}
}
