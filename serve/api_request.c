/* api_request.c — the bodies of POST /v1/chat/completions and /v1/completions:
 * JSON text to a validated struct api_request, or an OpenAI error naming the
 * parameter and what was expected. */
#include "api_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct parse {
	enum api_endpoint ep;
	struct api_request *req;
	struct api_error *err;
};

#define ROLE_LIST "'system', 'developer', 'user', 'assistant', 'tool'"

static const char *const role_names[API_ROLE_COUNT] = {
	[API_ROLE_SYSTEM] = "system",
	[API_ROLE_USER] = "user",
	[API_ROLE_ASSISTANT] = "assistant",
	[API_ROLE_TOOL] = "tool",
};

const char *api_role_name(enum api_role role)
{
	return (unsigned)role < API_ROLE_COUNT ? role_names[role] : NULL;
}

/* A 400 invalid_request_error about param; returns -EINVAL. */
#define BAD(p, param, code, ...) \
	api_error_set((p)->err, 400, API_ERR_INVALID_REQUEST, param, code, __VA_ARGS__)

/* Bytes of s (NUL-terminated, valid UTF-8) to show in a message: at most max,
 * ending at a character boundary. */
static int shown(const char *s, size_t max)
{
	size_t n = strnlen(s, max + 1);
	if (n <= max)
		return (int)n;
	n = max;
	while (n && ((unsigned char)s[n] & 0xc0) == 0x80)
		n--;
	return (int)n;
}

/* obj[key], or NULL when absent or JSON null (OpenAI reads both as "not given"). */
static json_t *field(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return json_is_null(v) ? NULL : v;
}

/* 0 when the JSON string v (param names it) holds no NUL character, else the
 * 400. jansson has checked its UTF-8 and, with JSON_ALLOW_NUL, let \\u0000
 * through; it is refused here since every consumer downstream reads C strings. */
static int no_nul(struct parse *p, const json_t *v, const char *param)
{
	if (strlen(json_string_value(v)) == json_string_length(v))
		return 0;
	return BAD(p, param, "invalid_value",
		   "'%s' contains a NUL character (\\u0000), which this server does not accept",
		   param);
}

/* Copies the JSON string v (param names it) into *out / *len. */
static int take_text(struct parse *p, const json_t *v, const char *param, char **out, size_t *len)
{
	const char *s = json_string_value(v);
	size_t n = json_string_length(v);
	int rc = no_nul(p, v, param);
	if (rc)
		return rc;
	char *c = malloc(n + 1);
	if (!c)
		return api_error_set(p->err, 500, API_ERR_SERVER, NULL, NULL, "out of memory");
	memcpy(c, s, n + 1);
	*out = c;
	if (len)
		*len = n;
	return 0;
}

/* ---------------------------------------------------------------- messages */

static int parse_role(struct parse *p, const json_t *m, const char *param, enum api_role *role)
{
	static const struct {
		const char *name;
		enum api_role role;
	} roles[] = {
		{"system", API_ROLE_SYSTEM},       {"developer", API_ROLE_SYSTEM},
		{"user", API_ROLE_USER},           {"assistant", API_ROLE_ASSISTANT},
		{"tool", API_ROLE_TOOL},
	};
	const json_t *v = field(m, "role");
	if (!v)
		return BAD(p, param, "missing_required_parameter", "'%s' is required", param);
	const char *s = json_string_value(v);
	for (size_t i = 0; s && i < sizeof(roles) / sizeof(roles[0]); i++) {
		if (strcmp(s, roles[i].name) == 0 && strlen(roles[i].name) == json_string_length(v)) {
			*role = roles[i].role;
			return 0;
		}
	}
	return BAD(p, param, "invalid_value", "'%s' must be one of " ROLE_LIST, param);
}

