/* model_config.c — parses a DeepSeek-V3-family config.json (DeepSeek-V3,
 * Kimi-K2, Kimi-K2-Thinking) into k2_model_config: the dimensions, routing,
 * RoPE/YaRN parameters and the source checkpoint's quantization. Keys absent
 * from the file take the defaults of transformers' DeepseekV3Config; every
 * required key missing, of the wrong type or out of range is an error naming
 * the file and the key. */
#include "layout.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CFG_MAX_DIM (1u << 20)
#define CFG_MAX_VOCAB (1u << 22)

struct cfg_ctx {
	const char *what;
	k2_err *err;
};

static const char *json_type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a real number";
	case JSON_TRUE: case JSON_FALSE: return "a boolean";
	case JSON_NULL: return "null";
	}
	return "?";
}

/* A mask of JSON types, for check_key. */
#define JSON_TYPES(t) (1u << (t))

/* Checks v, the value of key `key` (NULL when absent; messages name it
 * `prefix``key`). Returns 1 when it is present with one of `types` (a
 * JSON_TYPES mask), 0 when it is absent or null and not required (the caller
 * takes its default), or -EINVAL naming the key when it is required but
 * missing, or of another type (`expected` names the type wanted: "an
 * integer"). */
static int check_key(const struct cfg_ctx *c, const json_t *v, const char *prefix,
		     const char *key, int required, unsigned types, const char *expected)
{
	if (!v || json_is_null(v)) {
		if (required)
			return k2_err_set(c->err, -EINVAL, "%s: required key '%s%s' missing",
					  c->what, prefix, key);
		return 0;
	}
	if (!(types & JSON_TYPES(json_typeof(v))))
		return k2_err_set(c->err, -EINVAL,
				  "%s: key '%s%s' has the wrong type (%s, expected %s)", c->what,
				  prefix, key, json_type_name(v), expected);
	return 1;
}

/* Reads integer key `key` of `obj` into *out, within [lo, hi]. When the key is
 * absent or null *out = def, unless required. Returns 0 or -EINVAL. */
static int get_u32(const struct cfg_ctx *c, const json_t *obj, const char *prefix,
		   const char *key, int required, uint32_t def, uint32_t lo, uint32_t hi,
		   uint32_t *out)
{
	const json_t *v = json_object_get(obj, key);
	int rc = check_key(c, v, prefix, key, required, JSON_TYPES(JSON_INTEGER), "an integer");
	if (rc == 0)
		*out = def;
	if (rc <= 0)
		return rc;
	json_int_t x = json_integer_value(v);
	if (x < (json_int_t)lo || x > (json_int_t)hi)
		return k2_err_set(c->err, -EINVAL, "%s: key '%s%s' = %lld is out of range (%u … %u)",
				  c->what, prefix, key, (long long)x, lo, hi);
	*out = (uint32_t)x;
	return 0;
}

/* Reads a number (integer or real) into *out, finite, within (lo, hi] when
 * lo_open, else [lo, hi]. */
static int get_f32(const struct cfg_ctx *c, const json_t *obj, const char *prefix,
		   const char *key, int required, float def, double lo, int lo_open,
		   double hi, float *out)
{
	const json_t *v = json_object_get(obj, key);
	int rc = check_key(c, v, prefix, key, required,
			   JSON_TYPES(JSON_INTEGER) | JSON_TYPES(JSON_REAL), "a number");
	if (rc == 0)
		*out = def;
	if (rc <= 0)
		return rc;
	double x = json_number_value(v);
	/* with lo_open, a value that rounds to lo as a float (1e-50) is out too */
	if (!isfinite(x) || (lo_open ? x <= lo || (float)x <= lo : x < lo) || x > hi)
		return k2_err_set(c->err, -EINVAL, "%s: key '%s%s' = %g is out of range (%s%g … %g)",
				  c->what, prefix, key, x, lo_open ? "> " : "", lo, hi);
	*out = (float)x;
	return 0;
}

