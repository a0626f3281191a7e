/* infer_impl.h — internals shared by the files of infer/: the model's weights
 * in host memory (model_weights.c) and on the backend (weights_backend.c), the
 * engine's state, and the steps of the forward pass that forward.c sequences
 * (attention.c, moe.c, prefetch.c, offload.c). Every step runs on the op
 * table of kernels/backend.h: no file here knows which device runs it. Not
 * for use outside infer/. */
#ifndef K2_INFER_IMPL_H
#define K2_INFER_IMPL_H

#include <pthread.h>

#include "infer.h"

/* RMSNorm epsilon of q_a_layernorm and kv_a_layernorm: transformers builds
 * them with DeepseekV3RMSNorm's default, not config.json's rms_norm_eps. */
#define INF_LORA_NORM_EPS 1e-6f

/* Weights of one decoder layer in host memory. Matrices stay in their stored
 * format (kern_mat), vectors are float32. Shapes use H hidden, nh heads, qk =
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
	kern_mat o_proj;     /* [H, nh·v] */
	/* dense MLP (moe = 0) or shared experts (moe = 1, has_mlp) */
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
	uint64_t expert_image_bytes; /* the largest expert image (0: none) */
	struct deferred_read *deferred; /* matrices to read once all are checked */
	size_t n_deferred, cap_deferred;
};

/* ---------------------------------------------------------------- weights on the backend */

/* One decoder layer as the backend uses it: the same matrices in backend
 * memory (formats unchanged), vectors float32, the attention's kv_b prepared
 * by the backend. */
typedef struct inf_blayer {
	const float *attn_norm, *mlp_norm, *q_a_norm, *kv_a_norm, *router_bias;
	kern_mat q_a, q_b, q_proj, kv_a, o_proj, gate, up, down, router;
	kern_attn_w *attn;
} inf_blayer;

typedef struct inf_bweights {
	kern_mat embed, lm_head;
	const float *final_norm, *inv_freq;
	inf_blayer *layers;       /* [n_layers] */
	uint32_t n_layers;
	const void **imports;     /* every import, released at the end */
	size_t n_imports, cap_imports;
	uint64_t bytes;           /* bytes imported */
} inf_bweights;

/* Imports every dense weight of m into backend be (zero-copy on the CPU).
 * Returns 0 or -errno naming the tensor; on failure what was imported is
 * released. */
int inf_bweights_import(kern_backend *be, const inf_model *m, inf_bweights *w, k2_err *err);
void inf_bweights_release(kern_backend *be, inf_bweights *w);

/* ---------------------------------------------------------------- --cpu-experts */

/* The cost model of --cpu-experts: three measured rates, kept as moving
 * averages of what the run observes.
 *   upload_s:  seconds the copy pipeline spends on one expert: a reader's
 *              read from the mount into staging (the copies to the device
 *              overlap the next chunk's read);
 *   read_s:    seconds to read an expert into the RAM tier (a RAM miss);
 *   cpu_row_s: seconds the CPU takes to apply one expert to one token (the
 *              three products read the whole image: bandwidth bound, so rows
 *              are charged linearly, an upper bound for larger batches).
 * A layer's missed experts are scheduled greedily, fewest tokens first, onto
 * whichever of the two queues would finish it sooner: the copy pipeline
 * (already busy for busy_s; io_par loads overlap) or the CPU (compute, plus
 * the read when the expert is not in RAM). */
typedef struct inf_offload {
	double upload_s, read_s, cpu_row_s;
	uint32_t n_upload, n_read, n_cpu;   /* observations so far */
} inf_offload;

/* on_cpu[i] = 1 when missed expert i (applied to rows[i] tokens; in_ram[i]
 * when its RAM copy is ready, in_ram NULL = all ready) should be computed on
 * the CPU. */
void inf_offload_plan(const inf_offload *o, const uint32_t *rows, const uint8_t *in_ram,
		      uint32_t n, double busy_s, uint32_t io_par, uint8_t *on_cpu);
void inf_offload_observe_upload(inf_offload *o, double seconds);
void inf_offload_observe_read(inf_offload *o, double seconds);
void inf_offload_observe_cpu(inf_offload *o, uint32_t rows, double seconds);

/* ---------------------------------------------------------------- engine state */

