/* matmul.c — kern_matmul: splits a product into row tasks for the pool and
 * picks the instruction-set path (AVX-512 at batch 1 where the CPU has
 * F/BW/VL, AVX2+FMA+F16C where it has those, else the portable C path below,
 * which any C compiler builds), detected once at run time; and the drivers
 * and scalar code the paths share (matmul_impl.h).
 *
 * Determinism: tasks are fixed row ranges chosen from the shape alone, and
 * every path computes each output element in an order that depends only on
 * (matrix, batch size, element), so the result is bit-identical whatever the
 * number of threads and whichever thread runs which task. */
#include "kernels_impl.h"
#include "matmul_impl.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

/* ---------------------------------------------------------------- dispatch */

static int cpu_isa, cpu_bf16dot, cpu_vnni;
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;
static int isa_cap = -1;

/* F16C from CPUID leaf 1 (ECX bit 29): not every compiler's
 * __builtin_cpu_supports knows it. Its YMM state is AVX's, which the AVX2
 * check below already requires the OS to save. */
static int cpu_has_f16c(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	unsigned a, b, c, d;
	return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
#else
	return 0;
#endif
}

static void cpu_detect(void)
{
	cpu_isa = KERN_ISA_GENERIC;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c()) {
		cpu_isa = KERN_ISA_AVX2;
		if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
		    __builtin_cpu_supports("avx512vl")) {
			cpu_isa = KERN_ISA_AVX512;
			cpu_bf16dot = __builtin_cpu_supports("avx512bf16");
			cpu_vnni = __builtin_cpu_supports("avx512vnni");
		}
	}
#endif
}

int kern_isa_best(void)
{
	pthread_once(&cpu_once, cpu_detect);
	return cpu_isa;
}

int kern_isa(void)
{
	int best = kern_isa_best();
	return isa_cap >= 0 && isa_cap < best ? isa_cap : best;
}

void kern_isa_limit(int max)
{
	isa_cap = max;
}

int kern_has_bf16dot(void)
{
	pthread_once(&cpu_once, cpu_detect);
	return cpu_bf16dot && kern_isa() == KERN_ISA_AVX512;
}

int kern_has_i4dot(void)
{
	pthread_once(&cpu_once, cpu_detect);
	return cpu_vnni && kern_isa() == KERN_ISA_AVX512;
}

/* ---------------------------------------------------------------- tasks */

/* Bytes of weights one task should stream at batch 1; large enough that a
 * task's cost dwarfs taking it, small enough to balance 2…64 threads. */
#define TASK_BYTES (64u << 10)

/* Columns of x kern_matmul rearranges on its own stack; more go to the heap. */
#define XP_STACK 8192u

struct mm_job {
	kern_rows_fn fn;
	const kern_mat *m;
	const float *x;
	const float *xp; /* when set, x rearranged for kern_rows_avx512_i4, which runs */
	const uint16_t *xh; /* when set, x rounded to bf16 for kern_rows_bf16dot, which runs */
	const kern_q8 *q8;  /* when set, x quantized for kern_rows_i4q8, which runs */
	uint32_t batch;
	float *y;
	uint32_t rows_per_task;
};

static void mm_rows(const struct mm_job *j, uint32_t r0, uint32_t r1)
{
	if (j->q8 && j->m->format == K2_FORMAT_INT8)
		kern_rows_i8q8(j->m, j->q8, j->batch, j->y, r0, r1);
	else if (j->q8)
		kern_rows_i4q8(j->m, j->q8, j->batch, j->y, r0, r1);
	else if (j->xh)
		kern_rows_bf16dot(j->m, j->xh, j->batch, j->y, r0, r1);
	else if (j->xp)
		kern_rows_avx512_i4(j->m, j->xp, j->batch, j->y, r0, r1);
	else
		j->fn(j->m, j->x, j->batch, j->y, r0, r1);
}

static void mm_task(void *ctx, uint32_t i)
{
	const struct mm_job *j = ctx;
	uint32_t r0 = i * j->rows_per_task;
	uint32_t r1 = r0 + j->rows_per_task;

	if (r1 > j->m->rows || r1 < r0)
		r1 = j->m->rows;
	mm_rows(j, r0, r1);
}