static int get_bool(const struct cfg_ctx *c, const json_t *obj, const char *key, int def,
		    int *out)
{
	const json_t *v = json_object_get(obj, key);
	int rc = check_key(c, v, "", key, 0, JSON_TYPES(JSON_TRUE) | JSON_TYPES(JSON_FALSE),
			   "a boolean");
	if (rc == 0)
		*out = def;
	if (rc <= 0)
		return rc;
	*out = json_is_true(v);
	return 0;
}

/* A string key that must be one of `allowed` (NULL-terminated list). */
static int get_enum(const struct cfg_ctx *c, const json_t *obj, const char *key,
		    const char *def, const char *const *allowed, char *out, size_t cap)
{
	const json_t *v = json_object_get(obj, key);
	int rc = check_key(c, v, "", key, 0, JSON_TYPES(JSON_STRING), "a string");
	if (rc < 0)
		return rc;
	const char *s = rc ? json_string_value(v) : def;
	for (const char *const *a = allowed; *a; a++) {
		if (strcmp(*a, s) == 0) {
			snprintf(out, cap, "%s", s);
			return 0;
		}
	}
	return k2_err_set(c->err, -EINVAL, "%s: key '%s' = \"%.64s\" is not supported", c->what,
			  key, s);
}

/* bos/eos: an integer, null, absent (-1) or, for eos, a list (its first). */
static int get_token_id(const struct cfg_ctx *c, const json_t *obj, const char *key,
			int32_t *out)
{
	const json_t *v = json_object_get(obj, key);
	*out = -1;
	if (json_is_array(v)) {
		if (json_array_size(v) == 0)
			return 0;
		v = json_array_get(v, 0);
	}
	int rc = check_key(c, v, "", key, 0, JSON_TYPES(JSON_INTEGER), "an integer");
	if (rc <= 0)
		return rc;
	json_int_t x = json_integer_value(v);
	if (x < 0 || x > INT32_MAX)
		return k2_err_set(c->err, -EINVAL, "%s: key '%s' = %lld is out of range", c->what,
				  key, (long long)x);
	*out = (int32_t)x;
	return 0;
}

/* rope_scaling (or transformers 5's rope_parameters): null/absent/default →
 * no scaling; yarn → its parameters; anything else is unsupported. */
static int parse_rope(const struct cfg_ctx *c, const json_t *root, k2_model_config *m)
{
	const char *key = "rope_scaling";
	const json_t *rs = json_object_get(root, key);
	if (!rs || json_is_null(rs)) {
		key = "rope_parameters";
		rs = json_object_get(root, key);
		if (!rs || json_is_null(rs))
			return 0;
	}
	int rc = check_key(c, rs, "", key, 0, JSON_TYPES(JSON_OBJECT), "an object");
	if (rc < 0)
		return rc;
	char prefix[32];
	snprintf(prefix, sizeof(prefix), "%s.", key);
	if (strcmp(key, "rope_parameters") == 0 && !json_object_get(root, "rope_theta")) {
		rc = get_f32(c, rs, prefix, "rope_theta", 0, m->rope_theta, 0, 1, 1e12,
			     &m->rope_theta);
		if (rc < 0)
			return rc;
	}
	const json_t *t = json_object_get(rs, "type");
	if (!t)
		t = json_object_get(rs, "rope_type");
	if (!json_is_string(t))
		return k2_err_set(c->err, -EINVAL, "%s: key '%stype' missing or not a string",
				  c->what, prefix);
	const char *type = json_string_value(t);
	if (strcmp(type, "default") == 0)
		return 0;
	if (strcmp(type, "yarn") != 0)
		return k2_err_set(c->err, -EINVAL,
				  "%s: key '%stype' = \"%.32s\" is not supported (only yarn)", c->what,
				  prefix, type);
	m->rope_yarn = 1;
	if ((rc = get_f32(c, rs, prefix, "factor", 1, 1, 0, 1, 1e6, &m->rope_factor)) < 0 ||
	    (rc = get_u32(c, rs, prefix, "original_max_position_embeddings", 0,
			  m->max_position_embeddings, 1, INT32_MAX,
			  &m->rope_original_max_position)) < 0 ||
	    (rc = get_f32(c, rs, prefix, "beta_fast", 0, 32, 0, 1, 1e6, &m->rope_beta_fast)) < 0 ||
	    (rc = get_f32(c, rs, prefix, "beta_slow", 0, 1, 0, 1, 1e6, &m->rope_beta_slow)) < 0 ||
	    (rc = get_f32(c, rs, prefix, "mscale", 0, 1, 0, 0, 1e6, &m->rope_mscale)) < 0 ||
	    (rc = get_f32(c, rs, prefix, "mscale_all_dim", 0, 0, 0, 0, 1e6,
			  &m->rope_mscale_all_dim)) < 0)
		return rc;
	return 0;
}

