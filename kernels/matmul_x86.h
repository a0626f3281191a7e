/* matmul_x86.h — vector helpers that matmul_avx2.c and matmul_avx512.c share;
 * x86-64 GCC/Clang only, so those files include it inside their #if. The
 * helpers need the AVX2 path's features, which the AVX-512 path's target
 * includes. Not for use outside kernels/. */
#ifndef K2_MATMUL_X86_H
#define K2_MATMUL_X86_H

#include <immintrin.h>

/* The AVX2 path's target features; the AVX-512 path adds to them. */
#define KERN_AVX2_TARGET "avx2,fma,f16c"

/* Sum of the 8 lanes in a fixed order: ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7)),
 * that of kern_hsum8_lanes (matmul_impl.h). */
static inline __attribute__((target(KERN_AVX2_TARGET), always_inline)) float
kern_hsum8(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

#endif /* K2_MATMUL_X86_H */
