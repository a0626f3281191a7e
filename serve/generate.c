/* generate.c — POST /v1/chat/completions and /v1/completions (contract in
 * server.h). The body is parsed (api_request_parse), the prompt becomes ids
 * (a chat through the model's template, a completion's text with BOS as
 * infer --prompt does), a job goes to the scheduler, and the connection's
 * thread waits on it: for the whole text (one JSON reply) or streaming each
 * piece as a server-sent event. Between pieces it checks that the client is
 * still there; when it is not, the job is cancelled and its sequence freed. */
#include "server.h"

#include "chat_session.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char JSON[] = "application/json";

/* How long a waiting thread sleeps between checks of its client. */
#define POLL_MS 50

/* The prompt's ids; 0 or -errno with err filled (400 for what the template or
 * the tokenizer refuses, 500 when memory runs out). */
static int prompt_ids(struct srv_server *s, const struct api_request *q, int32_t **ids,
		      size_t *n, struct api_error *err)
{
	k2_err e = {{0}};
	int rc;
	if (q->endpoint == API_ENDPOINT_COMPLETIONS) {
		rc = inf_tok_encode_prompt(s->tok, q->prompt, q->prompt_len, ids, n, &e);
	} else {
		if (!s->chat)
			return api_error_set(err, 400, API_ERR_INVALID_REQUEST, "messages",
					     "no_chat_template", "This model has no chat format "
					     "k2serve knows: %s; use /v1/completions",
					     s->chat_missing ? s->chat_missing : "none was found");
		inf_chat_msg *msgs = calloc(q->n_messages, sizeof(*msgs));
		if (!msgs)
			return api_error_set(err, 500, API_ERR_SERVER, NULL, NULL, "out of memory");
		for (uint32_t i = 0; i < q->n_messages; i++)
			msgs[i] = (inf_chat_msg){api_role_name(q->messages[i].role),
						 q->messages[i].content};
		rc = inf_chat_encode(s->chat, s->tok, s->bos, msgs, q->n_messages, ids, n, &e);
		free(msgs);
	}
	if (rc == -ENOMEM)
		return api_error_set(err, 500, API_ERR_SERVER, NULL, NULL, "out of memory");
	if (rc < 0)
		return api_error_set(err, 400, API_ERR_INVALID_REQUEST,
				     q->endpoint == API_ENDPOINT_CHAT ? "messages" : "prompt", NULL,
				     "%s", e.msg);
	if (*n == 0) {
		free(*ids);
		return api_error_set(err, 400, API_ERR_INVALID_REQUEST, "prompt", NULL,
				     "The prompt encodes to no tokens");
	}
	return 0;
}

/* One line per finished request, for a person watching the server. */
static void log_request(const struct srv_server *s, const struct api_request *q, int status,
			const struct srv_job_status *st, const char *how)
{
	if (!s->verbose)
		return;
	double rate = st->decode_s > 0 && st->completion_tokens > 1
			      ? (st->completion_tokens - 1) / st->decode_s
			      : 0;
	fprintf(stderr,
		"k2serve: %s %d %s: prompt %" PRIu32 " tokens, %" PRIu32
		" generated, first token after %.3f s, %.1f tokens/s\n",
		q->endpoint == API_ENDPOINT_CHAT ? "chat" : "completion", status, how,
		st->prompt_tokens, st->completion_tokens, st->ttft_s, rate);
}

/* A finished request's decode time and time to first token (the token
 * counters are the scheduler's running totals, srv_sched_metrics). Also for
 * requests whose client went away. */
static void count_tokens(struct srv_server *s, const struct srv_job_status *st)
{
	api_metrics_tokens(&s->metrics, 0, 0, (uint64_t)(st->decode_s * 1e9));
	if (st->completion_tokens)
		api_metrics_ttft(&s->metrics, st->ttft_s);
}

/* The error of a job that did not end as DONE. */
static void job_error(const struct srv_job_status *st, struct api_error *err)
{
	if (st->state == SRV_JOB_SHUTDOWN)
		api_error_set(err, 503, API_ERR_SERVER, NULL, "server_shutting_down",
			      "The server is shutting down");
	else
		api_error_set(err, 500, API_ERR_SERVER, NULL, NULL, "Generation failed: %s",
			      st->message[0] ? st->message : "unknown error");
}

/* ---------------------------------------------------------------- whole replies */

