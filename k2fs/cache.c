/* cache.c — the RAM cache of decoded expert blocks: one slot per expert, block
 * states (absent → loading → ready | error), a byte budget with LRU eviction,
 * pinning, the read path that makes a range resident and waits for it, and the
 * hints of user.k2.prefetch. loader.c does the reading and decoding.
 *
 * Rules kept here, all under cache->lock:
 *  - a load is admitted only when its blocks fit the budget after evicting idle
 *    unpinned experts (least recently used first); a reader that cannot fit waits
 *    until memory frees, unless nothing could ever free it (everything else
 *    pinned or idle-less), in which case it loads anyway: cache_used then exceeds
 *    the budget by at most the blocks of that one read;
 *  - a slot that is being read (refs) or loaded (n_loading) is never evicted;
 *  - one load per block: readers and hints that need a loading block wait for it,
 *    and a reader promotes a prefetch load it waits for to demand priority;
 *  - a hint for blocks already resident or loading does no work. */
#include "k2fs_cache_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *k2fs_state_name(enum k2fs_state s)
{
	switch (s) {
	case K2FS_STATE_LOADING: return "loading";
	case K2FS_STATE_RAM: return "ram";
	case K2FS_STATE_PINNED: return "pinned";
	default: return "disk";
	}
}

static uint32_t block_raw(const struct k2fs_cache *c, const struct k2fs_slot *s, uint32_t b)
{
	return k2p_entry_block(c->pack, s->e, b)->raw_bytes;
}

/* ---------------------------------------------------------------- LRU */

static int slot_resident(const struct k2fs_slot *s)
{
	return s->n_ready + s->n_loading + s->n_error > 0;
}

static int slot_busy(const struct k2fs_slot *s)
{
	return s->refs > 0 || s->n_loading > 0;
}

static void lru_remove(struct k2fs_slot *s)
{
	if (!s->in_lru)
		return;
	s->prev->next = s->next;
	s->next->prev = s->prev;
	s->prev = s->next = NULL;
	s->in_lru = 0;
}

static void lru_push(struct k2fs_cache *c, struct k2fs_slot *s)
{
	s->prev = c->lru.prev;
	s->next = &c->lru;
	c->lru.prev->next = s;
	c->lru.prev = s;
	s->in_lru = 1;
}

/* Puts s in the LRU list iff it holds or loads blocks and is not pinned. */
static void lru_update(struct k2fs_cache *c, struct k2fs_slot *s)
{
	int want = !s->pinned && slot_resident(s);
	if (want && !s->in_lru)
		lru_push(c, s);
	else if (!want && s->in_lru)
		lru_remove(s);
}

static void lru_touch(struct k2fs_cache *c, struct k2fs_slot *s)
{
	if (s->in_lru) {
		lru_remove(s);
		lru_push(c, s);
	}
}

/* ---------------------------------------------------------------- eviction */

/* Frees every block of an idle slot (refs 0, nothing loading). */
static void slot_evict(struct k2fs_cache *c, struct k2fs_slot *s)
{
	c->used -= s->bytes; /* first: what the pool may keep grows by it */
	s->bytes = 0;
	for (uint32_t b = 0; b < s->e->n_blocks && s->n_ready + s->n_error > 0; b++) {
		if (s->bstate[b] == K2FS_B_READY) {
			k2fs_pool_put(c->pool, s->bdata[b], k2fs_align4k(block_raw(c, s, b)),
				      k2fs_cache_pool_keep(c));
			s->bdata[b] = NULL;
			s->n_ready--;
		} else if (s->bstate[b] == K2FS_B_ERROR) {
			s->n_error--;
		}
		s->bstate[b] = K2FS_B_ABSENT;
	}
	s->prefetched = 0;
	s->drop_after_load = 0;
	c->st.evictions++;
	lru_update(c, s);
	pthread_cond_broadcast(&c->room);
}

