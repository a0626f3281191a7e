/* chat_kimi.c — the Kimi-K2 chat format: every turn is an opener token, the
 * role's name, <|im_middle|>, the content and <|im_end|>; system and tool
 * turns open with <|im_system|>, user turns with <|im_user|>, assistant
 * turns with <|im_assistant|>. The templates differ in a default system turn
 * and in what precedes an assistant's content (struct chat_kimi_params). */
#include "chat_impl.h"

#include <string.h>

/* The opener of a role's turn, up to and including <|im_middle|>. */
static const char *opener(const char *role)
{
	if (!strcmp(role, "user"))
		return "<|im_user|>user<|im_middle|>";
	if (!strcmp(role, "assistant"))
		return "<|im_assistant|>assistant<|im_middle|>";
	if (!strcmp(role, "tool"))
		return "<|im_system|>tool<|im_middle|>";
	return "<|im_system|>system<|im_middle|>";
}

int chat_render_kimi(const struct chat_kimi_params *p, const inf_chat_msg *msgs, size_t n,
		     bool add_generation_prompt, struct chat_buf *b)
{
	bool no_system_first = n ? strcmp(msgs[0].role, "system") != 0
				 : p->default_system_if_empty;
	if (p->default_system && no_system_first) {
		CHAT_TRY(chat_buf_str(b, "<|im_system|>system<|im_middle|>"));
		CHAT_TRY(chat_buf_str(b, p->default_system));
		CHAT_TRY(chat_buf_str(b, "<|im_end|>"));
	}
	for (size_t i = 0; i < n; i++) {
		CHAT_TRY(chat_buf_str(b, opener(msgs[i].role)));
		if (!strcmp(msgs[i].role, "assistant"))
			CHAT_TRY(chat_buf_str(b, p->assistant_prefix));
		CHAT_TRY(chat_buf_str(b, msgs[i].content));
		CHAT_TRY(chat_buf_str(b, "<|im_end|>"));
	}
	if (add_generation_prompt)
		CHAT_TRY(chat_buf_str(b, "<|im_assistant|>assistant<|im_middle|>"));
	return 0;
}
