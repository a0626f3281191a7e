/* tokenizer.c — byte-level BPE from a HuggingFace tokenizer.json, as
 * DeepSeek-V3 and Kimi-K2 ship it (contract in tokenizer.h).
 *
 * The encode pipeline follows `tokenizers` step by step:
 *   1. added tokens are split out, first those with normalized=false, then
 *      (after the normalizer, here always the identity) those with
 *      normalized=true; leftmost-longest matching, with lstrip / rstrip /
 *      single_word as AddedVocabulary::split_with_indices does;
 *   2. each Split pre-tokenizer cuts the remaining pieces with its regex
 *      (PCRE2; matches found like the onig crate's find_iter) and behavior;
 *   3. ByteLevel maps each piece's bytes to the GPT-2 alphabet (we keep bytes
 *      and map each byte straight to its single-character token id);
 *   4. BPE merges each piece by rank with a min-heap, as Word::merge_all does
 *      (lowest rank first, leftmost on ties); results are cached per piece.
 * Decoding maps each token string back to bytes (ByteLevel decoder: a token
 * with a character outside the alphabet decodes to its own UTF-8) and repairs
 * invalid UTF-8 the way Rust's String::from_utf8_lossy does.
 *
 * Loading: jansson parses the file, except that model.vocab and model.merges
 * (99% of its bytes) are read by a small strict reader of our own when the
 * file's outline allows, because jansson needs over half a second for them;
 * see "The fast path" below. */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#define TOK_MAX_IDS (1u << 24)         /* ids beyond this are refused */
#define TOK_CACHE_MAX_KEY 256          /* pieces cached when shorter (as HF) */
#define TOK_CACHE_MAX_ENTRIES 65536    /* the cache is emptied past this... */
#define TOK_CACHE_MAX_BYTES (8u << 20) /* ...or past this many key bytes */
#define TOK_JIT_STACK_MAX (8u << 20)

/* ------------------------------------------------------------ small vectors */

struct arena { /* bytes; entries referenced by offset, so growth is safe */
	char *p;
	size_t len, cap;
};

static int arena_reserve(struct arena *a, size_t extra)
{
	if (extra > SIZE_MAX / 2 - a->len)
		return -ENOMEM;
	if (a->len + extra <= a->cap)
		return 0;
	size_t cap = a->cap ? a->cap : 4096;
	while (cap < a->len + extra)
		cap *= 2;
	char *p = realloc(a->p, cap);
	if (!p)
		return -ENOMEM;
	a->p = p;
	a->cap = cap;
	return 0;
}

/* Appends n bytes. 0 or -ENOMEM. */
static int arena_cat(struct arena *a, const void *s, size_t n)
{
	if (arena_reserve(a, n))
		return -ENOMEM;
	if (n)
		memcpy(a->p + a->len, s, n);
	a->len += n;
	return 0;
}

/* Appends n bytes and a NUL; *off gets where they start. 0 or -ENOMEM. */
static int arena_add(struct arena *a, const void *s, size_t n, size_t *off)
{
	*off = a->len;
	return arena_cat(a, s, n) || arena_cat(a, "", 1) ? -ENOMEM : 0;
}

struct ivec {
	int32_t *v;
	size_t n, cap;
};

static int ivec_reserve(struct ivec *a, size_t extra)
{
	if (extra > SIZE_MAX / 8 - a->n)
		return -ENOMEM;
	if (a->n + extra <= a->cap)
		return 0;
	size_t cap = a->cap ? a->cap : 64;
	while (cap < a->n + extra)
		cap *= 2;
	int32_t *v = realloc(a->v, cap * sizeof(*v));
	if (!v)
		return -ENOMEM;
	a->v = v;
	a->cap = cap;
	return 0;
}

static int ivec_push(struct ivec *a, int32_t x)
{
	if (ivec_reserve(a, 1))
		return -ENOMEM;
	a->v[a->n++] = x;
	return 0;
}

/* A piece of the text being encoded: bytes [off, off+len), or an added
 * token (id >= 0) already decided. */
struct piece {
	size_t off, len;
	int32_t id;
	int32_t is_match; /* scratch for the Split behaviors */
};

struct pvec {
	struct piece *v;
	size_t n, cap;
};

static int pvec_push(struct pvec *a, size_t off, size_t len, int32_t id, int32_t is_match)
{
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 64;
		struct piece *v = realloc(a->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		a->v = v;
		a->cap = cap;
	}
	a->v[a->n++] = (struct piece){off, len, id, is_match};
	return 0;
}

/* ------------------------------------------------------------ hash tables */

/* String -> int32 map whose keys live in an arena given at each call.
 * Open addressing, linear probing, at most half full; 16-byte slots, since
 * loading is bound by cache misses on these tables. */
struct strmap_slot {
	uint32_t hash; /* low 32 bits of the key's XXH3 */
	uint32_t off;
	uint32_t len1; /* key length + 1; 0 marks an empty slot */
	int32_t val;
};

struct strmap {
	struct strmap_slot *slots;
	size_t cap, count; /* cap a power of two */
};

