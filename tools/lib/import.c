/* import.c — the checkpoint importer (k2pack's engine): classifies every tensor
 * of a checkpoint as dense or routed expert, checks the experts against
 * config.json, and writes the pack: FILE entries (config.json byte for byte,
 * tokenizer files), DENSE entries (stored bytes), then one expert image per
 * routed expert in (layer, expert) order.
 *
 * Experts are built on worker threads into a bounded ring of image buffers;
 * the calling thread hands finished images to the pack writer in order, so the
 * output is the same for any thread count. Source tensors are read with pread
 * in bands of 128 rows (conversion) or straight into the image (keep), so a
 * worker holds one image plus a few MB of scratch. Dense tensors over 64 MiB
 * (embed_tokens, lm_head) are streamed to the writer in parts, never whole. */
#include "import.h"

#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { PROJ_GATE, PROJ_UP, PROJ_DOWN, PROJ_N };
static const char *const proj_names[PROJ_N] = {"gate_proj", "up_proj", "down_proj"};

/* The tensors one projection of a routed expert may have. */
enum { PART_WEIGHT, PART_SCALE_INV, PART_PACKED, PART_SCALE, PART_SHAPE, PART_N };
static const char *const part_names[PART_N] = {
	"weight", "weight_scale_inv", "weight_packed", "weight_scale", "weight_shape",
};

/* What a projection's source tensors hold. */
enum src_kind {
	SRC_NONE = 0,
	SRC_FLOAT, /* weight BF16 / F16 / F32 */
	SRC_FP8,   /* weight F8_E4M3 + weight_scale_inv F32 [ceil(r/128), ceil(c/128)] */
	SRC_INT4,  /* compressed-tensors: weight_packed I32 [r, c/8], weight_scale BF16 [r, c/32], weight_shape [2] */
};

#define BAND_ROWS 128u
#define DENSE_WHOLE_BYTES (64ull << 20) /* larger dense tensors are streamed to the pack */
#define MAX_LAYERS 4096u
#define MAX_EXPERTS 65536u

struct proj_src {
	const k2st_tensor *t[PART_N];
	int kind;             /* enum src_kind */
	uint32_t rows, cols;  /* gate/up [I, H], down [H, I] */
};

struct expert_job {
	uint32_t layer, expert;
	uint32_t format;      /* format of the image to build */
	struct proj_src p[PROJ_N];
};

enum { SLOT_EMPTY, SLOT_BUSY, SLOT_DONE };

/* One image buffer of the ring; job j uses slot j % ring. */
struct slot {
	uint8_t *image;  /* 4 KiB-aligned, cap bytes */
	size_t cap, n;
	int state;       /* protected by imp->mu */
	int rc;
	k2_err err;
};

/* Per-worker scratch for converting one band of rows. */
struct scratch {
	float *f32;      /* [BAND_ROWS, max_dim] */
	uint8_t *src;    /* BAND_ROWS × max_dim × 4 bytes: a band of source weights */
	uint8_t *aux;    /* whole fp8 scale_inv, or a band of int4 scales */
	size_t src_cap, aux_cap;
};

struct imp {
	const k2i_opts *o;
	const char *src;
	k2st_checkpoint *ck;
	k2_model_config cfg;
	uint32_t n_layers;     /* num_hidden_layers + num_nextn_predict_layers */
	uint32_t n_experts;    /* n_routed_experts */
	uint32_t H, I, max_dim;
	int threads;
	int *fds;
	int n_fds;
	struct expert_job *table; /* [n_layers × n_experts] */
	struct expert_job **jobs; /* the experts to write, in order */
	size_t n_jobs;
	size_t n_dense;
	uint64_t max_dense_bytes;

	k2p_writer *w;
	k2cli_progress prog;
	uint64_t bytes_in;     /* atomic */
	double t0;

	/* the pipeline */
	pthread_mutex_t mu;
	pthread_cond_t cv_work, cv_done;
	struct slot *slots;
	size_t ring;
	size_t next_job, written; /* protected by mu */
	int stop;                 /* protected by mu */
};

void k2i_opts_default(k2i_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->experts = K2_FORMAT_NONE;
	o->codec = K2_CODEC_ZSTD;
}

static int cancelled(const struct imp *im)
{
	return im->o->cancel && *im->o->cancel;
}

/* ---------------------------------------------------------------- names */

/* Parses a decimal index of 1…7 digits at *p, advancing *p. */
static int parse_index(const char **p, uint32_t *out)
{
	const char *s = *p;
	uint32_t v = 0;
	int n = 0;
	while (*s >= '0' && *s <= '9') {
		if (++n > 7)
			return -EINVAL;
		v = v * 10 + (uint32_t)(*s - '0');
		s++;
	}
	if (n == 0)
		return -EINVAL;
	*p = s;
	*out = v;
	return 0;
}

int k2i_expert_name_parse(const char *name, uint32_t *layer, uint32_t *expert,
			  int *proj, const char **suffix)
{
	static const char pre[] = "model.layers.";
	static const char mid[] = "mlp.experts.";
	const char *p = name;
	if (strncmp(p, pre, sizeof(pre) - 1) != 0)
		return 0;
	p += sizeof(pre) - 1;
	uint32_t l, e;
	if (parse_index(&p, &l) < 0 || *p != '.')
		return 0;
	p++;
	if (strncmp(p, mid, sizeof(mid) - 1) != 0)
		return 0;
	p += sizeof(mid) - 1;
	if (parse_index(&p, &e) < 0 || *p != '.')
		return -EINVAL;
	p++;
	for (int i = 0; i < PROJ_N; i++) {
		size_t n = strlen(proj_names[i]);
		if (strncmp(p, proj_names[i], n) == 0 && p[n] == '.' && p[n + 1]) {
			*layer = l;
			*expert = e;
			*proj = i;
			*suffix = p + n + 1;
			return 1;
		}
	}
	return -EINVAL;
}

