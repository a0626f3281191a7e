/* model_weights.c — opens a model through its mount directory: config.json and
 * every dense tensor the config implies (dense/<hub name>), checked against the
 * shapes config.json gives and read once into memory. Matrices stay in their
 * stored format for kern_matmul (BF16, F8_E4M3 with its block-128
 * <name>_scale_inv, F32; F16 is widened to F32); vectors become float32.
 *
 * The matrices are read after every tensor has been checked, on several
 * threads at once (a mount serves parallel reads much faster than one).
 *
 * Dtype and shape come from the xattrs user.k2.dtype and user.k2.shape that
 * k2fs puts on dense files. On a plain directory without them the dtype is
 * inferred from the file size against the element count config.json implies
 * (2 bytes: BF16, 4: F32, 1: F8_E4M3 when <name>_scale_inv exists). */
#include "infer_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

void *inf_alloc(size_t bytes)
{
	void *p = NULL;
	if (bytes == 0)
		bytes = 64;
	bytes = (bytes + 63) & ~(size_t)63;
	if (posix_memalign(&p, 64, bytes) != 0)
		return NULL;
	memset(p, 0, bytes);
	return p;
}

/* Remembers an allocation the model owns. Returns 0 or -ENOMEM. */
static int own(inf_model *m, void *p)
{
	if (!p)
		return -ENOMEM;
	if (m->n_bufs == m->cap_bufs) {
		size_t cap = m->cap_bufs ? m->cap_bufs * 2 : 64;
		void **nb = realloc(m->bufs, cap * sizeof(*nb));
		if (!nb) {
			free(p);
			return -ENOMEM;
		}
		m->bufs = nb;
		m->cap_bufs = cap;
	}
	m->bufs[m->n_bufs++] = p;
	return 0;
}

static void shape_str(char *buf, size_t n, uint32_t ndim, const uint64_t *shape)
{
	size_t o = 0;
	buf[0] = 0;
	for (uint32_t i = 0; i < ndim && o < n; i++)
		o += (size_t)snprintf(buf + o, n - o, "%s%" PRIu64, i ? "," : "", shape[i]);
}

/* A dense tensor as found in the mount. */
struct dense {
	uint32_t dtype;
	void *data;     /* owned by the model */
	uint64_t bytes;
	float *scale;   /* F8_E4M3: [ceil(r/128), ceil(c/128)] */
};

static int read_xattr(const char *path, const char *name, char *buf, size_t n)
{
	ssize_t r = getxattr(path, name, buf, n - 1);
	if (r < 0)
		return -errno;
	buf[r] = 0;
	return 0;
}

/* Parses "2048,7168" into dims. Returns ndim or -EINVAL. */
static int parse_shape(const char *s, uint64_t *dims)
{
	int nd = 0;
	if (!*s)
		return 0;
	for (;;) {
		char *end;
		errno = 0;
		unsigned long long v = strtoull(s, &end, 10);
		if (end == s || errno || nd >= K2P_MAX_DIMS)
			return -EINVAL;
		dims[nd++] = v;
		if (*end == 0)
			return nd;
		if (*end != ',')
			return -EINVAL;
		s = end + 1;
	}
}

/* 1 if dense/<name>_scale_inv exists (an F8_E4M3 matrix's block scales). */
static int dense_has_scale(const inf_model *m, const char *name)
{
	char path[INF_PATH_MAX];
	(void)inf_path(path, sizeof(path), "%s/dense/%s_scale_inv", m->dir, name);
	return access(path, F_OK) == 0;
}

/* A tensor whose bytes are read later, with the others, in parallel
 * (read_deferred). */
struct deferred_read {
	char *path;
	void *buf;
	uint64_t size;
};

