/* router.c — the DeepSeek-V3 / Kimi-K2 noaux_tc router (kern_router in
 * kernels.h), as transformers' DeepseekV3TopkRouter computes it in float32:
 * sigmoid scores, e_score_correction_bias for the choice only, group-limited
 * top-k, weights from the unbiased scores. */
#include "kernels_impl.h"

#include <errno.h>
#include <math.h>
#include <string.h>

static int router_params_ok(const kern_router_params *p)
{
	const uint32_t E = p->n_experts, k = p->top_k;
	const uint32_t ng = p->n_group ? p->n_group : 1;
	const uint32_t kg = p->n_group ? p->topk_group : 1;
	return E > 0 && E <= KERN_MAX_EXPERTS && k > 0 && k <= E && E % ng == 0 && kg > 0 &&
	       kg <= ng;
}

/* Keeps the topk_group best groups of choice [E] (group score: the sum of its
 * two largest choices) and sets every other expert's choice to 0.0. */
static void keep_best_groups(const kern_router_params *p, float *choice)
{
	const uint32_t E = p->n_experts, ng = p->n_group, gs = E / ng;
	float gscore[KERN_MAX_EXPERTS];
	uint8_t keep[KERN_MAX_EXPERTS];
	for (uint32_t g = 0; g < ng; g++) {
		float a = -INFINITY, b = -INFINITY;
		for (uint32_t i = g * gs; i < (g + 1) * gs; i++) {
			float v = choice[i];
			if (v > a) {
				b = a;
				a = v;
			} else if (v > b)
				b = v;
		}
		gscore[g] = gs > 1 ? a + b : a;
		keep[g] = 0;
	}
	for (uint32_t r = 0; r < p->topk_group; r++) {
		int best = -1;
		for (uint32_t g = 0; g < ng; g++)
			if (!keep[g] && (best < 0 || gscore[g] > gscore[best]))
				best = (int)g;
		keep[best] = 1;
	}
	for (uint32_t g = 0; g < ng; g++)
		if (!keep[g])
			for (uint32_t i = g * gs; i < (g + 1) * gs; i++)
				choice[i] = 0.0f;
}

/* One token: logits [E] → idx [k], w [k]. */
static void route_one(const kern_router_params *p, const float *logits, const float *bias,
		      int32_t *idx, float *w)
{
	const uint32_t E = p->n_experts, k = p->top_k;
	float s[KERN_MAX_EXPERTS], choice[KERN_MAX_EXPERTS];
	uint8_t taken[KERN_MAX_EXPERTS];
	for (uint32_t i = 0; i < E; i++) {
		s[i] = 1.0f / (1.0f + expf(-logits[i]));
		choice[i] = s[i] + (bias ? bias[i] : 0.0f);
	}
	if (p->n_group > 1)
		keep_best_groups(p, choice);
	/* top k by choice, descending; ties to the lower index; NaN ranks last */
	memset(taken, 0, E);
	for (uint32_t j = 0; j < k; j++) {
		int best = -1;
		float bv = 0;
		for (uint32_t i = 0; i < E; i++) {
			if (taken[i])
				continue;
			float v = isnan(choice[i]) ? -INFINITY : choice[i];
			if (best < 0 || v > bv) {
				best = (int)i;
				bv = v;
			}
		}
		idx[j] = best;
		taken[best] = 1;
	}
	float sum = 0;
	for (uint32_t j = 0; j < k; j++) {
		w[j] = s[idx[j]];
		sum += w[j];
	}
	if (p->norm_topk_prob) {
		float den = sum + 1e-20f;
		for (uint32_t j = 0; j < k; j++)
			w[j] /= den;
	}
	for (uint32_t j = 0; j < k; j++)
		w[j] *= p->routed_scaling_factor;
}

struct route_job {
	const kern_router_params *p;
	const float *logits, *bias;
	int32_t *idx;
	float *w;
};

static void route_task(void *arg, uint32_t t)
{
	const struct route_job *j = arg;
	route_one(j->p, j->logits + (size_t)t * j->p->n_experts, j->bias,
		  j->idx + (size_t)t * j->p->top_k, j->w + (size_t)t * j->p->top_k);
}

int kern_router(const kern_router_params *p, const float *logits, const float *bias,
		uint32_t T, int32_t *idx, float *w)
{
	if (!router_params_ok(p))
		return -EINVAL;
	struct route_job j = {.p = p, .logits = logits, .bias = bias, .idx = idx, .w = w};
	if (T == 1)
		route_task(&j, 0);
	else
		kern_parallel_for(T, route_task, &j); /* tokens route independently */
	return 0;
}
