/* test_tokenizer.c — infer/tok_*.c against HuggingFace: every line of
 * tokenizers/deepseek-v3/encodings.jsonl (ids, decode, streaming decode), the
 * pre-tokenizer's grouping rules (digits by three, CJK runs, added tokens cut
 * out of the text), arbitrary bytes round-tripping, and small tokenizer.json
 * files written here to pin down the BPE merge order, the Split behaviors,
 * the added-token flags and the errors for corrupt or unsupported files.
 * Load time and encode throughput are printed (informational). */
#define _GNU_SOURCE /* memmem */
#include "tokenizer.h"

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "test_tok_util.h"
#include "test_util.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inf_tok *ds; /* the DeepSeek-V3 tokenizer, loaded once before the forks */
static char ds_path[1024];

static void ds_setup(void)
{
	snprintf(ds_path, sizeof(ds_path), "%s/deepseek-v3/tokenizer.json", tt_tokenizers());
	k2_err err = {{0}};
	double t0 = now(), c0 = tt_cpu();
	int rc = inf_tok_load(ds_path, &ds, &err);
	double dt = now() - t0, dc = tt_cpu() - c0;
	if (rc) {
		fprintf(stderr, "cannot load %s: %s\n", ds_path, err.msg);
		ds = NULL;
		return;
	}
	printf("tokenizer: loaded %s in %.1f ms (%.1f ms CPU; %u ids)\n", ds_path, dt * 1e3,
	       dc * 1e3, inf_tok_vocab_size(ds));
}

static void ds_teardown(void)
{
	inf_tok_free(ds);
	ds = NULL;
}

static int32_t *encs(const char *s, size_t *n)
{
	EXPECT(ds != NULL, "tokenizer not loaded from %s", ds_path);
	return tt_enc(ds, s, strlen(s), n);
}

/* encode(a + b + ...) must equal encode(a) ++ encode(b) ++ ... */
static void expect_concat(const char *whole, const char *const *parts, size_t nparts)
{
	size_t nw;
	int32_t *w = encs(whole, &nw);
	int32_t cat[256];
	size_t nc = 0;
	for (size_t i = 0; i < nparts; i++) {
		size_t np;
		int32_t *p = encs(parts[i], &np);
		EXPECT(nc + np <= 256, "too many ids");
		memcpy(cat + nc, p, np * sizeof(*p));
		nc += np;
		free(p);
	}
	tt_expect_ids(w, nw, cat, nc, whole);
	free(w);
}

/* Every line of encodings.jsonl: ids, decode, streaming decode. */
static void check_jsonl(inf_tok *tok)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/deepseek-v3/encodings.jsonl", tt_tokenizers());
	FILE *f = fopen(path, "r");
	EXPECT(f != NULL, "cannot open %s", path);
	char *line = NULL;
	size_t cap = 0;
	ssize_t ll;
	int lines = 0;
	while ((ll = getline(&line, &cap, f)) > 0) {
		if (ll <= 1)
			continue;
		json_error_t je;
		json_t *o = json_loadb(line, (size_t)ll, 0, &je);
		EXPECT(o != NULL, "%s line %d: %s", path, lines + 1, je.text);
		json_t *jt = json_object_get(o, "text"), *jids = json_object_get(o, "ids");
		json_t *jdec = json_object_get(o, "decoded");
		EXPECT(json_is_string(jt) && json_is_array(jids) && json_is_string(jdec),
		       "%s line %d: missing fields", path, lines + 1);
		size_t nw = json_array_size(jids);
		int32_t *want = malloc((nw + 1) * sizeof(*want));
		for (size_t i = 0; i < nw; i++)
			want[i] = (int32_t)json_integer_value(json_array_get(jids, i));
		size_t n;
		int32_t *ids = tt_enc(tok, json_string_value(jt), json_string_length(jt), &n);
		char what[128];
		snprintf(what, sizeof(what), "line %d \"%.40s\"", lines + 1, json_string_value(jt));
		tt_expect_ids(ids, n, want, nw, what);
		/* the same again, now from the piece cache */
		free(ids);
		ids = tt_enc(tok, json_string_value(jt), json_string_length(jt), &n);
		tt_expect_ids(ids, n, want, nw, what);

		size_t dl;
		char *d = tt_dec(tok, want, nw, 0, &dl);
		EXPECT(dl == json_string_length(jdec) && memcmp(d, json_string_value(jdec), dl) == 0,
		       "%s: decode gives \"%s\", expected \"%s\"", what, d, json_string_value(jdec));
		size_t sl;
		char *st = tt_stream_all(tok, want, nw, 0, &sl);
		EXPECT(sl == dl && memcmp(st, d, dl) == 0, "%s: stream gives \"%s\", decode \"%s\"",
		       what, st, d);
		free(st);
		free(d);
		free(ids);
		free(want);
		json_decref(o);
		lines++;
	}
	free(line);
	fclose(f);
	EXPECT(lines >= 20, "%s: only %d lines", path, lines);
}

START_TEST(test_encodings_jsonl)
{
	EXPECT(ds != NULL, "tokenizer not loaded from %s", ds_path);
	check_jsonl(ds);
}
END_TEST