/* content as an array of {"type": "text", "text": …} parts, concatenated. */
static int parse_parts(struct parse *p, const json_t *parts, const char *param,
		       struct api_message *msg)
{
	char sub[160];
	size_t n = json_array_size(parts), total = 0;
	if (n == 0)
		return BAD(p, param, "invalid_value", "'%s' must not be an empty array", param);
	for (size_t j = 0; j < n; j++) {
		const json_t *part = json_array_get(parts, j);
		if (!json_is_object(part)) {
			snprintf(sub, sizeof(sub), "%s[%zu]", param, j);
			return BAD(p, sub, "invalid_type", "'%s' must be an object", sub);
		}
		const char *type = json_string_value(field(part, "type"));
		if (!type || strcmp(type, "text") != 0) {
			snprintf(sub, sizeof(sub), "%s[%zu].type", param, j);
			return BAD(p, sub, "unsupported_value",
				   "'%s' must be 'text': this server reads text only", sub);
		}
		const json_t *text = field(part, "text");
		snprintf(sub, sizeof(sub), "%s[%zu].text", param, j);
		if (!json_is_string(text))
			return BAD(p, sub, "invalid_type", "'%s' must be a string", sub);
		int rc = no_nul(p, text, sub);
		if (rc)
			return rc;
		total += json_string_length(text); /* <= the body's size: no overflow */
	}
	char *c = malloc(total + 1);
	if (!c)
		return api_error_set(p->err, 500, API_ERR_SERVER, NULL, NULL, "out of memory");
	size_t at = 0;
	for (size_t j = 0; j < n; j++) {
		const json_t *text = json_object_get(json_array_get(parts, j), "text");
		memcpy(c + at, json_string_value(text), json_string_length(text));
		at += json_string_length(text);
	}
	c[at] = '\0';
	msg->content = c;
	msg->content_len = at;
	return 0;
}

static int parse_message(struct parse *p, const json_t *m, size_t i, struct api_message *msg)
{
	char param[64], sub[80];
	snprintf(param, sizeof(param), "messages[%zu]", i);
	if (!json_is_object(m))
		return BAD(p, param, "invalid_type", "'%s' must be an object with 'role' and 'content'",
			   param);
	snprintf(sub, sizeof(sub), "%s.role", param);
	int rc = parse_role(p, m, sub, &msg->role);
	if (rc)
		return rc;
	snprintf(sub, sizeof(sub), "%s.content", param);
	const json_t *content = field(m, "content");
	if (json_is_string(content))
		return take_text(p, content, sub, &msg->content, &msg->content_len);
	if (json_is_array(content))
		return parse_parts(p, content, sub, msg);
	if (content)
		return BAD(p, sub, "invalid_type",
			   "'%s' must be a string or an array of text parts", sub);
	if (msg->role != API_ROLE_ASSISTANT)
		return BAD(p, sub, "missing_required_parameter",
			   "'%s' is required for a %s message", sub, api_role_name(msg->role));
	/* An assistant turn may carry only tool_calls (ignored here): no text. */
	msg->content = calloc(1, 1);
	if (!msg->content)
		return api_error_set(p->err, 500, API_ERR_SERVER, NULL, NULL, "out of memory");
	return 0;
}

static int parse_messages(struct parse *p, const json_t *root)
{
	const json_t *v = field(root, "messages");
	if (!v)
		return BAD(p, "messages", "missing_required_parameter", "'messages' is required");
	if (!json_is_array(v))
		return BAD(p, "messages", "invalid_type", "'messages' must be an array of messages");
	size_t n = json_array_size(v);
	if (n == 0)
		return BAD(p, "messages", "invalid_value", "'messages' must hold at least one message");
	if (n > UINT32_MAX)
		return BAD(p, "messages", "invalid_value", "'messages' holds too many messages");
	p->req->messages = calloc(n, sizeof(*p->req->messages));
	if (!p->req->messages)
		return api_error_set(p->err, 500, API_ERR_SERVER, NULL, NULL, "out of memory");
	for (size_t i = 0; i < n; i++) {
		int rc = parse_message(p, json_array_get(v, i), i, &p->req->messages[i]);
		p->req->n_messages = (uint32_t)(i + 1); /* so api_request_free sees it */
		if (rc)
			return rc;
	}
	return 0;
}

