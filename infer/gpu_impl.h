/* gpu_impl.h — internals of infer's CUDA backend, shared by the gpu_*.c files
 * of infer/: the dense weights on the device (gpu_weights.c), the GPU expert
 * cache's policy over kcu_cache slots (gpu_cache.c), the cost model that sends
 * a missed expert to the CPU or to the copy engine (gpu_offload.c), and the
 * forward pass (gpu_forward.c, gpu_moe.c). Every op comes from
 * kernels/backend_cuda.h; no CUDA header is included. In a build without
 * CUDA every kcu_* call returns -ENOTSUP, so inf_gpu_create fails with a
 * clear message and these files build everywhere. Everything here runs on the engine's thread only. */
#ifndef K2_INFER_GPU_IMPL_H
#define K2_INFER_GPU_IMPL_H

#include "backend_cuda.h"
#include "infer_impl.h"

/* Batches from which the engine lets kcu_matmul send BF16 products to cuBLAS
 * (x rounded to bf16: ~1e-3 relative error per product, which over a whole
 * model moved the bf16 fixture's logits by 7e-3 and its greedy ids from the
 * 9th on). Smaller batches (decode, short prompts) run the float32
 * dequantizing kernels; the routers always do, so routing matches the CPU. */
#define INF_GPU_GEMM_MIN_BATCH 64u

static inline unsigned gpu_mm_flags(uint32_t batch)
{
	return batch < INF_GPU_GEMM_MIN_BATCH ? KCU_MM_NO_GEMM : 0;
}

/* ---------------------------------------------------------------- dense weights */

/* One decoder layer on the device: the same matrices as inf_layer (w and s
 * device pointers, formats unchanged), vectors float32. kv_b_abs is kv_b in a
 * format kcu_mla_attn_absorbed takes (kv_b itself when BF16 or F32, else a
 * float32 copy dequantized on the host). */
typedef struct gpu_layer {
	float *attn_norm, *mlp_norm, *q_a_norm, *kv_a_norm, *router_bias;
	kern_mat q_a, q_b, q_proj, kv_a, kv_b, kv_b_abs, o_proj;
	kern_mat gate, up, down, router;
} gpu_layer;

typedef struct gpu_weights {
	kern_mat embed, lm_head;
	float *final_norm, *inv_freq;
	gpu_layer *layers;        /* [num_hidden_layers] */
	void **bufs;              /* device allocations */
	size_t n_bufs, cap_bufs;
	uint64_t bytes;           /* device bytes held */
} gpu_weights;

/* Copies every dense weight of m to the device. Returns 0, -ENOMEM (naming
 * the tensor that did not fit) or -EIO. On failure what was allocated is
 * freed. */
int gpu_weights_upload(kcu_ctx *ctx, const inf_model *m, gpu_weights *w, k2_err *err);
void gpu_weights_free(kcu_ctx *ctx, gpu_weights *w);

/* ---------------------------------------------------------------- expert cache */

/* The GPU expert cache: which expert lives in which kcu_cache slot, chosen by
 * an inf_policy_ops policy (the CPU cache's LRU / LFU). Slots load whole
 * expert files (experts/LLL/EEE, opened per load) through pinned staging;
 * their images are used in place. Every MoE layer's layout is read from its
 * expert 0's header at creation and checked against config.json; every other
 * file must have that layer's size (checked with fstat at each load).
 *
 * Pins: an expert the current layer still needs is pinned and never chosen
 * as a victim. A prefetched expert not yet used is not evicted by another
 * prefetch. */
typedef struct gpu_cache gpu_cache;

/* n_slots 0 = as many as cache_bytes allows (cache_bytes 0 = half the free
 * device memory), never more than the model has experts nor fewer than 1. */
int gpu_cache_create(kcu_ctx *ctx, const inf_model *m, uint32_t n_slots,
		     uint64_t cache_bytes, const inf_policy_ops *pol, int io_threads,
		     gpu_cache **out, k2_err *err);
void gpu_cache_destroy(gpu_cache *g);

/* 2 resident, 1 loading, 0 absent. */
int gpu_cache_state(gpu_cache *g, uint32_t layer, uint32_t expert);
/* Loads in flight now. */
uint32_t gpu_cache_loading(gpu_cache *g);
/* Starts loading an absent expert into a free or evictable slot (present:
 * nothing to do, 0). Returns 0, -ENOSPC when every slot is pinned, loading or
 * (for a prefetch) holds an unused prefetch, or -errno with a message naming
 * the file. */
int gpu_cache_request(gpu_cache *g, uint32_t layer, uint32_t expert, int prefetch,
		      k2_err *err);
void gpu_cache_pin(gpu_cache *g, uint32_t layer, uint32_t expert);
void gpu_cache_unpin(gpu_cache *g, uint32_t layer, uint32_t expert);
/* Makes the compute stream wait for the expert (loading it first when absent)
 * and gives its three matrices in the slot. Returns 0 or -errno with a
 * message naming the file. */
int gpu_cache_begin(gpu_cache *g, uint32_t layer, uint32_t expert, kern_mat mats[3],
		    k2_err *err);
/* The compute queued so far is the last to read the expert; unpins it. */
void gpu_cache_end(gpu_cache *g, uint32_t layer, uint32_t expert);
/* Counts prefetched experts of `layer` that went unused. */
void gpu_cache_layer_done(gpu_cache *g, uint32_t layer);
uint64_t gpu_cache_image_bytes(const gpu_cache *g, uint32_t layer);
/* An expert the layer computed elsewhere (--cpu-experts) counts as a miss. */
void gpu_cache_count_miss(gpu_cache *g);
/* Seconds an I/O thread spent reading one expert into staging, averaged over
 * the loads finished since the last call (0 when none finished). */
