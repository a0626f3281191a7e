/* gen.c — synthetic DeepSeek-V3-family checkpoints (bin/k2gen's engine).
 *
 * The tensor list is the one tests/fixtures/mkref.py make_weights builds
 * (q_proj instead of q_a/q_b when q_lora_rank is null), in the same order, with
 * the same value distributions: normal with std fan_in^-0.5, embeddings std 1,
 * norms 1 + 0.1·N(0,1), e_score_correction_bias 0.05·N(0,1) kept float32, the
 * rest rounded to bf16. fp8 and int4 checkpoints quantize those bf16 weights
 * exactly as the hub ships them (k2q_quant_fp8_b128 on every *_proj weight with
 * weight_scale_inv; k2q_quant_int4_g32 on routed experts as compressed-tensors
 * weight_packed / weight_scale / weight_shape), so a seed's fp8 checkpoint is
 * the fp8 quantization of its bf16 one.
 *
 * Values: element i of a weight is a pure function of (seed, weight name, i):
 * counter i of the stream XXH64(name, seed) is hashed (splitmix64) and the
 * ziggurat method turns the hash into a standard normal sample.
 * Tensors are generated in bands of 128-row blocks by a thread pool and
 * appended to the safetensors writer in order. */
#include "gen.h"

#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define DEFAULT_SHARD_BYTES (5ull << 30)
#define BAND_TARGET_BYTES (32u << 20)
#define ROWS_PER_TASK 128u

enum val_kind { VAL_NORMAL, VAL_NORM, VAL_BIAS };
enum store_kind { ST_BF16, ST_F32, ST_FP8, ST_INT4 };

/* One generated weight and the tensors it is stored as. */
struct gtensor {
	char *name;          /* hub name of the weight, "….weight" */
	uint32_t rows, cols; /* a 1-D tensor is rows = 1, one_d = 1 */
	int one_d;
	int kind;            /* enum val_kind */
	float std;
	int store;           /* enum store_kind */
	uint64_t key;        /* XXH64(name, seed) */
	uint64_t bytes;      /* payload bytes of all its tensors */
	int shard;
};

struct pool;

struct gen {
	const k2g_opts *o;
	const char *dir;
	k2_model_config cfg;
	struct gtensor *t;
	size_t n, cap;
	int n_shards;
	uint64_t total_bytes, written;
	int threads;
	float **scratch;     /* [threads][ROWS_PER_TASK × max cols] */
	size_t scratch_elems;
	struct pool *pool;
	k2cli_progress prog;
	/* files written under temporary names */
	char **tmp, **final;
	size_t n_files;
};

void k2g_opts_default(k2g_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->preset = "tiny";
	o->layers = -1;
	o->experts = -1;
	o->format = K2_FORMAT_BF16;
}

/* ---------------------------------------------------------------- config */

static json_t *base_config(int k2)
{
	json_t *rope = json_pack("{s:s, s:f, s:i, s:f, s:f, s:f, s:f}", "type", "yarn", "factor",
				 32.0, "original_max_position_embeddings", 4096, "beta_fast", 1.0,
				 "beta_slow", 1.0, "mscale", 1.0, "mscale_all_dim", 1.0);
	json_t *c = json_object();
	json_t *arch = json_pack("[s]", "DeepseekV3ForCausalLM");
	if (!rope || !c || !arch) {
		json_decref(rope);
		json_decref(c);
		json_decref(arch);
		return NULL;
	}
	struct kv {
		const char *k;
		long long v;
	};
	const struct kv tiny[] = {
		{"vocab_size", 1024}, {"hidden_size", 256}, {"intermediate_size", 512},
		{"moe_intermediate_size", 64}, {"num_hidden_layers", 4},
		{"num_attention_heads", 4}, {"num_key_value_heads", 4}, {"n_shared_experts", 1},
		{"n_routed_experts", 32},
	};
	const struct kv big[] = {
		{"vocab_size", 163840}, {"hidden_size", 7168}, {"intermediate_size", 18432},
		{"moe_intermediate_size", 2048}, {"num_hidden_layers", 61},
		{"num_attention_heads", 64}, {"num_key_value_heads", 64}, {"n_shared_experts", 1},
		{"n_routed_experts", 384},
	};
	const struct kv tiny2[] = {
		{"kv_lora_rank", 64}, {"q_lora_rank", 128}, {"qk_rope_head_dim", 16},
		{"v_head_dim", 32}, {"qk_nope_head_dim", 32},
	};
	const struct kv big2[] = {
		{"kv_lora_rank", 512}, {"q_lora_rank", 1536}, {"qk_rope_head_dim", 64},
		{"v_head_dim", 128}, {"qk_nope_head_dim", 128},
	};
	const struct kv *a = k2 ? big : tiny, *b = k2 ? big2 : tiny2;
	json_object_set_new(c, "architectures", arch);
	json_object_set_new(c, "model_type", json_string("kimi_k2"));
	for (size_t i = 0; i < sizeof(tiny) / sizeof(tiny[0]); i++)
		json_object_set_new(c, a[i].k, json_integer(a[i].v));
	json_object_set_new(c, "routed_scaling_factor", json_real(2.827));
	for (size_t i = 0; i < sizeof(tiny2) / sizeof(tiny2[0]); i++)
		json_object_set_new(c, b[i].k, json_integer(b[i].v));
	json_object_set_new(c, "topk_method", json_string("noaux_tc"));
	json_object_set_new(c, "n_group", json_integer(1));
	json_object_set_new(c, "topk_group", json_integer(1));
	json_object_set_new(c, "num_experts_per_tok", json_integer(8));
	json_object_set_new(c, "moe_layer_freq", json_integer(1));
	json_object_set_new(c, "first_k_dense_replace", json_integer(1));
	json_object_set_new(c, "norm_topk_prob", json_true());
	json_object_set_new(c, "scoring_func", json_string("sigmoid"));
	json_object_set_new(c, "hidden_act", json_string("silu"));
	json_object_set_new(c, "max_position_embeddings", json_integer(131072));
	json_object_set_new(c, "initializer_range", json_real(0.02));
	json_object_set_new(c, "rms_norm_eps", json_real(1e-6));
	json_object_set_new(c, "rope_theta", json_real(50000.0));
	json_object_set_new(c, "rope_scaling", rope);
	json_object_set_new(c, "attention_bias", json_false());
	json_object_set_new(c, "attention_dropout", json_real(0.0));
	json_object_set_new(c, "tie_word_embeddings", json_false());
	json_object_set_new(c, "bos_token_id", json_integer(k2 ? 163584 : 1));
	json_object_set_new(c, "eos_token_id", json_integer(k2 ? 163585 : 2));
	json_object_set_new(c, "torch_dtype", json_string("bfloat16"));
	return c;
}

