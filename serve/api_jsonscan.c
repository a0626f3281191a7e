/* api_jsonscan.c — when jansson refuses a request body, find where and in
 * which parameter: a lexical walk of the JSON text that keeps the path to the
 * current value ("messages[2].content"), so that text that is not UTF-8, or a
 * \u escape of a lone surrogate, is reported against the parameter holding it
 * (jansson's own error names only a line and column). */
#include "api_impl.h"

#include <stdio.h>
#include <string.h>

#include "layout.h" /* k2_utf8_valid */

#define SCAN_DEPTH 32 /* levels named in a path; deeper ones are walked unnamed */
#define KEY_SHOWN 40  /* bytes of a key shown in a path */

struct frame {
	bool object;      /* else an array */
	bool want_key;    /* object: the next string is a key */
	bool has_key;     /* object: key_off/key_len name the current member */
	size_t index;     /* array: the current element */
	size_t key_off, key_len;
};

struct walk {
	const char *s;
	size_t n;
	struct frame f[SCAN_DEPTH];
	size_t depth;     /* levels open, including unnamed ones beyond SCAN_DEPTH */
};

static void put(char *out, size_t cap, size_t *at, const char *text, size_t len)
{
	for (size_t i = 0; i < len && *at + 1 < cap; i++)
		out[(*at)++] = text[i];
	out[*at] = '\0';
}

/* The path of the value being read in the innermost `levels` levels. */
static void format_path(const struct walk *w, size_t levels, char *out, size_t cap)
{
	size_t at = 0;
	out[0] = '\0';
	for (size_t d = 0; d < levels && d < SCAN_DEPTH; d++) {
		const struct frame *f = &w->f[d];
		char tmp[32];
		if (!f->object) {
			int k = snprintf(tmp, sizeof(tmp), "[%zu]", f->index);
			put(out, cap, &at, tmp, (size_t)k);
			continue;
		}
		if (!f->has_key)
			return;
		if (at)
			put(out, cap, &at, ".", 1);
		size_t len = f->key_len < KEY_SHOWN ? f->key_len : KEY_SHOWN;
		for (size_t i = 0; i < len; i++) {
			unsigned char c = (unsigned char)w->s[f->key_off + i];
			char ch = c >= 0x20 && c < 0x7f && c != '"' && c != '\\' ? (char)c : '?';
			put(out, cap, &at, &ch, 1);
		}
		if (len < f->key_len)
			put(out, cap, &at, "...", 3);
	}
	if (levels > SCAN_DEPTH)
		put(out, cap, &at, "...", 3);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The \uXXXX at s[i] (i points at the backslash): its value, or -1 when it
 * is not one. */
static long u_escape(const char *s, size_t n, size_t i)
{
	if (n - i < 6 || s[i] != '\\' || s[i + 1] != 'u')
		return -1;
	long v = 0;
	for (size_t k = 2; k < 6; k++) {
		int h = hexval(s[i + k]);
		if (h < 0)
			return -1;
		v = v * 16 + h;
	}
	return v;
}

/* Reads the string whose opening quote is at s[*i]; leaves *i past the
 * closing quote. Returns API_SCAN_NONE when it is good text, BAD_* with
 * out->off etc. filled, or -1 when it is not a string token jansson would
 * lex (the walk stops). */
static int read_string(const struct walk *w, size_t *i, struct api_scan *out)
{
	const char *s = w->s;
	size_t n = w->n, j = *i + 1;
	while (j < n) {
		unsigned char c = (unsigned char)s[j];
		if (c == '"') {
			*i = j + 1;
			return API_SCAN_NONE;
		}
		if (c < 0x20)
			return -1;
		if (c == '\\') {
			if (j + 1 >= n)
				return -1;
			char e = s[j + 1];
			if (e != 'u') {
				if (e == '\0' || !strchr("\"\\/bfnrt", e))
					return -1;
				j += 2;
				continue;
			}
			long v = u_escape(s, n, j);
			if (v < 0)
				return -1;
			size_t len = 6;
			bool bad = false;
			if (v >= 0xd800 && v <= 0xdbff) {
				long lo = u_escape(s, n, j + 6);
				if (lo >= 0xdc00 && lo <= 0xdfff)
					len = 12;
				else
					bad = true;
				if (bad && lo >= 0)
					len = 12; /* show both, as jansson does */
			} else if (v >= 0xdc00 && v <= 0xdfff) {
				bad = true;
			}
			if (bad) {
				out->off = j;
				size_t shown = len < sizeof(out->escape) ? len : sizeof(out->escape) - 1;
				memcpy(out->escape, s + j, shown);
				out->escape[shown] = '\0';
				return API_SCAN_BAD_ESCAPE;
			}
			j += len;
			continue;
		}
		if (c < 0x80) {
			j++;
			continue;
		}
		/* A run of non-ASCII bytes: no byte of it can be '"' or '\\'. */
		size_t k = j;
		while (k < n && (unsigned char)s[k] >= 0x80)
			k++;
		size_t bad;
		if (!k2_utf8_valid(s + j, k - j, &bad)) {
			out->off = j + bad;
			out->byte = (unsigned char)s[j + bad];
			return API_SCAN_BAD_UTF8;
		}
		j = k;
	}
	return -1; /* unterminated */
}

static struct frame *top(struct walk *w)
{
	return w->depth && w->depth <= SCAN_DEPTH ? &w->f[w->depth - 1] : NULL;
}

void api_json_scan(const char *s, size_t n, size_t stop_at, struct api_scan *out)
{
	struct walk w = {.s = s, .n = n};
	memset(out, 0, sizeof(*out));
	size_t i = 0;
	while (i < n && i < stop_at) {
		char c = s[i];
		struct frame *f = top(&w);
		if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
			i++;
			continue;
		}
		switch (c) {
		case '{':
		case '[':
			if (w.depth < SCAN_DEPTH)
				w.f[w.depth] = (struct frame){.object = c == '{', .want_key = c == '{'};
			w.depth++;
			i++;
			continue;
		case '}':
		case ']':
			if (!w.depth)
				return;
			w.depth--;
			i++;
			continue;
		case ',':
			if (f && f->object) {
				f->want_key = true;
				f->has_key = false;
			} else if (f) {
				f->index++;
			}
			i++;
			continue;
		case ':':
			i++;
			continue;
		default:
			break;
		}
		size_t start = i;
		bool key = f && f->object && f->want_key;
		if (c == '"') {
			int r = read_string(&w, &i, out);
			if (r < 0)
				return;
			if (r != API_SCAN_NONE) {
				out->what = (enum api_scan_what)r;
				out->in_key = key;
				format_path(&w, key ? w.depth - 1 : w.depth, out->path,
					    sizeof(out->path));
				return;
			}
			if (key) {
				f->want_key = false;
				f->has_key = true;
				f->key_off = start + 1;
				f->key_len = i - start - 2;
			}
		} else {
			while (i < n && ((s[i] && strchr("+-.", s[i])) ||
					 (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
					 (s[i] >= 'A' && s[i] <= 'Z')))
				i++;
			if (i == start)
				return; /* a byte no token begins with */
		}
		if (stop_at <= i && !key) {
			out->what = API_SCAN_AT;
			format_path(&w, w.depth, out->path, sizeof(out->path));
			return;
		}
	}
}
