/* prog_gpu_kernels.c — checks every CUDA kernel of kernels/backend_cuda.h
 * against its plain C reference on fresh random inputs, then measures the
 * expert kernels and the expert upload pipeline against ceilings measured in
 * the same run.
 *
 *   prog_gpu_kernels [--seed N] [--quick] [--no-bench] [--bench-only]
 *                    [--tmp DIR] [--verbose]
 *
 * Checks (relative error ‖out − ref‖ / ‖ref‖, in double; NaN never passes):
 *   - kcu_matmul, every format × rows {1,7,129,300} × cols {32,64,160,416} ×
 *     batch {1,3,8,11}, the fast and the scalar kernel, accumulate mode, a
 *     misaligned matrix, cols that are no multiple of the chunk, x too long for
 *     shared memory, Kimi-K2 expert shapes; against kern_matmul_ref; < 1e-3.
 *     The cuBLAS bf16 path (x rounded to bf16): < 1e-2.
 *   - kcu_expert_ffn on real expert images (layout/ quantizers, header page,
 *     sections where FORMAT.md puts them) uploaded through the GPU expert cache,
 *     gather/scatter of token rows with weights; against kern_expert_ffn; rows
 *     not routed must stay bit-identical.
 *   - kcu_rmsnorm / silu_mul / softmax / axpy / embed / rope / router /
 *     mla_cache_write against kern_rmsnorm_rows / kern_silu_mul / kern_softmax /
 *     kern_axpy / kern_embed / kern_rope_rows / kern_router /
 *     kern_mla_cache_write; both MLA attention paths (absorbed, and full over kv
 *     expanded by kcu_matmul) against kern_mla_attn (kern_mla_prepare'd kv_b),
 *     for one query and for several. The router's ids must match but for
 *     neighbours a float32 near-tie (< 1e-5 apart) may swap.
 *   - the expert cache: bytes landed equal the file's (multi-chunk loads,
 *     pread and memcpy sources), a short file and a bad descriptor report
 *     their error, a slot in use refuses a load, a slot being read by queued
 *     kernels is not overwritten before they finish.
 * The references are kernels.h's own functions on the same host inputs (never
 * copies of them here), so every comparison is float32 against float32.
 * Outputs are poisoned with NaN (0xff bytes) before every GPU run, so an
 * element the kernel does not write fails the check.
 *
 * Benchmarks: expert FFN at Kimi-K2 dims (gate/up 2048x7168, down 7168x2048),
 * batch 1, per format, weights rotating over copies larger than L2, as bytes
 * of weights and scales per second against a device-to-device copy (bytes read
 * + written); the upload pipeline (pread from a file in tmpfs → pinned staging
 * → slot) against cudaMemcpyAsync from pinned memory, for 1-8 I/O threads.
 *
 * Lines starting with "@@ " are the summary that tools/gpu-check.sh tabulates:
 *   @@ name | value | goal | PASS/FAIL/INFO
 * Exit status: 0 all checks passed, 1 a check failed, 77 no CUDA device (or a
 * build without CUDA), 2 bad usage. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend_cuda.h"
#include "kernels.h"
#include "layout.h"

#define TOL_F32 1e-3
#define TOL_BF16 1e-2

static kcu_ctx *ctx;
static int verbose, quick;
static int n_fail_total;

/* ---------------------------------------------------------------- random */

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* splitmix64 */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double urand(void) { return (rnd() >> 11) * (1.0 / 9007199254740992.0); }

/* A cheap bell-shaped variate of mean 0 and variance 1 (sum of four uniforms):
 * test data needs no exact Gaussian, and tens of millions are drawn. */
static float nrand(void)
{
	uint64_t r = rnd();
	uint32_t s = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) +
		     (uint32_t)((r >> 32) & 0xffff) + (uint32_t)(r >> 48);
	return ((float)s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

static void fill_normal(float *p, size_t n, float sigma)
{
	for (size_t i = 0; i < n; i++)
		p[i] = nrand() * sigma;
}

/* ---------------------------------------------------------------- helpers */

/* A CUDA error the checks cannot go on after (a faulting kernel poisons the
 * context): says so, with a summary row, and exits 1. */
static void die(const char *what, int rc)
{
	fprintf(stderr, "prog_gpu_kernels: %s: %s (%s)\n", what, strerror(rc < 0 ? -rc : rc),
		kcu_ctx_error(ctx));
	printf("@@ prog_gpu_kernels stopped | %s: %s | - | FAIL\n", what, kcu_ctx_error(ctx));
	exit(1);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		fprintf(stderr, "prog_gpu_kernels: out of memory (%zu bytes)\n", n);
		exit(1);
	}
	return p;
}

static void *dalloc(size_t n)
{
	void *p;
	int rc = kcu_alloc(ctx, n ? n : 16, &p);
	if (rc < 0)
		die("kcu_alloc", rc);
	return p;
}

static void *dup_to_dev(const void *h, size_t n)
{
	void *d = dalloc(n);
	int rc = kcu_upload(ctx, d, h, n);
	if (rc < 0)
		die("kcu_upload", rc);
	return d;
}

static void down(void *h, const void *d, size_t n)
{
	int rc = kcu_download(ctx, h, d, n);
	if (rc < 0)
		die("kcu_download (an earlier kernel may have faulted)", rc);
}

static void poison(void *d, size_t n)
{
	int rc = kcu_memset(ctx, d, 0xff, n);
	if (rc < 0)
		die("kcu_memset", rc);
}

/* Scratch of the kernels.h references that take an arena (created in main). */
static kern_arena *ref_arena;

/* A kernels.h reference refused its inputs or ran out of memory: the inputs
 * are this program's own, so the checks cannot go on. Says so and exits 1. */
static void ref_call(const char *what, int rc)
{
	if (rc >= 0)
		return;
	fprintf(stderr, "prog_gpu_kernels: reference %s: %s\n", what, strerror(-rc));
	printf("@@ prog_gpu_kernels stopped | reference %s: %s | - | FAIL\n", what, strerror(-rc));
	exit(1);
}

/* ‖out − ref‖ / ‖ref‖ in double; NaN when out holds a NaN or an infinity. */
static double relerr(const float *out, const float *ref, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		if (!isfinite(out[i]))
			return NAN;
		double d = (double)out[i] - ref[i];
		num += d * d;
		den += (double)ref[i] * ref[i];
	}
	if (den == 0)
		return sqrt(num);
	return sqrt(num / den);
}

/* The error of a GPU op's result: NaN (with CUDA's message) when the op
 * returned rc < 0, else dev [n] downloaded into out and compared with ref. */
static double dev_err(int rc, float *out, const float *dev, const float *ref, size_t n)
{
	if (rc < 0) {
		fprintf(stderr, "  %s\n", kcu_ctx_error(ctx));
		return NAN;
	}
	down(out, dev, n * 4);
	return relerr(out, ref, n);
}

/* Error of what an accumulating op added: (out − y0) against (ref − y0). */
static double relerr_delta(const float *out, const float *ref, const float *y0, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		if (!isfinite(out[i]))
			return NAN;
		double d = (double)out[i] - ref[i];
		double r = (double)ref[i] - y0[i];
		num += d * d;
		den += r * r;
	}
	if (den == 0)
		return sqrt(num);
	return sqrt(num / den);
}

/* One summary line per family of checks. */
struct agg {
	char name[64];
	double tol, worst;
	int cases, fails;
};

#define MAX_AGG 64
static struct agg aggs[MAX_AGG];
static int n_aggs;

static struct agg *agg_get(const char *name, double tol)
{
	for (int i = 0; i < n_aggs; i++)
		if (strcmp(aggs[i].name, name) == 0)
			return &aggs[i];
	if (n_aggs == MAX_AGG) {
		fprintf(stderr, "prog_gpu_kernels: too many check families\n");
		exit(1);
	}
	struct agg *a = &aggs[n_aggs++];
	memset(a, 0, sizeof(*a));
	snprintf(a->name, sizeof(a->name), "%s", name);
	a->tol = tol;
	return a;
}

