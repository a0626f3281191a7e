/* api.h — k2serve's OpenAI-compatible API as pure functions over bytes and
 * structs: no sockets, no engine, no clock, no globals. The HTTP layer hands
 * request bodies in and sends the strings that come back out; the scheduler
 * reads the parsed request and fills the metrics.
 *
 *   api_error.c     the error object ({"error":{message,type,param,code}})
 *   api_json.c      JSON from untrusted bytes, compact dumps, SSE framing (internal)
 *   api_jsonscan.c  locating bad text in a JSON body jansson refused (internal)
 *   api_request.c   POST /v1/chat/completions and /v1/completions bodies
 *   api_response.c  completion objects, SSE chunks, /v1/models, /health
 *   api_stop.c      the stop-sequence matcher for streamed text
 *   api_metrics.c   counters and their Prometheus text exposition
 *
 * Conventions: functions that can fail return 0 or -errno; builders of JSON
 * return a malloc'd NUL-terminated string (the caller frees it) and NULL only
 * when memory runs out. Text put into JSON is repaired if it is not valid
 * UTF-8 (each bad byte becomes U+FFFD), so no builder fails on model output.
 * Nothing here exits, aborts or asserts on input; every function is
 * thread-safe on distinct arguments (the metrics helpers also on shared ones). */
#ifndef K2_SERVE_API_H
#define K2_SERVE_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The largest request body accepted. The HTTP layer checks it while the body
 * arrives (413 via api_error_too_large); api_request_parse checks it again. */
#define API_BODY_MAX (1u << 20)
/* At most this many stop strings per request (OpenAI's limit). */
#define API_STOP_MAX 4
/* Room for a completion id from api_make_id, NUL included. */
#define API_ID_MAX 48

/* The routes, for parsing and for the request counters. */
enum api_endpoint {
	API_ENDPOINT_CHAT = 0,     /* POST /v1/chat/completions */
	API_ENDPOINT_COMPLETIONS,  /* POST /v1/completions */
	API_ENDPOINT_MODELS,       /* GET /v1/models, GET /v1/models/{id} */
	API_ENDPOINT_HEALTH,       /* GET /health */
	API_ENDPOINT_METRICS,      /* GET /metrics */
	API_ENDPOINT_OTHER,        /* anything else (404, 405) */
	API_ENDPOINT_COUNT
};

/* "chat_completions", "completions", "models", "health", "metrics", "other"
 * (the metrics label); NULL out of range. */
const char *api_endpoint_name(enum api_endpoint ep);

/* ---------------------------------------------------------------- errors */

/* error.type values (OpenAI's). */
/* error.type values, as OpenAI uses them: invalid_request_error also for an
 * unknown model or route (with status 404), server_error for 5xx. */
#define API_ERR_INVALID_REQUEST "invalid_request_error"
#define API_ERR_SERVER "server_error"
#define API_ERR_REQUESTS "requests" /* 429: too many requests */

/* An error reply: the HTTP status and the OpenAI error object. */
struct api_error {
	int status;          /* HTTP status: 400, 404, 405, 413, 429, 500, 503 … */
	const char *type;    /* a static string, API_ERR_* */
	const char *code;    /* a static string ("invalid_type", "model_not_found" …) or NULL */
	char param[128];     /* the offending parameter ("messages[2].role"); "" = null */
	char message[512];   /* one sentence naming the parameter and what was expected */
};

/* Fills err (if non-NULL; param and code may be NULL) and returns the -errno
 * that goes with the status: 400 -EINVAL, 404 -ENOENT, 405 -EPERM, 413
 * -E2BIG, 429 and 503 -EBUSY, 500 -ENOMEM, any other -EIO. A message longer
 * than the field is cut at a character boundary. */
