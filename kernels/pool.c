/* pool.c — the persistent worker pool of kernels/: kern_set_threads sizes it,
 * kern_pool_run (kernels_impl.h) and kern_parallel_for spread tasks over it.
 *
 * One run at a time: the caller publishes (fn, ctx, n), opens a new
 * generation and wakes the workers; every thread, the caller included, takes
 * task indices from a shared atomic counter until none are left. A worker
 * joins a generation only while it is open (it counts itself in `active`,
 * then checks `open_gen`); the caller closes it once every task is taken and
 * waits for the joined workers alone. So a worker the scheduler has not run
 * (more threads than free cores: the FUSE daemon shares them) never delays a
 * run, and none touches a finished run's ctx. Idle workers spin, then yield,
 * then sleep on a condition variable: the decode loop calls in every few
 * tens of microseconds. */
#include "kernels_impl.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define POOL_MAX_THREADS 256
#define POOL_PAUSE_NS 20000.0  /* a waiting thread only pauses this long, */
#define POOL_YIELD_NS 200000.0 /* then also yields the core until this, then sleeps */

static struct {
	pthread_mutex_t run_lock;   /* held by the one caller running the pool, and by resizes */
	pthread_mutex_t lock;       /* for sleeping on wake / idle */
	pthread_cond_t wake;        /* a new generation or stop */
	pthread_cond_t idle;        /* active dropped to 0 */
	pthread_t *th;              /* [n_workers]; protected by run_lock */
	int n_workers;              /* threads besides the caller; protected by run_lock */
	int configured;             /* kern_set_threads or a default ran; protected by run_lock */
	atomic_int total;           /* n_workers + 1, readable without run_lock */
	/* the current run: written by the caller before open_gen is set */
	kern_task_fn fn;
	void *ctx;
	uint32_t n;
	atomic_uint next;           /* next task index to take */
	atomic_int active;          /* workers inside a generation */
	atomic_uint_fast64_t open_gen; /* the generation workers may join, 0 = none */
	atomic_uint_fast64_t gen;   /* the latest generation (wakes workers) */
	atomic_int stop;
} pool = {
	.run_lock = PTHREAD_MUTEX_INITIALIZER,
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.wake = PTHREAD_COND_INITIALIZER,
	.idle = PTHREAD_COND_INITIALIZER,
};

/* Set while a thread runs tasks, so nested runs go inline. */
static __thread int in_task;

static double pool_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void pool_take_tasks(kern_task_fn fn, void *ctx, uint32_t n)
{
	uint32_t i;

	in_task = 1;
	while ((i = atomic_fetch_add_explicit(&pool.next, 1, memory_order_relaxed)) < n)
		fn(ctx, i);
	in_task = 0;
}

/* One step of waiting for something another thread does: pause first, then
 * yield the core too; returns 1 once it is time to sleep instead. */
static int pool_wait_step(unsigned *spin, double *t0)
{
	unsigned s = (*spin)++;

	if (s == 0)
		*t0 = pool_now_ns();
	if ((s & 63) != 63) {
		cpu_relax();
		return 0;
	}
	double dt = pool_now_ns() - *t0;
	if (dt > POOL_YIELD_NS)
		return 1;
	if (dt > POOL_PAUSE_NS)
		sched_yield();
	return 0;
}

/* Waits for the generation to move past `seen`; returns it, or 0 on stop. */
static uint64_t pool_wait_gen(uint64_t seen)
{
	unsigned spin = 0;
	double t0 = 0;
	uint64_t g;

	while ((g = atomic_load_explicit(&pool.gen, memory_order_acquire)) == seen &&
	       !atomic_load(&pool.stop)) {
		if (pool_wait_step(&spin, &t0)) {
			pthread_mutex_lock(&pool.lock);
			while ((g = atomic_load_explicit(&pool.gen, memory_order_acquire)) == seen &&
			       !atomic_load(&pool.stop))
				pthread_cond_wait(&pool.wake, &pool.lock);
			pthread_mutex_unlock(&pool.lock);
			break;
		}
	}
	return atomic_load(&pool.stop) ? 0 : g;
}

static void pool_leave(void)
{
	if (atomic_fetch_sub(&pool.active, 1) == 1) {
		pthread_mutex_lock(&pool.lock);
		pthread_cond_broadcast(&pool.idle);
		pthread_mutex_unlock(&pool.lock);
	}
}

static void *pool_worker(void *arg)
{
	uint64_t seen = (uint64_t)(uintptr_t)arg;

	for (;;) {
		seen = pool_wait_gen(seen);
		if (seen == 0)
			return NULL;
		/* Join, then check the generation is still open: with both
		 * sequentially consistent, either the caller sees us in
		 * `active` and waits, or we see it closed. */
		atomic_fetch_add(&pool.active, 1);
		if (atomic_load(&pool.open_gen) == seen)
			pool_take_tasks(pool.fn, pool.ctx, pool.n);
		pool_leave();
	}
}