static const char *fmt_shape(const k2st_tensor *t, char *buf, size_t n)
{
	size_t k = 0;
	k += (size_t)snprintf(buf + k, n - k, "[");
	for (uint32_t d = 0; d < t->ndim && k < n; d++)
		k += (size_t)snprintf(buf + k, n - k, "%s%llu", d ? ", " : "",
				      (unsigned long long)t->shape[d]);
	if (k < n)
		snprintf(buf + k, n - k, "]");
	return buf;
}

static const char *tensor_file(const struct imp *im, const k2st_tensor *t)
{
	const char *p = k2st_shard_path(im->ck, t->shard);
	return p ? p : im->src;
}

/* ---------------------------------------------------------------- reading */

/* Reads n payload bytes of tensor t starting `off` bytes into its payload.
 * Returns 0 or -errno naming the shard and offset. */
static int read_at(struct imp *im, const k2st_tensor *t, uint64_t off, void *buf,
		   size_t n, k2_err *err)
{
	if (off > t->bytes || n > t->bytes - off || t->shard < 0 || t->shard >= im->n_fds)
		return k2_err_set(err, -EINVAL, "%s: tensor %s: read of %zu bytes at %llu is outside its %llu bytes",
				  tensor_file(im, t), t->name, n, (unsigned long long)off,
				  (unsigned long long)t->bytes);
	int fd = im->fds[t->shard];
	uint64_t pos = t->offset + off;
	size_t got = 0;
	while (got < n) {
		ssize_t r = pread(fd, (uint8_t *)buf + got, n - got, (off_t)(pos + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? errno : EIO;
			return k2_err_set(err, -e, "%s: tensor %s: read failed at offset %llu: %s",
					  tensor_file(im, t), t->name,
					  (unsigned long long)(pos + got),
					  r < 0 ? strerror(e) : "unexpected end of file");
		}
		got += (size_t)r;
	}
	__atomic_add_fetch(&im->bytes_in, (uint64_t)n, __ATOMIC_RELAXED);
	return 0;
}

static int open_shards(struct imp *im, k2_err *err)
{
	int max = -1;
	for (size_t i = 0; i < k2st_count(im->ck); i++) {
		const k2st_tensor *t = k2st_at(im->ck, i);
		if (t->shard > max)
			max = t->shard;
	}
	im->n_fds = max + 1;
	if (im->n_fds == 0)
		return 0;
	im->fds = malloc(sizeof(int) * (size_t)im->n_fds);
	if (!im->fds)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", im->src);
	for (int i = 0; i < im->n_fds; i++)
		im->fds[i] = -1;
	for (int i = 0; i < im->n_fds; i++) {
		const char *p = k2st_shard_path(im->ck, i);
		if (!p)
			continue;
		im->fds[i] = open(p, O_RDONLY | O_CLOEXEC);
		if (im->fds[i] < 0)
			return k2_err_set(err, -errno, "%s: cannot open: %s", p, strerror(errno));
	}
	return 0;
}

/* ---------------------------------------------------------------- validation */

static int part_dtype_ok(int part, uint32_t dtype)
{
	switch (part) {
	case PART_WEIGHT:
		return dtype == K2_DTYPE_BF16 || dtype == K2_DTYPE_F16 ||
		       dtype == K2_DTYPE_F32 || dtype == K2_DTYPE_F8_E4M3;
	case PART_SCALE_INV:
		return dtype == K2_DTYPE_F32;
	case PART_PACKED:
		return dtype == K2_DTYPE_I32;
	case PART_SCALE:
		return dtype == K2_DTYPE_BF16;
	case PART_SHAPE:
		return dtype == K2_DTYPE_I32 || dtype == K2_DTYPE_I64;
	}
	return 0;
}

static const char *const part_dtypes[PART_N] = {
	"BF16, F16, F32 or F8_E4M3", "F32", "I32", "BF16", "I32 or I64",
};

/* Puts one tensor into the dense list or the expert table. */
static int classify(struct imp *im, const k2st_tensor *t, k2_err *err)
{
	uint32_t l, e;
	int proj;
	const char *suffix;
	int r = k2i_expert_name_parse(t->name, &l, &e, &proj, &suffix);
	if (r == 0) {
		im->n_dense++;
		if (t->bytes <= DENSE_WHOLE_BYTES && t->bytes > im->max_dense_bytes)
			im->max_dense_bytes = t->bytes;
		return 0;
	}
	int part = -1;
	if (r > 0)
		for (int i = 0; i < PART_N; i++)
			if (strcmp(suffix, part_names[i]) == 0)
				part = i;
	if (part < 0)
		return k2_err_set(err, -EINVAL,
				  "%s: tensor %s: routed-expert tensor of an unknown kind (expected model.layers.L.mlp.experts.E.{gate,up,down}_proj.{weight,weight_scale_inv,weight_packed,weight_scale,weight_shape})",
				  tensor_file(im, t), t->name);
	if (l >= im->n_layers)
		return k2_err_set(err, -EINVAL,
				  "%s: tensor %s: layer %u does not exist (config.json: num_hidden_layers %u)",
				  tensor_file(im, t), t->name, l, im->cfg.num_hidden_layers);
	if (l < im->cfg.num_hidden_layers && !k2_config_is_moe_layer(&im->cfg, l))
		return k2_err_set(err, -EINVAL,
				  "%s: tensor %s: layer %u has no routed experts (config.json: first_k_dense_replace %u, moe_layer_freq %u)",
				  tensor_file(im, t), t->name, l, im->cfg.first_k_dense_replace,
				  im->cfg.moe_layer_freq);
	if (e >= im->n_experts)
		return k2_err_set(err, -EINVAL,
				  "%s: tensor %s: expert %u does not exist (config.json: n_routed_experts %u)",
				  tensor_file(im, t), t->name, e, im->n_experts);
	if (!part_dtype_ok(part, t->dtype)) {
		const char *dn = k2_dtype_name(t->dtype);
		return k2_err_set(err, -EINVAL,
				  "%s: tensor %s: unsupported dtype %s for a routed expert's %s (expected %s)",
				  tensor_file(im, t), t->name, dn ? dn : "?", part_names[part],
				  part_dtypes[part]);
	}
	struct expert_job *j = &im->table[(size_t)l * im->n_experts + e];
	if (j->p[proj].t[part])
		return k2_err_set(err, -EINVAL, "%s: tensor %s appears twice", tensor_file(im, t),
				  t->name);
	j->p[proj].t[part] = t;
	return 0;
}

static int shape_is(const k2st_tensor *t, uint32_t ndim, uint64_t a, uint64_t b)
{
	if (t->ndim != ndim || t->shape[0] != a)
		return 0;
	return ndim < 2 || t->shape[1] == b;
}

static int bad_shape(const struct imp *im, const k2st_tensor *t, uint32_t ndim, uint64_t a,
		     uint64_t b, k2_err *err)
{
	char got[160];
	char want[64];
	if (ndim == 1)
		snprintf(want, sizeof(want), "[%llu]", (unsigned long long)a);
	else
		snprintf(want, sizeof(want), "[%llu, %llu]", (unsigned long long)a,
			 (unsigned long long)b);
	return k2_err_set(err, -EINVAL,
			  "%s: tensor %s has shape %s, expected %s (config.json: hidden_size %u, moe_intermediate_size %u)",
			  tensor_file(im, t), t->name, fmt_shape(t, got, sizeof(got)), want,
			  im->H, im->I);
}

/* Decides what one projection's source is and checks every shape. */
static int check_proj(struct imp *im, struct expert_job *j, int pi, k2_err *err)
{
	struct proj_src *p = &j->p[pi];
	const k2st_tensor *w = p->t[PART_WEIGHT], *si = p->t[PART_SCALE_INV];
	const k2st_tensor *pk = p->t[PART_PACKED], *sc = p->t[PART_SCALE], *sh = p->t[PART_SHAPE];
	char base[160];
	snprintf(base, sizeof(base), "model.layers.%u.mlp.experts.%u.%s", j->layer, j->expert,
		 proj_names[pi]);
	p->rows = pi == PROJ_DOWN ? im->H : im->I;
	p->cols = pi == PROJ_DOWN ? im->I : im->H;
	uint64_t r = p->rows, c = p->cols;
	const char *missing = NULL;
	if (pk || sc || sh) {
		if (w || si) {
			const k2st_tensor *x = w ? w : si;
			return k2_err_set(err, -EINVAL,
					  "%s: tensor %s: not expected next to the int4 %s.weight_packed/weight_scale/weight_shape",
					  tensor_file(im, x), x->name, base);
		}
		missing = !pk ? "weight_packed" : !sc ? "weight_scale" : !sh ? "weight_shape" : NULL;
		p->kind = SRC_INT4;
	} else if (w) {
		p->kind = w->dtype == K2_DTYPE_F8_E4M3 ? SRC_FP8 : SRC_FLOAT;
		if (p->kind == SRC_FP8 && !si)
			missing = "weight_scale_inv";
		if (p->kind == SRC_FLOAT && si)
			return k2_err_set(err, -EINVAL,
					  "%s: tensor %s: a weight_scale_inv next to a %s (not F8_E4M3) weight",
					  tensor_file(im, si), si->name, k2_dtype_name(w->dtype));
	} else {
		missing = "weight";
	}
	if (missing)
		return k2_err_set(err, -EINVAL,
				  "%s: missing tensor %s.%s (config.json: layer %u has %u routed experts)",
				  im->src, base, missing, j->layer, im->n_experts);
	switch (p->kind) {
	case SRC_FLOAT:
		if (!shape_is(w, 2, r, c))
			return bad_shape(im, w, 2, r, c, err);
		break;
	case SRC_FP8:
		if (!shape_is(w, 2, r, c))
			return bad_shape(im, w, 2, r, c, err);
		if (!shape_is(si, 2, (r + 127) / 128, (c + 127) / 128))
			return bad_shape(im, si, 2, (r + 127) / 128, (c + 127) / 128, err);
		if ((im->cfg.fp8_block_rows && im->cfg.fp8_block_rows != 128) ||
		    (im->cfg.fp8_block_cols && im->cfg.fp8_block_cols != 128))
			return k2_err_set(err, -EINVAL,
					  "%s/config.json: quantization_config.weight_block_size [%u, %u] is not supported (expected [128, 128])",
					  im->src, im->cfg.fp8_block_rows, im->cfg.fp8_block_cols);
		break;
	case SRC_INT4:
		if (c % 32 != 0)
			return k2_err_set(err, -EINVAL,
					  "%s: tensor %s: int4 group-32 weights need a multiple of 32 inputs, the config gives %llu",
					  tensor_file(im, pk), pk->name, (unsigned long long)c);
		if (!shape_is(pk, 2, r, c / 8))
			return bad_shape(im, pk, 2, r, c / 8, err);
		if (!shape_is(sc, 2, r, c / 32))
			return bad_shape(im, sc, 2, r, c / 32, err);
		if (!shape_is(sh, 1, 2, 0))
			return bad_shape(im, sh, 1, 2, 0, err);
		if (im->cfg.int4_group && im->cfg.int4_group != 32)
			return k2_err_set(err, -EINVAL,
					  "%s/config.json: quantization_config group_size %u is not supported (expected 32)",
					  im->src, im->cfg.int4_group);
		break;
	}
	return 0;
}

/* The image format a projection's source is already in, or NONE when it must
 * be converted whatever the target (F16/F32 weights). */
static uint32_t proj_native_format(const struct proj_src *p)
{
	switch (p->kind) {
	case SRC_FLOAT:
		return p->t[PART_WEIGHT]->dtype == K2_DTYPE_BF16 ? K2_FORMAT_BF16 : K2_FORMAT_NONE;
	case SRC_FP8:
		return K2_FORMAT_FP8_B128;
	case SRC_INT4:
		return K2_FORMAT_INT4_G32;
	}
	return K2_FORMAT_NONE;
}

static int check_expert(struct imp *im, struct expert_job *j, k2_err *err)
{
	for (int p = 0; p < PROJ_N; p++) {
		int rc = check_proj(im, j, p, err);
		if (rc < 0)
			return rc;
	}
	if (im->o->experts != K2_FORMAT_NONE) {
		j->format = im->o->experts;
		return 0;
	}
	uint32_t f = proj_native_format(&j->p[0]);
	for (int p = 0; p < PROJ_N; p++) {
		const k2st_tensor *t = j->p[p].t[PART_WEIGHT] ? j->p[p].t[PART_WEIGHT]
							      : j->p[p].t[PART_PACKED];
		uint32_t g = proj_native_format(&j->p[p]);
		if (g == K2_FORMAT_NONE)
			return k2_err_set(err, -EINVAL,
					  "%s: tensor %s is %s; --experts keep needs BF16, F8_E4M3 with weight_scale_inv, or int4 weight_packed (convert with --experts bf16)",
					  tensor_file(im, t), t->name, k2_dtype_name(t->dtype));
		if (g != f)
			return k2_err_set(err, -EINVAL,
					  "%s: tensor %s is %s but the same expert's %s is %s; --experts keep needs one format per expert",
					  tensor_file(im, t), t->name, k2_format_name(g),
					  proj_names[0], k2_format_name(f));
	}
	j->format = f;
	return 0;
}

/* Reads num_nextn_predict_layers (DeepSeek-V3's MTP layers, whose experts are
 * stored as layers num_hidden_layers …); 0 when absent. */
static int config_nextn(const char *json, size_t n, const char *path, uint32_t *out,
			k2_err *err)
{
	json_error_t je;
	json_t *root = json_loadb(json, n, 0, &je);
	if (!root)
		return k2_err_set(err, -EINVAL, "%s: line %d: %s", path, je.line, je.text);
	*out = 0;
	json_t *v = json_object_get(root, "num_nextn_predict_layers");
	int rc = 0;
	if (v && !json_is_null(v)) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 ||
		    json_integer_value(v) > 64)
			rc = k2_err_set(err, -EINVAL,
					"%s: num_nextn_predict_layers: expected an integer in [0, 64]",
					path);
		else
			*out = (uint32_t)json_integer_value(v);
	}
	json_decref(root);
	return rc;
}

