/* infer.h — the public interface of infer/: the inference engine for the
 * DeepSeek-V3 / Kimi-K2 architecture (DeepseekV3ForCausalLM) on the CPU.
 *
 * It reads a model only through a directory laid out like the k2fs mount:
 * config.json, dense/<hub tensor name> (raw bytes in their stored dtype, with
 * xattrs user.k2.dtype / user.k2.shape) and experts/<LLL>/<EEE> (expert
 * images, layout/FORMAT.md §2). It never opens a pack and knows no codec.
 *
 * Objects: inf_model (config + dense weights, read once), inf_cache (the
 * engine's own expert cache over RAM slots with a replacement policy and
 * background I/O threads), inf_engine (one generation: KV cache, scratch,
 * routing, prefetch), inf_sampler. Every function that can fail returns 0 or
 * -errno and writes one line into a k2_err naming the file or tensor. Nothing
 * here exits or aborts on bad input. Destructors accept NULL. */
#ifndef K2_INFER_H
#define K2_INFER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kernels.h"
#include "layout.h"

/* ---------------------------------------------------------------- model */

typedef struct inf_model inf_model;

/* Opens the model under `dir`: parses config.json, checks every dense tensor
 * the config implies (present, dtype usable, shape = what the config says;
 * shape and dtype come from the xattrs user.k2.shape / user.k2.dtype when the
 * directory has them, else dtype is inferred from the file size: 2 bytes per
 * element BF16, 4 F32, 1 F8_E4M3 with its _scale_inv file) and reads them into
 * memory. Large matrices stay in their stored format; norm weights and biases
 * become float32. */
int inf_model_open(const char *dir, inf_model **out, k2_err *err);
void inf_model_close(inf_model *m);

const k2_model_config *inf_model_config(const inf_model *m);
const char *inf_model_dir(const inf_model *m);
/* Bytes of dense weights held (as stored, plus float32 vectors). */
uint64_t inf_model_dense_bytes(const inf_model *m);
/* Bytes of dense weights one decode token reads (every matrix once, the
 * embedding row, not the vectors). */
uint64_t inf_model_dense_bytes_per_token(const inf_model *m);
/* 1 if layer l has routed experts. */
int inf_model_is_moe(const inf_model *m, uint32_t layer);

/* The YaRN RoPE tables the model uses (exposed for tests): inv_freq
 * [qk_rope_head_dim/2], the cos/sin multiplier (attention_factor) and the
 * softmax scale. */
const float *inf_model_rope_inv_freq(const inf_model *m);
float inf_model_rope_mscale(const inf_model *m);
float inf_model_attn_scale(const inf_model *m);

/* Computes YaRN inverse frequencies as transformers' _compute_yarn_parameters
 * does (float32), for a config; inv_freq has qk_rope_head_dim/2 entries.
 * *attn_factor gets the cos/sin multiplier, *softmax_scale the attention
 * scale (qk_head^-0.5 · mscale(factor, mscale_all_dim)²). */
void inf_rope_params(const k2_model_config *c, float *inv_freq, float *attn_factor,
		     float *softmax_scale);
/* Rotates one rope vector x [d] at position pos in place: interleaved pairs
 * (x[2i], x[2i+1]) rotated by pos·inv_freq[i], written in HF's
 * de-interleaved order (out[i], out[i+d/2]), times mscale. */
void inf_rope_apply(float *x, uint32_t d, const float *inv_freq, float mscale,
		    uint32_t pos);

/* ---------------------------------------------------------------- routing */

/* The DeepSeek-V3 noaux_tc router for one token: logits [E] (x·gateᵀ),
 * bias [E] (e_score_correction_bias, may be NULL). Writes the top_k expert
 * indices (by descending biased score) into idx and their weights (sigmoid
 * scores, normalized when norm_topk_prob, × routed_scaling_factor) into w.
 * scratch needs 2·E floats. Returns 0 or -EINVAL (bad config values). */
int inf_route(const k2_model_config *c, const float *logits, const float *bias,
	      float *scratch, int32_t *idx, float *w);

/* ---------------------------------------------------------------- expert cache */

/* One resident expert: its image parsed, products ready for kern_matmul. */
typedef struct inf_expert {
	uint32_t layer, expert;
	k2x_layout lay;
	kern_mat gate, up, down; /* [I,H], [I,H], [H,I] pointing into the slot */
} inf_expert;

/* Replacement policy behind one small interface: a policy sees slots (0 …
 * n_slots-1) and the key each holds (layer · n_experts + expert, < n_keys). All
 * calls happen under the cache's lock. */
typedef struct inf_policy_ops {
	const char *name;
	void *(*create)(uint32_t n_slots, uint32_t n_keys);
	void (*destroy)(void *st);
	void (*insert)(void *st, uint32_t slot, uint32_t key); /* slot filled */
	void (*touch)(void *st, uint32_t slot, uint32_t key);  /* hit */
	void (*remove)(void *st, uint32_t slot, uint32_t key); /* slot emptied */
	/* The slot to evict among those for which ok(ctx, slot) is true, or -1. */
	int64_t (*victim)(void *st, int (*ok)(void *ctx, uint32_t slot), void *ctx);
} inf_policy_ops;