/* Makes room for `want` keys. 0 or -ENOMEM. */
static int strmap_grow(struct strmap *m, size_t want)
{
	size_t cap = m->cap ? m->cap : 1024;
	while (cap < 2 * want + 2)
		cap *= 2;
	if (cap == m->cap)
		return 0;
	if (cap > UINT32_MAX)
		return -ENOMEM;
	struct strmap_slot *s = calloc(cap, sizeof(*s));
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

static int32_t strmap_get(const struct strmap *m, const char *base, const void *key, size_t len)
{
	if (!m->cap)
		return -1;
	uint32_t h = (uint32_t)XXH3_64bits(key, len);
	for (size_t j = h & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
		const struct strmap_slot *s = &m->slots[j];
		if (!s->len1)
			return -1;
		if (s->hash == h && s->len1 - 1 == len && memcmp(base + s->off, key, len) == 0)
			return s->val;
	}
}

/* Maps the key stored at base+off (len bytes) to val, replacing an equal
 * key's value. 0 or -ENOMEM. */
static int strmap_put(struct strmap *m, const char *base, size_t off, size_t len, int32_t val)
{
	if (off > UINT32_MAX || len >= UINT32_MAX)
		return -ENOMEM;
	if ((m->count + 1) * 2 > m->cap && strmap_grow(m, m->count + 1))
		return -ENOMEM;
	uint32_t h = (uint32_t)XXH3_64bits(base + off, len);
	size_t j = h & (m->cap - 1);
	for (;; j = (j + 1) & (m->cap - 1)) {
		struct strmap_slot *s = &m->slots[j];
		if (!s->len1)
			break;
		if (s->hash == h && s->len1 - 1 == len && memcmp(base + s->off, base + off, len) == 0) {
			s->val = val;
			return 0;
		}
	}
	m->slots[j] = (struct strmap_slot){h, (uint32_t)off, (uint32_t)len + 1, val};
	m->count++;
	return 0;
}

static void strmap_clear(struct strmap *m)
{
	if (m->cap)
		memset(m->slots, 0, m->cap * sizeof(*m->slots));
	m->count = 0;
}

/* uint64 -> uint64 map for merges: (left id << 32 | right id) -> (rank << 32
 * | merged id). The all-ones key marks an empty slot (ids are < 2^24). */
struct u64_slot {
	uint64_t key, val;
};

struct u64map {
	struct u64_slot *slots;
	size_t cap, count;
};

static inline size_t u64_hash(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	return (size_t)k;
}

/* Makes room for `want` keys. 0 or -ENOMEM. */
static int u64map_grow(struct u64map *m, size_t want)
{
	size_t cap = m->cap ? m->cap : 1024;
	while (cap < 2 * want + 2)
		cap *= 2;
	if (cap == m->cap)
		return 0;
	if (cap > SIZE_MAX / sizeof(struct u64_slot))
		return -ENOMEM;
	struct u64_slot *s = malloc(cap * sizeof(*s));
	if (!s)
		return -ENOMEM;
	memset(s, 0xff, cap * sizeof(*s));
	for (size_t i = 0; i < m->cap; i++) {
		if (m->slots[i].key == UINT64_MAX)
			continue;
		size_t j = u64_hash(m->slots[i].key) & (cap - 1);
		while (s[j].key != UINT64_MAX)
			j = (j + 1) & (cap - 1);
		s[j] = m->slots[i];
	}
	free(m->slots);
	m->slots = s;
	m->cap = cap;
	return 0;
}

/* Inserts or replaces. 0 or -ENOMEM. */
static int u64map_put(struct u64map *m, uint64_t k, uint64_t v)
{
	if ((m->count + 1) * 2 > m->cap && u64map_grow(m, m->count + 1))
		return -ENOMEM;
	size_t j = u64_hash(k) & (m->cap - 1);
	while (m->slots[j].key != UINT64_MAX && m->slots[j].key != k)
		j = (j + 1) & (m->cap - 1);
	if (m->slots[j].key == UINT64_MAX)
		m->count++;
	m->slots[j] = (struct u64_slot){k, v};
	return 0;
}

static inline bool u64map_get(const struct u64map *m, uint64_t k, uint64_t *v)
{
	if (!m->cap)
		return false;
	for (size_t j = u64_hash(k) & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
		if (m->slots[j].key == k) {
			*v = m->slots[j].val;
			return true;
		}
		if (m->slots[j].key == UINT64_MAX)
			return false;
	}
}

/* ------------------------------------------------------------ byte level */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the other 68 bytes for U+0100.. in byte order. */
static void byte_level_tables(uint16_t byte_cp[256], int16_t cp_byte[324])
{
	int n = 0;
	for (int i = 0; i < 324; i++)
		cp_byte[i] = -1;
	for (int b = 0; b < 256; b++) {
		bool keep = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
		byte_cp[b] = keep ? (uint16_t)b : (uint16_t)(256 + n++);
		cp_byte[byte_cp[b]] = (int16_t)b;
	}
}

static size_t utf8_put(uint32_t cp, char *out)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xc0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xe0 | cp >> 12);
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		out[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | cp >> 18);
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	out[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* Length of the valid UTF-8 sequence at s[0..n) (n >= 1). 0 if it is not
 * one, with *bad_len the length of the invalid run; a sequence cut short by
 * the end of s but valid so far gives -(its bytes so far). Follows the Unicode "maximal subpart" rule that Rust's
 * from_utf8_lossy uses: the invalid run is the longest valid prefix, or 1. */
static int utf8_seq(const uint8_t *s, size_t n, int *bad_len)
{
	uint8_t b = s[0];
	int need;
	uint8_t lo = 0x80, hi = 0xbf;
	*bad_len = 1;
	if (b < 0x80)
		return 1;
	if (b >= 0xc2 && b <= 0xdf)
		need = 2;
	else if (b >= 0xe0 && b <= 0xef) {
		need = 3;
		if (b == 0xe0)
			lo = 0xa0;
		else if (b == 0xed)
			hi = 0x9f;
	} else if (b >= 0xf0 && b <= 0xf4) {
		need = 4;
		if (b == 0xf0)
			lo = 0x90;
		else if (b == 0xf4)
			hi = 0x8f;
	} else
		return 0;
	for (int i = 1; i < need; i++) {
		if ((size_t)i >= n)
			return -i; /* incomplete: i bytes so far are a valid prefix */
		uint8_t c = s[i];
		if (c < lo || c > hi) {
			*bad_len = i;
			return 0;
		}
		lo = 0x80;
		hi = 0xbf;
	}
	return need;
}

/* Copies in[0..n) to out making it valid UTF-8 (U+FFFD per maximal invalid
 * subpart). Unless `final`, an incomplete character at the end is left
 * unconsumed. out needs room for 3*n bytes. Returns bytes written; *used gets
 * the bytes of in consumed. */
static size_t utf8_repair(const uint8_t *in, size_t n, bool final, char *out, size_t *used)
{
	size_t i = 0, o = 0;
	while (i < n) {
		int bad;
		int k = utf8_seq(in + i, n - i, &bad);
		if (k > 0) {
			memcpy(out + o, in + i, (size_t)k);
			o += (size_t)k;
			i += (size_t)k;
			continue;
		}
		if (k < 0 && !final)
			break;
		if (k < 0)
			bad = -k;
		memcpy(out + o, "\xef\xbf\xbd", 3);
		o += 3;
		i += (size_t)bad;
	}
	*used = i;
	return o;
}

/* Byte length of the UTF-8 character at s (1 for a byte that starts none). */
static size_t utf8_step(const uint8_t *s, size_t n)
{
	int bad;
	int k = utf8_seq(s, n, &bad);
	return k > 0 ? (size_t)k : 1;
}

/* ------------------------------------------------------------ the tokenizer */

enum split_behavior {
	SPLIT_REMOVED,
	SPLIT_ISOLATED,
	SPLIT_MERGED_WITH_PREVIOUS,
	SPLIT_MERGED_WITH_NEXT,
	SPLIT_CONTIGUOUS,
};

struct split {
	pcre2_code *re;
	enum split_behavior behavior;
	bool invert;
};

struct added {
	int32_t id;
	size_t off, len; /* content, in tok->strs */
	bool special, lstrip, rstrip, normalized, single_word;
};

struct trie_node {
	uint32_t child, sibling; /* 0 = none (the root is nobody's child) */
	int32_t added;           /* index into tok->added ending here, or -1 */
	uint8_t byte;
};

struct trie {
	struct trie_node *v;
	size_t n, cap;
};

struct sym {
	int32_t id;
	int32_t prev, next;
	uint32_t len; /* bytes; 0 once merged into its left neighbour */
};

struct merge_ent {
	uint32_t rank;
	uint32_t pos;
	int32_t new_id;
};

struct inf_tok {
	char *path;
	uint32_t n_ids;        /* largest id + 1 */
	uint32_t ids_cap;      /* allocated length of the [n_ids] arrays */
	size_t *str_off;       /* [n_ids] token string in strs; SIZE_MAX = hole */
	uint32_t *str_len;     /* [n_ids] */
	size_t *dec_off;       /* [n_ids] decoded bytes in decs */
	uint32_t *dec_len;     /* [n_ids] */
	uint8_t *special;      /* [n_ids] 1 for special added tokens */
	struct arena strs, decs;
	struct strmap vocab;   /* model vocabulary: string -> id (keys in strs) */
	struct strmap added_map; /* added content -> id (keys in strs) */
	struct u64map merges;
	int32_t byte_id[256];  /* id of each byte's one-character token, or -1 */
	uint16_t byte_cp[256];
	int16_t cp_byte[324];
	int32_t unk_id;
	bool fuse_unk, ignore_merges;

	struct added *added;
	size_t n_added;
	struct trie trie[2];   /* [0] normalized=false, [1] normalized=true */
	pcre2_code *re_space, *re_alnum; /* only when some token needs them */

	struct split *splits;
	size_t n_splits;
	bool bl_prefix_space;
	pcre2_code *bl_re;     /* ByteLevel's own regex when use_regex */

	bool add_bos;
	int32_t bos_id, eos_id;

	/* Encoding state, protected by lock. */
	pthread_mutex_t lock;
	pcre2_match_data *md;
	pcre2_match_context *mctx;
	pcre2_jit_stack *jit_stack;
	struct pvec pa, pb, marks;
	struct sym *syms;
	struct merge_ent *heap;
	size_t syms_cap, heap_cap;
	struct arena scratch;
	struct strmap cache;   /* piece bytes -> offset in cache_vals */
	struct arena cache_keys;
	struct ivec cache_vals; /* at each offset: count, then the ids */
};

static void trie_free(struct trie *t)
{
	free(t->v);
	t->v = NULL;
	t->n = t->cap = 0;
}

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
	trie_free(&t->trie[0]);
	trie_free(&t->trie[1]);
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

/* ------------------------------------------------------------ loading */

/* Compiles a pattern from the file. Oniguruma's \s / \S are the Unicode
 * White_Space property; PCRE2's \s also takes U+180E, so they are rewritten.
 * Multiline because Oniguruma's Ruby syntax makes ^ and $ line anchors.
 * 0 or -EINVAL (message names the file and `what`). */
static int compile_regex(const inf_tok *t, const char *pat, size_t len, bool literal,
			 const char *what, pcre2_code **out, k2_err *err)
{
	struct arena a = {0};
	uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_MULTILINE;
	const char *src = pat;
	size_t srclen = len;
	if (literal) {
		opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | PCRE2_LITERAL; /* all it allows */
	} else {
		for (size_t i = 0; i < len; i++) {
			size_t n = pat[i] == '\\' && i + 1 < len ? 2 : 1; /* an escape is 2 bytes */
			const char *rep = pat + i;
			if (n == 2 && pat[i + 1] == 's')
				rep = "\\p{White_Space}", n = 15;
			else if (n == 2 && pat[i + 1] == 'S')
				rep = "\\P{White_Space}", n = 15;
			if (arena_cat(&a, rep, n))
				goto nomem;
			if (pat[i] == '\\')
				i++;
		}
		src = a.p ? a.p : "";
		srclen = a.len;
	}
	int ec;
	PCRE2_SIZE eoff;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, srclen, opts, &ec, &eoff, NULL);
	if (!re) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(ec, msg, sizeof(msg));
		free(a.p);
		return k2_err_set(err, -EINVAL, "%s: %s: regex error at offset %zu: %s", t->path,
				  what, (size_t)eoff, (const char *)msg);
	}
	free(a.p);
	(void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter is the fallback */
	*out = re;
	return 0;
nomem:
	free(a.p);
	return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
}

static const char *json_type_name(const json_t *j)
{
	switch (json_typeof(j)) {
	case JSON_OBJECT: return "object";
	case JSON_ARRAY: return "array";
	case JSON_STRING: return "string";
	case JSON_INTEGER: return "integer";
	case JSON_REAL: return "number";
	case JSON_TRUE:
	case JSON_FALSE: return "boolean";
	default: return "null";
	}
}

/* Reads an optional boolean member; absent or null keeps *out. */
static int get_bool(const inf_tok *t, const json_t *obj, const char *key, const char *where,
		    bool *out, k2_err *err)
{
	json_t *v = json_object_get(obj, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return k2_err_set(err, -EINVAL, "%s: %s.%s: expected a boolean, found %s", t->path,
				  where, key, json_type_name(v));
	*out = json_is_true(v);
	return 0;
}

/* Records token string s (len bytes) as the text of id. 0 or -errno. */
static int set_token(inf_tok *t, int32_t id, const char *s, size_t len, k2_err *err)
{
	size_t off;
	if (len >= UINT32_MAX)
		return k2_err_set(err, -EINVAL, "%s: token %d is too long", t->path, id);
	if (arena_add(&t->strs, s, len, &off))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	t->str_off[id] = off;
	t->str_len[id] = (uint32_t)len;
	return 0;
}

/* Makes ids [0, n) addressable (holes until set). Grows geometrically. */
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

/* One model.vocab entry. 0 or -errno. */
static int add_vocab(inf_tok *t, const char *s, size_t len, long long id, k2_err *err)
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
	if (strmap_put(&t->vocab, t->strs.p, t->str_off[id], len, (int32_t)id))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	if (t->vocab.count == before)
		return k2_err_set(err, -EINVAL, "%s: model.vocab: \"%.*s\" is given twice", t->path,
				  (int)(len < 40 ? len : 40), s);
	return 0;
}

/* Merge number `rank`: left a, right b (HF: both and their concatenation
 * must be tokens). 0 or -errno. */
