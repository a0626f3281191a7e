/* gpu_weights.c — copies the dense weights of a model (inf_model, in host
 * memory) to the device once: every matrix in its stored format (the CUDA
 * products dequantize in place, like the CPU ones), vectors as float32. The
 * absorbed decode attention needs kv_b_proj in BF16 or F32; other formats get
 * a float32 copy dequantized on the host for it. */
#include "gpu_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Bytes of a matrix's weights alone (its scales follow: kern_mat_bytes is
 * the sum). */
static uint64_t weight_bytes(const kern_mat *m)
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

static int keep(gpu_weights *w, void *p)
{
	if (w->n_bufs == w->cap_bufs) {
		size_t cap = w->cap_bufs ? 2 * w->cap_bufs : 64;
		void **nb = realloc(w->bufs, sizeof(void *) * cap);
		if (!nb)
			return -ENOMEM;
		w->bufs = nb;
		w->cap_bufs = cap;
	}
	w->bufs[w->n_bufs++] = p;
	return 0;
}

/* Copies n bytes of host memory to a new device buffer *out. */
static int upload(kcu_ctx *ctx, gpu_weights *w, const void *src, uint64_t n, void **out,
		  const char *what, k2_err *err)
{
	void *d = NULL;
	int rc = kcu_alloc(ctx, n ? n : 1, &d);
	if (rc < 0)
		return k2_err_set(err, rc, "device: %s (%llu bytes): %s", what,
				  (unsigned long long)n,
				  rc == -ENOMEM ? "out of device memory" : kcu_ctx_error(ctx));
	if ((rc = keep(w, d)) < 0) {
		kcu_free(ctx, d);
		return k2_err_set(err, rc, "out of memory");
	}
	if (n && (rc = kcu_upload(ctx, d, src, n)) < 0)
		return k2_err_set(err, rc, "device: uploading %s: %s", what, kcu_ctx_error(ctx));
	w->bytes += n;
	*out = d;
	return 0;
}

/* A host matrix to the device (a matrix without weights stays empty). */
static int upload_mat(kcu_ctx *ctx, gpu_weights *w, const kern_mat *h, kern_mat *d,
		      const char *what, k2_err *err)
{
	int rc;
	*d = *h;
	if (!h->w)
		return 0;
	const uint64_t wb = weight_bytes(h), all = kern_mat_bytes(h);
	void *p = NULL;
	if ((rc = upload(ctx, w, h->w, wb, &p, what, err)) < 0)
		return rc;
	d->w = p;
	d->s = NULL;
	if (h->s && all > wb) {
		if ((rc = upload(ctx, w, h->s, all - wb, &p, what, err)) < 0)
			return rc;
		d->s = p;
	}
	return 0;
}

static int upload_vec(kcu_ctx *ctx, gpu_weights *w, const float *h, uint32_t n, float **d,
		      const char *what, k2_err *err)
{
	*d = NULL;
	if (!h)
		return 0;
	void *p = NULL;
	int rc = upload(ctx, w, h, sizeof(float) * (uint64_t)n, &p, what, err);
	if (rc == 0)
		*d = p;
	return rc;
}

/* kv_b for the absorbed attention: itself, or dequantized to float32. */
static int upload_kv_b_abs(kcu_ctx *ctx, gpu_weights *w, const inf_layer *ly, gpu_layer *gl,
			   const char *what, k2_err *err)
{
	const kern_mat *h = &ly->kv_b;
	if (h->format == K2_FORMAT_BF16 || h->format == KERN_FORMAT_F32) {
		gl->kv_b_abs = gl->kv_b;
		return 0;
	}
	float *f = malloc(sizeof(float) * (size_t)h->rows * h->cols);
	if (!f)
		return k2_err_set(err, -ENOMEM, "out of memory for %s as float32", what);
	for (uint32_t r = 0; r < h->rows; r++)
		kern_mat_row(h, r, f + (size_t)r * h->cols);
	void *p = NULL;
	int rc = upload(ctx, w, f, sizeof(float) * (uint64_t)h->rows * h->cols, &p, what, err);
	free(f);
	if (rc < 0)
		return rc;
	gl->kv_b_abs = (kern_mat){.format = KERN_FORMAT_F32, .rows = h->rows, .cols = h->cols,
				  .w = p};
	return 0;
}

