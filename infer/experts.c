/* experts.c — the expert directory (infer.h): for every routed expert (key =
 * layer · n_experts + expert) where it lives in each tier, with one slot table,
 * state machine, pin count, prefetched flag, replacement policy and counters
 * per tier, and the movers between tiers:
 *
 *   mount → RAM      pread of the whole image into a RAM slot: on the
 *                    engine's thread (a demand miss) or on the directory's
 *                    readers (queued requests and prefetches);
 *   RAM → device     the backend's slot_load_mem from a ready RAM slot (the
 *                    RAM slot stays pinned until the copy has landed);
 *   mount → device   the backend's slot_load_fd (its readers pread into
 *                    staging and copy), the descriptor held while loading.
 *
 * A slot's life in any tier: EMPTY → LOADING (claimed for a key) → READY →
 * evicted (a victim of the tier's policy: READY, unpinned, and for a prefetch
 * not itself an unused prefetch). A failed load empties the slot; whoever
 * acquires the expert next meets the error itself, with the file's path.
 *
 * Locking: one mutex (d->lock) protects every table, the queue, the policies
 * and the counters. Blocking work — a RAM slot's pread, waiting for a device
 * slot — runs with the lock dropped, on a slot that is LOADING (which only its
 * loader changes) or pinned (which nothing evicts). Device slots are driven by
 * the engine's thread alone (the backend's slots are single-user); RAM slots by
 * the engine's thread and the readers. */
#include "infer_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Queued reader jobs at most; a full queue drops prefetches. */
#define READER_QUEUE 4096u

enum slot_state { SLOT_EMPTY = 0, SLOT_LOADING, SLOT_READY };

struct slot {
	uint8_t state;
	uint8_t prefetched;  /* loaded by a prefetch, not used yet */
	uint8_t demand;      /* its load was a demand request: the miss is counted */
	uint32_t key;
	uint32_t pins;
	int fd;              /* device: open while loading from the mount */
	int32_t src;         /* device: the RAM slot it copies from while loading, or -1 */
	double t_issue;      /* k2_now() at the load's start */
	void *buf;           /* RAM: the image */
	size_t cap;
	inf_expert ex;       /* valid when READY */
};

struct tier {
	int present;
	uint32_t n_slots;
	struct slot *slots;
	uint32_t *free_slots, n_free;
	int32_t *key_slot;   /* [n_keys] slot or -1 */
	void *pst;           /* the policy's state */
	uint32_t n_loading;
	int for_prefetch;    /* victim filter of the claim in progress */
	inf_tier_stats st;
};

struct job {
	uint32_t key, epoch;
	uint8_t prefetch;
	char *hint;          /* non-NULL: a setxattr job for layer key / n_experts */
};

struct inf_experts {
	char *dir;
	k2_model_config cfg;
	uint32_t n_layers, n_experts, n_keys;
	k2x_layout *lay;     /* [n_layers] from experts/LLL/000 (device tier), else zero */
	const inf_policy_ops *pol;
	pthread_mutex_t lock;
	pthread_cond_t changed;   /* a slot changed state or was unpinned */
	pthread_cond_t work;      /* the queue has jobs, or stop */
	pthread_cond_t idle;      /* the queue drained */
	struct tier t[INF_TIERS];
	/* RAM readers */
	struct job *q;
	uint32_t q_head, q_len;
	uint32_t *epoch;          /* [n_layers] bumped by layer_done: stale prefetches */
	int busy, stop;
	pthread_t *th;
	int n_th;
	/* device tier */
	kern_backend *be;
	kern_slots *slots;
	uint64_t rate_loads;      /* slot loads and read seconds at the last take_read_s */
	double rate_read_s;
};

const char *inf_tier_name(int tier)
{
	return tier == INF_TIER_DEVICE ? "device" : "ram";
}

static uint32_t key_of(const inf_experts *d, uint32_t layer, uint32_t expert)
{
	return layer * d->n_experts + expert;
}

static int valid(const inf_experts *d, int tier, uint32_t layer, uint32_t expert)
{
	return d && tier >= 0 && tier < INF_TIERS && d->t[tier].present &&
	       layer < d->n_layers && expert < d->n_experts;
}

/* ---------------------------------------------------------------- slots (under lock) */

static int victim_ok(void *ctx, uint32_t s)
{
	const struct tier *t = ctx;
	const struct slot *sl = &t->slots[s];
	return sl->state == SLOT_READY && sl->pins == 0 && !(t->for_prefetch && sl->prefetched);
}