static int parse_prompt(struct parse *p, const json_t *root)
{
	const json_t *v = field(root, "prompt");
	if (!v)
		return BAD(p, "prompt", "missing_required_parameter", "'prompt' is required");
	if (json_is_array(v) && json_array_size(v) > 1 && json_is_string(json_array_get(v, 0)))
		return BAD(p, "prompt", "unsupported_value",
			   "'prompt' holds %zu prompts; this server takes one per request",
			   json_array_size(v));
	if (json_is_array(v) && json_array_size(v) == 1 && json_is_string(json_array_get(v, 0)))
		return take_text(p, json_array_get(v, 0), "prompt[0]", &p->req->prompt,
				 &p->req->prompt_len);
	if (json_is_string(v))
		return take_text(p, v, "prompt", &p->req->prompt, &p->req->prompt_len);
	return BAD(p, "prompt", "invalid_type",
		   "'prompt' must be a string or an array of one string (token ids are not "
		   "supported)");
}

/* ---------------------------------------------------------------- sampling and limits */

static int parse_bool(struct parse *p, const json_t *obj, const char *key, const char *param,
		      bool *out)
{
	const json_t *v = field(obj, key);
	if (!v)
		return 0;
	if (!json_is_boolean(v))
		return BAD(p, param, "invalid_type", "'%s' must be a boolean", param);
	*out = json_is_true(v);
	return 0;
}

/* A number in [lo, hi] (lo excluded when open_lo); absent leaves *out. */
static int parse_number(struct parse *p, const json_t *root, const char *key, double lo,
			bool open_lo, double hi, const char *range, double *out)
{
	const json_t *v = field(root, key);
	if (!v)
		return 0;
	double x = json_number_value(v);
	if (!json_is_number(v) || (open_lo ? x <= lo : x < lo) || x > hi)
		return BAD(p, key, json_is_number(v) ? "invalid_value" : "invalid_type",
			   "'%s' must be a number %s", key, range);
	*out = x;
	return 0;
}

/* max_tokens and its newer name max_completion_tokens: one integer >= 1. */
static int parse_max_tokens(struct parse *p, const json_t *root, uint64_t limit)
{
	static const char *const keys[2] = {"max_tokens", "max_completion_tokens"};
	json_int_t got[2];
	bool has[2] = {false, false};
	for (int k = 0; k < 2; k++) {
		const json_t *v = field(root, keys[k]);
		if (!v)
			continue;
		if (!json_is_integer(v) || json_integer_value(v) < 1)
			return BAD(p, keys[k], json_is_integer(v) ? "invalid_value" : "invalid_type",
				   "'%s' must be an integer of at least 1", keys[k]);
		got[k] = json_integer_value(v);
		has[k] = true;
		if ((uint64_t)got[k] > limit)
			return BAD(p, keys[k], "invalid_value",
				   "'%s' is too large: %lld; this model's context holds %llu tokens",
				   keys[k], (long long)got[k], (unsigned long long)limit);
	}
	if (has[0] && has[1] && got[0] != got[1])
		return BAD(p, "max_tokens", "invalid_value",
			   "'max_tokens' (%lld) and 'max_completion_tokens' (%lld) name the same "
			   "limit; give one of them", (long long)got[0], (long long)got[1]);
	if (has[0] || has[1])
		p->req->max_tokens = (uint32_t)(has[0] ? got[0] : got[1]);
	return 0;
}