/* Evicts idle unpinned slots other than `keep`, least recently used first, until
 * `need` more bytes fit the budget. Returns 1 when they fit. */
static int make_room(struct k2fs_cache *c, uint64_t need, const struct k2fs_slot *keep)
{
	struct k2fs_slot *s = c->lru.next;
	while (c->used + need > c->limit && s != &c->lru) {
		struct k2fs_slot *next = s->next;
		if (s != keep && !slot_busy(s))
			slot_evict(c, s);
		s = next;
	}
	return c->used + need <= c->limit;
}

/* 1 when waiting can change what fits: a load is in flight (its reader will
 * release it; pinned or not, it changes the picture when done), or an unpinned
 * expert other than `keep` is being read. */
static int memory_will_free(const struct k2fs_cache *c, const struct k2fs_slot *keep)
{
	if (c->loading > 0)
		return 1;
	for (const struct k2fs_slot *s = c->lru.next; s != &c->lru; s = s->next)
		if (s->bytes > 0 && s != keep && s->refs > s->push_refs)
			return 1;
	return 0;
}

/* ---------------------------------------------------------------- loads */

static int slot_arrays(struct k2fs_slot *s)
{
	if (s->bstate || s->e->n_blocks == 0)
		return 0;
	s->bstate = calloc(s->e->n_blocks, 1);
	s->bdata = calloc(s->e->n_blocks, sizeof(*s->bdata));
	if (!s->bstate || !s->bdata) {
		free(s->bstate);
		free(s->bdata);
		s->bstate = NULL;
		s->bdata = NULL;
		return -ENOMEM;
	}
	return 0;
}

static uint64_t absent_bytes(const struct k2fs_cache *c, const struct k2fs_slot *s,
			     uint32_t b0, uint32_t b1)
{
	uint64_t n = 0;
	for (uint32_t b = b0; b < b1; b++)
		if (s->bstate[b] == K2FS_B_ABSENT)
			n += block_raw(c, s, b);
	return n;
}

/* Marks blocks [b0, b0+n) loading, accounts them and queues their job. */
static int job_create(struct k2fs_cache *c, struct k2fs_slot *s, size_t entry, uint32_t b0,
		      uint32_t n, int prio)
{
	struct k2fs_job *j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->slot = s;
	j->entry = entry;
	j->b0 = b0;
	j->n = n;
	j->prio = prio;
	j->left = n;
	uint64_t bytes = 0;
	for (uint32_t b = b0; b < b0 + n; b++) {
		s->bstate[b] = K2FS_B_LOADING;
		bytes += block_raw(c, s, b);
	}
	s->n_loading += n;
	c->loading += n;
	s->bytes += bytes;
	c->used += bytes;
	s->loads++;
	c->st.loads++;
	j->snext = s->jobs;
	s->jobs = j;
	lru_update(c, s);
	k2fs_loader_submit(c, j);
	return 0;
}

/* One job per run of absent blocks in [b0, b1). */
static int create_jobs(struct k2fs_cache *c, struct k2fs_slot *s, size_t entry, uint32_t b0,
		       uint32_t b1, int prio)
{
	uint32_t b = b0;
	while (b < b1) {
		if (s->bstate[b] != K2FS_B_ABSENT) {
			b++;
			continue;
		}
		uint32_t r = b;
		while (r < b1 && s->bstate[r] == K2FS_B_ABSENT)
			r++;
		int rc = job_create(c, s, entry, b, r - b, prio);
		if (rc)
			return rc;
		b = r;
	}
	return 0;
}

/* Starts demand loads for the absent blocks a reader needs ([n0, n1)) and, when
 * `ahead` and the budget allows, for its read-ahead ([w0, w1) ⊇ [n0, n1)).
 * Waits for memory when the needed blocks do not fit and waiting can help. The
 * caller holds one ref on s. Returns 0 or -ENOMEM. */
