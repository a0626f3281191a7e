/* matmul_avx2.c — the AVX2 + FMA + F16C products, compiled with a target
 * attribute so the rest of the build needs no -mavx2; matmul.c calls them only
 * where its run-time detection found all three.
 *
 * Batch 1 (decode): one pass over each weight row, dequantizing in registers
 * (bf16 by a shift, int8 by widening, fp8 e4m3 by rebuilding it as an IEEE
 * half and converting with F16C, int4 by a variable shift of a broadcast word)
 * into four independent float accumulators. Batches 2 … KERN_FUSED_BATCH
 * (an expert's share of a prompt): the same, each weight vector multiplied
 * into every row of x. Larger batches: tiles of 4 weight rows are dequantized
 * KERN_KC columns at a time into a small buffer and reused for every row of
 * X, 4 × 3 accumulators per register block. */
#include "kernels_impl.h"
#include "matmul_impl.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include "matmul_x86.h"

#define AVX2 __attribute__((target(KERN_AVX2_TARGET)))
#define AVX2_INLINE static inline __attribute__((target(KERN_AVX2_TARGET), always_inline))

AVX2_INLINE __m256 sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
	return _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
}

AVX2_INLINE __m256 ld_bf16x8(const uint16_t *p)
{
	__m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
	return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

AVX2_INLINE __m256 ld_i8x8(const int8_t *p)
{
	return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* e4m3 -> IEEE half bits: sign-extending the byte to 16 bits and shifting left
 * by 7 puts exponent and mantissa in place and the sign in bit 15, with a copy
 * of the sign in bit 14 that the mask clears. As a half this is the e4m3 value
 * times 2^-8 (subnormals included), so callers fold 256 into the scale. The
 * NaN codes (0x7f, 0xff) come out as ±480 and are caught by fp8_nan_track. */
AVX2_INLINE void ld_fp8x16(const uint8_t *p, __m256 *lo, __m256 *hi, __m128i *nan)
{
	__m128i b = _mm_loadu_si128((const __m128i *)p);
	*nan = _mm_max_epu8(*nan, _mm_and_si128(b, _mm_set1_epi8(0x7f)));
	__m256i h = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7),
				     _mm256_set1_epi16((short)0xbf80));
	*lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
	*hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

AVX2_INLINE __m256 ld_fp8x8(const uint8_t *p, __m128i *nan)
{
	__m128i b = _mm_loadl_epi64((const __m128i *)p);
	*nan = _mm_max_epu8(*nan, _mm_and_si128(b, _mm_set1_epi8(0x7f)));
	__m128i h = _mm_and_si128(_mm_slli_epi16(_mm_cvtepi8_epi16(b), 7),
				  _mm_set1_epi16((short)0xbf80));
	return _mm256_cvtph_ps(h);
}

/* 1 when any byte seen by the loaders was a NaN code. */
AVX2_INLINE int fp8_nan_seen(__m128i nan)
{
	return _mm_movemask_epi8(_mm_cmpeq_epi8(nan, _mm_set1_epi8(0x7f))) != 0;
}

/* Eight int4 values (4 bytes, element 2j in the low nibble of byte j) as
 * floats q − 8: broadcast the 32-bit word, shift lane i right by 4i. */
AVX2_INLINE __m256 ld_i4x8(const uint8_t *p, __m256i shifts)
{
	uint32_t u;
	memcpy(&u, p, 4);
	__m256i v = _mm256_srlv_epi32(_mm256_set1_epi32((int)u), shifts);
	v = _mm256_sub_epi32(_mm256_and_si256(v, _mm256_set1_epi32(15)), _mm256_set1_epi32(8));
	return _mm256_cvtepi32_ps(v);
}

#define I4_SHIFTS() _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)

/* ---------------------------------------------------------------- batch 1 */

/* Eight weights of a bf16, int8 or f32 matrix from element i, as stored
 * (int8 without its row scale). */
AVX2_INLINE __m256 ld_w8(const kern_mat *m, const uint32_t F, size_t i)
{
	switch (F) {
	case K2_FORMAT_BF16:
		return ld_bf16x8((const uint16_t *)m->w + i);
	case K2_FORMAT_INT8:
		return ld_i8x8((const int8_t *)m->w + i);
	default:
		return _mm256_loadu_ps((const float *)m->w + i);
	}
}

/* A bf16, int8 or f32 matrix (format F) at batch 1: four accumulators over 32
 * columns a step, then 8 columns, then the rest one by one; int8's row scale
 * applied to the sum. */
AVX2_INLINE void mv_plain(const kern_mat *m, const float *x, float *y, uint32_t r0,
			  uint32_t r1, const uint32_t F)
{
	const uint32_t cols = m->cols;

	for (uint32_t r = r0; r < r1; r++) {
		const size_t row = (size_t)r * cols;
		__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
		uint32_t k = 0;
		for (; k + 32 <= cols; k += 32) {
			a0 = _mm256_fmadd_ps(ld_w8(m, F, row + k), _mm256_loadu_ps(x + k), a0);
			a1 = _mm256_fmadd_ps(ld_w8(m, F, row + k + 8), _mm256_loadu_ps(x + k + 8), a1);
			a2 = _mm256_fmadd_ps(ld_w8(m, F, row + k + 16), _mm256_loadu_ps(x + k + 16), a2);
			a3 = _mm256_fmadd_ps(ld_w8(m, F, row + k + 24), _mm256_loadu_ps(x + k + 24), a3);
		}
		for (; k + 8 <= cols; k += 8)
			a0 = _mm256_fmadd_ps(ld_w8(m, F, row + k), _mm256_loadu_ps(x + k), a0);
		float s = kern_hsum8(sum4(a0, a1, a2, a3));
		for (; k < cols; k++)
			s += kern_w_fused(m, F, r, k) * x[k];
		y[r] = F == K2_FORMAT_INT8 ? s * ((const float *)m->s)[r] : s;
	}
}

KERN_MV_DEFINE(AVX2, mv_bf16, mv_plain, K2_FORMAT_BF16)
KERN_MV_DEFINE(AVX2, mv_i8, mv_plain, K2_FORMAT_INT8)
KERN_MV_DEFINE(AVX2, mv_f32, mv_plain, KERN_FORMAT_F32)

AVX2 static void mv_fp8(const kern_mat *m, const float *x, float *y, uint32_t r0, uint32_t r1)
{
	const uint32_t cols = m->cols, ncb = (cols + 127) / 128;
	const float *lut = kern_e4m3_lut();

	for (uint32_t r = r0; r < r1; r++) {
		const uint8_t *w = (const uint8_t *)m->w + (size_t)r * cols;
		const float *srow = (const float *)m->s + (size_t)(r / 128) * ncb;
		__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
		__m128i nan = _mm_setzero_si128();
		float tail = 0;
		for (uint32_t cb = 0; cb < ncb; cb++) {
			uint32_t k = cb * 128, c1 = k + 128 < cols ? k + 128 : cols;
			__m256 b0 = _mm256_setzero_ps(), b1 = b0, b2 = b0, b3 = b0, lo, hi;
			for (; k + 32 <= c1; k += 32) {
				ld_fp8x16(w + k, &lo, &hi, &nan);
				b0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + k), b0);
				b1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + k + 8), b1);
				ld_fp8x16(w + k + 16, &lo, &hi, &nan);
				b2 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + k + 16), b2);
				b3 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + k + 24), b3);
			}
			for (; k + 8 <= c1; k += 8)
				b0 = _mm256_fmadd_ps(ld_fp8x8(w + k, &nan), _mm256_loadu_ps(x + k), b0);
			__m256 s = _mm256_set1_ps(srow[cb] * 256.0f);
			a0 = _mm256_fmadd_ps(b0, s, a0);
			a1 = _mm256_fmadd_ps(b1, s, a1);
			a2 = _mm256_fmadd_ps(b2, s, a2);
			a3 = _mm256_fmadd_ps(b3, s, a3);
			if (k < c1) {
				float t = 0;
				for (; k < c1; k++)
					t += lut[w[k]] * x[k];
				tail += t * srow[cb];
			}
		}
		y[r] = fp8_nan_seen(nan) ? NAN : kern_hsum8(sum4(a0, a1, a2, a3)) + tail;
	}
}

