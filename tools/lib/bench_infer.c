/* bench_infer.c — `k2bench infer`: how fast the CPU engine decodes on a
 * Kimi-K2-shaped model once its experts are resident, on its fast path and on
 * its exact path, against what the memory system can read.
 *
 * The model is a `k2gen --preset k2` checkpoint cut to a few MoE layers
 * (default 2 layers × 64 experts, int4 experts, every layer MoE), imported
 * with the k2pack importer and laid out like the k2fs mount in a work
 * directory (reused by later runs), unless --model names a mount. The run:
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
#include "import.h"
#include "gen.h"
#include "infer.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

static const char usage_text[] =
	"usage: k2bench infer [options]\n"
	"\n"
	"Decode tokens/s of the CPU engine on a Kimi-K2-shaped model with its experts\n"
	"resident, on the fast and the exact path, 32-token prompt processing, the\n"
	"bytes of weights each token reads, and the memory read rate measured in the\n"
	"same run (goal: the fast path reads its bytes at >= 0.85 x the read rate).\n"
	"\n"
	"  --model DIR     a mount (or a directory laid out like one) to run on;\n"
	"                  default: generate one into the work directory\n"
	"  --work DIR      work directory (default /tmp/k2bench-infer); the generated\n"
	"                  model is kept there and reused\n"
	"  --layers N      MoE layers of the generated model (default 2)\n"
	"  --experts N     routed experts per layer (default 64)\n"
	"  --vocab N       vocabulary of the generated model (default: Kimi-K2's 163840)\n"
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

static int write_all(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	size_t done = 0;
	while (done < n) {
		ssize_t w = write(fd, (const char *)p + done, n - done);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			close(fd);
			return -e;
		}
		done += (size_t)w;
	}
	return close(fd) < 0 ? -errno : 0;
}

static int mkdirs(const char *path)
{
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++)
		if (*p == '/') {
			*p = 0;
			if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
				return -errno;
			*p = '/';
		}
	if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Writes every entry of the pack under dir as the mount shows it, with the
 * dense xattrs where the file system takes them. */
static int extract_pack(const char *pack_path, const char *dir, k2_err *err)
{
	k2p_pack *pack;
	int rc = k2p_pack_open(pack_path, &pack, err);
	if (rc < 0)
		return rc;
	size_t cap = 0;
	char *buf = NULL;
	for (size_t i = 0; i < k2p_entry_count(pack) && rc == 0; i++) {
		const k2p_entry *e = k2p_entry_at(pack, i);
		char path[4096], parent[sizeof(path)];
		if (snprintf(path, sizeof(path), "%s/%s", dir, e->path) >= (int)sizeof(path)) {
			rc = k2_err_set(err, -ENAMETOOLONG, "%s/%s: path too long", dir, e->path);
			break;
		}
		memcpy(parent, path, sizeof(parent));
		char *slash = strrchr(parent, '/');
		if (slash) {
			*slash = 0;
			if ((rc = mkdirs(parent)) < 0) {
				k2_err_set(err, rc, "%s: mkdir: %s", parent, strerror(-rc));
				break;
			}
		}
		if (e->raw_bytes > cap) {
			free(buf);
			cap = e->raw_bytes;
			if (!(buf = malloc(cap))) {
				rc = k2_err_set(err, -ENOMEM, "out of memory");
				break;
			}
		}
		long got = k2p_entry_read(pack, e, 0, buf, e->raw_bytes, err);
		if (got < 0) {
			rc = (int)got;
			break;
		}
		if ((rc = write_all(path, buf, (size_t)got)) < 0) {
			k2_err_set(err, rc, "%s: write: %s", path, strerror(-rc));
			break;
		}
		if (e->kind == K2P_KIND_DENSE) {
			char shape[256];
			size_t o = 0;
			shape[0] = 0;
			for (uint32_t d = 0; d < e->ndim && o < sizeof(shape); d++)
				o += (size_t)snprintf(shape + o, sizeof(shape) - o, "%s%" PRIu64,
						      d ? "," : "", e->shape[d]);
			const char *dt = k2_dtype_name(e->dtype);
			(void)setxattr(path, "user.k2.dtype", dt, strlen(dt), 0);
			(void)setxattr(path, "user.k2.shape", shape, strlen(shape), 0);
		}
	}
	free(buf);
	k2p_pack_close(pack);
	return rc;
}