int api_error_set(struct api_error *err, int status, const char *type, const char *param,
		  const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Ready-made errors (each returns api_error_set's value):
 *   _route:  404 "Invalid URL (POST /v1/foo)", as OpenAI words it;
 *   _method: 405 "Method GET is not allowed on /v1/completions";
 *   _too_large: 413 naming the body's size and API_BODY_MAX;
 *   _context_length: 400, code "context_length_exceeded", param "messages" (chat)
 *            or "prompt": the prompt's tokens plus max_tokens exceed the model's
 *            context (OpenAI's sentence, with the numbers);
 *   _busy:   429 "requests", code "rate_limit_exceeded": every slot is taken
 *            and the queue is full (send a Retry-After header with it).
 * method and path may hold any bytes (they are quoted with bad UTF-8 repaired). */
int api_error_route(struct api_error *err, const char *method, const char *path);
int api_error_method(struct api_error *err, const char *method, const char *path);
int api_error_too_large(struct api_error *err, uint64_t body_bytes);
int api_error_context_length(struct api_error *err, enum api_endpoint ep, uint32_t max_context,
			     uint32_t prompt_tokens, uint32_t max_tokens);
int api_error_busy(struct api_error *err);

/* {"error":{"message":…,"type":…,"param":…|null,"code":…|null}}: malloc'd,
 * *len (if non-NULL) its length; NULL when memory runs out, for which
 * API_ERROR_JSON_OOM is the reply to send. */
char *api_error_json(const struct api_error *err, size_t *len);
#define API_ERROR_JSON_OOM                                                                 \
	"{\"error\":{\"message\":\"the server ran out of memory\",\"type\":\"server_error\"," \
	"\"param\":null,\"code\":null}}"

/* ---------------------------------------------------------------- requests */

enum api_role {
	API_ROLE_SYSTEM = 0,  /* "system", and "developer" (OpenAI's newer name for it) */
	API_ROLE_USER,
	API_ROLE_ASSISTANT,
	API_ROLE_TOOL,
	API_ROLE_COUNT
};

/* "system", "user", "assistant", "tool"; NULL out of range. */
const char *api_role_name(enum api_role role);

/* A model the server serves: for the model check of api_request_parse and
 * for /v1/models. */
struct api_model_info {
	const char *id;        /* what clients pass as "model" */
	int64_t created;       /* unix seconds */
	const char *owned_by;  /* NULL: "k2serve" */
	uint32_t max_context;  /* context window in tokens; 0 = unknown (max_tokens unchecked) */
};

struct api_message {
	enum api_role role;
	char *content;       /* NUL-terminated UTF-8 with no NUL inside: the string, or
	                        the text parts concatenated with nothing between;
	                        "" for an assistant message without content */
	size_t content_len;  /* strlen(content) */
};

/* A parsed POST body. Every string is valid UTF-8 without NUL characters and
 * owned by the request (freed by api_request_free). */
struct api_request {
	enum api_endpoint endpoint;    /* API_ENDPOINT_CHAT or API_ENDPOINT_COMPLETIONS */
	char *model;                   /* non-empty */
	int32_t model_index;           /* index into the models given to the parser, -1 when
	                                  none were given */
	struct api_message *messages;  /* [n_messages] (chat; n_messages >= 1), else NULL */
	uint32_t n_messages;
	char *prompt;                  /* completions only (may be ""), else NULL */
	size_t prompt_len;
	bool stream;
	bool include_usage;            /* stream_options.include_usage */
	uint32_t max_tokens;           /* max_tokens or max_completion_tokens, >= 1; when
	                                  absent: 16 for completions (OpenAI's default), 0
	                                  for chat, meaning "up to the context's end" */
	double temperature;            /* [0, 2], default 1; 0 means greedy */
	double top_p;                  /* (0, 1], default 1 */
	bool has_seed;
	uint64_t seed;                 /* the JSON integer as int64, converted to uint64
	                                  modulo 2^64 (-1 -> 0xffffffffffffffff) */
	uint32_t n_stop;
	char *stop[API_STOP_MAX];      /* [n_stop], each non-empty */
	size_t stop_len[API_STOP_MAX];
};

/* Parses and validates the body of a POST to `ep` (API_ENDPOINT_CHAT or
 * API_ENDPOINT_COMPLETIONS). When n_models > 0, "model" must name one of
 * models[] (else 404, code "model_not_found") and max_tokens may not exceed its
 * max_context; with n_models == 0 any model is accepted.
 *
 * Returns 0 with *out filled (release with api_request_free), or -errno with
 * *out zeroed (model_index -1) and err filled: -EINVAL (400) for a body that is not a JSON
 * object, text that is not UTF-8 (raw bytes or \u escapes of lone surrogates;
 * param names the string, as "messages[1].content"), a NUL character (\u0000)
 * in a string the server uses, and every missing, mistyped or out-of-range
 * field; -ENOENT (404) for an unknown model; -E2BIG (413) for n > API_BODY_MAX;
 * -ENOMEM (500), and -EINVAL with status 500 for a call this function cannot
 * serve (NULL out, another endpoint, NULL body with n > 0). Unknown fields are ignored, as are OpenAI fields that change
 * nothing here ("user", "tool_choice", "metadata" …); OpenAI fields this server
 * cannot honour are 400 code "unsupported_parameter" unless they hold their
 * default (n and best_of other than 1, non-zero presence_penalty or
 * frequency_penalty, logprobs, top_logprobs, echo, suffix, tools, functions,
 * logit_bias, response_format other than {"type":"text"}). A JSON null is the
 * same as an absent field. Reads only body[0..n). */
int api_request_parse(enum api_endpoint ep, const void *body, size_t n,
		      const struct api_model_info *models, size_t n_models,
		      struct api_request *out, struct api_error *err);

/* Frees what the request owns and zeroes it; NULL is fine. */
void api_request_free(struct api_request *req);

/* ---------------------------------------------------------------- responses */

enum api_finish {
	API_FINISH_NONE = 0,  /* still running: finish_reason null */
	API_FINISH_STOP,      /* end of sequence or a stop string */
	API_FINISH_LENGTH,    /* max_tokens or the context's end */
	API_FINISH_COUNT
};

/* "stop", "length"; NULL for API_FINISH_NONE and out of range. */
const char *api_finish_name(enum api_finish f);

/* Writes "chatcmpl-" (chat) or "cmpl-" (any other endpoint) and 24 hex digits
 * derived from seq (a bijective mix: distinct seqs give distinct ids) into
 * buf[n]. Returns 0, or -ENOSPC when n < API_ID_MAX. */
int api_make_id(enum api_endpoint ep, uint64_t seq, char *buf, size_t n);

/* A finished, non-streamed completion. */
struct api_completion {
	enum api_endpoint endpoint;  /* CHAT: "chat.completion", else "text_completion" */
	const char *id;              /* from api_make_id */
	int64_t created;             /* unix seconds */
	const char *model;
	const char *text;            /* [text_len] the generated text, stop string cut off */
	size_t text_len;
	enum api_finish finish;
	uint32_t prompt_tokens, completion_tokens;
};

/* The chat.completion object ({id, object, created, model, choices: [{index: 0,
 * message: {role: "assistant", content}, logprobs: null, finish_reason}],
 * usage: {prompt_tokens, completion_tokens, total_tokens}}) or the
 * text_completion object (choices [{text, index, logprobs, finish_reason}]).
 * Malloc'd, *len its length (if non-NULL); NULL when memory runs out. */
char *api_completion_json(const struct api_completion *c, size_t *len);

/* A streamed completion: what every chunk repeats. */
struct api_stream {
	enum api_endpoint endpoint;  /* CHAT: "chat.completion.chunk", else "text_completion" */
	const char *id;
	int64_t created;
	const char *model;
	bool include_usage;          /* every chunk carries "usage": null, and the
	                                stream ends with api_sse_usage's chunk */
};

/* Server-sent events, each one "data: {json}\n\n", malloc'd, *len its length
 * (if non-NULL), NULL when memory runs out. A stream is
 *   api_sse_start, api_sse_text…, api_sse_finish, [api_sse_usage], API_SSE_DONE.
 * _start: chat: delta {"role":"assistant","content":""}; completions have no
 *         such chunk: an empty string ("", *len 0).
 * _text:  delta {"content": text} (chat) or "text": text, finish_reason null.
 * _finish: delta {} (chat) or "text": "", finish_reason f.
 * _usage: choices [] and usage {prompt_tokens, completion_tokens, total_tokens}.
 * _error: {"error": {…}} for a failure after the stream began (the status line
 *         has gone out); send API_SSE_DONE after it. */
char *api_sse_start(const struct api_stream *s, size_t *len);
char *api_sse_text(const struct api_stream *s, const char *text, size_t text_len, size_t *len);
char *api_sse_finish(const struct api_stream *s, enum api_finish f, size_t *len);
char *api_sse_usage(const struct api_stream *s, uint32_t prompt_tokens,
		    uint32_t completion_tokens, size_t *len);
char *api_sse_error(const struct api_error *err, size_t *len);
#define API_SSE_DONE "data: [DONE]\n\n"

/* GET /v1/models: {"object":"list","data":[{id, object:"model", created,
 * owned_by}, …]}; and GET /v1/models/{id}: the one object. Malloc'd, NULL when
 * memory runs out. */
char *api_models_json(const struct api_model_info *models, size_t n, size_t *len);
char *api_model_json(const struct api_model_info *model, size_t *len);

/* What GET /health reports. */
struct api_health {
	const char *status;        /* "ok", "loading", … */
	const char *model;         /* NULL: omitted */
	double uptime_s;
	uint32_t active_requests, queued_requests;
};

/* {"status":…,"model":…,"uptime_s":…,"requests":{"active":…,"queued":…}}.
 * Malloc'd, NULL when memory runs out. */
char *api_health_json(const struct api_health *h, size_t *len);

/* ---------------------------------------------------------------- stop strings */

/* The stop-sequence matcher of one streamed completion. Text goes in as the
 * decoder produces it, in pieces of any size; what comes out may be sent at
 * once. Text that could be the start of a stop string is held back until the
 * next piece settles it; the stop string and everything after it are never
 * sent. The first stop string to be completed in the text wins (of two
 * completed at the same byte, the longer), so what is sent never contains a
 * whole stop string. Matching is on bytes; since stop strings are valid
 * UTF-8, text that is valid UTF-8 stays so when cut. */
typedef struct api_stop api_stop;

/* A matcher for stops[0..n) (lens[i] bytes each; empty ones are ignored; n may
 * be 0, and the matcher then passes every piece through). The strings are
 * copied. Returns 0 and *out (free with api_stop_free), -EINVAL for
 * n > API_STOP_MAX, or -ENOMEM. */
int api_stop_new(const char *const *stops, const size_t *lens, uint32_t n, api_stop **out);
void api_stop_free(api_stop *m);

/* Feeds one piece. *emit and *emit_len get the text that can be sent now
 * (possibly empty), valid until the next call on m. Returns 1 when a stop
 * string has been completed (then *emit is the last text before it, and every
 * later feed gives nothing), 0 when not, -ENOMEM (nothing consumed). */
int api_stop_feed(api_stop *m, const char *piece, size_t len, const char **emit,
		  size_t *emit_len);

/* Generation ended without a stop string: the held-back text, to be sent
 * (valid until the next call on m); the matcher then starts on a new text.
 * Returns 0 (also after a stop, with nothing). */
int api_stop_flush(api_stop *m, const char **emit, size_t *emit_len);

/* ---------------------------------------------------------------- metrics */

/* Upper bounds (seconds) of the time-to-first-token histogram's buckets;
 * a +Inf bucket follows. */
#define API_TTFT_BUCKETS 12
extern const double api_ttft_bounds[API_TTFT_BUCKETS];
/* Expert tiers that can be named in the metrics. */
#define API_TIERS_MAX 4

enum api_status_class {
	API_STATUS_2XX = 0,
	API_STATUS_4XX,
	API_STATUS_5XX,
	API_STATUS_OTHER,  /* 1xx, 3xx and anything outside 100..599 */
	API_STATUS_COUNT
};

/* The server's counters. Zero-initialise one per server. The fields marked
 * (add) accumulate: update them with the api_metrics_* helpers, which use
 * relaxed atomic adds, from any thread. The fields marked (set) mirror the
 * engine's own counters and gauges: the server stores them (e.g. from
 * inf_engine_tier_stats) just before calling api_metrics_text, or with
 * __atomic_store_n whenever it likes. api_metrics_text reads every field with
 * relaxed atomic loads, so it needs no lock; a scrape may see one request's
 * counters half-updated, as Prometheus allows. */
struct api_metrics {
	uint64_t requests[API_ENDPOINT_COUNT][API_STATUS_COUNT]; /* (add) replies sent */
	uint64_t prompt_tokens;       /* (add) tokens of prompts processed, or (set)
	                                 from a running total kept elsewhere */
	uint64_t generated_tokens;    /* (add) tokens generated, or (set) likewise */
	uint64_t decode_ns;           /* (add) time in decode steps, nanoseconds */
	uint64_t ttft_bucket[API_TTFT_BUCKETS + 1]; /* (add) per bucket, not cumulative;
	                                  the last is (bounds[11], +Inf); their sum is
	                                  the histogram's count */
	uint64_t ttft_sum_ns;         /* (add) */
	uint32_t n_tiers;             /* (set) tiers in use, <= API_TIERS_MAX */
	struct {
		char name[16];        /* (set) "device", "ram" … (inf_tier_name) */
		uint64_t hits, misses; /* (set) cumulative */
	} tier[API_TIERS_MAX];
	uint64_t prefetch_issued;     /* (set) cumulative */
	uint64_t prefetch_useful;     /* (set) cumulative */
	uint64_t bytes_read;          /* (set) cumulative bytes read from the mount */
	uint64_t active_requests;     /* (set) gauge: requests decoding now */
	uint64_t queued_requests;     /* (set) gauge: requests waiting for a slot */
	uint64_t tokens_per_s_milli;  /* (set) gauge: tokens generated per second over
	                                 the last seconds, times 1000 */
};

enum api_status_class api_status_class(int http_status);

/* Counts one reply of `http_status` on ep (out-of-range ep counts as OTHER). */
void api_metrics_request(struct api_metrics *m, enum api_endpoint ep, int http_status);
/* Adds a finished request's token counts and its decode time. */
void api_metrics_tokens(struct api_metrics *m, uint64_t prompt_tokens,
			uint64_t generated_tokens, uint64_t decode_ns);
/* Records one time to first token (negative or NaN counts as 0). */
void api_metrics_ttft(struct api_metrics *m, double seconds);

/* The Prometheus text exposition (format 0.0.4: serve it as
 * "text/plain; version=0.0.4; charset=utf-8"): one HELP and one TYPE line per
 * family, counters named *_total, a histogram k2serve_time_to_first_token_seconds
 * with cumulative buckets, _sum and _count. Tier names are escaped as label
 * values. Malloc'd, *len its length (if non-NULL); NULL when memory runs out. */
char *api_metrics_text(const struct api_metrics *m, size_t *len);

#endif /* K2_SERVE_API_H */
