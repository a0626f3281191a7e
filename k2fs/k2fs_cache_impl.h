/* k2fs_cache_impl.h — the insides of the RAM cache, shared by its two halves and
 * by nothing else: cache.c (slots, budget, LRU, reads, hints) and loader.c (the
 * io_uring reader and decode workers that carry out the loads cache.c starts).
 * Everything else uses the opaque struct k2fs_cache of k2fs_cache.h.
 *
 * One lock, cache->lock, protects every field below unless a comment says
 * otherwise. */
#ifndef K2FS_CACHE_IMPL_H
#define K2FS_CACHE_IMPL_H

#include "k2fs_cache.h"
#include "k2fs_pool.h"

#include <liburing.h>
#include <pthread.h>

#define K2FS_NCOND 64          /* condition variables for block completions */
#define K2FS_PIECE_IOV 16      /* block buffers per read SQE at most */

static inline uint64_t k2fs_align4k(uint64_t v)
{
	return (v + 4095) & ~(uint64_t)4095;
}

enum k2fs_bstate {
	K2FS_B_ABSENT = 0,
	K2FS_B_LOADING,
	K2FS_B_READY,
	K2FS_B_ERROR,
};

enum k2fs_prio {
	K2FS_PRIO_DEMAND = 0,   /* a reader waits */
	K2FS_PRIO_PREFETCH = 1, /* a hint */
};

struct k2fs_job;

/* One expert. All fields are protected by cache->lock. */
struct k2fs_slot {
	const k2p_entry *e;        /* NULL for entries that are not experts */
	uint8_t *bstate;           /* [e->n_blocks] enum k2fs_bstate, allocated on first use */
	uint8_t **bdata;           /* [e->n_blocks] decoded block buffers of READY blocks */
	uint32_t n_ready, n_loading, n_error;
	uint32_t refs;             /* readers copying from it or waiting for its blocks */
	uint32_t push_refs;        /* of refs, those of the page-cache pusher (push.c) */
	uint8_t pinned;            /* never evicted until unpin/dontneed */
	uint8_t prefetched;        /* loaded by a hint and not yet read */
	uint8_t drop_after_load;   /* dontneed arrived while busy */
	uint8_t in_lru;
	uint8_t hint;              /* last enum k2fs_hint */
	uint64_t readahead;        /* own setting or K2FS_RA_INHERIT */
	uint64_t bytes;            /* raw bytes of its LOADING and READY blocks */
	uint64_t hits, loads;
	struct k2fs_slot *prev, *next; /* LRU list: resident (or loading) and not pinned */
	struct k2fs_job *jobs;     /* loads in flight */
};

/* One read SQE of a job: a span of the pack into one or more buffers. */
struct k2fs_piece {
	struct k2fs_job *job;
	uint64_t off;              /* pack offset of the next byte to read */
	uint64_t need;             /* bytes of it still needed (the rest is alignment) */
	uint64_t len;              /* bytes to request (iov total) */
	uint32_t i_first, i_last;  /* job-relative blocks it overlaps */
	int niov;
	struct iovec iov[K2FS_PIECE_IOV];
};

/* One block of a job to verify and decode, queued for the workers. */
struct k2fs_task {
	struct k2fs_job *job;
	uint32_t i;                /* job-relative block */
	struct k2fs_task *next;
};

/* A load of blocks [b0, b0+n) of one slot. Created under the lock by a reader or
 * a hint (cache.c); the I/O thread prepares its buffers and read pieces; workers
 * verify and decode its blocks (loader.c); it is freed once its last block is
 * finished and no read of it is in flight. */
struct k2fs_job {
	struct k2fs_slot *slot;
	size_t entry;
	uint32_t b0, n;
	int prio;                  /* enum k2fs_prio */
	int queued;                /* in cache->ioq[prio] */
	int prepared;
	unsigned io_live;          /* pieces submitted and not yet completed */
	int direct;                /* blocks read straight into their buffers (codec none) */
	/* Set by job_prepare without the lock (no one else touches an unprepared
	 * job's buffers), then read-only: */
	uint8_t *stage;            /* staged: stored bytes of [stage_off, +stage_cap) */
	size_t stage_cap;
	uint64_t stage_off;
	uint8_t **bufs;            /* [n] decoded block buffers until handed to the slot */
	int32_t *pending;          /* [n] pieces still to complete; -1 once finished */
	struct k2fs_task *tasks;   /* [n] */
	struct k2fs_piece *pieces; /* [n_pieces] */
	uint32_t n_pieces, next_piece;
	uint32_t left;             /* blocks not yet finished */
	struct k2fs_job *qnext;    /* in cache->ioq */
	struct k2fs_job *snext;    /* in slot->jobs */
};

