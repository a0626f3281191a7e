/* kernels.h — the public interface of kernels/'s plain C kernels: every
 * operation of the model's forward pass (products per weight format, embedding,
 * RMSNorm, YaRN RoPE, the MLA cache write and attention, the noaux_tc router,
 * SwiGLU and the fused expert FFN), with threads and SIMD where it pays. These
 * functions are the reference: the CPU backend runs them as they are, and every
 * other backend (CUDA, kernels/backend_cuda.h) is tested against them. The
 * table of operations a backend fills is kernels/backend.h.
 *
 * Every weight matrix is used where it lies, in its stored format: products
 * dequantize on the fly and never expand a matrix to float32 in memory.
 * Activations are float32. Shapes are stated per function; callers guarantee
 * them (the forward pass checks shapes against config.json at load time), so
 * these functions do not validate sizes beyond what is stated.
 *
 * Errors: a function that can fail returns 0 or -errno (-EINVAL for arguments
 * outside its contract, -ENOMEM); it writes nothing on -EINVAL. Nothing here
 * exits, aborts, or reports an error through its outputs. */
#ifndef K2_KERNELS_H
#define K2_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"

/* Weight formats the products take: the expert formats of layout.h plus plain
 * float32 (for small dense tensors converted at load). */
#define KERN_FORMAT_F32 100u

/* A weight matrix W [rows, cols] (rows = outputs) in one format:
 *   K2_FORMAT_BF16      w: uint16 bf16 [rows, cols]; s unused
 *   K2_FORMAT_FP8_B128  w: e4m3 [rows, cols]; s: float [ceil(rows/128), ceil(cols/128)]
 *   K2_FORMAT_INT8      w: int8 [rows, cols]; s: float [rows]
 *   K2_FORMAT_INT4_G32  w: uint8 [rows, cols/2] (FORMAT.md §2.2); s: bf16 [rows, cols/32]
 *   KERN_FORMAT_F32     w: float [rows, cols]; s unused */
typedef struct kern_mat {
	uint32_t format;
	uint32_t rows, cols;
	const void *w;
	const void *s;
} kern_mat;

/* Sets the number of worker threads the kernels use (0 = online cores). Safe to
 * call before any kernel; later calls resize the pool (waiting for a running
 * product to finish); ignored when called from inside kern_parallel_for. */
void kern_set_threads(int n);
int kern_threads(void);

/* Y [batch, rows] = X [batch, cols] · Wᵀ. Threaded over rows; the result does
 * not depend on the number of threads. y must not overlap x. Returns 0, or
 * -EINVAL (nothing written) for an unknown format or int4-g32 with
 * cols % 32 != 0. */
int kern_matmul(const kern_mat *m, const float *x, uint32_t batch, float *y);

/* The fast path of kern_matmul: the activations are rounded before the
 * product, so that it can run on the processor's dot-product instructions.
 * bf16 weights take x rounded to bf16 (to nearest, ties to even) and use the
 * AVX-512 BF16 dot product where the processor has it, else kern_matmul on
 * the rounded x. int4-g32 weights, and int8 weights whose width is whole
 * blocks of 32, take x quantized to 8 bits per block of 32 (dx = max |x| /
 * 127, x / dx rounded to nearest) and use the AVX-512 VNNI integer dot
 * product where the processor has it, else kern_matmul on the values the
 * quantized x stands for. So the rounding, not the instruction set, decides
 * the result, up to the order of the sums (which, as kern_matmul's, does not
 * depend on the batch). Other formats run kern_matmul as it is. Returns as
 * kern_matmul, or -ENOMEM. */
int kern_matmul_fast(const kern_mat *m, const float *x, uint32_t batch, float *y);

/* The plain single-threaded scalar reference of kern_matmul: dequantize each
 * element, multiply, accumulate in double. Tests compare every fast path to it. */
void kern_matmul_ref(const kern_mat *m, const float *x, uint32_t batch, float *y);

/* Bytes of weights (and scales) a product over m reads. */
uint64_t kern_mat_bytes(const kern_mat *m);
/* Bytes of m's weights alone (its scales, if any, are the rest of
 * kern_mat_bytes); 0 for an unknown format. */
uint64_t kern_mat_weight_bytes(const kern_mat *m);

/* One weight element, dequantized (for tests and for embedding lookups). */
float kern_mat_get(const kern_mat *m, uint32_t row, uint32_t col);
/* Row r of m, dequantized into out [cols] (embedding lookup). */
void kern_mat_row(const kern_mat *m, uint32_t row, float *out);