/* Builds the ordered job list: every expert of every MoE layer, plus the
 * experts of MTP layers that the checkpoint has. */
static int plan_experts(struct imp *im, k2_err *err)
{
	size_t n = (size_t)im->n_layers * im->n_experts;
	im->jobs = calloc(n ? n : 1, sizeof(*im->jobs));
	if (!im->jobs)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", im->src);
	for (uint32_t l = 0; l < im->n_layers; l++) {
		int want;
		if (l < im->cfg.num_hidden_layers) {
			want = k2_config_is_moe_layer(&im->cfg, l);
		} else {
			want = 0;
			for (uint32_t e = 0; e < im->n_experts && !want; e++)
				for (int p = 0; p < PROJ_N && !want; p++)
					for (int k = 0; k < PART_N; k++)
						if (im->table[(size_t)l * im->n_experts + e].p[p].t[k])
							want = 1;
		}
		if (!want)
			continue;
		for (uint32_t e = 0; e < im->n_experts; e++) {
			struct expert_job *j = &im->table[(size_t)l * im->n_experts + e];
			j->layer = l;
			j->expert = e;
			int rc = check_expert(im, j, err);
			if (rc < 0)
				return rc;
			im->jobs[im->n_jobs++] = j;
		}
	}
	return 0;
}

