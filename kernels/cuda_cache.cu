/* cuda_cache.cu — the GPU expert cache's mechanism: device slots allocated
 * once, a ring of pinned staging buffers, I/O threads that fill them with pread
 * (from the mount) or memcpy (from a RAM copy) and queue cudaMemcpyAsync of each
 * filled chunk on a dedicated copy stream, and one event per slot so that the
 * compute stream waits only for the expert it reads.
 *
 * A load is cut into staging-sized chunks: while chunk k is copied to the GPU,
 * chunk k+1 is read, and several I/O threads work on different loads. A staging
 * buffer is reused once the event recorded after its copy has completed. Before
 * the first copy into a slot, the I/O thread waits for the event recorded by
 * kcu_cache_end_use, so an expert still being read by queued kernels is never
 * overwritten.
 *
 * Locking: cache->mu protects every slot's state, the request queue, the free
 * staging list and the stats; no CUDA call and no read is made while holding it
 * except cudaEventQuery in kcu_cache_poll. Which expert goes into which slot is
 * the caller's policy. */
#include "cuda_common.cuh"

#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum slot_state {
	SLOT_EMPTY = 0,   /* never loaded, or its failure was reported */
	SLOT_QUEUED,      /* waiting for an I/O thread */
	SLOT_READING,     /* an I/O thread is filling and queueing chunks */
	SLOT_LOADED,      /* every chunk queued; `ready` marks the last copy */
	SLOT_FAILED,      /* the load failed; err/msg say why */
};

/* The events only I/O threads wait for (`used`, `copied`) block the thread
 * instead of spinning on it: four spinning I/O threads would take cores from
 * the CPU experts (--cpu-experts). `ready`, waited for by the engine on its
 * critical path, spins. */
#define IO_EVENT_FLAGS (cudaEventDisableTiming | cudaEventBlockingSync)

struct cache_slot {
	uint8_t *dev;
	int state;                /* enum slot_state */
	int in_use;               /* between begin_use and end_use */
	int have_used;            /* `used` has been recorded */
	cudaEvent_t ready;        /* on the copy stream, after the slot's last chunk */
	cudaEvent_t used;         /* on the compute stream, at end_use */
	/* the pending request */
	int fd;
	uint64_t off, len;
	const uint8_t *src;
	int err;
	char msg[256];
};

struct stage_buf {
	uint8_t *host;            /* pinned */
	cudaEvent_t copied;       /* after the copy that last read it */
	int recorded;
};