static int request_load(struct k2fs_cache *c, struct k2fs_slot *s, size_t entry,
			uint32_t w0, uint32_t w1, uint32_t n0, uint32_t n1, int ahead)
{
	for (;;) {
		if (ahead) {
			uint64_t need = absent_bytes(c, s, w0, w1);
			if (need == 0)
				return 0;
			if (make_room(c, need, s))
				return create_jobs(c, s, entry, w0, w1, K2FS_PRIO_DEMAND);
		}
		uint64_t need = absent_bytes(c, s, n0, n1);
		if (need == 0)
			return 0;
		if (make_room(c, need, s))
			return create_jobs(c, s, entry, n0, n1, K2FS_PRIO_DEMAND);
		if (!memory_will_free(c, s))
			return create_jobs(c, s, entry, n0, n1, K2FS_PRIO_DEMAND);
		s->refs--;
		pthread_cond_wait(&c->room, &c->lock);
		s->refs++;
		ahead = 0;
	}
}

static uint64_t effective_ra(const struct k2fs_cache *c, const struct k2fs_slot *s)
{
	if (s->readahead != K2FS_RA_INHERIT)
		return s->readahead;
	uint32_t l = s->e->layer - c->first_layer;
	if (l < c->n_layers && c->layer_ra[l] != K2FS_RA_INHERIT)
		return c->layer_ra[l];
	return c->readahead;
}

static void promote_slot(struct k2fs_cache *c, struct k2fs_slot *s)
{
	for (struct k2fs_job *j = s->jobs; j; j = j->snext)
		if (j->prio != K2FS_PRIO_DEMAND)
			k2fs_loader_promote(c, j);
}

static void release_ref(struct k2fs_cache *c, struct k2fs_slot *s)
{
	if (--s->refs > 0)
		return;
	if (s->drop_after_load && s->n_loading == 0)
		slot_evict(c, s);
	if (c->used > c->limit)
		make_room(c, 0, NULL);
	pthread_cond_broadcast(&c->room);
}

/* A read of bytes [off, off+len) of expert `entry`, which lie in blocks [n0, n1)
 * of slot s. */
struct read_range {
	size_t entry;
	struct k2fs_slot *s;
	uint64_t off;
	size_t len;
	uint32_t n0, n1;
};

/* Starts a read of bytes [off, off+len) of expert entry `entry`: clears rd,
 * fills *r (len cut at the end of the entry) and points rd->iov at room for
 * n1 - n0 vectors (rd->small, or a malloc'd array). Returns 0 with r->s NULL
 * and rd->iov NULL when there is nothing to read (off at or past the end, or
 * len 0), 0 with r->s set otherwise, -EINVAL when `entry` is not an expert,
 * -EIO when its index disagrees with itself, or -ENOMEM. Takes no lock: it
 * reads only the pack's index, which never changes. */
static int read_range_start(struct k2fs_cache *c, size_t entry, uint64_t off, size_t len,
			    struct read_range *r, struct k2fs_read *rd)
{
	memset(rd, 0, sizeof(*rd));
	memset(r, 0, sizeof(*r));
	if (entry >= c->n_slots || !c->slots[entry].e)
		return -EINVAL;
	struct k2fs_slot *s = &c->slots[entry];
	const k2p_entry *e = s->e;
	if (off >= e->raw_bytes || len == 0)
		return 0;
	if (len > e->raw_bytes - off)
		len = (size_t)(e->raw_bytes - off);
	const uint64_t bb = c->block_bytes;
	uint32_t n0 = (uint32_t)(off / bb), n1 = (uint32_t)((off + len - 1) / bb + 1);
	if (n1 > e->n_blocks)
		return -EIO; /* the index disagrees with itself; k2p_pack_open prevents it */
	int niov = (int)(n1 - n0);
	rd->iov = rd->small;
	if (niov > (int)(sizeof(rd->small) / sizeof(rd->small[0]))) {
		rd->iov = malloc((size_t)niov * sizeof(*rd->iov));
		if (!rd->iov)
			return -ENOMEM;
	}
	*r = (struct read_range){
		.entry = entry, .s = s, .off = off, .len = len, .n0 = n0, .n1 = n1,
	};
	return 0;
}

