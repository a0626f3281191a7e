/* tokenizer.h — the byte-level BPE tokenizers of DeepSeek-V3 and Kimi-K2, in
 * C: HuggingFace `tokenizer.json` files, and tiktoken vocabularies
 * (`tiktoken.model`, Kimi-K2's).
 *
 * tokenizer.json — what is supported: model type "BPE" (vocab + merges, as
 * "a b" strings or [a, b] pairs; no dropout, no subword prefix/suffix, no
 * byte fallback); normalizer null or an empty Sequence; pre_tokenizer a
 * Sequence of Split (Regex or String pattern, any behavior, invert) ending in
 * one ByteLevel (add_prefix_space and use_regex honoured); decoder ByteLevel;
 * added tokens with their special / normalized / lstrip / rstrip /
 * single_word flags. Split patterns (Oniguruma syntax in the file) are
 * compiled with PCRE2 after translating \s and \S to the Unicode White_Space
 * property, which is what Oniguruma means by them. Anything else is refused
 * at load with one error line naming the file and the unsupported feature.
 * The file must be strict JSON: a raw NUL byte, a key given twice in one
 * object, or a key holding \u0000 is refused.
 *
 * tiktoken.model (or *.tiktoken) — one "base64(token bytes) rank" line per
 * token, ranks 0, 1, 2, ... in order; a bad line (base64, rank out of order,
 * a token twice, longer than 1024 bytes) is refused naming the file and the
 * line. Rank r is id r; the special tokens are tokenizer_config.json's
 * added_tokens_decoder (ids in the 256 slots after the ranks; empty slots are
 * "<|reserved_token_N|>"). Pre-tokenizer: Kimi-K2's pat_str from Moonshot's
 * tokenization_kimi.py (rewritten for PCRE2, see tok_tiktoken.c); encoding
 * equals tiktoken's `encode(text, allowed_special="all")`, which is what
 * Kimi-K2's tokenizer calls.
 *
 * Either way, tokenizer_config.json beside the file gives bos_token,
 * eos_token and add_bos_token.
 *
 * A tokenizer.json encodes as HuggingFace `Tokenizer.encode(text,
 * add_special_tokens=False)`; prepending BOS is the caller's choice
 * (inf_tok_bos). Bytes that are not valid UTF-8 are not an error: the
 * regexes never match them, so they become their own pieces and encode as
 * their byte tokens.
 *
 * Thread safety: inf_tok_encode serialises on a lock inside the tokenizer
 * (it fills a cache); every other function only reads and may run
 * concurrently. A stream decoder belongs to one thread.
 *
 * Errors: every function that can fail returns 0 or -errno and, given a
 * k2_err, one line naming the file and what is wrong (layout.h's convention);
 * nothing here exits or aborts on bad input.
 *
 * The implementation, in infer/ (internals shared through tok_impl.h):
 *   tok_load.c        inf_tok_load, inf_tok_open_dir: tokenizer.json and
 *                     tokenizer_config.json
 *   tok_tiktoken.c    tiktoken.model: ranks, special tokens, Kimi's pattern
 *   tok_json.c        model.vocab / model.merges: a fast strict reader, and
 *                     jansson's, which it must agree with (fuzz_tok_json)
 *   tok_vocab.c       the tokenizer object, its tables, the token lookups
 *   tok_pretok.c      added-token splitting and the Split pre-tokenizers
 *   tok_encode.c      ByteLevel, BPE merges, inf_tok_encode
 *   tok_decode.c      inf_tok_decode*, the streaming decoder
 *   tok_containers.c  arena, vectors, hash maps, trie
 *   tok_utf8.c        UTF-8 and the byte-level alphabet */
#ifndef INF_TOKENIZER_H
#define INF_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layout.h" /* k2_err */

typedef struct inf_tok inf_tok;
typedef struct inf_tok_stream inf_tok_stream;

/* Flags for inf_tok_decode and inf_tok_stream_new. */
enum inf_tok_decode_flags {
	INF_TOK_SKIP_SPECIAL = 1u << 0, /* drop added tokens marked special */
	INF_TOK_RAW = 1u << 1,          /* inf_tok_decode only: the bytes as they
					   are, no U+FFFD repair of bad UTF-8 */
};

/* Loads `path` — a tiktoken vocabulary when the file is called
 * tiktoken.model or *.tiktoken, else a tokenizer.json — and, when it exists
 * beside it, tokenizer_config.json (add_bos_token, bos_token, eos_token, and
 * for tiktoken the special tokens). Returns 0 and *out (owned by the caller,
 * freed with inf_tok_free), or -errno with one line in err naming the file
 * and what is wrong or unsupported. */
