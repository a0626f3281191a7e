/* experts.c — the expert directory (infer.h), its core: for every routed expert (key =
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
 * the engine's thread and the readers.
 *
 * This file: the slot machine of every tier, states, pins, acquire and
 * release. The movers and requests are in expert_movers.c, creation and the
 * counters in experts_setup.c (experts_impl.h holds what they share). */
#include "experts_impl.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

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
void xd_drop_slot(inf_experts *d, int tier, uint32_t s)
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
void xd_mark_ready(inf_experts *d, int tier, uint32_t s)
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
void xd_settle(inf_experts *d, uint32_t s)
{
	struct slot *sl = &d->t[INF_TIER_DEVICE].slots[s];
	if (sl->state != SLOT_LOADING)
		return;
	int p = d->be->ops->slot_poll(d->slots, s);
	if (p == 1)
		xd_mark_ready(d, INF_TIER_DEVICE, s);
	else if (p < 0 && !sl->pins) {
		if (sl->prefetched)
			d->t[INF_TIER_DEVICE].st.prefetch_dropped++;
		xd_drop_slot(d, INF_TIER_DEVICE, s);
	}
}

void xd_sweep_landed(inf_experts *d)
{
	struct tier *t = &d->t[INF_TIER_DEVICE];
	for (uint32_t s = 0; s < t->n_slots && t->n_loading; s++)
		xd_settle(d, s);
}

/* Device: waits, lock dropped, for one load in flight to land — an unpinned
 * one (ram_source 0: a demand claim found no victim; it then is READY or
 * empty), or one copying from a RAM slot (ram_source 1, pinned or not: its RAM
 * slot is then released). 0 when it waited, -1 when there was none. Engine's
 * thread only (device slots are single-user). */
int xd_wait_for_landing(inf_experts *d, int ram_source)
{
	struct tier *t = &d->t[INF_TIER_DEVICE];
	for (uint32_t s = 0; s < t->n_slots; s++) {
		struct slot *sl = &t->slots[s];
		if (sl->state != SLOT_LOADING || (ram_source ? sl->src < 0 : sl->pins != 0))
			continue;
		k2_err e;
		sl->pins++;
		pthread_mutex_unlock(&d->lock);
		int rc = d->be->ops->slot_wait(d->slots, s, &e);
		pthread_mutex_lock(&d->lock);
		sl->pins--;
		if (rc == 0)
			xd_mark_ready(d, INF_TIER_DEVICE, s);
		else if (!sl->pins)
			xd_drop_slot(d, INF_TIER_DEVICE, s);
		else
			release_source(d, sl); /* its acquire reports the error */
		return 0;
	}
	return -1;
}

/* A slot of `tier` for key (LOADING, mapped): a free one, else the policy's
 * victim (for a device demand, after waiting for a load to land if need be).
 * -1 when every slot is busy. */
int64_t xd_claim_slot(inf_experts *d, int tier, uint32_t key, int prefetch)
{
	struct tier *t = &d->t[tier];
	if (!t->n_free && tier == INF_TIER_DEVICE)
		xd_sweep_landed(d);
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
			xd_drop_slot(d, tier, (uint32_t)s);
			t->n_free--; /* xd_drop_slot freed it: take it back */
			break;
		}
		if (prefetch || tier != INF_TIER_DEVICE || xd_wait_for_landing(d, 0) < 0)
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
	t->key_slot[key] = (int32_t)s;
	t->n_loading++;
	return s;
}

void xd_count_load(struct tier *t, int prefetch, uint64_t bytes, int moved)
{
	t->st.loads++;
	if (moved)
		t->st.bytes_moved += bytes;
	else
		t->st.bytes_read += bytes;
	if (prefetch)
		t->st.prefetch_loads++;
}

