/* api_metrics.c — k2serve's counters (struct api_metrics in api.h): the
 * lock-free helpers that add to them, and their Prometheus text exposition
 * (format 0.0.4). */
#include "api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double api_ttft_bounds[API_TTFT_BUCKETS] = {0.05, 0.1, 0.25, 0.5, 1,  2,
						  5,    10,  20,   30,  60, 120};

#define ADD(field, v) __atomic_fetch_add(&(field), (v), __ATOMIC_RELAXED)
#define LOAD(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

enum api_status_class api_status_class(int http_status)
{
	if (http_status >= 200 && http_status < 300)
		return API_STATUS_2XX;
	if (http_status >= 400 && http_status < 500)
		return API_STATUS_4XX;
	if (http_status >= 500 && http_status < 600)
		return API_STATUS_5XX;
	return API_STATUS_OTHER;
}

void api_metrics_request(struct api_metrics *m, enum api_endpoint ep, int http_status)
{
	if (!m)
		return;
	if ((unsigned)ep >= API_ENDPOINT_COUNT)
		ep = API_ENDPOINT_OTHER;
	ADD(m->requests[ep][api_status_class(http_status)], 1);
}

void api_metrics_tokens(struct api_metrics *m, uint64_t prompt_tokens,
			uint64_t generated_tokens, uint64_t decode_ns)
{
	if (!m)
		return;
	ADD(m->prompt_tokens, prompt_tokens);
	ADD(m->generated_tokens, generated_tokens);
	ADD(m->decode_ns, decode_ns);
}

void api_metrics_ttft(struct api_metrics *m, double seconds)
{
	if (!m)
		return;
	if (!(seconds > 0)) /* negative or NaN */
		seconds = 0;
	int b = 0;
	while (b < API_TTFT_BUCKETS && seconds > api_ttft_bounds[b])
		b++;
	/* Saturated far above any real wait (285 years), below uint64's range. */
	uint64_t ns = seconds < 9e9 ? (uint64_t)(seconds * 1e9 + 0.5) : UINT64_C(9000000000000000000);
	ADD(m->ttft_bucket[b], 1);
	ADD(m->ttft_sum_ns, ns);
}

/* ---------------------------------------------------------------- text */

struct text {
	char *p;
	size_t len, cap;
	bool failed;  /* memory ran out: the text is dropped */
};

static void __attribute__((format(printf, 2, 3))) out(struct text *t, const char *fmt, ...)
{
	if (t->failed)
		return;
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int k = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
		va_end(ap);
		if (k < 0) {
			t->failed = true;
			return;
		}
		if ((size_t)k < t->cap - t->len) {
			t->len += (size_t)k;
			return;
		}
		size_t cap = t->cap * 2 + (size_t)k;
		char *p = realloc(t->p, cap);
		if (!p) {
			t->failed = true;
			return;
		}
		t->p = p;
		t->cap = cap;
	}
}