extern const inf_policy_ops inf_policy_lru;
extern const inf_policy_ops inf_policy_lfu;
/* "lru" or "lfu"; NULL when unknown. */
const inf_policy_ops *inf_policy_find(const char *name);

typedef struct inf_cache inf_cache;

typedef struct inf_cache_stats {
	uint64_t hits;        /* found resident (or being loaded by a prefetch) */
	uint64_t misses;      /* loaded on demand by the compute thread */
	uint64_t inflight;    /* of the hits: waited for a background load */
	uint64_t loads;       /* files read (demand + prefetch) */
	uint64_t prefetch_loads, prefetch_dropped;
	uint64_t prefetch_unused;  /* prefetched, evicted or passed over before use */
	uint64_t evictions;
	uint64_t bytes_read;  /* expert bytes read from the mount */
	double wait_s;        /* compute thread time spent waiting for experts */
	uint32_t slots;       /* capacity in experts */
	uint64_t slot_bytes;  /* bytes of one expert image */
} inf_cache_stats;

/* Creates a cache of `n_slots` experts over model dir `dir` (slots allocated on
 * first use). io_threads background loaders (0 = none: prefetch requests are
 * then ignored). */
int inf_cache_create(const char *dir, const k2_model_config *cfg, uint32_t n_slots,
		     const inf_policy_ops *policy, int io_threads, inf_cache **out,
		     k2_err *err);
void inf_cache_destroy(inf_cache *c);

/* Returns the expert, resident and pinned until inf_cache_release: from the
 * cache (hit), after waiting for a background load in flight, or read now
 * (miss). Fails with -errno and a message naming the file when the file is
 * missing, of the wrong size, or its header disagrees with config.json. */
int inf_cache_acquire(inf_cache *c, uint32_t layer, uint32_t expert,
		      const inf_expert **out, k2_err *err);
void inf_cache_release(inf_cache *c, const inf_expert *e);
/* 2 resident, 1 being loaded, 0 absent (no side effects). */
int inf_cache_state(inf_cache *c, uint32_t layer, uint32_t expert);
/* Sends `hint` ("3,17,…") as user.k2.prefetch on experts/LLL (errors ignored:
 * a plain directory may refuse it) and queues background loads of those
 * experts (best effort: a full cache drops them). */
void inf_cache_prefetch(inf_cache *c, uint32_t layer, const int32_t *experts, uint32_t n);
/* Marks the experts of `layer` as used up (a prefetched expert not used by
 * then may be evicted by later prefetches). */
void inf_cache_layer_done(inf_cache *c, uint32_t layer);
void inf_cache_get_stats(inf_cache *c, inf_cache_stats *out);
/* Blocks until the background queue is empty (tests, benchmarks). */
void inf_cache_drain(inf_cache *c);

/* Reads and parses one expert file into buf (for tests and tools): returns 0
 * or -errno. *buf is malloc'd (4096-aligned), owned by the caller. */
int inf_expert_load(const char *dir, const k2_model_config *cfg, uint32_t layer,
		    uint32_t expert, void **buf, size_t *cap, inf_expert *out,
		    k2_err *err);
/* experts/LLL/EEE relative path of an expert ("experts/001/017"). */
void inf_expert_path(char *buf, size_t n, uint32_t layer, uint32_t expert);

/* ---------------------------------------------------------------- engine */

enum inf_prefetch_mode { INF_PREFETCH_NONE = 0, INF_PREFETCH_ROUTER = 1 };
enum inf_backend { INF_BACKEND_CPU = 0, INF_BACKEND_CUDA = 1 };

/* 1 when this build has the CUDA backend and a CUDA device answers. */
int inf_cuda_available(void);

typedef struct inf_engine_opts {
	uint32_t max_ctx;        /* positions the KV cache holds */
	uint32_t max_batch;      /* prompt chunk (0 = 256) */
	uint32_t cache_experts;  /* expert cache capacity (0 = default) */
	uint64_t cache_bytes;    /* or in bytes (used when cache_experts = 0) */
	const char *policy;      /* "lru" (default) or "lfu" */
	int prefetch;            /* enum inf_prefetch_mode */
	int io_threads;          /* background loaders (0 = 2; CUDA: staging readers, 0 = 4) */
	int backend;             /* enum inf_backend */
	int device;              /* CUDA device index */
	/* CUDA: compute a missed expert on the CPU from a RAM copy when the cost
	 * model (gpu_offload.c) says that ends sooner than uploading it */
	int cpu_experts;
	uint64_t cpu_cache_bytes; /* RAM cache for those (0 = the CPU default) */
} inf_engine_opts;

typedef struct inf_engine inf_engine;

int inf_engine_create(inf_model *m, const inf_engine_opts *o, inf_engine **out,
		      k2_err *err);
void inf_engine_destroy(inf_engine *e);

