/* kernels.h — the public interface of kernels/: the compute the forward pass
 * needs, in plain C with threads (the reference and the CPU backend). The CUDA
 * backend lives behind kernels/backend_cuda.h.
 *
 * Every weight matrix is used where it lies, in its stored format: products
 * dequantize on the fly and never expand a matrix to float32 in memory.
 * Activations are float32. Shapes are stated per function; callers guarantee
 * them (the forward pass checks shapes against config.json at load time), so
 * these functions do not validate sizes beyond what is stated. */
#ifndef K2_KERNELS_H
#define K2_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"

/* Weight formats the products take: the expert formats of layout.h plus plain
 * float32 (for small dense tensors converted at load). */
#define KERN_FORMAT_F32 100u

/* A weight matrix W [rows, cols] (rows = outputs) in one format:
 *   K2_FORMAT_BF16      w: uint16 bf16 [rows, cols]; s unused
 *   K2_FORMAT_FP8_B128  w: e4m3 [rows, cols]; s: float [ceil(rows/128), ceil(cols/128)]
 *   K2_FORMAT_INT8      w: int8 [rows, cols]; s: float [rows]
 *   K2_FORMAT_INT4_G32  w: uint8 [rows, cols/2] (FORMAT.md §2.2); s: bf16 [rows, cols/32]
 *   KERN_FORMAT_F32     w: float [rows, cols]; s unused */
typedef struct kern_mat {
	uint32_t format;
	uint32_t rows, cols;
	const void *w;
	const void *s;
} kern_mat;

/* Sets the number of worker threads the kernels use (0 = online cores). Safe to
 * call before any kernel; later calls resize the pool (waiting for a running
 * product to finish); ignored when called from inside kern_parallel_for. */
void kern_set_threads(int n);
int kern_threads(void);

/* Y [batch, rows] = X [batch, cols] · Wᵀ. Threaded over rows; the result does
 * not depend on the number of threads. y must not overlap x. An unknown format,
 * or int4-g32 with cols % 32 != 0, fills y with NaN. */
void kern_matmul(const kern_mat *m, const float *x, uint32_t batch, float *y);

/* The plain single-threaded scalar reference of kern_matmul: dequantize each
 * element, multiply, accumulate in double. Tests compare every fast path to it. */
void kern_matmul_ref(const kern_mat *m, const float *x, uint32_t batch, float *y);

/* Bytes of weights (and scales) a product over m reads. */
uint64_t kern_mat_bytes(const kern_mat *m);

/* One weight element, dequantized (for tests and for embedding lookups). */
float kern_mat_get(const kern_mat *m, uint32_t row, uint32_t col);
/* Row r of m, dequantized into out [cols] (embedding lookup). */
void kern_mat_row(const kern_mat *m, uint32_t row, float *out);

/* out[i] = x[i] / sqrt(mean(x²) + eps) · w[i] for i < n. out may equal x. */
void kern_rmsnorm(float *out, const float *x, const float *w, uint32_t n, float eps);

/* gate[i] = silu(gate[i]) · up[i] for i < n. */
void kern_silu_mul(float *gate, const float *up, uint32_t n);

/* In-place softmax over x[0..n). */
void kern_softmax(float *x, uint32_t n);

/* y[i] += a · x[i]. */
void kern_axpy(float *y, float a, const float *x, uint32_t n);

/* Rotary embedding of one head vector as the reference applies it: x [dim]
 * (dim even) holds interleaved pairs (x[2i], x[2i+1]), each rotated by the
 * angle whose cosine and sine are cos[i], sin[i] (i < dim/2); out [dim] gets
 * them de-interleaved, as the reference's view/transpose leaves them:
 *   out[i]         = x[2i]·cos[i] − x[2i+1]·sin[i]
 *   out[dim/2 + i] = x[2i+1]·cos[i] + x[2i]·sin[i]
 * out must not overlap x. */
void kern_rope(float *out, const float *x, uint32_t dim, const float *cos,
	       const float *sin);

/* Runs fn(ctx, i) once for every i < n on the kernels' threads (the caller's
 * included) and returns when all calls have returned. Calls run concurrently
 * and in no particular order; a call made from inside fn, or while another
 * thread runs the pool, runs its calls inline on the calling thread. */
void kern_parallel_for(uint32_t n, void (*fn)(void *ctx, uint32_t i), void *ctx);

#endif /* K2_KERNELS_H */
