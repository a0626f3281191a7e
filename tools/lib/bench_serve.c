/* bench_serve.c — `k2bench serve`: what batching concurrent requests buys.
 * k2serve's scheduler (serve/scheduler.h) runs every admitted request in one
 * inf_engine_step, so each weight matrix, and each routed expert that any of
 * them chose, is read once per step for all of them. This measures, on a
 * Kimi-K2-shaped model, the aggregate decode tokens/s with 1, 2, 4 and 8
 * concurrent streams against one stream, and the expert bytes each generated
 * token costs (goal: ≥ 2× one stream's rate at 4 streams).
 *
 * The model is bench_model.c's (a `k2gen --preset k2` checkpoint cut to a few
 * MoE layers, int4, laid out like the mount; shared with `k2bench infer`), or
 * --model. One engine with as many sequences as the most streams asked, and
 * an expert cache (the RAM tier) too small to keep the experts between steps
 * (default: top-k experts, one layer's worth for one token), so every step
 * reads the experts it routes to from the mount; the step's experts are read
 * once whatever the number of sequences that chose them.
 *
 * Per stream count N: one untimed warm-up round, then --runs timed rounds. A
 * round submits N jobs at once (a fixed prompt per stream, distinct between
 * streams, greedy, max_tokens -n, no stop ids), waits until every stream has
 * its first token (so every prompt has been read), snapshots the counters,
 * and waits until all end. The decode phase is that snapshot to the last
 * token: aggregate tok/s = tokens generated in it / its wall time; expert
 * bytes applied per token = srv_sched_stats.expert_bytes_used over it / its
 * tokens; bytes read from the mount per token = the compute tier's
 * bytes_read over it / its tokens. Per-stream tok/s is each job's
 * (completion_tokens - 1) / decode_s, the median of the streams. Medians of
 * the runs are reported. */
#include "bench.h"
#include "cli.h"
#include "infer.h"
#include "scheduler.h"
#include "tokenizer.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>

#define PROG "k2bench serve"
#define MAX_STREAM_COUNTS 16
#define MAX_RUNS 16

static const char usage_text[] =
	"usage: k2bench serve [options]\n"
	"\n"
	"Aggregate decode tokens/s of k2serve's scheduler (serve/scheduler.h: every\n"
	"admitted request in one engine step) with several concurrent streams against\n"
	"one stream, on a Kimi-K2-shaped model on the CPU engine, and the bytes of\n"
	"experts each generated token costs: those the steps applied, and those read\n"
	"from the mount (with a batch, one read of an expert serves every stream that\n"
	"routed to it). Goal: at 4 streams, >= 2 x the aggregate rate of one stream.\n"
	"\n"
	"Per stream count: one untimed warm-up round, then the timed runs; a round\n"
	"submits every stream's job at once and times the decode phase, from the\n"
	"moment every stream has its first token to the last token. The numbers are\n"
	"warm: the model's files are in the page cache and the engine's memory has\n"
	"been touched; the expert cache still misses (see --expert-cache), so experts\n"
	"are read through the file system every step.\n"
	"\n"
	BENCH_MODEL_USAGE
	"  --streams LIST  concurrent streams to measure, comma-separated, each 1-64\n"
	"                  (default 1,2,4,8); the engine holds the largest count\n"
	"  -n, --tokens N  tokens generated per stream (default 64)\n"
	"  --prompt N      prompt tokens per stream (default 32)\n"
	"  --runs N        timed rounds per stream count; medians are reported\n"
	"                  (default 3)\n"
	"  --expert-cache N|all\n"
	"                  the expert cache (RAM tier) in experts (default: top-k, the\n"
	"                  experts of one layer for one token, so that each step reads\n"
	"                  every expert it uses); all: every expert resident after the\n"
	"                  warm-up, nothing read\n"
	"  --tokenizer DIR a tokenizer folder (tokenizer.json or tiktoken.model) for the\n"
	"                  scheduler to turn ids into text, as the server does (default:\n"
	"                  none: ids only)\n"
	"  --threads N     kernel threads (default: online cores)\n"
	"  --json          one JSON object on stdout instead of the table\n"
	"  --help          this text\n"
	"\n"
	"Progress goes to stderr. Exit status 0, 1 when the engine or a job failed,\n"
	"2 for bad options.\n";

struct serve_opts {
	struct bench_model_opts model;
	uint32_t streams[MAX_STREAM_COUNTS];
	uint32_t n_streams;
	long tokens, prompt, runs, threads;
	long cache;                 /* experts; 0: top-k; -1: all */
	const char *tokenizer;
	int json;
};

