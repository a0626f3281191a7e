/* test_infer_ops.c — Check suite for the pieces of infer/ below the forward
 * pass: the noaux_tc router (hand-made cases and the fixtures' recorded HF
 * router outputs), YaRN RoPE parameters and rotation, the sampler, the LRU
 * and LFU policies, and the expert cache over a synthetic mount-like
 * directory (hits, misses, eviction, pinning, prefetch, bad files). */
#include "infer.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *fixtures(void)
{
	const char *f = getenv("K2_FIXTURES");
	return f ? f : "tests/fixtures";
}

static void cfg_from(const char *json, k2_model_config *c)
{
	k2_err err;
	int rc = k2_config_parse(json, strlen(json), "test config", c, &err);
	ck_assert_msg(rc == 0, "%s", err.msg);
}

#define BASE_CFG \
	"\"vocab_size\":64,\"hidden_size\":64,\"intermediate_size\":64," \
	"\"moe_intermediate_size\":32,\"num_hidden_layers\":2,\"num_attention_heads\":2," \
	"\"num_key_value_heads\":2,\"n_shared_experts\":1,\"kv_lora_rank\":16," \
	"\"v_head_dim\":16,\"first_k_dense_replace\":1,\"rms_norm_eps\":1e-6"
#define DIMS16 ",\"qk_rope_head_dim\":16,\"qk_nope_head_dim\":16"

/* ---------------------------------------------------------------- router */

/* kern_router for one token with config.json's parameters. */
static int route1(const k2_model_config *c, const float *logits, const float *bias,
		  int32_t *idx, float *w)
{
	kern_router_params p;
	inf_router_params(c, &p);
	return kern_router(&p, logits, bias, 1, idx, w);
}

START_TEST(route_groups_and_masked_zero)
{
	k2_model_config c;
	/* 8 experts in 4 groups of 2, keep 2 groups, top 3 */
	cfg_from("{" BASE_CFG DIMS16 ",\"n_routed_experts\":8,\"num_experts_per_tok\":3,"
		 "\"n_group\":4,\"topk_group\":2,\"norm_topk_prob\":true,"
		 "\"routed_scaling_factor\":2.0}", &c);
	/* sigmoid(logit) + bias: group sums of top 2 decide groups 1 and 3 */
	float logits[8] = {0.0f, 0.1f, 2.0f, 1.5f, -1.0f, -1.0f, 1.0f, 3.0f};
	float bias[8] = {0, 0, 0, 0, 0, 0, 0, 0};
	float w[3];
	int32_t idx[3];
	ck_assert_int_eq(route1(&c, logits, bias, idx, w), 0);
	/* group scores: g0 .5+.525, g1 .881+.818, g2 .269+.269, g3 .731+.953 */
	ck_assert_int_eq(idx[0], 7);
	ck_assert_int_eq(idx[1], 2);
	ck_assert_int_eq(idx[2], 3);
	double s7 = 1 / (1 + exp(-3.0)), s2 = 1 / (1 + exp(-2.0)), s3 = 1 / (1 + exp(-1.5));
	double sum = s7 + s2 + s3;
	ck_assert_double_eq_tol(w[0], 2.0 * s7 / sum, 1e-6);
	ck_assert_double_eq_tol(w[1], 2.0 * s2 / sum, 1e-6);
	ck_assert_double_eq_tol(w[2], 2.0 * s3 / sum, 1e-6);

}
END_TEST

/* A masked expert scores 0.0 (HF masked_fill, not -inf), so it beats an
 * expert of a kept group whose biased score is negative. */
