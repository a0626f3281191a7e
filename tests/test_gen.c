/* test_gen.c — Check suite for the synthetic checkpoint generator
 * (tools/lib/gen.c, bin/k2gen):
 *   - `--preset tiny` in bf16 / fp8 / int4 gives exactly the fixtures' config.json
 *     (as JSON values) and exactly their tensor names, dtypes and shapes, i.e.
 *     what mkref.py make_weights and its quantizers produce;
 *   - `--preset k2` has Kimi-K2's dimensions; --set overrides keys (numbers,
 *     null, booleans, strings, dotted keys) and bad values are refused;
 *   - the values are standard normal (moments and the 1/2/3-sigma fractions)
 *     scaled as mkref.py scales them, deterministic for a seed;
 *   - the fp8 and int4 checkpoints are the bf16 weights quantized the hub's way;
 *   - sharding writes an index whose weight_map matches the shards. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"
#include "layout.h"
#include "test_util.h"

/* k2gen's options with their defaults (the tiny preset, in bf16). */
static k2g_opts default_opts(void)
{
	k2g_opts o;
	k2g_opts_default(&o);
	return o;
}

/* Generates into tu_tmpdir/name; asserts success. */
static void gen_ok(const k2g_opts *o, const char *name, char *out, size_t n)
{
	snprintf(out, n, "%s/%s", tu_tmpdir, name);
	k2_err err = {{0}};
	k2g_stats st;
	int rc = k2g_generate(out, o, &st, &err);
	ck_assert_msg(rc == 0, "k2g_generate: %s", err.msg);
	ck_assert_uint_gt(st.n_tensors, 0);
}

/* gen_ok, then opens what it wrote. */
static k2st_checkpoint *gen_open(const k2g_opts *o, const char *name, char *out, size_t n)
{
	gen_ok(o, name, out, n);
	return tu_checkpoint_open(out);
}

/* ---------------------------------------------------------------- fixtures */

static const char *const fx_names[3] = {"k2-tiny-bf16", "k2-tiny-fp8", "k2-tiny-int4"};
static const uint32_t fx_formats[3] = {K2_FORMAT_BF16, K2_FORMAT_FP8_B128, K2_FORMAT_INT4_G32};

START_TEST(test_tiny_matches_fixture)
{
	k2g_opts o = default_opts();
	o.format = fx_formats[_i];
	o.threads = 2;
	char out[512], fx[512], path[600];
	gen_ok(&o, "tiny", out, sizeof(out));
	tu_fixture_model(fx_names[_i], fx, sizeof(fx));

	/* config.json: the same JSON value as the fixture's */
	json_error_t je;
	snprintf(path, sizeof(path), "%s/config.json", fx);
	json_t *want = json_load_file(path, 0, &je);
	ck_assert_ptr_nonnull(want);
	snprintf(path, sizeof(path), "%s/config.json", out);
	json_t *got = json_load_file(path, 0, &je);
	ck_assert_ptr_nonnull(got);
	if (!json_equal(want, got)) {
		char *a = json_dumps(want, JSON_COMPACT), *b = json_dumps(got, JSON_COMPACT);
		ck_abort_msg("config differs:\nfixture %s\ngen     %s", a, b);
	}
	json_decref(want);
	json_decref(got);

	/* the same tensors: names, dtypes, shapes */
	k2st_checkpoint *a = tu_checkpoint_open(fx), *b = tu_checkpoint_open(out);
	ck_assert_uint_eq(k2st_count(a), k2st_count(b));
	for (size_t i = 0; i < k2st_count(a); i++) {
		const k2st_tensor *ta = k2st_at(a, i);
		const k2st_tensor *tb = k2st_find(b, ta->name);
		ck_assert_msg(tb != NULL, "generated checkpoint lacks %s", ta->name);
		ck_assert_msg(ta->dtype == tb->dtype, "%s: dtype %s, fixture %s", ta->name,
			      k2_dtype_name(tb->dtype), k2_dtype_name(ta->dtype));
		ck_assert_uint_eq(ta->ndim, tb->ndim);
		for (uint32_t d = 0; d < ta->ndim; d++)
			ck_assert_msg(ta->shape[d] == tb->shape[d], "%s: dim %u is %llu, fixture %llu",
				      ta->name, d, (unsigned long long)tb->shape[d],
				      (unsigned long long)ta->shape[d]);
	}
	k2st_close(a);
	k2st_close(b);
}
END_TEST

