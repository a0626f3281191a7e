/* test_tokenizer_kimi.c — the tiktoken tokenizer (infer/tok_tiktoken.c) with
 * Kimi-K2's tiktoken.model against the real tiktoken core: every line of
 * tokenizers/kimi-k2/encodings.jsonl and more_encodings.jsonl (ids, decode,
 * streaming decode; made by tiktoken 1.0.22, see mkref.mjs there); the merge
 * table against a plain transcription of tiktoken's byte_pair_merge on random
 * pieces; the PCRE2 rewrite of pat_str's class intersections over every code
 * point; special tokens; arbitrary bytes round-tripping; and small or damaged
 * tiktoken files written here, each refusal naming the file and the line.
 * Load time and encode throughput are printed (informational). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tok_impl.h"

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test_tok_util.h"
#include "test_util.h"

#define KIMI_RANKS 163584
#define KIMI_IDS (KIMI_RANKS + 256)

static inf_tok *kimi; /* loaded once, before the forks */
static char kimi_path[1024];

static void kimi_setup(void)
{
	snprintf(kimi_path, sizeof(kimi_path), "%s/kimi-k2/tiktoken.model", tt_tokenizers());
	k2_err err = {{0}};
	double c0 = tt_cpu();
	if (inf_tok_load(kimi_path, &kimi, &err)) {
		fprintf(stderr, "cannot load %s: %s\n", kimi_path, err.msg);
		kimi = NULL;
		return;
	}
	printf("tokenizer_kimi: loaded %s in %.1f ms CPU (%u ids, %zu merges)\n", kimi_path,
	       (tt_cpu() - c0) * 1e3, inf_tok_vocab_size(kimi), kimi->merges.count);
}

static void kimi_teardown(void)
{
	inf_tok_free(kimi);
	kimi = NULL;
}

#define NEED_KIMI() EXPECT(kimi != NULL, "tokenizer not loaded from %s", kimi_path)

/* Every line of kimi-k2/<name>: ids (twice: the second from the piece
 * cache), decode == decoded == text, stream == decode. Returns the lines. */
static int check_jsonl(const char *name)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/kimi-k2/%s", tt_tokenizers(), name);
	FILE *f = fopen(path, "r");
	EXPECT(f != NULL, "cannot open %s", path);
	char *line = NULL;
	size_t cap = 0;
	ssize_t ll;
	int lines = 0;
	while ((ll = getline(&line, &cap, f)) > 0) {
		json_error_t je;
		json_t *o = json_loadb(line, (size_t)ll, 0, &je);
		EXPECT(o != NULL, "%s line %d: %s", path, lines + 1, je.text);
		json_t *jt = json_object_get(o, "text"), *jids = json_object_get(o, "ids");
		json_t *jdec = json_object_get(o, "decoded");
		EXPECT(json_is_string(jt) && json_is_array(jids) && json_is_string(jdec),
		       "%s line %d: missing fields", path, lines + 1);
		const char *text = json_string_value(jt);
		size_t tlen = json_string_length(jt);
		size_t nw = json_array_size(jids);
		int32_t *want = malloc((nw + 1) * sizeof(*want));
		for (size_t i = 0; i < nw; i++)
			want[i] = (int32_t)json_integer_value(json_array_get(jids, i));
		char what[160];
		snprintf(what, sizeof(what), "%s line %d \"%.60s\"", name, lines + 1, text);
		for (int pass = 0; pass < 2; pass++) {
			size_t n;
			int32_t *ids = tt_enc(kimi, text, tlen, &n);
			tt_expect_ids(ids, n, want, nw, what);
			free(ids);
		}
		size_t dl, sl;
		char *d = tt_dec(kimi, want, nw, 0, &dl);
		EXPECT(dl == json_string_length(jdec) && memcmp(d, json_string_value(jdec), dl) == 0,
		       "%s: decode gives \"%s\", expected \"%s\"", what, d, json_string_value(jdec));
		EXPECT(dl == tlen && memcmp(d, text, dl) == 0, "%s: does not round-trip", what);
		char *st = tt_stream_all(kimi, want, nw, 0, &sl);
		EXPECT(sl == dl && memcmp(st, d, dl) == 0, "%s: stream gives \"%s\", decode \"%s\"",
		       what, st, d);
		free(st);
		free(d);
		free(want);
		json_decref(o);
		lines++;
	}
	free(line);
	fclose(f);
	return lines;
}

START_TEST(test_encodings_jsonl)
{
	NEED_KIMI();
	int n = check_jsonl("encodings.jsonl");
	EXPECT(n == 40, "encodings.jsonl: %d lines, expected 40", n);
	printf("tokenizer_kimi: encodings.jsonl: %d of %d identical\n", n, n);
}
END_TEST