static enum MHD_Result reply_whole(struct srv_server *s, struct MHD_Connection *c,
				   const struct api_request *q, srv_job *job)
{
	char *text = NULL;
	size_t len = 0, cap = 0;
	struct srv_job_status st;
	for (;;) {
		char *piece;
		size_t n;
		if (srv_job_poll(job, POLL_MS, &piece, &n, &st) < 0)
			break;
		if (piece) {
			if (len + n + 1 > cap) {
				cap = (len + n + 1) * 2;
				char *p = realloc(text, cap);
				if (!p) {
					free(piece);
					break;
				}
				text = p;
			}
			memcpy(text + len, piece, n);
			len += n;
			text[len] = 0;
			free(piece);
		}
		if (srv_job_ended(st.state))
			break;
		if (srv_client_gone(c)) {
			srv_job_cancel(job);
			count_tokens(s, &st);
			log_request(s, q, 499, &st, "client gone");
			free(text);
			return MHD_NO;
		}
	}
	if (!srv_job_ended(st.state)) { /* out of memory above */
		free(text);
		return srv_reply(s, c, q->endpoint, 500, JSON, NULL, 0);
	}
	count_tokens(s, &st);
	if (st.state != SRV_JOB_DONE) {
		struct api_error err;
		job_error(&st, &err);
		free(text);
		log_request(s, q, err.status, &st, "failed");
		return srv_reply_error(s, c, q->endpoint, &err);
	}
	char id[API_ID_MAX];
	api_make_id(q->endpoint, __atomic_fetch_add(&s->next_id, 1, __ATOMIC_RELAXED), id,
		    sizeof(id));
	struct api_completion done = {
		.endpoint = q->endpoint,
		.id = id,
		.created = (int64_t)time(NULL),
		.model = s->model.id,
		.text = text ? text : "",
		.text_len = len,
		.finish = st.finish,
		.prompt_tokens = st.prompt_tokens,
		.completion_tokens = st.completion_tokens,
	};
	size_t blen = 0;
	char *body = api_completion_json(&done, &blen);
	free(text);
	log_request(s, q, 200, &st, api_finish_name(st.finish));
	return srv_reply(s, c, q->endpoint, 200, JSON, body, blen);
}

/* ---------------------------------------------------------------- streams */

struct stream {
	struct srv_server *s;
	struct MHD_Connection *c;
	srv_job *job;
	struct api_request q;      /* for the log line */
	char id[API_ID_MAX];
	struct api_stream info;
	char *pending;             /* events not yet handed to MHD */
	size_t len, off;
	bool finished;             /* the last event is in pending */
};

static bool queue_event(struct stream *t, char *ev, size_t n)
{
	if (!ev)
		return false;
	if (t->off == t->len)
		t->off = t->len = 0;
	char *p = realloc(t->pending, t->len + n + 1);
	if (!p) {
		free(ev);
		return false;
	}
	memcpy(p + t->len, ev, n);
	t->pending = p;
	t->len += n;
	free(ev);
	return true;
}

/* The events that end the stream: finish, usage, [DONE]; or error, [DONE]. */
static void queue_end(struct stream *t, const struct srv_job_status *st)
{
	size_t n = 0;
	char *ev;
	count_tokens(t->s, st);
	if (st->state == SRV_JOB_DONE) {
		ev = api_sse_finish(&t->info, st->finish, &n);
		queue_event(t, ev, n);
		if (t->info.include_usage) {
			ev = api_sse_usage(&t->info, st->prompt_tokens, st->completion_tokens, &n);
			queue_event(t, ev, n);
		}
		log_request(t->s, &t->q, 200, st, api_finish_name(st->finish));
	} else {
		struct api_error err;
		job_error(st, &err);
		ev = api_sse_error(&err, &n);
		queue_event(t, ev, n);
		log_request(t->s, &t->q, err.status, st, "ended by an error event");
	}
	char *done = strdup(API_SSE_DONE);
	queue_event(t, done, done ? strlen(done) : 0);
	t->finished = true;
}

