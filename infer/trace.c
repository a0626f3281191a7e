/* trace.c — the outputs of a run for checking and studying it: the routing
 * trace (infer --trace; docs/trace.md) and the --dump-logits file
 * (safetensors via k2st_writer: logits [T, V] of the prompt pass,
 * step_logits [N, V], ids [N] as I64).
 *
 * The trace is line-oriented JSON: a header {"k2trace":1,"model":{…},
 * "engine":{…}} with what a replay needs (the model's shape, the compute
 * tier's capacity and policy, the chunk size), then per token position
 * {"pos":P,"token":ID,"step":S,"experts":{"L":[e,…],…},"weights":{"L":[w,…],…}}
 * with each MoE layer's experts in top-k order and their route weights, and
 * last {"end":{"tokens":N,"steps":S}}, written only by a run that finished. */
#include "infer_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define INF_TRACE_VERSION 1

struct inf_trace {
	FILE *f;
	char *path;
	uint64_t tokens, steps;
};

/* The header object of engine e. */
static json_t *trace_header(inf_engine *e)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	inf_tier_stats ts = {0};
	if (e->experts)
		inf_experts_stats(e->experts, e->tier, &ts);
	json_t *moe = json_array();
	for (uint32_t l = 0; l < c->num_hidden_layers && moe; l++)
		if (m->layers[l].moe)
			json_array_append_new(moe, json_integer(l));
	const char *policy = e->opts.policy ? e->opts.policy : "lru";
	return json_pack("{s:i, s:{s:I, s:I, s:I, s:o, s:I}, s:{s:s, s:s, s:I, s:s, s:s, s:I, "
			 "s:b, s:I}}",
			 "k2trace", INF_TRACE_VERSION,
			 "model",
			 "num_hidden_layers", (json_int_t)c->num_hidden_layers,
			 "n_routed_experts", (json_int_t)c->n_routed_experts,
			 "num_experts_per_tok", (json_int_t)c->num_experts_per_tok,
			 "moe_layers", moe,
			 "expert_image_bytes", (json_int_t)m->expert_image_bytes,
			 "engine",
			 "backend", e->ops->name,
			 "compute_tier", e->experts ? inf_tier_name(e->tier) : "none",
			 "expert_cache", (json_int_t)ts.slots,
			 "policy", policy,
			 "prefetch", e->opts.prefetch == INF_PREFETCH_ROUTER ? "router" : "none",
			 "batch", (json_int_t)e->max_batch,
			 "cpu_experts", e->opts.cpu_experts != 0,
			 "n_seqs", (json_int_t)e->n_seqs);
}

static int trace_io_error(inf_trace *t, k2_err *err)
{
	return k2_err_set(err, -EIO, "%s: writing the trace failed: %s", t->path, strerror(errno));
}

int inf_trace_open(const char *path, inf_engine *e, inf_trace **out, k2_err *err)
{
	*out = NULL;
	inf_trace *t = calloc(1, sizeof(*t));
	if (!t || !(t->path = strdup(path))) {
		free(t);
		return k2_err_set(err, -ENOMEM, "out of memory");
	}
	if (!(t->f = fopen(path, "w"))) {
		int rc = -errno;
		k2_err_set(err, rc, "%s: %s", path, strerror(errno));
		free(t->path);
		free(t);
		return rc;
	}
	json_t *h = trace_header(e);
	char *txt = h ? json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(h);
	int rc = 0;
	if (!txt)
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory for the trace header", path);
	else if (fprintf(t->f, "%s\n", txt) < 0)
		rc = trace_io_error(t, err);
	free(txt);
	if (rc < 0) {
		inf_trace_close(t, 0, NULL);
		return rc;
	}
	*out = t;
	return 0;
}

/* One layer's member of "experts" or "weights": "L":[…]. */
static void put_layer(FILE *f, int first, uint32_t l, const int32_t *ids, const float *w,
		      uint32_t k)
{
	fprintf(f, "%s\"%u\":[", first ? "" : ",", l);
	for (uint32_t j = 0; j < k; j++) {
		if (ids)
			fprintf(f, "%s%" PRId32, j ? "," : "", ids[j]);
		else if (isfinite(w[j]))
			fprintf(f, "%s%.9g", j ? "," : "", (double)w[j]);
		else
			fprintf(f, "%snull", j ? "," : "");
	}
	fputc(']', f);
}

