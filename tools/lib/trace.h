/* trace.h — routing traces (infer --trace, docs/trace.md) for bin/k2trace:
 * the reader, which checks a trace whole before anything uses it; the
 * statistics of expert popularity, reuse and co-activation; and the cache
 * simulator, which replays a trace through the engine's own replacement
 * policies (inf_policy_ops of infer/cache_policy.c) in the expert directory's
 * order of operations, plus Belady's optimum.
 *
 * Errors: 0 or -errno with one line in the k2_err naming the file and line
 * (layout.h's convention). Destructors accept NULL. */
#ifndef K2_TRACE_H
#define K2_TRACE_H

#include <stdint.h>
#include <stdio.h>

#include "infer.h"
#include "layout.h"

/* ---------------------------------------------------------------- reading */

/* The header line: the model's shape and the engine's options. */
typedef struct k2tr_header {
	uint32_t n_layers;        /* num_hidden_layers */
	uint32_t n_experts;       /* n_routed_experts (≤ 65535) */
	uint32_t top_k;           /* num_experts_per_tok */
	uint32_t n_moe;
	uint32_t *moe_layers;     /* [n_moe] ascending */
	uint64_t image_bytes;     /* expert_image_bytes */
	char backend[32], compute_tier[16], policy[16], prefetch[16];
	uint32_t expert_cache;    /* the compute tier's slots */
	uint32_t batch, n_seqs;
	int cpu_experts;
} k2tr_header;

typedef struct k2tr_trace {
	char *path;
	k2tr_header h;
	uint32_t n_tok;
	uint64_t n_steps;
	uint32_t *pos, *step;     /* [n_tok] */
	int32_t *token;           /* [n_tok] */
	uint16_t *experts;        /* [n_tok][n_moe][top_k] in top-k order */
	float *weights;           /* [n_tok][n_moe][top_k] (NaN: absent) */
	int has_weights;          /* every token line had "weights" */
} k2tr_trace;

/* Reads and checks a whole trace: the header first, then token lines whose
 * layers, expert counts and ids agree with it and whose steps count up from
 * 0, then the end line with the right totals. A file cut short (a line
 * without its newline, no end line), JSON that does not parse, or a line that
 * disagrees with the header fails with -EINVAL and a message "PATH:LINE: …".
 * *out is the caller's (k2tr_free). */
int k2tr_read(const char *path, k2tr_trace **out, k2_err *err);
void k2tr_free(k2tr_trace *t);

static inline const uint16_t *k2tr_experts(const k2tr_trace *t, uint32_t tok, uint32_t mi)
{
	return t->experts + ((size_t)tok * t->h.n_moe + mi) * t->h.top_k;
}

/* ---------------------------------------------------------------- statistics */

typedef struct k2tr_pair {
	uint16_t a, b;            /* a < b */
	uint64_t count;           /* tokens that chose both */
	double lift;              /* count / (count_a · count_b / tokens) */
} k2tr_pair;

typedef struct k2tr_layer_stats {
	uint32_t layer;
	uint64_t selections;      /* tokens · top_k */
	uint32_t used;            /* experts chosen at least once */
	uint32_t busiest;         /* the expert chosen most (lowest id on ties) */
	double busiest_share;     /* its share of the selections */
	double top10_share;       /* share of the busiest ceil(E/10) experts */
	double entropy_bits;      /* of the selection distribution */
	double entropy_max;       /* log2(E): uniform */
	double reuse_prev;        /* share of a token's experts the previous token also chose */
	uint32_t n_pairs;
	k2tr_pair *pairs;         /* [n_pairs] the most co-activated, most first */
} k2tr_layer_stats;

typedef struct k2tr_stats {
	uint32_t n_layers;        /* = header n_moe */
	k2tr_layer_stats *layers;
	uint64_t *counts;         /* [n_moe][E] selections per expert */
	double reuse_random;      /* top_k / E: the reuse of independent choices */
} k2tr_stats;

