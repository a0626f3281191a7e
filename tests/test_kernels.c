/* test_kernels.c — Check suite for kernels/: every product path (batch 1 and
 * tiled, AVX2 and portable) against the double-precision reference on random
 * matrices of awkward shapes, bit-identical results across thread counts,
 * element access against layout's dequantizer, the fp8 NaN codes, the small
 * ops against straightforward double computations, and the worker pool. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kernels_impl.h"

/* ---------------------------------------------------------------- helpers */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rng_unit(void)
{
	return (float)((double)(rng_next() >> 11) * 0x1p-53 * 2.0 - 1.0);
}

/* The instruction-set paths, by enum kern_isa. */
static const char *const isa_names[] = {"portable", "avx2", "avx512"};

static const uint32_t all_formats[] = {
	K2_FORMAT_BF16, K2_FORMAT_FP8_B128, K2_FORMAT_INT8, K2_FORMAT_INT4_G32, KERN_FORMAT_F32,
};
#define N_FORMATS (sizeof(all_formats) / sizeof(all_formats[0]))

static const char *fmt_name(uint32_t f)
{
	return f == KERN_FORMAT_F32 ? "f32" : k2_format_name(f);
}

/* A test matrix: the kern_mat over buffers this test owns. */
typedef struct tmat {
	kern_mat m;
	void *w, *s;
} tmat;

/* Random float matrix with magnitudes that differ by row and by column block,
 * so per-row, per-block and per-group scales all matter. */
static float *random_dense(uint32_t rows, uint32_t cols)
{
	float *d = malloc((size_t)rows * cols * sizeof(*d));
	ck_assert_ptr_nonnull(d);
	for (uint32_t r = 0; r < rows; r++)
		for (uint32_t c = 0; c < cols; c++)
			d[(size_t)r * cols + c] = rng_unit() * (float)(1 + r % 5) *
						  (float)(1 + (c / 32) % 3) * 0.25f;
	return d;
}

static tmat tmat_make(uint32_t format, uint32_t rows, uint32_t cols)
{
	tmat t = {.m = {.format = format, .rows = rows, .cols = cols}};
	float *d = random_dense(rows, cols);
	size_t n = (size_t)rows * cols;
	int rc = 0;

	switch (format) {
	case K2_FORMAT_BF16: {
		uint16_t *w = malloc(n * 2);
		ck_assert_ptr_nonnull(w);
		for (size_t i = 0; i < n; i++)
			w[i] = k2q_f32_to_bf16(d[i]);
		t.w = w;
		break;
	}
	case K2_FORMAT_FP8_B128:
		t.w = malloc(n);
		t.s = malloc(4 * (size_t)((rows + 127) / 128) * ((cols + 127) / 128));
		ck_assert(t.w && t.s);
		rc = k2q_quant_fp8_b128(d, rows, cols, t.w, t.s);
		break;
	case K2_FORMAT_INT8:
		t.w = malloc(n);
		t.s = malloc(4 * (size_t)rows);
		ck_assert(t.w && t.s);
		rc = k2q_quant_int8_row(d, rows, cols, t.w, t.s);
		break;
	case K2_FORMAT_INT4_G32:
		t.w = malloc(n / 2);
		t.s = malloc(2 * (size_t)rows * (cols / 32));
		ck_assert(t.w && t.s);
		rc = k2q_quant_int4_g32(d, rows, cols, t.w, t.s);
		break;
	case KERN_FORMAT_F32:
		t.w = d;
		d = NULL;
		break;
	}
	ck_assert_int_eq(rc, 0);
	free(d);
	t.m.w = t.w;
	t.m.s = t.s;
	return t;
}

static void tmat_free(tmat *t)
{
	free(t->w);
	free(t->s);
}

static float *random_vec(size_t n)
{
	float *v = malloc(n * sizeof(*v));
	ck_assert_ptr_nonnull(v);
	for (size_t i = 0; i < n; i++)
		v[i] = rng_unit();
	return v;
}

static float *nan_vec(size_t n)
{
	float *v = malloc(n * sizeof(*v));
	ck_assert_ptr_nonnull(v);
	for (size_t i = 0; i < n; i++)
		v[i] = NAN;
	return v;
}

