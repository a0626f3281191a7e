/* main.c — the infer command line: generates tokens from a model mounted by
 * k2fs (or any directory laid out like the mount), streaming text (or ids) to
 * stdout, with optional routing trace, logits dump and a stats line. */
#include "cli.h"
#include "infer.h"
#include "chat_repl.h"
#include "tokenizer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage_text[] =
	"usage: infer --model DIR (--prompt TEXT | --tokens 1,2,3) [options]\n"
	"       infer --model DIR --chat [options]\n"
	"       infer --model DIR --tokenize TEXT\n"
	"\n"
	"Generates tokens from a DeepSeek-V3 / Kimi-K2 model read through a k2fs mount\n"
	"(config.json, dense/*, experts/LLL/EEE).\n"
	"\n"
	"  --model DIR          the mount (or a directory laid out like it)\n"
	"  --prompt TEXT        prompt text (needs DIR/tokenizer.json or\n"
	"                       DIR/tiktoken.model)\n"
	"  --tokens IDS         prompt as comma-separated token ids\n"
	"  -n N                 tokens to generate (default 32; with --chat, the most an\n"
	"                       answer may have, default 512)\n"
	"  --chat               a conversation: a line of stdin a turn, the answer\n"
	"                       streamed as generated; the model's chat template\n"
	"                       (tokenizer_config.json) renders it, and each turn computes\n"
	"                       only the tokens the KV cache lacks; /stats, /reset, /quit;\n"
	"                       Ctrl-C stops an answer\n"
	"  --ctx N              positions of the KV cache with --chat (default 4096)\n"
	"  --backend NAME       compute backend (the names are listed below; default: the\n"
	"                       GPU backend when a device answers, else cpu); a GPU backend\n"
	"                       keeps dense weights, the KV cache and a device tier of\n"
	"                       expert slots on the GPU\n"
	"  --device N           the backend's device index (default 0)\n"
	"  --cpu-experts        GPU backends: compute a missed expert on the CPU from its RAM\n"
	"                       copy when a cost model of measured upload and CPU rates says\n"
	"                       it ends sooner than uploading it\n"
	"  --cpu-cache SIZE     RAM tier for those copies (default as the cpu backend's)\n"
	"  --threads N          kernel threads (default: online cores)\n"
	"  --expert-cache SIZE  expert cache: bytes (K/M/G) or a count like 4experts\n"
	"                       (default cpu: every expert if they fit in half the RAM,\n"
	"                       else a quarter of the RAM; GPU: half the free GPU memory)\n"
	"  --policy lru|lfu     cache replacement policy (default lru)\n"
	"  --pin PROFILE        keep the experts a profile lists (`k2trace stats\n"
	"                       --profile`: \"layer expert count\" lines) resident in the\n"
	"                       expert cache, and pinned in the mount, for the whole run\n"
	"  --prefetch none|router  router-driven prefetch of the next layer's experts\n"
	"  --io-threads N       background expert readers (cpu: with --prefetch router,\n"
	"                       default 2; GPU: staging readers, default 4)\n"
	"  --batch N            prompt tokens per forward chunk (default 256)\n"
	"  --exact              float32 activations in every product, as the reference\n"
	"                       computes (default: the fast path, which rounds them for the\n"
	"                       processor's dot-product instructions: bf16 weights take\n"
	"                       bf16 activations)\n"
	"  --temperature T      0 = greedy (default); else sampling\n"
	"  --top-p P            nucleus sampling mass (default 1)\n"
	"  --seed S             sampling seed (default 0)\n"
	"  --ignore-eos         do not stop at eos_token_id\n"
	"  --trace FILE         routing trace: a header, one JSON line per token position\n"
	"                       (step, experts and route weights per MoE layer), an end\n"
	"                       line (docs/trace.md; bin/k2trace reads it)\n"
	"  --dump-logits FILE   safetensors: logits [T,V], step_logits [N,V], ids [N]\n"
	"  --stats              one JSON line of statistics on stderr\n"
	"  --tokenize TEXT      print the ids of TEXT, comma-separated, and exit\n"
	"  --help               this text\n"
	"\n"
	"Expert tiers, with --stats: the compute tier's counters in \"expert_cache\",\n"
	"every tier's (device slots, RAM) in \"tiers\".\n";

static void usage(FILE *to)
{
	k2cli_usage(to, usage_text);
	fprintf(to, "Backends in this build: %s.\n", kern_backend_names());
}

struct opts {
	const char *model, *prompt, *tokens, *tokenize, *trace, *dump, *backend;
	const char *cache, *policy, *prefetch, *cpu_cache, *pin;
	long n, threads, io_threads, batch, device, ctx;
	double temperature, top_p;
	uint64_t seed;
	int ignore_eos, stats, cpu_experts, exact, chat, n_given;
};