struct kcu_cache {
	kcu_ctx *ctx;
	uint32_t n_slots;
	uint64_t slot_bytes;
	uint8_t *dev_base;
	cache_slot *slots;
	uint32_t n_stage;
	uint64_t stage_bytes;
	stage_buf *stages;
	uint32_t *free_ring;      /* free staging buffers, FIFO: the oldest copy first */
	uint32_t free_head, n_free;
	uint32_t *queue;          /* slot indices waiting for an I/O thread (ring) */
	uint32_t q_head, q_len;
	cudaStream_t copy;
	pthread_mutex_t mu;
	pthread_cond_t work_cv, done_cv, stage_cv;
	int stop;
	pthread_t *threads;
	uint32_t n_threads, n_started;
	kcu_cache_stats st;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------ queue (under mu) */

static void queue_push(kcu_cache *c, uint32_t slot, int front)
{
	if (front) {
		c->q_head = (c->q_head + c->n_slots - 1) % c->n_slots;
		c->queue[c->q_head] = slot;
	} else {
		c->queue[(c->q_head + c->q_len) % c->n_slots] = slot;
	}
	c->q_len++;
}

static uint32_t queue_pop(kcu_cache *c)
{
	uint32_t s = c->queue[c->q_head];
	c->q_head = (c->q_head + 1) % c->n_slots;
	c->q_len--;
	return s;
}

/* Moves a queued slot to the front (a reader is waiting for it). */
static void queue_promote(kcu_cache *c, uint32_t slot)
{
	uint32_t k;
	for (k = 0; k < c->q_len; k++)
		if (c->queue[(c->q_head + k) % c->n_slots] == slot)
			break;
	if (k == c->q_len || k == 0)
		return;
	for (; k > 0; k--)
		c->queue[(c->q_head + k) % c->n_slots] = c->queue[(c->q_head + k - 1) % c->n_slots];
	c->queue[c->q_head] = slot;
}

/* ------------------------------------------------------------ I/O threads */

static int slot_fail(cache_slot *s, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int slot_fail(cache_slot *s, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->msg, sizeof(s->msg), fmt, ap);
	va_end(ap);
	return code;
}

static stage_buf *stage_acquire(kcu_cache *c, double *stall)
{
	const double t0 = now_s();
	pthread_mutex_lock(&c->mu);
	while (c->n_free == 0)
		pthread_cond_wait(&c->stage_cv, &c->mu);
	stage_buf *b = &c->stages[c->free_ring[c->free_head]];
	c->free_head = (c->free_head + 1) % c->n_stage;
	c->n_free--;
	pthread_mutex_unlock(&c->mu);
	if (b->recorded)
		cudaEventSynchronize(b->copied); /* an error here shows again at the copy */
	*stall += now_s() - t0;
	return b;
}

static void stage_release(kcu_cache *c, stage_buf *b)
{
	pthread_mutex_lock(&c->mu);
	c->free_ring[(c->free_head + c->n_free) % c->n_stage] = (uint32_t)(b - c->stages);
	c->n_free++;
	pthread_cond_signal(&c->stage_cv);
	pthread_mutex_unlock(&c->mu);
}

/* Reads exactly n bytes at off; returns 0, -errno, or -ENODATA at end of file. */
static int read_full(int fd, uint8_t *buf, uint64_t n, uint64_t off)
{
	uint64_t got = 0;
	while (got < n) {
		ssize_t r = pread(fd, buf + got, n - got, (off_t)(off + got));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -ENODATA;
		got += (uint64_t)r;
	}
	return 0;
}

/* Fills slot s from its request, chunk by chunk. Called without mu. */
static int do_load(kcu_cache *c, uint32_t idx, cache_slot *s, double *read_s, double *stall_s,
		   uint64_t *chunks)
{
	const uint64_t len = s->len;
	int waited_used = 0;
	for (uint64_t done = 0; done < len;) {
		const uint64_t n = len - done < c->stage_bytes ? len - done : c->stage_bytes;
		stage_buf *b = stage_acquire(c, stall_s);
		const double t0 = now_s();
		int rc = 0;
		if (s->src) {
			memcpy(b->host, s->src + done, n);
		} else {
			rc = read_full(s->fd, b->host, n, s->off + done);
		}
		*read_s += now_s() - t0;
		if (rc < 0) {
			stage_release(c, b);
			if (rc == -ENODATA)
				return slot_fail(s, rc,
						 "expert cache: slot %u: fd %d ends before offset %llu "
						 "(load of %llu bytes at %llu)", idx, s->fd,
						 (unsigned long long)(s->off + len), (unsigned long long)len,
						 (unsigned long long)s->off);
			return slot_fail(s, -EIO, "expert cache: slot %u: pread(fd %d, offset %llu): %s",
					 idx, s->fd, (unsigned long long)(s->off + done), strerror(-rc));
		}
		cudaError_t e = cudaSuccess;
		if (!waited_used && s->have_used)
			e = cudaEventSynchronize(s->used); /* kernels still reading the slot */
		waited_used = 1;
		if (e == cudaSuccess)
			e = cudaMemcpyAsync(s->dev + done, b->host, n, cudaMemcpyHostToDevice, c->copy);
		if (e == cudaSuccess)
			e = cudaEventRecord(b->copied, c->copy);
		if (e != cudaSuccess) {
			stage_release(c, b);
			return slot_fail(s, -EIO, "expert cache: slot %u: copy of %llu bytes at %llu: %s",
					 idx, (unsigned long long)n, (unsigned long long)done,
					 cudaGetErrorString(e));
		}
		b->recorded = 1;
		stage_release(c, b);
		done += n;
		(*chunks)++;
	}
	cudaError_t e = cudaEventRecord(s->ready, c->copy);
	if (e != cudaSuccess)
		return slot_fail(s, -EIO, "expert cache: slot %u: cudaEventRecord: %s", idx,
				 cudaGetErrorString(e));
	return 0;
}

static void *io_main(void *arg)
{
	kcu_cache *c = (kcu_cache *)arg;
	cudaSetDevice(c->ctx->device);
	pthread_mutex_lock(&c->mu);
	for (;;) {
		while (!c->stop && c->q_len == 0)
			pthread_cond_wait(&c->work_cv, &c->mu);
		if (c->stop)
			break;
		const uint32_t idx = queue_pop(c);
		cache_slot *s = &c->slots[idx];
		s->state = SLOT_READING;
		s->msg[0] = 0;
		pthread_mutex_unlock(&c->mu);

		double read_s = 0, stall_s = 0;
		uint64_t chunks = 0;
		const int rc = do_load(c, idx, s, &read_s, &stall_s, &chunks);

		pthread_mutex_lock(&c->mu);
		s->err = rc;
		s->state = rc < 0 ? SLOT_FAILED : SLOT_LOADED;
		c->st.loads++;
		if (rc < 0)
			c->st.failed++;
		else
			c->st.bytes += s->len;
		c->st.chunks += chunks;
		c->st.read_seconds += read_s;
		c->st.stall_seconds += stall_s;
		pthread_cond_broadcast(&c->done_cv);
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

/* ------------------------------------------------------------ create, destroy */

extern "C" void kcu_cache_destroy(kcu_cache *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->mu);
	c->stop = 1;
	pthread_cond_broadcast(&c->work_cv);
	pthread_mutex_unlock(&c->mu);
	for (uint32_t i = 0; i < c->n_started; i++)
		pthread_join(c->threads[i], NULL);
	cudaSetDevice(c->ctx->device);
	if (c->copy) {
		cudaStreamSynchronize(c->copy);
		cudaStreamDestroy(c->copy);
	}
	/* kernels may still read slots: let the compute stream drain first */
	cudaStreamSynchronize(c->ctx->stream);
	if (c->stages) {
		for (uint32_t i = 0; i < c->n_stage; i++) {
			if (c->stages[i].host)
				cudaFreeHost(c->stages[i].host);
			if (c->stages[i].copied)
				cudaEventDestroy(c->stages[i].copied);
		}
	}
	if (c->slots) {
		for (uint32_t i = 0; i < c->n_slots; i++) {
			if (c->slots[i].ready)
				cudaEventDestroy(c->slots[i].ready);
			if (c->slots[i].used)
				cudaEventDestroy(c->slots[i].used);
		}
	}
	if (c->dev_base)
		cudaFree(c->dev_base);
	(void)cudaGetLastError();
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->work_cv);
	pthread_cond_destroy(&c->done_cv);
	pthread_cond_destroy(&c->stage_cv);
	free(c->threads);
	free(c->queue);
	free(c->free_ring);
	free(c->stages);
	free(c->slots);
	free(c);
}

#define CACHE_TRY(call, what)                                                           \
	do {                                                                            \
		cudaError_t e_ = (call);                                                \
		if (e_ != cudaSuccess) {                                                \
			rc = k2_err_set(err, e_ == cudaErrorMemoryAllocation ? -ENOMEM : -EIO, \
					"expert cache: %s: %s", what, cudaGetErrorString(e_)); \
			goto out_destroy;                                               \
		}                                                                       \
	} while (0)

extern "C" int kcu_cache_create(kcu_ctx *ctx, const kcu_cache_opts *opts, kcu_cache **out,
				k2_err *err)
{
	*out = NULL;
	if (!ctx || !opts)
		return k2_err_set(err, -EINVAL, "expert cache: no context or options");
	if (opts->n_slots == 0 || opts->slot_bytes == 0)
		return k2_err_set(err, -EINVAL, "expert cache: %u slots of %llu bytes: need at least one "
				  "slot of at least one byte", opts->n_slots,
				  (unsigned long long)opts->slot_bytes);
	const uint64_t slot_bytes = (opts->slot_bytes + 4095) & ~(uint64_t)4095;
	if (slot_bytes > ((uint64_t)1 << 40) / opts->n_slots)
		return k2_err_set(err, -EINVAL, "expert cache: %u slots of %llu bytes exceed 1 TiB",
				  opts->n_slots, (unsigned long long)slot_bytes);
	const uint32_t n_threads = opts->io_threads ? opts->io_threads : 4;
	const uint32_t n_stage = opts->n_staging ? opts->n_staging : 2 * n_threads;
	const uint64_t stage_bytes = opts->staging_bytes ? opts->staging_bytes : (8u << 20);
	if (n_threads > 256 || n_stage > 4096 || stage_bytes > ((uint64_t)1 << 32))
		return k2_err_set(err, -EINVAL, "expert cache: %u I/O threads, %u staging buffers of "
				  "%llu bytes: limits are 256, 4096, 4 GiB", n_threads, n_stage,
				  (unsigned long long)stage_bytes);

	int rc = 0;
	kcu_cache *c = (kcu_cache *)calloc(1, sizeof(*c));
	if (!c)
		return k2_err_set(err, -ENOMEM, "expert cache: out of host memory");
	c->ctx = ctx;
	c->n_slots = opts->n_slots;
	c->slot_bytes = slot_bytes;
	c->n_stage = n_stage;
	c->stage_bytes = stage_bytes;
	c->n_threads = n_threads;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->work_cv, NULL);
	pthread_cond_init(&c->done_cv, NULL);
	pthread_cond_init(&c->stage_cv, NULL);
	c->slots = (cache_slot *)calloc(c->n_slots, sizeof(*c->slots));
	c->queue = (uint32_t *)calloc(c->n_slots, sizeof(*c->queue));
	c->stages = (stage_buf *)calloc(n_stage, sizeof(*c->stages));
	c->free_ring = (uint32_t *)calloc(n_stage, sizeof(*c->free_ring));
	c->threads = (pthread_t *)calloc(n_threads, sizeof(*c->threads));
	if (!c->slots || !c->queue || !c->stages || !c->free_ring || !c->threads) {
		rc = k2_err_set(err, -ENOMEM, "expert cache: out of host memory");
		goto out_destroy;
	}
	CACHE_TRY(cudaSetDevice(ctx->device), "cudaSetDevice");
	CACHE_TRY(cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking), "copy stream");
	{
		char what[96];
		snprintf(what, sizeof(what), "%u slots of %llu bytes (cudaMalloc)", c->n_slots,
			 (unsigned long long)slot_bytes);
		CACHE_TRY(cudaMalloc((void **)&c->dev_base, slot_bytes * c->n_slots), what);
	}
	for (uint32_t i = 0; i < c->n_slots; i++) {
		c->slots[i].dev = c->dev_base + slot_bytes * i;
		CACHE_TRY(cudaEventCreateWithFlags(&c->slots[i].ready, cudaEventDisableTiming),
			  "slot event");
		CACHE_TRY(cudaEventCreateWithFlags(&c->slots[i].used, IO_EVENT_FLAGS),
			  "slot event");
	}
	for (uint32_t i = 0; i < n_stage; i++) {
		CACHE_TRY(cudaHostAlloc((void **)&c->stages[i].host, stage_bytes,
					cudaHostAllocPortable), "pinned staging buffer (cudaHostAlloc)");
		CACHE_TRY(cudaEventCreateWithFlags(&c->stages[i].copied, IO_EVENT_FLAGS),
			  "staging event");
		c->free_ring[i] = i;
	}
	c->n_free = n_stage;
	for (uint32_t i = 0; i < n_threads; i++) {
		int e = pthread_create(&c->threads[i], NULL, io_main, c);
		if (e) {
			rc = k2_err_set(err, -e, "expert cache: pthread_create: %s", strerror(e));
			goto out_destroy;
		}
		c->n_started++;
	}
	*out = c;
	return 0;

