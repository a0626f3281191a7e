/* arena.c — the scratch arena of kernels.h: a bump allocator over one block,
 * with overflow blocks while a call needs more than it has; at the next reset
 * the overflow is merged into one block big enough for the whole call, so a
 * kernel called once per token stops allocating after its first call. */
#include "kernels_impl.h"

#include <errno.h>
#include <stdlib.h>

#define ARENA_ALIGN 64u
#define ARENA_MIN_BLOCK ((size_t)1 << 20)
#define ARENA_MAX_OVERFLOW 64

struct kern_arena {
	char *base;          /* the main block */
	size_t cap, used;
	void *over[ARENA_MAX_OVERFLOW]; /* blocks of the current call past the main one */
	size_t n_over, over_bytes;
};

int kern_arena_create(kern_arena **out)
{
	*out = calloc(1, sizeof(**out));
	return *out ? 0 : -ENOMEM;
}

static void free_overflow(kern_arena *a)
{
	for (size_t i = 0; i < a->n_over; i++)
		free(a->over[i]);
	a->n_over = 0;
}

void kern_arena_destroy(kern_arena *a)
{
	if (!a)
		return;
	free_overflow(a);
	free(a->base);
	free(a);
}

void kern_arena_reset(kern_arena *a)
{
	if (a->n_over) {
		/* the last call needed used + over_bytes: one block of that size */
		size_t want = a->used + a->over_bytes;
		free_overflow(a);
		void *nb = NULL;
		if (posix_memalign(&nb, ARENA_ALIGN, want) == 0) {
			free(a->base);
			a->base = nb;
			a->cap = want;
		}
	}
	a->used = 0;
	a->over_bytes = 0;
}

void *kern_arena_alloc(kern_arena *a, size_t bytes)
{
	bytes = (bytes + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
	if (bytes == 0)
		bytes = ARENA_ALIGN;
	if (!a->base && a->n_over == 0) {
		size_t want = bytes > ARENA_MIN_BLOCK ? bytes : ARENA_MIN_BLOCK;
		void *nb = NULL;
		if (posix_memalign(&nb, ARENA_ALIGN, want) != 0)
			return NULL;
		a->base = nb;
		a->cap = want;
	}
	if (a->cap - a->used >= bytes) {
		void *p = a->base + a->used;
		a->used += bytes;
		return p;
	}
	if (a->n_over == ARENA_MAX_OVERFLOW)
		return NULL;
	void *p = NULL;
	if (posix_memalign(&p, ARENA_ALIGN, bytes) != 0)
		return NULL;
	a->over[a->n_over++] = p;
	a->over_bytes += bytes;
	return p;
}
