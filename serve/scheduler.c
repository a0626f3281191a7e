/* scheduler.c — jobs and the step loop (contract in scheduler.h).
 *
 * One thread runs `loop`: admit queued jobs into free sequences, drop the
 * cancelled ones, plan one step (a token for each generating job, then prompt
 * chunks in arrival order up to the engine's batch), run it with the lock
 * released, then sample each finished segment's next id, turn it into text
 * and wake the pollers. Only this thread touches the engine and a running
 * job's sampler, decoder and stop matcher. */
#include "scheduler_impl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

bool srv_job_ended(enum srv_job_state st) { return st >= SRV_JOB_DONE; }

static void job_free(srv_job *j)
{
	inf_sampler_destroy(j->smp);
	api_stop_free(j->stop);
	inf_tok_stream_free(j->detok);
	free(j->prompt);
	free(j->out);
	free(j);
}

/* Drops one reference; mu held. Returns true when the job was freed. */
static bool job_unref(srv_job *j)
{
	if (--j->refs > 0)
		return false;
	job_free(j);
	return true;
}

/* Appends text for the pollers; mu held. */
static void job_append(srv_job *j, const char *text, size_t len)
{
	if (!len || j->out_failed)
		return;
	if (j->out_len + len > j->out_cap) {
		size_t cap = j->out_cap ? j->out_cap : 256;
		while (cap < j->out_len + len)
			cap *= 2;
		char *p = realloc(j->out, cap);
		if (!p) {
			j->out_failed = 1;
			return;
		}
		j->out = p;
		j->out_cap = cap;
	}
	memcpy(j->out + j->out_len, text, len);
	j->out_len += len;
}

/* Ends a job that holds slot i or sits nowhere; mu held. The scheduler's
 * reference goes. */
static void job_end(srv_sched *s, srv_job *j, enum srv_job_state st, const char *fmt, ...)
{
	j->state = j->out_failed && st == SRV_JOB_DONE ? SRV_JOB_FAILED : st;
	if (j->out_failed && st == SRV_JOB_DONE)
		snprintf(j->message, sizeof(j->message), "out of memory for the generated text");
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(j->message, sizeof(j->message), fmt, ap);
		va_end(ap);
	}
	if (j->state == SRV_JOB_CANCELLED)
		s->st.jobs_cancelled++;
	else
		s->st.jobs_done++;
	pthread_cond_broadcast(&s->news);
	job_unref(j);
}

/* ---------------------------------------------------------------- submission */

static int job_new(srv_sched *s, const struct srv_job_params *p, srv_job **out)
{
	srv_job *j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->s = s;
	j->n_prompt = p->n_prompt;
	j->max_tokens = p->max_tokens;
	j->prompt = malloc(sizeof(int32_t) * p->n_prompt);
	int rc = j->prompt ? 0 : -ENOMEM;
	if (rc == 0) {
		memcpy(j->prompt, p->prompt, sizeof(int32_t) * p->n_prompt);
		rc = inf_sampler_create(s->vocab, p->temperature, p->top_p, p->seed, &j->smp);
	}
	if (rc == 0)
		rc = api_stop_new(p->stop, p->stop_len, p->n_stop, &j->stop);
	if (rc == 0 && s->tok)
		rc = inf_tok_stream_new(s->tok, INF_TOK_SKIP_SPECIAL, &j->detok);
	if (rc < 0) {
		job_free(j);
		return rc;
	}
	*out = j;
	return 0;
}

int srv_job_submit(srv_sched *s, const struct srv_job_params *p, srv_job **out)
{
	*out = NULL;
	if (!p->prompt || p->n_prompt == 0)
		return -EINVAL;
	for (uint32_t i = 0; i < p->n_prompt; i++)
		if (p->prompt[i] < 0 || (uint32_t)p->prompt[i] >= s->vocab)
			return -EINVAL;
	if ((uint64_t)p->n_prompt + (p->max_tokens ? p->max_tokens : 1) > s->max_ctx)
		return -E2BIG;
	srv_job *j;
	int rc = job_new(s, p, &j);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&s->mu);
	uint32_t running = 0;
	for (uint32_t i = 0; i < s->n_slots; i++)
		running += s->slot[i] != NULL;
	if (s->shut)
		rc = -ESHUTDOWN;
	else if (running == s->n_slots && s->n_queued >= s->queue_max)
		rc = -EBUSY;
	if (rc < 0) {
		s->st.jobs_refused += rc == -EBUSY;
		pthread_mutex_unlock(&s->mu);
		job_free(j);
		return rc;
	}
	j->refs = 2;
	j->state = SRV_JOB_QUEUED;
	j->t_submit = k2_now();
	if (s->qtail)
		s->qtail->next = j;
	else
		s->qhead = j;
	s->qtail = j;
	s->n_queued++;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->mu);
	*out = j;
	return 0;
}