/* ---------------------------------------------------------------- images */

static uint64_t align_up(uint64_t v)
{
	return (v + K2P_ALIGN - 1) & ~(uint64_t)(K2P_ALIGN - 1);
}

static int check_int4_shape(struct imp *im, const struct proj_src *p, k2_err *err)
{
	const k2st_tensor *sh = p->t[PART_SHAPE];
	uint8_t b[16];
	size_t es = sh->dtype == K2_DTYPE_I64 ? 8 : 4;
	int rc = read_at(im, sh, 0, b, 2 * es, err);
	if (rc < 0)
		return rc;
	int64_t v[2];
	for (int i = 0; i < 2; i++) {
		if (es == 8) {
			int64_t x;
			memcpy(&x, b + 8 * i, 8);
			v[i] = x;
		} else {
			int32_t x;
			memcpy(&x, b + 4 * i, 4);
			v[i] = x;
		}
	}
	if (v[0] != (int64_t)p->rows || v[1] != (int64_t)p->cols)
		return k2_err_set(err, -EINVAL, "%s: tensor %s holds [%lld, %lld], expected [%u, %u]",
				  tensor_file(im, sh), sh->name, (long long)v[0], (long long)v[1],
				  p->rows, p->cols);
	return 0;
}

/* Copies a projection whose source is already in the image's format. */
static int copy_proj(struct imp *im, const struct proj_src *p, uint8_t *img,
		     const k2x_section *ws, const k2x_section *ss, k2_err *err)
{
	const k2st_tensor *w = p->t[PART_WEIGHT] ? p->t[PART_WEIGHT] : p->t[PART_PACKED];
	const k2st_tensor *s = p->kind == SRC_FP8 ? p->t[PART_SCALE_INV]
			     : p->kind == SRC_INT4 ? p->t[PART_SCALE] : NULL;
	if (p->kind == SRC_INT4) {
		int rc = check_int4_shape(im, p, err);
		if (rc < 0)
			return rc;
	}
	if (w->bytes != ws->bytes || (s ? s->bytes : 0) != ss->bytes)
		return k2_err_set(err, -EINVAL,
				  "%s: tensor %s: %llu bytes do not fit the image section of %llu bytes",
				  tensor_file(im, w), w->name, (unsigned long long)w->bytes,
				  (unsigned long long)ws->bytes);
	int rc = read_at(im, w, 0, img + ws->offset, ws->bytes, err);
	if (rc == 0 && s)
		rc = read_at(im, s, 0, img + ss->offset, ss->bytes, err);
	return rc;
}