void kern_i4_pair_split(const float *x, uint32_t cols, float *xp)
{
	for (uint32_t g = 0; g + 32 <= cols; g += 32)
		for (uint32_t i = 0; i < 16; i++) {
			xp[g + i] = x[g + 2 * i];
			xp[g + 16 + i] = x[g + 2 * i + 1];
		}
}

/* The product on the pool; xh (x rounded to bf16, bf16 weights) selects
 * kern_rows_bf16dot, q8 (x quantized, int4 weights) kern_rows_i4q8. Formats
 * are checked by the callers. */
static void mm_run(const kern_mat *m, const float *x, const uint16_t *xh, const kern_q8 *q8,
		   uint32_t batch, float *y)
{
	struct mm_job j = {
		.m = m, .x = x, .xh = xh, .q8 = q8, .batch = batch, .y = y,
	};
	switch (kern_isa()) {
	case KERN_ISA_AVX512:
		j.fn = kern_rows_avx512;
		break;
	case KERN_ISA_AVX2:
		j.fn = kern_rows_avx2;
		break;
	default:
		j.fn = kern_rows_generic;
		break;
	}
	/* Work per row grows with the batch; keep tasks near TASK_BYTES of
	 * streamed weights at batch 1 and proportionally fewer rows above. */
	uint64_t row_bytes = kern_mat_bytes(m) / m->rows + 1;
	uint64_t per_row = row_bytes * (batch < 16 ? batch : 16);
	uint64_t rpt = TASK_BYTES / per_row;
	rpt = (rpt + KERN_TILE_ROWS - 1) / KERN_TILE_ROWS * KERN_TILE_ROWS;
	if (rpt < KERN_TILE_ROWS)
		rpt = KERN_TILE_ROWS;
	if (rpt > m->rows)
		rpt = m->rows;
	j.rows_per_task = (uint32_t)rpt;

	float xp_stack[XP_STACK], *xp_heap = NULL;
	if (!xh && !q8 && j.fn == kern_rows_avx512 && m->format == K2_FORMAT_INT4_G32) {
		size_t n = (size_t)batch * m->cols;
		float *xp = n <= XP_STACK ? xp_stack : (xp_heap = malloc(n * sizeof(float)));
		if (xp) {
			for (uint32_t b = 0; b < batch; b++)
				kern_i4_pair_split(x + (size_t)b * m->cols, m->cols,
						   xp + (size_t)b * m->cols);
			j.xp = xp;
		} /* else no memory: kern_rows_avx512 takes the AVX2 path */
	}
	uint32_t n_tasks = (uint32_t)((m->rows + rpt - 1) / rpt);
	if (n_tasks == 1)
		mm_rows(&j, 0, m->rows);
	else
		kern_pool_run(mm_task, &j, n_tasks);
	free(xp_heap);
}

/* 0 when kern_matmul takes m, else -EINVAL. */
static int mm_format_ok(const kern_mat *m)
{
	if ((m->format != K2_FORMAT_BF16 && m->format != K2_FORMAT_FP8_B128 &&
	     m->format != K2_FORMAT_INT8 && m->format != K2_FORMAT_INT4_G32 &&
	     m->format != KERN_FORMAT_F32) ||
	    (m->format == K2_FORMAT_INT4_G32 && m->cols % 32 != 0))
		return -EINVAL;
	return 0;
}

int kern_matmul(const kern_mat *m, const float *x, uint32_t batch, float *y)
{
	if (mm_format_ok(m) < 0)
		return -EINVAL;
	if (batch == 0 || m->rows == 0)
		return 0;
	if (m->cols == 0) {
		memset(y, 0, (size_t)batch * m->rows * sizeof(*y));
		return 0;
	}
	mm_run(m, x, NULL, NULL, batch, y);
	return 0;
}

/* Elements of x kern_matmul_fast rounds on its own stack; more go to the heap. */
#define XH_STACK 16384u

/* Quantizes block g (32 values) of x into q's row b; xr (when non-NULL) gets
 * the values the quantized block stands for, xq · dx. */
