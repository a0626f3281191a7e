/* fuzz_config.c — libFuzzer target for the config.json reader
 * (layout/model_config.c, k2_config_parse). Any bytes are read as the text of
 * a config.json. The contract:
 *   - a refusal is -EINVAL with a message naming the file, and leaves the
 *     output zeroed;
 *   - an accepted config keeps every promise the engine relies on: each
 *     dimension in range, num_experts_per_tok <= n_routed_experts, n_group
 *     divides n_routed_experts, topk_group <= n_group, first_k_dense_replace
 *     <= num_hidden_layers, finite positive scales, a known scoring function,
 *     top-k method and source format;
 *   - the parse is a function of the values only: the config written back as
 *     canonical JSON (every key explicit) parses to the same struct.
 * A broken promise aborts, for libFuzzer to report. Built by `make fuzz`. */
#include "layout.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_PATH "fuzz/config.json"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_config: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	abort();
}

static void check_accepted(const k2_model_config *m)
{
	const uint32_t D = 1u << 20;
	const uint32_t dims[] = {m->hidden_size, m->intermediate_size, m->moe_intermediate_size,
				 m->num_hidden_layers, m->num_attention_heads,
				 m->num_key_value_heads, m->n_routed_experts,
				 m->num_experts_per_tok, m->kv_lora_rank, m->qk_rope_head_dim,
				 m->qk_nope_head_dim, m->v_head_dim, m->n_group, m->topk_group,
				 m->moe_layer_freq};
	for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++)
		if (dims[i] < 1 || dims[i] > D)
			fail("a dimension out of range", NULL);
	if (m->vocab_size < 1 || m->vocab_size > (1u << 22) || m->q_lora_rank > D ||
	    m->n_shared_experts > D || m->max_position_embeddings < 1 ||
	    m->max_position_embeddings > INT32_MAX)
		fail("a size out of range", NULL);
	if (m->num_experts_per_tok > m->n_routed_experts ||
	    m->n_routed_experts % m->n_group != 0 || m->topk_group > m->n_group ||
	    m->first_k_dense_replace > m->num_hidden_layers)
		fail("a relation between keys does not hold", NULL);
	const float pos[] = {m->routed_scaling_factor, m->rms_norm_eps, m->rope_theta,
			     m->rope_factor, m->rope_beta_fast, m->rope_beta_slow};
	for (size_t i = 0; i < sizeof(pos) / sizeof(pos[0]); i++)
		if (!isfinite(pos[i]) || !(pos[i] > 0))
			fail("a scale is not finite and positive", NULL);
	if (!isfinite(m->rope_mscale) || m->rope_mscale < 0 || !isfinite(m->rope_mscale_all_dim) ||
	    m->rope_mscale_all_dim < 0 || m->rms_norm_eps > 1 || m->rope_original_max_position < 1)
		fail("a RoPE value out of range", NULL);
	if (strcmp(m->scoring_func, "sigmoid") && strcmp(m->scoring_func, "softmax"))
		fail("an unknown scoring function", m->scoring_func);
	if (strcmp(m->topk_method, "noaux_tc") && strcmp(m->topk_method, "greedy") &&
	    strcmp(m->topk_method, "group_limited_greedy"))
		fail("an unknown top-k method", m->topk_method);
	if (!(m->source_format == K2_FORMAT_BF16 ||
	      (m->source_format == K2_FORMAT_FP8_B128 && m->fp8_block_rows == 128 &&
	       m->fp8_block_cols == 128) ||
	      (m->source_format == K2_FORMAT_INT4_G32 && m->int4_group == 32)))
		fail("an unknown source format", NULL);
	if ((m->norm_topk_prob != 0 && m->norm_topk_prob != 1) ||
	    (m->tie_word_embeddings != 0 && m->tie_word_embeddings != 1) || m->bos_token_id < -1 ||
	    m->eos_token_id < -1 || (m->rope_yarn != 0 && m->rope_yarn != 1))
		fail("a flag or token id out of range", NULL);
	/* Every layer index is in range: the engine indexes by it. */
	for (uint32_t l = 0; l < m->num_hidden_layers && l < 256; l++)
		if (k2_config_is_moe_layer(m, l) && l < m->first_k_dense_replace)
			fail("a dense layer counted as MoE", NULL);
}

static void set_u32(json_t *o, const char *key, uint32_t v)
{
	json_object_set_new(o, key, json_integer(v));
}

static void set_f32(json_t *o, const char *key, float v)
{
	json_object_set_new(o, key, json_real(v));
}

