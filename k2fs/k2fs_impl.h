/* k2fs_impl.h — internals of k2fs/, shared by its .c files and its unit tests:
 * the inode tree (tree.c), the aligned buffer pool (bufpool.c), the RAM cache of
 * decoded expert blocks (cache.c) fed by the io_uring reader and the decode worker
 * pool (loader.c), the xattr values (value.c, xattr.c), the FUSE operations
 * (ops.c) and the daemon's start-up (daemon.c).
 *
 * Error convention: functions return 0 (or a count) or -errno. Nothing here exits
 * or aborts on input data; only k2fs_main may exit, at start-up. */
#ifndef K2FS_IMPL_H
#define K2FS_IMPL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* O_DIRECT, qsort_r, vasprintf */
#endif

#define FUSE_USE_VERSION 312

#include "k2fs.h"
#include "layout.h"

#include <fuse_lowlevel.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/uio.h>

/* ---------------------------------------------------------------- values (value.c) */

/* Read-ahead settings: a byte count, or one of these. */
#define K2FS_RA_ALL UINT64_MAX           /* the whole expert on first touch */
#define K2FS_RA_INHERIT (UINT64_MAX - 1) /* use the layer's, then the mount's */

enum k2fs_hint {
	K2FS_HINT_NONE = 0,
	K2FS_HINT_WILLNEED,
	K2FS_HINT_PIN,
	K2FS_HINT_UNPIN,
	K2FS_HINT_DONTNEED,
};

/* One expert named in a prefetch list. */
struct k2fs_ref {
	uint32_t layer, expert;
};

/* Parsers of xattr values (not NUL-terminated: v[0 … n)). Each accepts exactly
 * its syntax (no spaces, no trailing newline) and returns 0, or -EINVAL and
 * leaves *out untouched. */
/* "123", "64K", "1.5M", "2G", "2GiB" (binary units). */
int k2fs_value_parse_size(const char *v, size_t n, uint64_t *out);
/* A size, or "all" (K2FS_RA_ALL). */
int k2fs_value_parse_readahead(const char *v, size_t n, uint64_t *out);
/* "willneed", "pin", "unpin", "dontneed". */
int k2fs_value_parse_hint(const char *v, size_t n, enum k2fs_hint *out);
/* "3,17,200": decimal expert indices (at most 9 digits each), at least one.
 * On success *out is a malloc'd array of *count values, owned by the caller. */
int k2fs_value_parse_list(const char *v, size_t n, uint32_t **out, size_t *count);
/* "1/3,2/17": layer/expert pairs, at least one; *out malloc'd as above. */
int k2fs_value_parse_pairs(const char *v, size_t n, struct k2fs_ref **out, size_t *count);
/* "willneed" … or "none". */
const char *k2fs_hint_name(enum k2fs_hint h);
/* Formats a size the way the parser reads it back: "all" for K2FS_RA_ALL, "1M"
 * when an exact multiple of a binary unit, else decimal bytes. */
const char *k2fs_value_format_size(uint64_t v, char *buf, size_t n);

/* ---------------------------------------------------------------- tree (tree.c) */

enum k2fs_node_kind {
	K2FS_NODE_NONE = 0,
	K2FS_NODE_ROOT,
	K2FS_NODE_DENSE_DIR,
	K2FS_NODE_EXPERTS_DIR,
	K2FS_NODE_LAYER_DIR,
	K2FS_NODE_FILE,   /* FILE entry at the root */
	K2FS_NODE_DENSE,  /* dense/<name> */
	K2FS_NODE_EXPERT, /* experts/LLL/EEE */
};

/* Fixed inode numbers, computed from the index alone. */
#define K2FS_INO_ROOT 1
#define K2FS_INO_DENSE 2
#define K2FS_INO_EXPERTS 3
#define K2FS_INO_LAYER0 4 /* + (layer - first_layer) */

