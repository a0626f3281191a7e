/* backend_cuda.h — the C interface of the CUDA backend (the .cu files of
 * kernels/): a device context, device memory, the products and the model ops
 * of the forward pass, MLA attention over the compressed KV cache, and the GPU
 * expert cache with its pinned-staging copy pipeline. No CUDA header is
 * included here: .c files call these functions only. Notes on speed, knobs and
 * the one-command GPU check: kernels/CUDA.md.
 *
 * Built with CUDA (the Makefile defines K2_HAVE_CUDA=1 wherever nvcc exists) the
 * functions are real; without it every function below is a `static inline` stub
 * that returns -ENOTSUP (or NULL / nothing), so callers need no #ifdef.
 *
 * Conventions for every op:
 *   - pointers named as device memory (x, y, w … of ops; kern_mat.w and .s) are
 *     device addresses from kcu_alloc or a cache slot;
 *   - ops are queued on the context's compute stream and return at once; the
 *     first error of an asynchronous kernel is returned by the next kcu_sync,
 *     kcu_download or kcu_timer_end;
 *   - returns 0, -EINVAL for arguments outside the stated contract (nothing is
 *     launched), -ENOMEM when device memory runs out, -EIO for any other CUDA or
 *     cuBLAS error; kcu_ctx_error() then gives one line naming the op, the file
 *     and line, and CUDA's own message;
 *   - a context is used by one thread at a time (the expert cache has its own
 *     threads and is safe to call from the thread that owns the context).
 *
 * Activations are float32. Weight matrices are kern_mat (kernels.h) whose w and
 * s point to device memory laid out exactly as on the host: an expert image
 * copied as is into a slot is used where it lies (kcu_expert_mats). */
#ifndef K2_BACKEND_CUDA_H
#define K2_BACKEND_CUDA_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "layout.h"
#include "kernels.h"

typedef struct kcu_ctx kcu_ctx;
typedef struct kcu_cache kcu_cache;

/* What the device is. */
typedef struct kcu_info {
	char name[256];
	int device;
	int cc_major, cc_minor;   /* compute capability */
	int sm_count;
	uint64_t mem_total, mem_free;
	uint64_t l2_bytes;
	uint64_t smem_per_block;  /* opt-in shared memory limit per block */
	int runtime_version, driver_version;
} kcu_info;

/* kcu_matmul flags. */
#define KCU_MM_ACCUMULATE 1u  /* y += x·Wᵀ instead of y = x·Wᵀ */
#define KCU_MM_GEMM       2u  /* force cuBLAS (BF16 weights only, else -EINVAL) */
#define KCU_MM_NO_GEMM    4u  /* force the dequantizing kernels */
#define KCU_MM_GENERIC    8u  /* force the scalar kernel (for tests) */

/* Batches from which kcu_matmul sends BF16 products to cuBLAS (x rounded to
 * bf16: a bf16 path, relative error ~1e-3). Below it, and for every other format,
 * the dequantizing kernels run with float32 x and float32 accumulation. */
#define KCU_GEMM_MIN_BATCH 16u

/* The router's parameters (kern_router_params) and the MLA dimensions
 * (kern_mla_dims) are kernels.h's. CUDA's limits: n_experts ≤ 1024, n_group ≤ 64
 * with E / n_group ≥ 2, top_k ≤ 32; kv_lora, nope, v ≤ 1024, rope ≤ 256. */

/* GPU expert cache sizing. */
typedef struct kcu_cache_opts {
	uint32_t n_slots;        /* device slots, allocated once */
	uint64_t slot_bytes;     /* bytes per slot: the largest image it will hold */
	uint32_t io_threads;     /* reader threads; 0 = 4 */
	uint32_t n_staging;      /* pinned staging buffers; 0 = 2 per I/O thread */
	uint64_t staging_bytes;  /* bytes per staging buffer; 0 = 8 MiB */
} kcu_cache_opts;

