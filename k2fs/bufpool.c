/* bufpool.c — page-aligned buffers for decoded blocks and staged reads,
 * recycled by exact capacity. Experts of one model have one size, so their
 * blocks share a few capacities: a buffer freed by an eviction is handed to the
 * next load without a new mapping or page faults. Free buffers beyond idle_max
 * bytes are unmapped. */
#include "k2fs_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#define POOL_CLASSES 32

struct pool_class {
	size_t cap;
	void **bufs;      /* stack of free buffers */
	size_t n, room;
};

struct k2fs_pool {
	pthread_mutex_t lock;
	uint64_t idle_max, idle;   /* protected by lock */
	struct pool_class cls[POOL_CLASSES];
	unsigned n_cls;
	unsigned victim;           /* round robin when a class must give way */
};

int k2fs_pool_create(uint64_t idle_max, struct k2fs_pool **out)
{
	struct k2fs_pool *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	pthread_mutex_init(&p->lock, NULL);
	p->idle_max = idle_max;
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

static struct pool_class *find_class(struct k2fs_pool *p, size_t cap)
{
	for (unsigned c = 0; c < p->n_cls; c++)
		if (p->cls[c].cap == cap)
			return &p->cls[c];
	return NULL;
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
	void *b = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return b == MAP_FAILED ? NULL : b;
}

/* Unmaps every free buffer of class k (lock held). */
static void class_empty(struct k2fs_pool *p, struct pool_class *k)
{
	for (size_t i = 0; i < k->n; i++)
		munmap(k->bufs[i], k->cap);
	p->idle -= (uint64_t)k->n * k->cap;
	k->n = 0;
}

void k2fs_pool_put(struct k2fs_pool *p, void *buf, size_t cap)
{
	if (!buf)
		return;
	pthread_mutex_lock(&p->lock);
	if (p->idle + cap > p->idle_max) {
		pthread_mutex_unlock(&p->lock);
		munmap(buf, cap);
		return;
	}
	struct pool_class *k = find_class(p, cap);
	if (!k) {
		if (p->n_cls < POOL_CLASSES) {
			k = &p->cls[p->n_cls++];
		} else {
			k = &p->cls[p->victim++ % POOL_CLASSES];
			class_empty(p, k);
		}
		k->cap = cap;
	}
	if (k->n == k->room) {
		size_t room = k->room ? k->room * 2 : 16;
		void **nb = realloc(k->bufs, room * sizeof(void *));
		if (!nb) {
			pthread_mutex_unlock(&p->lock);
			munmap(buf, cap);
			return;
		}
		k->bufs = nb;
		k->room = room;
	}
	k->bufs[k->n++] = buf;
	p->idle += cap;
	pthread_mutex_unlock(&p->lock);
}

uint64_t k2fs_pool_idle_bytes(struct k2fs_pool *p)
{
	pthread_mutex_lock(&p->lock);
	uint64_t v = p->idle;
	pthread_mutex_unlock(&p->lock);
	return v;
}