START_TEST(test_accessors)
{
	EXPECT(ds != NULL, "tokenizer not loaded from %s", ds_path);
	ck_assert_uint_eq(inf_tok_vocab_size(ds), 128815);
	size_t len;
	const char *s = inf_tok_id_to_token(ds, 19923, &len);
	ck_assert_ptr_nonnull(s);
	ck_assert_str_eq(s, "Hello");
	ck_assert_uint_eq(len, 5);
	ck_assert_str_eq(inf_tok_id_to_token(ds, 2058, NULL), "\xc4\xa0world"); /* "Ġworld" */
	ck_assert_ptr_null(inf_tok_id_to_token(ds, 128815, NULL));
	ck_assert_ptr_null(inf_tok_id_to_token(ds, -1, NULL));
	const char *user = "<\xef\xbd\x9cUser\xef\xbd\x9c>"; /* <｜User｜> */
	ck_assert_int_eq(inf_tok_token_to_id(ds, user, strlen(user)), 128803);
	ck_assert_int_eq(inf_tok_token_to_id(ds, "Hello", 5), 19923);
	ck_assert_int_eq(inf_tok_token_to_id(ds, "no such token!", 14), -1);
	ck_assert(inf_tok_is_special(ds, 0));
	ck_assert(!inf_tok_is_special(ds, 128803)); /* an added token, not special */
	ck_assert(!inf_tok_is_special(ds, 19923));
	int32_t bos = -2;
	ck_assert(inf_tok_bos(ds, &bos)); /* tokenizer_config.json: add_bos_token */
	ck_assert_int_eq(bos, 0);
	ck_assert_int_eq(inf_tok_eos_id(ds), 1);
	const char *b;
	ck_assert_int_eq(inf_tok_decode_id(ds, 2058, &b, &len), 0);
	ck_assert_uint_eq(len, 6);
	ck_assert(memcmp(b, " world", 6) == 0);
	ck_assert_int_eq(inf_tok_decode_id(ds, 0, &b, &len), 0);
	ck_assert(len == strlen("<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"));
	ck_assert_int_eq(inf_tok_decode_id(ds, 130, &b, &len), 0); /* "Ã" is byte 0xC3 */
	ck_assert_uint_eq(len, 1);
	ck_assert_uint_eq((uint8_t)b[0], 0xc3);
	ck_assert_int_eq(inf_tok_decode_id(ds, 128815, &b, &len), -EINVAL);
	ck_assert_int_eq(inf_tok_decode_id(ds, -5, &b, &len), -EINVAL);
}
END_TEST

START_TEST(test_empty)
{
	size_t n = 99;
	int32_t *ids = encs("", &n);
	ck_assert_uint_eq(n, 0);
	free(ids);
	size_t dl = 99;
	char *d = tt_dec(ds, NULL, 0, 0, &dl);
	ck_assert_uint_eq(dl, 0);
	free(d);
	d = tt_stream_all(ds, NULL, 0, 0, &dl);
	ck_assert_uint_eq(dl, 0);
	free(d);
}
END_TEST