START_TEST(route_masked_zero_beats_negative)
{
	k2_model_config c;
	cfg_from("{" BASE_CFG DIMS16 ",\"n_routed_experts\":4,\"num_experts_per_tok\":2,"
		 "\"n_group\":2,\"topk_group\":1,\"norm_topk_prob\":true,"
		 "\"routed_scaling_factor\":1.0}", &c);
	float logits[4] = {9.0f, 0.0f, 0.0f, 0.0f};
	float bias[4] = {0.0f, -3.5f, -2.5f, -2.5f};
	float w[2];
	int32_t idx[2];
	/* group 0: 1.0 + -3.0 = -2 beats group 1: -2 + -2 = -4 */
	ck_assert_int_eq(route1(&c, logits, bias, idx, w), 0);
	ck_assert_int_eq(idx[0], 0);
	ck_assert_int_eq(idx[1], 2);
	double s0 = 1 / (1 + exp(-9.0));
	ck_assert_double_eq_tol(w[0], s0 / (s0 + 0.5), 1e-6);
	ck_assert_double_eq_tol(w[1], 0.5 / (s0 + 0.5), 1e-6);
}
END_TEST

START_TEST(route_no_norm_no_groups)
{
	k2_model_config c;
	cfg_from("{" BASE_CFG DIMS16 ",\"n_routed_experts\":6,\"num_experts_per_tok\":2,"
		 "\"n_group\":1,\"topk_group\":1,\"norm_topk_prob\":false,"
		 "\"routed_scaling_factor\":1.5}", &c);
	float logits[6] = {0.5f, -0.5f, 0.0f, 0.2f, 0.1f, 0.3f};
	float bias[6] = {0, 1.0f, 0, 0, 0, 0}; /* bias selects 1 but weight is unbiased */
	float w[2];
	int32_t idx[2];
	ck_assert_int_eq(route1(&c, logits, bias, idx, w), 0);
	ck_assert_int_eq(idx[0], 1);
	ck_assert_int_eq(idx[1], 0);
	ck_assert_double_eq_tol(w[0], 1.5 / (1 + exp(0.5)), 1e-6);
	ck_assert_double_eq_tol(w[1], 1.5 / (1 + exp(-0.5)), 1e-6);
	/* NULL bias = zeros */
	ck_assert_int_eq(route1(&c, logits, NULL, idx, w), 0);
	ck_assert_int_eq(idx[0], 0);
	ck_assert_int_eq(idx[1], 5);
}
END_TEST

/* The fixtures' recorded router: gate_out0 (logits) through inf_route must give
 * gate_out2 (as sets) and gate_out1 (weights, matched by expert). */
START_TEST(route_matches_reference)
{
	static const char *names[] = {"k2-tiny-bf16", "k2-tiny-fp8", "k2-tiny-int4"};
	char path[4096];
	k2_err err;
	snprintf(path, sizeof(path), "%s/%s/model/config.json", fixtures(), names[_i]);
	k2_model_config c;
	ck_assert_msg(k2_config_load(path, &c, &err) == 0, "%s", err.msg);
	snprintf(path, sizeof(path), "%s/%s/model", fixtures(), names[_i]);
	k2st_checkpoint *model;
	ck_assert_msg(k2st_open(path, &model, &err) == 0, "%s", err.msg);
	snprintf(path, sizeof(path), "%s/%s/reference.safetensors", fixtures(), names[_i]);
	k2st_checkpoint *ref;
	ck_assert_msg(k2st_open(path, &ref, &err) == 0, "%s", err.msg);
	int layers = 0;
	for (uint32_t l = 0; l < c.num_hidden_layers; l++) {
		char n0[128], n1[128], n2[128], nb[128];
		snprintf(n0, sizeof(n0), "route.layer%u.gate_out0", l);
		snprintf(n1, sizeof(n1), "route.layer%u.gate_out1", l);
		snprintf(n2, sizeof(n2), "route.layer%u.gate_out2", l);
		snprintf(nb, sizeof(nb), "model.layers.%u.mlp.gate.e_score_correction_bias", l);
		const k2st_tensor *t0 = k2st_find(ref, n0), *t1 = k2st_find(ref, n1);
		const k2st_tensor *t2 = k2st_find(ref, n2), *tb = k2st_find(model, nb);
		if (!t0)
			continue;
		ck_assert_ptr_nonnull(t1);
		ck_assert_ptr_nonnull(t2);
		ck_assert_ptr_nonnull(tb);
		ck_assert_uint_eq(tb->dtype, K2_DTYPE_F32);
		const uint32_t T = (uint32_t)t0->shape[0], E = (uint32_t)t0->shape[1];
		const uint32_t k = (uint32_t)t2->shape[1];
		ck_assert_uint_eq(E, c.n_routed_experts);
		ck_assert_uint_eq(k, c.num_experts_per_tok);
		float *lg = malloc(t0->bytes), *wr = malloc(t1->bytes), *bias = malloc(tb->bytes);
		int64_t *ir = malloc(t2->bytes);
		ck_assert_int_eq(k2st_read(ref, t0, lg, &err), 0);
		ck_assert_int_eq(k2st_read(ref, t1, wr, &err), 0);
		ck_assert_int_eq(k2st_read(ref, t2, ir, &err), 0);
		ck_assert_int_eq(k2st_read(model, tb, bias, &err), 0);
		float *scratch = malloc(sizeof(float) * 2 * E), *w = malloc(sizeof(float) * k);
		int32_t *idx = malloc(sizeof(int32_t) * k);
		for (uint32_t t = 0; t < T; t++) {
			ck_assert_int_eq(route1(&c, lg + (size_t)t * E, bias, idx, w), 0);
			for (uint32_t j = 0; j < k; j++) {
				int found = -1;
				for (uint32_t q = 0; q < k; q++)
					if (ir[(size_t)t * k + q] == idx[j])
						found = (int)q;
				ck_assert_msg(found >= 0, "layer %u token %u: expert %d not in the "
					      "reference set", l, t, idx[j]);
				ck_assert_double_eq_tol(w[j], wr[(size_t)t * k + found], 1e-5);
			}
		}
		free(lg), free(wr), free(bias), free(ir), free(scratch), free(w), free(idx);
		layers++;
	}
	ck_assert_int_eq(layers, 3);
	k2st_close(ref);
	k2st_close(model);
}
END_TEST