static void fill_status(const srv_job *j, struct srv_job_status *st)
{
	*st = (struct srv_job_status){
		.state = j->state,
		.finish = j->finish,
		.prompt_tokens = j->n_prompt,
		.completion_tokens = j->generated,
		.ttft_s = j->t_first > 0 ? j->t_first - j->t_submit : 0,
		.decode_s = j->t_first > 0 ? j->t_last - j->t_first : 0,
	};
	memcpy(st->message, j->message, sizeof(st->message));
}

int srv_job_poll(srv_job *j, int timeout_ms, char **text, size_t *len, struct srv_job_status *st)
{
	srv_sched *s = j->s;
	*text = NULL;
	*len = 0;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&s->mu);
	while (j->out_len == 0 && j->generated == j->polled && !srv_job_ended(j->state) &&
	       timeout_ms > 0)
		if (pthread_cond_timedwait(&s->news, &s->mu, &until) == ETIMEDOUT)
			break;
	j->polled = j->generated;
	int rc = 0;
	if (j->out_len) {
		char *t = malloc(j->out_len + 1);
		if (t) {
			memcpy(t, j->out, j->out_len);
			t[j->out_len] = 0;
			*text = t;
			*len = j->out_len;
			j->out_len = 0;
		} else
			rc = -ENOMEM;
	}
	fill_status(j, st);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

void srv_job_cancel(srv_job *j)
{
	srv_sched *s = j->s;
	pthread_mutex_lock(&s->mu);
	if (!srv_job_ended(j->state)) {
		j->cancel = true;
		pthread_cond_signal(&s->wake);
	}
	pthread_mutex_unlock(&s->mu);
}

void srv_job_release(srv_job *j)
{
	if (!j)
		return;
	srv_sched *s = j->s;
	pthread_mutex_lock(&s->mu);
	if (!srv_job_ended(j->state)) {
		j->cancel = true;
		pthread_cond_signal(&s->wake);
	}
	job_unref(j);
	pthread_mutex_unlock(&s->mu);
}

/* ---------------------------------------------------------------- the loop */

/* Queued jobs into free sequences, cancelled and shut-down jobs out; mu held. */
static void admit(srv_sched *s)
{
	for (uint32_t i = 0; i < s->n_slots; i++) {
		srv_job *j = s->slot[i];
		if (j && (j->cancel || s->shut)) {
			s->slot[i] = NULL;
			inf_engine_seq_reset(s->e, i);
			job_end(s, j, j->cancel ? SRV_JOB_CANCELLED : SRV_JOB_SHUTDOWN,
				j->cancel ? NULL : "the server is shutting down");
		}
	}
	/* the queue: drop what is cancelled, admit in order */
	srv_job **pp = &s->qhead, *last = NULL;
	while (*pp) {
		srv_job *j = *pp;
		if (j->cancel || s->shut) {
			*pp = j->next;
			s->n_queued--;
			job_end(s, j, j->cancel ? SRV_JOB_CANCELLED : SRV_JOB_SHUTDOWN,
				j->cancel ? NULL : "the server is shutting down");
			continue;
		}
		last = j;
		pp = &j->next;
	}
	s->qtail = last;
	for (uint32_t i = 0; i < s->n_slots && s->qhead; i++) {
		if (s->slot[i])
			continue;
		srv_job *j = s->qhead;
		s->qhead = j->next;
		if (!s->qhead)
			s->qtail = NULL;
		j->next = NULL;
		s->n_queued--;
		j->seq = i;
		j->state = SRV_JOB_RUNNING;
		inf_engine_seq_reset(s->e, i);
		s->slot[i] = j;
	}
}

/* The step's segments: one token of each generating job, then prompt chunks
 * in sequence order up to the batch. Returns the number of segments. */