/* Records one case; err NaN or ≥ tol fails. Returns 1 when it passed. */
static int check(const char *family, double tol, double err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int check(const char *family, double tol, double err, const char *fmt, ...)
{
	struct agg *a = agg_get(family, tol);
	int ok = err < tol; /* false for NaN */
	a->cases++;
	if (!ok)
		a->fails++;
	if (!isnan(a->worst) && (isnan(err) || err > a->worst)) /* NaN sticks */
		a->worst = err;
	if (!ok || verbose) {
		char what[256];
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(what, sizeof(what), fmt, ap);
		va_end(ap);
		printf("  %-5s %-22s %-48s err %.3e (tol %.0e)\n", ok ? "ok" : "FAIL", family, what,
		       err, tol);
	}
	if (!ok)
		n_fail_total++;
	return ok;
}

/* A pass/fail fact with no error figure (0 = passed). */
static void check_true(const char *family, int ok, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void check_true(const char *family, int ok, const char *fmt, ...)
{
	char what[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	check(family, 0.5, ok ? 0.0 : 1.0, "%s", what);
}

static void expect_rc(const char *family, int rc, int want, const char *what)
{
	check_true(family, rc == want, "%s: rc %d, expected %d", what, rc, want);
}

/* ---------------------------------------------------------------- matrices */

static const uint32_t all_formats[] = {
	K2_FORMAT_BF16, K2_FORMAT_FP8_B128, K2_FORMAT_INT8, K2_FORMAT_INT4_G32, KERN_FORMAT_F32,
};

static const char *fmt_name(uint32_t f)
{
	return f == KERN_FORMAT_F32 ? "f32" : k2_format_name(f);
}

/* Quantizes w [rows, cols] into format f: weights into qw, scales into qs. */
static void quantize(uint32_t f, const float *w, uint32_t rows, uint32_t cols, void *qw, void *qs)
{
	size_t n = (size_t)rows * cols;
	int rc = 0;
	switch (f) {
	case K2_FORMAT_BF16:
		for (size_t i = 0; i < n; i++)
			((uint16_t *)qw)[i] = k2q_f32_to_bf16(w[i]);
		break;
	case K2_FORMAT_FP8_B128:
		rc = k2q_quant_fp8_b128(w, rows, cols, qw, qs);
		break;
	case K2_FORMAT_INT8:
		rc = k2q_quant_int8_row(w, rows, cols, qw, qs);
		break;
	case K2_FORMAT_INT4_G32:
		rc = k2q_quant_int4_g32(w, rows, cols, qw, qs);
		break;
	default:
		memcpy(qw, w, n * 4);
	}
	if (rc < 0)
		die("quantizer", rc);
}

/* A matrix on both sides: h (host pointers) for the reference, d (device). */
struct tmat {
	kern_mat h, d;
	void *hw, *hs;
	uint8_t *dw_alloc;
	void *ds;
};

static void tmat_make(struct tmat *t, uint32_t f, uint32_t rows, uint32_t cols, int misalign)
{
	memset(t, 0, sizeof(*t));
	const kern_mat shape = {.format = f, .rows = rows, .cols = cols};
	const size_t wb = kern_mat_weight_bytes(&shape), sb = kern_mat_bytes(&shape) - wb;
	float *w = xmalloc((size_t)rows * cols * sizeof(float));
	fill_normal(w, (size_t)rows * cols, 1.0f / sqrtf((float)cols));
	t->hw = xmalloc(wb);
	t->hs = sb ? xmalloc(sb) : NULL;
	quantize(f, w, rows, cols, t->hw, t->hs);
	free(w);
	/* misaligned by one element: off every 16-byte boundary, still element-aligned */
	const size_t off = !misalign ? 0 : f == K2_FORMAT_BF16 ? 2 : f == KERN_FORMAT_F32 ? 4 : 1;
	t->dw_alloc = dalloc(wb + off);
	int rc = kcu_upload(ctx, t->dw_alloc + off, t->hw, wb);
	if (rc < 0)
		die("kcu_upload", rc);
	t->ds = sb ? dup_to_dev(t->hs, sb) : NULL;
	t->h = (kern_mat){.format = f, .rows = rows, .cols = cols, .w = t->hw, .s = t->hs};
	t->d = (kern_mat){.format = f, .rows = rows, .cols = cols, .w = t->dw_alloc + off, .s = t->ds};
}

static void tmat_free(struct tmat *t)
{
	free(t->hw);
	free(t->hs);
	kcu_free(ctx, t->dw_alloc);
	kcu_free(ctx, t->ds);
}

/* ---------------------------------------------------------------- kcu_matmul */

static void matmul_case(const char *family, double tol, uint32_t f, uint32_t rows, uint32_t cols,
			uint32_t batch, unsigned flags, int misalign)
{
	struct tmat m;
	tmat_make(&m, f, rows, cols, misalign & 1);
	size_t nx = (size_t)batch * cols, ny = (size_t)batch * rows;
	float *x = xmalloc(nx * 4), *ref = xmalloc(ny * 4), *out = xmalloc(ny * 4);
	float *y0 = xmalloc(ny * 4);
	fill_normal(x, nx, 1.0f);
	kern_matmul_ref(&m.h, x, batch, ref);
	/* misalign & 2: x one float off its 16-byte alignment */
	const size_t xoff = misalign & 2 ? 1 : 0;
	float *dx_alloc = dalloc((nx + xoff) * 4), *dx = dx_alloc + xoff, *dy = dalloc(ny * 4);
	int urc = kcu_upload(ctx, dx, x, nx * 4);
	if (urc < 0)
		die("kcu_upload", urc);
	if (flags & KCU_MM_ACCUMULATE) {
		fill_normal(y0, ny, 1.0f);
		for (size_t i = 0; i < ny; i++)
			ref[i] += y0[i];
		int rc = kcu_upload(ctx, dy, y0, ny * 4);
		if (rc < 0)
			die("kcu_upload", rc);
	} else {
		poison(dy, ny * 4);
	}
	int rc = kcu_matmul(ctx, &m.d, dx, batch, dy, flags);
	double err;
	if (rc < 0) {
		fprintf(stderr, "  kcu_matmul: %s\n", kcu_ctx_error(ctx));
		err = NAN;
	} else {
		down(out, dy, ny * 4);
		err = (flags & KCU_MM_ACCUMULATE) ? relerr_delta(out, ref, y0, ny) : relerr(out, ref, ny);
	}
	check(family, tol, err, "%s %ux%u batch %u%s%s%s%s%s", fmt_name(f), rows, cols, batch,
	      flags & KCU_MM_ACCUMULATE ? " acc" : "", flags & KCU_MM_GENERIC ? " scalar" : "",
	      flags & KCU_MM_GEMM ? " cublas" : "", misalign & 1 ? " misaligned W" : "",
	      misalign & 2 ? " misaligned x" : "");
	kcu_free(ctx, dx_alloc);
	kcu_free(ctx, dy);
	free(x);
	free(ref);
	free(out);
	free(y0);
	tmat_free(&m);
}

static void test_matmul(void)
{
	static const uint32_t rows_set[] = {1, 7, 129, 300};
	static const uint32_t cols_set[] = {32, 64, 160, 416};
	static const uint32_t batch_set[] = {1, 3, 8, 11};
	printf("== kcu_matmul\n");
	for (size_t fi = 0; fi < sizeof(all_formats) / sizeof(all_formats[0]); fi++) {
		const uint32_t f = all_formats[fi];
		char fam[64];
		snprintf(fam, sizeof(fam), "matmul %s", fmt_name(f));
		for (size_t ri = 0; ri < 4; ri++)
			for (size_t ci = 0; ci < 4; ci++)
				for (size_t bi = 0; bi < 4; bi++) {
					if (quick && (ri + ci + bi) % 3)
						continue;
					/* bf16 from batch 16 goes to cuBLAS: keep < 16 here */
					matmul_case(fam, TOL_F32, f, rows_set[ri], cols_set[ci],
						    batch_set[bi], 0, 0);
				}
		snprintf(fam, sizeof(fam), "matmul %s scalar", fmt_name(f));
		matmul_case(fam, TOL_F32, f, 129, 416, 3, KCU_MM_GENERIC, 0);
		matmul_case(fam, TOL_F32, f, 7, 160, 1, KCU_MM_GENERIC | KCU_MM_ACCUMULATE, 0);
		snprintf(fam, sizeof(fam), "matmul %s acc", fmt_name(f));
		matmul_case(fam, TOL_F32, f, 300, 416, 1, KCU_MM_ACCUMULATE, 0);
		matmul_case(fam, TOL_F32, f, 129, 64, 11, KCU_MM_ACCUMULATE, 0);
		snprintf(fam, sizeof(fam), "matmul %s odd", fmt_name(f));
		if (f != K2_FORMAT_INT4_G32) {
			matmul_case(fam, TOL_F32, f, 7, 100, 3, 0, 0);    /* cols % chunk != 0 */
			matmul_case(fam, TOL_F32, f, 300, 36, 1, 0, 0);
		}
		matmul_case(fam, TOL_F32, f, 129, 416, 3, 0, 1);         /* misaligned matrix */
		matmul_case(fam, TOL_F32, f, 300, 160, 5, 0, 2);         /* misaligned x */
		matmul_case(fam, TOL_F32, f, 3, 60000, 2, 0, 0);         /* x beyond shared memory */
		snprintf(fam, sizeof(fam), "matmul %s kimi", fmt_name(f));
		matmul_case(fam, TOL_F32, f, 2048, 7168, 1, 0, 0);
		matmul_case(fam, TOL_F32, f, 7168, 2048, quick ? 1 : 3, 0, 0);
	}
	printf("== kcu_matmul cuBLAS (bf16 path)\n");
	matmul_case("matmul bf16 cublas", TOL_BF16, K2_FORMAT_BF16, 300, 416, 16, 0, 0);
	matmul_case("matmul bf16 cublas", TOL_BF16, K2_FORMAT_BF16, 129, 160, 40, KCU_MM_ACCUMULATE, 0);
	matmul_case("matmul bf16 cublas", TOL_BF16, K2_FORMAT_BF16, 7, 32, 1, KCU_MM_GEMM, 0);
	matmul_case("matmul bf16 cublas", TOL_BF16, K2_FORMAT_BF16, 512, 7168, 33, 0, 0);
	/* batch ≥ 16 kept on the dequantizing kernels */
	matmul_case("matmul bf16 batch tiles", TOL_F32, K2_FORMAT_BF16, 129, 416, 37, KCU_MM_NO_GEMM, 0);
	matmul_case("matmul int4-g32 batch tiles", TOL_F32, K2_FORMAT_INT4_G32, 300, 416, 37, 0, 0);
	/* contract violations are refused, nothing launched */
	struct tmat m;
	tmat_make(&m, K2_FORMAT_INT8, 7, 32, 0);
	m.d.format = 77;
	float *d = dalloc(4096);
	expect_rc("matmul bad args", kcu_matmul(ctx, &m.d, d, 1, d + 512, 0), -EINVAL, "unknown format");
	m.d.format = K2_FORMAT_INT4_G32;
	m.d.cols = 48;
	expect_rc("matmul bad args", kcu_matmul(ctx, &m.d, d, 1, d + 512, 0), -EINVAL,
		  "int4 cols 48");
	m.d.format = K2_FORMAT_INT8;
	m.d.cols = 32;
	expect_rc("matmul bad args", kcu_matmul(ctx, &m.d, d, 1, d + 512, KCU_MM_GEMM), -EINVAL,
		  "cuBLAS with int8");
	kcu_free(ctx, d);
	tmat_free(&m);
}

/* ---------------------------------------------------------------- expert FFN */

/* A host expert image with real quantized sections. */
static uint8_t *make_image(uint32_t f, uint32_t H, uint32_t I, k2x_layout *lay)
{
	if (k2x_layout_compute(f, H, I, 1, 17, lay) < 0)
		die("k2x_layout_compute", -EINVAL);
	uint8_t *img = calloc(1, lay->image_bytes);
	if (!img)
		die("image", -ENOMEM);
	k2x_header_write(lay, img);
	for (int m = 0; m < 3; m++) {
		uint32_t rows = m < 2 ? I : H, cols = m < 2 ? H : I;
		float *w = xmalloc((size_t)rows * cols * sizeof(float));
		fill_normal(w, (size_t)rows * cols, 1.0f / sqrtf((float)cols));
		quantize(f, w, rows, cols, img + lay->sec[2 * m].offset,
			 lay->sec[2 * m + 1].bytes ? img + lay->sec[2 * m + 1].offset : NULL);
		free(w);
	}
	k2_err err;
	k2x_layout chk;
	if (k2x_header_parse(img, K2X_HEADER_BYTES, lay->image_bytes, "test image", &chk, &err) < 0) {
		fprintf(stderr, "prog_gpu_kernels: %s\n", err.msg);
		exit(1);
	}
	return img;
}

static void expert_case(kcu_cache *cache, uint32_t slot, uint32_t f, uint32_t H, uint32_t I,
			uint32_t n_tok, uint32_t batch, int gather)
{
	k2x_layout lay;
	uint8_t *img = make_image(f, H, I, &lay);
	k2_err err;
	err.msg[0] = 0;
	int rc = kcu_cache_load_mem(cache, slot, img, lay.image_bytes, 1);
	if (rc == 0)
		rc = kcu_cache_begin_use(cache, slot, &err);
	if (rc < 0) {
		fprintf(stderr, "  expert cache load: %s\n", err.msg);
		check("expert ffn", TOL_F32, NAN, "%s load failed", fmt_name(f));
		free(img);
		return;
	}
	kern_mat hm[3], dm[3];
	kcu_expert_mats(&lay, img, hm);
	kcu_expert_mats(&lay, kcu_cache_slot(cache, slot), dm);

	size_t nx = (size_t)n_tok * H;
	float *x = xmalloc(nx * 4), *y0 = xmalloc(nx * 4), *ref = xmalloc(nx * 4), *out = xmalloc(nx * 4);
	int32_t *rows = xmalloc(batch * 4);
	float *wts = xmalloc(batch * 4);
	fill_normal(x, nx, 1.0f);
	fill_normal(y0, nx, 0.5f);
	/* distinct token rows in a scrambled order */
	for (uint32_t b = 0; b < batch; b++)
		rows[b] = (int32_t)((b * 7 + 3) % n_tok);
	for (uint32_t b = 0; b < batch; b++)
		wts[b] = 0.1f + (float)urand();
	memcpy(ref, y0, nx * 4);
	ref_call("kern_expert_ffn", kern_expert_ffn(hm, x, batch, gather ? rows : NULL,
						    gather ? wts : NULL, ref, 1, ref_arena));

	float *dx = dup_to_dev(x, nx * 4), *dy = dup_to_dev(y0, nx * 4);
	int32_t *drows = dup_to_dev(rows, batch * 4);
	float *dw = dup_to_dev(wts, batch * 4);
	float *dscr = dalloc((size_t)batch * I * 4);
	poison(dscr, (size_t)batch * I * 4);
	rc = kcu_expert_ffn(ctx, dm, dx, batch, gather ? drows : NULL, gather ? dw : NULL, dy, dscr);
	int rc2 = kcu_cache_end_use(cache, slot);
	double e = NAN;
	int untouched_ok = 1;
	if (rc < 0 || rc2 < 0) {
		fprintf(stderr, "  kcu_expert_ffn: %s\n", kcu_ctx_error(ctx));
	} else {
		down(out, dy, nx * 4);
		e = relerr_delta(out, ref, y0, nx);
		/* rows no token of the batch maps to must be left bit-identical */
		for (uint32_t t = 0; t < n_tok; t++) {
			int routed = 0;
			for (uint32_t b = 0; b < batch; b++)
				if ((gather ? (uint32_t)rows[b] : b) == t)
					routed = 1;
			if (!routed && memcmp(out + (size_t)t * H, y0 + (size_t)t * H, H * 4) != 0)
				untouched_ok = 0;
		}
	}
	char fam[64];
	snprintf(fam, sizeof(fam), "expert ffn %s", fmt_name(f));
	check(fam, TOL_F32, e, "H %u I %u batch %u of %u tokens%s", H, I, batch, n_tok,
	      gather ? " gather+weights" : "");
	check_true(fam, untouched_ok, "H %u I %u: rows not routed unchanged", H, I);
	kcu_free(ctx, dx);
	kcu_free(ctx, dy);
	kcu_free(ctx, drows);
	kcu_free(ctx, dw);
	kcu_free(ctx, dscr);
	free(x);
	free(y0);
	free(ref);
	free(out);
	free(rows);
	free(wts);
	free(img);
}

static void test_expert_ffn(void)
{
	printf("== kcu_expert_ffn (images in cache slots)\n");
	k2x_layout big;
	k2x_layout_compute(K2_FORMAT_BF16, 7168, 2048, 0, 0, &big);
	kcu_cache_opts o = {.n_slots = 2, .slot_bytes = big.image_bytes, .io_threads = 2,
			    .n_staging = 4, .staging_bytes = 4u << 20};
	kcu_cache *cache;
	k2_err err;
	int rc = kcu_cache_create(ctx, &o, &cache, &err);
	if (rc < 0) {
		fprintf(stderr, "prog_gpu_kernels: %s\n", err.msg);
		check("expert ffn", TOL_F32, NAN, "cache create");
		return;
	}
	for (size_t fi = 0; fi < 4; fi++) { /* the four expert formats */
		const uint32_t f = all_formats[fi];
		expert_case(cache, 0, f, 256, 64, 1, 1, 0);     /* the fixtures' dims */
		expert_case(cache, 1, f, 256, 64, 10, 5, 1);
		expert_case(cache, 0, f, 416, 160, 12, 11, 1);  /* two batch tiles */
		expert_case(cache, 1, f, 7168, 2048, 1, 1, 0);  /* Kimi-K2 */
		if (!quick)
			expert_case(cache, 0, f, 7168, 2048, 4, 3, 1);
	}
	kcu_cache_destroy(cache);
}

/* ---------------------------------------------------------------- elementwise */

static void test_elementwise(void)
{
	printf("== rmsnorm, silu_mul, softmax, axpy, embed\n");
	static const uint32_t ns[] = {1, 7, 256, 7168, 18432};
	for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
		const uint32_t n = ns[i], rows = 5;
		float *x = xmalloc((size_t)rows * n * 4), *w = xmalloc(n * 4);
		float *ref = xmalloc((size_t)rows * n * 4), *out = xmalloc((size_t)rows * n * 4);
		fill_normal(x, (size_t)rows * n, 2.0f);
		for (uint32_t k = 0; k < n; k++)
			w[k] = 1.0f + 0.1f * nrand();
		kern_rmsnorm_rows(ref, x, w, rows, n, 1e-6f);
		float *dx = dup_to_dev(x, (size_t)rows * n * 4), *dw = dup_to_dev(w, n * 4);
		float *dy = dalloc((size_t)rows * n * 4);
		poison(dy, (size_t)rows * n * 4);
		int rc = kcu_rmsnorm(ctx, dy, dx, dw, rows, n, 1e-6f);
		double e = dev_err(rc, out, dy, ref, (size_t)rows * n);
		check("rmsnorm", TOL_F32, e, "%u rows of %u", rows, n);
		rc = kcu_rmsnorm(ctx, dx, dx, dw, rows, n, 1e-6f); /* in place */
		e = dev_err(rc, out, dx, ref, (size_t)rows * n);
		check("rmsnorm", TOL_F32, e, "%u rows of %u in place", rows, n);
		kcu_free(ctx, dx);
		kcu_free(ctx, dw);
		kcu_free(ctx, dy);
		free(x);
		free(w);
		free(ref);
		free(out);
	}

	static const uint32_t ms[] = {1, 1000, 100003};
	for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
		const uint32_t n = ms[i];
		float *g = xmalloc(n * 4), *u = xmalloc(n * 4), *ref = xmalloc(n * 4), *out = xmalloc(n * 4);
		fill_normal(g, n, 3.0f);
		fill_normal(u, n, 1.0f);
		memcpy(ref, g, n * 4);
		kern_silu_mul(ref, u, n);
		float *dg = dup_to_dev(g, n * 4), *du = dup_to_dev(u, n * 4);
		int rc = kcu_silu_mul(ctx, dg, du, n);
		double e = dev_err(rc, out, dg, ref, n);
		check("silu_mul", TOL_F32, e, "n %u", n);

		/* axpy: y += a x */
		const float a = (float)(urand() * 4 - 2);
		memcpy(ref, u, n * 4);
		kern_axpy(ref, a, g, n);
		float *dy = dup_to_dev(u, n * 4);
		kcu_free(ctx, dg);
		dg = dup_to_dev(g, n * 4);
		rc = kcu_axpy(ctx, dy, a, dg, n);
		e = NAN;
		if (rc == 0) {
			down(out, dy, n * 4);
			e = relerr_delta(out, ref, u, n);
		}
		check("axpy", TOL_F32, e, "n %u a %.3f", n, a);
		kcu_free(ctx, dg);
		kcu_free(ctx, du);
		kcu_free(ctx, dy);
		free(g);
		free(u);
		free(ref);
		free(out);
	}

	static const uint32_t ss[] = {1, 33, 4097, 163840};
	for (size_t i = 0; i < sizeof(ss) / sizeof(ss[0]); i++) {
		const uint32_t n = ss[i], rows = 3;
		float *x = xmalloc((size_t)rows * n * 4), *ref = xmalloc((size_t)rows * n * 4);
		float *out = xmalloc((size_t)rows * n * 4);
		fill_normal(x, (size_t)rows * n, 4.0f);
		memcpy(ref, x, (size_t)rows * n * 4);
		for (uint32_t r = 0; r < rows; r++)
			kern_softmax(ref + (size_t)r * n, n);
		float *dx = dup_to_dev(x, (size_t)rows * n * 4);
		int rc = kcu_softmax(ctx, dx, rows, n);
		double e = dev_err(rc, out, dx, ref, (size_t)rows * n);
		check("softmax", TOL_F32, e, "%u rows of %u", rows, n);
		kcu_free(ctx, dx);
		free(x);
		free(ref);
		free(out);
	}

	for (size_t fi = 0; fi < sizeof(all_formats) / sizeof(all_formats[0]); fi++) {
		const uint32_t f = all_formats[fi], rows = 300, cols = 416, n = 9;
		struct tmat m;
		tmat_make(&m, f, rows, cols, 0);
		int32_t ids[9];
		for (uint32_t k = 0; k < n; k++)
			ids[k] = (int32_t)(rnd() % rows);
		ids[3] = ids[1];    /* a repeated id */
		ids[8] = rows - 1;  /* the last row */
		float *ref = xmalloc((size_t)n * cols * 4), *out = xmalloc((size_t)n * cols * 4);
		ref_call("kern_embed", kern_embed(&m.h, ids, n, ref));
		int32_t *dids = dup_to_dev(ids, sizeof(ids));
		float *dout = dalloc((size_t)n * cols * 4);
		poison(dout, (size_t)n * cols * 4);
		int rc = kcu_embed(ctx, &m.d, dids, n, dout);
		double e = dev_err(rc, out, dout, ref, (size_t)n * cols);
		check("embed", TOL_F32, e, "%s %ux%u, %u ids", fmt_name(f), rows, cols, n);
		/* an id outside the vocabulary gives NaN, never a read out of bounds */
		int32_t bad[2] = {(int32_t)rows, -1};
		kcu_free(ctx, dids);
		dids = dup_to_dev(bad, sizeof(bad));
		rc = kcu_embed(ctx, &m.d, dids, 2, dout);
		int all_nan = rc == 0;
		if (rc == 0) {
			down(out, dout, (size_t)2 * cols * 4);
			for (size_t k = 0; k < (size_t)2 * cols; k++)
				if (!isnan(out[k]))
					all_nan = 0;
		}
		check_true("embed", all_nan, "%s ids %d and -1 give NaN rows", fmt_name(f), (int)rows);
		kcu_free(ctx, dids);
		kcu_free(ctx, dout);
		free(ref);
		free(out);
		tmat_free(&m);
	}
}

/* ---------------------------------------------------------------- RoPE */

/* YaRN-like inverse frequencies: base^(−2i/d) blended towards /factor. */
static void make_inv_freq(float *inv, uint32_t rope, float base, float factor)
{
	const uint32_t half = rope / 2;
	for (uint32_t i = 0; i < half; i++) {
		float pf = powf(base, (float)(2 * i) / (float)rope);
		float ramp = half > 1 ? (float)i / (float)(half - 1) : 0.0f;
		inv[i] = (1.0f / pf) * (1.0f - ramp) + (1.0f / (factor * pf)) * ramp;
	}
}

static void test_rope(void)
{
	printf("== kcu_rope\n");
	static const struct { uint32_t T, nh, nope, rope, pos0; } cs[] = {
		{1, 1, 0, 16, 0},      {5, 4, 32, 16, 1000},  {1, 64, 128, 64, 130000},
		{3, 6, 16, 32, 7},     {2, 3, 0, 256, 4095},  {7, 2, 8, 2, 99999},
	};
	for (size_t k = 0; k < sizeof(cs) / sizeof(cs[0]); k++) {
		const uint32_t T = cs[k].T, nh = cs[k].nh, nope = cs[k].nope, rope = cs[k].rope;
		const uint32_t qk = nope + rope, pos0 = cs[k].pos0;
		const size_t n = (size_t)T * nh * qk;
		float *x = xmalloc(n * 4), *ref = xmalloc(n * 4), *out = xmalloc(n * 4);
		float inv[128];
		make_inv_freq(inv, rope, 50000.0f, 32.0f);
		const float mscale = 1.0f + 0.3f * (float)urand();
		fill_normal(x, n, 1.0f);
		memcpy(ref, x, n * 4);
		kern_rope_rows(ref, T, nh, nh * qk, qk, nope, rope, pos0, inv, mscale);
		float *dx = dup_to_dev(x, n * 4), *dinv = dup_to_dev(inv, rope / 2 * 4);
		int rc = kcu_rope(ctx, dx, T, nh, nh * qk, qk, nope, rope, pos0, dinv, mscale);
		double e = dev_err(rc, out, dx, ref, n); /* nope parts must come back unchanged */
		check("rope", TOL_F32, e, "T %u heads %u nope %u rope %u pos0 %u", T, nh, nope, rope,
		      pos0);
		kcu_free(ctx, dx);
		kcu_free(ctx, dinv);
		free(x);
		free(ref);
		free(out);
	}
}

/* ---------------------------------------------------------------- router */

/* Tie detection, not a reference (kern_router is the reference): whether
 * kern_router, routing one token (logits [E]) with expert x's bias raised by
 * `nudge`, ranks x ahead of y (or picks x and not y). */
static int router_prefers(const kern_router_params *p, const float *logits, const float *bias,
			  int32_t x, int32_t y, float nudge)
{
	const uint32_t E = p->n_experts, K = p->top_k;
	float *b = xmalloc(E * 4), *w = xmalloc(K * 4);
	int32_t *idx = xmalloc(K * 4);
	for (uint32_t e = 0; e < E; e++)
		b[e] = bias ? bias[e] : 0.0f;
	b[x] += nudge;
	ref_call("kern_router", kern_router(p, logits, b, 1, idx, w));
	int ahead = 0;
	for (uint32_t k = 0; k < K && idx[k] != y; k++)
		ahead |= idx[k] == x;
	free(b);
	free(w);
	free(idx);
	return ahead;
}

/* Tie detection: experts x and y are a float32 near-tie when each, its biased
 * choice value raised by 1e-5, ranks ahead of the other: their choice values
 * (after the group limit) are less than 1e-5 apart, and rounding that differs
 * between the GPU and the CPU may swap them. */
static int router_near_tie(const kern_router_params *p, const float *logits, const float *bias,
			   int32_t x, int32_t y)
{
	return router_prefers(p, logits, bias, x, y, 1e-5f) &&
	       router_prefers(p, logits, bias, y, x, 1e-5f);
}

static void test_router(void)
{
	printf("== kcu_router\n");
	static const struct { uint32_t E, G, TG, K; int norm, bias; float bias_sigma; } cs[] = {
		{384, 1, 1, 8, 1, 1, 0.05f},  /* Kimi-K2 */
		{256, 8, 4, 8, 1, 1, 0.05f},  /* DeepSeek-V3 */
		{32, 1, 1, 8, 1, 1, 0.05f},   /* the fixtures */
		{64, 4, 2, 6, 0, 1, 0.05f},
		{96, 4, 2, 5, 1, 0, 0.05f},
		{1024, 64, 7, 32, 1, 1, 0.05f},
		/* biased scores below 0: experts of dropped groups (0.0) must outrank them */
		{32, 8, 2, 8, 1, 1, 1.0f},
	};
	const uint32_t T = 9;
	for (size_t c = 0; c < sizeof(cs) / sizeof(cs[0]); c++) {
		kern_router_params p = {.n_experts = cs[c].E, .n_group = cs[c].G, .topk_group = cs[c].TG,
				       .top_k = cs[c].K, .norm_topk_prob = cs[c].norm,
				       .routed_scaling_factor = 2.827f};
		const uint32_t E = p.n_experts, K = p.top_k;
		float *lg = xmalloc((size_t)T * E * 4), *bias = xmalloc(E * 4);
		fill_normal(lg, (size_t)T * E, 2.0f);
		fill_normal(bias, E, cs[c].bias_sigma);
		int32_t *ridx = xmalloc((size_t)T * K * 4), *gidx = xmalloc((size_t)T * K * 4);
		float *rw = xmalloc((size_t)T * K * 4), *gw = xmalloc((size_t)T * K * 4);
		float *dlg = dup_to_dev(lg, (size_t)T * E * 4), *dbias = dup_to_dev(bias, E * 4);
		int32_t *didx = dalloc((size_t)T * K * 4);
		float *dw = dalloc((size_t)T * K * 4);
		poison(didx, (size_t)T * K * 4);
		poison(dw, (size_t)T * K * 4);
		const float *hbias = cs[c].bias ? bias : NULL;
		int rc = kcu_router(ctx, &p, dlg, cs[c].bias ? dbias : NULL, T, didx, dw);
		ref_call("kern_router", kern_router(&p, lg, hbias, T, ridx, rw));
		int ids_ok = rc == 0, ties = 0;
		double e = NAN;
		if (rc == 0) {
			down(gidx, didx, (size_t)T * K * 4);
			down(gw, dw, (size_t)T * K * 4);
			for (uint32_t t = 0; t < T; t++)
				for (uint32_t k = 0; k < K; k++) {
					const int32_t *g = gidx + (size_t)t * K;
					const int32_t gi = g[k], ri = ridx[(size_t)t * K + k];
					int valid = gi >= 0 && (uint32_t)gi < E;
					for (uint32_t j = 0; j < k; j++)
						valid &= g[j] != gi; /* each expert at most once */
					if (!valid) {
						ids_ok = 0;
					} else if (gi != ri) {
						/* a float32 near-tie may swap neighbours: accept only then */
						if (router_near_tie(&p, lg + (size_t)t * E, hbias, gi, ri))
							ties++;
						else
							ids_ok = 0;
					}
				}
			e = ties ? 0 : relerr(gw, rw, (size_t)T * K);
			if (ties) { /* compare weights as sets keyed by expert */
				double num = 0, den = 0;
				for (uint32_t t = 0; t < T; t++)
					for (uint32_t k = 0; k < K; k++) {
						double r = rw[(size_t)t * K + k], g = NAN;
						for (uint32_t j = 0; j < K; j++)
							if (gidx[(size_t)t * K + j] == ridx[(size_t)t * K + k])
								g = gw[(size_t)t * K + j];
						if (isnan(g))
							continue; /* the tied pair: its weight differs by < 1e-5 */
						num += (g - r) * (g - r);
						den += r * r;
					}
				e = sqrt(num / den);
			}
		}
		check_true("router ids", ids_ok, "E %u groups %u/%u top %u%s%s (%d near-ties)", E,
			   p.topk_group, p.n_group, K, cs[c].norm ? "" : " unnormalised",
			   cs[c].bias ? "" : " no bias", ties);
		check("router weights", TOL_F32, e, "E %u groups %u/%u top %u", E, p.topk_group,
		      p.n_group, K);
		kcu_free(ctx, dlg);
		kcu_free(ctx, dbias);
		kcu_free(ctx, didx);
		kcu_free(ctx, dw);
		free(lg);
		free(bias);
		free(ridx);
		free(gidx);
		free(rw);
		free(gw);
	}
	kern_router_params bad = {.n_experts = 30, .n_group = 4, .topk_group = 1, .top_k = 2,
				 .norm_topk_prob = 1, .routed_scaling_factor = 1};
	float *d = dalloc(4096);
	expect_rc("router bad args", kcu_router(ctx, &bad, d, NULL, 1, (int32_t *)(d + 256), d + 512),
		  -EINVAL, "30 experts in 4 groups");
	kcu_free(ctx, d);
}

/* ---------------------------------------------------------------- MLA */

static void test_mla_cache_write(void)
{
	printf("== kcu_mla_cache_write\n");
	static const struct { uint32_t kv_lora, rope, T, pos0; } cs[] = {
		{64, 16, 1, 0}, {64, 16, 6, 37}, {512, 64, 1, 4095}, {512, 64, 5, 100}, {96, 32, 3, 0},
	};
	for (size_t k = 0; k < sizeof(cs) / sizeof(cs[0]); k++) {
		kern_mla_dims d = {.n_heads = 1, .kv_lora = cs[k].kv_lora, .nope = 1, .rope = cs[k].rope,
				  .v = 1};
		const uint32_t T = cs[k].T, pos0 = cs[k].pos0, R = d.kv_lora, P = d.rope;
		const uint32_t maxp = pos0 + T + 3;
		float *kva = xmalloc((size_t)T * (R + P) * 4), *nw = xmalloc(R * 4);
		float *rc_ckv = xmalloc((size_t)maxp * R * 4), *rc_kpe = xmalloc((size_t)maxp * P * 4);
		float *oc = xmalloc((size_t)maxp * R * 4), *op = xmalloc((size_t)maxp * P * 4);
		float inv[128];
		make_inv_freq(inv, P, 50000.0f, 32.0f);
		const float mscale = 1.0f + 0.2f * (float)urand();
		fill_normal(kva, (size_t)T * (R + P), 1.5f);
		for (uint32_t i = 0; i < R; i++)
			nw[i] = 1.0f + 0.1f * nrand();
		kern_mla_cache_write(&d, kva, T, pos0, nw, 1e-6f, inv, mscale, rc_ckv, rc_kpe);
		float *dkva = dup_to_dev(kva, (size_t)T * (R + P) * 4), *dnw = dup_to_dev(nw, R * 4);
		float *dinv = dup_to_dev(inv, P / 2 * 4);
		float *dc = dalloc((size_t)maxp * R * 4), *dp = dalloc((size_t)maxp * P * 4);
		poison(dc, (size_t)maxp * R * 4);
		poison(dp, (size_t)maxp * P * 4);
		int rc = kcu_mla_cache_write(ctx, &d, dkva, T, pos0, dnw, 1e-6f, dinv, mscale, dc, dp);
		double e1 = NAN, e2 = NAN;
		int others_nan = rc == 0;
		if (rc == 0) {
			down(oc, dc, (size_t)maxp * R * 4);
			down(op, dp, (size_t)maxp * P * 4);
			e1 = relerr(oc + (size_t)pos0 * R, rc_ckv + (size_t)pos0 * R, (size_t)T * R);
			e2 = relerr(op + (size_t)pos0 * P, rc_kpe + (size_t)pos0 * P, (size_t)T * P);
			for (uint32_t p = 0; p < maxp; p++) {
				if (p >= pos0 && p < pos0 + T)
					continue;
				if (!isnan(oc[(size_t)p * R]) || !isnan(op[(size_t)p * P + P - 1]))
					others_nan = 0;
			}
		}
		check("mla cache ckv", TOL_F32, e1, "kv_lora %u T %u pos0 %u", R, T, pos0);
		check("mla cache kpe", TOL_F32, e2, "rope %u T %u pos0 %u", P, T, pos0);
		check_true("mla cache bounds", others_nan, "kv_lora %u T %u pos0 %u: other rows untouched",
			   R, T, pos0);
		kcu_free(ctx, dkva);
		kcu_free(ctx, dnw);
		kcu_free(ctx, dinv);
		kcu_free(ctx, dc);
		kcu_free(ctx, dp);
		free(kva);
		free(nw);
		free(rc_ckv);
		free(rc_kpe);
		free(oc);
		free(op);
	}
}

static void mla_case(const kern_mla_dims *d, uint32_t kvb_fmt, uint32_t T, uint32_t pos0)
{
	const uint32_t nh = d->n_heads, R = d->kv_lora, P = d->rope, V = d->v;
	const uint32_t S = pos0 + T, qk = d->nope + P, kvh = d->nope + V;
	const float scale = 1.0f / sqrtf((float)qk) * 1.3f;
	struct tmat kvb;
	tmat_make(&kvb, kvb_fmt, nh * kvh, R, 0);
	float *ckv = xmalloc((size_t)S * R * 4), *kpe = xmalloc((size_t)S * P * 4);
	float *q = xmalloc((size_t)T * nh * qk * 4);
	const size_t no = (size_t)T * nh * V;
	float *ref = xmalloc(no * 4), *out = xmalloc(no * 4);
	fill_normal(ckv, (size_t)S * R, 1.0f);
	fill_normal(kpe, (size_t)S * P, 1.0f);
	fill_normal(q, (size_t)T * nh * qk, 1.0f);
	/* kern_mla_attn runs its absorbed form for T = 1, its expanded one for
	 * T > 1; both CUDA forms are checked against it for every T */
	kern_mla_w *mw;
	ref_call("kern_mla_prepare", kern_mla_prepare(d, &kvb.h, &mw));
	ref_call("kern_mla_attn", kern_mla_attn(mw, q, ckv, kpe, T, pos0, scale, ref, ref_arena));
	kern_mla_free(mw);
	float *dckv = dup_to_dev(ckv, (size_t)S * R * 4), *dkpe = dup_to_dev(kpe, (size_t)S * P * 4);
	float *dq = dup_to_dev(q, (size_t)T * nh * qk * 4), *dout = dalloc(no * 4);
	char fam[64];

	/* full: kv reconstructed by kcu_matmul, any format */
	float *dkv = dalloc((size_t)S * nh * kvh * 4);
	poison(dkv, (size_t)S * nh * kvh * 4);
	poison(dout, no * 4);
	/* float32 products: from batch 16 bf16 would go to cuBLAS (bf16 x) */
	int rc = kcu_matmul(ctx, &kvb.d, dckv, S, dkv, KCU_MM_NO_GEMM);
	if (rc == 0)
		rc = kcu_mla_attn_full(ctx, d, dq, dkv, dkpe, T, pos0, scale, dout);
	double e = dev_err(rc, out, dout, ref, no);
	snprintf(fam, sizeof(fam), "mla full kv_b %s", fmt_name(kvb_fmt));
	check(fam, TOL_F32, e, "heads %u R %u nope %u rope %u v %u T %u pos0 %u", nh, R, d->nope, P, V,
	      T, pos0);

	if (kvb_fmt == K2_FORMAT_BF16 || kvb_fmt == KERN_FORMAT_F32) {
		float *dscr = dalloc(kcu_mla_scratch_floats(d, T) * 4);
		poison(dscr, kcu_mla_scratch_floats(d, T) * 4);
		poison(dout, no * 4);
		rc = kcu_mla_attn_absorbed(ctx, d, &kvb.d, dq, dckv, dkpe, T, pos0, scale, dout, dscr);
		e = dev_err(rc, out, dout, ref, no);
		snprintf(fam, sizeof(fam), "mla absorbed kv_b %s", fmt_name(kvb_fmt));
		check(fam, TOL_F32, e, "heads %u R %u nope %u rope %u v %u T %u pos0 %u", nh, R,
		      d->nope, P, V, T, pos0);
		kcu_free(ctx, dscr);
	}
	kcu_free(ctx, dkv);
	kcu_free(ctx, dckv);
	kcu_free(ctx, dkpe);
	kcu_free(ctx, dq);
	kcu_free(ctx, dout);
	free(ckv);
	free(kpe);
	free(q);
	free(ref);
	free(out);
	tmat_free(&kvb);
}

static void test_mla(void)
{
	printf("== MLA attention (full and absorbed)\n");
	const kern_mla_dims tiny = {.n_heads = 4, .kv_lora = 64, .nope = 32, .rope = 16, .v = 32};
	const kern_mla_dims ds3 = {.n_heads = 6, .kv_lora = 96, .nope = 16, .rope = 32, .v = 48};
	const kern_mla_dims kimi = {.n_heads = 4, .kv_lora = 512, .nope = 128, .rope = 64, .v = 128};
	const kern_mla_dims odd = {.n_heads = 3, .kv_lora = 40, .nope = 24, .rope = 8, .v = 20};
	static const struct { uint32_t T, pos0; } tp[] = {{1, 0}, {1, 1}, {1, 77}, {7, 0}, {7, 13}};
	for (size_t k = 0; k < sizeof(tp) / sizeof(tp[0]); k++) {
		mla_case(&tiny, KERN_FORMAT_F32, tp[k].T, tp[k].pos0);
		mla_case(&tiny, K2_FORMAT_BF16, tp[k].T, tp[k].pos0);
		mla_case(&ds3, K2_FORMAT_BF16, tp[k].T, tp[k].pos0);
		mla_case(&odd, KERN_FORMAT_F32, tp[k].T, tp[k].pos0);
	}
	mla_case(&tiny, K2_FORMAT_FP8_B128, 1, 30);
	mla_case(&tiny, K2_FORMAT_INT8, 5, 3);
	mla_case(&kimi, K2_FORMAT_BF16, 1, 0);
	mla_case(&kimi, K2_FORMAT_BF16, 1, quick ? 40 : 200);
	mla_case(&kimi, K2_FORMAT_BF16, 4, 9);
	mla_case(&ds3, K2_FORMAT_BF16, 1, 1000);
}

/* ---------------------------------------------------------------- expert cache */

static const char *tmp_dir = NULL;

/* A file of n random bytes in the temporary directory; returns an open fd. */
static int make_file(size_t n, uint8_t **data_out, char *path, size_t pathn)
{
	snprintf(path, pathn, "%s/prog_gpu_kernels.%d.%llu", tmp_dir, (int)getpid(),
		 (unsigned long long)(rnd() & 0xffffff));
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) {
		fprintf(stderr, "prog_gpu_kernels: %s: %s\n", path, strerror(errno));
		exit(1);
	}
	uint8_t *d = xmalloc(n);
	for (size_t i = 0; i < n; i += 8) {
		uint64_t r = rnd();
		memcpy(d + i, &r, n - i < 8 ? n - i : 8);
	}
	for (size_t done = 0; done < n;) {
		ssize_t w = write(fd, d + done, n - done);
		if (w <= 0) {
			fprintf(stderr, "prog_gpu_kernels: writing %s: %s\n", path, strerror(errno));
			exit(1);
		}
		done += (size_t)w;
	}
	*data_out = d;
	return fd;
}