/* One int4 group of 32 times x: (q0·x0 + q1·x1 + q2·x2 + q3·x3) lane-wise. */
AVX2_INLINE __m256 i4_group(const uint8_t *p, const float *xg, __m256i shifts)
{
	__m256 g = _mm256_mul_ps(ld_i4x8(p, shifts), _mm256_loadu_ps(xg));
	g = _mm256_fmadd_ps(ld_i4x8(p + 4, shifts), _mm256_loadu_ps(xg + 8), g);
	g = _mm256_fmadd_ps(ld_i4x8(p + 8, shifts), _mm256_loadu_ps(xg + 16), g);
	return _mm256_fmadd_ps(ld_i4x8(p + 12, shifts), _mm256_loadu_ps(xg + 24), g);
}

AVX2 static void mv_i4(const kern_mat *m, const float *x, float *y, uint32_t r0, uint32_t r1)
{
	const uint32_t ng = m->cols / 32;
	const __m256i shifts = I4_SHIFTS();

	for (uint32_t r = r0; r < r1; r++) {
		const uint8_t *w = (const uint8_t *)m->w + (size_t)r * ng * 16;
		const uint16_t *s = (const uint16_t *)m->s + (size_t)r * ng;
		__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
		uint32_t g = 0;
		/* Eight groups per step, their scales converted together; group
		 * g always goes to accumulator g % 4. */
		for (; g + 8 <= ng; g += 8) {
			const uint8_t *p = w + (size_t)g * 16;
			const float *xg = x + (size_t)g * 32;
			__m256 sv = ld_bf16x8(s + g);
#define I4_STEP(J, ACC)                                                                  \
	ACC = _mm256_fmadd_ps(i4_group(p + (J) * 16, xg + (J) * 32, shifts),              \
			      _mm256_permutevar8x32_ps(sv, _mm256_set1_epi32(J)), ACC)
			I4_STEP(0, a0);
			I4_STEP(1, a1);
			I4_STEP(2, a2);
			I4_STEP(3, a3);
			I4_STEP(4, a0);
			I4_STEP(5, a1);
			I4_STEP(6, a2);
			I4_STEP(7, a3);
#undef I4_STEP
		}
		for (; g < ng; g++) {
			__m256 gs = i4_group(w + (size_t)g * 16, x + (size_t)g * 32, shifts);
			__m256 sg = _mm256_set1_ps(kern_bf16(s[g]));
			switch (g & 3) {
			case 0: a0 = _mm256_fmadd_ps(gs, sg, a0); break;
			case 1: a1 = _mm256_fmadd_ps(gs, sg, a1); break;
			case 2: a2 = _mm256_fmadd_ps(gs, sg, a2); break;
			default: a3 = _mm256_fmadd_ps(gs, sg, a3); break;
			}
		}
		y[r] = kern_hsum8(sum4(a0, a1, a2, a3));
	}
}

