/* infer_impl.h — internals shared by the files of infer/: the model's weights
 * per layer, the engine's state, and the per-layer steps of the forward pass
 * (attention.c, moe.c) that forward.c sequences. A CUDA backend would
 * implement the same steps on the same shapes. Not for use outside infer/. */
#ifndef K2_INFER_IMPL_H
#define K2_INFER_IMPL_H

#include <pthread.h>

#include "infer.h"

/* Weights of one decoder layer. Matrices stay in their stored format
 * (kern_mat), vectors are float32. Shapes use H hidden, nh heads, qk =
 * qk_nope + qk_rope, R kv_lora_rank, Q q_lora_rank, I intermediate. */
typedef struct inf_layer {
	int moe;
	float *attn_norm;    /* [H] input_layernorm */
	float *mlp_norm;     /* [H] post_attention_layernorm */
	kern_mat q_a;        /* [Q, H] (q LoRA) */
	float *q_a_norm;     /* [Q] */
	kern_mat q_b;        /* [nh·qk, Q] */
	kern_mat q_proj;     /* [nh·qk, H] (no q LoRA) */
	kern_mat kv_a;       /* [R + rope, H] */
	float *kv_a_norm;    /* [R] */
	kern_mat kv_b;       /* [nh·(nope + v), R] */
	/* kv_b absorbed for decode, per head h: kn_t[h] = W_knᵀ [R, nope] (a
	 * transposed copy: bf16 stays bf16, other formats dequantized to f32) and
	 * wv[h] = W_v [v, R] (a view into kv_b where its format allows, else f32) */
	kern_mat *kn_t, *wv;
	kern_mat o_proj;     /* [H, nh·v] */
	/* dense MLP (moe = 0) or shared experts (moe = 1, has_shared) */
	int has_mlp;
	uint32_t mlp_inter;
	kern_mat gate, up, down; /* [I, H], [I, H], [H, I] */
	kern_mat router;     /* [E, H] (moe) */
	float *router_bias;  /* [E] e_score_correction_bias, or NULL */
} inf_layer;

struct inf_model {
	char *dir;
	k2_model_config cfg;
	kern_mat embed;      /* [V, H] */
	kern_mat lm_head;    /* [V, H] */
	float *final_norm;   /* [H] */
	inf_layer *layers;   /* [num_hidden_layers] */
	void **bufs;         /* every allocation the weights live in */
	size_t n_bufs, cap_bufs;
	uint64_t dense_bytes, bytes_per_token;
	float *rope_inv_freq; /* [qk_rope/2] */
	float rope_mscale, attn_scale;
	uint32_t n_moe_layers;
};

/* Scratch of an engine, sized for max_batch tokens. */
typedef struct inf_scratch {
	float *x, *xn, *y, *y2;     /* [B, H] residual, normed, layer output, shared experts */
	float *qa;                  /* [B, max(Q, R + rope)] */
	float *q;                   /* [B, nh·qk] */
	float *ckv;                 /* [B, R + rope] */
	float *attn;                /* [B, nh·v] */
	float *kvblk;               /* [KVBLK, nh·(nope + v)] */
	float *qT;                  /* [nh, B, qk] queries per head */
	float *kh, *vth;            /* [KVBLK, qk], [v, KVBLK] one head's keys / values */
	float *sblk, *oblk, *corr;  /* [B, KVBLK], [B, v], [B] */
	float *acc_m, *acc_l;       /* [B, nh] online softmax state */
	float *qc;                  /* [nh, R] absorbed queries (decode) */
	float *oc;                  /* [nh, R] */
	float *rowbuf;              /* [max(R, H)] */
	float *scores, *scores2;    /* [nh, max_ctx] */
	float *qpe;                 /* [nh, rope] */
	float *mlp_g, *mlp_u;       /* [B, max I] */
	float *moe_x, *moe_y;       /* [B, H] gathered rows */
	float *moe_out;             /* [B, top_k, H] per-(token, slot) expert outputs */
	float *router_logits;       /* [L][B, E] */
	float *route_w;             /* [L][B, k] */
	float *route_scratch;       /* [2E] */
	float *pf_x, *pf_logits;    /* [B, H], [B, E] prefetch predictor */
	uint32_t *tok_list;         /* [B·k] */
	uint32_t *slot_list;        /* [max(B·k, E)] */
} inf_scratch;

