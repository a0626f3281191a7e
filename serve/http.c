/* http.c — the libmicrohttpd daemon (contract in server.h): the listening
 * socket, one thread per connection, request bodies up to API_BODY_MAX,
 * routing to routes.c and generate.c, replies, and shutdown. */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The routes: path, method, endpoint (for the metrics). A path given with
 * another method is 405; an unknown path 404. */
struct route {
	const char *path;
	bool prefix;         /* path/… matches too (/v1/models/{id}) */
	const char *method;
	enum api_endpoint ep;
};

static const struct route routes[] = {
	{"/v1/chat/completions", false, "POST", API_ENDPOINT_CHAT},
	{"/v1/completions", false, "POST", API_ENDPOINT_COMPLETIONS},
	{"/v1/models", true, "GET", API_ENDPOINT_MODELS},
	{"/health", false, "GET", API_ENDPOINT_HEALTH},
	{"/metrics", false, "GET", API_ENDPOINT_METRICS},
	{"/k2/experts", false, "GET", API_ENDPOINT_OTHER},
	{"/", false, "GET", API_ENDPOINT_OTHER},
};

static const struct route *find_route(const char *path)
{
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		size_t n = strlen(routes[i].path);
		if (strncmp(path, routes[i].path, n) == 0 &&
		    (path[n] == 0 || (routes[i].prefix && path[n] == '/' && path[n + 1])))
			return &routes[i];
	}
	return NULL;
}

/* ---------------------------------------------------------------- replies */

enum MHD_Result srv_reply(struct srv_server *s, struct MHD_Connection *c, enum api_endpoint ep,
			  int status, const char *type, char *body, size_t len)
{
	struct MHD_Response *r;
	if (!body) {
		status = MHD_HTTP_INTERNAL_SERVER_ERROR;
		type = "application/json";
		r = MHD_create_response_from_buffer(strlen(API_ERROR_JSON_OOM),
						    (void *)API_ERROR_JSON_OOM,
						    MHD_RESPMEM_PERSISTENT);
	} else
		r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (status == 429)
		MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
	enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
	MHD_destroy_response(r);
	api_metrics_request(&s->metrics, ep, status);
	return ok;
}

enum MHD_Result srv_reply_error(struct srv_server *s, struct MHD_Connection *c,
				enum api_endpoint ep, const struct api_error *err)
{
	size_t len = 0;
	char *body = api_error_json(err, &len);
	return srv_reply(s, c, ep, err->status, "application/json", body, len);
}

bool srv_client_gone(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (!ci)
		return true;
	char b;
	ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* ---------------------------------------------------------------- requests */

/* A POST's body as it arrives. */
struct body {
	char *data;
	size_t len, cap;
	uint64_t seen;  /* bytes received, kept or not */
	bool too_large;
};

static bool is_post_route(const struct route *r) { return strcmp(r->method, "POST") == 0; }

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	struct srv_server *s = cls;
	struct api_error err;
	(void)version;
	const struct route *r = find_route(url);
	struct body *b = *con_cls;
	if (!b) {
		if (!r) {
			api_error_route(&err, method, url);
			return srv_reply_error(s, c, API_ENDPOINT_OTHER, &err);
		}
		bool head = strcmp(method, "HEAD") == 0 && strcmp(r->method, "GET") == 0;
		if (strcmp(method, r->method) != 0 && !head) {
			api_error_method(&err, method, url);
			return srv_reply_error(s, c, r->ep, &err);
		}
		if (!is_post_route(r))
			return srv_get(s, c, url);
		/* a POST: its body comes in the calls that follow */
		const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
							     MHD_HTTP_HEADER_CONTENT_LENGTH);
		unsigned long long declared = cl ? strtoull(cl, NULL, 10) : 0;
		if (declared > API_BODY_MAX) {
			api_error_too_large(&err, declared);
			return srv_reply_error(s, c, r->ep, &err);
		}
		if (!(b = calloc(1, sizeof(*b))))
			return MHD_NO;
		*con_cls = b;
		return MHD_YES;
	}
	if (*upload_size) {
		b->seen += *upload_size;
		if (b->len + *upload_size > API_BODY_MAX)
			b->too_large = true;
		if (!b->too_large) {
			if (b->len + *upload_size > b->cap) {
				size_t cap = b->cap ? b->cap : 4096;
				while (cap < b->len + *upload_size)
					cap *= 2;
				char *p = realloc(b->data, cap + 1);
				if (!p)
					return MHD_NO;
				b->data = p;
				b->cap = cap;
			}
			memcpy(b->data + b->len, upload, *upload_size);
			b->len += *upload_size;
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (b->too_large) {
		api_error_too_large(&err, b->seen);
		return srv_reply_error(s, c, r->ep, &err);
	}
	return srv_generate(s, c, r->ep, b->data ? b->data : "", b->len);
}

static void on_done(void *cls, struct MHD_Connection *c, void **con_cls,
		    enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)c;
	(void)toe;
	struct body *b = *con_cls;
	if (b) {
		free(b->data);
		free(b);
		*con_cls = NULL;
	}
}

