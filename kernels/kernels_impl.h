/* kernels_impl.h — internals of kernels/ shared by its .c files: the worker
 * pool, the per-instruction-set matrix product paths, and the small helpers
 * every path uses. Not for use outside kernels/. */
#ifndef K2_KERNELS_IMPL_H
#define K2_KERNELS_IMPL_H

#include <stdint.h>

#include "kernels.h"

/* ---------------------------------------------------------------- pool */

/* One task of a parallel run: called once per index i in [0, n), on any
 * thread; tasks of one run may execute concurrently. */
typedef void (*kern_task_fn)(void *ctx, uint32_t i);

/* Runs fn(ctx, i) for every i < n on the pool's workers and the calling
 * thread, and returns when all have returned. Runs inline (on the caller only)
 * when the pool has one thread, when called from inside a task, or when
 * another thread is running the pool at the same moment; so callers must not
 * depend on which thread runs which task. */
void kern_pool_run(kern_task_fn fn, void *ctx, uint32_t n);

/* ---------------------------------------------------------------- products */

/* Row ranges of one product: computes y[b, r] for every b < batch and
 * r0 <= r < r1 (y is [batch, m->rows]). Each element is computed by one call,
 * in an order that depends only on (m, b, r, batch): never on r0, r1. */
typedef void (*kern_rows_fn)(const kern_mat *m, const float *x, uint32_t batch,
			     float *y, uint32_t r0, uint32_t r1);

/* Portable C (matmul.c). */
void kern_rows_generic(const kern_mat *m, const float *x, uint32_t batch,
		       float *y, uint32_t r0, uint32_t r1);
/* AVX2 + FMA + F16C (matmul_avx2.c). */
void kern_rows_avx2(const kern_mat *m, const float *x, uint32_t batch,
		    float *y, uint32_t r0, uint32_t r1);
/* AVX-512 F/BW/VL, rows of x in groups of KERN_FUSED_BATCH, each row's sums
 * in the same order at every batch (matmul_avx512.c). */
void kern_rows_avx512(const kern_mat *m, const float *x, uint32_t batch,
		      float *y, uint32_t r0, uint32_t r1);

/* int4-g32 on the AVX-512 path: like the others, except that it takes xp [batch, cols], x with every group of 32 of
 * every row rearranged by kern_i4_pair_split. */
void kern_rows_avx512_i4(const kern_mat *m, const float *xp, uint32_t batch, float *y,
			 uint32_t r0, uint32_t r1);
/* Activations quantized to 8 bits per block of 32 for int4-g32 products: for
 * row b of x and block g, dx = max |x| / 127 over the block, xq = x / dx
 * rounded to nearest (ties to even) in [-127, 127], stored as the block's 16
 * even elements (xe) and 16 odd ones (xo), and xc = -8 · dx · Σ xq. Rows are
 * ng16 blocks long (ng rounded up to 16, zeros after ng) so that vector loads
 * of 4 blocks of bytes or 16 blocks of scales stay inside. */
typedef struct kern_q8 {
	uint32_t ng, ng16;
	int8_t *xe, *xo;   /* int4: [batch][ng16 · 16], each block's even / odd elements */
	int8_t *xn;        /* int8: [batch][ng16 · 32], natural order */
	float *dx, *xc;    /* [batch][ng16]: the block's scale; −bias · dx · Σ xq (bias
	                      8 for int4, 128 for int8: the weights' offset) */
} kern_q8;

/* Quantizes row b of x [*, ng · 32] into q with AVX-512 (matmul_i4dot.c). */
void kern_q8_row_avx512(const float *x, kern_q8 *q, uint32_t b);
/* int4-g32 weights times q on the AVX-512 VNNI dot product (matmul_i4dot.c),
 * any batch, four rows of x at a time over the rows [r0, r1): the caller's
 * row tasks are small, so their weights stay in cache across those passes. */
void kern_rows_i4q8(const kern_mat *m, const kern_q8 *q, uint32_t batch, float *y,
		    uint32_t r0, uint32_t r1);
/* Quantizes row b of x into q's xn, dx, xc (bias 128) with AVX-512
 * (matmul_i8dot.c), and int8 weights times q on the VNNI dot product, as
 * kern_rows_i4q8. */
void kern_q8n_row_avx512(const float *x, kern_q8 *q, uint32_t b);
void kern_rows_i8q8(const kern_mat *m, const kern_q8 *q, uint32_t batch, float *y,
		    uint32_t r0, uint32_t r1);
/* 1 when kern_rows_i4q8 and kern_rows_i8q8 may run: AVX-512 VNNI and the
 * AVX-512 path in use. */
int kern_has_i4dot(void);

/* bf16 weights times xh, x rounded to bf16 [batch, cols], on the AVX-512 BF16
 * dot-product instruction (matmul_bf16dot.c), any batch, as kern_rows_i4q8. */
void kern_rows_bf16dot(const kern_mat *m, const uint16_t *xh, uint32_t batch, float *y,
		       uint32_t r0, uint32_t r1);
/* 1 when kern_rows_bf16dot may run: the CPU has AVX-512 BF16 and the path in
 * use (kern_isa) is AVX-512. */
int kern_has_bf16dot(void);

/* xp[32g + i] = x[32g + 2i], xp[32g + 16 + i] = x[32g + 2i + 1] (i < 16) for
 * every group g of cols / 32. */
void kern_i4_pair_split(const float *x, uint32_t cols, float *xp);

/* Instruction-set paths, each needing the ones before it. */
enum kern_isa {
	KERN_ISA_GENERIC = 0,
	KERN_ISA_AVX2 = 1,   /* AVX2, FMA, F16C */
	KERN_ISA_AVX512 = 2, /* and AVX-512 F, BW, VL */
};

/* The best path this CPU runs. */
int kern_isa_best(void);
/* The path products use now: the best one, or less after kern_isa_limit. */
int kern_isa(void);
/* Caps the path at `max` (a kern_isa), or lifts the cap with -1; for tests and
 * benchmarks that compare paths. Not thread-safe against running products. */
void kern_isa_limit(int max);

/* The e4m3 -> float table (k2q_e4m3_to_f32 for every byte), built once. */
const float *kern_e4m3_lut(void);

/* Column chunk of the batched (tiled) paths, a multiple of 128 (fp8 blocks) and
 * 32 (int4 groups); rows per tile and batch rows per stored accumulator tile. */
#define KERN_KC 256u
#define KERN_TILE_ROWS 4u
#define KERN_TILE_BATCH 48u
/* Batches up to this go through fused row kernels (weights dequantized in
 * registers, once per row and four rows of x) rather than the tiled path;
 * measured on Zen 5 at 2048 x 7168, fused wins clearly at batch 4 (int4:
 * AVX-512 1.8x, AVX2 1.4x) and loses from 6 on. */
#define KERN_FUSED_BATCH 4u

static inline float kern_bf16(uint16_t v)
{
	union {
		uint32_t u;
		float f;
	} c = {.u = (uint32_t)v << 16};
	return c.f;
}

/* Scale of fp8 block (row r, column block cb) of m. */
static inline float kern_fp8_scale(const kern_mat *m, uint32_t r, uint32_t cb)
{
	uint32_t ncb = (m->cols + 127) / 128;
	return ((const float *)m->s)[(size_t)(r / 128) * ncb + cb];
}

#endif /* K2_KERNELS_IMPL_H */