START_TEST(test_invalid_utf8)
{
	EXPECT(ds != NULL, "tokenizer not loaded from %s", ds_path);
	static const struct {
		const char *in;
		size_t len;
		const char *lossy; /* from_utf8_lossy of the same bytes */
	} cases[] = {
		{"\xff", 1, "\xef\xbf\xbd"},
		{"\xc3", 1, "\xef\xbf\xbd"},
		{"a\x80" "b", 3, "a\xef\xbf\xbd" "b"},
		{"x\xe2\x82", 3, "x\xef\xbf\xbd"},               /* truncated euro sign: one U+FFFD */
		{"\xe2\x82" "A", 3, "\xef\xbf\xbd" "A"},
		{"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* a surrogate: three */
		{"\xf0\x9f\x9a", 3, "\xef\xbf\xbd"},
		{"caf\xc3\xa9 \xc3(", 8, "caf\xc3\xa9 \xef\xbf\xbd("},
		{"12\xff" "34 \xfe\xfe\xfe", 9, "12\xef\xbf\xbd" "34 \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		size_t n;
		int32_t *ids = tt_enc(ds, cases[c].in, cases[c].len, &n);
		EXPECT(n >= 1, "case %zu: no ids", c);
		size_t dl;
		char *raw = tt_dec(ds, ids, n, INF_TOK_RAW, &dl);
		EXPECT(dl == cases[c].len && memcmp(raw, cases[c].in, dl) == 0,
		       "case %zu: raw decode does not give the input back", c);
		free(raw);
		char *d = tt_dec(ds, ids, n, 0, &dl);
		EXPECT(dl == strlen(cases[c].lossy) && memcmp(d, cases[c].lossy, dl) == 0,
		       "case %zu: lossy decode gives \"%s\"", c, d);
		size_t sl;
		char *st = tt_stream_all(ds, ids, n, 0, &sl);
		EXPECT(sl == dl && memcmp(st, d, dl) == 0, "case %zu: stream differs from decode", c);
		free(st);
		free(d);
		free(ids);
	}
	/* a lone byte is its own byte token: 0xff is "ÿ" (id 190), 0xc3 is "Ã" (130) */
	size_t n;
	int32_t *ids = tt_enc(ds, "\xff", 1, &n);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(ids[0], 190);
	free(ids);
	ids = tt_enc(ds, "\xc3", 1, &n);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(ids[0], 130);
	free(ids);
}
END_TEST

/* Arbitrary bytes encode and decode back exactly. */
START_TEST(test_random_bytes_roundtrip)
{
	EXPECT(ds != NULL, "tokenizer not loaded from %s", ds_path);
	size_t len = 200000;
	char *buf = malloc(len);
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < len; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		uint8_t b = (uint8_t)(x >> 56);
		/* mix in ASCII words and spaces so the regexes have work to do */
		buf[i] = (x >> 20) % 4 == 0 ? (char)b : (x >> 24) % 5 == 0 ? ' ' : (char)('a' + b % 26);
	}
	size_t n;
	double t0 = now();
	int32_t *ids = tt_enc(ds, buf, len, &n);
	double dt = now() - t0;
	printf("tokenizer: %zu random-ish bytes -> %zu ids in %.1f ms\n", len, n, dt * 1e3);
	for (size_t i = 0; i < n; i++)
		EXPECT(ids[i] >= 0 && (uint32_t)ids[i] < inf_tok_vocab_size(ds), "bad id %d", ids[i]);
	size_t dl;
	char *raw = tt_dec(ds, ids, n, INF_TOK_RAW, &dl);
	EXPECT(dl == len && memcmp(raw, buf, len) == 0, "random bytes do not round-trip");
	free(raw);
	char *d = tt_dec(ds, ids, n, 0, &dl);
	size_t sl;
	char *st = tt_stream_all(ds, ids, n, 0, &sl);
	EXPECT(sl == dl && memcmp(st, d, dl) == 0, "stream differs from decode on random bytes");
	free(st);
	free(d);
	free(ids);
	free(buf);
}
END_TEST

START_TEST(test_long_run)
{
	EXPECT(ds != NULL, "tokenizer not loaded from %s", ds_path);
	/* (the 300-x line of encodings.jsonl checks exact ids; this one checks
	 * that a long run merges, round-trips and stays fast) */
	size_t len = 100000;
	char *s = malloc(len + 1);
	memset(s, 'x', len);
	s[len] = 0;
	size_t n;
	double t0 = now();
	int32_t *ids = tt_enc(ds, s, len, &n);
	double dt = now() - t0;
	printf("tokenizer: a run of %zu 'x' -> %zu ids in %.1f ms\n", len, n, dt * 1e3);
	EXPECT(n < len / 4, "a long run merged into only %zu tokens", n);
	size_t dl;
	char *d = tt_dec(ds, ids, n, 0, &dl);
	EXPECT(dl == len && memcmp(d, s, len) == 0, "run does not round-trip");
	free(d);
	free(ids);
	/* a long run of spaces before a word: no quadratic regex blow-up */
	memset(s, ' ', len);
	s[len - 1] = 'a';
	t0 = now();
	ids = tt_enc(ds, s, len, &n);
	dt = now() - t0;
	printf("tokenizer: %zu spaces + 'a' -> %zu ids in %.1f ms\n", len, n, dt * 1e3);
	EXPECT(dt < 5.0, "spaces took %.1f s", dt);
	d = tt_dec(ds, ids, n, 0, &dl);
	EXPECT(dl == len && memcmp(d, s, len) == 0, "spaces do not round-trip");
	free(d);
	free(ids);
	free(s);
}
END_TEST

START_TEST(test_added_token_in_middle)
{
	/* <｜User｜> (128803, normalized, not special) and <｜end▁of▁sentence｜> (1, special) */
	const char *user = "<\xef\xbd\x9cUser\xef\xbd\x9c>";
	const char *eos = "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
	char text[256];
	snprintf(text, sizeof(text), "Hello, world%sHow are you?%s 42", user, eos);
	size_t n, na, nb, nc;
	int32_t *ids = encs(text, &n);
	int32_t *a = encs("Hello, world", &na);
	int32_t *b = encs("How are you?", &nb);
	int32_t *c = encs(" 42", &nc);
	int32_t want[128];
	size_t k = 0;
	memcpy(want + k, a, na * 4), k += na;
	want[k++] = 128803;
	memcpy(want + k, b, nb * 4), k += nb;
	want[k++] = 1;
	memcpy(want + k, c, nc * 4), k += nc;
	tt_expect_ids(ids, n, want, k, text);
	size_t dl;
	char *d = tt_dec(ds, ids, n, 0, &dl);
	ck_assert_str_eq(d, text);
	free(d);
	/* skipping special tokens drops <｜end▁of▁sentence｜> but keeps <｜User｜> */
	char want_skip[256];
	snprintf(want_skip, sizeof(want_skip), "Hello, world%sHow are you? 42", user);
	d = tt_dec(ds, ids, n, INF_TOK_SKIP_SPECIAL, &dl);
	ck_assert_str_eq(d, want_skip);
	free(d);
	d = tt_stream_all(ds, ids, n, INF_TOK_SKIP_SPECIAL, &dl);
	ck_assert_str_eq(d, want_skip);
	free(d);
	free(ids), free(a), free(b), free(c);
	/* a prefix of an added token is ordinary text */
	ids = encs("<\xef\xbd\x9cUser", &n);
	for (size_t i = 0; i < n; i++)
		EXPECT(ids[i] < 128000, "partial added token matched as %d", ids[i]);
	free(ids);
}
END_TEST

START_TEST(test_digit_groups)
{
	size_t n;
	int32_t *ids = encs("1234567", &n);
	int32_t want[] = {6895, 18009, 25}; /* "123" "456" "7" */
	tt_expect_ids(ids, n, want, 3, "1234567");
	free(ids);
	const char *p1[] = {"abc", "123", "456", "78", "def"};
	expect_concat("abc12345678def", p1, 5);
	const char *p2[] = {"x", "999", "9", " ", "12"};
	expect_concat("x9999 12", p2, 5);
	/* non-ASCII digits are \p{N} too: Arabic-Indic ١٢٣٤ groups as ١٢٣ + ٤ */
	const char *p3[] = {"\xd9\xa1\xd9\xa2\xd9\xa3", "\xd9\xa4"};
	expect_concat("\xd9\xa1\xd9\xa2\xd9\xa3\xd9\xa4", p3, 2);
}
END_TEST

START_TEST(test_cjk_runs)
{
	/* 中文 then ASCII then 中文: the CJK Split isolates each run */
	const char *p1[] = {"\xe4\xb8\xad\xe6\x96\x87", "abc", "\xe4\xb8\xad\xe6\x96\x87"};
	expect_concat("\xe4\xb8\xad\xe6\x96\x87" "abc\xe4\xb8\xad\xe6\x96\x87", p1, 3);
	/* hiragana + katakana + kanji form one run: ひらがなカタカナ漢字 */
	const char *kana = "\xe3\x81\xb2\xe3\x82\x89\xe3\x81\x8c\xe3\x81\xaa\xe3\x82\xab\xe3\x82"
			   "\xbf\xe3\x82\xab\xe3\x83\x8a\xe6\xbc\xa2\xe5\xad\x97";
	char text[128];
	snprintf(text, sizeof(text), "%s!", kana);
	const char *p2[] = {kana, "!"};
	expect_concat(text, p2, 2);
	/* 。is not in the CJK ranges, so it is cut off by the punctuation rule */
	const char *p3[] = {"\xe6\xb7\xb1\xe5\xba\xa6", "\xe3\x80\x82"};
	expect_concat("\xe6\xb7\xb1\xe5\xba\xa6\xe3\x80\x82", p3, 2);
	size_t n;
	int32_t *ids = encs("\xe6\xb7\xb1\xe5\xba\xa6", &n); /* 深度 */
	int32_t want[] = {17180};
	tt_expect_ids(ids, n, want, 1, "shendu");
	free(ids);
}
END_TEST

START_TEST(test_stream_holds_back)
{
	EXPECT(ds != NULL, "tokenizer not loaded from %s", ds_path);
	inf_tok_stream *s;
	ck_assert_int_eq(inf_tok_stream_new(ds, 0, &s), 0);
	const char *t;
	size_t l;
	ck_assert_int_eq(inf_tok_stream_feed(s, 19923, &t, &l), 0); /* Hello */
	ck_assert_uint_eq(l, 5);
	ck_assert(memcmp(t, "Hello", 5) == 0);
	ck_assert_int_eq(inf_tok_stream_feed(s, 130, &t, &l), 0); /* 0xC3: held back */
	ck_assert_uint_eq(l, 0);
	ck_assert_int_eq(inf_tok_stream_feed(s, 105, &t, &l), 0); /* 0xA9: é complete */
	ck_assert_str_eq(t, "\xc3\xa9");
	ck_assert_int_eq(inf_tok_stream_feed(s, 130, &t, &l), 0); /* 0xC3 again */
	ck_assert_uint_eq(l, 0);
	ck_assert_int_eq(inf_tok_stream_feed(s, 19923, &t, &l), 0); /* can never complete */
	ck_assert_str_eq(t, "\xef\xbf\xbdHello");
	ck_assert_int_eq(inf_tok_stream_feed(s, 130, &t, &l), 0);
	ck_assert_uint_eq(l, 0);
	ck_assert_int_eq(inf_tok_stream_feed(s, 999999, &t, &l), 0); /* no such id: nothing */
	ck_assert_uint_eq(l, 0);
	ck_assert_int_eq(inf_tok_stream_flush(s, &t, &l), 0); /* end: a lone U+FFFD */
	ck_assert_str_eq(t, "\xef\xbf\xbd");
	ck_assert_int_eq(inf_tok_stream_flush(s, &t, &l), 0);
	ck_assert_uint_eq(l, 0);
	inf_tok_stream_free(s);
	inf_tok_stream_free(NULL);
	inf_tok_free(NULL);
}
END_TEST

START_TEST(test_throughput)
{
	EXPECT(ds != NULL, "tokenizer not loaded from %s", ds_path);
	char path[1024];
	snprintf(path, sizeof(path), "%s/deepseek-v3/encodings.jsonl", tt_tokenizers());
	FILE *f = fopen(path, "r");
	EXPECT(f != NULL, "cannot open %s", path);
	char sample[8192];
	size_t sl = fread(sample, 1, sizeof(sample), f); /* JSON text is text too */
	fclose(f);
	size_t len = 1 << 20, k = 0;
	char *buf = malloc(len);
	while (k < len) {
		size_t c = sl < len - k ? sl : len - k;
		memcpy(buf + k, sample, c);
		k += c;
	}
	size_t n;
	double t0 = now(), c0 = tt_cpu();
	int32_t *ids = tt_enc(ds, sample, sl, &n);
	double t1 = now(), c1 = tt_cpu();
	free(ids);
	ids = tt_enc(ds, buf, len, &n);
	double t2 = now(), c2 = tt_cpu();
	printf("tokenizer: encode %zu bytes (cold cache) in %.2f ms (%.2f ms CPU); "
	       "1 MiB in %.1f ms (%.1f ms CPU, %.1f MB/s of CPU, %zu ids)\n",
	       sl, (t1 - t0) * 1e3, (c1 - c0) * 1e3, (t2 - t1) * 1e3, (c2 - c1) * 1e3,
	       len / (c2 - c1) / 1e6, n);
	size_t dl;
	char *d = tt_dec(ds, ids, n, INF_TOK_RAW, &dl);
	EXPECT(dl == len && memcmp(d, buf, len) == 0, "1 MiB does not round-trip");
	free(d);
	free(ids);
	free(buf);
}
END_TEST

/* ------------------------------------------------------------ small files */

/* GPT-2's byte alphabet, written out independently of the tokenizer. */
static void byte_char(int b, char *out)
{
	int n = 0, cp = -1;
	for (int i = 0; i < 256; i++) {
		bool keep = (i >= '!' && i <= '~') || (i >= 0xa1 && i <= 0xac) || i >= 0xae;
		int c = keep ? i : 256 + n++;
		if (i == b)
			cp = c;
	}
	if (cp < 0x80) {
		out[0] = (char)cp, out[1] = 0;
	} else {
		out[0] = (char)(0xc0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3f)), out[2] = 0;
	}
}

