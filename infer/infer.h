/* infer.h — the public interface of infer/: the inference engine for the
 * DeepSeek-V3 / Kimi-K2 architecture (DeepseekV3ForCausalLM). The forward pass
 * is written once over the op table of kernels/backend.h and runs on whichever
 * backend the engine is given (the plain C one, or a GPU's).
 *
 * It reads a model only through a directory laid out like the k2fs mount:
 * config.json, dense/<hub tensor name> (raw bytes in their stored dtype, with
 * xattrs user.k2.dtype / user.k2.shape) and experts/<LLL>/<EEE> (expert
 * images, layout/FORMAT.md §2). It never opens a pack and knows no codec.
 *
 * Objects: inf_model (config + dense weights, read once into host memory),
 * inf_experts (the expert directory: which expert lives in which tier — the
 * backend's device slots, RAM, or only the mount — with one replacement
 * policy interface for every tier, background readers and the movers between
 * tiers), inf_engine (one generation: the weights on the backend, KV cache,
 * routing, prefetch), inf_sampler.
 *
 * Errors: every function that can fail returns 0 or -errno and writes one line
 * into a k2_err naming the file, tensor or op. Nothing here exits or aborts on
 * bad input. Destructors accept NULL. */
#ifndef K2_INFER_H
#define K2_INFER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
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
/* The router parameters of config.json (kern_router_params; n_group 0 reads
 * as one group). */
void inf_router_params(const k2_model_config *c, kern_router_params *p);

/* ---------------------------------------------------------------- expert images */

/* One expert image in some tier's memory: its parsed header and the three
 * products, gate [I, H], up [I, H], down [H, I], pointing into the image. */
typedef struct inf_expert {
	uint32_t layer, expert;
	k2x_layout lay;
	kern_mat mat[3];     /* gate, up, down */
} inf_expert;

/* The path of expert (layer, expert) under dir, "DIR/experts/LLL/EEE" (dir
 * NULL: the relative "experts/LLL/EEE"). Returns 0 or -ENAMETOOLONG. */
int inf_expert_path(char *buf, size_t n, const char *dir, uint32_t layer, uint32_t expert);
/* Reads and checks one expert image whole into *buf (grown to fit, 4096-aligned,
 * owned by the caller) and fills out. Returns 0 or -errno with a message naming
 * the file: missing, not the size of an image, a header that disagrees with
 * config.json or with its own path. */
int inf_expert_read(const char *dir, const k2_model_config *cfg, uint32_t layer,
		    uint32_t expert, void **buf, size_t *cap, inf_expert *out, k2_err *err);

/* ---------------------------------------------------------------- expert directory */

/* Replacement policy behind one small interface, one instance per tier: a
 * policy sees slots (0 … n_slots-1) and the key each holds (layer · n_experts
 * + expert, < n_keys). Calls happen under the directory's lock. */
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
/* "lru" or "lfu" (NULL: lru); NULL when unknown. */
const inf_policy_ops *inf_policy_find(const char *name);

/* The tiers, fastest first. The device tier is the backend's slots (present
 * only on a backend with device memory); the RAM tier is host memory; below
 * both is the mount. Experts are computed from the compute tier: the device
 * tier where there is one, else RAM. */
enum inf_tier { INF_TIER_DEVICE = 0, INF_TIER_RAM = 1 };
#define INF_TIERS 2
/* "device", "ram" */
const char *inf_tier_name(int tier);

typedef struct inf_tier_stats {
	uint64_t hits;        /* found ready (or loading after a prefetch) when acquired */
	uint64_t misses;      /* loaded on demand */
	uint64_t inflight;    /* of the hits: waited for a load in flight */
	uint64_t loads;       /* loads into this tier (demand + prefetch) */
	uint64_t prefetch_loads, prefetch_dropped;
	uint64_t prefetch_unused;  /* prefetched, evicted or passed over before use */
	uint64_t evictions;
	uint64_t bytes_read;  /* bytes read from the mount into this tier */
	uint64_t bytes_moved; /* bytes copied in from the RAM tier */
	double wait_s;        /* time the engine's thread waited for this tier's loads */
	uint32_t slots;       /* capacity in experts */
	uint64_t slot_bytes;  /* bytes of one expert image */
} inf_tier_stats;

