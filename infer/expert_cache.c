/* expert_cache.c — the engine's own expert cache: a fixed number of RAM
 * slots, each holding one expert image read whole from experts/LLL/EEE with
 * open + pread, parsed with k2x_header_parse and checked against config.json;
 * a replacement policy (cache_policy.c) picks victims. Background I/O threads
 * serve prefetch requests (a setxattr user.k2.prefetch hint to k2fs, then
 * loads into free or evictable slots); the compute thread acquires experts,
 * waiting only for those not yet resident.
 *
 * Locking: one mutex (c->lock) protects slots, the key map, the queue, the
 * policy and the counters; file reads happen outside it on slots in state
 * LOADING, which only their loader touches. */
#include "infer_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#define EXPERT_MAX_BYTES (8ull << 30)

enum slot_state { SLOT_EMPTY = 0, SLOT_LOADING, SLOT_READY };

struct slot {
	int state;
	uint32_t key;
	int pins;
	uint8_t prefetched;  /* loaded by a prefetch, not used yet */
	void *buf;
	size_t cap;
	inf_expert ex;
};

struct job {
	uint32_t layer, key, epoch;
	char *hint;          /* non-NULL: a setxattr job */
};

struct inf_cache {
	char *dir;
	k2_model_config cfg;
	uint32_t n_experts, n_keys;
	pthread_mutex_t lock;
	pthread_cond_t changed;   /* a slot changed state or was unpinned */
	pthread_cond_t work;      /* the queue has jobs, or stop */
	pthread_cond_t idle;      /* the queue drained */
	struct slot *slots;
	uint32_t n_slots;
	uint32_t *free_slots, n_free;
	int32_t *key_slot;        /* [n_keys] slot or -1 */
	const inf_policy_ops *pol;
	void *pst;
	struct job *q;
	uint32_t q_cap, q_head, q_len;
	uint32_t *epoch;          /* [num_hidden_layers] */
	int busy, stop;
	pthread_t *th;
	int n_th;
	inf_cache_stats st;
	int for_prefetch;         /* victim filter mode (under lock) */
};

void inf_expert_path(char *buf, size_t n, uint32_t layer, uint32_t expert)
{
	snprintf(buf, n, "experts/%03" PRIu32 "/%03" PRIu32, layer, expert);
}

/* A product over sections (w, s): logical dims from the header (an int4
 * section's cols count bytes, two elements each). */
static void section_mat(const k2x_layout *lay, const uint8_t *base, int w, int s,
			uint32_t rows, uint32_t cols, kern_mat *m)
{
	m->format = lay->format;
	m->rows = rows;
	m->cols = cols;
	m->w = base + lay->sec[w].offset;
	m->s = lay->sec[s].bytes ? base + lay->sec[s].offset : NULL;
}

int inf_expert_load(const char *dir, const k2_model_config *cfg, uint32_t layer,
		    uint32_t expert, void **buf, size_t *cap, inf_expert *out, k2_err *err)
{
	char rel[64], path[4096];
	int rc;
	inf_expert_path(rel, sizeof(rel), layer, expert);
	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		if (e == ENOENT)
			return k2_err_set(err, -ENOENT,
					  "%s: missing (config.json gives layer %u %u routed "
					  "experts)", path, layer, cfg->n_routed_experts);
		return k2_err_set(err, -e, "%s: %s", path, strerror(e));
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		k2_err_set(err, rc, "%s: stat: %s", path, strerror(-rc));
		goto out_close;
	}
	uint64_t size = (uint64_t)st.st_size;
	if (size < K2X_HEADER_BYTES || size > EXPERT_MAX_BYTES) {
		rc = k2_err_set(err, -EINVAL,
				"%s: %" PRIu64 " bytes is not the size of an expert image", path,
				size);
		goto out_close;
	}
	if (*cap < size) {
		void *nb = NULL;
		if (posix_memalign(&nb, 4096, size) != 0) {
			rc = k2_err_set(err, -ENOMEM, "%s: out of memory for %" PRIu64 " bytes",
					path, size);
			goto out_close;
		}
		free(*buf);
		*buf = nb;
		*cap = size;
	}
	if ((rc = k2_pread_exact(fd, *buf, size, 0, path, err)) < 0)
		goto out_close;
	close(fd);
	fd = -1;
	k2x_layout lay;
	if ((rc = k2x_header_parse(*buf, size, size, path, &lay, err)) < 0)
		return rc;
	if (lay.layer != layer || lay.expert != expert)
		return k2_err_set(err, -EINVAL,
				  "%s: header says layer %u expert %u, expected layer %u expert %u",
				  path, lay.layer, lay.expert, layer, expert);
	if (lay.hidden != cfg->hidden_size || lay.inter != cfg->moe_intermediate_size)
		return k2_err_set(err, -EINVAL,
				  "%s: header says hidden %u intermediate %u, config.json says "
				  "hidden_size %u moe_intermediate_size %u", path, lay.hidden,
				  lay.inter, cfg->hidden_size, cfg->moe_intermediate_size);
	out->layer = layer;
	out->expert = expert;
	out->lay = lay;
	section_mat(&lay, *buf, K2X_GATE_W, K2X_GATE_S, lay.inter, lay.hidden, &out->gate);
	section_mat(&lay, *buf, K2X_UP_W, K2X_UP_S, lay.inter, lay.hidden, &out->up);
	section_mat(&lay, *buf, K2X_DOWN_W, K2X_DOWN_S, lay.hidden, lay.inter, &out->down);
	return 0;
