/* bufpool.c — page-aligned buffers for decoded blocks and staged reads,
 * recycled by exact capacity. Experts of one model have one size, so their
 * blocks share a few capacities: a buffer freed by an eviction is handed to the
 * next load without a new mapping or page faults. Small capacities (block
 * buffers, ≤ 4 MiB) are carved from 16 MiB arenas advised for transparent huge
 * pages, so that first touching them costs a fault per 2 MiB rather than per
 * 4 KiB (on some virtual machines first touches are the slowest thing a load
 * does). Free buffers are kept while the caller's `keep` allows (the cache
 * passes what its budget leaves unused), so memory given back by evictions stays
 * ready without the process ever holding more than its budget for long. */
#include "k2fs_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>

#define POOL_CLASSES 32
#define ARENA_BYTES (16u << 20)
#define ARENA_MAX_CAP (4u << 20)

struct pool_class {
	size_t cap;
	void **bufs;      /* stack of free buffers */
	size_t n, room;
};

struct k2fs_pool {
	pthread_mutex_t lock;
	uint64_t idle;             /* bytes of free buffers; protected by lock */
	struct pool_class cls[POOL_CLASSES];
	unsigned n_cls;
};

int k2fs_pool_create(struct k2fs_pool **out)
{
	struct k2fs_pool *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	pthread_mutex_init(&p->lock, NULL);
	*out = p;
	return 0;
}

void k2fs_pool_destroy(struct k2fs_pool *p)
{
	if (!p)
		return;
	for (unsigned c = 0; c < p->n_cls; c++) {
		for (size_t i = 0; i < p->cls[c].n; i++)
			munmap(p->cls[c].bufs[i], p->cls[c].cap);
		free(p->cls[c].bufs);
	}
	pthread_mutex_destroy(&p->lock);
	free(p);
}

/* The class of `cap`, created when there is room (lock held); NULL when the
 * table is full. */
static struct pool_class *find_class(struct k2fs_pool *p, size_t cap)
{
	for (unsigned c = 0; c < p->n_cls; c++)
		if (p->cls[c].cap == cap)
			return &p->cls[c];
	if (p->n_cls == POOL_CLASSES)
		return NULL;
	struct pool_class *k = &p->cls[p->n_cls++];
	k->cap = cap;
	return k;
}

/* Pushes a free buffer (lock held); returns 0 or -ENOMEM. */
static int push(struct k2fs_pool *p, struct pool_class *k, void *buf)
{
	if (k->n == k->room) {
		size_t room = k->room ? k->room * 2 : 64;
		void **nb = realloc(k->bufs, room * sizeof(void *));
		if (!nb)
			return -ENOMEM;
		k->bufs = nb;
		k->room = room;
	}
	k->bufs[k->n++] = buf;
	p->idle += k->cap;
	return 0;
}

static void *map(size_t bytes)
{
	void *b = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (b == MAP_FAILED)
		return NULL;
	if (bytes >= (2u << 20))
		madvise(b, bytes, MADV_HUGEPAGE);
	return b;
}

void *k2fs_pool_get(struct k2fs_pool *p, size_t cap)
{
	if (cap == 0 || cap % 4096)
		return NULL;
	pthread_mutex_lock(&p->lock);
	struct pool_class *k = find_class(p, cap);
	if (k && k->n) {
		void *b = k->bufs[--k->n];
		p->idle -= cap;
		pthread_mutex_unlock(&p->lock);
		return b;
	}
	pthread_mutex_unlock(&p->lock);
	if (!k || cap > ARENA_MAX_CAP)
		return map(cap);
	/* carve an arena: one buffer for the caller, the rest into the class */
	size_t n = ARENA_BYTES / cap;
	if (n < 2)
		return map(cap);
	uint8_t *a = map(n * cap);
	if (!a)
		return map(cap);
	pthread_mutex_lock(&p->lock);
	for (size_t i = 1; i < n; i++)
		if (push(p, k, a + i * cap)) {
			for (size_t r = i; r < n; r++)
				munmap(a + r * cap, cap);
			break;
		}
	pthread_mutex_unlock(&p->lock);
	return a;
}

void k2fs_pool_put(struct k2fs_pool *p, void *buf, size_t cap, uint64_t keep)
{
	if (!buf)
		return;
	pthread_mutex_lock(&p->lock);
	struct pool_class *k = p->idle + cap <= keep ? find_class(p, cap) : NULL;
	int kept = k && push(p, k, buf) == 0;
	pthread_mutex_unlock(&p->lock);
	if (!kept)
		munmap(buf, cap);
}

void k2fs_pool_trim(struct k2fs_pool *p, uint64_t keep)
{
	pthread_mutex_lock(&p->lock);
	for (unsigned c = 0; c < p->n_cls && p->idle > keep; c++) {
		struct pool_class *k = &p->cls[c];
		while (k->n && p->idle > keep) {
			munmap(k->bufs[--k->n], k->cap);
			p->idle -= k->cap;
		}
	}
	pthread_mutex_unlock(&p->lock);
}

uint64_t k2fs_pool_idle_bytes(struct k2fs_pool *p)
{
	pthread_mutex_lock(&p->lock);
	uint64_t v = p->idle;
	pthread_mutex_unlock(&p->lock);
	return v;
}