static int add_merge(inf_tok *t, const char *a, size_t al, const char *b, size_t bl, size_t rank,
		     k2_err *err)
{
	if (rank >= UINT32_MAX / 2)
		return k2_err_set(err, -EINVAL, "%s: model.merges: too many merges", t->path);
	int32_t ia = strmap_get(&t->vocab, t->strs.p, a, al);
	int32_t ib = strmap_get(&t->vocab, t->strs.p, b, bl);
	t->scratch.len = 0;
	if (arena_reserve(&t->scratch, al + bl + 1))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	memcpy(t->scratch.p, a, al);
	memcpy(t->scratch.p + al, b, bl);
	int32_t in = strmap_get(&t->vocab, t->strs.p, t->scratch.p, al + bl);
	if (ia < 0 || ib < 0 || in < 0) {
		const char *bad = ia < 0 ? a : ib < 0 ? b : t->scratch.p;
		size_t bad_len = ia < 0 ? al : ib < 0 ? bl : al + bl;
		return k2_err_set(err, -EINVAL,
				  "%s: model.merges[%zu]: \"%.*s\" is not in the vocabulary", t->path,
				  rank, (int)(bad_len < 60 ? bad_len : 60), bad);
	}
	/* a repeated pair keeps its last rank, as HF's HashMap collect does */
	if (u64map_put(&t->merges, (uint64_t)ia << 32 | (uint32_t)ib,
		       (uint64_t)rank << 32 | (uint32_t)in))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	return 0;
}

/* A merge given as one "left right" string: HF requires exactly one space. */
static int add_merge_line(inf_tok *t, const char *s, size_t len, size_t rank, k2_err *err)
{
	const char *sp = memchr(s, ' ', len);
	if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp + 1 - s)))
		return k2_err_set(err, -EINVAL, "%s: model.merges[%zu]: expected \"left right\"",
				  t->path, rank);
	size_t al = (size_t)(sp - s);
	return add_merge(t, s, al, sp + 1, len - al - 1, rank, err);
}

/* ---- The fast path for model.vocab and model.merges.
 * They are 99% of a tokenizer.json (7.8 MB, 255k strings for DeepSeek-V3),
 * and jansson takes over half a second to build and free them as JSON
 * values. find_big_members() locates them with a lenient scan of the
 * document's outline; jansson then parses the document with just those two
 * values blanked, and parse_vocab_text() / parse_merges_text() read them
 * strictly (same rules as jansson: UTF-8 checked, escapes and surrogate
 * pairs decoded, control characters refused). When the outline is not what
 * the scan expects, the whole file goes through jansson instead. */

struct scan {
	const char *p;
	size_t n, i;
};

static void sc_ws(struct scan *s)
{
	while (s->i < s->n && (s->p[s->i] == ' ' || s->p[s->i] == '\n' || s->p[s->i] == '\r' ||
			       s->p[s->i] == '\t'))
		s->i++;
}

static bool sc_eat(struct scan *s, char c)
{
	sc_ws(s);
	if (s->i < s->n && s->p[s->i] == c) {
		s->i++;
		return true;
	}
	return false;
}

/* Past a string (at its quote) without decoding it. */
static bool sc_skip_string(struct scan *s)
{
	if (s->i >= s->n || s->p[s->i] != '"')
		return false;
	for (s->i++; s->i < s->n; s->i++) {
		if (s->p[s->i] == '\\')
			s->i++;
		else if (s->p[s->i] == '"') {
			s->i++;
			return true;
		}
	}
	return false;
}

/* Past any value, counting brackets (their kinds are checked later);
 * *items gets the number of members of an object or array (commas at its
 * own depth + 1), a guide for sizing tables. */
static bool sc_skip_value(struct scan *s, size_t *items)
{
	*items = 0;
	sc_ws(s);
	if (s->i >= s->n)
		return false;
	char c = s->p[s->i];
	if (c == '"')
		return sc_skip_string(s);
	if (c == '{' || c == '[') {
		size_t depth = 0;
		while (s->i < s->n) {
			c = s->p[s->i];
			if (c == '"') {
				if (!sc_skip_string(s))
					return false;
				continue;
			}
			s->i++;
			if (c == '{' || c == '[')
				depth++;
			else if ((c == '}' || c == ']') && --depth == 0)
				return (*items)++, true;
			else if (c == ',' && depth == 1)
				(*items)++;
		}
		return false;
	}
	size_t start = s->i;
	while (s->i < s->n && !strchr(",}] \t\r\n", s->p[s->i]))
		s->i++;
	return s->i > start;
}

/* Reads a key (raw, no escapes expected) and its colon into *k, *kl. */
static bool sc_key(struct scan *s, const char **k, size_t *kl)
{
	sc_ws(s);
	size_t start = s->i;
	if (!sc_skip_string(s))
		return false;
	*k = s->p + start + 1;
	*kl = s->i - start - 2;
	return sc_eat(s, ':');
}

static bool key_is(const char *k, size_t kl, const char *want)
{
	return kl == strlen(want) && memcmp(k, want, kl) == 0;
}

struct big_members {
	size_t vocab_off, vocab_len, merges_off, merges_len; /* len 0: not found */
	size_t vocab_items, merges_items;                    /* about how many */
};

static bool find_big_members(const char *p, size_t n, struct big_members *bm)
{
	struct scan s = {p, n, 0};
	memset(bm, 0, sizeof(*bm));
	if (!sc_eat(&s, '{'))
		return false;
	while (!sc_eat(&s, '}')) {
		const char *k;
		size_t kl;
		if (!sc_key(&s, &k, &kl))
			return false;
		sc_ws(&s);
		if (key_is(k, kl, "model") && s.i < n && p[s.i] == '{') {
			s.i++;
			bm->vocab_len = bm->merges_len = 0; /* a later "model" wins, as in jansson */
			while (!sc_eat(&s, '}')) {
				const char *mk;
				size_t mkl;
				if (!sc_key(&s, &mk, &mkl))
					return false;
				sc_ws(&s);
				size_t start = s.i, items;
				if (!sc_skip_value(&s, &items))
					return false;
				if (key_is(mk, mkl, "vocab")) {
					bm->vocab_off = start, bm->vocab_len = s.i - start;
					bm->vocab_items = items;
				} else if (key_is(mk, mkl, "merges")) {
					bm->merges_off = start, bm->merges_len = s.i - start;
					bm->merges_items = items;
				}
				if (!sc_eat(&s, ',') && !(s.i < n && p[s.i] == '}'))
					return false;
			}
		} else {
			size_t items;
			if (!sc_skip_value(&s, &items))
				return false;
		}
		if (!sc_eat(&s, ',') && !(s.i < n && p[s.i] == '}'))
			return false;
	}
	sc_ws(&s);
	return s.i == n && bm->vocab_len >= 2 && bm->merges_len >= 2 &&
	       p[bm->vocab_off] == '{' && p[bm->merges_off] == '[';
}

/* The file with the two big values emptied, for jansson: each becomes its
 * brackets around the newlines it had, and the last line's indentation, so
 * jansson's line and column numbers still match the file. malloc'd; NULL
 * when out of memory. */
static char *outline_copy(const char *p, size_t n, const struct big_members *bm, size_t *out_len)
{
	size_t off[2] = {bm->vocab_off, bm->merges_off}, len[2] = {bm->vocab_len, bm->merges_len};
	if (off[1] < off[0]) {
		size_t o = off[0], l = len[0];
		off[0] = off[1], len[0] = len[1];
		off[1] = o, len[1] = l;
	}
	/* a value of len bytes with L newlines, the last at offset last_nl >= L,
	 * becomes len + L - last_nl <= len bytes: n bytes are enough */
	char *c = malloc(n + 1);
	size_t k = 0, from = 0;
	for (int i = 0; c && i < 2; i++) {
		/* the values were scanned from one bracket to its match: len >= 2 */
		const char *v = p + off[i];
		memcpy(c + k, p + from, off[i] - from);
		k += off[i] - from;
		c[k++] = v[0];
		size_t last_nl = 0, lines = 0;
		for (const char *q = v; (q = memchr(q, '\n', (size_t)(v + len[i] - q))); q++)
			lines++, last_nl = (size_t)(q - v);
		from = off[i] + len[i];
		if (lines) {
			memset(c + k, '\n', lines);
			k += lines;
			memset(c + k, ' ', len[i] - 2 - last_nl);
			k += len[i] - 2 - last_nl;
		}
		c[k++] = v[len[i] - 1];
	}
	if (!c)
		return NULL;
	memcpy(c + k, p + from, n - from);
	*out_len = k + n - from;
	return c;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10
				    : -1;
}

static bool sc_hex4(struct scan *s, uint32_t *v)
{
	if (s->n - s->i < 4)
		return false;
	*v = 0;
	for (int k = 0; k < 4; k++) {
		int h = hexval(s->p[s->i + (size_t)k]);
		if (h < 0)
			return false;
		*v = *v << 4 | (uint32_t)h;
	}
	s->i += 4;
	return true;
}

/* Decodes the string at s->i into out (appended, NUL-terminated); *off and
 * *len locate it. NULL on success, else what is wrong. */
