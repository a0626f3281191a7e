/* tok_tiktoken.c — a tiktoken vocabulary (Kimi-K2's `tiktoken.model`: one
 * "base64(token bytes) rank" line per token) loaded into the tables of
 * tok_vocab.c, so that encoding and decoding run unchanged (contracts in
 * tokenizer.h and tok_impl.h). What tiktoken's CoreBPE does, and how it maps:
 *
 *   - special tokens are cut out of the text first (encode with
 *     allowed_special="all", as tokenization_kimi.py calls it): they are added
 *     tokens, normalized=false, from tokenizer_config.json's
 *     added_tokens_decoder (its lstrip / rstrip / single_word flags mean
 *     nothing to tiktoken and are not read); the longest special token at
 *     the leftmost place wins (tiktoken takes the first of its alternation, in
 *     hash order; no special token of Kimi-K2's is a prefix of another, so
 *     both agree there);
 *   - the text between them is cut by pat_str (fancy_regex's find_iter): one
 *     Isolated Split with the pattern below, through PCRE2;
 *   - a piece that is a token is that token (ignore_merges does the same);
 *     otherwise its bytes are merged, always the adjacent pair whose
 *     concatenation has the lowest rank (leftmost on a tie). That is the BPE
 *     engine of tok_encode.c given, for every token T and every split of T into
 *     two tokens (A, B), the merge A B -> T with rank(T): a pair's rank in
 *     tiktoken is the rank of the pair's bytes, and both parts are always
 *     tokens. tests/test_tokenizer_kimi.c holds this to tiktoken's own output.
 *
 * Ids: rank r is id r; the special tokens take ids from the number of ranks
 * on, 256 slots (Kimi-K2: 163584-163839), and a slot the config leaves empty
 * gets "<|reserved_token_N|>" as Moonshot's TikTokenTokenizer names it.
 * (That class reserves 256 + 2 slots; the last two lie past Kimi-K2's
 * 163840-row embedding and are left out here.) Text that is not valid UTF-8
 * (tiktoken only sees valid text) is encoded as its own pieces, byte tokens
 * merged as above.
 *
 * Not reproduced: TikTokenTokenizer.encode of tokenization_kimi.py first cuts
 * the text every 400,000 characters and inside any run of more than 25,000
 * whitespace (or non-whitespace) characters, to keep tiktoken from failing;
 * a text with neither encodes here as it does there. */
#include "tok_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TIKTOKEN_SPECIAL_SLOTS 256

/* ------------------------------------------------------------ the pattern */

/* Kimi-K2's pat_str, spelled once for both readings: HAN the Han property,
 * UP and LO the two letter classes. */
#define KIMI_CONTR "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
#define KIMI_PAT(HAN, UP, LO)                                                        \
	"[" HAN "]+"                                                                 \
	"|[^\\r\\n\\p{L}\\p{N}]?" UP "*" LO "+" KIMI_CONTR                           \
	"|[^\\r\\n\\p{L}\\p{N}]?" UP "+" LO "*" KIMI_CONTR                           \
	"|\\p{N}{1,3}"                                                               \
	"| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"                                            \
	"|\\s*[\\r\\n]+"                                                             \
	"|\\s+(?!\\S)"                                                               \
	"|\\s+"

/* The rewrite. tokenization_kimi.py's classes are intersections,
 * [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]] and [\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]],
 * which PCRE2 10.42 cannot write. The general categories partition every code
 * point (L = Lu Ll Lt Lm Lo, then M N P S Z C, C taking the unassigned Cn),
 * so A minus Han = not (not-A or Han), and not-A is the union of the
 * categories A leaves out:
 *   upper = [^\p{Ll}\p{N}\p{P}\p{S}\p{Z}\p{C}\p{sc:Han}]
 *   lower = [^\p{Lu}\p{Lt}\p{N}\p{P}\p{S}\p{Z}\p{C}\p{sc:Han}]
 * (plain negated classes, no lookahead per character). And \p{Han}: tiktoken's
 * Rust regex reads it as the Script property, PCRE2 10.42 as Script_Extensions
 * (which also holds 、。〆・ and other marks CJK shares), so it is written
 * \p{sc:Han}, here and in the first alternative. test_tokenizer_kimi compares
 * both classes with the intersection over every code point, and checks that
 * these substitutions are the only difference from the original. */
