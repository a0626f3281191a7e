/* matmul_avx512.c — the exact products with 512-bit vectors, for CPUs with
 * AVX-512 F/BW/VL (Xeon since Skylake-SP, Zen 4 and later), where int4 and fp8
 * are bound by the dequantizing work rather than by memory and twice the
 * width pays. Compiled with a target attribute; matmul.c calls it only where
 * the CPU has the features.
 *
 * Each row in one pass, its weights dequantized once in registers and used
 * for every row of x; column tails by masked loads instead of scalar code.
 * Rows of x go four at a time (KERN_FUSED_BATCH) over a task's rows, whose
 * weights stay in cache between, at every batch: one kernel per format whose
 * order of sums does not depend on how many rows of x it takes, so a
 * sequence's product is the same bits alone or batched with others (the
 * server decodes several sequences in one step and promises each its own
 * text). */
#include "kernels_impl.h"
#include "matmul_impl.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include "matmul_x86.h"

#define TGT KERN_AVX512_TARGET
#define A512 __attribute__((target(TGT)))
#define A512_INLINE static inline __attribute__((target(TGT), always_inline))

A512_INLINE __m512 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3)
{
	return _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
}

/* Mask of the first n (< 16 or 32) lanes. */
A512_INLINE __mmask16 m16(uint32_t n)
{
	return (__mmask16)((1u << n) - 1);
}

A512_INLINE __mmask32 m32(uint32_t n)
{
	return n >= 32 ? 0xffffffffu : (__mmask32)((1u << n) - 1);
}

A512_INLINE __m512 i8x16(__m128i v)
{
	return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
}

/* 32 e4m3 bytes as two vectors of 16 floats, times 2^-8 (see ld_fp8x16 in
 * matmul_avx2.c for the bit trick); NaN codes tracked in *nan. */
A512_INLINE void fp8x32(__m256i b, __m512 *lo, __m512 *hi, __m256i *nan)
{
	*nan = _mm256_max_epu8(*nan, _mm256_and_si256(b, _mm256_set1_epi8(0x7f)));
	__m512i h = _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(b), 7),
				     _mm512_set1_epi16((short)0xbf80));
	*lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
	*hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
}

A512_INLINE int fp8_nan_seen(__m256i nan)
{
	return _mm256_movemask_epi8(_mm256_cmpeq_epi8(nan, _mm256_set1_epi8(0x7f))) != 0;
}

/* Sixteen weights of a bf16, int8 or f32 matrix (format f) from element i,
 * as stored (int8 without its row scale). */
A512_INLINE __m512 ld_w16(const kern_mat *m, uint32_t f, size_t i)
{
	switch (f) {
	case K2_FORMAT_BF16:
		return kern_bf16x16(_mm256_loadu_si256((const __m256i *)((const uint16_t *)m->w + i)));
	case K2_FORMAT_INT8:
		return i8x16(_mm_loadu_si128((const __m128i *)((const int8_t *)m->w + i)));
	default:
		return _mm512_loadu_ps((const float *)m->w + i);
	}
}

/* The same for the lanes of mk, zeros in the others. */
A512_INLINE __m512 ld_w16_masked(const kern_mat *m, uint32_t f, size_t i, __mmask16 mk)
{
	switch (f) {
	case K2_FORMAT_BF16:
		return kern_bf16x16(_mm256_maskz_loadu_epi16(mk, (const uint16_t *)m->w + i));
	case K2_FORMAT_INT8:
		return i8x16(_mm_maskz_loadu_epi8(mk, (const int8_t *)m->w + i));
	default:
		return _mm512_maskz_loadu_ps(mk, (const float *)m->w + i);
	}
}

/* int4 takes x with each group of 32 rearranged, evens first
 * (kern_i4_pair_split): then one byte widened to a 32-bit lane holds element
 * 2i in its low nibble and 2i+1 in the next, and vpermps, which reads only the
 * low 4 bits of each index, looks both up in a 16-entry table of (q − 8) · s
 * for the group's scale s: the dequantized value exactly as kern_mat_get
 * computes it, with no masking, offset or conversion. At batch 1 even groups
 * go to (a[0][0], a[0][1]) and odd ones to (a[1][0], a[1][1]); at batches
 * 2 … 4 each row of x has one pair (even and odd columns). */