static const char *sc_string(struct scan *s, struct arena *out, size_t *off, size_t *len)
{
	sc_ws(s);
	if (s->i >= s->n || s->p[s->i] != '"')
		return "expected a string";
	s->i++;
	*off = out->len;
	for (;;) {
		size_t run = s->i;
		while (run < s->n && s->p[run] != '"' && s->p[run] != '\\' &&
		       (uint8_t)s->p[run] >= 0x20 && (uint8_t)s->p[run] < 0x80)
			run++;
		if (run > s->i) {
			if (arena_reserve(out, run - s->i + 1))
				return "out of memory";
			memcpy(out->p + out->len, s->p + s->i, run - s->i);
			out->len += run - s->i;
			s->i = run;
		}
		if (s->i >= s->n)
			return "unterminated string";
		uint8_t c = (uint8_t)s->p[s->i];
		char u[4];
		size_t ul;
		if (c == '"') {
			s->i++;
			break;
		} else if (c < 0x20) {
			return "control character in a string";
		} else if (c >= 0x80) {
			int bad;
			int k = utf8_seq((const uint8_t *)s->p + s->i, s->n - s->i, &bad);
			if (k <= 0)
				return "invalid UTF-8";
			memcpy(u, s->p + s->i, (size_t)k);
			ul = (size_t)k;
			s->i += (size_t)k;
		} else { /* backslash */
			if (++s->i >= s->n)
				return "unterminated string";
			char e = s->p[s->i++];
			const char *simple = strchr("\"\\/bfnrt", e);
			if (e && simple) {
				u[0] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
				ul = 1;
			} else if (e == 'u') {
				uint32_t cp, lo;
				if (!sc_hex4(s, &cp))
					return "bad \\u escape";
				if (cp >= 0xdc00 && cp <= 0xdfff)
					return "lone low surrogate";
				if (cp >= 0xd800 && cp <= 0xdbff) {
					if (s->n - s->i < 2 || s->p[s->i] != '\\' || s->p[s->i + 1] != 'u')
						return "lone high surrogate";
					s->i += 2;
					if (!sc_hex4(s, &lo) || lo < 0xdc00 || lo > 0xdfff)
						return "bad surrogate pair";
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				}
				ul = utf8_put(cp, u);
			} else {
				return "bad escape";
			}
		}
		if (arena_reserve(out, ul + 1))
			return "out of memory";
		memcpy(out->p + out->len, u, ul);
		out->len += ul;
	}
	*len = out->len - *off;
	if (arena_reserve(out, 1))
		return "out of memory";
	out->p[out->len++] = 0;
	return NULL;
}

static const char *sc_int(struct scan *s, long long *v)
{
	sc_ws(s);
	bool neg = s->i < s->n && s->p[s->i] == '-';
	size_t start = s->i += neg;
	*v = 0;
	while (s->i < s->n && s->p[s->i] >= '0' && s->p[s->i] <= '9') {
		if (s->i - start >= 12)
			return "number too large";
		*v = *v * 10 + (s->p[s->i++] - '0');
	}
	if (s->i == start || (s->p[start] == '0' && s->i - start > 1))
		return "expected an integer";
	if (s->i < s->n && strchr(".eE", s->p[s->i]))
		return "expected an integer";
	if (neg)
		*v = -*v;
	return NULL;
}

static int sc_fail(const inf_tok *t, const char *what, size_t at, const char *why, k2_err *err)
{
	return k2_err_set(err, strcmp(why, "out of memory") ? -EINVAL : -ENOMEM,
			  "%s: invalid JSON in %s at byte offset %zu: %s", t->path, what, at, why);
}

static int parse_vocab_text(inf_tok *t, const char *p, size_t off, size_t n, size_t items,
			    k2_err *err)
{
	struct scan s = {p + off, n, 0};
	struct arena key = {0};
	const char *why = NULL;
	int rc = strmap_grow(&t->vocab, items < TOK_MAX_IDS ? items : TOK_MAX_IDS) ? -ENOMEM : 0;
	if (rc)
		return k2_err_set(err, rc, "%s: out of memory", t->path);
	if (!sc_eat(&s, '{')) {
		why = "expected an object";
		goto bad;
	}
	if (sc_eat(&s, '}'))
		goto end;
	do {
		size_t ko, kl;
		long long id;
		key.len = 0;
		if ((why = sc_string(&s, &key, &ko, &kl)))
			goto bad;
		if (!sc_eat(&s, ':')) {
			why = "expected ':'";
			goto bad;
		}
		sc_ws(&s);
		if (s.i < s.n && s.p[s.i] != '-' && (s.p[s.i] < '0' || s.p[s.i] > '9')) {
			rc = add_vocab(t, key.p + ko, kl, -1, err); /* names the entry */
			goto out;
		}
		if ((why = sc_int(&s, &id)))
			goto bad;
		if ((rc = add_vocab(t, key.p + ko, kl, id, err)))
			goto out;
	} while (sc_eat(&s, ','));
	if (!sc_eat(&s, '}')) {
		why = "expected ',' or '}'";
		goto bad;
	}
end:
	sc_ws(&s);
	if (s.i != s.n)
		why = "trailing bytes";
bad:
	if (why)
		rc = sc_fail(t, "model.vocab", off + s.i, why, err);
out:
	free(key.p);
	return rc;
}

static int parse_merges_text(inf_tok *t, const char *p, size_t off, size_t n, size_t items,
			     k2_err *err)
{
	struct scan s = {p + off, n, 0};
	struct arena str = {0};
	const char *why = NULL;
	int rc = u64map_grow(&t->merges, items < TOK_MAX_IDS ? items : TOK_MAX_IDS) ? -ENOMEM : 0;
	if (rc)
		return k2_err_set(err, rc, "%s: out of memory", t->path);
	size_t rank = 0;
	if (!sc_eat(&s, '[')) {
		why = "expected an array";
		goto bad;
	}
	if (sc_eat(&s, ']'))
		goto end;
	do {
		size_t ao, al, bo, bl;
		str.len = 0;
		sc_ws(&s);
		if (s.i < s.n && s.p[s.i] == '"') {
			if ((why = sc_string(&s, &str, &ao, &al)))
				goto bad;
			rc = add_merge_line(t, str.p + ao, al, rank, err);
		} else if (sc_eat(&s, '[')) {
			if ((why = sc_string(&s, &str, &ao, &al)))
				goto bad;
			if (!sc_eat(&s, ',')) {
				why = "expected a pair of strings";
				goto bad;
			}
			if ((why = sc_string(&s, &str, &bo, &bl)))
				goto bad;
			if (!sc_eat(&s, ']')) {
				why = "expected a pair of strings";
				goto bad;
			}
			rc = add_merge(t, str.p + ao, al, str.p + bo, bl, rank, err);
		} else {
			why = "expected a string or a pair of strings";
			goto bad;
		}
		if (rc)
			goto out;
		rank++;
	} while (sc_eat(&s, ','));
	if (!sc_eat(&s, ']')) {
		why = "expected ',' or ']'";
		goto bad;
	}
end:
	sc_ws(&s);
	if (s.i != s.n)
		why = "trailing bytes";
bad:
	if (why)
		rc = sc_fail(t, "model.merges", off + s.i, why, err);
out:
	free(str.p);
	return rc;
}

/* model.vocab and model.merges through jansson (the slow path). */
static int parse_vocab_json(inf_tok *t, const json_t *vocab, k2_err *err)
{
	if (!json_is_object(vocab))
		return k2_err_set(err, -EINVAL, "%s: model.vocab missing or not an object", t->path);
	const char *key;
	size_t klen;
	json_t *val;
	json_object_keylen_foreach((json_t *)vocab, key, klen, val) {
		long long id = json_is_integer(val) ? (long long)json_integer_value(val) : -1;
		int rc = add_vocab(t, key, klen, id, err);
		if (rc)
			return rc;
	}
	return 0;
}

static int parse_merges_json(inf_tok *t, const json_t *merges, k2_err *err)
{
	if (!json_is_array(merges))
		return k2_err_set(err, -EINVAL, "%s: model.merges missing or not an array", t->path);
	for (size_t i = 0; i < json_array_size(merges); i++) {
		json_t *m = json_array_get(merges, i);
		int rc;
		if (json_is_string(m)) {
			rc = add_merge_line(t, json_string_value(m), json_string_length(m), i, err);
		} else if (json_is_array(m) && json_array_size(m) == 2 &&
			   json_is_string(json_array_get(m, 0)) &&
			   json_is_string(json_array_get(m, 1))) {
			json_t *a = json_array_get(m, 0), *b = json_array_get(m, 1);
			rc = add_merge(t, json_string_value(a), json_string_length(a),
				       json_string_value(b), json_string_length(b), i, err);
		} else {
			rc = k2_err_set(err, -EINVAL,
					"%s: model.merges[%zu]: expected a string or a pair of "
					"strings, found %s",
					t->path, i, json_type_name(m));
		}
		if (rc)
			return rc;
	}
	return 0;
}

/* `big` (may be NULL) locates model.vocab and model.merges in the file text
 * `text`, in which case jansson saw them blanked. */
static int parse_model(inf_tok *t, const json_t *model, const char *text,
		       const struct big_members *big, k2_err *err)
{
	if (!json_is_object(model))
		return k2_err_set(err, -EINVAL, "%s: \"model\" missing or not an object", t->path);
	const char *type = json_string_value(json_object_get(model, "type"));
	if (!type)
		return k2_err_set(err, -EINVAL, "%s: model.type missing; only BPE is supported",
				  t->path);
	if (strcmp(type, "BPE") != 0)
		return k2_err_set(err, -ENOTSUP,
				  "%s: unsupported model type \"%s\" (only BPE is supported)",
				  t->path, type);
	json_t *v = json_object_get(model, "dropout");
	if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0.0))
		return k2_err_set(err, -ENOTSUP, "%s: unsupported BPE feature: dropout", t->path);
	const char *unsupported_strings[] = {"continuing_subword_prefix", "end_of_word_suffix"};
	for (size_t i = 0; i < 2; i++) {
		v = json_object_get(model, unsupported_strings[i]);
		if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
			return k2_err_set(err, -ENOTSUP, "%s: unsupported BPE feature: %s", t->path,
					  unsupported_strings[i]);
	}
	bool byte_fallback = false;
	int rc = get_bool(t, model, "byte_fallback", "model", &byte_fallback, err);
	if (rc)
		return rc;
	if (byte_fallback)
		return k2_err_set(err, -ENOTSUP, "%s: unsupported BPE feature: byte_fallback",
				  t->path);
	if ((rc = get_bool(t, model, "fuse_unk", "model", &t->fuse_unk, err)) ||
	    (rc = get_bool(t, model, "ignore_merges", "model", &t->ignore_merges, err)))
		return rc;

	rc = big ? parse_vocab_text(t, text, big->vocab_off, big->vocab_len, big->vocab_items, err)
		 : parse_vocab_json(t, json_object_get(model, "vocab"), err);
	if (rc)
		return rc;
	if (t->vocab.count == 0)
		return k2_err_set(err, -EINVAL, "%s: model.vocab is empty", t->path);

	t->unk_id = -1;
	v = json_object_get(model, "unk_token");
	if (v && !json_is_null(v)) {
		if (!json_is_string(v))
			return k2_err_set(err, -EINVAL, "%s: model.unk_token: expected a string",
					  t->path);
		t->unk_id = strmap_get(&t->vocab, t->strs.p, json_string_value(v),
				       json_string_length(v));
		if (t->unk_id < 0)
			return k2_err_set(err, -EINVAL,
					  "%s: model.unk_token \"%.40s\" is not in the vocabulary",
					  t->path, json_string_value(v));
	}
	for (int b = 0; b < 256; b++) {
		char s[4];
		size_t n = utf8_put(t->byte_cp[b], s);
		t->byte_id[b] = strmap_get(&t->vocab, t->strs.p, s, n);
	}
	return big ? parse_merges_text(t, text, big->merges_off, big->merges_len, big->merges_items,
				       err)
		   : parse_merges_json(t, json_object_get(model, "merges"), err);
}