typedef struct kcu_cache_stats {
	uint64_t loads;          /* loads finished (uploaded or failed) */
	uint64_t failed;         /* of which failed */
	uint64_t bytes;          /* bytes uploaded */
	uint64_t chunks;         /* staging chunks copied */
	double read_seconds;     /* summed over I/O threads: pread / memcpy into staging */
	double stall_seconds;    /* summed over I/O threads: waiting for a free staging buffer */
	double wait_seconds;     /* kcu_cache_begin_use / kcu_cache_wait blocked on the host */
} kcu_cache_stats;

/* The three matrices of an expert image that lies at device address `image`
 * (a cache slot), from its parsed header: gate [I, H], up [I, H], down [H, I].
 * Pure arithmetic on the layout; nothing is read from the device. */
static inline void kcu_expert_mats(const k2x_layout *lay, const void *image,
				   kern_mat mats[3])
{
	for (int m = 0; m < 3; m++) {
		const k2x_section *ws = &lay->sec[2 * m], *ss = &lay->sec[2 * m + 1];
		mats[m].format = lay->format;
		mats[m].rows = m < 2 ? lay->inter : lay->hidden;
		mats[m].cols = m < 2 ? lay->hidden : lay->inter;
		mats[m].w = (const uint8_t *)image + ws->offset;
		mats[m].s = ss->bytes ? (const void *)((const uint8_t *)image + ss->offset) : NULL;
	}
}

/* Floats of scratch kcu_mla_attn_absorbed needs for T queries. */
static inline size_t kcu_mla_scratch_floats(const kern_mla_dims *d, uint32_t T)
{
	return (size_t)2 * T * d->n_heads * d->kv_lora;
}

#ifdef K2_HAVE_CUDA

/* ------------------------------------------------------------ device, memory */

/* Number of CUDA devices (≥ 0), or -ENODEV when no driver answers. */
int kcu_device_count(void);
/* Opens `device`: a compute stream, a cuBLAS handle, timing events. Returns 0,
 * -ENODEV (no such device or no driver) or -EIO, with a message in err. */
int kcu_ctx_create(int device, kcu_ctx **out, k2_err *err);
/* Waits for queued work, frees everything the context owns. NULL is fine. */
void kcu_ctx_destroy(kcu_ctx *ctx);
int kcu_ctx_info(kcu_ctx *ctx, kcu_info *out);
/* The last error of an op on this context, one line ("" when none). */
const char *kcu_ctx_error(const kcu_ctx *ctx);

/* Device memory. kcu_free accepts NULL. */
int kcu_alloc(kcu_ctx *ctx, size_t bytes, void **dptr);
void kcu_free(kcu_ctx *ctx, void *dptr);
/* Pinned host memory (page-locked, portable). kcu_host_free accepts NULL. */
int kcu_host_alloc(kcu_ctx *ctx, size_t bytes, void **ptr);
void kcu_host_free(kcu_ctx *ctx, void *ptr);

/* Host → device, ordered after the queued work; returns when the copy is done
 * (src may be reused at once). */
int kcu_upload(kcu_ctx *ctx, void *dst, const void *src, size_t n);
/* Device → host after the queued work; returns when done (or the first
 * asynchronous error). */
int kcu_download(kcu_ctx *ctx, void *dst, const void *src, size_t n);
/* Queued: device memset (bytes), and a copy between device memory and device
 * or pinned host memory (kcu_host_alloc) in any direction. */
int kcu_memset(kcu_ctx *ctx, void *dst, int byte, size_t n);
int kcu_copy(kcu_ctx *ctx, void *dst, const void *src, size_t n);
/* Waits for the queued work; returns its first error. */
int kcu_sync(kcu_ctx *ctx);

/* Device-side timing of the queued work between begin and end (events on the
 * compute stream); kcu_timer_end waits and returns the seconds. */
