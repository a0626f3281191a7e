/* loader.c — the cold path: one I/O thread reads the extents of queued loads
 * with io_uring on an O_DIRECT descriptor of the pack (deep queue: iodepth read
 * SQEs in flight, each at most `chunk` bytes), and a pool of worker threads
 * checks and decodes each block as soon as the bytes it needs have arrived.
 *
 * Demand loads go first: the I/O thread always takes its next piece from the
 * demand queue when it is not empty, and workers take demand blocks first.
 * One load has at most `window` reads in flight: its pieces then complete
 * nearly in order, so a reader waiting for the start of an expert is answered
 * early and the rest of the load overlaps with the replies; several loads
 * (readers) together still fill the queue up to iodepth.
 *
 * Two shapes of load:
 *  - direct: every block is stored raw (codec none) at an aligned offset, so its
 *    bytes are read straight into the block's cache buffer (readv, several blocks
 *    per SQE) and only the checksum is checked: no copy at all;
 *  - staged: the aligned span of the stored blocks is read into a staging buffer
 *    in chunk-sized pieces, and each block is decoded (k2p_block_decode) into its
 *    buffer once the pieces covering it are complete.
 *
 * O_DIRECT may be refused (some filesystems): the open or the first read says
 * so, one log line is written, and reads go through the page cache from then on.
 * Locking: queues, pieces and jobs are protected by cache->lock; the I/O thread
 * prepares a job's buffers without the lock (no one else touches an unprepared
 * job's buffers). */
#include "k2fs_cache_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* ---------------------------------------------------------------- queues (lock held) */

static void ioq_push(struct k2fs_cache *c, struct k2fs_job *j)
{
	int q = j->prio;
	j->qnext = NULL;
	if (c->ioq_tail[q])
		c->ioq_tail[q]->qnext = j;
	else
		c->ioq[q] = j;
	c->ioq_tail[q] = j;
	j->queued = 1;
}

static void ioq_remove(struct k2fs_cache *c, struct k2fs_job *j)
{
	int q = j->prio;
	struct k2fs_job *prev = NULL;
	for (struct k2fs_job *x = c->ioq[q]; x; prev = x, x = x->qnext) {
		if (x != j)
			continue;
		if (prev)
			prev->qnext = x->qnext;
		else
			c->ioq[q] = x->qnext;
		if (c->ioq_tail[q] == x)
			c->ioq_tail[q] = prev;
		break;
	}
	j->qnext = NULL;
	j->queued = 0;
}

/* The FIFO of ioq_push again, for decode tasks: two lists of different node
 * types, each a few lines; a generic list would cost casts or macros. */
static void task_push(struct k2fs_cache *c, struct k2fs_task *t, int q)
{
	t->next = NULL;
	if (c->tasktail[q])
		c->tasktail[q]->next = t;
	else
		c->taskq[q] = t;
	c->tasktail[q] = t;
	pthread_cond_signal(&c->work);
}

static struct k2fs_task *task_pop(struct k2fs_cache *c)
{
	for (int q = 0; q < 2; q++) {
		struct k2fs_task *t = c->taskq[q];
		if (!t)
			continue;
		c->taskq[q] = t->next;
		if (!c->taskq[q])
			c->tasktail[q] = NULL;
		t->next = NULL;
		return t;
	}
	return NULL;
}

static void kick(struct k2fs_cache *c)
{
	uint64_t one = 1;
	if (c->efd >= 0 && write(c->efd, &one, sizeof(one)) < 0) {
		/* the counter is saturated: the thread is awake anyway */
	}
}

void k2fs_loader_submit(struct k2fs_cache *c, struct k2fs_job *job)
{
	ioq_push(c, job);
	kick(c);
}

void k2fs_loader_promote(struct k2fs_cache *c, struct k2fs_job *j)
{
	if (j->prio == K2FS_PRIO_DEMAND)
		return;
	if (j->queued) {
		ioq_remove(c, j);
		j->prio = K2FS_PRIO_DEMAND;
		ioq_push(c, j);
	} else {
		j->prio = K2FS_PRIO_DEMAND;
	}
	/* its decode tasks already queued move too */
	struct k2fs_task *prev = NULL, *t = c->taskq[K2FS_PRIO_PREFETCH];
	while (t) {
		struct k2fs_task *next = t->next;
		if (t->job == j) {
			if (prev)
				prev->next = next;
			else
				c->taskq[K2FS_PRIO_PREFETCH] = next;
			if (c->tasktail[K2FS_PRIO_PREFETCH] == t)
				c->tasktail[K2FS_PRIO_PREFETCH] = prev;
			task_push(c, t, K2FS_PRIO_DEMAND);
		} else {
			prev = t;
		}
		t = next;
	}
}

