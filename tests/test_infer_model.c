/* test_infer_model.c — Check suite for the whole forward pass of infer/ on the
 * bf16 fixture, against the HF transformers outputs in reference.safetensors.
 * The suite lays the checkpoint out like the k2fs mount in a temporary
 * directory (config.json, dense/<name> raw, experts/LLL/EEE bf16 images; no
 * xattrs, so the loader infers dtypes from sizes), then checks: prompt logits,
 * the router's logits and weights, greedy decoding through the KV cache
 * (absorbed attention) against greedy_step_logits, a prompt split in chunks
 * and fed token by token, and bit-identical results with a 1-expert cache. */
#include "infer.h"
#include "script_backend.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];
static k2st_checkpoint *ref;
static int32_t ids[64];
static uint32_t T, V;

static const char *fixtures(void)
{
	const char *f = getenv("K2_FIXTURES");
	return f ? f : "tests/fixtures";
}

static void write_file(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, p, n), (ssize_t)n);
	close(fd);
}

static void *read_tensor(k2st_checkpoint *ck, const char *name, const k2st_tensor **out)
{
	k2_err err;
	const k2st_tensor *t = k2st_find(ck, name);
	ck_assert_msg(t != NULL, "no tensor %s", name);
	void *p = malloc(t->bytes);
	ck_assert_int_eq(k2st_read(ck, t, p, &err), 0);
	if (out)
		*out = t;
	return p;
}

/* Lays the bf16 fixture out like the mount. */
static void make_mount(void)
{
	char path[2048], src[1024];
	k2_err err;
	snprintf(dir, sizeof(dir), "/tmp/test_infer_model.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(src, sizeof(src), "%s/k2-tiny-bf16/model", fixtures());
	k2st_checkpoint *ck;
	ck_assert_msg(k2st_open(src, &ck, &err) == 0, "%s", err.msg);
	char *cfg_txt;
	size_t cfg_n;
	snprintf(path, sizeof(path), "%s/config.json", src);
	ck_assert_int_eq(k2_read_file(path, &cfg_txt, &cfg_n, &err), 0);
	k2_model_config c;
	ck_assert_int_eq(k2_config_parse(cfg_txt, cfg_n, path, &c, &err), 0);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	write_file(path, cfg_txt, cfg_n);
	free(cfg_txt);
	snprintf(path, sizeof(path), "%s/dense", dir);
	ck_assert_int_eq(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/experts", dir);
	ck_assert_int_eq(mkdir(path, 0755), 0);
	for (size_t i = 0; i < k2st_count(ck); i++) {
		const k2st_tensor *t = k2st_at(ck, i);
		if (strstr(t->name, ".mlp.experts."))
			continue;
		void *p = read_tensor(ck, t->name, NULL);
		snprintf(path, sizeof(path), "%s/dense/%s", dir, t->name);
		write_file(path, p, t->bytes);
		free(p);
	}
	for (uint32_t l = 0; l < c.num_hidden_layers; l++) {
		if (!k2_config_is_moe_layer(&c, l))
			continue;
		snprintf(path, sizeof(path), "%s/experts/%03u", dir, l);
		ck_assert_int_eq(mkdir(path, 0755), 0);
		for (uint32_t x = 0; x < c.n_routed_experts; x++) {
			k2x_layout lay;
			ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_BF16, c.hidden_size,
							    c.moe_intermediate_size, l, x, &lay), 0);
			uint8_t *img = calloc(1, lay.image_bytes);
			k2x_header_write(&lay, img);
			static const char *proj[3] = {"gate_proj", "up_proj", "down_proj"};
			static const int sec[3] = {K2X_GATE_W, K2X_UP_W, K2X_DOWN_W};
			for (int m = 0; m < 3; m++) {
				char name[256];
				const k2st_tensor *t;
				snprintf(name, sizeof(name), "model.layers.%u.mlp.experts.%u.%s.weight",
					 l, x, proj[m]);
				void *p = read_tensor(ck, name, &t);
				ck_assert_uint_eq(t->bytes, lay.sec[sec[m]].bytes);
				memcpy(img + lay.sec[sec[m]].offset, p, t->bytes);
				free(p);
			}
			ck_assert_int_eq(inf_expert_path(path, sizeof(path), dir, l, x), 0);
			write_file(path, img, lay.image_bytes);
			free(img);
		}
	}
	k2st_close(ck);
}

