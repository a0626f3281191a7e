/* bench_infer.c — `k2bench infer`: how fast the CPU engine decodes on a
 * Kimi-K2-shaped model once its experts are resident, and how that compares
 * with what the memory system can move.
 *
 * The model is a `k2gen --preset k2` checkpoint cut to a few MoE layers
 * (default 2 layers × 64 experts, int4 experts, every layer MoE), imported
 * with the k2pack importer and laid out like the k2fs mount in a work
 * directory (reused by later runs), unless --model names a mount. The run:
 *   1. a memory copy rate: memcpy of a 512 MiB buffer by the same number of
 *      threads the kernels use (best of 3), and by one thread;
 *   2. the engine on the model: every expert loaded into the cache first, a
 *      short prompt, then N decode tokens timed one by one;
 *   3. bytes of weights touched per token = the dense matrices (once each) +
 *      the expert images the routing used, and the rate they were touched at.
 * The goal line compares that rate with the copy rate (goal ≥ 0.5). */
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
	"resident, the bytes of weights each token touches, and a memory copy rate\n"
	"measured in the same run (goal: touched bytes/s >= 0.5 x copy rate).\n"
	"\n"
	"  --model DIR     a mount (or a directory laid out like one) to run on;\n"
	"                  default: generate one into the work directory\n"
	"  --work DIR      work directory (default /tmp/k2bench-infer); the generated\n"
	"                  model is kept there and reused\n"
	"  --layers N      MoE layers of the generated model (default 2)\n"
	"  --experts N     routed experts per layer (default 64)\n"
	"  --vocab N       vocabulary of the generated model (default: Kimi-K2's 163840)\n"
	"  --tokens N      decode tokens timed (default 16)\n"
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

int bench_infer_main(int argc, char **argv)
{
	const char *model = NULL, *work = "/tmp/k2bench-infer";
	long layers = 2, experts = 64, vocab = 163840, tokens = 16, threads = 0;
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

	/* 1. memory copy rate */
	const size_t cbytes = 512ull << 20;
	char *src = malloc(cbytes), *dst = malloc(cbytes);
	if (!src || !dst) {
		fprintf(stderr, "k2bench infer: out of memory for the copy test\n");
		return 1;
	}
	memset(src, 1, cbytes);
	memset(dst, 2, cbytes);
	double copy_n = copy_rate(dst, src, cbytes, nth, 3);
	double copy_1 = copy_rate(dst, src, cbytes, 1, 3);
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
	int32_t prompt[4] = {1, 1000, 2000, 3000};
	for (int i = 0; i < 4; i++)
		prompt[i] %= (int32_t)c->vocab_size;
	inf_engine_opts eo = {.max_ctx = 4 + (uint32_t)tokens + 1, .policy = "lru"};
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
	if (!logits || inf_engine_forward(e, prompt, 4, logits, 0, &err) < 0) {
		fprintf(stderr, "k2bench infer: %s\n", logits ? err.msg : "out of memory");
		return 1;
	}
	uint64_t expert_bytes = 0;
	double t_decode = 0, best = 1e30;
	double *per = malloc(sizeof(double) * (size_t)tokens);
	if (!per) {
		fprintf(stderr, "k2bench infer: out of memory\n");
		return 1;
	}
	for (long s = 0; s < tokens; s++) {
		int32_t id = inf_argmax(logits, c->vocab_size);
		double ts = k2_now();
		if (inf_engine_forward(e, &id, 1, logits, 0, &err) < 0) {
			fprintf(stderr, "k2bench infer: %s\n", err.msg);
			return 1;
		}
		double dt = k2_now() - ts;
		per[s] = dt;
		t_decode += dt;
		if (dt < best)
			best = dt;
		expert_bytes += inf_engine_expert_bytes_used(e);
	}
	inf_tier_stats cs2;
	inf_experts_stats(dir, tier, &cs2);
	const uint64_t dense_tok = inf_model_dense_bytes_per_token(m);
	const double tok_s = tokens / t_decode;
	const double bytes_tok = dense_tok + (double)expert_bytes / tokens;
	const double rate = bytes_tok * tok_s;
	const double med = bench_median(per, (size_t)tokens);
	const double rate_med = bytes_tok / med;
	free(per);

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
	printf("  copy rate        %.2f GB/s (%d threads), %.2f GB/s (1 thread), memcpy of 512 MiB\n",
	       copy_n / 1e9, nth, copy_1 / 1e9);
	printf("  decode           %ld tokens in %.3f s: %.2f tokens/s (median token %.1f ms, "
	       "best %.1f ms); cache misses during decode %" PRIu64 "\n", tokens, t_decode, tok_s,
	       med * 1e3, best * 1e3, cs2.misses - cs.misses);
	printf("  touched / token  %.1f MiB = dense %.1f MiB + experts %.1f MiB\n",
	       bytes_tok / 1048576.0, dense_tok / 1048576.0,
	       (double)expert_bytes / tokens / 1048576.0);
	printf("  touched rate     %.2f GB/s over all tokens = %.2f x the copy rate; %.2f GB/s at "
	       "the median token = %.2f x (goal >= 0.50: %s)\n", rate / 1e9, rate / copy_n,
	       rate_med / 1e9, rate_med / copy_n, rate / copy_n >= 0.5 ? "met" : "NOT met");
	free(logits);
	inf_engine_destroy(e);
	inf_model_close(m);
	return 0;
}
