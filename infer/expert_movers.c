/* expert_movers.c — the expert directory's movers between tiers
 * (experts_impl.h): the RAM readers (mount → RAM, pread of the whole image on
 * background threads, demand jobs ahead of prefetches), the device loads (RAM →
 * device from a ready RAM copy, else mount → device through the backend's
 * slots), the requests that start them, and prefetch. */
#include "experts_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- the RAM mover */

/* Loads key into RAM slot s (claimed, LOADING) with the lock dropped; back
 * under lock, the slot is READY or emptied. */
int xd_ram_load(inf_experts *d, uint32_t s, int prefetch, k2_err *err)
{
	struct tier *t = &d->t[INF_TIER_RAM];
	struct slot *sl = &t->slots[s];
	const uint32_t key = sl->key;
	pthread_mutex_unlock(&d->lock);
	int rc = inf_expert_read(d->dir, &d->cfg, key / d->n_experts, key % d->n_experts,
				 &sl->buf, &sl->cap, &sl->ex, err);
	pthread_mutex_lock(&d->lock);
	if (rc < 0) {
		xd_drop_slot(d, INF_TIER_RAM, s);
		return rc;
	}
	xd_count_load(t, prefetch, sl->ex.lay.image_bytes, 0);
	t->st.slot_bytes = sl->ex.lay.image_bytes;
	xd_mark_ready(d, INF_TIER_RAM, s);
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
	int64_t s = xd_claim_slot(d, INF_TIER_RAM, j->key, j->prefetch);
	if (s < 0) {
		if (j->prefetch)
			t->st.prefetch_dropped++;
		return;
	}
	k2_err err;
	if (xd_ram_load(d, (uint32_t)s, j->prefetch, &err) < 0 && j->prefetch)
		t->st.prefetch_dropped++;
}

void *xd_reader_main(void *arg)
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
			xd_count_load(t, prefetch, bytes, 1);
			return 0;
		}
	} else {
		char path[INF_PATH_MAX];
		uint64_t size;
		int fd = inf_expert_open(d->dir, &d->cfg, layer, expert, path, sizeof(path), &size, err);
		if (fd < 0) {
			xd_drop_slot(d, INF_TIER_DEVICE, s);
			return fd;
		}
		if (size != bytes) {
			close(fd);
			xd_drop_slot(d, INF_TIER_DEVICE, s);
			return k2_err_set(err, -EINVAL, "%s: %" PRIu64 " bytes, but the images of "
					  "layer %u are %" PRIu64 " bytes (experts/%03u/000)", path,
					  size, layer, bytes, layer);
		}
		if ((rc = ops->slot_load_fd(d->slots, s, fd, 0, bytes, !prefetch)) == 0) {
			sl->fd = fd;
			xd_count_load(t, prefetch, bytes, 0);
			return 0;
		}
		close(fd);
	}
	xd_drop_slot(d, INF_TIER_DEVICE, s);
	return k2_err_set(err, rc, "layer %u expert %u: cannot start its upload (slot %u)", layer,
			  expert, s);
}

/* ---------------------------------------------------------------- requests */

/* Under lock. */
int xd_request_locked(inf_experts *d, int tier, uint32_t layer, uint32_t expert,
			  int prefetch, k2_err *err)
{
	struct tier *t = &d->t[tier];
	const uint32_t key = xd_key_of(d, layer, expert);
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
	int64_t s = xd_claim_slot(d, tier, key, prefetch);
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
		struct job j = {.key = xd_key_of(d, layer, 0), .hint = hint};
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
		if (xd_request_locked(d, tier, layer, (uint32_t)experts[i], 1, &tmp) == -ENOSPC)
			break; /* full of pinned, loading or unused prefetched experts */
	}
	pthread_mutex_unlock(&d->lock);
}

