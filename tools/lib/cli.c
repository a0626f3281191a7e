/* cli.c — progress line, option parsing and usage helpers for the tools. */
#include "cli.h"

#include "layout.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void k2cli_progress_init(k2cli_progress *p)
{
	memset(p, 0, sizeof(*p));
	p->enabled = isatty(STDERR_FILENO);
	p->start = k2_now();
}

void k2cli_progress_update(k2cli_progress *p, const char *fmt, ...)
{
	if (!p->enabled)
		return;
	double now = k2_now();
	if (p->shown && now - p->last < 0.2)
		return;
	p->last = now;
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "\r%s\033[K", line);
	fflush(stderr);
	p->shown = 1;
}

void k2cli_progress_clear(k2cli_progress *p)
{
	if (p->enabled && p->shown) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
	}
	p->shown = 0;
}

double k2cli_progress_elapsed(const k2cli_progress *p)
{
	return k2_now() - p->start;
}

const char *k2cli_eta(double elapsed, double done, double total, char *buf, size_t n)
{
	if (done <= 0 || total <= done || elapsed <= 0) {
		snprintf(buf, n, "--:--");
		return buf;
	}
	double left = elapsed * (total - done) / done;
	if (left > 359999)
		left = 359999;
	unsigned s = (unsigned)left;
	if (s >= 3600)
		snprintf(buf, n, "%u:%02u:%02u", s / 3600, s / 60 % 60, s % 60);
	else
		snprintf(buf, n, "%u:%02u", s / 60, s % 60);
	return buf;
}

int k2cli_parse_long(const char *prog, const char *opt, const char *s, long min,
		     long max, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		fprintf(stderr, "%s: %s: expected an integer in [%ld, %ld], got '%s'\n",
			prog, opt, min, max, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

int k2cli_parse_u64(const char *prog, const char *opt, const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || end == s || *end || *s == '-') {
		fprintf(stderr, "%s: %s: expected an unsigned integer, got '%s'\n", prog,
			opt, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

int k2cli_parse_size(const char *prog, const char *opt, const char *s, uint64_t min,
		     uint64_t max, uint64_t *out)
{
	uint64_t v;
	if (k2_parse_size(s, &v) < 0 || v < min || v > max) {
		char a[32], b[32];
		fprintf(stderr, "%s: %s: expected a size in [%s, %s] (suffixes K, M, G), got '%s'\n",
			prog, opt, k2_format_bytes(min, a, sizeof(a)),
			k2_format_bytes(max, b, sizeof(b)), s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

const char *k2cli_opt_value(const char *prog, int argc, char **argv, int *i,
			    const char *opt, int *bad)
{
	const char *a = argv[*i];
	size_t n = strlen(opt);
	if (strncmp(a, opt, n) != 0)
		return NULL;
	if (a[n] == '=')
		return a + n + 1;
	if (a[n] != '\0')
		return NULL;
	if (*i + 1 >= argc) {
		fprintf(stderr, "%s: %s needs a value\n", prog, opt);
		*bad = 1;
		return NULL;
	}
	*i += 1;
	return argv[*i];
}

void k2cli_usage(FILE *to, const char *text)
{
	fputs(text, to);
}