/* One round's figures. */
struct round {
	double agg_tok_s;           /* decode-phase tokens / its wall time */
	double stream_tok_s;        /* median over the streams */
	double expert_bytes_tok;    /* applied by the steps, per generated token */
	double read_bytes_tok;      /* read from the mount, per generated token */
	double ttft_s;              /* median over the streams */
	double steps;               /* decode steps in the phase */
	double step_s;              /* its wall time per decode step */
};

/* The figures of one stream count: its runs, then their medians. */
struct result {
	uint32_t streams;
	struct round run[MAX_RUNS];
	struct round med;
};

/* Parses "1,2,4,8" into o->streams. 0, or -1 with a message. */
static int parse_streams(const char *s, struct serve_opts *o)
{
	o->n_streams = 0;
	while (*s) {
		char *end;
		errno = 0;
		long v = strtol(s, &end, 10);
		if (end == s || errno || v < 1 || v > 64 || (*end && *end != ',')) {
			fprintf(stderr, PROG ": --streams: '%s': expected numbers 1-64 separated by "
				"commas\n", s);
			return -1;
		}
		if (o->n_streams == MAX_STREAM_COUNTS) {
			fprintf(stderr, PROG ": --streams: at most %d counts\n", MAX_STREAM_COUNTS);
			return -1;
		}
		o->streams[o->n_streams++] = (uint32_t)v;
		s = *end ? end + 1 : end;
	}
	if (!o->n_streams) {
		fprintf(stderr, PROG ": --streams: empty list\n");
		return -1;
	}
	return 0;
}

/* Returns 0 to run, or the exit status (0 after --help, 2 for bad options). */
static int parse_opts(int argc, char **argv, struct serve_opts *o, int *exit_now)
{
	*o = (struct serve_opts){.streams = {1, 2, 4, 8}, .n_streams = 4, .tokens = 64,
				 .prompt = 32, .runs = 3};
	bench_model_opts_default(&o->model);
	*exit_now = 1;
	int bad = 0;
	for (int i = 1; i < argc; i++) {
		const char *v;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			k2cli_usage(stdout, usage_text);
			return 0;
		}
		const int mo = bench_model_opt(PROG, argc, argv, &i, &o->model, &bad);
		if (mo < 0)
			return 2;
		if (mo > 0)
			continue;
#define OPT(name) ((v = k2cli_opt_value(PROG, argc, argv, &i, name, &bad)) != NULL)
		if (OPT("--streams")) {
			if (parse_streams(v, o) < 0)
				return 2;
		} else if (OPT("--tokens") || OPT("-n")) {
			if (k2cli_parse_long(PROG, "--tokens", v, 2, 4096, &o->tokens) < 0)
				return 2;
		} else if (OPT("--prompt")) {
			if (k2cli_parse_long(PROG, "--prompt", v, 1, 4096, &o->prompt) < 0)
				return 2;
		} else if (OPT("--runs")) {
			if (k2cli_parse_long(PROG, "--runs", v, 1, MAX_RUNS, &o->runs) < 0)
				return 2;
		} else if (OPT("--threads")) {
			if (k2cli_parse_long(PROG, "--threads", v, 1, 256, &o->threads) < 0)
				return 2;
		} else if (OPT("--expert-cache")) {
			if (strcmp(v, "all") == 0)
				o->cache = -1;
			else if (k2cli_parse_long(PROG, "--expert-cache", v, 1, 1L << 24, &o->cache) < 0)
				return 2;
		} else if (OPT("--tokenizer")) {
			o->tokenizer = v;
		} else if (strcmp(argv[i], "--json") == 0) {
			o->json = 1;
		} else {
			if (!bad)
				fprintf(stderr, PROG ": unknown option '%s'\n", argv[i]);
			return 2;
		}
#undef OPT
	}
	*exit_now = 0;
	return 0;
}

/* The prompt of stream s: n ids spread over the vocabulary (below Kimi-K2's
 * special tokens, so that a tokenizer given with --tokenizer prints text),
 * fixed for a given s and distinct between streams. */
static void make_prompt(int32_t *ids, uint32_t n, uint32_t s, uint32_t vocab)
{
	const uint32_t lim = vocab > 163584 ? 163584 : vocab;
	for (uint32_t i = 0; i < n; i++)
		ids[i] = (int32_t)(1 + (7919u * s + 997u * i + 31u * s * i) % (lim - 1));
}