int kcu_timer_begin(kcu_ctx *ctx);
int kcu_timer_end(kcu_ctx *ctx, double *seconds);

/* ------------------------------------------------------------ products */

/* Y [batch, rows] (=|+=) X [batch, cols] · Wᵀ for every kern_mat format, W read
 * in place (w, s device pointers). int4-g32 needs cols % 32 == 0. Same result
 * as kern_matmul_ref to float32 rounding (bf16 cuBLAS path: bf16 rounding of x).
 * x and y must not overlap. */
int kcu_matmul(kcu_ctx *ctx, const kern_mat *m, const float *x, uint32_t batch,
	       float *y, unsigned flags);


/* One routed expert over a group of tokens:
 *   for b < batch:  t = rows ? rows[b] : b
 *     h = silu(gate · x[t]) ⊙ (up · x[t])                 (fused, one pass)
 *     y[t] += (weights ? weights[b] : 1) · (down · h)
 * mats: gate, up [I, H], down [H, I] (kcu_expert_mats). x, y [*, H];
 * rows: device int32 [batch] token indices, distinct, or NULL; weights: device
 * float [batch] or NULL; scratch: device float [batch, I]. Deterministic:
 * each y element is written by one thread. */
int kcu_expert_ffn(kcu_ctx *ctx, const kern_mat mats[3], const float *x,
		   uint32_t batch, const int32_t *rows, const float *weights,
		   float *y, float *scratch);

/* ------------------------------------------------------------ elementwise ops */

/* out [rows, n] = x / sqrt(mean(x²) + eps) · w per row; out may equal x.
 * w: device float [n]. */
int kcu_rmsnorm(kcu_ctx *ctx, float *out, const float *x, const float *w,
		uint32_t rows, uint32_t n, float eps);
/* gate[i] = silu(gate[i]) · up[i], i < n. */
int kcu_silu_mul(kcu_ctx *ctx, float *gate, const float *up, uint32_t n);
/* In-place softmax over each row of x [rows, n]. */
int kcu_softmax(kcu_ctx *ctx, float *x, uint32_t rows, uint32_t n);
/* y[i] += a · x[i], i < n. */
int kcu_axpy(kcu_ctx *ctx, float *y, float a, const float *x, uint32_t n);
/* out [n, cols] = rows ids[i] of m dequantized (embedding lookup), n ≤ 65535
 * per call. ids: device int32 [n]; an id outside [0, m->rows) gives a row of
 * NaN, never a read out of bounds (callers check ids against the vocabulary). */
int kcu_embed(kcu_ctx *ctx, const kern_mat *m, const int32_t *ids, uint32_t n,
	      float *out);

/* RoPE as transformers' DeepSeek-V3 applies it (rope_interleave), in place:
 * for token t < n_tok, head h < n_heads, with v = x + t·tok_stride +
 * h·head_stride + rope_off, half = rope_dim/2, i < half:
 *   θ = (float)(pos0 + t) · inv_freq[i]   (float32 product, as transformers),
 *   c = cos θ · mscale, s = sin θ · mscale, (a, b) = (v[2i], v[2i+1]) before:
 *   v[i] = a·c − b·s,  v[half + i] = b·c + a·s
 * i.e. interleaved pairs in, de-interleaved out (kern_rope of kernels.h; q_pe
 * and k_pe are both left so, so their dot product is the reference's).
 * inv_freq: device float [half] (YaRN-blended, inf_rope_params); mscale: the
 * YaRN attention factor applied to cos and sin. rope_dim even, ≤ 256. */
int kcu_rope(kcu_ctx *ctx, float *x, uint32_t n_tok, uint32_t n_heads,
	     uint32_t tok_stride, uint32_t head_stride, uint32_t rope_off,
	     uint32_t rope_dim, uint32_t pos0, const float *inv_freq, float mscale);

