/* backend_cpu.c — the CPU backend: the op table of backend.h over the plain C
 * kernels of kernels.h (threads and SIMD in the products). Backend memory is
 * host memory, so imports are the host pointers themselves, copies are memcpy
 * and every op is done when it returns. It has no device slots: the expert
 * directory keeps experts in its RAM tier and ops read them where they lie. */
#include "backend.h"
#include "kernels_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cpu_backend {
	kern_backend base;
	kern_arena *arena;   /* op scratch */
	char err[256];
};

struct kern_attn_w {
	kern_mla_w *w;
};

static struct cpu_backend *cpu(kern_backend *b) { return (struct cpu_backend *)b; }

/* Records "op: why" and returns rc. */
static int cpu_fail(kern_backend *b, int rc, const char *op, const char *why)
{
	snprintf(cpu(b)->err, sizeof(cpu(b)->err), "%s: %s", op, why);
	return rc;
}

static void cpu_destroy(kern_backend *b)
{
	if (!b)
		return;
	kern_arena_destroy(cpu(b)->arena);
	free(b);
}

static const char *cpu_error(const kern_backend *b)
{
	return ((const struct cpu_backend *)b)->err;
}

static int cpu_info(kern_backend *b, kern_backend_info *out)
{
	(void)b;
	memset(out, 0, sizeof(*out));
	snprintf(out->device, sizeof(out->device), "CPU, %d threads", kern_threads());
	return 0;
}

/* ---------------------------------------------------------------- memory */

static int cpu_alloc(kern_backend *b, size_t bytes, void **p)
{
	if (!(*p = k2_alloc_large(bytes)))
		return cpu_fail(b, -ENOMEM, "alloc", "out of memory");
	return 0;
}

static void cpu_free(kern_backend *b, void *p)
{
	(void)b;
	free(p);
}

static int cpu_import(kern_backend *b, const void *host, size_t n, const void **out)
{
	(void)b;
	(void)n;
	*out = host;
	return 0;
}

static void cpu_release(kern_backend *b, const void *p)
{
	(void)b;
	(void)p;
}

static int cpu_copy(kern_backend *b, void *dst, const void *src, size_t n)
{
	(void)b;
	if (n)
		memmove(dst, src, n);
	return 0;
}

static int cpu_memset(kern_backend *b, void *dst, int byte, size_t n)
{
	(void)b;
	memset(dst, byte, n);
	return 0;
}

static int cpu_sync(kern_backend *b)
{
	(void)b;
	return 0;
}

/* ---------------------------------------------------------------- ops */

static int cpu_embed(kern_backend *b, const kern_mat *m, const int32_t *ids, uint32_t n,
		     float *out)
{
	int rc = kern_embed(m, ids, n, out);
	return rc < 0 ? cpu_fail(b, rc, "embed", "a token id outside the vocabulary") : 0;
}

static int cpu_rmsnorm(kern_backend *b, float *out, const float *x, const float *w,
		       uint32_t rows, uint32_t n, float eps)
{
	(void)b;
	kern_rmsnorm_rows(out, x, w, rows, n, eps);
	return 0;
}

/* KERN_MM_EXACT: kern_matmul (float32 activations); else kern_matmul_fast. */
static int cpu_matmul(kern_backend *b, const kern_mat *m, const float *x, uint32_t batch,
		      float *y, unsigned flags)
{
	int (*mm)(const kern_mat *, const float *, uint32_t, float *) =
		flags & KERN_MM_EXACT ? kern_matmul : kern_matmul_fast;
	int rc;
	if (!(flags & KERN_MM_ACCUMULATE))
		rc = mm(m, x, batch, y);
	else {
		struct cpu_backend *c = cpu(b);
		kern_arena_reset(c->arena);
		float *t = kern_arena_alloc(c->arena, sizeof(float) * batch * m->rows);
		if (!t)
			return cpu_fail(b, -ENOMEM, "matmul", "out of memory for the product");
		if ((rc = mm(m, x, batch, t)) == 0)
			for (size_t i = 0; i < (size_t)batch * m->rows; i++)
				y[i] += t[i];
	}
	if (rc == -ENOMEM)
		return cpu_fail(b, rc, "matmul", "out of memory for the rounded activations");
	return rc < 0 ? cpu_fail(b, rc, "matmul", "unknown weight format or int4 cols % 32") : 0;
}

static int cpu_silu_mul(kern_backend *b, float *gate, const float *up, uint32_t n)
{
	(void)b;
	kern_silu_mul(gate, up, n);
	return 0;
}

static int cpu_add(kern_backend *b, float *y, const float *x, size_t n)
{
	(void)b;
	for (size_t i = 0; i < n; i++)
		y[i] += x[i];
	return 0;
}