/* Moves a job's new text out (and drops it) and reads its status. 0, or -1
 * with a message when the job failed. */
static int job_look(srv_job *j, int timeout_ms, struct srv_job_status *st)
{
	char *text;
	size_t len;
	if (srv_job_poll(j, timeout_ms, &text, &len, st) < 0) {
		fprintf(stderr, PROG ": out of memory polling a job\n");
		return -1;
	}
	free(text);
	if (srv_job_ended(st->state) && st->state != SRV_JOB_DONE) {
		fprintf(stderr, PROG ": a job ended %s: %s\n",
			st->state == SRV_JOB_FAILED	    ? "failed"
			: st->state == SRV_JOB_SHUTDOWN ? "by a shutdown"
							: "cancelled",
			st->message[0] ? st->message : "(no message)");
		return -1;
	}
	return 0;
}

/* 1 when dir is on a FUSE file system (a k2fs mount). */
static int is_fuse(const char *dir)
{
	struct statfs sf;
	return statfs(dir, &sf) == 0 && sf.f_type == 0x65735546; /* FUSE_SUPER_MAGIC */
}

/* One round of n streams (see the file's comment). 0, or -1 with a message. */
static int run_round(srv_sched *s, const int32_t *prompts,
		     uint32_t n_prompt, uint32_t n, uint32_t max_tokens, struct round *out)
{
	srv_job *job[64] = {0};
	struct srv_job_status st[64];
	double t_submit[64];
	int rc = -1;
	for (uint32_t i = 0; i < n; i++) {
		const struct srv_job_params p = {.prompt = prompts + (size_t)i * n_prompt,
						 .n_prompt = n_prompt, .max_tokens = max_tokens,
						 .top_p = 1, .seed = i};
		t_submit[i] = k2_now();
		int r = srv_job_submit(s, &p, &job[i]);
		if (r < 0) {
			fprintf(stderr, PROG ": submitting stream %u of %u: %s\n", i + 1, n,
				strerror(-r));
			goto out_release;
		}
	}
	/* every stream's first token: every prompt has been read */
	for (uint32_t i = 0; i < n; i++) {
		do {
			if (job_look(job[i], 1, &st[i]) < 0)
				goto out_release;
		} while (st[i].completion_tokens == 0 && !srv_job_ended(st[i].state));
	}
	struct srv_sched_stats a, b;
	srv_sched_stats(s, &a);
	const double t_a = k2_now();
	for (uint32_t i = 0; i < n; i++) {
		do {
			if (job_look(job[i], 100, &st[i]) < 0)
				goto out_release;
		} while (!srv_job_ended(st[i].state));
	}
	srv_sched_stats(s, &b);
	/* the last token, on the scheduler's clock (k2_now, as ours) */
	double t_end = t_a, per[64], ttft[64];
	uint32_t n_per = 0;
	for (uint32_t i = 0; i < n; i++) {
		const double last = t_submit[i] + st[i].ttft_s + st[i].decode_s;
		if (last > t_end)
			t_end = last;
		ttft[i] = st[i].ttft_s;
		if (st[i].completion_tokens > 1 && st[i].decode_s > 0)
			per[n_per++] = (st[i].completion_tokens - 1) / st[i].decode_s;
	}
	const uint64_t tokens = b.generated_tokens - a.generated_tokens;
	if (!tokens || t_end <= t_a) {
		fprintf(stderr, PROG ": no token was generated after the prompts (raise -n)\n");
		goto out_release;
	}
	*out = (struct round){
		.agg_tok_s = tokens / (t_end - t_a),
		.stream_tok_s = bench_median(per, n_per),
		.expert_bytes_tok = (double)(b.expert_bytes_used - a.expert_bytes_used) / tokens,
		.read_bytes_tok = (double)(b.bytes_read - a.bytes_read) / tokens,
		.ttft_s = bench_median(ttft, n),
		.steps = (double)(b.decode_steps - a.decode_steps),
	};
	out->step_s = out->steps > 0 ? (t_end - t_a) / out->steps : 0;
	rc = 0;
out_release:
	for (uint32_t i = 0; i < n; i++)
		srv_job_release(job[i]);
	return rc;
}

/* Medians of r->run[0 … runs) into r->med. */
static void take_medians(struct result *r, uint32_t runs)
{
	double v[MAX_RUNS];
#define MED(field) \
	do { \
		for (uint32_t k = 0; k < runs; k++) \
			v[k] = r->run[k].field; \
		r->med.field = bench_median(v, runs); \
	} while (0)
	MED(agg_tok_s);
	MED(stream_tok_s);
	MED(expert_bytes_tok);
	MED(read_bytes_tok);
	MED(ttft_s);
	MED(steps);
	MED(step_s);
#undef MED
}