/* Stops and joins every worker. Caller holds run_lock. */
static void pool_stop_workers(void)
{
	if (pool.n_workers == 0)
		return;
	pthread_mutex_lock(&pool.lock);
	atomic_store(&pool.stop, 1);
	pthread_cond_broadcast(&pool.wake);
	pthread_mutex_unlock(&pool.lock);
	for (int i = 0; i < pool.n_workers; i++)
		pthread_join(pool.th[i], NULL);
	free(pool.th);
	pool.th = NULL;
	pool.n_workers = 0;
	atomic_store(&pool.total, 1);
	atomic_store(&pool.stop, 0);
}

static int pool_online_cores(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > POOL_MAX_THREADS ? POOL_MAX_THREADS : (int)n;
}

/* Resizes to n threads in all (n - 1 workers). A worker that cannot be
 * created leaves the pool smaller; nothing fails. Caller holds run_lock. */
static void pool_resize(int n)
{
	pool_stop_workers();
	pool.configured = 1;
	if (n <= 1)
		return;
	pool.th = calloc((size_t)n - 1, sizeof(*pool.th));
	if (!pool.th)
		return;
	uint64_t g = atomic_load(&pool.gen);
	for (int i = 0; i < n - 1; i++) {
		if (pthread_create(&pool.th[i], NULL, pool_worker, (void *)(uintptr_t)g) != 0)
			break;
		pool.n_workers++;
	}
	atomic_store(&pool.total, pool.n_workers + 1);
}

void kern_set_threads(int n)
{
	/* From inside a task the pool is running (its run_lock may be held by
	 * this very thread): leave it as it is. */
	if (in_task)
		return;
	if (n <= 0)
		n = pool_online_cores();
	if (n > POOL_MAX_THREADS)
		n = POOL_MAX_THREADS;
	pthread_mutex_lock(&pool.run_lock);
	pool_resize(n);
	pthread_mutex_unlock(&pool.run_lock);
}

int kern_threads(void)
{
	if (in_task)
		return atomic_load(&pool.total) > 0 ? atomic_load(&pool.total) : 1;
	pthread_mutex_lock(&pool.run_lock);
	if (!pool.configured)
		pool_resize(pool_online_cores());
	int n = pool.n_workers + 1;
	pthread_mutex_unlock(&pool.run_lock);
	return n;
}

void kern_pool_run(kern_task_fn fn, void *ctx, uint32_t n)
{
	if (n == 0)
		return;
	if (n == 1 || in_task || pthread_mutex_trylock(&pool.run_lock) != 0)
		goto inline_run;
	if (!pool.configured)
		pool_resize(pool_online_cores());
	if (pool.n_workers == 0) {
		pthread_mutex_unlock(&pool.run_lock);
		goto inline_run;
	}

	pool.fn = fn;
	pool.ctx = ctx;
	pool.n = n;
	atomic_store_explicit(&pool.next, 0, memory_order_relaxed);
	uint64_t g = atomic_load(&pool.gen) + 1;
	atomic_store(&pool.open_gen, g);
	pthread_mutex_lock(&pool.lock);
	atomic_store_explicit(&pool.gen, g, memory_order_release);
	pthread_cond_broadcast(&pool.wake);
	pthread_mutex_unlock(&pool.lock);

	pool_take_tasks(fn, ctx, n);
	atomic_store(&pool.open_gen, 0); /* every task is taken: no more joiners */

	unsigned spin = 0;
	double t0 = 0;
	while (atomic_load(&pool.active) > 0) {
		if (pool_wait_step(&spin, &t0)) {
			pthread_mutex_lock(&pool.lock);
			while (atomic_load(&pool.active) > 0)
				pthread_cond_wait(&pool.idle, &pool.lock);
			pthread_mutex_unlock(&pool.lock);
			break;
		}
	}
	pthread_mutex_unlock(&pool.run_lock);
	return;

inline_run:
	{
		int was = in_task;
		in_task = 1;
		for (uint32_t i = 0; i < n; i++)
			fn(ctx, i);
		in_task = was;
	}
}

struct pfor_ctx {
	void (*fn)(void *ctx, uint32_t i);
	void *ctx;
};

static void pfor_task(void *ctx, uint32_t i)
{
	const struct pfor_ctx *c = ctx;
	c->fn(c->ctx, i);
}

void kern_parallel_for(uint32_t n, void (*fn)(void *ctx, uint32_t i), void *ctx)
{
	struct pfor_ctx c = {fn, ctx};
	kern_pool_run(pfor_task, &c, n);
}