START_TEST(test_more_encodings_jsonl)
{
	NEED_KIMI();
	int n = check_jsonl("more_encodings.jsonl");
	EXPECT(n >= 200, "more_encodings.jsonl: only %d lines", n);
	printf("tokenizer_kimi: more_encodings.jsonl: %d of %d identical\n", n, n);
}
END_TEST

START_TEST(test_accessors)
{
	NEED_KIMI();
	ck_assert_uint_eq(inf_tok_vocab_size(kimi), KIMI_IDS);
	int32_t bos;
	ck_assert(!inf_tok_bos(kimi, &bos)); /* the config sets no add_bos_token */
	ck_assert_int_eq(bos, 163584);
	ck_assert_int_eq(inf_tok_eos_id(kimi), 163585);
	static const struct {
		int32_t id;
		const char *s;
	} sp[] = {{163584, "[BOS]"},         {163585, "[EOS]"},       {163586, "<|im_end|>"},
		  {163587, "<|im_user|>"},   {163588, "<|im_assistant|>"}, {163594, "<|im_system|>"},
		  {163601, "<|im_middle|>"}, {163838, "[UNK]"},       {163839, "[PAD]"}};
	for (size_t i = 0; i < sizeof(sp) / sizeof(sp[0]); i++) {
		ck_assert_int_eq(inf_tok_token_to_id(kimi, sp[i].s, strlen(sp[i].s)), sp[i].id);
		ck_assert_str_eq(inf_tok_id_to_token(kimi, sp[i].id, NULL), sp[i].s);
		ck_assert(inf_tok_is_special(kimi, sp[i].id));
	}
	ck_assert(!inf_tok_is_special(kimi, 0));
	ck_assert_ptr_null(inf_tok_id_to_token(kimi, KIMI_IDS, NULL));
	/* rank 0 is "!" (IQ==); id 2695 is " world" in the byte-level alphabet */
	ck_assert_str_eq(inf_tok_id_to_token(kimi, 0, NULL), "!");
	ck_assert_str_eq(inf_tok_id_to_token(kimi, 2695, NULL), "\xc4\xa0world");
	const char *b;
	size_t bl;
	ck_assert_int_eq(inf_tok_decode_id(kimi, 2695, &b, &bl), 0);
	ck_assert(bl == 6 && memcmp(b, " world", 6) == 0);

	/* the model-folder entry point picks the file */
	char dir[1024];
	inf_tok *t = NULL;
	k2_err err = {{0}};
	snprintf(dir, sizeof(dir), "%s/kimi-k2", tt_tokenizers());
	EXPECT(inf_tok_open_dir(dir, &t, &err) == 0, "open_dir %s: %s", dir, err.msg);
	ck_assert_uint_eq(inf_tok_vocab_size(t), KIMI_IDS);
	inf_tok_free(t);
	snprintf(dir, sizeof(dir), "%s/deepseek-v3", tt_tokenizers());
	EXPECT(inf_tok_open_dir(dir, &t, &err) == 0, "open_dir %s: %s", dir, err.msg);
	ck_assert_int_eq(inf_tok_token_to_id(t, "<｜begin▁of▁sentence｜>",
					     strlen("<｜begin▁of▁sentence｜>")), 0);
	inf_tok_free(t);
	t = (inf_tok *)1;
	ck_assert_int_eq(inf_tok_open_dir("/nonexistent-k2-dir", &t, &err), -ENOENT);
	ck_assert_ptr_null(t);
	EXPECT(strstr(err.msg, "/nonexistent-k2-dir: no tokenizer.json or tiktoken.model"),
	       "message: %s", err.msg);
}
END_TEST

START_TEST(test_special_tokens)
{
	NEED_KIMI();
	const char *text = "Hi<|im_end|>there [BOS]<|im_middle|>x";
	size_t n, na, nb, nc;
	int32_t *ids = tt_enc(kimi, text, strlen(text), &n);
	int32_t *a = tt_enc(kimi, "Hi", 2, &na);
	int32_t *b = tt_enc(kimi, "there ", 6, &nb);
	int32_t *c = tt_enc(kimi, "x", 1, &nc);
	int32_t want[64];
	size_t k = 0;
	memcpy(want + k, a, na * sizeof(*a)), k += na;
	want[k++] = 163586;
	memcpy(want + k, b, nb * sizeof(*b)), k += nb;
	want[k++] = 163584;
	want[k++] = 163601;
	memcpy(want + k, c, nc * sizeof(*c)), k += nc;
	tt_expect_ids(ids, n, want, k, text);
	size_t dl;
	char *d = tt_dec(kimi, ids, n, INF_TOK_SKIP_SPECIAL, &dl);
	ck_assert_str_eq(d, "Hithere x");
	free(d);
	d = tt_dec(kimi, ids, n, 0, &dl);
	ck_assert_str_eq(d, text);
	free(d);
	free(ids), free(a), free(b), free(c);
	/* almost-specials are text */
	ids = tt_enc(kimi, "<|im_end|", 9, &n);
	for (size_t i = 0; i < n; i++)
		ck_assert_int_lt(ids[i], KIMI_RANKS);
	free(ids);
}
END_TEST