/* Remembers a deferred read. Returns 0 or -ENOMEM. */
static int defer_read(inf_model *m, const char *path, void *buf, uint64_t size)
{
	if (m->n_deferred == m->cap_deferred) {
		size_t cap = m->cap_deferred ? 2 * m->cap_deferred : 64;
		struct deferred_read *nd = realloc(m->deferred, cap * sizeof(*nd));
		if (!nd)
			return -ENOMEM;
		m->deferred = nd;
		m->cap_deferred = cap;
	}
	char *p = strdup(path);
	if (!p)
		return -ENOMEM;
	m->deferred[m->n_deferred++] = (struct deferred_read){.path = p, .buf = buf, .size = size};
	return 0;
}

/* Opens dense/<name>, checks its dtype and shape against `shape`, and reads
 * it — at once, or with defer (a matrix used as stored) later with the others
 * (read_deferred). allow_fp8: a matrix that may be F8_E4M3 with a _scale_inv. */
static int load_dense(inf_model *m, const char *name, uint32_t ndim, const uint64_t *shape,
		      int allow_fp8, int defer, struct dense *out, k2_err *err)
{
	char path[INF_PATH_MAX], want[128], got[128], xa[256];
	int rc;
	memset(out, 0, sizeof(*out));
	(void)inf_path(path, sizeof(path), "%s/dense/%s", m->dir, name);
	shape_str(want, sizeof(want), ndim, shape);
	uint64_t n_el = 1;
	for (uint32_t i = 0; i < ndim; i++)
		n_el *= shape[i];

	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		if (e == ENOENT)
			return k2_err_set(err, -ENOENT,
					  "%s: missing (config.json implies a [%s] tensor)", path,
					  want);
		return k2_err_set(err, -e, "%s: %s", path, strerror(e));
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		k2_err_set(err, rc, "%s: stat: %s", path, strerror(-rc));
		goto out_close;
	}
	uint64_t size = (uint64_t)st.st_size;
	uint32_t dtype = K2_DTYPE_NONE;
	if ((rc = read_xattr(path, "user.k2.dtype", xa, sizeof(xa))) == 0) {
		dtype = k2_dtype_parse(xa);
		if (dtype == K2_DTYPE_NONE) {
			rc = k2_err_set(err, -EINVAL, "%s: unknown dtype '%s' (user.k2.dtype)",
					path, xa);
			goto out_close;
		}
		if (read_xattr(path, "user.k2.shape", xa, sizeof(xa)) == 0) {
			uint64_t dims[K2P_MAX_DIMS];
			int nd = parse_shape(xa, dims);
			int same = nd == (int)ndim;
			for (int i = 0; same && i < nd; i++)
				same = dims[i] == shape[i];
			if (!same) {
				rc = k2_err_set(err, -EINVAL,
						"%s: shape [%s] (user.k2.shape) but config.json "
						"implies [%s]", path, xa, want);
				goto out_close;
			}
		}
		if (size != n_el * k2_dtype_size(dtype)) {
			rc = k2_err_set(err, -EINVAL,
					"%s: %" PRIu64 " bytes, expected %" PRIu64 " for %s [%s]",
					path, size, n_el * k2_dtype_size(dtype), xa, want);
			goto out_close;
		}
	} else if (rc == -ENODATA || rc == -ENOTSUP) {
		/* A plain directory: infer the dtype from the size. */
		if (size == n_el * 2)
			dtype = K2_DTYPE_BF16;
		else if (size == n_el * 4)
			dtype = K2_DTYPE_F32;
		else if (size == n_el && allow_fp8 && dense_has_scale(m, name))
			dtype = K2_DTYPE_F8_E4M3;
		else {
			rc = k2_err_set(err, -EINVAL,
					"%s: %" PRIu64 " bytes fit no dtype for the [%s] tensor "
					"config.json implies", path, size, want);
			goto out_close;
		}
	} else {
		k2_err_set(err, rc, "%s: getxattr user.k2.dtype: %s", path, strerror(-rc));
		goto out_close;
	}
	switch (dtype) {
	case K2_DTYPE_BF16: case K2_DTYPE_F32: case K2_DTYPE_F16:
		break;
	case K2_DTYPE_F8_E4M3:
		if (allow_fp8 && ndim == 2)
			break;
		/* fallthrough */
	default:
		rc = k2_err_set(err, -EINVAL, "%s: dtype %s is not supported for this tensor",
				path, k2_dtype_name(dtype));
		goto out_close;
	}
	void *data = k2_alloc_large(size); /* not zeroed: k2_pread_exact fills it */
	if ((rc = own(m, data)) < 0) {
		k2_err_set(err, rc, "%s: out of memory for %" PRIu64 " bytes", path, size);
		goto out_close;
	}
	if (defer && dtype != K2_DTYPE_F16) { /* F16 is converted below, once read */
		if ((rc = defer_read(m, path, data, size)) < 0) {
			k2_err_set(err, rc, "out of memory");
			goto out_close;
		}
	} else if ((rc = k2_pread_exact(fd, data, size, 0, path, err)) < 0)
		goto out_close;
	close(fd);
	fd = -1;
	out->dtype = dtype;
	out->data = data;
	out->bytes = size;
	m->dense_bytes += size;
	if (dtype == K2_DTYPE_F8_E4M3) {
		char sname[1200];
		uint64_t sshape[2] = {(shape[0] + 127) / 128, (shape[1] + 127) / 128};
		struct dense sd;
		snprintf(sname, sizeof(sname), "%s_scale_inv", name);
		if ((rc = load_dense(m, sname, 2, sshape, 0, defer, &sd, err)) < 0)
			return rc;
		if (sd.dtype != K2_DTYPE_F32) {
			snprintf(got, sizeof(got), "%s", k2_dtype_name(sd.dtype));
			return k2_err_set(err, -EINVAL, "%s/dense/%s: dtype %s, expected F32",
					  m->dir, sname, got);
		}
		out->scale = sd.data;
	}
	return 0;