static void setup(void)
{
	k2_err err;
	char path[1024];
	make_mount();
	snprintf(path, sizeof(path), "%s/k2-tiny-bf16/reference.safetensors", fixtures());
	ck_assert_msg(k2st_open(path, &ref, &err) == 0, "%s", err.msg);
	const k2st_tensor *t;
	int64_t *in = read_tensor(ref, "input_ids", &t);
	T = (uint32_t)t->shape[0];
	ck_assert_uint_le(T, 64);
	for (uint32_t i = 0; i < T; i++)
		ids[i] = (int32_t)in[i];
	free(in);
	float *lg = read_tensor(ref, "logits", &t);
	V = (uint32_t)t->shape[1];
	free(lg);
}

static void teardown(void)
{
	char cmd[600];
	k2st_close(ref);
	ref = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

static double max_abs(const float *a, const float *b, size_t n)
{
	double m = 0;
	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - b[i]);
		if (!(d <= m))
			m = d;
	}
	return m;
}

static inf_engine *engine(inf_model *m, uint32_t batch, uint32_t cache, const char *pol,
			  int prefetch)
{
	k2_err err;
	inf_engine_opts o = {.max_ctx = 64, .max_batch = batch, .cache_experts = cache,
			     .policy = pol, .prefetch = prefetch, .exact = 1};
	inf_engine *e;
	ck_assert_msg(inf_engine_create(m, &o, &e, &err) == 0, "%s", err.msg);
	return e;
}

START_TEST(prompt_logits_and_router)
{
	k2_err err;
	inf_model *m;
	ck_assert_msg(inf_model_open(dir, &m, &err) == 0, "%s", err.msg);
	inf_engine *e = engine(m, 0, 0, NULL, 0);
	float *lg = malloc(sizeof(float) * T * V), *want = read_tensor(ref, "logits", NULL);
	ck_assert_msg(inf_engine_forward(e, ids, T, lg, 1, &err) == 0, "%s", err.msg);
	double d = max_abs(lg, want, (size_t)T * V);
	ck_assert_msg(d < 1e-3, "prompt logits differ by %g", d);
	const k2_model_config *c = inf_model_config(m);
	int layers = 0;
	for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
		const float *rl = inf_engine_router_logits(e, l);
		if (!rl)
			continue;
		char name[128];
		snprintf(name, sizeof(name), "route.layer%u.gate_out0", l);
		float *g0 = read_tensor(ref, name, NULL);
		d = max_abs(rl, g0, (size_t)T * c->n_routed_experts);
		ck_assert_msg(d < 1e-4, "layer %u router logits differ by %g", l, d);
		snprintf(name, sizeof(name), "route.layer%u.gate_out2", l);
		int64_t *g2 = read_tensor(ref, name, NULL);
		snprintf(name, sizeof(name), "route.layer%u.gate_out1", l);
		float *g1 = read_tensor(ref, name, NULL);
		const int32_t *routes = inf_engine_routes(e, NULL);
		const float *w = inf_engine_route_weights(e, l);
		const uint32_t k = c->num_experts_per_tok, L = c->num_hidden_layers;
		for (uint32_t t = 0; t < T; t++)
			for (uint32_t j = 0; j < k; j++) {
				int32_t x = routes[((size_t)t * L + l) * k + j];
				int q = -1;
				for (uint32_t i = 0; i < k; i++)
					if (g2[(size_t)t * k + i] == x)
						q = (int)i;
				ck_assert_msg(q >= 0, "layer %u token %u expert %d not in reference", l,
					      t, x);
				ck_assert_double_eq_tol(w[(size_t)t * k + j], g1[(size_t)t * k + q], 1e-5);
			}
		free(g0), free(g1), free(g2);
		layers++;
	}
	ck_assert_int_eq(layers, 3);
	free(lg), free(want);
	inf_engine_destroy(e);
	inf_model_close(m);
}
END_TEST

