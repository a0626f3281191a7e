/* tok_encode.c — encoding (contract of inf_tok_encode in tokenizer.h). The
 * pipeline follows `tokenizers` step by step:
 *   1. added tokens are split out, first those with normalized=false, then
 *      (after the normalizer, here always the identity) those with
 *      normalized=true; leftmost-longest matching, with lstrip / rstrip /
 *      single_word as AddedVocabulary::split_with_indices does;
 *   2. each Split pre-tokenizer cuts the remaining pieces with its regex
 *      (PCRE2; matches found like the onig crate's find_iter) and behavior;
 *      steps 1 and 2 are tok_pretok.c;
 *   3. ByteLevel maps each piece's bytes to the GPT-2 alphabet (we keep bytes
 *      and map each byte straight to its single-character token id);
 *   4. BPE merges each piece by rank with a min-heap, as Word::merge_all does
 *      (lowest rank first, leftmost on ties); results are cached per piece. */
#include "tok_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TOK_CACHE_MAX_KEY 256          /* pieces cached when shorter (as HF) */
#define TOK_CACHE_MAX_ENTRIES 65536    /* the cache is emptied past this... */
#define TOK_CACHE_MAX_BYTES (8u << 20) /* ...or past this many key bytes */

/* A symbol of the piece being merged; the live ones form a list through
 * prev / next (indices into t->syms, -1 at the ends). */
struct tok_sym {
	int32_t id;
	int32_t prev, next;
	uint32_t len; /* bytes; 0 once merged into its left neighbour */
};

/* A candidate merge in the heap: the symbol at pos with its right
 * neighbour, into new_id; stale once either has changed. */
struct tok_merge_ent {
	uint32_t rank;
	uint32_t pos;
	int32_t new_id;
};

static int heap_push(struct tok_merge_ent *h, size_t *n, struct tok_merge_ent e)
{
	size_t i = (*n)++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (h[p].rank < e.rank || (h[p].rank == e.rank && h[p].pos <= e.pos))
			break;
		h[i] = h[p];
		i = p;
	}
	h[i] = e;
	return 0;
}

static struct tok_merge_ent heap_pop(struct tok_merge_ent *h, size_t *n)
{
	struct tok_merge_ent top = h[0], last = h[--(*n)];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n &&
		    (h[c + 1].rank < h[c].rank || (h[c + 1].rank == h[c].rank && h[c + 1].pos < h[c].pos)))
			c++;
		if (last.rank < h[c].rank || (last.rank == h[c].rank && last.pos <= h[c].pos))
			break;
		h[i] = h[c];
		i = c;
	}
	if (*n)
		h[i] = last;
	return top;
}

static inline bool merge_of(const inf_tok *t, int32_t a, int32_t b, uint32_t *rank, int32_t *id)
{
	uint64_t v;
	if (!tok_u64map_get(&t->merges, (uint64_t)(uint32_t)a << 32 | (uint32_t)b, &v))
		return false;
	*rank = (uint32_t)(v >> 32);
	*id = (int32_t)(uint32_t)v;
	return true;
}

static int cache_put(inf_tok *t, const char *s, size_t n, const int32_t *ids, size_t k)
{
	if (t->cache.count >= TOK_CACHE_MAX_ENTRIES || t->cache_keys.len >= TOK_CACHE_MAX_BYTES) {
		tok_strmap_clear(&t->cache);
		t->cache_keys.len = 0;
		t->cache_vals.n = 0;
	}
	size_t off;
	if (tok_arena_add(&t->cache_keys, s, n, &off) || tok_ivec_reserve(&t->cache_vals, k + 1) ||
	    t->cache_vals.n > INT32_MAX)
		return -ENOMEM;
	int32_t at = (int32_t)t->cache_vals.n;
	t->cache_vals.v[t->cache_vals.n++] = (int32_t)k;
	memcpy(t->cache_vals.v + t->cache_vals.n, ids, k * sizeof(*ids));
	t->cache_vals.n += k;
	return tok_strmap_put(&t->cache, t->cache_keys.p, off, n, at);
}