out_close:
	if (fd >= 0)
		close(fd);
	return rc;
}

/* Loads a matrix [rows, cols] as a kern_mat in its stored format. */
static int load_mat(inf_model *m, const char *name, uint32_t rows, uint32_t cols,
		    kern_mat *km, k2_err *err)
{
	uint64_t shape[2] = {rows, cols};
	struct dense d;
	int rc = load_dense(m, name, 2, shape, 1, 1, &d, err);
	if (rc < 0)
		return rc;
	km->rows = rows;
	km->cols = cols;
	km->s = NULL;
	km->w = d.data;
	switch (d.dtype) {
	case K2_DTYPE_BF16:
		km->format = K2_FORMAT_BF16;
		break;
	case K2_DTYPE_F8_E4M3:
		km->format = K2_FORMAT_FP8_B128;
		km->s = d.scale;
		break;
	case K2_DTYPE_F32:
		km->format = KERN_FORMAT_F32;
		break;
	case K2_DTYPE_F16: {
		float *f = inf_alloc((size_t)rows * cols * sizeof(float));
		if ((rc = own(m, f)) < 0)
			return k2_err_set(err, rc, "dense/%s: out of memory", name);
		k2q_to_f32(K2_DTYPE_F16, d.data, (size_t)rows * cols, f);
		km->format = KERN_FORMAT_F32;
		km->w = f;
		break;
	}
	}
	return 0;
}

/* Loads a vector [n] as float32. */
static int load_vec(inf_model *m, const char *name, uint32_t n, float **out, k2_err *err)
{
	uint64_t shape[1] = {n};
	struct dense d;
	int rc = load_dense(m, name, 1, shape, 0, 0, &d, err);
	if (rc < 0)
		return rc;
	if (d.dtype == K2_DTYPE_F32) {
		*out = d.data;
		return 0;
	}
	float *f = inf_alloc((size_t)n * sizeof(float));
	if ((rc = own(m, f)) < 0)
		return k2_err_set(err, rc, "dense/%s: out of memory", name);
	if (k2q_to_f32(d.dtype, d.data, n, f) < 0)
		return k2_err_set(err, -EINVAL, "dense/%s: cannot convert %s to float32", name,
				  k2_dtype_name(d.dtype));
	*out = f;
	return 0;
}

/* 1 if dense/<name> exists. */
static int dense_exists(const inf_model *m, const char *name)
{
	char path[INF_PATH_MAX];
	(void)inf_path(path, sizeof(path), "%s/dense/%s", m->dir, name);
	return access(path, F_OK) == 0;
}

