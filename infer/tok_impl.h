/* tok_impl.h — internals shared by the tokenizer's files (contract of the
 * whole in tokenizer.h). Not for use outside infer/tok_*.c and the
 * tokenizer's tests and fuzz target.
 *
 * A vocabulary loader (tok_load.c for tokenizer.json, tok_tiktoken.c for a
 * tiktoken file) creates the object with tok_new, fills the tables of
 * tok_vocab.c (ids and token strings, model vocabulary, merges, added tokens)
 * and the pre-tokenizer (t->splits, t->bl_*), then calls tok_decode_build and
 * tok_pretok_init. Token strings are kept in the GPT-2 byte-level alphabet
 * (tok_byte_level_tables); a format whose tokens are raw bytes (tiktoken)
 * converts them to it, and everything after loading (tok_pretok.c,
 * tok_encode.c, tok_decode.c) serves it unchanged.
 *
 *   tok_containers.c  arena, int and piece vectors, hash maps, added-token trie
 *   tok_utf8.c        UTF-8 and the byte-level alphabet
 *   tok_vocab.c       the object, its tables, and the lookups of tokenizer.h
 *   tok_json.c        model.vocab / model.merges of tokenizer.json: fast path
 *                     and the jansson reader it must agree with
 *   tok_load.c        inf_tok_load: the rest of tokenizer.json, and
 *                     tokenizer_config.json; inf_tok_open_dir
 *   tok_tiktoken.c    a tiktoken vocabulary (Kimi-K2's tiktoken.model), its
 *                     special tokens, and Kimi's pre-tokenizer pattern
 *   tok_pretok.c      regexes, added-token splitting, Split pre-tokenizers
 *   tok_encode.c      ByteLevel and BPE (merge heap, cache), inf_tok_encode
 *   tok_decode.c      decoded bytes per token, decoding, streaming decoder
 *
 * Functions here return 0 or -errno unless said otherwise. */
#ifndef INF_TOK_IMPL_H
#define INF_TOK_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8

#include <jansson.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define TOK_MAX_IDS (1u << 24) /* ids beyond this are refused */

/* ------------------------------------------------------------ containers */

/* Bytes; entries referenced by offset, so growth is safe. */
struct tok_arena {
	char *p;
	size_t len, cap;
};

/* Room for extra more bytes. 0 or -ENOMEM. */
int tok_arena_reserve(struct tok_arena *a, size_t extra);
/* Appends n bytes. 0 or -ENOMEM. */
int tok_arena_cat(struct tok_arena *a, const void *s, size_t n);
/* Appends n bytes and a NUL; *off gets where they start. 0 or -ENOMEM. */
int tok_arena_add(struct tok_arena *a, const void *s, size_t n, size_t *off);

struct tok_ivec {
	int32_t *v;
	size_t n, cap;
};

/* Room for extra more ids. 0 or -ENOMEM. */
int tok_ivec_reserve(struct tok_ivec *a, size_t extra);
int tok_ivec_push(struct tok_ivec *a, int32_t x);

/* A piece of the text being encoded: bytes [off, off+len), or an added
 * token (id >= 0) already decided. */
struct tok_piece {
	size_t off, len;
	int32_t id;
	int32_t is_match; /* scratch for the Split behaviors */
};

struct tok_pvec {
	struct tok_piece *v;
	size_t n, cap;
};

int tok_pvec_push(struct tok_pvec *a, size_t off, size_t len, int32_t id, int32_t is_match);

/* String -> int32 map whose keys live in an arena given at each call.
 * Open addressing, linear probing, at most half full; 16-byte slots, since
 * loading is bound by cache misses on these tables. */
struct tok_strmap_slot {
	uint32_t hash; /* low 32 bits of the key's XXH3 */
	uint32_t off;
	uint32_t len1; /* key length + 1; 0 marks an empty slot */
	int32_t val;
};

struct tok_strmap {
	struct tok_strmap_slot *slots;
	size_t cap, count; /* cap a power of two */
};

/* Makes room for `want` keys. 0 or -ENOMEM. */
int tok_strmap_grow(struct tok_strmap *m, size_t want);
/* The value of key[0..len) (keys stored in base), or -1. */
int32_t tok_strmap_get(const struct tok_strmap *m, const char *base, const void *key, size_t len);
/* Maps the key stored at base+off (len bytes) to val, replacing an equal
 * key's value (then m->count does not grow). 0 or -ENOMEM. */
int tok_strmap_put(struct tok_strmap *m, const char *base, size_t off, size_t len, int32_t val);
/* Empties m, keeping its slots. */
void tok_strmap_clear(struct tok_strmap *m);

