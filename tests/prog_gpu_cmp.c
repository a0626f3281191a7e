/* prog_gpu_cmp.c — judges what `infer --dump-logits` wrote by the GPU
 * acceptance measures of issue 5, for tools/gpu-check.sh:
 *
 *   prog_gpu_cmp REF DUMP [--max-rel E] [--min-ids N] [--label NAME]
 *       REF: a fixture's reference.safetensors; DUMP: infer's dump.
 *       Prints the relative error ‖out − ref‖ / ‖ref‖ of the prompt `logits`
 *       against the reference `logits`, of `step_logits` against
 *       `greedy_step_logits` over the leading steps whose ids agree, and how
 *       many leading `ids` equal `greedy_ids`. Exit 0 when the prompt error is
 *       < E (default 2e-2) and at least N (default 8) leading ids agree.
 *   prog_gpu_cmp --identical A B
 *       Exit 0 when `logits`, `step_logits` and `ids` of two dumps are
 *       bit-identical (the 4-expert cache against the full one).
 *
 * Lines starting with "@@ " are summary rows (name | value | goal | verdict),
 * named by --label (default: the dump's path).
 * Exit status 1 when a requirement fails, 2 on bad input (a missing tensor, a
 * shape or dtype other than stated). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layout.h"

struct tens {
	uint32_t dtype, ndim;
	uint64_t shape[K2P_MAX_DIMS];
	uint64_t n;      /* elements */
	void *data;
};

/* Loads tensor `name` of ck; returns 0, -ENOENT when absent, or -errno. */
static int load(k2st_checkpoint *ck, const char *name, struct tens *t, k2_err *err)
{
	memset(t, 0, sizeof(*t));
	const k2st_tensor *st = k2st_find(ck, name);
	if (!st)
		return k2_err_set(err, -ENOENT, "%s: no tensor '%s'", k2st_shard_path(ck, 0), name);
	size_t es = k2_dtype_size(st->dtype);
	if (es == 0 || st->bytes % es)
		return k2_err_set(err, -EINVAL, "%s: tensor '%s': unknown dtype %u",
				  k2st_shard_path(ck, 0), name, st->dtype);
	t->dtype = st->dtype;
	t->ndim = st->ndim;
	memcpy(t->shape, st->shape, sizeof(t->shape));
	t->n = st->bytes / es;
	t->data = malloc(st->bytes ? st->bytes : 1);
	if (!t->data)
		return k2_err_set(err, -ENOMEM, "out of memory for '%s'", name);
	int rc = k2st_read(ck, st, t->data, err);
	if (rc < 0) {
		free(t->data);
		t->data = NULL;
	}
	return rc;
}

static int64_t id_at(const struct tens *t, uint64_t i)
{
	if (t->dtype == K2_DTYPE_I64) {
		int64_t v;
		memcpy(&v, (const uint8_t *)t->data + 8 * i, 8);
		return v;
	}
	int32_t v;
	memcpy(&v, (const uint8_t *)t->data + 4 * i, 4);
	return v;
}

static int is_ids(const struct tens *t)
{
	return t->ndim == 1 && (t->dtype == K2_DTYPE_I64 || t->dtype == K2_DTYPE_I32);
}

