/* test_config.c — config.json parsing (layout/model_config.c): the three
 * fixture configs give their documented values; defaults, eos lists, null
 * q_lora_rank and rope_scaling; and every kind of bad config (missing key,
 * wrong type, out of range, unsupported quantization) is an error naming the
 * file and the key. */
#include "layout.h"

#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static void load_fixture(const char *name, k2_model_config *c)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s/model/config.json", tu_fixtures(), name);
	k2_err err = {{0}};
	int rc = k2_config_load(path, c, &err);
	ck_assert_msg(rc == 0, "%s: %s", path, err.msg);
}

static void check_common(const k2_model_config *c)
{
	ck_assert_uint_eq(c->vocab_size, 1024);
	ck_assert_uint_eq(c->hidden_size, 256);
	ck_assert_uint_eq(c->intermediate_size, 512);
	ck_assert_uint_eq(c->moe_intermediate_size, 64);
	ck_assert_uint_eq(c->num_hidden_layers, 4);
	ck_assert_uint_eq(c->num_attention_heads, 4);
	ck_assert_uint_eq(c->num_key_value_heads, 4);
	ck_assert_uint_eq(c->n_shared_experts, 1);
	ck_assert_uint_eq(c->n_routed_experts, 32);
	ck_assert_uint_eq(c->num_experts_per_tok, 8);
	ck_assert_uint_eq(c->n_group, 1);
	ck_assert_uint_eq(c->topk_group, 1);
	ck_assert_uint_eq(c->first_k_dense_replace, 1);
	ck_assert_uint_eq(c->moe_layer_freq, 1);
	ck_assert_uint_eq(c->q_lora_rank, 128);
	ck_assert_uint_eq(c->kv_lora_rank, 64);
	ck_assert_uint_eq(c->qk_rope_head_dim, 16);
	ck_assert_uint_eq(c->qk_nope_head_dim, 32);
	ck_assert_uint_eq(c->v_head_dim, 32);
	ck_assert_uint_eq(c->max_position_embeddings, 131072);
	ck_assert_float_eq(c->routed_scaling_factor, 2.827f);
	ck_assert_float_eq(c->rms_norm_eps, 1e-6f);
	ck_assert_float_eq(c->rope_theta, 50000.0f);
	ck_assert_int_eq(c->norm_topk_prob, 1);
	ck_assert_int_eq(c->tie_word_embeddings, 0);
	ck_assert_int_eq(c->bos_token_id, 1);
	ck_assert_int_eq(c->eos_token_id, 2);
	ck_assert_str_eq(c->scoring_func, "sigmoid");
	ck_assert_str_eq(c->topk_method, "noaux_tc");
	ck_assert_int_eq(c->rope_yarn, 1);
	ck_assert_float_eq(c->rope_factor, 32.0f);
	ck_assert_uint_eq(c->rope_original_max_position, 4096);
	ck_assert_float_eq(c->rope_beta_fast, 1.0f);
	ck_assert_float_eq(c->rope_beta_slow, 1.0f);
	ck_assert_float_eq(c->rope_mscale, 1.0f);
	ck_assert_float_eq(c->rope_mscale_all_dim, 1.0f);
	ck_assert(!k2_config_is_moe_layer(c, 0));
	ck_assert(k2_config_is_moe_layer(c, 1));
	ck_assert(k2_config_is_moe_layer(c, 3));
	ck_assert(!k2_config_is_moe_layer(c, 4));
}

START_TEST(test_fixture_configs)
{
	k2_model_config c;
	load_fixture("k2-tiny-bf16", &c);
	check_common(&c);
	ck_assert_uint_eq(c.source_format, K2_FORMAT_BF16);
	load_fixture("k2-tiny-fp8", &c);
	check_common(&c);
	ck_assert_uint_eq(c.source_format, K2_FORMAT_FP8_B128);
	ck_assert_uint_eq(c.fp8_block_rows, 128);
	ck_assert_uint_eq(c.fp8_block_cols, 128);
	load_fixture("k2-tiny-int4", &c);
	check_common(&c);
	ck_assert_uint_eq(c.source_format, K2_FORMAT_INT4_G32);
	ck_assert_uint_eq(c.int4_group, 32);
}
END_TEST

/* The required keys only, with placeholders for substitution. */
#define BASE \
	"\"vocab_size\": 1000, \"hidden_size\": 64, \"intermediate_size\": 128, " \
	"\"moe_intermediate_size\": 32, \"num_hidden_layers\": 5, " \
	"\"num_attention_heads\": 4, \"n_routed_experts\": 16, \"num_experts_per_tok\": 4, " \
	"\"kv_lora_rank\": 16, \"qk_rope_head_dim\": 8, \"qk_nope_head_dim\": 8, " \
	"\"v_head_dim\": 8"

static int parse(const char *json, k2_model_config *c, k2_err *err)
{
	memset(err, 0, sizeof(*err));
	return k2_config_parse(json, strlen(json), "cfg/config.json", c, err);
}