#define INF_KVBLK 64u

/* The CUDA backend's state (gpu_impl.h); NULL on the CPU backend. */
typedef struct inf_gpu inf_gpu;

struct inf_engine {
	inf_model *m;
	inf_cache *cache;
	inf_engine_opts opts;
	uint32_t max_batch, max_ctx, pos;
	float *kv_c;     /* [L][max_ctx][R] c after kv_a_layernorm */
	float *kv_pe;    /* [L][max_ctx][rope] rotated k_pe */
	inf_scratch s;
	int32_t *routes; /* [B][L][k] of the last forward */
	uint32_t routes_n;
	uint64_t expert_bytes_used;
	/* prefetch */
	int32_t *pf_pred;    /* [L][E] predicted flags of the current step */
	int32_t *pf_list;    /* [E] */
	uint8_t *pf_has;     /* [L] a prediction was made for layer l this step */
	inf_prefetch_stats pf;
	inf_gpu *gpu;        /* --backend cuda: the forward pass runs there */
};

/* Layer steps (each takes the normed input xn [n, H] of n tokens at positions
 * e->pos … e->pos+n-1 and writes out [n, H]). Return 0 or -errno. */
int inf_attn_forward(inf_engine *e, uint32_t layer, const float *xn, uint32_t n,
		     float *out);
int inf_mlp_forward(inf_engine *e, const inf_layer *ly, const float *xn, uint32_t n,
		    float *out);
int inf_moe_forward(inf_engine *e, uint32_t layer, const float *xn, uint32_t n,
		    float *out, k2_err *err);
/* After layer `layer` produced hidden states x [n, H]: predict the next MoE
 * layer's experts and send the prefetch. */
void inf_prefetch_after_layer(inf_engine *e, uint32_t layer, const float *x, uint32_t n);
/* Accounts the prediction of MoE layer `layer` against the routing just used. */
void inf_prefetch_account(inf_engine *e, uint32_t layer, const int32_t *idx, uint32_t n);

/* CUDA backend (gpu_forward.c): creates the device state of e (weights,
 * KV cache, expert cache) or fails with -ENOTSUP (no CUDA in this build),
 * -ENODEV (no device) or -ENOMEM / -EIO, the reason in err. */
int inf_gpu_create(inf_engine *e, k2_err *err);
void inf_gpu_destroy(inf_gpu *g);
/* One chunk of n ≤ max_batch tokens at e->pos on the device (as forward.c's
 * forward_chunk); logits [n or 1, V] are downloaded when non-NULL. */
int inf_gpu_forward_chunk(inf_engine *e, const int32_t *ids, uint32_t n, float *logits,
			  int all_logits, k2_err *err);
void inf_gpu_stats_get(inf_gpu *g, inf_cache_stats *cs, inf_gpu_stats *gs);

/* RAM expert-cache capacity in experts for the options (forward.c): the
 * count asked, or bytes / image size, or every expert if they fit in half
 * the RAM, else a quarter of it. 0 on error (err set). */
uint32_t inf_ram_cache_slots(const inf_model *m, uint32_t count, uint64_t bytes,
			     k2_err *err);
/* prefetch.c, shared by both backends: the next MoE layer after `layer`
 * (UINT32_MAX when none); after the predicted flags of `layer` (e->pf_pred)
 * are set, lists them in e->pf_list, counts the prediction and returns how
 * many; a user.k2.prefetch hint "3,17,…" written into buf (returns its
 * length; 12 bytes an expert suffice) and sent on experts/LLL of the model
 * directory (errors ignored: a plain directory may refuse it). */
uint32_t inf_next_moe_layer(const inf_model *m, uint32_t layer);
uint32_t inf_prefetch_collect(inf_engine *e, uint32_t layer);
size_t inf_prefetch_hint_text(char *buf, size_t cap, const int32_t *experts, uint32_t n);
void inf_prefetch_hint_send(const char *dir, uint32_t layer, const char *hint);

/* Whole-cache scratch helpers. */
void *inf_alloc(size_t bytes);  /* 64-byte aligned, zeroed; NULL on failure */

#endif /* K2_INFER_IMPL_H */