/* Readers of the deferred tensors: a mount serves parallel reads far faster
 * than one (each is a round trip through FUSE). */
#define DENSE_READERS 4

struct deferred_job {
	inf_model *m;
	atomic_size_t next;
	atomic_int failed;
	pthread_mutex_t lock;
	int rc;
	k2_err err;     /* the first failure (protected by lock) */
};

static void *deferred_main(void *arg)
{
	struct deferred_job *j = arg;
	for (;;) {
		size_t i = atomic_fetch_add(&j->next, 1);
		if (i >= j->m->n_deferred || atomic_load(&j->failed))
			return NULL;
		const struct deferred_read *d = &j->m->deferred[i];
		k2_err e;
		int rc, fd = open(d->path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			rc = k2_err_set(&e, -errno, "%s: %s", d->path, strerror(errno));
		else {
			rc = k2_pread_exact(fd, d->buf, d->size, 0, d->path, &e);
			close(fd);
		}
		if (rc < 0 && !atomic_exchange(&j->failed, 1)) {
			pthread_mutex_lock(&j->lock);
			j->rc = rc;
			j->err = e;
			pthread_mutex_unlock(&j->lock);
		}
	}
}

/* Reads every deferred tensor on DENSE_READERS threads. Returns 0 or the first
 * error, with its message. */
static int read_deferred(inf_model *m, k2_err *err)
{
	struct deferred_job j = {.m = m};
	pthread_t th[DENSE_READERS];
	int n_th = 0;
	atomic_init(&j.next, 0);
	atomic_init(&j.failed, 0);
	pthread_mutex_init(&j.lock, NULL);
	for (int i = 1; i < DENSE_READERS && (size_t)i < m->n_deferred; i++)
		if (pthread_create(&th[n_th], NULL, deferred_main, &j) == 0)
			n_th++;
	deferred_main(&j);
	for (int i = 0; i < n_th; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&j.lock);
	if (atomic_load(&j.failed)) {
		*err = j.err;
		return j.rc;
	}
	return 0;
}

static void free_deferred(inf_model *m)
{
	for (size_t i = 0; i < m->n_deferred; i++)
		free(m->deferred[i].path);
	free(m->deferred);
	m->deferred = NULL;
	m->n_deferred = m->cap_deferred = 0;
}

/* Checks what this engine supports beyond what k2_model_config carries. */
static int check_config(const inf_model *m, k2_err *err)
{
	const k2_model_config *c = &m->cfg;
	char path[INF_PATH_MAX];
	(void)inf_path(path, sizeof(path), "%s/config.json", m->dir);
	if (c->qk_rope_head_dim % 2)
		return k2_err_set(err, -EINVAL, "%s: qk_rope_head_dim %u must be even", path,
				  c->qk_rope_head_dim);
	if (c->hidden_size == 0 || c->num_attention_heads == 0 || c->vocab_size == 0 ||
	    c->kv_lora_rank == 0 || c->num_hidden_layers == 0)
		return k2_err_set(err, -EINVAL, "%s: a required dimension is 0", path);
	if (c->n_routed_experts && c->num_experts_per_tok > c->n_routed_experts)
		return k2_err_set(err, -EINVAL,
				  "%s: num_experts_per_tok %u > n_routed_experts %u", path,
				  c->num_experts_per_tok, c->n_routed_experts);
	if (c->n_routed_experts && c->n_group &&
	    (c->n_routed_experts % c->n_group || c->topk_group > c->n_group ||
	     c->topk_group == 0))
		return k2_err_set(err, -EINVAL,
				  "%s: n_group %u / topk_group %u do not divide %u experts", path,
				  c->n_group, c->topk_group, c->n_routed_experts);
	if (c->qk_rope_head_dim > KERN_ROPE_MAX)
		return k2_err_set(err, -EINVAL, "%s: qk_rope_head_dim %u > %u is not supported",
				  path, c->qk_rope_head_dim, KERN_ROPE_MAX);
	if (c->n_routed_experts > KERN_MAX_EXPERTS)
		return k2_err_set(err, -EINVAL, "%s: n_routed_experts %u > %u is not supported",
				  path, c->n_routed_experts, KERN_MAX_EXPERTS);
	if (m->n_moe_layers && c->num_experts_per_tok == 0)
		return k2_err_set(err, -EINVAL, "%s: num_experts_per_tok is 0", path);
	return 0;
}

int inf_model_is_moe(const inf_model *m, uint32_t layer)
{
	return layer < m->cfg.num_hidden_layers && m->layers[layer].moe;
}

static int load_layer(inf_model *m, uint32_t l, k2_err *err)
{
	const k2_model_config *c = &m->cfg;
	inf_layer *ly = &m->layers[l];
	const uint32_t H = c->hidden_size, nh = c->num_attention_heads;
	const uint32_t qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
	const uint32_t R = c->kv_lora_rank, rope = c->qk_rope_head_dim;
	char p[256], n[512];
	int rc;
#define NAME(suffix) (snprintf(n, sizeof(n), "%s%s", p, suffix), n)
	snprintf(p, sizeof(p), "model.layers.%u.", l);
	ly->moe = k2_config_is_moe_layer(c, l) && c->n_routed_experts > 0;
	if ((rc = load_vec(m, NAME("input_layernorm.weight"), H, &ly->attn_norm, err)) < 0 ||
	    (rc = load_vec(m, NAME("post_attention_layernorm.weight"), H, &ly->mlp_norm, err)) < 0)
		return rc;
	if (c->q_lora_rank) {
		if ((rc = load_mat(m, NAME("self_attn.q_a_proj.weight"), c->q_lora_rank, H,
				   &ly->q_a, err)) < 0 ||
		    (rc = load_vec(m, NAME("self_attn.q_a_layernorm.weight"), c->q_lora_rank,
				   &ly->q_a_norm, err)) < 0 ||
		    (rc = load_mat(m, NAME("self_attn.q_b_proj.weight"), nh * qk, c->q_lora_rank,
				   &ly->q_b, err)) < 0)
			return rc;
	} else if ((rc = load_mat(m, NAME("self_attn.q_proj.weight"), nh * qk, H, &ly->q_proj,
				  err)) < 0)
		return rc;
	if ((rc = load_mat(m, NAME("self_attn.kv_a_proj_with_mqa.weight"), R + rope, H,
			   &ly->kv_a, err)) < 0 ||
	    (rc = load_vec(m, NAME("self_attn.kv_a_layernorm.weight"), R, &ly->kv_a_norm,
			   err)) < 0 ||
	    (rc = load_mat(m, NAME("self_attn.kv_b_proj.weight"),
			   nh * (c->qk_nope_head_dim + c->v_head_dim), R, &ly->kv_b, err)) < 0 ||
	    (rc = load_mat(m, NAME("self_attn.o_proj.weight"), H, nh * c->v_head_dim,
			   &ly->o_proj, err)) < 0)
		return rc;
	const char *mp = "mlp.";
	if (ly->moe) {
		if ((rc = load_mat(m, NAME("mlp.gate.weight"), c->n_routed_experts, H, &ly->router,
				   err)) < 0)
			return rc;
		if (strcmp(c->topk_method, "noaux_tc") == 0 ||
		    dense_exists(m, NAME("mlp.gate.e_score_correction_bias"))) {
			if ((rc = load_vec(m, NAME("mlp.gate.e_score_correction_bias"),
					   c->n_routed_experts, &ly->router_bias, err)) < 0)
				return rc;
		}
		mp = "mlp.shared_experts.";
		ly->mlp_inter = c->moe_intermediate_size * c->n_shared_experts;
	} else
		ly->mlp_inter = c->intermediate_size;
	ly->has_mlp = ly->mlp_inter > 0;
	if (ly->has_mlp) {
		char base[300];
		snprintf(base, sizeof(base), "%s%s", p, mp);
		snprintf(n, sizeof(n), "%sgate_proj.weight", base);
		if ((rc = load_mat(m, n, ly->mlp_inter, H, &ly->gate, err)) < 0)
			return rc;
		snprintf(n, sizeof(n), "%sup_proj.weight", base);
		if ((rc = load_mat(m, n, ly->mlp_inter, H, &ly->up, err)) < 0)
			return rc;
		snprintf(n, sizeof(n), "%sdown_proj.weight", base);
		if ((rc = load_mat(m, n, H, ly->mlp_inter, &ly->down, err)) < 0)
			return rc;
	}
#undef NAME
	return 0;
}

static uint64_t mat_bytes(const kern_mat *km)
{
	return km->w ? kern_mat_bytes(km) : 0;
}

/* transformers takes the cos/sin multiplier from rope_scaling's
 * attention_factor when present, and uses mscale / mscale_all_dim only when
 * both are present and non-zero; k2_model_config gives defaults for absent
 * keys, so the presence is read here from the file itself. */
static void rope_attention_factor(inf_model *m, const char *path)
{
	const k2_model_config *c = &m->cfg;
	if (!c->rope_yarn)
		return;
	json_t *root = json_load_file(path, 0, NULL);
	if (!root)
		return;
	json_t *rs = json_object_get(root, "rope_scaling");
	if (!json_is_object(rs))
		rs = json_object_get(root, "rope_parameters");
	if (json_is_object(rs)) {
		json_t *af = json_object_get(rs, "attention_factor");
		json_t *ms = json_object_get(rs, "mscale");
		json_t *ma = json_object_get(rs, "mscale_all_dim");
		if (json_is_number(af))
			m->rope_mscale = (float)json_number_value(af);
		else if (!(json_is_number(ms) && json_number_value(ms) != 0 &&
			   json_is_number(ma) && json_number_value(ma) != 0))
			m->rope_mscale = c->rope_factor <= 1
						 ? 1.0f
						 : (float)(0.1 * log(c->rope_factor) + 1.0);
	}
	json_decref(root);
}

/* Checks that every routed expert config.json implies is in the mount with
 * the size of a valid image: one header is parsed per distinct size (a
 * stat per file otherwise), so a missing or truncated expert is reported at
 * start, not in the middle of a generation. Records the largest image. */
static int check_experts(inf_model *m, k2_err *err)
{
	const k2_model_config *c = &m->cfg;
	uint64_t good[4] = {0};
	uint32_t n_good = 0;
	for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
		if (!m->layers[l].moe)
			continue;
		for (uint32_t x = 0; x < c->n_routed_experts; x++) {
			char path[INF_PATH_MAX];
			struct stat st;
			if (inf_expert_path(path, sizeof(path), m->dir, l, x) < 0)
				return k2_err_set(err, -ENAMETOOLONG, "%s: path too long", m->dir);
			if (stat(path, &st) < 0) {
				int e = errno;
				return k2_err_set(err, -e, "%s: %s (config.json gives layer %u %u "
						  "routed experts)", path,
						  e == ENOENT ? "missing" : strerror(e), l,
						  c->n_routed_experts);
			}
			uint64_t size = (uint64_t)st.st_size;
			int known = 0;
			for (uint32_t i = 0; i < n_good; i++)
				known |= good[i] == size;
			if (known)
				continue;
			k2x_layout lay;
			int rc = inf_expert_layout(m->dir, c, l, x, &lay, &size, err);
			if (rc < 0)
				return rc;
			if (n_good < 4)
				good[n_good++] = size;
			if (lay.image_bytes > m->expert_image_bytes)
				m->expert_image_bytes = lay.image_bytes;
		}
	}
	return 0;
}