static void test_cache(void)
{
	printf("== GPU expert cache\n");
	const uint32_t n_slots = 3;
	const uint64_t slot_bytes = (3u << 20) + 4096;
	kcu_cache_opts o = {.n_slots = n_slots, .slot_bytes = slot_bytes, .io_threads = 3,
			    .n_staging = 4, .staging_bytes = 1u << 20};
	kcu_cache *c;
	k2_err err;
	int rc = kcu_cache_create(ctx, &o, &c, &err);
	if (rc < 0) {
		fprintf(stderr, "prog_gpu_kernels: %s\n", err.msg);
		check_true("cache", 0, "create");
		return;
	}
	check_true("cache", kcu_cache_n_slots(c) == n_slots && kcu_cache_slot_bytes(c) >= slot_bytes,
		   "geometry");
	const size_t file_n = 8u << 20;
	uint8_t *data;
	char path[512];
	int fd = make_file(file_n, &data, path, sizeof(path));
	uint8_t *back = xmalloc(slot_bytes);

	/* 12 loads cycling through the slots, lengths crossing chunk bounds */
	int bytes_ok = 1;
	for (int k = 0; k < 12; k++) {
		const uint32_t slot = (uint32_t)k % n_slots;
		const uint64_t len = 1 + rnd() % slot_bytes;
		const uint64_t off = rnd() % (file_n - len);
		const int from_mem = k % 3 == 2;
		rc = from_mem ? kcu_cache_load_mem(c, slot, data + off, len, k & 1)
			      : kcu_cache_load_fd(c, slot, fd, off, len, k & 1);
		if (rc == 0)
			rc = kcu_cache_begin_use(c, slot, &err);
		if (rc < 0) {
			fprintf(stderr, "  load %d: rc %d %s\n", k, rc, err.msg);
			bytes_ok = 0;
			continue;
		}
		down(back, kcu_cache_slot(c, slot), len);
		if (memcmp(back, data + off, len) != 0) {
			fprintf(stderr, "  load %d: slot %u differs from the source (%llu bytes at %llu)\n",
				k, slot, (unsigned long long)len, (unsigned long long)off);
			bytes_ok = 0;
		}
		if (kcu_cache_end_use(c, slot) < 0)
			bytes_ok = 0;
	}
	check_true("cache", bytes_ok, "12 loads (pread and memcpy) land byte-exact");

	/* several loads in flight at once, then each checked */
	int multi_ok = 1;
	uint64_t offs[3];
	for (uint32_t s = 0; s < n_slots; s++) {
		offs[s] = rnd() % (file_n - slot_bytes);
		if (kcu_cache_load_fd(c, s, fd, offs[s], slot_bytes, 0) < 0)
			multi_ok = 0;
	}
	for (uint32_t s = 0; s < n_slots; s++) {
		if (kcu_cache_wait(c, s, &err) < 0 || kcu_cache_poll(c, s) != 1) {
			multi_ok = 0;
			continue;
		}
		down(back, kcu_cache_slot(c, s), slot_bytes);
		if (memcmp(back, data + offs[s], slot_bytes) != 0)
			multi_ok = 0;
	}
	check_true("cache", multi_ok, "3 concurrent full-slot loads, kcu_cache_wait + poll");

	/* errors: past the end of the file, a closed descriptor, a slot in use */
	rc = kcu_cache_load_fd(c, 0, fd, file_n - 100, 4096, 1);
	if (rc == 0)
		rc = kcu_cache_begin_use(c, 0, &err);
	expect_rc("cache errors", rc, -ENODATA, "load past the end of the file");
	expect_rc("cache errors", kcu_cache_begin_use(c, 0, &err), -ENOENT,
		  "slot after a reported failure");
	int fd2 = dup(fd);
	close(fd2);
	rc = kcu_cache_load_fd(c, 1, fd2, 0, 4096, 1);
	if (rc == 0)
		rc = kcu_cache_begin_use(c, 1, &err);
	expect_rc("cache errors", rc, -EIO, "load from a closed descriptor");
	expect_rc("cache errors", kcu_cache_load_fd(c, 2, fd, 0, slot_bytes + 4096 * 2, 0), -EINVAL,
		  "load larger than a slot");
	rc = kcu_cache_load_fd(c, 2, fd, 0, 4096, 0);
	if (rc == 0)
		rc = kcu_cache_begin_use(c, 2, &err);
	if (rc == 0) {
		expect_rc("cache errors", kcu_cache_load_fd(c, 2, fd, 0, 4096, 0), -EBUSY,
			  "load into a slot in use");
		expect_rc("cache errors", kcu_cache_end_use(c, 2), 0, "end_use");
	} else {
		check_true("cache errors", 0, "load for the busy test");
	}
	expect_rc("cache errors", kcu_cache_end_use(c, 2), -EINVAL, "end_use twice");

	kcu_cache_stats st;
	kcu_cache_stats_get(c, &st);
	check_true("cache", st.loads >= 17 && st.failed == 2 && st.chunks > st.loads,
		   "stats: %llu loads, %llu failed, %llu chunks", (unsigned long long)st.loads,
		   (unsigned long long)st.failed, (unsigned long long)st.chunks);
	kcu_cache_destroy(c);
	close(fd);
	unlink(path);
	free(data);
	free(back);

	/* write-after-read: a slot still read by queued kernels is not overwritten
	 * before they finish (the reload waits for end_use's event) */
	k2x_layout lay;
	uint8_t *img_a = make_image(K2_FORMAT_INT4_G32, 7168, 2048, &lay);
	uint8_t *img_b = make_image(K2_FORMAT_INT4_G32, 7168, 2048, &lay);
	kcu_cache_opts o2 = {.n_slots = 1, .slot_bytes = lay.image_bytes, .io_threads = 2};
	rc = kcu_cache_create(ctx, &o2, &c, &err);
	if (rc < 0) {
		check_true("cache", 0, "create (write-after-read)");
		free(img_a);
		free(img_b);
		return;
	}
	/* ~10 ms of queued kernels on a GPU (the emulator, --quick, runs them at once) */
	const uint32_t H = 7168, I = 2048, reps = quick ? 3 : 1000;
	kern_mat hm[3], dm[3];
	kcu_expert_mats(&lay, img_a, hm);
	kcu_expert_mats(&lay, kcu_cache_slot(c, 0), dm);
	float *x = xmalloc(H * 4), *ref = xmalloc(H * 4), *out = xmalloc(H * 4);
	fill_normal(x, H, 1.0f);
	memset(ref, 0, H * 4);
	ref_call("kern_expert_ffn", kern_expert_ffn(hm, x, 1, NULL, NULL, ref, 1, ref_arena));
	for (uint32_t i = 0; i < H; i++)
		ref[i] *= (float)reps;
	float *dx = dup_to_dev(x, H * 4), *dy = dalloc(H * 4), *dscr = dalloc(I * 4);
	kcu_memset(ctx, dy, 0, H * 4);
	rc = kcu_cache_load_mem(c, 0, img_a, lay.image_bytes, 1);
	if (rc == 0)
		rc = kcu_cache_begin_use(c, 0, &err);
	for (uint32_t r = 0; r < reps && rc == 0; r++)
		rc = kcu_expert_ffn(ctx, dm, dx, 1, NULL, NULL, dy, dscr);
	if (rc == 0)
		rc = kcu_cache_end_use(c, 0);
	if (rc == 0)
		rc = kcu_cache_load_mem(c, 0, img_b, lay.image_bytes, 1);
	double e = NAN;
	if (rc == 0 && (rc = kcu_cache_wait(c, 0, &err)) == 0) {
		down(out, dy, H * 4);
		e = relerr(out, ref, H);
	}
	check("cache write-after-read", TOL_F32, e, "reload queued behind %u expert passes", reps);
	kcu_free(ctx, dx);
	kcu_free(ctx, dy);
	kcu_free(ctx, dscr);
	kcu_cache_destroy(c);
	free(x);
	free(ref);
	free(out);
	free(img_a);
	free(img_b);
}