/* ---------------------------------------------------------------- config */

/* The config.json k2gen writes for o, parsed. */
static k2_model_config config_of(const k2g_opts *o)
{
	char *json;
	k2_model_config c;
	k2_err err = {{0}};
	ck_assert_msg(k2g_config_json(o, &json, &err) == 0, "%s", err.msg);
	ck_assert_msg(k2_config_parse(json, strlen(json), "gen", &c, &err) == 0, "%s", err.msg);
	free(json);
	return c;
}

START_TEST(test_k2_preset)
{
	k2g_opts o = default_opts();
	o.preset = "k2";
	k2_model_config c = config_of(&o);
	ck_assert_uint_eq(c.vocab_size, 163840);
	ck_assert_uint_eq(c.hidden_size, 7168);
	ck_assert_uint_eq(c.intermediate_size, 18432);
	ck_assert_uint_eq(c.moe_intermediate_size, 2048);
	ck_assert_uint_eq(c.num_hidden_layers, 61);
	ck_assert_uint_eq(c.n_routed_experts, 384);
	ck_assert_uint_eq(c.num_experts_per_tok, 8);
	ck_assert_uint_eq(c.n_group, 1);
	ck_assert_uint_eq(c.topk_group, 1);
	ck_assert_uint_eq(c.n_shared_experts, 1);
	ck_assert_uint_eq(c.first_k_dense_replace, 1);
	ck_assert_uint_eq(c.num_attention_heads, 64);
	ck_assert_uint_eq(c.q_lora_rank, 1536);
	ck_assert_uint_eq(c.kv_lora_rank, 512);
	ck_assert_uint_eq(c.qk_rope_head_dim, 64);
	ck_assert_uint_eq(c.qk_nope_head_dim, 128);
	ck_assert_uint_eq(c.v_head_dim, 128);
	ck_assert_float_eq(c.routed_scaling_factor, 2.827f);
	ck_assert_float_eq(c.rope_theta, 50000.0f);
	ck_assert_int_eq(c.rope_yarn, 1);
	ck_assert_float_eq(c.rope_factor, 32.0f);
	ck_assert_uint_eq(c.rope_original_max_position, 4096);
	ck_assert_float_eq(c.rope_beta_fast, 1.0f);
	ck_assert_float_eq(c.rope_beta_slow, 1.0f);
	ck_assert_float_eq(c.rope_mscale, 1.0f);
	ck_assert_float_eq(c.rope_mscale_all_dim, 1.0f);
	ck_assert_uint_eq(c.max_position_embeddings, 131072);
	ck_assert_int_eq(c.bos_token_id, 163584);
	ck_assert_int_eq(c.eos_token_id, 163585);
	ck_assert_uint_eq(c.source_format, K2_FORMAT_BF16);

	/* --layers / --experts cut only those counts */
	o.layers = 2;
	o.experts = 16;
	o.format = K2_FORMAT_INT4_G32;
	k2_model_config d = config_of(&o);
	ck_assert_uint_eq(d.num_hidden_layers, 2);
	ck_assert_uint_eq(d.n_routed_experts, 16);
	ck_assert_uint_eq(d.hidden_size, 7168);
	ck_assert_uint_eq(d.num_experts_per_tok, 8);
	ck_assert_uint_eq(d.source_format, K2_FORMAT_INT4_G32);
	ck_assert_uint_eq(d.int4_group, 32);
}
END_TEST