/* compressed-tensors: every config group must be weight-only symmetric int4,
 * group strategy, group size 32, pack-quantized. */
static int parse_compressed_tensors(const struct cfg_ctx *c, const json_t *q, k2_model_config *m)
{
	const json_t *fmt = json_object_get(q, "format");
	if (!json_is_string(fmt) || strcmp(json_string_value(fmt), "pack-quantized") != 0)
		return k2_err_set(c->err, -EINVAL,
				  "%s: quantization_config.format is %s%s%s; only \"pack-quantized\" "
				  "compressed-tensors is supported", c->what,
				  json_is_string(fmt) ? "\"" : "missing or not a string",
				  json_is_string(fmt) ? json_string_value(fmt) : "",
				  json_is_string(fmt) ? "\"" : "");
	const json_t *groups = json_object_get(q, "config_groups");
	if (!json_is_object(groups) || json_object_size(groups) == 0)
		return k2_err_set(c->err, -EINVAL,
				  "%s: quantization_config.config_groups missing or empty", c->what);
	const char *gname;
	const json_t *g;
	json_object_foreach((json_t *)groups, gname, g) {
		const json_t *w = json_is_object(g) ? json_object_get(g, "weights") : NULL;
		if (!json_is_object(w))
			return k2_err_set(c->err, -EINVAL,
					  "%s: quantization_config.config_groups.%s.weights missing",
					  c->what, gname);
		const json_t *ia = json_object_get(g, "input_activations");
		if (ia && !json_is_null(ia))
			return k2_err_set(c->err, -EINVAL,
					  "%s: quantization_config.config_groups.%s quantizes input "
					  "activations; only weight-only int4 is supported", c->what, gname);
		const json_t *bits = json_object_get(w, "num_bits");
		const json_t *type = json_object_get(w, "type");
		const json_t *sym = json_object_get(w, "symmetric");
		const json_t *strat = json_object_get(w, "strategy");
		const json_t *gs = json_object_get(w, "group_size");
		const char *bad = NULL;
		if (!json_is_integer(bits) || json_integer_value(bits) != 4)
			bad = "num_bits (need 4)";
		else if (!json_is_string(type) || strcmp(json_string_value(type), "int") != 0)
			bad = "type (need \"int\")";
		else if (!json_is_true(sym))
			bad = "symmetric (need true)";
		else if (!json_is_string(strat) || strcmp(json_string_value(strat), "group") != 0)
			bad = "strategy (need \"group\")";
		else if (!json_is_integer(gs) || json_integer_value(gs) != 32)
			bad = "group_size (need 32)";
		if (bad)
			return k2_err_set(c->err, -EINVAL,
					  "%s: quantization_config.config_groups.%s.weights.%s is not "
					  "supported", c->what, gname, bad);
	}
	m->source_format = K2_FORMAT_INT4_G32;
	m->int4_group = 32;
	return 0;
}

