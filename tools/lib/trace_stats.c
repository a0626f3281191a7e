/* trace_stats.c — what a routing trace says about the experts (trace.h):
 * per MoE layer, how popular the busiest experts are (share of the
 * selections, entropy against uniform), how much a token reuses the previous
 * token's experts, and which experts are chosen together; and the profile of
 * the hottest experts that k2trace sim --pin reads back. */
#include "trace.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int cmp_u64_desc(const void *a, const void *b)
{
	const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

static int cmp_pair(const void *a, const void *b)
{
	const k2tr_pair *x = a, *y = b;
	if (x->count != y->count)
		return x->count < y->count ? 1 : -1;
	if (x->a != y->a)
		return x->a < y->a ? -1 : 1;
	return x->b < y->b ? -1 : x->b > y->b;
}

/* Index of pair (a < b) in a triangle of E experts. */
static size_t pair_index(uint32_t a, uint32_t b, uint32_t E)
{
	return (size_t)a * E - (size_t)a * (a + 1) / 2 + (b - a - 1);
}

/* The top `want` pairs of one layer's pair counts. */
static int top_pairs(const uint32_t *pc, const uint64_t *cnt, uint32_t E, uint32_t n_tok,
		     uint32_t want, k2tr_layer_stats *ls)
{
	size_t n = 0;
	for (size_t i = 0; i < (size_t)E * (E - 1) / 2; i++)
		n += pc[i] != 0;
	k2tr_pair *all = malloc(sizeof(*all) * (n ? n : 1));
	if (!all)
		return -ENOMEM;
	n = 0;
	for (uint32_t a = 0; a + 1 < E; a++)
		for (uint32_t b = a + 1; b < E; b++) {
			const uint32_t c = pc[pair_index(a, b, E)];
			if (!c)
				continue;
			all[n++] = (k2tr_pair){.a = (uint16_t)a, .b = (uint16_t)b, .count = c,
					       .lift = (double)c * n_tok / ((double)cnt[a] * cnt[b])};
		}
	qsort(all, n, sizeof(*all), cmp_pair);
	ls->n_pairs = (uint32_t)(n < want ? n : want);
	ls->pairs = all;
	return 0;
}

int k2tr_stats_compute(const k2tr_trace *t, uint32_t pairs, k2tr_stats **out, k2_err *err)
{
	const k2tr_header *h = &t->h;
	const uint32_t E = h->n_experts, k = h->top_k, M = h->n_moe;
	*out = NULL;
	k2tr_stats *s = calloc(1, sizeof(*s));
	uint64_t *sorted = malloc(sizeof(uint64_t) * E);
	uint32_t *pc = calloc(E > 1 ? (size_t)E * (E - 1) / 2 : 1, sizeof(uint32_t));
	uint8_t *prev = malloc(E);
	if (!s || !sorted || !pc || !prev || !(s->layers = calloc(M, sizeof(*s->layers))) ||
	    !(s->counts = calloc((size_t)M * E, sizeof(uint64_t)))) {
		free(sorted);
		free(pc);
		free(prev);
		k2tr_stats_free(s);
		return k2_err_set(err, -ENOMEM, "out of memory for the statistics");
	}
	s->n_layers = M;
	s->reuse_random = (double)k / E;
	for (uint32_t mi = 0; mi < M; mi++) {
		k2tr_layer_stats *ls = &s->layers[mi];
		uint64_t *cnt = s->counts + (size_t)mi * E, reused = 0;
		ls->layer = h->moe_layers[mi];
		memset(pc, 0, sizeof(uint32_t) * (E > 1 ? (size_t)E * (E - 1) / 2 : 1));
		for (uint32_t i = 0; i < t->n_tok; i++) {
			const uint16_t *ex = k2tr_experts(t, i, mi);
			for (uint32_t j = 0; j < k; j++) {
				cnt[ex[j]]++;
				if (i)
					reused += prev[ex[j]];
				for (uint32_t q = j + 1; q < k; q++) {
					const uint32_t a = ex[j] < ex[q] ? ex[j] : ex[q];
					const uint32_t b = ex[j] < ex[q] ? ex[q] : ex[j];
					pc[pair_index(a, b, E)]++;
				}
			}
			memset(prev, 0, E);
			for (uint32_t j = 0; j < k; j++)
				prev[ex[j]] = 1;
		}
		ls->selections = (uint64_t)t->n_tok * k;
		ls->entropy_max = log2((double)E);
		ls->reuse_prev = t->n_tok > 1 ? (double)reused / ((double)(t->n_tok - 1) * k) : 0;
		for (uint32_t x = 0; x < E; x++) {
			ls->used += cnt[x] != 0;
			if (cnt[x] > cnt[ls->busiest])
				ls->busiest = x;
			if (cnt[x]) {
				const double p = (double)cnt[x] / ls->selections;
				ls->entropy_bits -= p * log2(p);
			}
		}
		if (ls->selections) {
			memcpy(sorted, cnt, sizeof(uint64_t) * E);
			qsort(sorted, E, sizeof(uint64_t), cmp_u64_desc);
			uint64_t top = 0;
			for (uint32_t x = 0; x < (E + 9) / 10; x++)
				top += sorted[x];
			ls->busiest_share = (double)cnt[ls->busiest] / ls->selections;
			ls->top10_share = (double)top / ls->selections;
		}
		if (E > 1 && top_pairs(pc, cnt, E, t->n_tok, pairs, ls) < 0) {
			free(sorted);
			free(pc);
			free(prev);
			k2tr_stats_free(s);
			return k2_err_set(err, -ENOMEM, "out of memory for the pairs");
		}
	}
	free(sorted);
	free(pc);
	free(prev);
	*out = s;
	return 0;
}

void k2tr_stats_free(k2tr_stats *s)
{
	if (!s)
		return;
	for (uint32_t i = 0; s->layers && i < s->n_layers; i++)
		free(s->layers[i].pairs);
	free(s->layers);
	free(s->counts);
	free(s);
}

void k2tr_stats_print(FILE *f, const k2tr_trace *t, const k2tr_stats *s)
{
	const k2tr_header *h = &t->h;
	fprintf(f, "%s: %u tokens in %" PRIu64 " steps; %u MoE layers of %u experts, top %u; "
		"recorded with %s, cache %u experts, %s\n", t->path, t->n_tok, t->n_steps, h->n_moe,
		h->n_experts, h->top_k, h->backend, h->expert_cache, h->policy);
	fprintf(f, "\nlayer  used  busiest  share   top10%%  entropy/max bits  reuse_prev\n");
	for (uint32_t i = 0; i < s->n_layers; i++) {
		const k2tr_layer_stats *l = &s->layers[i];
		fprintf(f, "%5u  %4u  %7u  %5.3f   %5.3f   %6.2f / %-6.2f    %5.3f\n", l->layer, l->used,
			l->busiest, l->busiest_share, l->top10_share, l->entropy_bits, l->entropy_max,
			l->reuse_prev);
	}
	fprintf(f, "(uniform: busiest share %.3f, top-10%% share %.3f; reuse of independent "
		"choices %.3f)\n", 1.0 / h->n_experts,
		(double)((h->n_experts + 9) / 10) / h->n_experts, s->reuse_random);
	fprintf(f, "\nmost co-activated pairs (tokens choosing both; lift = against independent "
		"choices)\n");
	for (uint32_t i = 0; i < s->n_layers; i++) {
		const k2tr_layer_stats *l = &s->layers[i];
		fprintf(f, "%5u ", l->layer);
		for (uint32_t p = 0; p < l->n_pairs; p++)
			fprintf(f, " %u+%u:%" PRIu64 " (x%.1f)", l->pairs[p].a, l->pairs[p].b,
				l->pairs[p].count, l->pairs[p].lift);
		fputc('\n', f);
	}
}

int k2tr_stats_print_json(FILE *f, const k2tr_trace *t, const k2tr_stats *s)
{
	const k2tr_header *h = &t->h;
	json_t *layers = json_array();
	for (uint32_t i = 0; i < s->n_layers && layers; i++) {
		const k2tr_layer_stats *l = &s->layers[i];
		json_t *pairs = json_array();
		for (uint32_t p = 0; p < l->n_pairs && pairs; p++)
			json_array_append_new(pairs, json_pack("{s:i, s:i, s:I, s:f}", "a", l->pairs[p].a,
							       "b", l->pairs[p].b, "count",
							       (json_int_t)l->pairs[p].count, "lift",
							       l->pairs[p].lift));
		json_array_append_new(layers, json_pack(
			"{s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:o}",
			"layer", (json_int_t)l->layer, "selections", (json_int_t)l->selections,
			"used", (json_int_t)l->used, "busiest", (json_int_t)l->busiest,
			"busiest_share", l->busiest_share, "top10_share", l->top10_share,
			"entropy_bits", l->entropy_bits, "entropy_max_bits", l->entropy_max,
			"reuse_prev", l->reuse_prev, "pairs", pairs ? pairs : json_array()));
	}
	json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:f, s:o}", "trace", t->path,
			      "tokens", (json_int_t)t->n_tok, "steps", (json_int_t)t->n_steps,
			      "moe_layers", (json_int_t)h->n_moe, "n_routed_experts",
			      (json_int_t)h->n_experts, "top_k", (json_int_t)h->top_k,
			      "reuse_random", s->reuse_random, "layers", layers ? layers : json_array());
	char *txt = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(o);
	if (!txt)
		return -ENOMEM;
	fprintf(f, "%s\n", txt);
	free(txt);
	return 0;
}

