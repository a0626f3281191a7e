/* test_util_parse.c — the size parser k2_parse_size (layout/util.c), whose
 * grammar layout.h states: every documented spelling gives its byte count
 * (binary units, exact fractions truncated, UINT64_MAX itself), and what
 * strtod or a loose suffix check would also take — nan, inf, signs, hex,
 * exponents, spaces, a lone "i" or "B", two units, overflow past UINT64_MAX —
 * is -EINVAL and leaves the output alone. */
#include "layout.h"

#include <check.h>
#include <errno.h>
#include <stdint.h>

#include "test_util.h"

START_TEST(test_sizes_accepted)
{
	static const struct {
		const char *s;
		uint64_t v;
	} good[] = {
		{"0", 0},
		{"123", 123},
		{"007", 7},
		{"64K", 65536},
		{"64k", 65536},
		{"64Ki", 65536},
		{"64KiB", 65536},
		{"64KB", 65536},
		{"64kib", 65536},
		{"1Kib", 1024},
		{"1.5M", 1572864},
		{"512M", 536870912},
		{"2G", UINT64_C(2147483648)},
		{"2GiB", UINT64_C(2147483648)},
		{"1.5G", UINT64_C(1610612736)},
		{"1T", UINT64_C(1) << 40},
		{"0.5", 0},
		{"1.5", 1},
		{"1.0009765625K", 1025},             /* exactly 1025 */
		{"1.0009765624K", 1024},             /* just below: truncated */
		{"0.9999999999999999999999999K", 1023},
		{"1.00000000000000000000000000001", 1},
		{"18446744073709551615", UINT64_MAX},
		{"16777215T", UINT64_MAX - ((UINT64_C(1) << 40) - 1)},
		{"16777215.99999999999999999999T", UINT64_MAX},
		{"00000000000000000000000000001K", 1024},
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		uint64_t v = 42;
		int rc = k2_parse_size(good[i].s, &v);
		EXPECT(rc == 0, "'%s': rc %d", good[i].s, rc);
		EXPECT(v == good[i].v, "'%s': %llu, expected %llu", good[i].s,
		       (unsigned long long)v, (unsigned long long)good[i].v);
	}
}
END_TEST

START_TEST(test_sizes_rejected)
{
	static const char *const bad[] = {
		"", "nan", "NaN", "inf", "INF", "infinity", "-1", "-0", "+1", "0x10", "0X10",
		"1e3", "1E3", "1e", "100i", "100I", "100B", "100b", "100iB", " 1", "1 ", "1 K",
		"1\n", "1\t", ".5", "1.", "1..5", "1.5.2", "1,5M", "K", "KiB", "1KK", "1KiBx",
		"1KBi", "1iK", "1Q", "1P", "1KiBB", "18446744073709551616",
		"99999999999999999999999", "16777216T", "16777216.0T", "17179869184G",
		"17592186044416M", "1.5M ", "1.5 M",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint64_t v = 42;
		int rc = k2_parse_size(bad[i], &v);
		EXPECT(rc == -EINVAL, "'%s' accepted (rc %d, %llu)", bad[i], rc,
		       (unsigned long long)v);
		EXPECT(v == 42, "'%s': output changed on error", bad[i]);
	}
	uint64_t v = 42;
	ck_assert_int_eq(k2_parse_size(NULL, &v), -EINVAL);
	ck_assert_uint_eq(v, 42);
}
END_TEST

/* The largest size each unit can spell is accepted, one more is not. */
START_TEST(test_sizes_at_the_limit)
{
	uint64_t v = 0;
	ck_assert_int_eq(k2_parse_size("17179869183G", &v), 0);
	ck_assert_uint_eq(v, UINT64_C(17179869183) << 30);
	ck_assert_int_eq(k2_parse_size("17179869183.999999999999G", &v), 0);
	ck_assert_uint_eq(v, UINT64_MAX);             /* (2^34 - 1 + 0.99…)·2^30, truncated */
	ck_assert_int_eq(k2_parse_size("17592186044415M", &v), 0);
	ck_assert_uint_eq(v, UINT64_C(17592186044415) << 20);
	ck_assert_int_eq(k2_parse_size("17592186044416M", &v), -EINVAL);
}
END_TEST

static Suite *util_parse_suite(void)
{
	Suite *s = suite_create("util_parse");
	TU_ADD_TESTS(tu_tcase(s, "size", 0), test_sizes_accepted, test_sizes_rejected,
		     test_sizes_at_the_limit);
	return s;
}

int main(void)
{
	return tu_run_suite(util_parse_suite());
}
