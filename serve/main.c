/* main.c — k2serve: an OpenAI-compatible HTTP server for a model read through
 * a k2fs mount. Opens the model, its tokenizer and chat template, one engine
 * holding --parallel sequences and the scheduler that batches them, then
 * serves (serve/server.h) until SIGTERM or SIGINT, and exits 0 after the open
 * replies have ended. */
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "chat_session.h"
#include "cli.h"
#include "server.h"

static const char usage_text[] =
	"usage: k2serve --model DIR [--listen HOST:PORT] [options]\n"
	"\n"
	"Serves a DeepSeek-V3 / Kimi-K2 model read through a k2fs mount (or a directory\n"
	"laid out like it) over the OpenAI API:\n"
	"  POST /v1/chat/completions, POST /v1/completions  (\"stream\": true for\n"
	"       server-sent events; max_tokens, temperature, top_p, seed, stop)\n"
	"  GET  /v1/models, /health, /metrics (Prometheus), /k2/experts (the expert\n"
	"       map as JSON), and / (a page: a chat and a live map of the experts)\n"
	"Requests that arrive together decode together, one engine step for all of\n"
	"them, so an expert read once serves every sequence that routed to it.\n"
	"\n"
	"  --model DIR          the mount; needs its tokenizer (tokenizer.json or\n"
	"                       tiktoken.model) and, for chat, tokenizer_config.json's\n"
	"                       chat_template\n"
	"  --listen HOST:PORT   where to listen (default 127.0.0.1:8080; port 0 picks\n"
	"                       a free one; the address is printed when ready)\n"
	"  --name ID            the model id clients send (default: DIR's last name)\n"
	"  --parallel N         requests decoding together (default 4), each with its\n"
	"                       own KV cache of --ctx positions\n"
	"  --queue N            requests that may wait for a free slot (default 16);\n"
	"                       more are answered 429 with Retry-After\n"
	"  --ctx N              positions of each request's KV cache: its prompt and\n"
	"                       answer together (default 4096)\n"
	"  --batch N            tokens one engine step may carry (default 256)\n"
	"  --chat-template NAME render chats as this known template when the model's\n"
	"                       own is not recognised (kimi-k2-instruct, deepseek-v3, ...)\n"
	"  --backend NAME       compute backend (default: the GPU's when one answers)\n"
	"  --device N           the backend's device index (default 0)\n"
	"  --threads N          kernel threads (default: online cores)\n"
	"  --expert-cache SIZE  expert cache: bytes (K/M/G) or a count like 64experts\n"
	"                       (default as infer's)\n"
	"  --policy lru|lfu     cache replacement policy (default lru)\n"
	"  --pin PROFILE        keep the experts a profile lists resident (as infer)\n"
	"  --prefetch none|router  router-driven prefetch of the next layer's experts\n"
	"  --io-threads N       background expert readers (default as infer's)\n"
	"  --exact              float32 activations in every product (slower; what the\n"
	"                       reference computes)\n"
	"  --quiet              no line per request on stderr\n"
	"  --help               this text\n"
	"\n"
	"Stop it with SIGTERM or Ctrl-C: it stops accepting, ends open streams with an\n"
	"error event and [DONE], and exits 0.\n";

struct opts {
	const char *model, *listen, *name, *chat_template, *backend, *cache, *policy, *prefetch, *pin;
	long parallel, queue, ctx, batch, device, threads, io_threads;
	int exact, quiet;
};

static int fail(const char *fmt, const char *what)
{
	fputs("k2serve: ", stderr);
	fprintf(stderr, fmt, what);
	fputc('\n', stderr);
	return 1;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	int bad = 0;
	const char *v;
	const char *pos[1];
	int npos = 0;
	for (int i = 1; i < argc && !bad; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			k2cli_usage(stdout, usage_text);
			fprintf(stdout, "Backends in this build: %s.\n", kern_backend_names());
			exit(0);
		}
#define OPT(name) ((v = k2cli_opt_value("k2serve", argc, argv, &i, name, &bad)) != NULL)
#define LONG(name, lo, hi, dst) \
	(OPT(name) && (bad |= k2cli_parse_long("k2serve", name, v, lo, hi, dst) < 0, 1))
		if (OPT("--model")) o->model = v;
		else if (OPT("--listen")) o->listen = v;
		else if (OPT("--name")) o->name = v;
		else if (OPT("--chat-template")) o->chat_template = v;
		else if (OPT("--backend")) o->backend = v;
		else if (OPT("--expert-cache")) o->cache = v;
		else if (OPT("--policy")) o->policy = v;
		else if (OPT("--prefetch")) o->prefetch = v;
		else if (OPT("--pin")) o->pin = v;
		else if (LONG("--parallel", 1, 256, &o->parallel)) ;
		else if (LONG("--queue", 0, 1 << 20, &o->queue)) ;
		else if (LONG("--ctx", 2, 1 << 24, &o->ctx)) ;
		else if (LONG("--batch", 1, 1 << 16, &o->batch)) ;
		else if (LONG("--device", 0, 1024, &o->device)) ;
		else if (LONG("--threads", 1, 1024, &o->threads)) ;
		else if (LONG("--io-threads", 1, 64, &o->io_threads)) ;
		else if (strcmp(a, "--exact") == 0) o->exact = 1;
		else if (strcmp(a, "--quiet") == 0) o->quiet = 1;
		else k2cli_other_arg("k2serve", a, pos, 0, &npos, &bad);
#undef LONG
#undef OPT
	}
	return bad ? -EINVAL : 0;
}

/* The model's chat format: its own template, or the one --chat-template
 * names. NULL with *why set when there is none (chat requests are then
 * refused, completions still served). */