struct hot {
	uint32_t key;
	uint64_t count;
};

static int cmp_hot(const void *a, const void *b)
{
	const struct hot *x = a, *y = b;
	if (x->count != y->count)
		return x->count < y->count ? 1 : -1;
	return x->key < y->key ? -1 : x->key > y->key;
}

/* Every (MoE layer, expert) with its count, hottest first; *n of them. Keys
 * are layer · n_experts + expert. */
static struct hot *hot_list(const k2tr_trace *t, const uint64_t *counts, uint32_t *n)
{
	const k2tr_header *h = &t->h;
	const size_t all = (size_t)h->n_moe * h->n_experts;
	struct hot *v = malloc(sizeof(*v) * all);
	if (!v)
		return NULL;
	for (uint32_t mi = 0; mi < h->n_moe; mi++)
		for (uint32_t x = 0; x < h->n_experts; x++)
			v[(size_t)mi * h->n_experts + x] = (struct hot){
				.key = h->moe_layers[mi] * h->n_experts + x,
				.count = counts[(size_t)mi * h->n_experts + x]};
	qsort(v, all, sizeof(*v), cmp_hot);
	*n = (uint32_t)all;
	return v;
}

int k2tr_profile_write(const char *path, const k2tr_trace *t, const k2tr_stats *s, uint32_t top,
		       k2_err *err)
{
	const k2tr_header *h = &t->h;
	uint32_t n;
	struct hot *v = hot_list(t, s->counts, &n);
	if (!v)
		return k2_err_set(err, -ENOMEM, "out of memory");
	FILE *f = fopen(path, "w");
	if (!f) {
		int rc = -errno;
		free(v);
		return k2_err_set(err, rc, "%s: %s", path, strerror(errno));
	}
	if (top > n)
		top = n;
	fprintf(f, "# k2trace profile of %s: the %u hottest of %u experts (%u tokens)\n"
		"# layer expert count\n", t->path, top, n, t->n_tok);
	for (uint32_t i = 0; i < top; i++)
		fprintf(f, "%u %u %" PRIu64 "\n", v[i].key / h->n_experts, v[i].key % h->n_experts,
			v[i].count);
	free(v);
	if (ferror(f) | (fclose(f) != 0))
		return k2_err_set(err, -EIO, "%s: writing the profile failed", path);
	return 0;
}

