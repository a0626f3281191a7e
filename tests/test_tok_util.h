/* test_tok_util.h — helpers shared by the tokenizer's Check suites
 * (test_tokenizer.c for tokenizer.json, test_tokenizer_kimi.c for
 * tiktoken.model): where the tokenizers are, CPU time, encoding and decoding
 * that assert success, a whole streamed decode, and comparing id lists.
 * Header-only, `static inline`, asserting with Check like test_util.h (which
 * it includes); call them from tests only. */
#ifndef K2_TEST_TOK_UTIL_H
#define K2_TEST_TOK_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"
#include "tokenizer.h"

/* The tokenizer fixtures' folder: $K2_TOKENIZERS, else
 * tests/fixtures/tokenizers (relative to the repository root). */
static inline const char *tt_tokenizers(void)
{
	const char *f = getenv("K2_TOKENIZERS");
	return f && *f ? f : "tests/fixtures/tokenizers";
}

/* CPU seconds of this process: the build machine is shared, so wall times
 * printed beside them can be inflated by other jobs. */
static inline double tt_cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Encodes s[0..len), which must succeed; *n gets the count. The caller
 * frees the ids. */
static inline int32_t *tt_enc(inf_tok *t, const char *s, size_t len, size_t *n)
{
	int32_t *ids = NULL;
	k2_err err = {{0}};
	int rc = inf_tok_encode(t, s, len, &ids, n, &err);
	EXPECT(rc == 0, "encode: %s", err.msg);
	EXPECT(ids != NULL, "encode returned NULL ids");
	return ids;
}

/* Decodes ids with flags, which must succeed; NUL-terminated, freed by the
 * caller, *len its length. */
static inline char *tt_dec(const inf_tok *t, const int32_t *ids, size_t n, unsigned flags,
			   size_t *len)
{
	char *out = NULL;
	EXPECT(inf_tok_decode(t, ids, n, flags, &out, len) == 0, "decode failed");
	EXPECT(out && out[*len] == 0, "decode result not NUL-terminated");
	return out;
}

/* Streams ids through a fresh stream decoder and returns the concatenation
 * of every piece and the flush (malloc'd, NUL-terminated, *len its length). */
static inline char *tt_stream_all(const inf_tok *t, const int32_t *ids, size_t n,
				  unsigned flags, size_t *len)
{
	inf_tok_stream *s = NULL;
	EXPECT(inf_tok_stream_new(t, flags, &s) == 0, "stream_new");
	size_t cap = 64, k = 0;
	char *acc = malloc(cap);
	const char *txt;
	size_t tl;
	for (size_t i = 0; i <= n; i++) {
		if (i < n)
			EXPECT(inf_tok_stream_feed(s, ids[i], &txt, &tl) == 0, "stream_feed");
		else
			EXPECT(inf_tok_stream_flush(s, &txt, &tl) == 0, "stream_flush");
		while (k + tl + 1 > cap)
			acc = realloc(acc, cap *= 2);
		memcpy(acc + k, txt, tl);
		k += tl;
	}
	acc[k] = 0;
	*len = k;
	inf_tok_stream_free(s);
	return acc;
}

/* Asserts got[0..ng) == want[0..nw); `what` names the text in a failure. */
static inline void tt_expect_ids(const int32_t *got, size_t ng, const int32_t *want, size_t nw,
				 const char *what)
{
	char buf[512];
	size_t o = 0;
	for (size_t i = 0; i < ng && o < sizeof(buf) - 16; i++)
		o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%d,", got[i]);
	buf[o] = 0;
	EXPECT(ng == nw, "%s: %zu ids, expected %zu (got %s)", what, ng, nw, buf);
	for (size_t i = 0; i < nw; i++)
		EXPECT(got[i] == want[i], "%s: id %zu is %d, expected %d (got %s)", what, i,
		       got[i], want[i], buf);
}

#endif