static int trie_add(struct trie *tr, const uint8_t *s, size_t n, int32_t idx)
{
	if (!tr->n) {
		tr->v = malloc(64 * sizeof(*tr->v));
		if (!tr->v)
			return -ENOMEM;
		tr->cap = 64;
		tr->v[0] = (struct trie_node){0, 0, -1, 0};
		tr->n = 1;
	}
	uint32_t node = 0;
	for (size_t i = 0; i < n; i++) {
		uint32_t c = tr->v[node].child;
		while (c && tr->v[c].byte != s[i])
			c = tr->v[c].sibling;
		if (!c) {
			if (tr->n == tr->cap) {
				struct trie_node *v = realloc(tr->v, tr->cap * 2 * sizeof(*v));
				if (!v)
					return -ENOMEM;
				tr->v = v;
				tr->cap *= 2;
			}
			if (tr->n >= UINT32_MAX)
				return -ENOMEM;
			c = (uint32_t)tr->n++;
			tr->v[c] = (struct trie_node){0, tr->v[node].child, -1, s[i]};
			tr->v[node].child = c;
		}
		node = c;
	}
	if (tr->v[node].added < 0) /* the same content twice: the first wins */
		tr->v[node].added = idx;
	return 0;
}

/* Longest added token starting at s[0..n); its index, *mlen its length, or -1. */
static int32_t trie_longest(const struct trie *tr, const uint8_t *s, size_t n, size_t *mlen)
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

static int parse_added(inf_tok *t, const json_t *arr, k2_err *err)
{
	if (!arr || json_is_null(arr))
		return 0;
	if (!json_is_array(arr))
		return k2_err_set(err, -EINVAL, "%s: added_tokens: expected an array", t->path);
	size_t n = json_array_size(arr);
	if (n > TOK_MAX_IDS)
		return k2_err_set(err, -EINVAL, "%s: added_tokens: too many (%zu)", t->path, n);
	t->added = calloc(n ? n : 1, sizeof(*t->added));
	if (!t->added)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	bool need_classes = false;
	json_int_t max_id = -1;
	for (size_t i = 0; i < n; i++) {
		json_t *jid = json_object_get(json_array_get(arr, i), "id");
		if (json_is_integer(jid) && json_integer_value(jid) > max_id &&
		    json_integer_value(jid) < TOK_MAX_IDS)
			max_id = json_integer_value(jid);
	}
	int rc0 = grow_ids(t, (uint32_t)(max_id + 1), err);
	if (rc0)
		return rc0;
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(arr, i);
		char where[48];
		snprintf(where, sizeof(where), "added_tokens[%zu]", i);
		if (!json_is_object(o))
			return k2_err_set(err, -EINVAL, "%s: %s: expected an object", t->path, where);
		json_t *jid = json_object_get(o, "id");
		json_t *jc = json_object_get(o, "content");
		json_int_t id = json_is_integer(jid) ? json_integer_value(jid) : -1;
		if (id < 0 || id >= TOK_MAX_IDS)
			return k2_err_set(err, -EINVAL, "%s: %s.id: expected an id in [0, %u)",
					  t->path, where, TOK_MAX_IDS);
		if (!json_is_string(jc) || json_string_length(jc) == 0)
			return k2_err_set(err, -EINVAL, "%s: %s.content: expected a non-empty string",
					  t->path, where);
		struct added *a = &t->added[t->n_added];
		a->id = (int32_t)id;
		int rc;
		if ((rc = get_bool(t, o, "special", where, &a->special, err)) ||
		    (rc = get_bool(t, o, "lstrip", where, &a->lstrip, err)) ||
		    (rc = get_bool(t, o, "rstrip", where, &a->rstrip, err)) ||
		    (rc = get_bool(t, o, "normalized", where, &a->normalized, err)) ||
		    (rc = get_bool(t, o, "single_word", where, &a->single_word, err)))
			return rc;
		const char *c = json_string_value(jc);
		size_t clen = json_string_length(jc);
		/* A token the model already knows keeps the model's id. */
		int32_t vid = strmap_get(&t->vocab, t->strs.p, c, clen);
		if (vid >= 0 && vid != a->id)
			return k2_err_set(err, -EINVAL,
					  "%s: %s: \"%.40s\" has id %d but the vocabulary says %d",
					  t->path, where, c, a->id, vid);
		if (vid < 0) {
			if (t->str_off[id] != SIZE_MAX)
				return k2_err_set(err, -EINVAL, "%s: %s: id %d is already taken",
						  t->path, where, a->id);
			if ((rc = set_token(t, a->id, c, clen, err)))
				return rc;
		}
		a->off = t->str_off[id];
		a->len = clen;
		if (a->special)
			t->special[id] = 1;
		if (strmap_put(&t->added_map, t->strs.p, a->off, clen, a->id) ||
		    trie_add(&t->trie[a->normalized ? 1 : 0], (const uint8_t *)t->strs.p + a->off,
			     clen, (int32_t)t->n_added))
			return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
		need_classes |= a->lstrip || a->rstrip || a->single_word;
		t->n_added++;
	}
	if (need_classes) {
		int rc = compile_regex(t, "\\s", 2, false, "added-token whitespace class",
				       &t->re_space, err);
		if (rc)
			return rc;
		rc = compile_regex(t, "[\\p{Alphabetic}\\p{N}]", 21, false,
				   "added-token word class", &t->re_alnum, err);
		if (rc)
			return rc;
	}
	return 0;
}

static int check_normalizer(const inf_tok *t, const json_t *n, int depth, k2_err *err)
{
	if (!n || json_is_null(n))
		return 0;
	const char *type = json_string_value(json_object_get(n, "type"));
	if (type && strcmp(type, "Sequence") == 0 && depth < 8) {
		json_t *list = json_object_get(n, "normalizers");
		if (!json_is_array(list))
			return k2_err_set(err, -EINVAL, "%s: normalizer Sequence without a list",
					  t->path);
		for (size_t i = 0; i < json_array_size(list); i++) {
			int rc = check_normalizer(t, json_array_get(list, i), depth + 1, err);
			if (rc)
				return rc;
		}
		return 0;
	}
	return k2_err_set(err, -ENOTSUP,
			  "%s: unsupported normalizer type \"%s\" (only none or an empty "
			  "Sequence is supported)",
			  t->path, type ? type : "?");
}

static int parse_split(inf_tok *t, const json_t *o, size_t i, k2_err *err)
{
	struct split *s = &t->splits[t->n_splits];
	char what[64];
	snprintf(what, sizeof(what), "pre_tokenizer Split %zu", i);
	json_t *pat = json_object_get(o, "pattern");
	json_t *re = json_object_get(pat, "Regex");
	json_t *str = json_object_get(pat, "String");
	json_t *p = json_is_string(re) ? re : str;
	if (!json_is_string(p))
		return k2_err_set(err, -EINVAL, "%s: %s: pattern is not {\"Regex\"|\"String\": ...}",
				  t->path, what);
	const char *beh = json_string_value(json_object_get(o, "behavior"));
	static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
					    "MergedWithNext", "Contiguous"};
	size_t k = 0;
	while (beh && k < 5 && strcmp(beh, names[k]) != 0)
		k++;
	if (!beh || k == 5)
		return k2_err_set(err, -ENOTSUP, "%s: %s: unsupported behavior \"%s\"", t->path,
				  what, beh ? beh : "?");
	s->behavior = (enum split_behavior)k;
	s->invert = false;
	int rc = get_bool(t, o, "invert", what, &s->invert, err);
	if (rc)
		return rc;
	s->re = NULL;
	if (p == str && json_string_length(p) == 0) {
		t->n_splits++;
		return 0;
	}
	rc = compile_regex(t, json_string_value(p), json_string_length(p), p == str, what, &s->re,
			   err);
	if (rc)
		return rc;
	t->n_splits++;
	return 0;
}

