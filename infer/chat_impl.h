/* chat_impl.h — internals shared by infer/chat_*.c (the contract of the
 * whole is in chat.h). Not for use outside them and tests/test_chat.c.
 *
 * A known template (chat_known.c) is a fingerprint, a name, a family and that
 * family's parameters; the template object (chat_load.c) points at one and
 * adds what came from the model's files (its bos_token). inf_chat_render
 * (chat_render.c) checks the messages' roles and contents, then hands them to
 * the family's renderer, which appends to a chat_buf.
 *
 * Functions here return 0 or -errno unless said otherwise. */
#ifndef INF_CHAT_IMPL_H
#define INF_CHAT_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat.h"

enum chat_family {
	CHAT_FAMILY_KIMI,        /* <|im_system|>/<|im_user|>/<|im_assistant|> turns */
	CHAT_FAMILY_DEEPSEEK_V3, /* bos, joined system prompts, <｜User｜>/<｜Assistant｜> */
};

/* What makes the Kimi family reproduce one template. Every turn is
 * opener + role name + <|im_middle|> + content + <|im_end|>. */
struct chat_kimi_params {
	/* the system turn written before the first message when that message is
	 * not a system message; NULL: none */
	const char *default_system;
	/* default_system is written for an empty conversation too (Thinking's
	 * `messages|length == 0 or ...`; Instruct's test sits inside its loop) */
	bool default_system_if_empty;
	/* written before an assistant turn's content ("<think></think>") */
	const char *assistant_prefix;
	/* tool turns render as <|im_system|>tool<|im_middle|>content; false: the
	 * template needs a tool_call_id, which the plain subset does not carry */
	bool tool_role;
};

/* A known template. */
struct chat_known {
	const char *name;
	uint64_t fingerprint; /* inf_chat_fingerprint of the text */
	uint32_t text_len;    /* its length in bytes: a second check on a match */
	enum chat_family family;
	struct chat_kimi_params kimi; /* CHAT_FAMILY_KIMI only */
	const char *bos;              /* bos_token when the files name none */
	const char *end_of_turn;
};

/* The known template with that fingerprint and length, or with that name;
 * NULL when there is none. */
const struct chat_known *chat_known_by_text(uint64_t fingerprint, size_t len);
const struct chat_known *chat_known_by_name(const char *name);
/* Writes "a, b, c" (the known names) into buf[n], truncating if need be. */
void chat_known_list(char *buf, size_t n);

struct inf_chat_template {
	const struct chat_known *known;
	char *bos; /* the bos_token string (malloc'd) */
};

/* A growing output string: data[0..len) plus a NUL; data stays NULL until
 * the first append. */
struct chat_buf {
	char *data;
	size_t len, cap;
};

/* Appends len bytes of s / the string s. -ENOMEM (the buffer keeps what it
 * had) when memory runs out or the length would overflow. */
int chat_buf_add(struct chat_buf *b, const char *s, size_t len);
int chat_buf_str(struct chat_buf *b, const char *s);

/* Returns x's value from the calling function when it is not 0. */
#define CHAT_TRY(x)                                                                        \
	do {                                                                               \
		int rc_ = (x);                                                             \
		if (rc_)                                                                   \
			return rc_;                                                        \
	} while (0)

/* The families. Called with messages already checked (roles among the four,
 * contents non-NULL; chat_render.c refuses what a family cannot render before
 * calling it). Each appends the rendering of msgs[0..n) to b. */
int chat_render_kimi(const struct chat_kimi_params *p, const inf_chat_msg *msgs, size_t n,
		     bool add_generation_prompt, struct chat_buf *b);
int chat_render_deepseek_v3(const char *bos, const inf_chat_msg *msgs, size_t n,
			    bool add_generation_prompt, struct chat_buf *b);

#endif
