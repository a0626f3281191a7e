/* tok_containers.c — the tokenizer's containers: a byte arena, vectors of
 * ids and of text pieces, a string -> int32 hash map, a uint64 -> uint64 hash
 * map for merges, and the byte trie of added tokens (declared in tok_impl.h).
 * Growth is geometric; every function that allocates returns 0 or -ENOMEM. */
#include "tok_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* ------------------------------------------------------------ vectors */

/* Makes room in *v (capacity *cap elements of elem bytes, n in use) for
 * extra more, doubling from `first`. 0 or -ENOMEM. */
static int vec_reserve(void **v, size_t *cap, size_t n, size_t extra, size_t elem, size_t first)
{
	if (extra > SIZE_MAX / (2 * elem) - n)
		return -ENOMEM;
	if (n + extra <= *cap)
		return 0;
	size_t c = *cap ? *cap : first;
	while (c < n + extra)
		c *= 2;
	void *p = realloc(*v, c * elem);
	if (!p)
		return -ENOMEM;
	*v = p;
	*cap = c;
	return 0;
}

int tok_arena_reserve(struct tok_arena *a, size_t extra)
{
	void *p = a->p; /* a void * of its own: no type punning through void ** */
	int rc = vec_reserve(&p, &a->cap, a->len, extra, 1, 4096);
	a->p = p;
	return rc;
}

int tok_arena_cat(struct tok_arena *a, const void *s, size_t n)
{
	if (tok_arena_reserve(a, n))
		return -ENOMEM;
	if (n)
		memcpy(a->p + a->len, s, n);
	a->len += n;
	return 0;
}

int tok_arena_add(struct tok_arena *a, const void *s, size_t n, size_t *off)
{
	*off = a->len;
	return tok_arena_cat(a, s, n) || tok_arena_cat(a, "", 1) ? -ENOMEM : 0;
}

int tok_ivec_reserve(struct tok_ivec *a, size_t extra)
{
	void *v = a->v;
	int rc = vec_reserve(&v, &a->cap, a->n, extra, sizeof(*a->v), 64);
	a->v = v;
	return rc;
}

int tok_ivec_push(struct tok_ivec *a, int32_t x)
{
	if (tok_ivec_reserve(a, 1))
		return -ENOMEM;
	a->v[a->n++] = x;
	return 0;
}

int tok_pvec_push(struct tok_pvec *a, size_t off, size_t len, int32_t id, int32_t is_match)
{
	void *v = a->v;
	int rc = vec_reserve(&v, &a->cap, a->n, 1, sizeof(*a->v), 64);
	a->v = v;
	if (rc)
		return rc;
	a->v[a->n++] = (struct tok_piece){off, len, id, is_match};
	return 0;
}

/* ------------------------------------------------------------ hash tables */

/* The slots (a power of two, at least 1024 and cap) that keep `want` keys
 * at most half full. */
static size_t map_cap(size_t cap, size_t want)
{
	size_t c = cap ? cap : 1024;
	while (c < 2 * want + 2)
		c *= 2;
	return c;
}

int tok_strmap_grow(struct tok_strmap *m, size_t want)
{
	size_t cap = map_cap(m->cap, want);
	if (cap == m->cap)
		return 0;
	if (cap > UINT32_MAX)
		return -ENOMEM;
	struct tok_strmap_slot *s = calloc(cap, sizeof(*s));
	if (!s)
		return -ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		if (!m->slots[i].len1)
			continue;
		size_t j = m->slots[i].hash & (cap - 1);
		while (s[j].len1)
			j = (j + 1) & (cap - 1);
		s[j] = m->slots[i];
	}
	free(m->slots);
	m->slots = s;
	m->cap = cap;
	return 0;
}

int32_t tok_strmap_get(const struct tok_strmap *m, const char *base, const void *key, size_t len)
{
	if (!m->cap)
		return -1;
	uint32_t h = (uint32_t)XXH3_64bits(key, len);
	for (size_t j = h & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
		const struct tok_strmap_slot *s = &m->slots[j];
		if (!s->len1)
			return -1;
		if (s->hash == h && s->len1 - 1 == len && memcmp(base + s->off, key, len) == 0)
			return s->val;
	}
}