/* For k2fs_cache_read_begin, under cache->lock: takes a ref on r->s and makes
 * the blocks of r ready, loading what is missing (with the file's read-ahead)
 * and waiting for it, which drops the lock while waiting. Counts the hit or
 * miss. Returns 0 with the ref held, or -ENOMEM or -EIO with it released. */
static int slot_hold_loaded(struct k2fs_cache *c, const struct read_range *r)
{
	struct k2fs_slot *s = r->s;
	const k2p_entry *e = s->e;
	const uint64_t bb = c->block_bytes;
	const uint32_t n0 = r->n0, n1 = r->n1;
	int rc = slot_arrays(s);
	if (rc)
		return rc;
	uint64_t ra = effective_ra(c, s);
	uint32_t w0 = n0, w1 = n1;
	if (ra == K2FS_RA_ALL) {
		w0 = 0;
		w1 = e->n_blocks;
	} else if (ra > 0) {
		uint64_t end = r->off + r->len;
		uint64_t ra_end = ra >= e->raw_bytes - end ? e->raw_bytes : end + ra;
		w1 = (uint32_t)((ra_end - 1) / bb + 1);
	}
	s->refs++;
	int hit = 1;
	for (uint32_t b = n0; b < n1; b++)
		if (s->bstate[b] != K2FS_B_READY)
			hit = 0;
	if (hit) {
		c->st.hits++;
		s->hits++;
	} else {
		c->st.misses++;
	}
	if (s->prefetched) {
		c->st.prefetch_used++;
		s->prefetched = 0;
	}
	int ahead = 1;
	for (;;) {
		int absent = 0, loading = 0, bad = 0;
		for (uint32_t b = n0; b < n1; b++) {
			absent += s->bstate[b] == K2FS_B_ABSENT;
			loading += s->bstate[b] == K2FS_B_LOADING;
			bad += s->bstate[b] == K2FS_B_ERROR;
		}
		if (bad) {
			rc = -EIO;
			break;
		}
		if (absent || ahead) {
			rc = request_load(c, s, r->entry, w0, w1, n0, n1, ahead);
			ahead = 0;
			if (rc)
				break;
			continue;
		}
		if (!loading) {
			rc = 0;
			break;
		}
		promote_slot(c, s);
		pthread_cond_wait(&c->done[r->entry % K2FS_NCOND], &c->lock);
	}
	if (rc) {
		release_ref(c, s);
		return rc;
	}
	lru_touch(c, s);
	return 0;
}

/* For k2fs_cache_read_resident, under cache->lock: takes a pusher's ref on r->s
 * when every block of r is ready. Returns 0 with the ref held, or -EAGAIN. */
static int slot_hold_resident(const struct read_range *r)
{
	struct k2fs_slot *s = r->s;
	int ready = s->bstate != NULL;
	for (uint32_t b = r->n0; ready && b < r->n1; b++)
		ready = s->bstate[b] == K2FS_B_READY;
	if (!ready)
		return -EAGAIN;
	s->refs++;
	s->push_refs++;
	return 0;
}

/* Points rd's vectors at the ready blocks of r and hands rd the ref on r->s
 * that the caller holds. Under cache->lock. */
static void read_fill(struct k2fs_cache *c, const struct read_range *r, struct k2fs_read *rd)
{
	const uint64_t bb = c->block_bytes;
	uint64_t pos = r->off, end = r->off + r->len;
	for (uint32_t b = r->n0; b < r->n1; b++) {
		uint64_t bstart = (uint64_t)b * bb;
		uint64_t bend = bstart + block_raw(c, r->s, b);
		uint64_t to = end < bend ? end : bend;
		rd->iov[b - r->n0].iov_base = r->s->bdata[b] + (pos - bstart);
		rd->iov[b - r->n0].iov_len = (size_t)(to - pos);
		pos = to;
	}
	rd->niov = (int)(r->n1 - r->n0);
	rd->bytes = r->len;
	rd->slot = r->s;
}

