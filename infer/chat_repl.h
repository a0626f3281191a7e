/* chat_repl.h — `infer --chat`: the terminal conversation (chat_repl.c). */
#ifndef INF_CHAT_REPL_H
#define INF_CHAT_REPL_H

#include "infer.h"
#include "tokenizer.h"

/* Reads user turns from stdin, a line each, until end of input or /quit, and
 * streams each answer to stdout as it is generated (at most max_tokens
 * tokens, ending at the template's end of turn or eos_id). Lines starting
 * with '/' are commands (/stats, /reset, /help, /quit). Ctrl-C ends the
 * answer being generated, not the program. The chat template is read from
 * the model directory's tokenizer_config.json. Returns 0, or 1 after printing
 * the error. */
int infer_chat(const inf_model *m, inf_engine *e, inf_tok *tok, inf_sampler *smp,
	       long max_tokens, int32_t eos_id);

#endif
