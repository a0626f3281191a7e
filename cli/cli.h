/* cli.h — small helpers shared by the command-line programs (infer and the
 * tools of tools/): a progress line on stderr (only when stderr is a
 * terminal), option value parsing that reports its own errors, usage printing,
 * and cancellation by signal. Uses layout/ (k2_err, sizes, format names) and
 * nothing else; nothing here touches the pack format. */
#ifndef K2_CLI_H
#define K2_CLI_H

#include <signal.h>
#include <stdint.h>
#include <stdio.h>

struct k2_err;

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
/* The same for an int, within [min, max]. */
int k2cli_parse_int(const char *prog, const char *opt, const char *s, int min, int max,
		    int *out);
int k2cli_parse_u64(const char *prog, const char *opt, const char *s, uint64_t *out);
/* Sizes with binary suffixes ("64K", "5G"; k2_parse_size's grammar), within
 * [min, max]. */
int k2cli_parse_size(const char *prog, const char *opt, const char *s, uint64_t min,
		     uint64_t max, uint64_t *out);

/* Expert formats by the names the tools take: "keep" (K2_FORMAT_NONE, the
 * source's own), "bf16", "fp8", "int8", "int4", or k2_format_name's. Only the
 * formats in `accepted` (a mask of 1u << enum k2_format; ~0u: all) parse;
 * the error lists them. */
int k2cli_parse_format(const char *prog, const char *opt, const char *s, unsigned accepted,
		       uint32_t *out);

/* Returns the value of an option given as "--opt VALUE" or "--opt=VALUE" at
 * argv[*i] (advancing *i past a separate value), or NULL when argv[*i] is not
 * that option. A missing value prints an error and sets *bad. */
const char *k2cli_opt_value(const char *prog, int argc, char **argv, int *i,
			    const char *opt, int *bad);

/* For an argument `a` that matched none of the tool's options: stores it in
 * pos[*npos] when it is a positional argument and *npos < max. An unknown
 * option, or a positional argument past max, prints an error (unless *bad is
 * already set: the option's own error is out) and sets *bad. */
void k2cli_other_arg(const char *prog, const char *a, const char **pos, int max, int *npos,
		     int *bad);

/* Prints usage text to `to`. */
void k2cli_usage(FILE *to, const char *text);

/* Installs handlers that turn SIGINT, SIGTERM and SIGHUP into a request to
 * stop: returns the flag they set (to the signal's number), for a long
 * operation's cancel option to poll; the operation removes its partial output.
 * Call once, after option parsing. */
volatile sig_atomic_t *k2cli_cancel_on_signals(void);

/* The end of a tool whose operation failed with rc (-errno): prints
 * "<prog>: <message>" on stderr (err's message, else strerror(-rc)). When a
 * signal cancelled the operation it is then raised again with its default
 * action, so the tool dies of it; otherwise returns 1, the exit status. */
int k2cli_failed(const char *prog, int rc, const struct k2_err *err);

#endif /* K2_CLI_H */
