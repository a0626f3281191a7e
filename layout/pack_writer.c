/* pack_writer.c — writes a pack (FORMAT.md §1) into `path.tmp-<pid>`, renamed to
 * `path` once complete.
 *
 * Pipeline: add_* validates an entry, copies its bytes (or, for an entry too large
 * to copy cheaply, borrows them and waits until it is on disk) and queues it;
 * `threads` workers compress the queued blocks in any order; one writer thread
 * writes the compressed blocks strictly in entry and block order, each entry as an
 * aligned extent, and records the block table. add_* returns as soon as the entry
 * is queued, unless the bytes queued but not yet written exceed a bound, so the
 * caller prepares the next entry while this one compresses, and memory stays at a
 * few entries. k2p_writer_finish drains the queue and writes the index and header.
 *
 * An entry streamed with k2p_writer_add_dense_from is queued as a run of parts of
 * STREAM_CHUNK bytes (whole blocks), each read into a queue buffer once the queue
 * has room; the writer thread continues the first part's extent with the others,
 * so the pack is the one add_dense would write, and memory stays at the bound.
 *
 * One producer: the add_* functions, totals, finish and abort are called from one
 * thread at a time. */
#include "pack_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <zstd.h>

#define QUEUE_LIMIT_BYTES (192ull << 20)  /* raw bytes queued but not yet on disk */
#define MAX_THREADS 256
#define WRITE_BATCH 64                      /* blocks per pwritev */
#define BUF_HEADER 64u                      /* struct pbuf, padded: data stays aligned */
#define STREAM_CHUNK (32u << 20)            /* bytes per part of a streamed entry */
_Static_assert(STREAM_CHUNK <= QUEUE_LIMIT_BYTES / 2, "stream parts are queue copies");
_Static_assert(K2P_MAX_BLOCK_BYTES <= QUEUE_LIMIT_BYTES / 2, "one-block parts are queue copies");

/* A reusable buffer: entry copies and compressed blocks are recycled rather than
 * freed, because fresh large allocations cost a page fault per 4 KiB. */
struct pbuf {
	struct pbuf *next;
	size_t cap;
};
_Static_assert(sizeof(struct pbuf) <= BUF_HEADER, "pbuf header fits");

struct pool {
	struct pbuf *free;     /* protected by the writer's pool_lock */
	size_t retained, limit;
};

enum job_state { JOB_PENDING = 0, JOB_CLAIMED, JOB_DONE };

struct wjob {
	const uint8_t *src;    /* into the entry's bytes */
	uint32_t raw;
	uint8_t *out;          /* compressed bytes (from w->blk_pool), NULL when stored raw */
	uint32_t stored;
	uint32_t codec;
	uint64_t checksum;
	int state;             /* enum job_state; protected by w->lock */
	int err;               /* -errno from compression */
};

struct wentry {
	struct wentry *next;
	uint32_t index;        /* into w->ents */
	const uint8_t *data;
	uint8_t *owned;        /* == data when copied (from w->ent_pool), else NULL */
	size_t n;
	uint32_t codec;
	int level;
	uint32_t n_blocks;
	uint32_t next_claim;   /* next block for a worker; protected by w->lock */
	uint32_t n_written;    /* written by the writer thread; protected by w->lock */
	int started;
	int cont;              /* a later part of a streamed entry: continues its extent */
	struct wjob *jobs;     /* [n_blocks] */
};

struct k2p_writer {
	char *path, *tmp_path;
	int fd;
	uint32_t block_bytes;
	uint32_t codec, dense_codec;
	int zstd_level, lz4_level;
	int n_threads;
	pthread_t *workers;
	pthread_t writer_thread;
	int writer_started;
	int n_workers_started;

	pthread_mutex_t lock;
	pthread_cond_t work;   /* workers: a block to compress, or stop */
	pthread_cond_t done;   /* writer thread: a block compressed, an entry queued, or stop */
	pthread_cond_t space;  /* producer: bytes left the queue */
	pthread_mutex_t pool_lock;
	struct pool ent_pool;  /* entry copies: best fit */
	struct pool blk_pool;  /* compressed blocks: all blk_cap bytes */
	size_t blk_cap;
	struct wentry *head, *tail, *claim; /* queue; claim = first entry with unclaimed blocks */
	uint64_t queued_bytes;
	int stop;              /* finish: exit when the queue is empty */
	int cancel;            /* abort: exit now */
	int error;             /* first -errno, message in errmsg */
	k2_err errmsg;

	/* index being built; protected by lock */
	struct k2p_entry_disk *ents;
	size_t n_ents, cap_ents;
	struct k2p_block_disk *blocks;
	size_t n_blocks, cap_blocks;
	uint64_t pos;          /* end of written data; writer thread only */
	uint64_t total_raw, total_stored;

	/* producer only */
	char *strings;
	size_t strings_len, strings_cap;
	char **paths;          /* open-addressing set of mount paths, for duplicates */
	size_t paths_cap, paths_n;
};

/* ---------------------------------------------------------------- small helpers */