START_TEST(test_set)
{
	static const char *const sets[] = {
		"q_lora_rank=null", "n_group=4", "topk_group=2", "first_k_dense_replace=2",
		"rope_scaling.factor=40", "topk_method=greedy", "norm_topk_prob=false",
		"vocab_size=4096", "routed_scaling_factor=2.5",
	};
	k2g_opts o = default_opts();
	o.sets = sets;
	o.n_sets = sizeof(sets) / sizeof(sets[0]);
	k2_model_config c = config_of(&o);
	ck_assert_uint_eq(c.q_lora_rank, 0);
	ck_assert_uint_eq(c.n_group, 4);
	ck_assert_uint_eq(c.topk_group, 2);
	ck_assert_uint_eq(c.first_k_dense_replace, 2);
	ck_assert_float_eq(c.rope_factor, 40.0f);
	ck_assert_str_eq(c.topk_method, "greedy");
	ck_assert_int_eq(c.norm_topk_prob, 0);
	ck_assert_uint_eq(c.vocab_size, 4096);
	ck_assert_float_eq(c.routed_scaling_factor, 2.5f);
	ck_assert_uint_eq(c.rope_original_max_position, 4096); /* the rest of rope_scaling kept */

	char *json;
	k2_err err = {{0}};
	static const char *const bad1[] = {"n_group=3"};
	o.sets = bad1;
	o.n_sets = 1;
	ck_assert_int_eq(k2g_config_json(&o, &json, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "n_group"));
	static const char *const bad2[] = {"hidden_size"};
	o.sets = bad2;
	ck_assert_int_eq(k2g_config_json(&o, &json, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "KEY=VALUE"));
	static const char *const bad3[] = {"hidden_size=\"wide\""};
	o.sets = bad3;
	ck_assert_int_eq(k2g_config_json(&o, &json, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "hidden_size"));
	o.n_sets = 0;
	o.preset = "huge";
	ck_assert_int_eq(k2g_config_json(&o, &json, &err), -EINVAL);
}
END_TEST

START_TEST(test_q_proj_without_q_lora)
{
	static const char *const sets[] = {"q_lora_rank=null", "first_k_dense_replace=2"};
	k2g_opts o = default_opts();
	o.sets = sets;
	o.n_sets = sizeof(sets) / sizeof(sets[0]);
	o.layers = 3;
	char out[512];
	k2st_checkpoint *ck = gen_open(&o, "noq", out, sizeof(out));
	const k2st_tensor *t = k2st_find(ck, "model.layers.0.self_attn.q_proj.weight");
	ck_assert_ptr_nonnull(t);
	ck_assert_uint_eq(t->shape[0], 4 * (32 + 16));
	ck_assert_uint_eq(t->shape[1], 256);
	ck_assert_ptr_null(k2st_find(ck, "model.layers.0.self_attn.q_a_proj.weight"));
	ck_assert_ptr_nonnull(k2st_find(ck, "model.layers.1.mlp.down_proj.weight"));
	ck_assert_ptr_null(k2st_find(ck, "model.layers.1.mlp.experts.0.down_proj.weight"));
	ck_assert_ptr_nonnull(k2st_find(ck, "model.layers.2.mlp.experts.31.down_proj.weight"));
	ck_assert_ptr_null(k2st_find(ck, "model.layers.3.input_layernorm.weight"));
	k2st_close(ck);
}
END_TEST

/* ---------------------------------------------------------------- values */

struct moments {
	double mean, sd, in1, in2, in3, max;
};