out_close:
	if (fd >= 0)
		close(fd);
	return rc;
}

/* ---------------------------------------------------------------- slots */

static int victim_ok(void *ctx, uint32_t s)
{
	const inf_cache *c = ctx;
	const struct slot *sl = &c->slots[s];
	return sl->state == SLOT_READY && sl->pins == 0 &&
	       !(c->for_prefetch && sl->prefetched);
}

/* Finds a slot for key (under lock): a free one, or a victim. Returns the slot
 * (now LOADING, mapped to key) or -1 when every slot is busy. */
static int64_t claim_slot(inf_cache *c, uint32_t key, int for_prefetch)
{
	int64_t s;
	if (c->n_free)
		s = c->free_slots[--c->n_free];
	else {
		c->for_prefetch = for_prefetch;
		s = c->pol->victim(c->pst, victim_ok, c);
		if (s < 0)
			return -1;
		struct slot *v = &c->slots[s];
		c->pol->remove(c->pst, (uint32_t)s, v->key);
		c->key_slot[v->key] = -1;
		if (v->prefetched)
			c->st.prefetch_unused++;
		c->st.evictions++;
	}
	struct slot *sl = &c->slots[s];
	sl->state = SLOT_LOADING;
	sl->key = key;
	sl->pins = 0;
	sl->prefetched = (uint8_t)for_prefetch;
	c->key_slot[key] = (int32_t)s;
	return s;
}

/* Returns a slot whose load failed to the free list (under lock). */
static void drop_slot(inf_cache *c, int64_t s)
{
	struct slot *sl = &c->slots[s];
	c->key_slot[sl->key] = -1;
	sl->state = SLOT_EMPTY;
	sl->pins = 0;
	sl->prefetched = 0;
	c->free_slots[c->n_free++] = (uint32_t)s;
}

int inf_cache_acquire(inf_cache *c, uint32_t layer, uint32_t expert,
		      const inf_expert **out, k2_err *err)
{
	if (!c || expert >= c->n_experts || layer >= c->cfg.num_hidden_layers)
		return k2_err_set(err, -EINVAL, "expert %u of layer %u: no such expert", expert,
				  layer);
	const uint32_t key = layer * c->n_experts + expert;
	double t0 = 0;
	int counted = 0, rc;
	pthread_mutex_lock(&c->lock);
	for (;;) {
		int32_t s = c->key_slot[key];
		if (s >= 0 && c->slots[s].state == SLOT_READY) {
			struct slot *sl = &c->slots[s];
			if (!counted)
				c->st.hits++;
			sl->pins++;
			sl->prefetched = 0;
			c->pol->touch(c->pst, (uint32_t)s, key);
			if (t0 != 0)
				c->st.wait_s += k2_now() - t0;
			pthread_mutex_unlock(&c->lock);
			*out = &sl->ex;
			return 0;
		}
		if (s >= 0) { /* a background load in flight */
			if (!counted) {
				c->st.hits++;
				c->st.inflight++;
				counted = 1;
				t0 = k2_now();
			}
			pthread_cond_wait(&c->changed, &c->lock);
			continue;
		}
		int64_t ns = claim_slot(c, key, 0);
		if (ns < 0) { /* every slot pinned or loading: wait */
			if (t0 == 0)
				t0 = k2_now();
			pthread_cond_wait(&c->changed, &c->lock);
			continue;
		}
		if (counted) { /* the background load failed: count it as a miss */
			c->st.hits--;
			c->st.inflight--;
		}
		c->st.misses++;
		if (t0 == 0)
			t0 = k2_now();
		struct slot *sl = &c->slots[ns];
		pthread_mutex_unlock(&c->lock);
		rc = inf_expert_load(c->dir, &c->cfg, layer, expert, &sl->buf, &sl->cap, &sl->ex,
				     err);
		pthread_mutex_lock(&c->lock);
		if (rc < 0) {
			drop_slot(c, ns);
			pthread_cond_broadcast(&c->changed);
			pthread_mutex_unlock(&c->lock);
			return rc;
		}
		sl->state = SLOT_READY;
		sl->pins = 1;
		c->st.loads++;
		c->st.bytes_read += sl->ex.lay.image_bytes;
		c->st.slot_bytes = sl->ex.lay.image_bytes;
		c->pol->insert(c->pst, (uint32_t)ns, key);
		c->pol->touch(c->pst, (uint32_t)ns, key);
		c->st.wait_s += k2_now() - t0;
		pthread_cond_broadcast(&c->changed);
		pthread_mutex_unlock(&c->lock);
		*out = &sl->ex;
		return 0;
	}
}