static int parse_quant(const struct cfg_ctx *c, const json_t *root, k2_model_config *m)
{
	m->source_format = K2_FORMAT_BF16;
	const json_t *q = json_object_get(root, "quantization_config");
	int rc = check_key(c, q, "", "quantization_config", 0, JSON_TYPES(JSON_OBJECT),
			   "an object");
	if (rc <= 0)
		return rc;
	const json_t *meth = json_object_get(q, "quant_method");
	if (!json_is_string(meth))
		return k2_err_set(c->err, -EINVAL,
				  "%s: key 'quantization_config.quant_method' missing or not a string",
				  c->what);
	const char *method = json_string_value(meth);
	if (strcmp(method, "fp8") == 0) {
		const json_t *fmt = json_object_get(q, "fmt");
		if (fmt && (!json_is_string(fmt) || strcmp(json_string_value(fmt), "e4m3") != 0))
			return k2_err_set(c->err, -EINVAL,
					  "%s: quantization_config.fmt is not \"e4m3\"; only e4m3 fp8 "
					  "is supported", c->what);
		const json_t *bs = json_object_get(q, "weight_block_size");
		if (!json_is_array(bs) || json_array_size(bs) != 2 ||
		    !json_is_integer(json_array_get(bs, 0)) || !json_is_integer(json_array_get(bs, 1)) ||
		    json_integer_value(json_array_get(bs, 0)) != 128 ||
		    json_integer_value(json_array_get(bs, 1)) != 128)
			return k2_err_set(c->err, -EINVAL,
					  "%s: quantization_config.weight_block_size is not [128, 128]; "
					  "only 128x128 block fp8 is supported", c->what);
		m->source_format = K2_FORMAT_FP8_B128;
		m->fp8_block_rows = m->fp8_block_cols = 128;
		return 0;
	}
	if (strcmp(method, "compressed-tensors") == 0)
		return parse_compressed_tensors(c, q, m);
	return k2_err_set(c->err, -EINVAL,
			  "%s: quantization_config.quant_method \"%.32s\" is not supported "
			  "(fp8 or compressed-tensors)", c->what, method);
}