/* uint64 -> uint64 map for merges: (left id << 32 | right id) -> (rank << 32
 * | merged id). The all-ones key marks an empty slot (ids are < 2^24). */
struct tok_u64_slot {
	uint64_t key, val;
};

struct tok_u64map {
	struct tok_u64_slot *slots;
	size_t cap, count;
};

/* Makes room for `want` keys. 0 or -ENOMEM. */
int tok_u64map_grow(struct tok_u64map *m, size_t want);
/* Inserts or replaces. 0 or -ENOMEM. */
int tok_u64map_put(struct tok_u64map *m, uint64_t k, uint64_t v);

static inline size_t tok_u64_hash(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	return (size_t)k;
}

/* True and *v when k is in m. Inline: BPE looks up every adjacent pair. */
static inline bool tok_u64map_get(const struct tok_u64map *m, uint64_t k, uint64_t *v)
{
	if (!m->cap)
		return false;
	for (size_t j = tok_u64_hash(k) & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
		if (m->slots[j].key == k) {
			*v = m->slots[j].val;
			return true;
		}
		if (m->slots[j].key == UINT64_MAX)
			return false;
	}
}

/* A byte trie of added-token contents. */
struct tok_trie_node {
	uint32_t child, sibling; /* 0 = none (the root is nobody's child) */
	int32_t added;           /* index into tok->added ending here, or -1 */
	uint8_t byte;
};

struct tok_trie {
	struct tok_trie_node *v;
	size_t n, cap;
};

/* Adds s[0..n) ending at added-token index idx; the same content twice keeps
 * the first. 0 or -ENOMEM. */
int tok_trie_add(struct tok_trie *tr, const uint8_t *s, size_t n, int32_t idx);
/* Longest added token starting at s[0..n): its index and *mlen its length,
 * or -1. */
int32_t tok_trie_longest(const struct tok_trie *tr, const uint8_t *s, size_t n, size_t *mlen);
void tok_trie_free(struct tok_trie *t);

/* ------------------------------------------------------------ UTF-8 */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the other 68 bytes for U+0100.. in byte order. cp_byte is the inverse
 * (-1 for a code point that stands for no byte). */
void tok_byte_level_tables(uint16_t byte_cp[256], int16_t cp_byte[324]);
/* Writes cp (< 0x110000) as UTF-8 to out (room for 4); returns its length. */
size_t tok_utf8_put(uint32_t cp, char *out);
/* Length of the valid UTF-8 sequence at s[0..n) (n >= 1). 0 if it is not
 * one, with *bad_len the length of the invalid run; a sequence cut short by
 * the end of s but valid so far gives -(its bytes so far). Follows the
 * Unicode "maximal subpart" rule that Rust's from_utf8_lossy uses: the
 * invalid run is the longest valid prefix, or 1. */
int tok_utf8_seq(const uint8_t *s, size_t n, int *bad_len);
/* Byte length of the UTF-8 character at s[0..n) (1 for a byte that starts
 * none), n >= 1. */
size_t tok_utf8_step(const uint8_t *s, size_t n);

/* ------------------------------------------------------------ the tokenizer */

enum tok_split_behavior {
	TOK_SPLIT_REMOVED,
	TOK_SPLIT_ISOLATED,
	TOK_SPLIT_MERGED_WITH_PREVIOUS,
	TOK_SPLIT_MERGED_WITH_NEXT,
	TOK_SPLIT_CONTIGUOUS,
};

/* One Split pre-tokenizer; re NULL for an empty String pattern. */
struct tok_split {
	pcre2_code *re;
	enum tok_split_behavior behavior;
	bool invert;
};

struct tok_added {
	int32_t id;
	size_t off, len; /* content, in tok->strs */
	bool special, lstrip, rstrip, normalized, single_word;
};

struct tok_sym;       /* tok_encode.c */
struct tok_merge_ent; /* tok_encode.c */

struct inf_tok {
	char *path;
	uint32_t n_ids;        /* largest id + 1 */
	uint32_t ids_cap;      /* allocated length of the [n_ids] arrays */
	size_t *str_off;       /* [n_ids] token string in strs; SIZE_MAX = hole */
	uint32_t *str_len;     /* [n_ids] */
	size_t *dec_off;       /* [n_ids] decoded bytes in decs */
	uint32_t *dec_len;     /* [n_ids] */
	uint8_t *special;      /* [n_ids] 1 for special added tokens */
	struct tok_arena strs, decs;
	struct tok_strmap vocab;     /* model vocabulary: string -> id (keys in strs) */
	struct tok_strmap added_map; /* added content -> id (keys in strs) */
	struct tok_u64map merges;
	int32_t byte_id[256];  /* id of each byte's one-character token, or -1 */
	uint16_t byte_cp[256];
	int16_t cp_byte[324];
	int32_t unk_id;
	bool fuse_unk, ignore_merges;