/* Greedy decoding through the KV cache: each step's logits against the
 * reference's full recomputation (greedy_step_logits), ids against greedy_ids. */
START_TEST(greedy_decode)
{
	k2_err err;
	inf_model *m;
	ck_assert_msg(inf_model_open(dir, &m, &err) == 0, "%s", err.msg);
	inf_engine *e = engine(m, 0, 0, NULL, _i);
	const k2st_tensor *t;
	int64_t *gi = read_tensor(ref, "greedy_ids", &t);
	const uint32_t N = (uint32_t)t->shape[0];
	float *gs = read_tensor(ref, "greedy_step_logits", NULL);
	float *lg = malloc(sizeof(float) * V);
	ck_assert_int_eq(inf_engine_forward(e, ids, T, lg, 0, &err), 0);
	for (uint32_t s = 0; s < N; s++) {
		double d = max_abs(lg, gs + (size_t)s * V, V);
		ck_assert_msg(d < 1e-3, "step %u logits differ by %g", s, d);
		int32_t id = inf_argmax(lg, V);
		ck_assert_int_eq(id, gi[s]);
		ck_assert_int_eq(inf_engine_forward(e, &id, 1, lg, 0, &err), 0);
	}
	ck_assert_uint_eq(inf_engine_pos(e), T + N);
	inf_prefetch_stats pf;
	inf_engine_stats(e, NULL, &pf);
	if (_i) { /* prefetch on: the predictor ran and mostly agrees */
		ck_assert_uint_gt(pf.predicted, 0);
		ck_assert_uint_gt(pf.correct * 2, pf.used);
	} else
		ck_assert_uint_eq(pf.predicted, 0);
	free(gi), free(gs), free(lg);
	inf_engine_destroy(e);
	inf_model_close(m);
}
END_TEST

/* The prompt in chunks of 5 (batch attention over a cache) and token by token
 * (the absorbed decode path at every position) gives the reference logits. */
START_TEST(prompt_chunked_and_stepwise)
{
	k2_err err;
	inf_model *m;
	ck_assert_msg(inf_model_open(dir, &m, &err) == 0, "%s", err.msg);
	float *want = read_tensor(ref, "logits", NULL);
	float *lg = malloc(sizeof(float) * T * V);
	inf_engine *e = engine(m, 5, 0, NULL, 0);
	ck_assert_int_eq(inf_engine_forward(e, ids, T, lg, 1, &err), 0);
	double d = max_abs(lg, want, (size_t)T * V);
	ck_assert_msg(d < 1e-3, "chunked prompt logits differ by %g", d);
	inf_engine_reset(e);
	for (uint32_t i = 0; i < T; i++)
		ck_assert_int_eq(inf_engine_forward(e, ids + i, 1, lg + (size_t)i * V, 0, &err), 0);
	d = max_abs(lg, want, (size_t)T * V);
	ck_assert_msg(d < 1e-3, "token-by-token logits differ by %g", d);
	free(lg), free(want);
	inf_engine_destroy(e);
	inf_model_close(m);
}
END_TEST

/* A prompt longer than the attention's key blocks (64): one batch, chunks of
 * 37 and token by token (absorbed decode) agree at every position. */
