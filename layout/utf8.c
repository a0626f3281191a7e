/* utf8.c — a strict UTF-8 validator for text that crosses a trust boundary
 * (HTTP request bodies, generated text about to be put into JSON).
 *
 * infer/tok_utf8.c keeps the tokenizer's own step-by-step decoder
 * (tok_utf8_seq: it also reports incomplete tails for the streaming decoder);
 * this one answers only "is the whole buffer valid, and if not, where does it
 * stop being", for code below infer/ that cannot call into it. */
#include "layout.h"

#include <string.h>

int k2_utf8_valid(const void *s, size_t n, size_t *bad_off)
{
	const unsigned char *p = s;
	size_t i = 0;
	while (i < n) {
		/* ASCII runs eight bytes at a time. */
		if (i + 8 <= n) {
			uint64_t w;
			memcpy(&w, p + i, 8);
			if (!(w & 0x8080808080808080ull)) {
				i += 8;
				continue;
			}
		}
		unsigned char b = p[i];
		if (b < 0x80) {
			i++;
			continue;
		}
		/* Table 3-7 of the Unicode standard: the second byte's range depends
		 * on the first (no overlongs, no surrogates, nothing above U+10FFFF). */
		size_t need;
		unsigned char lo = 0x80, hi = 0xbf;
		if (b >= 0xc2 && b <= 0xdf) {
			need = 2;
		} else if (b >= 0xe0 && b <= 0xef) {
			need = 3;
			if (b == 0xe0)
				lo = 0xa0;
			else if (b == 0xed)
				hi = 0x9f;
		} else if (b >= 0xf0 && b <= 0xf4) {
			need = 4;
			if (b == 0xf0)
				lo = 0x90;
			else if (b == 0xf4)
				hi = 0x8f;
		} else {
			goto bad;
		}
		if (n - i < need)
			goto bad;
		if (p[i + 1] < lo || p[i + 1] > hi)
			goto bad;
		for (size_t k = 2; k < need; k++)
			if ((p[i + k] & 0xc0) != 0x80)
				goto bad;
		i += need;
	}
	return 1;
bad:
	if (bad_off)
		*bad_off = i;
	return 0;
}