/* ---------------------------------------------------------------- jobs */

static const k2p_block *job_block(const struct k2fs_cache *c, const struct k2fs_job *j,
				  uint32_t i)
{
	return k2p_entry_block(c->pack, j->slot->e, j->b0 + i);
}

static void job_free(struct k2fs_cache *c, struct k2fs_job *j)
{
	struct k2fs_job **pp = &j->slot->jobs;
	while (*pp && *pp != j)
		pp = &(*pp)->snext;
	if (*pp)
		*pp = j->snext;
	if (j->bufs)
		for (uint32_t i = 0; i < j->n; i++)
			if (j->bufs[i])
				k2fs_pool_put(c->pool, j->bufs[i],
					      k2fs_align4k(job_block(c, j, i)->raw_bytes),
					      k2fs_cache_pool_keep(c));
	k2fs_pool_put(c->pool, j->stage, j->stage_cap, k2fs_cache_pool_keep(c));
	free(j->bufs);
	free(j->pending);
	free(j->tasks);
	free(j->pieces);
	free(j);
}

/* Frees a job once its blocks are finished and no read of it is in flight. */
static void job_maybe_free(struct k2fs_cache *c, struct k2fs_job *j)
{
	if (j->left == 0 && j->io_live == 0 && !j->queued)
		job_free(c, j);
}

/* Finishes every unfinished block of a job with rc (lock held). */
static void job_fail(struct k2fs_cache *c, struct k2fs_job *j, int rc, const char *msg)
{
	for (uint32_t i = 0; i < j->n; i++) {
		if (j->pending && j->pending[i] < 0)
			continue;
		if (j->pending)
			j->pending[i] = -1;
		k2fs_cache_block_finish(c, j, i, rc, msg);
		msg = NULL; /* one log line per failure */
	}
}

/* Allocates a job's buffers and cuts its reads into pieces. Called by the I/O
 * thread without the lock. Returns 0 or -ENOMEM (message in err). */
static int job_prepare(struct k2fs_cache *c, struct k2fs_job *j, k2_err *err)
{
	const uint64_t chunk = c->opts.chunk;
	const char *path = k2p_pack_path(c->pack);
	j->bufs = calloc(j->n, sizeof(*j->bufs));
	j->pending = calloc(j->n, sizeof(*j->pending));
	j->tasks = calloc(j->n, sizeof(*j->tasks));
	if (!j->bufs || !j->pending || !j->tasks)
		goto nomem;
	j->direct = 1;
	for (uint32_t i = 0; i < j->n; i++) {
		const k2p_block *b = job_block(c, j, i);
		if (b->codec != K2_CODEC_NONE || b->stored_bytes != b->raw_bytes || b->offset % 4096)
			j->direct = 0;
		if (i > 0) {
			const k2p_block *p = job_block(c, j, i - 1);
			if (b->offset != p->offset + p->stored_bytes)
				j->direct = 0;
		}
		j->bufs[i] = k2fs_pool_get(c->pool, k2fs_align4k(b->raw_bytes));
		if (!j->bufs[i])
			goto nomem;
		j->tasks[i].job = j;
		j->tasks[i].i = i;
	}
	if (j->direct) {
		/* one piece per run of blocks up to chunk bytes and K2FS_PIECE_IOV buffers */
		j->pieces = calloc(j->n, sizeof(*j->pieces));
		if (!j->pieces)
			goto nomem;
		uint32_t i = 0;
		while (i < j->n) {
			struct k2fs_piece *p = &j->pieces[j->n_pieces++];
			p->job = j;
			p->off = job_block(c, j, i)->offset;
			p->i_first = i;
			do {
				const k2p_block *b = job_block(c, j, i);
				uint64_t cap = k2fs_align4k(b->raw_bytes);
				p->iov[p->niov].iov_base = j->bufs[i];
				p->iov[p->niov].iov_len = (size_t)cap;
				p->niov++;
				p->len += cap;
				p->need = p->len - cap + b->stored_bytes;
				j->pending[i] = 1;
				i++;
			} while (i < j->n && p->niov < K2FS_PIECE_IOV &&
				 p->len + k2fs_align4k(job_block(c, j, i)->raw_bytes) <= chunk);
			p->i_last = i - 1;
		}
		return 0;
	}
	const k2p_block *first = job_block(c, j, 0), *last = job_block(c, j, j->n - 1);
	uint64_t lo = first->offset & ~(uint64_t)4095;
	uint64_t hi_need = last->offset + last->stored_bytes;
	uint64_t hi = k2fs_align4k(hi_need);
	if (hi <= lo || first->offset > last->offset) {
		k2_err_set(err, -EIO, "%s: blocks of %s are out of order at pack offset %" PRIu64,
			   path, j->slot->e->path, first->offset);
		return -EIO;
	}
	j->stage_off = lo;
	j->stage_cap = (size_t)(hi - lo);
	if (j->stage_cap > chunk)  /* share pool classes between loads of similar size */
		j->stage_cap = (size_t)((hi - lo + chunk - 1) / chunk * chunk);
	j->stage = k2fs_pool_get(c->pool, j->stage_cap);
	if (!j->stage)
		goto nomem;
	uint64_t n_pieces = (hi - lo + chunk - 1) / chunk;
	j->pieces = calloc((size_t)n_pieces, sizeof(*j->pieces));
	if (!j->pieces)
		goto nomem;
	uint32_t i0 = 0;
	for (uint64_t off = lo; off < hi; off += chunk) {
		struct k2fs_piece *p = &j->pieces[j->n_pieces++];
		p->job = j;
		p->off = off;
		p->len = hi - off < chunk ? hi - off : chunk;
		p->need = hi_need - off < p->len ? hi_need - off : p->len;
		p->niov = 1;
		p->iov[0].iov_base = j->stage + (off - lo);
		p->iov[0].iov_len = (size_t)p->len;
		/* blocks overlapping [off, off+len): start where the previous piece's
		 * last block was */
		while (i0 + 1 < j->n &&
		       job_block(c, j, i0)->offset + job_block(c, j, i0)->stored_bytes <= off)
			i0++;
		p->i_first = i0;
		uint32_t i = i0;
		for (;;) {
			const k2p_block *b = job_block(c, j, i);
			if (b->offset >= off + p->len)
				break;
			if (b->offset + b->stored_bytes > off)
				j->pending[i]++;
			p->i_last = i;
			if (i + 1 == j->n)
				break;
			i++;
		}
	}
	return 0;
nomem:
	k2_err_set(err, -ENOMEM, "%s: out of memory loading %s", path, j->slot->e->path);
	return -ENOMEM;
}