/* ---------------------------------------------------------------- benchmarks */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Random but valid weight bytes of a format (no NaN codes, moderate values). */
static void fill_weight_bytes(uint32_t f, uint8_t *w, size_t bytes)
{
	for (size_t i = 0; i < bytes; i += 8) {
		uint64_t r = rnd();
		for (size_t j = 0; j < 8 && i + j < bytes; j++) {
			uint8_t b = (uint8_t)(r >> (8 * j));
			if (f == K2_FORMAT_FP8_B128 && (b & 0x7f) == 0x7f)
				b ^= 1;
			if (f == K2_FORMAT_BF16 && ((i + j) & 1))
				b = (uint8_t)(0x3c + (b & 1) + (b & 0x80));
			w[i + j] = b;
		}
	}
}

static void fill_scale_bytes(uint32_t f, uint8_t *s, size_t bytes)
{
	if (f == K2_FORMAT_INT4_G32) {
		for (size_t i = 0; i + 1 < bytes; i += 2) {
			uint16_t v = k2q_f32_to_bf16(0.01f + 0.01f * (float)urand());
			memcpy(s + i, &v, 2);
		}
	} else {
		for (size_t i = 0; i + 3 < bytes; i += 4) {
			float v = 0.001f + 0.001f * (float)urand();
			memcpy(s + i, &v, 4);
		}
	}
}

