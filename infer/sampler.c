/* sampler.c — picks the next token from logits: greedy argmax when the
 * temperature is 0, else temperature + top-p (nucleus) sampling driven by a
 * seeded splitmix64 stream, so a seed reproduces a run. */
#define _GNU_SOURCE
#include "infer.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

struct inf_sampler {
	uint32_t vocab;
	float temperature, top_p;
	uint64_t state;
	float *prob;     /* [vocab] */
	uint32_t *order; /* [vocab] */
};

int32_t inf_argmax(const float *x, uint32_t n)
{
	uint32_t best = 0;
	for (uint32_t i = 1; i < n; i++)
		if (x[i] > x[best] || (isnan(x[best]) && !isnan(x[i])))
			best = i;
	return (int32_t)best;
}

int inf_sampler_create(uint32_t vocab, float temperature, float top_p, uint64_t seed,
		       inf_sampler **out)
{
	*out = NULL;
	if (vocab == 0 || !(temperature >= 0) || !(top_p > 0 && top_p <= 1))
		return -EINVAL;
	inf_sampler *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->vocab = vocab;
	s->temperature = temperature;
	s->top_p = top_p;
	s->state = seed;
	s->prob = malloc(sizeof(float) * vocab);
	s->order = malloc(sizeof(uint32_t) * vocab);
	if (!s->prob || !s->order) {
		inf_sampler_destroy(s);
		return -ENOMEM;
	}
	*out = s;
	return 0;
}

void inf_sampler_destroy(inf_sampler *s)
{
	if (!s)
		return;
	free(s->prob);
	free(s->order);
	free(s);
}

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static int by_prob_desc(const void *a, const void *b, void *ctx)
{
	const float *g_prob = ctx;
	uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
	if (g_prob[i] > g_prob[j])
		return -1;
	if (g_prob[i] < g_prob[j])
		return 1;
	return i < j ? -1 : i > j;
}

int32_t inf_sampler_next(inf_sampler *s, const float *logits)
{
	const uint32_t V = s->vocab;
	if (s->temperature == 0)
		return inf_argmax(logits, V);
	int32_t am = inf_argmax(logits, V);
	float mx = logits[am];
	double sum = 0;
	for (uint32_t i = 0; i < V; i++) {
		float p = isnan(logits[i]) ? 0.0f : expf((logits[i] - mx) / s->temperature);
		s->prob[i] = p;
		sum += p;
	}
	for (uint32_t i = 0; i < V; i++)
		s->prob[i] = (float)(s->prob[i] / sum);
	/* 53 random bits -> [0, 1) */
	double r = (double)(splitmix64(&s->state) >> 11) * (1.0 / 9007199254740992.0);
	uint32_t n = V;
	double mass = 1.0;
	if (s->top_p < 1) {
		for (uint32_t i = 0; i < V; i++)
			s->order[i] = i;
		qsort_r(s->order, V, sizeof(uint32_t), by_prob_desc, s->prob);
		double cum = 0;
		for (n = 0; n < V;) {
			cum += s->prob[s->order[n++]];
			if (cum >= s->top_p)
				break;
		}
		mass = cum;
	} else
		for (uint32_t i = 0; i < V; i++)
			s->order[i] = i;
	double target = r * mass, cum = 0;
	for (uint32_t i = 0; i < n; i++) {
		cum += s->prob[s->order[i]];
		if (target < cum)
			return (int32_t)s->order[i];
	}
	return (int32_t)s->order[n - 1];
}
