/* chat_session.c — a conversation that reuses its KV cache across turns
 * (contract in chat_session.h). The session remembers the ids the cache
 * holds, in order; a new rendering is compared with them token by token, the
 * cache truncated to the common prefix (inf_engine_seq_truncate), the rest
 * run as one step. The generated ids of an answer are in the cache as
 * generated: if the rendering of that answer encodes differently, the common
 * prefix ends there and the difference is recomputed, so the result is
 * always what a fresh cache would compute. */
#include "chat_session.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct inf_chat_session {
	inf_engine *e;
	uint32_t seq;
	inf_tok *tok;
	const inf_chat_template *t;
	int32_t bos;
	int32_t *ids; /* what the cache holds: ids[0 .. n) */
	uint32_t n, cap;
};

int inf_chat_session_new(inf_engine *e, uint32_t seq, inf_tok *tok, const inf_chat_template *t,
			 int32_t bos_id, inf_chat_session **out)
{
	inf_chat_session *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	*s = (inf_chat_session){.e = e, .seq = seq, .tok = tok, .t = t, .bos = bos_id};
	inf_engine_seq_reset(e, seq);
	*out = s;
	return 0;
}

void inf_chat_session_free(inf_chat_session *s)
{
	if (!s)
		return;
	free(s->ids);
	free(s);
}

static int ids_reserve(inf_chat_session *s, uint32_t n)
{
	if (n <= s->cap)
		return 0;
	uint32_t cap = s->cap ? s->cap : 256;
	while (cap < n)
		cap *= 2;
	int32_t *p = realloc(s->ids, sizeof(int32_t) * cap);
	if (!p)
		return -ENOMEM;
	s->ids = p;
	s->cap = cap;
	return 0;
}

/* Runs ids[from .. to) of s->ids on the session's sequence. */
static int run(inf_chat_session *s, uint32_t from, uint32_t to, float *logits, k2_err *err)
{
	const uint32_t chunk = inf_engine_max_batch(s->e);
	for (uint32_t t = from; t < to; t += chunk) {
		inf_seg seg = {.seq = s->seq, .n = to - t < chunk ? to - t : chunk};
		int rc = inf_engine_step(s->e, &seg, 1, s->ids + t, t + seg.n == to ? logits : NULL,
					 err);
		if (rc < 0) {
			inf_engine_seq_truncate(s->e, s->seq, t);
			s->n = t;
			return rc;
		}
	}
	s->n = to;
	return 0;
}

int inf_chat_encode(const inf_chat_template *t, inf_tok *tok, int32_t bos_id,
		    const inf_chat_msg *msgs, size_t n, int32_t **ids, size_t *n_ids, k2_err *err)
{
	char *text;
	size_t len, m;
	int32_t *enc;
	*ids = NULL;
	*n_ids = 0;
	int rc = inf_chat_render(t, msgs, n, true, &text, &len, err);
	if (rc < 0)
		return rc;
	rc = inf_tok_encode(tok, text, len, &enc, &m, err);
	free(text);
	if (rc < 0)
		return rc;
	const size_t lead = bos_id >= 0 && (m == 0 || enc[0] != bos_id);
	int32_t *out = malloc(sizeof(int32_t) * (m + lead));
	if (!out) {
		free(enc);
		return k2_err_set(err, -ENOMEM, "out of memory");
	}
	if (lead)
		out[0] = bos_id;
	memcpy(out + lead, enc, sizeof(int32_t) * m);
	free(enc);
	*ids = out;
	*n_ids = m + lead;
	return 0;
}

int inf_chat_session_prompt(inf_chat_session *s, const inf_chat_msg *msgs, size_t n,
			    float *logits, uint32_t *reused, uint32_t *computed, k2_err *err)
{
	int32_t *ids;
	size_t m;
	int rc = inf_chat_encode(s->t, s->tok, s->bos, msgs, n, &ids, &m, err);
	if (rc < 0)
		return rc;
	if ((rc = ids_reserve(s, (uint32_t)m)) < 0) {
		free(ids);
		return k2_err_set(err, rc, "out of memory");
	}
	/* the common prefix of the cache and the new rendering */
	uint32_t keep = 0;
	const uint32_t total = (uint32_t)m;
	while (keep < s->n && keep < total && s->ids[keep] == ids[keep])
		keep++;
	if (keep == total && keep > 0)
		keep--; /* the last token runs again: its logits are the answer's start */
	memcpy(s->ids + keep, ids + keep, sizeof(int32_t) * (total - keep));
	free(ids);
	inf_engine_seq_truncate(s->e, s->seq, keep);
	s->n = keep;
	if (total == 0)
		return k2_err_set(err, -EINVAL, "the conversation renders to no tokens");
	if (reused)
		*reused = keep;
	if (computed)
		*computed = total - keep;
	return run(s, keep, total, logits, err);
}

int inf_chat_session_feed(inf_chat_session *s, int32_t id, float *logits, k2_err *err)
{
	int rc = ids_reserve(s, s->n + 1);
	if (rc < 0)
		return k2_err_set(err, rc, "out of memory");
	s->ids[s->n] = id;
	return run(s, s->n, s->n + 1, logits, err);
}
