/* ops.c — the element-wise and reduction kernels of the forward pass
 * (RMSNorm, SiLU-gated product, softmax, axpy, embedding lookup) and the
 * fused expert FFN over the products. The element-wise ones touch activations
 * only (a few thousand floats), so they are plain C, single threaded, with
 * sums in double for a result close to the exact one. */
#include "kernels_impl.h"

#include <errno.h>
#include <math.h>
#include <string.h>

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

struct rmsnorm_job {
	float *out;
	const float *x, *w;
	uint32_t n;
	float eps;
};

static void rmsnorm_task(void *arg, uint32_t r)
{
	const struct rmsnorm_job *j = arg;
	kern_rmsnorm(j->out + (size_t)r * j->n, j->x + (size_t)r * j->n, j->w, j->n, j->eps);
}

void kern_rmsnorm_rows(float *out, const float *x, const float *w, uint32_t rows, uint32_t n,
		       float eps)
{
	struct rmsnorm_job j = {.out = out, .x = x, .w = w, .n = n, .eps = eps};
	if (rows == 1)
		rmsnorm_task(&j, 0);
	else
		kern_parallel_for(rows, rmsnorm_task, &j); /* rows are independent */
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

int kern_embed(const kern_mat *m, const int32_t *ids, uint32_t n, float *out)
{
	for (uint32_t t = 0; t < n; t++)
		if (ids[t] < 0 || (uint32_t)ids[t] >= m->rows)
			return -EINVAL;
	for (uint32_t t = 0; t < n; t++)
		kern_mat_row(m, (uint32_t)ids[t], out + (size_t)t * m->cols);
	return 0;
}

int kern_expert_ffn(const kern_mat mats[3], const float *x, uint32_t batch,
		    const int32_t *rows, const float *weights, float *y, int exact,
		    kern_arena *a)
{
	int (*mm)(const kern_mat *, const float *, uint32_t, float *) =
		exact ? kern_matmul : kern_matmul_fast;
	const uint32_t H = mats[0].cols, I = mats[0].rows;
	int rc;
	if (batch == 0)
		return 0;
	kern_arena_reset(a);
	float *xs = rows ? kern_arena_alloc(a, sizeof(float) * batch * H) : NULL;
	float *g = kern_arena_alloc(a, sizeof(float) * batch * I);
	float *u = kern_arena_alloc(a, sizeof(float) * batch * I);
	float *ys = kern_arena_alloc(a, sizeof(float) * batch * H);
	if ((rows && !xs) || !g || !u || !ys)
		return -ENOMEM;
	if (rows)
		for (uint32_t b = 0; b < batch; b++)
			memcpy(xs + (size_t)b * H, x + (size_t)rows[b] * H, sizeof(float) * H);
	const float *xin = rows ? xs : x;
	if ((rc = mm(&mats[0], xin, batch, g)) < 0 || (rc = mm(&mats[1], xin, batch, u)) < 0)
		return rc;
	kern_silu_mul(g, u, batch * I);
	if ((rc = mm(&mats[2], g, batch, ys)) < 0)
		return rc;
	for (uint32_t b = 0; b < batch; b++)
		kern_axpy(y + (size_t)(rows ? (uint32_t)rows[b] : b) * H, weights ? weights[b] : 1.0f,
			  ys + (size_t)b * H, H);
	return 0;
}
