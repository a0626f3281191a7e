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

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE static inline __attribute__((target("avx2,fma,f16c"), always_inline))

/* Sum of the 8 lanes in a fixed order. */
AVX2_INLINE float hsum8(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

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

AVX2 static void mv_f32(const kern_mat *m, const float *x, float *y, uint32_t r0, uint32_t r1)
{
	const uint32_t cols = m->cols;

	for (uint32_t r = r0; r < r1; r++) {
		const float *w = (const float *)m->w + (size_t)r * cols;
		__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
		uint32_t k = 0;
		for (; k + 32 <= cols; k += 32) {
			a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
			a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
			a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 16), _mm256_loadu_ps(x + k + 16), a2);
			a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 24), _mm256_loadu_ps(x + k + 24), a3);
		}
		for (; k + 8 <= cols; k += 8)
			a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
		float s = hsum8(sum4(a0, a1, a2, a3));
		for (; k < cols; k++)
			s += w[k] * x[k];
		y[r] = s;
	}
}

AVX2 static void mv_bf16(const kern_mat *m, const float *x, float *y, uint32_t r0, uint32_t r1)
{
	const uint32_t cols = m->cols;

	for (uint32_t r = r0; r < r1; r++) {
		const uint16_t *w = (const uint16_t *)m->w + (size_t)r * cols;
		__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
		uint32_t k = 0;
		for (; k + 32 <= cols; k += 32) {
			a0 = _mm256_fmadd_ps(ld_bf16x8(w + k), _mm256_loadu_ps(x + k), a0);
			a1 = _mm256_fmadd_ps(ld_bf16x8(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
			a2 = _mm256_fmadd_ps(ld_bf16x8(w + k + 16), _mm256_loadu_ps(x + k + 16), a2);
			a3 = _mm256_fmadd_ps(ld_bf16x8(w + k + 24), _mm256_loadu_ps(x + k + 24), a3);
		}
		for (; k + 8 <= cols; k += 8)
			a0 = _mm256_fmadd_ps(ld_bf16x8(w + k), _mm256_loadu_ps(x + k), a0);
		float s = hsum8(sum4(a0, a1, a2, a3));
		for (; k < cols; k++)
			s += kern_bf16(w[k]) * x[k];
		y[r] = s;
	}
}

AVX2 static void mv_i8(const kern_mat *m, const float *x, float *y, uint32_t r0, uint32_t r1)
{
	const uint32_t cols = m->cols;

	for (uint32_t r = r0; r < r1; r++) {
		const int8_t *w = (const int8_t *)m->w + (size_t)r * cols;
		__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
		uint32_t k = 0;
		for (; k + 32 <= cols; k += 32) {
			a0 = _mm256_fmadd_ps(ld_i8x8(w + k), _mm256_loadu_ps(x + k), a0);
			a1 = _mm256_fmadd_ps(ld_i8x8(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
			a2 = _mm256_fmadd_ps(ld_i8x8(w + k + 16), _mm256_loadu_ps(x + k + 16), a2);
			a3 = _mm256_fmadd_ps(ld_i8x8(w + k + 24), _mm256_loadu_ps(x + k + 24), a3);
		}
		for (; k + 8 <= cols; k += 8)
			a0 = _mm256_fmadd_ps(ld_i8x8(w + k), _mm256_loadu_ps(x + k), a0);
		float s = hsum8(sum4(a0, a1, a2, a3));
		for (; k < cols; k++)
			s += (float)w[k] * x[k];
		y[r] = s * ((const float *)m->s)[r];
	}
}

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
		y[r] = fp8_nan_seen(nan) ? NAN : hsum8(sum4(a0, a1, a2, a3)) + tail;
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
		y[r] = hsum8(sum4(a0, a1, a2, a3));
	}
}

/* ---------------------------------------------------------------- batch > 1 */

/* Dequantizes W[r, k0 .. k0+n) into out[0 .. n), scales applied; k0 is a
 * multiple of KERN_KC. The same values as kern_mat_get. */
AVX2 static void dq_row(const kern_mat *m, uint32_t r, uint32_t k0, uint32_t n, float *out)
{
	const size_t base = (size_t)r * m->cols + k0;
	uint32_t k = 0;

	switch (m->format) {
	case K2_FORMAT_BF16: {
		const uint16_t *w = (const uint16_t *)m->w + base;
		for (; k + 8 <= n; k += 8)
			_mm256_storeu_ps(out + k, ld_bf16x8(w + k));
		for (; k < n; k++)
			out[k] = kern_bf16(w[k]);
		break;
	}
	case K2_FORMAT_INT8: {
		const int8_t *w = (const int8_t *)m->w + base;
		float s = ((const float *)m->s)[r];
		__m256 sv = _mm256_set1_ps(s);
		for (; k + 8 <= n; k += 8)
			_mm256_storeu_ps(out + k, _mm256_mul_ps(ld_i8x8(w + k), sv));
		for (; k < n; k++)
			out[k] = (float)w[k] * s;
		break;
	}
	case K2_FORMAT_FP8_B128: {
		const uint8_t *w = (const uint8_t *)m->w + base;
		__m128i nan = _mm_setzero_si128();
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
			for (; k < c1; k++)
				out[k] = kern_e4m3_lut()[w[k]] * s;
		}
		if (fp8_nan_seen(nan)) /* rare: redo with the table, which has the NaNs */
			for (k = 0; k < n; k++)
				out[k] = kern_e4m3_lut()[w[k]] * kern_fp8_scale(m, r, (k0 + k) / 128);
		break;
	}
	case KERN_FORMAT_F32:
		memcpy(out, (const float *)m->w + base, n * sizeof(*out));
		break;
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

AVX2 static void mm_tiled(const kern_mat *m, const float *x, uint32_t batch,
			  float *y, uint32_t r0, uint32_t r1)
{
	float wbuf[KERN_TILE_ROWS * KERN_KC] __attribute__((aligned(32)));
	float acc[KERN_TILE_ROWS * KERN_TILE_BATCH * 8] __attribute__((aligned(32)));
	float tail[KERN_TILE_ROWS][KERN_TILE_BATCH];
	const uint32_t cols = m->cols;

	for (uint32_t rg = r0; rg < r1; rg += KERN_TILE_ROWS) {
		uint32_t nr = r1 - rg < KERN_TILE_ROWS ? r1 - rg : KERN_TILE_ROWS;
		for (uint32_t bs = 0; bs < batch; bs += KERN_TILE_BATCH) {
			uint32_t nbt = batch - bs < KERN_TILE_BATCH ? batch - bs : KERN_TILE_BATCH;
			memset(acc, 0, sizeof(acc));
			memset(tail, 0, sizeof(tail));
			for (uint32_t k0 = 0; k0 < cols; k0 += KERN_KC) {
				uint32_t n = cols - k0 < KERN_KC ? cols - k0 : KERN_KC;
				uint32_t n8 = n & ~7u;
				for (uint32_t r = 0; r < nr; r++)
					dq_row(m, rg + r, k0, n, wbuf + r * KERN_KC);
				for (uint32_t b = 0; b < nbt; b += 3) {
					uint32_t nb = nbt - b < 3 ? nbt - b : 3;
					mk_table[nr - 1][nb - 1](wbuf, x + (size_t)(bs + b) * cols + k0, cols,
								 n8, acc + (size_t)b * 8);
				}
				for (uint32_t k = n8; k < n; k++)
					for (uint32_t r = 0; r < nr; r++)
						for (uint32_t b = 0; b < nbt; b++)
							tail[r][b] += wbuf[r * KERN_KC + k] *
								      x[(size_t)(bs + b) * cols + k0 + k];
			}
			for (uint32_t r = 0; r < nr; r++)
				for (uint32_t b = 0; b < nbt; b++)
					y[(size_t)(bs + b) * m->rows + rg + r] =
						hsum8(_mm256_loadu_ps(acc + ((size_t)r * KERN_TILE_BATCH + b) * 8)) +
						tail[r][b];
		}
	}
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
	case K2_FORMAT_BF16:
		w[0] = ld_bf16x8((const uint16_t *)m->w + i);
		w[1] = ld_bf16x8((const uint16_t *)m->w + i + 8);
		break;
	case K2_FORMAT_INT8:
		w[0] = ld_i8x8((const int8_t *)m->w + i);
		w[1] = ld_i8x8((const int8_t *)m->w + i + 8);
		break;
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
		w[0] = _mm256_loadu_ps((const float *)m->w + i);
		w[1] = _mm256_loadu_ps((const float *)m->w + i + 8);
		break;
	}
}

/* B (2 … 4) rows of x against rows [r0, r1) of a format-F matrix: each weight
 * vector dequantized once and multiplied into every row of x; per output,
 * two lane accumulators (even and odd vectors of 8), then 8 columns, then a
 * scalar tail. */
AVX2_INLINE void mvb(const kern_mat *m, const uint32_t F, const float *x, const int B,
		     float *y, uint32_t r0, uint32_t r1)
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
			float wk = kern_mat_get(m, r, k);
			if (F == K2_FORMAT_INT8)
				wk = (float)((const int8_t *)m->w)[(size_t)r * cols + k];
#pragma GCC unroll 4
			for (int b = 0; b < B; b++)
				tail[b] += wk * x[(size_t)b * cols + k];
		}
		const float s = F == K2_FORMAT_INT8 ? ((const float *)m->s)[r] : 1.0f;
		const int row_nan = F == K2_FORMAT_FP8_B128 && fp8_nan_seen(nan);
#pragma GCC unroll 4
		for (int b = 0; b < B; b++) {
			float v = hsum8(_mm256_add_ps(a[b][0], a[b][1])) + tail[b];
			y[(size_t)b * rows + r] = row_nan ? NAN : F == K2_FORMAT_INT8 ? v * s : v;
		}
	}
}