/* The config as canonical JSON: every key the parser reads, explicit. */
static char *write_back(const k2_model_config *m)
{
	json_t *o = json_object();
	set_u32(o, "vocab_size", m->vocab_size);
	set_u32(o, "hidden_size", m->hidden_size);
	set_u32(o, "intermediate_size", m->intermediate_size);
	set_u32(o, "moe_intermediate_size", m->moe_intermediate_size);
	set_u32(o, "num_hidden_layers", m->num_hidden_layers);
	set_u32(o, "num_attention_heads", m->num_attention_heads);
	set_u32(o, "num_key_value_heads", m->num_key_value_heads);
	set_u32(o, "n_shared_experts", m->n_shared_experts);
	set_u32(o, "n_routed_experts", m->n_routed_experts);
	set_u32(o, "num_experts_per_tok", m->num_experts_per_tok);
	set_u32(o, "n_group", m->n_group);
	set_u32(o, "topk_group", m->topk_group);
	set_u32(o, "first_k_dense_replace", m->first_k_dense_replace);
	set_u32(o, "moe_layer_freq", m->moe_layer_freq);
	set_u32(o, "q_lora_rank", m->q_lora_rank);
	set_u32(o, "kv_lora_rank", m->kv_lora_rank);
	set_u32(o, "qk_rope_head_dim", m->qk_rope_head_dim);
	set_u32(o, "qk_nope_head_dim", m->qk_nope_head_dim);
	set_u32(o, "v_head_dim", m->v_head_dim);
	set_u32(o, "max_position_embeddings", m->max_position_embeddings);
	set_f32(o, "routed_scaling_factor", m->routed_scaling_factor);
	set_f32(o, "rms_norm_eps", m->rms_norm_eps);
	set_f32(o, "rope_theta", m->rope_theta);
	json_object_set_new(o, "norm_topk_prob", json_boolean(m->norm_topk_prob));
	json_object_set_new(o, "tie_word_embeddings", json_boolean(m->tie_word_embeddings));
	json_object_set_new(o, "bos_token_id",
			    m->bos_token_id < 0 ? json_null() : json_integer(m->bos_token_id));
	json_object_set_new(o, "eos_token_id",
			    m->eos_token_id < 0 ? json_null() : json_integer(m->eos_token_id));
	json_object_set_new(o, "scoring_func", json_string(m->scoring_func));
	json_object_set_new(o, "topk_method", json_string(m->topk_method));
	json_object_set_new(o, "hidden_act", json_string("silu"));
	if (m->rope_yarn) {
		json_t *r = json_object();
		json_object_set_new(r, "type", json_string("yarn"));
		set_f32(r, "factor", m->rope_factor);
		set_u32(r, "original_max_position_embeddings", m->rope_original_max_position);
		set_f32(r, "beta_fast", m->rope_beta_fast);
		set_f32(r, "beta_slow", m->rope_beta_slow);
		set_f32(r, "mscale", m->rope_mscale);
		set_f32(r, "mscale_all_dim", m->rope_mscale_all_dim);
		json_object_set_new(o, "rope_scaling", r);
	} else {
		json_object_set_new(o, "rope_scaling", json_null());
	}
	if (m->source_format == K2_FORMAT_FP8_B128) {
		json_t *q = json_pack("{s:s, s:s, s:[i,i]}", "quant_method", "fp8", "fmt", "e4m3",
				      "weight_block_size", 128, 128);
		json_object_set_new(o, "quantization_config", q);
	} else if (m->source_format == K2_FORMAT_INT4_G32) {
		json_t *q = json_pack("{s:s, s:s, s:{s:{s:{s:i, s:s, s:b, s:s, s:i}}}}",
				      "quant_method", "compressed-tensors", "format",
				      "pack-quantized", "config_groups", "group_0", "weights",
				      "num_bits", 4, "type", "int", "symmetric", 1, "strategy",
				      "group", "group_size", 32);
		json_object_set_new(o, "quantization_config", q);
	}
	char *s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}

/* Field by field: floats compare as values (-0 equals 0). */
static int same_config(const k2_model_config *a, const k2_model_config *b)
{
	k2_model_config x = *a, y = *b;
	float *fx[] = {&x.routed_scaling_factor, &x.rms_norm_eps, &x.rope_theta, &x.rope_factor,
		       &x.rope_beta_fast, &x.rope_beta_slow, &x.rope_mscale,
		       &x.rope_mscale_all_dim};
	float *fy[] = {&y.routed_scaling_factor, &y.rms_norm_eps, &y.rope_theta, &y.rope_factor,
		       &y.rope_beta_fast, &y.rope_beta_slow, &y.rope_mscale,
		       &y.rope_mscale_all_dim};
	for (size_t i = 0; i < sizeof(fx) / sizeof(fx[0]); i++) {
		if (*fx[i] != *fy[i])
			return 0;
		*fx[i] = *fy[i] = 0;
	}
	return memcmp(&x, &y, sizeof(x)) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A private copy sized exactly, so ASan flags a read one past the end. */
	char *text = malloc(size ? size : 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	k2_model_config m, zero, again;
	k2_err err = {{0}};
	memset(&m, 0xa5, sizeof(m));
	memset(&zero, 0, sizeof(zero));
	int rc = k2_config_parse(text, size, FUZZ_PATH, &m, &err);
	if (rc) {
		if (rc != -EINVAL)
			fail("unexpected error code", err.msg);
		if (strncmp(err.msg, FUZZ_PATH ": ", sizeof(FUZZ_PATH ": ") - 1) != 0)
			fail("a refusal does not name the file", err.msg);
		if (memcmp(&m, &zero, sizeof(m)) != 0)
			fail("a refusal left values behind", NULL);
		goto out;
	}
	check_accepted(&m);
	char *back = write_back(&m);
	if (!back)
		goto out;
	rc = k2_config_parse(back, strlen(back), FUZZ_PATH, &again, &err);
	if (rc)
		fail("a written-back config is refused", err.msg);
	if (!same_config(&m, &again))
		fail("a written-back config parses to other values", back);
	free(back);
out:
	free(text);
	return 0;
}