/* ---------------------------------------------------------------- batch > 1 */

/* A kern_dq_fn: vectors where they fit, kern_dq_cols for the rest. */
AVX2 static void dq_row(const kern_mat *m, uint32_t r, uint32_t k0, uint32_t n, float *out)
{
	const size_t base = (size_t)r * m->cols + k0;
	uint32_t k = 0; /* columns below k done with vectors */

	switch (m->format) {
	case K2_FORMAT_BF16: {
		const uint16_t *w = (const uint16_t *)m->w + base;
		for (; k + 8 <= n; k += 8)
			_mm256_storeu_ps(out + k, ld_bf16x8(w + k));
		break;
	}
	case K2_FORMAT_INT8: {
		const int8_t *w = (const int8_t *)m->w + base;
		__m256 sv = _mm256_set1_ps(((const float *)m->s)[r]);
		for (; k + 8 <= n; k += 8)
			_mm256_storeu_ps(out + k, _mm256_mul_ps(ld_i8x8(w + k), sv));
		break;
	}
	case K2_FORMAT_FP8_B128: {
		const uint8_t *w = (const uint8_t *)m->w + base;
		__m128i nan = _mm_setzero_si128();
		/* every block but the last is whole, so k stops short of n only
		 * in the last */
		for (uint32_t c = 0; c < n; c += 128) {
			uint32_t c1 = c + 128 < n ? c + 128 : n;
			float s = kern_fp8_scale(m, r, (k0 + c) / 128);
			__m256 sv = _mm256_set1_ps(s * 256.0f), lo, hi;
			for (k = c; k + 16 <= c1; k += 16) {
				ld_fp8x16(w + k, &lo, &hi, &nan);
				_mm256_storeu_ps(out + k, _mm256_mul_ps(lo, sv));
				_mm256_storeu_ps(out + k + 8, _mm256_mul_ps(hi, sv));
			}
			for (; k + 8 <= c1; k += 8)
				_mm256_storeu_ps(out + k, _mm256_mul_ps(ld_fp8x8(w + k, &nan), sv));
		}
		if (fp8_nan_seen(nan)) /* rare: redo with the table, which has the NaNs */
			k = 0;
		break;
	}
	case K2_FORMAT_INT4_G32: {
		const uint8_t *w = (const uint8_t *)m->w + base / 2;
		const uint16_t *s = (const uint16_t *)m->s + (size_t)r * (m->cols / 32) + k0 / 32;
		const __m256i shifts = I4_SHIFTS();
		for (; k < n; k += 32) {
			__m256 sv = _mm256_set1_ps(kern_bf16(s[k / 32]));
			for (uint32_t j = 0; j < 32; j += 8)
				_mm256_storeu_ps(out + k + j,
						 _mm256_mul_ps(ld_i4x8(w + (k + j) / 2, shifts), sv));
		}
		break;
	}
	}
	if (k < n)
		kern_dq_cols(m, r, k0, k, n, out);
}