#define KIMI_UP_ORIG "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]"
#define KIMI_LO_ORIG "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]"
#define KIMI_UP "[^\\p{Ll}\\p{N}\\p{P}\\p{S}\\p{Z}\\p{C}\\p{sc:Han}]"
#define KIMI_LO "[^\\p{Lu}\\p{Lt}\\p{N}\\p{P}\\p{S}\\p{Z}\\p{C}\\p{sc:Han}]"

const char tok_kimi_pat_original[] = KIMI_PAT("\\p{Han}", KIMI_UP_ORIG, KIMI_LO_ORIG);
const char tok_kimi_pat_pcre2[] = KIMI_PAT("\\p{sc:Han}", KIMI_UP, KIMI_LO);
const char tok_kimi_class_upper[] = KIMI_UP;
const char tok_kimi_class_lower[] = KIMI_LO;

/* ------------------------------------------------------------ the ranks */

/* Value of a base64 character, or -1. */
static int b64_val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Decodes canonical padded base64 s[0..n) into out (room for 3n/4 bytes).
 * Returns the byte count, or -1 with *why saying what is wrong. */
static long b64_decode(const char *s, size_t n, uint8_t *out, const char **why)
{
	if (n == 0 || n % 4) {
		*why = n ? "length not a multiple of 4" : "empty token";
		return -1;
	}
	size_t pad = s[n - 1] == '=' ? (s[n - 2] == '=' ? 2 : 1) : 0;
	long k = 0;
	for (size_t i = 0; i < n; i += 4) {
		uint32_t v = 0;
		for (size_t j = 0; j < 4; j++) {
			int d = i + j >= n - pad ? 0 : b64_val((unsigned char)s[i + j]);
			if (d < 0) {
				*why = s[i + j] == '=' ? "'=' before the end" : "a character outside base64";
				return -1;
			}
			v = v << 6 | (uint32_t)d;
		}
		size_t bytes = i + 4 < n ? 3 : 3 - pad;
		if (bytes < 3 && (v & ((1u << (8 * (3 - bytes))) - 1))) {
			*why = "padding bits not zero (not canonical)";
			return -1;
		}
		for (size_t j = 0; j < bytes; j++)
			out[k++] = (uint8_t)(v >> (16 - 8 * j));
	}
	return k;
}

int tok_tiktoken_parse(inf_tok *t, const char *text, size_t len, k2_err *err)
{
	size_t lines = 0;
	for (const char *p = text; (p = memchr(p, '\n', len - (size_t)(p - text))); p++)
		lines++;
	if (lines >= TOK_MAX_IDS)
		return k2_err_set(err, -EINVAL, "%s: more than %u lines", t->path, TOK_MAX_IDS);
	if (tok_strmap_grow(&t->vocab, lines + 1) || tok_arena_reserve(&t->strs, len + lines))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);

	uint8_t raw[TOK_TIKTOKEN_MAX_LINE];
	char bl[2 * TOK_TIKTOKEN_MAX_LINE];
	size_t pos = 0, line = 0;
	while (pos < len) {
		line++;
		const char *s = text + pos;
		const char *nl = memchr(s, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - s) : len - pos;
		pos += n + (nl != NULL);
		if (n > TOK_TIKTOKEN_MAX_LINE)
			return k2_err_set(err, -EINVAL, "%s: line %zu: longer than %d bytes", t->path,
					  line, TOK_TIKTOKEN_MAX_LINE);
		if (nl && n && s[n - 1] == '\r')
			n--;
		const char *sp = memchr(s, ' ', n);
		if (!sp)
			return k2_err_set(err, -EINVAL, "%s: line %zu: expected \"BASE64 RANK\"%s",
					  t->path, line, n ? "" : ", found an empty line");
		size_t bn = (size_t)(sp - s), rn = n - bn - 1;
		long long rank = 0;
		for (size_t i = 0; i < rn; i++) {
			if (sp[1 + i] < '0' || sp[1 + i] > '9' || i >= 9) {
				rank = -1;
				break;
			}
			rank = rank * 10 + (sp[1 + i] - '0');
		}
		if (rn == 0 || rank < 0 || (rn > 1 && sp[1] == '0'))
			return k2_err_set(err, -EINVAL,
					  "%s: line %zu: the rank \"%.*s\" is not a decimal number",
					  t->path, line, (int)(rn < 20 ? rn : 20), sp + 1);
		const char *why;
		long bytes = b64_decode(s, bn, raw, &why);
		if (bytes < 0)
			return k2_err_set(err, -EINVAL, "%s: line %zu: bad base64 \"%.*s\": %s",
					  t->path, line, (int)(bn < 40 ? bn : 40), s, why);
		long long want = (long long)line - 1;
		if (rank < want)
			return k2_err_set(err, -EINVAL,
					  "%s: line %zu: rank %lld is given twice (first on line %lld)",
					  t->path, line, rank, rank + 1);
		if (rank > want)
			return k2_err_set(err, -EINVAL,
					  "%s: line %zu: rank %lld where %lld was expected (ranks must "
					  "run 0, 1, 2, ... in order)",
					  t->path, line, rank, want);
		size_t bln = 0;
		for (long i = 0; i < bytes; i++)
			bln += tok_utf8_put(t->byte_cp[raw[i]], bl + bln);
		int32_t first = tok_strmap_get(&t->vocab, t->strs.p, bl, bln);
		if (first >= 0)
			return k2_err_set(err, -EINVAL,
					  "%s: line %zu: token \"%.*s\" is given twice (first on line %d)",
					  t->path, line, (int)(bn < 40 ? bn : 40), s, first + 1);
		int rc = tok_vocab_add(t, bl, bln, rank, err);
		if (rc)
			return rc;
	}
	if (line == 0)
		return k2_err_set(err, -EINVAL, "%s: no tokens", t->path);
	return 0;
}

