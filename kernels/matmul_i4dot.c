/* matmul_i4dot.c — int4-g32 weights times activations quantized to 8 bits per
 * block of 32 (kern_q8), on the AVX-512 VNNI integer dot product (vpdpbusd:
 * 64 unsigned × signed byte products a step, summed exactly in 32 bits), for
 * kern_matmul_fast at any batch. Compiled with a target
 * attribute; matmul.c calls it only where the CPU has AVX-512 VNNI.
 *
 * A group of 32 weights is 16 bytes, element 2i in the low nibble of byte i
 * and 2i+1 in the high one, each q + 8 for q in [-8, 7], with one bf16 scale
 * sw. With x's block as xq · dx (kern_q8: the even elements and the odd ones
 * apart), the group's share of a dot product is
 *   sw · dx · Σ (q_k + 8) xq_k  −  8 · sw · dx · Σ xq_k
 * — the first sum exact in integers (the low nibbles against the even xq, the
 * high ones against the odd), the second precomputed per block (kern_q8.xc).
 * Four groups a step fill the 16 lanes of a vector, four lanes a group; the
 * lanes are scaled by their group's sw · dx and summed in float32 lane by
 * lane, folded once per output at the end (a fixed order). */
#include "kernels_impl.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include "matmul_x86.h"

#define TGT KERN_AVX512_TARGET ",avx512vnni"
#define AVN static inline __attribute__((target(TGT), always_inline))



/* Quantizes row b of x [*, ng · 32] into q (kern_q8's rule, as matmul.c's
 * scalar q8_block: dx = amax / 127, x · (127 / amax) rounded to nearest even
 * by the conversion's default rounding). */
__attribute__((target(TGT))) void kern_q8_row_avx512(const float *x, kern_q8 *q, uint32_t b)
{
	const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
	const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
	int8_t *xe = q->xe + (size_t)b * q->ng16 * 16, *xo = q->xo + (size_t)b * q->ng16 * 16;
	float *dxr = q->dx + (size_t)b * q->ng16, *xcr = q->xc + (size_t)b * q->ng16;
	for (uint32_t g = 0; g < q->ng; g++) {
		const __m512 a = _mm512_loadu_ps(x + (size_t)g * 32);
		const __m512 c = _mm512_loadu_ps(x + (size_t)g * 32 + 16);
		const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(c)));
		const float dx = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
		const __m512 vi = _mm512_set1_ps(inv);
		const __m512i qe = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_permutex2var_ps(a, ev, c), vi));
		const __m512i qo = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_permutex2var_ps(a, od, c), vi));
		_mm_storeu_si128((__m128i *)(xe + (size_t)g * 16), _mm512_cvtsepi32_epi8(qe));
		_mm_storeu_si128((__m128i *)(xo + (size_t)g * 16), _mm512_cvtsepi32_epi8(qo));
		dxr[g] = dx;
		xcr[g] = -8.0f * dx * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(qe, qo));
	}
}

/* Rows [r0, r1) for the B (1 … 4) rows of q from row b0, into y (stride rows). */
AVN void i4q8_rows(const kern_mat *m, const kern_q8 *q, uint32_t b0, float *y, uint32_t r0,
		   uint32_t r1, const int B)
{
	const uint32_t ng = q->ng, rows = m->rows;
	const __m512i nib = _mm512_set1_epi8(0x0f);
	/* lane i of a 4-group step takes scale 4j + i / 4 of the 16 in hand */
	const __m512i idx[4] = {
		_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
		_mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7),
		_mm512_setr_epi32(8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11),
		_mm512_setr_epi32(12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15),
	};

	for (uint32_t r = r0; r < r1; r++) {
		const uint8_t *w = (const uint8_t *)m->w + (size_t)r * ng * 16;
		const uint16_t *s = (const uint16_t *)m->s + (size_t)r * ng;
		__m512 acc[4], accc[4];
#pragma GCC unroll 4
		for (int b = 0; b < 4; b++)
			acc[b] = accc[b] = _mm512_setzero_ps();
		for (uint32_t g16 = 0; g16 < ng; g16 += 16) {
			const uint32_t left = ng - g16;
			const __mmask16 gm = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
			const __m512 sw = kern_bf16x16(_mm256_maskz_loadu_epi16(gm, s + g16));
			__m512 sv[4];
#pragma GCC unroll 4
			for (int b = 0; b < B; b++) {
				const size_t o = (size_t)(b0 + b) * q->ng16 + g16;
				sv[b] = _mm512_mul_ps(sw, _mm512_loadu_ps(q->dx + o));
				accc[b] = _mm512_fmadd_ps(sw, _mm512_loadu_ps(q->xc + o), accc[b]);
			}
#pragma GCC unroll 4
			for (uint32_t j = 0; j < 4; j++) {
				if (4 * j >= left)
					break;
				const uint32_t g = g16 + 4 * j, n = left - 4 * j;
				const __m512i wv = n >= 4 ? _mm512_loadu_si512((const void *)(w + (size_t)g * 16))
						   : _mm512_maskz_loadu_epi8(((__mmask64)1 << (16 * n)) - 1,
									     w + (size_t)g * 16);
				const __m512i lo = _mm512_and_si512(wv, nib);
				const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), nib);
#pragma GCC unroll 4
				for (int b = 0; b < B; b++) {
					const size_t o = ((size_t)(b0 + b) * q->ng16 + g) * 16;
					__m512i si = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo,
									 _mm512_loadu_si512(q->xe + o));
					si = _mm512_dpbusd_epi32(si, hi, _mm512_loadu_si512(q->xo + o));
					acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si),
								 _mm512_permutexvar_ps(idx[j], sv[b]),
								 acc[b]);
				}
			}
		}
#pragma GCC unroll 4
		for (int b = 0; b < B; b++)
			y[(size_t)b * rows + r] = kern_hsum16(acc[b]) + kern_hsum16(accc[b]);
	}
}

__attribute__((target(TGT))) void kern_rows_i4q8(const kern_mat *m, const kern_q8 *q,
						  uint32_t batch, float *y, uint32_t r0, uint32_t r1)
{
	for (uint32_t b0 = 0; b0 < batch; b0 += 4) {
		const uint32_t nb = batch - b0 < 4 ? batch - b0 : 4;
		float *yb = y + (size_t)b0 * m->rows;
		switch (nb) {
		case 1: i4q8_rows(m, q, b0, yb, r0, r1, 1); break;
		case 2: i4q8_rows(m, q, b0, yb, r0, r1, 2); break;
		case 3: i4q8_rows(m, q, b0, yb, r0, r1, 3); break;
		default: i4q8_rows(m, q, b0, yb, r0, r1, 4); break;
		}
	}
}

#else /* not x86-64 GCC/Clang: never called, kern_has_i4dot() is 0 */

void kern_rows_i4q8(const kern_mat *m, const kern_q8 *q, uint32_t batch, float *y,
		    uint32_t r0, uint32_t r1)
{
	(void)m; (void)q; (void)batch; (void)y; (void)r0; (void)r1;
}

void kern_q8_row_avx512(const float *x, kern_q8 *q, uint32_t b)
{
	(void)x; (void)q; (void)b;
}

#endif