/* ------------------------------------------------------------ merges */

/* bytes -> rank, built from the tokenizer's decode tables; open addressing. */
struct rank_map {
	const char **key;
	uint32_t *len;
	int32_t *rank;
	size_t cap;
};

static size_t fnv(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
	return (size_t)h;
}

static int32_t rank_of(const struct rank_map *m, const char *s, size_t n)
{
	for (size_t j = fnv(s, n) & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
		if (!m->key[j])
			return -1;
		if (m->len[j] == n && memcmp(m->key[j], s, n) == 0)
			return m->rank[j];
	}
}

static void rank_map_build(struct rank_map *m)
{
	m->cap = 1 << 19;
	m->key = calloc(m->cap, sizeof(*m->key));
	m->len = calloc(m->cap, sizeof(*m->len));
	m->rank = calloc(m->cap, sizeof(*m->rank));
	for (int32_t r = 0; r < KIMI_RANKS; r++) {
		const char *b;
		size_t n;
		EXPECT(inf_tok_decode_id(kimi, r, &b, &n) == 0, "rank %d has no bytes", r);
		size_t j = fnv(b, n) & (m->cap - 1);
		while (m->key[j])
			j = (j + 1) & (m->cap - 1);
		m->key[j] = b, m->len[j] = (uint32_t)n, m->rank[j] = r;
	}
}

/* tiktoken's byte_pair_encode, transcribed plainly: a piece that is a token is
 * that token; else merge the adjacent pair whose bytes have the lowest rank
 * (the leftmost on a tie) until no pair is a token. */
static size_t tiktoken_bpe(const struct rank_map *m, const char *s, size_t n, int32_t *out)
{
	int32_t whole = rank_of(m, s, n);
	if (whole >= 0) {
		out[0] = whole;
		return 1;
	}
	size_t cut[256], nc = n + 1; /* part i is s[cut[i] .. cut[i+1]) */
	for (size_t i = 0; i <= n; i++)
		cut[i] = i;
	for (;;) {
		int32_t best = -1;
		size_t bi = 0;
		for (size_t i = 0; i + 2 < nc; i++) {
			int32_t r = rank_of(m, s + cut[i], cut[i + 2] - cut[i]);
			if (r >= 0 && (best < 0 || r < best))
				best = r, bi = i;
		}
		if (best < 0)
			break;
		memmove(cut + bi + 1, cut + bi + 2, (nc - bi - 2) * sizeof(*cut));
		nc--;
	}
	for (size_t i = 0; i + 1 < nc; i++)
		out[i] = rank_of(m, s + cut[i], cut[i + 1] - cut[i]);
	return nc - 1;
}

static uint32_t rng_state = 0x9e3779b9u;

static uint32_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return rng_state;
}

/* Appends one random character of set (space-separated UTF-8 items). */
static size_t pick(const char *const *set, size_t nset, char *out)
{
	const char *c = set[rng() % nset];
	memcpy(out, c, strlen(c));
	return strlen(c);
}

/* Random texts that pat_str keeps as one piece (a lowercase word with or
 * without a leading space, a Han run, a lowercase Cyrillic word, a run of
 * punctuation, 1-3 digits, bytes that are never UTF-8): the C tokenizer's
 * ids must equal the transcription's. */