double gpu_cache_take_read_s(gpu_cache *g);
/* Zeroes the counters (after the cost model's calibration load). */
void gpu_cache_reset_stats(gpu_cache *g);
void gpu_cache_get_stats(gpu_cache *g, inf_cache_stats *cs, inf_gpu_stats *gs);

/* ---------------------------------------------------------------- --cpu-experts */

/* The cost model of --cpu-experts: three measured rates, kept as moving
 * averages of what the run observes.
 *   upload_s:  seconds the copy pipeline spends on one expert: an I/O
 *              thread's read from the mount into pinned staging (the copies
 *              to the device overlap the next chunk's read);
 *   read_s:    seconds to read an expert into the CPU's RAM cache (a RAM miss);
 *   cpu_row_s: seconds the CPU takes to apply one expert to one token (the
 *              three products read the whole image: bandwidth bound, so rows
 *              are charged linearly, an upper bound for larger batches).
 * A layer's missed experts are scheduled greedily, fewest tokens first, onto
 * whichever of the two queues would finish it sooner: the copy pipeline
 * (already busy for gpu_busy_s; io_par loads overlap) or the CPU (compute, plus
 * the read when the expert is not in its RAM cache). */
typedef struct gpu_offload {
	double upload_s, read_s, cpu_row_s;
	uint32_t n_upload, n_read, n_cpu;   /* observations so far */
} gpu_offload;

/* on_cpu[i] = 1 when missed expert i (applied to rows[i] tokens; in_ram[i]
 * when its RAM copy is resident, in_ram NULL = all resident) should be
 * computed on the CPU. */
void gpu_offload_plan(const gpu_offload *o, const uint32_t *rows, const uint8_t *in_ram,
		      uint32_t n, double gpu_busy_s, uint32_t io_par, uint8_t *on_cpu);
void gpu_offload_observe_upload(gpu_offload *o, double seconds);
void gpu_offload_observe_read(gpu_offload *o, double seconds);
void gpu_offload_observe_cpu(gpu_offload *o, uint32_t rows, double seconds);

/* ---------------------------------------------------------------- engine state */

struct inf_gpu {
	kcu_ctx *ctx;
	kcu_info info;
	gpu_weights w;
	gpu_cache *cache;
	uint32_t B, P;            /* max batch, positions */
	/* device activations */
	int32_t *ids;             /* [B] */
	float *x, *xn, *y;        /* [B, H] */
	float *qa, *q, *kva;      /* [B, max(Q, R+rope)], [B, nh·qk], [B, R+rope] */
	float *attn;              /* [B, nh·v] */
	float *kvfull;            /* [P, nh·(nope+v)] keys / values for the full path */
	float *mla_scratch;       /* kcu_mla_scratch_floats(d, 1) */
	float *ckv, *kpe;         /* [L][P][R], [L][P][rope] */
	float *mlp_g, *mlp_u;     /* [B, max I] */
	float *logits;            /* [B, max(V, E)] */
	int32_t *route;           /* [B·k] indices, then [B·k] float weights */
	float *xk, *moe_out;      /* [k·B, H]: row j·n + t is token t's j-th expert */
	int32_t *rows_d;          /* [B·k] rows grouped by expert */
	float *wsel_d;            /* [B·k] their routing weights */
	/* pinned host staging */
	int32_t *rows_h;
	float *wsel_h;
	float *cpu_out_h;         /* [k·B, H] outputs of CPU experts */
	/* host */
	int32_t *route_h;         /* [B·k] indices then weights, as downloaded */
	/* a MoE layer's bookkeeping (gpu_moe.c), [E] each, start [E + 1] */
	uint32_t *start, *used, *miss, *miss_rows;
	uint8_t *state, *on_cpu, *miss_ram, *plan;
	char *hint;               /* [12·E + 1] a user.k2.prefetch value */
	float *xn_h;              /* [B, H] (--cpu-experts) */
	float *cx, *cg, *cu, *cy; /* [B, H], [B, I], [B, I], [B, H] CPU expert scratch */
	kcu_router_params rp;
	kcu_mla_dims md;
	/* --cpu-experts */
	int cpu_experts;
	inf_cache *ram;           /* RAM copies for CPU experts */
	gpu_offload off;
	int io_threads;
	inf_gpu_stats st;
};

/* gpu_moe.c: routed + shared experts of MoE layer `layer` over xn [n, H]
 * (device) into out [n, H] (device); records the routing in e->routes. */
int gpu_moe_forward(inf_engine *e, uint32_t layer, uint32_t n, float *out, k2_err *err);
/* gpu_moe.c: dense SwiGLU MLP of a layer (or its shared experts): out = (or +=
 * when accumulate) mlp(xn). */
int gpu_mlp_forward(inf_engine *e, const gpu_layer *gl, const inf_layer *ly, uint32_t n,
		    float *out, int accumulate);
/* gpu_moe.c: router-driven prefetch after layer `layer` produced x. */
int gpu_prefetch_after_layer(inf_engine *e, uint32_t layer, uint32_t n, k2_err *err);
/* gpu_moe.c: measures the two rates of the cost model once (one upload, one
 * CPU expert). */
int gpu_offload_calibrate(inf_engine *e, k2_err *err);

#endif /* K2_INFER_GPU_IMPL_H */