static void release_source(inf_experts *d, struct slot *sl)
{
	if (sl->src >= 0) {
		struct slot *r = &d->t[INF_TIER_RAM].slots[sl->src];
		if (r->pins > 0 && --r->pins == 0)
			pthread_cond_broadcast(&d->changed);
		sl->src = -1;
	}
	if (sl->fd >= 0)
		close(sl->fd);
	sl->fd = -1;
}

/* Empties slot s of tier t and returns it to the free list. */
static void drop_slot(inf_experts *d, int tier, uint32_t s)
{
	struct tier *t = &d->t[tier];
	struct slot *sl = &t->slots[s];
	if (sl->state == SLOT_LOADING)
		t->n_loading--;
	release_source(d, sl);
	if (sl->state == SLOT_READY)
		d->pol->remove(t->pst, s, sl->key);
	t->key_slot[sl->key] = -1;
	sl->state = SLOT_EMPTY;
	sl->pins = 0;
	sl->prefetched = sl->demand = 0;
	t->free_slots[t->n_free++] = s;
	pthread_cond_broadcast(&d->changed);
}

/* A loaded slot becomes READY and enters the policy. */
static void mark_ready(inf_experts *d, int tier, uint32_t s)
{
	struct tier *t = &d->t[tier];
	struct slot *sl = &t->slots[s];
	if (sl->state != SLOT_LOADING)
		return;
	sl->state = SLOT_READY;
	t->n_loading--;
	release_source(d, sl);
	d->pol->insert(t->pst, s, sl->key);
	if (tier == INF_TIER_DEVICE) {
		sl->ex.layer = sl->key / d->n_experts;
		sl->ex.expert = sl->key % d->n_experts;
		sl->ex.lay = d->lay[sl->ex.layer];
		inf_expert_mats(&sl->ex.lay, d->be->ops->slot_ptr(d->slots, s), sl->ex.mat);
	}
	pthread_cond_broadcast(&d->changed);
}

/* Device: a load that has landed becomes READY; an unpinned one that failed is
 * emptied (a later acquire loads it again and meets the error itself; a
 * pinned one is left to its acquire, which reports it). */
static void settle(inf_experts *d, uint32_t s)
{
	struct slot *sl = &d->t[INF_TIER_DEVICE].slots[s];
	if (sl->state != SLOT_LOADING)
		return;
	int p = d->be->ops->slot_poll(d->slots, s);
	if (p == 1)
		mark_ready(d, INF_TIER_DEVICE, s);
	else if (p < 0 && !sl->pins) {
		if (sl->prefetched)
			d->t[INF_TIER_DEVICE].st.prefetch_dropped++;
		drop_slot(d, INF_TIER_DEVICE, s);
	}
}

static void sweep_landed(inf_experts *d)
{
	struct tier *t = &d->t[INF_TIER_DEVICE];
	for (uint32_t s = 0; s < t->n_slots && t->n_loading; s++)
		settle(d, s);
}

/* Device, a demand claim found no victim: waits (lock dropped) for an
 * unpinned load in flight, which then is READY or empty. 0 when it waited,
 * -1 when every slot is pinned. */
static int wait_for_landing(inf_experts *d)
{
	struct tier *t = &d->t[INF_TIER_DEVICE];
	for (uint32_t s = 0; s < t->n_slots; s++) {
		struct slot *sl = &t->slots[s];
		if (sl->state != SLOT_LOADING || sl->pins)
			continue;
		k2_err e;
		sl->pins++;
		pthread_mutex_unlock(&d->lock);
		int rc = d->be->ops->slot_wait(d->slots, s, &e);
		pthread_mutex_lock(&d->lock);
		sl->pins--;
		if (rc == 0)
			mark_ready(d, INF_TIER_DEVICE, s);
		else
			drop_slot(d, INF_TIER_DEVICE, s);
		return 0;
	}
	return -1;
}

/* A slot of `tier` for key (LOADING, mapped): a free one, else the policy's
 * victim (for a device demand, after waiting for a load to land if need be).
 * -1 when every slot is busy. */
static int64_t claim_slot(inf_experts *d, int tier, uint32_t key, int prefetch)
{
	struct tier *t = &d->t[tier];
	if (!t->n_free && tier == INF_TIER_DEVICE)
		sweep_landed(d);
	int64_t s = -1;
	while (s < 0) {
		if (t->n_free) {
			s = t->free_slots[--t->n_free];
			break;
		}
		t->for_prefetch = prefetch;
		s = d->pol->victim(t->pst, victim_ok, t);
		if (s >= 0) {
			struct slot *v = &t->slots[s];
			if (v->prefetched)
				t->st.prefetch_unused++;
			t->st.evictions++;
			drop_slot(d, tier, (uint32_t)s);
			t->n_free--; /* drop_slot freed it: take it back */
			break;
		}
		if (prefetch || tier != INF_TIER_DEVICE || wait_for_landing(d) < 0)
			return -1;
	}
	struct slot *sl = &t->slots[s];
	sl->state = SLOT_LOADING;
	sl->key = key;
	sl->pins = 0;
	sl->prefetched = (uint8_t)prefetch;
	sl->demand = (uint8_t)!prefetch;
	sl->fd = -1;
	sl->src = -1;
	sl->t_issue = k2_now();
	t->key_slot[key] = (int32_t)s;
	t->n_loading++;
	return s;
}