/* quantization_config as the hub's fp8 (DeepSeek-V3, Kimi-K2) and int4
 * (Kimi-K2-Thinking) checkpoints carry it, and as the fixtures have it. */
static json_t *quant_config(uint32_t format)
{
	if (format == K2_FORMAT_FP8_B128)
		return json_pack("{s:s, s:s, s:s, s:[i,i]}", "activation_scheme", "dynamic", "fmt",
				 "e4m3", "quant_method", "fp8", "weight_block_size", 128, 128);
	if (format != K2_FORMAT_INT4_G32)
		return NULL;
	json_t *w = json_pack("{s:i, s:s, s:b, s:s, s:i, s:b, s:s, s:{}, s:n, s:n}", "num_bits", 4,
			      "type", "int", "symmetric", 1, "strategy", "group", "group_size", 32,
			      "dynamic", 0, "observer", "minmax", "observer_kwargs", "actorder",
			      "block_structure");
	json_t *g = json_pack("{s:[s], s:n, s:n, s:o}", "targets", "Linear", "input_activations",
			      "output_activations", "weights", w);
	return json_pack("{s:s, s:s, s:s, s:n, s:{s:o}, s:[s,s,s,s]}", "quant_method",
			 "compressed-tensors", "format", "pack-quantized", "quantization_status",
			 "compressed", "kv_cache_scheme", "config_groups", "group_0", g, "ignore",
			 "lm_head", "re:.*self_attn.*", "re:.*shared_experts.*",
			 "re:.*mlp\\.(gate|up|gate_up|down)_proj.*");
}

/* Applies one "key=value" (dotted keys reach into objects); the value is
 * JSON when it parses as JSON (numbers, null, true, [..]) and a string
 * otherwise. */
static int apply_set(json_t *root, const char *set, k2_err *err)
{
	const char *eq = strchr(set, '=');
	if (!eq || eq == set)
		return k2_err_set(err, -EINVAL, "--set %s: expected KEY=VALUE", set);
	char key[256];
	size_t kn = (size_t)(eq - set);
	if (kn >= sizeof(key))
		return k2_err_set(err, -EINVAL, "--set %s: key too long", set);
	memcpy(key, set, kn);
	key[kn] = '\0';
	json_t *v = json_loads(eq + 1, JSON_DECODE_ANY, NULL);
	if (!v)
		v = json_string(eq + 1);
	if (!v)
		return k2_err_set(err, -EINVAL, "--set %s: value is not valid UTF-8", set);
	json_t *obj = root;
	char *part = key, *dot;
	while ((dot = strchr(part, '.')) != NULL) {
		*dot = '\0';
		json_t *sub = json_object_get(obj, part);
		if (!sub || !json_is_object(sub)) {
			sub = json_object();
			json_object_set_new(obj, part, sub);
		}
		obj = sub;
		part = dot + 1;
	}
	if (!*part) {
		json_decref(v);
		return k2_err_set(err, -EINVAL, "--set %s: empty key", set);
	}
	json_object_set_new(obj, part, v);
	return 0;
}

