/* chat_session.h — one conversation on one sequence of an engine: each turn
 * the whole conversation is rendered with the model's chat template and
 * encoded, the KV cache keeps the prefix it shares with what the cache holds,
 * and only the tokens after it are computed (a turn costs its new tokens, not
 * the conversation). Used by `infer --chat`; the server's requests are the
 * same shape. Not thread-safe: one session, one thread. */
#ifndef INF_CHAT_SESSION_H
#define INF_CHAT_SESSION_H

#include "chat.h"
#include "infer.h"
#include "tokenizer.h"

typedef struct inf_chat_session inf_chat_session;

/* A session on sequence seq of e (emptied here), rendering with t and
 * encoding with tok; all borrowed, outliving the session. bos_id (or -1) is
 * put first when the template does not write it. 0 or -ENOMEM. */
int inf_chat_session_new(inf_engine *e, uint32_t seq, inf_tok *tok, const inf_chat_template *t,
			 int32_t bos_id, inf_chat_session **out);
void inf_chat_session_free(inf_chat_session *s);

/* Renders msgs[0..n) with the generation prompt, runs the tokens the cache
 * lacks, and writes the last token's logits [vocab]. *reused / *computed
 * (if non-NULL) get the tokens kept from the cache and those run. 0 or
 * -errno with a message (a template or tokenizer error, context full). */
int inf_chat_session_prompt(inf_chat_session *s, const inf_chat_msg *msgs, size_t n,
			    float *logits, uint32_t *reused, uint32_t *computed, k2_err *err);

/* The ids of a conversation as the model reads it: msgs[0..n) rendered with
 * the generation prompt, encoded, and bos_id (or -1) put first when the
 * template did not write it. *ids is malloc'd (the caller frees it). 0 or
 * -errno with a message. The server's chat requests and the session share it. */
int inf_chat_encode(const inf_chat_template *t, inf_tok *tok, int32_t bos_id,
		    const inf_chat_msg *msgs, size_t n, int32_t **ids, size_t *n_ids, k2_err *err);

/* Runs one generated id after the prompt or the previous id; logits of it. */
int inf_chat_session_feed(inf_chat_session *s, int32_t id, float *logits, k2_err *err);

#endif