	struct tok_added *added;
	size_t n_added, added_cap; /* [added_cap] added */
	struct tok_trie trie[2]; /* [0] normalized=false, [1] normalized=true */
	pcre2_code *re_space, *re_alnum; /* only when some token needs them */

	struct tok_split *splits;
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
	struct tok_pvec pa, pb, marks;
	struct tok_sym *syms;
	struct tok_merge_ent *heap;
	size_t syms_cap;       /* [syms_cap] syms, [3 * syms_cap] heap */
	struct tok_arena scratch;
	struct tok_strmap cache;   /* piece bytes -> offset in cache_vals */
	struct tok_arena cache_keys;
	struct tok_ivec cache_vals; /* at each offset: count, then the ids */
};

/* ---- tok_vocab.c: the object and its tables */

/* A new, empty tokenizer for the file `path` (copied; messages name it), its
 * lock and byte-level tables set up. 0 and *out (freed with inf_tok_free), or
 * -ENOMEM with the message in err. */
int tok_new(const char *path, inf_tok **out, k2_err *err);
/* One model vocabulary entry: token string s[0..len) is id. -EINVAL (message
 * names model.vocab) for an id outside [0, TOK_MAX_IDS), an id or a string
 * given twice; -ENOMEM. */
int tok_vocab_add(inf_tok *t, const char *s, size_t len, long long id, k2_err *err);
/* Merge number `rank`: left a, right b. -EINVAL when either or their
 * concatenation is not in the vocabulary (HF requires all three), or too many
 * merges. A repeated pair keeps its last rank. */
int tok_merges_add(inf_tok *t, const char *a, size_t al, const char *b, size_t bl, size_t rank,
		   k2_err *err);
/* A merge given as one "left right" string: -EINVAL unless it has exactly
 * one space (as HF requires); otherwise as tok_merges_add. */
int tok_merges_add_line(inf_tok *t, const char *s, size_t len, size_t rank, k2_err *err);
/* Sets t->byte_id from the vocabulary; call once it is complete. */
void tok_vocab_byte_ids(inf_tok *t);
/* Adds one added token: a's id (in [0, TOK_MAX_IDS)) and flags, content
 * c[0..clen) (non-empty). A content the vocabulary already has must keep its
 * id there; a new content takes a free id. `where` names the token in
 * messages. -EINVAL or -ENOMEM. */
int tok_added_add(inf_tok *t, const struct tok_added *a, const char *c, size_t clen,
		  const char *where, k2_err *err);
/* After the last tok_added_add: compiles the character classes lstrip,
 * rstrip and single_word need, if any token has them. */
int tok_added_finish(inf_tok *t, k2_err *err);

/* ---- tok_json.c: model.vocab and model.merges of a tokenizer.json */

/* Where the outline scan found the two big members in the file text. */
struct tok_json_big {
	size_t vocab_off, vocab_len, merges_off, merges_len; /* len 0: not found */
	size_t vocab_items, merges_items;                    /* about how many */
};

/* "object", "array", "string", ... for messages. */
const char *tok_json_type_name(const json_t *j);
/* Parses the text of a tokenizer.json with jansson (\u0000 allowed in string
 * values; a raw NUL byte and a key given twice in one object refused, in
 * both readings alike). When allow_fast and the outline scan finds
 * model.vocab and model.merges, jansson sees the text with those two values
 * emptied and *fast is set: big then locates them for tok_json_vocab /
 * tok_json_merges, which read them from text. Otherwise jansson reads it
 * all. Returns 0 and *root (an object; the caller json_decref's it), or
 * -EINVAL (invalid JSON, not an object) / -ENOMEM with the message naming
 * t->path and where the JSON is bad. */
int tok_json_parse(const inf_tok *t, const char *text, size_t len, bool allow_fast, json_t **root,
		   struct tok_json_big *big, bool *fast, k2_err *err);
/* Adds model.vocab to t: read from text at big when big is non-NULL (strictly,
 * with jansson's rules), else from the jansson object model. The same file
 * gives the same vocabulary or the same refusal either way. -EINVAL with the
 * message naming what is wrong, or -ENOMEM. */
int tok_json_vocab(inf_tok *t, const json_t *model, const char *text,
		   const struct tok_json_big *big, k2_err *err);