out_destroy:
	kcu_cache_destroy(c);
	return rc;
}

/* ------------------------------------------------------------ slots */

extern "C" uint32_t kcu_cache_n_slots(const kcu_cache *c) { return c ? c->n_slots : 0; }
extern "C" uint64_t kcu_cache_slot_bytes(const kcu_cache *c) { return c ? c->slot_bytes : 0; }

extern "C" void *kcu_cache_slot(kcu_cache *c, uint32_t slot)
{
	return c && slot < c->n_slots ? c->slots[slot].dev : NULL;
}

static int cache_load(kcu_cache *c, uint32_t slot, int fd, uint64_t off, const void *src,
		      uint64_t len, int urgent)
{
	if (!c || slot >= c->n_slots || len == 0 || len > c->slot_bytes)
		return -EINVAL;
	pthread_mutex_lock(&c->mu);
	cache_slot *s = &c->slots[slot];
	if (s->state == SLOT_QUEUED || s->state == SLOT_READING || s->in_use) {
		pthread_mutex_unlock(&c->mu);
		return -EBUSY;
	}
	s->fd = fd;
	s->off = off;
	s->src = (const uint8_t *)src;
	s->len = len;
	s->err = 0;
	s->state = SLOT_QUEUED;
	queue_push(c, slot, urgent);
	pthread_cond_signal(&c->work_cv);
	pthread_mutex_unlock(&c->mu);
	return 0;
}