static const char gpt2_pattern[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int parse_pre_tokenizer(inf_tok *t, const json_t *pt, k2_err *err)
{
	if (!json_is_object(pt))
		return k2_err_set(err, -ENOTSUP,
				  "%s: unsupported pre_tokenizer (none): a ByteLevel pre-tokenizer "
				  "is required",
				  t->path);
	const char *type = json_string_value(json_object_get(pt, "type"));
	json_t *list;
	json_t *one = NULL;
	if (type && strcmp(type, "Sequence") == 0) {
		list = json_object_get(pt, "pretokenizers");
		if (!json_is_array(list))
			return k2_err_set(err, -EINVAL,
					  "%s: pre_tokenizer Sequence without a pretokenizers list",
					  t->path);
	} else {
		list = one = json_array();
		if (!one || json_array_append(one, (json_t *)pt))
			return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	}
	int rc = 0;
	size_t n = json_array_size(list);
	t->splits = calloc(n ? n : 1, sizeof(*t->splits));
	if (!t->splits) {
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
		goto out;
	}
	bool byte_level = false;
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(list, i);
		const char *ty = json_string_value(json_object_get(o, "type"));
		if (byte_level) {
			rc = k2_err_set(err, -ENOTSUP,
					"%s: unsupported pre_tokenizer: \"%s\" after ByteLevel "
					"(ByteLevel must come last)",
					t->path, ty ? ty : "?");
			goto out;
		}
		if (ty && strcmp(ty, "Split") == 0) {
			if ((rc = parse_split(t, o, i, err)))
				goto out;
		} else if (ty && strcmp(ty, "ByteLevel") == 0) {
			bool use_regex = true;
			t->bl_prefix_space = true;
			if ((rc = get_bool(t, o, "add_prefix_space", "pre_tokenizer ByteLevel",
					   &t->bl_prefix_space, err)) ||
			    (rc = get_bool(t, o, "use_regex", "pre_tokenizer ByteLevel", &use_regex,
					   err)))
				goto out;
			if (use_regex &&
			    (rc = compile_regex(t, gpt2_pattern, sizeof(gpt2_pattern) - 1, false,
						"ByteLevel regex", &t->bl_re, err)))
				goto out;
			byte_level = true;
		} else {
			rc = k2_err_set(err, -ENOTSUP,
					"%s: unsupported pre_tokenizer type \"%s\" (only Split and "
					"ByteLevel are supported)",
					t->path, ty ? ty : "?");
			goto out;
		}
	}
	if (!byte_level)
		rc = k2_err_set(err, -ENOTSUP,
				"%s: unsupported pre_tokenizer: no ByteLevel step (only byte-level "
				"BPE is supported)",
				t->path);
out:
	json_decref(one);
	return rc;
}

static int check_decoder(const inf_tok *t, const json_t *d, k2_err *err)
{
	const char *type = json_string_value(json_object_get(d, "type"));
	if (type && strcmp(type, "ByteLevel") == 0)
		return 0;
	return k2_err_set(err, -ENOTSUP,
			  "%s: unsupported decoder type \"%s\" (only ByteLevel is supported)",
			  t->path, type ? type : "none");
}

/* The ByteLevel decoder's bytes for every token. */
static int build_decoded(inf_tok *t, k2_err *err)
{
	t->dec_off = malloc(t->n_ids * sizeof(*t->dec_off));
	t->dec_len = malloc(t->n_ids * sizeof(*t->dec_len));
	if (!t->dec_off || !t->dec_len || arena_reserve(&t->decs, t->strs.len))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	for (uint32_t id = 0; id < t->n_ids; id++) {
		t->dec_off[id] = t->decs.len;
		t->dec_len[id] = 0;
		if (t->str_off[id] == SIZE_MAX)
			continue;
		const uint8_t *s = (const uint8_t *)t->strs.p + t->str_off[id];
		size_t n = t->str_len[id];
		/* every character maps to at most one byte, so n + 1 is room enough */
		if (arena_reserve(&t->decs, n + 1))
			return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
		char *o = t->decs.p + t->decs.len;
		size_t k = 0, i = 0;
		while (i < n) {
			int bad;
			int l = utf8_seq(s + i, n - i, &bad);
			uint32_t cp = 0x110000;
			if (l == 1)
				cp = s[i];
			else if (l == 2)
				cp = (uint32_t)(s[i] & 0x1f) << 6 | (s[i + 1] & 0x3f);
			if (cp >= 324 || t->cp_byte[cp] < 0)
				break;
			o[k++] = (char)t->cp_byte[cp];
			i += (size_t)l;
		}
		if (i < n) { /* a character outside the alphabet: the token's own bytes */
			memcpy(o, s, n);
			k = n;
		}
		o[k] = 0;
		t->dec_len[id] = (uint32_t)k;
		t->decs.len += k + 1;
	}
	return 0;
}

/* tokenizer_config.json beside path: add_bos_token, bos_token, eos_token. */
static int parse_config(inf_tok *t, k2_err *err)
{
	t->bos_id = t->eos_id = -1;
	const char *slash = strrchr(t->path, '/');
	size_t dlen = slash ? (size_t)(slash - t->path + 1) : 0;
	char *cpath = malloc(dlen + sizeof("tokenizer_config.json"));
	if (!cpath)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	memcpy(cpath, t->path, dlen);
	strcpy(cpath + dlen, "tokenizer_config.json");
	int rc = 0;
	FILE *f = fopen(cpath, "rb");
	if (!f) {
		if (errno != ENOENT)
			rc = k2_err_set(err, -errno, "%s: cannot open: %s", cpath, strerror(errno));
		free(cpath);
		return rc;
	}
	json_error_t je;
	json_t *root = json_loadf(f, JSON_ALLOW_NUL, &je);
	fclose(f);
	if (!root || !json_is_object(root)) {
		rc = root ? k2_err_set(err, -EINVAL, "%s: expected a JSON object", cpath)
			  : k2_err_set(err, -EINVAL, "%s: invalid JSON at line %d column %d: %s",
				       cpath, je.line, je.column, je.text);
		goto out;
	}
	if ((rc = get_bool(t, root, "add_bos_token", "tokenizer_config", &t->add_bos, err)))
		goto out;
	const char *keys[2] = {"bos_token", "eos_token"};
	int32_t *ids[2] = {&t->bos_id, &t->eos_id};
	for (int i = 0; i < 2; i++) {
		json_t *v = json_object_get(root, keys[i]);
		if (json_is_object(v))
			v = json_object_get(v, "content");
		if (!v || json_is_null(v))
			continue;
		if (!json_is_string(v)) {
			rc = k2_err_set(err, -EINVAL, "%s: %s: expected a string or an AddedToken",
					cpath, keys[i]);
			goto out;
		}
		*ids[i] = inf_tok_token_to_id(t, json_string_value(v), json_string_length(v));
		if (*ids[i] < 0) {
			rc = k2_err_set(err, -EINVAL, "%s: %s \"%.60s\" is not a token of %s", cpath,
					keys[i], json_string_value(v), t->path);
			goto out;
		}
	}
out:
	json_decref(root);
	free(cpath);
	return rc;
}

#define TOK_MAX_FILE (1ull << 31) /* tokenizer.json files are megabytes */

/* Reads t->path whole into a malloc'd buffer. 0 or -errno. */
static int read_file(const inf_tok *t, char **text, size_t *len, k2_err *err)
{
	FILE *f = fopen(t->path, "rb");
	if (!f)
		return k2_err_set(err, -errno, "%s: cannot open: %s", t->path, strerror(errno));
	struct stat st;
	size_t cap = 1 << 20, n = 0;
	if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
	    (unsigned long long)st.st_size < TOK_MAX_FILE)
		cap = (size_t)st.st_size + 1; /* +1: the loop stops on a short read */
	char *buf = malloc(cap);
	while (buf) {
		n += fread(buf + n, 1, cap - n, f);
		if (n < cap)
			break;
		char *nb = cap < TOK_MAX_FILE ? realloc(buf, cap * 2) : NULL;
		if (!nb) {
			free(buf);
			buf = NULL;
			break;
		}
		buf = nb;
		cap *= 2;
	}
	int rc = 0;
	if (!buf)
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory or larger than %llu bytes",
				t->path, TOK_MAX_FILE);
	else if (ferror(f))
		rc = k2_err_set(err, -EIO, "%s: read error", t->path);
	fclose(f);
	if (rc) {
		free(buf);
		return rc;
	}
	*text = buf;
	*len = n;
	return 0;
}

int inf_tok_load(const char *path, inf_tok **out, k2_err *err)
{
	*out = NULL;
	inf_tok *t = calloc(1, sizeof(*t));
	if (!t)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", path);
	if (pthread_mutex_init(&t->lock, NULL)) {
		free(t);
		return k2_err_set(err, -ENOMEM, "%s: cannot create a lock", path);
	}
	int rc;
	json_t *root = NULL;
	json_error_t je;
	char *text = NULL;
	size_t len = 0;
	t->path = strdup(path);
	if (!t->path) {
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory", path);
		goto fail;
	}
	byte_level_tables(t->byte_cp, t->cp_byte);
	if ((rc = read_file(t, &text, &len, err)))
		goto fail;
	struct big_members big;
	size_t copy_len;
	bool fast = find_big_members(text, len, &big);
	if (fast) {
		char *copy = outline_copy(text, len, &big, &copy_len);
		if (!copy) {
			rc = k2_err_set(err, -ENOMEM, "%s: out of memory", path);
			goto fail;
		}
		root = json_loadb(copy, copy_len, JSON_ALLOW_NUL, &je);
		free(copy);
	} else {
		root = json_loadb(text, len, JSON_ALLOW_NUL, &je);
	}
	if (!root) {
		rc = k2_err_set(err, -EINVAL, "%s: invalid JSON at line %d column %d: %s", path,
				je.line, je.column, je.text);
		goto fail;
	}
	if (!json_is_object(root)) {
		rc = k2_err_set(err, -EINVAL, "%s: expected a JSON object at the top", path);
		goto fail;
	}
	if ((rc = parse_model(t, json_object_get(root, "model"), text, fast ? &big : NULL, err)) ||
	    (rc = parse_added(t, json_object_get(root, "added_tokens"), err)) ||
	    (rc = check_normalizer(t, json_object_get(root, "normalizer"), 0, err)) ||
	    (rc = parse_pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), err)) ||
	    (rc = check_decoder(t, json_object_get(root, "decoder"), err)) ||
	    (rc = build_decoded(t, err)) || (rc = parse_config(t, err)))
		goto fail;
	json_decref(root);
	root = NULL;
	free(text);
	text = NULL;

	t->md = pcre2_match_data_create(1, NULL);
	t->mctx = pcre2_match_context_create(NULL);
	t->jit_stack = pcre2_jit_stack_create(32 * 1024, TOK_JIT_STACK_MAX, NULL);
	if (!t->md || !t->mctx) {
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory", path);
		goto fail;
	}
	if (t->jit_stack)
		pcre2_jit_stack_assign(t->mctx, NULL, t->jit_stack);
	*out = t;
	return 0;