struct tiny_added {
	int id;
	const char *content;
	bool special, lstrip, rstrip, normalized, single_word;
};

/* A byte-level BPE with ids 0..255 = bytes, merges a+b, ab+c, b+c, a+a,
 * a+-, -+-, -+b (ids 256..262), the given added tokens and optionally one
 * Split step. Written with jansson to dir/tokenizer.json. */
static void write_tiny(const char *dir, const char *split_pattern, bool literal,
		       const char *behavior, bool invert, const struct tiny_added *added,
		       size_t nadded, bool pair_merges)
{
	json_t *vocab = json_object();
	for (int b = 0; b < 256; b++) {
		char c[3];
		byte_char(b, c);
		json_object_set_new(vocab, c, json_integer(b));
	}
	static const char *const merged[][2] = {{"a", "b"}, {"ab", "c"}, {"b", "c"}, {"a", "a"},
						{"a", "-"}, {"-", "-"}, {"-", "b"}};
	json_t *merges = json_array();
	for (int i = 0; i < 7; i++) {
		char s[16];
		snprintf(s, sizeof(s), "%s%s", merged[i][0], merged[i][1]);
		json_object_set_new(vocab, s, json_integer(256 + i));
		if (pair_merges) {
			json_t *p = json_array();
			json_array_append_new(p, json_string(merged[i][0]));
			json_array_append_new(p, json_string(merged[i][1]));
			json_array_append_new(merges, p);
		} else {
			snprintf(s, sizeof(s), "%s %s", merged[i][0], merged[i][1]);
			json_array_append_new(merges, json_string(s));
		}
	}
	json_t *model = json_pack("{s:s, s:n, s:n, s:o, s:o}", "type", "BPE", "unk_token",
				  "dropout", "vocab", vocab, "merges", merges);
	json_t *at = json_array();
	for (size_t i = 0; i < nadded; i++)
		json_array_append_new(at, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id",
						    added[i].id, "content", added[i].content,
						    "special", added[i].special, "lstrip",
						    added[i].lstrip, "rstrip", added[i].rstrip,
						    "normalized", added[i].normalized, "single_word",
						    added[i].single_word));
	json_t *pts = json_array();
	if (split_pattern)
		json_array_append_new(pts, json_pack("{s:s, s:{s:s}, s:s, s:b}", "type", "Split",
						     "pattern", literal ? "String" : "Regex",
						     split_pattern, "behavior", behavior, "invert",
						     invert));
	json_array_append_new(pts, json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel",
					     "add_prefix_space", 0, "trim_offsets", 1, "use_regex",
					     0));
	json_t *root = json_pack("{s:s, s:o, s:{s:s, s:[]}, s:{s:s, s:o}, s:{s:s}, s:o}",
				 "version", "1.0", "added_tokens", at, "normalizer", "type",
				 "Sequence", "normalizers", "pre_tokenizer", "type", "Sequence",
				 "pretokenizers", pts, "decoder", "type", "ByteLevel", "model",
				 model);
	ck_assert_ptr_nonnull(root);
	char path[512];
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	ck_assert_int_eq(json_dump_file(root, path, JSON_INDENT(1)), 0);
	json_decref(root);
}