/* ---------------------------------------------------------------- reads (lock held) */

static int piece_aligned(const struct k2fs_piece *p)
{
	if (p->off % 4096)
		return 0;
	for (int k = 0; k < p->niov; k++)
		if ((uintptr_t)p->iov[k].iov_base % 4096 || p->iov[k].iov_len % 4096)
			return 0;
	return 1;
}

static void arm_efd(struct k2fs_cache *c)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&c->ring);
	if (!sqe) {
		io_uring_submit(&c->ring);
		sqe = io_uring_get_sqe(&c->ring);
	}
	if (!sqe)
		return;
	io_uring_prep_read(sqe, c->efd, &c->efd_buf, sizeof(c->efd_buf), 0);
	io_uring_sqe_set_data(sqe, NULL);
}

/* Returns 0, or -EBUSY when no SQE could be had. */
static int piece_submit(struct k2fs_cache *c, struct k2fs_piece *p)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&c->ring);
	if (!sqe) {
		io_uring_submit(&c->ring);
		sqe = io_uring_get_sqe(&c->ring);
	}
	if (!sqe)
		return -EBUSY;
	int fd = c->fd;
	if (fd == c->fd_direct && !piece_aligned(p))
		fd = c->fd_buffered;
	if (p->niov == 1)
		io_uring_prep_read(sqe, fd, p->iov[0].iov_base, (unsigned)p->iov[0].iov_len, p->off);
	else
		io_uring_prep_readv(sqe, fd, p->iov, (unsigned)p->niov, p->off);
	io_uring_sqe_set_data(sqe, p);
	return 0;
}

static void piece_advance(struct k2fs_piece *p, uint64_t n)
{
	p->off += n;
	p->len -= n;
	p->need -= n;
	int k = 0;
	while (n > 0 && k < p->niov) {
		if (n >= p->iov[k].iov_len) {
			n -= p->iov[k].iov_len;
			k++;
		} else {
			p->iov[k].iov_base = (char *)p->iov[k].iov_base + n;
			p->iov[k].iov_len -= (size_t)n;
			n = 0;
		}
	}
	memmove(p->iov, p->iov + k, (size_t)(p->niov - k) * sizeof(p->iov[0]));
	p->niov -= k;
}

static void piece_done(struct k2fs_cache *c, struct k2fs_piece *p)
{
	struct k2fs_job *j = p->job;
	for (uint32_t i = p->i_first; i <= p->i_last; i++)
		if (j->pending[i] > 0 && --j->pending[i] == 0)
			task_push(c, &j->tasks[i], j->prio);
}