fail:
	json_decref(root);
	free(text);
	inf_tok_free(t);
	return rc;
}

/* ------------------------------------------------------------ accessors */

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
	int32_t id = strmap_get(&t->added_map, t->strs.p, token, len);
	return id >= 0 ? id : strmap_get(&t->vocab, t->strs.p, token, len);
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

int inf_tok_decode_id(const inf_tok *t, int32_t id, const char **bytes, size_t *len)
{
	if (id < 0 || (uint32_t)id >= t->n_ids || t->str_off[id] == SIZE_MAX)
		return -EINVAL;
	*bytes = t->decs.p + t->dec_off[id];
	*len = t->dec_len[id];
	return 0;
}

/* ------------------------------------------------------------ encoding */

/* Runs re on subject[0..n) from `from`; 1 and [*s, *e) on a match, 0 when
 * none, -EINVAL on a PCRE2 failure (limits). */
static int re_find(inf_tok *t, const pcre2_code *re, const char *subj, size_t n, size_t from,
		   uint32_t opts, size_t *s, size_t *e, k2_err *err)
{
	int rc = pcre2_match(re, (PCRE2_SPTR)subj, n, from, opts, t->md, t->mctx);
	if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
		rc = pcre2_match(re, (PCRE2_SPTR)subj, n, from, opts | PCRE2_NO_JIT, t->md, t->mctx);
	if (rc == PCRE2_ERROR_NOMATCH)
		return 0;
	if (rc < 0) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(rc, msg, sizeof(msg));
		return k2_err_set(err, -EINVAL, "%s: regex failed on a %zu-byte piece: %s",
				  t->path, n, (const char *)msg);
	}
	PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
	*s = ov[0];
	*e = ov[1];
	return 1;
}

/* Whether the character at s[0..n) is in class re (anchored). */
static bool char_in(inf_tok *t, const pcre2_code *re, const char *s, size_t n)
{
	if (!n)
		return false;
	size_t k = utf8_step((const uint8_t *)s, n);
	size_t a, b;
	return re_find(t, re, s, k, 0, PCRE2_ANCHORED, &a, &b, NULL) == 1;
}

/* Start of the character that ends at s[end] (exclusive), for end > 0. */
static size_t char_before(const char *s, size_t end)
{
	size_t i = end - 1;
	while (i > 0 && end - i < 4 && ((uint8_t)s[i] & 0xc0) == 0x80)
		i--;
	if (utf8_step((const uint8_t *)s + i, end - i) != end - i)
		i = end - 1; /* not one character: the last byte stands alone */
	return i;
}

/* Splits the text pieces of in on the added tokens of trie `which`, into out
 * (AddedVocabulary::split_with_indices). 0 or -ENOMEM. */
static int split_added(inf_tok *t, int which, const char *text, const struct pvec *in,
		       struct pvec *out)
{
	const struct trie *tr = &t->trie[which];
	out->n = 0;
	for (size_t p = 0; p < in->n; p++) {
		const struct piece *pc = &in->v[p];
		if (pc->id >= 0 || !tr->n) {
			if (pvec_push(out, pc->off, pc->len, pc->id, 0))
				return -ENOMEM;
			continue;
		}
		const char *s = text + pc->off;
		size_t n = pc->len, start_offset = 0, i = 0;
		while (i < n) {
			size_t mlen = 0;
			int32_t k = trie_longest(tr, (const uint8_t *)s + i, n - i, &mlen);
			if (k < 0) {
				i++;
				continue;
			}
			const struct added *a = &t->added[k];
			size_t start = i, stop = i + mlen;
			i = stop;
			if (a->single_word) {
				bool start_space = start == 0 ||
					!char_in(t, t->re_alnum, s + char_before(s, start),
						 start - char_before(s, start));
				bool stop_space = stop == n || !char_in(t, t->re_alnum, s + stop, n - stop);
				if (!start_space || !stop_space)
					continue;
			}
			if (a->lstrip) {
				size_t ns = start;
				while (ns > 0) {
					size_t b = char_before(s, ns);
					if (!char_in(t, t->re_space, s + b, ns - b))
						break;
					ns = b;
				}
				start = ns > start_offset ? ns : start_offset;
			}
			if (a->rstrip) {
				while (stop < n && char_in(t, t->re_space, s + stop, n - stop))
					stop += utf8_step((const uint8_t *)s + stop, n - stop);
			}
			if (start > stop)
				continue;
			if (start > start_offset &&
			    pvec_push(out, pc->off + start_offset, start - start_offset, -1, 0))
				return -ENOMEM;
			if (pvec_push(out, pc->off + start, stop - start, a->id, 0))
				return -ENOMEM;
			start_offset = stop;
		}
		if (start_offset < n &&
		    pvec_push(out, pc->off + start_offset, n - start_offset, -1, 0))
			return -ENOMEM;
	}
	return 0;
}

/* Cuts subject s[0..n) with re into pieces covering it, each flagged as a
 * match or not, into t->marks (tokenizers' Pattern::find_matches over the onig
 * crate's find_iter: an empty match right after the previous match is
 * skipped). Offsets are relative to s. 0 or -errno. */
static int find_matches(inf_tok *t, const pcre2_code *re, const char *s, size_t n, k2_err *err)
{
	struct pvec *m = &t->marks;
	m->n = 0;
	if (!re) /* an empty String pattern: HF finds nothing */
		return n ? pvec_push(m, 0, n, -1, 0) : 0;
	size_t prev = 0, last_end = 0, last_match_end = SIZE_MAX;
	while (last_end <= n) {
		size_t ms, me;
		int rc = re_find(t, re, s, n, last_end, 0, &ms, &me, err);
		if (rc < 0)
			return rc;
		if (rc == 0)
			break;
		if (ms == me && last_match_end == me) {
			last_end += last_end < n ? utf8_step((const uint8_t *)s + last_end, n - last_end)
						 : 1;
			continue;
		}
		last_end = me;
		last_match_end = me;
		if (prev != ms && pvec_push(m, prev, ms - prev, -1, 0))
			return -ENOMEM;
		if (pvec_push(m, ms, me - ms, -1, 1))
			return -ENOMEM;
		prev = me;
	}
	if (prev != n && pvec_push(m, prev, n - prev, -1, 0))
		return -ENOMEM;
	return 0;
}

/* One Split pre-tokenizer over every text piece of in, into out. */
static int split_regex(inf_tok *t, const struct split *sp, const char *text,
		       const struct pvec *in, struct pvec *out, k2_err *err)
{
	out->n = 0;
	for (size_t p = 0; p < in->n; p++) {
		const struct piece *pc = &in->v[p];
		if (pc->id >= 0) {
			if (pvec_push(out, pc->off, pc->len, pc->id, 0))
				return -ENOMEM;
			continue;
		}
		int rc = find_matches(t, sp->re, text + pc->off, pc->len, err);
		if (rc)
			return rc;
		struct pvec *m = &t->marks;
		if (sp->invert)
			for (size_t i = 0; i < m->n; i++)
				m->v[i].is_match = !m->v[i].is_match;
		/* Fold the marks in place (k <= i always), as tokenizers'
		 * NormalizedString::split does per behavior; is_match of a kept
		 * piece then means "remove". */
		size_t k = 0;
		bool prev_match = false;
		switch (sp->behavior) {
		case SPLIT_ISOLATED:
			for (size_t i = 0; i < m->n; i++)
				m->v[i].is_match = 0;
			k = m->n;
			break;
		case SPLIT_REMOVED:
			k = m->n;
			break;
		case SPLIT_CONTIGUOUS:
			for (size_t i = 0; i < m->n; i++) {
				bool im = m->v[i].is_match;
				if (im == prev_match && k > 0)
					m->v[k - 1].len = m->v[i].off + m->v[i].len - m->v[k - 1].off;
				else
					m->v[k++] = m->v[i];
				m->v[k - 1].is_match = 0;
				prev_match = im;
			}
			break;
		case SPLIT_MERGED_WITH_PREVIOUS:
			for (size_t i = 0; i < m->n; i++) {
				bool im = m->v[i].is_match;
				if (im && !prev_match && k > 0)
					m->v[k - 1].len = m->v[i].off + m->v[i].len - m->v[k - 1].off;
				else
					m->v[k++] = m->v[i];
				m->v[k - 1].is_match = 0;
				prev_match = im;
			}
			break;
		case SPLIT_MERGED_WITH_NEXT:
			/* right to left, growing the next piece to the left; k counts
			 * pieces kept at the end of the array */
			for (size_t i = m->n; i-- > 0;) {
				bool im = m->v[i].is_match;
				if (im && !prev_match && k > 0) {
					struct piece *nx = &m->v[m->n - k];
					nx->len = nx->off + nx->len - m->v[i].off;
					nx->off = m->v[i].off;
				} else {
					k++;
					m->v[m->n - k] = m->v[i];
				}
				m->v[m->n - k].is_match = 0;
				prev_match = im;
			}
			memmove(m->v, m->v + (m->n - k), k * sizeof(*m->v));
			break;
		}
		for (size_t i = 0; i < k; i++) {
			if (m->v[i].is_match || m->v[i].len == 0)
				continue;
			if (pvec_push(out, pc->off + m->v[i].off, m->v[i].len, -1, 0))
				return -ENOMEM;
		}
	}
	return 0;
}

static int heap_push(struct merge_ent *h, size_t *n, struct merge_ent e)
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

static struct merge_ent heap_pop(struct merge_ent *h, size_t *n)
{
	struct merge_ent top = h[0], last = h[--(*n)];
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
	if (!u64map_get(&t->merges, (uint64_t)(uint32_t)a << 32 | (uint32_t)b, &v))
		return false;
	*rank = (uint32_t)(v >> 32);
	*id = (int32_t)(uint32_t)v;
	return true;
}