typedef struct inf_experts inf_experts;

typedef struct inf_experts_opts {
	uint32_t ram_slots;       /* RAM tier capacity in experts (0: no RAM tier) */
	uint32_t device_slots;    /* device tier capacity (0: none) */
	kern_backend *be;         /* the device tier's backend (its slot entries) */
	const inf_policy_ops *policy;  /* every tier's policy (NULL: LRU) */
	int io_threads;           /* RAM-tier background readers (0: none; requests and
	                             prefetches into RAM are then ignored) */
	int device_io_threads;    /* the device slots' readers (0 = 4) */
} inf_experts_opts;

/* Creates the directory over model dir `dir`. The device tier reads each MoE
 * layer's image layout from its experts/LLL/000 and checks it against
 * config.json (slots are sized from it); RAM slots are allocated on first
 * use. Returns 0 or -errno with a message. */
int inf_experts_create(const char *dir, const k2_model_config *cfg,
		       const inf_experts_opts *o, inf_experts **out, k2_err *err);
void inf_experts_destroy(inf_experts *d);
int inf_experts_has_tier(const inf_experts *d, int tier);
int inf_experts_compute_tier(const inf_experts *d);

/* 2 ready, 1 loading, 0 absent in `tier` (no side effects but settling a
 * device load that has landed). */
int inf_experts_state(inf_experts *d, int tier, uint32_t layer, uint32_t expert);
/* Demand requests for the n experts of `layer` a layer is about to use, in
 * that order: device loads start now, each pinned (pinned[i] = 1) so that the
 * next does not evict it, until no slot is free (the rest load when acquired);
 * RAM loads are queued to the readers ahead of prefetches, in that order, and
 * not pinned (a reader claims its slot later: pinning there could leave no
 * slot for the engine's own demand). Returns 0 or -errno with a message. */
int inf_experts_request_loads(inf_experts *d, int tier, uint32_t layer,
			      const uint32_t *experts, uint32_t n, uint8_t *pinned, k2_err *err);
/* Keeps an expert that is ready or loading in `tier` from being evicted until
 * inf_experts_unpin (or its acquire / release). */
void inf_experts_pin(inf_experts *d, int tier, uint32_t layer, uint32_t expert);
void inf_experts_unpin(inf_experts *d, int tier, uint32_t layer, uint32_t expert);
/* The expert in `tier`, ready for ops (device: ops issued from now on see its
 * data) and pinned until inf_experts_release: from the tier (a hit), after
 * waiting for its load, or loaded now (a miss). Fails with -errno and a message
 * naming the file when it is missing, of the wrong size, or its header
 * disagrees with config.json. */
int inf_experts_acquire(inf_experts *d, int tier, uint32_t layer, uint32_t expert,
			const inf_expert **out, k2_err *err);
/* The ops issued so far are the last to read e (device); unpins it. */
void inf_experts_release(inf_experts *d, int tier, const inf_expert *e);
/* Sends `experts` as user.k2.prefetch on experts/LLL (errors ignored: a plain
 * directory may refuse it) and starts background loads of them into the
 * compute tier (best effort: a busy tier drops them). */
void inf_experts_prefetch(inf_experts *d, uint32_t layer, const int32_t *experts, uint32_t n);
/* The experts of `layer` are used up: a prefetch of it not used by now counts
 * as unused and may be evicted by later prefetches. */
void inf_experts_layer_done(inf_experts *d, uint32_t layer);
/* Blocks until the RAM readers' queue is empty (tests, benchmarks). */
void inf_experts_drain(inf_experts *d);
void inf_experts_stats(inf_experts *d, int tier, inf_tier_stats *out);
/* Seconds a device-slot reader spent per load, averaged over the loads ended
 * since the last call (0 when none). */
