/* trace_read.c — the routing trace reader (trace.h, docs/trace.md): the
 * header, the token lines checked against it, and the end line, each parsed
 * with jansson. Nothing is trusted: every count, id and step is checked, and
 * the first problem ends the read with "PATH:LINE: what was expected". */
#include "trace.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Readers' limits: ids fit the uint16_t expert table. */
#define TRACE_MAX_EXPERTS 65535u
#define TRACE_MAX_LAYERS 4096u

struct reader {
	const char *path;
	uint64_t line;
	k2_err *err;
	k2tr_trace *t;
	uint32_t cap;
	int32_t *moe_index;       /* [n_layers] index among MoE layers, -1 dense */
	uint8_t *seen;            /* [n_moe] a layer met in the object being parsed */
};

#define BAD(r, ...) bad_line(r, __VA_ARGS__)

static int bad_line(struct reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad_line(struct reader *r, const char *fmt, ...)
{
	char what[384];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	return k2_err_set(r->err, -EINVAL, "%s:%llu: %s", r->path, (unsigned long long)r->line,
			  what);
}

/* An integer member within [lo, hi] into *v. */
static int get_int(struct reader *r, json_t *o, const char *what, const char *key, int64_t lo,
		   int64_t hi, int64_t *v)
{
	json_t *x = json_object_get(o, key);
	if (!json_is_integer(x))
		return BAD(r, "%s: no integer \"%s\"", what, key);
	*v = json_integer_value(x);
	if (*v < lo || *v > hi)
		return BAD(r, "%s: \"%s\" is %lld, not in [%lld, %lld]", what, key, (long long)*v,
			   (long long)lo, (long long)hi);
	return 0;
}

static void get_str(json_t *o, const char *key, char *buf, size_t n)
{
	const char *s = json_string_value(json_object_get(o, key));
	snprintf(buf, n, "%s", s ? s : "");
}

static int parse_header(struct reader *r, json_t *o)
{
	k2tr_header *h = &r->t->h;
	json_t *v = json_object_get(o, "k2trace");
	if (!json_is_integer(v))
		return BAD(r, "not a trace header ({\"k2trace\":1,…}): a trace from an infer older "
			   "than the trace format of docs/trace.md has none");
	if (json_integer_value(v) != 1)
		return BAD(r, "trace format %lld; this reader knows format 1",
			   (long long)json_integer_value(v));
	json_t *m = json_object_get(o, "model"), *e = json_object_get(o, "engine");
	if (!json_is_object(m) || !json_is_object(e))
		return BAD(r, "the header has no \"model\" or \"engine\" object");
	int64_t x;
	int rc;
	if ((rc = get_int(r, m, "model", "num_hidden_layers", 1, TRACE_MAX_LAYERS, &x)) < 0)
		return rc;
	h->n_layers = (uint32_t)x;
	if ((rc = get_int(r, m, "model", "n_routed_experts", 1, TRACE_MAX_EXPERTS, &x)) < 0)
		return rc;
	h->n_experts = (uint32_t)x;
	if ((rc = get_int(r, m, "model", "num_experts_per_tok", 1, h->n_experts, &x)) < 0)
		return rc;
	h->top_k = (uint32_t)x;
	if ((rc = get_int(r, m, "model", "expert_image_bytes", 0, INT64_MAX, &x)) < 0)
		return rc;
	h->image_bytes = (uint64_t)x;
	json_t *ml = json_object_get(m, "moe_layers");
	if (!json_is_array(ml) || json_array_size(ml) == 0 || json_array_size(ml) > h->n_layers)
		return BAD(r, "model: \"moe_layers\" is not a list of 1 to %u layers", h->n_layers);
	h->n_moe = (uint32_t)json_array_size(ml);
	h->moe_layers = malloc(sizeof(uint32_t) * h->n_moe);
	r->moe_index = malloc(sizeof(int32_t) * h->n_layers);
	r->seen = malloc(h->n_moe);
	if (!h->moe_layers || !r->moe_index || !r->seen)
		return k2_err_set(r->err, -ENOMEM, "out of memory");
	for (uint32_t l = 0; l < h->n_layers; l++)
		r->moe_index[l] = -1;
	for (uint32_t i = 0; i < h->n_moe; i++) {
		json_t *l = json_array_get(ml, i);
		int64_t lv = json_is_integer(l) ? json_integer_value(l) : -1;
		if (lv < 0 || lv >= h->n_layers || (i && lv <= h->moe_layers[i - 1]))
			return BAD(r, "model: \"moe_layers\" entry %u is not a layer below %u, "
				   "ascending", i, h->n_layers);
		h->moe_layers[i] = (uint32_t)lv;
		r->moe_index[lv] = (int32_t)i;
	}
	get_str(e, "backend", h->backend, sizeof(h->backend));
	get_str(e, "compute_tier", h->compute_tier, sizeof(h->compute_tier));
	get_str(e, "policy", h->policy, sizeof(h->policy));
	get_str(e, "prefetch", h->prefetch, sizeof(h->prefetch));
	if ((rc = get_int(r, e, "engine", "expert_cache", 0, UINT32_MAX, &x)) < 0)
		return rc;
	h->expert_cache = (uint32_t)x;
	if ((rc = get_int(r, e, "engine", "batch", 1, UINT32_MAX, &x)) < 0)
		return rc;
	h->batch = (uint32_t)x;
	h->n_seqs = 1;
	if (json_object_get(e, "n_seqs") &&
	    (rc = get_int(r, e, "engine", "n_seqs", 1, UINT32_MAX, &x)) == 0)
		h->n_seqs = (uint32_t)x;
	else if (json_object_get(e, "n_seqs"))
		return rc;
	h->cpu_experts = json_is_true(json_object_get(e, "cpu_experts"));
	return 0;
}

static int grow(struct reader *r)
{
	k2tr_trace *t = r->t;
	const k2tr_header *h = &t->h;
	if (t->n_tok < r->cap)
		return 0;
	uint32_t cap = r->cap ? r->cap * 2 : 256;
	const size_t per = (size_t)h->n_moe * h->top_k;
	uint32_t *pos = realloc(t->pos, sizeof(uint32_t) * cap);
	if (pos)
		t->pos = pos;
	uint32_t *step = realloc(t->step, sizeof(uint32_t) * cap);
	if (step)
		t->step = step;
	int32_t *tok = realloc(t->token, sizeof(int32_t) * cap);
	if (tok)
		t->token = tok;
	uint16_t *ex = realloc(t->experts, sizeof(uint16_t) * per * cap);
	if (ex)
		t->experts = ex;
	float *w = realloc(t->weights, sizeof(float) * per * cap);
	if (w)
		t->weights = w;
	if (!pos || !step || !tok || !ex || !w)
		return k2_err_set(r->err, -ENOMEM, "%s: out of memory at %u tokens", r->path, cap);
	r->cap = cap;
	return 0;
}

/* One layer member of "experts" (weights NULL) or "weights" into token t. */
static int parse_layer(struct reader *r, const char *key, json_t *arr, int weights)
{
	k2tr_trace *t = r->t;
	const k2tr_header *h = &t->h;
	char *end;
	errno = 0;
	long l = strtol(key, &end, 10);
	const char *what = weights ? "weights" : "experts";
	if (end == key || *end || errno || l < 0 || l >= (long)h->n_layers || r->moe_index[l] < 0)
		return BAD(r, "%s: \"%s\" is not a MoE layer of the header (moe_layers: %u of %u "
			   "layers, first %u)", what, key, h->n_moe, h->n_layers, h->moe_layers[0]);
	const uint32_t mi = (uint32_t)r->moe_index[l];
	if (r->seen[mi])
		return BAD(r, "%s: layer %ld twice", what, l);
	r->seen[mi] = 1;
	if (!json_is_array(arr) || json_array_size(arr) != h->top_k)
		return BAD(r, "%s: layer %ld has %zu entries; the header says num_experts_per_tok %u",
			   what, l, json_is_array(arr) ? json_array_size(arr) : 0, h->top_k);
	const size_t at = ((size_t)t->n_tok * h->n_moe + mi) * h->top_k;
	for (uint32_t j = 0; j < h->top_k; j++) {
		json_t *v = json_array_get(arr, j);
		if (weights) {
			if (json_is_null(v))
				t->weights[at + j] = NAN;
			else if (json_is_number(v))
				t->weights[at + j] = (float)json_number_value(v);
			else
				return BAD(r, "weights: layer %ld entry %u is not a number", l, j);
			continue;
		}
		int64_t x = json_is_integer(v) ? json_integer_value(v) : -1;
		if (x < 0 || x >= h->n_experts)
			return BAD(r, "experts: layer %ld entry %u is not an expert id below "
				   "n_routed_experts %u", l, j, h->n_experts);
		for (uint32_t i = 0; i < j; i++)
			if (t->experts[at + i] == x)
				return BAD(r, "experts: layer %ld chooses expert %lld twice", l,
					   (long long)x);
		t->experts[at + j] = (uint16_t)x;
	}
	return 0;
}

/* An object holding every MoE layer once. */
static int parse_layers(struct reader *r, json_t *o, int weights)
{
	const k2tr_header *h = &r->t->h;
	const char *key;
	json_t *arr;
	int rc;
	if (!json_is_object(o))
		return BAD(r, "no \"%s\" object", weights ? "weights" : "experts");
	memset(r->seen, 0, h->n_moe);
	json_object_foreach(o, key, arr)
		if ((rc = parse_layer(r, key, arr, weights)) < 0)
			return rc;
	for (uint32_t i = 0; i < h->n_moe; i++)
		if (!r->seen[i])
			return BAD(r, "%s: MoE layer %u of the header is missing",
				   weights ? "weights" : "experts", h->moe_layers[i]);
	return 0;
}

static int parse_token(struct reader *r, json_t *o)
{
	k2tr_trace *t = r->t;
	int64_t pos, tok, step;
	int rc;
	if ((rc = grow(r)) < 0 || (rc = get_int(r, o, "token line", "pos", 0, UINT32_MAX, &pos)) < 0 ||
	    (rc = get_int(r, o, "token line", "token", 0, INT32_MAX, &tok)) < 0 ||
	    (rc = get_int(r, o, "token line", "step", 0, UINT32_MAX, &step)) < 0)
		return rc;
	const uint64_t want = t->n_tok ? t->step[t->n_tok - 1] : 0;
	if ((uint64_t)step != want && ((uint64_t)step != want + 1 || !t->n_tok))
		return BAD(r, "step %lld %s step %llu: steps count up by one from 0", (long long)step,
			   t->n_tok ? "after" : "first, not", (unsigned long long)want);
	if ((rc = parse_layers(r, json_object_get(o, "experts"), 0)) < 0)
		return rc;
	json_t *w = json_object_get(o, "weights");
	if (w) {
		if ((rc = parse_layers(r, w, 1)) < 0)
			return rc;
	} else {
		const size_t per = (size_t)t->h.n_moe * t->h.top_k;
		for (size_t i = 0; i < per; i++)
			t->weights[(size_t)t->n_tok * per + i] = NAN;
		t->has_weights = 0;
	}
	t->pos[t->n_tok] = (uint32_t)pos;
	t->token[t->n_tok] = (int32_t)tok;
	t->step[t->n_tok] = (uint32_t)step;
	t->n_steps = (uint64_t)step + 1;
	t->n_tok++;
	return 0;
}

static int parse_end(struct reader *r, json_t *end)
{
	const k2tr_trace *t = r->t;
	int64_t tokens, steps;
	int rc;
	if (!json_is_object(end))
		return BAD(r, "\"end\" is not an object");
	if ((rc = get_int(r, end, "end line", "tokens", 0, INT64_MAX, &tokens)) < 0 ||
	    (rc = get_int(r, end, "end line", "steps", 0, INT64_MAX, &steps)) < 0)
		return rc;
	if ((uint64_t)tokens != t->n_tok || (uint64_t)steps != t->n_steps)
		return BAD(r, "the end line counts %lld tokens in %lld steps, the trace has %u in %llu",
			   (long long)tokens, (long long)steps, t->n_tok,
			   (unsigned long long)t->n_steps);
	return 0;
}

int k2tr_read(const char *path, k2tr_trace **out, k2_err *err)
{
	*out = NULL;
	struct reader r = {.path = path, .err = err};
	FILE *f = fopen(path, "r");
	if (!f) {
		int rc = -errno;
		return k2_err_set(err, rc, "%s: %s", path, strerror(errno));
	}
	k2tr_trace *t = r.t = calloc(1, sizeof(*t));
	int rc = 0, ended = 0;
	if (!t || !(t->path = strdup(path))) {
		rc = k2_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	t->has_weights = 1;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	while ((n = getline(&line, &cap, f)) > 0) {
		r.line++;
		if (line[n - 1] != '\n') {
			rc = BAD(&r, "the line is cut short (no newline at the end of the file): the "
				 "trace is truncated");
			break;
		}
		if (ended) {
			rc = BAD(&r, "a line after the end line");
			break;
		}
		json_error_t je;
		json_t *o = json_loadb(line, (size_t)n, 0, &je);
		if (!json_is_object(o)) {
			rc = BAD(&r, "not a JSON object (%s at column %d): the trace is damaged or "
				 "truncated", o ? "another value" : je.text, o ? 1 : je.column);
			json_decref(o);
			break;
		}
		if (r.line == 1)
			rc = parse_header(&r, o);
		else if (json_object_get(o, "end")) {
			rc = parse_end(&r, json_object_get(o, "end"));
			ended = 1;
		} else
			rc = parse_token(&r, o);
		json_decref(o);
		if (rc < 0)
			break;
	}
	if (rc == 0 && ferror(f))
		rc = k2_err_set(err, -EIO, "%s: read error at line %llu", path,
				(unsigned long long)r.line + 1);
	else if (rc == 0 && r.line == 0)
		rc = k2_err_set(err, -EINVAL, "%s: empty: not a trace (infer --trace writes a header "
				"line first)", path);
	else if (rc == 0 && !ended) {
		r.line++;
		rc = BAD(&r, "no end line after %u tokens: the trace is truncated (or the run that "
			 "wrote it failed)", t->n_tok);
	}
	free(line);
out:
	fclose(f);
	free(r.moe_index);
	free(r.seen);
	if (rc < 0) {
		k2tr_free(t);
		return rc;
	}
	if (t->n_tok == 0)
		t->has_weights = 0;
	*out = t;
	return 0;
}

void k2tr_free(k2tr_trace *t)
{
	if (!t)
		return;
	free(t->path);
	free(t->h.moe_layers);
	free(t->pos);
	free(t->step);
	free(t->token);
	free(t->experts);
	free(t->weights);
	free(t);
}