START_TEST(test_defaults)
{
	k2_model_config c;
	k2_err err;
	ck_assert_msg(parse("{" BASE "}", &c, &err) == 0, "%s", err.msg);
	/* transformers' DeepseekV3Config defaults */
	ck_assert_uint_eq(c.num_key_value_heads, 4);
	ck_assert_uint_eq(c.q_lora_rank, 1536);
	ck_assert_uint_eq(c.n_shared_experts, 1);
	ck_assert_uint_eq(c.n_group, 8);
	ck_assert_uint_eq(c.topk_group, 4);
	ck_assert_uint_eq(c.first_k_dense_replace, 3);
	ck_assert_uint_eq(c.moe_layer_freq, 1);
	ck_assert_uint_eq(c.max_position_embeddings, 4096);
	ck_assert_float_eq(c.routed_scaling_factor, 2.5f);
	ck_assert_float_eq(c.rms_norm_eps, 1e-6f);
	ck_assert_float_eq(c.rope_theta, 10000.0f);
	ck_assert_int_eq(c.norm_topk_prob, 1);
	ck_assert_int_eq(c.tie_word_embeddings, 0);
	ck_assert_int_eq(c.bos_token_id, -1);
	ck_assert_int_eq(c.eos_token_id, -1);
	ck_assert_str_eq(c.scoring_func, "sigmoid");
	ck_assert_str_eq(c.topk_method, "noaux_tc");
	ck_assert_int_eq(c.rope_yarn, 0);
	ck_assert_uint_eq(c.source_format, K2_FORMAT_BF16);
	ck_assert(!k2_config_is_moe_layer(&c, 2));
	ck_assert(k2_config_is_moe_layer(&c, 3));

	/* Nulls, lists, yarn defaults, a moe_layer_freq of 2. */
	ck_assert_msg(parse("{" BASE ", \"q_lora_rank\": null, \"eos_token_id\": [7, 9], "
			    "\"bos_token_id\": null, \"n_group\": 4, \"topk_group\": 2, "
			    "\"first_k_dense_replace\": 1, \"moe_layer_freq\": 2, "
			    "\"num_key_value_heads\": 2, \"max_position_embeddings\": 8192, "
			    "\"scoring_func\": \"softmax\", \"topk_method\": \"greedy\", "
			    "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 40}}",
			    &c, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(c.q_lora_rank, 0);
	ck_assert_int_eq(c.eos_token_id, 7);
	ck_assert_int_eq(c.bos_token_id, -1);
	ck_assert_uint_eq(c.num_key_value_heads, 2);
	ck_assert_str_eq(c.scoring_func, "softmax");
	ck_assert_str_eq(c.topk_method, "greedy");
	ck_assert_int_eq(c.rope_yarn, 1);
	ck_assert_float_eq(c.rope_factor, 40.0f);
	ck_assert_uint_eq(c.rope_original_max_position, 8192);
	ck_assert_float_eq(c.rope_beta_fast, 32.0f);
	ck_assert_float_eq(c.rope_beta_slow, 1.0f);
	ck_assert_float_eq(c.rope_mscale, 1.0f);
	ck_assert_float_eq(c.rope_mscale_all_dim, 0.0f);
	ck_assert(!k2_config_is_moe_layer(&c, 0));
	ck_assert(k2_config_is_moe_layer(&c, 2));
	ck_assert(!k2_config_is_moe_layer(&c, 3));
	ck_assert(k2_config_is_moe_layer(&c, 4));

	ck_assert_msg(parse("{" BASE ", \"rope_scaling\": null}", &c, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(c.rope_yarn, 0);
}
END_TEST

/* The BASE config with `key` set to the JSON text `value` (replaced when
 * BASE has the key, added otherwise), as a complete object. */
static const char *with(const char *key, const char *value)
{
	static char out[2048];
	const char *base = BASE;
	char pat[80];
	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	const char *p = strstr(base, pat);
	if (!p) {
		snprintf(out, sizeof(out), "{%s, %s%s}", base, pat, value);
		return out;
	}
	const char *end = strchr(p, ',');
	if (!end)
		end = p + strlen(p);
	snprintf(out, sizeof(out), "{%.*s%s%s%s}", (int)(p - base), base, pat, value, end);
	return out;
}

/* Expects an error whose message contains every string given. */
static void expect_error(const char *json, const char *want1, const char *want2)
{
	k2_model_config c;
	k2_err err;
	int rc = parse(json, &c, &err);
	ck_assert_msg(rc == -EINVAL, "accepted (%d): %s", rc, json);
	ck_assert_msg(strstr(err.msg, "cfg/config.json") != NULL, "no file name: %s", err.msg);
	ck_assert_msg(strstr(err.msg, want1) != NULL, "'%s' not in: %s", want1, err.msg);
	if (want2)
		ck_assert_msg(strstr(err.msg, want2) != NULL, "'%s' not in: %s", want2, err.msg);
	ck_assert_msg(strchr(err.msg, '\n') == NULL, "not one line: %s", err.msg);
}

START_TEST(test_bad_configs)
{
	expect_error("{\"vocab_size\": 1000, \"intermediate_size\": 128}",
		     "required key 'hidden_size' missing", NULL);
	/* Each required key, removed in turn. */
	static const char *const req[] = {
		"vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size",
		"num_hidden_layers", "num_attention_heads", "n_routed_experts",
		"num_experts_per_tok", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim",
		"v_head_dim"};
	for (size_t i = 0; i < sizeof(req) / sizeof(req[0]); i++) {
		char json[1024], want[128];
		snprintf(json, sizeof(json), "{" BASE "}");
		char key[64];
		snprintf(key, sizeof(key), "\"%s\"", req[i]);
		char *p = strstr(json, key);
		ck_assert_ptr_nonnull(p);
		p[1] = 'X'; /* rename the key */
		snprintf(want, sizeof(want), "'%s' missing", req[i]);
		expect_error(json, want, NULL);
	}
	expect_error(with("num_attention_heads", "\"4\""), "'num_attention_heads'", "wrong type");
	expect_error(with("kv_lora_rank", "16.5"), "'kv_lora_rank'", "wrong type");
	expect_error("{\"hidden_size\": \"256\", \"vocab_size\": 10}", "'hidden_size'", "wrong type");
	expect_error("{" BASE ", \"n_group\": 3}", "'n_group'", "n_routed_experts");
	expect_error("{" BASE ", \"n_group\": 4, \"topk_group\": 5}", "'topk_group'", NULL);
	expect_error(with("num_experts_per_tok", "17"), "'num_experts_per_tok'", NULL);
	expect_error("{" BASE ", \"first_k_dense_replace\": 6}", "'first_k_dense_replace'", NULL);
	expect_error(with("hidden_size", "0"), "'hidden_size'", "out of range");
	expect_error(with("hidden_size", "-5"), "'hidden_size'", "out of range");
	expect_error(with("hidden_size", "2097152"), "'hidden_size'", "out of range");
	expect_error(with("vocab_size", "8388608"), "'vocab_size'", "out of range");
	expect_error("{" BASE ", \"rms_norm_eps\": -1}", "'rms_norm_eps'", NULL);
	/* positive, but 0 as a float (found by fuzz_config) */
	expect_error("{" BASE ", \"rms_norm_eps\": 1e-50}", "'rms_norm_eps'", "out of range");
	expect_error("{" BASE ", \"norm_topk_prob\": 1}", "'norm_topk_prob'", "wrong type");
	expect_error("{" BASE ", \"scoring_func\": \"relu\"}", "'scoring_func'", NULL);
	expect_error("{" BASE ", \"hidden_act\": \"gelu\"}", "'hidden_act'", NULL);
	expect_error("{" BASE ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}}",
		     "linear", NULL);
	expect_error("{" BASE ", \"rope_scaling\": {\"type\": \"yarn\"}}", "factor", "missing");
	expect_error("{" BASE ", \"quantization_config\": {\"quant_method\": \"fp8\", "
		     "\"weight_block_size\": [64, 64]}}", "weight_block_size", NULL);
	expect_error("{" BASE ", \"quantization_config\": {\"quant_method\": \"awq\"}}", "awq", NULL);
	expect_error("{" BASE ", \"quantization_config\": {\"quant_method\": \"compressed-tensors\", "
		     "\"format\": \"pack-quantized\", \"config_groups\": {\"g\": {\"weights\": "
		     "{\"num_bits\": 8, \"type\": \"int\", \"symmetric\": true, \"strategy\": "
		     "\"group\", \"group_size\": 32}}}}}", "num_bits", NULL);
	expect_error("{" BASE ", \"quantization_config\": {\"quant_method\": \"compressed-tensors\", "
		     "\"format\": \"pack-quantized\", \"config_groups\": {\"g\": {\"weights\": "
		     "{\"num_bits\": 4, \"type\": \"int\", \"symmetric\": true, \"strategy\": "
		     "\"group\", \"group_size\": 128}}}}}", "group_size", NULL);
	expect_error("{" BASE ", \"quantization_config\": {\"quant_method\": \"compressed-tensors\", "
		     "\"format\": \"float-quantized\"}}", "float-quantized", NULL);
	expect_error("{" BASE ", \"hidden_size\": 64}", "duplicate", NULL);
	/* with() itself: replacing keeps the config valid. */
	k2_model_config c;
	k2_err err;
	ck_assert_msg(parse(with("hidden_size", "96"), &c, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(c.hidden_size, 96);
	ck_assert_uint_eq(c.v_head_dim, 8);
	expect_error("{" BASE, "malformed", NULL);
	expect_error("[1, 2]", "not a JSON object", NULL);
}
END_TEST

START_TEST(test_load_missing_file)
{
	k2_model_config c;
	k2_err err = {{0}};
	ck_assert_int_eq(k2_config_load("/nonexistent/dir/config.json", &c, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/dir/config.json"));
}
END_TEST

static Suite *config_suite(void)
{
	Suite *s = suite_create("config");
	TU_ADD_TESTS(tu_tcase(s, "config", 0), test_fixture_configs, test_defaults,
		     test_bad_configs, test_load_missing_file);
	return s;
}

int main(void)
{
	return tu_run_suite(config_suite());
}