/* MHD's content reader: blocks (this connection's own thread) until there is
 * an event to send, the stream ends, or the client is gone. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct stream *t = cls;
	(void)pos;
	for (;;) {
		if (t->off < t->len) {
			size_t n = t->len - t->off < max ? t->len - t->off : max;
			memcpy(buf, t->pending + t->off, n);
			t->off += n;
			return (ssize_t)n;
		}
		if (t->finished)
			return MHD_CONTENT_READER_END_OF_STREAM;
		if (srv_client_gone(t->c)) {
			srv_job_cancel(t->job);
			struct srv_job_status st;
			char *x;
			size_t n;
			srv_job_poll(t->job, 0, &x, &n, &st);
			free(x);
			count_tokens(t->s, &st);
			log_request(t->s, &t->q, 499, &st, "client gone");
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
		char *text;
		size_t n;
		struct srv_job_status st;
		if (srv_job_poll(t->job, POLL_MS, &text, &n, &st) < 0)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		if (text) {
			size_t m = 0;
			char *ev = api_sse_text(&t->info, text, n, &m);
			free(text);
			if (!queue_event(t, ev, m))
				return MHD_CONTENT_READER_END_WITH_ERROR;
		}
		if (srv_job_ended(st.state))
			queue_end(t, &st);
	}
}

static void stream_free(void *cls)
{
	struct stream *t = cls;
	srv_job_release(t->job);
	api_request_free(&t->q);
	free(t->pending);
	__atomic_fetch_sub(&t->s->inflight, 1, __ATOMIC_RELEASE);
	free(t);
}

static enum MHD_Result reply_stream(struct srv_server *s, struct MHD_Connection *c,
				    struct api_request *q, srv_job *job)
{
	struct stream *t = calloc(1, sizeof(*t));
	if (!t) {
		srv_job_release(job);
		return MHD_NO;
	}
	*t = (struct stream){.s = s, .c = c, .job = job, .q = *q};
	memset(q, 0, sizeof(*q)); /* the stream owns the request now */
	api_make_id(t->q.endpoint, __atomic_fetch_add(&s->next_id, 1, __ATOMIC_RELAXED), t->id,
		    sizeof(t->id));
	t->info = (struct api_stream){
		.endpoint = t->q.endpoint,
		.id = t->id,
		.created = (int64_t)time(NULL),
		.model = s->model.id,
		.include_usage = t->q.include_usage,
	};
	size_t n = 0;
	char *first = api_sse_start(&t->info, &n);
	if (!first || (n && !queue_event(t, first, n))) {
		if (!n)
			free(first);
		free(t->pending);
		api_request_free(&t->q);
		srv_job_release(job);
		free(t);
		return MHD_NO;
	}
	if (!n)
		free(first);
	struct MHD_Response *r =
		MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, t,
						  stream_free);
	if (!r) {
		free(t->pending);
		api_request_free(&t->q);
		srv_job_release(job);
		free(t);
		return MHD_NO;
	}
	__atomic_fetch_add(&s->inflight, 1, __ATOMIC_ACQUIRE);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
	MHD_destroy_response(r); /* stream_free runs when MHD is done with it */
	api_metrics_request(&s->metrics, t->info.endpoint, MHD_HTTP_OK);
	return ok;
}

/* ---------------------------------------------------------------- the route */

enum MHD_Result srv_generate(struct srv_server *s, struct MHD_Connection *c,
			     enum api_endpoint ep, const char *body, size_t len)
{
	struct api_request q;
	struct api_error err;
	if (api_request_parse(ep, body, len, &s->model, 1, &q, &err) < 0)
		return srv_reply_error(s, c, ep, &err);
	int32_t *ids = NULL;
	size_t n = 0;
	if (prompt_ids(s, &q, &ids, &n, &err) < 0) {
		api_request_free(&q);
		return srv_reply_error(s, c, ep, &err);
	}
	const uint32_t ctx = s->model.max_context;
	if (n + (q.max_tokens ? q.max_tokens : 1) > ctx) {
		api_error_context_length(&err, ep, ctx, n > UINT32_MAX ? UINT32_MAX : (uint32_t)n,
					 q.max_tokens ? q.max_tokens : 1);
		free(ids);
		api_request_free(&q);
		return srv_reply_error(s, c, ep, &err);
	}
	struct srv_job_params p = {
		.prompt = ids,
		.n_prompt = (uint32_t)n,
		.max_tokens = q.max_tokens,
		.temperature = (float)q.temperature,
		.top_p = (float)q.top_p,
		.seed = q.has_seed ? q.seed : (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)c,
		.stop = (const char *const *)q.stop,
		.stop_len = q.stop_len,
		.n_stop = q.n_stop,
	};
	srv_job *job;
	int rc = srv_job_submit(s->sched, &p, &job);
	free(ids);
	if (rc < 0) {
		if (rc == -EBUSY)
			api_error_busy(&err);
		else if (rc == -ESHUTDOWN)
			api_error_set(&err, 503, API_ERR_SERVER, NULL, "server_shutting_down",
				      "The server is shutting down");
		else if (rc == -E2BIG)
			api_error_context_length(&err, ep, ctx, (uint32_t)n, q.max_tokens);
		else
			api_error_set(&err, rc == -ENOMEM ? 500 : 400,
				      rc == -ENOMEM ? API_ERR_SERVER : API_ERR_INVALID_REQUEST, NULL,
				      NULL, "The request cannot run: %s", strerror(-rc));
		api_request_free(&q);
		return srv_reply_error(s, c, ep, &err);
	}
	if (q.stream)
		return reply_stream(s, c, &q, job); /* takes q and job */
	__atomic_fetch_add(&s->inflight, 1, __ATOMIC_ACQUIRE);
	enum MHD_Result ok = reply_whole(s, c, &q, job);
	srv_job_release(job);
	api_request_free(&q);
	__atomic_fetch_sub(&s->inflight, 1, __ATOMIC_RELEASE);
	return ok;
}