/* k2fs_cache_read_begin (push 0) and k2fs_cache_read_resident (push 1): their
 * contracts are in k2fs_cache.h. */
static int cache_read(struct k2fs_cache *c, size_t entry, uint64_t off, size_t len, int push,
		      struct k2fs_read *rd)
{
	struct read_range r;
	int rc = read_range_start(c, entry, off, len, &r, rd);
	if (rc || !r.s)
		return rc;
	pthread_mutex_lock(&c->lock);
	rc = push ? slot_hold_resident(&r) : slot_hold_loaded(c, &r);
	if (rc == 0) {
		rd->push = push;
		read_fill(c, &r, rd);
	}
	pthread_mutex_unlock(&c->lock);
	if (rc == 0)
		return 0;
	if (rd->iov != rd->small)
		free(rd->iov);
	rd->iov = NULL;
	return rc;
}

int k2fs_cache_read_begin(struct k2fs_cache *c, size_t entry, uint64_t off, size_t len,
			  struct k2fs_read *rd)
{
	return cache_read(c, entry, off, len, 0, rd);
}

int k2fs_cache_read_resident(struct k2fs_cache *c, size_t entry, uint64_t off, size_t len,
			     struct k2fs_read *rd)
{
	return cache_read(c, entry, off, len, 1, rd);
}

void k2fs_cache_read_end(struct k2fs_cache *c, struct k2fs_read *rd)
{
	if (rd->slot) {
		pthread_mutex_lock(&c->lock);
		if (rd->push)
			rd->slot->push_refs--;
		release_ref(c, rd->slot);
		pthread_mutex_unlock(&c->lock);
	}
	if (rd->iov && rd->iov != rd->small)
		free(rd->iov);
	memset(rd, 0, sizeof(*rd));
}

/* ---------------------------------------------------------------- loads finishing */

void k2fs_cache_block_finish(struct k2fs_cache *c, struct k2fs_job *job, uint32_t i, int rc,
			     const char *msg)
{
	struct k2fs_slot *s = job->slot;
	uint32_t b = job->b0 + i;
	uint32_t raw = block_raw(c, s, b);
	if (rc == 0) {
		s->bstate[b] = K2FS_B_READY;
		s->bdata[b] = job->bufs[i];
		job->bufs[i] = NULL;
		s->n_ready++;
		c->st.bytes_decompressed += raw;
	} else {
		s->bytes -= raw;
		c->used -= raw;
		if (job->bufs) { /* NULL when the job failed before its buffers existed */
			k2fs_pool_put(c->pool, job->bufs[i], k2fs_align4k(raw),
				      k2fs_cache_pool_keep(c));
			job->bufs[i] = NULL;
		}
		if (rc == -ECANCELED) {
			s->bstate[b] = K2FS_B_ABSENT;
		} else {
			s->bstate[b] = K2FS_B_ERROR;
			s->n_error++;
			c->st.errors++;
			if (msg && *msg)
				k2fs_log("%s", msg);
		}
	}
	s->n_loading--;
	c->loading--;
	job->left--;
	if (rc == 0 && s->n_ready == s->e->n_blocks && c->opts.loaded)
		c->opts.loaded(c->opts.loaded_arg, job->entry);
	if (s->n_loading == 0 && s->drop_after_load && s->refs == 0)
		slot_evict(c, s);
	lru_update(c, s);
	if (c->used > c->limit)
		make_room(c, 0, NULL);
	pthread_cond_broadcast(&c->done[job->entry % K2FS_NCOND]);
	if (s->n_loading == 0)
		pthread_cond_broadcast(&c->room);
}

/* ---------------------------------------------------------------- hints */

