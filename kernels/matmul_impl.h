/* matmul_impl.h — what the matrix product paths (matmul.c, matmul_avx2.c,
 * matmul_avx512.c) share: the drivers that split a product into per-format
 * row kernels and tiles, and the scalar code for the columns the vectors
 * leave. Plain C; the inline parts that do arithmetic are always inlined, so
 * that they compile with their caller's target (FMA contraction included) and
 * each path keeps its own results. Not for use outside kernels/. */
#ifndef K2_MATMUL_IMPL_H
#define K2_MATMUL_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels_impl.h"

/* ---------------------------------------------------------------- fused rows */

/* A fused row kernel: y[b, r] for r0 <= r < r1 and every row b of x [B, cols]
 * (y [B, m->rows]), for the one batch size B it was built for. */
typedef void (*kern_mv_fn)(const kern_mat *m, const float *x, float *y, uint32_t r0,
			   uint32_t r1);

/* Defines NAME, a kern_mv_fn with the attributes ATTR (its target) that runs
 * the inline kernel BODY(m, x, y, r0, r1, ...) with the constant arguments
 * given after BODY (a format, a batch size), folded into its code. */
#define KERN_MV_DEFINE(ATTR, NAME, BODY, ...)                                           \
	ATTR static void NAME(const kern_mat *m, const float *x, float *y, uint32_t r0, \
			      uint32_t r1)                                               \
	{                                                                              \
		BODY(m, x, y, r0, r1, __VA_ARGS__);                                    \
	}

/* Slots of the per-format kernel tables: bf16, fp8, int8, int4, f32. */
#define KERN_FORMAT_SLOTS 5

/* The table slot of a format kern_matmul accepts. */
static inline int kern_format_slot(uint32_t format)
{
	return format == KERN_FORMAT_F32 ? 4 : (int)format - 1;
}

/* Rows [r0, r1) of the product over x [batch, cols]: rows of x four at a time,
 * by fn[n - 1] for a group of n, so that the task's weights stay in cache
 * between groups. */
void kern_rows_fused(const kern_mv_fn fn[4], const kern_mat *m, const float *x, uint32_t batch,
		     float *y, uint32_t r0, uint32_t r1);

/* W[r, k] as the fused kernels multiply it into x: int8 without its row scale
 * (they apply it to the sums), every other format as kern_mat_get. F is
 * m->format, a constant in the callers, so the switch folds away. */
static inline __attribute__((always_inline)) float kern_w_fused(const kern_mat *m,
								 const uint32_t F, uint32_t r,
								 uint32_t k)
{
	const size_t i = (size_t)r * m->cols + k;

	switch (F) {
	case K2_FORMAT_BF16:
		return kern_bf16(((const uint16_t *)m->w)[i]);
	case K2_FORMAT_INT8:
		return (float)((const int8_t *)m->w)[i];
	case KERN_FORMAT_F32:
		return ((const float *)m->w)[i];
	default:
		return kern_mat_get(m, r, k);
	}
}

/* ---------------------------------------------------------------- tiles */

/* Dequantizes W[r, k0 .. k0+n) into out[0 .. n), scales applied: the values of
 * kern_mat_get. k0 is a multiple of KERN_KC. */
typedef void (*kern_dq_fn)(const kern_mat *m, uint32_t r, uint32_t k0, uint32_t n, float *out);

/* One column chunk of a tile: nr dequantized weight rows (wbuf, stride
 * KERN_KC) times nb rows of x (from xb, stride xs), columns [0, n). Adds the
 * products of columns [0, n & ~7) lane-wise into acc[r][b][k % 8] and those of
 * the rest, in column order, into tail[r][b]. */
typedef void (*kern_tile_fn)(const float *wbuf, const float *xb, size_t xs, uint32_t nr,
			     uint32_t nb, uint32_t n, float acc[][KERN_TILE_BATCH][8],
			     float tail[][KERN_TILE_BATCH]);

/* Sum of 8 lanes in a fixed order, ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7)):
 * that of kern_hsum8 (matmul_x86.h). */
static inline float kern_hsum8_lanes(const float a[8])
{
	return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* The tiled product of rows [r0, r1): tiles of KERN_TILE_ROWS weight rows by
 * KERN_TILE_BATCH rows of x, KERN_KC columns at a time dequantized by dq and
 * multiplied by tile; each output is the sum of its 8 lanes (kern_hsum8_lanes)
 * plus its tail. Always inlined, so that dq and tile, constants at each
 * caller, are direct calls the compiler may inline. */
static inline __attribute__((always_inline)) void
kern_rows_tiled(kern_dq_fn dq, kern_tile_fn tile, const kern_mat *m, const float *x,
		uint32_t batch, float *y, uint32_t r0, uint32_t r1)
{
	float wbuf[KERN_TILE_ROWS][KERN_KC] __attribute__((aligned(32)));
	float acc[KERN_TILE_ROWS][KERN_TILE_BATCH][8] __attribute__((aligned(32)));
	float tail[KERN_TILE_ROWS][KERN_TILE_BATCH];
	const uint32_t cols = m->cols;

	for (uint32_t rg = r0; rg < r1; rg += KERN_TILE_ROWS) {
		uint32_t nr = r1 - rg < KERN_TILE_ROWS ? r1 - rg : KERN_TILE_ROWS;
		for (uint32_t bs = 0; bs < batch; bs += KERN_TILE_BATCH) {
			uint32_t nb = batch - bs < KERN_TILE_BATCH ? batch - bs : KERN_TILE_BATCH;
			memset(acc, 0, sizeof(acc));
			memset(tail, 0, sizeof(tail));
			for (uint32_t k0 = 0; k0 < cols; k0 += KERN_KC) {
				uint32_t n = cols - k0 < KERN_KC ? cols - k0 : KERN_KC;
				for (uint32_t r = 0; r < nr; r++)
					dq(m, rg + r, k0, n, wbuf[r]);
				tile(wbuf[0], x + (size_t)bs * cols + k0, cols, nr, nb, n, acc, tail);
			}
			for (uint32_t r = 0; r < nr; r++)
				for (uint32_t b = 0; b < nb; b++)
					y[(size_t)(bs + b) * m->rows + rg + r] =
						kern_hsum8_lanes(acc[r][b]) + tail[r][b];
		}
	}
}

/* Dequantizes W[r, k0 + k .. k0 + n) into out[k .. n) one column at a time,
 * the values of kern_mat_get; k0 is a multiple of KERN_KC, and for int4 k and
 * n are even. The portable dequantizer, and the vector ones' tail (and their
 * fallback for fp8 rows with NaN codes). */
void kern_dq_cols(const kern_mat *m, uint32_t r, uint32_t k0, uint32_t k, uint32_t n, float *out);

/* The columns [n & ~7, n) of a tile chunk (see kern_tile_fn) into tail. */
static inline __attribute__((always_inline)) void
kern_tile_tail(const float *wbuf, const float *xb, size_t xs, uint32_t nr, uint32_t nb,
	       uint32_t n, float tail[][KERN_TILE_BATCH])
{
	for (uint32_t k = n & ~7u; k < n; k++)
		for (uint32_t r = 0; r < nr; r++)
			for (uint32_t b = 0; b < nb; b++)
				tail[r][b] += wbuf[(size_t)r * KERN_KC + k] * xb[b * xs + k];
}

#endif /* K2_MATMUL_IMPL_H */
