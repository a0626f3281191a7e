/* fuzz_serve_request.c — libFuzzer target for k2serve's request layer
 * (serve/api_request.c, api_jsonscan.c, api_error.c) and its stop matcher
 * (serve/api_stop.c). Any bytes are:
 *   - a body POSTed to /v1/chat/completions and to /v1/completions, parsed
 *     with and without a list of served models. An accepted request keeps the
 *     promises of api.h (a non-empty model, at least one message for chat,
 *     every string valid UTF-8 without NUL and as long as it says, sampling
 *     values in range, at most 4 non-empty stop strings), and its text goes
 *     through the response builders into JSON that jansson reads back. A
 *     refused one has status 400, 404 or 413, a message, a type, a param of
 *     printable ASCII, and error JSON that jansson reads back;
 *   - the text of a lexical scan at an offset taken from the input (any
 *     result, a path of printable ASCII);
 *   - stop strings, a text and the cuts between its pieces, for the stop
 *     matcher, whose output must equal a brute-force reference: the text up
 *     to the first completed stop string, nothing held back that could not
 *     begin one.
 * A broken promise aborts, for libFuzzer to report. Built by `make fuzz`. */
#include "api_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layout.h"
#include "stop_ref.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_serve_request: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	abort();
}

static void check_text(const char *s, size_t len, bool may_be_empty, const char *what)
{
	if (!s)
		fail("a NULL string", what);
	if (strlen(s) != len)
		fail("a string's length is not its strlen (NUL inside?)", what);
	if (!may_be_empty && len == 0)
		fail("an empty string", what);
	if (!k2_utf8_valid(s, len, NULL))
		fail("a string is not UTF-8", what);
}

static void check_printable(const char *s, const char *what)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			fail("a path holds a byte outside printable ASCII", what);
}

static void check_json(char *s, size_t len, const char *what)
{
	json_error_t je;
	if (!s)
		fail("a builder returned NULL", what);
	if (strlen(s) != len)
		fail("a builder's length is wrong", what);
	json_t *j = json_loadb(s, len, JSON_ALLOW_NUL, &je);
	if (!json_is_object(j))
		fail("a builder's output is not a JSON object", what);
	json_decref(j);
	free(s);
}

static void check_accepted(const struct api_request *r, enum api_endpoint ep)
{
	check_text(r->model, strlen(r->model), false, "model");
	if (ep == API_ENDPOINT_CHAT) {
		if (r->n_messages == 0 || !r->messages || r->prompt)
			fail("a chat request without messages", NULL);
		for (uint32_t i = 0; i < r->n_messages; i++) {
			if ((unsigned)r->messages[i].role >= API_ROLE_COUNT)
				fail("a role out of range", NULL);
			check_text(r->messages[i].content, r->messages[i].content_len, true, "content");
		}
	} else {
		if (r->messages || r->n_messages)
			fail("a completion request with messages", NULL);
		check_text(r->prompt, r->prompt_len, true, "prompt");
		if (r->max_tokens < 1)
			fail("a completion request with max_tokens 0", NULL);
	}
	if (!(r->temperature >= 0 && r->temperature <= 2) || !(r->top_p > 0 && r->top_p <= 1))
		fail("a sampling value out of range", NULL);
	if (r->n_stop > API_STOP_MAX || (r->include_usage && !r->stream))
		fail("stop count or stream options out of range", NULL);
	for (uint32_t i = 0; i < r->n_stop; i++)
		check_text(r->stop[i], r->stop_len[i], false, "stop");

	/* The request's text as a completion's output, both ways. */
	const char *text = ep == API_ENDPOINT_CHAT ? r->messages[0].content : r->prompt;
	size_t text_len = ep == API_ENDPOINT_CHAT ? r->messages[0].content_len : r->prompt_len;
	char id[API_ID_MAX];
	api_make_id(ep, r->seed, id, sizeof(id));
	struct api_completion c = {.endpoint = ep, .id = id, .created = 1, .model = r->model,
				   .text = text, .text_len = text_len, .finish = API_FINISH_STOP};
	size_t len = 0;
	char *s = api_completion_json(&c, &len);
	check_json(s, len, "api_completion_json");
	struct api_stream st = {.endpoint = ep, .id = id, .model = r->model,
				.include_usage = r->include_usage};
	s = api_sse_text(&st, text, text_len, &len);
	if (!s || len < 8 || strncmp(s, "data: ", 6) || strcmp(s + len - 2, "\n\n"))
		fail("an event is not framed", s);
	s[len - 2] = '\0';
	if (strchr(s, '\n'))
		fail("a newline inside an event", NULL);
	char *body = strdup(s + 6);
	free(s);
	if (body)
		check_json(body, strlen(body), "api_sse_text");
}