A512_INLINE void i4_rows(const kern_mat *m, const float *xp, float *y, uint32_t r0,
			 uint32_t r1, const int B)
{
	const uint32_t ng = m->cols / 32, rows = m->rows;
	const size_t xs = m->cols;
	const __m512 q = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);

	for (uint32_t r = r0; r < r1; r++) {
		const uint8_t *w = (const uint8_t *)m->w + (size_t)r * ng * 16;
		const uint16_t *s = (const uint16_t *)m->s + (size_t)r * ng;
		__m512 a[4][2];
#pragma GCC unroll 4
		for (int b = 0; b < 4; b++)
			a[b][0] = a[b][1] = _mm512_setzero_ps();
		uint32_t g = 0;
#define I4_GROUP(G, SG)                                                                      \
	do {                                                                                 \
		__m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + (size_t)(G) * 16))); \
		__m512 t = _mm512_mul_ps(q, SG);                                             \
		__m512 we = _mm512_permutexvar_ps(d, t);                                     \
		__m512 wo = _mm512_permutexvar_ps(_mm512_srli_epi32(d, 4), t);               \
		const float *xg = xp + (size_t)(G) * 32;                                     \
		_Pragma("GCC unroll 4") for (int b = 0; b < B; b++) {                        \
			a[b][0] = _mm512_fmadd_ps(we, _mm512_loadu_ps(xg + b * xs), a[b][0]);  \
			a[b][1] = _mm512_fmadd_ps(wo, _mm512_loadu_ps(xg + b * xs + 16), a[b][1]); \
		}                                                                            \
	} while (0)
		/* Sixteen groups a step, their scales converted together. */
		for (; g + 16 <= ng; g += 16) {
			__m512 sv = kern_bf16x16(_mm256_loadu_si256((const __m256i *)(s + g)));
#define I4_STEP(J) I4_GROUP(g + (J), _mm512_permutexvar_ps(_mm512_set1_epi32(J), sv))
			I4_STEP(0); I4_STEP(1); I4_STEP(2); I4_STEP(3);
			I4_STEP(4); I4_STEP(5); I4_STEP(6); I4_STEP(7);
			I4_STEP(8); I4_STEP(9); I4_STEP(10); I4_STEP(11);
			I4_STEP(12); I4_STEP(13); I4_STEP(14); I4_STEP(15);
#undef I4_STEP
		}
		for (; g < ng; g++)
			I4_GROUP(g, _mm512_set1_ps(kern_bf16(s[g])));
#undef I4_GROUP
#pragma GCC unroll 4
		for (int b = 0; b < B; b++)
			y[(size_t)b * rows + r] = kern_hsum16(_mm512_add_ps(a[b][0], a[b][1]));
	}
}

KERN_MV_DEFINE(A512, i4_1, i4_rows, 1) KERN_MV_DEFINE(A512, i4_2, i4_rows, 2)
KERN_MV_DEFINE(A512, i4_3, i4_rows, 3) KERN_MV_DEFINE(A512, i4_4, i4_rows, 4)

A512 void kern_rows_avx512_i4(const kern_mat *m, const float *xp, uint32_t batch, float *y,
			      uint32_t r0, uint32_t r1)
{
	static const kern_mv_fn i4[4] = {i4_1, i4_2, i4_3, i4_4};

	kern_rows_fused(i4, m, xp, batch, y, r0, r1);
}

/* ---------------------------------------------------------------- the other formats */

/* bf16, fp8, int8 and f32 at batches 1 … 4 (more in fours): each weight
 * vector dequantized once in registers and multiplied into B rows of x, four
 * accumulators per row of x (fp8: two per block, folded into two with the
 * block's scale). The order of every sum is the same at every B, so a row of
 * x gets the same bits alone or in a batch. */