static int parse_seed(struct parse *p, const json_t *root)
{
	const json_t *v = field(root, "seed");
	if (!v)
		return 0;
	if (!json_is_integer(v))
		return BAD(p, "seed", "invalid_type", "'seed' must be an integer");
	p->req->has_seed = true;
	/* json_int_t is int64: negative seeds wrap modulo 2^64 (-1 -> UINT64_MAX). */
	p->req->seed = (uint64_t)(int64_t)json_integer_value(v);
	return 0;
}

static int parse_stop(struct parse *p, const json_t *root)
{
	static const char usage[] =
		"'stop' must be a string or an array of at most 4 non-empty strings";
	const json_t *v = field(root, "stop");
	struct api_request *r = p->req;
	if (!v)
		return 0;
	if (json_is_string(v)) {
		if (json_string_length(v) == 0)
			return BAD(p, "stop", "invalid_value", "'stop' must not be an empty string");
		r->n_stop = 1;
		return take_text(p, v, "stop", &r->stop[0], &r->stop_len[0]);
	}
	if (!json_is_array(v))
		return BAD(p, "stop", "invalid_type", usage);
	size_t n = json_array_size(v);
	if (n > API_STOP_MAX)
		return BAD(p, "stop", "invalid_value", "'stop' holds %zu strings; at most %d are allowed",
			   n, API_STOP_MAX);
	for (size_t i = 0; i < n; i++) {
		char param[16];
		const json_t *s = json_array_get(v, i);
		snprintf(param, sizeof(param), "stop[%zu]", i);
		if (!json_is_string(s) || json_string_length(s) == 0)
			return BAD(p, param, json_is_string(s) ? "invalid_value" : "invalid_type",
				   "'%s' must be a non-empty string", param);
		int rc = take_text(p, s, param, &r->stop[i], &r->stop_len[i]);
		if (rc)
			return rc;
		r->n_stop = (uint32_t)(i + 1);
	}
	return 0;
}

/* An integer field that must be 1 when given (n, best_of). */
static int parse_only_one(struct parse *p, const json_t *root, const char *key, const char *why)
{
	const json_t *v = field(root, key);
	if (!v)
		return 0;
	if (!json_is_integer(v))
		return BAD(p, key, "invalid_type", "'%s' must be an integer", key);
	if (json_integer_value(v) != 1)
		return BAD(p, key, "unsupported_value", "'%s' must be 1: %s", key, why);
	return 0;
}

/* presence_penalty, frequency_penalty: OpenAI's range is [-2, 2]; the engine
 * has no penalties, so only 0 (no effect) is accepted. */
static int parse_penalty(struct parse *p, const json_t *root, const char *key)
{
	double x = 0;
	int rc = parse_number(p, root, key, -2, false, 2, "between -2 and 2", &x);
	if (rc)
		return rc;
	if (x != 0)
		return BAD(p, key, "unsupported_value",
			   "'%s' is not supported by this server: only 0 is accepted", key);
	return 0;
}

/* A value that asks for nothing: false, 0, "", [], {} (JSON null never gets here). */
static bool is_default(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_FALSE: return true;
	case JSON_INTEGER: return json_integer_value(v) == 0;
	case JSON_REAL: return json_real_value(v) == 0;
	case JSON_STRING: return json_string_length(v) == 0;
	case JSON_ARRAY: return json_array_size(v) == 0;
	case JSON_OBJECT: return json_object_size(v) == 0;
	default: return false;
	}
}

/* OpenAI parameters that would change what comes back, which the engine
 * cannot honour: refused unless they hold their default, rather than ignored. */
static int parse_unsupported(struct parse *p, const json_t *root)
{
	static const struct {
		const char *key;
		bool chat, completions; /* where the parameter exists */
	} keys[] = {
		{"logprobs", true, true},     {"top_logprobs", true, false},
		{"echo", false, true},        {"suffix", false, true},
		{"tools", true, false},       {"functions", true, false},
		{"logit_bias", true, true},   {"response_format", true, false},
	};
	bool chat = p->ep == API_ENDPOINT_CHAT;
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		const char *key = keys[i].key;
		const json_t *v = field(root, key);
		if (!v || !(chat ? keys[i].chat : keys[i].completions) || is_default(v))
			continue;
		if (!strcmp(key, "response_format")) {
			const char *type = json_string_value(json_object_get(v, "type"));
			if (type && !strcmp(type, "text"))
				continue;
		}
		return BAD(p, key, "unsupported_parameter",
			   "'%s' is not supported by this server", key);
	}
	return 0;
}

