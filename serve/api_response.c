/* api_response.c — what k2serve sends back: completion objects, the chunks of
 * a streamed completion as server-sent events, /v1/models and /health, in the
 * shapes the OpenAI clients parse. */
#include "api_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const endpoint_names[API_ENDPOINT_COUNT] = {
	[API_ENDPOINT_CHAT] = "chat_completions", [API_ENDPOINT_COMPLETIONS] = "completions",
	[API_ENDPOINT_MODELS] = "models",         [API_ENDPOINT_HEALTH] = "health",
	[API_ENDPOINT_METRICS] = "metrics",       [API_ENDPOINT_OTHER] = "other",
};

const char *api_endpoint_name(enum api_endpoint ep)
{
	return (unsigned)ep < API_ENDPOINT_COUNT ? endpoint_names[ep] : NULL;
}

const char *api_finish_name(enum api_finish f)
{
	switch (f) {
	case API_FINISH_STOP: return "stop";
	case API_FINISH_LENGTH: return "length";
	default: return NULL;
	}
}

/* splitmix64's finaliser: a bijection of 64-bit words. */
static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

int api_make_id(enum api_endpoint ep, uint64_t seq, char *buf, size_t n)
{
	if (!buf || n < API_ID_MAX)
		return -ENOSPC;
	/* 64 bits that identify seq, then 32 more that only look random. */
	uint64_t a = mix64(seq), b = mix64(a ^ 0x9e3779b97f4a7c15ull);
	snprintf(buf, n, "%s%016llx%08llx", ep == API_ENDPOINT_CHAT ? "chatcmpl-" : "cmpl-",
		 (unsigned long long)a, (unsigned long long)(b >> 32));
	return 0;
}

/* ---------------------------------------------------------------- shared pieces */

static const char *object_name(enum api_endpoint ep, bool chunk)
{
	if (ep != API_ENDPOINT_CHAT)
		return "text_completion";
	return chunk ? "chat.completion.chunk" : "chat.completion";
}

/* {id, object, created, model}: the head of every completion and chunk. */
static json_t *head(enum api_endpoint ep, bool chunk, const char *id, int64_t created,
		    const char *model)
{
	json_t *o = json_object();
	if (o && !api_json_put(o, "id", api_json_cstr(id ? id : "")) &&
	    !api_json_put(o, "object", json_string(object_name(ep, chunk))) &&
	    !api_json_put(o, "created", json_integer(created)) &&
	    !api_json_put(o, "model", api_json_cstr(model ? model : "")))
		return o;
	json_decref(o);
	return NULL;
}

static json_t *finish_reason(enum api_finish f)
{
	const char *name = api_finish_name(f);
	return name ? json_string(name) : json_null();
}

static json_t *usage(uint32_t prompt_tokens, uint32_t completion_tokens)
{
	json_t *u = json_object();
	if (u && !api_json_put(u, "prompt_tokens", json_integer(prompt_tokens)) &&
	    !api_json_put(u, "completion_tokens", json_integer(completion_tokens)) &&
	    !api_json_put(u, "total_tokens",
			  json_integer((json_int_t)prompt_tokens + completion_tokens)))
		return u;
	json_decref(u);
	return NULL;
}

/* {message|delta: …} (chat) or {text: …} (completions) with index, logprobs
 * and finish_reason. text NULL: an empty delta / "" text. role: a chat delta
 * that also names the role. */
static json_t *choice(enum api_endpoint ep, bool chunk, bool role, const char *text,
		      size_t text_len, enum api_finish f)
{
	json_t *c = json_object();
	if (!c)
		return NULL;
	int rc;
	if (ep == API_ENDPOINT_CHAT) {
		json_t *m = json_object();
		rc = api_json_put(c, "index", json_integer(0));
		if (!rc && m && (role || !chunk))
			rc = api_json_put(m, "role", json_string("assistant"));
		if (!rc && m && (text || !chunk))
			rc = api_json_put(m, "content", api_json_text(text, text_len));
		if (!rc)
			rc = api_json_put(c, chunk ? "delta" : "message", m);
		else
			json_decref(m);
	} else {
		rc = api_json_put(c, "text", api_json_text(text, text_len));
		if (!rc)
			rc = api_json_put(c, "index", json_integer(0));
	}
	if (!rc)
		rc = api_json_put(c, "logprobs", json_null());
	if (!rc)
		rc = api_json_put(c, "finish_reason", finish_reason(f));
	if (rc) {
		json_decref(c);
		return NULL;
	}
	return c;
}

/* Adds "choices": [c] (none: [], c unused) to o. Takes both references;
 * NULL when o or c is NULL or memory runs out. */
static json_t *with_choices(json_t *o, json_t *c, bool none)
{
	json_t *a = json_array();
	if (!o || !a || (!none && !c)) {
		json_decref(c);
		json_decref(a);
		json_decref(o);
		return NULL;
	}
	if (none)
		json_decref(c);
	else if (json_array_append_new(a, c)) /* takes c even when it fails */
		goto out_free;
	if (json_object_set_new(o, "choices", a)) /* takes a likewise */
		goto out_free_o;
	return o;
out_free:
	json_decref(a);
out_free_o:
	json_decref(o);
	return NULL;
}

