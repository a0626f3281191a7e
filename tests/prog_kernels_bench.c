/* prog_kernels_bench.c — microbenchmark of kern_matmul (kern_matmul_fast
 * with --fast): the rate at which a
 * product streams weight bytes (kern_mat_bytes / time) at Kimi-K2 expert
 * shapes (2048 x 7168 and 7168 x 2048), next to memcpy of a buffer of the same
 * size timed in the same run, and the ratio of the two.
 *
 *   prog_kernels_bench [--threads N] [--seconds S] [--batch B] [--cpu-time]
 *                      [--isa portable|avx2|avx512] [--formats int4-g32,bf16,...]
 *                      [--fast]
 *
 * Two regimes: "hot" multiplies one matrix again and again (it may stay in
 * the last-level cache, and so does the memcpy of its size); "stream" cycles
 * through distinct matrices totalling at least 256 MiB (weights from DRAM),
 * against memcpy of a 256 MiB buffer. The copy is timed on one thread
 * (copy1) and split over the kernels' threads (copyN, the fair comparison
 * for a threaded product); GB/s are 1e9 bytes per second of weights read, or
 * of bytes copied. Copies and products are timed in
 * alternating short rounds and the best round of each is kept, so that load
 * from other processes weighs on both alike. --cpu-time (one thread) times
 * both by the thread's CPU time instead of the wall clock: on a machine that
 * others load, what the code achieves while it runs. One line per case. */
#include <time.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kernels_impl.h"

#define STREAM_BYTES (256ull << 20)
#define ROUNDS 6

/* The product timed: kern_matmul, or kern_matmul_fast with --fast. */
static int (*mm)(const kern_mat *, const float *, uint32_t, float *) = kern_matmul;

static uint64_t rng = 88172645463325252ull;
static int use_cpu_time;