static int fail(const char *fmt, const char *a)
{
	fprintf(stderr, "infer: ");
	fprintf(stderr, fmt, a);
	fputc('\n', stderr);
	return 1;
}

static int parse_double(const char *opt, const char *s, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || *end || errno || !(v >= lo && v <= hi)) {
		fprintf(stderr, "infer: %s: '%s' is not a number in [%g, %g]\n", opt, s, lo, hi);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	int bad = 0;
	const char *v;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			exit(0);
		}
#define OPT(name) ((v = k2cli_opt_value("infer", argc, argv, &i, name, &bad)) != NULL)
		if (OPT("--model")) o->model = v;
		else if (OPT("--prompt")) o->prompt = v;
		else if (OPT("--tokens")) o->tokens = v;
		else if (OPT("--tokenize")) o->tokenize = v;
		else if (OPT("--trace")) o->trace = v;
		else if (OPT("--dump-logits")) o->dump = v;
		else if (OPT("--backend")) o->backend = v;
		else if (OPT("--expert-cache")) o->cache = v;
		else if (OPT("--policy")) o->policy = v;
		else if (OPT("--pin")) o->pin = v;
		else if (OPT("--prefetch")) o->prefetch = v;
		else if (OPT("--cpu-cache")) o->cpu_cache = v;
		else if (OPT("--device")) {
			if (k2cli_parse_long("infer", "--device", v, 0, 1024, &o->device) < 0)
				return -EINVAL;
		}
		else if (OPT("-n")) {
			if (k2cli_parse_long("infer", "-n", v, 0, 1 << 24, &o->n) < 0)
				return -EINVAL;
			o->n_given = 1;
		} else if (OPT("--ctx")) {
			if (k2cli_parse_long("infer", "--ctx", v, 1, 1 << 24, &o->ctx) < 0)
				return -EINVAL;
		} else if (OPT("--threads")) {
			if (k2cli_parse_long("infer", "--threads", v, 1, 1024, &o->threads) < 0)
				return -EINVAL;
		} else if (OPT("--io-threads")) {
			if (k2cli_parse_long("infer", "--io-threads", v, 1, 64, &o->io_threads) < 0)
				return -EINVAL;
		} else if (OPT("--batch")) {
			if (k2cli_parse_long("infer", "--batch", v, 1, 1 << 16, &o->batch) < 0)
				return -EINVAL;
		} else if (OPT("--temperature")) {
			if (parse_double("--temperature", v, 0, 100, &o->temperature) < 0)
				return -EINVAL;
		} else if (OPT("--top-p")) {
			if (parse_double("--top-p", v, 1e-9, 1, &o->top_p) < 0)
				return -EINVAL;
		} else if (OPT("--seed")) {
			if (k2cli_parse_u64("infer", "--seed", v, &o->seed) < 0)
				return -EINVAL;
		} else if (strcmp(a, "--ignore-eos") == 0)
			o->ignore_eos = 1;
		else if (strcmp(a, "--stats") == 0)
			o->stats = 1;
		else if (strcmp(a, "--cpu-experts") == 0)
			o->cpu_experts = 1;
		else if (strcmp(a, "--exact") == 0)
			o->exact = 1;
		else if (strcmp(a, "--chat") == 0)
			o->chat = 1;
		else if (bad)
			return -EINVAL;
		else {
			fprintf(stderr, "infer: unknown option '%s' (try --help)\n", a);
			return -EINVAL;
		}
#undef OPT
		if (bad)
			return -EINVAL;
	}
	return 0;
}

/* Parses "1,2,3" into a malloc'd array. */
static int parse_ids(const char *s, int32_t **ids, uint32_t *n)
{
	size_t cap = 16, cnt = 0;
	int32_t *a = malloc(sizeof(int32_t) * cap);
	if (!a)
		return -ENOMEM;
	const char *p = s;
	while (*p) {
		char *end;
		errno = 0;
		long long v = strtoll(p, &end, 10);
		if (end == p || errno || v < 0 || v > INT32_MAX) {
			free(a);
			return -EINVAL;
		}
		if (cnt == cap) {
			int32_t *b = realloc(a, sizeof(int32_t) * (cap *= 2));
			if (!b) {
				free(a);
				return -ENOMEM;
			}
			a = b;
		}
		a[cnt++] = (int32_t)v;
		p = end;
		while (*p == ' ')
			p++;
		if (*p == ',')
			p++;
		else if (*p) {
			free(a);
			return -EINVAL;
		}
	}
	if (cnt == 0) {
		free(a);
		return -EINVAL;
	}
	*ids = a;
	*n = (uint32_t)cnt;
	return 0;
}

/* Output of generated tokens: text through the tokenizer, else ids. */
struct out {
	inf_tok_stream *stream;
	int n;
};