/* ---------------------------------------------------------------- rope */

START_TEST(rope_yarn_fixture_params)
{
	k2_model_config c;
	/* the fixtures' YaRN: d 16, base 50000, factor 32, beta 1/1, orig 4096 */
	cfg_from("{" BASE_CFG ",\"n_routed_experts\":4,\"num_experts_per_tok\":2,\"n_group\":1,\"topk_group\":1,"
		 "\"qk_rope_head_dim\":16,\"rope_theta\":50000.0,\"max_position_embeddings\":131072,"
		 "\"qk_nope_head_dim\":32,"
		 "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":32.0,"
		 "\"original_max_position_embeddings\":4096,\"beta_fast\":1.0,"
		 "\"beta_slow\":1.0,\"mscale\":1.0,\"mscale_all_dim\":1.0}}", &c);
	float inv[8], af, scale;
	inf_rope_params(&c, inv, &af, &scale);
	/* correction dims: 16·ln(4096/2π)/(2·ln 50000) = 4.79 -> low 4, high 5 */
	for (int i = 0; i < 8; i++) {
		double base = pow(50000.0, -2.0 * i / 16.0);
		double want = i <= 4 ? base : base / 32.0;
		ck_assert_double_eq_tol(inv[i], want, want * 1e-6);
	}
	ck_assert_double_eq_tol(af, 1.0, 1e-7); /* mscale == mscale_all_dim */
	double ms = 0.1 * log(32.0) + 1.0;
	ck_assert_double_eq_tol(scale, pow(48.0, -0.5) * ms * ms, 1e-7);
}
END_TEST