START_TEST(long_prompt_paths_agree)
{
	k2_err err;
	inf_model *m;
	ck_assert_msg(inf_model_open(dir, &m, &err) == 0, "%s", err.msg);
	const uint32_t n = 150;
	int32_t *p = malloc(sizeof(int32_t) * n);
	for (uint32_t i = 0; i < n; i++)
		p[i] = (int32_t)((i * 7919u + 13u) % V);
	float *a = malloc(sizeof(float) * n * V), *b = malloc(sizeof(float) * n * V);
	k2_err e2;
	inf_engine_opts o = {.max_ctx = n, .max_batch = n, .exact = 1};
	inf_engine *e;
	ck_assert_msg(inf_engine_create(m, &o, &e, &e2) == 0, "%s", e2.msg);
	ck_assert_int_eq(inf_engine_forward(e, p, n, a, 1, &err), 0);
	inf_engine_destroy(e);
	o.max_batch = 37;
	ck_assert_int_eq(inf_engine_create(m, &o, &e, &e2), 0);
	ck_assert_int_eq(inf_engine_forward(e, p, n, b, 1, &err), 0);
	double d = max_abs(a, b, (size_t)n * V);
	ck_assert_msg(d < 1e-4, "chunks of 37 differ from one batch by %g", d);
	inf_engine_reset(e);
	for (uint32_t i = 0; i < n; i++)
		ck_assert_int_eq(inf_engine_forward(e, p + i, 1, b + (size_t)i * V, 0, &err), 0);
	d = max_abs(a, b, (size_t)n * V);
	ck_assert_msg(d < 1e-4, "token by token differs from one batch by %g", d);
	ck_assert_int_eq(inf_engine_forward(e, p, 1, b, 0, &err), -ENOSPC);
	inf_engine_destroy(e);
	free(a), free(b), free(p);
	inf_model_close(m);
}
END_TEST

/* A 1-expert cache (every use evicts) and prefetch change nothing, bit for bit. */
START_TEST(cache_size_does_not_change_results)
{
	k2_err err;
	inf_model *m;
	ck_assert_msg(inf_model_open(dir, &m, &err) == 0, "%s", err.msg);
	float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V);
	inf_engine *e = engine(m, 0, 0, "lru", 0);
	ck_assert_int_eq(inf_engine_forward(e, ids, T, a, 1, &err), 0);
	inf_engine_destroy(e);
	e = engine(m, 0, 1, "lfu", 1);
	ck_assert_int_eq(inf_engine_forward(e, ids, T, b, 1, &err), 0);
	ck_assert_mem_eq(a, b, sizeof(float) * T * V);
	inf_tier_stats st;
	inf_engine_stats(e, &st, NULL);
	ck_assert_uint_eq(st.slots, 1);
	ck_assert_uint_gt(st.evictions, 0);
	inf_engine_destroy(e);
	free(a), free(b);
	inf_model_close(m);
}
END_TEST

/* The prompt's logits [T, V], then `steps` greedy decode steps' [V] each, into
 * out [(T + steps) · V]. */
static void prompt_and_decode(inf_engine *e, uint32_t steps, float *out)
{
	k2_err err;
	ck_assert_msg(inf_engine_forward(e, ids, T, out, 1, &err) == 0, "%s", err.msg);
	const float *last = out + (size_t)(T - 1) * V;
	for (uint32_t s = 0; s < steps; s++) {
		int32_t id = inf_argmax(last, V);
		float *lo = out + (size_t)(T + s) * V;
		ck_assert_msg(inf_engine_forward(e, &id, 1, lo, 0, &err) == 0, "%s", err.msg);
		last = lo;
	}
}

/* The device tier, on a backend whose slot loads land only after some polls
 * (tests/script_backend.h): caches of 1 to all experts, with and without
 * prefetch, LRU and LFU, give the CPU backend's logits bit for bit. Loads land
 * between the MoE layer's looks at them: an engine that looked again in each
 * of its passes would find a prefetched expert loading in one pass and landed
 * in the next, and leave it out (tests/it_infer.sh plants exactly that). */