static int cpu_rope(kern_backend *b, float *x, uint32_t n_tok, uint32_t n_heads,
		    uint32_t tok_stride, uint32_t head_stride, uint32_t rope_off,
		    uint32_t rope_dim, uint32_t pos0, const float *inv_freq, float mscale)
{
	if (rope_dim % 2 || rope_dim > KERN_ROPE_MAX)
		return cpu_fail(b, -EINVAL, "rope", "rope_dim must be even and at most 1024");
	kern_rope_rows(x, n_tok, n_heads, tok_stride, head_stride, rope_off, rope_dim, pos0,
		       inv_freq, mscale);
	return 0;
}

static int cpu_router(kern_backend *b, const kern_router_params *p, const float *logits,
		      const float *bias, uint32_t T, int32_t *idx, float *w)
{
	int rc = kern_router(p, logits, bias, T, idx, w);
	return rc < 0 ? cpu_fail(b, rc, "router", "routing parameters outside their limits") : 0;
}

static int cpu_expert_ffn(kern_backend *b, const kern_mat mats[3], const float *x,
			  uint32_t batch, const int32_t *rows, const float *weights, float *y,
			  unsigned flags)
{
	int rc = kern_expert_ffn(mats, x, batch, rows, weights, y, (flags & KERN_MM_EXACT) != 0,
				 cpu(b)->arena);
	return rc < 0 ? cpu_fail(b, rc, "expert_ffn", rc == -ENOMEM ? "out of memory"
							      : "unknown weight format") : 0;
}

static int cpu_mla_cache_write(kern_backend *b, const kern_mla_dims *d, const float *kv_a,
			       uint32_t T, uint32_t pos0, const float *norm_w, float eps,
			       const float *inv_freq, float mscale, float *ckv, float *kpe)
{
	if (d->rope % 2 || d->rope > KERN_ROPE_MAX)
		return cpu_fail(b, -EINVAL, "mla_cache_write", "rope must be even, at most 1024");
	kern_mla_cache_write(d, kv_a, T, pos0, norm_w, eps, inv_freq, mscale, ckv, kpe);
	return 0;
}

static int cpu_mla_prepare(kern_backend *b, const kern_mla_dims *d, const kern_mat *kv_b_host,
			   kern_attn_w **out)
{
	*out = calloc(1, sizeof(**out));
	if (!*out)
		return cpu_fail(b, -ENOMEM, "mla_prepare", "out of memory");
	int rc = kern_mla_prepare(d, kv_b_host, &(*out)->w);
	if (rc < 0) {
		free(*out);
		*out = NULL;
		return cpu_fail(b, rc, "mla_prepare",
				rc == -ENOMEM ? "out of memory" : "kv_b is not [n_heads·(nope + v), kv_lora]");
	}
	return 0;
}

static void cpu_mla_free(kern_backend *b, kern_attn_w *w)
{
	(void)b;
	if (!w)
		return;
	kern_mla_free(w->w);
	free(w);
}

static int cpu_mla_attn(kern_backend *b, const kern_attn_w *w, const float *q,
			const float *ckv, const float *kpe, uint32_t T, uint32_t pos0, float scale,
			float *out)
{
	int rc = kern_mla_attn(w->w, q, ckv, kpe, T, pos0, scale, out, cpu(b)->arena);
	return rc < 0 ? cpu_fail(b, rc, "mla_attn", "out of memory for attention scratch") : 0;
}

static const kern_backend_ops cpu_ops = {
	.name = "cpu",
	.destroy = cpu_destroy,
	.error = cpu_error,
	.info = cpu_info,
	.alloc = cpu_alloc,
	.free = cpu_free,
	.host_alloc = cpu_alloc,
	.host_free = cpu_free,
	.import = cpu_import,
	.release = cpu_release,
	.upload = cpu_copy,
	.download = cpu_copy,
	.copy = cpu_copy,
	.memset = cpu_memset,
	.sync = cpu_sync,
	.embed = cpu_embed,
	.rmsnorm = cpu_rmsnorm,
	.matmul = cpu_matmul,
	.silu_mul = cpu_silu_mul,
	.add = cpu_add,
	.rope = cpu_rope,
	.router = cpu_router,
	.expert_ffn = cpu_expert_ffn,
	.mla_cache_write = cpu_mla_cache_write,
	.mla_prepare = cpu_mla_prepare,
	.mla_free = cpu_mla_free,
	.mla_attn = cpu_mla_attn,
	/* no device slots */
};

int kern_backend_cpu_open(kern_backend **out, k2_err *err)
{
	struct cpu_backend *c = calloc(1, sizeof(*c));
	*out = NULL;
	if (!c || kern_arena_create(&c->arena) < 0) {
		free(c);
		return k2_err_set(err, -ENOMEM, "cpu backend: out of memory");
	}
	c->base.ops = &cpu_ops;
	c->base.host_memory = 1;
	*out = &c->base;
	return 0;
}