A512_INLINE void mvb_plain(const kern_mat *m, const float *x, float *y, uint32_t r0,
			   uint32_t r1, const uint32_t F, const int B)
{
	const uint32_t cols = m->cols, rows = m->rows;

	for (uint32_t r = r0; r < r1; r++) {
		const size_t row = (size_t)r * cols;
		/* four accumulators per row of x over 64 columns a step, then 16
		 * columns into the first, the masked rest into the second */
		__m512 a[4][4];
#pragma GCC unroll 4
		for (int b = 0; b < 4; b++)
			a[b][0] = a[b][1] = a[b][2] = a[b][3] = _mm512_setzero_ps();
		uint32_t k = 0;
		for (; k + 64 <= cols; k += 64) {
			const __m512 w0 = ld_w16(m, F, row + k), w1 = ld_w16(m, F, row + k + 16),
				     w2 = ld_w16(m, F, row + k + 32), w3 = ld_w16(m, F, row + k + 48);
#pragma GCC unroll 4
			for (int b = 0; b < B; b++) {
				const float *xb = x + (size_t)b * cols + k;
				a[b][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xb), a[b][0]);
				a[b][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 16), a[b][1]);
				a[b][2] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xb + 32), a[b][2]);
				a[b][3] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xb + 48), a[b][3]);
			}
		}
		for (; k + 16 <= cols; k += 16) {
			const __m512 w0 = ld_w16(m, F, row + k);
#pragma GCC unroll 4
			for (int b = 0; b < B; b++)
				a[b][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + (size_t)b * cols + k), a[b][0]);
		}
		if (k < cols) {
			const __mmask16 mk = m16(cols - k);
			const __m512 w0 = ld_w16_masked(m, F, row + k, mk);
#pragma GCC unroll 4
			for (int b = 0; b < B; b++)
				a[b][1] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mk, x + (size_t)b * cols + k),
							  a[b][1]);
		}
		const float s = F == K2_FORMAT_INT8 ? ((const float *)m->s)[r] : 1.0f;
#pragma GCC unroll 4
		for (int b = 0; b < B; b++) {
			float v = kern_hsum16(sum4(a[b][0], a[b][1], a[b][2], a[b][3]));
			y[(size_t)b * rows + r] = F == K2_FORMAT_INT8 ? v * s : v;
		}
	}
}

A512_INLINE void mvb_fp8(const kern_mat *m, const float *x, float *y, uint32_t r0,
			 uint32_t r1, const int B)
{
	const uint32_t cols = m->cols, rows = m->rows, ncb = (cols + 127) / 128;

	for (uint32_t r = r0; r < r1; r++) {
		const uint8_t *w = (const uint8_t *)m->w + (size_t)r * cols;
		const float *srow = (const float *)m->s + (size_t)(r / 128) * ncb;
		__m512 a[4][2], lo, hi;
		__m256i nan = _mm256_setzero_si256();
#pragma GCC unroll 4
		for (int b = 0; b < 4; b++)
			a[b][0] = a[b][1] = _mm512_setzero_ps();
		for (uint32_t cb = 0; cb < ncb; cb++) {
			uint32_t k = cb * 128, c1 = k + 128 < cols ? k + 128 : cols;
			__m512 blk[4][2];
#pragma GCC unroll 4
			for (int b = 0; b < 4; b++)
				blk[b][0] = blk[b][1] = _mm512_setzero_ps();
			for (; k < c1; k += 32) {
				uint32_t n = c1 - k;
				if (n >= 32) {
					fp8x32(_mm256_loadu_si256((const __m256i *)(w + k)), &lo, &hi, &nan);
#pragma GCC unroll 4
					for (int b = 0; b < B; b++) {
						const float *xb = x + (size_t)b * cols + k;
						blk[b][0] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xb), blk[b][0]);
						blk[b][1] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), blk[b][1]);
					}
				} else {
					__mmask16 m0 = n >= 16 ? 0xffff : m16(n), m1 = n > 16 ? m16(n - 16) : 0;
					fp8x32(_mm256_maskz_loadu_epi8(m32(n), w + k), &lo, &hi, &nan);
#pragma GCC unroll 4
					for (int b = 0; b < B; b++) {
						const float *xb = x + (size_t)b * cols + k;
						blk[b][0] = _mm512_fmadd_ps(lo, _mm512_maskz_loadu_ps(m0, xb), blk[b][0]);
						blk[b][1] = _mm512_fmadd_ps(hi, _mm512_maskz_loadu_ps(m1, xb + 16),
									    blk[b][1]);
					}
				}
			}
			__m512 sv = _mm512_set1_ps(srow[cb] * 256.0f);
