/* backend.h — the one table of operations a compute backend fills, so that the
 * model code (infer/: forward pass, attention, MoE layer, prefetch, expert
 * directory) is written once and never knows which device runs an op — the
 * way ggml's `struct ggml_backend_i` keeps its model code free of devices.
 *
 * Backends: "cpu" (backend_cpu.c: the plain C kernels of kernels.h, which are
 * also the reference; its memory is host memory) and "cuda" (backend_cuda.c
 * over kernels/backend_cuda.h; in a build without CUDA it fails to open with
 * -ENOTSUP and a clear message).
 *
 * Conventions for every entry:
 *   - "backend memory" is what alloc returns (device memory on CUDA, host
 *     memory on the CPU); op arguments named as tensors are backend memory,
 *     and so are kern_mat.w / .s of the matrices given to ops (from import, or
 *     inside an expert slot);
 *   - ops and queued copies run in the order they are issued; upload,
 *     download and sync return when done; the first error of queued work is
 *     returned by the next download or sync;
 *   - entries return 0 or -errno: -EINVAL for arguments outside the stated
 *     contract (nothing is done), -ENOMEM, -EIO for any other failure of the
 *     device; error() then gives one line naming the op and the cause;
 *   - a backend is used by one thread at a time (its slots have their own
 *     threads and are safe to drive from the thread that uses the backend).
 * Contracts of the ops themselves are those of the C functions of kernels.h
 * named beside each entry. */
#ifndef K2_BACKEND_H
#define K2_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "layout.h"

typedef struct kern_backend kern_backend;
typedef struct kern_backend_ops kern_backend_ops;
/* One MLA layer's kv_b_proj as a backend prepared it (mla_prepare). */
typedef struct kern_attn_w kern_attn_w;
/* A pool of device slots for expert images (the device tier's memory). */
typedef struct kern_slots kern_slots;

/* matmul flags */
#define KERN_MM_ACCUMULATE 1u  /* y += x·Wᵀ instead of y = x·Wᵀ */
#define KERN_MM_EXACT      2u  /* float32 activations and sums (kern_matmul); without
                                  it a backend may round the activations for its
                                  dot-product instructions (the CPU: kern_matmul_fast;
                                  CUDA: bf16 for tensor cores from batch 64); the
                                  routers always ask for it */

typedef struct kern_backend_info {
	char device[256];         /* what runs the ops ("CPU, 2 threads", a GPU's name) */
	uint64_t mem_total, mem_free;  /* backend memory (0 when unknown) */
} kern_backend_info;

/* Device slot pool sizing (slots_create). */
typedef struct kern_slots_opts {
	uint32_t n_slots;        /* slots, allocated once */
	uint64_t slot_bytes;     /* bytes per slot: the largest image it will hold */
	uint32_t io_threads;     /* reader threads; 0 = 4 */
	uint32_t n_staging;      /* staging buffers; 0 = 2 per reader */
	uint64_t staging_bytes;  /* bytes per staging buffer; 0 = 8 MiB */
} kern_slots_opts;

typedef struct kern_slots_stats {
	uint64_t loads;          /* loads finished (landed or failed) */
	uint64_t failed;         /* of which failed */
	uint64_t bytes;          /* bytes copied into slots */
	double read_seconds;     /* summed over readers: pread / memcpy into staging */
	double wait_seconds;     /* begin_use / wait blocked on the host */
} kern_slots_stats;

struct kern_backend_ops {
	const char *name;
	/* Waits for queued work and frees everything the backend owns. */
	void (*destroy)(kern_backend *b);
	/* One line on the last failed entry ("" when none). */
	const char *(*error)(const kern_backend *b);
	int (*info)(kern_backend *b, kern_backend_info *out);

	/* ---- memory */
	int (*alloc)(kern_backend *b, size_t bytes, void **p);       /* uninitialised */
	void (*free)(kern_backend *b, void *p);                      /* NULL is fine */
	/* host memory the backend copies from fastest (pinned on CUDA) */
	int (*host_alloc)(kern_backend *b, size_t bytes, void **p);
	void (*host_free)(kern_backend *b, void *p);
	/* Read-only weights: *out is backend memory holding the n bytes at host
	 * (on the CPU, host itself, which must then outlive it). release(out). */
	int (*import)(kern_backend *b, const void *host, size_t n, const void **out);
	void (*release)(kern_backend *b, const void *p);
	int (*upload)(kern_backend *b, void *dst, const void *src, size_t n);
	int (*download)(kern_backend *b, void *dst, const void *src, size_t n);
	/* queued: between backend memory and backend or host_alloc memory */
	int (*copy)(kern_backend *b, void *dst, const void *src, size_t n);
	int (*memset)(kern_backend *b, void *dst, int byte, size_t n);
	int (*sync)(kern_backend *b);

