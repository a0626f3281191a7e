/* experts_impl.h — internals of the expert directory, shared by its files:
 * experts.c (the slot machine of every tier, states, pins, acquire and
 * release), expert_movers.c (the RAM readers, the device loads, requests and
 * prefetch) and experts_setup.c (create, destroy, counters). Every function
 * here is called with d->lock held unless it says otherwise. Not for use
 * outside those files. */
#ifndef K2_INFER_EXPERTS_IMPL_H
#define K2_INFER_EXPERTS_IMPL_H

#include "infer_impl.h"

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

static inline uint32_t xd_key_of(const inf_experts *d, uint32_t layer, uint32_t expert)
{
	return layer * d->n_experts + expert;
}

/* d has `tier` and (layer, expert) names a routed expert of it. */
static inline int xd_valid(const inf_experts *d, int tier, uint32_t layer, uint32_t expert)
{
	return d && tier >= 0 && tier < INF_TIERS && d->t[tier].present &&
	       layer < d->n_layers && expert < d->n_experts;
}

/* ---- experts.c: the slot machine */

/* Empties slot s of `tier` and returns it to the free list. */
void xd_drop_slot(inf_experts *d, int tier, uint32_t s);
/* A LOADING slot becomes READY and enters the policy. */
void xd_mark_ready(inf_experts *d, int tier, uint32_t s);
/* Device: a landed load becomes READY; an unpinned failed one is emptied. */
void xd_settle(inf_experts *d, uint32_t s);
void xd_sweep_landed(inf_experts *d);
/* A slot of `tier` for key, now LOADING and mapped: a free one, else the
 * policy's victim (a device demand may wait, lock dropped, for a load to
 * land). -1 when every slot is busy. */
int64_t xd_claim_slot(inf_experts *d, int tier, uint32_t key, int prefetch);
void xd_count_load(struct tier *t, int prefetch, uint64_t bytes, int moved);
/* Device: waits (lock dropped) for a load in flight to land: an unpinned one
 * (ram_source 0), or one whose RAM source it then releases (1). 0 when it
 * waited, -1 when there was none. The engine's thread only. */
int xd_wait_for_landing(inf_experts *d, int ram_source);
void xd_unpin_slot(inf_experts *d, int tier, int32_t s);

/* ---- expert_movers.c */

/* Loads RAM slot s (claimed, LOADING) with the lock dropped; back under the
 * lock it is READY or emptied. Returns 0 or -errno with a message. */
int xd_ram_load(inf_experts *d, uint32_t s, int prefetch, k2_err *err);
/* Starts loading an absent expert into `tier` without waiting. Device: from
 * its RAM copy when that is ready, else from the mount; -ENOSPC when every
 * slot is pinned, loading or (for a prefetch) holds an unused prefetch. RAM:
 * queued to the readers, a demand ahead of the prefetches (nothing without
 * readers). A device demand counts the miss. Returns 0 or -errno with a
 * message naming the file. */
int xd_request_locked(inf_experts *d, int tier, uint32_t layer, uint32_t expert, int prefetch,
		      k2_err *err);
/* The readers' thread body (called without the lock). */
void *xd_reader_main(void *arg);

#endif /* K2_INFER_EXPERTS_IMPL_H */
