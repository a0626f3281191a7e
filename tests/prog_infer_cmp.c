/* prog_infer_cmp.c — compares what `infer` wrote against a fixture's
 * reference.safetensors (HF transformers outputs):
 *
 *   prog_infer_cmp REF [--dump FILE] [--trace FILE] [--ref2 REF] [--max-err E]
 *                  [--min-ids N] [--routes]
 *   prog_infer_cmp REF --print NAME      (an integer tensor, comma-separated)
 *
 * --dump FILE (infer --dump-logits): max abs error of `logits` [T,V] against the
 * reference `logits`, how many of `ids` equal `greedy_ids` (prefix agreement
 * and total), and the error of `step_logits` against `greedy_step_logits` over
 * the steps whose prefix agrees. --trace FILE (infer --trace): for every prompt
 * position and MoE layer, whether the experts equal route.layer{L}.gate_out2 as
 * a set. Prints one line per measure. Exit status 0 when every requirement
 * given holds (--max-err on the prompt logits, --min-ids leading ids equal,
 * --routes all sets equal), 1 otherwise, 2 on bad input. */
#include "layout.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tensor {
	uint32_t dtype, ndim;
	uint64_t shape[K2P_MAX_DIMS];
	void *data;
	uint64_t bytes;
};

static int load(k2st_checkpoint *ck, const char *name, struct tensor *t, k2_err *err)
{
	const k2st_tensor *st = k2st_find(ck, name);
	memset(t, 0, sizeof(*t));
	if (!st)
		return k2_err_set(err, -ENOENT, "%s: no tensor '%s'", k2st_shard_path(ck, 0), name);
	t->dtype = st->dtype;
	t->ndim = st->ndim;
	memcpy(t->shape, st->shape, sizeof(t->shape));
	t->bytes = st->bytes;
	t->data = malloc(st->bytes ? st->bytes : 1);
	if (!t->data)
		return -ENOMEM;
	return k2st_read(ck, st, t->data, err);
}

static int64_t get_i64(const struct tensor *t, size_t i)
{
	if (t->dtype == K2_DTYPE_I64)
		return ((const int64_t *)t->data)[i];
	if (t->dtype == K2_DTYPE_I32)
		return ((const int32_t *)t->data)[i];
	return -1;
}

static double max_abs(const float *a, const float *b, size_t n)
{
	double m = 0;
	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - (double)b[i]);
		if (isnan(d))
			return INFINITY;
		if (d > m)
			m = d;
	}
	return m;
}