int k2g_config_json(const k2g_opts *o, char **out, k2_err *err)
{
	int k2;
	if (strcmp(o->preset, "tiny") == 0)
		k2 = 0;
	else if (strcmp(o->preset, "k2") == 0)
		k2 = 1;
	else
		return k2_err_set(err, -EINVAL, "--preset %s: expected tiny or k2", o->preset);
	if (o->format != K2_FORMAT_BF16 && o->format != K2_FORMAT_FP8_B128 &&
	    o->format != K2_FORMAT_INT4_G32)
		return k2_err_set(err, -EINVAL, "--format: expected bf16, fp8 or int4");
	json_t *c = base_config(k2);
	if (!c)
		return k2_err_set(err, -ENOMEM, "out of memory");
	if (o->layers >= 0)
		json_object_set_new(c, "num_hidden_layers", json_integer(o->layers));
	if (o->experts >= 0) {
		json_object_set_new(c, "n_routed_experts", json_integer(o->experts));
		/* top-k cannot exceed the experts there are */
		if (o->experts < 8)
			json_object_set_new(c, "num_experts_per_tok", json_integer(o->experts));
	}
	json_t *q = quant_config(o->format);
	if (q)
		json_object_set_new(c, "quantization_config", q);
	int rc = 0;
	for (int i = 0; i < o->n_sets && rc == 0; i++)
		rc = apply_set(c, o->sets[i], err);
	char *text = NULL;
	if (rc == 0) {
		text = json_dumps(c, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
		if (!text)
			rc = k2_err_set(err, -ENOMEM, "out of memory");
	}
	json_decref(c);
	if (rc < 0)
		return rc;
	k2_model_config m;
	rc = k2_config_parse(text, strlen(text), "generated config.json", &m, err);
	if (rc < 0) {
		free(text);
		return rc;
	}
	*out = text;
	return 0;
}

/* ---------------------------------------------------------------- plan */

static int plan_add(struct gen *g, k2_err *err, uint32_t rows, uint32_t cols, int one_d,
		    int kind, float std, const char *fmt, ...) __attribute__((format(printf, 8, 9)));

static int plan_add(struct gen *g, k2_err *err, uint32_t rows, uint32_t cols, int one_d,
		    int kind, float std, const char *fmt, ...)
{
	if (g->n == g->cap) {
		size_t nc = g->cap ? 2 * g->cap : 256;
		struct gtensor *nt = realloc(g->t, nc * sizeof(*nt));
		if (!nt)
			return k2_err_set(err, -ENOMEM, "out of memory");
		g->t = nt;
		g->cap = nc;
	}
	char name[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	struct gtensor *t = &g->t[g->n];
	memset(t, 0, sizeof(*t));
	if (!(t->name = strdup(name)))
		return k2_err_set(err, -ENOMEM, "out of memory");
	g->n++;
	t->rows = rows;
	t->cols = cols;
	t->one_d = one_d;
	t->kind = kind;
	t->std = std;
	t->key = XXH64(name, strlen(name), g->o->seed);
	size_t len = strlen(name);
	int proj = (len >= 11 && strcmp(name + len - 11, "proj.weight") == 0) ||
		   (len >= 20 && strcmp(name + len - 20, "proj_with_mqa.weight") == 0);
	if (kind == VAL_BIAS)
		t->store = ST_F32;
	else if (!one_d && proj && g->o->format == K2_FORMAT_FP8_B128)
		t->store = ST_FP8;
	else if (!one_d && proj && g->o->format == K2_FORMAT_INT4_G32 &&
		 strstr(name, ".mlp.experts."))
		t->store = ST_INT4;
	else
		t->store = ST_BF16;
	uint64_t r = rows, c = cols;
	switch (t->store) {
	case ST_BF16: t->bytes = r * c * 2; break;
	case ST_F32: t->bytes = r * c * 4; break;
	case ST_FP8: t->bytes = r * c + ((r + 127) / 128) * ((c + 127) / 128) * 4; break;
	case ST_INT4:
		if (c % 32)
			return k2_err_set(err, -EINVAL,
					  "%s: int4 group 32 needs a multiple of 32 inputs, not %u",
					  name, cols);
		t->bytes = r * c / 2 + r * (c / 32) * 2 + 8;
		break;
	}
	return 0;
}

#define ADD(r, c, k, s, ...) \
	do { if ((rc = plan_add(g, err, r, c, 0, k, s, __VA_ARGS__)) < 0) return rc; } while (0)
#define ADD1(n, k, ...) \
	do { if ((rc = plan_add(g, err, 1, n, 1, k, 0, __VA_ARGS__)) < 0) return rc; } while (0)

/* The tensors of mkref.py make_weights, in its order. */
static int plan_build(struct gen *g, k2_err *err)
{
	const k2_model_config *c = &g->cfg;
	const uint32_t H = c->hidden_size, V = c->vocab_size, nh = c->num_attention_heads;
	const uint32_t qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
	const float sH = 1.0f / sqrtf((float)H);
	int rc;
	ADD(V, H, VAL_NORMAL, 1.0f, "model.embed_tokens.weight");
	for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
		ADD1(H, VAL_NORM, "model.layers.%u.input_layernorm.weight", l);
		ADD1(H, VAL_NORM, "model.layers.%u.post_attention_layernorm.weight", l);
		if (c->q_lora_rank) {
			ADD(c->q_lora_rank, H, VAL_NORMAL, sH, "model.layers.%u.self_attn.q_a_proj.weight", l);
			ADD1(c->q_lora_rank, VAL_NORM, "model.layers.%u.self_attn.q_a_layernorm.weight", l);
			ADD(nh * qk, c->q_lora_rank, VAL_NORMAL, 1.0f / sqrtf((float)c->q_lora_rank),
			    "model.layers.%u.self_attn.q_b_proj.weight", l);
		} else {
			ADD(nh * qk, H, VAL_NORMAL, sH, "model.layers.%u.self_attn.q_proj.weight", l);
		}
		ADD(c->kv_lora_rank + c->qk_rope_head_dim, H, VAL_NORMAL, sH,
		    "model.layers.%u.self_attn.kv_a_proj_with_mqa.weight", l);
		ADD1(c->kv_lora_rank, VAL_NORM, "model.layers.%u.self_attn.kv_a_layernorm.weight", l);
		ADD(nh * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank, VAL_NORMAL,
		    1.0f / sqrtf((float)c->kv_lora_rank), "model.layers.%u.self_attn.kv_b_proj.weight", l);
		ADD(H, nh * c->v_head_dim, VAL_NORMAL, 1.0f / sqrtf((float)(nh * c->v_head_dim)),
		    "model.layers.%u.self_attn.o_proj.weight", l);
		if (!k2_config_is_moe_layer(c, l)) {
			uint32_t I = c->intermediate_size;
			ADD(I, H, VAL_NORMAL, sH, "model.layers.%u.mlp.gate_proj.weight", l);
			ADD(I, H, VAL_NORMAL, sH, "model.layers.%u.mlp.up_proj.weight", l);
			ADD(H, I, VAL_NORMAL, 1.0f / sqrtf((float)I), "model.layers.%u.mlp.down_proj.weight", l);
			continue;
		}
		uint32_t I = c->moe_intermediate_size, E = c->n_routed_experts;
		ADD(E, H, VAL_NORMAL, sH, "model.layers.%u.mlp.gate.weight", l);
		ADD1(E, VAL_BIAS, "model.layers.%u.mlp.gate.e_score_correction_bias", l);
		for (uint32_t e = 0; e < E; e++) {
			ADD(I, H, VAL_NORMAL, sH, "model.layers.%u.mlp.experts.%u.gate_proj.weight", l, e);
			ADD(I, H, VAL_NORMAL, sH, "model.layers.%u.mlp.experts.%u.up_proj.weight", l, e);
			ADD(H, I, VAL_NORMAL, 1.0f / sqrtf((float)I),
			    "model.layers.%u.mlp.experts.%u.down_proj.weight", l, e);
		}
		uint32_t Is = I * c->n_shared_experts;
		if (Is) {
			ADD(Is, H, VAL_NORMAL, sH, "model.layers.%u.mlp.shared_experts.gate_proj.weight", l);
			ADD(Is, H, VAL_NORMAL, sH, "model.layers.%u.mlp.shared_experts.up_proj.weight", l);
			ADD(H, Is, VAL_NORMAL, 1.0f / sqrtf((float)Is),
			    "model.layers.%u.mlp.shared_experts.down_proj.weight", l);
		}
	}
	ADD1(H, VAL_NORM, "model.norm.weight");
	if (!c->tie_word_embeddings)
		ADD(V, H, VAL_NORMAL, sH, "lm_head.weight");
	return 0;
}

/* Assigns shards like mkref.py save_sharded: a new shard starts when the
 * current one is not empty and the next weight would take it past the limit. */
static void plan_shards(struct gen *g, uint64_t limit)
{
	int shard = 0;
	uint64_t size = 0;
	size_t in_shard = 0;
	g->total_bytes = 0;
	for (size_t i = 0; i < g->n; i++) {
		if (in_shard && size + g->t[i].bytes > limit) {
			shard++;
			size = 0;
			in_shard = 0;
		}
		g->t[i].shard = shard;
		size += g->t[i].bytes;
		in_shard++;
		g->total_bytes += g->t[i].bytes;
	}
	g->n_shards = shard + 1;
}

/* ---------------------------------------------------------------- values */

static inline uint64_t mix64(uint64_t z)
{
	z ^= z >> 30;
	z *= 0xbf58476d1ce4e5b9ull;
	z ^= z >> 27;
	z *= 0x94d049bb133111ebull;
	z ^= z >> 31;
	return z;
}

/* The ziggurat of Marsaglia & Tsang (J. Stat. Softw. 5(8), 2000) with 128
 * layers: exact normal samples, almost always from one hash, one table
 * lookup and one multiply. Tables are built once. */
static struct {
	uint32_t k[128];
	double w[128], f[128];
} zig;
static pthread_once_t zig_once = PTHREAD_ONCE_INIT;

static void zig_init(void)
{
	const double m1 = 2147483648.0, vn = 9.91256303526217e-3;
	double dn = 3.442619855899, tn = dn;
	double q = vn / exp(-0.5 * dn * dn);
	zig.k[0] = (uint32_t)((dn / q) * m1);
	zig.k[1] = 0;
	zig.w[0] = q / m1;
	zig.w[127] = dn / m1;
	zig.f[0] = 1.0;
	zig.f[127] = exp(-0.5 * dn * dn);
	for (int i = 126; i >= 1; i--) {
		dn = sqrt(-2.0 * log(vn / dn + exp(-0.5 * dn * dn)));
		zig.k[i + 1] = (uint32_t)((dn / tn) * m1);
		tn = dn;
		zig.f[i] = exp(-0.5 * dn * dn);
		zig.w[i] = dn / m1;
	}
}

/* A uniform in (0, 1) from the top 53 bits of h. */
static inline double unit(uint64_t h)
{
	return ((double)(h >> 11) + 0.5) * 0x1p-53;
}

/* The standard normal value of element i of stream `key`: a pure function of
 * (key, i). Attempt a of the ziggurat uses hash(key, i, a); the value is its
 * upper 32 bits (signed) and the layer its low 7 bits. */
static float normal_at(uint64_t key, uint64_t i)
{
	const double r = 3.442619855899;
	uint64_t base = key + (i + 1) * 0x9e3779b97f4a7c15ull;
	uint64_t h = mix64(base);
	for (uint64_t a = 1;; a++) {
		int32_t hz = (int32_t)(h >> 32);
		uint32_t iz = (uint32_t)h & 127;
		uint32_t mag = hz < 0 ? (uint32_t)(-(int64_t)hz) : (uint32_t)hz;
		double x = (double)hz * zig.w[iz];
		if (mag < zig.k[iz])
			return (float)x;
		uint64_t u = mix64(h ^ 0xd1b54a32d192ed03ull);
		if (iz == 0) { /* the tail beyond r */
			for (uint64_t t = 1;; t++) {
				double xt = -log(unit(u)) / r;
				double y = -log(unit(mix64(u + 0x2545f4914f6cdd1dull)));
				if (y + y >= xt * xt)
					return (float)(hz > 0 ? r + xt : -r - xt);
				u = mix64(u + t * 0x632be59bd9b4e019ull);
			}
		}
		if (zig.f[iz] + unit(u) * (zig.f[iz - 1] - zig.f[iz]) < exp(-0.5 * x * x))
			return (float)x;
		h = mix64(base + a * 0x632be59bd9b4e019ull);
	}
}

/* Standard normal values of elements [i0, i0+n) of stream `key`. */
static void normals(uint64_t key, uint64_t i0, size_t n, float *out)
{
	pthread_once(&zig_once, zig_init);
	for (size_t j = 0; j < n; j++)
		out[j] = normal_at(key, i0 + j);
}

/* ---------------------------------------------------------------- pool */

typedef void (*task_fn)(void *ctx, size_t task, int worker);

struct helper {
	struct pool *p;
	int id;
};

struct pool {
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	pthread_t *tids;
	struct helper *helpers;
	int n_helpers;
	task_fn fn;
	void *ctx;
	size_t n_tasks, next, finished; /* protected by mu */
	uint64_t epoch;                 /* protected by mu */
	int stop;                       /* protected by mu */
};

static void *helper_main(void *arg)
{
	struct helper *h = arg;
	struct pool *p = h->p;
	uint64_t seen = 0;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->stop && p->epoch == seen)
			pthread_cond_wait(&p->go, &p->mu);
		if (p->stop)
			break;
		seen = p->epoch;
		while (p->next < p->n_tasks) {
			size_t k = p->next++;
			pthread_mutex_unlock(&p->mu);
			p->fn(p->ctx, k, h->id);
			pthread_mutex_lock(&p->mu);
			if (++p->finished == p->n_tasks)
				pthread_cond_broadcast(&p->done);
		}
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static void pool_destroy(struct pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->n_helpers; i++)
		pthread_join(p->tids[i], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
	free(p->tids);
	free(p->helpers);
	free(p);
}

/* A pool of threads-1 helpers; the caller of pool_run is worker 0. */
static struct pool *pool_create(int threads)
{
	struct pool *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	int n = threads - 1;
	p->tids = calloc((size_t)(n > 0 ? n : 1), sizeof(*p->tids));
	p->helpers = calloc((size_t)(n > 0 ? n : 1), sizeof(*p->helpers));
	if (!p->tids || !p->helpers) {
		pool_destroy(p);
		return NULL;
	}
	for (int i = 0; i < n; i++) {
		p->helpers[i].p = p;
		p->helpers[i].id = i + 1;
		if (pthread_create(&p->tids[i], NULL, helper_main, &p->helpers[i]) != 0)
			break;
		p->n_helpers++;
	}
	return p;
}

static void pool_run(struct pool *p, size_t n_tasks, task_fn fn, void *ctx)
{
	pthread_mutex_lock(&p->mu);
	p->fn = fn;
	p->ctx = ctx;
	p->n_tasks = n_tasks;
	p->next = 0;
	p->finished = 0;
	p->epoch++;
	pthread_cond_broadcast(&p->go);
	while (p->next < p->n_tasks) {
		size_t k = p->next++;
		pthread_mutex_unlock(&p->mu);
		fn(ctx, k, 0);
		pthread_mutex_lock(&p->mu);
		p->finished++;
	}
	while (p->finished < p->n_tasks)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}

/* ---------------------------------------------------------------- bands */

struct band {
	struct gen *g;
	const struct gtensor *t;
	uint32_t r0, nr;   /* rows of this band */
	uint8_t *out;      /* the band's stored weights */
	uint8_t *scales;   /* the whole tensor's scales (fp8, int4) */
	int rc;            /* first quantizer error; written under no lock, any non-zero wins */
};

static void band_task(void *ctx, size_t k, int worker)
{
	struct band *b = ctx;
	const struct gtensor *t = b->t;
	const uint32_t cols = t->cols;
	uint32_t a = b->r0 + (uint32_t)k * ROWS_PER_TASK;
	uint32_t na = b->r0 + b->nr - a < ROWS_PER_TASK ? b->r0 + b->nr - a : ROWS_PER_TASK;
	size_t n = (size_t)na * cols;
	float *f = b->g->scratch[worker];
	normals(t->key, (uint64_t)a * cols, n, f);
	switch (t->kind) {
	case VAL_NORMAL:
		for (size_t i = 0; i < n; i++)
			f[i] *= t->std;
		break;
	case VAL_NORM:
		for (size_t i = 0; i < n; i++)
			f[i] = 1.0f + 0.1f * f[i];
		break;
	case VAL_BIAS:
		for (size_t i = 0; i < n; i++)
			f[i] *= 0.05f;
		break;
	}
	size_t off = (size_t)(a - b->r0) * cols;
	int rc = 0;
	switch (t->store) {
	case ST_BF16: {
		uint16_t *o = (uint16_t *)b->out + off;
		for (size_t i = 0; i < n; i++)
			o[i] = k2q_f32_to_bf16(f[i]);
		break;
	}
	case ST_F32:
		memcpy((float *)b->out + off, f, n * sizeof(float));
		break;
	case ST_FP8:
	case ST_INT4:
		/* the hub quantizes the bf16 weights */
		for (size_t i = 0; i < n; i++)
			f[i] = k2q_bf16_to_f32(k2q_f32_to_bf16(f[i]));
		if (t->store == ST_FP8)
			rc = k2q_quant_fp8_b128(f, na, cols, b->out + off,
						(float *)b->scales + (size_t)(a / 128) * ((cols + 127) / 128));
		else
			rc = k2q_quant_int4_g32(f, na, cols, b->out + off / 2,
						(uint16_t *)b->scales + (size_t)a * (cols / 32));
		break;
	}
	if (rc < 0)
		b->rc = rc;
}

/* ---------------------------------------------------------------- files */

static int track_file(struct gen *g, const char *name, char **tmp_out, k2_err *err)
{
	char *fin = NULL, *tmp = NULL;
	size_t n = strlen(g->dir) + strlen(name) + 40;
	fin = malloc(n);
	tmp = malloc(n);
	char **nt = realloc(g->tmp, (g->n_files + 1) * sizeof(char *));
	if (nt)
		g->tmp = nt;
	char **nf = realloc(g->final, (g->n_files + 1) * sizeof(char *));
	if (nf)
		g->final = nf;
	if (!fin || !tmp || !nt || !nf) {
		free(fin);
		free(tmp);
		return k2_err_set(err, -ENOMEM, "out of memory");
	}
	snprintf(fin, n, "%s/%s", g->dir, name);
	snprintf(tmp, n, "%s/%s.tmp-%ld", g->dir, name, (long)getpid());
	g->final[g->n_files] = fin;
	g->tmp[g->n_files] = tmp;
	g->n_files++;
	*tmp_out = tmp;
	return 0;
}

static int write_file(struct gen *g, const char *name, const void *data, size_t n, k2_err *err)
{
	char *tmp;
	int rc = track_file(g, name, &tmp, err);
	if (rc < 0)
		return rc;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return k2_err_set(err, -errno, "%s: cannot create: %s", tmp, strerror(errno));
	size_t done = 0;
	while (done < n) {
		ssize_t r = write(fd, (const char *)data + done, n - done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? errno : EIO;
			close(fd);
			return k2_err_set(err, -e, "%s: write failed: %s", tmp, strerror(e));
		}
		done += (size_t)r;
	}
	if (close(fd) < 0)
		return k2_err_set(err, -errno, "%s: close failed: %s", tmp, strerror(errno));
	return 0;
}

static void progress(struct gen *g)
{
	if (!g->prog.enabled)
		return;
	char a[32], b[32], eta[32];
	double el = k2cli_progress_elapsed(&g->prog);
	k2cli_progress_update(&g->prog, "k2gen: %s / %s  %.0f MB/s  ETA %s",
			      k2_format_bytes(g->written, a, sizeof(a)),
			      k2_format_bytes(g->total_bytes, b, sizeof(b)),
			      el > 0 ? (double)g->written / el / 1e6 : 0.0,
			      k2cli_eta(el, (double)g->written, (double)g->total_bytes, eta, sizeof(eta)));
}

static int cancelled(const struct gen *g)
{
	return g->o->cancel && *g->o->cancel;
}

/* Declares the safetensors tensors of weight t. */
static int declare(k2st_writer *w, const struct gtensor *t, k2_err *err)
{
	char name[300];
	uint64_t s2[2] = {t->rows, t->cols}, s1[1] = {t->cols};
	int rc;
	switch (t->store) {
	case ST_BF16:
	case ST_F32:
		return k2st_writer_declare(w, t->name, t->store == ST_F32 ? K2_DTYPE_F32 : K2_DTYPE_BF16,
					   t->one_d ? 1 : 2, t->one_d ? s1 : s2, err);
	case ST_FP8: {
		uint64_t s[2] = {(t->rows + 127) / 128, (t->cols + 127) / 128};
		rc = k2st_writer_declare(w, t->name, K2_DTYPE_F8_E4M3, 2, s2, err);
		snprintf(name, sizeof(name), "%s_scale_inv", t->name);
		return rc ? rc : k2st_writer_declare(w, name, K2_DTYPE_F32, 2, s, err);
	}
	case ST_INT4: {
		size_t bl = strlen(t->name) - strlen("weight");
		uint64_t sp[2] = {t->rows, t->cols / 8}, ss[2] = {t->rows, t->cols / 32}, sh[1] = {2};
		snprintf(name, sizeof(name), "%.*sweight_packed", (int)bl, t->name);
		rc = k2st_writer_declare(w, name, K2_DTYPE_I32, 2, sp, err);
		snprintf(name, sizeof(name), "%.*sweight_scale", (int)bl, t->name);
		if (!rc)
			rc = k2st_writer_declare(w, name, K2_DTYPE_BF16, 2, ss, err);
		snprintf(name, sizeof(name), "%.*sweight_shape", (int)bl, t->name);
		return rc ? rc : k2st_writer_declare(w, name, K2_DTYPE_I32, 1, sh, err);
	}
	}
	return -EINVAL;
}

/* Generates weight t band by band and appends its tensors' payloads. */
static int write_tensor(struct gen *g, k2st_writer *w, const struct gtensor *t, uint8_t *band_buf,
			size_t band_cap, k2_err *err)
{
	const uint64_t cols = t->cols;
	/* stored bytes of one row of the weight tensor itself */
	uint64_t row_bytes = t->store == ST_BF16 ? cols * 2 : t->store == ST_F32 ? cols * 4
			   : t->store == ST_FP8 ? cols : cols / 2;
	/* rows per band: whole 128-row blocks within the band buffer */
	uint64_t band_rows = band_cap / (row_bytes ? row_bytes : 1) / ROWS_PER_TASK * ROWS_PER_TASK;
	if (band_rows < ROWS_PER_TASK)
		band_rows = ROWS_PER_TASK;
	size_t scale_bytes = t->store == ST_FP8 ? ((t->rows + 127) / 128) * ((cols + 127) / 128) * 4
			   : t->store == ST_INT4 ? (size_t)t->rows * (cols / 32) * 2 : 0;
	uint8_t *scales = scale_bytes ? malloc(scale_bytes) : NULL;
	if (scale_bytes && !scales)
		return k2_err_set(err, -ENOMEM, "%s: out of memory for scales", t->name);
	int rc = 0;
	for (uint32_t r0 = 0; r0 < t->rows && rc == 0; r0 += (uint32_t)band_rows) {
		if (cancelled(g)) {
			rc = k2_err_set(err, -EINTR, "%s: interrupted", g->dir);
			break;
		}
		struct band b = {.g = g, .t = t, .r0 = r0, .out = band_buf, .scales = scales};
		b.nr = t->rows - r0 < band_rows ? t->rows - r0 : (uint32_t)band_rows;
		pool_run(g->pool, (b.nr + ROWS_PER_TASK - 1) / ROWS_PER_TASK, band_task, &b);
		if (b.rc < 0) {
			rc = k2_err_set(err, b.rc, "%s: quantization failed", t->name);
			break;
		}
		size_t n = (size_t)(b.nr * row_bytes);
		rc = k2st_writer_append(w, band_buf, n, err);
		g->written += n;
		progress(g);
	}
	if (rc == 0 && scales) {
		rc = k2st_writer_append(w, scales, scale_bytes, err);
		g->written += scale_bytes;
	}
	if (rc == 0 && t->store == ST_INT4) {
		int32_t shape[2] = {(int32_t)t->rows, (int32_t)t->cols};
		uint8_t le[8];
		for (int i = 0; i < 8; i++)
			le[i] = (uint8_t)((uint32_t)shape[i / 4] >> (8 * (i % 4)));
		rc = k2st_writer_append(w, le, 8, err);
		g->written += 8;
	}
	free(scales);
	return rc;
}

static const char *shard_name(const struct gen *g, int s, char *buf, size_t n)
{
	if (g->n_shards == 1)
		snprintf(buf, n, "model.safetensors");
	else
		snprintf(buf, n, "model-%05d-of-%05d.safetensors", s + 1, g->n_shards);
	return buf;
}

static int write_shards(struct gen *g, k2_err *err)
{
	size_t band_cap = BAND_TARGET_BYTES;
	for (size_t i = 0; i < g->n; i++) {
		/* a band holds at least one 128-row block of the widest tensor */
		size_t min = (size_t)ROWS_PER_TASK * g->t[i].cols * 4;
		if (min > band_cap)
			band_cap = min;
	}
	uint8_t *band = malloc(band_cap);
	if (!band)
		return k2_err_set(err, -ENOMEM, "out of memory for a %zu-byte band", band_cap);
	int rc = 0;
	size_t i = 0;
	for (int s = 0; s < g->n_shards && rc == 0; s++) {
		char name[64];
		char *tmp;
		rc = track_file(g, shard_name(g, s, name, sizeof(name)), &tmp, err);
		if (rc < 0)
			break;
		k2st_writer *w;
		rc = k2st_writer_create(tmp, &w, err);
		if (rc < 0)
			break;
		size_t first = i;
		for (; i < g->n && g->t[i].shard == s && rc == 0; i++)
			rc = declare(w, &g->t[i], err);
		if (rc == 0)
			rc = k2st_writer_begin_data(w, err);
		for (size_t j = first; j < i && rc == 0; j++)
			rc = write_tensor(g, w, &g->t[j], band, band_cap, err);
		int rc2 = k2st_writer_close(w, rc == 0 ? err : NULL);
		if (rc == 0)
			rc = rc2;
	}
	free(band);
	return rc;
}

static int write_index(struct gen *g, k2_err *err)
{
	json_t *root = json_object(), *map = json_object();
	json_t *meta = json_pack("{s:I}", "total_size", (json_int_t)g->total_bytes);
	if (!root || !map || !meta) {
		json_decref(root);
		json_decref(map);
		json_decref(meta);
		return k2_err_set(err, -ENOMEM, "out of memory");
	}
	json_object_set_new(root, "metadata", meta);
	json_object_set_new(root, "weight_map", map);
	char file[64], name[300];
	for (size_t i = 0; i < g->n; i++) {
		const struct gtensor *t = &g->t[i];
		shard_name(g, t->shard, file, sizeof(file));
		if (t->store == ST_INT4) {
			size_t bl = strlen(t->name) - strlen("weight");
			static const char *const suf[] = {"weight_packed", "weight_scale", "weight_shape"};
			for (int k = 0; k < 3; k++) {
				snprintf(name, sizeof(name), "%.*s%s", (int)bl, t->name, suf[k]);
				json_object_set_new(map, name, json_string(file));
			}
			continue;
		}
		json_object_set_new(map, t->name, json_string(file));
		if (t->store == ST_FP8) {
			snprintf(name, sizeof(name), "%s_scale_inv", t->name);
			json_object_set_new(map, name, json_string(file));
		}
	}
	char *text = json_dumps(root, JSON_INDENT(2));
	json_decref(root);
	if (!text)
		return k2_err_set(err, -ENOMEM, "out of memory");
	size_t n = strlen(text);
	int rc = write_file(g, "model.safetensors.index.json", text, n, err);
	free(text);
	return rc;
}

static int copy_tokenizer(struct gen *g, k2_err *err)
{
	static const char *const names[] = {
		"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
		"tokenizer.model", "tiktoken.model", "generation_config.json", NULL,
	};
	int copied = 0;
	for (int i = 0; names[i]; i++) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", g->o->tokenizer_dir, names[i]);
		if (access(path, F_OK) != 0)
			continue;
		char *data;
		size_t n;
		int rc = k2_read_file(path, &data, &n, err);
		if (rc == 0)
			rc = write_file(g, names[i], data, n, err);
		if (rc == 0)
			copied++;
		free(data);
		if (rc < 0)
			return rc;
	}
	if (!copied)
		return k2_err_set(err, -ENOENT,
				  "%s: no tokenizer.json, tiktoken.model or tokenizer_config.json there",
				  g->o->tokenizer_dir);
	return 0;
}