static struct moments measure(const float *x, size_t n, double mu, double sigma)
{
	struct moments m = {0};
	double s = 0, s2 = 0;
	size_t c1 = 0, c2 = 0, c3 = 0;
	for (size_t i = 0; i < n; i++) {
		double z = (x[i] - mu) / sigma;
		s += z;
		s2 += z * z;
		c1 += fabs(z) < 1;
		c2 += fabs(z) < 2;
		c3 += fabs(z) < 3;
		if (fabs(z) > m.max)
			m.max = fabs(z);
	}
	m.mean = s / (double)n;
	m.sd = sqrt(s2 / (double)n - m.mean * m.mean);
	m.in1 = (double)c1 / (double)n;
	m.in2 = (double)c2 / (double)n;
	m.in3 = (double)c3 / (double)n;
	return m;
}

/* The tensor named name as float32: *n elements. */
static float *tensor_f32(const k2st_checkpoint *ck, const char *name, size_t *n)
{
	return tu_tensor_f32(ck, tu_tensor_find(ck, name), n);
}

/* n samples: the standard error of a fraction is <= 0.5/sqrt(n); allow 5 of them */
static void assert_normal(const char *what, const float *x, size_t n, double mu, double sigma)
{
	struct moments m = measure(x, n, mu, sigma);
	double se = 0.5 / sqrt((double)n) * 5;
	ck_assert_msg(fabs(m.mean) < 5 / sqrt((double)n), "%s: mean %g sigma off", what, m.mean);
	ck_assert_msg(fabs(m.sd - 1) < 0.01 + 5 / sqrt((double)n), "%s: sd %g of the expected", what, m.sd);
	ck_assert_msg(fabs(m.in1 - 0.682689) < se, "%s: %g within 1 sigma", what, m.in1);
	ck_assert_msg(fabs(m.in2 - 0.954500) < se, "%s: %g within 2 sigma", what, m.in2);
	ck_assert_msg(fabs(m.in3 - 0.997300) < se, "%s: %g within 3 sigma", what, m.in3);
	ck_assert_msg(m.max < 7, "%s: a %g sigma sample", what, m.max);
}

START_TEST(test_values)
{
	k2g_opts o = default_opts();
	o.seed = 42;
	o.threads = 3;
	char out[512];
	k2st_checkpoint *ck = gen_open(&o, "v", out, sizeof(out));
	size_t n;
	float *x = tensor_f32(ck, "model.embed_tokens.weight", &n);
	ck_assert_uint_eq(n, 1024 * 256);
	assert_normal("embed_tokens (std 1)", x, n, 0, 1);
	struct moments m = measure(x, n, 0, 1);
	ck_assert_msg(m.max > 3.8, "no tail: max %g sigma in %zu samples", m.max, n);
	free(x);
	x = tensor_f32(ck, "lm_head.weight", &n);
	assert_normal("lm_head (std 256^-0.5)", x, n, 0, 1 / 16.0);
	free(x);
	x = tensor_f32(ck, "model.layers.2.mlp.experts.5.down_proj.weight", &n);
	assert_normal("down_proj (std 64^-0.5)", x, n, 0, 1 / 8.0);
	free(x);
	/* norms 1 + 0.1 N: 256 samples, looser */
	x = tensor_f32(ck, "model.layers.1.input_layernorm.weight", &n);
	m = measure(x, n, 1, 0.1);
	ck_assert_msg(fabs(m.mean) < 0.3 && fabs(m.sd - 1) < 0.2, "norm: mean %g sd %g", m.mean, m.sd);
	free(x);
	const k2st_tensor *t;
	void *b = tu_tensor_read_named(ck, "model.layers.1.mlp.gate.e_score_correction_bias", &t);
	ck_assert_uint_eq(t->dtype, K2_DTYPE_F32);
	free(b);
	/* different tensors are different streams */
	void *p = tu_tensor_read_named(ck, "model.layers.1.mlp.experts.0.gate_proj.weight", NULL);
	void *q = tu_tensor_read_named(ck, "model.layers.1.mlp.experts.0.up_proj.weight", &t);
	ck_assert_int_ne(memcmp(p, q, t->bytes), 0);
	free(p);
	free(q);
	k2st_close(ck);

	/* the same seed with one thread: the same bytes */
	char out2[512];
	o.threads = 1;
	gen_ok(&o, "v1", out2, sizeof(out2));
	char pa[600], pb[600];
	snprintf(pa, sizeof(pa), "%s/model.safetensors", out);
	snprintf(pb, sizeof(pb), "%s/model.safetensors", out2);
	tu_assert_same_file(pa, pb, "seed 42 with 3 and 1 threads differs");
}
END_TEST

