/* chat_repl.c — `infer --chat` (contract in chat_repl.h): the conversation
 * is a list of messages; each turn renders it through an inf_chat_session,
 * which computes only the tokens the KV cache lacks. A status line on stderr
 * after each answer says how many prompt tokens were reused and computed. */
#include "chat_repl.h"

#include "chat.h"
#include "chat_session.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layout.h"

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
	(void)sig;
	interrupted = 1;
}

struct convo {
	inf_chat_msg *m;
	size_t n, cap;
};

static int convo_add(struct convo *c, const char *role, const char *text, size_t len)
{
	if (c->n == c->cap) {
		size_t cap = c->cap ? 2 * c->cap : 16;
		inf_chat_msg *p = realloc(c->m, sizeof(*p) * cap);
		if (!p)
			return -ENOMEM;
		c->m = p;
		c->cap = cap;
	}
	char *s = malloc(len + 1);
	if (!s)
		return -ENOMEM;
	memcpy(s, text, len);
	s[len] = 0;
	c->m[c->n++] = (inf_chat_msg){.role = role, .content = s};
	return 0;
}

static void convo_clear(struct convo *c)
{
	for (size_t i = 0; i < c->n; i++)
		free((char *)c->m[i].content);
	c->n = 0;
}

static void print_stats(inf_engine *e)
{
	inf_experts *x = inf_engine_experts(e);
	for (int t = 0; t < INF_TIERS; t++) {
		if (!x || !inf_experts_has_tier(x, t))
			continue;
		inf_tier_stats s;
		inf_engine_tier_stats(e, t, &s);
		const uint64_t all = s.hits + s.misses;
		fprintf(stderr, "[%s tier: %" PRIu64 " hits, %" PRIu64 " misses (%.1f%% hit), %" PRIu64
			" loads, %.1f MiB read]\n", inf_tier_name(t), s.hits, s.misses,
			all ? 100.0 * (double)s.hits / (double)all : 0.0, s.loads,
			(double)s.bytes_read / (1 << 20));
	}
	fprintf(stderr, "[context: %u of %u positions]\n", inf_engine_pos(e), inf_engine_max_ctx(e));
}

/* One answer: sample, stream, stop at the end of turn, eos, max_tokens or
 * Ctrl-C; the answer's text (special tokens dropped) appended to c. */
static int answer(inf_chat_session *s, inf_tok *tok, inf_sampler *smp, float *logits,
		  long max_tokens, int32_t eot, int32_t eos, struct convo *c, k2_err *err)
{
	inf_tok_stream *st;
	if (inf_tok_stream_new(tok, INF_TOK_SKIP_SPECIAL, &st) < 0)
		return k2_err_set(err, -ENOMEM, "out of memory");
	char *text = NULL;
	size_t len = 0;
	int rc = 0;
	long n = 0;
	double t0 = k2_now();
	for (; n < max_tokens && !interrupted; n++) {
		int32_t id = inf_sampler_next(smp, logits);
		if (id == eot || id == eos)
			break;
		const char *piece;
		size_t plen;
		if (inf_tok_stream_feed(st, id, &piece, &plen) == 0 && plen) {
			fwrite(piece, 1, plen, stdout);
			fflush(stdout);
			char *p = realloc(text, len + plen);
			if (!p) {
				rc = k2_err_set(err, -ENOMEM, "out of memory");
				break;
			}
			memcpy(p + len, piece, plen);
			text = p;
			len += plen;
		}
		if ((rc = inf_chat_session_feed(s, id, logits, err)) < 0)
			break;
	}
	const char *piece;
	size_t plen;
	if (inf_tok_stream_flush(st, &piece, &plen) == 0 && plen)
		fwrite(piece, 1, plen, stdout);
	putchar('\n');
	fflush(stdout);
	double dt = k2_now() - t0;
	fprintf(stderr, "[%ld tokens, %.2f tok/s%s]\n", n, dt > 0 ? (double)n / dt : 0.0,
		interrupted ? ", stopped" : "");
	if (rc == 0 && convo_add(c, "assistant", text ? text : "", len) < 0)
		rc = k2_err_set(err, -ENOMEM, "out of memory");
	free(text);
	inf_tok_stream_free(st);
	return rc;
}

int infer_chat(const inf_model *m, inf_engine *e, inf_tok *tok, inf_sampler *smp,
	       long max_tokens, int32_t eos_id)
{
	const char *dir = inf_model_dir(m);
	k2_err err = {0};
	char path[4096];
	inf_chat_template *t = NULL;
	inf_chat_session *s = NULL;
	struct convo c = {0};
	float *logits = NULL;
	char *line = NULL;
	size_t cap = 0;
	int rc = 1;
	snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
	if (inf_chat_template_load(path, &t, &err) < 0) {
		fprintf(stderr, "infer: --chat: %s\n", err.msg);
		return 1;
	}
	const char *eot_s = inf_chat_template_end_of_turn(t);
	const int32_t eot = eot_s ? inf_tok_token_to_id(tok, eot_s, strlen(eot_s)) : -1;
	int32_t bos = -1;
	if (!inf_tok_bos(tok, &bos))
		bos = -1;
	logits = malloc(sizeof(float) * inf_model_config(m)->vocab_size);
	if (!logits || inf_chat_session_new(e, 0, tok, t, bos, &s) < 0) {
		fprintf(stderr, "infer: out of memory\n");
		goto out;
	}
	struct sigaction sa = {.sa_handler = on_sigint, .sa_flags = SA_RESTART};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	fprintf(stderr, "[chat with %s, template %s; /help for commands, Ctrl-C stops an answer, "
		"Ctrl-D ends]\n", dir, inf_chat_template_name(t));
	const int tty = isatty(0);
	for (;;) {
		if (tty)
			fputs("> ", stderr);
		ssize_t n = getline(&line, &cap, stdin);
		if (n < 0)
			break;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = 0;
		if (n == 0)
			continue;
		if (strcmp(line, "/quit") == 0)
			break;
		if (strcmp(line, "/stats") == 0) {
			print_stats(e);
			continue;
		}
		if (strcmp(line, "/reset") == 0) {
			convo_clear(&c);
			fprintf(stderr, "[conversation cleared]\n");
			continue;
		}
		if (line[0] == '/') {
			fprintf(stderr, "[commands: /stats expert tiers and context, /reset a new "
				"conversation, /quit]\n");
			continue;
		}
		if (convo_add(&c, "user", line, (size_t)n) < 0) {
			fprintf(stderr, "infer: out of memory\n");
			goto out;
		}
		uint32_t reused, computed;
		interrupted = 0;
		int trc = inf_chat_session_prompt(s, c.m, c.n, logits, &reused, &computed, &err);
		if (trc == 0) {
			fprintf(stderr, "[prompt: %u tokens reused from the cache, %u computed]\n",
				reused, computed);
			trc = answer(s, tok, smp, logits, max_tokens, eot, eos_id, &c, &err);
		}
		if (trc < 0) { /* the turn is dropped; the conversation goes on */
			fprintf(stderr, "infer: %s\n", err.msg);
			free((char *)c.m[--c.n].content);
		}
	}
	rc = 0;
out:
	free(line);
	convo_clear(&c);
	free(c.m);
	free(logits);
	inf_chat_session_free(s);
	inf_chat_template_free(t);
	return rc;
}
