/* fuzz_xattr_value.c — libFuzzer target for the user.k2.* xattr value parsers
 * (k2fs/value.c; grammar in docs/xattrs.md, "Writable values"). Any bytes are
 * a value given to setxattr, not NUL-terminated, and go through every parser:
 * size, read-ahead, hint, expert list ("3,17,200") and layer/expert list
 * ("1/3,2/17"). Each parser must agree with a reference written here from
 * the grammar alone (a different method: sizes by exact decimal
 * multiplication, lists by splitting on commas):
 *   - it accepts exactly what the reference accepts, with the same result;
 *   - a refusal is -EINVAL and leaves the output untouched;
 *   - what it accepts formats back (k2fs_value_format_size, k2fs_hint_name,
 *     "%u" joined by commas) into a value that parses to the same result.
 * A broken promise aborts, for libFuzzer to report. Built by `make fuzz`. */
#include "k2fs_value.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *v, size_t n)
{
	fprintf(stderr, "fuzz_xattr_value: %s: \"%.*s\" (%zu bytes)\n", what, (int)n, v, n);
	abort();
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* ------------------------------------------------------------ reference: sizes */

/* The grammar of k2_parse_size (layout.h), for a value of n bytes:
 *   digits [ "." digits ] [ unit [ "i" | "I" ] [ "b" | "B" ] ],
 * binary units, the fraction exact and truncated, the result below
 * K2FS_RA_INHERIT for an xattr, and at most 63 bytes. Returns 0 or -EINVAL. */
static int ref_size(const char *v, size_t n, uint64_t *out)
{
	if (n == 0 || n >= 64)
		return -EINVAL;
	size_t i = 0, w0 = 0, w1, f0 = 0, f1 = 0;
	while (i < n && is_digit(v[i]))
		i++;
	w1 = i;
	if (w1 == w0)
		return -EINVAL;
	if (i < n && v[i] == '.') {
		f0 = ++i;
		while (i < n && is_digit(v[i]))
			i++;
		f1 = i;
		if (f1 == f0)
			return -EINVAL;
	}
	unsigned shift = 0;
	if (i < n) {
		const char *units = "kKmMgGtT", *u = memchr(units, v[i], 8);
		if (v[i] && u) {
			shift = 10 * (unsigned)(1 + (u - units) / 2);
			i++;
			if (i < n && (v[i] == 'i' || v[i] == 'I'))
				i++;
			if (i < n && (v[i] == 'b' || v[i] == 'B'))
				i++;
		}
	}
	if (i != n)
		return -EINVAL;
	unsigned __int128 whole = 0, lim = (unsigned __int128)1 << 64;
	for (size_t k = w0; k < w1; k++) {
		whole = whole * 10 + (unsigned)(v[k] - '0');
		if (whole >= lim)
			return -EINVAL;
	}
	/* floor(0.f × 2^shift): the fraction's digits times 2^shift as a decimal
	 * big number (base-10 digits, least significant first), less its last
	 * (f1 - f0) digits. */
	uint64_t mul = (uint64_t)1 << shift, frac = 0;
	if (f1 > f0) {
		uint8_t prod[128] = {0};
		size_t nd = f1 - f0, len = 0;
		uint64_t carry = 0;
		for (size_t k = 0; k < nd; k++) {
			uint64_t x = (uint64_t)(v[f1 - 1 - k] - '0') * mul + carry;
			prod[len++] = (uint8_t)(x % 10);
			carry = x / 10;
		}
		while (carry) {
			prod[len++] = (uint8_t)(carry % 10);
			carry /= 10;
		}
		for (size_t k = len; k-- > nd;)
			frac = frac * 10 + prod[k];
	}
	unsigned __int128 total = whole * mul + frac;
	if (total >= K2FS_RA_INHERIT)
		return -EINVAL;
	*out = (uint64_t)total;
	return 0;
}

static void check_size(const char *v, size_t n)
{
	uint64_t got = 0x5a5a5a5a5a5a5a5aull, want = 0;
	int rc = k2fs_value_parse_size(v, n, &got), ref = ref_size(v, n, &want);
	if (rc != 0 && rc != -EINVAL)
		fail("size: unexpected error code", v, n);
	if ((rc == 0) != (ref == 0))
		fail(rc ? "size: refuses what the grammar accepts" : "size: accepts what the grammar refuses",
		     v, n);
	if (rc) {
		if (got != 0x5a5a5a5a5a5a5a5aull)
			fail("size: a refusal changed the output", v, n);
		return;
	}
	if (got != want)
		fail("size: a value other than the grammar's", v, n);
	char buf[32];
	uint64_t back;
	k2fs_value_format_size(got, buf, sizeof(buf));
	if (k2fs_value_parse_size(buf, strlen(buf), &back) || back != got)
		fail("size: does not read back its own format", buf, strlen(buf));

	/* read-ahead: a size, or "all" */
	uint64_t ra = 1;
	if (k2fs_value_parse_readahead(v, n, &ra) || ra != got)
		fail("readahead: differs from the size", v, n);
}

static void check_readahead(const char *v, size_t n)
{
	uint64_t ra = 7, sz;
	int rc = k2fs_value_parse_readahead(v, n, &ra);
	bool all = n == 3 && memcmp(v, "all", 3) == 0;
	if (all) {
		char buf[32];
		if (rc || ra != K2FS_RA_ALL ||
		    strcmp(k2fs_value_format_size(ra, buf, sizeof(buf)), "all"))
			fail("readahead: \"all\" not read or written", v, n);
		return;
	}
	if ((rc == 0) != (ref_size(v, n, &sz) == 0) || (rc && rc != -EINVAL) || (rc && ra != 7))
		fail("readahead: differs from the size grammar", v, n);
}

/* ------------------------------------------------------------ reference: hints */

static void check_hint(const char *v, size_t n)
{
	static const char *const words[] = {"willneed", "pin", "unpin", "dontneed"};
	enum k2fs_hint h = K2FS_HINT_NONE;
	int rc = k2fs_value_parse_hint(v, n, &h), want = -1;
	for (int i = 0; i < 4; i++)
		if (strlen(words[i]) == n && memcmp(v, words[i], n) == 0)
			want = i;
	if (want < 0) {
		if (rc != -EINVAL || h != K2FS_HINT_NONE)
			fail("hint: accepts a word that is not one", v, n);
		return;
	}
	if (rc || strcmp(k2fs_hint_name(h), words[want]))
		fail("hint: a word not read back", v, n);
}

/* ------------------------------------------------------------ reference: lists */

/* Splits v on commas; each item is 1-9 digits, or with pairs, 1-9 digits, '/',
 * 1-9 digits. Returns the item count, or 0 when the value is malformed. */
static size_t ref_list(const char *v, size_t n, bool pairs, uint32_t *vals)
{
	size_t count = 0, start = 0;
	if (n == 0)
		return 0;
	for (size_t i = 0; i <= n; i++) {
		if (i < n && v[i] != ',')
			continue;
		const char *item = v + start;
		size_t len = i - start, halves = pairs ? 2 : 1, at = 0;
		for (size_t h = 0; h < halves; h++) {
			size_t d0 = at;
			uint32_t x = 0;
			while (at < len && is_digit(item[at]))
				x = x * 10 + (uint32_t)(item[at++] - '0');
			if (at == d0 || at - d0 > 9)
				return 0;
			vals[count * halves + h] = x;
			if (h + 1 < halves) {
				if (at == len || item[at] != '/')
					return 0;
				at++;
			}
		}
		if (at != len)
			return 0;
		count++;
		start = i + 1;
	}
	return count;
}

/* The values joined back as "%u" with commas (and '/' within pairs). */
static size_t write_list(const uint32_t *vals, size_t count, bool pairs, char *out)
{
	size_t o = 0, halves = pairs ? 2 : 1;
	for (size_t i = 0; i < count; i++)
		for (size_t h = 0; h < halves; h++)
			o += (size_t)sprintf(out + o, "%s%u", h ? "/" : i ? "," : "",
					     vals[i * halves + h]);
	return o;
}

static void check_list(const char *v, size_t n, bool pairs)
{
	const char *what = pairs ? "pairs" : "list";
	uint32_t *want = malloc((n + 1) * 2 * sizeof(*want));
	if (!want)
		return;
	size_t want_n = ref_list(v, n, pairs, want), got_n = 12345;
	void *got = (void *)&got_n;
	int rc = pairs ? k2fs_value_parse_pairs(v, n, (struct k2fs_ref **)&got, &got_n)
		       : k2fs_value_parse_list(v, n, (uint32_t **)&got, &got_n);
	if (rc == -ENOMEM)
		goto out;
	if ((rc == 0) != (want_n > 0) || (rc && rc != -EINVAL))
		fail(pairs ? "pairs: differ from the grammar" : "list: differs from the grammar", v,
		     n);
	if (rc) {
		if (got != (void *)&got_n || got_n != 12345)
			fail("a refused list changed the output", what, strlen(what));
		goto out;
	}
	uint32_t *flat = malloc(want_n * 2 * sizeof(*flat));
	if (!flat) {
		free(got);
		goto out;
	}
	for (size_t i = 0; i < got_n && i < want_n; i++) {
		if (pairs) {
			flat[2 * i] = ((struct k2fs_ref *)got)[i].layer;
			flat[2 * i + 1] = ((struct k2fs_ref *)got)[i].expert;
		} else {
			flat[i] = ((uint32_t *)got)[i];
		}
	}
	free(got);
	size_t halves = pairs ? 2 : 1;
	if (got_n != want_n || memcmp(flat, want, want_n * halves * sizeof(*flat)))
		fail(pairs ? "pairs: other values than the grammar's" : "list: other values than the grammar's",
		     v, n);
	/* Written back (leading zeros dropped), it reads the same. */
	char *text = malloc(want_n * 21 + 1);
	if (text) {
		size_t tl = write_list(flat, want_n, pairs, text);
		uint32_t *again = malloc((tl + 1) * 2 * sizeof(*again));
		if (again && (ref_list(text, tl, pairs, again) != want_n ||
			      memcmp(again, flat, want_n * halves * sizeof(*flat))))
			fail("a list written back reads differently", text, tl);
		void *g2;
		size_t n2;
		rc = pairs ? k2fs_value_parse_pairs(text, tl, (struct k2fs_ref **)&g2, &n2)
			   : k2fs_value_parse_list(text, tl, (uint32_t **)&g2, &n2);
		if (rc == 0) {
			if (n2 != want_n)
				fail("a list written back has another count", text, tl);
			free(g2);
		} else if (rc != -ENOMEM) {
			fail("a list written back is refused", text, tl);
		}
		free(again);
		free(text);
	}
	free(flat);
out:
	free(want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A private copy sized exactly, so ASan flags a read one past the end. */
	char *v = malloc(size ? size : 1);
	if (!v)
		return 0;
	memcpy(v, data, size);
	check_size(v, size);
	check_readahead(v, size);
	check_hint(v, size);
	check_list(v, size, false);
	check_list(v, size, true);
	free(v);
	return 0;
}