/* What the engine was, for the header and the JSON object. */
struct setup {
	const char *model_dir;
	const k2_model_config *c;
	uint32_t moe_layers, cache_experts, max_ctx, n_seqs;
	uint64_t image_bytes;
	int threads;
	const char *tokenizer;
	int fuse;                   /* model_dir is a FUSE mount (k2fs) */
};

/* The median aggregate tok/s measured at `streams`, 0 when not measured. */
static double agg_at(const struct result *res, uint32_t n_res, uint32_t streams)
{
	for (uint32_t i = 0; i < n_res; i++)
		if (res[i].streams == streams)
			return res[i].med.agg_tok_s;
	return 0;
}

/* The aggregate at `streams` over one stream's, 0 when either is missing. */
static double ratio_at(const struct result *res, uint32_t n_res, uint32_t streams)
{
	const double one = agg_at(res, n_res, 1), at = agg_at(res, n_res, streams);
	return one > 0 && at > 0 ? at / one : 0;
}

static void print_table(const struct serve_opts *o, const struct setup *su,
			const struct result *res, uint32_t n_res)
{
	const k2_model_config *c = su->c;
	const double mib = 1048576.0;
	printf("k2bench serve: %s\n", su->model_dir);
	printf("  model     hidden %u, %u layers (%u MoE) x %u experts, top-%u, vocab %u, "
	       "expert image %.1f MiB\n", c->hidden_size, c->num_hidden_layers, su->moe_layers,
	       c->n_routed_experts, c->num_experts_per_tok, c->vocab_size, su->image_bytes / mib);
	printf("  engine    cpu, %d threads; %u sequences of %u positions; expert cache %u "
	       "experts (%s)\n", su->threads, su->n_seqs, su->max_ctx, su->cache_experts,
	       su->cache_experts >= su->moe_layers * c->n_routed_experts
		       ? "every expert: resident after the warm-up"
		       : "too few to keep experts between steps: each step reads those it uses");
	printf("  workload  per stream: a %ld-token prompt (distinct per stream), %ld tokens "
	       "greedy; %s\n", o->prompt, o->tokens,
	       su->tokenizer ? "text through the tokenizer" : "ids only (no tokenizer)");
	printf("  reads     %s\n", su->fuse ? "a k2fs mount"
					       : "a plain directory laid out like the mount: "
						 "reads come from the page cache");
	printf("  method    per stream count: 1 untimed warm-up round, then %ld timed round%s "
	       "(medians); warm: model files in the page cache, memory touched\n", o->runs,
	       o->runs > 1 ? "s" : "");
	printf("  decode    from every stream having its first token to the last token\n");
	printf("\n  %7s %10s %11s %12s %8s %15s %7s %12s %7s %7s\n", "streams", "agg tok/s",
	       "x 1 stream", "tok/s/stream", "ttft", "applied MiB/tok", "images", "read MiB/tok",
	       "images", "ms/step");
	const double one = agg_at(res, n_res, 1);
	for (uint32_t i = 0; i < n_res; i++) {
		const struct round *m = &res[i].med;
		char ratio[32];
		if (one > 0)
			snprintf(ratio, sizeof(ratio), "%.2f", m->agg_tok_s / one);
		else
			snprintf(ratio, sizeof(ratio), "-");
		printf("  %7u %10.2f %11s %12.2f %6.2f s %15.1f %7.1f %12.1f %7.1f %7.0f\n",
		       res[i].streams, m->agg_tok_s, ratio, m->stream_tok_s, m->ttft_s,
		       m->expert_bytes_tok / mib, m->expert_bytes_tok / (double)su->image_bytes,
		       m->read_bytes_tok / mib, m->read_bytes_tok / (double)su->image_bytes, m->step_s * 1e3);
	}
	printf("  (applied: expert images the steps computed with, each once per step "
	       "(srv_sched_stats.expert_bytes_used),\n   per generated token of the decode phase; "
	       "read: bytes the expert cache read from %s (its\n   bytes_read) per generated "
	       "token; images: the same in expert images; tok/s/stream: each stream's\n   own "
	       "rate, the median stream; ms/step: wall time per decode step)\n",
	       su->fuse ? "the k2fs mount" : "the model directory");
	const double r4 = ratio_at(res, n_res, 4);
	if (r4 > 0)
		printf("  aggregate at 4 streams: %.2f\u00d7 one stream (goal \u2265 2\u00d7): %s\n", r4,
		       r4 >= 2 ? "met" : "NOT met");
	else
		printf("  aggregate at 4 streams: not measured (--streams must hold 1 and 4)\n");
}

