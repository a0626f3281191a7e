/* script_backend.h — a test backend: the CPU backend's ops (every op forwards
 * to a real CPU backend, so results are the CPU's bit for bit) plus device
 * slots in host memory whose loads land on a script: a load's data is in its
 * slot at once, but slot_poll answers "in flight" `polls` times before
 * "landed" (slot_begin_use and slot_wait land it at once). So the engine's
 * device tier — the expert directory's device mover, pins, the MoE layer's
 * ordering of ready / loading / missing experts — runs deterministically on
 * any machine, with loads that land between two looks at them.
 *
 * For test programs only: include it in one file. */
#ifndef K2_TESTS_SCRIPT_BACKEND_H
#define K2_TESTS_SCRIPT_BACKEND_H

#include "backend.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct script_backend {
	kern_backend base;
	kern_backend *cpu;       /* runs every op */
	kern_backend_ops ops;
	uint32_t polls;          /* "in flight" answers before "landed" */
};

struct kern_slots {
	struct script_backend *sb;
	uint32_t n;
	uint64_t bytes;
	uint8_t *mem;
	uint32_t *polls_left;
	int *rc;                 /* per slot: 0, the load's error, or -ENOENT before any */
	kern_slots_stats st;
};

static kern_backend *script_cpu(kern_backend *b) { return ((struct script_backend *)b)->cpu; }

#define SCRIPT_FWD(name, params, args) \
	static int script_##name params { return script_cpu(b)->ops->name args; }
SCRIPT_FWD(info, (kern_backend *b, kern_backend_info *out), (script_cpu(b), out))
SCRIPT_FWD(alloc, (kern_backend *b, size_t n, void **p), (script_cpu(b), n, p))
SCRIPT_FWD(host_alloc, (kern_backend *b, size_t n, void **p), (script_cpu(b), n, p))
SCRIPT_FWD(import, (kern_backend *b, const void *h, size_t n, const void **o), (script_cpu(b), h, n, o))
SCRIPT_FWD(upload, (kern_backend *b, void *d, const void *s, size_t n), (script_cpu(b), d, s, n))
SCRIPT_FWD(download, (kern_backend *b, void *d, const void *s, size_t n), (script_cpu(b), d, s, n))
SCRIPT_FWD(copy, (kern_backend *b, void *d, const void *s, size_t n), (script_cpu(b), d, s, n))
SCRIPT_FWD(memset, (kern_backend *b, void *d, int v, size_t n), (script_cpu(b), d, v, n))
SCRIPT_FWD(sync, (kern_backend *b), (script_cpu(b)))
SCRIPT_FWD(embed, (kern_backend *b, const kern_mat *m, const int32_t *ids, uint32_t n, float *o),
	   (script_cpu(b), m, ids, n, o))
SCRIPT_FWD(rmsnorm, (kern_backend *b, float *o, const float *x, const float *w, uint32_t r,
		     uint32_t n, float eps), (script_cpu(b), o, x, w, r, n, eps))
SCRIPT_FWD(matmul, (kern_backend *b, const kern_mat *m, const float *x, uint32_t n, float *y,
		    unsigned f), (script_cpu(b), m, x, n, y, f))
SCRIPT_FWD(silu_mul, (kern_backend *b, float *g, const float *u, uint32_t n), (script_cpu(b), g, u, n))
SCRIPT_FWD(add, (kern_backend *b, float *y, const float *x, size_t n), (script_cpu(b), y, x, n))
SCRIPT_FWD(rope, (kern_backend *b, float *x, uint32_t t, uint32_t h, uint32_t ts, uint32_t hs,
		  uint32_t off, uint32_t dim, uint32_t pos, const float *inv, float ms),
	   (script_cpu(b), x, t, h, ts, hs, off, dim, pos, inv, ms))
SCRIPT_FWD(router, (kern_backend *b, const kern_router_params *p, const float *l, const float *bias,
		    uint32_t T, int32_t *idx, float *w), (script_cpu(b), p, l, bias, T, idx, w))
SCRIPT_FWD(expert_ffn, (kern_backend *b, const kern_mat m[3], const float *x, uint32_t n,
			const int32_t *rows, const float *w, float *y, unsigned f),
	   (script_cpu(b), m, x, n, rows, w, y, f))
SCRIPT_FWD(mla_cache_write, (kern_backend *b, const kern_mla_dims *d, const float *kv_a, uint32_t T,
			     uint32_t pos, const float *nw, float eps, const float *inv, float ms,
			     float *ckv, float *kpe),
	   (script_cpu(b), d, kv_a, T, pos, nw, eps, inv, ms, ckv, kpe))
SCRIPT_FWD(mla_prepare, (kern_backend *b, const kern_mla_dims *d, const kern_mat *kv_b,
			 kern_attn_w **o), (script_cpu(b), d, kv_b, o))
SCRIPT_FWD(mla_attn, (kern_backend *b, const kern_attn_w *w, const float *q, const float *ckv,
		      const float *kpe, uint32_t T, uint32_t pos, float sc, float *o),
	   (script_cpu(b), w, q, ckv, kpe, T, pos, sc, o))
#undef SCRIPT_FWD

static void script_free(kern_backend *b, void *p) { script_cpu(b)->ops->free(script_cpu(b), p); }
static void script_host_free(kern_backend *b, void *p)
{
	script_cpu(b)->ops->host_free(script_cpu(b), p);
}
static void script_release(kern_backend *b, const void *p)
{
	script_cpu(b)->ops->release(script_cpu(b), p);
}
static void script_mla_free(kern_backend *b, kern_attn_w *w)
{
	script_cpu(b)->ops->mla_free(script_cpu(b), w);
}
static const char *script_error(const kern_backend *b)
{
	const kern_backend *c = ((const struct script_backend *)b)->cpu;
	return c->ops->error(c);
}