/* Dequantizes rows [r0, r0+nr) of a projection's source into sc->f32. */
static int load_band(struct imp *im, const struct proj_src *p, uint32_t r0, uint32_t nr,
		     struct scratch *sc, k2_err *err)
{
	const uint64_t c = p->cols;
	int rc;
	switch (p->kind) {
	case SRC_FLOAT: {
		const k2st_tensor *w = p->t[PART_WEIGHT];
		size_t es = k2_dtype_size(w->dtype);
		rc = read_at(im, w, r0 * c * es, sc->src, nr * c * es, err);
		if (rc < 0)
			return rc;
		rc = k2q_to_f32(w->dtype, sc->src, nr * c, sc->f32);
		break;
	}
	case SRC_FP8: {
		const k2st_tensor *w = p->t[PART_WEIGHT];
		rc = read_at(im, w, r0 * c, sc->src, nr * c, err);
		if (rc < 0)
			return rc;
		const float *s = (const float *)sc->aux + (size_t)(r0 / 128) * ((c + 127) / 128);
		rc = k2q_dequant(K2_FORMAT_FP8_B128, sc->src, s, nr, (uint32_t)c, sc->f32);
		break;
	}
	case SRC_INT4: {
		const k2st_tensor *pk = p->t[PART_PACKED], *s = p->t[PART_SCALE];
		rc = read_at(im, pk, r0 * c / 2, sc->src, nr * c / 2, err);
		if (rc == 0)
			rc = read_at(im, s, r0 * (c / 32) * 2, sc->aux, nr * (c / 32) * 2, err);
		if (rc < 0)
			return rc;
		rc = k2q_dequant(K2_FORMAT_INT4_G32, sc->src, sc->aux, nr, (uint32_t)c, sc->f32);
		break;
	}
	default:
		rc = -EINVAL;
	}
	if (rc < 0) {
		const k2st_tensor *t = p->t[PART_WEIGHT] ? p->t[PART_WEIGHT] : p->t[PART_PACKED];
		return k2_err_set(err, rc, "%s: tensor %s: cannot convert rows %u…%u to float32",
				  tensor_file(im, t), t->name, r0, r0 + nr - 1);
	}
	return 0;
}

/* Converts a projection band by band into the image's format. */
static int convert_proj(struct imp *im, const struct proj_src *p, uint32_t format,
			uint8_t *img, const k2x_section *ws, const k2x_section *ss,
			struct scratch *sc, k2_err *err)
{
	const uint32_t rows = p->rows, cols = p->cols;
	int rc;
	if (p->kind == SRC_FP8) {
		const k2st_tensor *s = p->t[PART_SCALE_INV];
		if (s->bytes > sc->aux_cap)
			return k2_err_set(err, -EINVAL, "%s: tensor %s is larger than expected",
					  tensor_file(im, s), s->name);
		rc = read_at(im, s, 0, sc->aux, s->bytes, err);
		if (rc < 0)
			return rc;
	}
	if (p->kind == SRC_INT4 && (rc = check_int4_shape(im, p, err)) < 0)
		return rc;
	for (uint32_t r0 = 0; r0 < rows; r0 += BAND_ROWS) {
		uint32_t nr = rows - r0 < BAND_ROWS ? rows - r0 : BAND_ROWS;
		rc = load_band(im, p, r0, nr, sc, err);
		if (rc < 0)
			return rc;
		uint8_t *w = img + ws->offset;
		uint8_t *s = img + ss->offset;
		size_t n = (size_t)nr * cols;
		switch (format) {
		case K2_FORMAT_BF16: {
			uint16_t *o = (uint16_t *)w + (size_t)r0 * cols;
			for (size_t i = 0; i < n; i++)
				o[i] = k2q_f32_to_bf16(sc->f32[i]);
			rc = 0;
			break;
		}
		case K2_FORMAT_FP8_B128:
			rc = k2q_quant_fp8_b128(sc->f32, nr, cols, w + (size_t)r0 * cols,
						(float *)s + (size_t)(r0 / 128) * ((cols + 127) / 128));
			break;
		case K2_FORMAT_INT8:
			rc = k2q_quant_int8_row(sc->f32, nr, cols, (int8_t *)w + (size_t)r0 * cols,
						(float *)s + r0);
			break;
		case K2_FORMAT_INT4_G32:
			rc = k2q_quant_int4_g32(sc->f32, nr, cols, w + (size_t)r0 * cols / 2,
						(uint16_t *)s + (size_t)r0 * (cols / 32));
			break;
		default:
			rc = -EINVAL;
		}
		if (rc < 0) {
			const k2st_tensor *t = p->t[PART_WEIGHT] ? p->t[PART_WEIGHT] : p->t[PART_PACKED];
			return k2_err_set(err, rc, "%s: tensor %s: cannot quantize to %s",
					  tensor_file(im, t), t->name, k2_format_name(format));
		}
	}
	return 0;
}

