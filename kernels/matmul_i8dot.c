/* matmul_i8dot.c — int8 weights (one float scale per row) times activations
 * quantized to 8 bits per block of 32 in natural order (kern_q8's xn), on the
 * AVX-512 VNNI integer dot product (vpdpbusd: 64 unsigned × signed byte
 * products a step, summed exactly in 32 bits), for kern_matmul_fast at any
 * batch. Compiled with a target attribute; matmul.c calls it only where the
 * CPU has AVX-512 VNNI.
 *
 * vpdpbusd wants one unsigned operand: the weights are flipped to w + 128
 * (one xor of the sign bit), and with x's block as xq · dx a row's dot
 * product is
 *   sw · (Σ_blocks dx · Σ (w_k + 128) xq_k  +  Σ_blocks −128 · dx · Σ xq_k)
 * — the inner sums exact in integers, the second term the same for every
 * weight row (kern_q8.xc per block, summed once per row of x). Two blocks a
 * step fill the 16 lanes of a vector, eight lanes a block; the lanes are
 * scaled by their block's dx and summed in float32 lane by lane, folded once
 * per output at the end: one order at every batch. */
#include "kernels_impl.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include "matmul_x86.h"

#define TGT KERN_AVX512_TARGET ",avx512vnni"
#define AVN static inline __attribute__((target(TGT), always_inline))

/* Quantizes row b of x [*, ng · 32] into q's xn (natural order), dx and xc
 * (−128 · dx · Σ xq), by kern_q8's rule as the int4 quantizer. */
__attribute__((target(TGT))) void kern_q8n_row_avx512(const float *x, kern_q8 *q, uint32_t b)
{
	int8_t *xn = q->xn + (size_t)b * q->ng16 * 32;
	float *dxr = q->dx + (size_t)b * q->ng16, *xcr = q->xc + (size_t)b * q->ng16;
	for (uint32_t g = 0; g < q->ng; g++) {
		const __m512 a = _mm512_loadu_ps(x + (size_t)g * 32);
		const __m512 c = _mm512_loadu_ps(x + (size_t)g * 32 + 16);
		const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(c)));
		const float dx = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
		const __m512 vi = _mm512_set1_ps(inv);
		const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, vi));
		const __m512i qc = _mm512_cvtps_epi32(_mm512_mul_ps(c, vi));
		_mm_storeu_si128((__m128i *)(xn + (size_t)g * 32), _mm512_cvtsepi32_epi8(qa));
		_mm_storeu_si128((__m128i *)(xn + (size_t)g * 32 + 16), _mm512_cvtsepi32_epi8(qc));
		dxr[g] = dx;
		xcr[g] = -128.0f * dx * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qc));
	}
}

/* Rows [r0, r1) for the B (1 … 4) rows of q from row b0, into y (stride rows). */
AVN void i8q8_rows(const kern_mat *m, const kern_q8 *q, uint32_t b0, float *y, uint32_t r0,
		   uint32_t r1, const int B)
{
	const uint32_t ng = q->ng, rows = m->rows, cols = m->cols;
	const __m512i flip = _mm512_set1_epi8((char)0x80);
	/* lanes 0-7 take block 2j of the 16 scales in hand, lanes 8-15 block 2j + 1 */
	const __m512i idx[8] = {
		_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
		_mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
		_mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5),
		_mm512_setr_epi32(6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7),
		_mm512_setr_epi32(8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9),
		_mm512_setr_epi32(10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11),
		_mm512_setr_epi32(12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13),
		_mm512_setr_epi32(14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15),
	};
	/* the weight-independent term of each row of x */
	float corr[4] = {0, 0, 0, 0};
#pragma GCC unroll 4
	for (int b = 0; b < B; b++) {
		const float *xc = q->xc + (size_t)(b0 + b) * q->ng16;
		__m512 c = _mm512_setzero_ps();
		for (uint32_t g16 = 0; g16 < q->ng16; g16 += 16)
			c = _mm512_add_ps(c, _mm512_loadu_ps(xc + g16)); /* zero past ng */
		corr[b] = kern_hsum16(c);
	}

	for (uint32_t r = r0; r < r1; r++) {
		const int8_t *w = (const int8_t *)m->w + (size_t)r * cols;
		__m512 acc[4];
#pragma GCC unroll 4
		for (int b = 0; b < 4; b++)
			acc[b] = _mm512_setzero_ps();
		for (uint32_t g16 = 0; g16 < ng; g16 += 16) {
			__m512 dx[4];
#pragma GCC unroll 4
			for (int b = 0; b < B; b++)
				dx[b] = _mm512_loadu_ps(q->dx + (size_t)(b0 + b) * q->ng16 + g16);
#pragma GCC unroll 8
			for (uint32_t j = 0; j < 8; j++) {
				const uint32_t g = g16 + 2 * j;
				if (g >= ng)
					break;
				/* two blocks; the second masked off past the last */
				const __m512i wv = g + 1 < ng ? _mm512_loadu_si512((const void *)(w + (size_t)g * 32))
					: _mm512_maskz_loadu_epi8(0xffffffffull, w + (size_t)g * 32);
				const __m512i wu = _mm512_xor_si512(wv, flip);
#pragma GCC unroll 4
				for (int b = 0; b < B; b++) {
					const int8_t *xb = q->xn + ((size_t)(b0 + b) * q->ng16 + g) * 32;
					const __m512i si = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wu,
									       _mm512_loadu_si512(xb));
					acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si),
								 _mm512_permutexvar_ps(idx[j], dx[b]), acc[b]);
				}
			}
		}
		const float sw = ((const float *)m->s)[r];
#pragma GCC unroll 4
		for (int b = 0; b < B; b++)
			y[(size_t)b * rows + r] = sw * (kern_hsum16(acc[b]) + corr[b]);
	}
}

__attribute__((target(TGT))) void kern_rows_i8q8(const kern_mat *m, const kern_q8 *q,
						  uint32_t batch, float *y, uint32_t r0, uint32_t r1)
{
	for (uint32_t b0 = 0; b0 < batch; b0 += 4) {
		const uint32_t nb = batch - b0 < 4 ? batch - b0 : 4;
		float *yb = y + (size_t)b0 * m->rows;
		switch (nb) {
		case 1: i8q8_rows(m, q, b0, yb, r0, r1, 1); break;
		case 2: i8q8_rows(m, q, b0, yb, r0, r1, 2); break;
		case 3: i8q8_rows(m, q, b0, yb, r0, r1, 3); break;
		default: i8q8_rows(m, q, b0, yb, r0, r1, 4); break;
		}
	}
}

#else /* not x86-64 GCC/Clang: never called, kern_has_i4dot() is 0 */

void kern_rows_i8q8(const kern_mat *m, const kern_q8 *q, uint32_t batch, float *y,
		    uint32_t r0, uint32_t r1)
{
	(void)m; (void)q; (void)batch; (void)y; (void)r0; (void)r1;
}

void kern_q8n_row_avx512(const float *x, kern_q8 *q, uint32_t b)
{
	(void)x; (void)q; (void)b;
}

#endif