int gpu_weights_upload(kcu_ctx *ctx, const inf_model *m, gpu_weights *w, k2_err *err)
{
	const k2_model_config *c = &m->cfg;
	const uint32_t H = c->hidden_size, L = c->num_hidden_layers;
	int rc;
	memset(w, 0, sizeof(*w));
	w->layers = calloc(L ? L : 1, sizeof(gpu_layer));
	if (!w->layers)
		return k2_err_set(err, -ENOMEM, "out of memory");
	if ((rc = upload_mat(ctx, w, &m->embed, &w->embed, "model.embed_tokens", err)) < 0 ||
	    (rc = upload_mat(ctx, w, &m->lm_head, &w->lm_head, "lm_head", err)) < 0 ||
	    (rc = upload_vec(ctx, w, m->final_norm, H, &w->final_norm, "model.norm", err)) < 0 ||
	    (rc = upload_vec(ctx, w, m->rope_inv_freq, c->qk_rope_head_dim / 2, &w->inv_freq,
			     "rope inv_freq", err)) < 0)
		goto fail;
	for (uint32_t l = 0; l < L; l++) {
		const inf_layer *ly = &m->layers[l];
		gpu_layer *gl = &w->layers[l];
		char what[96];
		snprintf(what, sizeof(what), "model.layers.%u", l);
		const uint32_t E = c->n_routed_experts, Q = c->q_lora_rank;
		const uint32_t R = c->kv_lora_rank;
		if ((rc = upload_vec(ctx, w, ly->attn_norm, H, &gl->attn_norm, what, err)) < 0 ||
		    (rc = upload_vec(ctx, w, ly->mlp_norm, H, &gl->mlp_norm, what, err)) < 0 ||
		    (rc = upload_vec(ctx, w, ly->q_a_norm, Q, &gl->q_a_norm, what, err)) < 0 ||
		    (rc = upload_vec(ctx, w, ly->kv_a_norm, R, &gl->kv_a_norm, what, err)) < 0 ||
		    (rc = upload_vec(ctx, w, ly->router_bias, E, &gl->router_bias, what, err)) < 0 ||
		    (rc = upload_mat(ctx, w, &ly->q_a, &gl->q_a, what, err)) < 0 ||
		    (rc = upload_mat(ctx, w, &ly->q_b, &gl->q_b, what, err)) < 0 ||
		    (rc = upload_mat(ctx, w, &ly->q_proj, &gl->q_proj, what, err)) < 0 ||
		    (rc = upload_mat(ctx, w, &ly->kv_a, &gl->kv_a, what, err)) < 0 ||
		    (rc = upload_mat(ctx, w, &ly->kv_b, &gl->kv_b, what, err)) < 0 ||
		    (rc = upload_kv_b_abs(ctx, w, ly, gl, what, err)) < 0 ||
		    (rc = upload_mat(ctx, w, &ly->o_proj, &gl->o_proj, what, err)) < 0 ||
		    (rc = upload_mat(ctx, w, &ly->router, &gl->router, what, err)) < 0)
			goto fail;
		if (ly->has_mlp &&
		    ((rc = upload_mat(ctx, w, &ly->gate, &gl->gate, what, err)) < 0 ||
		     (rc = upload_mat(ctx, w, &ly->up, &gl->up, what, err)) < 0 ||
		     (rc = upload_mat(ctx, w, &ly->down, &gl->down, what, err)) < 0))
			goto fail;
	}
	return 0;
fail:
	gpu_weights_free(ctx, w);
	return rc;
}

void gpu_weights_free(kcu_ctx *ctx, gpu_weights *w)
{
	for (size_t i = 0; i < w->n_bufs; i++)
		kcu_free(ctx, w->bufs[i]);
	free(w->bufs);
	free(w->layers);
	memset(w, 0, sizeof(*w));
}