int inf_experts_request_loads(inf_experts *d, int tier, uint32_t layer,
			      const uint32_t *experts, uint32_t n, uint8_t *pinned, k2_err *err)
{
	int rc = 0;
	memset(pinned, 0, n);
	if (n == 0 || !xd_valid(d, tier, layer, 0))
		return 0;
	pthread_mutex_lock(&d->lock);
	struct tier *t = &d->t[tier];
	/* RAM: each demand goes to the front of the queue, so the last first */
	for (uint32_t k = 0; k < n; k++) {
		const uint32_t i = tier == INF_TIER_RAM ? n - 1 - k : k;
		if (experts[i] >= d->n_experts)
			continue;
		rc = xd_request_locked(d, tier, layer, experts[i], 0, err);
		if (rc == -ENOSPC) {
			rc = 0;
			break;
		}
		if (rc < 0)
			break;
		const int32_t s = t->key_slot[xd_key_of(d, layer, experts[i])];
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
	if (!xd_valid(d, tier, layer, expert))
		return 0;
	pthread_mutex_lock(&d->lock);
	struct tier *t = &d->t[tier];
	int32_t s = t->key_slot[xd_key_of(d, layer, expert)];
	if (s >= 0 && tier == INF_TIER_DEVICE)
		xd_settle(d, (uint32_t)s);
	s = t->key_slot[xd_key_of(d, layer, expert)];
	int r = s < 0 ? 0 : t->slots[s].state == SLOT_READY ? 2 : 1;
	pthread_mutex_unlock(&d->lock);
	return r;
}

void inf_experts_pin(inf_experts *d, int tier, uint32_t layer, uint32_t expert)
{
	if (!xd_valid(d, tier, layer, expert))
		return;
	pthread_mutex_lock(&d->lock);
	int32_t s = d->t[tier].key_slot[xd_key_of(d, layer, expert)];
	if (s >= 0)
		d->t[tier].slots[s].pins++;
	pthread_mutex_unlock(&d->lock);
}

void xd_unpin_slot(inf_experts *d, int tier, int32_t s)
{
	struct slot *sl = &d->t[tier].slots[s];
	if (sl->pins > 0 && --sl->pins == 0)
		pthread_cond_broadcast(&d->changed);
}

void inf_experts_unpin(inf_experts *d, int tier, uint32_t layer, uint32_t expert)
{
	if (!xd_valid(d, tier, layer, expert))
		return;
	pthread_mutex_lock(&d->lock);
	int32_t s = d->t[tier].key_slot[xd_key_of(d, layer, expert)];
	if (s >= 0)
		xd_unpin_slot(d, tier, s);
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
	const uint32_t key = xd_key_of(d, layer, expert);
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
		int64_t ns = xd_claim_slot(d, INF_TIER_RAM, key, 0);
		if (ns < 0) { /* every slot pinned or loading: wait */
			if (t0 == 0)
				t0 = k2_now();
			/* RAM slots pinned as the sources of device loads are released
			 * only when those land, which this thread must see to */
			if (d->t[INF_TIER_DEVICE].present && xd_wait_for_landing(d, 1) == 0)
				continue;
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
		int rc = xd_ram_load(d, (uint32_t)ns, 0, err);
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
	const uint32_t key = xd_key_of(d, layer, expert);
	int rc;
	int32_t s = t->key_slot[key];
	if (s < 0) {
		if ((rc = xd_request_locked(d, INF_TIER_DEVICE, layer, expert, 0, err)) < 0)
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
		xd_drop_slot(d, INF_TIER_DEVICE, (uint32_t)s);
		return rc;
	}
	xd_mark_ready(d, INF_TIER_DEVICE, (uint32_t)s);
	*out = use_slot(d, INF_TIER_DEVICE, s);
	return 0;
}

int inf_experts_acquire(inf_experts *d, int tier, uint32_t layer, uint32_t expert,
			const inf_expert **out, k2_err *err)
{
	if (!xd_valid(d, tier, layer, expert))
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
	if (!e || !xd_valid(d, tier, e->layer, e->expert))
		return;
	pthread_mutex_lock(&d->lock);
	int32_t s = d->t[tier].key_slot[xd_key_of(d, e->layer, e->expert)];
	if (s >= 0) {
		if (tier == INF_TIER_DEVICE)
			(void)d->be->ops->slot_end_use(d->slots, (uint32_t)s);
		xd_unpin_slot(d, tier, s);
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
		xd_sweep_landed(d); /* closes the descriptors of loads that have ended */
	for (int tier = 0; tier < INF_TIERS; tier++) {
		struct tier *t = &d->t[tier];
		if (!t->present)
			continue;
		for (uint32_t x = 0; x < d->n_experts; x++) {
			int32_t s = t->key_slot[xd_key_of(d, layer, x)];
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