/* Runs tokens ids[0..n) at positions pos … pos+n-1 (the next free positions),
 * appending them to the KV cache. logits: [n, vocab] when all_logits, else
 * [vocab] for the last token. Token ids are checked against the vocabulary.
 * Returns 0 or -errno (an expert file that cannot be used, context full). */
int inf_engine_forward(inf_engine *e, const int32_t *ids, uint32_t n, float *logits,
		       int all_logits, k2_err *err);
/* Positions filled so far. */
uint32_t inf_engine_pos(const inf_engine *e);
/* Drops the KV cache (next forward starts at position 0). */
void inf_engine_reset(inf_engine *e);

/* The routing of the last forward call: for token i (0 … n-1) and layer l,
 * routes[(i · num_hidden_layers + l) · top_k + j] is the j-th expert in top-k
 * order (-1 for dense layers). Valid until the next forward. */
const int32_t *inf_engine_routes(const inf_engine *e, uint32_t *n_tokens);
/* Router outputs of the last forward (for tests; CPU backend only — on CUDA
 * they stay on the device and these hold nothing): logits [n, E] and weights
 * [n, top_k] of layer l, or NULL for a dense layer. */
const float *inf_engine_router_logits(const inf_engine *e, uint32_t layer);
const float *inf_engine_route_weights(const inf_engine *e, uint32_t layer);

typedef struct inf_prefetch_stats {
	uint64_t predicted;   /* experts predicted, summed over layers and steps */
	uint64_t used;        /* experts used in the layers that had a prediction */
	uint64_t correct;     /* predicted ∩ used */
	uint64_t hints;       /* setxattr calls */
} inf_prefetch_stats;

/* CUDA backend counters (all zero on the CPU backend). */
typedef struct inf_gpu_stats {
	uint64_t gpu_experts;     /* expert applications computed on the GPU */
	uint64_t cpu_experts;     /* … on the CPU (--cpu-experts; GPU-cache misses) */
	uint64_t uploads, upload_bytes;   /* expert images copied to the device */
	double upload_wait_s;     /* host time blocked on a load (kcu_cache_begin_use) */
	double cpu_compute_s;     /* host time computing CPU experts */
	/* the cost model's rates when the run ended (0 without --cpu-experts) */
	double est_upload_s;      /* seconds an I/O thread takes to stage one expert */
	double est_cpu_row_s;     /* seconds to compute one expert for one token on the CPU */
	uint64_t dense_device_bytes;  /* dense weights on the device */
	char device[128];         /* the device's name */
} inf_gpu_stats;

void inf_engine_stats(inf_engine *e, inf_cache_stats *cache, inf_prefetch_stats *pf);
void inf_engine_gpu_stats(inf_engine *e, inf_gpu_stats *out);
inf_cache *inf_engine_cache(inf_engine *e);
/* Expert bytes (images) the routed experts of the last forward used. */
uint64_t inf_engine_expert_bytes_used(const inf_engine *e);

/* ---------------------------------------------------------------- sampler */

typedef struct inf_sampler inf_sampler;

/* temperature 0 = greedy (argmax, lowest index on ties); else softmax of
 * logits/temperature restricted to the smallest set of top tokens whose
 * probability reaches top_p (1 = all), drawn with a splitmix64 stream from
 * seed. */
int inf_sampler_create(uint32_t vocab, float temperature, float top_p, uint64_t seed,
		       inf_sampler **out);
void inf_sampler_destroy(inf_sampler *s);
int32_t inf_sampler_next(inf_sampler *s, const float *logits);
/* Argmax of x[0..n) (lowest index on ties). */
int32_t inf_argmax(const float *x, uint32_t n);

/* ---------------------------------------------------------------- outputs */

/* Writes the routing of tokens [0, n) at positions pos0… as JSON lines
 * {"pos":P,"token":ID,"experts":{"1":[e,…],…}} to f. */
void inf_trace_write(FILE *f, const inf_model *m, const int32_t *routes, const int32_t *ids,
		     uint32_t n, uint32_t pos0);

/* Collects logits for --dump-logits: the prompt's [T, V], the step logits
 * [N, V] and the ids [N]; writes a safetensors file with k2st_writer. */
typedef struct inf_dump inf_dump;
int inf_dump_create(uint32_t vocab, inf_dump **out);
void inf_dump_destroy(inf_dump *d);
int inf_dump_prompt(inf_dump *d, const float *logits, uint32_t t);
int inf_dump_step(inf_dump *d, const float *logits, int64_t id);
int inf_dump_write(const inf_dump *d, const char *path, k2_err *err);

/* The --stats line: one JSON object (no newline) into a malloc'd string. */
typedef struct inf_run_stats {
	double ttft_s, decode_s;
	uint32_t prompt_tokens, generated;
	uint64_t dense_bytes;            /* read once at start */
	uint64_t dense_bytes_per_token, expert_bytes_touched;
	inf_cache_stats cache;
	inf_prefetch_stats prefetch;
	const char *backend;             /* "cpu" or "cuda" */
	inf_gpu_stats gpu;               /* with backend "cuda" */
} inf_run_stats;
char *inf_stats_json(const inf_run_stats *s);

#endif /* K2_INFER_H */
