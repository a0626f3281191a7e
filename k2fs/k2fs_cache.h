/* k2fs_cache.h — the RAM cache of decoded expert blocks, as the rest of k2fs/
 * sees it: an opaque object with a byte budget, LRU eviction, pinning, per-file
 * read-ahead and hints, that reads and decodes what is missing from the pack
 * with its own I/O thread and decode workers (cache.c, loader.c; its structs
 * are in k2fs_cache_impl.h). Design: docs/design.md, "The RAM cache".
 *
 * Every function below is thread-safe: each takes the cache's lock itself, so
 * none may be called with it held, which rules out the `loaded` callback (it
 * runs under the lock). Entries are indices in the pack; a function given an
 * entry that is not an expert does nothing, or says so where it returns. */
#ifndef K2FS_CACHE_H
#define K2FS_CACHE_H

#include "k2fs_value.h"

#include <sys/uio.h>

struct k2fs_cache;

struct k2fs_cache_opts {
	uint64_t limit;       /* byte budget of decoded blocks */
	unsigned threads;     /* decode workers (0: 1) */
	unsigned iodepth;     /* read SQEs in flight (0: 1) */
	unsigned window;      /* read SQEs in flight for one load at most (0: iodepth) */
	uint64_t chunk;       /* bytes per read SQE at most (below 4096: 1 MiB) */
	uint64_t readahead;   /* default for expert files: bytes or K2FS_RA_ALL */
	int no_odirect;       /* 1: read the pack through the page cache */
	uint64_t prefault;    /* bytes of block buffers to allocate and touch at start */
	/* Called, cache lock held (so it must only queue), when a load leaves an
	 * expert wholly resident. NULL: not called. */
	void (*loaded)(void *arg, size_t entry);
	void *loaded_arg;
};

/* Creates the cache of an open pack (one slot per entry) into *out and starts
 * its I/O thread and workers. The pack must stay open until
 * k2fs_cache_destroy; opts is copied. Call after daemonizing (threads do not
 * survive fork). Returns 0, or -errno with a message in err (then *out is
 * NULL). */
int k2fs_cache_create(const k2p_pack *pack, const struct k2fs_cache_opts *opts,
		      struct k2fs_cache **out, k2_err *err);
/* Lets the pack reads in flight finish, drops loads not yet started, stops the
 * threads and frees everything. No k2fs_read may be in progress. Accepts NULL. */
void k2fs_cache_destroy(struct k2fs_cache *c);

/* ---------------------------------------------------------------- reads */

struct k2fs_slot; /* one expert's state: the cache's own */

/* A read in progress, in the caller's memory: iov[0 … niov) point into cached
 * blocks (bytes in all), which stay allocated and unchanged until
 * k2fs_cache_read_end. The caller reads iov, niov and bytes only. */
struct k2fs_read {
	struct k2fs_slot *slot;    /* the cache's: the expert it holds a ref on */
	int push;                  /* the cache's: a ref of k2fs_cache_read_resident */
	struct iovec *iov;         /* small, or malloc'd by the cache when niov > 16 */
	int niov;
	size_t bytes;
	struct iovec small[16];
};

/* Makes decoded bytes [off, off+len) of expert entry `entry` resident, loading
 * what is missing (with the file's read-ahead) and waiting for it. Returns 0
 * with rd filled (rd->bytes is short only at the end of the file, 0 past it),
 * -EINVAL when entry is not an expert, -EIO when a block of the range is
 * damaged (logged when it was loaded), or -ENOMEM. After 0, the caller must
 * call k2fs_cache_read_end; after an error rd holds nothing. */
int k2fs_cache_read_begin(struct k2fs_cache *c, size_t entry, uint64_t off, size_t len,
			  struct k2fs_read *rd);
/* Releases what a successful read_begin or read_resident holds and clears rd. */
void k2fs_cache_read_end(struct k2fs_cache *c, struct k2fs_read *rd);
/* As k2fs_cache_read_begin, but never loads and counts nothing: 0 with rd filled
 * when every block of the range is resident, -EAGAIN when one is not. For the
 * page-cache pusher: its ref keeps the blocks but is not waited for by loads
 * that need memory (the pusher may itself wait on the kernel). */
int k2fs_cache_read_resident(struct k2fs_cache *c, size_t entry, uint64_t off, size_t len,
			     struct k2fs_read *rd);

/* ---------------------------------------------------------------- hints */

/* Applies a hint to an expert: WILLNEED queues a background load of whatever is
 * not resident (nothing when all is, nothing when it does not fit the budget
 * without evicting busy or pinned experts); PIN does the same and keeps it
 * resident from then on (when it does not fit now, it loads on its next read);
 * UNPIN makes it evictable again; DONTNEED drops it (at once, or when its
 * readers and loads finish). Returns 0, -EINVAL when entry is not an expert or
 * h not one of these, or -ENOMEM. */
int k2fs_cache_hint(struct k2fs_cache *c, size_t entry, enum k2fs_hint h);
/* WILLNEED for each of n entries, under one lock; entries that are not experts
 * are skipped. */
void k2fs_cache_willneed_many(struct k2fs_cache *c, const size_t *entries, size_t n);

/* ---------------------------------------------------------------- state and settings */

enum k2fs_state {
	K2FS_STATE_DISK = 0,
	K2FS_STATE_LOADING,
	K2FS_STATE_RAM,
	K2FS_STATE_PINNED,
};

/* "disk", "loading", "ram", "pinned": a static string. */
const char *k2fs_state_name(enum k2fs_state s);

/* One expert, as user.k2.* shows it. */
struct k2fs_slot_info {
	enum k2fs_state state;
	enum k2fs_hint hint;       /* the last one applied */
	uint64_t hits, loads;
	uint64_t readahead;        /* own setting or K2FS_RA_INHERIT */
	uint64_t effective_ra;     /* what reads use */
};
/* Fills *out; all zero (DISK, no hint) when entry is not an expert. */
void k2fs_cache_info(struct k2fs_cache *c, size_t entry, struct k2fs_slot_info *out);
/* 1 when every block of the expert is resident, else 0 (also for non-experts). */
int k2fs_cache_resident(struct k2fs_cache *c, size_t entry);

/* Read-ahead of one expert, of one layer's experts (K2FS_RA_INHERIT resets).
 * A layer outside the span of layers holding experts is ignored. */
void k2fs_cache_set_readahead(struct k2fs_cache *c, size_t entry, uint64_t ra);
void k2fs_cache_set_layer_readahead(struct k2fs_cache *c, uint32_t layer, uint64_t ra);
/* The layer's effective default (its own, else the mount's). */
uint64_t k2fs_cache_layer_readahead(struct k2fs_cache *c, uint32_t layer);

/* Sets the budget. Lowering it evicts unpinned idle experts at once and waits
 * (at most a few seconds) for busy ones to become idle and be evicted. */
void k2fs_cache_set_limit(struct k2fs_cache *c, uint64_t limit);

/* The counters of user.k2.stats: totals since the cache was created. */
struct k2fs_stats {
	uint64_t hits, misses, loads, evictions;
	uint64_t bytes_read, bytes_decompressed;
	uint64_t prefetch_requests, prefetch_used, prefetch_dropped;
	uint64_t errors;
	uint64_t cache_used, cache_limit, pinned_bytes;
};
/* A consistent copy of the counters, taken under the lock. */
void k2fs_cache_stats(struct k2fs_cache *c, struct k2fs_stats *out);
/* Counts a decode failure found outside the cache (dense tensors, files). */
void k2fs_cache_count_error(struct k2fs_cache *c);

#endif /* K2FS_CACHE_H */
