/* chat_deepseek.c — the DeepSeek-V3 chat format: bos_token, then every
 * system message's content joined by a blank line, then the other turns in
 * order: <｜User｜>content; <｜Assistant｜>content<｜end▁of▁sentence｜>;
 * tool results grouped in <｜tool▁outputs▁begin｜>...<｜tool▁outputs▁end｜>.
 * The template's state is reproduced as it is, quirks included: a user turn
 * after tool results closes no group (only an assistant turn or the end
 * does), and only the conversation's first tool result opens a group. */
#include "chat_impl.h"

#include <string.h>

#define U_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define U_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define U_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define U_OUTPUTS_BEGIN "<\xef\xbd\x9ctool\xe2\x96\x81outputs\xe2\x96\x81" "begin\xef\xbd\x9c>"
#define U_OUTPUTS_END "<\xef\xbd\x9ctool\xe2\x96\x81outputs\xe2\x96\x81" "end\xef\xbd\x9c>"
#define U_OUTPUT_BEGIN "<\xef\xbd\x9ctool\xe2\x96\x81output\xe2\x96\x81" "begin\xef\xbd\x9c>"
#define U_OUTPUT_END "<\xef\xbd\x9ctool\xe2\x96\x81output\xe2\x96\x81" "end\xef\xbd\x9c>"

int chat_render_deepseek_v3(const char *bos, const inf_chat_msg *msgs, size_t n,
			    bool add_generation_prompt, struct chat_buf *b)
{
	CHAT_TRY(chat_buf_str(b, bos));
	bool first_sp = true;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(msgs[i].role, "system"))
			continue;
		if (!first_sp)
			CHAT_TRY(chat_buf_str(b, "\n\n"));
		CHAT_TRY(chat_buf_str(b, msgs[i].content));
		first_sp = false;
	}
	bool is_tool = false, output_first = true;
	for (size_t i = 0; i < n; i++) {
		const char *role = msgs[i].role, *c = msgs[i].content;
		if (!strcmp(role, "user")) {
			is_tool = false;
			CHAT_TRY(chat_buf_str(b, U_USER));
			CHAT_TRY(chat_buf_str(b, c));
		} else if (!strcmp(role, "assistant")) {
			CHAT_TRY(chat_buf_str(b, is_tool ? U_OUTPUTS_END : U_ASSISTANT));
			CHAT_TRY(chat_buf_str(b, c));
			CHAT_TRY(chat_buf_str(b, U_EOS));
			is_tool = false;
		} else if (!strcmp(role, "tool")) {
			is_tool = true;
			CHAT_TRY(chat_buf_str(b, output_first ? U_OUTPUTS_BEGIN U_OUTPUT_BEGIN
							 : "\n" U_OUTPUT_BEGIN));
			CHAT_TRY(chat_buf_str(b, c));
			CHAT_TRY(chat_buf_str(b, U_OUTPUT_END));
			output_first = false;
		}
	}
	if (is_tool)
		CHAT_TRY(chat_buf_str(b, U_OUTPUTS_END));
	else if (add_generation_prompt)
		CHAT_TRY(chat_buf_str(b, U_ASSISTANT));
	return 0;
}