/* Generates, imports and lays out the model (once per work dir and shape). */
static int prepare_model(const char *work, long layers, long experts, long vocab,
			 char *model_dir, size_t n, k2_err *err)
{
	char stamp[4200], want[256], ckpt[4200], pack[4200];
	snprintf(model_dir, n, "%s/model-k2-L%ld-E%ld-V%ld-int4", work, layers, experts, vocab);
	snprintf(stamp, sizeof(stamp), "%s/.complete", model_dir);
	snprintf(want, sizeof(want), "k2gen --preset k2 --layers %ld --experts %ld --format int4 "
		 "vocab %ld\n", layers, experts, vocab);
	char *have = NULL;
	size_t hn = 0;
	if (k2_read_file(stamp, &have, &hn, NULL) == 0 && strcmp(have, want) == 0) {
		free(have);
		return 0;
	}
	free(have);
	int rc = mkdirs(work);
	if (rc < 0)
		return k2_err_set(err, rc, "%s: %s", work, strerror(-rc));
	snprintf(ckpt, sizeof(ckpt), "%s/ckpt", work);
	snprintf(pack, sizeof(pack), "%s/model.k2", work);
	char set_dense[64], set_vocab[64];
	snprintf(set_dense, sizeof(set_dense), "first_k_dense_replace=0");
	snprintf(set_vocab, sizeof(set_vocab), "vocab_size=%ld", vocab);
	const char *sets[2] = {set_dense, set_vocab};
	k2g_opts go;
	k2g_opts_default(&go);
	go.preset = "k2";
	go.layers = layers;
	go.experts = experts;
	go.format = K2_FORMAT_INT4_G32;
	go.sets = sets;
	go.n_sets = 2;
	go.progress = 1;
	fprintf(stderr, "k2bench infer: generating %s\n", ckpt);
	k2g_stats gs;
	if ((rc = k2g_generate(ckpt, &go, &gs, err)) < 0)
		return rc;
	fprintf(stderr, "k2bench infer: packing %s\n", pack);
	k2i_opts io;
	k2i_opts_default(&io);
	io.codec = K2_CODEC_NONE;
	io.progress = 1;
	k2i_stats is;
	if ((rc = k2i_import(ckpt, pack, &io, &is, err)) < 0)
		return rc;
	char cmd[8800];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", ckpt, model_dir);
	if (system(cmd) != 0)
		return k2_err_set(err, -EIO, "%s: cannot remove", ckpt);
	fprintf(stderr, "k2bench infer: laying out %s\n", model_dir);
	if ((rc = extract_pack(pack, model_dir, err)) < 0)
		return rc;
	unlink(pack);
	if ((rc = write_all(stamp, want, strlen(want))) < 0)
		return k2_err_set(err, rc, "%s: %s", stamp, strerror(-rc));
	return 0;
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
	const char *model = NULL, *work = "/tmp/k2bench-infer";
	long layers = 2, experts = 64, vocab = 163840, tokens = 16, threads = 0, runs = 3;
	int bad = 0;
	k2_err err = {{0}};
	for (int i = 1; i < argc; i++) {
		const char *v;
		if (strcmp(argv[i], "--help") == 0) {
			k2cli_usage(stdout, usage_text);
			return 0;
		}
#define OPT(name) ((v = k2cli_opt_value("k2bench infer", argc, argv, &i, name, &bad)) != NULL)
		if (OPT("--model"))
			model = v;
		else if (OPT("--work"))
			work = v;
		else if (OPT("--layers")) {
			if (k2cli_parse_long("k2bench infer", "--layers", v, 1, 61, &layers) < 0)
				return 2;
		} else if (OPT("--experts")) {
			if (k2cli_parse_long("k2bench infer", "--experts", v, 8, 384, &experts) < 0)
				return 2;
		} else if (OPT("--vocab")) {
			if (k2cli_parse_long("k2bench infer", "--vocab", v, 256, 1 << 20, &vocab) < 0)
				return 2;
		} else if (OPT("--tokens")) {
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
	if (model)
		snprintf(model_dir, sizeof(model_dir), "%s", model);
	else if (prepare_model(work, layers, experts, vocab, model_dir, sizeof(model_dir), &err) < 0) {
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
