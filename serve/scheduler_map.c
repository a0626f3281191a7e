/* scheduler_map.c — the expert map of GET /k2/experts and the engine's counters
 * for /metrics (contracts in scheduler.h and scheduler_impl.h). The scheduler's thread
 * counts each step's routes and, every 200 ms or when it goes idle, reads
 * where every expert lives and the tiers' counters; HTTP threads only copy
 * that state, under the scheduler's lock, so they never touch the engine. */
#include "scheduler_impl.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REFRESH_S 0.2

int sched_map_init(srv_sched *s)
{
	struct sched_map *m = &s->map;
	const inf_model *model = inf_engine_model(s->e);
	const k2_model_config *c = inf_model_config(model);
	m->n_layers = c->num_hidden_layers;
	m->n_experts = c->n_routed_experts;
	m->top_k = c->num_experts_per_tok;
	m->layers = calloc(m->n_layers ? m->n_layers : 1, sizeof(uint32_t));
	m->hits = calloc((size_t)m->n_layers * m->n_experts + 1, sizeof(uint64_t));
	if (!m->layers || !m->hits)
		return -ENOMEM;
	for (uint32_t l = 0; l < m->n_layers; l++)
		if (inf_model_is_moe(model, l))
			m->layers[m->n_moe++] = l;
	m->where = calloc((size_t)m->n_moe * m->n_experts + 1, 1);
	if (!m->where)
		return -ENOMEM;
	inf_experts *d = inf_engine_experts(s->e);
	for (int t = 0; t < INF_TIERS; t++)
		if (d && inf_experts_has_tier(d, t))
			m->tiers[m->n_tiers++] = t;
	memset(m->where, (int)m->n_tiers, (size_t)m->n_moe * m->n_experts);
	m->rate_t0 = m->rate_t1 = k2_now();
	return 0;
}

void sched_map_free(srv_sched *s)
{
	free(s->map.layers);
	free(s->map.hits);
	free(s->map.where);
}

void sched_map_count_routes(srv_sched *s)
{
	struct sched_map *m = &s->map;
	uint32_t n;
	const int32_t *r = inf_engine_routes(s->e, &n);
	if (!r)
		return;
	const size_t per_token = (size_t)m->n_layers * m->top_k;
	for (size_t i = 0; i < (size_t)n * per_token; i++) {
		const uint32_t l = (uint32_t)((i / m->top_k) % m->n_layers);
		if (r[i] >= 0 && (uint32_t)r[i] < m->n_experts)
			m->hits[(size_t)l * m->n_experts + (uint32_t)r[i]]++;
	}
}

void sched_map_refresh(srv_sched *s, bool force)
{
	struct sched_map *m = &s->map;
	const double now = k2_now();
	if (!force && now - m->refreshed < REFRESH_S)
		return;
	m->refreshed = now;
	inf_experts *d = inf_engine_experts(s->e);
	for (uint32_t i = 0; d && i < m->n_moe; i++)
		for (uint32_t e = 0; e < m->n_experts; e++) {
			uint8_t w = (uint8_t)m->n_tiers;
			for (uint32_t t = 0; t < m->n_tiers && w == m->n_tiers; t++)
				if (inf_experts_state(d, m->tiers[t], m->layers[i], e))
					w = (uint8_t)t;
			m->where[(size_t)i * m->n_experts + e] = w;
		}
	for (uint32_t t = 0; t < m->n_tiers; t++)
		inf_engine_tier_stats(s->e, m->tiers[t], &m->tier_stats[t]);
	inf_tier_stats cache;
	inf_engine_stats(s->e, &cache, &m->prefetch);
	/* tokens/s over the window [rate_t0, now], moved on every 2 s */
	const uint64_t g = s->st.generated_tokens;
	if (now - m->rate_t1 >= 2.0) {
		m->rate_t0 = m->rate_t1;
		m->rate_g0 = m->rate_g1;
		m->rate_t1 = now;
		m->rate_g1 = g;
	}
	m->tokens_per_s = now > m->rate_t0 ? (double)(g - m->rate_g0) / (now - m->rate_t0) : 0;
}

static json_t *u64_row(const uint64_t *v, uint32_t n)
{
	json_t *a = json_array();
	for (uint32_t i = 0; a && i < n; i++)
		if (json_array_append_new(a, json_integer((json_int_t)v[i])) < 0) {
			json_decref(a);
			return NULL;
		}
	return a;
}

static json_t *u8_row(const uint8_t *v, uint32_t n)
{
	json_t *a = json_array();
	for (uint32_t i = 0; a && i < n; i++)
		if (json_array_append_new(a, json_integer(v[i])) < 0) {
			json_decref(a);
			return NULL;
		}
	return a;
}