/* Builds the image of job j into slot s. Returns 0 or -errno (s->err). */
static int build_image(struct imp *im, const struct expert_job *j, struct slot *s,
		       struct scratch *sc)
{
	k2x_layout lay;
	k2_err *err = &s->err;
	int rc = k2x_layout_compute(j->format, im->H, im->I, j->layer, j->expert, &lay);
	if (rc < 0)
		return k2_err_set(err, rc, "%s: cannot lay out a %s expert of hidden %u, intermediate %u",
				  im->src, k2_format_name(j->format), im->H, im->I);
	if (lay.image_bytes > s->cap) {
		free(s->image);
		s->image = NULL;
		s->cap = 0;
		void *p;
		if (posix_memalign(&p, K2P_ALIGN, lay.image_bytes) != 0)
			return k2_err_set(err, -ENOMEM, "%s: out of memory for a %llu-byte expert image",
					  im->src, (unsigned long long)lay.image_bytes);
		s->image = p;
		s->cap = lay.image_bytes;
	}
	uint8_t *img = s->image;
	k2x_header_write(&lay, img);
	for (int i = 0; i < K2X_SECTIONS; i++) {
		const k2x_section *x = &lay.sec[i];
		if (x->offset > lay.image_bytes || x->bytes > lay.image_bytes - x->offset)
			return k2_err_set(err, -EINVAL, "%s: expert image layout out of range", im->src);
		uint64_t end = x->offset + x->bytes, pad = align_up(end);
		if (pad > lay.image_bytes)
			pad = lay.image_bytes;
		memset(img + end, 0, pad - end);
	}
	for (int p = 0; p < PROJ_N && rc == 0; p++) {
		const struct proj_src *ps = &j->p[p];
		const k2x_section *ws = &lay.sec[2 * p], *ss = &lay.sec[2 * p + 1];
		/* int4 weight sections are U8 [rows, cols/2] */
		uint32_t wcols = j->format == K2_FORMAT_INT4_G32 ? ps->cols / 2 : ps->cols;
		if (ws->rows != ps->rows || ws->cols != wcols)
			return k2_err_set(err, -EINVAL,
					  "%s: expert image section %d is [%u, %u], expected [%u, %u]",
					  im->src, 2 * p, ws->rows, ws->cols, ps->rows, wcols);
		if (proj_native_format(ps) == j->format)
			rc = copy_proj(im, ps, img, ws, ss, err);
		else
			rc = convert_proj(im, ps, j->format, img, ws, ss, sc, err);
	}
	s->n = lay.image_bytes;
	return rc;
}

/* ---------------------------------------------------------------- pipeline */

static void *worker_main(void *arg)
{
	struct imp *im = arg;
	struct scratch sc = {0};
	size_t dim = im->max_dim;
	size_t blocks = (dim + 127) / 128;
	sc.f32 = malloc(sizeof(float) * BAND_ROWS * dim);
	sc.src_cap = (size_t)BAND_ROWS * dim * 4;
	sc.src = malloc(sc.src_cap);
	sc.aux_cap = blocks * blocks * 4 + (size_t)BAND_ROWS * (dim / 32 + 1) * 2;
	sc.aux = malloc(sc.aux_cap);
	int nomem = !sc.f32 || !sc.src || !sc.aux;
	for (;;) {
		pthread_mutex_lock(&im->mu);
		while (!im->stop && im->next_job < im->n_jobs &&
		       im->next_job >= im->written + im->ring)
			pthread_cond_wait(&im->cv_work, &im->mu);
		if (im->stop || im->next_job >= im->n_jobs) {
			pthread_mutex_unlock(&im->mu);
			break;
		}
		size_t j = im->next_job++;
		struct slot *s = &im->slots[j % im->ring];
		s->state = SLOT_BUSY;
		pthread_mutex_unlock(&im->mu);

		int rc;
		if (nomem)
			rc = k2_err_set(&s->err, -ENOMEM, "%s: out of memory for conversion buffers",
					im->src);
		else
			rc = build_image(im, im->jobs[j], s, &sc);

		pthread_mutex_lock(&im->mu);
		s->rc = rc;
		s->state = SLOT_DONE;
		pthread_cond_broadcast(&im->cv_done);
		pthread_mutex_unlock(&im->mu);
	}
	free(sc.f32);
	free(sc.src);
	free(sc.aux);
	return NULL;
}

static void progress_experts(struct imp *im, size_t done)
{
	if (!im->prog.enabled)
		return;
	uint64_t raw, stored;
	k2p_writer_totals(im->w, &raw, &stored);
	double el = k2_now() - im->t0;
	char eta[32];
	uint64_t in = __atomic_load_n(&im->bytes_in, __ATOMIC_RELAXED);
	k2cli_progress_update(&im->prog,
			      "experts %zu/%zu  in %.0f MB/s  out %.0f MB/s  ratio %.3f  ETA %s",
			      done, im->n_jobs, el > 0 ? (double)in / el / 1e6 : 0.0,
			      el > 0 ? (double)stored / el / 1e6 : 0.0,
			      raw ? (double)stored / (double)raw : 0.0,
			      k2cli_eta(k2cli_progress_elapsed(&im->prog), (double)done,
					(double)im->n_jobs, eta, sizeof(eta)));
}