START_TEST(rope_yarn_ramp_and_mscale)
{
	k2_model_config c;
	/* the hidden fixture's shape: d 32, base 10000, factor 40, beta 32/1 */
	cfg_from("{" BASE_CFG ",\"n_routed_experts\":4,\"num_experts_per_tok\":2,\"n_group\":1,\"topk_group\":1,"
		 "\"qk_nope_head_dim\":16,\"qk_rope_head_dim\":32,\"rope_theta\":10000.0,"
		 "\"max_position_embeddings\":163840,"
		 "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":40.0,"
		 "\"original_max_position_embeddings\":4096,\"beta_fast\":32.0,"
		 "\"beta_slow\":1.0,\"mscale\":0.707,\"mscale_all_dim\":1.0}}", &c);
	float inv[16], af, scale;
	inf_rope_params(&c, inv, &af, &scale);
	double d = 32, lb = log(10000.0);
	double low = floor(d * log(4096 / (32 * 2 * M_PI)) / (2 * lb));
	double high = ceil(d * log(4096 / (1 * 2 * M_PI)) / (2 * lb));
	ck_assert_double_eq(low, 5);
	ck_assert_double_eq(high, 12);
	for (int i = 0; i < 16; i++) {
		double ramp = (i - low) / (high - low);
		ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
		double pf = pow(10000.0, 2.0 * i / d);
		double want = (1 / (40 * pf)) * ramp + (1 / pf) * (1 - ramp);
		ck_assert_double_eq_tol(inv[i], want, want * 1e-5);
	}
	double m1 = 0.1 * 0.707 * log(40.0) + 1, m2 = 0.1 * log(40.0) + 1;
	ck_assert_double_eq_tol(af, m1 / m2, 1e-6);
	ck_assert_double_eq_tol(scale, pow(48.0, -0.5) * m2 * m2, 1e-6);
}
END_TEST

START_TEST(rope_rotation)
{
	float inv[4] = {1.0f, 0.1f, 0.01f, 0.001f};
	float q[8], k[8], q2[8], k2[8];
	for (int i = 0; i < 8; i++) {
		q[i] = sinf(i + 1.0f);
		k[i] = cosf(2.0f * i);
	}
	/* position 0: only reordered to halves */
	memcpy(q2, q, sizeof(q));
	kern_rope_rows(q2, 1, 1, 8, 0, 0, 8, 0, inv, 1.0f);
	for (int i = 0; i < 4; i++) {
		ck_assert_float_eq_tol(q2[i], q[2 * i], 1e-7);
		ck_assert_float_eq_tol(q2[i + 4], q[2 * i + 1], 1e-7);
	}
	/* pair (x0, x1) at position 3 rotates by 3 rad */
	memcpy(q2, q, sizeof(q));
	kern_rope_rows(q2, 1, 1, 8, 0, 0, 8, 3, inv, 1.0f);
	ck_assert_float_eq_tol(q2[0], q[0] * cosf(3) - q[1] * sinf(3), 1e-6);
	ck_assert_float_eq_tol(q2[4], q[1] * cosf(3) + q[0] * sinf(3), 1e-6);
	/* relative: <rot(q, p+d), rot(k, p)> depends on d only */
	double dots[2];
	for (int r = 0; r < 2; r++) {
		uint32_t p = r ? 40 : 7;
		memcpy(q2, q, sizeof(q));
		memcpy(k2, k, sizeof(k));
		kern_rope_rows(q2, 1, 1, 8, 0, 0, 8, p + 5, inv, 1.0f);
		kern_rope_rows(k2, 1, 1, 8, 0, 0, 8, p, inv, 1.0f);
		dots[r] = 0;
		for (int i = 0; i < 8; i++)
			dots[r] += (double)q2[i] * k2[i];
	}
	ck_assert_double_eq_tol(dots[0], dots[1], 1e-5);
	/* mscale multiplies */
	memcpy(q2, q, sizeof(q));
	kern_rope_rows(q2, 1, 1, 8, 0, 0, 8, 0, inv, 2.0f);
	ck_assert_float_eq_tol(q2[0], 2 * q[0], 1e-6);
}
END_TEST

/* ---------------------------------------------------------------- sampler */

START_TEST(sampler_greedy_and_seeded)
{
	float lg[5] = {0.1f, 2.0f, -1.0f, 2.0f, 1.9f};
	ck_assert_int_eq(inf_argmax(lg, 5), 1); /* lowest index on ties */
	inf_sampler *s;
	ck_assert_int_eq(inf_sampler_create(5, 0.0f, 1.0f, 1, &s), 0);
	ck_assert_int_eq(inf_sampler_next(s, lg), 1);
	inf_sampler_destroy(s);

	int32_t a[64], b[64];
	for (int r = 0; r < 2; r++) {
		ck_assert_int_eq(inf_sampler_create(5, 1.0f, 1.0f, 42, &s), 0);
		for (int i = 0; i < 64; i++)
			(r ? b : a)[i] = inf_sampler_next(s, lg);
		inf_sampler_destroy(s);
	}
	ck_assert_mem_eq(a, b, sizeof(a));
	int distinct = 0, seen[5] = {0};
	for (int i = 0; i < 64; i++)
		if (!seen[a[i]]++)
			distinct++;
	ck_assert_int_ge(distinct, 3);
	ck_assert_int_eq(inf_sampler_create(5, 0.0f, 0.0f, 1, &s), -EINVAL);
}
END_TEST