/* ------------------------------------------------------------ the merges */

/* Registers, for every token and every split of it into two tokens, the
 * merge of the two into it with the token's rank (see the top of the file).
 * Token strings are byte-level UTF-8, so splits fall on character starts. */
static int add_merges(inf_tok *t, k2_err *err)
{
	/* about 1.8 merges a token in Kimi-K2's vocabulary: room for 2 */
	if (tok_u64map_grow(&t->merges, 2 * (size_t)t->n_ids))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	for (uint32_t id = 0; id < t->n_ids; id++) {
		const char *s = t->strs.p + t->str_off[id];
		size_t n = t->str_len[id];
		for (size_t k = 1; k < n; k++) {
			if (((uint8_t)s[k] & 0xc0) == 0x80)
				continue;
			int32_t a = tok_strmap_get(&t->vocab, t->strs.p, s, k);
			if (a < 0)
				continue;
			int32_t b = tok_strmap_get(&t->vocab, t->strs.p, s + k, n - k);
			if (b < 0)
				continue;
			if (tok_u64map_put(&t->merges, (uint64_t)(uint32_t)a << 32 | (uint32_t)b,
					   (uint64_t)id << 32 | id))
				return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
		}
	}
	return 0;
}

/* ------------------------------------------------------------ special tokens */

/* The special tokens: added_tokens_decoder of the config (root may be NULL),
 * each id in [base, base + TIKTOKEN_SPECIAL_SLOTS), then the slots it leaves
 * empty as "<|reserved_token_N|>". */