static void q8_block(const float *x, kern_q8 *q, uint32_t b, uint32_t g, float *xr)
{
	float amax = 0;
	for (int i = 0; i < 32; i++)
		amax = fmaxf(amax, fabsf(x[i]));
	const float dx = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
	int8_t *xe = q->xe + ((size_t)b * q->ng16 + g) * 16, *xo = q->xo + ((size_t)b * q->ng16 + g) * 16;
	int sum = 0;
	for (int i = 0; i < 32; i++) {
		float v = nearbyintf(x[i] * inv);
		int8_t qv = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
		sum += qv;
		if (i & 1)
			xo[i / 2] = qv;
		else
			xe[i / 2] = qv;
		if (xr)
			xr[i] = (float)qv * dx;
	}
	q->dx[(size_t)b * q->ng16 + g] = dx;
	q->xc[(size_t)b * q->ng16 + g] = -8.0f * dx * (float)sum;
}

/* int4-g32 and int8 fast: x quantized per block (kern_q8; in even/odd halves
 * for int4, in natural order for int8), then the VNNI dot product, or
 * kern_matmul on the values the quantized x stands for. */
static int matmul_fast_q8(const kern_mat *m, const float *x, uint32_t batch, float *y)
{
	const int i8 = m->format == K2_FORMAT_INT8;
	const uint32_t ng = m->cols / 32, ng16 = (ng + 15) / 16 * 16;
	const int dot = kern_has_i4dot();
	const size_t bytes = (size_t)batch * ng16 * (32 + 2 * sizeof(float)) +
			     (dot ? 0 : (size_t)batch * m->cols * sizeof(float));
	uint8_t *buf = calloc(1, bytes);
	if (!buf)
		return -ENOMEM;
	kern_q8 q = {.ng = ng, .ng16 = ng16};
	q.dx = (float *)buf;
	q.xc = q.dx + (size_t)batch * ng16;
	q.xe = (int8_t *)(q.xc + (size_t)batch * ng16);
	q.xo = q.xe + (size_t)batch * ng16 * 16;
	q.xn = q.xe; /* int8 uses the room of both halves, [batch][ng16 · 32] */
	float *xr = dot ? NULL : (float *)(q.xo + (size_t)batch * ng16 * 16);
	for (uint32_t b = 0; b < batch; b++)
		if (dot && i8)
			kern_q8n_row_avx512(x + (size_t)b * m->cols, &q, b);
		else if (dot)
			kern_q8_row_avx512(x + (size_t)b * m->cols, &q, b);
		else
			for (uint32_t g = 0; g < ng; g++)
				q8_block(x + (size_t)b * m->cols + (size_t)g * 32, &q, b, g,
					 xr + (size_t)b * m->cols + (size_t)g * 32);
	mm_run(m, xr, NULL, dot ? &q : NULL, batch, y);
	free(buf);
	return 0;
}

int kern_matmul_fast(const kern_mat *m, const float *x, uint32_t batch, float *y)
{
	if (mm_format_ok(m) < 0)
		return -EINVAL;
	if (batch == 0 || m->rows == 0 || m->cols == 0)
		return kern_matmul(m, x, batch, y);
	if (m->format == K2_FORMAT_INT4_G32 || (m->format == K2_FORMAT_INT8 && m->cols % 32 == 0))
		return matmul_fast_q8(m, x, batch, y);
	if (m->format != K2_FORMAT_BF16)
		return kern_matmul(m, x, batch, y);
	const size_t n = (size_t)batch * m->cols;
	const int dot = kern_has_bf16dot();
	/* x rounded to bf16 (to nearest, ties to even): as bf16 bits for the dot
	 * instruction, else as floats for kern_matmul */
	uint16_t xh_stack[XH_STACK];
	void *heap = NULL;
	void *buf = n * (dot ? sizeof(uint16_t) : sizeof(float)) <= sizeof(xh_stack)
			    ? (void *)xh_stack
			    : (heap = malloc(n * (dot ? sizeof(uint16_t) : sizeof(float))));
	if (!buf)
		return -ENOMEM;
	if (dot) {
		uint16_t *xh = buf;
		for (size_t i = 0; i < n; i++)
			xh[i] = k2q_f32_to_bf16(x[i]);
		mm_run(m, NULL, xh, NULL, batch, y);
	} else {
		float *xr = buf;
		for (size_t i = 0; i < n; i++)
			xr[i] = kern_bf16(k2q_f32_to_bf16(x[i]));
		mm_run(m, xr, NULL, NULL, batch, y);
	}
	free(heap);
	return 0;
}