double inf_experts_take_read_s(inf_experts *d);
/* Zeroes the counters (after a calibration). */
void inf_experts_reset_stats(inf_experts *d);
/* Loads in flight in `tier` now. */
uint32_t inf_experts_loading(inf_experts *d, int tier);
/* An expert the engine computed outside `tier` (--cpu-experts) counts as its
 * miss. */
void inf_experts_count_miss(inf_experts *d, int tier);

/* ---------------------------------------------------------------- engine */

enum inf_prefetch_mode { INF_PREFETCH_NONE = 0, INF_PREFETCH_ROUTER = 1 };

typedef struct inf_engine_opts {
	uint32_t max_ctx;        /* positions the KV cache holds */
	uint32_t max_batch;      /* prompt chunk (0 = 256) */
	const char *backend;     /* kern_backend_open's name (NULL: "cpu") */
	int device;              /* the backend's device index */
	kern_backend *be;        /* or a backend the caller opened: used instead of
	                            backend / device, borrowed (not closed) */
	uint32_t cache_experts;  /* compute-tier capacity in experts (0 = default) */
	uint64_t cache_bytes;    /* or in bytes (used when cache_experts = 0) */
	const char *policy;      /* "lru" (default) or "lfu" */
	int prefetch;            /* enum inf_prefetch_mode */
	int io_threads;          /* readers (0: RAM tier 2 with prefetch, device slots 4) */
	/* float32 activations in every product (KERN_MM_EXACT): what the reference
	 * computes. Else (0) the backend's fast path may round them (kern_matmul_fast
	 * on the CPU: bf16 weights take bf16 activations). Routers are always exact. */
	int exact;
	/* a backend with device memory: compute a missed expert on the CPU from
	 * its RAM copy when the cost model (offload.c) says that ends sooner than
	 * uploading it */
	int cpu_experts;
	uint64_t cpu_cache_bytes; /* RAM tier for those (0 = the RAM default) */
	/* sequences the engine holds at once, each with its own KV cache of
	 * max_ctx positions (0 = 1); inf_engine_step runs several together */
	uint32_t n_seqs;
} inf_engine_opts;

typedef struct inf_engine inf_engine;

/* --expert-cache's value: "4experts" sets *count (and *bytes 0), a size
 * ("64M", "2G": k2_parse_size) sets *bytes (and *count 0). 0 or -EINVAL. */
int inf_parse_expert_cache(const char *s, uint32_t *count, uint64_t *bytes);
/* --prefetch's value: "none" or "router" as enum inf_prefetch_mode; -EINVAL. */
int inf_prefetch_mode(const char *name);
/* The engine options a command line gives (infer, k2serve), checked and set
 * in *eo: --backend (NULL: kern_backend_default), --expert-cache (NULL: the
 * default), --policy (NULL: lru), --prefetch (NULL: none). Returns 0, or
 * -EINVAL with err naming the option and what it takes. */
int inf_engine_opts_cli(inf_engine_opts *eo, const char *backend, const char *cache,
			const char *policy, const char *prefetch, k2_err *err);

int inf_engine_create(inf_model *m, const inf_engine_opts *o, inf_engine **out,
		      k2_err *err);
void inf_engine_destroy(inf_engine *e);

/* Runs tokens ids[0..n) at positions pos … pos+n-1 (the next free positions),
 * appending them to the KV cache. logits: [n, vocab] when all_logits, else
 * [vocab] for the last token. Token ids are checked against the vocabulary.
 * Returns 0 or -errno (an expert file that cannot be used, context full, a
 * backend op that failed). */
int inf_engine_forward(inf_engine *e, const int32_t *ids, uint32_t n, float *logits,
		       int all_logits, k2_err *err);