struct k2fs_node {
	enum k2fs_node_kind kind;
	fuse_ino_t ino;
	uint32_t layer;       /* LAYER_DIR, EXPERT */
	size_t entry;         /* FILE, DENSE, EXPERT: index in the pack */
	const k2p_entry *e;   /* FILE, DENSE, EXPERT */
};

struct k2fs_layer {
	size_t *kids;         /* [n_kids] entry indices, by expert index */
	uint32_t n_kids;
};

struct k2fs_tree {
	const k2p_pack *pack;
	size_t n_entries;
	uint32_t first_layer, n_layers;   /* span of layers holding experts */
	fuse_ino_t entry_base;            /* inode of entry 0 */
	size_t *files, n_files;           /* FILE entries, index order */
	size_t *dense, n_dense;           /* DENSE entries, index order */
	struct k2fs_layer *layers;        /* [n_layers] */
	uint32_t *present, n_present;     /* layers with experts, ascending */
	struct timespec mtime;            /* the pack's, for every node */
	uid_t uid;
	gid_t gid;
};

/* Builds the tree of an open pack. Returns 0 or -ENOMEM. */
int k2fs_tree_build(struct k2fs_tree *t, const k2p_pack *pack, k2_err *err);
void k2fs_tree_free(struct k2fs_tree *t);
/* The node of an inode: 0, or -ENOENT for a number the tree does not hold. */
int k2fs_tree_node(const struct k2fs_tree *t, fuse_ino_t ino, struct k2fs_node *out);
/* The child `name` of directory `parent`: 0, -ENOENT or -ENOTDIR. */
int k2fs_tree_lookup(const struct k2fs_tree *t, fuse_ino_t parent, const char *name,
		     struct k2fs_node *out);
/* Child number i (0-based, in listing order) of a directory node; writes its
 * name (NUL-terminated) into name[cap]. Returns 0, or -ENOENT past the end. */
int k2fs_tree_child(const struct k2fs_tree *t, const struct k2fs_node *dir, size_t i,
		    struct k2fs_node *child, char *name, size_t cap);
void k2fs_tree_stat(const struct k2fs_tree *t, const struct k2fs_node *n, struct stat *st);
/* Inode of an expert's layer directory. */
fuse_ino_t k2fs_tree_layer_ino(const struct k2fs_tree *t, uint32_t layer);
/* Entry index of expert (layer, expert), or -ENOENT. */
long k2fs_tree_expert(const struct k2fs_tree *t, uint32_t layer, uint32_t expert);

/* ---------------------------------------------------------------- buffer pool (bufpool.c) */

/* Page-aligned buffers (usable for O_DIRECT), recycled by exact capacity so that
 * loading an expert into memory freed by an eviction costs no page faults.
 * Thread-safe. */
struct k2fs_pool;

int k2fs_pool_create(struct k2fs_pool **out);
void k2fs_pool_destroy(struct k2fs_pool *p);
/* A buffer of exactly `cap` bytes (cap a multiple of 4096), or NULL. */
void *k2fs_pool_get(struct k2fs_pool *p, size_t cap);
/* Gives a buffer back: kept for reuse while the pool's free bytes stay within
 * `keep`, else unmapped. NULL is ignored. */
void k2fs_pool_put(struct k2fs_pool *p, void *buf, size_t cap, uint64_t keep);
/* Unmaps free buffers until at most `keep` bytes are free. */
void k2fs_pool_trim(struct k2fs_pool *p, uint64_t keep);
uint64_t k2fs_pool_idle_bytes(struct k2fs_pool *p);

/* ---------------------------------------------------------------- cache (cache.c, loader.c) */

#define K2FS_NCOND 64          /* condition variables for block completions */
#define K2FS_PIECE_IOV 16      /* block buffers per read SQE at most */

enum k2fs_bstate {
	K2FS_B_ABSENT = 0,
	K2FS_B_LOADING,
	K2FS_B_READY,
	K2FS_B_ERROR,
};