static void piece_fail(struct k2fs_cache *c, struct k2fs_piece *p, int e)
{
	struct k2fs_job *j = p->job;
	k2_err err;
	k2_err_set(&err, -EIO, "%s: cannot read %s at pack offset %" PRIu64 ": %s",
		   k2p_pack_path(c->pack), j->slot->e->path, p->off,
		   e == ENODATA ? "unexpected end of file" : strerror(e));
	const char *msg = err.msg;
	for (uint32_t i = p->i_first; i <= p->i_last; i++) {
		if (j->pending[i] <= 0)
			continue; /* finished, or waiting for a worker */
		j->pending[i] = -1;
		k2fs_cache_block_finish(c, j, i, -EIO, msg);
		msg = NULL;
	}
}

static void complete(struct k2fs_cache *c, struct k2fs_piece *p, int res)
{
	if (!p) { /* the wake-up eventfd */
		if (!c->stopping || c->inflight)
			arm_efd(c);
		return;
	}
	struct k2fs_job *j = p->job;
	if (res == -EINTR || res == -EAGAIN) {
		if (piece_submit(c, p) == 0)
			return;
	} else if (res == -EINVAL && c->fd == c->fd_direct && c->fd_direct >= 0) {
		k2fs_log("%s: O_DIRECT read refused (EINVAL); reading through the page cache "
			 "from now on", k2p_pack_path(c->pack));
		c->fd = c->fd_buffered;
		if (piece_submit(c, p) == 0)
			return;
	} else if (res > 0) {
		c->st.bytes_read += (uint64_t)res;
		if ((uint64_t)res < p->need) {
			piece_advance(p, (uint64_t)res);
			if (piece_submit(c, p) == 0)
				return;
			res = -EIO;
		}
	}
	c->inflight--;
	j->io_live--;
	if (res > 0)
		piece_done(c, p);
	else
		piece_fail(c, p, res == 0 ? ENODATA : -res);
	job_maybe_free(c, j);
}

/* The next job to work on: demand jobs first, in arrival order, skipping jobs
 * that already have `window` reads in flight (lock held). */
static struct k2fs_job *next_job(struct k2fs_cache *c)
{
	for (int q = 0; q < 2; q++)
		for (struct k2fs_job *j = c->ioq[q]; j; j = j->qnext)
			if (!j->prepared || j->io_live < c->opts.window ||
			    (c->stopping && j->next_piece == 0))
				return j;
	return NULL;
}

/* Moves pieces of queued jobs into SQEs while fewer than iodepth are in flight,
 * demand jobs first (lock held; dropped while a job's buffers are allocated). */
static void fill(struct k2fs_cache *c)
{
	while (c->inflight < c->opts.iodepth) {
		struct k2fs_job *j = next_job(c);
		if (!j)
			return;
		if (c->stopping && j->next_piece == 0) {
			/* shutting down: loads not started are dropped */
			ioq_remove(c, j);
			job_fail(c, j, -ECANCELED, NULL);
			job_maybe_free(c, j);
			continue;
		}
		if (!j->prepared) {
			k2_err err = {{0}};
			pthread_mutex_unlock(&c->lock);
			int rc = job_prepare(c, j, &err);
			pthread_mutex_lock(&c->lock);
			if (rc) {
				ioq_remove(c, j);
				job_fail(c, j, rc, err.msg);
				job_maybe_free(c, j);
				continue;
			}
			j->prepared = 1;
			for (uint32_t i = 0; i < j->n; i++)
				if (j->pending[i] == 0) /* nothing to read (no stored bytes) */
					task_push(c, &j->tasks[i], j->prio);
			continue; /* a demand job may have arrived meanwhile */
		}
		struct k2fs_piece *p = &j->pieces[j->next_piece];
		if (piece_submit(c, p))
			return;
		j->next_piece++;
		j->io_live++;
		c->inflight++;
		if (j->next_piece == j->n_pieces)
			ioq_remove(c, j);
	}
}

static void *io_main(void *arg)
{
	struct k2fs_cache *c = arg;
	pthread_mutex_lock(&c->lock);
	arm_efd(c);
	for (;;) {
		fill(c);
		int stop = c->stopping && c->inflight == 0 && !c->ioq[0] && !c->ioq[1];
		pthread_mutex_unlock(&c->lock);
		if (stop)
			break;
		int r = io_uring_submit_and_wait(&c->ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
			k2fs_log("k2fs: io_uring_submit_and_wait: %s", strerror(-r));
			usleep(1000);
		}
		pthread_mutex_lock(&c->lock);
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&c->ring, head, cqe) {
			complete(c, io_uring_cqe_get_data(cqe), cqe->res);
			n++;
		}
		io_uring_cq_advance(&c->ring, n);
	}
	return NULL;
}