/* Positions filled so far (of sequence 0, the one inf_engine_forward runs). */
uint32_t inf_engine_pos(const inf_engine *e);

/* A run of n tokens of sequence seq (< inf_engine_opts.n_seqs) at its next
 * free positions. */
typedef struct inf_seg {
	uint32_t seq;
	uint32_t n;
} inf_seg;

/* One step of several sequences together: segment i's tokens are the next
 * segs[i].n ids (the segments' tokens back to back in ids), appended to the
 * KV cache of sequence segs[i].seq. Every product runs once for all the
 * tokens; attention runs per segment on its own cache; a routed expert is
 * computed once for every token, of any sequence, that chose it. logits
 * (when non-NULL): [n_segs, vocab], each segment's last token. The tokens in
 * all must number at most max_batch, each sequence appear at most once, each
 * n be > 0 and fit its context: else -EINVAL / -ENOSPC and nothing runs.
 * Returns 0 or -errno with a message, as inf_engine_forward. */
int inf_engine_step(inf_engine *e, const inf_seg *segs, uint32_t n_segs, const int32_t *ids,
		    float *logits, k2_err *err);
/* Sequences the engine holds, and positions filled in sequence seq. */
uint32_t inf_engine_n_seqs(const inf_engine *e);
uint32_t inf_engine_seq_pos(const inf_engine *e, uint32_t seq);
/* Empties sequence seq's KV cache (its next token is at position 0). */
void inf_engine_seq_reset(inf_engine *e, uint32_t seq);
/* Keeps the first pos positions of sequence seq's KV cache and drops the rest
 * (pos beyond the filled ones changes nothing): a conversation whose new
 * rendering shares a prefix with what the cache holds computes only the
 * tokens after it. */
void inf_engine_seq_truncate(inf_engine *e, uint32_t seq, uint32_t pos);
/* Positions of each sequence's KV cache, and tokens a step may carry. */
uint32_t inf_engine_max_ctx(const inf_engine *e);
uint32_t inf_engine_max_batch(const inf_engine *e);
/* The model the engine runs. */
const inf_model *inf_engine_model(const inf_engine *e);
/* Switches between the exact and the fast path (inf_engine_opts.exact) for the
 * forward calls that follow. */
void inf_engine_set_exact(inf_engine *e, int exact);
/* Drops every sequence's KV cache (next forward starts at position 0). */
void inf_engine_reset(inf_engine *e);

/* The routing of the last forward call: for token i (0 … n-1) and layer l,
 * routes[(i · num_hidden_layers + l) · top_k + j] is the j-th expert in top-k
 * order (-1 for dense layers). Valid until the next forward. */
const int32_t *inf_engine_routes(const inf_engine *e, uint32_t *n_tokens);
/* The route weights of those experts, at the same indices (0 for dense
 * layers): every chunk's, where inf_engine_route_weights keeps the last's.
 * Valid until the next forward. */
const float *inf_engine_routes_weights(const inf_engine *e);
/* Router outputs of the last forward's last chunk: logits [n, E] and weights
 * [n, top_k] of layer l, or NULL for a dense layer. */
const float *inf_engine_router_logits(const inf_engine *e, uint32_t layer);
const float *inf_engine_route_weights(const inf_engine *e, uint32_t layer);

typedef struct inf_prefetch_stats {
	uint64_t predicted;   /* experts predicted, summed over layers and steps */
	uint64_t used;        /* experts used in the layers that had a prediction */
	uint64_t correct;     /* predicted ∩ used */
	uint64_t hints;       /* setxattr calls */
} inf_prefetch_stats;