void inf_cache_release(inf_cache *c, const inf_expert *e)
{
	if (!c || !e)
		return;
	pthread_mutex_lock(&c->lock);
	const uint32_t key = e->layer * c->n_experts + e->expert;
	int32_t s = key < c->n_keys ? c->key_slot[key] : -1;
	if (s >= 0 && c->slots[s].pins > 0 && --c->slots[s].pins == 0)
		pthread_cond_broadcast(&c->changed);
	pthread_mutex_unlock(&c->lock);
}

int inf_cache_state(inf_cache *c, uint32_t layer, uint32_t expert)
{
	if (!c || expert >= c->n_experts || layer >= c->cfg.num_hidden_layers)
		return 0;
	pthread_mutex_lock(&c->lock);
	int32_t s = c->key_slot[layer * c->n_experts + expert];
	int r = s < 0 ? 0 : c->slots[s].state == SLOT_READY ? 2 : 1;
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* ---------------------------------------------------------------- background I/O */

static int q_push(inf_cache *c, const struct job *j)
{
	if (c->q_len == c->q_cap)
		return -ENOSPC;
	c->q[(c->q_head + c->q_len) % c->q_cap] = *j;
	c->q_len++;
	return 0;
}

static void run_job(inf_cache *c, struct job *j)
{
	if (j->hint) {
		inf_prefetch_hint_send(c->dir, j->layer, j->hint);
		free(j->hint);
		return;
	}
	pthread_mutex_lock(&c->lock);
	if (j->epoch != c->epoch[j->layer] || c->key_slot[j->key] >= 0) {
		pthread_mutex_unlock(&c->lock); /* stale, or already there */
		return;
	}
	int64_t s = claim_slot(c, j->key, 1);
	if (s < 0) {
		c->st.prefetch_dropped++;
		pthread_mutex_unlock(&c->lock);
		return;
	}
	struct slot *sl = &c->slots[s];
	pthread_mutex_unlock(&c->lock);
	k2_err err;
	int rc = inf_expert_load(c->dir, &c->cfg, j->layer, j->key % c->n_experts, &sl->buf,
				 &sl->cap, &sl->ex, &err);
	pthread_mutex_lock(&c->lock);
	if (rc < 0)
		drop_slot(c, s); /* the compute thread will meet the error itself */
	else {
		sl->state = SLOT_READY;
		c->st.loads++;
		c->st.prefetch_loads++;
		c->st.bytes_read += sl->ex.lay.image_bytes;
		c->st.slot_bytes = sl->ex.lay.image_bytes;
		c->pol->insert(c->pst, (uint32_t)s, j->key);
	}
	pthread_cond_broadcast(&c->changed);
	pthread_mutex_unlock(&c->lock);
}

static void *io_main(void *arg)
{
	inf_cache *c = arg;
	pthread_mutex_lock(&c->lock);
	for (;;) {
		while (!c->stop && c->q_len == 0)
			pthread_cond_wait(&c->work, &c->lock);
		if (c->stop)
			break;
		struct job j = c->q[c->q_head];
		c->q_head = (c->q_head + 1) % c->q_cap;
		c->q_len--;
		c->busy++;
		pthread_mutex_unlock(&c->lock);
		run_job(c, &j);
		pthread_mutex_lock(&c->lock);
		c->busy--;
		if (c->q_len == 0 && c->busy == 0)
			pthread_cond_broadcast(&c->idle);
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

void inf_cache_prefetch(inf_cache *c, uint32_t layer, const int32_t *experts, uint32_t n)
{
	if (!c || c->n_th == 0 || n == 0 || layer >= c->cfg.num_hidden_layers)
		return;
	size_t hl = (size_t)n * 12 + 1;
	char *hint = malloc(hl);
	if (hint)
		inf_prefetch_hint_text(hint, hl, experts, n);
	pthread_mutex_lock(&c->lock);
	if (hint) {
		struct job j = {.layer = layer, .hint = hint};
		if (q_push(c, &j) < 0)
			free(hint);
	}
	for (uint32_t i = 0; i < n; i++) {
		if (experts[i] < 0 || (uint32_t)experts[i] >= c->n_experts)
			continue;
		struct job j = {.layer = layer, .key = layer * c->n_experts + (uint32_t)experts[i],
				.epoch = c->epoch[layer]};
		if (q_push(c, &j) < 0)
			c->st.prefetch_dropped++;
	}
	pthread_cond_broadcast(&c->work);
	pthread_mutex_unlock(&c->lock);
}

void inf_cache_layer_done(inf_cache *c, uint32_t layer)
{
	if (!c || layer >= c->cfg.num_hidden_layers)
		return;
	pthread_mutex_lock(&c->lock);
	c->epoch[layer]++;
	for (uint32_t x = 0; x < c->n_experts; x++) {
		int32_t s = c->key_slot[layer * c->n_experts + x];
		if (s >= 0 && c->slots[s].state == SLOT_READY && c->slots[s].prefetched) {
			c->slots[s].prefetched = 0;
			c->st.prefetch_unused++;
		}
	}
	pthread_mutex_unlock(&c->lock);
}

void inf_cache_drain(inf_cache *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	while (c->q_len || c->busy)
		pthread_cond_wait(&c->idle, &c->lock);
	pthread_mutex_unlock(&c->lock);
}

void inf_cache_get_stats(inf_cache *c, inf_cache_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	*out = c->st;
	out->slots = c->n_slots;
	pthread_mutex_unlock(&c->lock);
}

/* ---------------------------------------------------------------- create / destroy */

int inf_cache_create(const char *dir, const k2_model_config *cfg, uint32_t n_slots,
		     const inf_policy_ops *policy, int io_threads, inf_cache **out, k2_err *err)
{
	*out = NULL;
	if (n_slots == 0)
		return k2_err_set(err, -EINVAL, "expert cache: needs at least one slot");
	inf_cache *c = calloc(1, sizeof(*c));
	if (!c)
		return k2_err_set(err, -ENOMEM, "out of memory");
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->changed, NULL);
	pthread_cond_init(&c->work, NULL);
	pthread_cond_init(&c->idle, NULL);
	c->cfg = *cfg;
	c->n_experts = cfg->n_routed_experts;
	c->n_keys = cfg->num_hidden_layers * cfg->n_routed_experts;
	c->pol = policy ? policy : &inf_policy_lru;
	c->dir = strdup(dir);
	c->n_slots = n_slots;
	c->slots = calloc(n_slots, sizeof(*c->slots));
	c->free_slots = malloc(sizeof(uint32_t) * n_slots);
	c->key_slot = malloc(sizeof(int32_t) * (c->n_keys ? c->n_keys : 1));
	c->epoch = calloc(cfg->num_hidden_layers, sizeof(uint32_t));
	c->q_cap = 4096;
	c->q = calloc(c->q_cap, sizeof(*c->q));
	c->pst = c->pol->create(n_slots, c->n_keys);
	if (!c->dir || !c->slots || !c->free_slots || !c->key_slot || !c->epoch || !c->q ||
	    !c->pst) {
		inf_cache_destroy(c);
		return k2_err_set(err, -ENOMEM, "expert cache: out of memory for %u slots",
				  n_slots);
	}
	for (uint32_t i = 0; i < n_slots; i++)
		c->free_slots[i] = n_slots - 1 - i;
	c->n_free = n_slots;
	for (uint32_t i = 0; i < c->n_keys; i++)
		c->key_slot[i] = -1;
	if (io_threads > 0) {
		c->th = calloc((size_t)io_threads, sizeof(pthread_t));
		if (!c->th) {
			inf_cache_destroy(c);
			return k2_err_set(err, -ENOMEM, "out of memory");
		}
		for (int i = 0; i < io_threads; i++) {
			if (pthread_create(&c->th[i], NULL, io_main, c) != 0)
				break;
			c->n_th++;
		}
	}
	*out = c;
	return 0;
}

void inf_cache_destroy(inf_cache *c)
{
	if (!c)
		return;
	if (c->n_th) {
		pthread_mutex_lock(&c->lock);
		c->stop = 1;
		pthread_cond_broadcast(&c->work);
		pthread_mutex_unlock(&c->lock);
		for (int i = 0; i < c->n_th; i++)
			pthread_join(c->th[i], NULL);
	}
	if (c->q)
		for (uint32_t i = 0; i < c->q_len; i++)
			free(c->q[(c->q_head + i) % c->q_cap].hint);
	if (c->slots)
		for (uint32_t i = 0; i < c->n_slots; i++)
			free(c->slots[i].buf);
	if (c->pst)
		c->pol->destroy(c->pst);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->changed);
	pthread_cond_destroy(&c->work);
	pthread_cond_destroy(&c->idle);
	free(c->th);
	free(c->q);
	free(c->epoch);
	free(c->key_slot);
	free(c->free_slots);
	free(c->slots);
	free(c->dir);
	free(c);
}