struct inf_engine {
	inf_model *m;
	inf_engine_opts opts;
	kern_backend *be;         /* runs the forward pass */
	int own_be;               /* be was opened here (not opts.be) */
	const kern_backend_ops *ops;
	kern_backend *cpu;        /* --cpu-experts: computes device misses from RAM */
	inf_bweights w;
	inf_experts *experts;     /* NULL without MoE layers */
	int tier;                 /* the compute tier */
	uint32_t max_batch, max_ctx;
	uint32_t n_seqs;
	uint32_t *seq_pos;        /* [n_seqs] positions filled per sequence */
	const inf_seg *segs;      /* the chunk running: its segments, back to back */
	uint32_t n_segs;
	kern_router_params rp;
	kern_mla_dims md;
	unsigned mm;              /* matmul flags of the dense products: KERN_MM_EXACT with
	                             opts.exact (float32 activations), else 0 (the
	                             backend's fast path: activations rounded) */
	/* activations, backend memory */
	int32_t *ids;             /* [B] */
	float *x, *xn, *y;        /* [B, H] residual, normed, layer output */
	float *qa, *q, *kva;      /* [B, max(Q, R+rope)], [B, nh·qk], [B, R+rope] */
	float *attn;              /* [B, nh·v] */
	float *ckv, *kpe;         /* [S][L][P][R], [S][L][P][rope] the compressed KV cache
	                             of each of the n_seqs sequences */
	float *mlp_g, *mlp_u;     /* [B, max I] */
	float *logits;            /* [B, max(V, E)] */
	int32_t *route;           /* [B·k] expert ids, then [B·k] float weights */
	float *xk, *moe_out;      /* [k·B, H]: row j·n + t is token t's j-th expert */
	int32_t *rows_d;          /* [B·k] rows grouped by expert */
	float *wsel_d;            /* [B·k] their routing weights */
	/* host memory the backend copies from (host_alloc) */
	int32_t *rows_h;          /* [B·k] */
	float *wsel_h;            /* [B·k] */
	float *cpu_out;           /* [k·B, H] outputs of CPU experts (--cpu-experts) */
	float *xk_h;              /* [k·B, H] xk on the host (--cpu-experts) */
	/* host */
	int32_t *route_h;         /* [B·k] ids then weights, as downloaded */
	float *router_logits;     /* [L][B, E] of the last chunk */
	float *route_w;           /* [L][B, k] */
	int32_t *routes;          /* [n][L][k] of the last forward */
	float *routes_w;          /* [n][L][k] their route weights (0 for dense layers) */
	uint32_t routes_n;
	uint64_t expert_bytes_used;
	/* a MoE layer's bookkeeping (moe.c), [E] each, start [E + 1] */
	uint32_t *start, *used, *miss, *miss_rows;
	uint8_t *state, *on_cpu, *miss_ram, *plan, *pinned;
	/* prefetch (prefetch.c) */
	int32_t *pf_pred;         /* [L][E] predicted flags of the current step */
	int32_t *pf_list;         /* [E] */
	uint8_t *pf_has;          /* [L] a prediction was made for layer l this step */
	inf_prefetch_stats pf;
	/* --cpu-experts */
	inf_offload off;
	inf_device_stats st;
};

/* Names the failed backend op in err: "layer L: what: <backend's line>". */
int inf_op_failed(inf_engine *e, int rc, const char *what, uint32_t layer, k2_err *err);

/* Layer steps: xn [n, H] (e->xn) of the n tokens of the segments e->segs
 * (each at its sequence's next positions, e->seq_pos) in, out [n, H] (backend
 * memory). Return 0 or -errno with a message. */
int inf_attn_forward(inf_engine *e, uint32_t layer, uint32_t n, float *out, k2_err *err);
/* Dense SwiGLU MLP of a layer (or its shared experts): out = (or += when
 * accumulate) mlp(xn). */
int inf_mlp_forward(inf_engine *e, uint32_t layer, uint32_t n, float *out, int accumulate,
		    k2_err *err);
/* Routed + shared experts of MoE layer `layer`; records the routing. */
int inf_moe_forward(inf_engine *e, uint32_t layer, uint32_t n, float *out, k2_err *err);
/* After layer `layer` produced x [n, H]: predicts the next MoE layer's
 * experts and sends the prefetch (--prefetch router). */
int inf_prefetch_after_layer(inf_engine *e, uint32_t layer, uint32_t n, k2_err *err);
/* Accounts the prediction of MoE layer `layer` against the routing just used. */
void inf_prefetch_account(inf_engine *e, uint32_t layer, const int32_t *routes, uint32_t n);
/* The next MoE layer after `layer` (UINT32_MAX when none). */
uint32_t inf_next_moe_layer(const inf_model *m, uint32_t layer);
/* A user.k2.prefetch value "3,17,…" of n experts into buf (returns its length;
 * 12 bytes an expert suffice), and its setxattr on experts/LLL of dir (errors
 * ignored: a plain directory may refuse it). */
size_t inf_prefetch_hint_text(char *buf, size_t cap, const int32_t *experts, uint32_t n);
void inf_prefetch_hint_send(const char *dir, uint32_t layer, const char *hint);
/* --cpu-experts: measures the two rates of the cost model once. */
int inf_offload_calibrate(inf_engine *e, k2_err *err);

/* Expert-tier capacity in experts for the options: the count asked, or bytes /
 * image size, or every expert if they fit in half the RAM, else a quarter of
 * it. 0 on error (err set). */
uint32_t inf_ram_tier_slots(const inf_model *m, uint32_t count, uint64_t bytes, k2_err *err);

/* Paths under the model directory: buffers are INF_PATH_MAX bytes, and the
 * directory leaves room for names of up to INF_NAME_MAX bytes below it. */
#define INF_PATH_MAX 4096
#define INF_NAME_MAX 512
/* snprintf into buf [n] that fails with -ENAMETOOLONG (buf then empty)
 * instead of truncating a path. */
int inf_path(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Expert image helpers (expert_file.c), shared by the directory and the model. */
/* Opens experts/LLL/EEE; *size its size. Returns the descriptor or -errno with
 * a message naming the path (missing: "config.json gives layer L N routed
 * experts"). path gets the file's path. */
int inf_expert_open(const char *dir, const k2_model_config *cfg, uint32_t layer,
		    uint32_t expert, char *path, size_t path_n, uint64_t *size, k2_err *err);
/* Reads and checks the header of experts/LLL/EEE. */
int inf_expert_layout(const char *dir, const k2_model_config *cfg, uint32_t layer,
		      uint32_t expert, k2x_layout *lay, uint64_t *size, k2_err *err);
/* The three products of an image laid out as lay, at `image`. */
void inf_expert_mats(const k2x_layout *lay, const void *image, kern_mat mat[3]);

/* 64-byte aligned, zeroed; NULL on failure. */
void *inf_alloc(size_t bytes);

#endif /* K2_INFER_IMPL_H */