/* Builds the map's JSON; mu held. NULL when out of memory. */
static json_t *map_json(srv_sched *s, const char *model)
{
	const struct sched_map *m = &s->map;
	json_t *o = json_object(), *layers = json_array(), *tiers = json_array(),
	       *tier = json_array(), *hits = json_array(), *rate = json_object();
	int bad = !o || !layers || !tiers || !tier || !hits || !rate;
	for (uint32_t i = 0; !bad && i < m->n_moe; i++) {
		bad |= json_array_append_new(layers, json_integer(m->layers[i])) < 0;
		bad |= json_array_append_new(tier, u8_row(m->where + (size_t)i * m->n_experts,
							   m->n_experts)) < 0;
		bad |= json_array_append_new(hits, u64_row(m->hits + (size_t)m->layers[i] *
								      m->n_experts,
							   m->n_experts)) < 0;
	}
	for (uint32_t t = 0; !bad && t < m->n_tiers; t++) {
		const inf_tier_stats *ts = &m->tier_stats[t];
		const char *name = inf_tier_name(m->tiers[t]);
		uint64_t all = ts->hits + ts->misses;
		bad |= json_array_append_new(tiers, json_string(name)) < 0;
		bad |= json_object_set_new(rate, name, json_real(all ? (double)ts->hits / (double)all
								     : 0)) < 0;
	}
	bad = bad || json_array_append_new(tiers, json_string("disk")) < 0;
	uint32_t active = 0;
	for (uint32_t i = 0; i < s->n_slots; i++)
		active += s->slot[i] != NULL;
	if (!bad) {
		bad |= json_object_set_new(o, "model", json_string(model ? model : "")) < 0;
		bad |= json_object_set_new(o, "n_experts", json_integer(m->n_experts)) < 0;
		bad |= json_object_set(o, "layers", layers) < 0;
		bad |= json_object_set(o, "tiers", tiers) < 0;
		bad |= json_object_set(o, "tier", tier) < 0;
		bad |= json_object_set(o, "hits", hits) < 0;
		bad |= json_object_set(o, "hit_rate", rate) < 0;
		bad |= json_object_set_new(o, "tokens_per_s", json_real(m->tokens_per_s)) < 0;
		bad |= json_object_set_new(o, "tokens",
					   json_integer((json_int_t)s->st.generated_tokens)) < 0;
		bad |= json_object_set_new(o, "requests",
					   json_integer((json_int_t)(s->st.jobs_done +
								     s->st.jobs_cancelled))) < 0;
		bad |= json_object_set_new(o, "active", json_integer(active)) < 0;
		bad |= json_object_set_new(o, "queued", json_integer(s->n_queued)) < 0;
	}
	json_decref(layers);
	json_decref(tiers);
	json_decref(tier);
	json_decref(hits);
	json_decref(rate);
	if (bad) {
		json_decref(o);
		return NULL;
	}
	return o;
}

char *srv_sched_experts_json(srv_sched *s, const char *model, size_t *len)
{
	pthread_mutex_lock(&s->mu);
	json_t *o = map_json(s, model);
	pthread_mutex_unlock(&s->mu);
	if (!o)
		return NULL;
	char *text = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (text && len)
		*len = strlen(text);
	return text;
}

void srv_sched_metrics(srv_sched *s, struct api_metrics *out)
{
	pthread_mutex_lock(&s->mu);
	const struct sched_map *m = &s->map;
	uint32_t n = m->n_tiers < API_TIERS_MAX ? m->n_tiers : API_TIERS_MAX;
	uint64_t bytes = 0, active = 0;
	for (uint32_t t = 0; t < n; t++) {
		snprintf(out->tier[t].name, sizeof(out->tier[t].name), "%s",
			 inf_tier_name(m->tiers[t]));
		__atomic_store_n(&out->tier[t].hits, m->tier_stats[t].hits, __ATOMIC_RELAXED);
		__atomic_store_n(&out->tier[t].misses, m->tier_stats[t].misses, __ATOMIC_RELAXED);
		bytes += m->tier_stats[t].bytes_read;
	}
	for (uint32_t i = 0; i < s->n_slots; i++)
		active += s->slot[i] != NULL;
	__atomic_store_n(&out->n_tiers, n, __ATOMIC_RELAXED);
	__atomic_store_n(&out->prompt_tokens, s->st.prompt_tokens, __ATOMIC_RELAXED);
	__atomic_store_n(&out->generated_tokens, s->st.generated_tokens, __ATOMIC_RELAXED);
	__atomic_store_n(&out->prefetch_issued, m->prefetch.predicted, __ATOMIC_RELAXED);
	__atomic_store_n(&out->prefetch_useful, m->prefetch.correct, __ATOMIC_RELAXED);
	__atomic_store_n(&out->bytes_read, bytes, __ATOMIC_RELAXED);
	__atomic_store_n(&out->active_requests, active, __ATOMIC_RELAXED);
	__atomic_store_n(&out->queued_requests, (uint64_t)s->n_queued, __ATOMIC_RELAXED);
	__atomic_store_n(&out->tokens_per_s_milli, (uint64_t)(m->tokens_per_s * 1000 + 0.5),
			 __ATOMIC_RELAXED);
	pthread_mutex_unlock(&s->mu);
}