/* A family's HELP and TYPE lines. */
static void family(struct text *t, const char *name, const char *type, const char *help)
{
	out(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Nanoseconds as seconds, exactly. */
static void seconds(struct text *t, uint64_t ns)
{
	out(t, "%llu.%09llu", (unsigned long long)(ns / 1000000000u),
	    (unsigned long long)(ns % 1000000000u));
}

/* A label value (the exposition format escapes \, " and newline), from a
 * name[16] field that may lack its NUL. */
static void label_value(struct text *t, const char *s, size_t max)
{
	for (size_t i = 0; i < max && s[i]; i++) {
		char c = s[i];
		if (c == '\\' || c == '"')
			out(t, "\\%c", c);
		else if (c == '\n')
			out(t, "\\n");
		else
			out(t, "%c", c);
	}
}

static void tiers(struct text *t, const struct api_metrics *m, const char *name,
		  const char *help, bool hits)
{
	uint32_t n = LOAD(m->n_tiers);
	if (n > API_TIERS_MAX)
		n = API_TIERS_MAX;
	family(t, name, "counter", help);
	for (uint32_t i = 0; i < n; i++) {
		char tier[sizeof(m->tier[i].name)];
		for (size_t k = 0; k < sizeof(tier); k++)
			tier[k] = LOAD(m->tier[i].name[k]);
		out(t, "%s{tier=\"", name);
		label_value(t, tier, sizeof(tier));
		out(t, "\"} %llu\n",
		    (unsigned long long)(hits ? LOAD(m->tier[i].hits) : LOAD(m->tier[i].misses)));
	}
}

static void counter(struct text *t, const char *name, const char *help, uint64_t v)
{
	family(t, name, "counter", help);
	out(t, "%s %llu\n", name, (unsigned long long)v);
}

static void gauge(struct text *t, const char *name, const char *help, uint64_t v)
{
	family(t, name, "gauge", help);
	out(t, "%s %llu\n", name, (unsigned long long)v);
}

static void ttft(struct text *t, const struct api_metrics *m)
{
	static const char name[] = "k2serve_time_to_first_token_seconds";
	family(t, name, "histogram", "Seconds from a request's arrival to its first token.");
	uint64_t cum = 0;
	for (int b = 0; b <= API_TTFT_BUCKETS; b++) {
		cum += LOAD(m->ttft_bucket[b]);
		if (b < API_TTFT_BUCKETS)
			out(t, "%s_bucket{le=\"%g\"} %llu\n", name, api_ttft_bounds[b],
			    (unsigned long long)cum);
		else
			out(t, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
	}
	out(t, "%s_sum ", name);
	seconds(t, LOAD(m->ttft_sum_ns));
	/* _count is the +Inf bucket, as the format requires. */
	out(t, "\n%s_count %llu\n", name, (unsigned long long)cum);
}

char *api_metrics_text(const struct api_metrics *m, size_t *len)
{
	if (!m)
		return NULL;
	struct text t = {.cap = 4096};
	t.p = malloc(t.cap);
	if (!t.p)
		return NULL;
	t.p[0] = '\0';

	family(&t, "k2serve_requests_total", "counter", "HTTP replies sent, by endpoint and status class.");
	for (int ep = 0; ep < API_ENDPOINT_COUNT; ep++)
		for (int c = 0; c < API_STATUS_COUNT; c++) {
			static const char *const cls[API_STATUS_COUNT] = {"2xx", "4xx", "5xx",
									  "other"};
			out(&t, "k2serve_requests_total{endpoint=\"%s\",code=\"%s\"} %llu\n",
			    api_endpoint_name((enum api_endpoint)ep), cls[c],
			    (unsigned long long)LOAD(m->requests[ep][c]));
		}
	counter(&t, "k2serve_prompt_tokens_total", "Prompt tokens processed.",
		LOAD(m->prompt_tokens));
	counter(&t, "k2serve_generated_tokens_total", "Tokens generated.",
		LOAD(m->generated_tokens));
	family(&t, "k2serve_decode_seconds_total", "counter", "Seconds spent in decode steps.");
	out(&t, "k2serve_decode_seconds_total ");
	seconds(&t, LOAD(m->decode_ns));
	out(&t, "\n");
	ttft(&t, m);
	tiers(&t, m, "k2serve_expert_hits_total", "Routed experts found in a tier when needed.",
	      true);
	tiers(&t, m, "k2serve_expert_misses_total", "Routed experts a tier had to load on demand.",
	      false);
	counter(&t, "k2serve_prefetch_issued_total", "Expert prefetches issued.",
		LOAD(m->prefetch_issued));
	counter(&t, "k2serve_prefetch_useful_total",
		"Prefetched experts that were used before eviction.", LOAD(m->prefetch_useful));
	counter(&t, "k2serve_read_bytes_total", "Bytes of expert images read from the mount.",
		LOAD(m->bytes_read));
	gauge(&t, "k2serve_requests_active", "Requests being decoded now.",
	      LOAD(m->active_requests));
	gauge(&t, "k2serve_requests_queued", "Requests waiting for a decode slot.",
	      LOAD(m->queued_requests));
	family(&t, "k2serve_tokens_per_second", "gauge",
	       "Tokens generated per second over the last seconds, all requests together.");
	out(&t, "k2serve_tokens_per_second %.3f\n", (double)LOAD(m->tokens_per_s_milli) / 1000);
	if (t.failed) {
		free(t.p);
		return NULL;
	}
	if (len)
		*len = t.len;
	return t.p;
}