#define MVB(F, B)                                                                   \
	AVX2 static void mvb_##F##_##B(const kern_mat *m, const float *x, float *y,  \
				       uint32_t r0, uint32_t r1)                     \
	{                                                                           \
		mvb(m, F, x, B, y, r0, r1);                                         \
	}
#define MVB_FORMAT(F) MVB(F, 2) MVB(F, 3) MVB(F, 4)
MVB_FORMAT(1) MVB_FORMAT(2) MVB_FORMAT(3) MVB_FORMAT(4) MVB_FORMAT(100)
#undef MVB_FORMAT
#undef MVB

typedef void (*mvb_fn)(const kern_mat *, const float *, float *, uint32_t, uint32_t);

/* [format slot][B - 2]; slots: bf16, fp8, int8, int4, f32. */
static const mvb_fn mvb_table[5][3] = {
	{mvb_1_2, mvb_1_3, mvb_1_4},       {mvb_2_2, mvb_2_3, mvb_2_4},
	{mvb_3_2, mvb_3_3, mvb_3_4},       {mvb_4_2, mvb_4_3, mvb_4_4},
	{mvb_100_2, mvb_100_3, mvb_100_4},
};

AVX2 void kern_rows_avx2(const kern_mat *m, const float *x, uint32_t batch,
			 float *y, uint32_t r0, uint32_t r1)
{
	if (batch > KERN_FUSED_BATCH) {
		mm_tiled(m, x, batch, y, r0, r1);
		return;
	}
	if (batch > 1) {
		/* rows of x four at a time: the task's weights stay in cache between */
		int slot = m->format == KERN_FORMAT_F32 ? 4 : (int)m->format - 1;
		for (uint32_t b0 = 0; b0 < batch; b0 += 4) {
			uint32_t nb = batch - b0 < 4 ? batch - b0 : 4;
			const float *xb = x + (size_t)b0 * m->cols;
			float *yb = y + (size_t)b0 * m->rows;
			if (nb == 1)
				kern_rows_avx2(m, xb, 1, yb, r0, r1);
			else
				mvb_table[slot][nb - 2](m, xb, yb, r0, r1);
		}
		return;
	}
	switch (m->format) {
	case K2_FORMAT_BF16:
		mv_bf16(m, x, y, r0, r1);
		break;
	case K2_FORMAT_FP8_B128:
		mv_fp8(m, x, y, r0, r1);
		break;
	case K2_FORMAT_INT8:
		mv_i8(m, x, y, r0, r1);
		break;
	case K2_FORMAT_INT4_G32:
		mv_i4(m, x, y, r0, r1);
		break;
	case KERN_FORMAT_F32:
		mv_f32(m, x, y, r0, r1);
		break;
	}
}

#else /* not x86-64 GCC/Clang: never called, kern_isa_best() is generic */

void kern_rows_avx2(const kern_mat *m, const float *x, uint32_t batch,
		    float *y, uint32_t r0, uint32_t r1)
{
	kern_rows_generic(m, x, batch, y, r0, r1);
}

#endif