/* libmicrohttpd's messages, prefixed; the one it prints when a stream ends
 * because its client went away is left out (generate.c logs that request). */
static void log_mhd(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char line[512];
	vsnprintf(line, sizeof(line), fmt, ap);
	if (strstr(line, "application error generating response"))
		return;
	fprintf(stderr, "k2serve: %s", line);
}

/* ---------------------------------------------------------------- the socket */

/* A listening socket on addr ("HOST:PORT", "[V6]:PORT"); its fd, or -errno. */
static int listen_on(const char *addr, char *shown, size_t n, k2_err *err)
{
	char host[256];
	const char *colon = strrchr(addr, ':');
	if (!colon || colon == addr || !colon[1] || (size_t)(colon - addr) >= sizeof(host))
		return k2_err_set(err, -EINVAL, "--listen: '%s' is not HOST:PORT", addr);
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = 0;
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = 0;
	}
	char *end;
	unsigned long port = strtoul(colon + 1, &end, 10);
	if (*end || port > 65535)
		return k2_err_set(err, -EINVAL, "--listen: '%s' has no port 0..65535", addr);
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
			*ai;
	int g = getaddrinfo(strcmp(host, "*") == 0 ? NULL : host, colon + 1, &hints, &ai);
	if (g)
		return k2_err_set(err, -EINVAL, "--listen: '%s': %s", addr, gai_strerror(g));
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0), rc = 0, one = 1;
	if (fd < 0)
		rc = -errno;
	else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
		 bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0)
		rc = -errno;
	int family = ai->ai_family;
	freeaddrinfo(ai);
	if (rc < 0) {
		if (fd >= 0)
			close(fd);
		return k2_err_set(err, rc, "--listen %s: %s", addr, strerror(-rc));
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char ip[INET6_ADDRSTRLEN] = "?";
	unsigned bound = (unsigned)port;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (family == AF_INET6) {
			struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
			inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof(ip));
			bound = ntohs(a6->sin6_port);
		} else {
			struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
			inet_ntop(AF_INET, &a4->sin_addr, ip, sizeof(ip));
			bound = ntohs(a4->sin_port);
		}
	}
	snprintf(shown, n, family == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, bound);
	return fd;
}

int srv_start(struct srv_server *s, const char *addr, k2_err *err)
{
	char shown[96];
	int fd = listen_on(addr, shown, sizeof(shown), err);
	if (fd < 0)
		return fd;
	s->daemon = MHD_start_daemon(
		MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
			MHD_USE_ERROR_LOG,
		0, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, log_mhd, s,
		MHD_OPTION_LISTEN_SOCKET, fd,
		MHD_OPTION_NOTIFY_COMPLETED, on_done, s, MHD_OPTION_CONNECTION_LIMIT, 512u,
		MHD_OPTION_CONNECTION_TIMEOUT, 600u,
		MHD_OPTION_END);
	if (!s->daemon) {
		close(fd);
		return k2_err_set(err, -EIO, "cannot start the HTTP daemon on %s", shown);
	}
	fprintf(stderr, "k2serve: listening on http://%s\n", shown);
	return 0;
}

void srv_stop(struct srv_server *s, double grace_s)
{
	if (!s->daemon)
		return;
	s->stopping = 1;
	MHD_socket l = MHD_quiesce_daemon(s->daemon);
	if (l != MHD_INVALID_SOCKET)
		close(l);
	srv_sched_shutdown(s->sched);
	const double until = k2_now() + grace_s;
	while (__atomic_load_n(&s->inflight, __ATOMIC_ACQUIRE) > 0 && k2_now() < until) {
		struct timespec t = {0, 20 * 1000 * 1000};
		nanosleep(&t, NULL);
	}
	MHD_stop_daemon(s->daemon);
	s->daemon = NULL;
}