static int pwrite_full(int fd, const void *buf, size_t n, uint64_t off)
{
	size_t done = 0;
	while (done < n) {
		ssize_t r = pwrite(fd, (const char *)buf + done, n - done, (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EIO;
		done += (size_t)r;
	}
	return 0;
}

/* Writes all of iov[0..n) at off; returns 0 or -errno. Modifies iov. */
static int pwritev_full(int fd, struct iovec *iov, int n, uint64_t off)
{
	while (n > 0) {
		ssize_t r = pwritev(fd, iov, n, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EIO;
		off += (uint64_t)r;
		while (n > 0 && (size_t)r >= iov->iov_len) {
			r -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + r;
			iov->iov_len -= (size_t)r;
		}
	}
	return 0;
}

/* Records the first error; called with w->lock held. */
static void set_error_locked(k2p_writer *w, int code, const char *msg)
{
	if (w->error)
		return;
	w->error = code;
	snprintf(w->errmsg.msg, sizeof(w->errmsg.msg), "%s", msg);
	pthread_cond_broadcast(&w->space);
	pthread_cond_broadcast(&w->done);
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	size_t n = *cap ? *cap : 64;
	while (n < need)
		n *= 2;
	void *p = realloc(*arr, n * elem);
	if (!p)
		return -ENOMEM;
	*arr = p;
	*cap = n;
	return 0;
}

/* Adds path to the set; returns 0, -EEXIST when present, or -ENOMEM. */
static int paths_add(k2p_writer *w, const char *path)
{
	if (2 * (w->paths_n + 1) > w->paths_cap) {
		size_t ncap = w->paths_cap ? 2 * w->paths_cap : 256;
		char **np = calloc(ncap, sizeof(char *));
		if (!np)
			return -ENOMEM;
		for (size_t i = 0; i < w->paths_cap; i++) {
			if (!w->paths[i])
				continue;
			size_t h = (size_t)k2_checksum(w->paths[i], strlen(w->paths[i])) & (ncap - 1);
			while (np[h])
				h = (h + 1) & (ncap - 1);
			np[h] = w->paths[i];
		}
		free(w->paths);
		w->paths = np;
		w->paths_cap = ncap;
	}
	size_t mask = w->paths_cap - 1;
	size_t h = (size_t)k2_checksum(path, strlen(path)) & mask;
	for (; w->paths[h]; h = (h + 1) & mask)
		if (strcmp(w->paths[h], path) == 0)
			return -EEXIST;
	w->paths[h] = strdup(path);
	if (!w->paths[h])
		return -ENOMEM;
	w->paths_n++;
	return 0;
}

/* A buffer of at least n bytes from the pool (the smallest that fits, if it is not
 * more than twice the need), else a new one; NULL when out of memory. */
static uint8_t *buf_get(k2p_writer *w, struct pool *pl, size_t n)
{
	pthread_mutex_lock(&w->pool_lock);
	struct pbuf **best = NULL;
	for (struct pbuf **pp = &pl->free; *pp; pp = &(*pp)->next)
		if ((*pp)->cap >= n && (*pp)->cap / 2 <= n &&
		    (!best || (*pp)->cap < (*best)->cap))
			best = pp;
	struct pbuf *b = NULL;
	if (best) {
		b = *best;
		*best = b->next;
		pl->retained -= b->cap;
	}
	pthread_mutex_unlock(&w->pool_lock);
	if (!b) {
		b = malloc(BUF_HEADER + (n ? n : 1));
		if (!b)
			return NULL;
		b->cap = n;
	}
	return (uint8_t *)b + BUF_HEADER;
}

/* Returns a buffer to the pool, dropping the oldest ones beyond the pool's limit. */
static void buf_put(k2p_writer *w, struct pool *pl, uint8_t *p)
{
	if (!p)
		return;
	struct pbuf *b = (struct pbuf *)(p - BUF_HEADER), *drop = NULL;
	pthread_mutex_lock(&w->pool_lock);
	if (b->cap > pl->limit) {
		drop = b;
	} else {
		b->next = pl->free;
		pl->free = b;
		pl->retained += b->cap;
		while (pl->retained > pl->limit) {  /* unlink the oldest (the tail) */
			struct pbuf **pp = &pl->free;
			while ((*pp)->next)
				pp = &(*pp)->next;
			struct pbuf *t = *pp;
			*pp = NULL;
			pl->retained -= t->cap;
			t->next = drop;
			drop = t;
		}
	}
	pthread_mutex_unlock(&w->pool_lock);
	while (drop) {
		struct pbuf *n = drop == b ? NULL : drop->next;
		free(drop);
		drop = n;
	}
}

static void pool_free(struct pool *pl)
{
	while (pl->free) {
		struct pbuf *n = pl->free->next;
		free(pl->free);
		pl->free = n;
	}
	pl->retained = 0;
}

static void entry_free(k2p_writer *w, struct wentry *e)
{
	if (!e)
		return;
	for (uint32_t k = 0; k < e->n_blocks; k++)
		buf_put(w, &w->blk_pool, e->jobs[k].out);
	free(e->jobs);
	buf_put(w, &w->ent_pool, e->owned);
	free(e);
}

/* ---------------------------------------------------------------- threads */

static void compress_job(k2p_writer *w, const struct wentry *e, struct wjob *j)
{
	j->codec = K2_CODEC_NONE;
	j->stored = j->raw;
	j->err = 0;
	if (e->codec != K2_CODEC_NONE) {
		size_t cap = k2_codec_bound(e->codec, j->raw);
		uint8_t *out = cap && cap <= w->blk_cap ? buf_get(w, &w->blk_pool, w->blk_cap) : NULL;
		if (!out) {
			j->err = -ENOMEM;
			return;
		}
		long r = k2_codec_compress(e->codec, e->level, j->src, j->raw, out, cap);
		if (r < 0) {
			buf_put(w, &w->blk_pool, out);
			j->err = (int)r;
			return;
		}
		/* Store raw when compression saves less than 1/32 of the block. */
		if ((uint64_t)r >= j->raw || ((uint64_t)j->raw - (uint64_t)r) * 32 < j->raw) {
			buf_put(w, &w->blk_pool, out);
		} else {
			j->out = out;
			j->stored = (uint32_t)r;
			j->codec = e->codec;
		}
	}
	j->checksum = k2_checksum(j->out ? j->out : j->src, j->stored);
}

static void *worker_main(void *arg)
{
	k2p_writer *w = arg;
	pthread_mutex_lock(&w->lock);
	for (;;) {
		while (!w->cancel && !w->stop && !w->claim)
			pthread_cond_wait(&w->work, &w->lock);
		if (w->cancel || !w->claim)
			break;
		struct wentry *e = w->claim;
		struct wjob *j = &e->jobs[e->next_claim++];
		if (e->next_claim == e->n_blocks) {
			struct wentry *c = e->next;
			while (c && c->n_blocks == 0)
				c = c->next;
			w->claim = c;
		}
		j->state = JOB_CLAIMED;
		pthread_mutex_unlock(&w->lock);
		compress_job(w, e, j);
		pthread_mutex_lock(&w->lock);
		j->state = JOB_DONE;
		pthread_cond_signal(&w->done);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

static void *writer_main(void *arg)
{
	k2p_writer *w = arg;
	char msg[sizeof(w->errmsg.msg)];
	pthread_mutex_lock(&w->lock);
	for (;;) {
		if (w->cancel)
			break;
		struct wentry *e = w->head;
		if (!e) {
			if (w->stop)
				break;
			pthread_cond_wait(&w->done, &w->lock);
			continue;
		}
		struct k2p_entry_disk *d = &w->ents[e->index];
		if (!e->started) {
			e->started = 1;
			if (!e->cont) {
				w->pos = k2_align_up(w->pos);
				d->extent_offset = w->pos;
				d->first_block = (uint32_t)w->n_blocks;
			}
		}
		if (e->n_written == e->n_blocks) {
			d->extent_bytes = w->pos - d->extent_offset;
			w->head = e->next;
			if (!w->head)
				w->tail = NULL;
			w->queued_bytes -= e->n;
			pthread_mutex_unlock(&w->lock);
			entry_free(w, e);
			pthread_mutex_lock(&w->lock);
			pthread_cond_broadcast(&w->space);
			continue;
		}
		/* The run of blocks compressed and ready, written with one pwritev. */
		uint32_t k0 = e->n_written, m = 0;
		while (m < WRITE_BATCH && k0 + m < e->n_blocks && e->jobs[k0 + m].state == JOB_DONE)
			m++;
		if (m == 0) {
			pthread_cond_wait(&w->done, &w->lock);
			continue;
		}
		int failed = w->error;
		uint64_t at = w->pos, len = 0;
		pthread_mutex_unlock(&w->lock);

		struct iovec iov[WRITE_BATCH];
		uint8_t *outs[WRITE_BATCH];
		int rc = 0;
		for (uint32_t i = 0; i < m; i++) {
			const struct wjob *j = &e->jobs[k0 + i];
			if (j->err && !rc) {
				rc = j->err;
				snprintf(msg, sizeof(msg), "%s: cannot compress block %" PRIu32
					 " of entry %" PRIu32 ": %s", w->path, k0 + i, e->index,
					 strerror(-rc));
			}
			iov[i].iov_base = j->out ? j->out : (void *)j->src;
			iov[i].iov_len = j->stored;
			len += j->stored;
		}
		if (!rc && !failed) {
			rc = pwritev_full(w->fd, iov, (int)m, at);
			if (rc)
				snprintf(msg, sizeof(msg), "%s: write failed at offset %" PRIu64 ": %s",
					 w->tmp_path, at, strerror(-rc));
		}

		pthread_mutex_lock(&w->lock);
		if (rc)
			set_error_locked(w, rc, msg);
		if (grow((void **)&w->blocks, &w->cap_blocks, w->n_blocks + m,
			 sizeof(*w->blocks)) < 0)
			set_error_locked(w, -ENOMEM, "out of memory for the block table");
		uint64_t off = at;
		for (uint32_t i = 0; i < m; i++) {
			struct wjob *j = &e->jobs[k0 + i];
			if (w->n_blocks < w->cap_blocks)
				w->blocks[w->n_blocks++] = (struct k2p_block_disk){
					.offset = off, .stored_bytes = j->stored,
					.raw_bytes = j->raw, .codec = j->codec,
					.checksum = j->checksum};
			off += j->stored;
			outs[i] = j->out;
			j->out = NULL;
		}
		w->pos = at + len;
		w->total_stored += len;
		e->n_written += m;
		pthread_mutex_unlock(&w->lock);
		for (uint32_t i = 0; i < m; i++)
			buf_put(w, &w->blk_pool, outs[i]);
		pthread_mutex_lock(&w->lock);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

/* Stops and joins every thread: cancel = 1 drops queued work, 0 drains it first. */
static void stop_threads(k2p_writer *w, int cancel)
{
	pthread_mutex_lock(&w->lock);
	if (cancel)
		w->cancel = 1;
	w->stop = 1;
	pthread_cond_broadcast(&w->work);
	pthread_cond_broadcast(&w->done);
	pthread_mutex_unlock(&w->lock);
	if (w->writer_started)
		pthread_join(w->writer_thread, NULL);
	w->writer_started = 0;
	/* With the writer gone, nothing waits on unclaimed blocks: let workers exit. */
	pthread_mutex_lock(&w->lock);
	w->cancel = 1;
	pthread_cond_broadcast(&w->work);
	pthread_mutex_unlock(&w->lock);
	for (int i = 0; i < w->n_workers_started; i++)
		pthread_join(w->workers[i], NULL);
	w->n_workers_started = 0;
}

static void writer_free(k2p_writer *w)
{
	struct wentry *e = w->head;
	while (e) {
		struct wentry *n = e->next;
		entry_free(w, e);
		e = n;
	}
	pool_free(&w->ent_pool);
	pool_free(&w->blk_pool);
	if (w->fd >= 0)
		close(w->fd);
	for (size_t i = 0; i < w->paths_cap; i++)
		free(w->paths[i]);
	free(w->paths);
	free(w->strings);
	free(w->ents);
	free(w->blocks);
	free(w->workers);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->work);
	pthread_cond_destroy(&w->done);
	pthread_cond_destroy(&w->space);
	pthread_mutex_destroy(&w->pool_lock);
	free(w->tmp_path);
	free(w->path);
	free(w);
}

/* ---------------------------------------------------------------- create */

int k2p_writer_create(const char *path, const k2p_writer_opts *opts, k2p_writer **out,
		      k2_err *err)
{
	k2p_writer_opts o = {.codec = K2_CODEC_ZSTD, .dense_codec = K2_CODEC_ZSTD};
	if (opts)
		o = *opts;
	*out = NULL;
	if (o.codec >= K2_CODEC_COUNT || o.dense_codec >= K2_CODEC_COUNT)
		return k2_err_set(err, -EINVAL, "%s: unknown codec %" PRIu32 "/%" PRIu32, path,
				  o.codec, o.dense_codec);
	if (o.level < 0 ||
	    ((o.codec == K2_CODEC_ZSTD || o.dense_codec == K2_CODEC_ZSTD) &&
	     o.level > ZSTD_maxCLevel()))
		return k2_err_set(err, -EINVAL, "%s: compression level %d out of range (0 … %d)",
				  path, o.level, ZSTD_maxCLevel());
	uint32_t bb = o.block_bytes ? o.block_bytes : K2P_DEFAULT_BLOCK_BYTES;
	if (bb < K2P_MIN_BLOCK_BYTES || bb > K2P_MAX_BLOCK_BYTES || (bb & (bb - 1)))
		return k2_err_set(err, -EINVAL, "%s: block size %" PRIu32
				  " is not a power of two in 4 KiB … 64 MiB", path, bb);
	int threads = o.threads;
	if (threads <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		threads = n > 0 ? (int)n : 1;
	}
	if (threads > MAX_THREADS)
		threads = MAX_THREADS;

	k2p_writer *w = calloc(1, sizeof(*w));
	if (!w)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", path);
	w->fd = -1;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->work, NULL);
	pthread_cond_init(&w->done, NULL);
	pthread_cond_init(&w->space, NULL);
	pthread_mutex_init(&w->pool_lock, NULL);
	w->block_bytes = bb;
	size_t bz = k2_codec_bound(K2_CODEC_ZSTD, bb), bl = k2_codec_bound(K2_CODEC_LZ4, bb);
	w->blk_cap = bz > bl ? bz : bl;
	w->ent_pool.limit = QUEUE_LIMIT_BYTES;
	w->blk_pool.limit = QUEUE_LIMIT_BYTES / 2;
	w->codec = o.codec;
	w->dense_codec = o.dense_codec;
	w->zstd_level = o.level;
	w->lz4_level = o.level > 12 ? 12 : o.level;
	w->n_threads = threads;
	w->pos = K2P_HEADER_BYTES;
	int rc;
	w->path = strdup(path);
	size_t tn = strlen(path) + 32;
	w->tmp_path = malloc(tn);
	w->workers = calloc((size_t)threads, sizeof(pthread_t));
	if (!w->path || !w->tmp_path || !w->workers) {
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory", path);
		goto out_free;
	}
	snprintf(w->tmp_path, tn, "%s.tmp-%ld", path, (long)getpid());
	w->fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (w->fd < 0) {
		rc = k2_err_set(err, -errno, "%s: cannot create: %s", w->tmp_path, strerror(errno));
		goto out_free;
	}
	for (int i = 0; i < threads; i++) {
		rc = -pthread_create(&w->workers[i], NULL, worker_main, w);
		if (rc) {
			k2_err_set(err, rc, "%s: cannot start a compression thread: %s", path,
				   strerror(-rc));
			goto out_unlink;
		}
		w->n_workers_started++;
	}
	rc = -pthread_create(&w->writer_thread, NULL, writer_main, w);
	if (rc) {
		k2_err_set(err, rc, "%s: cannot start the writer thread: %s", path, strerror(-rc));
		goto out_unlink;
	}
	w->writer_started = 1;
	*out = w;
	return 0;

out_unlink:
	stop_threads(w, 1);
	unlink(w->tmp_path);
out_free:
	writer_free(w);
	return rc;
}

/* ---------------------------------------------------------------- add */

/* Checks a new entry of n bytes and records its name, path and sizes in *d (whose
 * other index fields are set). Returns 0 or -errno. */
static int entry_register(k2p_writer *w, struct k2p_entry_disk *d, const char *name,
			  size_t name_len, uint64_t n, k2_err *err)
{
	char path[K2P_MAX_NAME + 64];
	if (w->error)
		return k2_err_set(err, w->error, "%s", w->errmsg.msg);
	if (k2p_format_path(d->kind, name, d->layer, d->expert, path, sizeof(path)) < 0)
		return k2_err_set(err, -EINVAL, "%s: cannot name entry %s", w->path, name);
	uint64_t nb = n / w->block_bytes + (n % w->block_bytes != 0);
	if (w->n_ents + 1 > K2P_MAX_ENTRIES || nb > UINT32_MAX || n > SIZE_MAX)
		return k2_err_set(err, -E2BIG, "%s: %s: too many entries or blocks", w->path, path);
	int rc = paths_add(w, path);
	if (rc == -EEXIST)
		return k2_err_set(err, -EEXIST, "%s: duplicate entry %s", w->path, path);
	if (rc)
		return k2_err_set(err, rc, "%s: out of memory", w->path);
	if (grow((void **)&w->strings, &w->strings_cap, w->strings_len + name_len + 1, 1) < 0 ||
	    w->strings_len + name_len > UINT32_MAX)
		return k2_err_set(err, -ENOMEM, "%s: out of memory for names", w->path);
	d->name_off = (uint32_t)w->strings_len;
	d->name_len = (uint32_t)name_len;
	memcpy(w->strings + w->strings_len, name, name_len);
	w->strings_len += name_len;
	d->raw_bytes = n;
	d->n_blocks = (uint32_t)nb;
	return 0;
}

/* A queue item for the n bytes at data (owned: data's pool buffer, or NULL when
 * borrowed), cut into blocks; NULL when out of memory (owned is not released). */
static struct wentry *entry_new(k2p_writer *w, const uint8_t *data, uint8_t *owned, size_t n,
				uint32_t codec)
{
	uint64_t nb = n / w->block_bytes + (n % w->block_bytes != 0);
	struct wentry *e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->jobs = calloc(nb ? nb : 1, sizeof(*e->jobs));
	if (!e->jobs) {
		free(e);
		return NULL;
	}
	e->n = n;
	e->codec = codec;
	e->level = codec == K2_CODEC_LZ4 ? w->lz4_level : w->zstd_level;
	e->n_blocks = (uint32_t)nb;
	e->data = data;
	e->owned = owned;
	for (uint64_t k = 0; k < nb; k++) {
		uint64_t start = k * w->block_bytes;
		e->jobs[k].src = data + start;
		e->jobs[k].raw = (uint32_t)(n - start < w->block_bytes ? n - start : w->block_bytes);
	}
	return e;
}

/* Waits until n more bytes fit under the queue bound (always, when the queue is
 * empty); returns 0 or the writer's error. Called with w->lock held. */
static int wait_space_locked(k2p_writer *w, uint64_t n)
{
	while (!w->error && w->queued_bytes > 0 && w->queued_bytes + n > QUEUE_LIMIT_BYTES)
		pthread_cond_wait(&w->space, &w->lock);
	return w->error;
}

/* Queues e (consumed, even on error): a new entry whose index fields are *d, or,
 * with d NULL, the next part of the entry added last. A borrowed entry is waited
 * for until written. Returns 0 or -errno. */
static int entry_queue(k2p_writer *w, struct wentry *e, const struct k2p_entry_disk *d,
		       int borrowed, k2_err *err)
{
	int rc;
	pthread_mutex_lock(&w->lock);
	if (wait_space_locked(w, e->n) ||
	    (d && grow((void **)&w->ents, &w->cap_ents, w->n_ents + 1, sizeof(*w->ents)) < 0) ||
	    (!d && w->n_ents == 0)) {
		if (!w->error)
			set_error_locked(w, d ? -ENOMEM : -EINVAL,
					 d ? "out of memory for the index" : "a part of no entry");
		rc = k2_err_set(err, w->error, "%s", w->errmsg.msg);
		pthread_mutex_unlock(&w->lock);
		entry_free(w, e);
		return rc;
	}
	if (d) {
		e->index = (uint32_t)w->n_ents;
		w->ents[w->n_ents++] = *d;
	} else {
		e->index = (uint32_t)(w->n_ents - 1);
		e->cont = 1;
	}
	if (w->tail)
		w->tail->next = e;
	else
		w->head = e;
	w->tail = e;
	if (!w->claim && e->n_blocks)
		w->claim = e;
	w->queued_bytes += e->n;
	w->total_raw += e->n;
	pthread_cond_broadcast(&w->work);
	pthread_cond_signal(&w->done);
	if (borrowed) {  /* even on error: workers may still read the caller's bytes */
		while (w->head)
			pthread_cond_wait(&w->space, &w->lock);
	}
	rc = w->error ? k2_err_set(err, w->error, "%s", w->errmsg.msg) : 0;
	pthread_mutex_unlock(&w->lock);
	return rc;
}

/* Queues one entry whose index fields (all but extent and blocks) are in *d.
 * Returns 0 or -errno. */
static int add_entry(k2p_writer *w, struct k2p_entry_disk *d, const char *name,
		     size_t name_len, const void *data, size_t n, uint32_t codec, k2_err *err)
{
	if (w->error)
		return k2_err_set(err, w->error, "%s", w->errmsg.msg);
	if (n && !data)
		return k2_err_set(err, -EINVAL, "%s: no data for an entry of %zu bytes", w->path, n);
	int rc = entry_register(w, d, name, name_len, n, err);
	if (rc)
		return rc;
	/* Entries up to half the queue bound are copied, so the caller may reuse its
	 * buffer at once; larger ones are borrowed and waited for. */
	int borrowed = n > QUEUE_LIMIT_BYTES / 2;
	uint8_t *owned = NULL;
	if (!borrowed && n) {
		owned = buf_get(w, &w->ent_pool, n);
		if (!owned)
			return k2_err_set(err, -ENOMEM, "%s: out of memory for %zu bytes", w->path, n);
		memcpy(owned, data, n);
	}
	struct wentry *e = entry_new(w, owned ? owned : data, owned, n, codec);
	if (!e) {
		buf_put(w, &w->ent_pool, owned);
		return k2_err_set(err, -ENOMEM, "%s: out of memory", w->path);
	}
	return entry_queue(w, e, d, borrowed, err);
}

int k2p_writer_add_file(k2p_writer *w, const char *name, const void *data, size_t n,
			k2_err *err)
{
	size_t len = name ? strlen(name) : 0;
	const char *why = name ? k2p_name_problem(K2P_KIND_FILE, name, len) : "no name";
	if (why)
		return k2_err_set(err, -EINVAL, "%s: file %s: %s", w->path, name ? name : "",
				  why);
	struct k2p_entry_disk d = {.kind = K2P_KIND_FILE};
	return add_entry(w, &d, name, len, data, n, w->dense_codec, err);
}

/* Checks a dense tensor's name, dtype and shape against its n bytes; fills *d. */
static int dense_check(k2p_writer *w, const char *name, uint32_t dtype, uint32_t ndim,
		       const uint64_t *shape, uint64_t n, struct k2p_entry_disk *d, k2_err *err)
{
	size_t len = name ? strlen(name) : 0;
	const char *why = name ? k2p_name_problem(K2P_KIND_DENSE, name, len) : "no name";
	if (why)
		return k2_err_set(err, -EINVAL, "%s: tensor %s: %s", w->path, name ? name : "",
				  why);
	size_t es = k2_dtype_size(dtype);
	if (!es)
		return k2_err_set(err, -EINVAL, "%s: tensor %s: unknown dtype %" PRIu32, w->path,
				  name, dtype);
	if (ndim > K2P_MAX_DIMS || (ndim && !shape))
		return k2_err_set(err, -EINVAL, "%s: tensor %s: %" PRIu32 " dims (at most 8)",
				  w->path, name, ndim);
	*d = (struct k2p_entry_disk){.kind = K2P_KIND_DENSE, .dtype = dtype, .ndim = ndim};
	uint64_t prod = es;
	for (uint32_t i = 0; i < ndim; i++) {
		if (shape[i] > K2P_MAX_DIM || (shape[i] && prod > UINT64_MAX / shape[i]))
			return k2_err_set(err, -EINVAL, "%s: tensor %s: dim %" PRIu32 " = %" PRIu64
					  " too large", w->path, name, i, shape[i]);
		prod *= shape[i];
		d->shape[i] = shape[i];
	}
	if (prod != n)
		return k2_err_set(err, -EINVAL, "%s: tensor %s: %" PRIu64 " bytes given, its "
				  "dtype and shape need %" PRIu64, w->path, name, n, prod);
	return 0;
}

int k2p_writer_add_dense(k2p_writer *w, const char *name, uint32_t dtype, uint32_t ndim,
			 const uint64_t *shape, const void *data, size_t n, k2_err *err)
{
	struct k2p_entry_disk d;
	int rc = dense_check(w, name, dtype, ndim, shape, n, &d, err);
	if (rc)
		return rc;
	return add_entry(w, &d, name, strlen(name), data, n, w->dense_codec, err);
}

/* Records a failure in the middle of a streamed entry: the writer is failed. */
static int fail_writer(k2p_writer *w, int code, const char *msg, k2_err *err)
{
	pthread_mutex_lock(&w->lock);
	set_error_locked(w, code, msg);
	int rc = k2_err_set(err, w->error, "%s", w->errmsg.msg);
	pthread_mutex_unlock(&w->lock);
	return rc;
}

int k2p_writer_add_dense_from(k2p_writer *w, const char *name, uint32_t dtype,
			      uint32_t ndim, const uint64_t *shape, uint64_t n,
			      k2p_read_fn read, void *ctx, k2_err *err)
{
	struct k2p_entry_disk d;
	int rc = dense_check(w, name, dtype, ndim, shape, n, &d, err);
	if (rc)
		return rc;
	if (!read)
		return k2_err_set(err, -EINVAL, "%s: tensor %s: no read function", w->path, name);
	size_t name_len = strlen(name);
	if (n == 0)
		return add_entry(w, &d, name, name_len, NULL, 0, w->dense_codec, err);
	/* Whole blocks per part, so the blocks are those of one add_dense. */
	uint64_t chunk = w->block_bytes > STREAM_CHUNK ? w->block_bytes : STREAM_CHUNK;
	for (uint64_t off = 0; off < n; off += chunk) {
		size_t len = (size_t)(n - off < chunk ? n - off : chunk);
		pthread_mutex_lock(&w->lock);
		rc = wait_space_locked(w, len);
		if (rc)
			rc = k2_err_set(err, rc, "%s", w->errmsg.msg);
		pthread_mutex_unlock(&w->lock);
		if (rc)
			return rc;
		k2_err rerr = {{0}};
		uint8_t *buf = buf_get(w, &w->ent_pool, len);
		if (!buf)
			rc = k2_err_set(&rerr, -ENOMEM, "%s: tensor %s: out of memory for %zu bytes",
					w->path, name, len);
		else
			rc = read(ctx, off, buf, len, &rerr);
		if (rc) {
			buf_put(w, &w->ent_pool, buf);
			if (rc > 0 || rc < -4095)
				rc = -EIO;
			if (!rerr.msg[0])
				k2_err_set(&rerr, rc, "%s: tensor %s: reading %zu bytes at %" PRIu64
					   " failed: %s", w->path, name, len, off, strerror(-rc));
			if (off == 0)  /* nothing registered yet: the writer goes on */
				return k2_err_set(err, rc, "%s", rerr.msg);
			return fail_writer(w, rc, rerr.msg, err);
		}
		if (off == 0) {
			rc = entry_register(w, &d, name, name_len, n, err);
			if (rc) {
				buf_put(w, &w->ent_pool, buf);
				return rc;
			}
		}
		struct wentry *e = entry_new(w, buf, buf, len, w->dense_codec);
		if (!e) {
			buf_put(w, &w->ent_pool, buf);
			snprintf(rerr.msg, sizeof(rerr.msg), "%s: tensor %s: out of memory", w->path,
				 name);
			return fail_writer(w, -ENOMEM, rerr.msg, err);
		}
		rc = entry_queue(w, e, off == 0 ? &d : NULL, 0, err);
		if (rc)
			return rc;
	}
	return 0;
}

int k2p_writer_add_expert(k2p_writer *w, const void *image, size_t n, k2_err *err)
{
	k2x_layout lay;
	int rc = k2x_header_parse(image, n < K2X_HEADER_BYTES ? n : K2X_HEADER_BYTES, n,
				  "expert image", &lay, err);
	if (rc)
		return rc;
	if (lay.layer >= K2P_MAX_LAYERS || lay.expert >= K2P_MAX_EXPERTS)
		return k2_err_set(err, -EINVAL, "expert image %u/%u: outside the pack's limits"
				  " (layer < %u, expert < %u)", lay.layer, lay.expert,
				  K2P_MAX_LAYERS, K2P_MAX_EXPERTS);
	struct k2p_entry_disk d = {.kind = K2P_KIND_EXPERT, .layer = lay.layer,
				   .expert = lay.expert, .format = lay.format};
	d.shape[0] = lay.hidden;
	d.shape[1] = lay.inter;
	return add_entry(w, &d, "", 0, image, n, w->codec, err);
}

void k2p_writer_totals(const k2p_writer *cw, uint64_t *raw_bytes, uint64_t *stored_bytes)
{
	k2p_writer *w = (k2p_writer *)cw;  /* the lock is not part of the value */
	pthread_mutex_lock(&w->lock);
	if (raw_bytes)
		*raw_bytes = w->total_raw;
	if (stored_bytes)
		*stored_bytes = w->total_stored;
	pthread_mutex_unlock(&w->lock);
}

/* ---------------------------------------------------------------- finish */

static uint64_t created_time(void)
{
	const char *e = getenv("SOURCE_DATE_EPOCH");  /* reproducible builds */
	if (e && *e) {
		char *end;
		unsigned long long v = strtoull(e, &end, 10);
		if (*end == '\0')
			return v;
	}
	return (uint64_t)time(NULL);
}

static int fsync_dir_of(const char *path)
{
	char *copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(copy);
	if (fd < 0)
		return -errno;
	int rc = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return rc;
}

/* Returns 0 with the pack at its final path, or -errno (the temp file removed). */
int k2p_writer_finish(k2p_writer *w, k2_err *err)
{
	if (!w)
		return k2_err_set(err, -EINVAL, "no writer");
	int rc;
	stop_threads(w, 0);
	if (w->error) {
		rc = k2_err_set(err, w->error, "%s", w->errmsg.msg);
		goto out_unlink;
	}

	uint64_t n_ents = w->n_ents, n_blocks = w->n_blocks;
	if (n_blocks > K2P_MAX_BLOCKS) {
		rc = k2_err_set(err, -E2BIG, "%s: %" PRIu64 " blocks (limit 2^28)", w->path, n_blocks);
		goto out_unlink;
	}
	uint64_t index_bytes = n_ents * K2P_ENTRY_BYTES + n_blocks * K2P_BLOCK_BYTES +
			       w->strings_len;
	if (index_bytes > K2P_MAX_INDEX_BYTES) {
		rc = k2_err_set(err, -E2BIG, "%s: index of %" PRIu64 " bytes is above 1 GiB",
				w->path, index_bytes);
		goto out_unlink;
	}
	uint8_t *idx = calloc(1, index_bytes ? index_bytes : 1);
	if (!idx) {
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory for the index", w->path);
		goto out_unlink;
	}
	for (uint64_t i = 0; i < n_ents; i++)
		k2p_entry_encode(&w->ents[i], idx + i * K2P_ENTRY_BYTES);
	for (uint64_t g = 0; g < n_blocks; g++)
		k2p_block_encode(&w->blocks[g], idx + n_ents * K2P_ENTRY_BYTES + g * K2P_BLOCK_BYTES);
	if (w->strings_len)
		memcpy(idx + n_ents * K2P_ENTRY_BYTES + n_blocks * K2P_BLOCK_BYTES, w->strings,
		       w->strings_len);

	struct k2p_header_disk h = {
		.version = K2P_VERSION,
		.index_offset = k2_align_up(w->pos),
		.index_bytes = index_bytes,
		.index_checksum = k2_checksum(idx, index_bytes),
		.block_bytes = w->block_bytes,
		.n_entries = (uint32_t)n_ents,
		.n_blocks = (uint32_t)n_blocks,
		.created_unix = created_time(),
	};
	memcpy(h.magic, K2P_MAGIC, 8);
	h.file_bytes = h.index_offset + index_bytes;
	uint8_t page[K2P_HEADER_BYTES];
	memset(page, 0, sizeof(page));
	k2p_header_encode(&h, page);
	k2le_put64(page + 72, k2_checksum(page, K2P_HEADER_SUMMED));

	rc = pwrite_full(w->fd, idx, index_bytes, h.index_offset);
	free(idx);
	if (!rc)
		rc = pwrite_full(w->fd, page, sizeof(page), 0);
	if (!rc && ftruncate(w->fd, (off_t)h.file_bytes) < 0)
		rc = -errno;
	if (!rc && fsync(w->fd) < 0)
		rc = -errno;
	if (rc) {
		k2_err_set(err, rc, "%s: cannot write the index and header: %s", w->tmp_path,
			   strerror(-rc));
		goto out_unlink;
	}
	if (close(w->fd) < 0) {
		rc = k2_err_set(err, -errno, "%s: close failed: %s", w->tmp_path, strerror(errno));
		w->fd = -1;
		goto out_unlink;
	}
	w->fd = -1;
	if (rename(w->tmp_path, w->path) < 0) {
		rc = k2_err_set(err, -errno, "%s: cannot rename to %s: %s", w->tmp_path, w->path,
				strerror(errno));
		goto out_unlink;
	}
	fsync_dir_of(w->path);  /* best effort: the pack itself is complete and synced */
	writer_free(w);
	return 0;

out_unlink:
	unlink(w->tmp_path);
	writer_free(w);
	return rc;
}

void k2p_writer_abort(k2p_writer *w)
{
	if (!w)
		return;
	stop_threads(w, 1);
	unlink(w->tmp_path);
	writer_free(w);
}
