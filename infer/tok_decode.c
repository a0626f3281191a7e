/* tok_decode.c — decoding (contracts in tokenizer.h): the ByteLevel
 * decoder's bytes of every token, built once at load (a token with a
 * character outside the byte-level alphabet decodes to its own UTF-8, as an
 * added token does), and decoding of id sequences, whole or streamed, which
 * repairs invalid UTF-8 the way Rust's String::from_utf8_lossy does. */
#include "tok_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Copies in[0..n) to out making it valid UTF-8 (U+FFFD per maximal invalid
 * subpart). Unless `final`, an incomplete character at the end is left
 * unconsumed. out needs room for 3*n bytes. Returns bytes written; *used gets
 * the bytes of in consumed. */
static size_t utf8_repair(const uint8_t *in, size_t n, bool final, char *out, size_t *used)
{
	size_t i = 0, o = 0;
	while (i < n) {
		int bad;
		int k = tok_utf8_seq(in + i, n - i, &bad);
		if (k > 0) {
			memcpy(out + o, in + i, (size_t)k);
			o += (size_t)k;
			i += (size_t)k;
			continue;
		}
		if (k < 0 && !final)
			break;
		if (k < 0)
			bad = -k;
		memcpy(out + o, "\xef\xbf\xbd", 3);
		o += 3;
		i += (size_t)bad;
	}
	*used = i;
	return o;
}


int tok_decode_build(inf_tok *t, k2_err *err)
{
	t->dec_off = malloc(t->n_ids * sizeof(*t->dec_off));
	t->dec_len = malloc(t->n_ids * sizeof(*t->dec_len));
	if (!t->dec_off || !t->dec_len || tok_arena_reserve(&t->decs, t->strs.len))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	for (uint32_t id = 0; id < t->n_ids; id++) {
		t->dec_off[id] = t->decs.len;
		t->dec_len[id] = 0;
		if (t->str_off[id] == SIZE_MAX)
			continue;
		const uint8_t *s = (const uint8_t *)t->strs.p + t->str_off[id];
		size_t n = t->str_len[id];
		/* every character maps to at most one byte, so n + 1 is room enough */
		if (tok_arena_reserve(&t->decs, n + 1))
			return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
		char *o = t->decs.p + t->decs.len;
		size_t k = 0, i = 0;
		while (i < n) {
			int bad;
			int l = tok_utf8_seq(s + i, n - i, &bad);
			uint32_t cp = 0x110000;
			if (l == 1)
				cp = s[i];
			else if (l == 2)
				cp = (uint32_t)(s[i] & 0x1f) << 6 | (s[i + 1] & 0x3f);
			if (cp >= 324 || t->cp_byte[cp] < 0)
				break;
			o[k++] = (char)t->cp_byte[cp];
			i += (size_t)l;
		}
		if (i < n) { /* a character outside the alphabet: the token's own bytes */
			memcpy(o, s, n);
			k = n;
		}
		o[k] = 0;
		t->dec_len[id] = (uint32_t)k;
		t->decs.len += k + 1;
	}
	return 0;
}


/* ------------------------------------------------------------ decoding */

int inf_tok_decode_id(const inf_tok *t, int32_t id, const char **bytes, size_t *len)
{
	if (id < 0 || (uint32_t)id >= t->n_ids || t->str_off[id] == SIZE_MAX)
		return -EINVAL;
	*bytes = t->decs.p + t->dec_off[id];
	*len = t->dec_len[id];
	return 0;
}

static bool decodes(const inf_tok *t, int32_t id, unsigned flags)
{
	if (id < 0 || (uint32_t)id >= t->n_ids || t->str_off[id] == SIZE_MAX)
		return false;
	return !((flags & INF_TOK_SKIP_SPECIAL) && t->special[id]);
}

int inf_tok_decode(const inf_tok *t, const int32_t *ids, size_t n, unsigned flags, char **out,
		   size_t *out_len)
{
	*out = NULL;
	*out_len = 0;
	size_t total = 0;
	for (size_t i = 0; i < n; i++)
		if (decodes(t, ids[i], flags))
			total += t->dec_len[ids[i]];
	uint8_t *raw = malloc(total + 1);
	if (!raw)
		return -ENOMEM;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (!decodes(t, ids[i], flags))
			continue;
		memcpy(raw + k, t->decs.p + t->dec_off[ids[i]], t->dec_len[ids[i]]);
		k += t->dec_len[ids[i]];
	}
	raw[k] = 0;
	if (flags & INF_TOK_RAW) {
		*out = (char *)raw;
		*out_len = k;
		return 0;
	}
	if (total > (SIZE_MAX - 1) / 3) {
		free(raw);
		return -ENOMEM;
	}
	char *txt = malloc(3 * total + 1);
	if (!txt) {
		free(raw);
		return -ENOMEM;
	}
	size_t used;
	size_t m = utf8_repair(raw, k, true, txt, &used);
	txt[m] = 0;
	free(raw);
	*out = txt;
	*out_len = m;
	return 0;
}

struct inf_tok_stream {
	const inf_tok *tok;
	unsigned flags;
	uint8_t *in;   /* held-back bytes, then the new token's bytes */
	char *out;
	size_t held, cap_in, cap_out;
};

int inf_tok_stream_new(const inf_tok *tok, unsigned flags, inf_tok_stream **out)
{
	*out = calloc(1, sizeof(**out));
	if (!*out)
		return -ENOMEM;
	(*out)->tok = tok;
	(*out)->flags = flags & INF_TOK_SKIP_SPECIAL;
	return 0;
}

void inf_tok_stream_free(inf_tok_stream *s)
{
	if (!s)
		return;
	free(s->in);
	free(s->out);
	free(s);
}

static int stream_run(inf_tok_stream *s, const char *add, size_t n, bool final,
		      const char **text, size_t *len)
{
	size_t need = s->held + n;
	if (need + 1 > s->cap_in) {
		uint8_t *p = realloc(s->in, need + 64);
		if (!p)
			return -ENOMEM;
		s->in = p;
		s->cap_in = need + 64;
	}
	if (3 * need + 1 > s->cap_out) {
		char *p = realloc(s->out, 3 * need + 64);
		if (!p)
			return -ENOMEM;
		s->out = p;
		s->cap_out = 3 * need + 64;
	}
	if (n)
		memcpy(s->in + s->held, add, n);
	size_t used;
	size_t m = utf8_repair(s->in, need, final, s->out, &used);
	s->held = need - used; /* at most 3 bytes of an unfinished character */
	memmove(s->in, s->in + used, s->held);
	s->out[m] = 0;
	*text = s->out;
	*len = m;
	return 0;
}

int inf_tok_stream_feed(inf_tok_stream *s, int32_t id, const char **text, size_t *len)
{
	if (!decodes(s->tok, id, s->flags))
		return stream_run(s, NULL, 0, false, text, len);
	return stream_run(s, s->tok->decs.p + s->tok->dec_off[id], s->tok->dec_len[id], false,
			  text, len);
}

int inf_tok_stream_flush(inf_tok_stream *s, const char **text, size_t *len)
{
	return stream_run(s, NULL, 0, true, text, len);
}