/* ---------------------------------------------------------------- pins */

void k2tr_pins_free(k2tr_pins *p)
{
	if (!p)
		return;
	free(p->keys);
	p->keys = NULL;
	p->n = 0;
}

int k2tr_pins_hot(const k2tr_trace *t, uint32_t n, k2tr_pins *out, k2_err *err)
{
	const k2tr_header *h = &t->h;
	memset(out, 0, sizeof(*out));
	uint64_t *counts = calloc((size_t)h->n_moe * h->n_experts, sizeof(uint64_t));
	if (!counts)
		return k2_err_set(err, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < t->n_tok; i++)
		for (uint32_t mi = 0; mi < h->n_moe; mi++) {
			const uint16_t *ex = k2tr_experts(t, i, mi);
			for (uint32_t j = 0; j < h->top_k; j++)
				counts[(size_t)mi * h->n_experts + ex[j]]++;
		}
	uint32_t all;
	struct hot *v = hot_list(t, counts, &all);
	free(counts);
	if (!v || !(out->keys = malloc(sizeof(uint32_t) * (n ? n : 1)))) {
		free(v);
		return k2_err_set(err, -ENOMEM, "out of memory");
	}
	if (n > all)
		n = all;
	for (uint32_t i = 0; i < n; i++)
		out->keys[i] = v[i].key;
	out->n = n;
	free(v);
	return 0;
}

int k2tr_pins_read(const char *path, const k2tr_trace *t, k2tr_pins *out, k2_err *err)
{
	const k2tr_header *h = &t->h;
	memset(out, 0, sizeof(*out));
	uint8_t *moe = calloc(h->n_layers ? h->n_layers : 1, 1);
	if (!moe)
		return k2_err_set(err, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < h->n_moe; i++)
		if (h->moe_layers[i] < h->n_layers)
			moe[h->moe_layers[i]] = 1;
	int rc = inf_profile_read(path, h->n_layers, moe, h->n_experts, &out->keys, &out->n, err);
	free(moe);
	return rc;
}
