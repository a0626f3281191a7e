/* tok_vocab.c — the tokenizer object and the tables every vocabulary loader
 * fills: ids and their token strings, the model vocabulary, the merges, the
 * added tokens; the object's creation and free, and the lookups tokenizer.h
 * offers (contracts in tok_impl.h and tokenizer.h). */
#include "tok_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void inf_tok_free(inf_tok *t)
{
	if (!t)
		return;
	free(t->path);
	free(t->str_off);
	free(t->str_len);
	free(t->dec_off);
	free(t->dec_len);
	free(t->special);
	free(t->strs.p);
	free(t->decs.p);
	free(t->vocab.slots);
	free(t->added_map.slots);
	free(t->merges.slots);
	free(t->added);
	tok_trie_free(&t->trie[0]);
	tok_trie_free(&t->trie[1]);
	pcre2_code_free(t->re_space);
	pcre2_code_free(t->re_alnum);
	for (size_t i = 0; i < t->n_splits; i++)
		pcre2_code_free(t->splits[i].re);
	free(t->splits);
	pcre2_code_free(t->bl_re);
	pcre2_match_data_free(t->md);
	pcre2_match_context_free(t->mctx);
	pcre2_jit_stack_free(t->jit_stack);
	free(t->pa.v);
	free(t->pb.v);
	free(t->marks.v);
	free(t->syms);
	free(t->heap);
	free(t->scratch.p);
	free(t->cache.slots);
	free(t->cache_keys.p);
	free(t->cache_vals.v);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

int tok_new(const char *path, inf_tok **out, k2_err *err)
{
	*out = NULL;
	inf_tok *t = calloc(1, sizeof(*t));
	if (!t)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", path);
	if (pthread_mutex_init(&t->lock, NULL)) {
		free(t);
		return k2_err_set(err, -ENOMEM, "%s: cannot create a lock", path);
	}
	t->path = strdup(path);
	if (!t->path) {
		inf_tok_free(t);
		return k2_err_set(err, -ENOMEM, "%s: out of memory", path);
	}
	tok_byte_level_tables(t->byte_cp, t->cp_byte);
	*out = t;
	return 0;
}

/* ------------------------------------------------------------ ids */

/* Records token string s (len bytes) as the text of id. 0 or -errno. */
static int set_token(inf_tok *t, int32_t id, const char *s, size_t len, k2_err *err)
{
	size_t off;
	if (len >= UINT32_MAX)
		return k2_err_set(err, -EINVAL, "%s: token %d is too long", t->path, id);
	if (tok_arena_add(&t->strs, s, len, &off))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	t->str_off[id] = off;
	t->str_len[id] = (uint32_t)len;
	return 0;
}

/* Makes ids [0, n) addressable (holes until set), n <= TOK_MAX_IDS. Grows
 * geometrically. 0 or -ENOMEM. */
static int grow_ids(inf_tok *t, uint32_t n, k2_err *err)
{
	if (n <= t->n_ids)
		return 0;
	if (n > t->ids_cap) {
		uint32_t cap = t->ids_cap ? t->ids_cap : 1024;
		while (cap < n)
			cap = cap > TOK_MAX_IDS / 2 ? TOK_MAX_IDS : cap * 2;
		size_t *so = realloc(t->str_off, cap * sizeof(*so));
		if (so)
			t->str_off = so;
		uint32_t *sl = realloc(t->str_len, cap * sizeof(*sl));
		if (sl)
			t->str_len = sl;
		uint8_t *sp = realloc(t->special, cap);
		if (sp)
			t->special = sp;
		if (!so || !sl || !sp)
			return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
		t->ids_cap = cap;
	}
	for (uint32_t i = t->n_ids; i < n; i++) {
		t->str_off[i] = SIZE_MAX;
		t->str_len[i] = 0;
		t->special[i] = 0;
	}
	t->n_ids = n;
	return 0;
}

/* ------------------------------------------------------------ the model */

int tok_vocab_add(inf_tok *t, const char *s, size_t len, long long id, k2_err *err)
{
	if (id < 0 || id >= TOK_MAX_IDS)
		return k2_err_set(err, -EINVAL, "%s: model.vocab[\"%.*s\"]: expected an id in [0, %u)",
				  t->path, (int)(len < 40 ? len : 40), s, TOK_MAX_IDS);
	int rc = grow_ids(t, (uint32_t)id + 1, err);
	if (rc)
		return rc;
	if (t->str_off[id] != SIZE_MAX)
		return k2_err_set(err, -EINVAL, "%s: model.vocab: id %lld is given twice", t->path, id);
	if ((rc = set_token(t, (int32_t)id, s, len, err)))
		return rc;
	size_t before = t->vocab.count;
	if (tok_strmap_put(&t->vocab, t->strs.p, t->str_off[id], len, (int32_t)id))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	if (t->vocab.count == before)
		return k2_err_set(err, -EINVAL, "%s: model.vocab: \"%.*s\" is given twice", t->path,
				  (int)(len < 40 ? len : 40), s);
	return 0;
}

int tok_merges_add(inf_tok *t, const char *a, size_t al, const char *b, size_t bl, size_t rank,
		   k2_err *err)
{
	if (rank >= UINT32_MAX / 2)
		return k2_err_set(err, -EINVAL, "%s: model.merges: too many merges", t->path);
	int32_t ia = tok_strmap_get(&t->vocab, t->strs.p, a, al);
	int32_t ib = tok_strmap_get(&t->vocab, t->strs.p, b, bl);
	t->scratch.len = 0;
	if (tok_arena_reserve(&t->scratch, al + bl + 1))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	memcpy(t->scratch.p, a, al);
	memcpy(t->scratch.p + al, b, bl);
	int32_t in = tok_strmap_get(&t->vocab, t->strs.p, t->scratch.p, al + bl);
	if (ia < 0 || ib < 0 || in < 0) {
		const char *bad = ia < 0 ? a : ib < 0 ? b : t->scratch.p;
		size_t bad_len = ia < 0 ? al : ib < 0 ? bl : al + bl;
		return k2_err_set(err, -EINVAL,
				  "%s: model.merges[%zu]: \"%.*s\" is not in the vocabulary", t->path,
				  rank, (int)(bad_len < 60 ? bad_len : 60), bad);
	}
	/* a repeated pair keeps its last rank, as HF's HashMap collect does */
	if (tok_u64map_put(&t->merges, (uint64_t)ia << 32 | (uint32_t)ib,
			   (uint64_t)rank << 32 | (uint32_t)in))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	return 0;
}

int tok_merges_add_line(inf_tok *t, const char *s, size_t len, size_t rank, k2_err *err)
{
	const char *sp = memchr(s, ' ', len);
	if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp + 1 - s)))
		return k2_err_set(err, -EINVAL, "%s: model.merges[%zu]: expected \"left right\"",
				  t->path, rank);
	size_t al = (size_t)(sp - s);
	return tok_merges_add(t, s, al, sp + 1, len - al - 1, rank, err);
}

