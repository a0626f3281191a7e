/* cli.c — progress line, option parsing, usage and cancellation helpers for
 * the command-line programs. */
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

int k2cli_parse_int(const char *prog, const char *opt, const char *s, int min, int max,
		    int *out)
{
	long v;
	int rc = k2cli_parse_long(prog, opt, s, min, max, &v);
	if (rc == 0)
		*out = (int)v;
	return rc;
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
		fprintf(stderr, "%s: %s: expected a size in [%s, %s] (suffixes K, M, G, T), got '%s'\n",
			prog, opt, k2_format_bytes(min, a, sizeof(a)),
			k2_format_bytes(max, b, sizeof(b)), s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

/* The tools' short format names, beside k2_format_name's. */
static const char *const format_short_names[K2_FORMAT_COUNT] = {
	[K2_FORMAT_NONE] = "keep",
	[K2_FORMAT_BF16] = "bf16",
	[K2_FORMAT_FP8_B128] = "fp8",
	[K2_FORMAT_INT8] = "int8",
	[K2_FORMAT_INT4_G32] = "int4",
};

static int format_has_name(uint32_t f, const char *s)
{
	const char *full = k2_format_name(f);
	return strcmp(s, format_short_names[f]) == 0 || (full && strcmp(s, full) == 0);
}

/* Writes the short names of `accepted` as "a, b or c" into buf. */
static void format_list(unsigned accepted, char *buf, size_t n)
{
	size_t len = 0;
	unsigned left = accepted;
	buf[0] = '\0';
	for (uint32_t f = 0; f < K2_FORMAT_COUNT && len < n; f++) {
		if (!(left & (1u << f)))
			continue;
		left &= ~(1u << f);
		const char *sep = len == 0 ? "" : left ? ", " : " or ";
		len += (size_t)snprintf(buf + len, n - len, "%s%s", sep, format_short_names[f]);
	}
}

int k2cli_parse_format(const char *prog, const char *opt, const char *s, unsigned accepted,
		       uint32_t *out)
{
	accepted &= (1u << K2_FORMAT_COUNT) - 1;
	for (uint32_t f = 0; f < K2_FORMAT_COUNT; f++) {
		if ((accepted & (1u << f)) && format_has_name(f, s)) {
			*out = f;
			return 0;
		}
	}
	char names[64];
	format_list(accepted, names, sizeof(names));
	fprintf(stderr, "%s: %s: expected %s, got '%s'\n", prog, opt, names, s);
	return -EINVAL;
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

void k2cli_other_arg(const char *prog, const char *a, const char **pos, int max, int *npos,
		     int *bad)
{
	if (a[0] == '-' && a[1] != '\0') {
		if (!*bad)
			fprintf(stderr, "%s: unknown option '%s' (see --help)\n", prog, a);
		*bad = 1;
	} else if (*npos < max) {
		pos[(*npos)++] = a;
	} else {
		fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", prog, a);
		*bad = 1;
	}
}

void k2cli_usage(FILE *to, const char *text)
{
	fputs(text, to);
}

/* The signal that asked the tool to stop, 0 while none has. */
static volatile sig_atomic_t cancel_signal;

static void on_cancel_signal(int sig)
{
	cancel_signal = sig;
}

volatile sig_atomic_t *k2cli_cancel_on_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_cancel_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	return &cancel_signal;
}

int k2cli_failed(const char *prog, int rc, const struct k2_err *err)
{
	fprintf(stderr, "%s: %s\n", prog, err->msg[0] ? err->msg : strerror(-rc));
	if (cancel_signal) {
		signal(cancel_signal, SIG_DFL);
		raise(cancel_signal);
	}
	return 1;
}