/* Register block: NR weight rows (wbuf, stride KERN_KC) against NB rows of X
 * (stride xs), columns [0, n8), accumulating into acc[r][b] (stride
 * KERN_TILE_BATCH × 8 per r, 8 per b). */
AVX2_INLINE void mk_block(int NR, int NB, const float *wbuf, const float *x, size_t xs,
			  uint32_t n8, float *acc)
{
	__m256 a[KERN_TILE_ROWS][3];

	/* Fully unrolled, so that a[][] and xv[] live in registers. */
#pragma GCC unroll 4
	for (int r = 0; r < NR; r++)
#pragma GCC unroll 3
		for (int b = 0; b < NB; b++)
			a[r][b] = _mm256_loadu_ps(acc + ((size_t)r * KERN_TILE_BATCH + b) * 8);
	for (uint32_t k = 0; k < n8; k += 8) {
		__m256 xv[3];
#pragma GCC unroll 3
		for (int b = 0; b < NB; b++)
			xv[b] = _mm256_loadu_ps(x + b * xs + k);
#pragma GCC unroll 4
		for (int r = 0; r < NR; r++) {
			__m256 w = _mm256_loadu_ps(wbuf + (size_t)r * KERN_KC + k);
#pragma GCC unroll 3
			for (int b = 0; b < NB; b++)
				a[r][b] = _mm256_fmadd_ps(w, xv[b], a[r][b]);
		}
	}
#pragma GCC unroll 4
	for (int r = 0; r < NR; r++)
#pragma GCC unroll 3
		for (int b = 0; b < NB; b++)
			_mm256_storeu_ps(acc + ((size_t)r * KERN_TILE_BATCH + b) * 8, a[r][b]);
}

#define MK(NR, NB)                                                          \
	AVX2 static void mk_##NR##_##NB(const float *wbuf, const float *x, \
					 size_t xs, uint32_t n8, float *acc) \
	{                                                                   \
		mk_block(NR, NB, wbuf, x, xs, n8, acc);                     \
	}
MK(1, 1) MK(1, 2) MK(1, 3) MK(2, 1) MK(2, 2) MK(2, 3)
MK(3, 1) MK(3, 2) MK(3, 3) MK(4, 1) MK(4, 2) MK(4, 3)
#undef MK

typedef void (*mk_fn)(const float *, const float *, size_t, uint32_t, float *);
static const mk_fn mk_table[4][3] = {
	{mk_1_1, mk_1_2, mk_1_3}, {mk_2_1, mk_2_2, mk_2_3},
	{mk_3_1, mk_3_2, mk_3_3}, {mk_4_1, mk_4_2, mk_4_3},
};

/* A kern_tile_fn: register blocks of up to 3 rows of x. */
AVX2 static void tile_avx2(const float *wbuf, const float *xb, size_t xs, uint32_t nr,
			   uint32_t nb, uint32_t n, float acc[][KERN_TILE_BATCH][8],
			   float tail[][KERN_TILE_BATCH])
{
	for (uint32_t b = 0; b < nb; b += 3) {
		uint32_t n3 = nb - b < 3 ? nb - b : 3;
		mk_table[nr - 1][n3 - 1](wbuf, xb + b * xs, xs, n & ~7u, acc[0][b]);
	}
	kern_tile_tail(wbuf, xb, xs, nr, nb, n, tail);
}

/* ---------------------------------------------------------------- batches 2 … 4 */

/* Sixteen weights from column k (a multiple of 16) of row r, dequantized into
 * w[0], w[1]: bf16, f32 and int8 as they are (int8's row scale is applied to
 * the sums), fp8 and int4 with their block's or group's scale applied. */