extern "C" int kcu_cache_load_fd(kcu_cache *c, uint32_t slot, int fd, uint64_t off, uint64_t len,
				 int urgent)
{
	if (fd < 0)
		return -EINVAL;
	return cache_load(c, slot, fd, off, NULL, len, urgent);
}

extern "C" int kcu_cache_load_mem(kcu_cache *c, uint32_t slot, const void *src, uint64_t len,
				  int urgent)
{
	if (!src)
		return -EINVAL;
	return cache_load(c, slot, -1, 0, src, len, urgent);
}

/* Waits (under mu) until the slot's load has left the I/O threads. Returns 0
 * when it is LOADED, else the error to report (and resets a FAILED slot). */
static int wait_loaded(kcu_cache *c, uint32_t slot, k2_err *err)
{
	cache_slot *s = &c->slots[slot];
	if (s->state == SLOT_QUEUED)
		queue_promote(c, slot);
	if (s->state == SLOT_QUEUED || s->state == SLOT_READING) {
		const double t0 = now_s();
		while (s->state == SLOT_QUEUED || s->state == SLOT_READING)
			pthread_cond_wait(&c->done_cv, &c->mu);
		c->st.wait_seconds += now_s() - t0;
	}
	if (s->state == SLOT_FAILED) {
		int rc = s->err;
		k2_err_set(err, rc, "%s", s->msg);
		s->state = SLOT_EMPTY;
		return rc;
	}
	if (s->state == SLOT_EMPTY)
		return k2_err_set(err, -ENOENT, "expert cache: slot %u holds nothing", slot);
	return 0;
}