/* 0, or -1 when memory ran out. */
static int print_json(const struct serve_opts *o, const struct setup *su,
		      const struct result *res, uint32_t n_res)
{
	const k2_model_config *c = su->c;
	json_t *root = json_object(), *rows = json_array();
	if (!root || !rows)
		goto out_nomem;
	json_object_set_new(root, "bench", json_string("serve"));
	json_object_set_new(root, "model", json_string(su->model_dir));
	json_object_set_new(
		root, "config",
		json_pack("{s:i,s:i,s:i,s:i,s:i,s:i,s:I}", "hidden_size", (int)c->hidden_size,
			  "layers", (int)c->num_hidden_layers, "moe_layers", (int)su->moe_layers,
			  "n_routed_experts", (int)c->n_routed_experts, "top_k",
			  (int)c->num_experts_per_tok, "vocab_size", (int)c->vocab_size,
			  "expert_image_bytes", (json_int_t)su->image_bytes));
	json_object_set_new(root, "threads", json_integer(su->threads));
	json_object_set_new(root, "n_seqs", json_integer(su->n_seqs));
	json_object_set_new(root, "max_ctx", json_integer(su->max_ctx));
	json_object_set_new(root, "expert_cache", json_integer(su->cache_experts));
	json_object_set_new(root, "prompt_tokens", json_integer(o->prompt));
	json_object_set_new(root, "max_tokens", json_integer(o->tokens));
	json_object_set_new(root, "runs", json_integer(o->runs));
	json_object_set_new(root, "warm", json_true());
	json_object_set_new(root, "fuse_mount", json_boolean(su->fuse));
	json_object_set_new(root, "tokenizer", su->tokenizer ? json_string(su->tokenizer)
							     : json_null());
	const double one = agg_at(res, n_res, 1);
	for (uint32_t i = 0; i < n_res; i++) {
		const struct round *m = &res[i].med;
		json_t *runs = json_array();
		for (long k = 0; runs && k < o->runs; k++)
			json_array_append_new(runs, json_real(res[i].run[k].agg_tok_s));
		json_array_append_new(
			rows, json_pack("{s:i,s:f,s:o,s:f,s:f,s:f,s:f,s:f,s:f,s:o}", "streams",
					(int)res[i].streams, "agg_tok_s", m->agg_tok_s, "vs_one",
					one > 0 ? json_real(m->agg_tok_s / one) : json_null(),
					"stream_tok_s", m->stream_tok_s, "ttft_s", m->ttft_s,
					"expert_bytes_applied_per_token", m->expert_bytes_tok,
					"bytes_read_per_token", m->read_bytes_tok, "decode_steps",
					m->steps, "step_s", m->step_s, "agg_tok_s_runs", runs ? runs : json_null()));
	}
	json_object_set_new(root, "results", rows);
	rows = NULL;
	const double r4 = ratio_at(res, n_res, 4);
	json_object_set_new(root, "ratio_at_4", r4 > 0 ? json_real(r4) : json_null());
	json_object_set_new(root, "goal_met", r4 > 0 ? json_boolean(r4 >= 2) : json_null());
	char *s = json_dumps(root, JSON_COMPACT);
	if (!s)
		goto out_nomem;
	printf("%s\n", s);
	free(s);
	json_decref(root);
	return 0;
out_nomem:
	json_decref(rows);
	json_decref(root);
	fprintf(stderr, PROG ": out of memory for the JSON object\n");
	return -1;
}