/* ---------------------------------------------------------------- workers */

static int decode(struct k2fs_cache *c, struct k2fs_job *j, uint32_t i, k2_err *err)
{
	const k2p_block *b = job_block(c, j, i);
	if (j->direct) {
		uint64_t sum = k2_checksum(j->bufs[i], b->stored_bytes);
		if (sum == b->checksum)
			return 0;
		return k2_err_set(err, -EIO, "%s: block %" PRIu32 " of %s at pack offset %" PRIu64
				  ": checksum mismatch", k2p_pack_path(c->pack), j->b0 + i,
				  j->slot->e->path, b->offset);
	}
	return k2p_block_decode(c->pack, b, j->stage + (b->offset - j->stage_off), j->bufs[i],
				err);
}

static void *worker_main(void *arg)
{
	struct k2fs_cache *c = arg;
	pthread_mutex_lock(&c->lock);
	for (;;) {
		struct k2fs_task *t = task_pop(c);
		if (!t) {
			if (c->stopping >= 2)
				break;
			pthread_cond_wait(&c->work, &c->lock);
			continue;
		}
		pthread_mutex_unlock(&c->lock);
		k2_err err = {{0}};
		int rc = decode(c, t->job, t->i, &err);
		pthread_mutex_lock(&c->lock);
		struct k2fs_job *j = t->job;
		j->pending[t->i] = -1;
		k2fs_cache_block_finish(c, j, t->i, rc, rc ? err.msg : NULL);
		job_maybe_free(c, j);
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

/* ---------------------------------------------------------------- start and stop */

int k2fs_loader_start(struct k2fs_cache *c, k2_err *err)
{
	const char *path = k2p_pack_path(c->pack);
	c->fd_buffered = k2p_pack_fd(c->pack);
	c->fd_direct = -1;
	if (!c->opts.no_odirect) {
		c->fd_direct = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
		if (c->fd_direct < 0)
			k2fs_log("%s: O_DIRECT open refused (%s); reading through the page cache",
				 path, strerror(errno));
	}
	c->fd = c->fd_direct >= 0 ? c->fd_direct : c->fd_buffered;
	c->efd = eventfd(0, EFD_CLOEXEC);
	if (c->efd < 0)
		return k2_err_set(err, -errno, "k2fs: eventfd: %s", strerror(errno));
	unsigned entries = 8;
	while (entries < 2 * c->opts.iodepth + 8 && entries < 32768)
		entries *= 2;
	int rc = io_uring_queue_init(entries, &c->ring, 0);
	if (rc < 0)
		return k2_err_set(err, rc, "k2fs: io_uring_queue_init(%u): %s", entries,
				  strerror(-rc));
	c->ring_ok = 1;
	c->workers = calloc(c->opts.threads, sizeof(*c->workers));
	if (!c->workers)
		return k2_err_set(err, -ENOMEM, "k2fs: out of memory");
	rc = pthread_create(&c->io_thread, NULL, io_main, c);
	if (rc)
		return k2_err_set(err, -rc, "k2fs: cannot start the I/O thread: %s", strerror(rc));
	c->io_started = 1;
	for (unsigned i = 0; i < c->opts.threads; i++) {
		rc = pthread_create(&c->workers[i], NULL, worker_main, c);
		if (rc)
			return k2_err_set(err, -rc, "k2fs: cannot start worker %u: %s", i,
					  strerror(rc));
		c->n_workers++;
	}
	return 0;
}

void k2fs_loader_stop(struct k2fs_cache *c)
{
	if (c->io_started) {
		pthread_mutex_lock(&c->lock);
		c->stopping = 1;
		kick(c);
		pthread_mutex_unlock(&c->lock);
		pthread_join(c->io_thread, NULL);
		c->io_started = 0;
	}
	pthread_mutex_lock(&c->lock);
	c->stopping = 2;
	pthread_cond_broadcast(&c->work);
	pthread_mutex_unlock(&c->lock);
	for (unsigned i = 0; i < c->n_workers; i++)
		pthread_join(c->workers[i], NULL);
	c->n_workers = 0;
	free(c->workers);
	c->workers = NULL;
	if (c->ring_ok)
		io_uring_queue_exit(&c->ring);
	c->ring_ok = 0;
	if (c->efd >= 0)
		close(c->efd);
	c->efd = -1;
	if (c->fd_direct >= 0)
		close(c->fd_direct);
	c->fd_direct = -1;
}