AVX2_INLINE void dq16(const kern_mat *m, const uint32_t F, uint32_t r, uint32_t k, __m256 *w,
		      __m128i *nan, __m256i shifts)
{
	const size_t i = (size_t)r * m->cols + k;

	switch (F) {
	case K2_FORMAT_FP8_B128: {
		__m256 s = _mm256_set1_ps(kern_fp8_scale(m, r, k / 128) * 256.0f);
		ld_fp8x16((const uint8_t *)m->w + i, &w[0], &w[1], nan);
		w[0] = _mm256_mul_ps(w[0], s);
		w[1] = _mm256_mul_ps(w[1], s);
		break;
	}
	case K2_FORMAT_INT4_G32: {
		const uint8_t *p = (const uint8_t *)m->w + i / 2;
		__m256 s = _mm256_set1_ps(kern_bf16(((const uint16_t *)m->s)[i / 32]));
		w[0] = _mm256_mul_ps(ld_i4x8(p, shifts), s);
		w[1] = _mm256_mul_ps(ld_i4x8(p + 4, shifts), s);
		break;
	}
	default:
		w[0] = ld_w8(m, F, i);
		w[1] = ld_w8(m, F, i + 8);
		break;
	}
}

/* B (2 … 4) rows of x against rows [r0, r1) of a format-F matrix: each weight
 * vector dequantized once and multiplied into every row of x; per output,
 * two lane accumulators (even and odd vectors of 8), then 8 columns, then a
 * scalar tail. */
AVX2_INLINE void mvb(const kern_mat *m, const float *x, float *y, uint32_t r0, uint32_t r1,
		     const uint32_t F, const int B)
{
	const uint32_t cols = m->cols, rows = m->rows;
	const __m256i shifts = I4_SHIFTS();

	for (uint32_t r = r0; r < r1; r++) {
		__m256 a[4][2], w[2];
		__m128i nan = _mm_setzero_si128();
		float tail[4] = {0, 0, 0, 0};
#pragma GCC unroll 4
		for (int b = 0; b < 4; b++)
			a[b][0] = a[b][1] = _mm256_setzero_ps();
		uint32_t k = 0;
		for (; k + 16 <= cols; k += 16) {
			dq16(m, F, r, k, w, &nan, shifts);
#pragma GCC unroll 4
			for (int b = 0; b < B; b++) {
				const float *xb = x + (size_t)b * cols + k;
				a[b][0] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xb), a[b][0]);
				a[b][1] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb + 8), a[b][1]);
			}
		}
		for (; k < cols; k++) { /* not int4: its cols are whole groups */
			float wk = kern_w_fused(m, F, r, k);
#pragma GCC unroll 4
			for (int b = 0; b < B; b++)
				tail[b] += wk * x[(size_t)b * cols + k];
		}
		const float s = F == K2_FORMAT_INT8 ? ((const float *)m->s)[r] : 1.0f;
		const int row_nan = F == K2_FORMAT_FP8_B128 && fp8_nan_seen(nan);
#pragma GCC unroll 4
		for (int b = 0; b < B; b++) {
			float v = kern_hsum8(_mm256_add_ps(a[b][0], a[b][1])) + tail[b];
			y[(size_t)b * rows + r] = row_nan ? NAN : F == K2_FORMAT_INT8 ? v * s : v;
		}
	}
}

#define MVB_FORMAT(F)                              \
	KERN_MV_DEFINE(AVX2, mvb_##F##_2, mvb, F, 2) \
	KERN_MV_DEFINE(AVX2, mvb_##F##_3, mvb, F, 3) \
	KERN_MV_DEFINE(AVX2, mvb_##F##_4, mvb, F, 4)
MVB_FORMAT(1) MVB_FORMAT(2) MVB_FORMAT(3) MVB_FORMAT(4) MVB_FORMAT(100)
#undef MVB_FORMAT

/* [kern_format_slot][batch - 1] */
static const kern_mv_fn fused_avx2[KERN_FORMAT_SLOTS][4] = {
	{mv_bf16, mvb_1_2, mvb_1_3, mvb_1_4},       {mv_fp8, mvb_2_2, mvb_2_3, mvb_2_4},
	{mv_i8, mvb_3_2, mvb_3_3, mvb_3_4},         {mv_i4, mvb_4_2, mvb_4_3, mvb_4_4},
	{mv_f32, mvb_100_2, mvb_100_3, mvb_100_4},
};

AVX2 void kern_rows_avx2(const kern_mat *m, const float *x, uint32_t batch,
			 float *y, uint32_t r0, uint32_t r1)
{
	if (batch > KERN_FUSED_BATCH)
		kern_rows_tiled(dq_row, tile_avx2, m, x, batch, y, r0, r1);
	else
		kern_rows_fused(fused_avx2[kern_format_slot(m->format)], m, x, batch, y, r0, r1);
}

#else /* not x86-64 GCC/Clang: never called, kern_isa_best() is generic */

void kern_rows_avx2(const kern_mat *m, const float *x, uint32_t batch,
		    float *y, uint32_t r0, uint32_t r1)
{
	kern_rows_generic(m, x, batch, y, r0, r1);
}

#endif