static inf_tok *load_tiny(void)
{
	const char *path = tu_tmp_path("tokenizer.json");
	inf_tok *t = NULL;
	k2_err err = {{0}};
	EXPECT(inf_tok_load(path, &t, &err) == 0, "load %s: %s", path, err.msg);
	return t;
}

/* Encodes text, compares with want, and (if round_trip) decodes it back. */
static void expect_enc(inf_tok *t, const char *text, const int32_t *want, size_t nw,
		       bool round_trip)
{
	size_t n;
	int32_t *ids = tt_enc(t, text, strlen(text), &n);
	tt_expect_ids(ids, n, want, nw, text);
	size_t dl;
	char *d = tt_dec(t, ids, n, 0, &dl);
	EXPECT(!round_trip || strcmp(d, text) == 0, "\"%s\" decodes to \"%s\"", text, d);
	free(d);
	free(ids);
}

#define ENC(t, text, ...)                                                                  \
	do {                                                                               \
		const int32_t w_[] = {__VA_ARGS__};                                        \
		expect_enc(t, text, w_, sizeof(w_) / sizeof(w_[0]), true);                 \
	} while (0)
/* the same for texts that lstrip / rstrip do not give back */
#define ENCX(t, text, ...)                                                                 \
	do {                                                                               \
		const int32_t w_[] = {__VA_ARGS__};                                        \
		expect_enc(t, text, w_, sizeof(w_) / sizeof(w_[0]), false);                \
	} while (0)

START_TEST(test_bpe_merge_order)
{
	for (int pairs = 0; pairs < 2; pairs++) { /* "a b" strings, then [a, b] pairs */
		write_tiny(tu_tmpdir, NULL, false, NULL, false, NULL, 0, pairs);
		inf_tok *t = load_tiny();
		ck_assert_uint_eq(inf_tok_vocab_size(t), 263);
		ENC(t, "abc", 257);       /* a+b (rank 0) first, then ab+c */
		ENC(t, "bcab", 258, 256); /* b+c and a+b; a+b first, c+ab has no merge */
		ENC(t, "aaa", 259, 'a');  /* equal ranks: leftmost first */
		ENC(t, "aaaa", 259, 259);
		ENC(t, "a-b", 260, 'b');  /* a+- (rank 4) before -+b (rank 6) */
		ENC(t, "x", 'x');
		inf_tok_free(t);
	}
}
END_TEST

/* Writes text to tu_tmpdir/name. */
static void write_file(const char *name, const char *text, size_t len)
{
	tu_write_file(tu_tmp_path(name), text, len);
}

/* ByteLevel's own options: a space prefixed to each piece, GPT-2's regex. */
START_TEST(test_byte_level_options)
{
	write_tiny(tu_tmpdir, NULL, false, NULL, false, NULL, 0, false);
	inf_tok *t = load_tiny();
	ENC(t, "ab abc", 256, ' ', 257); /* one piece: a+b merges, b+space does not */
	inf_tok_free(t);
	size_t len;
	char *src = tu_read_file(tu_tmp_path("tokenizer.json"), &len);
	char *p = memmem(src, len, "\"use_regex\": false", 18);
	ck_assert_ptr_nonnull(p);
	memcpy(p, "\"use_regex\": true ", 18);
	p = memmem(src, len, "\"add_prefix_space\": false", 25);
	ck_assert_ptr_nonnull(p);
	memcpy(p, "\"add_prefix_space\": true ", 25);
	write_file("tokenizer.json", src, len);
	free(src);
	t = load_tiny();
	ENCX(t, "ab abc", ' ', 256, ' ', 257); /* " ab" " abc" */
	ENC(t, " abc  ab", ' ', 257, ' ', ' ', 256); /* \s+(?!\S) leaves one space */
	ENCX(t, "1", ' ', '1');
	ENC(t, " it's", ' ', 'i', 't', '\'', 's');
	inf_tok_free(t);
}
END_TEST