START_TEST(test_merges_match_tiktoken)
{
	NEED_KIMI();
	struct rank_map m;
	rank_map_build(&m);
	static const char *const latin[] = {"e", "t", "a", "o", "i", "n", "s", "h", "r", "d",
					    "l", "u", "c", "m", "w", "f", "g", "y", "p", "b",
					    "v", "k", "x", "q", "j", "z", "e", "e", "t", "a"};
	static const char *const han[] = {"的", "一", "是", "不", "了", "人", "我", "在", "有", "他",
					  "这", "中", "大", "来", "上", "国", "个", "到", "说", "们",
					  "为", "子", "和", "你", "地", "出", "道", "也", "时", "年"};
	static const char *const cyr[] = {"о", "е", "а", "и", "н", "т", "с", "р", "в", "л",
					  "к", "м", "д", "п", "у", "я", "ы", "ь", "г", "з"};
	static const char *const punct[] = {"!", "\"", "#", "$", "%", "&", "(", ")", "*", "+",
					    ",", "-", ".", "/", ":", ";", "<", "=", ">", "?",
					    "@", "[", "\\", "]", "^", "_", "`", "{", "|", "}", "~"};
	static const char *const digit[] = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
	static const char *const bad[] = {"\x80", "\x9f", "\xa0", "\xbf", "\xf8", "\xff", "\xfe"};
	const struct {
		const char *const *set;
		size_t n, max;
		const char *lead;
	} kinds[] = {{latin, 30, 24, ""}, {latin, 30, 16, " "}, {han, 30, 10, ""},
		     {cyr, 20, 12, ""},   {cyr, 20, 12, " "},   {punct, 31, 10, ""},
		     {digit, 10, 3, ""},  {bad, 7, 12, ""}};
	size_t pieces = 0, tokens = 0;
	for (int round = 0; round < 30000; round++) {
		int k = (int)(rng() % (sizeof(kinds) / sizeof(kinds[0])));
		char s[128];
		size_t n = strlen(kinds[k].lead);
		memcpy(s, kinds[k].lead, n);
		size_t chars = 1 + rng() % kinds[k].max;
		for (size_t i = 0; i < chars; i++)
			n += pick(kinds[k].set, kinds[k].n, s + n);
		int32_t want[128];
		size_t nw = tiktoken_bpe(&m, s, n, want);
		size_t ng;
		int32_t *got = tt_enc(kimi, s, n, &ng);
		char what[200];
		snprintf(what, sizeof(what), "random piece \"%.*s\" (kind %d)", (int)n, s, k);
		tt_expect_ids(got, ng, want, nw, what);
		free(got);
		pieces++;
		tokens += nw;
	}
	printf("tokenizer_kimi: %zu random pieces (%zu tokens) merge as tiktoken does\n", pieces,
	       tokens);
	free(m.key), free(m.len), free(m.rank);
}
END_TEST

/* ------------------------------------------------------------ the pattern */

/* pat_str as tokenization_kimi.py writes it (the eight alternatives joined
 * with "|"), transcribed here independently of infer/tok_tiktoken.c. */
static const char kimi_py_pat_str[] =
	"[\\p{Han}]+"
	"|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*"
	"[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
	"|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+"
	"[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
	"|\\p{N}{1,3}"
	"| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
	"|\\s*[\\r\\n]+"
	"|\\s+(?!\\S)"
	"|\\s+";

/* s with every `from` replaced by `to` (malloc'd). */
static char *replace_all(const char *s, const char *from, const char *to)
{
	size_t fl = strlen(from), tl = strlen(to), cap = strlen(s) * 2 + 256, k = 0;
	char *out = malloc(cap);
	while (*s) {
		if (strncmp(s, from, fl) == 0) {
			EXPECT(k + tl < cap, "replace_all: no room");
			memcpy(out + k, to, tl);
			k += tl, s += fl;
		} else {
			out[k++] = *s++;
		}
		EXPECT(k < cap, "replace_all: no room");
	}
	out[k] = 0;
	return out;
}

static pcre2_code *compile(const char *pat)
{
	int ec;
	PCRE2_SIZE eo;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
				       PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED | PCRE2_ENDANCHORED,
				       &ec, &eo, NULL);
	EXPECT(re != NULL, "cannot compile %s (error %d at %zu)", pat, ec, (size_t)eo);
	pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
	return re;
}

static bool whole(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t n)
{
	return pcre2_match(re, (PCRE2_SPTR)s, n, 0, 0, md, NULL) > 0;
}

/* The rewrite changes nothing but the intersections and \p{Han}, and each
 * rewritten class holds exactly the code points of the intersection. */