/* ---------------------------------------------------------------- completions */

char *api_completion_json(const struct api_completion *c, size_t *len)
{
	if (!c)
		return NULL;
	json_t *o = head(c->endpoint, false, c->id, c->created, c->model);
	o = with_choices(o, choice(c->endpoint, false, true, c->text ? c->text : "",
				   c->text ? c->text_len : 0, c->finish), false);
	if (o && api_json_put(o, "usage", usage(c->prompt_tokens, c->completion_tokens))) {
		json_decref(o);
		o = NULL;
	}
	return api_json_finish(o, false, len);
}

/* One chunk: head, choices [one] or [] (none), "usage": null when the stream
 * asked for usage, or u. */
static char *chunk(const struct api_stream *s, json_t *c, bool none, json_t *u, size_t *len)
{
	if (!s) {
		json_decref(c);
		json_decref(u);
		return NULL;
	}
	json_t *o = with_choices(head(s->endpoint, true, s->id, s->created, s->model), c, none);
	if (o && (u || s->include_usage) && api_json_put(o, "usage", u ? u : json_null())) {
		json_decref(o);
		o = NULL;
	} else if (!o) {
		json_decref(u);
	}
	return api_json_finish(o, true, len);
}

char *api_sse_start(const struct api_stream *s, size_t *len)
{
	if (s && s->endpoint != API_ENDPOINT_CHAT) {
		char *e = calloc(1, 1);
		if (e && len)
			*len = 0;
		return e;
	}
	return chunk(s, s ? choice(API_ENDPOINT_CHAT, true, true, "", 0, API_FINISH_NONE) : NULL,
		     false, NULL, len);
}

char *api_sse_text(const struct api_stream *s, const char *text, size_t text_len, size_t *len)
{
	return chunk(s, s ? choice(s->endpoint, true, false, text ? text : "",
				   text ? text_len : 0, API_FINISH_NONE) : NULL,
		     false, NULL, len);
}

char *api_sse_finish(const struct api_stream *s, enum api_finish f, size_t *len)
{
	/* The chat delta is {}; a completion's last text is "". */
	return chunk(s, s ? choice(s->endpoint, true, false,
				   s->endpoint == API_ENDPOINT_CHAT ? NULL : "", 0, f) : NULL,
		     false, NULL, len);
}

char *api_sse_usage(const struct api_stream *s, uint32_t prompt_tokens,
		    uint32_t completion_tokens, size_t *len)
{
	json_t *u = usage(prompt_tokens, completion_tokens);
	if (!u)
		return NULL;
	return chunk(s, NULL, true, u, len);
}

/* ---------------------------------------------------------------- models, health */

static json_t *model_object(const struct api_model_info *m)
{
	json_t *o = json_object();
	if (o && !api_json_put(o, "id", api_json_cstr(m->id ? m->id : "")) &&
	    !api_json_put(o, "object", json_string("model")) &&
	    !api_json_put(o, "created", json_integer(m->created)) &&
	    !api_json_put(o, "owned_by", api_json_cstr(m->owned_by ? m->owned_by : "k2serve")))
		return o;
	json_decref(o);
	return NULL;
}

char *api_models_json(const struct api_model_info *models, size_t n, size_t *len)
{
	json_t *o = json_object(), *a = json_array();
	if (!o || !a || (n && !models) || api_json_put(o, "object", json_string("list")))
		goto out_free;
	for (size_t i = 0; i < n; i++)
		if (json_array_append_new(a, model_object(&models[i])))
			goto out_free;
	if (json_object_set_new(o, "data", a)) /* takes a even when it fails */
		goto out_free_o;
	return api_json_finish(o, false, len);
out_free:
	json_decref(a);
out_free_o:
	json_decref(o);
	return NULL;
}

char *api_model_json(const struct api_model_info *model, size_t *len)
{
	return model ? api_json_finish(model_object(model), false, len) : NULL;
}

char *api_health_json(const struct api_health *h, size_t *len)
{
	if (!h)
		return NULL;
	json_t *o = json_object(), *r = json_object();
	if (!o || !r || api_json_put(o, "status", api_json_cstr(h->status ? h->status : "ok")) ||
	    (h->model && api_json_put(o, "model", api_json_cstr(h->model))) ||
	    api_json_put(o, "uptime_s", json_real(h->uptime_s >= 0 && h->uptime_s < 1e300 ? h->uptime_s : 0)) ||
	    api_json_put(r, "active", json_integer(h->active_requests)) ||
	    api_json_put(r, "queued", json_integer(h->queued_requests)))
		goto out_free;
	if (json_object_set_new(o, "requests", r)) {
		json_decref(o);
		return NULL;
	}
	return api_json_finish(o, false, len);
out_free:
	json_decref(r);
	json_decref(o);
	return NULL;
}