	/* ---- ops (kernels.h) */
	int (*embed)(kern_backend *b, const kern_mat *m, const int32_t *ids, uint32_t n,
		     float *out);                                            /* kern_embed */
	int (*rmsnorm)(kern_backend *b, float *out, const float *x, const float *w,
		       uint32_t rows, uint32_t n, float eps);                /* kern_rmsnorm_rows */
	int (*matmul)(kern_backend *b, const kern_mat *m, const float *x, uint32_t batch,
		      float *y, unsigned flags);        /* kern_matmul, kern_matmul_fast */
	int (*silu_mul)(kern_backend *b, float *gate, const float *up, uint32_t n);
	int (*add)(kern_backend *b, float *y, const float *x, size_t n);     /* y += x */
	int (*rope)(kern_backend *b, float *x, uint32_t n_tok, uint32_t n_heads,
		    uint32_t tok_stride, uint32_t head_stride, uint32_t rope_off,
		    uint32_t rope_dim, uint32_t pos0, const float *inv_freq,
		    float mscale);                                           /* kern_rope_rows */
	int (*router)(kern_backend *b, const kern_router_params *p, const float *logits,
		      const float *bias, uint32_t T, int32_t *idx, float *w); /* kern_router */
	/* flags: KERN_MM_EXACT or 0, as for matmul */
	int (*expert_ffn)(kern_backend *b, const kern_mat mats[3], const float *x,
			  uint32_t batch, const int32_t *rows, const float *weights,
			  float *y, unsigned flags);                         /* kern_expert_ffn */
	int (*mla_cache_write)(kern_backend *b, const kern_mla_dims *d, const float *kv_a,
			       uint32_t T, uint32_t pos0, const float *norm_w, float eps,
			       const float *inv_freq, float mscale, float *ckv,
			       float *kpe);                                  /* kern_mla_cache_write */
	/* kv_b_host: the layer's kv_b_proj in host memory (the backend keeps what
	 * it needs; the CPU views it, so it must outlive the result). */
	int (*mla_prepare)(kern_backend *b, const kern_mla_dims *d, const kern_mat *kv_b_host,
			   kern_attn_w **out);                               /* kern_mla_prepare */
	void (*mla_free)(kern_backend *b, kern_attn_w *w);
	int (*mla_attn)(kern_backend *b, const kern_attn_w *w, const float *q,
			const float *ckv, const float *kpe, uint32_t T, uint32_t pos0,
			float scale, float *out);                            /* kern_mla_attn */

	/* ---- device expert slots. NULL where backend memory is host memory: an
	 * expert's RAM copy is then used where it lies.
	 * A slot's life: slot_load_fd / slot_load_mem (returns at once) →
	 * slot_begin_use (ops issued after it see the slot's data) → ops reading
	 * slot_ptr() → slot_end_use (a later load into the slot waits for them). */
	int (*slots_create)(kern_backend *b, const kern_slots_opts *o, kern_slots **out,
			    k2_err *err);
	void (*slots_destroy)(kern_slots *s);   /* finishes the loads in flight; NULL is fine */
	void *(*slot_ptr)(kern_slots *s, uint32_t slot);
	/* Bytes [off, off + len) of fd (kept open by the caller until the load has
	 * ended), or src[0 .. len) (valid until then). urgent: ahead of the queued
	 * non-urgent loads. Returns 0, -EINVAL or -EBUSY (that slot is loading). */
	int (*slot_load_fd)(kern_slots *s, uint32_t slot, int fd, uint64_t off, uint64_t len,
			    int urgent);
	int (*slot_load_mem)(kern_slots *s, uint32_t slot, const void *src, uint64_t len,
			     int urgent);
	/* 0, or the load's error (-EIO, -ENODATA: file shorter) with a message;
	 * -ENOENT for a slot never loaded. */
	int (*slot_begin_use)(kern_slots *s, uint32_t slot, k2_err *err);
	int (*slot_end_use)(kern_slots *s, uint32_t slot);
	/* Blocks until the slot's data has landed; returns as slot_begin_use. */
	int (*slot_wait)(kern_slots *s, uint32_t slot, k2_err *err);
	/* 1 landed, 0 in flight, < 0 its error. */
	int (*slot_poll)(kern_slots *s, uint32_t slot);
	void (*slots_stats)(kern_slots *s, kern_slots_stats *out);
};

/* Every backend object starts with this. */
struct kern_backend {
	const kern_backend_ops *ops;
	int host_memory;   /* 1 when backend memory is host memory (no copies needed) */
};

/* Opens backend `name` ("cpu", "cuda") on `device` (CUDA's device index; the
 * CPU ignores it). Returns 0, -ENOENT (unknown name), -ENOTSUP (not built
 * in), -ENODEV (no such device) or -ENOMEM / -EIO, with one line in err. */
int kern_backend_open(const char *name, int device, kern_backend **out, k2_err *err);
void kern_backend_close(kern_backend *b);
/* 1 when `name` names a backend of this build (available or not). */
int kern_backend_known(const char *name);
/* 1 when `name` is built in and has a device that answers. */
int kern_backend_available(const char *name);
/* The backend to use when none is named: "cuda" where a device answers,
 * else "cpu". */
const char *kern_backend_default(void);
/* "cpu, cuda" — the names known to this build, for usage texts. */
const char *kern_backend_names(void);

/* The CPU backend's and the CUDA backend's constructors (backend.c calls them). */
int kern_backend_cpu_open(kern_backend **out, k2_err *err);
int kern_backend_cuda_open(int device, kern_backend **out, k2_err *err);
int kern_backend_cuda_available(void);

#endif /* K2_BACKEND_H */
