/* tok_utf8.c — UTF-8 and the GPT-2 byte-level alphabet, shared by the JSON
 * reader (escapes, validation), encoding (character steps, byte tokens) and
 * decoding (declared in tok_impl.h). */
#include "tok_impl.h"

void tok_byte_level_tables(uint16_t byte_cp[256], int16_t cp_byte[324])
{
	int n = 0;
	for (int i = 0; i < 324; i++)
		cp_byte[i] = -1;
	for (int b = 0; b < 256; b++) {
		bool keep = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
		byte_cp[b] = keep ? (uint16_t)b : (uint16_t)(256 + n++);
		cp_byte[byte_cp[b]] = (int16_t)b;
	}
}

size_t tok_utf8_put(uint32_t cp, char *out)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xc0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xe0 | cp >> 12);
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		out[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | cp >> 18);
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	out[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

int tok_utf8_seq(const uint8_t *s, size_t n, int *bad_len)
{
	uint8_t b = s[0];
	int need;
	uint8_t lo = 0x80, hi = 0xbf;
	*bad_len = 1;
	if (b < 0x80)
		return 1;
	if (b >= 0xc2 && b <= 0xdf)
		need = 2;
	else if (b >= 0xe0 && b <= 0xef) {
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
	} else
		return 0;
	for (int i = 1; i < need; i++) {
		if ((size_t)i >= n)
			return -i; /* incomplete: i bytes so far are a valid prefix */
		uint8_t c = s[i];
		if (c < lo || c > hi) {
			*bad_len = i;
			return 0;
		}
		lo = 0x80;
		hi = 0xbf;
	}
	return need;
}

size_t tok_utf8_step(const uint8_t *s, size_t n)
{
	int bad;
	int k = tok_utf8_seq(s, n, &bad);
	return k > 0 ? (size_t)k : 1;
}