START_TEST(test_split_behaviors)
{
	static const struct {
		const char *behavior;
		bool invert;
		int32_t want[8];
		size_t n;
	} cases[] = {
		{"Isolated", false, {'a', '-', '-', 'b', '-'}, 5},
		{"Removed", false, {'a', 'b'}, 2},
		{"MergedWithPrevious", false, {260, '-', 'b', '-'}, 4},
		{"MergedWithNext", false, {'a', '-', 262, '-'}, 4},
		{"Contiguous", false, {'a', 261, 'b', '-'}, 4},
		{"Removed", true, {'-', '-', '-'}, 3},
		{"Isolated", true, {'a', '-', '-', 'b', '-'}, 5},
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		for (int lit = 0; lit < 2; lit++) {
			write_tiny(tu_tmpdir, lit ? "-" : "\\-", lit, cases[c].behavior,
				   cases[c].invert, NULL, 0, false);
			inf_tok *t = load_tiny();
			size_t n;
			int32_t *ids = tt_enc(t, "a--b-", 5, &n);
			char what[64];
			snprintf(what, sizeof(what), "%s invert=%d literal=%d", cases[c].behavior,
				 cases[c].invert, lit);
			tt_expect_ids(ids, n, cases[c].want, cases[c].n, what);
			free(ids);
			inf_tok_free(t);
		}
	}
	/* \s is Unicode White_Space (as Oniguruma has it): U+0085 yes, U+180E no */
	write_tiny(tu_tmpdir, "\\s", false, "Removed", false, NULL, 0, false);
	inf_tok *t = load_tiny();
	size_t n;
	int32_t *ids = tt_enc(t, "a\xc2\x85" "b\xe1\xa0\x8e" "c", 8, &n);
	int32_t want[] = {'a', 'b', 0xe1, 0xa0, 0x8e, 'c'};
	tt_expect_ids(ids, n, want, 6, "white space");
	free(ids);
	inf_tok_free(t);
}
END_TEST

START_TEST(test_added_flags)
{
	static const struct tiny_added added[] = {
		{300, "<L>", false, true, false, false, false},
		{301, "<R>", false, false, true, false, false},
		{302, "<W>", false, false, false, false, true},
		{303, "<S>", true, false, false, false, false},
		{304, "<N>", false, false, false, true, false},
		{305, "BC", false, false, false, false, false},
		{306, "AB", false, false, false, true, false},
		{307, "<S>x", true, false, false, false, false},
		{308, "\xce\xa9", false, false, false, false, false}, /* Ω */
	};
	write_tiny(tu_tmpdir, NULL, false, NULL, false, added, 9, false);
	inf_tok *t = load_tiny();
	ck_assert_uint_eq(inf_tok_vocab_size(t), 309);
	ck_assert_ptr_null(inf_tok_id_to_token(t, 280, NULL)); /* a hole */
	ck_assert_str_eq(inf_tok_id_to_token(t, 303, NULL), "<S>");
	ENCX(t, "x  <L>y", 'x', 300, 'y');        /* lstrip takes the spaces before */
	ENCX(t, "  <L>", 300);
	ENC(t, "x<L>", 'x', 300);
	ENCX(t, "x<R> \t y", 'x', 301, 'y');      /* rstrip takes the spaces after */
	ENCX(t, "x\xe3\x80\x80<L><R>\xe3\x80\x80.", 'x', 300, 301, '.'); /* U+3000 is white space */
	ENC(t, "<L>\xe3\x80\x80<R>", 300, 0xe3, 0x80, 0x80, 301); /* no strip on that side */
	ENC(t, "a<W>b", 'a', '<', 'W', '>', 'b');  /* single_word: not between letters */
	ENC(t, " <W> ", ' ', 302, ' ');
	ENC(t, "<W>", 302);
	ENC(t, "\xce\xa9<W>", 308, '<', 'W', '>'); /* Ω before it is a letter too */
	ENC(t, "1<W>", '1', '<', 'W', '>');        /* digits count as word characters */
	ENC(t, "<S><N>", 303, 304);
	ENC(t, "ABC", 'A', 305);  /* non-normalized tokens are cut out first */
	ENC(t, "ABD", 306, 'D');
	ENC(t, "<S>x<S>y", 307, 303, 'y'); /* longest match */
	int32_t seq[] = {'a', 303, 'b', 304};
	size_t dl;
	char *d = tt_dec(t, seq, 4, INF_TOK_SKIP_SPECIAL, &dl);
	ck_assert_str_eq(d, "ab<N>");
	free(d);
	ck_assert(!inf_tok_bos(t, NULL)); /* no tokenizer_config.json */
	ck_assert_int_eq(inf_tok_eos_id(t), -1);
	inf_tok_free(t);

	/* tokenizer_config.json names BOS/EOS (string and AddedToken forms) */
	static const char cfg[] =
		"{\"add_bos_token\": true, \"bos_token\": \"<S>\", "
		"\"eos_token\": {\"__type\": \"AddedToken\", \"content\": \"<N>\"}}";
	write_file("tokenizer_config.json", cfg, strlen(cfg));
	t = load_tiny();
	int32_t bos;
	ck_assert(inf_tok_bos(t, &bos));
	ck_assert_int_eq(bos, 303);
	ck_assert_int_eq(inf_tok_eos_id(t), 304);
	inf_tok_free(t);

	/* a config naming an unknown token, and a corrupt config: errors naming it */
	static const char *const bad[] = {"{\"add_bos_token\": true, \"bos_token\": \"<nope>\"}",
					  "{\"add_bos_token\": tru"};
	for (int i = 0; i < 2; i++) {
		write_file("tokenizer_config.json", bad[i], strlen(bad[i]));
		const char *tpath = tu_tmp_path("tokenizer.json");
		k2_err err = {{0}};
		t = (inf_tok *)1;
		int rc = inf_tok_load(tpath, &t, &err);
		EXPECT(rc < 0 && t == NULL, "bad config %d accepted", i);
		EXPECT(strstr(err.msg, "tokenizer_config.json") != NULL, "message: %s", err.msg);
	}
}
END_TEST