START_TEST(sampler_distribution_and_top_p)
{
	float lg[3] = {0.0f, logf(3.0f), -30.0f}; /* p ≈ .25, .75, 0 */
	inf_sampler *s;
	ck_assert_int_eq(inf_sampler_create(3, 1.0f, 1.0f, 7, &s), 0);
	int cnt[3] = {0};
	for (int i = 0; i < 20000; i++)
		cnt[inf_sampler_next(s, lg)]++;
	inf_sampler_destroy(s);
	ck_assert_int_eq(cnt[2], 0);
	ck_assert_double_eq_tol(cnt[1] / 20000.0, 0.75, 0.015);
	/* temperature 0.5 sharpens: p1 = 9/10 */
	ck_assert_int_eq(inf_sampler_create(3, 0.5f, 1.0f, 7, &s), 0);
	memset(cnt, 0, sizeof(cnt));
	for (int i = 0; i < 20000; i++)
		cnt[inf_sampler_next(s, lg)]++;
	inf_sampler_destroy(s);
	ck_assert_double_eq_tol(cnt[1] / 20000.0, 0.9, 0.015);
	/* top_p 0.7 keeps the single 0.75 token */
	ck_assert_int_eq(inf_sampler_create(3, 1.0f, 0.7f, 7, &s), 0);
	for (int i = 0; i < 1000; i++)
		ck_assert_int_eq(inf_sampler_next(s, lg), 1);
	inf_sampler_destroy(s);
}
END_TEST

/* ---------------------------------------------------------------- policies */

static int ok_all(void *ctx, uint32_t s)
{
	(void)ctx;
	(void)s;
	return 1;
}

static int ok_not(void *ctx, uint32_t s)
{
	return s != *(uint32_t *)ctx;
}

START_TEST(policy_lru_order)
{
	const inf_policy_ops *p = inf_policy_find("lru");
	ck_assert_ptr_eq(p, &inf_policy_lru);
	void *st = p->create(4, 100);
	ck_assert_int_eq(p->victim(st, ok_all, NULL), -1);
	p->insert(st, 0, 10);
	p->insert(st, 1, 11);
	p->insert(st, 2, 12);
	ck_assert_int_eq(p->victim(st, ok_all, NULL), 0);
	p->touch(st, 0, 10);
	ck_assert_int_eq(p->victim(st, ok_all, NULL), 1);
	uint32_t skip = 1;
	ck_assert_int_eq(p->victim(st, ok_not, &skip), 2);
	p->remove(st, 1, 11);
	ck_assert_int_eq(p->victim(st, ok_all, NULL), 2);
	p->insert(st, 1, 13);
	p->touch(st, 2, 12);
	ck_assert_int_eq(p->victim(st, ok_all, NULL), 0);
	p->destroy(st);
}
END_TEST

START_TEST(policy_lfu_counts)
{
	const inf_policy_ops *p = inf_policy_find("lfu");
	ck_assert_ptr_eq(p, &inf_policy_lfu);
	ck_assert_ptr_null(inf_policy_find("mru"));
	void *st = p->create(3, 100);
	p->insert(st, 0, 10);
	p->touch(st, 0, 10);
	p->touch(st, 0, 10);
	p->insert(st, 1, 11);
	p->touch(st, 1, 11);
	p->insert(st, 2, 12);
	p->touch(st, 2, 12);
	p->touch(st, 2, 12);
	p->touch(st, 2, 12);
	ck_assert_int_eq(p->victim(st, ok_all, NULL), 1); /* key 11 used once */
	/* key 11 evicted and later back: its count is remembered */
	p->remove(st, 1, 11);
	p->insert(st, 1, 20);
	p->touch(st, 1, 20);
	ck_assert_int_eq(p->victim(st, ok_all, NULL), 1);
	p->touch(st, 1, 20);
	/* 10 and 20 both have 2: the least recent (10) goes */
	ck_assert_int_eq(p->victim(st, ok_all, NULL), 0);
	p->remove(st, 1, 20);
	p->insert(st, 1, 11);
	p->touch(st, 1, 11);
	p->touch(st, 1, 11); /* 11 now at 3 */
	uint32_t skip = 0;
	ck_assert_int_eq(p->victim(st, ok_not, &skip), 2); /* 11 and 12 at 3: 12 is older */
	p->destroy(st);
}
END_TEST