/* Where experts were computed, and the offload cost model's rates. */
typedef struct inf_device_stats {
	uint64_t backend_experts; /* expert applications computed by the backend */
	uint64_t cpu_experts;     /* … on the CPU from RAM (--cpu-experts, device misses) */
	uint64_t uploads, upload_bytes;   /* images copied into device slots */
	double upload_wait_s;     /* host time blocked on a device load */
	double cpu_compute_s;     /* host time computing CPU experts */
	double est_upload_s;      /* cost model: seconds a reader takes to stage one expert */
	double est_cpu_row_s;     /* cost model: seconds to compute one expert for one token */
	uint64_t dense_backend_bytes;  /* dense weights held in backend memory */
	char device[256];         /* what ran the ops */
} inf_device_stats;

/* The compute tier's counters (cache; zeroes without MoE layers) and the
 * prefetch counters. */
void inf_engine_stats(inf_engine *e, inf_tier_stats *cache, inf_prefetch_stats *pf);
void inf_engine_tier_stats(inf_engine *e, int tier, inf_tier_stats *out);
void inf_engine_device_stats(inf_engine *e, inf_device_stats *out);
inf_experts *inf_engine_experts(inf_engine *e);
/* Keeps experts resident: keys[0..n) (layer · n_routed_experts + expert) are
 * loaded into the compute tier and pinned there for the engine's life (and
 * marked user.k2.prefetch=pin in the mount, when it takes hints); the tier's
 * counters are then zeroed, so hits and misses count the run, not the
 * pinning. They must leave a slot free: else -EINVAL. 0 or -errno with a
 * message (an expert file that cannot be read). */
int inf_engine_pin(inf_engine *e, const uint32_t *keys, uint32_t n, k2_err *err);
/* inf_engine_pin of the experts a profile file lists (inf_profile_read,
 * checked against the engine's model); *n_pinned (if non-NULL) their number. */
int inf_engine_pin_profile(inf_engine *e, const char *path, uint32_t *n_pinned, k2_err *err);

/* An expert profile, as `k2trace stats --profile` writes it: one "layer
 * expert count" line per expert (blank lines and '#' comments allowed), the
 * experts in file order. Each is checked against the model: a layer
 * < n_layers with moe[layer] != 0, an expert < n_experts, none twice. *keys
 * (layer · n_experts + expert) is malloc'd, *n its length. 0 or -errno with
 * "PATH:LINE: what is wrong". */
int inf_profile_read(const char *path, uint32_t n_layers, const uint8_t *moe, uint32_t n_experts,
		     uint32_t **keys, uint32_t *n, k2_err *err);

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

/* The routing trace (infer --trace; the format is docs/trace.md): a header
 * line naming the model's shape and the engine's options, one JSON line per
 * token position with its step (the engine's forward chunk), each MoE
 * layer's experts in top-k order and their route weights, and an end line. */
typedef struct inf_trace inf_trace;
/* Creates `path` and writes the header for engine e. Returns 0 or -errno with
 * a message naming the file; *out is owned by the caller (inf_trace_close). */
int inf_trace_open(const char *path, inf_engine *e, inf_trace **out, k2_err *err);
/* Writes the routing of e's last inf_engine_forward, of the n tokens ids at
 * positions pos0 …: one line per token, numbered in steps as the engine
 * chunked them (max_batch tokens a chunk). Returns 0 or -EIO with a message. */
int inf_trace_forward(inf_trace *t, const inf_engine *e, const int32_t *ids, uint32_t n,
		      uint32_t pos0, k2_err *err);
/* Writes the end line when `complete` (a run that failed leaves the trace
 * without one, so readers see it as truncated), closes the file and frees t
 * (NULL: nothing). Returns 0 or -errno with a message (a write error). */
int inf_trace_close(inf_trace *t, int complete, k2_err *err);

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
	inf_tier_stats cache;            /* the compute tier */
	inf_tier_stats tiers[INF_TIERS];
	int has_tier[INF_TIERS];
	inf_prefetch_stats prefetch;
	const char *backend;             /* the backend's name */
	int device_backend;              /* it has device memory: dev holds its figures */
	inf_device_stats dev;
} inf_run_stats;
char *inf_stats_json(const inf_run_stats *s);

#endif /* K2_INFER_H */