/* The fp8 and int4 checkpoints hold the bf16 checkpoint's weights quantized
 * with the hub's rules. */
START_TEST(test_quantized_from_bf16)
{
	k2g_opts o = default_opts();
	o.seed = 5;
	char d16[512], d8[512], d4[512];
	k2st_checkpoint *c16 = gen_open(&o, "b", d16, sizeof(d16));
	o.format = K2_FORMAT_FP8_B128;
	o.shard_bytes = 3u << 20; /* sharded, with an index */
	k2st_checkpoint *c8 = gen_open(&o, "f", d8, sizeof(d8));
	o.format = K2_FORMAT_INT4_G32;
	o.shard_bytes = 0;
	k2st_checkpoint *c4 = gen_open(&o, "i", d4, sizeof(d4));
	static const char *const fp8_names[] = {
		"model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
		"model.layers.0.mlp.down_proj.weight",
		"model.layers.3.mlp.experts.17.up_proj.weight",
		"model.layers.2.mlp.shared_experts.gate_proj.weight",
		"lm_head.weight", NULL,
	};
	for (int i = 0; fp8_names[i]; i++) {
		const k2st_tensor *t;
		size_t n;
		t = tu_tensor_find(c16, fp8_names[i]);
		float *w = tu_tensor_f32(c16, t, &n);
		uint32_t r = (uint32_t)t->shape[0], c = (uint32_t)t->shape[1];
		uint8_t *q = malloc(n);
		float *s = malloc(sizeof(float) * ((r + 127) / 128) * ((c + 127) / 128));
		ck_assert_int_eq(k2q_quant_fp8_b128(w, r, c, q, s), 0);
		char sn[300];
		snprintf(sn, sizeof(sn), "%s_scale_inv", fp8_names[i]);
		const k2st_tensor *tq, *ts;
		void *gq = tu_tensor_read_named(c8, fp8_names[i], &tq), *gs = NULL;
		if (strcmp(fp8_names[i], "lm_head.weight") == 0) {
			/* not a *_proj: stays bf16 */
			ck_assert_uint_eq(tq->dtype, K2_DTYPE_BF16);
		} else {
			gs = tu_tensor_read_named(c8, sn, &ts);
			ck_assert_uint_eq(tq->dtype, K2_DTYPE_F8_E4M3);
			ck_assert_msg(memcmp(gq, q, n) == 0, "%s: fp8 weights differ", fp8_names[i]);
			ck_assert_uint_eq(ts->bytes, sizeof(float) * ((r + 127) / 128) * ((c + 127) / 128));
			ck_assert_msg(memcmp(gs, s, ts->bytes) == 0, "%s: scales differ", fp8_names[i]);
		}
		free(gq);
		free(gs);
		free(q);
		free(s);
		free(w);
		if (strcmp(fp8_names[i], "lm_head.weight") == 0)
			break;
	}
	ck_assert_ptr_null(k2st_find(c8, "lm_head.weight_scale_inv"));
	ck_assert_ptr_null(k2st_find(c8, "model.layers.1.mlp.gate.weight_scale_inv"));

	/* int4: routed experts only */
	const char *e = "model.layers.2.mlp.experts.9.down_proj.weight";
	size_t n;
	float *w = tensor_f32(c16, e, &n);
	uint8_t *packed = malloc(n / 2);
	uint16_t *sc = malloc(n / 32 * 2);
	ck_assert_int_eq(k2q_quant_int4_g32(w, 256, 64, packed, sc), 0);
	const k2st_tensor *tp, *tsc, *tsh;
	void *gp = tu_tensor_read_named(c4, "model.layers.2.mlp.experts.9.down_proj.weight_packed", &tp);
	void *gsc = tu_tensor_read_named(c4, "model.layers.2.mlp.experts.9.down_proj.weight_scale", &tsc);
	int32_t *gsh = tu_tensor_read_named(c4, "model.layers.2.mlp.experts.9.down_proj.weight_shape", &tsh);
	ck_assert_uint_eq(tp->bytes, n / 2);
	ck_assert_int_eq(memcmp(gp, packed, n / 2), 0);
	ck_assert_uint_eq(tsc->bytes, n / 32 * 2);
	ck_assert_int_eq(memcmp(gsc, sc, n / 32 * 2), 0);
	ck_assert_int_eq(gsh[0], 256);
	ck_assert_int_eq(gsh[1], 64);
	ck_assert_ptr_null(k2st_find(c4, e));
	const k2st_tensor *sh = k2st_find(c4, "model.layers.2.mlp.shared_experts.down_proj.weight");
	ck_assert_ptr_nonnull(sh);
	ck_assert_uint_eq(sh->dtype, K2_DTYPE_BF16);
	free(gp);
	free(gsc);
	free(gsh);
	free(packed);
	free(sc);
	free(w);

	/* the fp8 index names a shard holding each tensor */
	char ip[600];
	snprintf(ip, sizeof(ip), "%s/model.safetensors.index.json", d8);
	json_error_t je;
	json_t *idx = json_load_file(ip, 0, &je);
	ck_assert_ptr_nonnull(idx);
	json_t *map = json_object_get(idx, "weight_map");
	ck_assert_uint_eq(json_object_size(map), k2st_count(c8));
	for (size_t i = 0; i < k2st_count(c8); i++) {
		const k2st_tensor *t = k2st_at(c8, i);
		const char *f = json_string_value(json_object_get(map, t->name));
		ck_assert_ptr_nonnull(f);
		ck_assert_ptr_nonnull(strstr(k2st_shard_path(c8, t->shard), f));
	}
	json_decref(idx);
	k2st_close(c16);
	k2st_close(c8);
	k2st_close(c4);
}
END_TEST

