/* scheduler.h — k2serve's scheduler: one thread owns the engine and runs every
 * admitted request together. Each iteration is one inf_engine_step over all
 * of them: one token of each request that is generating, and the next chunk
 * of each prompt still being read, up to the engine's batch. So a routed
 * expert is computed once per step for every sequence that chose it: with
 * several streams, one pass over an expert's bytes serves them all.
 *
 * A request (a job) holds one of the engine's sequences (slots) from its
 * admission to its end; beyond the slots, a bounded queue waits in order, and
 * a submission beyond that is refused (-EBUSY: the server answers 429). The
 * connection's thread submits a job, then polls it for the text generated so
 * far; it may cancel it (the client went away), and the scheduler drops a
 * cancelled job before its next token and frees its sequence.
 *
 * Text: each generated id goes through the tokenizer's streaming decoder
 * (special tokens skipped) and the request's stop strings, so the text a
 * poll returns is final. Generation ends at a stop id (end of sequence, end of
 * turn), a stop string, max_tokens or the context's end.
 *
 * Errors: 0 or -errno. Thread-safe: any thread may submit, poll, cancel and
 * release; the engine is touched only by the scheduler's thread. */
#ifndef K2_SERVE_SCHEDULER_H
#define K2_SERVE_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "infer.h"
#include "tokenizer.h"

typedef struct srv_sched srv_sched;
typedef struct srv_job srv_job;

struct srv_sched_opts {
	uint32_t queue;  /* jobs that may wait for a slot (0: none wait) */
	/* ids that end a generation (end of sequence, end of turn); -1 entries
	 * are ignored */
	int32_t stop_ids[4];
};

/* Starts the scheduler over e (its inf_engine_n_seqs sequences are the
 * slots) and tok, both borrowed and outliving it. tok may be NULL: jobs then
 * produce ids only (no text; stop strings never match). 0 or -errno with err. */
int srv_sched_new(inf_engine *e, inf_tok *tok, const struct srv_sched_opts *o,
		  srv_sched **out, k2_err *err);
/* Ends every job (as srv_sched_shutdown), stops the thread, frees. */
void srv_sched_free(srv_sched *s);
/* Refuses new jobs from now on (-ESHUTDOWN) and ends the running and queued
 * ones with SRV_JOB_SHUTDOWN; returns at once. */
void srv_sched_shutdown(srv_sched *s);

struct srv_job_params {
	const int32_t *prompt;  /* [n_prompt] ids, copied; n_prompt >= 1 */
	uint32_t n_prompt;
	uint32_t max_tokens;    /* 0: up to the context's end */
	float temperature;      /* 0: greedy */
	float top_p;
	uint64_t seed;
	const char *const *stop;  /* [n_stop] stop strings (api_stop), copied */
	const size_t *stop_len;
	uint32_t n_stop;
};

/* Submits a job. Returns 0 and *out (one reference for the caller, dropped
 * with srv_job_release), -EBUSY when every slot is taken and the queue is
 * full, -E2BIG when n_prompt + max_tokens (or n_prompt alone, with max_tokens
 * 0) does not fit the context, -EINVAL for bad parameters, -ESHUTDOWN after
 * srv_sched_shutdown, -ENOMEM. */
int srv_job_submit(srv_sched *s, const struct srv_job_params *p, srv_job **out);

enum srv_job_state {
	SRV_JOB_QUEUED = 0,  /* waiting for a slot */
	SRV_JOB_RUNNING,     /* reading its prompt or generating */
	SRV_JOB_DONE,        /* ended: finish says why */
	SRV_JOB_FAILED,      /* the engine failed; message says how */
	SRV_JOB_SHUTDOWN,    /* the server is stopping */
	SRV_JOB_CANCELLED,   /* srv_job_cancel */
};

struct srv_job_status {
	enum srv_job_state state;
	enum api_finish finish;     /* SRV_JOB_DONE: stop or length */
	uint32_t prompt_tokens, completion_tokens;
	double ttft_s;              /* submission to first token; 0 before it */
	double decode_s;            /* first token to the last */
	char message[256];          /* SRV_JOB_FAILED */
};

/* True for the states after which nothing more comes. */
bool srv_job_ended(enum srv_job_state st);

/* Moves the text generated since the last call into *text (malloc'd, the
 * caller frees it; NULL and *len 0 when there is none) and fills *st. When
 * there is no new text, no new id and the job has not ended, waits up to
 * timeout_ms for one of them. 0 or -ENOMEM. */
int srv_job_poll(srv_job *j, int timeout_ms, char **text, size_t *len, struct srv_job_status *st);
/* The client is gone: the job ends (SRV_JOB_CANCELLED) before its next token
 * and its sequence is freed. */
void srv_job_cancel(srv_job *j);
/* Drops the caller's reference (a job not ended is cancelled first). */
void srv_job_release(srv_job *j);

/* What the scheduler has done since it started. */
struct srv_sched_stats {
	uint64_t steps;              /* inf_engine_step calls */
	uint64_t generated_tokens;   /* ids sampled */
	uint64_t prompt_tokens;      /* prompt ids run */
	uint64_t decode_steps;       /* steps that generated at least one id */
	double step_s;               /* time inside inf_engine_step */
	uint64_t expert_bytes_used;  /* expert images the steps applied, each once per step */
	uint64_t bytes_read;         /* expert bytes read from the mount into every tier,
	                                as of the last step */
	uint32_t active, queued;     /* jobs now */
	uint64_t jobs_done, jobs_cancelled, jobs_refused;
};
void srv_sched_stats(srv_sched *s, struct srv_sched_stats *out);

/* The expert map GET /k2/experts serves, as refreshed by the scheduler's
 * thread (at most every 200 ms while it steps, and when it goes idle):
 *   {"model", "n_experts", "layers": [MoE layer indices], "tiers": [names,
 *    fastest first, then "disk"], "tier": [[index into tiers]…] per layer,
 *    "hits": [[uses since start]…] per layer, "hit_rate": {tier: hits /
 *    (hits + misses)}, "tokens_per_s" (generated tokens over step time of the
 *    last few seconds), "tokens", "requests", "active", "queued"}.
 * model names the model in it. Malloc'd, *len its length; NULL when out of
 * memory. */
char *srv_sched_experts_json(srv_sched *s, const char *model, size_t *len);

/* Fills the (set) fields of m from the engine's counters as of the last
 * refresh (tiers, prefetch, bytes read, active and queued jobs) and stores
 * the running totals of prompt and generated tokens (which then are not
 * added with api_metrics_tokens). */
void srv_sched_metrics(srv_sched *s, struct api_metrics *m);

#endif