/* ‖y − ref‖ / ‖ref‖, or +inf when any y is not finite. */
static double rel_err(const float *y, const float *ref, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		if (!isfinite(y[i]))
			return INFINITY;
		double d = (double)y[i] - ref[i];
		num += d * d;
		den += (double)ref[i] * ref[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ‖ |W|·|x| ‖ over a product: the scale of the terms summed, which bounds
 * what float32 accumulation can get wrong when the terms cancel. */
static double abs_product_norm(const kern_mat *m, const float *x, uint32_t batch)
{
	double n2 = 0;
	for (uint32_t b = 0; b < batch; b++)
		for (uint32_t r = 0; r < m->rows; r++) {
			double a = 0;
			for (uint32_t c = 0; c < m->cols; c++)
				a += fabs((double)kern_mat_get(m, r, c) * x[(size_t)b * m->cols + c]);
			n2 += a * a;
		}
	return sqrt(n2);
}

/* Runs kern_matmul on t (output poisoned first) and checks it against the
 * reference: ‖y − ref‖ / ‖ref‖ < 1e-5, except that when the terms cancel so
 * much that ‖ref‖ < ‖ |W|·|x| ‖ / 100 (a few cases in a thousand, and only
 * with a handful of outputs), ‖ |W|·|x| ‖ / 100 stands in for ‖ref‖. Returns
 * the relative error. */
static double check_product(const tmat *t, uint32_t batch)
{
	size_t ny = (size_t)batch * t->m.rows;
	float *x = random_vec((size_t)batch * t->m.cols);
	float *y = nan_vec(ny), *ref = nan_vec(ny);

	kern_matmul(&t->m, x, batch, y);
	kern_matmul_ref(&t->m, x, batch, ref);
	double e = rel_err(y, ref, ny);
	if (isfinite(e) && e >= 1e-5) {
		double norm_ref = 0, floor = abs_product_norm(&t->m, x, batch) / 100;
		for (size_t i = 0; i < ny; i++)
			norm_ref += (double)ref[i] * ref[i];
		norm_ref = sqrt(norm_ref);
		if (norm_ref < floor)
			e *= norm_ref / floor;
	}
	ck_assert_msg(e < 1e-5, "%s %ux%u batch %u (%s path): relative error %g",
		      fmt_name(t->m.format), t->m.rows, t->m.cols, batch, isa_names[kern_isa()], e);
	free(x);
	free(y);
	free(ref);
	return e;
}

/* ---------------------------------------------------------------- products */

static const uint32_t shape_rows[] = {1, 7, 129, 300};
static const uint32_t shape_cols[] = {32, 64, 160, 416};
static const uint32_t shape_batch[] = {1, 2, 3, 4, 7, 17};

static void products_all_shapes(void)
{
	for (size_t f = 0; f < N_FORMATS; f++)
		for (size_t ri = 0; ri < 4; ri++)
			for (size_t ci = 0; ci < 4; ci++) {
				tmat t = tmat_make(all_formats[f], shape_rows[ri], shape_cols[ci]);
				for (size_t bi = 0; bi < sizeof(shape_batch) / sizeof(shape_batch[0]); bi++)
					check_product(&t, shape_batch[bi]);
				tmat_free(&t);
			}
}

START_TEST(test_matmul_vs_ref)
{
	rng_state = 1;
	kern_set_threads(2);
	for (int isa = 0; isa <= kern_isa_best(); isa++) {
		kern_isa_limit(isa);
		ck_assert_int_eq(kern_isa(), isa);
		products_all_shapes();
	}
	printf("test_matmul_vs_ref: paths tested: portable%s%s\n",
	       kern_isa_best() >= KERN_ISA_AVX2 ? ", avx2" : "",
	       kern_isa_best() >= KERN_ISA_AVX512 ? ", avx512" : "");
	kern_isa_limit(-1);
}
END_TEST

/* Columns that are not multiples of 8 (every format but int4), batches past
 * one accumulator tile, and rows past one task. */
START_TEST(test_matmul_odd_shapes)
{
	static const uint32_t cols[] = {1, 7, 13, 130, 145, 177, 300, 517};
	rng_state = 3;
	kern_set_threads(3);
	for (int isa = 0; isa <= kern_isa_best(); isa++) {
		kern_isa_limit(isa);
		for (size_t f = 0; f < N_FORMATS; f++) {
			if (all_formats[f] == K2_FORMAT_INT4_G32)
				continue;
			for (size_t ci = 0; ci < sizeof(cols) / sizeof(cols[0]); ci++) {
				tmat t = tmat_make(all_formats[f], 5 + (uint32_t)ci * 40, cols[ci]);
				check_product(&t, 1);
				check_product(&t, 2);
				check_product(&t, 50);
				tmat_free(&t);
			}
		}
		tmat t = tmat_make(K2_FORMAT_INT4_G32, 77, 2048);
		check_product(&t, 1);
		check_product(&t, 49);
		check_product(&t, 100);
		tmat_free(&t);
		t = tmat_make(K2_FORMAT_INT4_G32, 9, 8224); /* x rearranged on the heap */
		check_product(&t, 1);
		check_product(&t, 2);
		tmat_free(&t);
	}
	kern_isa_limit(-1);
}
END_TEST

/* A matrix large enough for many tasks: the same bits for 1, 2 and 3 threads,
 * on both paths, at batch 1 and batch 17. */
START_TEST(test_matmul_threads_identical)
{
	rng_state = 4;
	for (size_t f = 0; f < N_FORMATS; f++) {
		tmat t = tmat_make(all_formats[f], 1000, 1056);
		static const uint32_t batches[] = {1, 6, 17};
		for (size_t bi = 0; bi < 3; bi++) {
			uint32_t batch = batches[bi];
			size_t ny = (size_t)batch * t.m.rows;
			float *x = random_vec((size_t)batch * t.m.cols);
			for (int isa = 0; isa <= kern_isa_best(); isa++) {
				float *first = NULL;
				kern_isa_limit(isa);
				for (int th = 1; th <= 3; th++) {
					float *y = nan_vec(ny);
					kern_set_threads(th);
					ck_assert_int_eq(kern_threads(), th);
					kern_matmul(&t.m, x, batch, y);
					if (!first) {
						first = y;
						float *ref = nan_vec(ny);
						kern_matmul_ref(&t.m, x, batch, ref);
						ck_assert_msg(rel_err(y, ref, ny) < 1e-5, "%s batch %u",
							      fmt_name(t.m.format), batch);
						free(ref);
					} else {
						ck_assert_msg(memcmp(first, y, ny * sizeof(*y)) == 0,
							      "%s batch %u %s: %d threads differ",
							      fmt_name(t.m.format), batch, isa_names[isa], th);
						free(y);
					}
				}
				free(first);
			}
			free(x);
		}
		tmat_free(&t);
	}
	kern_isa_limit(-1);
	kern_set_threads(0);
}
END_TEST

/* A vector's product does not depend on the batch it is in: row b of a batch
 * of n equals the same vector alone, bit for bit, on every ISA, exact and
 * fast. The server decodes several sequences in one step and promises each
 * the text it would get alone. */
START_TEST(test_matmul_batch_invariant)
{
	rng_state = 9;
	static const uint32_t cols[] = {64, 416, 1056};
	for (size_t f = 0; f < N_FORMATS; f++)
		for (size_t ci = 0; ci < 3; ci++) {
			tmat t = tmat_make(all_formats[f], 37, cols[ci]);
			const uint32_t R = t.m.rows, C = t.m.cols, N = 9;
			float *x = random_vec((size_t)N * C);
			for (int isa = 0; isa <= kern_isa_best(); isa++)
				for (int fast = 0; fast <= 1; fast++) {
					kern_isa_limit(isa);
					float *alone = nan_vec((size_t)N * R);
					for (uint32_t b = 0; b < N; b++)
						ck_assert_int_eq((fast ? kern_matmul_fast : kern_matmul)(
									 &t.m, x + (size_t)b * C, 1,
									 alone + (size_t)b * R),
								 0);
					for (uint32_t n = 2; n <= N; n++) {
						float *y = nan_vec((size_t)n * R);
						ck_assert_int_eq((fast ? kern_matmul_fast : kern_matmul)(
									 &t.m, x, n, y),
								 0);
						for (uint32_t b = 0; b < n; b++)
							ck_assert_msg(memcmp(y + (size_t)b * R,
									     alone + (size_t)b * R,
									     R * sizeof(float)) == 0,
								      "%s cols %u %s %s: row %u of a "
								      "batch of %u differs from alone",
								      fmt_name(t.m.format), C,
								      isa_names[isa],
								      fast ? "fast" : "exact", b, n);
						free(y);
					}
					free(alone);
				}
			free(x);
			tmat_free(&t);
		}
	kern_isa_limit(-1);
}
END_TEST

/* The paths agree with each other closely (they sum in other orders). */
START_TEST(test_matmul_paths_agree)
{
	if (kern_isa_best() == KERN_ISA_GENERIC) {
		printf("test_matmul_paths_agree: no AVX2/FMA/F16C here; only the portable path runs\n");
		return;
	}
	rng_state = 5;
	for (size_t f = 0; f < N_FORMATS; f++) {
		tmat t = tmat_make(all_formats[f], 64, 1024);
		float *x = random_vec(3 * 1024);
		for (uint32_t batch = 1; batch <= 3; batch += 2) {
			float *a = nan_vec(64 * batch);
			kern_isa_limit(KERN_ISA_GENERIC);
			kern_matmul(&t.m, x, batch, a);
			for (int isa = 1; isa <= kern_isa_best(); isa++) {
				float *b = nan_vec(64 * batch);
				kern_isa_limit(isa);
				kern_matmul(&t.m, x, batch, b);
				ck_assert_msg(rel_err(b, a, 64 * batch) < 1e-5, "%s batch %u: %s",
					      fmt_name(t.m.format), batch, isa_names[isa]);
				free(b);
			}
			free(a);
		}
		free(x);
		tmat_free(&t);
	}
	kern_isa_limit(-1);
}
END_TEST

/* Every e4m3 code: the fast paths read them as k2q_e4m3_to_f32 does, and a
 * NaN code in a row makes that row's outputs NaN, as in the reference. */
START_TEST(test_matmul_fp8_all_codes)
{
	enum { ROWS = 3, COLS = 256 };
	uint8_t *w = malloc(ROWS * COLS);
	float s[1 * 2] = {0.75f, 1.5f};
	kern_mat m = {.format = K2_FORMAT_FP8_B128, .rows = ROWS, .cols = COLS, .w = w, .s = s};

	ck_assert_ptr_nonnull(w);
	rng_state = 6;
	for (int c = 0; c < COLS; c++) {
		w[c] = (uint8_t)c;                             /* every code, NaNs included */
		w[COLS + c] = (c & 0x7f) == 0x7f ? 0 : (uint8_t)c; /* every finite code */
		w[2 * COLS + c] = (uint8_t)(rng_next() & 0x7e);  /* positive, no NaN */
	}
	for (int c = 0; c < COLS; c++) {
		float want = (c & 0x7f) == 0x7f ? 0.0f : k2q_e4m3_to_f32((uint8_t)c) * s[c / 128];
		ck_assert(kern_mat_get(&m, 1, (uint32_t)c) == want);
	}
	for (int isa = 0; isa <= kern_isa_best(); isa++) {
		kern_isa_limit(isa);
		for (uint32_t batch = 1; batch <= 3; batch += 2) {
			float *x = random_vec((size_t)batch * COLS);
			float y[3 * ROWS], ref[3 * ROWS];
			for (int i = 0; i < 3 * ROWS; i++)
				y[i] = ref[i] = -1;
			kern_matmul(&m, x, batch, y);
			kern_matmul_ref(&m, x, batch, ref);
			for (uint32_t b = 0; b < batch; b++) {
				ck_assert(isnan(ref[b * ROWS]));
				ck_assert_msg(isnan(y[b * ROWS]), "%s batch %u", isa_names[isa], batch);
				for (int r = 1; r < ROWS; r++) {
					double e = fabs((double)y[b * ROWS + r] - ref[b * ROWS + r]);
					ck_assert_msg(e <= 1e-5 * (fabs(ref[b * ROWS + r]) + 1),
						      "row %d: %g vs %g", r, y[b * ROWS + r], ref[b * ROWS + r]);
				}
			}
			free(x);
		}
	}
	kern_isa_limit(-1);
	free(w);
}
END_TEST

/* x as kern_matmul_fast rounds it for bf16 weights: to bf16, to nearest,
 * ties to even. */
static void bf16_reference(const float *x, uint32_t n, float *xr)
{
	for (uint32_t i = 0; i < n; i++)
		xr[i] = kern_bf16(k2q_f32_to_bf16(x[i]));
}

/* x quantized as kern_matmul_fast quantizes it for int4-g32: per block of 32,
 * dx = max |x| / 127, the values xq · dx with xq = x / dx rounded. */
static void q8_reference(const float *x, uint32_t n, float *xr)
{
	for (uint32_t g = 0; g < n; g += 32) {
		float amax = 0;
		for (uint32_t i = 0; i < 32; i++)
			amax = fmaxf(amax, fabsf(x[g + i]));
		float dx = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
		for (uint32_t i = 0; i < 32; i++)
			xr[g + i] = nearbyintf(x[g + i] * inv) * dx;
	}
}

/* One fast-path check: kern_matmul_fast on `format` weights of each width in
 * cols (rows rows0 + i · rows_step) at batches 1 … 33, against kern_matmul_ref
 * of x rounded as round_x rounds it, relative error < 1e-5, with every
 * instruction-set path this CPU has forced in turn. With odd_blocks, x's
 * first block is zeros and its second holds one huge value (whose neighbours
 * quantize to 0). dot() says whether the dot-product path ran. */
static void check_fast(uint32_t format, const uint32_t *cols, size_t n_cols, uint32_t rows0,
		       uint32_t rows_step, void (*round_x)(const float *, uint32_t, float *),
		       int odd_blocks, int (*dot)(void), const char *dot_name)
{
	static const uint32_t batches[] = {1, 2, 3, 4, 5, 9, 33};
	for (int isa = kern_isa_best(); isa >= KERN_ISA_GENERIC; isa--) {
		kern_isa_limit(isa);
		for (size_t ci = 0; ci < n_cols; ci++) {
			tmat t = tmat_make(format, rows0 + (uint32_t)ci * rows_step, cols[ci]);
			for (size_t bi = 0; bi < sizeof(batches) / sizeof(batches[0]); bi++) {
				const uint32_t B = batches[bi], n = B * t.m.cols;
				float *x = random_vec(n), *xr = malloc(sizeof(float) * n);
				if (odd_blocks) {
					for (uint32_t i = 0; i < 32 && i < n; i++)
						x[i] = 0;
					if (n > 40)
						x[40] = 1e4f;
				}
				float *y = nan_vec((size_t)B * t.m.rows), *ref = nan_vec((size_t)B * t.m.rows);
				round_x(x, n, xr);
				ck_assert_int_eq(kern_matmul_fast(&t.m, x, B, y), 0);
				kern_matmul_ref(&t.m, xr, B, ref);
				double e = rel_err(y, ref, (size_t)B * t.m.rows);
				ck_assert_msg(e < 1e-5, "%s %ux%u batch %u (%s%s): relative error %g "
					      "against the rounded x", fmt_name(format), t.m.rows,
					      t.m.cols, B, isa_names[kern_isa()],
					      dot() && B <= KERN_FUSED_BATCH ? dot_name : "", e);
				free(x), free(xr), free(y), free(ref);
			}
			tmat_free(&t);
		}
	}
	kern_isa_limit(-1);
}

/* kern_matmul_fast on bf16 weights: the product of x rounded to bf16, whatever
 * the path — the AVX-512 BF16 dot product where the CPU has it (batches up to
 * 4), kern_matmul on the rounded x otherwise; on odd shapes. fp8 equals
 * kern_matmul exactly. */
START_TEST(test_matmul_fast)
{
	static const uint32_t cols[] = {7, 32, 33, 100, 129, 416, 7168};
	rng_state = 77;
	check_fast(K2_FORMAT_BF16, cols, sizeof(cols) / sizeof(cols[0]), 5, 13, bf16_reference, 0,
		   kern_has_bf16dot, ", bf16 dot");
	for (int isa = kern_isa_best(); isa >= KERN_ISA_GENERIC; isa--) {
		kern_isa_limit(isa);
		tmat t = tmat_make(K2_FORMAT_FP8_B128, 9, 200);
		float *x = random_vec(2 * 200), *a = nan_vec(18), *b = nan_vec(18);
		kern_matmul(&t.m, x, 2, a);
		ck_assert_int_eq(kern_matmul_fast(&t.m, x, 2, b), 0);
		ck_assert_mem_eq(a, b, sizeof(float) * 18);
		free(x), free(a), free(b);
		tmat_free(&t);
	}
	kern_isa_limit(-1);
}
END_TEST

/* kern_matmul_fast on int4-g32 weights: the product of x quantized to 8 bits
 * per block of 32, whatever the path — the AVX-512 VNNI dot product where
 * the CPU has it, kern_matmul on the quantized values
 * otherwise; odd group counts (the masked tails of the 4- and 16-group
 * steps), a block of zeros, and a block with one huge value. */
START_TEST(test_matmul_fast_int4)
{
	static const uint32_t cols[] = {32, 64, 96, 160, 416, 544, 7168};
	rng_state = 91;
	check_fast(K2_FORMAT_INT4_G32, cols, sizeof(cols) / sizeof(cols[0]), 3, 11, q8_reference, 1,
		   kern_has_i4dot, ", vnni");
}
END_TEST

/* kern_matmul_fast on int8 weights: as int4-g32, x quantized to 8 bits per
 * block of 32 (the VNNI path with the weights offset by 128), on odd block
 * counts (the masked second block of a step, the 16-block steps' tails); a
 * width that is not whole blocks runs kern_matmul as it is. */
START_TEST(test_matmul_fast_int8)
{
	static const uint32_t cols[] = {32, 64, 96, 160, 416, 544, 7168};
	rng_state = 93;
	check_fast(K2_FORMAT_INT8, cols, sizeof(cols) / sizeof(cols[0]), 3, 11, q8_reference, 1,
		   kern_has_i4dot, ", vnni");
	for (int isa = kern_isa_best(); isa >= KERN_ISA_GENERIC; isa--) {
		kern_isa_limit(isa);
		tmat t = tmat_make(K2_FORMAT_INT8, 9, 200);
		float *x = random_vec(2 * 200), *a = nan_vec(18), *b = nan_vec(18);
		kern_matmul(&t.m, x, 2, a);
		ck_assert_int_eq(kern_matmul_fast(&t.m, x, 2, b), 0);
		ck_assert_mem_eq(a, b, sizeof(float) * 18);
		free(x), free(a), free(b);
		tmat_free(&t);
	}
	kern_isa_limit(-1);
}
END_TEST

START_TEST(test_matmul_degenerate)
{
	tmat t = tmat_make(K2_FORMAT_BF16, 4, 32);
	float x[64], y[8];

	for (int i = 0; i < 64; i++)
		x[i] = 1;
	for (int i = 0; i < 8; i++)
		y[i] = 7;
	ck_assert_int_eq(kern_matmul(&t.m, x, 0, y), 0); /* batch 0: nothing written */
	for (int i = 0; i < 8; i++)
		ck_assert(y[i] == 7);
	t.m.cols = 0;
	ck_assert_int_eq(kern_matmul(&t.m, x, 2, y), 0); /* no columns: zeros */
	for (int i = 0; i < 8; i++)
		ck_assert(y[i] == 0);
	t.m.cols = 32;
	t.m.format = 77; /* unknown format: -EINVAL, nothing written */
	for (int i = 0; i < 8; i++)
		y[i] = 7;
	ck_assert_int_eq(kern_matmul(&t.m, x, 2, y), -EINVAL);
	for (int i = 0; i < 8; i++)
		ck_assert(y[i] == 7);
	tmat_free(&t);
	t = tmat_make(K2_FORMAT_INT4_G32, 4, 32);
	t.m.cols = 16; /* int4 without whole groups */
	ck_assert_int_eq(kern_matmul(&t.m, x, 2, y), -EINVAL);
	for (int i = 0; i < 8; i++)
		ck_assert(y[i] == 7);
	tmat_free(&t);
}
END_TEST

/* ---------------------------------------------------------------- element access */

START_TEST(test_mat_get_vs_dequant)
{
	rng_state = 7;
	for (size_t f = 0; f < N_FORMATS; f++) {
		const uint32_t rows = 129, cols = 160;
		tmat t = tmat_make(all_formats[f], rows, cols);
		float *d = malloc((size_t)rows * cols * sizeof(*d));
		float *row = malloc(cols * sizeof(*row));
		ck_assert(d && row);
		if (t.m.format == KERN_FORMAT_F32)
			memcpy(d, t.w, (size_t)rows * cols * sizeof(*d));
		else
			ck_assert_int_eq(k2q_dequant(t.m.format, t.w, t.s, rows, cols, d), 0);
		for (uint32_t r = 0; r < rows; r++) {
			kern_mat_row(&t.m, r, row);
			for (uint32_t c = 0; c < cols; c++) {
				float want = d[(size_t)r * cols + c];
				ck_assert_msg(kern_mat_get(&t.m, r, c) == want, "%s (%u,%u)",
					      fmt_name(t.m.format), r, c);
				ck_assert(row[c] == want);
			}
		}
		free(d);
		free(row);
		tmat_free(&t);
	}
}
END_TEST

START_TEST(test_mat_bytes)
{
	kern_mat m = {.rows = 129, .cols = 160};
	m.format = K2_FORMAT_BF16;
	ck_assert_uint_eq(kern_mat_bytes(&m), 129 * 160 * 2);
	m.format = K2_FORMAT_FP8_B128;
	ck_assert_uint_eq(kern_mat_bytes(&m), 129 * 160 + 2 * 2 * 4);
	m.format = K2_FORMAT_INT8;
	ck_assert_uint_eq(kern_mat_bytes(&m), 129 * 160 + 129 * 4);
	m.format = K2_FORMAT_INT4_G32;
	ck_assert_uint_eq(kern_mat_bytes(&m), 129 * 80 + 129 * 5 * 2);
	m.format = KERN_FORMAT_F32;
	ck_assert_uint_eq(kern_mat_bytes(&m), 129 * 160 * 4);
}
END_TEST

/* ---------------------------------------------------------------- ops */

START_TEST(test_rmsnorm)
{
	enum { N = 1031 };
	rng_state = 8;
	float *x = random_vec(N), *w = random_vec(N), out[N], inplace[N];
	double ss = 0;

	for (int i = 0; i < N; i++)
		ss += (double)x[i] * x[i];
	double inv = 1.0 / sqrt(ss / N + 1e-6);
	kern_rmsnorm(out, x, w, N, 1e-6f);
	memcpy(inplace, x, sizeof(inplace));
	kern_rmsnorm(inplace, inplace, w, N, 1e-6f);
	for (int i = 0; i < N; i++) {
		double want = x[i] * inv * w[i];
		ck_assert_msg(fabs(out[i] - want) <= 1e-6 * (fabs(want) + 1e-3), "%d: %g vs %g", i,
			      out[i], want);
		ck_assert(inplace[i] == out[i]);
	}
	/* eps matters when the vector is small */
	float z[4] = {1e-4f, -1e-4f, 1e-4f, -1e-4f}, one[4] = {1, 1, 1, 1}, o[4];
	kern_rmsnorm(o, z, one, 4, 1e-6f);
	ck_assert(fabs(o[0] - 1e-4 / sqrt(1e-8 + 1e-6)) < 1e-6);
	free(x);
	free(w);
}
END_TEST

START_TEST(test_silu_mul)
{
	enum { N = 517 };
	float *g = random_vec(N), *u = random_vec(N), g0[N];

	for (int i = 0; i < N; i++)
		g[i] *= 12; /* into the tails of the sigmoid */
	g[0] = -100;
	g[1] = 100;
	memcpy(g0, g, sizeof(g0));
	kern_silu_mul(g, u, N);
	for (int i = 0; i < N; i++) {
		double want = g0[i] / (1 + exp(-(double)g0[i])) * u[i];
		ck_assert_msg(fabs(g[i] - want) <= 1e-6 * (fabs(want) + 1e-6), "%d: %g vs %g", i, g[i],
			      want);
	}
	free(g);
	free(u);
}
END_TEST

START_TEST(test_softmax)
{
	enum { N = 301 };
	float x[N], x0[N];

	rng_state = 9;
	for (int i = 0; i < N; i++)
		x0[i] = x[i] = rng_unit() * 20 + 1000; /* large: needs the max shift */
	kern_softmax(x, N);
	double mx = x0[0], sum = 0, total = 0;
	for (int i = 1; i < N; i++)
		mx = fmax(mx, x0[i]);
	for (int i = 0; i < N; i++)
		sum += exp((double)x0[i] - mx);
	for (int i = 0; i < N; i++) {
		double want = exp((double)x0[i] - mx) / sum;
		ck_assert_msg(fabs(x[i] - want) <= 1e-6 * want + 1e-12, "%d: %g vs %g", i, x[i], want);
		total += x[i];
	}
	ck_assert(fabs(total - 1) < 1e-5);
	float one = 3;
	kern_softmax(&one, 1);
	ck_assert(one == 1);
}
END_TEST

START_TEST(test_axpy)
{
	enum { N = 1000 };
	float *x = random_vec(N), *y = random_vec(N), y0[N];

	memcpy(y0, y, sizeof(y0));
	kern_axpy(y, -0.375f, x, N);
	for (int i = 0; i < N; i++) {
		double want = y0[i] + -0.375 * x[i];
		ck_assert(fabs(y[i] - want) <= 1e-6 * (fabs(want) + 1));
	}
	free(x);
	free(y);
}
END_TEST

/* kern_rope_rows on one vector at position 7 with mscale 1: each pair
 * (x[2i], x[2i+1]) rotated by 7·inv_freq[i], written de-interleaved. */
START_TEST(test_rope)
{
	enum { DIM = 64 };
	float x[DIM], out[DIM], inv[DIM / 2], c[DIM / 2], s[DIM / 2];

	rng_state = 10;
	for (int i = 0; i < DIM; i++)
		x[i] = rng_unit();
	for (int i = 0; i < DIM / 2; i++) {
		inv[i] = (float)pow(10000.0, -2.0 * i / DIM);
		double a = (double)(7.0f * inv[i]);
		c[i] = (float)cos(a);
		s[i] = (float)sin(a);
	}
	memcpy(out, x, sizeof(x));
	kern_rope_rows(out, 1, 1, DIM, 0, 0, DIM, 7, inv, 1.0f);
	for (int i = 0; i < DIM / 2; i++) {
		double re = (double)x[2 * i] * c[i] - (double)x[2 * i + 1] * s[i];
		double im = (double)x[2 * i + 1] * c[i] + (double)x[2 * i] * s[i];
		ck_assert(fabs(out[i] - re) < 1e-6);
		ck_assert(fabs(out[DIM / 2 + i] - im) < 1e-6);
		/* a rotation keeps each pair's length */
		double n0 = hypot(x[2 * i], x[2 * i + 1]), n1 = hypot(out[i], out[DIM / 2 + i]);
		ck_assert(fabs(n0 - n1) < 1e-6);
	}
}
END_TEST

/* ---------------------------------------------------------------- pool */

struct pfor_check {
	atomic_int *hits;
	atomic_int nested;
};

static void pfor_inner(void *ctx, uint32_t i)
{
	struct pfor_check *c = ctx;
	(void)i;
	atomic_fetch_add(&c->nested, 1);
}

static void pfor_outer(void *ctx, uint32_t i)
{
	struct pfor_check *c = ctx;
	atomic_fetch_add(&c->hits[i], 1);
	if (i % 100 == 0) {
		kern_parallel_for(5, pfor_inner, c); /* nested: runs inline */
		kern_set_threads(1);                 /* ignored inside a task, no deadlock */
		atomic_fetch_add(&c->nested, kern_threads() >= 1 ? 0 : 1000);
	}
}

START_TEST(test_parallel_for)
{
	enum { N = 1000 };
	static atomic_int hits[N];
	struct pfor_check c = {.hits = hits};

	for (int th = 1; th <= 3; th++) {
		kern_set_threads(th);
		for (int rep = 0; rep < 50; rep++) {
			for (int i = 0; i < N; i++)
				atomic_store(&hits[i], 0);
			atomic_store(&c.nested, 0);
			kern_parallel_for(N, pfor_outer, &c);
			for (int i = 0; i < N; i++)
				ck_assert_int_eq(atomic_load(&hits[i]), 1);
			ck_assert_int_eq(atomic_load(&c.nested), 5 * (N / 100));
			ck_assert_int_eq(kern_threads(), th);
		}
	}
	kern_parallel_for(0, pfor_outer, &c); /* nothing to do: returns */
	kern_set_threads(0);
	ck_assert_int_ge(kern_threads(), 1);
}
END_TEST

static Suite *kernels_suite(void)
{
	Suite *s = suite_create("kernels");
	TCase *tc = tcase_create("products");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_matmul_vs_ref);
	tcase_add_test(tc, test_matmul_odd_shapes);
	tcase_add_test(tc, test_matmul_threads_identical);
	tcase_add_test(tc, test_matmul_paths_agree);
	tcase_add_test(tc, test_matmul_batch_invariant);
	tcase_add_test(tc, test_matmul_fp8_all_codes);
	tcase_add_test(tc, test_matmul_fast);
	tcase_add_test(tc, test_matmul_fast_int4);
	tcase_add_test(tc, test_matmul_fast_int8);
	tcase_add_test(tc, test_matmul_degenerate);
	tcase_add_test(tc, test_mat_get_vs_dequant);
	tcase_add_test(tc, test_mat_bytes);
	suite_add_tcase(s, tc);
	TCase *ops = tcase_create("ops");
	tcase_add_test(ops, test_rmsnorm);
	tcase_add_test(ops, test_silu_mul);
	tcase_add_test(ops, test_softmax);
	tcase_add_test(ops, test_axpy);
	tcase_add_test(ops, test_rope);
	tcase_add_test(ops, test_parallel_for);
	suite_add_tcase(s, ops);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(kernels_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
