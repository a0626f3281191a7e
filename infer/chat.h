/* chat.h — a model's chat format (the Jinja `chat_template` of its
 * tokenizer_config.json) rendered in C, without a Jinja interpreter.
 *
 * The template text is recognised by an exact fingerprint (XXH3-64 of its
 * bytes) in a table of known templates, each mapped to a renderer family
 * (Kimi-K2's <|im_*|> turns, DeepSeek-V3's <｜User｜>/<｜Assistant｜> turns)
 * and the parameters that make the family reproduce that template (its
 * default system prompt, its <think></think> prefix, ...). A template that is
 * not in the table is refused, never guessed; a user with a modified template
 * names the known one to render as (inf_chat_template_by_name).
 *
 * What is rendered: the plain conversation subset of each template —
 * messages with a role and a string content, no `tools`, no tool calls, no
 * reasoning_content, no multi-part (image) contents. Within it the output is
 * the exact text the template renders under transformers' apply_chat_template
 * (checked byte for byte against @huggingface/jinja by tests/test_chat.c).
 * The tokenizer then encodes that text with special-token strings mapped to
 * their ids and without an extra BOS (a template that wants BOS writes it).
 *
 * The known templates, their sources and fingerprints: infer/chat_known.c and
 * tests/fixtures/chat/README.md.
 *
 * Errors: every function that can fail returns 0 or -errno and, given a
 * k2_err, one line naming the file or the message and what is wrong; nothing
 * here exits or aborts on bad input. A template object is read-only after it
 * is made and may be used by several threads at once.
 *
 * The implementation, in infer/ (internals shared through chat_impl.h):
 *   chat_known.c     the table of known templates, fingerprints, names
 *   chat_load.c      tokenizer_config.json / chat_template.jinja, the object
 *   chat_render.c    inf_chat_render: checks, output buffer, family dispatch
 *   chat_kimi.c      the Kimi-K2 family
 *   chat_deepseek.c  the DeepSeek-V3 family */
#ifndef INF_CHAT_H
#define INF_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layout.h" /* k2_err */

typedef struct inf_chat_template inf_chat_template;

/* One message of a conversation. role is "system", "user", "assistant" or
 * "tool" (exactly; which ones a template renders is its family's business,
 * see inf_chat_render); content is NUL-terminated text, passed through
 * unchanged (not checked for UTF-8, not escaped: special-token strings in it
 * stay what they are). */
typedef struct inf_chat_msg {
	const char *role;
	const char *content;
} inf_chat_msg;

/* Reads the chat template of tokenizer_config_path: its "chat_template"
 * member, either a string or a list of {"name", "template"} objects (the one
 * named "default" is taken); when the member is absent, chat_template.jinja
 * in the same folder (how transformers >= 4.43 saves it). Recognises the text
 * by its fingerprint and returns 0 with *out (owned by the caller, freed with
 * inf_chat_template_free). The bos_token of tokenizer_config.json (a string
 * or an AddedToken object), when present, is what a template that writes
 * bos_token writes.
 * Errors, each naming the file: -ENOENT (file missing, no chat template in
 * it, no "default" in the list form), -EINVAL (not JSON, not an object, a
 * member of the wrong type), -EFBIG (over 64 MiB), -ENOTSUP (a template that
 * is not known: the message gives its fingerprint and the known names),
 * -ENOMEM. */
int inf_chat_template_load(const char *tokenizer_config_path, inf_chat_template **out,
			   k2_err *err);

/* The known template called name (inf_chat_template_name's spelling), for a
 * model whose template was modified but still renders like that one. Its
 * bos_token is the one the known template's model uses. Returns 0 with *out,
 * -ENOENT for an unknown name (the message lists the known ones), or
 * -ENOMEM. */
int inf_chat_template_by_name(const char *name, inf_chat_template **out, k2_err *err);

void inf_chat_template_free(inf_chat_template *t);

/* The known template's name ("kimi-k2-instruct", "deepseek-v3", ...), owned
 * by the library. */
const char *inf_chat_template_name(const inf_chat_template *t);

/* The text that ends an assistant turn in this format ("<|im_end|>",
 * "<｜end▁of▁sentence｜>"): generation stops at its token. Owned by the
 * library. */
const char *inf_chat_template_end_of_turn(const inf_chat_template *t);

/* The i-th known template's name, i from 0; NULL past the last. */
const char *inf_chat_known_name(size_t i);

/* The fingerprint known templates are recognised by: XXH3-64 (seed 0) of the
 * template text's len bytes, exactly as the file holds them after JSON
 * decoding. */
uint64_t inf_chat_fingerprint(const char *text, size_t len);

/* Renders msgs[0..n) the way the template does, with the assistant-turn
 * opener appended when add_generation_prompt. n may be 0. On success returns
 * 0 and *out, a malloc'd NUL-terminated string (free() it) of *len bytes (the
 * NUL not counted). Returns -EINVAL, naming the message's index and role,
 * for a NULL role or content or a role the template does not render (a role
 * outside the four above, or "tool" where the template needs more than the
 * plain subset carries: Kimi-K2-Thinking's tool turns need a tool_call_id);
 * -ENOMEM. */
int inf_chat_render(const inf_chat_template *t, const inf_chat_msg *msgs, size_t n,
		    bool add_generation_prompt, char **out, size_t *len, k2_err *err);

#endif