/* ---------------------------------------------------------------- expert cache */

static char tmpdir[256];

/* A mount-like directory with 2 layers (layer 1 MoE) of 6 bf16 experts whose
 * gate weight [0][0] encodes the expert index. */
static void make_dir(k2_model_config *c)
{
	static const char cfg[] = "{" BASE_CFG DIMS16 ",\"n_routed_experts\":6,\"num_experts_per_tok\":2,\"n_group\":1,\"topk_group\":1}";
	char path[512];
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_infer_ops.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	cfg_from(cfg, c);
	snprintf(path, sizeof(path), "%s/experts", tmpdir);
	ck_assert_int_eq(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/experts/001", tmpdir);
	ck_assert_int_eq(mkdir(path, 0755), 0);
	for (uint32_t x = 0; x < 6; x++) {
		k2x_layout lay;
		ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_BF16, 64, 32, 1, x, &lay), 0);
		uint8_t *img = calloc(1, lay.image_bytes);
		k2x_header_write(&lay, img);
		uint16_t *g = (uint16_t *)(img + lay.sec[K2X_GATE_W].offset);
		g[0] = k2q_f32_to_bf16((float)x);
		ck_assert_int_eq(inf_expert_path(path, sizeof(path), tmpdir, 1, x), 0);
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(write(fd, img, lay.image_bytes), (ssize_t)lay.image_bytes);
		close(fd);
		free(img);
	}
}

static void rm_dir(void)
{
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	ck_assert_int_eq(system(cmd), 0);
}

/* A directory of a RAM tier alone, as the CPU backend uses it. */
static int ram_dir(const k2_model_config *c, uint32_t slots, const inf_policy_ops *pol,
		   int readers, inf_experts **out, k2_err *err)
{
	inf_experts_opts o = {.ram_slots = slots, .policy = pol, .io_threads = readers};
	return inf_experts_create(tmpdir, c, &o, out, err);
}

static float gate00(const inf_expert *e)
{
	return kern_mat_get(&e->mat[0], 0, 0);
}

START_TEST(cache_hits_misses_eviction)
{
	k2_model_config c;
	k2_err err;
	make_dir(&c);
	inf_experts *cache;
	ck_assert_int_eq(ram_dir(&c, 2, &inf_policy_lru, 0, &cache, &err), 0);
	const inf_expert *e;
	ck_assert_int_eq(inf_experts_acquire(cache, INF_TIER_RAM, 1, 3, &e, &err), 0);
	ck_assert_float_eq(gate00(e), 3.0f);
	ck_assert_uint_eq(e->mat[0].rows, 32);
	ck_assert_uint_eq(e->mat[0].cols, 64);
	ck_assert_uint_eq(e->mat[2].rows, 64);
	inf_experts_release(cache, INF_TIER_RAM, e);
	ck_assert_int_eq(inf_experts_acquire(cache, INF_TIER_RAM, 1, 3, &e, &err), 0);
	inf_experts_release(cache, INF_TIER_RAM, e);
	ck_assert_int_eq(inf_experts_acquire(cache, INF_TIER_RAM, 1, 4, &e, &err), 0);
	inf_experts_release(cache, INF_TIER_RAM, e);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 3), 2);
	ck_assert_int_eq(inf_experts_acquire(cache, INF_TIER_RAM, 1, 3, &e, &err), 0); /* 3 most recent */
	inf_experts_release(cache, INF_TIER_RAM, e);
	ck_assert_int_eq(inf_experts_acquire(cache, INF_TIER_RAM, 1, 5, &e, &err), 0); /* evicts 4 */
	ck_assert_float_eq(gate00(e), 5.0f);
	inf_experts_release(cache, INF_TIER_RAM, e);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 4), 0);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 3), 2);
	inf_tier_stats st;
	inf_experts_stats(cache, INF_TIER_RAM, &st);
	ck_assert_uint_eq(st.hits, 2);
	ck_assert_uint_eq(st.misses, 3);
	ck_assert_uint_eq(st.evictions, 1);
	ck_assert_uint_eq(st.slots, 2);
	k2x_layout lay;
	k2x_layout_compute(K2_FORMAT_BF16, 64, 32, 1, 0, &lay);
	ck_assert_uint_eq(st.bytes_read, 3 * lay.image_bytes);
	inf_experts_destroy(cache);
	rm_dir();
}
END_TEST