/* Queues a background load of whatever of s is absent. Returns 0, or -ENOSPC
 * when it does not fit the budget (then nothing is queued). */
static int prefetch_slot(struct k2fs_cache *c, struct k2fs_slot *s, size_t entry)
{
	int rc = slot_arrays(s);
	if (rc)
		return rc;
	uint64_t need = absent_bytes(c, s, 0, s->e->n_blocks);
	if (need == 0)
		return 0;
	if (!make_room(c, need, s)) {
		c->st.prefetch_dropped++;
		return -ENOSPC;
	}
	rc = create_jobs(c, s, entry, 0, s->e->n_blocks, K2FS_PRIO_PREFETCH);
	if (rc == 0)
		s->prefetched = 1;
	return rc;
}

static int hint_locked(struct k2fs_cache *c, size_t entry, enum k2fs_hint h)
{
	struct k2fs_slot *s = &c->slots[entry];
	int rc = 0;
	switch (h) {
	case K2FS_HINT_WILLNEED:
		c->st.prefetch_requests++;
		s->drop_after_load = 0;
		rc = prefetch_slot(c, s, entry);
		if (rc == -ENOSPC)
			rc = 0; /* a hint, not a promise */
		break;
	case K2FS_HINT_PIN:
		/* recorded even when the load does not fit now: the expert then loads
		 * on its next read and stays */
		c->st.prefetch_requests++;
		s->pinned = 1;
		s->drop_after_load = 0;
		lru_update(c, s);
		rc = prefetch_slot(c, s, entry);
		if (rc == -ENOSPC)
			rc = 0;
		break;
	case K2FS_HINT_UNPIN:
		s->pinned = 0;
		lru_update(c, s);
		if (c->used > c->limit)
			make_room(c, 0, NULL);
		pthread_cond_broadcast(&c->room);
		break;
	case K2FS_HINT_DONTNEED:
		s->pinned = 0;
		s->prefetched = 0;
		lru_update(c, s);
		if (!slot_busy(s)) {
			if (s->n_ready + s->n_error > 0)
				slot_evict(c, s);
		} else {
			s->drop_after_load = 1;
		}
		break;
	default:
		return -EINVAL;
	}
	s->hint = (uint8_t)h;
	return rc;
}

int k2fs_cache_hint(struct k2fs_cache *c, size_t entry, enum k2fs_hint h)
{
	if (entry >= c->n_slots || !c->slots[entry].e)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	int rc = hint_locked(c, entry, h);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

void k2fs_cache_willneed_many(struct k2fs_cache *c, const size_t *entries, size_t n)
{
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < n; i++)
		if (entries[i] < c->n_slots && c->slots[entries[i]].e)
			hint_locked(c, entries[i], K2FS_HINT_WILLNEED);
	pthread_mutex_unlock(&c->lock);
}

/* ---------------------------------------------------------------- settings and state */

void k2fs_cache_info(struct k2fs_cache *c, size_t entry, struct k2fs_slot_info *out)
{
	memset(out, 0, sizeof(*out));
	if (entry >= c->n_slots || !c->slots[entry].e)
		return;
	struct k2fs_slot *s = &c->slots[entry];
	pthread_mutex_lock(&c->lock);
	if (s->n_loading > 0)
		out->state = K2FS_STATE_LOADING;
	else if (s->pinned && s->n_ready > 0)
		out->state = K2FS_STATE_PINNED;
	else if (s->n_ready > 0)
		out->state = K2FS_STATE_RAM;
	else
		out->state = K2FS_STATE_DISK;
	out->hint = (enum k2fs_hint)s->hint;
	out->hits = s->hits;
	out->loads = s->loads;
	out->readahead = s->readahead;
	out->effective_ra = effective_ra(c, s);
	pthread_mutex_unlock(&c->lock);
}