/* out[i] = x[i] / sqrt(mean(x²) + eps) · w[i] for i < n. out may equal x. */
void kern_rmsnorm(float *out, const float *x, const float *w, uint32_t n, float eps);
/* kern_rmsnorm of each row of x [rows, n] into out [rows, n], the rows on the
 * kernels' threads. */
void kern_rmsnorm_rows(float *out, const float *x, const float *w, uint32_t rows, uint32_t n,
		       float eps);

/* gate[i] = silu(gate[i]) · up[i] for i < n. */
void kern_silu_mul(float *gate, const float *up, uint32_t n);

/* In-place softmax over x[0..n). */
void kern_softmax(float *x, uint32_t n);

/* y[i] += a · x[i]. */
void kern_axpy(float *y, float a, const float *x, uint32_t n);

/* Reads buf[0 .. n) once on the kernels' threads, in the products' task size
 * and with the widest loads the instruction-set path has, and does nothing
 * else with the bytes (they are folded into *checksum so that the reads
 * happen): the read rate a product reading each weight once can at best
 * reach. Returns 0, -ENOMEM or -EINVAL (n too large). */
int kern_read_pass(const void *buf, size_t n, uint64_t *checksum);

/* Runs fn(ctx, i) once for every i < n on the kernels' threads (the caller's
 * included) and returns when all calls have returned. Calls run concurrently
 * and in no particular order; a call made from inside fn, or while another
 * thread runs the pool, runs its calls inline on the calling thread. */
void kern_parallel_for(uint32_t n, void (*fn)(void *ctx, uint32_t i), void *ctx);

/* ---------------------------------------------------------------- scratch */

/* A scratch arena: blocks handed out by kern_arena_alloc live until the next
 * kern_arena_reset, and memory is kept across resets (after a reset that
 * followed growth, the blocks are merged into one), so an op called once per
 * token allocates nothing once warm. Used by one thread at a time. */
typedef struct kern_arena kern_arena;

/* Returns 0 or -ENOMEM. */
int kern_arena_create(kern_arena **out);
void kern_arena_destroy(kern_arena *a);
void kern_arena_reset(kern_arena *a);
/* 64-byte aligned, uninitialised; NULL when memory runs out. */
void *kern_arena_alloc(kern_arena *a, size_t bytes);

/* ---------------------------------------------------------------- model ops */

/* out [n, m->cols] = rows ids[i] of m, dequantized (embedding lookup).
 * Returns 0, or -EINVAL (nothing written) when an id is outside [0, m->rows). */
int kern_embed(const kern_mat *m, const int32_t *ids, uint32_t n, float *out);

/* RoPE as transformers' DeepSeek-V3 applies it, in place: for token t < n_tok,
 * head h < n_heads, v = x + t·tok_stride + h·head_stride + rope_off, i < half
 * = rope_dim/2:
 *   θ = (float)(pos0 + t) · inv_freq[i]   (a float32 product, as torch forms it)
 *   c = cos θ · mscale, s = sin θ · mscale, (a, b) = (v[2i], v[2i+1]) before:
 *   v[i] = a·c − b·s,  v[half + i] = b·c + a·s
 * i.e. interleaved pairs in, de-interleaved out (q_pe and k_pe both, so their
 * dot product is the reference's). rope_dim even, ≤ KERN_ROPE_MAX. */
#define KERN_ROPE_MAX 1024u
void kern_rope_rows(float *x, uint32_t n_tok, uint32_t n_heads, uint32_t tok_stride,
		    uint32_t head_stride, uint32_t rope_off, uint32_t rope_dim, uint32_t pos0,
		    const float *inv_freq, float mscale);

/* Sigmoid noaux_tc routing (transformers' DeepseekV3TopkRouter). */
typedef struct kern_router_params {
	uint32_t n_experts;        /* E, ≤ KERN_MAX_EXPERTS */
	uint32_t n_group;          /* divides E */
	uint32_t topk_group;       /* 1 … n_group */
	uint32_t top_k;            /* 1 … E */
	int norm_topk_prob;        /* bool */
	float routed_scaling_factor;
} kern_router_params;

/* Experts per MoE layer the router and the engine's per-layer tables take. */
#define KERN_MAX_EXPERTS 4096u