/* The same for model.merges (after the vocabulary). */
int tok_json_merges(inf_tok *t, const json_t *model, const char *text,
		    const struct tok_json_big *big, k2_err *err);

/* ---- tok_load.c: files */

/* Reads t->path whole into a malloc'd buffer (*text, *len; the caller frees
 * it). 0, or -errno with the message naming t->path. */
int tok_read_file(const inf_tok *t, char **text, size_t *len, k2_err *err);
/* Reads tokenizer_config.json beside t->path. 0 with *root the parsed object
 * (the caller json_decref's it) or NULL when there is no such file; *cpath
 * (malloc'd, the caller frees it, also on error) its path. -EINVAL for
 * invalid JSON or not an object, -errno when it cannot be read. */
int tok_config_read(const inf_tok *t, json_t **root, char **cpath, k2_err *err);
/* Takes add_bos_token, bos_token and eos_token from the config root (NULL:
 * none) once every token is in t; sets bos_id / eos_id to -1 where absent.
 * -EINVAL (message names cpath) for a wrong type or a token t lacks. */
int tok_config_apply(inf_tok *t, const json_t *root, const char *cpath, k2_err *err);

/* ---- tok_tiktoken.c: tiktoken vocabularies */

/* inf_tok_load for a tiktoken vocabulary file (path, tokenizer_config.json
 * beside it); contract of inf_tok_load. */
int tok_tiktoken_load(const char *path, inf_tok **out, k2_err *err);
/* Reads the ranks of a tiktoken file, text[0..len) (not NUL-terminated), into
 * t's vocabulary: rank r is id r, the token kept in the byte-level alphabet.
 * Strict: every line is "BASE64 RANK" (canonical padded base64 of 1 or more
 * bytes, one space, a decimal rank), ranks run 0, 1, 2, ... in order, no
 * token twice, no line longer than TOK_TIKTOKEN_MAX_LINE; the last line may
 * lack its '\n', and a '\r' before a '\n' is allowed. -EINVAL with the message
 * naming t->path and the line, or -ENOMEM. */
int tok_tiktoken_parse(inf_tok *t, const char *text, size_t len, k2_err *err);
#define TOK_TIKTOKEN_MAX_LINE 1024
/* Everything after the ranks: checks that every byte has a token, then the
 * merges, the special tokens (added_tokens_decoder of the config root, may be
 * NULL; cpath names it in messages), BOS / EOS, the pre-tokenizer, the
 * decoder tables and the match state. -EINVAL with the message naming the
 * file at fault, or -ENOMEM. */
int tok_tiktoken_build(inf_tok *t, const json_t *root, const char *cpath, k2_err *err);

/* Kimi-K2's pat_str (tokenization_kimi.py) as PCRE2 compiles it: the
 * original, and the rewrite of its two intersection classes and of \p{Han}
 * (tok_tiktoken.c says why), for the tests that prove them equal. */
extern const char tok_kimi_pat_original[];
extern const char tok_kimi_pat_pcre2[];
extern const char tok_kimi_class_upper[]; /* [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]] */
extern const char tok_kimi_class_lower[]; /* [\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]] */

/* ---- tok_pretok.c: regexes and the pre-tokenizer */

/* Compiles a pattern from a tokenizer file (Oniguruma syntax; `literal`: a
 * plain string). -EINVAL with the message naming t->path and `what`. */
int tok_regex_compile(const inf_tok *t, const char *pat, size_t len, bool literal,
		      const char *what, pcre2_code **out, k2_err *err);
/* Creates the match state; the last step of loading. -ENOMEM. */
int tok_pretok_init(inf_tok *t, k2_err *err);
/* Cuts text[0..len) into pieces: added tokens (both passes), then every Split
 * pre-tokenizer. *out (t's, valid until the next call) gets the pieces in
 * order. Caller holds t->lock. -ENOMEM, or -EINVAL when a regex fails to run
 * (message in err). */
int tok_pretokenize(inf_tok *t, const char *text, size_t len, const struct tok_pvec **out,
		    k2_err *err);
/* Cuts s[0..n) with re into pieces covering it, each flagged as a match or
 * not, into t->marks (offsets relative to s); re NULL: one piece. Caller holds
 * t->lock. -ENOMEM or -EINVAL as above. */
int tok_find_matches(inf_tok *t, const pcre2_code *re, const char *s, size_t n, k2_err *err);

/* ---- tok_decode.c */

/* Fills t->dec_off / dec_len / decs (the ByteLevel decoder's bytes of every
 * id) once the ids are final. -ENOMEM. */
int tok_decode_build(inf_tok *t, k2_err *err);

#endif
