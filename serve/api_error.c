/* api_error.c — the OpenAI error object: filling struct api_error, the
 * ready-made errors of the HTTP layer, and its JSON. */
#include "api_impl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "layout.h" /* k2_utf8_valid */

/* Cuts s (NUL-terminated, at most cap - 1 bytes) back to its longest valid
 * UTF-8 prefix, so vsnprintf's truncation never leaves half a character. */
static void cut_to_utf8(char *s)
{
	size_t n = strlen(s), bad;
	if (!k2_utf8_valid(s, n, &bad) && bad + 4 >= n)
		s[bad] = '\0';
}

static int status_errno(int status)
{
	switch (status) {
	case 400: return -EINVAL;
	case 404: return -ENOENT;
	case 405: return -EPERM;
	case 413: return -E2BIG;
	case 429:
	case 503: return -EBUSY;
	case 500: return -ENOMEM;
	default: return -EIO;
	}
}

int api_error_set(struct api_error *err, int status, const char *type, const char *param,
		  const char *code, const char *fmt, ...)
{
	if (err) {
		err->status = status;
		err->type = type ? type : API_ERR_INVALID_REQUEST;
		err->code = code;
		snprintf(err->param, sizeof(err->param), "%s", param ? param : "");
		cut_to_utf8(err->param);
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->message, sizeof(err->message), fmt, ap);
		va_end(ap);
		cut_to_utf8(err->message);
	}
	return status_errno(status);
}

/* Copies s into buf[n] for quoting in a message: at most n - 1 bytes, printable
 * ASCII kept, anything else as '?', so the message stays short and valid. */
static const char *quote_bytes(const char *s, char *buf, size_t n)
{
	size_t i = 0;
	for (; s && s[i] && i + 1 < n; i++) {
		unsigned char c = (unsigned char)s[i];
		buf[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	buf[i] = '\0';
	return buf;
}

int api_error_route(struct api_error *err, const char *method, const char *path)
{
	char m[16], p[200];
	return api_error_set(err, 404, API_ERR_INVALID_REQUEST, NULL, NULL, "Invalid URL (%s %s)",
			     quote_bytes(method, m, sizeof(m)), quote_bytes(path, p, sizeof(p)));
}

int api_error_method(struct api_error *err, const char *method, const char *path)
{
	char m[16], p[200];
	return api_error_set(err, 405, API_ERR_INVALID_REQUEST, NULL, "method_not_allowed",
			     "Method %s is not allowed on %s", quote_bytes(method, m, sizeof(m)),
			     quote_bytes(path, p, sizeof(p)));
}

int api_error_too_large(struct api_error *err, uint64_t body_bytes)
{
	return api_error_set(err, 413, API_ERR_INVALID_REQUEST, NULL, "request_too_large",
			     "The request body is %llu bytes; this server accepts at most %u",
			     (unsigned long long)body_bytes, API_BODY_MAX);
}

int api_error_context_length(struct api_error *err, enum api_endpoint ep, uint32_t max_context,
			     uint32_t prompt_tokens, uint32_t max_tokens)
{
	const char *what = ep == API_ENDPOINT_CHAT ? "messages" : "prompt";
	return api_error_set(err, 400, API_ERR_INVALID_REQUEST, what, "context_length_exceeded",
			     "This model's maximum context length is %u tokens. However, you "
			     "requested %llu tokens (%u in the %s, %u in the completion). Please "
			     "reduce the length of the %s or completion.",
			     max_context, (unsigned long long)prompt_tokens + max_tokens,
			     prompt_tokens, what, max_tokens, what);
}

int api_error_busy(struct api_error *err)
{
	return api_error_set(err, 429, API_ERR_REQUESTS, NULL, "rate_limit_exceeded",
			     "Too many requests: every slot is taken and the queue is full; "
			     "retry later");
}

static json_t *error_object(const struct api_error *err)
{
	json_t *o = json_object(), *root = json_object();
	if (!o || !root)
		goto out_free;
	if (api_json_put(o, "message", api_json_cstr(err->message)) ||
	    api_json_put(o, "type", api_json_cstr(err->type ? err->type : API_ERR_SERVER)) ||
	    api_json_put(o, "param", api_json_cstr(err->param[0] ? err->param : NULL)) ||
	    api_json_put(o, "code", api_json_cstr(err->code)))
		goto out_free;
	if (json_object_set_new(root, "error", o)) {
		json_decref(root);
		return NULL;
	}
	return root;
out_free:
	json_decref(o);
	json_decref(root);
	return NULL;
}

char *api_error_json(const struct api_error *err, size_t *len)
{
	return err ? api_json_finish(error_object(err), false, len) : NULL;
}

char *api_sse_error(const struct api_error *err, size_t *len)
{
	return err ? api_json_finish(error_object(err), true, len) : NULL;
}
