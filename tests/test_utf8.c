/* test_utf8.c — layout's strict UTF-8 validator k2_utf8_valid against a
 * reference written the other way round (decode the code point, then reject
 * overlong forms, surrogates and values above U+10FFFF): every string of one
 * to three bytes, random four-byte sequences, the offset of the first bad
 * sequence inside longer text, and the classic cases by name. */
#include "layout.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* Length of the valid sequence at s[0..n), or 0. */
static size_t ref_seq(const unsigned char *s, size_t n)
{
	size_t len;
	uint32_t cp;
	if (s[0] < 0x80)
		return 1;
	if ((s[0] & 0xe0) == 0xc0) {
		len = 2;
		cp = s[0] & 0x1f;
	} else if ((s[0] & 0xf0) == 0xe0) {
		len = 3;
		cp = s[0] & 0x0f;
	} else if ((s[0] & 0xf8) == 0xf0) {
		len = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t k = 1; k < len; k++) {
		if ((s[k] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[k] & 0x3f);
	}
	static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
	if (cp < min_cp[len] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
		return 0;
	return len;
}

/* 1 and -1, or 0 and the offset of the first bad sequence. */
static int ref_valid(const unsigned char *s, size_t n, size_t *bad)
{
	for (size_t i = 0; i < n;) {
		size_t k = ref_seq(s + i, n - i);
		if (!k) {
			*bad = i;
			return 0;
		}
		i += k;
	}
	return 1;
}

static void check_same(const unsigned char *s, size_t n)
{
	size_t bad = 777, rbad = 777;
	int v = k2_utf8_valid(s, n, &bad), rv = ref_valid(s, n, &rbad);
	EXPECT(v == rv, "%zu bytes %02x %02x %02x %02x: valid %d, reference %d", n, s[0],
	       n > 1 ? s[1] : 0, n > 2 ? s[2] : 0, n > 3 ? s[3] : 0, v, rv);
	EXPECT(v || bad == rbad, "%02x %02x %02x: bad at %zu, reference %zu", s[0], n > 1 ? s[1] : 0,
	       n > 2 ? s[2] : 0, bad, rbad);
	EXPECT(!v || bad == 777, "bad_off written for valid text");
}

START_TEST(test_exhaustive_short)
{
	unsigned char s[3];
	for (unsigned a = 0; a < 256; a++) {
		s[0] = (unsigned char)a;
		check_same(s, 1);
		for (unsigned b = 0; b < 256; b++) {
			s[1] = (unsigned char)b;
			check_same(s, 2);
			for (unsigned c = 0; c < 256; c++) {
				s[2] = (unsigned char)c;
				check_same(s, 3);
			}
		}
	}
}
END_TEST

START_TEST(test_random_long)
{
	/* Four-byte leads with random tails, and text of mixed sequences with
	 * one damaged byte somewhere, longer than the eight-byte ASCII step. */
	uint64_t x = 0x1234567;
	unsigned char s[64];
	for (int r = 0; r < 2000000; r++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		s[0] = (unsigned char)(0xf0 | (x >> 60));
		s[1] = (unsigned char)(x >> 24);
		s[2] = (unsigned char)(x >> 32);
		s[3] = (unsigned char)(x >> 40);
		if (r & 1) {
			s[1] = (unsigned char)(0x80 | (s[1] & 0x3f));
			s[2] = (unsigned char)(0x80 | (s[2] & 0x3f));
			s[3] = (unsigned char)(0x80 | (s[3] & 0x3f));
		}
		check_same(s, 4);
	}
	static const char *const pieces[] = {"a", "hello ", "\xc3\xa9", "\xe2\x82\xac",
					     "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", "\x00"};
	for (int r = 0; r < 200000; r++) {
		size_t n = 0;
		while (n < 48) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			const char *p = pieces[(x >> 33) % 7];
			size_t len = (x >> 33) % 7 == 6 ? 1 : strlen(p);
			memcpy(s + n, p, len);
			n += len;
		}
		if (r % 3) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			s[(x >> 33) % n] = (unsigned char)(x >> 20);
		}
		check_same(s, n);
	}
}
END_TEST

START_TEST(test_named_cases)
{
	static const struct {
		const char *s;
		size_t n;
		int valid;
		size_t bad;
	} cases[] = {
		{"", 0, 1, 0},
		{"plain ascii text, longer than eight", 35, 1, 0},
		{"nul\0inside", 10, 1, 0},
		{"\xc2\x80", 2, 1, 0},                /* U+0080 */
		{"\xdf\xbf", 2, 1, 0},                /* U+07FF */
		{"\xef\xbf\xbf", 3, 1, 0},            /* U+FFFF */
		{"\xf4\x8f\xbf\xbf", 4, 1, 0},        /* U+10FFFF */
		{"\xc0\x80", 2, 0, 0},                /* overlong NUL */
		{"\xc1\xbf", 2, 0, 0},                /* overlong */
		{"\xe0\x9f\xbf", 3, 0, 0},            /* overlong U+07FF */
		{"\xf0\x8f\xbf\xbf", 4, 0, 0},        /* overlong U+FFFF */
		{"\xed\xa0\x80", 3, 0, 0},            /* U+D800 */
		{"\xed\xbf\xbf", 3, 0, 0},            /* U+DFFF */
		{"\xed\x9f\xbf", 3, 1, 0},            /* U+D7FF */
		{"\xf4\x90\x80\x80", 4, 0, 0},        /* U+110000 */
		{"\xf5\x80\x80\x80", 4, 0, 0},
		{"\xff", 1, 0, 0},
		{"abcdefgh\x80", 9, 0, 8},            /* lone continuation after the ASCII step */
		{"abc\xe2\x82", 5, 0, 3},             /* truncated at the end */
		{"abc\xe2\x82x", 6, 0, 3},
		{"\xe2\x82\xac\xe2\x82\xac\xe2", 7, 0, 6},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t bad = 999;
		int v = k2_utf8_valid(cases[i].s, cases[i].n, &bad);
		EXPECT(v == cases[i].valid, "case %zu: valid %d", i, v);
		EXPECT(v || bad == cases[i].bad, "case %zu: bad at %zu, want %zu", i, bad,
		       cases[i].bad);
	}
	ck_assert_int_eq(k2_utf8_valid("\xff", 1, NULL), 0); /* bad_off may be NULL */
	ck_assert_int_eq(k2_utf8_valid(NULL, 0, NULL), 1);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("utf8");
	TU_ADD_TESTS(tu_tcase(s, "validator", 60), test_exhaustive_short, test_random_long,
		     test_named_cases);
	return s;
}

int main(void)
{
	return tu_run_suite(suite());
}