START_TEST(device_tier_matches_cpu)
{
	static const struct {
		uint32_t slots, polls;
		const char *pol;
		int prefetch, cpu_experts;
	} cs[] = {
		{4, 2, "lru", 1, 0}, {1, 2, "lru", 1, 0}, {5, 1, "lfu", 1, 0}, {3, 2, "lru", 0, 0},
		{96, 2, "lru", 1, 0},
		/* --cpu-experts with a RAM tier of one slot (1: device loads copy from
		 * it and pin it until they land, while CPU experts need it too) or
		 * of every expert (2: prefetches then copy RAM → device) */
		{2, 2, "lru", 1, 1}, {4, 3, "lfu", 0, 1}, {8, 2, "lru", 1, 2},
	};
	const uint32_t steps = 6;
	k2_err err;
	inf_model *m;
	ck_assert_msg(inf_model_open(dir, &m, &err) == 0, "%s", err.msg);
	float *a = malloc(sizeof(float) * (T + steps) * V), *b = malloc(sizeof(float) * (T + steps) * V);
	inf_engine *e = engine(m, 0, 0, NULL, 0);
	prompt_and_decode(e, steps, a);
	inf_engine_destroy(e);
	for (size_t i = 0; i < sizeof(cs) / sizeof(cs[0]); i++) {
		kern_backend *sb;
		ck_assert_int_eq(script_backend_open(cs[i].polls, &sb, &err), 0);
		inf_engine_opts o = {.max_ctx = 64, .be = sb, .exact = 1, .cache_experts = cs[i].slots,
				     .policy = cs[i].pol, .prefetch = cs[i].prefetch,
				     .cpu_experts = cs[i].cpu_experts != 0,
				     .cpu_cache_bytes = cs[i].cpu_experts == 1};
		ck_assert_msg(inf_engine_create(m, &o, &e, &err) == 0, "%s", err.msg);
		prompt_and_decode(e, steps, b);
		inf_tier_stats st;
		inf_engine_tier_stats(e, INF_TIER_DEVICE, &st);
		ck_assert_uint_eq(st.slots, cs[i].slots);
		ck_assert_uint_gt(st.loads, 0);
		if (cs[i].prefetch)
			ck_assert_msg(st.prefetch_loads > 0, "case %zu: nothing was prefetched", i);
		if (cs[i].cpu_experts) {
			inf_device_stats ds;
			inf_tier_stats rs;
			inf_engine_device_stats(e, &ds);
			inf_engine_tier_stats(e, INF_TIER_RAM, &rs);
			ck_assert_uint_eq(rs.slots, cs[i].cpu_experts == 1 ? 1 : 96);
			ck_assert_uint_gt(ds.cpu_experts, 0);
			if (cs[i].cpu_experts == 2)
				ck_assert_msg(st.bytes_moved > 0, "case %zu: nothing came from RAM", i);
			printf("case %zu: %llu experts on the CPU, %llu on the backend, %llu bytes "
			       "moved RAM -> device\n", i, (unsigned long long)ds.cpu_experts,
			       (unsigned long long)ds.backend_experts,
			       (unsigned long long)st.bytes_moved);
		}
		ck_assert_msg(memcmp(a, b, sizeof(float) * (T + steps) * V) == 0,
			      "case %zu (%u slots, %u polls, %s, prefetch %d): logits differ from "
			      "the cpu backend's by %g", i, cs[i].slots, cs[i].polls, cs[i].pol,
			      cs[i].prefetch, max_abs(a, b, (size_t)(T + steps) * V));
		inf_engine_destroy(e);
		kern_backend_close(sb);
	}
	free(a), free(b);
	inf_model_close(m);
}
END_TEST