static int write_experts(struct imp *im, k2_err *err)
{
	if (im->n_jobs == 0)
		return 0;
	int nw = im->threads;
	if ((size_t)nw > im->n_jobs)
		nw = (int)im->n_jobs;
	im->ring = (size_t)nw + 2;
	im->slots = calloc(im->ring, sizeof(*im->slots));
	pthread_t *tids = calloc((size_t)nw, sizeof(*tids));
	if (!im->slots || !tids) {
		free(tids);
		return k2_err_set(err, -ENOMEM, "%s: out of memory", im->src);
	}
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&im->mu, NULL);
	pthread_cond_init(&im->cv_work, NULL);
	pthread_cond_init(&im->cv_done, &ca);
	pthread_condattr_destroy(&ca);

	int rc = 0, started = 0;
	for (; started < nw; started++) {
		if (pthread_create(&tids[started], NULL, worker_main, im) != 0) {
			rc = k2_err_set(err, -EAGAIN, "%s: cannot start worker threads", im->src);
			break;
		}
	}
	for (size_t j = 0; rc == 0 && j < im->n_jobs; j++) {
		struct slot *s = &im->slots[j % im->ring];
		pthread_mutex_lock(&im->mu);
		while (s->state != SLOT_DONE && !cancelled(im)) {
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_nsec += 200 * 1000 * 1000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&im->cv_done, &im->mu, &ts);
			if (s->state != SLOT_DONE) {
				pthread_mutex_unlock(&im->mu);
				progress_experts(im, j);
				pthread_mutex_lock(&im->mu);
			}
		}
		pthread_mutex_unlock(&im->mu);
		if (cancelled(im)) {
			rc = k2_err_set(err, -EINTR, "%s: interrupted", im->src);
			break;
		}
		if (s->rc < 0) {
			*err = s->err;
			rc = s->rc;
			break;
		}
		rc = k2p_writer_add_expert(im->w, s->image, s->n, err);
		if (rc < 0)
			break;
		pthread_mutex_lock(&im->mu);
		s->state = SLOT_EMPTY;
		im->written++;
		pthread_cond_broadcast(&im->cv_work);
		pthread_mutex_unlock(&im->mu);
		progress_experts(im, j + 1);
	}
	pthread_mutex_lock(&im->mu);
	im->stop = 1;
	pthread_cond_broadcast(&im->cv_work);
	pthread_mutex_unlock(&im->mu);
	for (int i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	free(tids);
	for (size_t i = 0; i < im->ring; i++)
		free(im->slots[i].image);
	free(im->slots);
	im->slots = NULL;
	pthread_cond_destroy(&im->cv_work);
	pthread_cond_destroy(&im->cv_done);
	pthread_mutex_destroy(&im->mu);
	return rc;
}

/* ---------------------------------------------------------------- files, dense */

static int is_tokenizer_file(const char *n)
{
	static const char *const names[] = {
		"generation_config.json", "tokenizer.json", "tokenizer_config.json",
		"tokenizer.model", "tiktoken.model", "special_tokens_map.json",
		"added_tokens.json", "vocab.json", "merges.txt", "chat_template.json",
		NULL,
	};
	for (int i = 0; names[i]; i++)
		if (strcmp(n, names[i]) == 0)
			return 1;
	size_t len = strlen(n);
	if (len > 6 && strcmp(n + len - 6, ".jinja") == 0)
		return 1;
	if (len > 9 && strcmp(n + len - 9, ".tiktoken") == 0)
		return 1;
	return strncmp(n, "tokenization_", 13) == 0 && len > 16 && strcmp(n + len - 3, ".py") == 0;
}

static int add_file(struct imp *im, const char *name, k2i_stats *st, k2_err *err)
{
	char path[4096];
	if ((size_t)snprintf(path, sizeof(path), "%s/%s", im->src, name) >= sizeof(path))
		return k2_err_set(err, -ENAMETOOLONG, "%s/%s: path too long", im->src, name);
	char *data;
	size_t n;
	int rc = k2_read_file(path, &data, &n, err);
	if (rc < 0)
		return rc;
	rc = k2p_writer_add_file(im->w, name, data, n, err);
	free(data);
	if (rc == 0)
		st->n_files++;
	return rc;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int write_files(struct imp *im, k2i_stats *st, k2_err *err)
{
	int rc = add_file(im, "config.json", st, err);
	if (rc < 0)
		return rc;
	DIR *d = opendir(im->src);
	if (!d)
		return k2_err_set(err, -errno, "%s: cannot list: %s", im->src, strerror(errno));
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (!is_tokenizer_file(de->d_name))
			continue;
		char path[4096];
		struct stat sb;
		snprintf(path, sizeof(path), "%s/%s", im->src, de->d_name);
		if (stat(path, &sb) < 0 || !S_ISREG(sb.st_mode))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			char **nn = realloc(names, cap * sizeof(*names));
			if (!nn) {
				rc = k2_err_set(err, -ENOMEM, "%s: out of memory", im->src);
				break;
			}
			names = nn;
		}
		if (!(names[n] = strdup(de->d_name))) {
			rc = k2_err_set(err, -ENOMEM, "%s: out of memory", im->src);
			break;
		}
		n++;
	}
	closedir(d);
	if (rc == 0 && n > 1)
		qsort(names, n, sizeof(*names), name_cmp);
	for (size_t i = 0; i < n; i++) {
		if (rc == 0)
			rc = add_file(im, names[i], st, err);
		free(names[i]);
	}
	free(names);
	return rc;
}

/* A large dense tensor being streamed into the pack (k2p_writer_add_dense_from). */
struct dense_src {
	struct imp *im;
	const k2st_tensor *t;
};

static int dense_read(void *ctx, uint64_t off, void *buf, size_t len, k2_err *err)
{
	struct dense_src *ds = ctx;
	if (cancelled(ds->im))
		return k2_err_set(err, -EINTR, "%s: interrupted", ds->im->src);
	return read_at(ds->im, ds->t, off, buf, len, err);
}

/* Dense tensors in checkpoint order: small ones read whole (one buffer of the
 * largest), larger ones streamed in parts, so memory stays bounded. */
static int write_dense(struct imp *im, k2i_stats *st, k2_err *err)
{
	void *buf = NULL;
	if (im->max_dense_bytes) {
		buf = malloc(im->max_dense_bytes);
		if (!buf)
			return k2_err_set(err, -ENOMEM, "%s: out of memory for a %llu-byte tensor",
					  im->src, (unsigned long long)im->max_dense_bytes);
	}
	int rc = 0;
	size_t done = 0;
	for (size_t i = 0; i < k2st_count(im->ck) && rc == 0; i++) {
		const k2st_tensor *t = k2st_at(im->ck, i);
		uint32_t l, e;
		int proj;
		const char *suffix;
		if (k2i_expert_name_parse(t->name, &l, &e, &proj, &suffix) != 0)
			continue;
		if (cancelled(im)) {
			rc = k2_err_set(err, -EINTR, "%s: interrupted", im->src);
			break;
		}
		if (t->bytes > DENSE_WHOLE_BYTES) {
			struct dense_src ds = {im, t};
			rc = k2p_writer_add_dense_from(im->w, t->name, t->dtype, t->ndim, t->shape,
						       t->bytes, dense_read, &ds, err);
		} else {
			rc = read_at(im, t, 0, buf, t->bytes, err);
			if (rc == 0)
				rc = k2p_writer_add_dense(im->w, t->name, t->dtype, t->ndim,
							  t->shape, buf, t->bytes, err);
		}
		if (rc == 0)
			st->n_dense++;
		done++;
		k2cli_progress_update(&im->prog, "dense %zu/%zu  %.0f MB/s", done, im->n_dense,
				      (double)__atomic_load_n(&im->bytes_in, __ATOMIC_RELAXED) /
					      (k2_now() - im->t0 + 1e-9) / 1e6);
	}
	free(buf);
	return rc;
}