/* ---------------------------------------------------------------- the body */

static int parse_model(struct parse *p, const json_t *root, const struct api_model_info *models,
		       size_t n_models, const struct api_model_info **found)
{
	const json_t *v = field(root, "model");
	if (!v)
		return BAD(p, "model", "missing_required_parameter",
			   "you must provide a model parameter");
	if (!json_is_string(v))
		return BAD(p, "model", "invalid_type", "'model' must be a string");
	if (json_string_length(v) == 0)
		return BAD(p, "model", "invalid_value", "'model' must not be empty");
	int rc = take_text(p, v, "model", &p->req->model, NULL);
	if (rc)
		return rc;
	p->req->model_index = -1;
	for (size_t i = 0; i < n_models && i < INT32_MAX; i++) {
		if (models[i].id && strcmp(models[i].id, p->req->model) == 0) {
			p->req->model_index = (int32_t)i;
			*found = &models[i];
		}
	}
	return 0;
}

static int parse_body(struct parse *p, const json_t *root, const struct api_model_info *models,
		      size_t n_models)
{
	struct api_request *r = p->req;
	const struct api_model_info *model = NULL;
	int rc = parse_model(p, root, models, n_models, &model);
	if (!rc)
		rc = p->ep == API_ENDPOINT_CHAT ? parse_messages(p, root) : parse_prompt(p, root);
	if (!rc)
		rc = parse_bool(p, root, "stream", "stream", &r->stream);
	const json_t *so = field(root, "stream_options");
	if (!rc && so && !json_is_object(so))
		rc = BAD(p, "stream_options", "invalid_type", "'stream_options' must be an object");
	if (!rc && so && !r->stream)
		rc = BAD(p, "stream_options", "invalid_value",
			 "'stream_options' is only allowed when 'stream' is true");
	if (!rc && so)
		rc = parse_bool(p, so, "include_usage", "stream_options.include_usage",
				&r->include_usage);
	if (!rc)
		rc = parse_max_tokens(p, root, model && model->max_context ? model->max_context
									   : UINT32_MAX);
	if (!rc)
		rc = parse_number(p, root, "temperature", 0, false, 2, "between 0 and 2",
				  &r->temperature);
	if (!rc)
		rc = parse_number(p, root, "top_p", 0, true, 1,
				  "greater than 0 and at most 1", &r->top_p);
	if (!rc)
		rc = parse_seed(p, root);
	if (!rc)
		rc = parse_stop(p, root);
	if (!rc)
		rc = parse_only_one(p, root, "n", "this server returns one choice per request");
	if (!rc && p->ep == API_ENDPOINT_COMPLETIONS)
		rc = parse_only_one(p, root, "best_of", "this server generates one sequence per "
							 "request");
	if (!rc)
		rc = parse_penalty(p, root, "presence_penalty");
	if (!rc)
		rc = parse_penalty(p, root, "frequency_penalty");
	if (!rc)
		rc = parse_unsupported(p, root);
	if (!rc && n_models && !model)
		rc = api_error_set(p->err, 404, API_ERR_INVALID_REQUEST, "model", "model_not_found",
				   "The model `%.*s` does not exist or you do not have access to it.",
				   shown(r->model, 200), r->model);
	return rc;
}

/* The error for a body jansson refused: bad text named by its parameter,
 * a number out of range named likewise, anything else as jansson says. */
