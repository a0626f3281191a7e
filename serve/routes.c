/* routes.c — k2serve's GET routes (contract in server.h): the page, health,
 * the Prometheus metrics, the model list and the expert map. */
#include "server.h"

#include <stdlib.h>
#include <string.h>

static const char JSON[] = "application/json";

static enum MHD_Result page(struct srv_server *s, struct MHD_Connection *c)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(
		srv_page_html_len, (void *)srv_page_html, MHD_RESPMEM_PERSISTENT);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	api_metrics_request(&s->metrics, API_ENDPOINT_OTHER, MHD_HTTP_OK);
	return ok;
}

static enum MHD_Result health(struct srv_server *s, struct MHD_Connection *c)
{
	struct srv_sched_stats st;
	srv_sched_stats(s->sched, &st);
	struct api_health h = {
		.status = s->stopping ? "stopping" : "ok",
		.model = s->model.id,
		.uptime_s = k2_now() - s->started,
		.active_requests = st.active,
		.queued_requests = st.queued,
	};
	size_t len = 0;
	char *body = api_health_json(&h, &len);
	return srv_reply(s, c, API_ENDPOINT_HEALTH, s->stopping ? 503 : 200, JSON, body, len);
}

static enum MHD_Result metrics(struct srv_server *s, struct MHD_Connection *c)
{
	srv_sched_metrics(s->sched, &s->metrics);
	/* counted before the text is made, so a scrape sees itself */
	api_metrics_request(&s->metrics, API_ENDPOINT_METRICS, MHD_HTTP_OK);
	size_t len = 0;
	char *body = api_metrics_text(&s->metrics, &len);
	if (!body)
		return srv_reply(s, c, API_ENDPOINT_METRICS, 500, JSON, NULL, 0);
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
				"text/plain; version=0.0.4; charset=utf-8");
	enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return ok;
}

static enum MHD_Result models(struct srv_server *s, struct MHD_Connection *c, const char *path)
{
	size_t len = 0;
	const char *id = path + strlen("/v1/models");
	char *body;
	if (*id == 0) {
		body = api_models_json(&s->model, 1, &len);
		return srv_reply(s, c, API_ENDPOINT_MODELS, 200, JSON, body, len);
	}
	if (strcmp(id + 1, s->model.id) != 0) {
		struct api_error err;
		api_error_set(&err, 404, API_ERR_INVALID_REQUEST, "model", "model_not_found",
			      "The model '%.200s' does not exist", id + 1);
		return srv_reply_error(s, c, API_ENDPOINT_MODELS, &err);
	}
	body = api_model_json(&s->model, &len);
	return srv_reply(s, c, API_ENDPOINT_MODELS, 200, JSON, body, len);
}

enum MHD_Result srv_get(struct srv_server *s, struct MHD_Connection *c, const char *path)
{
	size_t len = 0;
	if (strcmp(path, "/") == 0)
		return page(s, c);
	if (strcmp(path, "/health") == 0)
		return health(s, c);
	if (strcmp(path, "/metrics") == 0)
		return metrics(s, c);
	if (strncmp(path, "/v1/models", 10) == 0)
		return models(s, c, path);
	/* /k2/experts */
	char *body = srv_sched_experts_json(s->sched, s->model.id, &len);
	return srv_reply(s, c, API_ENDPOINT_OTHER, 200, JSON, body, len);
}
