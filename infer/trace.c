/* trace.c — the outputs of a run for checking it: the routing trace (one JSON
 * line per token position: {"pos":P,"token":ID,"experts":{"L":[e,…],…}} with
 * the experts of each MoE layer in top-k order) and the --dump-logits file
 * (safetensors via k2st_writer: logits [T, V] of the prompt pass,
 * step_logits [N, V], ids [N] as I64). */
#include "infer_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

void inf_trace_write(FILE *f, const inf_model *m, const int32_t *routes, const int32_t *ids,
		     uint32_t n, uint32_t pos0)
{
	const k2_model_config *c = &m->cfg;
	const uint32_t L = c->num_hidden_layers, k = c->num_experts_per_tok;
	for (uint32_t t = 0; t < n; t++) {
		fprintf(f, "{\"pos\":%u,\"token\":%" PRId32 ",\"experts\":{", pos0 + t, ids[t]);
		int first = 1;
		for (uint32_t l = 0; l < L; l++) {
			if (!m->layers[l].moe)
				continue;
			fprintf(f, "%s\"%u\":[", first ? "" : ",", l);
			first = 0;
			for (uint32_t j = 0; j < k; j++)
				fprintf(f, "%s%" PRId32, j ? "," : "",
					routes[((size_t)t * L + l) * k + j]);
			fputc(']', f);
		}
		fputs("}}\n", f);
	}
	fflush(f);
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
