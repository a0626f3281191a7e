/* api_json.c — building JSON from untrusted bytes and dumping it (plain or as
 * one server-sent event), for the error and response builders. */
#include "api_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "layout.h" /* k2_utf8_valid */

json_t *api_json_text(const char *s, size_t n)
{
	size_t bad;
	if (!s)
		n = 0;
	if (k2_utf8_valid(s, n, &bad))
		return json_stringn_nocheck(n ? s : "", n);
	if (n > (SIZE_MAX - 1) / 3)
		return NULL;
	/* Repair: every byte that starts no valid sequence becomes U+FFFD. */
	char *buf = malloc(3 * n + 1);
	if (!buf)
		return NULL;
	size_t in = 0, out = 0;
	for (;;) {
		memcpy(buf + out, s + in, bad);
		out += bad;
		in += bad;
		if (in >= n)
			break;
		memcpy(buf + out, "\xef\xbf\xbd", 3);
		out += 3;
		in++;
		if (k2_utf8_valid(s + in, n - in, &bad))
			bad = n - in;
	}
	json_t *j = json_stringn_nocheck(buf, out);
	free(buf);
	return j;
}

json_t *api_json_cstr(const char *s)
{
	return s ? api_json_text(s, strlen(s)) : json_null();
}

int api_json_put(json_t *obj, const char *key, json_t *v)
{
	if (!v)
		return -ENOMEM;
	return json_object_set_new(obj, key, v) ? -ENOMEM : 0;
}

char *api_json_finish(json_t *j, bool sse, size_t *len)
{
	static const char head[] = "data: ", tail[] = "\n\n";
	const size_t flags = JSON_COMPACT | JSON_REAL_PRECISION(12);
	if (!j)
		return NULL;
	size_t n = json_dumpb(j, NULL, 0, flags);
	size_t h = sse ? sizeof(head) - 1 : 0, t = sse ? sizeof(tail) - 1 : 0;
	char *buf = n ? malloc(h + n + t + 1) : NULL;
	if (buf && json_dumpb(j, buf + h, n, flags) == n) {
		memcpy(buf, head, h);
		memcpy(buf + h + n, tail, t);
		buf[h + n + t] = '\0';
		if (len)
			*len = h + n + t;
	} else {
		free(buf);
		buf = NULL;
	}
	json_decref(j);
	return buf;
}
