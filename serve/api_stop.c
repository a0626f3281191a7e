/* api_stop.c — the stop-sequence matcher (api_stop_* in api.h): which part of
 * a streamed text may be sent now, and where a stop string cuts it off.
 *
 * One Knuth-Morris-Pratt automaton per stop string runs over the text byte by
 * byte; its state is the length of the longest prefix of that stop string
 * ending at the current byte. So the text to hold back is exactly the largest
 * state (a longer suffix could not start a match), a stop string is complete
 * when its state reaches its length, and every byte is looked at once: a long
 * stop string costs O(length) at creation and O(1) per byte after, however
 * the text is cut into pieces. */
#include "api.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct stop_string {
	char *s;
	size_t len;
	size_t *fail;  /* [len] fail[k]: longest proper border of s[0..k] */
	size_t state;  /* bytes of s matched at the end of the text so far */
};

struct api_stop {
	uint32_t n;
	struct stop_string stop[API_STOP_MAX];
	char *buf;     /* [len]: text not yet sent: the held-back bytes, then the last piece */
	size_t len, cap;
	size_t sent;   /* bytes at the front of buf handed out by the last call */
	bool hit;
};

int api_stop_new(const char *const *stops, const size_t *lens, uint32_t n, api_stop **out)
{
	if (!out || n > API_STOP_MAX || (n && (!stops || !lens)))
		return -EINVAL;
	*out = NULL;
	api_stop *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		size_t len = lens[i];
		if (!len || !stops[i])
			continue;
		struct stop_string *st = &m->stop[m->n++];
		st->len = len;
		st->s = malloc(len);
		st->fail = len <= SIZE_MAX / sizeof(size_t) ? malloc(len * sizeof(size_t)) : NULL;
		if (!st->s || !st->fail) {
			api_stop_free(m);
			return -ENOMEM;
		}
		memcpy(st->s, stops[i], len);
		st->fail[0] = 0;
		for (size_t k = 1, b = 0; k < len; k++) {
			while (b && st->s[k] != st->s[b])
				b = st->fail[b - 1];
			if (st->s[k] == st->s[b])
				b++;
			st->fail[k] = b;
		}
	}
	*out = m;
	return 0;
}

void api_stop_free(api_stop *m)
{
	if (!m)
		return;
	for (uint32_t i = 0; i < m->n; i++) {
		free(m->stop[i].s);
		free(m->stop[i].fail);
	}
	free(m->buf);
	free(m);
}

/* Advances st over byte c; true when st's string is now complete. */
static bool step(struct stop_string *st, char c)
{
	size_t q = st->state;
	if (q == st->len) /* only after a hit, which ends the feeding */
		q = st->fail[q - 1];
	while (q && c != st->s[q])
		q = st->fail[q - 1];
	if (c == st->s[q])
		q++;
	st->state = q;
	return q == st->len;
}

int api_stop_feed(api_stop *m, const char *piece, size_t len, const char **emit,
		  size_t *emit_len)
{
	static const char empty[1] = "";
	*emit = empty;
	*emit_len = 0;
	if (!m)
		return -EINVAL;
	if (m->hit)
		return 1;
	if (len && !piece)
		return -EINVAL;
	/* Drop what the last call handed out, then append the piece. */
	if (m->sent)
		memmove(m->buf, m->buf + m->sent, m->len - m->sent);
	m->len -= m->sent;
	m->sent = 0;
	if (len > SIZE_MAX / 2 - m->len)
		return -ENOMEM;
	if (m->len + len > m->cap) {
		size_t cap = m->cap ? m->cap : 256;
		while (cap < m->len + len)
			cap *= 2;
		char *b = realloc(m->buf, cap);
		if (!b)
			return -ENOMEM;
		m->buf = b;
		m->cap = cap;
	}
	if (len)
		memcpy(m->buf + m->len, piece, len);
	size_t base = m->len;
	m->len += len;

	for (size_t j = 0; j < len; j++) {
		/* The first string completed wins; at the same byte, the longest. */
		size_t best = 0;
		for (uint32_t i = 0; i < m->n; i++)
			if (step(&m->stop[i], piece[j]) && m->stop[i].len > best)
				best = m->stop[i].len;
		if (best) {
			m->hit = true;
			*emit = m->buf;
			*emit_len = base + j + 1 - best;
			return 1;
		}
	}
	size_t hold = 0;
	for (uint32_t i = 0; i < m->n; i++)
		if (m->stop[i].state > hold)
			hold = m->stop[i].state;
	m->sent = m->len - hold;
	*emit = m->buf ? m->buf : empty;
	*emit_len = m->sent;
	return 0;
}

int api_stop_flush(api_stop *m, const char **emit, size_t *emit_len)
{
	static const char empty[1] = "";
	*emit = empty;
	*emit_len = 0;
	if (!m || m->hit)
		return 0;
	if (m->sent)
		memmove(m->buf, m->buf + m->sent, m->len - m->sent);
	m->len -= m->sent;
	m->sent = m->len;
	for (uint32_t i = 0; i < m->n; i++)
		m->stop[i].state = 0;
	if (m->buf)
		*emit = m->buf;
	*emit_len = m->len;
	return 0;
}