/* Router, sigmoid noaux_tc, for T tokens (transformers' DeepseekV3MoE):
 *   s = sigmoid(logits[t]); b = s + bias (bias NULL = 0);
 *   group score = sum of the 2 largest b in the group; keep the topk_group best
 *   groups; b of experts outside them becomes 0.0; pick top_k by b (descending,
 *   ties to the lower index); weights = s of the picked (normalised to sum 1 when
 *   norm_topk_prob) × routed_scaling_factor.
 * logits [T, E], bias [E], idx int32 [T, top_k], weights [T, top_k] (device). */
int kcu_router(kcu_ctx *ctx, const kern_router_params *p, const float *logits,
	       const float *bias, uint32_t T, int32_t *idx, float *weights);

/* ------------------------------------------------------------ MLA attention */

/* Appends T positions to the compressed KV cache of one layer. kv_a [T,
 * kv_lora + rope] is kv_a_proj_with_mqa's output; for t < T:
 *   ckv[pos0 + t] = rmsnorm(kv_a[t][0 .. kv_lora), norm_w, eps)
 *   kpe[pos0 + t] = rope(kv_a[t][kv_lora ..), position pos0 + t)  (as kcu_rope,
 *                   de-interleaved)
 * ckv [max_pos, kv_lora], kpe [max_pos, rope]: the caller sized them. */
int kcu_mla_cache_write(kcu_ctx *ctx, const kern_mla_dims *d, const float *kv_a,
			uint32_t T, uint32_t pos0, const float *norm_w, float eps,
			const float *inv_freq, float mscale, float *ckv, float *kpe);

/* Attention of T new queries at positions pos0 … pos0+T-1 over cache positions
 * 0 … pos0+T-1 (query t sees keys ≤ pos0 + t), every head:
 *   q [T, n_heads, nope + rope]: q_b_proj's output with its rope part rotated;
 *   score(t, s) = (q_nope · k_nope[s] + q_pe · kpe[s]) · scale,
 *   out [T, n_heads, v] = softmax_s(score) · v[s],
 * where [k_nope | v] of head h at position s = kv_b · ckv[s] (kv_b_proj
 * [n_heads·(nope + v), kv_lora], rows of head h at h·(nope + v)).
 *
 * _absorbed folds kv_b into the query and the output (decode: no per-position
 * reconstruction): kv_b must be BF16 or F32 (device kern_mat). scratch: device
 * float [kcu_mla_scratch_floats(d, T)].
 *
 * _full takes the reconstructed kv [pos0 + T, n_heads·(nope + v)] (kcu_matmul of
 * kv_b over ckv rows; prefill), any format.
 * Both: T ≤ 65535 and n_heads ≤ 65535 per call (dims as kern_mla_dims states). */
int kcu_mla_attn_absorbed(kcu_ctx *ctx, const kern_mla_dims *d, const kern_mat *kv_b,
			  const float *q, const float *ckv, const float *kpe, uint32_t T,
			  uint32_t pos0, float scale, float *out, float *scratch);
int kcu_mla_attn_full(kcu_ctx *ctx, const kern_mla_dims *d, const float *q,
		      const float *kv, const float *kpe, uint32_t T, uint32_t pos0,
		      float scale, float *out);

/* ------------------------------------------------------------ expert cache */

/* The GPU expert cache's mechanism (the policy — which expert goes to which slot
 * — belongs to the caller): n_slots device slots allocated once; a ring of
 * pinned staging buffers filled by pread (or memcpy) on I/O threads;
 * cudaMemcpyAsync of each filled chunk on a dedicated copy stream; one event per
 * slot, so compute waits only for the slot it reads.
 *
 * A slot's life: kcu_cache_load_* (returns at once) → kcu_cache_begin_use
 * (queues a wait on the compute stream for that slot's copies) → ops reading
 * kcu_cache_slot() → kcu_cache_end_use (a later load into the slot waits for
 * those ops before overwriting it). Returns 0, -EINVAL (bad opts), -ENOMEM
 * (slots or staging do not fit) or -EIO, with a message in err. */