static void count_load(struct tier *t, int prefetch, uint64_t bytes, int moved)
{
	t->st.loads++;
	if (moved)
		t->st.bytes_moved += bytes;
	else
		t->st.bytes_read += bytes;
	if (prefetch)
		t->st.prefetch_loads++;
}

/* ---------------------------------------------------------------- the RAM mover */

/* Loads key into RAM slot s (claimed, LOADING) with the lock dropped; back
 * under lock, the slot is READY or emptied. */
static int ram_load(inf_experts *d, uint32_t s, int prefetch, k2_err *err)
{
	struct tier *t = &d->t[INF_TIER_RAM];
	struct slot *sl = &t->slots[s];
	const uint32_t key = sl->key;
	pthread_mutex_unlock(&d->lock);
	int rc = inf_expert_read(d->dir, &d->cfg, key / d->n_experts, key % d->n_experts,
				 &sl->buf, &sl->cap, &sl->ex, err);
	pthread_mutex_lock(&d->lock);
	if (rc < 0) {
		drop_slot(d, INF_TIER_RAM, s);
		return rc;
	}
	count_load(t, prefetch, sl->ex.lay.image_bytes, 0);
	t->st.slot_bytes = sl->ex.lay.image_bytes;
	mark_ready(d, INF_TIER_RAM, s);
	return 0;
}

static int q_push(inf_experts *d, const struct job *j, int front)
{
	if (d->q_len == READER_QUEUE)
		return -ENOSPC;
	if (front) {
		d->q_head = (d->q_head + READER_QUEUE - 1) % READER_QUEUE;
		d->q[d->q_head] = *j;
	} else
		d->q[(d->q_head + d->q_len) % READER_QUEUE] = *j;
	d->q_len++;
	return 0;
}

/* A reader's job, under lock. */
static void run_job(inf_experts *d, struct job *j)
{
	struct tier *t = &d->t[INF_TIER_RAM];
	if (j->hint) {
		pthread_mutex_unlock(&d->lock);
		inf_prefetch_hint_send(d->dir, j->key / d->n_experts, j->hint);
		free(j->hint);
		pthread_mutex_lock(&d->lock);
		return;
	}
	if ((j->prefetch && j->epoch != d->epoch[j->key / d->n_experts]) ||
	    t->key_slot[j->key] >= 0)
		return; /* stale, or already there */
	int64_t s = claim_slot(d, INF_TIER_RAM, j->key, j->prefetch);
	if (s < 0) {
		if (j->prefetch)
			t->st.prefetch_dropped++;
		return;
	}
	k2_err err;
	if (ram_load(d, (uint32_t)s, j->prefetch, &err) < 0 && j->prefetch)
		t->st.prefetch_dropped++;
}

