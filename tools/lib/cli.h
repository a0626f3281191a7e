/* cli.h — small helpers shared by the command-line tools: a progress line on
 * stderr (only when stderr is a terminal), option value parsing that reports
 * its own errors, and usage printing. Nothing here touches the pack format. */
#ifndef K2_CLI_H
#define K2_CLI_H

#include <stdint.h>
#include <stdio.h>

/* A one-line progress display. Disabled (every call a no-op) unless stderr is
 * a terminal when it is created, so logs and pipes see only final lines. */
typedef struct k2cli_progress {
	int enabled;
	int shown;          /* a line is on screen and must be cleared */
	double start, last; /* k2_now() at start and at the last redraw */
} k2cli_progress;

void k2cli_progress_init(k2cli_progress *p);
/* Redraws the line (printf-style, no newline) at most ~5 times a second. */
void k2cli_progress_update(k2cli_progress *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Clears the line, so the next message starts on a clean line. */
void k2cli_progress_clear(k2cli_progress *p);
/* Seconds since k2cli_progress_init. */
double k2cli_progress_elapsed(const k2cli_progress *p);
/* Formats an estimated time left from a done/total fraction into buf. */
const char *k2cli_eta(double elapsed, double done, double total, char *buf, size_t n);

/* Option parsing. Each prints "<prog>: <option>: <what is wrong>" on stderr
 * and returns -EINVAL on bad input, 0 on success. */
int k2cli_parse_long(const char *prog, const char *opt, const char *s, long min,
		     long max, long *out);
int k2cli_parse_u64(const char *prog, const char *opt, const char *s, uint64_t *out);
/* Sizes with binary suffixes ("64K", "5G"), within [min, max]. */
int k2cli_parse_size(const char *prog, const char *opt, const char *s, uint64_t min,
		     uint64_t max, uint64_t *out);

/* Returns the value of an option given as "--opt VALUE" or "--opt=VALUE" at
 * argv[*i] (advancing *i past a separate value), or NULL when argv[*i] is not
 * that option. A missing value prints an error and sets *bad. */
const char *k2cli_opt_value(const char *prog, int argc, char **argv, int *i,
			    const char *opt, int *bad);

/* Prints usage text to `to`. */
void k2cli_usage(FILE *to, const char *text);

#endif /* K2_CLI_H */