static void expect_load_error(const char *name, const char *needle)
{
	const char *path = tu_tmp_path(name);
	inf_tok *t = (inf_tok *)1;
	k2_err err = {{0}};
	int rc = inf_tok_load(path, &t, &err);
	EXPECT(rc < 0, "%s: loaded", name);
	EXPECT(t == NULL, "%s: *out not cleared", name);
	EXPECT(strstr(err.msg, path) != NULL, "%s: message does not name the file: %s", name,
	       err.msg);
	EXPECT(strchr(err.msg, '\n') == NULL, "%s: message is not one line: %s", name, err.msg);
	EXPECT(strstr(err.msg, needle) != NULL, "%s: message lacks \"%s\": %s", name, needle,
	       err.msg);
}

/* Replaces the first `from` in src with `to` and writes the result as name. */
static void write_edited(const char *src, size_t len, const char *from, const char *to,
			 const char *name)
{
	const char *at = memmem(src, len, from, strlen(from));
	ck_assert_ptr_nonnull(at);
	size_t pre = (size_t)(at - src), fl = strlen(from), tl = strlen(to);
	char *buf = malloc(len - fl + tl);
	memcpy(buf, src, pre);
	memcpy(buf + pre, to, tl);
	memcpy(buf + pre + tl, at + fl, len - pre - fl);
	write_file(name, buf, len - fl + tl);
	free(buf);
}

/* The DeepSeek-V3 tokenizer.json, read whole into a malloc'd buffer of *len
 * bytes. */
static char *read_ds_json(size_t *len)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/deepseek-v3/tokenizer.json", tt_tokenizers());
	char *src = tu_read_file(path, len);
	EXPECT(*len > 1000000, "%s: short read", path);
	return src;
}

START_TEST(test_corrupt_files)
{
	size_t len;
	char *src = read_ds_json(&len);

	write_file("truncated.json", src, len / 2);
	expect_load_error("truncated.json", "invalid JSON");
	write_file("tiny.json", src, 100);
	expect_load_error("tiny.json", "invalid JSON");
	write_file("empty.json", "", 0);
	expect_load_error("empty.json", "invalid JSON");
	write_file("array.json", "[1,2]", 5);
	expect_load_error("array.json", "object");
	expect_load_error("missing.json", "cannot open");

	write_edited(src, len, "\"type\": \"BPE\"", "\"type\": \"WordPiece\"", "wordpiece.json");
	expect_load_error("wordpiece.json", "unsupported model type \"WordPiece\"");
	write_edited(src, len, "\"type\": \"BPE\"", "\"type\": \"Unigram\"", "unigram.json");
	expect_load_error("unigram.json", "Unigram");
	write_edited(src, len, "\"type\": \"Split\"", "\"type\": \"Metaspace\"", "pretok.json");
	expect_load_error("pretok.json", "unsupported pre_tokenizer type \"Metaspace\"");
	write_edited(src, len, "\"normalizers\": []",
		     "\"normalizers\": [{\"type\": \"NFKC\"}]", "norm.json");
	expect_load_error("norm.json", "unsupported normalizer type \"NFKC\"");
	write_edited(src, len, "\"decoder\": {\n        \"type\": \"ByteLevel\"",
		     "\"decoder\": {\n        \"type\": \"Metaspace\"", "decoder.json");
	expect_load_error("decoder.json", "unsupported decoder type \"Metaspace\"");
	write_edited(src, len, "\"behavior\": \"Isolated\"", "\"behavior\": \"Sideways\"",
		     "behavior.json");
	expect_load_error("behavior.json", "Sideways");
	write_edited(src, len, "\\\\p{N}{1,3}", "\\\\p{Q}{1,3}", "regex.json");
	expect_load_error("regex.json", "regex");
	write_edited(src, len, "\"byte_fallback\": false", "\"byte_fallback\": true",
		     "fallback.json");
	expect_load_error("fallback.json", "byte_fallback");
	write_edited(src, len, "\"Ġ t\"", "\"Ġ zzzqqq\"", "merge.json");
	expect_load_error("merge.json", "zzzqqq");
	write_edited(src, len, "\"Ġ t\"", "\"Ġt\"", "merge2.json");
	expect_load_error("merge2.json", "merges[0]");
	write_edited(src, len, "\"!\": 3", "\"!\": -4", "vocabid.json");
	expect_load_error("vocabid.json", "model.vocab");
	write_edited(src, len, "\"!\": 3", "\"!\": \"three\"", "vocabtype.json");
	expect_load_error("vocabtype.json", "model.vocab");
	write_edited(src, len, "\"id\": 0,", "\"id\": 5,", "addedid.json");
	expect_load_error("addedid.json", "added_tokens[0]");
	write_edited(src, len, "\"model\": {", "\"modelx\": {", "nomodel.json");
	expect_load_error("nomodel.json", "model");
	/* errors inside model.vocab / model.merges (read by the fast path) */
	write_edited(src, len, "\"Hello\": 19923", "\"H\\x65llo\": 19923", "escape.json");
	expect_load_error("escape.json", "model.vocab");
	write_edited(src, len, "\"Hello\": 19923", "\"H\\ud800llo\": 19923", "surrogate.json");
	expect_load_error("surrogate.json", "surrogate");
	write_edited(src, len, "\"Hello\": 19923", "\"H\tllo\": 19923", "control.json");
	expect_load_error("control.json", "control character");
	write_edited(src, len, "\"Hello\": 19923", "\"H\xffllo\": 19923", "utf8.json");
	expect_load_error("utf8.json", "UTF-8");
	write_edited(src, len, "\"Hello\": 19923", "\"Hello\": 19923.5", "real.json");
	expect_load_error("real.json", "integer");
	write_edited(src, len, "\"Hello\": 19923", "\"Hello\": 1", "dupid.json");
	expect_load_error("dupid.json", "twice");
	write_edited(src, len, "\"Hello\": 19923,", "\"Hello\": 19923", "comma.json");
	expect_load_error("comma.json", "model.vocab");
	write_edited(src, len, "\"Ġ t\",", "[\"Ġ\", 5],", "pair.json");
	expect_load_error("pair.json", "model.merges");
	write_edited(src, len, "\n    }\n}", "\n    }\n}x", "trailing.json");
	expect_load_error("trailing.json", "invalid JSON");
	/* an error after the big members (which jansson sees emptied) is still
	 * reported at its line in the file */
	const char *last = src + len;
	while (last > src && *--last != ']')
		;
	size_t line = 2;
	for (const char *q = src; q < last; q++)
		line += *q == '\n';
	size_t head = (size_t)(last - src), tail;
	write_edited(last, len - head, "]", "],\n        \"x\": tru", "after.bin");
	char *edited = tu_read_file(tu_tmp_path("after.bin"), &tail);
	char *whole = malloc(head + tail);
	memcpy(whole, src, head);
	memcpy(whole + head, edited, tail);
	write_file("after.json", whole, head + tail);
	free(whole);
	free(edited);
	char needle[64];
	snprintf(needle, sizeof(needle), "invalid JSON at line %zu column", line);
	expect_load_error("after.json", needle);
	free(src);
}
END_TEST