int bench_serve_main(int argc, char **argv)
{
	struct serve_opts o;
	int exit_now, rc = parse_opts(argc, argv, &o, &exit_now);
	if (exit_now)
		return rc;
	uint32_t max_n = 0;
	for (uint32_t i = 0; i < o.n_streams; i++)
		if (o.streams[i] > max_n)
			max_n = o.streams[i];
	if (o.threads)
		kern_set_threads((int)o.threads);

	k2_err err = {{0}};
	char model_dir[4096];
	if (bench_model_dir(PROG, &o.model, model_dir, sizeof(model_dir), &err) < 0) {
		fprintf(stderr, PROG ": %s\n", err.msg);
		return 1;
	}
	fprintf(stderr, PROG ": opening %s\n", model_dir);
	inf_model *m;
	if (inf_model_open(model_dir, &m, &err) < 0) {
		fprintf(stderr, PROG ": %s\n", err.msg);
		return 1;
	}
	const k2_model_config *c = inf_model_config(m);
	uint32_t moe_layers = 0;
	for (uint32_t l = 0; l < c->num_hidden_layers; l++)
		moe_layers += inf_model_is_moe(m, l) != 0;
	const uint32_t all = moe_layers * c->n_routed_experts;
	uint32_t cache = o.cache == 0    ? c->num_experts_per_tok
			 : o.cache < 0   ? all
			 : (uint64_t)o.cache > all ? all : (uint32_t)o.cache;
	if (cache < 1)
		cache = 1;
	inf_engine_opts eo = {.max_ctx = (uint32_t)(o.prompt + o.tokens + 1), .policy = "lru",
			      .cache_experts = cache, .n_seqs = max_n};
	inf_engine *e = NULL;
	inf_tok *tok = NULL;
	srv_sched *s = NULL;
	int32_t *prompts = NULL;
	struct result *res = NULL;
	rc = 1;
	if (inf_engine_create(m, &eo, &e, &err) < 0) {
		fprintf(stderr, PROG ": %s\n", err.msg);
		goto out;
	}
	if (o.tokenizer && inf_tok_open_dir(o.tokenizer, &tok, &err) < 0) {
		fprintf(stderr, PROG ": %s\n", err.msg);
		goto out;
	}
	const int tier = inf_experts_compute_tier(inf_engine_experts(e));
	/* no stop ids: every job runs to max_tokens whatever it samples */
	const struct srv_sched_opts so = {.queue = max_n, .stop_ids = {-1, -1, -1, -1}};
	if (srv_sched_new(e, tok, &so, &s, &err) < 0) {
		fprintf(stderr, PROG ": %s\n", err.msg);
		goto out;
	}
	prompts = malloc(sizeof(int32_t) * (size_t)o.prompt * max_n);
	res = calloc(o.n_streams, sizeof(*res));
	if (!prompts || !res) {
		fprintf(stderr, PROG ": out of memory\n");
		goto out;
	}
	for (uint32_t i = 0; i < max_n; i++)
		make_prompt(prompts + (size_t)i * o.prompt, (uint32_t)o.prompt, i, c->vocab_size);

	const double t_start = k2_now();
	for (uint32_t k = 0; k < o.n_streams; k++) {
		const uint32_t n = o.streams[k];
		struct round warm;
		res[k].streams = n;
		fprintf(stderr, PROG ": %u stream%s: warm-up round\n", n, n > 1 ? "s" : "");
		if (run_round(s, prompts, (uint32_t)o.prompt, n, (uint32_t)o.tokens,
			      &warm) < 0)
			goto out;
		for (long r = 0; r < o.runs; r++) {
			if (run_round(s, prompts, (uint32_t)o.prompt, n,
				      (uint32_t)o.tokens, &res[k].run[r]) < 0)
				goto out;
			fprintf(stderr, PROG ": %u stream%s: run %ld/%ld: %.2f tok/s aggregate, "
				"%.1f MiB of experts read per token (%.0f s so far)\n", n,
				n > 1 ? "s" : "", r + 1, o.runs, res[k].run[r].agg_tok_s,
				res[k].run[r].read_bytes_tok / 1048576.0, k2_now() - t_start);
		}
		take_medians(&res[k], (uint32_t)o.runs);
	}
	inf_tier_stats ts; /* after the runs: slot_bytes is known once a slot is filled */
	inf_engine_tier_stats(e, tier, &ts);
	const struct setup su = {.model_dir = model_dir, .c = c, .moe_layers = moe_layers,
				 .cache_experts = ts.slots, .max_ctx = inf_engine_max_ctx(e),
				 .n_seqs = inf_engine_n_seqs(e), .image_bytes = ts.slot_bytes,
				 .threads = kern_threads(), .tokenizer = o.tokenizer,
				 .fuse = is_fuse(model_dir)};
	if (o.json)
		rc = print_json(&o, &su, res, o.n_streams) < 0 ? 1 : 0;
	else {
		print_table(&o, &su, res, o.n_streams);
		rc = 0;
	}
out:
	free(res);
	free(prompts);
	srv_sched_free(s);
	inf_tok_free(tok);
	inf_engine_destroy(e);
	inf_model_close(m);
	return rc;
}
