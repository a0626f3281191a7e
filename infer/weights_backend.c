/* weights_backend.c — the model's dense weights as the backend uses them
 * (inf_bweights): every matrix imported in its stored format (the products
 * dequantize where the weights lie, on every backend), vectors as float32, and
 * each layer's kv_b prepared by the backend for its attention. On the CPU an
 * import is the host pointer itself, so nothing is copied. */
#include "infer_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int remember(inf_bweights *w, const void *p)
{
	if (w->n_imports == w->cap_imports) {
		size_t cap = w->cap_imports ? 2 * w->cap_imports : 64;
		const void **nb = realloc(w->imports, sizeof(*nb) * cap);
		if (!nb)
			return -ENOMEM;
		w->imports = nb;
		w->cap_imports = cap;
	}
	w->imports[w->n_imports++] = p;
	return 0;
}

static int import(kern_backend *be, inf_bweights *w, const void *host, uint64_t n,
		  const void **out, const char *what, k2_err *err)
{
	int rc = be->ops->import(be, host, n, out);
	if (rc < 0)
		return k2_err_set(err, rc, "%s (%llu bytes) into the %s backend: %s", what,
				  (unsigned long long)n, be->ops->name,
				  rc == -ENOMEM ? "out of memory" : be->ops->error(be));
	if (remember(w, *out) < 0) {
		be->ops->release(be, *out);
		return k2_err_set(err, -ENOMEM, "out of memory");
	}
	w->bytes += n;
	return 0;
}

/* A host matrix into the backend (a matrix without weights stays empty). */
static int import_mat(kern_backend *be, inf_bweights *w, const kern_mat *h, kern_mat *d,
		      const char *what, k2_err *err)
{
	int rc;
	*d = *h;
	if (!h->w)
		return 0;
	const uint64_t wb = kern_mat_weight_bytes(h), all = kern_mat_bytes(h);
	if ((rc = import(be, w, h->w, wb, &d->w, what, err)) < 0)
		return rc;
	d->s = NULL;
	if (h->s && all > wb && (rc = import(be, w, h->s, all - wb, &d->s, what, err)) < 0)
		return rc;
	return 0;
}

static int import_vec(kern_backend *be, inf_bweights *w, const float *h, uint32_t n,
		      const float **d, const char *what, k2_err *err)
{
	const void *p = NULL;
	*d = NULL;
	if (!h)
		return 0;
	int rc = import(be, w, h, sizeof(float) * (uint64_t)n, &p, what, err);
	*d = p;
	return rc;
}

static int import_layer(kern_backend *be, const inf_model *m, uint32_t l, inf_bweights *w,
			k2_err *err)
{
	const k2_model_config *c = &m->cfg;
	const inf_layer *ly = &m->layers[l];
	inf_blayer *bl = &w->layers[l];
	const uint32_t H = c->hidden_size, E = c->n_routed_experts;
	char what[64];
	int rc;
	snprintf(what, sizeof(what), "model.layers.%u", l);
	if ((rc = import_vec(be, w, ly->attn_norm, H, &bl->attn_norm, what, err)) < 0 ||
	    (rc = import_vec(be, w, ly->mlp_norm, H, &bl->mlp_norm, what, err)) < 0 ||
	    (rc = import_vec(be, w, ly->q_a_norm, c->q_lora_rank, &bl->q_a_norm, what, err)) < 0 ||
	    (rc = import_vec(be, w, ly->kv_a_norm, c->kv_lora_rank, &bl->kv_a_norm, what, err)) < 0 ||
	    (rc = import_vec(be, w, ly->router_bias, E, &bl->router_bias, what, err)) < 0 ||
	    (rc = import_mat(be, w, &ly->q_a, &bl->q_a, what, err)) < 0 ||
	    (rc = import_mat(be, w, &ly->q_b, &bl->q_b, what, err)) < 0 ||
	    (rc = import_mat(be, w, &ly->q_proj, &bl->q_proj, what, err)) < 0 ||
	    (rc = import_mat(be, w, &ly->kv_a, &bl->kv_a, what, err)) < 0 ||
	    (rc = import_mat(be, w, &ly->o_proj, &bl->o_proj, what, err)) < 0 ||
	    (rc = import_mat(be, w, &ly->router, &bl->router, what, err)) < 0 ||
	    (rc = import_mat(be, w, &ly->gate, &bl->gate, what, err)) < 0 ||
	    (rc = import_mat(be, w, &ly->up, &bl->up, what, err)) < 0 ||
	    (rc = import_mat(be, w, &ly->down, &bl->down, what, err)) < 0)
		return rc;
	const kern_mla_dims md = {.n_heads = c->num_attention_heads, .kv_lora = c->kv_lora_rank,
				  .nope = c->qk_nope_head_dim, .rope = c->qk_rope_head_dim,
				  .v = c->v_head_dim};
	if ((rc = be->ops->mla_prepare(be, &md, &ly->kv_b, &bl->attn)) < 0)
		return k2_err_set(err, rc, "%s.self_attn.kv_b_proj.weight into the %s backend: %s",
				  what, be->ops->name, be->ops->error(be));
	return 0;
}

int inf_bweights_import(kern_backend *be, const inf_model *m, inf_bweights *w, k2_err *err)
{
	const k2_model_config *c = &m->cfg;
	const uint32_t L = c->num_hidden_layers;
	int rc;
	memset(w, 0, sizeof(*w));
	w->layers = calloc(L ? L : 1, sizeof(inf_blayer));
	if (!w->layers)
		return k2_err_set(err, -ENOMEM, "out of memory");
	w->n_layers = L;
	if ((rc = import_mat(be, w, &m->embed, &w->embed, "model.embed_tokens", err)) < 0 ||
	    (rc = import_mat(be, w, &m->lm_head, &w->lm_head, "lm_head", err)) < 0 ||
	    (rc = import_vec(be, w, m->final_norm, c->hidden_size, &w->final_norm, "model.norm",
			     err)) < 0 ||
	    (rc = import_vec(be, w, m->rope_inv_freq, c->qk_rope_head_dim / 2, &w->inv_freq,
			     "rope inv_freq", err)) < 0)
		goto fail;
	for (uint32_t l = 0; l < L; l++)
		if ((rc = import_layer(be, m, l, w, err)) < 0)
			goto fail;
	return 0;
fail:
	inf_bweights_release(be, w);
	return rc;
}

void inf_bweights_release(kern_backend *be, inf_bweights *w)
{
	for (uint32_t l = 0; w->layers && l < w->n_layers; l++)
		be->ops->mla_free(be, w->layers[l].attn);
	for (size_t i = 0; i < w->n_imports; i++)
		be->ops->release(be, w->imports[i]);
	free(w->imports);
	free(w->layers);
	memset(w, 0, sizeof(*w));
}