struct acq_arg {
	inf_experts *c;
	int rc;
	float v;
};

static void *acquire_5(void *p)
{
	struct acq_arg *a = p;
	const inf_expert *e;
	k2_err err;
	a->rc = inf_experts_acquire(a->c, INF_TIER_RAM, 1, 5, &e, &err);
	if (a->rc == 0) {
		a->v = gate00(e);
		inf_experts_release(a->c, INF_TIER_RAM, e);
	}
	return NULL;
}

START_TEST(cache_pinned_not_evicted)
{
	k2_model_config c;
	k2_err err;
	make_dir(&c);
	inf_experts *cache;
	ck_assert_int_eq(ram_dir(&c, 1, &inf_policy_lfu, 0, &cache, &err), 0);
	const inf_expert *e;
	ck_assert_int_eq(inf_experts_acquire(cache, INF_TIER_RAM, 1, 2, &e, &err), 0);
	struct acq_arg a = {.c = cache, .rc = -1};
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, acquire_5, &a), 0);
	usleep(100 * 1000);
	/* the only slot is pinned: the other thread waits, expert 2 stays intact */
	ck_assert_int_eq(a.rc, -1);
	ck_assert_float_eq(gate00(e), 2.0f);
	inf_experts_release(cache, INF_TIER_RAM, e);
	pthread_join(th, NULL);
	ck_assert_int_eq(a.rc, 0);
	ck_assert_float_eq(a.v, 5.0f);
	inf_experts_destroy(cache);
	rm_dir();
}
END_TEST

START_TEST(cache_prefetch_background)
{
	k2_model_config c;
	k2_err err;
	make_dir(&c);
	inf_experts *cache;
	ck_assert_int_eq(ram_dir(&c, 4, &inf_policy_lru, 2, &cache, &err), 0);
	/* 0 first, alone: two loaders finish 4 and 5 in either order, and the
	 * eviction at the end expects 0 to be the least recent */
	int32_t want[3] = {0, 4, 5};
	inf_experts_prefetch(cache, 1, want, 1);
	inf_experts_drain(cache);
	inf_experts_prefetch(cache, 1, want + 1, 2);
	inf_experts_drain(cache);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 0), 2);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 4), 2);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 5), 2);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 1), 0);
	const inf_expert *e;
	ck_assert_int_eq(inf_experts_acquire(cache, INF_TIER_RAM, 1, 4, &e, &err), 0);
	ck_assert_float_eq(gate00(e), 4.0f);
	inf_experts_release(cache, INF_TIER_RAM, e);
	inf_tier_stats st;
	inf_experts_stats(cache, INF_TIER_RAM, &st);
	ck_assert_uint_eq(st.prefetch_loads, 3);
	ck_assert_uint_eq(st.hits, 1);
	ck_assert_uint_eq(st.misses, 0);
	/* 1 takes the last free slot; 2 evicts 4 (used, so no longer protected) */
	int32_t more[2] = {1, 2};
	inf_experts_prefetch(cache, 1, more, 2);
	inf_experts_drain(cache);
	inf_experts_stats(cache, INF_TIER_RAM, &st);
	ck_assert_uint_eq(st.prefetch_loads, 5);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 4), 0);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 2), 2);
	/* every slot holds a prefetched expert not used yet: a prefetch is dropped */
	int32_t three[1] = {3};
	inf_experts_prefetch(cache, 1, three, 1);
	inf_experts_drain(cache);
	inf_experts_stats(cache, INF_TIER_RAM, &st);
	ck_assert_uint_eq(st.prefetch_dropped, 1);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 3), 0);
	/* once the layer is done they may go: the least recent (0) is evicted */
	inf_experts_layer_done(cache, 1);
	inf_experts_prefetch(cache, 1, three, 1);
	inf_experts_drain(cache);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 3), 2);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 0), 0);
	ck_assert_int_eq(inf_experts_state(cache, INF_TIER_RAM, 1, 5), 2);
	inf_experts_destroy(cache);
	rm_dir();
}
END_TEST