enum k2fs_state {
	K2FS_STATE_DISK = 0,
	K2FS_STATE_LOADING,
	K2FS_STATE_RAM,
	K2FS_STATE_PINNED,
};

const char *k2fs_state_name(enum k2fs_state s);

enum k2fs_prio {
	K2FS_PRIO_DEMAND = 0,   /* a reader waits */
	K2FS_PRIO_PREFETCH = 1, /* a hint */
};

struct k2fs_cache_opts {
	uint64_t limit;       /* byte budget of decoded blocks */
	unsigned threads;     /* decode workers */
	unsigned iodepth;     /* read SQEs in flight */
	unsigned window;      /* read SQEs in flight for one load at most */
	uint64_t chunk;       /* bytes per read SQE at most (multiple of 4096) */
	uint64_t readahead;   /* default for expert files: bytes or K2FS_RA_ALL */
	int no_odirect;       /* 1: read the pack through the page cache */
	uint64_t prefault;    /* bytes of block buffers to allocate and touch at start */
	/* Called, cache lock held (so it must only queue), when a load leaves an
	 * expert wholly resident. NULL: not called. */
	void (*loaded)(void *arg, size_t entry);
	void *loaded_arg;
};

struct k2fs_stats {
	uint64_t hits, misses, loads, evictions;
	uint64_t bytes_read, bytes_decompressed;
	uint64_t prefetch_requests, prefetch_used, prefetch_dropped;
	uint64_t errors;
	uint64_t cache_used, cache_limit, pinned_bytes;
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

/* A load of blocks [b0, b0+n) of one slot. Created under the lock by a reader or
 * a hint; the I/O thread prepares its buffers and read pieces; workers verify and
 * decode its blocks; the last block to finish frees it. */
struct k2fs_piece {
	struct k2fs_job *job;
	uint64_t off;              /* pack offset of the next byte to read */
	uint64_t need;             /* bytes of it still needed (the rest is alignment) */
	uint64_t len;              /* bytes to request (iov total) */
	uint32_t i_first, i_last;  /* job-relative blocks it overlaps */
	int niov;
	struct iovec iov[K2FS_PIECE_IOV];
};

struct k2fs_task {
	struct k2fs_job *job;
	uint32_t i;                /* job-relative block */
	struct k2fs_task *next;
};

struct k2fs_job {
	struct k2fs_slot *slot;
	size_t entry;
	uint32_t b0, n;
	int prio;                  /* enum k2fs_prio; protected by the lock */
	int queued;                /* in cache->ioq[prio] */
	int prepared;
	unsigned io_live;          /* pieces submitted and not yet completed */
	int direct;                /* blocks read straight into their buffers (codec none) */
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
	const k2p_pack *pack;
	struct k2fs_cache_opts opts;
	uint32_t block_bytes;
	struct k2fs_pool *pool;
	size_t n_slots;
	struct k2fs_slot *slots;   /* [n_slots], by entry index */
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