/* ---------------------------------------------------------------- entry */

static void imp_free(struct imp *im)
{
	for (int i = 0; i < im->n_fds; i++)
		if (im->fds[i] >= 0)
			close(im->fds[i]);
	free(im->fds);
	free(im->table);
	free(im->jobs);
	k2st_close(im->ck);
}

int k2i_import(const char *src_dir, const char *out_path, const k2i_opts *o,
	       k2i_stats *stats, k2_err *err)
{
	struct imp im = {0};
	k2i_stats st = {0};
	im.o = o;
	im.src = src_dir;
	im.t0 = k2_now();
	im.threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (im.threads < 1)
		im.threads = 1;
	if (o->progress)
		k2cli_progress_init(&im.prog);
	if (o->experts >= K2_FORMAT_COUNT || o->codec >= K2_CODEC_COUNT)
		return k2_err_set(err, -EINVAL, "%s: bad import options", out_path);

	char cfg_path[4096];
	if ((size_t)snprintf(cfg_path, sizeof(cfg_path), "%s/config.json", src_dir) >=
	    sizeof(cfg_path))
		return k2_err_set(err, -ENAMETOOLONG, "%s: path too long", src_dir);
	char *json;
	size_t json_n;
	int rc = k2_read_file(cfg_path, &json, &json_n, err);
	if (rc < 0)
		return rc;
	uint32_t nextn = 0;
	rc = k2_config_parse(json, json_n, cfg_path, &im.cfg, err);
	if (rc == 0)
		rc = config_nextn(json, json_n, cfg_path, &nextn, err);
	free(json);
	if (rc < 0)
		return rc;
	im.H = im.cfg.hidden_size;
	im.I = im.cfg.moe_intermediate_size;
	im.max_dim = im.H > im.I ? im.H : im.I;
	im.n_layers = im.cfg.num_hidden_layers + nextn;
	im.n_experts = im.cfg.n_routed_experts;
	if (im.n_layers > MAX_LAYERS || im.n_experts > MAX_EXPERTS || im.H == 0 || im.I == 0 ||
	    im.H > (1u << 20) || im.I > (1u << 20))
		return k2_err_set(err, -EINVAL,
				  "%s: unsupported sizes (layers %u, experts %u, hidden %u, moe_intermediate %u)",
				  cfg_path, im.n_layers, im.n_experts, im.H, im.I);

	rc = k2st_open(src_dir, &im.ck, err);
	if (rc < 0)
		return rc;
	rc = open_shards(&im, err);
	if (rc < 0)
		goto out_free;
	im.table = calloc((size_t)im.n_layers * im.n_experts + 1, sizeof(*im.table));
	if (!im.table) {
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory", src_dir);
		goto out_free;
	}
	for (size_t i = 0; i < k2st_count(im.ck) && rc == 0; i++)
		rc = classify(&im, k2st_at(im.ck, i), err);
	if (rc == 0)
		rc = plan_experts(&im, err);
	if (rc < 0)
		goto out_free;

	k2p_writer_opts wo = {
		.codec = o->codec,
		.dense_codec = o->codec,
		.level = o->level,
		.block_bytes = o->block_bytes,
		.threads = im.threads,
	};
	rc = k2p_writer_create(out_path, &wo, &im.w, err);
	if (rc < 0)
		goto out_free;
	rc = write_files(&im, &st, err);
	if (rc == 0)
		rc = write_dense(&im, &st, err);
	double t_exp = k2_now();
	uint64_t in_before_experts = im.bytes_in;
	if (rc == 0)
		rc = write_experts(&im, err);
	k2cli_progress_clear(&im.prog);
	if (rc == 0 && cancelled(&im))
		rc = k2_err_set(err, -EINTR, "%s: interrupted", src_dir);
	if (rc < 0) {
		k2p_writer_abort(im.w);
		im.w = NULL;
		goto out_free;
	}
	st.n_experts = im.n_jobs;
	rc = k2p_writer_finish(im.w, err);
	im.w = NULL;
	if (rc < 0)
		goto out_free;
	/* The writer's totals are final only inside finish: read them back. */
	k2p_pack *pk;
	if (k2p_pack_open(out_path, &pk, NULL) == 0) {
		for (size_t i = 0; i < k2p_entry_count(pk); i++) {
			const k2p_entry *e = k2p_entry_at(pk, i);
			st.raw_bytes += e->raw_bytes;
			st.stored_bytes += e->extent_bytes;
			if (e->kind == K2P_KIND_EXPERT) {
				st.expert_raw += e->raw_bytes;
				st.expert_stored += e->extent_bytes;
			}
		}
		st.pack_bytes = k2p_pack_file_bytes(pk);
		k2p_pack_close(pk);
	}
	st.bytes_in = im.bytes_in;
	st.expert_in = im.bytes_in - in_before_experts;
	st.seconds = k2_now() - im.t0;
	st.expert_seconds = k2_now() - t_exp;
	if (stats)
		*stats = st;
out_free:
	imp_free(&im);
	return rc;
}