struct k2fs_cache {
	/* set at creation, then read-only */
	const k2p_pack *pack;
	struct k2fs_cache_opts opts;         /* normalised: no zero counts */
	uint32_t block_bytes;
	struct k2fs_pool *pool;              /* thread-safe on its own */
	size_t n_slots;
	struct k2fs_slot *slots;             /* [n_slots], by entry index */
	uint32_t first_layer, n_layers;

	pthread_mutex_t lock;
	pthread_cond_t room;                 /* memory may have become free */
	pthread_cond_t done[K2FS_NCOND];     /* block states changed, by entry % K2FS_NCOND */
	pthread_cond_t work;                 /* decode tasks queued, or stopping */
	/* everything below: protected by lock */
	uint64_t *layer_ra;                  /* [n_layers] own setting or K2FS_RA_INHERIT */
	uint64_t readahead;                  /* mount default */
	uint64_t limit, used;
	uint64_t loading;                    /* blocks LOADING in all slots */
	struct k2fs_slot lru;                /* sentinel; lru.next is least recently used */
	struct k2fs_job *ioq[2], *ioq_tail[2]; /* jobs with pieces to submit, by prio */
	struct k2fs_task *taskq[2], *tasktail[2];
	struct k2fs_stats st;
	int stopping;                        /* 1: I/O thread winds down; 2: workers too */
	unsigned inflight;                   /* read SQEs submitted, not completed */
	int fd;                              /* descriptor reads use now */

	/* loader.c's, set by k2fs_loader_start and k2fs_loader_stop; between
	 * them the ring and efd_buf are the I/O thread's alone */
	struct io_uring ring;
	int ring_ok;
	int fd_direct, fd_buffered;          /* fd_buffered is the pack's own */
	int efd;                             /* wakes the I/O thread */
	uint64_t efd_buf;
	pthread_t io_thread;
	pthread_t *workers;
	unsigned n_workers;
	int io_started;
	/* cache.c's: the prefault thread of k2fs_cache_create */
	pthread_t prefault_thread;
	int prefault_started;
};

/* ---------------------------------------------------------------- cache.c, for loader.c */

/* Records the outcome of block i of a job: READY (rc 0), ERROR (rc < 0; msg is
 * logged when non-NULL and the error counted) or back to ABSENT (-ECANCELED).
 * Hands the block's buffer to the slot (READY) or back to the pool. Lock held. */
void k2fs_cache_block_finish(struct k2fs_cache *c, struct k2fs_job *job, uint32_t i,
			     int rc, const char *msg);

/* Free bytes the pool may keep: what the budget leaves unused. Lock held. */
static inline uint64_t k2fs_cache_pool_keep(const struct k2fs_cache *c)
{
	return c->limit > c->used ? c->limit - c->used : 0;
}

/* ---------------------------------------------------------------- loader.c, for cache.c */

/* Opens the O_DIRECT descriptor, the eventfd and the ring, and starts the I/O
 * thread and the workers. Returns 0, or -errno with a message in err (then
 * k2fs_loader_stop undoes what was done). Lock not held. */
int k2fs_loader_start(struct k2fs_cache *c, k2_err *err);
/* Lets the I/O thread finish the reads in flight (loads not started are
 * cancelled), stops the workers after the tasks queued and closes what
 * k2fs_loader_start opened. Safe after a failed start. Lock not held. */
void k2fs_loader_stop(struct k2fs_cache *c);
/* Queues a new job for reading and wakes the I/O thread. Lock held. */
void k2fs_loader_submit(struct k2fs_cache *c, struct k2fs_job *job);
/* Moves a prefetch job (and its queued decode tasks) to demand priority. Lock
 * held. */
void k2fs_loader_promote(struct k2fs_cache *c, struct k2fs_job *job);

#endif /* K2FS_CACHE_IMPL_H */
