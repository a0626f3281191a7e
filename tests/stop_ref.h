/* stop_ref.h — the brute-force reference for serve's stop-sequence matcher
 * (api_stop_* in serve/api.h), for tests/test_serve_api.c and
 * tests/fuzz_serve_request.c: it rescans the whole text at every byte, which
 * is too slow for a server and plainly right. Header-only, `static inline`. */
#ifndef K2_TESTS_STOP_REF_H
#define K2_TESTS_STOP_REF_H

#include <stddef.h>
#include <string.h>

/* Where in t[0..n) the first stop string to be completed starts (of those
 * completed at the same byte, the longest), or -1 when none is. */
static inline long stop_ref_at(const char *t, size_t n, const char *const *stops,
			       const size_t *lens, int ns)
{
	for (size_t end = 1; end <= n; end++) {
		size_t best = 0;
		for (int i = 0; i < ns; i++)
			if (lens[i] <= end && !memcmp(t + end - lens[i], stops[i], lens[i]) &&
			    lens[i] > best)
				best = lens[i];
		if (best)
			return (long)(end - best);
	}
	return -1;
}

/* How many bytes of t[0..n) may be sent: all but the longest suffix that is
 * a proper prefix of a stop string. */
static inline size_t stop_ref_safe(const char *t, size_t n, const char *const *stops,
				   const size_t *lens, int ns)
{
	size_t hold = 0;
	for (int i = 0; i < ns; i++)
		for (size_t k = lens[i] - 1; k > hold; k--)
			if (k <= n && !memcmp(t + n - k, stops[i], k)) {
				hold = k;
				break;
			}
	return n - hold;
}

#endif
