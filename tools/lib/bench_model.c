/* bench_model.c — the model the engine benchmarks run on (k2bench infer,
 * k2bench serve): a `k2gen --preset k2` checkpoint cut to a few MoE layers
 * (int4 experts, every layer MoE), imported with the k2pack importer and
 * laid out like the k2fs mount in a work directory, with a stamp file naming
 * the shape so that later runs reuse it; or, given --model, a mount or a
 * directory laid out like one. The options that choose it are parsed here
 * too, so every benchmark that runs the engine takes the same ones. */
#include "bench.h"
#include "cli.h"
#include "import.h"
#include "gen.h"
#include "layout.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

void bench_model_opts_default(struct bench_model_opts *o)
{
	*o = (struct bench_model_opts){.work = "/tmp/k2bench-infer", .layers = 2, .experts = 64,
				       .vocab = 163840};
}

int bench_model_opt(const char *prog, int argc, char **argv, int *i, struct bench_model_opts *o,
		    int *bad)
{
	const char *v;
#define OPT(name) ((v = k2cli_opt_value(prog, argc, argv, i, name, bad)) != NULL)
	if (OPT("--model"))
		o->model = v;
	else if (OPT("--work"))
		o->work = v;
	else if (OPT("--layers"))
		return k2cli_parse_long(prog, "--layers", v, 1, 61, &o->layers) < 0 ? -1 : 1;
	else if (OPT("--experts"))
		return k2cli_parse_long(prog, "--experts", v, 8, 384, &o->experts) < 0 ? -1 : 1;
	else if (OPT("--vocab"))
		return k2cli_parse_long(prog, "--vocab", v, 256, 1 << 20, &o->vocab) < 0 ? -1 : 1;
	else
		return 0;
#undef OPT
	return 1;
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
static int prepare_model(const char *prog, const char *work, long layers, long experts,
			 long vocab, char *model_dir, size_t n, k2_err *err)
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
	fprintf(stderr, "%s: generating %s\n", prog, ckpt);
	k2g_stats gs;
	if ((rc = k2g_generate(ckpt, &go, &gs, err)) < 0)
		return rc;
	fprintf(stderr, "%s: packing %s\n", prog, pack);
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
	fprintf(stderr, "%s: laying out %s\n", prog, model_dir);
	if ((rc = extract_pack(pack, model_dir, err)) < 0)
		return rc;
	unlink(pack);
	if ((rc = write_all(stamp, want, strlen(want))) < 0)
		return k2_err_set(err, rc, "%s: %s", stamp, strerror(-rc));
	return 0;
}

int bench_model_dir(const char *prog, const struct bench_model_opts *o, char *model_dir,
		    size_t n, k2_err *err)
{
	if (o->model) {
		if (snprintf(model_dir, n, "%s", o->model) >= (int)n)
			return k2_err_set(err, -ENAMETOOLONG, "%s: path too long", o->model);
		return 0;
	}
	return prepare_model(prog, o->work, o->layers, o->experts, o->vocab, model_dir, n, err);
}
