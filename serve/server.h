/* server.h — k2serve's HTTP server over libmicrohttpd: what the routes share
 * and the server's life. serve/main.c opens the model, the engine and the
 * scheduler, then hands them here.
 *
 *   http.c      the daemon: connections, request bodies, routing, replies,
 *               the disconnect check, shutdown
 *   routes.c    GET /, /health, /metrics, /v1/models, /k2/experts
 *   generate.c  POST /v1/chat/completions and /v1/completions: the prompt's
 *               ids, the job, the reply whole or as server-sent events
 *   page.c      (generated at build time from serve/page/index.html)
 *
 * Threads: libmicrohttpd runs one thread per connection; a generation
 * request's thread submits a job to the scheduler and waits on it, so a slow
 * client holds only its own thread. Nothing here exits on bad input. */
#ifndef K2_SERVE_SERVER_H
#define K2_SERVE_SERVER_H

#include <microhttpd.h>
#include <stdbool.h>

#include "api.h"
#include "chat.h"
#include "scheduler.h"
#include "tokenizer.h"

/* The page, embedded byte for byte (page.c). */
extern const unsigned char srv_page_html[];
extern const size_t srv_page_html_len;

struct srv_server {
	/* given by main, borrowed */
	srv_sched *sched;
	inf_tok *tok;
	const inf_chat_template *chat;  /* NULL: the model has none (chat is refused) */
	const char *chat_missing;       /* why not, for the error */
	int32_t bos;                    /* put first by the chat template's encoding, or -1 */
	struct api_model_info model;
	double started;                 /* k2_now() at start */
	bool verbose;                   /* a line per request on stderr */
	/* the server's own */
	struct MHD_Daemon *daemon;
	struct api_metrics metrics;
	uint64_t next_id;               /* completion ids (atomic) */
	int inflight;                   /* generation requests not yet finished (atomic) */
	volatile int stopping;
};

/* Starts listening on addr ("HOST:PORT", HOST an IPv4 address, "localhost" or
 * "*"; IPv6 as "[::1]:PORT"). 0 or -errno with err (the address in use, a bad
 * address). */
int srv_start(struct srv_server *s, const char *addr, k2_err *err);
/* Stops accepting, ends every job (open streams get a final error event and
 * [DONE]), waits up to grace_s for the replies to go out, and closes. */
void srv_stop(struct srv_server *s, double grace_s);

/* ---------------------------------------------------------------- for the routes */

/* A reply whose body is malloc'd `body` (taken) with content type `type`;
 * NULL body means the allocation failed: a 500 with API_ERROR_JSON_OOM. Counts
 * it in the metrics under ep. Returns MHD_YES / MHD_NO as MHD_queue_response. */
enum MHD_Result srv_reply(struct srv_server *s, struct MHD_Connection *c, enum api_endpoint ep,
			  int status, const char *type, char *body, size_t len);
/* The error err as its OpenAI object (and Retry-After: 1 for 429). */
enum MHD_Result srv_reply_error(struct srv_server *s, struct MHD_Connection *c,
				enum api_endpoint ep, const struct api_error *err);
/* True when the client of c has closed its end (a read would return EOF or
 * fail): its request should stop. */
bool srv_client_gone(struct MHD_Connection *c);

/* routes.c: the GET routes; path known, method GET. */
enum MHD_Result srv_get(struct srv_server *s, struct MHD_Connection *c, const char *path);
/* generate.c: a POST body for ep (chat or completions), complete. */
enum MHD_Result srv_generate(struct srv_server *s, struct MHD_Connection *c,
			     enum api_endpoint ep, const char *body, size_t len);

#endif