static void script_slots_destroy(kern_slots *s)
{
	if (!s)
		return;
	free(s->mem);
	free(s->polls_left);
	free(s->rc);
	free(s);
}

static int script_slots_create(kern_backend *b, const kern_slots_opts *o, kern_slots **out,
			       k2_err *err)
{
	kern_slots *s = calloc(1, sizeof(*s));
	*out = NULL;
	if (!s)
		return k2_err_set(err, -ENOMEM, "script slots: out of memory");
	s->sb = (struct script_backend *)b;
	s->n = o->n_slots;
	s->bytes = o->slot_bytes;
	s->mem = malloc((size_t)o->n_slots * o->slot_bytes + 1);
	s->polls_left = calloc(o->n_slots, sizeof(uint32_t));
	s->rc = malloc(sizeof(int) * o->n_slots);
	if (!s->mem || !s->polls_left || !s->rc) {
		script_slots_destroy(s);
		return k2_err_set(err, -ENOMEM, "script slots: out of memory");
	}
	for (uint32_t i = 0; i < s->n; i++)
		s->rc[i] = -ENOENT;
	*out = s;
	return 0;
}

static void *script_slot_ptr(kern_slots *s, uint32_t slot)
{
	return slot < s->n ? s->mem + (size_t)slot * s->bytes : NULL;
}

static int script_loaded(kern_slots *s, uint32_t slot, uint64_t len, int rc)
{
	s->rc[slot] = rc;
	s->polls_left[slot] = s->sb->polls;
	s->st.loads++;
	s->st.bytes += len;
	s->st.failed += rc < 0;
	return 0;
}

static int script_slot_load_fd(kern_slots *s, uint32_t slot, int fd, uint64_t off, uint64_t len,
			       int urgent)
{
	(void)urgent;
	if (slot >= s->n || len == 0 || len > s->bytes)
		return -EINVAL;
	ssize_t r = pread(fd, script_slot_ptr(s, slot), len, (off_t)off);
	return script_loaded(s, slot, len, r == (ssize_t)len ? 0 : r < 0 ? -EIO : -ENODATA);
}

static int script_slot_load_mem(kern_slots *s, uint32_t slot, const void *src, uint64_t len,
				int urgent)
{
	(void)urgent;
	if (slot >= s->n || len == 0 || len > s->bytes)
		return -EINVAL;
	memcpy(script_slot_ptr(s, slot), src, len);
	return script_loaded(s, slot, len, 0);
}

static int script_slot_wait(kern_slots *s, uint32_t slot, k2_err *err)
{
	if (slot >= s->n)
		return k2_err_set(err, -EINVAL, "script slots: slot %u out of range", slot);
	s->polls_left[slot] = 0;
	if (s->rc[slot] < 0)
		return k2_err_set(err, s->rc[slot], "script slots: slot %u: load failed (%d)", slot,
				  s->rc[slot]);
	return 0;
}

static int script_slot_end_use(kern_slots *s, uint32_t slot)
{
	return slot < s->n ? 0 : -EINVAL;
}

static int script_slot_poll(kern_slots *s, uint32_t slot)
{
	if (slot >= s->n)
		return -EINVAL;
	if (s->rc[slot] < 0)
		return s->rc[slot];
	if (s->polls_left[slot]) {
		s->polls_left[slot]--;
		return 0;
	}
	return 1;
}

static void script_slots_stats(kern_slots *s, kern_slots_stats *out) { *out = s->st; }

static void script_destroy(kern_backend *b)
{
	if (!b)
		return;
	kern_backend_close(script_cpu(b));
	free(b);
}

/* Opens a script backend whose slot loads land after `polls` polls. */
static inline int script_backend_open(uint32_t polls, kern_backend **out, k2_err *err)
{
	struct script_backend *sb = calloc(1, sizeof(*sb));
	*out = NULL;
	if (!sb)
		return k2_err_set(err, -ENOMEM, "out of memory");
	int rc = kern_backend_cpu_open(&sb->cpu, err);
	if (rc < 0) {
		free(sb);
		return rc;
	}
	sb->polls = polls;
	sb->ops = (kern_backend_ops){
		.name = "script",
		.destroy = script_destroy, .error = script_error, .info = script_info,
		.alloc = script_alloc, .free = script_free, .host_alloc = script_host_alloc,
		.host_free = script_host_free, .import = script_import, .release = script_release,
		.upload = script_upload, .download = script_download, .copy = script_copy,
		.memset = script_memset, .sync = script_sync, .embed = script_embed,
		.rmsnorm = script_rmsnorm, .matmul = script_matmul, .silu_mul = script_silu_mul,
		.add = script_add, .rope = script_rope, .router = script_router,
		.expert_ffn = script_expert_ffn, .mla_cache_write = script_mla_cache_write,
		.mla_prepare = script_mla_prepare, .mla_free = script_mla_free,
		.mla_attn = script_mla_attn,
		.slots_create = script_slots_create, .slots_destroy = script_slots_destroy,
		.slot_ptr = script_slot_ptr, .slot_load_fd = script_slot_load_fd,
		.slot_load_mem = script_slot_load_mem, .slot_begin_use = script_slot_wait,
		.slot_end_use = script_slot_end_use, .slot_wait = script_slot_wait,
		.slot_poll = script_slot_poll, .slots_stats = script_slots_stats,
	};
	sb->base.ops = &sb->ops;
	sb->base.host_memory = 1;
	*out = &sb->base;
	return 0;
}

#endif /* K2_TESTS_SCRIPT_BACKEND_H */