int inf_model_open(const char *dir, inf_model **out, k2_err *err)
{
	char path[INF_PATH_MAX];
	int rc;
	*out = NULL;
	inf_model *m = calloc(1, sizeof(*m));
	if (!m)
		return k2_err_set(err, -ENOMEM, "out of memory");
	/* every path the engine forms is the directory and a name of at most
	 * INF_NAME_MAX bytes (dense tensors, experts/LLL/EEE, config.json) */
	if (strlen(dir) + INF_NAME_MAX >= INF_PATH_MAX) {
		rc = k2_err_set(err, -ENAMETOOLONG, "%.64s…: model directory path of %zu bytes is "
				"too long (at most %d)", dir, strlen(dir), INF_PATH_MAX - INF_NAME_MAX - 1);
		goto fail;
	}
	m->dir = strdup(dir);
	if (!m->dir) {
		rc = k2_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	(void)inf_path(path, sizeof(path), "%s/config.json", dir);
	if ((rc = k2_config_load(path, &m->cfg, err)) < 0)
		goto fail;
	const k2_model_config *c = &m->cfg;
	m->layers = calloc(c->num_hidden_layers, sizeof(*m->layers));
	if (!m->layers) {
		rc = k2_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (uint32_t l = 0; l < c->num_hidden_layers; l++)
		if (k2_config_is_moe_layer(c, l) && c->n_routed_experts > 0)
			m->n_moe_layers++;
	if ((rc = check_config(m, err)) < 0)
		goto fail;
	const uint32_t H = c->hidden_size, V = c->vocab_size;
	if ((rc = load_mat(m, "model.embed_tokens.weight", V, H, &m->embed, err)) < 0 ||
	    (rc = load_vec(m, "model.norm.weight", H, &m->final_norm, err)) < 0)
		goto fail;
	if (c->tie_word_embeddings && !dense_exists(m, "lm_head.weight"))
		m->lm_head = m->embed;
	else if ((rc = load_mat(m, "lm_head.weight", V, H, &m->lm_head, err)) < 0)
		goto fail;
	for (uint32_t l = 0; l < c->num_hidden_layers; l++)
		if ((rc = load_layer(m, l, err)) < 0)
			goto fail;
	rc = read_deferred(m, err);
	free_deferred(m);
	if (rc < 0)
		goto fail;

	/* bytes one decode token reads */
	m->bytes_per_token = mat_bytes(&m->lm_head) + mat_bytes(&m->embed) / V;
	for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
		const inf_layer *ly = &m->layers[l];
		m->bytes_per_token += mat_bytes(&ly->q_a) + mat_bytes(&ly->q_b) +
				      mat_bytes(&ly->q_proj) + mat_bytes(&ly->kv_a) +
				      mat_bytes(&ly->kv_b) + mat_bytes(&ly->o_proj) +
				      mat_bytes(&ly->gate) + mat_bytes(&ly->up) +
				      mat_bytes(&ly->down) + mat_bytes(&ly->router);
	}
	m->rope_inv_freq = inf_alloc(sizeof(float) * (c->qk_rope_head_dim / 2 + 1));
	if ((rc = own(m, m->rope_inv_freq)) < 0) {
		k2_err_set(err, rc, "out of memory");
		goto fail;
	}
	inf_rope_params(c, m->rope_inv_freq, &m->rope_mscale, &m->attn_scale);
	rope_attention_factor(m, path);
	if ((rc = check_experts(m, err)) < 0)
		goto fail;
	*out = m;
	return 0;
fail:
	inf_model_close(m);
	return rc;
}

void inf_model_close(inf_model *m)
{
	if (!m)
		return;
	free_deferred(m);
	for (size_t i = 0; i < m->n_bufs; i++)
		free(m->bufs[i]);
	free(m->bufs);
	free(m->layers);
	free(m->dir);
	free(m);
}

const k2_model_config *inf_model_config(const inf_model *m) { return &m->cfg; }
const char *inf_model_dir(const inf_model *m) { return m->dir; }
uint64_t inf_model_dense_bytes(const inf_model *m) { return m->dense_bytes; }
uint64_t inf_model_dense_bytes_per_token(const inf_model *m) { return m->bytes_per_token; }
const float *inf_model_rope_inv_freq(const inf_model *m) { return m->rope_inv_freq; }
float inf_model_rope_mscale(const inf_model *m) { return m->rope_mscale; }
float inf_model_attn_scale(const inf_model *m) { return m->attn_scale; }
