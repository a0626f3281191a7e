/* matmul_ref.c — the plain, readable side of the products: one element
 * dequantized at a time (kern_mat_get, kern_mat_row), the bytes a product
 * reads, and kern_matmul_ref, the single-threaded scalar reference (double
 * accumulation) that tests hold every fast path against. */
#include "kernels_impl.h"

#include <math.h>
#include <pthread.h>

static float e4m3_lut[256];
static pthread_once_t e4m3_once = PTHREAD_ONCE_INIT;

static void e4m3_build(void)
{
	for (int i = 0; i < 256; i++)
		e4m3_lut[i] = k2q_e4m3_to_f32((uint8_t)i);
}

const float *kern_e4m3_lut(void)
{
	pthread_once(&e4m3_once, e4m3_build);
	return e4m3_lut;
}

uint64_t kern_mat_bytes(const kern_mat *m)
{
	uint64_t n = (uint64_t)m->rows * m->cols;

	switch (m->format) {
	case K2_FORMAT_BF16:
		return 2 * n;
	case K2_FORMAT_FP8_B128:
		return n + 4ull * ((m->rows + 127) / 128) * ((m->cols + 127) / 128);
	case K2_FORMAT_INT8:
		return n + 4ull * m->rows;
	case K2_FORMAT_INT4_G32:
		return n / 2 + 2ull * m->rows * (m->cols / 32);
	case KERN_FORMAT_F32:
		return 4 * n;
	}
	return 0;
}

uint64_t kern_mat_weight_bytes(const kern_mat *m)
{
	const uint64_t n = (uint64_t)m->rows * m->cols;
	switch (m->format) {
	case K2_FORMAT_BF16: return 2 * n;
	case K2_FORMAT_FP8_B128:
	case K2_FORMAT_INT8: return n;
	case K2_FORMAT_INT4_G32: return n / 2;
	case KERN_FORMAT_F32: return 4 * n;
	}
	return 0;
}

float kern_mat_get(const kern_mat *m, uint32_t row, uint32_t col)
{
	size_t i = (size_t)row * m->cols + col;

	switch (m->format) {
	case K2_FORMAT_BF16:
		return k2q_bf16_to_f32(((const uint16_t *)m->w)[i]);
	case K2_FORMAT_FP8_B128:
		return kern_e4m3_lut()[((const uint8_t *)m->w)[i]] *
		       kern_fp8_scale(m, row, col / 128);
	case K2_FORMAT_INT8:
		return (float)((const int8_t *)m->w)[i] * ((const float *)m->s)[row];
	case K2_FORMAT_INT4_G32: {
		uint8_t b = ((const uint8_t *)m->w)[i / 2];
		int q = (int)((col & 1) ? b >> 4 : b & 15) - 8;
		uint16_t s = ((const uint16_t *)m->s)[(size_t)row * (m->cols / 32) + col / 32];
		return (float)q * k2q_bf16_to_f32(s);
	}
	case KERN_FORMAT_F32:
		return ((const float *)m->w)[i];
	}
	return NAN;
}

void kern_mat_row(const kern_mat *m, uint32_t row, float *out)
{
	for (uint32_t c = 0; c < m->cols; c++)
		out[c] = kern_mat_get(m, row, c);
}

void kern_matmul_ref(const kern_mat *m, const float *x, uint32_t batch, float *y)
{
	for (uint32_t b = 0; b < batch; b++) {
		const float *xb = x + (size_t)b * m->cols;
		for (uint32_t r = 0; r < m->rows; r++) {
			double acc = 0;
			for (uint32_t c = 0; c < m->cols; c++)
				acc += (double)kern_mat_get(m, r, c) * xb[c];
			y[(size_t)b * m->rows + r] = (float)acc;
		}
	}
}