/* Computes the statistics of t, keeping the top `pairs` pairs per layer. */
int k2tr_stats_compute(const k2tr_trace *t, uint32_t pairs, k2tr_stats **out, k2_err *err);
void k2tr_stats_free(k2tr_stats *s);
/* For a person, and as one JSON object (a line). */
void k2tr_stats_print(FILE *f, const k2tr_trace *t, const k2tr_stats *s);
int k2tr_stats_print_json(FILE *f, const k2tr_trace *t, const k2tr_stats *s);
/* The profile of the `top` hottest experts (all MoE layers together, most
 * chosen first, ties by layer then expert): "# " comment lines, then one
 * "layer expert count" line each. Returns 0 or -errno with a message. */
int k2tr_profile_write(const char *path, const k2tr_trace *t, const k2tr_stats *s, uint32_t top,
		       k2_err *err);

/* ---------------------------------------------------------------- simulation */

/* Experts to keep resident: keys layer · n_experts + expert. */
typedef struct k2tr_pins {
	uint32_t n;
	uint32_t *keys;
} k2tr_pins;

/* Reads a profile (k2tr_profile_write's format) and checks each line against
 * t's header (a MoE layer, an expert < n_routed_experts, no repeats). */
int k2tr_pins_read(const char *path, const k2tr_trace *t, k2tr_pins *out, k2_err *err);
/* The n hottest experts of t (by selections; ties by key). */
int k2tr_pins_hot(const k2tr_trace *t, uint32_t n, k2tr_pins *out, k2_err *err);
void k2tr_pins_free(k2tr_pins *p);

typedef struct k2tr_sim_result {
	char policy[16];
	uint32_t slots, pinned;
	uint64_t acquisitions;    /* expert uses: per step and MoE layer, each expert once */
	uint64_t hits, misses, evictions;
	uint64_t pinned_hits;     /* of the hits, on pinned experts */
	uint64_t bytes_moved;     /* misses · image bytes */
	uint64_t pin_bytes;       /* loaded once, before the replay, for the pins */
} k2tr_sim_result;

/* One MoE layer's share of a replay (k2tr_sim_run's per_layer). */
typedef struct k2tr_sim_layer {
	uint64_t hits, misses;
} k2tr_sim_layer;

typedef struct k2tr_sim k2tr_sim;

/* Prepares the replay of t: per step, per MoE layer in order, the experts the
 * step's tokens chose, ascending (what the engine acquires), and each use's
 * next use for Belady. */
int k2tr_sim_create(const k2tr_trace *t, k2tr_sim **out, k2_err *err);
void k2tr_sim_free(k2tr_sim *s);
/* Replays the trace through a cache of `slots` experts with policy `pol`
 * (NULL: Belady's optimum, which evicts the expert whose next use is
 * farthest), as the CPU engine's compute tier does without prefetch: per
 * step and MoE layer, the experts present are acquired first (hits: the
 * policy's touch), then the absent ones (misses: a free slot, else the
 * policy's victim evicted, then insert and touch). Pinned experts are loaded
 * first and never evicted; pins must leave a slot. image_bytes sizes the
 * bytes moved. Returns 0 or -EINVAL / -ENOMEM with a message. */
int k2tr_sim_run(k2tr_sim *s, const inf_policy_ops *pol, uint32_t slots, const k2tr_pins *pins,
		 uint64_t image_bytes, k2tr_sim_result *out, k2_err *err);
/* The same, with each MoE layer's hits and misses in per_layer[n_moe] (the
 * header's order; NULL: not kept). */
int k2tr_sim_run_layers(k2tr_sim *s, const inf_policy_ops *pol, uint32_t slots,
			const k2tr_pins *pins, uint64_t image_bytes, k2tr_sim_result *out,
			k2tr_sim_layer *per_layer, k2_err *err);

#endif /* K2_TRACE_H */
