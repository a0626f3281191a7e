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

/* The AVX-512 paths' target features (matmul_avx512.c adds nothing, the
 * dot-product paths add avx512bf16 or avx512vnni). */
#define KERN_AVX512_TARGET "avx512f,avx512bw,avx512vl," KERN_AVX2_TARGET
#define KERN_AVX512_INLINE static inline __attribute__((target(KERN_AVX512_TARGET), always_inline))

/* Sum of the 16 lanes in a fixed order: the two halves, then kern_hsum8. */
KERN_AVX512_INLINE float kern_hsum16(__m512 v)
{
	return kern_hsum8(_mm256_add_ps(_mm512_castps512_ps256(v),
					_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

/* Sixteen bf16 values as floats. */
KERN_AVX512_INLINE __m512 kern_bf16x16(__m256i v)
{
	return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

#endif /* K2_MATMUL_X86_H */