/* BPE of one piece's bytes, appending ids to out (BPE::merge_word and
 * Word::merge_all). 0 or -ENOMEM. */
static int bpe_piece(inf_tok *t, const char *s, size_t n, struct tok_ivec *out)
{
	if (n == 0)
		return 0;
	if (n < TOK_CACHE_MAX_KEY) {
		int32_t at = tok_strmap_get(&t->cache, t->cache_keys.p, s, n);
		if (at >= 0) {
			int32_t k = t->cache_vals.v[at];
			if (tok_ivec_reserve(out, (size_t)k))
				return -ENOMEM;
			memcpy(out->v + out->n, t->cache_vals.v + at + 1, (size_t)k * sizeof(int32_t));
			out->n += (size_t)k;
			return 0;
		}
	}
	if (t->ignore_merges) {
		/* the whole piece, spelled in the byte-level alphabet, may be a token */
		t->scratch.len = 0;
		if (tok_arena_reserve(&t->scratch, 2 * n + 1))
			return -ENOMEM;
		for (size_t i = 0; i < n; i++)
			t->scratch.len +=
				tok_utf8_put(t->byte_cp[(uint8_t)s[i]], t->scratch.p + t->scratch.len);
		int32_t id = tok_strmap_get(&t->vocab, t->strs.p, t->scratch.p, t->scratch.len);
		if (id >= 0)
			return tok_ivec_push(out, id);
	}
	if (n > t->syms_cap) {
		size_t cap = n < 64 ? 64 : n;
		if (cap > SIZE_MAX / (3 * sizeof(struct tok_merge_ent)))
			return -ENOMEM;
		struct tok_sym *sy = realloc(t->syms, cap * sizeof(*sy));
		if (!sy)
			return -ENOMEM;
		t->syms = sy;
		struct tok_merge_ent *h = realloc(t->heap, 3 * cap * sizeof(*h));
		if (!h)
			return -ENOMEM;
		t->heap = h;
		t->syms_cap = cap;
	}
	struct tok_sym *sy = t->syms;
	size_t ns = 0;
	int32_t unk_len = 0; /* a pending unknown run, as merge_word keeps it */
	for (size_t i = 0; i < n; i++) {
		int32_t id = t->byte_id[(uint8_t)s[i]];
		if (id < 0 && t->unk_id < 0)
			continue; /* no token and no unk: HF drops the character */
		if (id < 0) {
			if (unk_len && t->fuse_unk) {
				unk_len++;
				continue;
			}
			if (unk_len)
				sy[ns++] = (struct tok_sym){t->unk_id, 0, 0, (uint32_t)unk_len};
			unk_len = 1;
			continue;
		}
		if (unk_len) {
			sy[ns++] = (struct tok_sym){t->unk_id, 0, 0, (uint32_t)unk_len};
			unk_len = 0;
		}
		sy[ns++] = (struct tok_sym){id, 0, 0, 1};
	}
	if (unk_len)
		sy[ns++] = (struct tok_sym){t->unk_id, 0, 0, (uint32_t)unk_len};
	for (size_t i = 0; i < ns; i++) {
		sy[i].prev = (int32_t)i - 1;
		sy[i].next = i + 1 < ns ? (int32_t)i + 1 : -1;
	}
	size_t hn = 0;
	struct tok_merge_ent *h = t->heap;
	for (size_t i = 0; i + 1 < ns; i++) {
		uint32_t r;
		int32_t nid;
		if (merge_of(t, sy[i].id, sy[i + 1].id, &r, &nid))
			heap_push(h, &hn, (struct tok_merge_ent){r, (uint32_t)i, nid});
	}
	while (hn) {
		struct tok_merge_ent top = heap_pop(h, &hn);
		struct tok_sym *cur = &sy[top.pos];
		if (cur->len == 0 || cur->next < 0)
			continue;
		struct tok_sym *right = &sy[cur->next];
		uint32_t r;
		int32_t nid;
		if (!merge_of(t, cur->id, right->id, &r, &nid) || nid != top.new_id)
			continue; /* stale entry */
		cur->id = top.new_id;
		cur->len += right->len;
		cur->next = right->next;
		right->len = 0;
		if (cur->next >= 0)
			sy[cur->next].prev = (int32_t)top.pos;
		if (cur->prev >= 0 && merge_of(t, sy[cur->prev].id, cur->id, &r, &nid))
			heap_push(h, &hn, (struct tok_merge_ent){r, (uint32_t)cur->prev, nid});
		if (cur->next >= 0 && merge_of(t, cur->id, sy[cur->next].id, &r, &nid))
			heap_push(h, &hn, (struct tok_merge_ent){r, top.pos, nid});
	}
	size_t first = out->n;
	if (tok_ivec_reserve(out, ns))
		return -ENOMEM;
	for (int32_t i = ns ? 0 : -1; i >= 0; i = sy[i].next)
		out->v[out->n++] = sy[i].id;
	if (n < TOK_CACHE_MAX_KEY)
		return cache_put(t, s, n, out->v + first, out->n - first);
	return 0;
}