/* ---------------------------------------------------------------- shared by the paths */

void kern_rows_fused(const kern_mv_fn fn[4], const kern_mat *m, const float *x, uint32_t batch,
		     float *y, uint32_t r0, uint32_t r1)
{
	for (uint32_t b0 = 0; b0 < batch; b0 += 4) {
		uint32_t nb = batch - b0 < 4 ? batch - b0 : 4;
		fn[nb - 1](m, x + (size_t)b0 * m->cols, y + (size_t)b0 * m->rows, r0, r1);
	}
}

void kern_dq_cols(const kern_mat *m, uint32_t r, uint32_t k0, uint32_t k, uint32_t n, float *out)
{
	size_t base = (size_t)r * m->cols + k0;

	switch (m->format) {
	case K2_FORMAT_BF16: {
		const uint16_t *w = (const uint16_t *)m->w + base;
		for (; k < n; k++)
			out[k] = kern_bf16(w[k]);
		break;
	}
	case K2_FORMAT_FP8_B128: {
		const uint8_t *w = (const uint8_t *)m->w + base;
		const float *lut = kern_e4m3_lut();
		for (; k < n; k++)
			out[k] = lut[w[k]] * kern_fp8_scale(m, r, (k0 + k) / 128);
		break;
	}
	case K2_FORMAT_INT8: {
		const int8_t *w = (const int8_t *)m->w + base;
		float s = ((const float *)m->s)[r];
		for (; k < n; k++)
			out[k] = (float)w[k] * s;
		break;
	}
	case K2_FORMAT_INT4_G32: {
		const uint8_t *w = (const uint8_t *)m->w + base / 2;
		const uint16_t *s = (const uint16_t *)m->s + (size_t)r * (m->cols / 32) + k0 / 32;
		for (; k < n; k += 2) {
			float sg = kern_bf16(s[k / 32]);
			out[k] = (float)((int)(w[k / 2] & 15) - 8) * sg;
			out[k + 1] = (float)((int)(w[k / 2] >> 4) - 8) * sg;
		}
		break;
	}
	case KERN_FORMAT_F32:
		memcpy(out + k, (const float *)m->w + base + k, (n - k) * sizeof(*out));
		break;
	}
}

/* ---------------------------------------------------------------- portable path */

/* A kern_dq_fn. */
static void dq_generic(const kern_mat *m, uint32_t r, uint32_t k0, uint32_t n, float *out)
{
	kern_dq_cols(m, r, k0, 0, n, out);
}

/* A kern_tile_fn: per element (r, b), eight lane sums over the columns in steps
 * of 8, then the rest. The sums live in a local array with a size_t index,
 * which lets the compiler vectorize the lanes (no aliasing, no wrap-around). */
static void tile_generic(const float *wbuf, const float *xb, size_t xs, uint32_t nr,
			 uint32_t nb, uint32_t n, float acc[][KERN_TILE_BATCH][8],
			 float tail[][KERN_TILE_BATCH])
{
	for (uint32_t r = 0; r < nr; r++)
		for (uint32_t b = 0; b < nb; b++) {
			const float *w = wbuf + (size_t)r * KERN_KC, *xr = xb + b * xs;
			float a[8];
			memcpy(a, acc[r][b], sizeof(a));
			for (size_t k = 0; k + 8 <= n; k += 8)
				for (int l = 0; l < 8; l++)
					a[l] += w[k + l] * xr[k + l];
			memcpy(acc[r][b], a, sizeof(a));
		}
	kern_tile_tail(wbuf, xb, xs, nr, nb, n, tail);
}

void kern_rows_generic(const kern_mat *m, const float *x, uint32_t batch,
		       float *y, uint32_t r0, uint32_t r1)
{
	kern_rows_tiled(dq_generic, tile_generic, m, x, batch, y, r0, r1);
}