int tok_strmap_put(struct tok_strmap *m, const char *base, size_t off, size_t len, int32_t val)
{
	if (off > UINT32_MAX || len >= UINT32_MAX)
		return -ENOMEM;
	if ((m->count + 1) * 2 > m->cap && tok_strmap_grow(m, m->count + 1))
		return -ENOMEM;
	uint32_t h = (uint32_t)XXH3_64bits(base + off, len);
	size_t j = h & (m->cap - 1);
	for (;; j = (j + 1) & (m->cap - 1)) {
		struct tok_strmap_slot *s = &m->slots[j];
		if (!s->len1)
			break;
		if (s->hash == h && s->len1 - 1 == len && memcmp(base + s->off, base + off, len) == 0) {
			s->val = val;
			return 0;
		}
	}
	m->slots[j] = (struct tok_strmap_slot){h, (uint32_t)off, (uint32_t)len + 1, val};
	m->count++;
	return 0;
}

void tok_strmap_clear(struct tok_strmap *m)
{
	if (m->cap)
		memset(m->slots, 0, m->cap * sizeof(*m->slots));
	m->count = 0;
}

/* The rehash loop is tok_strmap_grow's over another slot type (a key of
 * all ones marks an empty slot, not len1 0): kept twice rather than made
 * generic, which would cost an indirect call per slot while loading. */
int tok_u64map_grow(struct tok_u64map *m, size_t want)
{
	size_t cap = map_cap(m->cap, want);
	if (cap == m->cap)
		return 0;
	if (cap > SIZE_MAX / sizeof(struct tok_u64_slot))
		return -ENOMEM;
	struct tok_u64_slot *s = malloc(cap * sizeof(*s));
	if (!s)
		return -ENOMEM;
	memset(s, 0xff, cap * sizeof(*s));
	for (size_t i = 0; i < m->cap; i++) {
		if (m->slots[i].key == UINT64_MAX)
			continue;
		size_t j = tok_u64_hash(m->slots[i].key) & (cap - 1);
		while (s[j].key != UINT64_MAX)
			j = (j + 1) & (cap - 1);
		s[j] = m->slots[i];
	}
	free(m->slots);
	m->slots = s;
	m->cap = cap;
	return 0;
}

int tok_u64map_put(struct tok_u64map *m, uint64_t k, uint64_t v)
{
	if ((m->count + 1) * 2 > m->cap && tok_u64map_grow(m, m->count + 1))
		return -ENOMEM;
	size_t j = tok_u64_hash(k) & (m->cap - 1);
	while (m->slots[j].key != UINT64_MAX && m->slots[j].key != k)
		j = (j + 1) & (m->cap - 1);
	if (m->slots[j].key == UINT64_MAX)
		m->count++;
	m->slots[j] = (struct tok_u64_slot){k, v};
	return 0;
}

/* ------------------------------------------------------------ trie */

void tok_trie_free(struct tok_trie *t)
{
	free(t->v);
	t->v = NULL;
	t->n = t->cap = 0;
}

int tok_trie_add(struct tok_trie *tr, const uint8_t *s, size_t n, int32_t idx)
{
	if (!tr->n) {
		tr->v = malloc(64 * sizeof(*tr->v));
		if (!tr->v)
			return -ENOMEM;
		tr->cap = 64;
		tr->v[0] = (struct tok_trie_node){0, 0, -1, 0};
		tr->n = 1;
	}
	uint32_t node = 0;
	for (size_t i = 0; i < n; i++) {
		uint32_t c = tr->v[node].child;
		while (c && tr->v[c].byte != s[i])
			c = tr->v[c].sibling;
		if (!c) {
			if (tr->n == tr->cap) {
				struct tok_trie_node *v = realloc(tr->v, tr->cap * 2 * sizeof(*v));
				if (!v)
					return -ENOMEM;
				tr->v = v;
				tr->cap *= 2;
			}
			if (tr->n >= UINT32_MAX)
				return -ENOMEM;
			c = (uint32_t)tr->n++;
			tr->v[c] = (struct tok_trie_node){0, tr->v[node].child, -1, s[i]};
			tr->v[node].child = c;
		}
		node = c;
	}
	if (tr->v[node].added < 0) /* the same content twice: the first wins */
		tr->v[node].added = idx;
	return 0;
}

int32_t tok_trie_longest(const struct tok_trie *tr, const uint8_t *s, size_t n, size_t *mlen)
{
	int32_t best = -1;
	if (!tr->n)
		return -1;
	uint32_t node = 0;
	for (size_t i = 0; i < n; i++) {
		uint32_t c = tr->v[node].child;
		while (c && tr->v[c].byte != s[i])
			c = tr->v[c].sibling;
		if (!c)
			break;
		node = c;
		if (tr->v[c].added >= 0) {
			best = tr->v[c].added;
			*mlen = i + 1;
		}
	}
	return best;
}
