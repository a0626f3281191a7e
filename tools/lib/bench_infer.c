/* bench_infer.c — `k2bench infer`: how fast the CPU engine decodes on a
 * Kimi-K2-shaped model once its experts are resident, on its fast path and on
 * its exact path, against what the memory system can read.
 *
 * The model is a `k2gen --preset k2` checkpoint cut to a few MoE layers
 * (default 2 layers × 64 experts, int4 experts, every layer MoE), imported
 * with the k2pack importer and laid out like the k2fs mount in a work
 * directory (reused by later runs; tools/lib/bench_model.c), unless --model
 * names a mount. The run:
 *   1. the read rate: kern_read_pass over a 1 GiB buffer (larger than every
 *      cache), allocated as the weights are — the ceiling a decode that reads
 *      every weight once can reach. This machine's memory rate moves with its
 *      neighbours, so it is measured again before every run and the best seen
 *      is the ceiling; a memcpy rate is printed for information;
 *   2. the engine on the model, every expert loaded into its RAM tier first;
 *      per path (fast: activations rounded for the dot-product instructions;
 *      exact: float32 activations) and per run: a 32-token prompt timed (prompt
 *      processing), then N decode tokens timed one by one; medians of the runs;
 *   3. bytes of weights read per token = the dense matrices (once each) + the
 *      expert images the routing used, and the rate they were read at against
 *      the read rate (goal for the fast path ≥ 0.85). */
#include "bench.h"
#include "cli.h"
#include "infer.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
	"usage: k2bench infer [options]\n"
	"\n"
	"Decode tokens/s of the CPU engine on a Kimi-K2-shaped model with its experts\n"
	"resident, on the fast and the exact path, 32-token prompt processing, the\n"
	"bytes of weights each token reads, and the memory read rate measured in the\n"
	"same run (goal: the fast path reads its bytes at >= 0.85 x the read rate).\n"
	"\n"
	BENCH_MODEL_USAGE
	"  --tokens N      decode tokens timed per run (default 16)\n"
	"  --runs N        runs per path; medians are reported (default 3)\n"
	"  --threads N     kernel threads (default: online cores)\n"
	"  --help          this text\n";

struct copy_arg {
	char *dst;
	const char *src;
	size_t n;
};

static void *copy_main(void *p)
{
	struct copy_arg *a = p;
	memcpy(a->dst, a->src, a->n);
	return NULL;
}

/* Read rate in bytes/s of kern_read_pass over n bytes (best of reps). */
static double read_rate(const char *buf, size_t n, int reps, uint64_t *sink)
{
	double best = 0;
	for (int r = 0; r < reps; r++) {
		uint64_t sum;
		double t0 = k2_now();
		if (kern_read_pass(buf, n, &sum) < 0)
			return 0;
		double dt = k2_now() - t0;
		*sink ^= sum;
		if (dt > 0 && n / dt > best)
			best = n / dt;
	}
	return best;
}

/* Copy rate in bytes/s with `threads` threads over n bytes (best of reps). */
static double copy_rate(char *dst, const char *src, size_t n, int threads, int reps)
{
	double best = 0;
	pthread_t th[256];
	struct copy_arg a[256];
	if (threads > 256)
		threads = 256;
	for (int r = 0; r < reps; r++) {
		double t0 = k2_now();
		size_t chunk = (n / (size_t)threads) & ~(size_t)4095;
		for (int i = 0; i < threads; i++) {
			a[i].dst = dst + (size_t)i * chunk;
			a[i].src = src + (size_t)i * chunk;
			a[i].n = i == threads - 1 ? n - (size_t)i * chunk : chunk;
			if (i > 0)
				pthread_create(&th[i], NULL, copy_main, &a[i]);
		}
		copy_main(&a[0]);
		for (int i = 1; i < threads; i++)
			pthread_join(th[i], NULL);
		double dt = k2_now() - t0;
		if (dt > 0 && n / dt > best)
			best = n / dt;
	}
	return best;
}

/* Timings of one path (fast or exact) over the runs. */
struct path_result {
	double pp_tok_s[16], tok_s[16], med_token[16];
	uint64_t expert_bytes;     /* of the decode tokens of the last run */
	uint64_t misses;           /* cache misses during the timed tokens, all runs */
};