static int json_failure(struct parse *p, const void *body, size_t n, const json_error_t *je)
{
	/* jansson leaves the error empty when its first allocation fails. */
	if (json_error_code(je) == json_error_out_of_memory || !je->text[0])
		return api_error_set(p->err, 500, API_ERR_SERVER, NULL, NULL,
				     "The server ran out of memory reading the request");
	struct api_scan sc;
	api_json_scan(body, n, (size_t)(je->position > 0 ? je->position : 0), &sc);
	const char *param = sc.path[0] ? sc.path : NULL;
	switch (sc.what) {
	case API_SCAN_BAD_UTF8:
		if (sc.in_key)
			return BAD(p, param, "invalid_encoding",
				   "A key in %s%s%s is not valid UTF-8 (byte 0x%02x at offset %zu)",
				   param ? "'" : "", param ? param : "the request body",
				   param ? "'" : "", sc.byte, sc.off);
		return BAD(p, param, "invalid_encoding",
			   "%s%s%s is not valid UTF-8 (byte 0x%02x at offset %zu)",
			   param ? "'" : "", param ? param : "The request body", param ? "'" : "",
			   sc.byte, sc.off);
	case API_SCAN_BAD_ESCAPE:
		return BAD(p, param, "invalid_encoding",
			   "%s%s%s%s holds the escape %s, a lone UTF-16 surrogate, which is not a "
			   "character (offset %zu)", sc.in_key ? "A key in " : "",
			   param ? "'" : "", param ? param : "the request body", param ? "'" : "",
			   sc.escape, sc.off);
	case API_SCAN_AT:
		if (json_error_code(je) == json_error_numeric_overflow && param)
			return BAD(p, param, "invalid_value", "'%s' is out of range: %s", param,
				   je->text);
		break;
	case API_SCAN_NONE:
		break;
	}
	return BAD(p, NULL, "invalid_json",
		   "We could not parse the JSON body of your request: %s (line %d, column %d)",
		   je->text, je->line, je->column);
}

int api_request_parse(enum api_endpoint ep, const void *body, size_t n,
		      const struct api_model_info *models, size_t n_models,
		      struct api_request *out, struct api_error *err)
{
	struct parse p = {.ep = ep, .req = out, .err = err};
	if (out) {
		memset(out, 0, sizeof(*out));
		out->model_index = -1;
	}
	if (!out || (ep != API_ENDPOINT_CHAT && ep != API_ENDPOINT_COMPLETIONS) || (!body && n) ||
	    (!models && n_models)) {
		/* The server's mistake, not the client's. */
		api_error_set(err, 500, API_ERR_SERVER, NULL, NULL,
			      "api_request_parse: no request, no body or not a completion endpoint");
		return -EINVAL;
	}
	if (n > API_BODY_MAX)
		return api_error_too_large(err, n);
	out->endpoint = ep;
	out->temperature = 1;
	out->top_p = 1;
	out->max_tokens = ep == API_ENDPOINT_COMPLETIONS ? 16 : 0;

	json_error_t je;
	json_t *root = json_loadb(n ? body : "", n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
	int rc;
	if (!root)
		rc = json_failure(&p, n ? body : "", n, &je);
	else if (!json_is_object(root))
		rc = BAD(&p, NULL, "invalid_json",
			 "The request body must be a JSON object, not %s",
			 json_is_array(root) ? "an array" : "a single value");
	else
		rc = parse_body(&p, root, models, n_models);
	json_decref(root);
	if (rc) {
		api_request_free(out);
		out->model_index = -1;
	}
	return rc;
}

void api_request_free(struct api_request *req)
{
	if (!req)
		return;
	free(req->model);
	for (uint32_t i = 0; req->messages && i < req->n_messages; i++)
		free(req->messages[i].content);
	free(req->messages);
	free(req->prompt);
	for (uint32_t i = 0; i < req->n_stop && i < API_STOP_MAX; i++)
		free(req->stop[i]);
	memset(req, 0, sizeof(*req));
}