START_TEST(test_pattern_rewrite)
{
	ck_assert_str_eq(tok_kimi_pat_original, kimi_py_pat_str);
	char *a = replace_all(kimi_py_pat_str,
			      "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]",
			      tok_kimi_class_upper);
	char *b = replace_all(a, "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]", tok_kimi_class_lower);
	char *c = replace_all(b, "[\\p{Han}]+", "[\\p{sc:Han}]+");
	ck_assert_str_eq(c, tok_kimi_pat_pcre2);
	free(a), free(b), free(c);

	pcre2_code *up = compile("[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]");
	pcre2_code *lo = compile("[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]");
	pcre2_code *hn = compile("\\p{sc:Han}");
	pcre2_code *up2 = compile(tok_kimi_class_upper);
	pcre2_code *lo2 = compile(tok_kimi_class_lower);
	pcre2_match_data *md = pcre2_match_data_create(1, NULL);
	size_t n_up = 0, n_lo = 0, n_han = 0, n_cp = 0;
	for (uint32_t cp = 0; cp < 0x110000; cp++) {
		if (cp >= 0xd800 && cp < 0xe000)
			continue; /* surrogates are not UTF-8 */
		char s[4];
		size_t n = tok_utf8_put(cp, s);
		bool h = whole(hn, md, s, n);
		bool want_up = whole(up, md, s, n) && !h, want_lo = whole(lo, md, s, n) && !h;
		EXPECT(whole(up2, md, s, n) == want_up, "U+%04X: upper class %d, intersection %d",
		       cp, !want_up, want_up);
		EXPECT(whole(lo2, md, s, n) == want_lo, "U+%04X: lower class %d, intersection %d",
		       cp, !want_lo, want_lo);
		n_up += want_up, n_lo += want_lo, n_han += h, n_cp++;
	}
	printf("tokenizer_kimi: the rewritten classes equal the intersections on all %zu code "
	       "points (upper %zu, lower %zu, Han %zu)\n", n_cp, n_up, n_lo, n_han);
	/* Script, not Script_Extensions: U+3001 is Common (scx Han), U+4E2D Han */
	ck_assert(!whole(hn, md, "\xe3\x80\x81", 3));
	ck_assert(whole(hn, md, "\xe4\xb8\xad", 3));
	pcre2_match_data_free(md);
	pcre2_code_free(up), pcre2_code_free(lo), pcre2_code_free(hn);
	pcre2_code_free(up2), pcre2_code_free(lo2);
}
END_TEST

/* ------------------------------------------------------------ robustness, speed */

START_TEST(test_random_bytes_roundtrip)
{
	NEED_KIMI();
	for (int r = 0; r < 300; r++) {
		char s[300];
		size_t n = rng() % sizeof(s);
		for (size_t i = 0; i < n; i++)
			s[i] = r % 2 ? (char)rng() : "a \n\xe4\xb8\xad\xf0\x9f\x98\x80.1'"[rng() % 13];
		size_t ni, dl;
		int32_t *ids = tt_enc(kimi, s, n, &ni);
		char *d = tt_dec(kimi, ids, ni, INF_TOK_RAW, &dl);
		EXPECT(dl == n && memcmp(d, s, n) == 0, "round %d: %zu bytes do not round-trip", r,
		       n);
		free(d);
		free(ids);
	}
	size_t ni;
	int32_t *ids = tt_enc(kimi, "", 0, &ni);
	ck_assert_uint_eq(ni, 0);
	free(ids);
}
END_TEST

/* The texts of more_encodings.jsonl repeated to 4 MiB; prints MB/s of CPU. */
START_TEST(test_throughput)
{
	NEED_KIMI();
	char path[1024];
	snprintf(path, sizeof(path), "%s/kimi-k2/more_encodings.jsonl", tt_tokenizers());
	FILE *f = fopen(path, "r");
	EXPECT(f != NULL, "cannot open %s", path);
	size_t len = 4u << 20, k = 0, cap = 0;
	char *buf = malloc(len), *line = NULL;
	ssize_t ll;
	while (k < len) {
		if ((ll = getline(&line, &cap, f)) <= 0) {
			rewind(f);
			continue;
		}
		json_t *o = json_loadb(line, (size_t)ll, 0, NULL);
		const char *t = json_string_value(json_object_get(o, "text"));
		size_t tl = t ? strlen(t) : 0;
		tl = tl < len - k ? tl : len - k;
		memcpy(buf + k, t, tl);
		k += tl;
		if (k < len)
			buf[k++] = '\n';
		json_decref(o);
	}
	free(line);
	fclose(f);
	size_t n;
	int32_t *ids = tt_enc(kimi, buf, len, &n); /* warms the piece cache */
	free(ids);
	double c0 = tt_cpu();
	ids = tt_enc(kimi, buf, len, &n);
	double dc = tt_cpu() - c0;
	printf("tokenizer_kimi: encode 4 MiB of mixed text in %.1f ms CPU: %.1f MB/s (%zu ids, "
	       "%.2f bytes/id)\n", dc * 1e3, len / dc / 1e6, n, (double)len / n);
	size_t dl;
	char *d = tt_dec(kimi, ids, n, INF_TOK_RAW, &dl);
	EXPECT(dl == len && memcmp(d, buf, len) == 0, "4 MiB do not round-trip");
	free(d);
	free(ids);
	free(buf);
}
END_TEST

