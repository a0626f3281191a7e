/* fuzz_tiktoken.c — libFuzzer target for the tiktoken vocabulary reader
 * (infer/tok_tiktoken.c). Any bytes are read as the text of a tiktoken.model;
 * when the first byte is odd, the 256 lines of the single bytes (ranks 0-255)
 * go before the rest, so that inputs get past the byte check into the merge
 * table, the special tokens and encoding. The contract:
 *   - a refusal is -EINVAL or -ENOMEM with a message naming the file (and,
 *     for a bad line, the line);
 *   - the format is canonical: an accepted text equals the vocabulary written
 *     back (base64 of each token's bytes, a space, the rank, '\n'), up to a
 *     '\r' before a '\n' and a missing last '\n';
 *   - once built, any text (the input itself and a few fixed ones) encodes,
 *     and its ids decode to the same bytes.
 * A broken promise aborts, for libFuzzer to report. Built by `make fuzz`. */
#include "tok_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_PATH "fuzz.tiktoken"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_tiktoken: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	abort();
}

/* Canonical padded base64 of s[0..n) into out; returns its length. The same
 * dozen lines as in test_tokenizer_kimi.c: both are references written apart
 * from the decoder they check, and this target links neither Check nor the
 * suites' helpers. */
static size_t b64(const uint8_t *s, size_t n, char *out)
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
	return o;
}

/* The raw bytes of token id from its byte-level string. */
static size_t token_bytes(const inf_tok *t, uint32_t id, uint8_t *out)
{
	const uint8_t *s = (const uint8_t *)t->strs.p + t->str_off[id];
	size_t n = t->str_len[id], k = 0;
	for (size_t i = 0; i < n;) {
		uint32_t cp = s[i] < 0x80 ? s[i] : (uint32_t)(s[i] & 0x1f) << 6 | (s[i + 1] & 0x3f);
		i += s[i] < 0x80 ? 1 : 2;
		if (cp >= 324 || t->cp_byte[cp] < 0)
			fail("a token string outside the byte-level alphabet", NULL);
		out[k++] = (uint8_t)t->cp_byte[cp];
	}
	return k;
}

/* The accepted text must be the vocabulary written back. */
static void check_canonical(const inf_tok *t, const char *text, size_t len)
{
	char *norm = malloc(len + 1), line[TOK_TIKTOKEN_MAX_LINE + 32];
	size_t nn = 0, at = 0;
	for (size_t i = 0; i < len; i++)
		if (!(text[i] == '\r' && i + 1 < len && text[i + 1] == '\n'))
			norm[nn++] = text[i];
	if (nn && norm[nn - 1] != '\n')
		norm[nn++] = '\n';
	for (uint32_t id = 0; id < t->n_ids; id++) {
		uint8_t raw[TOK_TIKTOKEN_MAX_LINE];
		size_t k = b64(raw, token_bytes(t, id, raw), line);
		k += (size_t)sprintf(line + k, " %u\n", id);
		if (at + k > nn || memcmp(norm + at, line, k) != 0)
			fail("an accepted file is not canonical", NULL);
		at += k;
	}
	if (at != nn)
		fail("an accepted file has more than its lines", NULL);
	free(norm);
}

static void check_roundtrip(inf_tok *t, const char *s, size_t n)
{
	int32_t *ids;
	size_t ni, dl;
	char *d;
	k2_err err = {{0}};
	if (inf_tok_encode(t, s, n, &ids, &ni, &err))
		fail("encode failed", err.msg);
	if (inf_tok_decode(t, ids, ni, INF_TOK_RAW, &d, &dl))
		fail("decode failed", NULL);
	if (dl != n || memcmp(d, s, n) != 0)
		fail("a text does not round-trip", NULL);
	free(d);
	free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t pre = 0;
	char head[256 * 12];
	if (size && (data[0] & 1)) {
		for (int b = 0; b < 256; b++) {
			uint8_t one = (uint8_t)b;
			pre += b64(&one, 1, head + pre);
			pre += (size_t)sprintf(head + pre, " %d\n", b);
		}
		data++, size--;
	} else if (size) {
		data++, size--;
	}
	/* a private copy sized exactly, so ASan flags a read one past the end */
	size_t len = pre + size;
	char *text = malloc(len ? len : 1);
	if (!text)
		return 0;
	memcpy(text, head, pre);
	memcpy(text + pre, data, size);
	inf_tok *t = NULL;
	k2_err err = {{0}};
	if (tok_new(FUZZ_PATH, &t, &err))
		goto out;
	int rc = tok_tiktoken_parse(t, text, len, &err);
	if (rc) {
		if (rc != -EINVAL && rc != -ENOMEM)
			fail("unexpected error code", err.msg);
		if (strncmp(err.msg, FUZZ_PATH ": ", sizeof(FUZZ_PATH ": ") - 1) != 0)
			fail("a refusal does not name the file", err.msg);
		if (rc == -EINVAL && !strstr(err.msg, ": line ") && !strstr(err.msg, ": no tokens") &&
		    !strstr(err.msg, ": more than"))
			fail("a refusal does not name the line", err.msg);
		goto out;
	}
	check_canonical(t, text, len);
	rc = tok_tiktoken_build(t, NULL, NULL, &err);
	if (rc) {
		if (rc != -EINVAL || !strstr(err.msg, "has no token"))
			fail("a parsed vocabulary does not build", err.msg);
		goto out;
	}
	check_roundtrip(t, text, len);
	static const char *const fixed[] = {"Hello, world! It's 2025.", "中文English混合 😀",
					    "<|reserved_token_300|>\r\n\t x", "\xff\xfe\x80 a"};
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		check_roundtrip(t, fixed[i], strlen(fixed[i]));
out:
	inf_tok_free(t);
	free(text);
	return 0;
}