int kcu_cache_create(kcu_ctx *ctx, const kcu_cache_opts *opts, kcu_cache **out,
		     k2_err *err);
/* Finishes the loads in flight (queued ones are dropped), waits for the compute
 * stream, then frees slots, staging and threads. Call it before
 * kcu_ctx_destroy of its context. NULL is fine. */
void kcu_cache_destroy(kcu_cache *c);
uint32_t kcu_cache_n_slots(const kcu_cache *c);
uint64_t kcu_cache_slot_bytes(const kcu_cache *c);
/* Device address of a slot (NULL when out of range). */
void *kcu_cache_slot(kcu_cache *c, uint32_t slot);

/* Starts filling `slot` with bytes [off, off + len) of fd (pread on an I/O
 * thread; fd must stay open until the load is done) or with src[0 .. len)
 * (host memory that must stay valid until then). `urgent` puts the load ahead
 * of the queued non-urgent ones (prefetches). Returns at once: 0, -EINVAL (slot
 * out of range, len 0 or > slot_bytes) or -EBUSY (a load of that slot is still
 * in flight). */
int kcu_cache_load_fd(kcu_cache *c, uint32_t slot, int fd, uint64_t off,
		      uint64_t len, int urgent);
int kcu_cache_load_mem(kcu_cache *c, uint32_t slot, const void *src, uint64_t len,
		       int urgent);
/* Makes the compute stream wait for the slot's copies. Blocks the host only
 * until the load's last chunk has been read and queued (not until the copy
 * ends); a queued load that has not started is moved to the front. Returns 0,
 * or the load's error (-EIO: read failed; -ENODATA: file shorter than asked),
 * with a message in err; the slot then holds no valid data. A slot never
 * loaded returns -ENOENT. */
int kcu_cache_begin_use(kcu_cache *c, uint32_t slot, k2_err *err);
/* The compute work queued so far is the last to read the slot. */
int kcu_cache_end_use(kcu_cache *c, uint32_t slot);
/* Blocks the host until the slot's upload has landed on the device. Returns
 * as kcu_cache_begin_use. */
int kcu_cache_wait(kcu_cache *c, uint32_t slot, k2_err *err);
/* 1 when the slot's upload has landed, 0 while in flight, <0 on its error. */
int kcu_cache_poll(kcu_cache *c, uint32_t slot);
void kcu_cache_stats_get(kcu_cache *c, kcu_cache_stats *out);

#else /* !K2_HAVE_CUDA: stubs, so callers need no #ifdef */