/* Seconds: the wall clock, or this thread's CPU time with --cpu-time. */
static double now(void)
{
	if (!use_cpu_time)
		return k2_now();
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Fills a weights region with valid random values of the format. */
static void fill_weights(uint32_t format, uint8_t *w, size_t bytes)
{
	for (size_t i = 0; i < bytes; i++) {
		uint8_t b = (uint8_t)rnd();
		if (format == K2_FORMAT_FP8_B128 && (b & 0x7f) == 0x7f)
			b = 0x30;
		if ((format == K2_FORMAT_BF16 && (i & 1)) || (format == KERN_FORMAT_F32 && (i & 3) == 3))
			b = (uint8_t)(0x3c + (b & 1) + (b & 0x80)); /* exponents near 1 */
		w[i] = b;
	}
}

static size_t weight_bytes(uint32_t format, uint32_t rows, uint32_t cols)
{
	size_t n = (size_t)rows * cols;
	switch (format) {
	case K2_FORMAT_BF16: return 2 * n;
	case K2_FORMAT_FP8_B128: return n;
	case K2_FORMAT_INT8: return n;
	case K2_FORMAT_INT4_G32: return n / 2;
	}
	return 4 * n;
}

static size_t scale_bytes(uint32_t format, uint32_t rows, uint32_t cols)
{
	switch (format) {
	case K2_FORMAT_FP8_B128: return 4 * (size_t)((rows + 127) / 128) * ((cols + 127) / 128);
	case K2_FORMAT_INT8: return 4 * (size_t)rows;
	case K2_FORMAT_INT4_G32: return 2 * (size_t)rows * (cols / 32);
	}
	return 0;
}

static void fill_scales(uint32_t format, void *s, size_t bytes)
{
	if (format == K2_FORMAT_INT4_G32) {
		uint16_t *p = s;
		for (size_t i = 0; i < bytes / 2; i++)
			p[i] = k2q_f32_to_bf16(0.01f + (float)(rnd() % 100) * 1e-4f);
	} else {
		float *p = s;
		for (size_t i = 0; i < bytes / 4; i++)
			p[i] = 0.001f + (float)(rnd() % 100) * 1e-5f;
	}
}

/* A copy buffer pair. */
struct copybuf {
	char *a, *b;
	size_t bytes;
};

static int copybuf_make(struct copybuf *c, size_t bytes)
{
	c->bytes = bytes;
	c->a = malloc(bytes);
	c->b = malloc(bytes);
	if (!c->a || !c->b)
		return -ENOMEM;
	memset(c->a, 1, bytes);
	memset(c->b, 2, bytes);
	return 0;
}

static void copybuf_free(struct copybuf *c)
{
	free(c->a);
	free(c->b);
}

/* One slice of a threaded copy: slices of 1 MiB or more, one per thread. */
struct copy_slice {
	const struct copybuf *c;
	uint32_t n;
};

static void copy_slice_run(void *ctx, uint32_t i)
{
	const struct copy_slice *s = ctx;
	size_t per = (s->c->bytes / s->n + 63) & ~(size_t)63, off = per * i;
	if (off < s->c->bytes)
		memcpy(s->c->b + off, s->c->a + off, per < s->c->bytes - off ? per : s->c->bytes - off);
}

/* memcpy for about `seconds`, on one thread or on the kernels' threads (each
 * copying a slice); returns bytes copied per second. */
static double memcpy_round(const struct copybuf *c, double seconds, int threaded)
{
	uint64_t it = 0;
	uint32_t n = threaded ? (uint32_t)kern_threads() : 1;
	if (c->bytes / n < (1u << 20))
		n = (uint32_t)(c->bytes >> 20) + 1;
	struct copy_slice sl = {c, n};
	double t0 = now(), t;
	do {
		if (n > 1)
			kern_parallel_for(n, copy_slice_run, &sl);
		else
			memcpy(c->b, c->a, c->bytes);
		it++;
	} while ((t = now() - t0) < seconds);
	return (double)c->bytes * it / t;
}

/* Matrices of one format and shape, back to back in one allocation. */
struct set {
	kern_mat *m;
	uint32_t n;
	uint8_t *w, *s;
};

static int set_make(struct set *st, uint32_t format, uint32_t rows, uint32_t cols, uint32_t n)
{
	size_t wb = weight_bytes(format, rows, cols), sb = scale_bytes(format, rows, cols);
	st->n = n;
	st->m = calloc(n, sizeof(*st->m));
	st->w = malloc(wb * n);
	st->s = malloc(sb * n + 1);
	if (!st->m || !st->w || !st->s)
		return -ENOMEM;
	fill_weights(format, st->w, wb * n);
	fill_scales(format, st->s, sb * n);
	for (uint32_t i = 0; i < n; i++)
		st->m[i] = (kern_mat){.format = format, .rows = rows, .cols = cols,
				      .w = st->w + wb * i, .s = st->s + sb * i};
	return 0;
}

static void set_free(struct set *st)
{
	free(st->m);
	free(st->w);
	free(st->s);
}

/* Products over the set, round robin, for about `seconds`; returns weight
 * bytes per second. *next carries the position across rounds. */
static double matmul_round(const struct set *st, const float *x, uint32_t batch, float *y,
			   double seconds, uint64_t *next)
{
	uint64_t bytes = kern_mat_bytes(&st->m[0]), it = 0;
	double t0 = now(), t;
	do {
		mm(&st->m[(*next)++ % st->n], x, batch, y);
		it++;
	} while ((t = now() - t0) < seconds);
	return (double)bytes * it / t;
}

/* One line: a format, a shape, a regime. Returns 0 or -ENOMEM. */
static int bench_case(const char *name, uint32_t format, uint32_t rows, uint32_t cols,
		      int stream, uint32_t batch, double seconds)
{
	kern_mat probe = {.format = format, .rows = rows, .cols = cols};
	uint64_t bytes = kern_mat_bytes(&probe);
	uint32_t n = stream ? (uint32_t)((STREAM_BYTES + bytes - 1) / bytes) : 1;
	struct set st = {0};
	struct copybuf cb = {0};
	float *x = malloc((size_t)batch * cols * sizeof(float));
	float *y = malloc((size_t)batch * rows * sizeof(float));
	int rc = -ENOMEM;

	if (!x || !y || set_make(&st, format, rows, cols, n) != 0 ||
	    copybuf_make(&cb, stream ? STREAM_BYTES : bytes) != 0)
		goto out;
	for (size_t i = 0; i < (size_t)batch * cols; i++)
		x[i] = (float)((int)(rnd() % 2001) - 1000) * 1e-3f;

	double copy1 = 0, copyn = 0, rate = 0, round = seconds / (3 * ROUNDS);
	uint64_t next = 0;
	for (uint32_t i = 0; i < st.n; i++) /* warm: touch every matrix once */
		mm(&st.m[i], x, batch, y);
	memcpy_round(&cb, round / 4, 0);
	for (int r = 0; r < ROUNDS; r++) {
		double c1 = memcpy_round(&cb, round, 0);
		double cn = memcpy_round(&cb, round, 1);
		double mr = matmul_round(&st, x, batch, y, round, &next);
		copy1 = c1 > copy1 ? c1 : copy1;
		copyn = cn > copyn ? cn : copyn;
		rate = mr > rate ? mr : rate;
	}
	char shape[32];
	snprintf(shape, sizeof(shape), "%ux%u", rows, cols);
	printf("%-9s %-10s %-6s %8.1f %7.2f %9.2f %9.2f %7.2f %7.2f\n", name, shape,
	       stream ? "stream" : "hot", (double)bytes / rate * 1e6, rate / 1e9, copy1 / 1e9,
	       copyn / 1e9, rate / copy1, rate / copyn);
	fflush(stdout);
	rc = 0;
out:
	copybuf_free(&cb);
	set_free(&st);
	free(x);
	free(y);
	return rc;
}

int main(int argc, char **argv)
{
	static const char *const isa_names[] = {"portable", "avx2", "avx512"};
	static const uint32_t shapes[2][2] = {{2048, 7168}, {7168, 2048}};
	int threads = 0, isa = -1;
	double seconds = 1.5;
	uint32_t batch = 1;
	char formats[256] = "int4-g32,bf16";

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
			threads = atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
			seconds = atof(argv[++i]);
		} else if (!strcmp(argv[i], "--batch") && i + 1 < argc) {
			batch = (uint32_t)atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--isa") && i + 1 < argc) {
			const char *a = argv[++i];
			isa = !strcmp(a, "portable") ? 0 : !strcmp(a, "avx2") ? 1 : !strcmp(a, "avx512") ? 2 : 9;
			if (isa > kern_isa_best()) {
				fprintf(stderr, "%s: path %s not available here (best: %s)\n", argv[0], a,
					isa_names[kern_isa_best()]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--fast")) {
			mm = kern_matmul_fast;
		} else if (!strcmp(argv[i], "--cpu-time")) {
			use_cpu_time = 1;
		} else if (!strcmp(argv[i], "--formats") && i + 1 < argc) {
			snprintf(formats, sizeof(formats), "%s", argv[++i]);
		} else {
			fprintf(stderr, "usage: %s [--threads N] [--seconds S] [--batch B] [--cpu-time] [--fast] "
					"[--isa portable|avx2|avx512] "
					"[--formats int4-g32,bf16,fp8-b128,int8,f32]\n",
				argv[0]);
			return 2;
		}
	}
	if (batch == 0 || batch > 4096 || seconds <= 0) {
		fprintf(stderr, "%s: --batch must be 1 … 4096 and --seconds positive\n", argv[0]);
		return 2;
	}
	if (use_cpu_time && threads != 1) {
		fprintf(stderr, "%s: --cpu-time times one thread: use it with --threads 1\n", argv[0]);
		return 2;
	}
	kern_set_threads(threads);
	kern_isa_limit(isa);
	printf("threads %d, path %s%s, batch %u, %s time\n", kern_threads(), isa_names[kern_isa()],
	       batch > KERN_FUSED_BATCH ? " (tiled)" : "", batch, use_cpu_time ? "CPU" : "wall");
	printf("%-9s %-10s %-6s %8s %7s %9s %9s %7s %7s\n", "format", "shape", "regime",
	       "us/call", "GB/s", "copy1", "copyN", "/copy1", "/copyN");

	for (char *save = NULL, *f = strtok_r(formats, ",", &save); f;
	     f = strtok_r(NULL, ",", &save)) {
		uint32_t format = !strcmp(f, "f32") ? KERN_FORMAT_F32 : k2_format_parse(f);
		if (format == K2_FORMAT_NONE) {
			fprintf(stderr, "%s: unknown format %s\n", argv[0], f);
			return 2;
		}
		for (int si = 0; si < 2; si++)
			for (int stream = 0; stream < 2; stream++)
				if (bench_case(f, format, shapes[si][0], shapes[si][1], stream, batch,
					       seconds) != 0) {
					fprintf(stderr, "%s: out of memory\n", argv[0]);
					return 1;
				}
	}
	return 0;
}