START_TEST(bad_inputs)
{
	k2_err err;
	char path[1024];
	inf_model *m;
	ck_assert_msg(inf_model_open(dir, &m, &err) == 0, "%s", err.msg);
	inf_engine *e = engine(m, 0, 0, NULL, 0);
	float *lg = malloc(sizeof(float) * V);
	int32_t bad[2] = {5, (int32_t)V};
	ck_assert_int_eq(inf_engine_forward(e, bad, 2, lg, 0, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));
	inf_engine_destroy(e);
	inf_model_close(m);
	free(lg);
	/* a missing dense tensor */
	snprintf(path, sizeof(path), "%s/dense/model.layers.3.self_attn.o_proj.weight", dir);
	ck_assert_int_eq(truncate(path, 100), 0);
	ck_assert_int_eq(inf_model_open(dir, &m, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "o_proj.weight: 100 bytes fit no dtype"));
	ck_assert_int_eq(unlink(path), 0);
	ck_assert_int_eq(inf_model_open(dir, &m, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "o_proj.weight: missing"));
}
END_TEST

/* Sequences stepped together (inf_engine_step) compute what each computes
 * alone: three prompts prefilled in one step, then greedy decode steps of
 * all three as one batch of three tokens (one sequence dropping out, then
 * reset and refilled), logits equal to the sequence run alone on its own
 * engine; and the step's errors. */