static inline int kcu_device_count(void) { return -ENOTSUP; }
static inline int kcu_ctx_create(int device, kcu_ctx **out, k2_err *err)
{
	(void)device;
	if (out)
		*out = NULL;
	return k2_err_set(err, -ENOTSUP, "CUDA backend: this build has no CUDA (nvcc was not found)");
}
static inline void kcu_ctx_destroy(kcu_ctx *ctx) { (void)ctx; }
static inline int kcu_ctx_info(kcu_ctx *ctx, kcu_info *out) { (void)ctx; (void)out; return -ENOTSUP; }
static inline const char *kcu_ctx_error(const kcu_ctx *ctx)
{
	(void)ctx;
	return "CUDA backend: this build has no CUDA";
}
static inline int kcu_alloc(kcu_ctx *ctx, size_t bytes, void **dptr)
{
	(void)ctx; (void)bytes;
	if (dptr)
		*dptr = NULL;
	return -ENOTSUP;
}
static inline void kcu_free(kcu_ctx *ctx, void *dptr) { (void)ctx; (void)dptr; }
static inline int kcu_host_alloc(kcu_ctx *ctx, size_t bytes, void **ptr)
{
	(void)ctx; (void)bytes;
	if (ptr)
		*ptr = NULL;
	return -ENOTSUP;
}
static inline void kcu_host_free(kcu_ctx *ctx, void *ptr) { (void)ctx; (void)ptr; }
static inline int kcu_upload(kcu_ctx *ctx, void *dst, const void *src, size_t n)
{ (void)ctx; (void)dst; (void)src; (void)n; return -ENOTSUP; }
static inline int kcu_download(kcu_ctx *ctx, void *dst, const void *src, size_t n)
{ (void)ctx; (void)dst; (void)src; (void)n; return -ENOTSUP; }
static inline int kcu_memset(kcu_ctx *ctx, void *dst, int byte, size_t n)
{ (void)ctx; (void)dst; (void)byte; (void)n; return -ENOTSUP; }
static inline int kcu_copy(kcu_ctx *ctx, void *dst, const void *src, size_t n)
{ (void)ctx; (void)dst; (void)src; (void)n; return -ENOTSUP; }
static inline int kcu_sync(kcu_ctx *ctx) { (void)ctx; return -ENOTSUP; }
static inline int kcu_timer_begin(kcu_ctx *ctx) { (void)ctx; return -ENOTSUP; }
static inline int kcu_timer_end(kcu_ctx *ctx, double *seconds)
{ (void)ctx; (void)seconds; return -ENOTSUP; }
static inline int kcu_matmul(kcu_ctx *ctx, const kern_mat *m, const float *x,
			     uint32_t batch, float *y, unsigned flags)
{ (void)ctx; (void)m; (void)x; (void)batch; (void)y; (void)flags; return -ENOTSUP; }
static inline int kcu_expert_ffn(kcu_ctx *ctx, const kern_mat mats[3], const float *x,
				 uint32_t batch, const int32_t *rows, const float *weights,
				 float *y, float *scratch)
{
	(void)ctx; (void)mats; (void)x; (void)batch; (void)rows; (void)weights;
	(void)y; (void)scratch;
	return -ENOTSUP;
}
static inline int kcu_rmsnorm(kcu_ctx *ctx, float *out, const float *x, const float *w,
			      uint32_t rows, uint32_t n, float eps)
{ (void)ctx; (void)out; (void)x; (void)w; (void)rows; (void)n; (void)eps; return -ENOTSUP; }
static inline int kcu_silu_mul(kcu_ctx *ctx, float *gate, const float *up, uint32_t n)
{ (void)ctx; (void)gate; (void)up; (void)n; return -ENOTSUP; }
static inline int kcu_softmax(kcu_ctx *ctx, float *x, uint32_t rows, uint32_t n)
{ (void)ctx; (void)x; (void)rows; (void)n; return -ENOTSUP; }
static inline int kcu_axpy(kcu_ctx *ctx, float *y, float a, const float *x, uint32_t n)
{ (void)ctx; (void)y; (void)a; (void)x; (void)n; return -ENOTSUP; }
static inline int kcu_embed(kcu_ctx *ctx, const kern_mat *m, const int32_t *ids,
			    uint32_t n, float *out)
{ (void)ctx; (void)m; (void)ids; (void)n; (void)out; return -ENOTSUP; }
static inline int kcu_rope(kcu_ctx *ctx, float *x, uint32_t n_tok, uint32_t n_heads,
			   uint32_t tok_stride, uint32_t head_stride, uint32_t rope_off,
			   uint32_t rope_dim, uint32_t pos0, const float *inv_freq, float mscale)
{
	(void)ctx; (void)x; (void)n_tok; (void)n_heads; (void)tok_stride; (void)head_stride;
	(void)rope_off; (void)rope_dim; (void)pos0; (void)inv_freq; (void)mscale;
	return -ENOTSUP;
}
static inline int kcu_router(kcu_ctx *ctx, const kern_router_params *p, const float *logits,
			     const float *bias, uint32_t T, int32_t *idx, float *weights)
{ (void)ctx; (void)p; (void)logits; (void)bias; (void)T; (void)idx; (void)weights; return -ENOTSUP; }
static inline int kcu_mla_cache_write(kcu_ctx *ctx, const kern_mla_dims *d, const float *kv_a,
				      uint32_t T, uint32_t pos0, const float *norm_w, float eps,
				      const float *inv_freq, float mscale, float *ckv, float *kpe)
{
	(void)ctx; (void)d; (void)kv_a; (void)T; (void)pos0; (void)norm_w; (void)eps;
	(void)inv_freq; (void)mscale; (void)ckv; (void)kpe;
	return -ENOTSUP;
}
static inline int kcu_mla_attn_absorbed(kcu_ctx *ctx, const kern_mla_dims *d,
					const kern_mat *kv_b, const float *q, const float *ckv,
					const float *kpe, uint32_t T, uint32_t pos0, float scale,
					float *out, float *scratch)
{
	(void)ctx; (void)d; (void)kv_b; (void)q; (void)ckv; (void)kpe; (void)T; (void)pos0;
	(void)scale; (void)out; (void)scratch;
	return -ENOTSUP;
}
static inline int kcu_mla_attn_full(kcu_ctx *ctx, const kern_mla_dims *d, const float *q,
				    const float *kv, const float *kpe, uint32_t T, uint32_t pos0,
				    float scale, float *out)
{
	(void)ctx; (void)d; (void)q; (void)kv; (void)kpe; (void)T; (void)pos0; (void)scale;
	(void)out;
	return -ENOTSUP;
}
static inline int kcu_cache_create(kcu_ctx *ctx, const kcu_cache_opts *opts, kcu_cache **out,
				   k2_err *err)
{
	(void)ctx; (void)opts;
	if (out)
		*out = NULL;
	return k2_err_set(err, -ENOTSUP, "CUDA backend: this build has no CUDA (nvcc was not found)");
}
static inline void kcu_cache_destroy(kcu_cache *c) { (void)c; }
static inline uint32_t kcu_cache_n_slots(const kcu_cache *c) { (void)c; return 0; }
static inline uint64_t kcu_cache_slot_bytes(const kcu_cache *c) { (void)c; return 0; }
static inline void *kcu_cache_slot(kcu_cache *c, uint32_t slot) { (void)c; (void)slot; return NULL; }
static inline int kcu_cache_load_fd(kcu_cache *c, uint32_t slot, int fd, uint64_t off,
				    uint64_t len, int urgent)
{ (void)c; (void)slot; (void)fd; (void)off; (void)len; (void)urgent; return -ENOTSUP; }
static inline int kcu_cache_load_mem(kcu_cache *c, uint32_t slot, const void *src,
				     uint64_t len, int urgent)
{ (void)c; (void)slot; (void)src; (void)len; (void)urgent; return -ENOTSUP; }
static inline int kcu_cache_begin_use(kcu_cache *c, uint32_t slot, k2_err *err)
{ (void)c; (void)slot; return k2_err_set(err, -ENOTSUP, "CUDA backend: this build has no CUDA"); }
static inline int kcu_cache_end_use(kcu_cache *c, uint32_t slot)
{ (void)c; (void)slot; return -ENOTSUP; }
static inline int kcu_cache_wait(kcu_cache *c, uint32_t slot, k2_err *err)
{ (void)c; (void)slot; return k2_err_set(err, -ENOTSUP, "CUDA backend: this build has no CUDA"); }
static inline int kcu_cache_poll(kcu_cache *c, uint32_t slot) { (void)c; (void)slot; return -ENOTSUP; }
static inline void kcu_cache_stats_get(kcu_cache *c, kcu_cache_stats *out)
{
	(void)c;
	if (out) {
		kcu_cache_stats z = {0};
		*out = z;
	}
}

#endif /* K2_HAVE_CUDA */

#ifdef __cplusplus
}
#endif

#endif /* K2_BACKEND_CUDA_H */