static inf_chat_template *open_chat(const struct opts *o, char *why, size_t n)
{
	inf_chat_template *t = NULL;
	k2_err err = {{0}};
	char path[4200];
	snprintf(path, sizeof(path), "%s/tokenizer_config.json", o->model);
	int rc = o->chat_template ? inf_chat_template_by_name(o->chat_template, &t, &err)
				  : inf_chat_template_load(path, &t, &err);
	if (rc < 0) {
		snprintf(why, n, "%s", err.msg);
		return NULL;
	}
	return t;
}

int main(int argc, char **argv)
{
	struct opts o = {.listen = "127.0.0.1:8080", .parallel = 4, .queue = 16, .ctx = 4096,
			 .batch = 256};
	if (parse_args(argc, argv, &o) < 0)
		return 2;
	if (!o.model) {
		k2cli_usage(stderr, usage_text);
		return fail("%s", "--model DIR is required");
	}
	k2_err err = {{0}};
	inf_engine_opts eo = {0};
	if (inf_engine_opts_cli(&eo, o.backend, o.cache, o.policy, o.prefetch, &err) < 0)
		return fail("%s", err.msg);
	if (o.threads)
		kern_set_threads((int)o.threads);

	/* signals: blocked in every thread; this one waits for them */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	int rc = 1;
	inf_tok *tok = NULL;
	inf_model *m = NULL;
	inf_engine *e = NULL;
	srv_sched *sched = NULL;
	inf_chat_template *chat = NULL;
	char chat_why[sizeof(((k2_err *)0)->msg) + 1] = "";
	if (inf_tok_open_dir(o.model, &tok, &err) < 0) {
		fail("%s", err.msg);
		goto out;
	}
	chat = open_chat(&o, chat_why, sizeof(chat_why));
	if (chat)
		fprintf(stderr, "k2serve: chat template %s\n", inf_chat_template_name(chat));
	else
		fprintf(stderr, "k2serve: no chat format (%s): /v1/chat/completions is refused, "
				"/v1/completions works\n", chat_why);
	if (inf_model_open(o.model, &m, &err) < 0) {
		fail("%s", err.msg);
		goto out;
	}
	const k2_model_config *c = inf_model_config(m);
	if (inf_tok_vocab_size(tok) > c->vocab_size) {
		fprintf(stderr, "k2serve: the tokenizer has %" PRIu32 " tokens but config.json's "
				"vocab_size is %" PRIu32 ": not this model's tokenizer\n",
			inf_tok_vocab_size(tok), c->vocab_size);
		goto out;
	}
	eo.max_ctx = (uint32_t)o.ctx;
	eo.max_batch = (uint32_t)o.batch;
	eo.device = (int)o.device;
	eo.io_threads = (int)o.io_threads;
	eo.exact = o.exact;
	eo.n_seqs = (uint32_t)o.parallel;
	if (inf_engine_create(m, &eo, &e, &err) < 0) {
		fail("%s", err.msg);
		goto out;
	}
	uint32_t n_pinned = 0;
	if (o.pin && inf_engine_pin_profile(e, o.pin, &n_pinned, &err) < 0) {
		fprintf(stderr, "k2serve: --pin: %s\n", err.msg);
		goto out;
	}
	if (o.pin)
		fprintf(stderr, "k2serve: %u experts pinned from %s\n", n_pinned, o.pin);
	/* generation stops at end of sequence and at the chat format's end of turn */
	struct srv_sched_opts so = {.queue = (uint32_t)o.queue, .stop_ids = {-1, -1, -1, -1}};
	so.stop_ids[0] = c->eos_token_id >= 0 ? c->eos_token_id : inf_tok_eos_id(tok);
	so.stop_ids[1] = inf_tok_eos_id(tok);
	const char *eot = chat ? inf_chat_template_end_of_turn(chat) : NULL;
	if (eot)
		so.stop_ids[2] = inf_tok_token_to_id(tok, eot, strlen(eot));
	if (srv_sched_new(e, tok, &so, &sched, &err) < 0) {
		fail("%s", err.msg);
		goto out;
	}

	char *dir = strdup(o.model), *base = dir ? basename(dir) : NULL;
	struct srv_server s = {
		.sched = sched,
		.tok = tok,
		.chat = chat,
		.chat_missing = chat_why,
		.bos = -1,
		.model = {.id = o.name ? o.name : base && *base && strcmp(base, "/") ? base : "k2",
			  .created = (int64_t)time(NULL),
			  .owned_by = "k2serve",
			  .max_context = (uint32_t)o.ctx},
		.started = k2_now(),
		.verbose = !o.quiet,
	};
	if (!inf_tok_bos(tok, &s.bos))
		s.bos = -1;
	if (srv_start(&s, o.listen, &err) < 0) {
		fail("%s", err.msg);
		free(dir);
		goto out;
	}
	fprintf(stderr, "k2serve: model %s (%s), %ld slots of %ld positions, queue %ld\n",
		s.model.id, o.model, o.parallel, o.ctx, o.queue);
	int sig = 0;
	sigwait(&sigs, &sig);
	fprintf(stderr, "k2serve: %s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
	srv_stop(&s, 5.0);
	struct srv_sched_stats st;
	srv_sched_stats(sched, &st);
	fprintf(stderr, "k2serve: served %" PRIu64 " requests (%" PRIu64 " cancelled, %" PRIu64
			" refused), %" PRIu64 " tokens generated\n",
		st.jobs_done, st.jobs_cancelled, st.jobs_refused, st.generated_tokens);
	free(dir);
	rc = 0;
out:
	srv_sched_free(sched);
	inf_engine_destroy(e);
	inf_model_close(m);
	inf_chat_template_free(chat);
	inf_tok_free(tok);
	return rc;
}