static uint32_t plan(srv_sched *s, uint32_t *n_ids)
{
	uint32_t n = 0, used = 0;
	for (uint32_t i = 0; i < s->n_slots; i++) {
		srv_job *j = s->slot[i];
		if (!j || j->fed < j->n_prompt || used == s->max_batch)
			continue;
		s->segs[n] = (inf_seg){.seq = i, .n = 1};
		s->seg_job[n++] = j;
		s->ids[used++] = j->next_id;
	}
	for (uint32_t i = 0; i < s->n_slots && used < s->max_batch; i++) {
		srv_job *j = s->slot[i];
		if (!j || j->fed == j->n_prompt)
			continue;
		uint32_t k = j->n_prompt - j->fed;
		if (k > s->max_batch - used)
			k = s->max_batch - used;
		memcpy(s->ids + used, j->prompt + j->fed, sizeof(int32_t) * k);
		s->segs[n] = (inf_seg){.seq = i, .n = k};
		s->seg_job[n++] = j;
		used += k;
	}
	*n_ids = used;
	return n;
}

static bool is_stop_id(const srv_sched *s, int32_t id)
{
	for (int i = 0; i < 4; i++)
		if (s->stop_ids[i] >= 0 && s->stop_ids[i] == id)
			return true;
	return false;
}

/* Text through the stop matcher; true when a stop string ended it. mu held. */
static bool emit(srv_job *j, const char *text, size_t len)
{
	const char *e;
	size_t n;
	int r = api_stop_feed(j->stop, text, len, &e, &n);
	if (r < 0) {
		j->out_failed = 1;
		return false;
	}
	job_append(j, e, n);
	return r == 1;
}

/* A generating job's new id: text, and whether it ends the job; mu held. */
static void take_id(srv_sched *s, srv_job *j, int32_t id, double now)
{
	j->generated++;
	if (j->t_first == 0)
		j->t_first = now;
	j->t_last = now;
	j->next_id = id;
	s->st.generated_tokens++;
	bool stop = is_stop_id(s, id);
	if (!stop && j->detok) {
		const char *t;
		size_t n;
		if (inf_tok_stream_feed(j->detok, id, &t, &n) < 0)
			j->out_failed = 1;
		else
			stop = emit(j, t, n);
	}
	bool length = !stop && ((j->max_tokens && j->generated >= j->max_tokens) ||
				inf_engine_seq_pos(s->e, j->seq) >= s->max_ctx);
	if (!stop && !length)
		return;
	if (length && j->detok) {
		const char *t, *e;
		size_t n, m;
		inf_tok_stream_flush(j->detok, &t, &n);
		if (!emit(j, t, n)) {
			api_stop_flush(j->stop, &e, &m);
			job_append(j, e, m);
		}
	}
	j->finish = stop ? API_FINISH_STOP : API_FINISH_LENGTH;
	s->slot[j->seq] = NULL;
	inf_engine_seq_reset(s->e, j->seq);
	job_end(s, j, SRV_JOB_DONE, NULL);
}

/* Runs one step; mu held on entry and exit, released around the engine. */
static void step(srv_sched *s)
{
	uint32_t n_ids;
	uint32_t n_segs = plan(s, &n_ids);
	if (!n_segs)
		return;
	pthread_mutex_unlock(&s->mu);
	k2_err err = {{0}};
	double t0 = k2_now();
	int rc = inf_engine_step(s->e, s->segs, n_segs, s->ids, s->logits, &err);
	double now = k2_now();
	uint64_t used_bytes = rc == 0 ? inf_engine_expert_bytes_used(s->e) : 0, bytes_read = 0;
	for (int t = 0; t < INF_TIERS; t++) {
		inf_tier_stats ts;
		inf_engine_tier_stats(s->e, t, &ts);
		bytes_read += ts.bytes_read;
	}
	/* sampling needs no lock: the samplers belong to this thread */
	int32_t *next = s->ids; /* reused: one id per segment */
	for (uint32_t i = 0; rc == 0 && i < n_segs; i++) {
		srv_job *j = s->seg_job[i];
		bool prompt_left = j->fed < j->n_prompt && j->fed + s->segs[i].n < j->n_prompt;
		next[i] = prompt_left ? -1
				      : inf_sampler_next(j->smp, s->logits + (size_t)i * s->vocab);
	}
	pthread_mutex_lock(&s->mu);
	s->st.steps++;
	s->st.step_s += now - t0;
	if (rc < 0) {
		for (uint32_t i = 0; i < n_segs; i++) {
			srv_job *j = s->seg_job[i];
			s->slot[j->seq] = NULL;
			inf_engine_seq_reset(s->e, j->seq);
			job_end(s, j, SRV_JOB_FAILED, "%s", err.msg);
		}
		return;
	}
	s->st.expert_bytes_used += used_bytes;
	s->st.bytes_read = bytes_read;
	sched_map_count_routes(s);
	bool decoded = false;
	for (uint32_t i = 0; i < n_segs; i++) {
		srv_job *j = s->seg_job[i];
		if (j->fed < j->n_prompt) {
			j->fed += s->segs[i].n;
			s->st.prompt_tokens += s->segs[i].n;
		}
		if (next[i] < 0)
			continue;
		decoded = true;
		if (j->cancel)
			continue; /* admit() ends it before its next token runs */
		take_id(s, j, next[i], now);
	}
	s->st.decode_steps += decoded;
	pthread_cond_broadcast(&s->news);
}

