/* cache_policy.c — replacement policies of the expert cache, behind
 * inf_policy_ops: LRU (a doubly linked list over slots, most recent first)
 * and LFU (access counts per expert kept across evictions, ties broken by
 * least recent use). Both are plain data structures without locks: the
 * cache calls them under its own lock. */
#include "infer_impl.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- LRU */

struct lru {
	uint32_t n;
	int64_t head, tail;  /* most / least recently used, -1 when empty */
	int64_t *prev, *next;
	uint8_t *in;
};

static void *lru_create(uint32_t n_slots, uint32_t n_keys)
{
	(void)n_keys;
	struct lru *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->n = n_slots;
	l->head = l->tail = -1;
	l->prev = malloc(sizeof(int64_t) * n_slots);
	l->next = malloc(sizeof(int64_t) * n_slots);
	l->in = calloc(n_slots, 1);
	if (!l->prev || !l->next || !l->in) {
		free(l->prev);
		free(l->next);
		free(l->in);
		free(l);
		return NULL;
	}
	return l;
}

static void lru_destroy(void *st)
{
	struct lru *l = st;
	if (!l)
		return;
	free(l->prev);
	free(l->next);
	free(l->in);
	free(l);
}

static void lru_unlink(struct lru *l, uint32_t s)
{
	if (!l->in[s])
		return;
	if (l->prev[s] >= 0)
		l->next[l->prev[s]] = l->next[s];
	else
		l->head = l->next[s];
	if (l->next[s] >= 0)
		l->prev[l->next[s]] = l->prev[s];
	else
		l->tail = l->prev[s];
	l->in[s] = 0;
}

static void lru_push_front(struct lru *l, uint32_t s)
{
	l->prev[s] = -1;
	l->next[s] = l->head;
	if (l->head >= 0)
		l->prev[l->head] = s;
	l->head = s;
	if (l->tail < 0)
		l->tail = s;
	l->in[s] = 1;
}

static void lru_insert(void *st, uint32_t slot, uint32_t key)
{
	(void)key;
	struct lru *l = st;
	if (slot >= l->n)
		return;
	lru_unlink(l, slot);
	lru_push_front(l, slot);
}

static void lru_remove(void *st, uint32_t slot, uint32_t key)
{
	(void)key;
	struct lru *l = st;
	if (slot < l->n)
		lru_unlink(l, slot);
}

static int64_t lru_victim(void *st, int (*ok)(void *ctx, uint32_t slot), void *ctx)
{
	struct lru *l = st;
	for (int64_t s = l->tail; s >= 0; s = l->prev[s])
		if (ok(ctx, (uint32_t)s))
			return s;
	return -1;
}

const inf_policy_ops inf_policy_lru = {
	.name = "lru",
	.create = lru_create,
	.destroy = lru_destroy,
	.insert = lru_insert,
	.touch = lru_insert,
	.remove = lru_remove,
	.victim = lru_victim,
};

/* ---------------------------------------------------------------- LFU */

struct lfu {
	uint32_t n_slots, n_keys;
	uint64_t *freq;      /* [n_keys] accesses, kept across evictions */
	uint64_t *last;      /* [n_slots] tick of the last access */
	int64_t *key;        /* [n_slots] key held, -1 when empty */
	uint64_t tick;
};

static void *lfu_create(uint32_t n_slots, uint32_t n_keys)
{
	struct lfu *f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->n_slots = n_slots;
	f->n_keys = n_keys;
	f->freq = calloc(n_keys ? n_keys : 1, sizeof(uint64_t));
	f->last = calloc(n_slots, sizeof(uint64_t));
	f->key = malloc(sizeof(int64_t) * n_slots);
	if (!f->freq || !f->last || !f->key) {
		free(f->freq);
		free(f->last);
		free(f->key);
		free(f);
		return NULL;
	}
	for (uint32_t i = 0; i < n_slots; i++)
		f->key[i] = -1;
	return f;
}

static void lfu_destroy(void *st)
{
	struct lfu *f = st;
	if (!f)
		return;
	free(f->freq);
	free(f->last);
	free(f->key);
	free(f);
}

static void lfu_insert(void *st, uint32_t slot, uint32_t key)
{
	struct lfu *f = st;
	if (slot >= f->n_slots || key >= f->n_keys)
		return;
	f->key[slot] = key;
	f->last[slot] = ++f->tick;
}

static void lfu_touch(void *st, uint32_t slot, uint32_t key)
{
	struct lfu *f = st;
	if (slot >= f->n_slots || key >= f->n_keys)
		return;
	f->freq[key]++;
	f->last[slot] = ++f->tick;
}

static void lfu_remove(void *st, uint32_t slot, uint32_t key)
{
	(void)key;
	struct lfu *f = st;
	if (slot < f->n_slots)
		f->key[slot] = -1;
}

static int64_t lfu_victim(void *st, int (*ok)(void *ctx, uint32_t slot), void *ctx)
{
	struct lfu *f = st;
	int64_t best = -1;
	for (uint32_t s = 0; s < f->n_slots; s++) {
		if (f->key[s] < 0 || !ok(ctx, s))
			continue;
		if (best < 0)
			best = s;
		else {
			uint64_t fs = f->freq[f->key[s]], fb = f->freq[f->key[best]];
			if (fs < fb || (fs == fb && f->last[s] < f->last[best]))
				best = s;
		}
	}
	return best;
}

const inf_policy_ops inf_policy_lfu = {
	.name = "lfu",
	.create = lfu_create,
	.destroy = lfu_destroy,
	.insert = lfu_insert,
	.touch = lfu_touch,
	.remove = lfu_remove,
	.victim = lfu_victim,
};

const inf_policy_ops *inf_policy_find(const char *name)
{
	if (!name || strcmp(name, "lru") == 0)
		return &inf_policy_lru;
	if (strcmp(name, "lfu") == 0)
		return &inf_policy_lfu;
	return NULL;
}