static int parse_root(const struct cfg_ctx *c, const json_t *root, k2_model_config *m)
{
	static const char *const scoring[] = {"sigmoid", "softmax", NULL};
	static const char *const topk[] = {"noaux_tc", "greedy", "group_limited_greedy", NULL};
	static const char *const act[] = {"silu", NULL};
	const uint32_t D = CFG_MAX_DIM;
	int rc;
	char act_buf[16];

#define REQ(key, hi) \
	if ((rc = get_u32(c, root, "", #key, 1, 0, 1, hi, &m->key)) < 0) return rc
#define OPT(key, def, lo, hi) \
	if ((rc = get_u32(c, root, "", #key, 0, def, lo, hi, &m->key)) < 0) return rc

	REQ(vocab_size, CFG_MAX_VOCAB);
	REQ(hidden_size, D);
	REQ(intermediate_size, D);
	REQ(moe_intermediate_size, D);
	REQ(num_hidden_layers, D);
	REQ(num_attention_heads, D);
	REQ(n_routed_experts, D);
	REQ(num_experts_per_tok, D);
	REQ(kv_lora_rank, D);
	REQ(qk_rope_head_dim, D);
	REQ(qk_nope_head_dim, D);
	REQ(v_head_dim, D);
	OPT(num_key_value_heads, m->num_attention_heads, 1, D);
	OPT(n_shared_experts, 1, 0, D);
	OPT(n_group, 8, 1, D);
	OPT(topk_group, 4, 1, D);
	OPT(first_k_dense_replace, 3, 0, D);
	OPT(moe_layer_freq, 1, 1, D);
	OPT(max_position_embeddings, 4096, 1, INT32_MAX);
	/* q_lora_rank: null means no q LoRA (DeepSeek-V2-Lite style); absent takes
	 * DeepseekV3Config's 1536. */
	const json_t *ql = json_object_get(root, "q_lora_rank");
	if (ql && json_is_null(ql))
		m->q_lora_rank = 0;
	else
		OPT(q_lora_rank, 1536, 0, D);
#undef REQ
#undef OPT
	if ((rc = get_f32(c, root, "", "routed_scaling_factor", 0, 2.5f, 0, 1, 1e6,
			  &m->routed_scaling_factor)) < 0 ||
	    (rc = get_f32(c, root, "", "rms_norm_eps", 0, 1e-6f, 0, 1, 1, &m->rms_norm_eps)) < 0 ||
	    (rc = get_f32(c, root, "", "rope_theta", 0, 10000.0f, 0, 1, 1e12, &m->rope_theta)) < 0 ||
	    (rc = get_bool(c, root, "norm_topk_prob", 1, &m->norm_topk_prob)) < 0 ||
	    (rc = get_bool(c, root, "tie_word_embeddings", 0, &m->tie_word_embeddings)) < 0 ||
	    (rc = get_token_id(c, root, "bos_token_id", &m->bos_token_id)) < 0 ||
	    (rc = get_token_id(c, root, "eos_token_id", &m->eos_token_id)) < 0 ||
	    (rc = get_enum(c, root, "scoring_func", "sigmoid", scoring, m->scoring_func,
			   sizeof(m->scoring_func))) < 0 ||
	    (rc = get_enum(c, root, "topk_method", "noaux_tc", topk, m->topk_method,
			   sizeof(m->topk_method))) < 0 ||
	    (rc = get_enum(c, root, "hidden_act", "silu", act, act_buf, sizeof(act_buf))) < 0)
		return rc;
	m->rope_factor = 1;
	m->rope_beta_fast = 32;
	m->rope_beta_slow = 1;
	m->rope_mscale = 1;
	m->rope_mscale_all_dim = 0;
	m->rope_original_max_position = m->max_position_embeddings;
	if ((rc = parse_rope(c, root, m)) < 0 || (rc = parse_quant(c, root, m)) < 0)
		return rc;

	/* Relations between keys. */
	if (m->num_experts_per_tok > m->n_routed_experts)
		return k2_err_set(c->err, -EINVAL,
				  "%s: key 'num_experts_per_tok' = %u is out of range (more than "
				  "n_routed_experts = %u)", c->what, m->num_experts_per_tok,
				  m->n_routed_experts);
	if (m->n_routed_experts % m->n_group != 0)
		return k2_err_set(c->err, -EINVAL,
				  "%s: key 'n_group' = %u is out of range (does not divide "
				  "n_routed_experts = %u)", c->what, m->n_group, m->n_routed_experts);
	if (m->topk_group > m->n_group)
		return k2_err_set(c->err, -EINVAL,
				  "%s: key 'topk_group' = %u is out of range (more than n_group = %u)",
				  c->what, m->topk_group, m->n_group);
	if (m->first_k_dense_replace > m->num_hidden_layers)
		return k2_err_set(c->err, -EINVAL,
				  "%s: key 'first_k_dense_replace' = %u is out of range (more than "
				  "num_hidden_layers = %u)", c->what, m->first_k_dense_replace,
				  m->num_hidden_layers);
	/* num_key_value_heads is not checked against num_attention_heads: MLA
	 * expands keys per attention head from the latent and never uses it
	 * (fixtures/mkref.py's hidden config has 6 heads and 4 kv heads, which
	 * transformers loads and runs). */
	return 0;
}

int k2_config_parse(const char *json, size_t n, const char *what, k2_model_config *out,
		    k2_err *err)
{
	if (!what)
		what = "config.json";
	memset(out, 0, sizeof(*out));
	json_error_t jerr;
	json_t *root = json_loadb(json, n, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return k2_err_set(err, -EINVAL, "%s: malformed JSON at line %d column %d: %s", what,
				  jerr.line, jerr.column, jerr.text);
	struct cfg_ctx c = {what, err};
	int rc;
	if (!json_is_object(root))
		rc = k2_err_set(err, -EINVAL, "%s: top level is not a JSON object", what);
	else
		rc = parse_root(&c, root, out);
	json_decref(root);
	if (rc < 0)
		memset(out, 0, sizeof(*out));
	return rc;
}

int k2_config_load(const char *path, k2_model_config *out, k2_err *err)
{
	char *text;
	size_t n;
	int rc = k2_read_file(path, &text, &n, err);
	if (rc < 0)
		return rc;
	rc = k2_config_parse(text, n, path, out, err);
	free(text);
	return rc;
}

int k2_config_is_moe_layer(const k2_model_config *c, uint32_t layer)
{
	return c->n_routed_experts > 0 && layer < c->num_hidden_layers &&
	       layer >= c->first_k_dense_replace && c->moe_layer_freq > 0 &&
	       layer % c->moe_layer_freq == 0;
}