static double d2d_gbs;

static void bench_copy(void)
{
	const size_t n = 1u << 30;
	uint8_t *a = dalloc(n), *b = dalloc(n);
	kcu_memset(ctx, a, 0x5a, n);
	double t[7];
	for (int r = 0; r < 7; r++) {
		kcu_timer_begin(ctx);
		kcu_copy(ctx, b, a, n);
		int rc = kcu_timer_end(ctx, &t[r]);
		if (rc < 0)
			die("timing the device copy", rc);
	}
	d2d_gbs = 2.0 * n / median(t, 7) / 1e9;
	printf("  device-to-device copy: %.0f GB/s (bytes read + written, 1 GiB, median of 7)\n",
	       d2d_gbs);
	printf("@@ device copy (read+write) | %.0f GB/s | ceiling | INFO\n", d2d_gbs);
	kcu_free(ctx, a);
	kcu_free(ctx, b);
}

static void bench_experts(uint64_t l2)
{
	printf("== expert FFN bandwidth, Kimi-K2 dims (gate/up 2048x7168, down 7168x2048), batch 1\n");
	const uint32_t H = 7168, I = 2048;
	float *dx = dalloc(H * 4 * 8), *dy = dalloc(H * 4 * 8), *dscr = dalloc(I * 4 * 8);
	float *hx = xmalloc(H * 4 * 8);
	fill_normal(hx, H * 8, 1.0f);
	kcu_upload(ctx, dx, hx, H * 4 * 8);
	kcu_memset(ctx, dy, 0, H * 4 * 8);
	free(hx);
	for (size_t fi = 0; fi < 4; fi++) {
		const uint32_t f = all_formats[fi];
		k2x_layout lay;
		k2x_layout_compute(f, H, I, 0, 0, &lay);
		uint8_t *img = calloc(1, lay.image_bytes);
		if (!img)
			die("image", -ENOMEM);
		k2x_header_write(&lay, img);
		for (int s = 0; s < 6; s++) {
			if (s % 2 == 0)
				fill_weight_bytes(f, img + lay.sec[s].offset, lay.sec[s].bytes);
			else if (lay.sec[s].bytes)
				fill_scale_bytes(f, img + lay.sec[s].offset, lay.sec[s].bytes);
		}
		/* copies totalling ≥ 4× L2 (and ≥ 256 MiB), so each pass streams from HBM */
		uint64_t want = 4 * l2 > (256ull << 20) ? 4 * l2 : (256ull << 20);
		int n_copies = (int)((want + lay.image_bytes - 1) / lay.image_bytes);
		if (n_copies < 2)
			n_copies = 2;
		uint8_t **dimg = xmalloc(sizeof(void *) * (size_t)n_copies);
		for (int k = 0; k < n_copies; k++)
			dimg[k] = dup_to_dev(img, lay.image_bytes);
		kern_mat mats[3];
		kcu_expert_mats(&lay, dimg[0], mats);
		const uint64_t bytes = kern_mat_bytes(&mats[0]) + kern_mat_bytes(&mats[1]) +
				       kern_mat_bytes(&mats[2]);
		for (int bsz = 1; bsz <= 4; bsz *= 4) {
			const int per_rep = 2 * n_copies;
			double t[9];
			for (int r = -2; r < 9; r++) { /* two warm-up reps */
				double sec;
				kcu_timer_begin(ctx);
				for (int k = 0; k < per_rep; k++) {
					kcu_expert_mats(&lay, dimg[k % n_copies], mats);
					int rc = kcu_expert_ffn(ctx, mats, dx, (uint32_t)bsz, NULL, NULL, dy,
								dscr);
					if (rc < 0)
						die("kcu_expert_ffn", rc);
				}
				int rc = kcu_timer_end(ctx, &sec);
				if (rc < 0)
					die("timing kcu_expert_ffn", rc);
				if (r >= 0)
					t[r] = sec / per_rep;
			}
			const double per = median(t, 9);
			const double gbs = bytes / per / 1e9;
			const double ratio = gbs / d2d_gbs;
			printf("  %-9s batch %d: %7.1f us per expert, %6.0f GB/s of weights, %.2f of the "
			       "device copy\n", fmt_name(f), bsz, per * 1e6, gbs, ratio);
			if (bsz == 1)
				printf("@@ expert ffn %s batch 1 (%.1f us, %.0f GB/s) | %.2f of copy | >= 0.60 | %s\n",
				       fmt_name(f), per * 1e6, gbs, ratio, ratio >= 0.6 ? "PASS" : "BELOW");
			else
				printf("@@ expert ffn %s batch %d (%.1f us) | %.0f GB/s | - | INFO\n",
				       fmt_name(f), bsz, per * 1e6, gbs);
		}
		for (int k = 0; k < n_copies; k++)
			kcu_free(ctx, dimg[k]);
		free(dimg);
		free(img);
	}
	kcu_free(ctx, dx);
	kcu_free(ctx, dy);
	kcu_free(ctx, dscr);
}