/* ------------------------------------------------------------ small files */

static void b64(const uint8_t *s, size_t n, char *out)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0) |
			     (i + 2 < n ? s[i + 2] : 0);
		out[o++] = a[v >> 18];
		out[o++] = a[(v >> 12) & 63];
		out[o++] = i + 1 < n ? a[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? a[v & 63] : '=';
	}
	out[o] = 0;
}

/* A tiny vocabulary: ranks 0-255 the bytes, then "ab" 256, "abc" 257,
 * "bc" 258, "aa" 259, "aaa" 260 (one line each, "\n"-terminated). */
static char *tiny_text(size_t *len)
{
	static const char *const extra[] = {"ab", "abc", "bc", "aa", "aaa"};
	char *t = malloc(16384);
	size_t k = 0;
	for (int r = 0; r < 261; r++) {
		uint8_t one = (uint8_t)r;
		char e[16];
		if (r < 256)
			b64(&one, 1, e);
		else
			b64((const uint8_t *)extra[r - 256], strlen(extra[r - 256]), e);
		k += (size_t)sprintf(t + k, "%s %d\n", e, r);
	}
	*len = k;
	return t;
}

static void write_str(const char *name, const char *s, size_t n)
{
	tu_write_file(tu_tmp_path(name), s, n);
}

/* Loading name (in the temp dir) fails with code, and the message names the
 * file `named` (in the temp dir; NULL: name itself) and holds `want`. */
static void expect_error_in(const char *name, const char *named, int code, const char *want)
{
	const char *path = tu_tmp_path(name);
	const char *npath = tu_tmp_path(named ? named : name);
	inf_tok *t = (inf_tok *)1;
	k2_err err = {{0}};
	int rc = inf_tok_load(path, &t, &err);
	EXPECT(rc == code, "%s: rc %d, expected %d (%s)", name, rc, code, err.msg);
	EXPECT(t == NULL, "%s: *out not NULL on failure", name);
	EXPECT(strstr(err.msg, npath) != NULL, "%s: message does not name %s: %s", name, npath,
	       err.msg);
	EXPECT(strstr(err.msg, want) != NULL, "%s: message \"%s\" lacks \"%s\"", name, err.msg,
	       want);
	printf("tokenizer_kimi: %s refused: %s\n", name, err.msg);
}

static void expect_error(const char *name, int code, const char *want)
{
	expect_error_in(name, NULL, code, want);
}

/* tiny_text with line `line` (1-based) replaced by repl (no '\n'). */
static void write_tiny_edit(const char *name, int line, const char *repl)
{
	size_t n;
	char *t = tiny_text(&n);
	char *o = malloc(n + strlen(repl) + 2);
	const char *s = t;
	for (int i = 1; i < line; i++)
		s = strchr(s, '\n') + 1;
	const char *e = strchr(s, '\n');
	size_t k = (size_t)(s - t);
	memcpy(o, t, k);
	k += (size_t)sprintf(o + k, "%s", repl);
	memcpy(o + k, e, n - (size_t)(e - t));
	k += n - (size_t)(e - t);
	write_str(name, o, k);
	free(o);
	free(t);
}

