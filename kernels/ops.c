/* ops.c — the element-wise and reduction kernels of the forward pass:
 * RMSNorm, SiLU-gated product, softmax, axpy and the rotary embedding. They
 * touch activations only (a few thousand floats), so they are plain C, single
 * threaded, with sums in double for a result close to the exact one. */
#include "kernels_impl.h"

#include <math.h>

void kern_rmsnorm(float *out, const float *x, const float *w, uint32_t n, float eps)
{
	double ss = 0;

	if (n == 0)
		return;
	for (uint32_t i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	float scale = (float)(1.0 / sqrt(ss / n + eps));
	for (uint32_t i = 0; i < n; i++)
		out[i] = (x[i] * scale) * w[i];
}

void kern_silu_mul(float *gate, const float *up, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		float g = gate[i];
		gate[i] = g / (1.0f + expf(-g)) * up[i];
	}
}

void kern_softmax(float *x, uint32_t n)
{
	double sum = 0;

	if (n == 0)
		return;
	float mx = x[0];
	for (uint32_t i = 1; i < n; i++)
		if (x[i] > mx)
			mx = x[i];
	for (uint32_t i = 0; i < n; i++) {
		x[i] = expf(x[i] - mx);
		sum += x[i];
	}
	float inv = (float)(1.0 / sum);
	for (uint32_t i = 0; i < n; i++)
		x[i] *= inv;
}

void kern_axpy(float *y, float a, const float *x, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		y[i] += a * x[i];
}

void kern_rope(float *out, const float *x, uint32_t dim, const float *cos, const float *sin)
{
	uint32_t h = dim / 2;

	for (uint32_t i = 0; i < h; i++) {
		float a = x[2 * i], b = x[2 * i + 1];
		out[i] = a * cos[i] - b * sin[i];
		out[h + i] = b * cos[i] + a * sin[i];
	}
}