int k2fs_cache_resident(struct k2fs_cache *c, size_t entry)
{
	if (entry >= c->n_slots || !c->slots[entry].e)
		return 0;
	pthread_mutex_lock(&c->lock);
	int r = c->slots[entry].n_ready == c->slots[entry].e->n_blocks;
	pthread_mutex_unlock(&c->lock);
	return r;
}

void k2fs_cache_set_readahead(struct k2fs_cache *c, size_t entry, uint64_t ra)
{
	if (entry >= c->n_slots || !c->slots[entry].e)
		return;
	pthread_mutex_lock(&c->lock);
	c->slots[entry].readahead = ra;
	pthread_mutex_unlock(&c->lock);
}

void k2fs_cache_set_layer_readahead(struct k2fs_cache *c, uint32_t layer, uint64_t ra)
{
	uint32_t l = layer - c->first_layer;
	if (layer < c->first_layer || l >= c->n_layers)
		return;
	pthread_mutex_lock(&c->lock);
	c->layer_ra[l] = ra;
	pthread_mutex_unlock(&c->lock);
}

uint64_t k2fs_cache_layer_readahead(struct k2fs_cache *c, uint32_t layer)
{
	uint32_t l = layer - c->first_layer;
	pthread_mutex_lock(&c->lock);
	uint64_t ra = c->readahead;
	if (layer >= c->first_layer && l < c->n_layers && c->layer_ra[l] != K2FS_RA_INHERIT)
		ra = c->layer_ra[l];
	pthread_mutex_unlock(&c->lock);
	return ra;
}

void k2fs_cache_set_limit(struct k2fs_cache *c, uint64_t limit)
{
	struct timespec deadline;
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 5;
	pthread_mutex_lock(&c->lock);
	c->limit = limit;
	make_room(c, 0, NULL);
	pthread_cond_broadcast(&c->room);
	while (c->used > c->limit && memory_will_free(c, NULL)) {
		if (pthread_cond_timedwait(&c->room, &c->lock, &deadline) == ETIMEDOUT)
			break;
		make_room(c, 0, NULL);
	}
	k2fs_pool_trim(c->pool, k2fs_cache_pool_keep(c));
	pthread_mutex_unlock(&c->lock);
}

void k2fs_cache_stats(struct k2fs_cache *c, struct k2fs_stats *out)
{
	pthread_mutex_lock(&c->lock);
	*out = c->st;
	out->cache_used = c->used;
	out->cache_limit = c->limit;
	out->pinned_bytes = 0;
	for (size_t i = 0; i < c->n_slots; i++)
		if (c->slots[i].pinned)
			out->pinned_bytes += c->slots[i].bytes;
	pthread_mutex_unlock(&c->lock);
}

void k2fs_cache_count_error(struct k2fs_cache *c)
{
	pthread_mutex_lock(&c->lock);
	c->st.errors++;
	pthread_mutex_unlock(&c->lock);
}

/* ---------------------------------------------------------------- life cycle */

/* Allocates and touches opts.prefault bytes of block buffers, then gives them to
 * the pool: the first loads then find memory that is already mapped (first
 * touches of fresh memory can cost more than the reads, notably in virtual
 * machines). Runs beside the daemon at start; stops early when the pool would
 * not keep more. */
static void *prefault_main(void *arg)
{
	struct k2fs_cache *c = arg;
	size_t cap = (size_t)k2fs_align4k(c->block_bytes);
	size_t n = (size_t)(c->opts.prefault / cap);
	void **bufs = calloc(n ? n : 1, sizeof(void *));
	if (!bufs)
		return NULL;
	size_t got = 0;
	for (; got < n; got++) {
		bufs[got] = k2fs_pool_get(c->pool, cap);
		if (!bufs[got])
			break;
		for (size_t off = 0; off < cap; off += 4096)
			((volatile uint8_t *)bufs[got])[off] = 0;
	}
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < got; i++)
		k2fs_pool_put(c->pool, bufs[i], cap, k2fs_cache_pool_keep(c));
	pthread_mutex_unlock(&c->lock);
	free(bufs);
	return NULL;
}