START_TEST(test_tiny_vocabulary)
{
	size_t n;
	char *t = tiny_text(&n);
	write_str("tiny.tiktoken", t, n);
	inf_tok *tok = NULL;
	k2_err err = {{0}};
	const char *path = tu_tmp_path("tiny.tiktoken");
	EXPECT(inf_tok_load(path, &tok, &err) == 0, "load %s: %s", path, err.msg);
	ck_assert_uint_eq(inf_tok_vocab_size(tok), 261 + 256);
	/* the slots with no config are reserved tokens */
	ck_assert_int_eq(inf_tok_token_to_id(tok, "<|reserved_token_261|>", 22), 261);
	ck_assert_int_eq(inf_tok_token_to_id(tok, "<|reserved_token_516|>", 22), 516);
	ck_assert(inf_tok_is_special(tok, 300));
	ck_assert_int_eq(inf_tok_eos_id(tok), -1);
	static const struct {
		const char *text;
		int32_t ids[4];
		size_t n;
	} cases[] = {
		{"abc", {257}, 1},         /* a whole token */
		{"abcc", {257, 'c'}, 2},   /* ab (256) before bc (258) */
		{"aab", {'a', 256}, 2},    /* ab (256) ranks before aa (259) */
		{"aaaa", {259, 259}, 2},   /* leftmost aa first, then aa; aaa never forms */
		{"abab", {256, 256}, 2},
		{"x<|reserved_token_262|>y", {'x', 262, 'y'}, 3},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t ni;
		int32_t *ids = tt_enc(tok, cases[i].text, strlen(cases[i].text), &ni);
		tt_expect_ids(ids, ni, cases[i].ids, cases[i].n, cases[i].text);
		free(ids);
	}
	inf_tok_free(tok);

	/* CRLF line ends and a last line without '\n' load the same */
	char *crlf = malloc(2 * n);
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (t[i] == '\n')
			crlf[k++] = '\r';
		crlf[k++] = t[i];
	}
	write_str("crlf.tiktoken", crlf, k - 2);
	path = tu_tmp_path("crlf.tiktoken");
	EXPECT(inf_tok_load(path, &tok, &err) == 0, "load %s: %s", path, err.msg);
	ck_assert_uint_eq(inf_tok_vocab_size(tok), 261 + 256);
	inf_tok_free(tok);
	free(crlf);

	/* a config's added_tokens_decoder and bos / eos */
	mkdir(tu_tmp_path("cfg"), 0755);
	write_str("cfg/tiktoken.model", t, n);
	const char *cfg = "{\"added_tokens_decoder\": {\"261\": {\"content\": \"[BOS]\"}, "
			  "\"262\": {\"content\": \"<x>\", \"special\": false}}, "
			  "\"bos_token\": \"[BOS]\", \"eos_token\": {\"content\": \"<x>\"}, "
			  "\"add_bos_token\": true}";
	write_str("cfg/tokenizer_config.json", cfg, strlen(cfg));
	EXPECT(inf_tok_open_dir(tu_tmp_path("cfg"), &tok, &err) == 0, "open_dir: %s", err.msg);
	int32_t bos;
	ck_assert(inf_tok_bos(tok, &bos));
	ck_assert_int_eq(bos, 261);
	ck_assert_int_eq(inf_tok_eos_id(tok), 262);
	ck_assert(!inf_tok_is_special(tok, 262));
	ck_assert_int_eq(inf_tok_token_to_id(tok, "<|reserved_token_263|>", 22), 263);
	inf_tok_free(tok);
	free(t);
}
END_TEST