static void *reader_main(void *arg)
{
	inf_experts *d = arg;
	pthread_mutex_lock(&d->lock);
	for (;;) {
		while (!d->stop && d->q_len == 0)
			pthread_cond_wait(&d->work, &d->lock);
		if (d->stop)
			break;
		struct job j = d->q[d->q_head];
		d->q_head = (d->q_head + 1) % READER_QUEUE;
		d->q_len--;
		d->busy++;
		run_job(d, &j);
		d->busy--;
		if (d->q_len == 0 && d->busy == 0)
			pthread_cond_broadcast(&d->idle);
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

/* ---------------------------------------------------------------- the device mover */

/* Starts loading key into device slot s (claimed, LOADING): from its ready
 * RAM copy, else from the mount. Under lock; nothing here blocks. */
static int device_load(inf_experts *d, uint32_t s, int prefetch, k2_err *err)
{
	struct tier *t = &d->t[INF_TIER_DEVICE];
	struct slot *sl = &t->slots[s];
	const uint32_t key = sl->key, layer = key / d->n_experts, expert = key % d->n_experts;
	const uint64_t bytes = d->lay[layer].image_bytes;
	const kern_backend_ops *ops = d->be->ops;
	int rc;
	const struct tier *r = &d->t[INF_TIER_RAM];
	const int32_t rs = r->present ? r->key_slot[key] : -1;
	if (rs >= 0 && r->slots[rs].state == SLOT_READY && r->slots[rs].ex.lay.image_bytes == bytes) {
		if ((rc = ops->slot_load_mem(d->slots, s, r->slots[rs].buf, bytes, !prefetch)) == 0) {
			sl->src = rs;
			d->t[INF_TIER_RAM].slots[rs].pins++;
			count_load(t, prefetch, bytes, 1);
			return 0;
		}
	} else {
		char path[INF_PATH_MAX];
		uint64_t size;
		int fd = inf_expert_open(d->dir, &d->cfg, layer, expert, path, sizeof(path), &size, err);
		if (fd < 0) {
			drop_slot(d, INF_TIER_DEVICE, s);
			return fd;
		}
		if (size != bytes) {
			close(fd);
			drop_slot(d, INF_TIER_DEVICE, s);
			return k2_err_set(err, -EINVAL, "%s: %" PRIu64 " bytes, but the images of "
					  "layer %u are %" PRIu64 " bytes (experts/%03u/000)", path,
					  size, layer, bytes, layer);
		}
		if ((rc = ops->slot_load_fd(d->slots, s, fd, 0, bytes, !prefetch)) == 0) {
			sl->fd = fd;
			count_load(t, prefetch, bytes, 0);
			return 0;
		}
		close(fd);
	}
	drop_slot(d, INF_TIER_DEVICE, s);
	return k2_err_set(err, rc, "layer %u expert %u: cannot start its upload (slot %u)", layer,
			  expert, s);
}

/* ---------------------------------------------------------------- requests */

/* Under lock. */
static int request_locked(inf_experts *d, int tier, uint32_t layer, uint32_t expert,
			  int prefetch, k2_err *err)
{
	struct tier *t = &d->t[tier];
	const uint32_t key = key_of(d, layer, expert);
	if (t->key_slot[key] >= 0)
		return 0;
	if (tier == INF_TIER_RAM) {
		if (d->n_th == 0)
			return 0;
		struct job j = {.key = key, .epoch = d->epoch[layer], .prefetch = (uint8_t)prefetch};
		if (q_push(d, &j, !prefetch) < 0) {
			if (prefetch)
				t->st.prefetch_dropped++;
			return 0;
		}
		pthread_cond_signal(&d->work);
		return 0;
	}
	if (!d->lay[layer].image_bytes)
		return k2_err_set(err, -EINVAL, "layer %u expert %u: not a routed expert", layer,
				  expert);
	int64_t s = claim_slot(d, tier, key, prefetch);
	if (s < 0) {
		if (prefetch)
			t->st.prefetch_dropped++;
		return k2_err_set(err, -ENOSPC, "expert cache: all %u %s slots are in use",
				  t->n_slots, inf_tier_name(tier));
	}
	if (!prefetch)
		t->st.misses++;
	int rc = device_load(d, (uint32_t)s, prefetch, err);
	if (rc < 0 && prefetch)
		t->st.prefetch_dropped++;
	return rc;
}

int inf_experts_request(inf_experts *d, int tier, uint32_t layer, uint32_t expert,
			int prefetch, k2_err *err)
{
	if (!valid(d, tier, layer, expert))
		return k2_err_set(err, -EINVAL, "expert %u of layer %u: no such expert", expert, layer);
	pthread_mutex_lock(&d->lock);
	int rc = request_locked(d, tier, layer, expert, prefetch, err);
	pthread_mutex_unlock(&d->lock);
	return rc;
}

int inf_experts_request_loads(inf_experts *d, int tier, uint32_t layer,
			      const uint32_t *experts, uint32_t n, uint8_t *pinned, k2_err *err)
{
	int rc = 0;
	memset(pinned, 0, n);
	if (n == 0 || !valid(d, tier, layer, 0))
		return 0;
	pthread_mutex_lock(&d->lock);
	struct tier *t = &d->t[tier];
	/* RAM: each demand goes to the front of the queue, so the last first */
	for (uint32_t k = 0; k < n; k++) {
		const uint32_t i = tier == INF_TIER_RAM ? n - 1 - k : k;
		if (experts[i] >= d->n_experts)
			continue;
		rc = request_locked(d, tier, layer, experts[i], 0, err);
		if (rc == -ENOSPC) {
			rc = 0;
			break;
		}
		if (rc < 0)
			break;
		const int32_t s = t->key_slot[key_of(d, layer, experts[i])];
		if (tier == INF_TIER_DEVICE && s >= 0) {
			t->slots[s].pins++;
			pinned[i] = 1;
		}
	}
	pthread_mutex_unlock(&d->lock);
	return rc;
}

int inf_experts_state(inf_experts *d, int tier, uint32_t layer, uint32_t expert)
{
	if (!valid(d, tier, layer, expert))
		return 0;
	pthread_mutex_lock(&d->lock);
	struct tier *t = &d->t[tier];
	int32_t s = t->key_slot[key_of(d, layer, expert)];
	if (s >= 0 && tier == INF_TIER_DEVICE)
		settle(d, (uint32_t)s);
	s = t->key_slot[key_of(d, layer, expert)];
	int r = s < 0 ? 0 : t->slots[s].state == SLOT_READY ? 2 : 1;
	pthread_mutex_unlock(&d->lock);
	return r;
}

void inf_experts_pin(inf_experts *d, int tier, uint32_t layer, uint32_t expert)
{
	if (!valid(d, tier, layer, expert))
		return;
	pthread_mutex_lock(&d->lock);
	int32_t s = d->t[tier].key_slot[key_of(d, layer, expert)];
	if (s >= 0)
		d->t[tier].slots[s].pins++;
	pthread_mutex_unlock(&d->lock);
}

static void unpin_slot(inf_experts *d, int tier, int32_t s)
{
	struct slot *sl = &d->t[tier].slots[s];
	if (sl->pins > 0 && --sl->pins == 0)
		pthread_cond_broadcast(&d->changed);
}

void inf_experts_unpin(inf_experts *d, int tier, uint32_t layer, uint32_t expert)
{
	if (!valid(d, tier, layer, expert))
		return;
	pthread_mutex_lock(&d->lock);
	int32_t s = d->t[tier].key_slot[key_of(d, layer, expert)];
	if (s >= 0)
		unpin_slot(d, tier, s);
	pthread_mutex_unlock(&d->lock);
}

/* ---------------------------------------------------------------- acquire / release */

/* A hit (or the use of a demand load) on slot s: pinned, touched. Under lock. */
static const inf_expert *use_slot(inf_experts *d, int tier, int32_t s)
{
	struct tier *t = &d->t[tier];
	struct slot *sl = &t->slots[s];
	sl->prefetched = 0;
	sl->demand = 0;
	d->pol->touch(t->pst, (uint32_t)s, sl->key);
	return &sl->ex;
}

static int acquire_ram(inf_experts *d, uint32_t layer, uint32_t expert, const inf_expert **out,
		       k2_err *err)
{
	struct tier *t = &d->t[INF_TIER_RAM];
	const uint32_t key = key_of(d, layer, expert);
	double t0 = 0;
	int counted = 0;
	for (;;) {
		int32_t s = t->key_slot[key];
		if (s >= 0 && t->slots[s].state == SLOT_READY) {
			if (!counted && !t->slots[s].demand)
				t->st.hits++;
			else if (!counted)
				t->st.misses++; /* a demand request's load: its miss */
			t->slots[s].pins++;
			if (t0 != 0)
				t->st.wait_s += k2_now() - t0;
			*out = use_slot(d, INF_TIER_RAM, s);
			return 0;
		}
		if (s >= 0) { /* a load in flight */
			if (!counted) {
				if (t->slots[s].demand)
					t->st.misses++;
				else {
					t->st.hits++;
					t->st.inflight++;
				}
				counted = 1 + !t->slots[s].demand;
				t0 = k2_now();
			}
			pthread_cond_wait(&d->changed, &d->lock);
			continue;
		}
		int64_t ns = claim_slot(d, INF_TIER_RAM, key, 0);
		if (ns < 0) { /* every slot pinned or loading: wait */
			if (t0 == 0)
				t0 = k2_now();
			pthread_cond_wait(&d->changed, &d->lock);
			continue;
		}
		if (counted == 2) { /* the load waited for failed: a miss after all */
			t->st.hits--;
			t->st.inflight--;
		}
		if (counted != 1)
			t->st.misses++;
		if (t0 == 0)
			t0 = k2_now();
		t->slots[ns].pins = 1; /* nobody takes it between its load and our use */
		int rc = ram_load(d, (uint32_t)ns, 0, err);
		t->st.wait_s += k2_now() - t0;
		if (rc < 0)
			return rc;
		*out = use_slot(d, INF_TIER_RAM, (int32_t)ns);
		return 0;
	}
}

static int acquire_device(inf_experts *d, uint32_t layer, uint32_t expert,
			  const inf_expert **out, k2_err *err)
{
	struct tier *t = &d->t[INF_TIER_DEVICE];
	const uint32_t key = key_of(d, layer, expert);
	int rc;
	int32_t s = t->key_slot[key];
	if (s < 0) {
		if ((rc = request_locked(d, INF_TIER_DEVICE, layer, expert, 0, err)) < 0)
			return rc;
		s = t->key_slot[key];
	} else if (!t->slots[s].demand) { /* a demand load counted its miss */
		t->st.hits++;
		if (t->slots[s].state == SLOT_LOADING)
			t->st.inflight++;
	}
	struct slot *sl = &t->slots[s];
	sl->pins++;
	pthread_mutex_unlock(&d->lock);
	const double t0 = k2_now();
	rc = d->be->ops->slot_begin_use(d->slots, (uint32_t)s, err);
	const double dt = k2_now() - t0;
	pthread_mutex_lock(&d->lock);
	t->st.wait_s += dt;
	if (rc < 0) {
		char path[INF_PATH_MAX], msg[sizeof(err->msg)];
		snprintf(msg, sizeof(msg), "%s", err->msg);
		if (inf_expert_path(path, sizeof(path), d->dir, layer, expert) < 0)
			snprintf(path, sizeof(path), "layer %u expert %u", layer, expert);
		k2_err_set(err, rc, "%s: loading into the device tier failed: %s", path, msg);
		(void)d->be->ops->slot_end_use(d->slots, (uint32_t)s);
		drop_slot(d, INF_TIER_DEVICE, (uint32_t)s);
		return rc;
	}
	mark_ready(d, INF_TIER_DEVICE, (uint32_t)s);
	*out = use_slot(d, INF_TIER_DEVICE, s);
	return 0;
}

int inf_experts_acquire(inf_experts *d, int tier, uint32_t layer, uint32_t expert,
			const inf_expert **out, k2_err *err)
{
	if (!valid(d, tier, layer, expert))
		return k2_err_set(err, -EINVAL, "expert %u of layer %u: no such expert", expert,
				  layer);
	pthread_mutex_lock(&d->lock);
	int rc = tier == INF_TIER_RAM ? acquire_ram(d, layer, expert, out, err)
				      : acquire_device(d, layer, expert, out, err);
	pthread_mutex_unlock(&d->lock);
	return rc;
}

void inf_experts_release(inf_experts *d, int tier, const inf_expert *e)
{
	if (!e || !valid(d, tier, e->layer, e->expert))
		return;
	pthread_mutex_lock(&d->lock);
	int32_t s = d->t[tier].key_slot[key_of(d, e->layer, e->expert)];
	if (s >= 0) {
		if (tier == INF_TIER_DEVICE)
			(void)d->be->ops->slot_end_use(d->slots, (uint32_t)s);
		unpin_slot(d, tier, s);
	}
	pthread_mutex_unlock(&d->lock);
}

/* ---------------------------------------------------------------- prefetch */

int inf_experts_compute_tier(const inf_experts *d)
{
	return d->t[INF_TIER_DEVICE].present ? INF_TIER_DEVICE : INF_TIER_RAM;
}

int inf_experts_has_tier(const inf_experts *d, int tier)
{
	return d && tier >= 0 && tier < INF_TIERS && d->t[tier].present;
}

void inf_experts_prefetch(inf_experts *d, uint32_t layer, const int32_t *experts, uint32_t n)
{
	if (!d || n == 0 || layer >= d->n_layers)
		return;
	const int tier = inf_experts_compute_tier(d);
	size_t hl = (size_t)n * 12 + 1;
	char *hint = malloc(hl);
	if (hint)
		inf_prefetch_hint_text(hint, hl, experts, n);
	pthread_mutex_lock(&d->lock);
	if (hint && d->n_th) { /* a reader sends it, off the engine's thread */
		struct job j = {.key = key_of(d, layer, 0), .hint = hint};
		if (q_push(d, &j, 0) == 0)
			hint = NULL;
	}
	if (hint) {
		pthread_mutex_unlock(&d->lock);
		inf_prefetch_hint_send(d->dir, layer, hint);
		free(hint);
		pthread_mutex_lock(&d->lock);
	}
	for (uint32_t i = 0; i < n; i++) {
		if (experts[i] < 0 || (uint32_t)experts[i] >= d->n_experts)
			continue;
		k2_err tmp;
		if (request_locked(d, tier, layer, (uint32_t)experts[i], 1, &tmp) == -ENOSPC)
			break; /* full of pinned, loading or unused prefetched experts */
	}
	pthread_mutex_unlock(&d->lock);
}

void inf_experts_layer_done(inf_experts *d, uint32_t layer)
{
	if (!d || layer >= d->n_layers)
		return;
	pthread_mutex_lock(&d->lock);
	d->epoch[layer]++;
	if (d->t[INF_TIER_DEVICE].present)
		sweep_landed(d); /* closes the descriptors of loads that have ended */
	for (int tier = 0; tier < INF_TIERS; tier++) {
		struct tier *t = &d->t[tier];
		if (!t->present)
			continue;
		for (uint32_t x = 0; x < d->n_experts; x++) {
			int32_t s = t->key_slot[key_of(d, layer, x)];
			if (s >= 0 && t->slots[s].prefetched) {
				t->slots[s].prefetched = 0;
				t->st.prefetch_unused++;
			}
		}
	}
	pthread_mutex_unlock(&d->lock);
}

void inf_experts_drain(inf_experts *d)
{
	if (!d)
		return;
	pthread_mutex_lock(&d->lock);
	while (d->q_len || d->busy)
		pthread_cond_wait(&d->idle, &d->lock);
	pthread_mutex_unlock(&d->lock);
}

/* ---------------------------------------------------------------- stats */

void inf_experts_stats(inf_experts *d, int tier, inf_tier_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!d || tier < 0 || tier >= INF_TIERS || !d->t[tier].present)
		return;
	pthread_mutex_lock(&d->lock);
	*out = d->t[tier].st;
	out->slots = d->t[tier].n_slots;
	pthread_mutex_unlock(&d->lock);
}

double inf_experts_take_read_s(inf_experts *d)
{
	if (!d || !d->slots)
		return 0;
	kern_slots_stats ks;
	d->be->ops->slots_stats(d->slots, &ks);
	if (ks.loads <= d->rate_loads)
		return 0;
	const double per = (ks.read_seconds - d->rate_read_s) / (double)(ks.loads - d->rate_loads);
	d->rate_loads = ks.loads;
	d->rate_read_s = ks.read_seconds;
	return per;
}

void inf_experts_reset_stats(inf_experts *d)
{
	pthread_mutex_lock(&d->lock);
	for (int tier = 0; tier < INF_TIERS; tier++) {
		inf_tier_stats *st = &d->t[tier].st;
		const uint64_t slot_bytes = st->slot_bytes;
		memset(st, 0, sizeof(*st));
		st->slot_bytes = slot_bytes;
	}
	pthread_mutex_unlock(&d->lock);
}

uint32_t inf_experts_loading(inf_experts *d, int tier)
{
	if (!d || tier < 0 || tier >= INF_TIERS)
		return 0;
	pthread_mutex_lock(&d->lock);
	uint32_t n = d->t[tier].n_loading;
	pthread_mutex_unlock(&d->lock);
	return n;
}

void inf_experts_count_miss(inf_experts *d, int tier)
{
	if (!d || tier < 0 || tier >= INF_TIERS)
		return;
	pthread_mutex_lock(&d->lock);
	d->t[tier].st.misses++;
	pthread_mutex_unlock(&d->lock);
}

uint64_t inf_experts_image_bytes(const inf_experts *d, uint32_t layer)
{
	return d && layer < d->n_layers ? d->lay[layer].image_bytes : 0;
}

/* ---------------------------------------------------------------- create / destroy */

static int tier_init(inf_experts *d, int tier, uint32_t n_slots)
{
	struct tier *t = &d->t[tier];
	t->present = 1;
	t->n_slots = n_slots;
	t->slots = calloc(n_slots, sizeof(*t->slots));
	t->free_slots = malloc(sizeof(uint32_t) * n_slots);
	t->key_slot = malloc(sizeof(int32_t) * (d->n_keys ? d->n_keys : 1));
	t->pst = d->pol->create(n_slots, d->n_keys);
	if (!t->slots || !t->free_slots || !t->key_slot || !t->pst)
		return -ENOMEM;
	for (uint32_t i = 0; i < n_slots; i++) {
		t->slots[i].fd = -1;
		t->slots[i].src = -1;
		t->free_slots[t->n_free++] = n_slots - 1 - i;
	}
	for (uint32_t k = 0; k < d->n_keys; k++)
		t->key_slot[k] = -1;
	t->st.slots = n_slots;
	return 0;
}

static void tier_free(inf_experts *d, int tier)
{
	struct tier *t = &d->t[tier];
	if (t->slots)
		for (uint32_t i = 0; i < t->n_slots; i++) {
			if (t->slots[i].fd >= 0)
				close(t->slots[i].fd);
			free(t->slots[i].buf);
		}
	if (t->pst)
		d->pol->destroy(t->pst);
	free(t->slots);
	free(t->free_slots);
	free(t->key_slot);
}

/* The layout of every MoE layer's images, from its experts/LLL/000; returns
 * the largest image. */
static int read_layouts(inf_experts *d, uint64_t *max_bytes, k2_err *err)
{
	*max_bytes = 0;
	for (uint32_t l = 0; l < d->n_layers; l++) {
		if (!k2_config_is_moe_layer(&d->cfg, l))
			continue;
		uint64_t size;
		int rc = inf_expert_layout(d->dir, &d->cfg, l, 0, &d->lay[l], &size, err);
		if (rc < 0)
			return rc;
		if (d->lay[l].image_bytes > *max_bytes)
			*max_bytes = d->lay[l].image_bytes;
	}
	return 0;
}

int inf_experts_create(const char *dir, const k2_model_config *cfg, const inf_experts_opts *o,
		       inf_experts **out, k2_err *err)
{
	int rc;
	*out = NULL;
	if (!o->ram_slots && !o->device_slots)
		return k2_err_set(err, -EINVAL, "expert directory: needs at least one slot");
	if (o->device_slots && (!o->be || !o->be->ops->slots_create))
		return k2_err_set(err, -EINVAL, "expert directory: a device tier needs a backend "
				  "with device slots");
	inf_experts *d = calloc(1, sizeof(*d));
	if (!d)
		return k2_err_set(err, -ENOMEM, "out of memory");
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->changed, NULL);
	pthread_cond_init(&d->work, NULL);
	pthread_cond_init(&d->idle, NULL);
	d->cfg = *cfg;
	d->n_layers = cfg->num_hidden_layers;
	d->n_experts = cfg->n_routed_experts;
	d->n_keys = d->n_layers * d->n_experts;
	d->pol = o->policy ? o->policy : &inf_policy_lru;
	d->be = o->be;
	d->dir = strdup(dir);
	d->lay = calloc(d->n_layers ? d->n_layers : 1, sizeof(k2x_layout));
	d->epoch = calloc(d->n_layers ? d->n_layers : 1, sizeof(uint32_t));
	d->q = calloc(READER_QUEUE, sizeof(*d->q));
	if (!d->dir || !d->lay || !d->epoch || !d->q) {
		rc = k2_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	if ((o->ram_slots && tier_init(d, INF_TIER_RAM, o->ram_slots) < 0) ||
	    (o->device_slots && tier_init(d, INF_TIER_DEVICE, o->device_slots) < 0)) {
		rc = k2_err_set(err, -ENOMEM, "expert directory: out of memory for its slots");
		goto fail;
	}
	if (o->device_slots) {
		uint64_t slot_bytes;
		if ((rc = read_layouts(d, &slot_bytes, err)) < 0)
			goto fail;
		kern_slots_opts so = {.n_slots = o->device_slots, .slot_bytes = slot_bytes,
				      .io_threads = o->device_io_threads > 0
							    ? (uint32_t)o->device_io_threads : 0};
		if ((rc = o->be->ops->slots_create(o->be, &so, &d->slots, err)) < 0)
			goto fail;
		d->t[INF_TIER_DEVICE].st.slot_bytes = slot_bytes;
		/* every device load in flight holds a descriptor */
		struct rlimit rl;
		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max &&
		    rl.rlim_cur < (rlim_t)o->device_slots + 256) {
			rl.rlim_cur = rl.rlim_max;
			(void)setrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	if (o->ram_slots && o->io_threads > 0) {
		d->th = calloc((size_t)o->io_threads, sizeof(pthread_t));
		if (!d->th) {
			rc = k2_err_set(err, -ENOMEM, "out of memory");
			goto fail;
		}
		for (int i = 0; i < o->io_threads; i++) {
			if (pthread_create(&d->th[i], NULL, reader_main, d) != 0)
				break;
			d->n_th++;
		}
	}
	*out = d;
	return 0;
fail:
	inf_experts_destroy(d);
	return rc;
}

void inf_experts_destroy(inf_experts *d)
{
	if (!d)
		return;
	if (d->n_th) {
		pthread_mutex_lock(&d->lock);
		d->stop = 1;
		pthread_cond_broadcast(&d->work);
		pthread_mutex_unlock(&d->lock);
		for (int i = 0; i < d->n_th; i++)
			pthread_join(d->th[i], NULL);
	}
	if (d->q)
		for (uint32_t i = 0; i < d->q_len; i++)
			free(d->q[(d->q_head + i) % READER_QUEUE].hint);
	/* finishes the device loads in flight before their descriptors close */
	if (d->slots)
		d->be->ops->slots_destroy(d->slots);
	for (int tier = 0; tier < INF_TIERS; tier++)
		if (d->t[tier].present || d->t[tier].slots)
			tier_free(d, tier);
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->changed);
	pthread_cond_destroy(&d->work);
	pthread_cond_destroy(&d->idle);
	free(d->th);
	free(d->q);
	free(d->epoch);
	free(d->lay);
	free(d->dir);
	free(d);
}