/* One run: the prompt (32 tokens) timed, then `tokens` decode tokens. */
static int run_once(inf_engine *e, const k2_model_config *c, long tokens, float *logits,
		    double *per, double *pp_tok_s, double *tok_s, double *med,
		    uint64_t *expert_bytes, k2_err *err)
{
	int32_t prompt[32];
	for (int i = 0; i < 32; i++)
		prompt[i] = (int32_t)((1 + 997u * (uint32_t)i) % c->vocab_size);
	inf_engine_reset(e);
	double t0 = k2_now();
	if (inf_engine_forward(e, prompt, 32, logits, 0, err) < 0)
		return -1;
	*pp_tok_s = 32 / (k2_now() - t0);
	double total = 0;
	*expert_bytes = 0;
	for (long s = 0; s < tokens; s++) {
		int32_t id = inf_argmax(logits, c->vocab_size);
		double ts = k2_now();
		if (inf_engine_forward(e, &id, 1, logits, 0, err) < 0)
			return -1;
		per[s] = k2_now() - ts;
		total += per[s];
		*expert_bytes += inf_engine_expert_bytes_used(e);
	}
	*tok_s = tokens / total;
	*med = bench_median(per, (size_t)tokens);
	return 0;
}

int bench_infer_main(int argc, char **argv)
{
	struct bench_model_opts model;
	bench_model_opts_default(&model);
	long tokens = 16, threads = 0, runs = 3;
	int bad = 0;
	k2_err err = {{0}};
	for (int i = 1; i < argc; i++) {
		const char *v;
		if (strcmp(argv[i], "--help") == 0) {
			k2cli_usage(stdout, usage_text);
			return 0;
		}
#define OPT(name) ((v = k2cli_opt_value("k2bench infer", argc, argv, &i, name, &bad)) != NULL)
		const int mo = bench_model_opt("k2bench infer", argc, argv, &i, &model, &bad);
		if (mo < 0)
			return 2;
		if (mo > 0)
			continue;
		if (OPT("--tokens")) {
			if (k2cli_parse_long("k2bench infer", "--tokens", v, 1, 4096, &tokens) < 0)
				return 2;
		} else if (OPT("--runs")) {
			if (k2cli_parse_long("k2bench infer", "--runs", v, 1, 16, &runs) < 0)
				return 2;
		} else if (OPT("--threads")) {
			if (k2cli_parse_long("k2bench infer", "--threads", v, 1, 256, &threads) < 0)
				return 2;
		} else {
			if (!bad)
				fprintf(stderr, "k2bench infer: unknown option '%s'\n", argv[i]);
			return 2;
		}
#undef OPT
	}
	if (threads)
		kern_set_threads((int)threads);
	const int nth = kern_threads();

	char model_dir[4096];
	if (bench_model_dir("k2bench infer", &model, model_dir, sizeof(model_dir), &err) < 0) {
		fprintf(stderr, "k2bench infer: %s\n", err.msg);
		return 1;
	}

	/* 1. the read rate (the ceiling) and a copy rate */
	const size_t rbytes = 1ull << 30, cbytes = 512ull << 20;
	/* the read buffer is allocated as the weights are (k2_alloc_large) */
	char *rbuf = k2_alloc_large(rbytes), *src = malloc(cbytes), *dst = malloc(cbytes);
	if (!rbuf || !src || !dst) {
		fprintf(stderr, "k2bench infer: out of memory for the memory tests\n");
		return 1;
	}
	memset(rbuf, 3, rbytes);
	memset(src, 1, cbytes);
	memset(dst, 2, cbytes);
	uint64_t sink = 0;
	/* the ceiling: the best read rate seen in the run (this machine's memory
	 * rate moves with its neighbours: it is measured again before every run) */
	double read_n = read_rate(rbuf, rbytes, 5, &sink);
	const double copy_n = copy_rate(dst, src, cbytes, nth, 3);
	free(src);
	free(dst);

	/* 2. the engine */
	inf_model *m;
	double t0 = k2_now();
	if (inf_model_open(model_dir, &m, &err) < 0) {
		fprintf(stderr, "k2bench infer: %s\n", err.msg);
		return 1;
	}
	double t_load = k2_now() - t0;
	const k2_model_config *c = inf_model_config(m);
	inf_engine_opts eo = {.max_ctx = 32 + (uint32_t)tokens + 1, .policy = "lru"};
	for (uint32_t l = 0; l < c->num_hidden_layers; l++)
		eo.cache_experts += inf_model_is_moe(m, l) ? c->n_routed_experts : 0;
	inf_engine *e;
	if (inf_engine_create(m, &eo, &e, &err) < 0) {
		fprintf(stderr, "k2bench infer: %s\n", err.msg);
		inf_model_close(m);
		return 1;
	}
	t0 = k2_now();
	inf_experts *dir = inf_engine_experts(e);
	const int tier = inf_experts_compute_tier(dir);
	for (uint32_t l = 0; l < c->num_hidden_layers; l++)
		for (uint32_t x = 0; inf_model_is_moe(m, l) && x < c->n_routed_experts; x++) {
			const inf_expert *ex;
			if (inf_experts_acquire(dir, tier, l, x, &ex, &err) < 0) {
				fprintf(stderr, "k2bench infer: %s\n", err.msg);
				return 1;
			}
			inf_experts_release(dir, tier, ex);
		}
	double t_experts = k2_now() - t0;
	inf_tier_stats cs;
	inf_experts_stats(dir, tier, &cs);

	float *logits = malloc(sizeof(float) * c->vocab_size);
	double *per = malloc(sizeof(double) * (size_t)tokens);
	if (!logits || !per) {
		fprintf(stderr, "k2bench infer: out of memory\n");
		return 1;
	}
	struct path_result res[2];
	static const char *const path_name[2] = {"fast", "exact"};
	for (int p = 0; p < 2; p++) {
		inf_engine_set_exact(e, p == 1);
		inf_tier_stats before, after;
		inf_experts_stats(dir, tier, &before);
		for (long r = 0; r < runs; r++) {
			const double rr = read_rate(rbuf, rbytes, 2, &sink);
			if (rr > read_n)
				read_n = rr;
			if (run_once(e, c, tokens, logits, per, &res[p].pp_tok_s[r], &res[p].tok_s[r],
				     &res[p].med_token[r], &res[p].expert_bytes, &err) < 0) {
				fprintf(stderr, "k2bench infer: %s\n", err.msg);
				return 1;
			}
		}
		inf_experts_stats(dir, tier, &after);
		res[p].misses = after.misses - before.misses;
	}
	const uint64_t dense_tok = inf_model_dense_bytes_per_token(m);

	printf("k2bench infer: %s\n", model_dir);
	printf("  model            hidden %u, %u layers (%u MoE) x %u experts, top-%u, vocab %u, "
	       "expert image %.1f MiB\n", c->hidden_size, c->num_hidden_layers,
	       (unsigned)(eo.cache_experts / (c->n_routed_experts ? c->n_routed_experts : 1)),
	       c->n_routed_experts, c->num_experts_per_tok, c->vocab_size,
	       cs.slot_bytes / 1048576.0);
	printf("  load             dense %.2f GiB in %.2f s; %" PRIu64 " experts (%.2f GiB) in "
	       "%.2f s (%.2f GB/s through the directory)\n",
	       inf_model_dense_bytes(m) / 1073741824.0, t_load, cs.loads,
	       cs.bytes_read / 1073741824.0, t_experts, cs.bytes_read / t_experts / 1e9);
	printf("  threads          %d\n", nth);
	printf("  read rate        %.2f GB/s (%d threads: kern_read_pass over 1 GiB, the best of "
	       "the passes before every run: the ceiling); memcpy %.2f GB/s (information)\n",
	       read_n / 1e9, nth, copy_n / 1e9);
	printf("  %-6s %12s %14s %14s %14s %12s %10s\n", "path", "prompt tok/s", "decode tok/s",
	       "median token", "read / token", "read rate", "/ ceiling");
	double ratio_fast = 0;
	for (int p = 0; p < 2; p++) {
		const double pp = bench_median(res[p].pp_tok_s, (size_t)runs);
		const double ts = bench_median(res[p].tok_s, (size_t)runs);
		const double med = bench_median(res[p].med_token, (size_t)runs);
		const double bytes_tok = dense_tok + (double)res[p].expert_bytes / tokens;
		const double rate = bytes_tok * ts;
		if (p == 0)
			ratio_fast = rate / read_n;
		printf("  %-6s %12.1f %14.2f %11.1f ms %10.1f MiB %7.2f GB/s %10.2f%s\n",
		       path_name[p], pp, ts, med * 1e3, bytes_tok / 1048576.0, rate / 1e9,
		       rate / read_n, res[p].misses ? " (cache missed!)" : "");
	}
	printf("  (medians of %ld runs: a 32-token prompt, then %ld decode tokens; dense %.1f "
	       "MiB a token, the rest experts)\n", runs, tokens, dense_tok / 1048576.0);
	printf("  goal             fast path read rate >= 0.85 x the read rate: %.2f, %s\n",
	       ratio_fast, ratio_fast >= 0.85 ? "met" : "NOT met");
	(void)sink;
	free(rbuf);
	free(per);
	free(logits);
	inf_engine_destroy(e);
	inf_model_close(m);
	return 0;
}