int main(int argc, char **argv)
{
	const char *ref_path = NULL, *dump_path = NULL, *trace_path = NULL, *print = NULL;
	double max_err = -1;
	long min_ids = -1;
	int want_routes = 0, ok = 1;
	k2_err err = {{0}};
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--dump") == 0 && i + 1 < argc)
			dump_path = argv[++i];
		else if (strcmp(argv[i], "--trace") == 0 && i + 1 < argc)
			trace_path = argv[++i];
		else if (strcmp(argv[i], "--max-err") == 0 && i + 1 < argc)
			max_err = atof(argv[++i]);
		else if (strcmp(argv[i], "--min-ids") == 0 && i + 1 < argc)
			min_ids = atol(argv[++i]);
		else if (strcmp(argv[i], "--print") == 0 && i + 1 < argc)
			print = argv[++i];
		else if (strcmp(argv[i], "--routes") == 0)
			want_routes = 1;
		else if (!ref_path && argv[i][0] != '-')
			ref_path = argv[i];
		else {
			fprintf(stderr, "usage: prog_infer_cmp REF [--dump F] [--trace F] "
				"[--max-err E] [--min-ids N] [--routes]\n");
			return 2;
		}
	}
	if (!ref_path) {
		fprintf(stderr, "prog_infer_cmp: no reference given\n");
		return 2;
	}
	k2st_checkpoint *ref = NULL, *dump = NULL;
	if (k2st_open(ref_path, &ref, &err) < 0) {
		fprintf(stderr, "prog_infer_cmp: %s\n", err.msg);
		return 2;
	}
	struct tensor ids, logits;
	if (print) {
		struct tensor p;
		if (load(ref, print, &p, &err) < 0) {
			fprintf(stderr, "prog_infer_cmp: %s\n", err.msg);
			return 2;
		}
		uint64_t n = p.bytes / (p.dtype == K2_DTYPE_I64 ? 8 : 4);
		for (uint64_t i = 0; i < n; i++)
			printf("%s%lld", i ? "," : "", (long long)get_i64(&p, i));
		printf("\n");
		free(p.data);
		k2st_close(ref);
		return 0;
	}
	if (load(ref, "input_ids", &ids, &err) < 0 || load(ref, "logits", &logits, &err) < 0) {
		fprintf(stderr, "prog_infer_cmp: %s\n", err.msg);
		return 2;
	}
	const uint64_t T = ids.shape[0], V = logits.shape[1];

	if (dump_path) {
		struct tensor dl, ds, di, gi, gs;
		if (k2st_open(dump_path, &dump, &err) < 0 || load(dump, "logits", &dl, &err) < 0 ||
		    load(dump, "step_logits", &ds, &err) < 0 || load(dump, "ids", &di, &err) < 0 ||
		    load(ref, "greedy_ids", &gi, &err) < 0 ||
		    load(ref, "greedy_step_logits", &gs, &err) < 0) {
			fprintf(stderr, "prog_infer_cmp: %s\n", err.msg);
			return 2;
		}
		if (dl.dtype != K2_DTYPE_F32 || dl.ndim != 2 || dl.shape[0] != T ||
		    dl.shape[1] != V || ds.dtype != K2_DTYPE_F32 || ds.ndim != 2 ||
		    ds.shape[1] != V || di.ndim != 1 || di.shape[0] != ds.shape[0]) {
			fprintf(stderr, "prog_infer_cmp: %s: logits/step_logits/ids have the wrong "
				"shapes for T=%llu V=%llu\n", dump_path, (unsigned long long)T,
				(unsigned long long)V);
			return 2;
		}
		double e = max_abs(dl.data, logits.data, T * V);
		printf("logits_max_abs_err %.3g\n", e);
		if (max_err >= 0 && !(e < max_err)) {
			printf("FAIL: prompt logits error %.3g >= %.3g\n", e, max_err);
			ok = 0;
		}
		uint64_t n = di.shape[0] < gi.shape[0] ? di.shape[0] : gi.shape[0];
		uint64_t prefix = 0, same = 0;
		while (prefix < n && get_i64(&di, prefix) == get_i64(&gi, prefix))
			prefix++;
		for (uint64_t i = 0; i < n; i++)
			same += get_i64(&di, i) == get_i64(&gi, i);
		double se = prefix ? max_abs(ds.data, gs.data, (prefix < gs.shape[0] ? prefix : gs.shape[0]) * V) : 0;
		printf("greedy_ids_prefix %llu/%llu\n", (unsigned long long)prefix,
		       (unsigned long long)gi.shape[0]);
		printf("greedy_ids_equal %llu/%llu\n", (unsigned long long)same,
		       (unsigned long long)gi.shape[0]);
		printf("step_logits_max_abs_err %.3g (over %llu agreeing steps)\n", se,
		       (unsigned long long)prefix);
		if (min_ids >= 0 && prefix < (uint64_t)min_ids) {
			printf("FAIL: only %llu leading ids agree, need %ld\n",
			       (unsigned long long)prefix, min_ids);
			ok = 0;
		}
		free(dl.data);
		free(ds.data);
		free(di.data);
		free(gi.data);
		free(gs.data);
	}

	if (trace_path) {
		FILE *f = fopen(trace_path, "r");
		if (!f) {
			fprintf(stderr, "prog_infer_cmp: %s: %s\n", trace_path, strerror(errno));
			return 2;
		}
		uint64_t sets = 0, agree = 0, lines = 0;
		char *line = NULL;
		size_t cap = 0;
		while (getline(&line, &cap, f) > 0) {
			json_error_t je;
			json_t *o = json_loads(line, 0, &je);
			lines++;
			if (!o) {
				fprintf(stderr, "prog_infer_cmp: %s:%llu: %s\n", trace_path,
					(unsigned long long)lines, je.text);
				return 2;
			}
			if (!json_object_get(o, "pos") &&
			    (json_object_get(o, "k2trace") || json_object_get(o, "end"))) {
				json_decref(o); /* the header and end lines (docs/trace.md) */
				continue;
			}
			json_int_t pos = json_integer_value(json_object_get(o, "pos"));
			json_t *ex = json_object_get(o, "experts");
			if (pos < 0 || !json_is_object(ex)) {
				fprintf(stderr, "prog_infer_cmp: %s:%llu: no pos/experts\n",
					trace_path, (unsigned long long)lines);
				return 2;
			}
			if ((uint64_t)pos < T) {
				const char *key;
				json_t *arr;
				json_object_foreach(ex, key, arr) {
					char name[128];
					struct tensor g;
					snprintf(name, sizeof(name), "route.layer%s.gate_out2", key);
					if (load(ref, name, &g, &err) < 0) {
						fprintf(stderr, "prog_infer_cmp: %s\n", err.msg);
						return 2;
					}
					uint64_t k = g.shape[1];
					int same = json_array_size(arr) == k;
					for (uint64_t j = 0; same && j < k; j++) {
						int64_t want = get_i64(&g, (uint64_t)pos * k + j), found = 0;
						for (size_t q = 0; q < k; q++)
							found |= json_integer_value(json_array_get(arr, q)) == want;
						same = (int)found;
					}
					sets++;
					agree += same;
					free(g.data);
				}
			}
			json_decref(o);
		}
		free(line);
		fclose(f);
		printf("routes_equal %llu/%llu\n", (unsigned long long)agree,
		       (unsigned long long)sets);
		if (want_routes && (agree != sets || sets == 0)) {
			printf("FAIL: %llu of %llu expert sets differ from the reference\n",
			       (unsigned long long)(sets - agree), (unsigned long long)sets);
			ok = 0;
		}
	}
	free(ids.data);
	free(logits.data);
	k2st_close(dump);
	k2st_close(ref);
	return ok ? 0 : 1;
}