static double relerr(const float *out, const float *ref, uint64_t n)
{
	double num = 0, den = 0;
	for (uint64_t i = 0; i < n; i++) {
		if (!isfinite(out[i]))
			return NAN;
		double d = (double)out[i] - ref[i];
		num += d * d;
		den += (double)ref[i] * ref[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

static int open_ck(const char *path, k2st_checkpoint **ck)
{
	k2_err err;
	int rc = k2st_open(path, ck, &err);
	if (rc < 0)
		fprintf(stderr, "prog_gpu_cmp: %s\n", err.msg);
	return rc;
}

static int identical(const char *a_path, const char *b_path)
{
	k2st_checkpoint *a, *b;
	if (open_ck(a_path, &a) < 0)
		return 2;
	if (open_ck(b_path, &b) < 0) {
		k2st_close(a);
		return 2;
	}
	static const char *const names[] = {"logits", "step_logits", "ids"};
	int same = 1, bad = 0;
	for (size_t i = 0; i < 3; i++) {
		struct tens x, y;
		k2_err err;
		if (load(a, names[i], &x, &err) < 0 || load(b, names[i], &y, &err) < 0) {
			fprintf(stderr, "prog_gpu_cmp: %s\n", err.msg);
			bad = 1;
			free(x.data);
			continue;
		}
		int eq = x.dtype == y.dtype && x.n == y.n &&
			 memcmp(x.data, y.data, x.n * k2_dtype_size(x.dtype)) == 0;
		printf("%s: %s\n", names[i], eq ? "identical" : "DIFFERENT");
		same &= eq;
		free(x.data);
		free(y.data);
	}
	k2st_close(a);
	k2st_close(b);
	if (bad)
		return 2;
	return same ? 0 : 1;
}

int main(int argc, char **argv)
{
	double max_rel = 2e-2;
	long min_ids = 8;
	const char *pos[2] = {NULL, NULL}, *label = NULL;
	int npos = 0, ident = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--identical") == 0)
			ident = 1;
		else if (strcmp(argv[i], "--max-rel") == 0 && i + 1 < argc)
			max_rel = strtod(argv[++i], NULL);
		else if (strcmp(argv[i], "--min-ids") == 0 && i + 1 < argc)
			min_ids = strtol(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--label") == 0 && i + 1 < argc)
			label = argv[++i];
		else if (argv[i][0] != '-' && npos < 2)
			pos[npos++] = argv[i];
		else {
			fprintf(stderr, "usage: prog_gpu_cmp REF DUMP [--max-rel E] [--min-ids N] [--label NAME]\n"
					"       prog_gpu_cmp --identical A B\n");
			return 2;
		}
	}
	if (npos != 2) {
		fprintf(stderr, "prog_gpu_cmp: two files needed (see the usage)\n");
		return 2;
	}
	if (ident)
		return identical(pos[0], pos[1]);

	k2st_checkpoint *ref, *dump;
	if (open_ck(pos[0], &ref) < 0)
		return 2;
	if (open_ck(pos[1], &dump) < 0) {
		k2st_close(ref);
		return 2;
	}
	struct tens rl, dl, rs, ds, rid, did;
	k2_err err;
	int rc = 0;
	memset(&rl, 0, sizeof(rl));
	memset(&dl, 0, sizeof(dl));
	memset(&rs, 0, sizeof(rs));
	memset(&ds, 0, sizeof(ds));
	memset(&rid, 0, sizeof(rid));
	memset(&did, 0, sizeof(did));
	if (load(ref, "logits", &rl, &err) < 0 || load(dump, "logits", &dl, &err) < 0 ||
	    load(ref, "greedy_step_logits", &rs, &err) < 0 || load(dump, "step_logits", &ds, &err) < 0 ||
	    load(ref, "greedy_ids", &rid, &err) < 0 || load(dump, "ids", &did, &err) < 0) {
		fprintf(stderr, "prog_gpu_cmp: %s\n", err.msg);
		rc = 2;
		goto out;
	}
	if (rl.dtype != K2_DTYPE_F32 || dl.dtype != K2_DTYPE_F32 || rl.ndim != 2 || dl.ndim != 2 ||
	    rl.shape[0] != dl.shape[0] || rl.shape[1] != dl.shape[1] || rs.dtype != K2_DTYPE_F32 ||
	    ds.dtype != K2_DTYPE_F32 || rs.ndim != 2 || ds.ndim != 2 || rs.shape[1] != ds.shape[1] ||
	    rs.shape[1] != rl.shape[1] || !is_ids(&rid) || !is_ids(&did)) {
		fprintf(stderr, "prog_gpu_cmp: logits [T,V] / step_logits [N,V] float32 and ids [N] "
				"int64 or int32 expected in both files\n");
		rc = 2;
		goto out;
	}
	const double e = relerr(dl.data, rl.data, rl.n);
	uint64_t n_ids = did.n < rid.n ? did.n : rid.n, prefix = 0;
	while (prefix < n_ids && id_at(&did, prefix) == id_at(&rid, prefix))
		prefix++;
	uint64_t steps = prefix + (prefix < n_ids); /* the first differing step is still comparable */
	if (steps > rs.shape[0])
		steps = rs.shape[0];
	if (steps > ds.shape[0])
		steps = ds.shape[0];
	const uint64_t V = rl.shape[1];
	const double se = steps ? relerr(ds.data, rs.data, steps * V) : NAN;
	printf("logits_rel_err %.3e (T %llu, V %llu)\n", e, (unsigned long long)rl.shape[0],
	       (unsigned long long)V);
	printf("greedy_ids_prefix %llu/%llu\n", (unsigned long long)prefix, (unsigned long long)n_ids);
	printf("step_logits_rel_err %.3e (over %llu steps)\n", se, (unsigned long long)steps);
	const int ok_e = e < max_rel, ok_ids = (long)prefix >= min_ids;
	if (!label)
		label = pos[1];
	printf("@@ %s: prompt logits rel err | %.2e | < %.3g | %s\n", label, e, max_rel,
	       ok_e ? "PASS" : "FAIL");
	printf("@@ %s: leading greedy ids equal | %llu/%llu | >= %ld | %s\n", label,
	       (unsigned long long)prefix, (unsigned long long)n_ids, min_ids, ok_ids ? "PASS" : "FAIL");
	rc = ok_e && ok_ids ? 0 : 1;
out:
	free(rl.data);
	free(dl.data);
	free(rs.data);
	free(ds.data);
	free(rid.data);
	free(did.data);
	k2st_close(ref);
	k2st_close(dump);
	return rc;
}