static void *loop(void *arg)
{
	srv_sched *s = arg;
	pthread_mutex_lock(&s->mu);
	for (;;) {
		admit(s);
		bool busy = false;
		for (uint32_t i = 0; i < s->n_slots; i++)
			busy |= s->slot[i] != NULL;
		if (!busy) {
			sched_map_refresh(s, true);
			if (s->stopping)
				break;
			struct timespec t;
			clock_gettime(CLOCK_REALTIME, &t);
			t.tv_sec += 1;
			pthread_cond_timedwait(&s->wake, &s->mu, &t);
			continue;
		}
		step(s);
		sched_map_refresh(s, false);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* ---------------------------------------------------------------- lifetime */

int srv_sched_new(inf_engine *e, inf_tok *tok, const struct srv_sched_opts *o,
		  srv_sched **out, k2_err *err)
{
	srv_sched *s = calloc(1, sizeof(*s));
	if (!s)
		return k2_err_set(err, -ENOMEM, "out of memory");
	const k2_model_config *c = inf_model_config(inf_engine_model(e));
	s->e = e;
	s->tok = tok;
	s->vocab = c->vocab_size;
	s->n_slots = inf_engine_n_seqs(e);
	s->max_ctx = inf_engine_max_ctx(e);
	s->max_batch = inf_engine_max_batch(e);
	s->queue_max = o ? o->queue : 0;
	for (int i = 0; i < 4; i++)
		s->stop_ids[i] = o ? o->stop_ids[i] : -1;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->wake, NULL);
	pthread_cond_init(&s->news, NULL);
	s->slot = calloc(s->n_slots, sizeof(*s->slot));
	s->segs = calloc(s->n_slots, sizeof(*s->segs));
	s->seg_job = calloc(s->n_slots, sizeof(*s->seg_job));
	s->ids = calloc(s->max_batch > s->n_slots ? s->max_batch : s->n_slots, sizeof(int32_t));
	s->logits = malloc(sizeof(float) * s->vocab * s->n_slots);
	if (!s->slot || !s->segs || !s->seg_job || !s->ids || !s->logits || sched_map_init(s) < 0) {
		srv_sched_free(s);
		return k2_err_set(err, -ENOMEM, "out of memory for the scheduler");
	}
	int rc = pthread_create(&s->thread, NULL, loop, s);
	if (rc) {
		srv_sched_free(s);
		return k2_err_set(err, -rc, "cannot start the scheduler thread: %s", strerror(rc));
	}
	s->thread_started = 1;
	*out = s;
	return 0;
}

void srv_sched_shutdown(srv_sched *s)
{
	pthread_mutex_lock(&s->mu);
	s->shut = true;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->mu);
}

void srv_sched_free(srv_sched *s)
{
	if (!s)
		return;
	if (s->thread_started) {
		pthread_mutex_lock(&s->mu);
		s->shut = s->stopping = true;
		pthread_cond_signal(&s->wake);
		pthread_mutex_unlock(&s->mu);
		pthread_join(s->thread, NULL);
	}
	sched_map_free(s);
	free(s->slot);
	free(s->segs);
	free(s->seg_job);
	free(s->ids);
	free(s->logits);
	pthread_cond_destroy(&s->news);
	pthread_cond_destroy(&s->wake);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

void srv_sched_stats(srv_sched *s, struct srv_sched_stats *out)
{
	pthread_mutex_lock(&s->mu);
	*out = s->st;
	out->active = 0;
	for (uint32_t i = 0; i < s->n_slots; i++)
		out->active += s->slot[i] != NULL;
	out->queued = s->n_queued;
	pthread_mutex_unlock(&s->mu);
}