int k2fs_cache_create(const k2p_pack *pack, const struct k2fs_cache_opts *opts,
		      struct k2fs_cache **out, k2_err *err)
{
	*out = NULL;
	struct k2fs_cache *c = calloc(1, sizeof(*c));
	if (!c)
		return k2_err_set(err, -ENOMEM, "k2fs: out of memory");
	c->pack = pack;
	c->opts = *opts;
	if (c->opts.threads == 0)
		c->opts.threads = 1;
	if (c->opts.iodepth == 0)
		c->opts.iodepth = 1;
	if (c->opts.window == 0 || c->opts.window > c->opts.iodepth)
		c->opts.window = c->opts.iodepth;
	if (c->opts.chunk < 4096)
		c->opts.chunk = 1 << 20;
	c->opts.chunk = k2fs_align4k(c->opts.chunk);
	c->block_bytes = k2p_pack_block_bytes(pack);
	c->n_slots = k2p_entry_count(pack);
	c->n_layers = k2p_expert_layers(pack, &c->first_layer);
	c->slots = calloc(c->n_slots + 1, sizeof(*c->slots));
	c->layer_ra = malloc((c->n_layers + 1) * sizeof(*c->layer_ra));
	if (!c->slots || !c->layer_ra) {
		size_t n = c->n_slots;
		free(c->slots);
		free(c->layer_ra);
		free(c);
		return k2_err_set(err, -ENOMEM, "k2fs: out of memory for %zu cache slots", n);
	}
	for (size_t i = 0; i < c->n_slots; i++) {
		const k2p_entry *e = k2p_entry_at(pack, i);
		c->slots[i].readahead = K2FS_RA_INHERIT;
		if (e->kind == K2P_KIND_EXPERT)
			c->slots[i].e = e;
	}
	for (uint32_t l = 0; l < c->n_layers; l++)
		c->layer_ra[l] = K2FS_RA_INHERIT;
	c->readahead = opts->readahead;
	c->limit = opts->limit;
	c->lru.next = c->lru.prev = &c->lru;
	c->fd = c->fd_direct = c->fd_buffered = c->efd = -1;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->room, NULL);
	pthread_cond_init(&c->work, NULL);
	for (int i = 0; i < K2FS_NCOND; i++)
		pthread_cond_init(&c->done[i], NULL);
	int rc = k2fs_pool_create(&c->pool);
	if (rc) {
		k2fs_cache_destroy(c);
		return k2_err_set(err, rc, "k2fs: out of memory");
	}
	rc = k2fs_loader_start(c, err);
	if (rc) {
		k2fs_cache_destroy(c);
		return rc;
	}
	if (c->opts.prefault > c->limit)
		c->opts.prefault = c->limit;
	if (c->opts.prefault >= c->block_bytes &&
	    pthread_create(&c->prefault_thread, NULL, prefault_main, c) == 0)
		c->prefault_started = 1;
	*out = c;
	return 0;
}

void k2fs_cache_destroy(struct k2fs_cache *c)
{
	if (!c)
		return;
	if (c->prefault_started)
		pthread_join(c->prefault_thread, NULL);
	k2fs_loader_stop(c);
	for (size_t i = 0; i < c->n_slots; i++) {
		struct k2fs_slot *s = &c->slots[i];
		if (s->bdata && c->pool)
			for (uint32_t b = 0; b < s->e->n_blocks; b++)
				if (s->bdata[b])
					k2fs_pool_put(c->pool, s->bdata[b],
						      k2fs_align4k(block_raw(c, s, b)), 0);
		free(s->bstate);
		free(s->bdata);
	}
	k2fs_pool_destroy(c->pool);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->room);
	pthread_cond_destroy(&c->work);
	for (int i = 0; i < K2FS_NCOND; i++)
		pthread_cond_destroy(&c->done[i]);
	free(c->slots);
	free(c->layer_ra);
	free(c);
}
