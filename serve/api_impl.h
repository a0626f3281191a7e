/* api_impl.h — what serve/api_*.c share and nothing else calls: JSON text
 * built from untrusted bytes, compact dumping, SSE framing, and the lexical
 * scan that locates bad text in a body jansson refused. */
#ifndef K2_SERVE_API_IMPL_H
#define K2_SERVE_API_IMPL_H

#include <jansson.h>

#include "api.h"

/* A JSON string of s[0..n): each byte that does not begin a valid UTF-8
 * sequence (layout's k2_utf8_valid) is replaced by U+FFFD. NULL when memory
 * runs out (or n is absurd). */
json_t *api_json_text(const char *s, size_t n);

/* Same for a C string; NULL s gives JSON null. */
json_t *api_json_cstr(const char *s);

/* Sets obj[key] = v, taking v's reference; a NULL v (out of memory) makes it
 * fail. Returns 0 or -ENOMEM. */
int api_json_put(json_t *obj, const char *key, json_t *v);

/* Dumps j compactly (no spaces) into a malloc'd string, framed as
 * "data: <json>\n\n" when sse; decrefs j (NULL j gives NULL). *len (if
 * non-NULL) gets the length. NULL when memory runs out. */
char *api_json_finish(json_t *j, bool sse, size_t *len);

/* What api_json_scan found. */
enum api_scan_what {
	API_SCAN_NONE = 0,   /* nothing to report: neither bad text nor the offset
	                        was reached, or the text's structure was lost */
	API_SCAN_BAD_UTF8,   /* a string holds a byte sequence that is not UTF-8 */
	API_SCAN_BAD_ESCAPE, /* a string holds a \u escape of a lone surrogate */
	API_SCAN_AT,         /* the scalar or string token covering stop_at */
};

struct api_scan {
	enum api_scan_what what;
	bool in_key;         /* BAD_*: the bad string is an object key, and path is
	                        its object's */
	size_t off;          /* BAD_*: offset of the bad byte or escape in the text */
	unsigned byte;       /* BAD_UTF8: the bad byte */
	char escape[16];     /* BAD_ESCAPE: the escape(s) as written, "\\ud800" */
	char path[128];      /* "messages[2].content"; "" at the top level. Keys are
	                        shown in printable ASCII ('?' for anything else) */
};

/* Walks JSON text s[0..n) token by token, keeping the path to the current
 * value, and stops at the first string holding bad text that starts before
 * stop_at (BAD_*), else at the scalar or string token with start < stop_at <=
 * end (AT), else returns NONE. Only strings are checked beyond lexing; the
 * walk does not validate the grammar, and gives NONE where it cannot follow
 * it (an unbalanced bracket, a control character, an unknown escape). Reads
 * only s[0..n); depth beyond 32 is walked but not named in the path. */
void api_json_scan(const char *s, size_t n, size_t stop_at, struct api_scan *out);

#endif