static void emit(struct out *o, int32_t id)
{
	if (o->stream) {
		const char *t;
		size_t len;
		if (inf_tok_stream_feed(o->stream, id, &t, &len) == 0 && len)
			fwrite(t, 1, len, stdout);
	} else
		printf("%s%" PRId32, o->n ? "," : "", id);
	o->n++;
	fflush(stdout);
}

static void emit_end(struct out *o)
{
	if (o->stream) {
		const char *t;
		size_t len;
		if (inf_tok_stream_flush(o->stream, &t, &len) == 0 && len)
			fwrite(t, 1, len, stdout);
	}
	putchar('\n');
	fflush(stdout);
}

int main(int argc, char **argv)
{
	struct opts o = {.n = 32, .top_p = 1.0, .policy = "lru", .prefetch = "none", .ctx = 4096};
	k2_err err = {{0}};
	int rc = 1;
	if (parse_args(argc, argv, &o) < 0)
		return 1;
	if (!o.model) {
		usage(stderr);
		return fail("%s", "--model DIR is required");
	}
	inf_engine_opts eo = {0};
	if (inf_engine_opts_cli(&eo, o.backend, o.cache, o.policy, o.prefetch, &err) < 0)
		return fail("%s", err.msg);
	uint64_t cpu_cache_bytes = 0;
	if (o.cpu_cache && (k2_parse_size(o.cpu_cache, &cpu_cache_bytes) < 0 || !cpu_cache_bytes))
		return fail("--cpu-cache: '%s' is not a size (64M, 2G)", o.cpu_cache);

	/* tokenizer (tokenizer.json or tiktoken.model): optional unless --prompt /
	 * --tokenize; -ENOENT means neither file is there */
	inf_tok *tok = NULL;
	int trc = inf_tok_open_dir(o.model, &tok, &err);
	if (trc < 0 && (trc != -ENOENT || o.prompt || o.tokenize || o.chat))
		return fail("%s", err.msg);
	if (o.tokenize) {
		int32_t *ids;
		size_t n;
		if (inf_tok_encode(tok, o.tokenize, strlen(o.tokenize), &ids, &n, &err) < 0) {
			inf_tok_free(tok);
			return fail("%s", err.msg);
		}
		for (size_t i = 0; i < n; i++)
			printf("%s%" PRId32, i ? "," : "", ids[i]);
		putchar('\n');
		free(ids);
		inf_tok_free(tok);
		return 0;
	}
	if (o.chat && (o.prompt || o.tokens)) {
		inf_tok_free(tok);
		return fail("%s", "--chat reads its turns from stdin: no --prompt or --tokens");
	}
	if (o.chat && !o.n_given)
		o.n = 512;
	if (!o.chat && !o.prompt == !o.tokens) {
		inf_tok_free(tok);
		return fail("%s", "give exactly one of --prompt TEXT and --tokens IDS");
	}

	int32_t *prompt = NULL;
	uint32_t T = 0;
	if (o.tokens) {
		if (parse_ids(o.tokens, &prompt, &T) < 0) {
			inf_tok_free(tok);
			return fail("--tokens: '%s' is not a comma-separated list of token ids",
				    o.tokens);
		}
	} else if (o.prompt) {
		size_t n;
		if (inf_tok_encode_prompt(tok, o.prompt, strlen(o.prompt), &prompt, &n, &err) < 0) {
			inf_tok_free(tok);
			return fail("%s", err.msg);
		}
		T = (uint32_t)n;
		if (T == 0) {
			free(prompt);
			inf_tok_free(tok);
			return fail("%s", "--prompt: the prompt encodes to no tokens");
		}
	}

	if (o.threads)
		kern_set_threads((int)o.threads);
	inf_model *m = NULL;
	inf_engine *e = NULL;
	inf_sampler *smp = NULL;
	inf_dump *dump = NULL;
	inf_trace *trace = NULL;
	float *logits = NULL;
	struct out out = {0};
	if (inf_model_open(o.model, &m, &err) < 0) {
		fail("%s", err.msg);
		goto out;
	}
	const k2_model_config *c = inf_model_config(m);
	const uint32_t V = c->vocab_size;
	for (uint32_t i = 0; i < T; i++)
		if (prompt[i] < 0 || (uint32_t)prompt[i] >= V) {
			fprintf(stderr, "infer: prompt token %" PRId32 " at position %u is out of "
				"range (vocab_size %u in %s/config.json)\n", prompt[i], i, V,
				o.model);
			goto out;
		}
	int32_t eos = c->eos_token_id;
	if (eos < 0 && tok)
		eos = inf_tok_eos_id(tok);
	eo.max_ctx = o.chat ? (uint32_t)o.ctx : T + (uint32_t)o.n + 1;
	eo.max_batch = (uint32_t)o.batch;
	eo.io_threads = (int)o.io_threads;
	eo.device = (int)o.device;
	eo.cpu_experts = o.cpu_experts;
	eo.exact = o.exact;
	eo.cpu_cache_bytes = cpu_cache_bytes;
	if (inf_engine_create(m, &eo, &e, &err) < 0) {
		fail("%s", err.msg);
		goto out;
	}
	uint32_t n_pinned = 0;
	if (o.pin && inf_engine_pin_profile(e, o.pin, &n_pinned, &err) < 0) {
		fail("--pin: %s", err.msg);
		goto out;
	}
	if (o.pin)
		fprintf(stderr, "infer: %u experts pinned from %s\n", n_pinned, o.pin);
	if (inf_sampler_create(V, (float)o.temperature, (float)o.top_p, o.seed, &smp) < 0) {
		fail("%s", "bad sampling parameters");
		goto out;
	}
	if (o.dump && inf_dump_create(V, &dump) < 0) {
		fail("%s", "out of memory");
		goto out;
	}
	if (o.trace && inf_trace_open(o.trace, e, &trace, &err) < 0) {
		fail("%s", err.msg);
		goto out;
	}
	if (o.chat) {
		rc = infer_chat(m, e, tok, smp, o.n, eos);
		goto out;
	}
	if (tok && inf_tok_stream_new(tok, INF_TOK_SKIP_SPECIAL, &out.stream) < 0) {
		fail("%s", "out of memory");
		goto out;
	}
	logits = malloc(sizeof(float) * V * (o.dump ? T : 1));
	if (!logits) {
		fail("%s", "out of memory for the logits");
		goto out;
	}

	inf_run_stats st = {.prompt_tokens = T, .backend = eo.backend};
	double t0 = k2_now(), t_first = 0;
	if (inf_engine_forward(e, prompt, T, logits, o.dump != NULL, &err) < 0) {
		fail("%s", err.msg);
		goto out;
	}
	if (trace && inf_trace_forward(trace, e, prompt, T, 0, &err) < 0) {
		fail("%s", err.msg);
		goto out;
	}
	if (dump && inf_dump_prompt(dump, logits, T) < 0) {
		fail("%s", "out of memory");
		goto out;
	}
	const float *last = o.dump ? logits + (size_t)(T - 1) * V : logits;
	for (long step = 0; step < o.n; step++) {
		int32_t id = inf_sampler_next(smp, last);
		if (step == 0) {
			t_first = k2_now();
			st.ttft_s = t_first - t0;
		}
		if (dump && inf_dump_step(dump, last, id) < 0) {
			fail("%s", "out of memory");
			goto out;
		}
		st.generated++;
		emit(&out, id);
		if (id == eos && !o.ignore_eos)
			break;
		if (step + 1 == o.n)
			break;
		uint32_t pos = inf_engine_pos(e);
		if (inf_engine_forward(e, &id, 1, logits, 0, &err) < 0) {
			fail("%s", err.msg);
			goto out;
		}
		st.expert_bytes_touched += inf_engine_expert_bytes_used(e);
		if (trace && inf_trace_forward(trace, e, &id, 1, pos, &err) < 0) {
			fail("%s", err.msg);
			goto out;
		}
		last = logits;
	}
	st.decode_s = st.generated ? k2_now() - t_first : 0;
	emit_end(&out);
	if (dump && inf_dump_write(dump, o.dump, &err) < 0) {
		fail("%s", err.msg);
		goto out;
	}
	if (o.stats) {
		inf_engine_stats(e, &st.cache, &st.prefetch);
		for (int t = 0; t < INF_TIERS; t++) {
			st.has_tier[t] = inf_experts_has_tier(inf_engine_experts(e), t);
			inf_engine_tier_stats(e, t, &st.tiers[t]);
		}
		st.device_backend = st.has_tier[INF_TIER_DEVICE];
		inf_engine_device_stats(e, &st.dev);
		st.dense_bytes_per_token = inf_model_dense_bytes_per_token(m);
		st.dense_bytes = inf_model_dense_bytes(m);
		char *j = inf_stats_json(&st);
		if (j) {
			fprintf(stderr, "%s\n", j);
			free(j);
		}
	}
	rc = 0;
out:
	/* a run that failed leaves its trace without the end line */
	if (inf_trace_close(trace, rc == 0, &err) < 0 && rc == 0) {
		fail("%s", err.msg);
		rc = 1;
	}
	free(logits);
	inf_tok_stream_free(out.stream);
	inf_dump_destroy(dump);
	inf_sampler_destroy(smp);
	inf_engine_destroy(e);
	inf_model_close(m);
	inf_tok_free(tok);
	free(prompt);
	return rc;
}