START_TEST(cache_bad_files)
{
	k2_model_config c;
	k2_err err;
	char path[600];
	make_dir(&c);
	inf_experts *cache;
	ck_assert_int_eq(ram_dir(&c, 2, &inf_policy_lru, 1, &cache, &err), 0);
	snprintf(path, sizeof(path), "%s/experts/001/002", tmpdir);
	ck_assert_int_eq(truncate(path, 8192), 0);
	snprintf(path, sizeof(path), "%s/experts/001/005", tmpdir);
	ck_assert_int_eq(unlink(path), 0);
	const inf_expert *e;
	/* a prefetch of a bad file fails quietly; the acquire reports it */
	int32_t want[1] = {2};
	inf_experts_prefetch(cache, 1, want, 1);
	inf_experts_drain(cache);
	ck_assert_int_eq(inf_experts_acquire(cache, INF_TIER_RAM, 1, 2, &e, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "experts/001/002"));
	ck_assert_ptr_nonnull(strstr(err.msg, "8192"));
	ck_assert_int_eq(inf_experts_acquire(cache, INF_TIER_RAM, 1, 5, &e, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "experts/001/005: missing"));
	ck_assert_int_eq(inf_experts_acquire(cache, INF_TIER_RAM, 1, 6, &e, &err), -EINVAL);
	/* a header for the wrong place */
	char from[600];
	snprintf(from, sizeof(from), "%s/experts/001/000", tmpdir);
	ck_assert_int_eq(rename(from, path), 0);
	ck_assert_int_eq(inf_experts_acquire(cache, INF_TIER_RAM, 1, 5, &e, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "expert 0"));
	/* the cache still works */
	ck_assert_int_eq(inf_experts_acquire(cache, INF_TIER_RAM, 1, 1, &e, &err), 0);
	inf_experts_release(cache, INF_TIER_RAM, e);
	inf_experts_destroy(cache);
	rm_dir();
}
END_TEST

static Suite *infer_ops_suite(void)
{
	Suite *s = suite_create("infer_ops");
	TCase *t = tcase_create("route");
	tcase_add_test(t, route_groups_and_masked_zero);
	tcase_add_test(t, route_masked_zero_beats_negative);
	tcase_add_test(t, route_no_norm_no_groups);
	tcase_add_loop_test(t, route_matches_reference, 0, 3);
	suite_add_tcase(s, t);
	t = tcase_create("rope");
	tcase_add_test(t, rope_yarn_fixture_params);
	tcase_add_test(t, rope_yarn_ramp_and_mscale);
	tcase_add_test(t, rope_rotation);
	suite_add_tcase(s, t);
	t = tcase_create("sampler");
	tcase_add_test(t, sampler_greedy_and_seeded);
	tcase_add_test(t, sampler_distribution_and_top_p);
	suite_add_tcase(s, t);
	t = tcase_create("cache");
	tcase_set_timeout(t, 30);
	tcase_add_test(t, policy_lru_order);
	tcase_add_test(t, policy_lfu_counts);
	tcase_add_test(t, cache_hits_misses_eviction);
	tcase_add_test(t, cache_pinned_not_evicted);
	tcase_add_test(t, cache_prefetch_background);
	tcase_add_test(t, cache_bad_files);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(infer_ops_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