static void bench_upload(void)
{
	printf("== expert upload: pinned staging pipeline against the pinned copy ceiling\n");
	k2x_layout lay;
	k2x_layout_compute(K2_FORMAT_INT4_G32, 7168, 2048, 0, 0, &lay);
	const uint64_t img = lay.image_bytes;
	const uint32_t n = 16;
	const uint64_t total = img * n;

	/* ceiling: cudaMemcpyAsync from pinned host memory, one copy per expert */
	void *pinned;
	int rc = kcu_host_alloc(ctx, total, &pinned);
	if (rc < 0)
		die("kcu_host_alloc", rc);
	memset(pinned, 0x3c, total);
	uint8_t *dev = dalloc(total);
	double t[5];
	for (int r = -1; r < 5; r++) {
		double sec;
		kcu_timer_begin(ctx);
		for (uint32_t k = 0; k < n; k++)
			kcu_copy(ctx, dev + k * img, (uint8_t *)pinned + k * img, img);
		rc = kcu_timer_end(ctx, &sec);
		if (rc < 0)
			die("timing the pinned copy", rc);
		if (r >= 0)
			t[r] = sec;
	}
	const double ceil_gbs = total / median(t, 5) / 1e9;
	printf("  pinned host-to-device ceiling: %.1f GB/s (%u copies of %.1f MB)\n", ceil_gbs, n,
	       img / 1e6);
	printf("@@ pinned H2D ceiling (%.1f MB copies) | %.1f GB/s | ceiling | INFO\n", img / 1e6,
	       ceil_gbs);
	kcu_free(ctx, dev);
	kcu_host_free(ctx, pinned);

	uint8_t *data;
	char path[512];
	int fd = make_file(total, &data, path, sizeof(path));
	static const uint32_t threads[] = {1, 2, 4, 8};
	double best = 0;
	uint32_t best_thr = 0;
	for (size_t ti = 0; ti < sizeof(threads) / sizeof(threads[0]); ti++) {
		for (int src = 0; src < 2; src++) { /* 0: pread from the file, 1: memcpy from RAM */
			kcu_cache_opts o = {.n_slots = n, .slot_bytes = img, .io_threads = threads[ti],
					    .n_staging = 2 * threads[ti] + 2, .staging_bytes = 8u << 20};
			kcu_cache *c;
			k2_err err;
			rc = kcu_cache_create(ctx, &o, &c, &err);
			if (rc < 0) {
				fprintf(stderr, "  %s\n", err.msg);
				check_true("upload bench", 0, "cache create");
				continue;
			}
			double tt[3];
			int ok = 1;
			for (int r = -1; r < 3; r++) {
				const double t0 = k2_now();
				for (uint32_t k = 0; k < n; k++)
					rc = src ? kcu_cache_load_mem(c, k, data + k * img, img, 0)
						 : kcu_cache_load_fd(c, k, fd, k * img, img, 0);
				for (uint32_t k = 0; k < n; k++)
					if (kcu_cache_wait(c, k, &err) < 0)
						ok = 0;
				if (r >= 0)
					tt[r] = k2_now() - t0;
			}
			const double gbs = total / median(tt, 3) / 1e9;
			check_true("upload bench", ok, "%s, %u I/O threads: loads succeed",
				   src ? "memcpy" : "pread", threads[ti]);
			kcu_cache_stats st;
			kcu_cache_stats_get(c, &st);
			printf("  %-6s %u I/O threads: %5.1f GB/s = %.2f of the ceiling (read %.2f s, "
			       "stalled %.2f s over %llu chunks)\n", src ? "memcpy" : "pread", threads[ti],
			       gbs, gbs / ceil_gbs, st.read_seconds, st.stall_seconds,
			       (unsigned long long)st.chunks);
			if (!src && gbs > best) {
				best = gbs;
				best_thr = threads[ti];
			}
			if (src && threads[ti] == 4)
				printf("@@ upload from RAM copy, 4 I/O threads | %.2f of ceiling (%.1f GB/s) "
				       "| - | INFO\n", gbs / ceil_gbs, gbs);
			kcu_cache_destroy(c);
		}
	}
	printf("@@ upload pread->pinned staging->slot, best (%u I/O threads) | %.2f of ceiling "
	       "(%.1f GB/s) | >= 0.85 | %s\n", best_thr, best / ceil_gbs, best,
	       best / ceil_gbs >= 0.85 ? "PASS" : "BELOW");
	close(fd);
	unlink(path);
	free(data);
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *to)
{
	fprintf(to, "usage: prog_gpu_kernels [--seed N] [--quick] [--no-bench] [--bench-only] "
		    "[--only GROUPS] [--tmp DIR] [--verbose]\n"
		    "  --only GROUPS  comma-separated groups of checks to run, of: matmul, expert,\n"
		    "                 elementwise, rope, router, mla, cache (default: all)\n");
}