#pragma GCC unroll 4
			for (int b = 0; b < B; b++) {
				a[b][0] = _mm512_fmadd_ps(blk[b][0], sv, a[b][0]);
				a[b][1] = _mm512_fmadd_ps(blk[b][1], sv, a[b][1]);
			}
		}
		int isnan_row = fp8_nan_seen(nan);
#pragma GCC unroll 4
		for (int b = 0; b < B; b++)
			y[(size_t)b * rows + r] = isnan_row ? NAN : kern_hsum16(_mm512_add_ps(a[b][0], a[b][1]));
	}
}

/* name_<B>: the kernel FN for B rows of x (and format F where FN takes one) */
#define MVB_BATCHES(NAME, FN, ...)                              \
	KERN_MV_DEFINE(A512, NAME##_1, FN, __VA_ARGS__ 1)        \
	KERN_MV_DEFINE(A512, NAME##_2, FN, __VA_ARGS__ 2)        \
	KERN_MV_DEFINE(A512, NAME##_3, FN, __VA_ARGS__ 3)        \
	KERN_MV_DEFINE(A512, NAME##_4, FN, __VA_ARGS__ 4)
MVB_BATCHES(mvb_bf16, mvb_plain, K2_FORMAT_BF16,)
MVB_BATCHES(mvb_i8, mvb_plain, K2_FORMAT_INT8,)
MVB_BATCHES(mvb_f32, mvb_plain, KERN_FORMAT_F32,)
MVB_BATCHES(mvb_fp8, mvb_fp8, )
#undef MVB_BATCHES

/* [kern_format_slot][batch - 1]; int4 goes through kern_rows_avx512_i4. */
static const kern_mv_fn fused_avx512[KERN_FORMAT_SLOTS][4] = {
	{mvb_bf16_1, mvb_bf16_2, mvb_bf16_3, mvb_bf16_4},
	{mvb_fp8_1, mvb_fp8_2, mvb_fp8_3, mvb_fp8_4},
	{mvb_i8_1, mvb_i8_2, mvb_i8_3, mvb_i8_4},
	{NULL, NULL, NULL, NULL},
	{mvb_f32_1, mvb_f32_2, mvb_f32_3, mvb_f32_4},
};

A512 void kern_rows_avx512(const kern_mat *m, const float *x, uint32_t batch,
			   float *y, uint32_t r0, uint32_t r1)
{
	/* int4 gets here only when kern_matmul could not rearrange x; every
	 * other batch goes in fours through the same kernels (batch invariance) */
	if (m->format == K2_FORMAT_INT4_G32)
		kern_rows_avx2(m, x, batch, y, r0, r1);
	else
		kern_rows_fused(fused_avx512[kern_format_slot(m->format)], m, x, batch, y, r0,
				r1);
}

#else /* not x86-64 GCC/Clang: never called, kern_isa_best() is generic */

void kern_rows_avx512(const kern_mat *m, const float *x, uint32_t batch,
		      float *y, uint32_t r0, uint32_t r1)
{
	kern_rows_generic(m, x, batch, y, r0, r1);
}

void kern_rows_avx512_i4(const kern_mat *m, const float *xp, uint32_t batch, float *y,
			 uint32_t r0, uint32_t r1)
{
	(void)xp;
	for (uint32_t b = 0; b < batch; b++)
		for (uint32_t r = r0; r < r1; r++)
			y[(size_t)b * m->rows + r] = NAN;
}

#endif