/* The ByteLevel pre-tokenizer and the model on one text piece. */
static int byte_level_piece(inf_tok *t, const char *s, size_t n, struct tok_ivec *out, k2_err *err)
{
	char *buf = NULL;
	if (t->bl_prefix_space && (n == 0 || s[0] != ' ')) {
		buf = malloc(n + 1);
		if (!buf)
			return -ENOMEM;
		buf[0] = ' ';
		memcpy(buf + 1, s, n);
		s = buf;
		n++;
	}
	int rc = 0;
	if (!t->bl_re) {
		rc = bpe_piece(t, s, n, out);
	} else {
		rc = tok_find_matches(t, t->bl_re, s, n, err);
		for (size_t i = 0; !rc && i < t->marks.n; i++)
			rc = bpe_piece(t, s + t->marks.v[i].off, t->marks.v[i].len, out);
	}
	free(buf);
	return rc;
}


int inf_tok_encode(inf_tok *t, const char *text, size_t len, int32_t **ids, size_t *n_ids,
		   k2_err *err)
{
	*ids = NULL;
	*n_ids = 0;
	if (!text && len)
		return k2_err_set(err, -EINVAL, "%s: encode: NULL text", t->path);
	struct tok_ivec out = {0};
	int rc = tok_ivec_reserve(&out, len / 3 + 1);
	if (rc)
		return k2_err_set(err, -ENOMEM, "%s: out of memory encoding %zu bytes", t->path, len);
	pthread_mutex_lock(&t->lock);
	const struct tok_pvec *a;
	if ((rc = tok_pretokenize(t, text, len, &a, err)))
		goto out;
	for (size_t i = 0; i < a->n; i++) {
		if (a->v[i].id >= 0)
			rc = tok_ivec_push(&out, a->v[i].id);
		else
			rc = byte_level_piece(t, text + a->v[i].off, a->v[i].len, &out, err);
		if (rc)
			goto out;
	}
out:
	pthread_mutex_unlock(&t->lock);
	if (rc) {
		free(out.v);
		if (rc == -ENOMEM)
			k2_err_set(err, rc, "%s: out of memory encoding %zu bytes", t->path, len);
		return rc;
	}
	*ids = out.v;
	*n_ids = out.n;
	return 0;
}

int inf_tok_encode_prompt(inf_tok *t, const char *text, size_t len, int32_t **ids,
			  size_t *n_ids, k2_err *err)
{
	int32_t bos;
	int rc = inf_tok_encode(t, text, len, ids, n_ids, err);
	if (rc < 0 || !inf_tok_bos(t, &bos))
		return rc;
	int32_t *p = realloc(*ids, sizeof(int32_t) * (*n_ids + 1));
	if (!p) {
		free(*ids);
		*ids = NULL;
		*n_ids = 0;
		return k2_err_set(err, -ENOMEM, "out of memory");
	}
	memmove(p + 1, p, sizeof(int32_t) * *n_ids);
	p[0] = bos;
	*ids = p;
	(*n_ids)++;
	return 0;
}