	/* loader (loader.c) */
	struct io_uring ring;
	int ring_ok;
	int fd_direct, fd_buffered;          /* fd_buffered is the pack's own */
	int efd;                             /* wakes the I/O thread */
	uint64_t efd_buf;
	pthread_t io_thread;
	pthread_t *workers;
	unsigned n_workers;
	int io_started;
	pthread_t prefault_thread;
	int prefault_started;
};

/* Creates the cache of an open pack (one slot per entry) and starts its I/O
 * thread and workers. Call after daemonizing (threads do not survive fork).
 * Returns 0 or -errno with a message. */
int k2fs_cache_create(const k2p_pack *pack, const struct k2fs_cache_opts *opts,
		      struct k2fs_cache **out, k2_err *err);
/* Finishes reads in flight, stops the threads and frees everything. */
void k2fs_cache_destroy(struct k2fs_cache *c);

/* A read in progress: iov points into cached blocks, which stay allocated until
 * k2fs_cache_read_end. */
struct k2fs_read {
	struct k2fs_slot *slot;
	int push;                  /* a ref of the pusher (k2fs_cache_read_resident) */
	struct iovec *iov;
	int niov;
	size_t bytes;
	struct iovec small[16];
};

/* Makes decoded bytes [off, off+len) of expert entry `entry` resident, loading
 * what is missing (with the file's read-ahead) and waiting for it. Returns 0
 * with rd filled (rd->bytes is short only at the end of the file, 0 past it),
 * -EIO when a block of the range is damaged (logged when it was loaded), or
 * -ENOMEM. After 0, the caller must call k2fs_cache_read_end. */
int k2fs_cache_read_begin(struct k2fs_cache *c, size_t entry, uint64_t off, size_t len,
			  struct k2fs_read *rd);
void k2fs_cache_read_end(struct k2fs_cache *c, struct k2fs_read *rd);
/* As k2fs_cache_read_begin, but never loads and counts nothing: 0 with rd filled
 * when every block of the range is resident, -EAGAIN when one is not. For the
 * page-cache pusher: its ref keeps the blocks but is not waited for by loads
 * that need memory (the pusher may itself wait on the kernel). */
int k2fs_cache_read_resident(struct k2fs_cache *c, size_t entry, uint64_t off, size_t len,
			     struct k2fs_read *rd);

/* Applies a hint to an expert: WILLNEED queues a background load of whatever is
 * not resident (nothing when all is, nothing when it does not fit the budget
 * without evicting busy or pinned experts); PIN does the same and keeps it
 * resident from then on (when it does not fit now, it loads on its next read);
 * UNPIN makes it evictable again; DONTNEED drops it (at once, or when its
 * readers and loads finish). Returns 0 or -ENOMEM. */
int k2fs_cache_hint(struct k2fs_cache *c, size_t entry, enum k2fs_hint h);
/* WILLNEED for each of n entries, under one lock. */
void k2fs_cache_willneed_many(struct k2fs_cache *c, const size_t *entries, size_t n);

struct k2fs_slot_info {
	enum k2fs_state state;
	enum k2fs_hint hint;
	uint64_t hits, loads;
	uint64_t readahead;        /* own setting or K2FS_RA_INHERIT */
	uint64_t effective_ra;     /* what reads use */
};
void k2fs_cache_info(struct k2fs_cache *c, size_t entry, struct k2fs_slot_info *out);
/* 1 when every block of the expert is resident, else 0. */
int k2fs_cache_resident(struct k2fs_cache *c, size_t entry);

/* Read-ahead of one expert, of one layer's experts (K2FS_RA_INHERIT resets). */
void k2fs_cache_set_readahead(struct k2fs_cache *c, size_t entry, uint64_t ra);
void k2fs_cache_set_layer_readahead(struct k2fs_cache *c, uint32_t layer, uint64_t ra);
/* The layer's effective default (its own, else the mount's). */
uint64_t k2fs_cache_layer_readahead(struct k2fs_cache *c, uint32_t layer);

/* Sets the budget. Lowering it evicts unpinned idle experts at once and waits
 * (at most a few seconds) for busy ones to become idle and be evicted. */
void k2fs_cache_set_limit(struct k2fs_cache *c, uint64_t limit);
void k2fs_cache_stats(struct k2fs_cache *c, struct k2fs_stats *out);
/* Counts a decode failure found outside the cache (dense tensors, files). */
void k2fs_cache_count_error(struct k2fs_cache *c);

/* Internal to cache.c and loader.c, called with cache->lock held. */
/* Records the outcome of block i of a job: READY (rc 0), ERROR (rc < 0; msg is
 * logged when non-NULL and the error counted) or back to ABSENT (-ECANCELED). */
void k2fs_cache_block_finish(struct k2fs_cache *c, struct k2fs_job *job, uint32_t i,
			     int rc, const char *msg);
/* Starts the I/O thread and the workers; stops them after the work queued. */
int k2fs_loader_start(struct k2fs_cache *c, k2_err *err);
void k2fs_loader_stop(struct k2fs_cache *c);
/* Queues a new job for reading and wakes the I/O thread. */
void k2fs_loader_submit(struct k2fs_cache *c, struct k2fs_job *job);
/* Moves a prefetch job (and its queued decode tasks) to demand priority. */
void k2fs_loader_promote(struct k2fs_cache *c, struct k2fs_job *job);
/* Free bytes the pool may keep: what the budget leaves unused. */
static inline uint64_t k2fs_cache_pool_keep(const struct k2fs_cache *c)
{
	return c->limit > c->used ? c->limit - c->used : 0;
}

/* ---------------------------------------------------------------- the daemon (daemon.c, ops.c, xattr.c) */

/* Pushes experts into the kernel page cache (fuse_lowlevel_notify_store) as their
 * loads finish, from its own thread (push.c). */
struct k2fs_push;
struct k2fs_fs;
int k2fs_push_create(struct k2fs_fs *fs, struct k2fs_push **out);
/* The cache's `loaded` callback: queues an expert (never blocks). */
void k2fs_push_queue(void *arg, size_t entry);
int k2fs_push_start(struct k2fs_push *p);
void k2fs_push_destroy(struct k2fs_push *p); /* stops the thread; accepts NULL */

struct k2fs_config {
	char *pack_path;
	char *mountpoint;
	struct k2fs_cache_opts cache;
	int direct_io;        /* open files with direct_io instead of keep_cache */
	int auto_direct;      /* direct_io for experts not resident at open, else keep_cache */
	int notify_store;     /* push loaded experts into the kernel page cache */
	double timeout;       /* entry and attribute timeouts, seconds */
	uint64_t kernel_ra;   /* bytes for /sys/class/bdi/<dev>/read_ahead_kb, 0: leave */
	int foreground;
};

struct k2fs_fs {
	k2p_pack *pack;
	struct k2fs_tree tree;
	struct k2fs_cache *cache;
	struct k2fs_config cfg;
	struct fuse_session *se;
	struct k2fs_push *push;    /* NULL unless cfg.notify_store */
	atomic_int after_init_done;
	pthread_mutex_t hint_lock;
	char *root_prefetch;       /* last list set on the root; protected by hint_lock */
	char **layer_prefetch;     /* [tree.n_layers] last list per layer dir */
};

extern const struct fuse_lowlevel_ops k2fs_ops;

/* Names of a node's xattrs, as listxattr returns them (NUL-separated). Returns the
 * length, or -ERANGE when cap (non-zero) is too small. */
long k2fs_xattr_list(struct k2fs_fs *fs, const struct k2fs_node *n, char *buf, size_t cap);
/* The value of `name` on node n into a malloc'd *val (not NUL-terminated,
 * *len bytes). Returns 0, -ENODATA (no such name here) or -ENOMEM. */
int k2fs_xattr_get(struct k2fs_fs *fs, const struct k2fs_node *n, const char *name,
		   char **val, size_t *len);
/* Sets `name`: 0, -ENOTSUP (no such name here), -EPERM (read-only) or -EINVAL
 * (malformed value; nothing changed). */
int k2fs_xattr_set(struct k2fs_fs *fs, const struct k2fs_node *n, const char *name,
		   const char *val, size_t len);
/* removexattr: -EPERM for a name of the table, -ENODATA otherwise. */
int k2fs_xattr_remove(struct k2fs_fs *fs, const struct k2fs_node *n, const char *name);

/* Runs once, on the first request after FUSE's INIT (daemon.c): settings the
 * kernel only accepts once the connection is up (the mount's read-ahead). */
void k2fs_after_init(struct k2fs_fs *fs);

/* Logs one line (no trailing newline needed) to stderr, or syslog when daemonized. */
void k2fs_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* K2FS_IMPL_H */
