/* stats.c — the --stats line: one JSON object with decode tokens/s, time to
 * first token, token counts, the compute tier's hits/misses ("expert_cache"),
 * every tier's counters ("tiers"), bytes read through the mount, prefetch
 * precision/recall, and on a backend with device memory where experts were
 * computed (jansson). */
#include "infer.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static double ratio(uint64_t a, uint64_t b)
{
	return b ? (double)a / (double)b : 0.0;
}

/* One tier's counters. */
static json_t *tier_json(const inf_tier_stats *t)
{
	return json_pack("{s:I, s:I, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f}",
			 "hits", (json_int_t)t->hits,
			 "misses", (json_int_t)t->misses,
			 "hit_rate", ratio(t->hits, t->hits + t->misses),
			 "inflight", (json_int_t)t->inflight,
			 "loads", (json_int_t)t->loads,
			 "prefetch_loads", (json_int_t)t->prefetch_loads,
			 "evictions", (json_int_t)t->evictions,
			 "slots", (json_int_t)t->slots,
			 "slot_bytes", (json_int_t)t->slot_bytes,
			 "bytes_read", (json_int_t)t->bytes_read,
			 "bytes_moved", (json_int_t)t->bytes_moved,
			 "wait_s", t->wait_s);
}

char *inf_stats_json(const inf_run_stats *s)
{
	const inf_tier_stats *c = &s->cache;
	const inf_prefetch_stats *p = &s->prefetch;
	double tps = s->generated > 1 && s->decode_s > 0 ? (s->generated - 1) / s->decode_s : 0;
	json_t *o = json_pack(
		"{s:f, s:f, s:f, s:i, s:i, s:o, s:I, s:I, s:I, s:I,"
		" s:{s:I, s:I, s:I, s:f, s:f, s:I, s:I, s:I}}",
		"tokens_per_s", tps,
		"ttft_s", s->ttft_s,
		"decode_s", s->decode_s,
		"prompt_tokens", (int)s->prompt_tokens,
		"generated", (int)s->generated,
		"expert_cache", tier_json(c),
		"bytes_read", (json_int_t)c->bytes_read,
		"dense_bytes", (json_int_t)s->dense_bytes,
		"dense_bytes_per_token", (json_int_t)s->dense_bytes_per_token,
		"expert_bytes_touched", (json_int_t)s->expert_bytes_touched,
		"prefetch",
		"predicted", (json_int_t)p->predicted,
		"used", (json_int_t)p->used,
		"correct", (json_int_t)p->correct,
		"precision", ratio(p->correct, p->predicted),
		"recall", ratio(p->correct, p->used),
		"loads", (json_int_t)c->prefetch_loads,
		"dropped", (json_int_t)c->prefetch_dropped,
		"unused", (json_int_t)c->prefetch_unused);
	if (!o)
		return NULL;
	json_object_set_new(o, "backend", json_string(s->backend ? s->backend : "cpu"));
	json_t *tiers = json_object();
	for (int t = 0; t < INF_TIERS && tiers; t++)
		if (s->has_tier[t])
			json_object_set_new(tiers, inf_tier_name(t), tier_json(&s->tiers[t]));
	if (tiers)
		json_object_set_new(o, "tiers", tiers);
	if (s->device_backend) {
		const inf_device_stats *g = &s->dev;
		const uint64_t applied = g->backend_experts + g->cpu_experts;
		json_object_set_new(o, "device", json_pack(
			"{s:s, s:I, s:I, s:I, s:f, s:I, s:I, s:f, s:f, s:f, s:f}",
			"device", g->device,
			"dense_backend_bytes", (json_int_t)g->dense_backend_bytes,
			"backend_experts", (json_int_t)g->backend_experts,
			"cpu_experts", (json_int_t)g->cpu_experts,
			"cpu_expert_share", ratio(g->cpu_experts, applied),
			"uploads", (json_int_t)g->uploads,
			"upload_bytes", (json_int_t)g->upload_bytes,
			"upload_wait_s", g->upload_wait_s,
			"cpu_compute_s", g->cpu_compute_s,
			"est_upload_s", g->est_upload_s,
			"est_cpu_row_s", g->est_cpu_row_s));
	}
	char *txt = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	return txt;
}