/* For T tokens: s = sigmoid(logits[t]); b = s + bias (bias NULL = 0); group
 * score = sum of the 2 largest b of each of n_group groups (the largest alone
 * for groups of one); the topk_group best groups are kept and b of every other
 * expert becomes 0.0; top_k experts by b, descending, ties to the lower index,
 * NaN last, into idx [T, top_k]; their weights s (divided by their sum + 1e-20
 * when norm_topk_prob) × routed_scaling_factor into w [T, top_k]. The tokens
 * run on the kernels' threads.
 * logits [T, E], bias [E]. Returns 0 or -EINVAL (parameters outside the
 * above; nothing written). */
int kern_router(const kern_router_params *p, const float *logits, const float *bias,
		uint32_t T, int32_t *idx, float *w);

/* One routed expert (SwiGLU) over a batch of rows:
 *   for b < batch:  t = rows ? rows[b] : b
 *     h = silu(gate · x[t]) ⊙ (up · x[t])
 *     y[t] += (weights ? weights[b] : 1) · (down · h)
 * mats: gate, up [I, H], down [H, I]; x, y [*, H]; rows distinct. The three
 * products are kern_matmul's with exact, else kern_matmul_fast's. Scratch
 * from a (reset by the call). Returns 0, -EINVAL (a matrix format) or
 * -ENOMEM. */
int kern_expert_ffn(const kern_mat mats[3], const float *x, uint32_t batch,
		    const int32_t *rows, const float *weights, float *y, int exact,
		    kern_arena *a);

/* ---------------------------------------------------------------- MLA attention */

/* Multi-head latent attention dimensions (config.json names in comments). */
typedef struct kern_mla_dims {
	uint32_t n_heads;   /* num_attention_heads */
	uint32_t kv_lora;   /* kv_lora_rank */
	uint32_t nope;      /* qk_nope_head_dim */
	uint32_t rope;      /* qk_rope_head_dim, even */
	uint32_t v;         /* v_head_dim */
} kern_mla_dims;

/* Appends T positions to one layer's compressed KV cache. kv_a [T, kv_lora +
 * rope] is kv_a_proj_with_mqa's output; for t < T:
 *   ckv[pos0 + t] = rmsnorm(kv_a[t][0 .. kv_lora), norm_w, eps)
 *   kpe[pos0 + t] = rope(kv_a[t][kv_lora ..), position pos0 + t)  (kern_rope_rows)
 * ckv [≥ pos0 + T, kv_lora], kpe [≥ pos0 + T, rope]. */
void kern_mla_cache_write(const kern_mla_dims *d, const float *kv_a, uint32_t T,
			  uint32_t pos0, const float *norm_w, float eps, const float *inv_freq,
			  float mscale, float *ckv, float *kpe);

/* kv_b_proj [n_heads·(nope + v), kv_lora] of one layer, prepared for
 * kern_mla_attn: the matrix itself (a view, the caller keeps it alive) and, per
 * head, W_knᵀ [kv_lora, nope] (BF16 stays BF16, other formats become float32)
 * and W_v [v, kv_lora] (a view where the format allows, else float32) for the
 * absorbed form. */
typedef struct kern_mla_w kern_mla_w;
/* Returns 0, -EINVAL (kv_b's shape is not the dims') or -ENOMEM. */
int kern_mla_prepare(const kern_mla_dims *d, const kern_mat *kv_b, kern_mla_w **out);
void kern_mla_free(kern_mla_w *w);
const kern_mat *kern_mla_kv_b(const kern_mla_w *w);

/* Attention of T new queries at positions pos0 … pos0+T-1 over cache positions
 * 0 … pos0+T-1 (query t sees keys ≤ pos0 + t), every head:
 *   q [T, n_heads, nope + rope]: q_b_proj's output with its rope part rotated;
 *   [k_nope | v] of head h at position s = rows h·(nope+v) … of kv_b · ckv[s];
 *   score(t, s) = (q_nope · k_nope[s] + q_pe · kpe[s]) · scale;
 *   out [T, n_heads, v] = softmax_s(score) · v[s].
 * One query (T = 1) runs the absorbed form (q_c = W_knᵀ q_nope scored against
 * ckv directly, out = W_v Σ p·c: the cache is never expanded); more expand
 * k_nope and v block by block with kv_b and fold the softmax online. Both are
 * exact in float32 up to rounding. Scratch from a (reset by the call).
 * Returns 0 or -ENOMEM. */
int kern_mla_attn(const kern_mla_w *w, const float *q, const float *ckv, const float *kpe,
		  uint32_t T, uint32_t pos0, float scale, float *out, kern_arena *a);

#endif /* K2_KERNELS_H */