START_TEST(sequences_together_equal_alone)
{
	enum { S = 3, STEPS = 4 };
	k2_err err;
	inf_model *m;
	ck_assert_msg(inf_model_open(dir, &m, &err) == 0, "%s", err.msg);
	int32_t prompt[S][64];
	uint32_t len[S] = {T, T - 5, 10};
	for (uint32_t i = 0; i < T; i++)
		prompt[0][i] = ids[i];
	for (uint32_t i = 0; i < len[1]; i++)
		prompt[1][i] = ids[i + 5];
	for (uint32_t i = 0; i < len[2]; i++)
		prompt[2][i] = ids[T - 1 - i];
	/* alone: prompt, then STEPS greedy tokens; want[s][j] the logits after
	 * the prompt (j = 0) and after each decoded token */
	float *want = malloc(sizeof(float) * S * (STEPS + 1) * V);
	for (uint32_t s = 0; s < S; s++) {
		inf_engine *e = engine(m, 64, 0, NULL, 0);
		float *w = want + (size_t)s * (STEPS + 1) * V;
		ck_assert_int_eq(inf_engine_forward(e, prompt[s], len[s], w, 0, &err), 0);
		for (uint32_t j = 1; j <= STEPS; j++) {
			int32_t id = inf_argmax(w + (size_t)(j - 1) * V, V);
			ck_assert_int_eq(inf_engine_forward(e, &id, 1, w + (size_t)j * V, 0, &err), 0);
		}
		inf_engine_destroy(e);
	}
	inf_engine_opts o = {.max_ctx = 64, .max_batch = 64, .exact = 1, .n_seqs = S};
	inf_engine *e;
	ck_assert_msg(inf_engine_create(m, &o, &e, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(inf_engine_n_seqs(e), S);
	float *lg = malloc(sizeof(float) * S * V);
	int32_t all[64 * S];
	uint32_t n = 0;
	inf_seg segs[S];
	for (uint32_t s = 0; s < S; s++) {
		memcpy(all + n, prompt[s], sizeof(int32_t) * len[s]);
		n += len[s];
		segs[s] = (inf_seg){.seq = s, .n = len[s]};
	}
	ck_assert_msg(inf_engine_step(e, segs, S, all, lg, &err) == 0, "%s", err.msg);
	for (uint32_t j = 1; j <= STEPS; j++) {
		/* sequence 2 sits out step 2 */
		uint32_t ns = 0;
		int32_t next[S];
		for (uint32_t s = 0; s < S; s++) {
			const float *w = want + ((size_t)s * (STEPS + 1) + j - 1) * V;
			double d = max_abs(lg + (size_t)ns * V, w, V);
			ck_assert_msg(d < 1e-4, "step %u sequence %u: logits differ from alone by %g",
				      j, s, d);
			if (j == 2 && s == 2)
				continue;
			next[ns] = inf_argmax(w, V);
			segs[ns++] = (inf_seg){.seq = s, .n = 1};
		}
		if (j == 2) { /* sequence 2 is one step behind: it runs alone now */
			ck_assert_int_eq(inf_engine_step(e, segs, ns, next, lg, &err), 0);
			int32_t id2 = inf_argmax(want + ((size_t)2 * (STEPS + 1) + 1) * V, V);
			inf_seg one = {.seq = 2, .n = 1};
			float *l2 = malloc(sizeof(float) * V);
			ck_assert_int_eq(inf_engine_step(e, &one, 1, &id2, l2, &err), 0);
			memcpy(lg + (size_t)ns * V, l2, sizeof(float) * V);
			free(l2);
			continue;
		}
		ck_assert_int_eq(inf_engine_step(e, segs, ns, next, lg, &err), 0);
	}
	for (uint32_t s = 0; s < S; s++)
		ck_assert_uint_eq(inf_engine_seq_pos(e, s), len[s] + STEPS);
	/* a reset sequence starts over while the others keep their caches */
	inf_engine_seq_reset(e, 1);
	ck_assert_uint_eq(inf_engine_seq_pos(e, 1), 0);
	segs[0] = (inf_seg){.seq = 1, .n = len[1]};
	ck_assert_int_eq(inf_engine_step(e, segs, 1, prompt[1], lg, &err), 0);
	ck_assert_msg(max_abs(lg, want + (size_t)1 * (STEPS + 1) * V, V) < 1e-4,
		      "a reset sequence does not start over");
	/* a truncated one recomputes only what follows the kept prefix */
	inf_engine_seq_truncate(e, 1, 7);
	ck_assert_uint_eq(inf_engine_seq_pos(e, 1), 7);
	segs[0] = (inf_seg){.seq = 1, .n = len[1] - 7};
	ck_assert_int_eq(inf_engine_step(e, segs, 1, prompt[1] + 7, lg, &err), 0);
	ck_assert_msg(max_abs(lg, want + (size_t)1 * (STEPS + 1) * V, V) < 1e-4,
		      "a truncated sequence does not continue from its prefix");
	inf_engine_seq_truncate(e, 1, 1000); /* beyond: nothing changes */
	ck_assert_uint_eq(inf_engine_seq_pos(e, 1), len[1]);
	/* errors: nothing runs */
	inf_seg twice[2] = {{.seq = 0, .n = 1}, {.seq = 0, .n = 1}};
	ck_assert_int_eq(inf_engine_step(e, twice, 2, all, lg, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "twice"));
	inf_seg beyond = {.seq = S, .n = 1};
	ck_assert_int_eq(inf_engine_step(e, &beyond, 1, all, lg, &err), -EINVAL);
	inf_seg full = {.seq = 0, .n = 64};
	ck_assert_int_eq(inf_engine_step(e, &full, 1, all, lg, &err), -ENOSPC);
	ck_assert_uint_eq(inf_engine_seq_pos(e, 0), len[0] + STEPS);
	free(lg), free(want);
	inf_engine_destroy(e);
	inf_model_close(m);
}
END_TEST

static Suite *infer_model_suite(void)
{
	Suite *s = suite_create("infer_model");
	TCase *t = tcase_create("bf16 fixture");
	tcase_set_timeout(t, 120);
	tcase_add_checked_fixture(t, setup, teardown);
	tcase_add_test(t, prompt_logits_and_router);
	tcase_add_loop_test(t, greedy_decode, 0, 2);
	tcase_add_test(t, prompt_chunked_and_stepwise);
	tcase_add_test(t, long_prompt_paths_agree);
	tcase_add_test(t, cache_size_does_not_change_results);
	tcase_add_test(t, device_tier_matches_cpu);
	tcase_add_test(t, sequences_together_equal_alone);
	tcase_add_test(t, bad_inputs);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(infer_model_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