int inf_trace_forward(inf_trace *t, const inf_engine *e, const int32_t *ids, uint32_t n,
		      uint32_t pos0, k2_err *err)
{
	const inf_model *m = e->m;
	const k2_model_config *c = &m->cfg;
	const uint32_t L = c->num_hidden_layers, k = c->num_experts_per_tok;
	const int32_t *routes = e->routes;
	const float *weights = e->routes_w;
	FILE *f = t->f;
	for (uint32_t t0 = 0; t0 < n; t0 += e->max_batch, t->steps++) {
		const uint32_t end = n - t0 < e->max_batch ? n : t0 + e->max_batch;
		for (uint32_t i = t0; i < end; i++) {
			fprintf(f, "{\"pos\":%u,\"token\":%" PRId32 ",\"step\":%" PRIu64
				",\"experts\":{", pos0 + i, ids[i], t->steps);
			for (int pass = 0; pass < 2; pass++) {
				if (pass)
					fputs("},\"weights\":{", f);
				int first = 1;
				for (uint32_t l = 0; l < L; l++) {
					if (!m->layers[l].moe)
						continue;
					const size_t at = ((size_t)i * L + l) * k;
					put_layer(f, first, l, pass ? NULL : routes + at,
						  weights + at, k);
					first = 0;
				}
			}
			fputs("}}\n", f);
			t->tokens++;
		}
	}
	if (fflush(f) != 0 || ferror(f))
		return trace_io_error(t, err);
	return 0;
}

int inf_trace_close(inf_trace *t, int complete, k2_err *err)
{
	if (!t)
		return 0;
	int rc = 0;
	if (complete && fprintf(t->f, "{\"end\":{\"tokens\":%" PRIu64 ",\"steps\":%" PRIu64
				"}}\n", t->tokens, t->steps) < 0)
		rc = trace_io_error(t, err);
	if (fclose(t->f) != 0 && rc == 0 && complete)
		rc = trace_io_error(t, err);
	free(t->path);
	free(t);
	return rc;
}

struct inf_dump {
	uint32_t vocab;
	float *prompt;      /* [t, V] */
	uint32_t t;
	float *steps;       /* [n, V] */
	int64_t *ids;       /* [n] */
	uint32_t n, cap;
};

int inf_dump_create(uint32_t vocab, inf_dump **out)
{
	inf_dump *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->vocab = vocab;
	*out = d;
	return 0;
}

void inf_dump_destroy(inf_dump *d)
{
	if (!d)
		return;
	free(d->prompt);
	free(d->steps);
	free(d->ids);
	free(d);
}

int inf_dump_prompt(inf_dump *d, const float *logits, uint32_t t)
{
	float *p = malloc(sizeof(float) * (size_t)t * d->vocab);
	if (!p)
		return -ENOMEM;
	memcpy(p, logits, sizeof(float) * (size_t)t * d->vocab);
	free(d->prompt);
	d->prompt = p;
	d->t = t;
	return 0;
}

int inf_dump_step(inf_dump *d, const float *logits, int64_t id)
{
	if (d->n == d->cap) {
		uint32_t cap = d->cap ? d->cap * 2 : 16;
		float *s = realloc(d->steps, sizeof(float) * (size_t)cap * d->vocab);
		if (!s)
			return -ENOMEM;
		d->steps = s;
		int64_t *i = realloc(d->ids, sizeof(int64_t) * cap);
		if (!i)
			return -ENOMEM;
		d->ids = i;
		d->cap = cap;
	}
	memcpy(d->steps + (size_t)d->n * d->vocab, logits, sizeof(float) * d->vocab);
	d->ids[d->n++] = id;
	return 0;
}

int inf_dump_write(const inf_dump *d, const char *path, k2_err *err)
{
	k2st_writer *w;
	int rc;
	uint64_t s_logits[2] = {d->t, d->vocab}, s_steps[2] = {d->n, d->vocab}, s_ids[1] = {d->n};
	if ((rc = k2st_writer_create(path, &w, err)) < 0)
		return rc;
	if ((rc = k2st_writer_declare(w, "logits", K2_DTYPE_F32, 2, s_logits, err)) < 0 ||
	    (rc = k2st_writer_declare(w, "step_logits", K2_DTYPE_F32, 2, s_steps, err)) < 0 ||
	    (rc = k2st_writer_declare(w, "ids", K2_DTYPE_I64, 1, s_ids, err)) < 0 ||
	    (rc = k2st_writer_begin_data(w, err)) < 0 ||
	    (rc = k2st_writer_append(w, d->prompt, sizeof(float) * (size_t)d->t * d->vocab, err)) < 0 ||
	    (rc = k2st_writer_append(w, d->steps, sizeof(float) * (size_t)d->n * d->vocab, err)) < 0 ||
	    (rc = k2st_writer_append(w, d->ids, sizeof(int64_t) * d->n, err)) < 0) {
		k2st_writer_close(w, NULL);
		return rc;
	}
	return k2st_writer_close(w, err);
}