START_TEST(test_cancel_and_bad_dir)
{
	volatile sig_atomic_t flag = 1;
	k2g_opts o = default_opts();
	o.cancel = &flag;
	char out[512];
	snprintf(out, sizeof(out), "%s/c", tu_tmpdir);
	k2_err err = {{0}};
	ck_assert_int_eq(k2g_generate(out, &o, NULL, &err), -EINTR);
	DIR *d = opendir(out);
	ck_assert_ptr_nonnull(d);
	struct dirent *de;
	while ((de = readdir(d)))
		ck_assert_msg(de->d_name[0] == '.', "%s left behind", de->d_name);
	closedir(d);
	o.cancel = NULL;
	ck_assert_int_lt(k2g_generate("/proc/no/such/dir", &o, NULL, &err), 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "/proc/no/such/dir"));
}
END_TEST

static Suite *gen_suite(void)
{
	Suite *s = suite_create("gen");
	TCase *tc = tu_tcase(s, "gen", 60);
	tcase_add_unchecked_fixture(tc, tu_tmpdir_setup, tu_tmpdir_teardown);
	tcase_add_loop_test(tc, test_tiny_matches_fixture, 0, 3);
	TU_ADD_TESTS(tc, test_k2_preset, test_set, test_q_proj_without_q_lora, test_values,
		     test_quantized_from_bf16, test_cancel_and_bad_dir);
	return s;
}

int main(void)
{
	return tu_run_suite(gen_suite());
}