/* The groups of checks, in the order they run. */
static const struct {
	const char *name;
	void (*run)(void);
} check_groups[] = {
	{"matmul", test_matmul},   {"expert", test_expert_ffn}, {"elementwise", test_elementwise},
	{"rope", test_rope},       {"router", test_router},     {"mla", test_mla_cache_write},
	{"mla", test_mla},         {"cache", test_cache},
};
#define N_CHECK_GROUPS (sizeof(check_groups) / sizeof(check_groups[0]))

/* Walks a comma-separated list: the length of the item at *p, and *p moved
 * past it and its comma. */
static size_t list_next(const char **p)
{
	const char *end = strchr(*p, ',');
	const size_t len = end ? (size_t)(end - *p) : strlen(*p);
	*p += len + (end != NULL);
	return len;
}

/* Whether NAME is an item of the comma-separated LIST (NULL: every group). */
static int group_selected(const char *list, const char *name)
{
	if (!list)
		return 1;
	for (const char *p = list; *p;) {
		const char *item = p;
		const size_t len = list_next(&p);
		if (len == strlen(name) && strncmp(item, name, len) == 0)
			return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	int bench = 1, checks = 1;
	uint64_t seed = 0;
	setvbuf(stdout, NULL, _IOLBF, 0); /* a log cut by a timeout keeps its lines */
	int have_seed = 0;
	const char *only = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--quick") == 0)
			quick = 1;
		else if (strcmp(argv[i], "--no-bench") == 0)
			bench = 0;
		else if (strcmp(argv[i], "--bench-only") == 0)
			checks = 0;
		else if (strcmp(argv[i], "--verbose") == 0)
			verbose = 1;
		else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
			seed = strtoull(argv[++i], NULL, 0);
			have_seed = 1;
		} else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
			only = argv[++i];
		} else if (strcmp(argv[i], "--tmp") == 0 && i + 1 < argc)
			tmp_dir = argv[++i];
		else if (strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		} else {
			usage(stderr);
			return 2;
		}
	}
	for (const char *p = only ? only : ""; *p;) {
		const char *item = p;
		const size_t len = list_next(&p);
		size_t g = 0;
		while (g < N_CHECK_GROUPS && (strlen(check_groups[g].name) != len ||
					      strncmp(item, check_groups[g].name, len) != 0))
			g++;
		if (g == N_CHECK_GROUPS) {
			fprintf(stderr, "prog_gpu_kernels: --only: unknown group '%.*s'\n", (int)len, item);
			usage(stderr);
			return 2;
		}
	}
	int n = kcu_device_count();
	if (n == -ENOTSUP) {
		printf("prog_gpu_kernels: no CUDA device: this build has no CUDA backend (nvcc was not "
		       "found at build time)\n");
		return 77;
	}
	if (n <= 0) {
		printf("prog_gpu_kernels: no CUDA device (%s)\n", n == 0 ? "0 devices" : "no driver");
		return 77;
	}
	k2_err err;
	int rc = kcu_ctx_create(0, &ctx, &err);
	if (rc < 0) {
		printf("prog_gpu_kernels: no CUDA device usable: %s\n", err.msg);
		return 77;
	}
	kcu_info info;
	if (kcu_ctx_info(ctx, &info) < 0)
		die("kcu_ctx_info", -EIO);
	if (!have_seed)
		seed = (uint64_t)time(NULL) * 1000003u ^ (uint64_t)getpid();
	rng_state = seed;
	printf("device 0: %s, cc %d.%d, %d SMs, %.1f GiB (%.1f free), L2 %.0f MiB, runtime %d, "
	       "driver %d; seed %llu\n", info.name, info.cc_major, info.cc_minor, info.sm_count,
	       info.mem_total / 1073741824.0, info.mem_free / 1073741824.0, info.l2_bytes / 1048576.0,
	       info.runtime_version, info.driver_version, (unsigned long long)seed);
	if (checks)
		printf("@@ device | %s, cc %d.%d, %d SMs | - | INFO\n", info.name, info.cc_major,
		       info.cc_minor, info.sm_count);
	if (!tmp_dir)
		tmp_dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	ref_call("kern_arena_create", kern_arena_create(&ref_arena));

	const double t0 = k2_now();
	if (checks) {
		for (size_t g = 0; g < N_CHECK_GROUPS; g++)
			if (group_selected(only, check_groups[g].name))
				check_groups[g].run();
		printf("== checks: %.1f s\n", k2_now() - t0);
		printf("%-30s %6s %6s %10s %8s  %s\n", "family", "cases", "fails", "worst", "tol", "");
		int cases = 0;
		for (int i = 0; i < n_aggs; i++) {
			printf("%-30s %6d %6d %10.2e %8.0e  %s\n", aggs[i].name, aggs[i].cases,
			       aggs[i].fails, aggs[i].worst, aggs[i].tol, aggs[i].fails ? "FAIL" : "ok");
			cases += aggs[i].cases;
		}
		for (int i = 0; i < n_aggs; i++)
			if (aggs[i].fails)
				printf("@@ check %s | %d of %d failed, worst %.2e | < %.0e | FAIL\n",
				       aggs[i].name, aggs[i].fails, aggs[i].cases, aggs[i].worst, aggs[i].tol);
		printf("@@ kernel checks against the C references | %d/%d passed (%d families) | all | %s\n",
		       cases - n_fail_total, cases, n_aggs, n_fail_total ? "FAIL" : "PASS");
	}
	if (bench) {
		printf("== benchmarks\n");
		bench_copy();
		bench_experts(info.l2_bytes);
		bench_upload();
	}
	kcu_ctx_destroy(ctx);
	kern_arena_destroy(ref_arena);
	printf("prog_gpu_kernels: %s (%.1f s)\n", n_fail_total ? "FAILED" : "all checks passed",
	       k2_now() - t0);
	return n_fail_total ? 1 : 0;
}