int inf_tok_load(const char *path, inf_tok **out, k2_err *err);
/* Loads the tokenizer of a model folder: dir/tokenizer.json when present,
 * else dir/tiktoken.model, as inf_tok_load. -ENOENT (and nothing else gives
 * it but a file vanishing meanwhile) when neither is there. */
int inf_tok_open_dir(const char *dir, inf_tok **out, k2_err *err);
void inf_tok_free(inf_tok *tok);

/* Encodes len bytes of text (need not be NUL-terminated nor valid UTF-8).
 * On success returns 0, *ids is a malloc'd array (never NULL; free() it) of
 * *n_ids token ids. Returns -ENOMEM, or -EINVAL when a regex fails to run (a
 * PCRE2 limit; the message says which). */
int inf_tok_encode(inf_tok *tok, const char *text, size_t len, int32_t **ids,
		   size_t *n_ids, k2_err *err);

/* Encodes a prompt as the model reads it: the BOS id first when
 * tokenizer_config.json asks for one (inf_tok_bos), then the text's ids.
 * Otherwise as inf_tok_encode. */
int inf_tok_encode_prompt(inf_tok *tok, const char *text, size_t len, int32_t **ids,
			  size_t *n_ids, k2_err *err);

/* One past the largest token id (model vocabulary and added tokens). Ids
 * below it that name no token (holes) give NULL / -EINVAL below. */
uint32_t inf_tok_vocab_size(const inf_tok *tok);

/* The token string of id as the file spells it (byte-level alphabet for model
 * tokens, content for added tokens), NUL-terminated and owned by tok; *len
 * (if non-NULL) gets its length. NULL for an id that names no token. */
const char *inf_tok_id_to_token(const inf_tok *tok, int32_t id, size_t *len);

/* The id of an exact token string (added tokens first, then the model
 * vocabulary), or -1. */
int32_t inf_tok_token_to_id(const inf_tok *tok, const char *token, size_t len);

/* True when id is an added token marked special. */
bool inf_tok_is_special(const inf_tok *tok, int32_t id);

/* The bytes that id decodes to (ByteLevel decoder; an added token decodes to
 * its content), owned by tok. Returns 0, or -EINVAL when id names no token. */
int inf_tok_decode_id(const inf_tok *tok, int32_t id, const char **bytes,
		      size_t *len);

/* Decodes a sequence like HuggingFace `decode(ids)`: the tokens' bytes
 * concatenated and made valid UTF-8 (each maximal invalid subsequence becomes
 * U+FFFD), unless INF_TOK_RAW. Ids that name no token are skipped, as HF
 * does. *out is malloc'd and NUL-terminated, *out_len its length without the
 * NUL. Returns 0 or -ENOMEM. */
int inf_tok_decode(const inf_tok *tok, const int32_t *ids, size_t n,
		   unsigned flags, char **out, size_t *out_len);

/* True when tokenizer_config.json asks for a BOS token (add_bos_token) and
 * names one; *bos_id (if non-NULL) gets the BOS id, or -1 when none is known. */
bool inf_tok_bos(const inf_tok *tok, int32_t *bos_id);
/* The eos_token of tokenizer_config.json, or -1 when there is none. */
int32_t inf_tok_eos_id(const inf_tok *tok);

/* A streaming decoder: feed ids one at a time as they are generated and get
 * back the text that is complete so far. Bytes of a UTF-8 character split
 * across tokens are held back until the character is complete; bytes that can
 * never become valid come out as U+FFFD. The concatenation of every output
 * and the final flush equals inf_tok_decode(ids, flags). The stream keeps a
 * pointer to tok, which must outlive it. Returns 0 or -ENOMEM. */
int inf_tok_stream_new(const inf_tok *tok, unsigned flags, inf_tok_stream **out);
void inf_tok_stream_free(inf_tok_stream *s);

/* Feeds one id. *text / *len get the newly completed text (possibly empty),
 * valid until the next call on s. An id naming no token adds nothing.
 * Returns 0 or -ENOMEM. */
int inf_tok_stream_feed(inf_tok_stream *s, int32_t id, const char **text,
			size_t *len);

/* Ends the sequence: any held-back bytes come out as U+FFFD, and the stream
 * is ready for a new sequence. Returns 0. */
int inf_tok_stream_flush(inf_tok_stream *s, const char **text, size_t *len);

#endif