/* ---------------------------------------------------------------- entry */

int k2g_generate(const char *out_dir, const k2g_opts *o, k2g_stats *stats, k2_err *err)
{
	struct gen g;
	memset(&g, 0, sizeof(g));
	g.o = o;
	g.dir = out_dir;
	g.threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (g.threads < 1)
		g.threads = 1;
	double t0 = k2_now();
	if (o->progress)
		k2cli_progress_init(&g.prog);

	char *cfg_text;
	int rc = k2g_config_json(o, &cfg_text, err);
	if (rc < 0)
		return rc;
	rc = k2_config_parse(cfg_text, strlen(cfg_text), "config.json", &g.cfg, err);
	if (rc < 0)
		goto out_free;
	if (mkdir(out_dir, 0755) < 0 && errno != EEXIST) {
		rc = k2_err_set(err, -errno, "%s: cannot create: %s", out_dir, strerror(errno));
		goto out_free;
	}
	rc = plan_build(&g, err);
	if (rc < 0)
		goto out_free;
	plan_shards(&g, o->shard_bytes ? o->shard_bytes : DEFAULT_SHARD_BYTES);

	uint32_t max_cols = 1;
	for (size_t i = 0; i < g.n; i++)
		if (g.t[i].cols > max_cols)
			max_cols = g.t[i].cols;
	g.scratch_elems = (size_t)ROWS_PER_TASK * max_cols;
	g.scratch = calloc((size_t)g.threads, sizeof(float *));
	g.pool = g.scratch ? pool_create(g.threads) : NULL;
	if (!g.pool) {
		rc = k2_err_set(err, -ENOMEM, "out of memory");
		goto out_free;
	}
	for (int i = 0; i < g.threads; i++)
		if (!(g.scratch[i] = malloc(g.scratch_elems * sizeof(float)))) {
			rc = k2_err_set(err, -ENOMEM, "out of memory");
			goto out_free;
		}

	size_t cfg_len = strlen(cfg_text);
	rc = write_file(&g, "config.json", cfg_text, cfg_len, err);
	if (rc == 0 && o->tokenizer_dir)
		rc = copy_tokenizer(&g, err);
	if (rc == 0)
		rc = write_shards(&g, err);
	if (rc == 0 && g.n_shards > 1)
		rc = write_index(&g, err);
	k2cli_progress_clear(&g.prog);
	if (rc == 0 && cancelled(&g))
		rc = k2_err_set(err, -EINTR, "%s: interrupted", out_dir);
	if (rc == 0) {
		for (size_t i = 0; i < g.n_files && rc == 0; i++)
			if (rename(g.tmp[i], g.final[i]) < 0)
				rc = k2_err_set(err, -errno, "%s: cannot rename to %s: %s", g.tmp[i],
						g.final[i], strerror(errno));
	}
	if (rc == 0) {
		/* a checkpoint left there before in the other layout would shadow this one */
		char stale[4096];
		snprintf(stale, sizeof(stale), "%s/%s", out_dir,
			 g.n_shards > 1 ? "model.safetensors" : "model.safetensors.index.json");
		unlink(stale);
		if (stats) {
			stats->n_tensors = g.n;
			stats->n_shards = (uint64_t)g.n_shards;
			stats->bytes = g.total_bytes;
			stats->seconds = k2_now() - t0;
		}
	}
out_free:
	for (size_t i = 0; i < g.n_files; i++) {
		if (rc < 0)
			unlink(g.tmp[i]);
		free(g.tmp[i]);
		free(g.final[i]);
	}
	free(g.tmp);
	free(g.final);
	pool_destroy(g.pool);
	if (g.scratch)
		for (int i = 0; i < g.threads; i++)
			free(g.scratch[i]);
	free(g.scratch);
	for (size_t i = 0; i < g.n; i++)
		free(g.t[i].name);
	free(g.t);
	free(cfg_text);
	return rc;
}
