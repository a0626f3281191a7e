/* scheduler_impl.h — what scheduler.c (jobs, the step loop) and scheduler_map.c (the
 * expert map and the engine's counters) share. Not for other files. */
#ifndef K2_SERVE_SCHEDULER_IMPL_H
#define K2_SERVE_SCHEDULER_IMPL_H

#include <pthread.h>

#include "scheduler.h"

struct srv_job {
	srv_sched *s;
	/* set at submission, then read only by the scheduler's thread */
	int32_t *prompt;
	uint32_t n_prompt, max_tokens;
	inf_sampler *smp;
	api_stop *stop;
	inf_tok_stream *detok; /* NULL without a tokenizer */
	double t_submit;
	/* the scheduler's thread only */
	uint32_t seq;          /* its sequence while it holds a slot */
	uint32_t fed;          /* prompt ids run so far */
	int32_t next_id;       /* the last id sampled, run by the next step */
	double t_first, t_last;
	/* under s->mu */
	enum srv_job_state state;
	enum api_finish finish;
	uint32_t generated;
	uint32_t polled;       /* generated as of the last srv_job_poll */
	char *out;             /* text not yet taken by srv_job_poll */
	size_t out_len, out_cap;
	int out_failed;        /* appending ran out of memory: the job fails */
	bool cancel;
	int refs;              /* the caller's and, until it ends, the scheduler's */
	char message[256];
	srv_job *next;         /* in the queue */
};

/* The expert map's state, refreshed by the scheduler's thread. */
struct sched_map {
	uint32_t n_layers, n_experts, top_k; /* config */
	uint32_t *layers;      /* [n_moe] MoE layer indices */
	uint32_t n_moe;
	int tiers[INF_TIERS];  /* the tiers the directory has, fastest first */
	uint32_t n_tiers;      /* + "disk" after them */
	uint64_t *hits;        /* [n_layers · n_experts] uses, counted per step */
	uint8_t *where;        /* [n_moe · n_experts] index into tiers (n_tiers: disk) */
	inf_tier_stats tier_stats[INF_TIERS];
	inf_prefetch_stats prefetch;
	double refreshed;      /* k2_now() of the last refresh */
	double rate_t0, rate_t1;       /* tokens/s over a window of 2 to 4 s */
	uint64_t rate_g0, rate_g1;
	double tokens_per_s;
};

struct srv_sched {
	inf_engine *e;
	inf_tok *tok;
	uint32_t vocab, n_slots, max_ctx, max_batch, queue_max;
	int32_t stop_ids[4];
	pthread_t thread;
	int thread_started;
	pthread_mutex_t mu;
	pthread_cond_t wake;   /* the scheduler: a job arrived, was cancelled, or stop */
	pthread_cond_t news;   /* pollers: text or an end */
	srv_job **slot;        /* [n_slots]: the job holding sequence i, or NULL */
	srv_job *qhead, *qtail;
	uint32_t n_queued;
	bool stopping, shut;
	struct srv_sched_stats st;
	struct sched_map map;  /* under mu, written by the scheduler's thread */
	/* step buffers (the scheduler's thread) */
	inf_seg *segs;
	srv_job **seg_job;
	int32_t *ids;
	float *logits;
};

/* scheduler_map.c: sets up the map (0 or -ENOMEM); counts the routes of the step
 * just run; refreshes tiers and counters when `force` or 200 ms have passed.
 * The last two on the scheduler's thread, with mu held. */
int sched_map_init(srv_sched *s);
void sched_map_free(srv_sched *s);
void sched_map_count_routes(srv_sched *s);
void sched_map_refresh(srv_sched *s, bool force);

#endif