static int cache_put(inf_tok *t, const char *s, size_t n, const int32_t *ids, size_t k)
{
	if (t->cache.count >= TOK_CACHE_MAX_ENTRIES || t->cache_keys.len >= TOK_CACHE_MAX_BYTES) {
		strmap_clear(&t->cache);
		t->cache_keys.len = 0;
		t->cache_vals.n = 0;
	}
	size_t off;
	if (arena_add(&t->cache_keys, s, n, &off) || ivec_reserve(&t->cache_vals, k + 1) ||
	    t->cache_vals.n > INT32_MAX)
		return -ENOMEM;
	int32_t at = (int32_t)t->cache_vals.n;
	t->cache_vals.v[t->cache_vals.n++] = (int32_t)k;
	memcpy(t->cache_vals.v + t->cache_vals.n, ids, k * sizeof(*ids));
	t->cache_vals.n += k;
	return strmap_put(&t->cache, t->cache_keys.p, off, n, at);
}

/* BPE of one piece's bytes, appending ids to out (BPE::merge_word and
 * Word::merge_all). 0 or -ENOMEM. */
static int bpe_piece(inf_tok *t, const char *s, size_t n, struct ivec *out)
{
	if (n == 0)
		return 0;
	if (n < TOK_CACHE_MAX_KEY) {
		int32_t at = strmap_get(&t->cache, t->cache_keys.p, s, n);
		if (at >= 0) {
			int32_t k = t->cache_vals.v[at];
			if (ivec_reserve(out, (size_t)k))
				return -ENOMEM;
			memcpy(out->v + out->n, t->cache_vals.v + at + 1, (size_t)k * sizeof(int32_t));
			out->n += (size_t)k;
			return 0;
		}
	}
	if (t->ignore_merges) {
		/* the whole piece, spelled in the byte-level alphabet, may be a token */
		t->scratch.len = 0;
		if (arena_reserve(&t->scratch, 2 * n + 1))
			return -ENOMEM;
		for (size_t i = 0; i < n; i++)
			t->scratch.len += utf8_put(t->byte_cp[(uint8_t)s[i]], t->scratch.p + t->scratch.len);
		int32_t id = strmap_get(&t->vocab, t->strs.p, t->scratch.p, t->scratch.len);
		if (id >= 0)
			return ivec_push(out, id);
	}
	if (n > t->syms_cap) {
		size_t cap = n < 64 ? 64 : n;
		if (cap > SIZE_MAX / (3 * sizeof(struct merge_ent)))
			return -ENOMEM;
		struct sym *sy = realloc(t->syms, cap * sizeof(*sy));
		if (!sy)
			return -ENOMEM;
		t->syms = sy;
		struct merge_ent *h = realloc(t->heap, 3 * cap * sizeof(*h));
		if (!h)
			return -ENOMEM;
		t->heap = h;
		t->syms_cap = cap;
	}
	struct sym *sy = t->syms;
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
				sy[ns++] = (struct sym){t->unk_id, 0, 0, (uint32_t)unk_len};
			unk_len = 1;
			continue;
		}
		if (unk_len) {
			sy[ns++] = (struct sym){t->unk_id, 0, 0, (uint32_t)unk_len};
			unk_len = 0;
		}
		sy[ns++] = (struct sym){id, 0, 0, 1};
	}
	if (unk_len)
		sy[ns++] = (struct sym){t->unk_id, 0, 0, (uint32_t)unk_len};
	for (size_t i = 0; i < ns; i++) {
		sy[i].prev = (int32_t)i - 1;
		sy[i].next = i + 1 < ns ? (int32_t)i + 1 : -1;
	}
	size_t hn = 0;
	struct merge_ent *h = t->heap;
	for (size_t i = 0; i + 1 < ns; i++) {
		uint32_t r;
		int32_t nid;
		if (merge_of(t, sy[i].id, sy[i + 1].id, &r, &nid))
			heap_push(h, &hn, (struct merge_ent){r, (uint32_t)i, nid});
	}
	while (hn) {
		struct merge_ent top = heap_pop(h, &hn);
		struct sym *cur = &sy[top.pos];
		if (cur->len == 0 || cur->next < 0)
			continue;
		struct sym *right = &sy[cur->next];
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
			heap_push(h, &hn, (struct merge_ent){r, (uint32_t)cur->prev, nid});
		if (cur->next >= 0 && merge_of(t, cur->id, sy[cur->next].id, &r, &nid))
			heap_push(h, &hn, (struct merge_ent){r, top.pos, nid});
	}
	size_t first = out->n;
	if (ivec_reserve(out, ns))
		return -ENOMEM;
	for (int32_t i = ns ? 0 : -1; i >= 0; i = sy[i].next)
		out->v[out->n++] = sy[i].id;
	if (n < TOK_CACHE_MAX_KEY)
		return cache_put(t, s, n, out->v + first, out->n - first);
	return 0;
}

/* The ByteLevel pre-tokenizer and the model on one text piece. */
static int byte_level_piece(inf_tok *t, const char *s, size_t n, struct ivec *out, k2_err *err)
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
		rc = find_matches(t, t->bl_re, s, n, err);
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
	struct ivec out = {0};
	int rc = ivec_reserve(&out, len / 3 + 1);
	if (rc)
		return k2_err_set(err, -ENOMEM, "%s: out of memory encoding %zu bytes", t->path, len);
	pthread_mutex_lock(&t->lock);
	struct pvec *a = &t->pa, *b = &t->pb, *tmp;
	a->n = 0;
	if (len && (rc = pvec_push(a, 0, len, -1, 0)))
		goto out;
	for (int pass = 0; pass < 2; pass++) {
		if ((rc = split_added(t, pass, text, a, b)))
			goto out;
		tmp = a, a = b, b = tmp;
	}
	for (size_t i = 0; i < t->n_splits; i++) {
		if ((rc = split_regex(t, &t->splits[i], text, a, b, err)))
			goto out;
		tmp = a, a = b, b = tmp;
	}
	for (size_t i = 0; i < a->n; i++) {
		if (a->v[i].id >= 0)
			rc = ivec_push(&out, a->v[i].id);
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

/* ------------------------------------------------------------ decoding */

static bool decodes(const inf_tok *t, int32_t id, unsigned flags)
{
	if (id < 0 || (uint32_t)id >= t->n_ids || t->str_off[id] == SIZE_MAX)
		return false;
	return !((flags & INF_TOK_SKIP_SPECIAL) && t->special[id]);
}

int inf_tok_decode(const inf_tok *t, const int32_t *ids, size_t n, unsigned flags, char **out,
		   size_t *out_len)
{
	*out = NULL;
	*out_len = 0;
	size_t total = 0;
	for (size_t i = 0; i < n; i++)
		if (decodes(t, ids[i], flags))
			total += t->dec_len[ids[i]];
	uint8_t *raw = malloc(total + 1);
	if (!raw)
		return -ENOMEM;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (!decodes(t, ids[i], flags))
			continue;
		memcpy(raw + k, t->decs.p + t->dec_off[ids[i]], t->dec_len[ids[i]]);
		k += t->dec_len[ids[i]];
	}
	raw[k] = 0;
	if (flags & INF_TOK_RAW) {
		*out = (char *)raw;
		*out_len = k;
		return 0;
	}
	if (total > (SIZE_MAX - 1) / 3) {
		free(raw);
		return -ENOMEM;
	}
	char *txt = malloc(3 * total + 1);
	if (!txt) {
		free(raw);
		return -ENOMEM;
	}
	size_t used;
	size_t m = utf8_repair(raw, k, true, txt, &used);
	txt[m] = 0;
	free(raw);
	*out = txt;
	*out_len = m;
	return 0;
}

struct inf_tok_stream {
	const inf_tok *tok;
	unsigned flags;
	uint8_t *in;   /* held-back bytes, then the new token's bytes */
	char *out;
	size_t held, cap_in, cap_out;
};

int inf_tok_stream_new(const inf_tok *tok, unsigned flags, inf_tok_stream **out)
{
	*out = calloc(1, sizeof(**out));
	if (!*out)
		return -ENOMEM;
	(*out)->tok = tok;
	(*out)->flags = flags & INF_TOK_SKIP_SPECIAL;
	return 0;
}

void inf_tok_stream_free(inf_tok_stream *s)
{
	if (!s)
		return;
	free(s->in);
	free(s->out);
	free(s);
}

static int stream_run(inf_tok_stream *s, const char *add, size_t n, bool final,
		      const char **text, size_t *len)
{
	size_t need = s->held + n;
	if (need + 1 > s->cap_in) {
		uint8_t *p = realloc(s->in, need + 64);
		if (!p)
			return -ENOMEM;
		s->in = p;
		s->cap_in = need + 64;
	}
	if (3 * need + 1 > s->cap_out) {
		char *p = realloc(s->out, 3 * need + 64);
		if (!p)
			return -ENOMEM;
		s->out = p;
		s->cap_out = 3 * need + 64;
	}
	if (n)
		memcpy(s->in + s->held, add, n);
	size_t used;
	size_t m = utf8_repair(s->in, need, final, s->out, &used);
	s->held = need - used; /* at most 3 bytes of an unfinished character */
	memmove(s->in, s->in + used, s->held);
	s->out[m] = 0;
	*text = s->out;
	*len = m;
	return 0;
}

int inf_tok_stream_feed(inf_tok_stream *s, int32_t id, const char **text, size_t *len)
{
	if (!decodes(s->tok, id, s->flags))
		return stream_run(s, NULL, 0, false, text, len);
	return stream_run(s, s->tok->decs.p + s->tok->dec_off[id], s->tok->dec_len[id], false,
			  text, len);
}

int inf_tok_stream_flush(inf_tok_stream *s, const char **text, size_t *len)
{
	return stream_run(s, NULL, 0, true, text, len);
}