static int add_specials(inf_tok *t, const json_t *root, const char *cpath, k2_err *err)
{
	uint32_t base = t->n_ids;
	const json_t *atd = root ? json_object_get(root, "added_tokens_decoder") : NULL;
	if (atd && !json_is_null(atd) && !json_is_object(atd))
		return k2_err_set(err, -EINVAL, "%s: added_tokens_decoder: expected an object, found %s",
				  cpath, tok_json_type_name(atd));
	const char *key;
	json_t *v;
	int rc;
	json_object_foreach((json_t *)atd, key, v) {
		char where[64];
		snprintf(where, sizeof(where), "added_tokens_decoder[\"%.24s\"]", key);
		char *end;
		unsigned long id = strtoul(key, &end, 10);
		if (*key < '0' || *key > '9' || *end || (key[0] == '0' && key[1]) ||
		    id < base || id >= base + TIKTOKEN_SPECIAL_SLOTS)
			return k2_err_set(err, -EINVAL,
					  "%s: %s: expected an id in [%u, %u) (the special-token "
					  "slots after the %u ranks of %s)",
					  cpath, where, base, base + TIKTOKEN_SPECIAL_SLOTS, base, t->path);
		json_t *jc = json_object_get(v, "content");
		if (!json_is_object(v) || !json_is_string(jc) || json_string_length(jc) == 0)
			return k2_err_set(err, -EINVAL, "%s: %s: expected an object with a non-empty "
					  "\"content\" string", cpath, where);
		const char *c = json_string_value(jc);
		size_t clen = json_string_length(jc);
		json_t *js = json_object_get(v, "special");
		if (js && !json_is_boolean(js))
			return k2_err_set(err, -EINVAL, "%s: %s.special: expected a boolean", cpath,
					  where);
		if (tok_strmap_get(&t->added_map, t->strs.p, c, clen) >= 0)
			return k2_err_set(err, -EINVAL, "%s: %s: \"%.40s\" is given twice", cpath,
					  where, c);
		struct tok_added a = {.id = (int32_t)id, .special = !js || json_is_true(js)};
		if ((rc = tok_added_add(t, &a, c, clen, where, err)))
			return rc;
	}
	for (uint32_t id = base; id < base + TIKTOKEN_SPECIAL_SLOTS; id++) {
		if (id < t->n_ids && t->str_off[id] != SIZE_MAX)
			continue;
		char c[48];
		int clen = snprintf(c, sizeof(c), "<|reserved_token_%u|>", id);
		if (tok_strmap_get(&t->added_map, t->strs.p, c, (size_t)clen) >= 0)
			return k2_err_set(err, -EINVAL, "%s: \"%s\" names another id than %u",
					  cpath ? cpath : t->path, c, id);
		struct tok_added a = {.id = (int32_t)id, .special = true};
		if ((rc = tok_added_add(t, &a, c, (size_t)clen, "reserved special token", err)))
			return rc;
	}
	return tok_added_finish(t, err);
}

/* ------------------------------------------------------------ loading */

int tok_tiktoken_build(inf_tok *t, const json_t *root, const char *cpath, k2_err *err)
{
	tok_vocab_byte_ids(t);
	for (int b = 0; b < 256; b++)
		if (t->byte_id[b] < 0)
			return k2_err_set(err, -EINVAL,
					  "%s: byte 0x%02x has no token (a tiktoken vocabulary must "
					  "have all 256 single bytes)",
					  t->path, b);
	t->unk_id = -1;
	t->ignore_merges = true;
	t->bl_prefix_space = false;
	int rc = add_merges(t, err);
	if (!rc)
		rc = add_specials(t, root, cpath, err);
	if (rc)
		return rc;
	t->splits = calloc(1, sizeof(*t->splits));
	if (!t->splits)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	t->splits[0].behavior = TOK_SPLIT_ISOLATED;
	if ((rc = tok_regex_compile(t, tok_kimi_pat_pcre2, sizeof(tok_kimi_pat_pcre2) - 1, false,
				    "Kimi pre-tokenizer pattern", &t->splits[0].re, err)))
		return rc;
	t->n_splits = 1;
	if ((rc = tok_decode_build(t, err)) || (rc = tok_config_apply(t, root, cpath, err)))
		return rc;
	return tok_pretok_init(t, err);
}

int tok_tiktoken_load(const char *path, inf_tok **out, k2_err *err)
{
	*out = NULL;
	inf_tok *t;
	int rc = tok_new(path, &t, err);
	if (rc)
		return rc;
	char *text = NULL, *cpath = NULL;
	size_t len = 0;
	json_t *root = NULL;
	if ((rc = tok_read_file(t, &text, &len, err)) ||
	    (rc = tok_tiktoken_parse(t, text, len, err)))
		goto fail;
	free(text);
	text = NULL;
	if ((rc = tok_config_read(t, &root, &cpath, err)) ||
	    (rc = tok_tiktoken_build(t, root, cpath, err)))
		goto fail;
	json_decref(root);
	free(cpath);
	*out = t;
	return 0;
fail:
	json_decref(root);
	free(cpath);
	free(text);
	inf_tok_free(t);
	return rc;
}