static void check_refused(int rc, const struct api_error *e)
{
	if (!((rc == -EINVAL && e->status == 400) || (rc == -ENOENT && e->status == 404) ||
	      (rc == -E2BIG && e->status == 413) || (rc == -ENOMEM && e->status == 500)))
		fail("an unexpected error code or status", e->message);
	if (!e->message[0] || !e->type || !e->type[0])
		fail("an error without a message or type", NULL);
	check_printable(e->param, "param");
	size_t len = 0;
	char *s = api_error_json(e, &len);
	if (!s)
		fail("api_error_json returned NULL", NULL);
	json_error_t je;
	json_t *j = json_loadb(s, len, 0, &je);
	json_t *o = json_object_get(j, "error");
	const json_t *param = json_object_get(o, "param");
	if (!json_is_string(json_object_get(o, "message")) || !param ||
	    (e->param[0] ? !json_is_string(param) || strcmp(json_string_value(param), e->param)
			 : !json_is_null(param)))
		fail("error JSON does not read back", s);
	json_decref(j);
	free(s);
}

static void parse_both(const char *body, size_t n)
{
	static const struct api_model_info models[] = {
		{.id = "m", .max_context = 64},
		{.id = "kimi-k2"},
	};
	for (int ep = 0; ep < 2; ep++)
		for (int with_models = 0; with_models < 2; with_models++) {
			struct api_request r;
			struct api_error e = {0};
			enum api_endpoint which = ep ? API_ENDPOINT_COMPLETIONS : API_ENDPOINT_CHAT;
			int rc = api_request_parse(which, body, n, with_models ? models : NULL,
						   with_models ? 2 : 0, &r, &e);
			if (rc == 0) {
				if (with_models && (r.model_index < 0 || r.model_index > 1))
					fail("accepted an unknown model", r.model);
				if (with_models && r.model_index == 0 && r.max_tokens > 64)
					fail("max_tokens above the model's context", NULL);
				check_accepted(&r, which);
				api_request_free(&r);
			} else {
				if (r.model || r.messages || r.prompt || r.n_stop)
					fail("a refused request was not emptied", NULL);
				check_refused(rc, &e);
			}
		}
	struct api_scan sc;
	api_json_scan(body, n, n ? (unsigned char)body[0] * n / 256 : 0, &sc);
	check_printable(sc.path, "scan path");
}

/* ---------------------------------------------------------------- stop matcher */

/* data: [count][len, bytes]…[cut seed][text]. Letters are folded to a small
 * alphabet so that matches are common. */
static void stop_matcher(const uint8_t *data, size_t size)
{
	size_t at = 0;
	if (size < 2)
		return;
	int ns = data[at++] % 5;
	char *stops[4] = {0};
	size_t lens[4] = {0};
	char text[512];
	int n_real = 0;
	for (int i = 0; i < ns && at < size; i++) {
		size_t len = 1 + data[at++] % 8;
		if (len > size - at)
			len = size - at;
		if (!len)
			break;
		stops[n_real] = malloc(len);
		if (!stops[n_real])
			goto out;
		for (size_t k = 0; k < len; k++)
			stops[n_real][k] = (char)('a' + data[at + k] % 3);
		lens[n_real++] = len;
		at += len;
	}
	uint32_t seed = at < size ? data[at++] : 0;
	size_t n = size - at < sizeof(text) ? size - at : sizeof(text);
	for (size_t k = 0; k < n; k++)
		text[k] = (char)('a' + data[at + k] % 3);

	api_stop *m;
	if (api_stop_new((const char *const *)stops, lens, (uint32_t)n_real, &m))
		goto out;
	long stop_at = stop_ref_at(text, n, (const char *const *)stops, lens, n_real);
	char out[512];
	size_t out_len = 0, fed = 0;
	int rc = 0;
	while (fed < n) {
		seed = seed * 1103515245u + 12345u;
		size_t piece = (seed >> 16) % 7;
		if (piece > n - fed)
			piece = n - fed;
		const char *e;
		size_t el;
		rc = api_stop_feed(m, text + fed, piece, &e, &el);
		if (rc < 0)
			fail("api_stop_feed failed", NULL);
		if (out_len + el > sizeof(out))
			fail("the matcher sent more than it was given", NULL);
		memcpy(out + out_len, e, el);
		out_len += el;
		fed += piece;
		if (rc == 1)
			break;
		if (out_len != stop_ref_safe(text, fed, (const char *const *)stops, lens, n_real))
			fail("the matcher holds back the wrong amount", NULL);
	}
	if (rc == 0) {
		const char *e;
		size_t el;
		api_stop_flush(m, &e, &el);
		if (out_len + el > sizeof(out))
			fail("the flush sent more than it was given", NULL);
		memcpy(out + out_len, e, el);
		out_len += el;
	}
	size_t want = stop_at < 0 ? n : (size_t)stop_at;
	if (rc != (stop_at >= 0) || out_len != want || memcmp(out, text, want))
		fail("the matcher's output differs from the reference", NULL);
	api_stop_free(m);
out:
	for (int i = 0; i < 4; i++)
		free(stops[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A private copy sized exactly, so ASan flags a read one past the end. */
	char *body = malloc(size ? size : 1);
	if (!body)
		return 0;
	memcpy(body, data, size);
	parse_both(body, size);
	free(body);
	stop_matcher(data, size);
	return 0;
}
