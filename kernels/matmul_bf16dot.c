/* matmul_bf16dot.c — bf16 weights times bf16 activations on the AVX-512 BF16
 * dot-product instruction (vdpbf16ps: 32 products a step, each exact in
 * float32, summed in float32), for kern_matmul_fast at any batch. The
 * activations were rounded to bf16 once per product by the caller; the weights are read where they lie, two bytes an element, with
 * no widening. Compiled with a target attribute; matmul.c calls it only where
 * the CPU has AVX-512 BF16.
 *
 * Each row in one pass over its weights, used for every row of x (rows of x
 * four at a time); column tails by masked loads, whose zeros add nothing; a
 * fixed order per output element (two accumulators per row of x, four at
 * batch 1, folded in a fixed order). */
#include "kernels_impl.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include "matmul_x86.h"

#define TGT KERN_AVX512_TARGET ",avx512bf16"
#define ABF static inline __attribute__((target(TGT), always_inline))


ABF __m512bh ld32(const uint16_t *p)
{
	return (__m512bh)_mm512_loadu_si512((const void *)p);
}

ABF __m512bh ld32_masked(const uint16_t *p, uint32_t n)
{
	const __mmask32 mk = n >= 32 ? 0xffffffffu : (__mmask32)((1u << n) - 1);
	return (__m512bh)_mm512_maskz_loadu_epi16(mk, p);
}

/* Rows [r0, r1) for the B (1 … 4) rows of xh starting at xh (stride cols),
 * into y (stride rows). */
ABF void dot_rows(const kern_mat *m, const uint16_t *xh, float *y, uint32_t r0, uint32_t r1,
		  const int B)
{
	const uint32_t cols = m->cols, rows = m->rows;
	const uint16_t *w0 = m->w;

	for (uint32_t r = r0; r < r1; r++) {
		const uint16_t *w = w0 + (size_t)r * cols;
		__m512 a[4][4];
#pragma GCC unroll 4
		for (int b = 0; b < 4; b++)
			a[b][0] = a[b][1] = a[b][2] = a[b][3] = _mm512_setzero_ps();
		/* one accumulation order for every B (4 sums of 32 columns, 128 a
		 * step), so a row's result does not depend on how many rows share
		 * its group: a sequence decodes the same alone or in a batch */
		uint32_t k = 0;
		for (; k + 128 <= cols; k += 128) {
			const __m512bh v0 = ld32(w + k), v1 = ld32(w + k + 32), v2 = ld32(w + k + 64),
				       v3 = ld32(w + k + 96);
#pragma GCC unroll 4
			for (int b = 0; b < B; b++) {
				const uint16_t *xb = xh + (size_t)b * cols + k;
				a[b][0] = _mm512_dpbf16_ps(a[b][0], v0, ld32(xb));
				a[b][1] = _mm512_dpbf16_ps(a[b][1], v1, ld32(xb + 32));
				a[b][2] = _mm512_dpbf16_ps(a[b][2], v2, ld32(xb + 64));
				a[b][3] = _mm512_dpbf16_ps(a[b][3], v3, ld32(xb + 96));
			}
		}
		for (; k < cols; k += 32) {
			const uint32_t n = cols - k;
			const __m512bh v = ld32_masked(w + k, n);
#pragma GCC unroll 4
			for (int b = 0; b < B; b++)
				a[b][0] = _mm512_dpbf16_ps(a[b][0], v,
							   ld32_masked(xh + (size_t)b * cols + k, n));
		}
#pragma GCC unroll 4
		for (int b = 0; b < B; b++)
			y[(size_t)b * rows + r] = kern_hsum16(_mm512_add_ps(_mm512_add_ps(a[b][0], a[b][1]),
								       _mm512_add_ps(a[b][2], a[b][3])));
	}
}

__attribute__((target(TGT))) void kern_rows_bf16dot(const kern_mat *m, const uint16_t *xh,
						     uint32_t batch, float *y, uint32_t r0,
						     uint32_t r1)
{
	for (uint32_t b0 = 0; b0 < batch; b0 += 4) {
		const uint32_t nb = batch - b0 < 4 ? batch - b0 : 4;
		const uint16_t *xb = xh + (size_t)b0 * m->cols;
		float *yb = y + (size_t)b0 * m->rows;
		switch (nb) {
		case 1: dot_rows(m, xb, yb, r0, r1, 1); break;
		case 2: dot_rows(m, xb, yb, r0, r1, 2); break;
		case 3: dot_rows(m, xb, yb, r0, r1, 3); break;
		default: dot_rows(m, xb, yb, r0, r1, 4); break;
		}
	}
}

#else /* not x86-64 GCC/Clang: never called, kern_has_bf16dot() is 0 */

void kern_rows_bf16dot(const kern_mat *m, const uint16_t *xh, uint32_t batch, float *y,
		       uint32_t r0, uint32_t r1)
{
	(void)m; (void)xh; (void)batch; (void)y; (void)r0; (void)r1;
}

#endif