/* Escapes in the big members are decoded by the fast path; a file whose
 * outline the fast path does not follow goes through jansson whole, with
 * the same result. */
START_TEST(test_fast_and_slow_paths)
{
	size_t len;
	char *src = read_ds_json(&len);

	write_edited(src, len, "\"Hello\": 19923", "\"H\\u0065ll\\u006F\": 19923", "esc.json");
	const char *path = tu_tmp_path("esc.json");
	inf_tok *t = NULL;
	k2_err err = {{0}};
	EXPECT(inf_tok_load(path, &t, &err) == 0, "%s: %s", path, err.msg);
	size_t n;
	int32_t *ids = tt_enc(t, "Hello", 5, &n);
	int32_t want[] = {19923};
	tt_expect_ids(ids, n, want, 1, "escaped Hello");
	free(ids);
	inf_tok_free(t);

	/* "\u006dodel" is "model" to JSON but not to the outline scan */
	write_edited(src, len, "\"model\": {", "\"\\u006dodel\": {", "slow.json");
	path = tu_tmp_path("slow.json");
	double t0 = now();
	EXPECT(inf_tok_load(path, &t, &err) == 0, "%s: %s", path, err.msg);
	printf("tokenizer: jansson-only load in %.1f ms\n", (now() - t0) * 1e3);
	ck_assert_uint_eq(inf_tok_vocab_size(t), 128815);
	check_jsonl(t);
	inf_tok_free(t);
	free(src);
}
END_TEST

/* The added tokens of test_mutated_files' tokenizer: <L> takes the spaces
 * before it; <W> is special, takes the spaces after it and is a single word. */
static const struct tiny_added mutated_added[] = {
	{300, "<L>", false, true, false, false, false},
	{301, "<W>", true, false, true, false, true},
};

/* Random damage to a small tokenizer.json: every load either succeeds (and
 * then encodes and decodes) or fails with a message naming the file. Run
 * under `make asan` this is a small fuzzing pass over the loader. */
START_TEST(test_mutated_files)
{
	write_tiny(tu_tmpdir, "\\p{N}{1,3}|\\s+", false, "Isolated", false, mutated_added, 2,
		   true);
	size_t len;
	char *src = tu_read_file(tu_tmp_path("tokenizer.json"), &len);
	ck_assert_int_eq(mkdir(tu_tmp_path("m"), 0700), 0);
	const char *mpath = tu_tmp_path("m/tokenizer.json");
	char *buf = malloc(len + 64);
	const char *seed = getenv("K2_TOK_SEED");
	uint64_t x = seed ? strtoull(seed, NULL, 0) : 12345;
	int loaded = 0;
	const char *env = getenv("K2_TOK_MUTATIONS"); /* more rounds when asked */
	const int rounds = env && atoi(env) > 0 ? atoi(env) : 1500;
	for (int r = 0; r < rounds; r++) {
		memcpy(buf, src, len);
		size_t n = len;
		int edits = 1 + r % 4;
		for (int e = 0; e < edits; e++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			size_t at = (size_t)(x >> 33) % n;
			static const char pool[] = "{}[]\",:\\u0 \n1-9aZ\xc3\xff";
			switch ((x >> 20) % 4) {
			case 0: buf[at] = pool[(x >> 8) % (sizeof(pool) - 1)]; break;
			case 1: n = at + 1; break; /* truncate */
			case 2: memmove(buf + at, buf + at + 1, n - at - 1), n--; break;
			default: buf[at] ^= (char)(1 << ((x >> 12) % 8)); break;
			}
			if (n < 2)
				break;
		}
		tu_write_file(mpath, buf, n);
		inf_tok *t = NULL;
		k2_err err = {{0}};
		if (inf_tok_load(mpath, &t, &err) == 0) {
			loaded++;
			size_t ni;
			const char *txt = "ab 12345 <L> x<W>y \xff";
			int32_t *ids = tt_enc(t, txt, strlen(txt), &ni);
			size_t dl;
			free(tt_dec(t, ids, ni, 0, &dl));
			free(ids);
			inf_tok_free(t);
		} else {
			EXPECT(strstr(err.msg, mpath) != NULL, "round %d: message without the file: %s",
			       r, err.msg);
		}
	}
	printf("tokenizer: %d of %d damaged files still loaded\n", loaded, rounds);
	free(buf);
	free(src);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("tokenizer");
	TCase *tc = tu_tcase(s, "deepseek-v3", 60);
	tcase_add_unchecked_fixture(tc, ds_setup, ds_teardown);
	TU_ADD_TESTS(tc, test_encodings_jsonl, test_accessors, test_empty, test_invalid_utf8,
		     test_random_bytes_roundtrip, test_long_run, test_added_token_in_middle,
		     test_digit_groups, test_cjk_runs, test_stream_holds_back, test_throughput);

	tc = tu_tcase(s, "files", 60);
	tcase_add_checked_fixture(tc, tu_tmpdir_setup, tu_tmpdir_teardown);
	TU_ADD_TESTS(tc, test_bpe_merge_order, test_split_behaviors, test_byte_level_options,
		     test_added_flags, test_corrupt_files, test_fast_and_slow_paths,
		     test_mutated_files);
	return s;
}

int main(void)
{
	return tu_run_suite(suite());
}