START_TEST(test_corrupt_files)
{
	size_t n;
	char *t = tiny_text(&n);

	write_tiny_edit("b64.tiktoken", 3, "A!== 2");
	expect_error("b64.tiktoken", -EINVAL, ": line 3: bad base64");
	write_tiny_edit("b64len.tiktoken", 5, "BAA 4");
	expect_error("b64len.tiktoken", -EINVAL, ": line 5: bad base64");
	write_tiny_edit("b64pad.tiktoken", 2, "AR== 1"); /* not canonical: AQ== */
	expect_error("b64pad.tiktoken", -EINVAL, ": line 2: bad base64");
	write_tiny_edit("b64mid.tiktoken", 9, "C=A= 8");
	expect_error("b64mid.tiktoken", -EINVAL, ": line 9: bad base64");
	write_tiny_edit("dup.tiktoken", 259, "YWI= 258"); /* "ab" again */
	expect_error("dup.tiktoken", -EINVAL, ": line 259: token \"YWI=\" is given twice (first on line 257)");
	write_tiny_edit("duprank.tiktoken", 100, "YWJj 98");
	expect_error("duprank.tiktoken", -EINVAL, ": line 100: rank 98 is given twice");
	write_tiny_edit("gap.tiktoken", 258, "YWJj 300");
	expect_error("gap.tiktoken", -EINVAL, ": line 258: rank 300 where 257 was expected");
	write_tiny_edit("norank.tiktoken", 7, "Bg==");
	expect_error("norank.tiktoken", -EINVAL, ": line 7: expected \"BASE64 RANK\"");
	write_tiny_edit("emptyrank.tiktoken", 7, "Bg== ");
	expect_error("emptyrank.tiktoken", -EINVAL, ": line 7: the rank \"\" is not a decimal");
	write_tiny_edit("badrank.tiktoken", 7, "Bg== 6x");
	expect_error("badrank.tiktoken", -EINVAL, ": line 7: the rank \"6x\" is not a decimal");
	write_tiny_edit("zerorank.tiktoken", 7, "Bg== 06");
	expect_error("zerorank.tiktoken", -EINVAL, ": line 7: the rank \"06\"");
	write_tiny_edit("twospace.tiktoken", 7, "Bg==  6");
	expect_error("twospace.tiktoken", -EINVAL, ": line 7: the rank \" 6\"");
	write_tiny_edit("blank.tiktoken", 12, "");
	expect_error("blank.tiktoken", -EINVAL, ": line 12: expected \"BASE64 RANK\", found an empty line");
	char longline[1200];
	memset(longline, 'A', 1100);
	strcpy(longline + 1100, " 40");
	write_tiny_edit("long.tiktoken", 41, longline);
	expect_error("long.tiktoken", -EINVAL, ": line 41: longer than 1024 bytes");
	/* cut in the middle of line 200's base64 */
	const char *cut = t;
	for (int i = 1; i < 200; i++)
		cut = strchr(cut, '\n') + 1;
	write_str("truncated.tiktoken", t, (size_t)(cut - t) + 2);
	expect_error("truncated.tiktoken", -EINVAL, ": line 200: expected \"BASE64 RANK\"");
	/* the real file, cut inside a line */
	char path[1024];
	snprintf(path, sizeof(path), "%s/kimi-k2/tiktoken.model", tt_tokenizers());
	size_t rn;
	char *real = tu_read_file(path, &rn);
	size_t at = rn / 2, line = 1;
	while (real[at] != '\n')
		at++;
	at += 3; /* two characters into the next line's base64 */
	for (size_t i = 0; i < at; i++)
		line += real[i] == '\n';
	write_str("real-cut.tiktoken", real, at);
	char want[64];
	snprintf(want, sizeof(want), ": line %zu: expected \"BASE64 RANK\"", line);
	expect_error("real-cut.tiktoken", -EINVAL, want);
	free(real);

	write_str("nobyte.tiktoken", strchr(t, '\n') + 1, n - (size_t)(strchr(t, '\n') + 1 - t));
	expect_error("nobyte.tiktoken", -EINVAL, ": line 1: rank 1 where 0 was expected");
	write_tiny_edit("nobyte2.tiktoken", 1, "YWJjZA== 0");
	expect_error("nobyte2.tiktoken", -EINVAL, ": byte 0x00 has no token");
	write_str("empty.tiktoken", "", 0);
	expect_error("empty.tiktoken", -EINVAL, ": no tokens");
	expect_error("missing.tiktoken", -ENOENT, ": cannot open");

	/* config errors name the config */
	mkdir(tu_tmp_path("c1"), 0755);
	write_str("c1/tiktoken.model", t, n);
	const char *bad_id = "{\"added_tokens_decoder\": {\"12\": {\"content\": \"<x>\"}}}";
	write_str("c1/tokenizer_config.json", bad_id, strlen(bad_id));
	const char *c1 = "c1/tokenizer_config.json";
	expect_error_in("c1/tiktoken.model", c1, -EINVAL,
			": added_tokens_decoder[\"12\"]: expected an id in [261, 517)");
	const char *dup = "{\"added_tokens_decoder\": {\"261\": {\"content\": \"<x>\"}, "
			  "\"262\": {\"content\": \"<x>\"}}}";
	write_str("c1/tokenizer_config.json", dup, strlen(dup));
	expect_error_in("c1/tiktoken.model", c1, -EINVAL, "\"<x>\" is given twice");
	const char *bos = "{\"bos_token\": \"[NOPE]\"}";
	write_str("c1/tokenizer_config.json", bos, strlen(bos));
	expect_error_in("c1/tiktoken.model", c1, -EINVAL, ": bos_token \"[NOPE]\" is not a token");
	write_str("c1/tokenizer_config.json", "{", 1);
	expect_error_in("c1/tiktoken.model", c1, -EINVAL, ": invalid JSON at line 1");
	free(t);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("tokenizer_kimi");
	TCase *tc = tu_tcase(s, "kimi-k2", 120);
	tcase_add_unchecked_fixture(tc, kimi_setup, kimi_teardown);
	TU_ADD_TESTS(tc, test_encodings_jsonl, test_more_encodings_jsonl, test_accessors,
		     test_special_tokens, test_merges_match_tiktoken, test_random_bytes_roundtrip,
		     test_throughput);
	tc = tu_tcase(s, "pattern", 120);
	TU_ADD_TESTS(tc, test_pattern_rewrite);
	tc = tu_tcase(s, "files", 60);
	tcase_add_checked_fixture(tc, tu_tmpdir_setup, tu_tmpdir_teardown);
	TU_ADD_TESTS(tc, test_tiny_vocabulary, test_corrupt_files);
	return s;
}

int main(void)
{
	return tu_run_suite(suite());
}