void tok_vocab_byte_ids(inf_tok *t)
{
	for (int b = 0; b < 256; b++) {
		char s[4];
		size_t n = tok_utf8_put(t->byte_cp[b], s);
		t->byte_id[b] = tok_strmap_get(&t->vocab, t->strs.p, s, n);
	}
}

/* ------------------------------------------------------------ added tokens */

int tok_added_add(inf_tok *t, const struct tok_added *a, const char *c, size_t clen,
		  const char *where, k2_err *err)
{
	int32_t id = a->id;
	int rc = grow_ids(t, (uint32_t)id + 1, err);
	if (rc)
		return rc;
	if (t->n_added == t->added_cap) {
		size_t cap = t->added_cap ? 2 * t->added_cap : 16;
		struct tok_added *v = realloc(t->added, cap * sizeof(*v));
		if (!v)
			return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
		t->added = v;
		t->added_cap = cap;
	}
	/* A token the model already knows keeps the model's id. */
	int32_t vid = tok_strmap_get(&t->vocab, t->strs.p, c, clen);
	if (vid >= 0 && vid != id)
		return k2_err_set(err, -EINVAL,
				  "%s: %s: \"%.40s\" has id %d but the vocabulary says %d", t->path,
				  where, c, id, vid);
	if (vid < 0) {
		if (t->str_off[id] != SIZE_MAX)
			return k2_err_set(err, -EINVAL, "%s: %s: id %d is already taken", t->path,
					  where, id);
		if ((rc = set_token(t, id, c, clen, err)))
			return rc;
	}
	struct tok_added *d = &t->added[t->n_added];
	*d = *a;
	d->off = t->str_off[id];
	d->len = clen;
	if (d->special)
		t->special[id] = 1;
	if (tok_strmap_put(&t->added_map, t->strs.p, d->off, clen, id) ||
	    tok_trie_add(&t->trie[d->normalized ? 1 : 0], (const uint8_t *)t->strs.p + d->off, clen,
			 (int32_t)t->n_added))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	t->n_added++;
	return 0;
}

int tok_added_finish(inf_tok *t, k2_err *err)
{
	bool need_classes = false;
	for (size_t i = 0; i < t->n_added; i++)
		need_classes |= t->added[i].lstrip || t->added[i].rstrip || t->added[i].single_word;
	if (!need_classes)
		return 0;
	int rc = tok_regex_compile(t, "\\s", 2, false, "added-token whitespace class",
				   &t->re_space, err);
	if (rc)
		return rc;
	return tok_regex_compile(t, "[\\p{Alphabetic}\\p{N}]", 21, false, "added-token word class",
				 &t->re_alnum, err);
}

/* ------------------------------------------------------------ lookups */

uint32_t inf_tok_vocab_size(const inf_tok *t)
{
	return t->n_ids;
}

const char *inf_tok_id_to_token(const inf_tok *t, int32_t id, size_t *len)
{
	if (id < 0 || (uint32_t)id >= t->n_ids || t->str_off[id] == SIZE_MAX)
		return NULL;
	if (len)
		*len = t->str_len[id];
	return t->strs.p + t->str_off[id];
}

int32_t inf_tok_token_to_id(const inf_tok *t, const char *token, size_t len)
{
	int32_t id = tok_strmap_get(&t->added_map, t->strs.p, token, len);
	return id >= 0 ? id : tok_strmap_get(&t->vocab, t->strs.p, token, len);
}

bool inf_tok_is_special(const inf_tok *t, int32_t id)
{
	return id >= 0 && (uint32_t)id < t->n_ids && t->special[id];
}

bool inf_tok_bos(const inf_tok *t, int32_t *bos_id)
{
	if (bos_id)
		*bos_id = t->bos_id;
	return t->add_bos && t->bos_id >= 0;
}

int32_t inf_tok_eos_id(const inf_tok *t)
{
	return t->eos_id;
}