extern "C" int kcu_cache_begin_use(kcu_cache *c, uint32_t slot, k2_err *err)
{
	if (!c || slot >= c->n_slots)
		return k2_err_set(err, -EINVAL, "expert cache: slot %u out of range", slot);
	pthread_mutex_lock(&c->mu);
	int rc = wait_loaded(c, slot, err);
	if (rc == 0)
		c->slots[slot].in_use = 1;
	pthread_mutex_unlock(&c->mu);
	if (rc < 0)
		return rc;
	cudaError_t e = cudaStreamWaitEvent(c->ctx->stream, c->slots[slot].ready, 0);
	if (e != cudaSuccess) {
		kcu_fail(c->ctx, e, "cudaStreamWaitEvent", __FILE__, __LINE__);
		return k2_err_set(err, -EIO, "%s", c->ctx->err);
	}
	return 0;
}

extern "C" int kcu_cache_end_use(kcu_cache *c, uint32_t slot)
{
	if (!c || slot >= c->n_slots)
		return -EINVAL;
	cache_slot *s = &c->slots[slot];
	pthread_mutex_lock(&c->mu);
	if (!s->in_use) {
		pthread_mutex_unlock(&c->mu);
		return -EINVAL;
	}
	pthread_mutex_unlock(&c->mu);
	/* No load can start while in_use is set, so no I/O thread syncs `used` now. */
	cudaError_t e = cudaEventRecord(s->used, c->ctx->stream);
	pthread_mutex_lock(&c->mu);
	if (e == cudaSuccess)
		s->have_used = 1;
	s->in_use = 0;
	pthread_mutex_unlock(&c->mu);
	if (e != cudaSuccess)
		return kcu_fail(c->ctx, e, "cudaEventRecord", __FILE__, __LINE__);
	return 0;
}

extern "C" int kcu_cache_wait(kcu_cache *c, uint32_t slot, k2_err *err)
{
	if (!c || slot >= c->n_slots)
		return k2_err_set(err, -EINVAL, "expert cache: slot %u out of range", slot);
	pthread_mutex_lock(&c->mu);
	int rc = wait_loaded(c, slot, err);
	pthread_mutex_unlock(&c->mu);
	if (rc < 0)
		return rc;
	const double t0 = now_s();
	cudaError_t e = cudaEventSynchronize(c->slots[slot].ready);
	pthread_mutex_lock(&c->mu);
	c->st.wait_seconds += now_s() - t0;
	pthread_mutex_unlock(&c->mu);
	if (e != cudaSuccess)
		return k2_err_set(err, -EIO, "expert cache: slot %u: upload: %s", slot,
				  cudaGetErrorString(e));
	return 0;
}

extern "C" int kcu_cache_poll(kcu_cache *c, uint32_t slot)
{
	if (!c || slot >= c->n_slots)
		return -EINVAL;
	pthread_mutex_lock(&c->mu);
	cache_slot *s = &c->slots[slot];
	int rc;
	switch (s->state) {
	case SLOT_QUEUED:
	case SLOT_READING:
		rc = 0;
		break;
	case SLOT_FAILED:
		rc = s->err;
		break;
	case SLOT_EMPTY:
		rc = -ENOENT;
		break;
	default: {
		cudaError_t e = cudaEventQuery(s->ready);
		rc = e == cudaSuccess ? 1 : e == cudaErrorNotReady ? 0 : -EIO;
		/* the runtime keeps even "not ready" as this thread's last error,
		 * which the next launch check (KCU_CHECK_LAUNCH) would report */
		if (e != cudaSuccess)
			(void)cudaGetLastError();
		break;
	}
	}
	pthread_mutex_unlock(&c->mu);
	return rc;
}

extern "C" void kcu_cache_stats_get(kcu_cache *c, kcu_cache_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!c)
		return;
	pthread_mutex_lock(&c->mu);
	*out = c->st;
	pthread_mutex_unlock(&c->mu);
}
