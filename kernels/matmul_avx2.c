/* matmul_avx2.c — the AVX2 + FMA + F16C products, compiled with a target
 * attribute so the rest of the build needs no -mavx2; matmul.c calls them only
 * where its run-time detection found all three.
 *
 * One pass over each weight row, dequantizing in registers (bf16 by a shift,
 * int8 by widening, fp8 e4m3 by rebuilding it as an IEEE half and converting
 * with F16C, int4 by a variable shift of a broadcast word), each weight vector
 * multiplied into up to KERN_FUSED_BATCH rows of x; larger batches go in
 * fours over a task's rows, whose weights stay in cache between. One kernel
 * per format, the same order of sums at every batch: a sequence's product is
 * the same bits alone or batched with others. */
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

/* ---------------------------------------------------------------- the products */

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

/* B (1 … 4) rows of x against rows [r0, r1) of a format-F matrix: each weight
 * vector dequantized once and multiplied into every row of x; per output,
 * two lane accumulators (even and odd vectors of 8), then a scalar tail. The
 * order of the sums is the same at every B. */
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
	KERN_MV_DEFINE(AVX2, mvb_##F##_1, mvb, F, 1) \
	KERN_MV_DEFINE(AVX2, mvb_##F##_2, mvb, F, 2) \
	KERN_MV_DEFINE(AVX2, mvb_##F##_3, mvb, F, 3) \
	KERN_MV_DEFINE(AVX2, mvb_##F##_4, mvb, F, 4)
MVB_FORMAT(1) MVB_FORMAT(2) MVB_FORMAT(3) MVB_FORMAT(4) MVB_FORMAT(100)
#undef MVB_FORMAT

/* [kern_format_slot][batch - 1] */
static const kern_mv_fn fused_avx2[KERN_FORMAT_SLOTS][4] = {
	{mvb_1_1, mvb_1_2, mvb_1_3, mvb_1_4},       {mvb_2_1, mvb_2_2, mvb_2_3, mvb_2_4},
	{mvb_3_1, mvb_3_2, mvb_3_3, mvb_3_4},       {mvb_4_1, mvb_4_2, mvb_4_3, mvb_4_4},
	{mvb_100_1, mvb_100_2, mvb_100_3, mvb_100_4},
};

AVX2 void kern_rows_avx2(const kern_mat *m, const float *x, uint32_t batch,
			 float *y, uint32_t r0, uint32_t r1)
{
	kern_rows_fused(fused_avx2[kern_format_slot(m->format)], m, x, batch, y, r0, r1);
}

#else /* not x86-64 GCC/Clang: never called, kern_isa_best() is generic */

void kern_rows_avx2(const kern_mat *m, const float *x, uint32_t batch,
		    float *y, uint32_t r0, uint32_t r1)
{
	kern_rows_generic(m, x, batch, y, r0, r1);
}

#endif
