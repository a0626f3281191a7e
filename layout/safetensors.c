/* safetensors.c — reads HuggingFace safetensors checkpoints: one file, or the
 * shards named by model.safetensors.index.json. Every header is parsed with
 * jansson and every tensor's dtype, shape and data_offsets are checked against
 * its file before anything uses them; payloads are read later with pread on
 * descriptors kept open for the checkpoint's lifetime.
 *
 * File layout: u64 LE header length N, N bytes of JSON
 *   {"<name>": {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}, …,
 *    "__metadata__": {…}}
 * then the data; offsets are relative to byte 8 + N. */
#include "layout.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100ull << 20)  /* header JSON bytes */
#define ST_MAX_DIM (1ull << 40)       /* one dimension, as FORMAT.md §3 */
#define ST_MAX_SHARDS 65536

/* ---------------------------------------------------------------- header parsing */

/* One parsed tensor before it is handed on; `name` points into the JSON. */
struct st_parsed {
	k2st_tensor t;
	uint64_t begin, end; /* relative to the data start */
};

static int cmp_parsed_begin(const void *a, const void *b)
{
	const struct st_parsed *x = *(const struct st_parsed *const *)a;
	const struct st_parsed *y = *(const struct st_parsed *const *)b;
	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	return x->end < y->end ? -1 : x->end > y->end;
}

/* Reads a non-negative JSON integer; returns 0 or -EINVAL. */
static int json_u64(const json_t *v, uint64_t *out)
{
	if (!json_is_integer(v))
		return -EINVAL;
	json_int_t x = json_integer_value(v);
	if (x < 0)
		return -EINVAL;
	*out = (uint64_t)x;
	return 0;
}

/* Validates one tensor entry of a header. `data_bytes` is the size of the data
 * area (file size − 8 − N). Returns 0 or -EINVAL with a message. */
static int parse_entry(const char *what, const char *name, const json_t *v,
		       uint64_t data_bytes, struct st_parsed *p, k2_err *err)
{
	memset(p, 0, sizeof(*p));
	p->t.name = name;
	size_t name_len = strlen(name);
	if (name_len == 0 || name_len > K2P_MAX_NAME)
		return k2_err_set(err, -EINVAL, "%s: tensor name of %zu bytes (expected 1 … %u)",
				  what, name_len, K2P_MAX_NAME);
	if (!json_is_object(v))
		return k2_err_set(err, -EINVAL, "%s: tensor %s: entry is not a JSON object", what, name);

	const json_t *jd = json_object_get(v, "dtype");
	if (!json_is_string(jd))
		return k2_err_set(err, -EINVAL, "%s: tensor %s: \"dtype\" missing or not a string",
				  what, name);
	p->t.dtype = k2_dtype_parse(json_string_value(jd));
	if (p->t.dtype == K2_DTYPE_NONE)
		return k2_err_set(err, -EINVAL, "%s: tensor %s: unsupported dtype \"%.32s\"", what,
				  name, json_string_value(jd));

	const json_t *js = json_object_get(v, "shape");
	if (!json_is_array(js))
		return k2_err_set(err, -EINVAL, "%s: tensor %s: \"shape\" missing or not an array",
				  what, name);
	size_t ndim = json_array_size(js);
	if (ndim > K2P_MAX_DIMS)
		return k2_err_set(err, -EINVAL, "%s: tensor %s: %zu dimensions (at most %d)", what,
				  name, ndim, K2P_MAX_DIMS);
	p->t.ndim = (uint32_t)ndim;
	uint64_t elems = 1;
	for (size_t i = 0; i < ndim; i++) {
		uint64_t d;
		if (json_u64(json_array_get(js, i), &d) < 0 || d > ST_MAX_DIM)
			return k2_err_set(err, -EINVAL,
					  "%s: tensor %s: shape[%zu] is not an integer in 0 … 2^40",
					  what, name, i);
		p->t.shape[i] = d;
		if (__builtin_mul_overflow(elems, d, &elems))
			return k2_err_set(err, -EINVAL, "%s: tensor %s: shape product overflows",
					  what, name);
	}
	uint64_t bytes;
	if (__builtin_mul_overflow(elems, (uint64_t)k2_dtype_size(p->t.dtype), &bytes))
		return k2_err_set(err, -EINVAL, "%s: tensor %s: byte size overflows", what, name);
	p->t.bytes = bytes;

	const json_t *jo = json_object_get(v, "data_offsets");
	uint64_t b, e;
	if (!json_is_array(jo) || json_array_size(jo) != 2 ||
	    json_u64(json_array_get(jo, 0), &b) < 0 || json_u64(json_array_get(jo, 1), &e) < 0)
		return k2_err_set(err, -EINVAL,
				  "%s: tensor %s: \"data_offsets\" is not an array of two "
				  "non-negative integers", what, name);
	if (e < b)
		return k2_err_set(err, -EINVAL,
				  "%s: tensor %s: data_offsets [%llu,%llu] end before begin", what,
				  name, (unsigned long long)b, (unsigned long long)e);
	if (e > data_bytes)
		return k2_err_set(err, -EINVAL,
				  "%s: tensor %s: data_offsets [%llu,%llu] end past the file "
				  "(data is %llu bytes)", what, name, (unsigned long long)b,
				  (unsigned long long)e, (unsigned long long)data_bytes);
	if (e - b != bytes)
		return k2_err_set(err, -EINVAL,
				  "%s: tensor %s: data_offsets [%llu,%llu] hold %llu bytes but "
				  "%s shape needs %llu", what, name, (unsigned long long)b,
				  (unsigned long long)e, (unsigned long long)(e - b),
				  k2_dtype_name(p->t.dtype), (unsigned long long)bytes);
	p->begin = b;
	p->end = e;
	return 0;
}

/* Parses header JSON hdr[0..hlen) of a file of `file_bytes` bytes whose header
 * length field said hlen; validates every entry and that no two payloads
 * overlap, then calls cb per tensor in header order with t->offset absolute.
 * Returns 0, -EINVAL (bad header), -ENOMEM, or what cb returned. */
static int parse_header(const char *hdr, size_t hlen, uint64_t file_bytes,
			const char *what, k2st_tensor_cb cb, void *ctx, k2_err *err)
{
	json_error_t jerr;
	json_t *root = json_loadb(hdr, hlen, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return k2_err_set(err, -EINVAL, "%s: header JSON is malformed at byte %d: %s",
				  what, jerr.position, jerr.text);
	int rc = 0;
	struct st_parsed *ps = NULL, **order = NULL;
	if (!json_is_object(root)) {
		rc = k2_err_set(err, -EINVAL, "%s: header is not a JSON object", what);
		goto out_root;
	}
	size_t cap = json_object_size(root);
	ps = calloc(cap ? cap : 1, sizeof(*ps));
	order = calloc(cap ? cap : 1, sizeof(*order));
	if (!ps || !order) {
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory for %zu tensors", what, cap);
		goto out_free;
	}
	uint64_t data_start = 8 + (uint64_t)hlen, data_bytes = file_bytes - data_start;
	size_t n = 0;
	const char *key;
	json_t *val;
	json_object_foreach(root, key, val) {
		if (strcmp(key, "__metadata__") == 0) {
			if (!json_is_object(val) && !json_is_null(val)) {
				rc = k2_err_set(err, -EINVAL, "%s: \"__metadata__\" is not an object",
						what);
				goto out_free;
			}
			continue;
		}
		rc = parse_entry(what, key, val, data_bytes, &ps[n], err);
		if (rc < 0)
			goto out_free;
		order[n] = &ps[n];
		n++;
	}

	/* No two non-empty payloads may share a byte. */
	qsort(order, n, sizeof(*order), cmp_parsed_begin);
	const struct st_parsed *prev = NULL;
	for (size_t i = 0; i < n; i++) {
		const struct st_parsed *p = order[i];
		if (p->end == p->begin)
			continue;
		if (prev && p->begin < prev->end) {
			rc = k2_err_set(err, -EINVAL,
					"%s: tensor %s: data_offsets [%llu,%llu] overlap tensor %s "
					"[%llu,%llu]", what, p->t.name,
					(unsigned long long)p->begin, (unsigned long long)p->end,
					prev->t.name, (unsigned long long)prev->begin,
					(unsigned long long)prev->end);
			goto out_free;
		}
		if (!prev || p->end > prev->end)
			prev = p;
	}

	for (size_t i = 0; i < n; i++) {
		ps[i].t.offset = data_start + ps[i].begin;
		ps[i].t.shard = 0;
		rc = cb(ctx, &ps[i].t);
		if (rc < 0)
			goto out_free;
	}
	rc = 0;
out_free:
	free(order);
	free(ps);
out_root:
	json_decref(root);
	return rc;
}

/* Checks the u64 header length against the file. Returns 0 or -EINVAL. */
static int check_header_len(uint64_t hlen, uint64_t file_bytes, const char *what, k2_err *err)
{
	if (file_bytes < 8)
		return k2_err_set(err, -EINVAL,
				  "%s: %llu bytes, too short for a safetensors header length", what,
				  (unsigned long long)file_bytes);
	if (hlen > file_bytes - 8)
		return k2_err_set(err, -EINVAL,
				  "%s: header length %llu at offset 0 runs past the end of the file "
				  "(%llu bytes)", what, (unsigned long long)hlen,
				  (unsigned long long)file_bytes);
	if (hlen > ST_MAX_HEADER)
		return k2_err_set(err, -EINVAL, "%s: header length %llu exceeds the limit of %llu",
				  what, (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
	if (hlen < 2)
		return k2_err_set(err, -EINVAL, "%s: header length %llu is too small for JSON",
				  what, (unsigned long long)hlen);
	return 0;
}

static uint64_t load_le64(const void *p)
{
	const uint8_t *b = p;
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | b[i];
	return v;
}

int k2st_parse_buffer(const void *data, size_t n, const char *what,
		      k2st_tensor_cb cb, void *ctx, k2_err *err)
{
	if (!what)
		what = "(buffer)";
	uint64_t hlen = n >= 8 ? load_le64(data) : 0;
	int rc = check_header_len(hlen, n, what, err);
	if (rc < 0)
		return rc;
	return parse_header((const char *)data + 8, (size_t)hlen, n, what, cb, ctx, err);
}

/* ---------------------------------------------------------------- name table */

/* Open-addressing hash of strings to indices (slot = index + 1, 0 = empty). */
struct name_table {
	uint32_t *slots;
	size_t mask;   /* capacity − 1, capacity a power of two */
};

static uint64_t hash_name(const char *s)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211ull;
	return h;
}

/* Finds `name`; names[] holds the strings by index. Returns the index or -1. */
static long table_find(const struct name_table *tb, const char *const *names,
		       size_t stride, const char *name)
{
	if (!tb->slots)
		return -1;
	for (size_t i = hash_name(name) & tb->mask;; i = (i + 1) & tb->mask) {
		uint32_t s = tb->slots[i];
		if (!s)
			return -1;
		const char *cand = *(const char *const *)((const char *)names + (s - 1) * stride);
		if (strcmp(cand, name) == 0)
			return (long)(s - 1);
	}
}

/* Rebuilds the table for `n` names (all distinct). Returns 0 or -ENOMEM. */
static int table_build(struct name_table *tb, const char *const *names, size_t stride, size_t n)
{
	size_t cap = 16;
	while (cap < 2 * n + 2)
		cap <<= 1;
	uint32_t *slots = calloc(cap, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	free(tb->slots);
	tb->slots = slots;
	tb->mask = cap - 1;
	for (size_t k = 0; k < n; k++) {
		const char *name = *(const char *const *)((const char *)names + k * stride);
		size_t i = hash_name(name) & tb->mask;
		while (tb->slots[i])
			i = (i + 1) & tb->mask;
		tb->slots[i] = (uint32_t)(k + 1);
	}
	return 0;
}

/* ---------------------------------------------------------------- checkpoint */

struct k2st_checkpoint {
	char *dir;
	int n_shards;
	char **shard_paths;   /* [n_shards] */
	int *fds;             /* [n_shards], open O_RDONLY */
	uint64_t *shard_bytes;
	k2st_tensor *tensors; /* [n]; names malloc'd */
	size_t n, cap;
	struct name_table names;
};

void k2st_close(k2st_checkpoint *ck)
{
	if (!ck)
		return;
	for (int i = 0; i < ck->n_shards; i++) {
		if (ck->fds && ck->fds[i] >= 0)
			close(ck->fds[i]);
		if (ck->shard_paths)
			free(ck->shard_paths[i]);
	}
	for (size_t i = 0; i < ck->n; i++)
		free((char *)ck->tensors[i].name);
	free(ck->tensors);
	free(ck->shard_paths);
	free(ck->fds);
	free(ck->shard_bytes);
	free(ck->names.slots);
	free(ck->dir);
	free(ck);
}

size_t k2st_count(const k2st_checkpoint *ck)
{
	return ck->n;
}

const k2st_tensor *k2st_at(const k2st_checkpoint *ck, size_t i)
{
	return i < ck->n ? &ck->tensors[i] : NULL;
}

const k2st_tensor *k2st_find(const k2st_checkpoint *ck, const char *name)
{
	if (ck->n == 0)
		return NULL;
	long i = table_find(&ck->names, &ck->tensors[0].name, sizeof(k2st_tensor), name);
	return i < 0 ? NULL : &ck->tensors[i];
}

const char *k2st_shard_path(const k2st_checkpoint *ck, int shard)
{
	return shard >= 0 && shard < ck->n_shards ? ck->shard_paths[shard] : NULL;
}

const char *k2st_dir(const k2st_checkpoint *ck)
{
	return ck->dir;
}

int k2st_read(const k2st_checkpoint *ck, const k2st_tensor *t, void *buf, k2_err *err)
{
	if (t->shard < 0 || t->shard >= ck->n_shards)
		return k2_err_set(err, -EINVAL, "tensor %s: shard %d out of range", t->name, t->shard);
	const char *path = ck->shard_paths[t->shard];
	uint64_t got = 0;
	while (got < t->bytes) {
		size_t want = t->bytes - got > (1u << 30) ? (1u << 30) : (size_t)(t->bytes - got);
		ssize_t r = pread(ck->fds[t->shard], (char *)buf + got, want, (off_t)(t->offset + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? errno : EIO;
			return k2_err_set(err, -e, "%s: tensor %s: read at offset %llu failed: %s",
					  path, t->name, (unsigned long long)(t->offset + got),
					  r < 0 ? strerror(e) : "unexpected end of file");
		}
		got += (uint64_t)r;
	}
	return 0;
}

/* State for adding one shard's tensors to a checkpoint. */
struct add_ctx {
	k2st_checkpoint *ck;
	int shard;
	const char *what;
	k2_err *err;
};

static int add_tensor(void *vctx, const k2st_tensor *t)
{
	struct add_ctx *a = vctx;
	k2st_checkpoint *ck = a->ck;
	if (ck->n == ck->cap) {
		size_t ncap = ck->cap ? ck->cap * 2 : 1024;
		if (ncap > UINT32_MAX - 1)
			return k2_err_set(a->err, -E2BIG, "%s: too many tensors", a->what);
		k2st_tensor *nt = realloc(ck->tensors, ncap * sizeof(*nt));
		if (!nt)
			return k2_err_set(a->err, -ENOMEM, "%s: out of memory", a->what);
		ck->tensors = nt;
		ck->cap = ncap;
	}
	char *name = strdup(t->name);
	if (!name)
		return k2_err_set(a->err, -ENOMEM, "%s: out of memory", a->what);
	k2st_tensor *dst = &ck->tensors[ck->n++];
	*dst = *t;
	dst->name = name;
	dst->shard = a->shard;
	return 0;
}

static char *path_join(const char *dir, const char *name)
{
	size_t a = strlen(dir), b = strlen(name);
	char *p = malloc(a + b + 2);
	if (!p)
		return NULL;
	memcpy(p, dir, a);
	size_t o = a;
	if (a && dir[a - 1] != '/')
		p[o++] = '/';
	memcpy(p + o, name, b + 1);
	return p;
}

static char *path_dirname(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		return strdup(".");
	if (slash == path)
		return strdup("/");
	return strndup(path, (size_t)(slash - path));
}

/* Opens shard `path` as the next shard of ck, reads and validates its header
 * and adds its tensors. Returns 0 or -errno with a message naming the file. */
static int open_shard(k2st_checkpoint *ck, const char *path, k2_err *err)
{
	int idx = ck->n_shards;
	char *owned = strdup(path);
	if (!owned)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", path);
	ck->shard_paths[idx] = owned;
	ck->fds[idx] = -1;
	ck->n_shards++;

	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return k2_err_set(err, -errno, "%s: cannot open: %s", path, strerror(errno));
	ck->fds[idx] = fd;
	struct stat st;
	if (fstat(fd, &st) < 0)
		return k2_err_set(err, -errno, "%s: cannot stat: %s", path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return k2_err_set(err, -EINVAL, "%s: not a regular file", path);
	uint64_t fbytes = (uint64_t)st.st_size;
	ck->shard_bytes[idx] = fbytes;

	uint8_t lenbuf[8];
	uint64_t hlen = 0;
	if (fbytes >= 8) {
		ssize_t r = pread(fd, lenbuf, 8, 0);
		if (r != 8)
			return k2_err_set(err, r < 0 ? -errno : -EIO, "%s: cannot read the header length",
					  path);
		hlen = load_le64(lenbuf);
	}
	int rc = check_header_len(hlen, fbytes, path, err);
	if (rc < 0)
		return rc;
	char *hdr = malloc((size_t)hlen);
	if (!hdr)
		return k2_err_set(err, -ENOMEM, "%s: out of memory for a %llu-byte header", path,
				  (unsigned long long)hlen);
	size_t got = 0;
	while (got < hlen) {
		ssize_t r = pread(fd, hdr + got, (size_t)hlen - got, (off_t)(8 + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? errno : EIO;
			free(hdr);
			return k2_err_set(err, -e, "%s: header read failed at offset %zu", path, 8 + got);
		}
		got += (size_t)r;
	}
	struct add_ctx a = {ck, idx, path, err};
	rc = parse_header(hdr, (size_t)hlen, fbytes, path, add_tensor, &a, err);
	free(hdr);
	return rc;
}

/* Builds the name table; a name in two shards is an error. */
static int index_names(k2st_checkpoint *ck, k2_err *err)
{
	/* Inserted one by one so that duplicates are detected. */
	size_t cap = 16;
	while (cap < 2 * ck->n + 2)
		cap <<= 1;
	uint32_t *slots = calloc(cap, sizeof(*slots));
	if (!slots)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", ck->dir);
	free(ck->names.slots);
	ck->names.slots = slots;
	ck->names.mask = cap - 1;
	for (size_t k = 0; k < ck->n; k++) {
		const char *name = ck->tensors[k].name;
		size_t i = hash_name(name) & ck->names.mask;
		for (; slots[i]; i = (i + 1) & ck->names.mask) {
			const k2st_tensor *o = &ck->tensors[slots[i] - 1];
			if (strcmp(o->name, name) == 0)
				return k2_err_set(err, -EINVAL, "%s: tensor %s is also in %s",
						  ck->shard_paths[ck->tensors[k].shard], name,
						  ck->shard_paths[o->shard]);
		}
		slots[i] = (uint32_t)(k + 1);
	}
	return 0;
}

/* Shard file names of an index, deduplicated, in order of first appearance. */
struct shard_list {
	const char **names;   /* point into the index JSON */
	size_t n;
	struct name_table tb;
};

/* Opens the checkpoint described by index file `index_path`. */
static int open_index(k2st_checkpoint *ck, const char *index_path, k2_err *err)
{
	char *text = NULL;
	size_t tn = 0;
	int rc = k2_read_file(index_path, &text, &tn, err);
	if (rc < 0)
		return rc;
	json_error_t jerr;
	json_t *root = json_loadb(text, tn, JSON_REJECT_DUPLICATES, &jerr);
	free(text);
	if (!root)
		return k2_err_set(err, -EINVAL, "%s: malformed JSON at line %d: %s", index_path,
				  jerr.line, jerr.text);
	struct shard_list sl = {0};
	json_t *wm = json_object_get(root, "weight_map");
	if (!json_is_object(wm)) {
		rc = k2_err_set(err, -EINVAL, "%s: \"weight_map\" missing or not an object",
				index_path);
		goto out;
	}
	size_t n_map = json_object_size(wm);
	sl.names = calloc(n_map ? n_map : 1, sizeof(*sl.names));
	if (!sl.names) {
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory", index_path);
		goto out;
	}
	const char *key;
	json_t *val;
	json_object_foreach(wm, key, val) {
		if (!json_is_string(val)) {
			rc = k2_err_set(err, -EINVAL, "%s: weight_map[%s] is not a string", index_path,
					key);
			goto out;
		}
		const char *file = json_string_value(val);
		if (!*file || strchr(file, '/') || strcmp(file, ".") == 0 || strcmp(file, "..") == 0) {
			rc = k2_err_set(err, -EINVAL,
					"%s: weight_map[%s] = \"%.200s\" is not a plain file name",
					index_path, key, file);
			goto out;
		}
		if (table_find(&sl.tb, sl.names, sizeof(*sl.names), file) >= 0)
			continue;
		if (sl.n >= ST_MAX_SHARDS) {
			rc = k2_err_set(err, -E2BIG, "%s: more than %d shards", index_path, ST_MAX_SHARDS);
			goto out;
		}
		sl.names[sl.n++] = file;
		/* Rebuild on doubling keeps insertion amortised O(1). */
		if (!sl.tb.slots || 2 * sl.n + 2 > sl.tb.mask + 1) {
			if (table_build(&sl.tb, sl.names, sizeof(*sl.names), sl.n) < 0) {
				rc = k2_err_set(err, -ENOMEM, "%s: out of memory", index_path);
				goto out;
			}
		} else {
			size_t i = hash_name(file) & sl.tb.mask;
			while (sl.tb.slots[i])
				i = (i + 1) & sl.tb.mask;
			sl.tb.slots[i] = (uint32_t)sl.n;
		}
	}
	if (sl.n == 0) {
		rc = k2_err_set(err, -EINVAL, "%s: weight_map names no shard", index_path);
		goto out;
	}
	ck->shard_paths = calloc(sl.n, sizeof(*ck->shard_paths));
	ck->fds = calloc(sl.n, sizeof(*ck->fds));
	ck->shard_bytes = calloc(sl.n, sizeof(*ck->shard_bytes));
	if (!ck->shard_paths || !ck->fds || !ck->shard_bytes) {
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory", index_path);
		goto out;
	}
	for (size_t s = 0; s < sl.n; s++) {
		char *p = path_join(ck->dir, sl.names[s]);
		if (!p) {
			rc = k2_err_set(err, -ENOMEM, "%s: out of memory", index_path);
			goto out;
		}
		struct stat st;
		if (stat(p, &st) < 0) {
			rc = k2_err_set(err, -errno, "%s: shard named in %s is missing: %s", p,
					index_path, strerror(errno));
			free(p);
			goto out;
		}
		rc = open_shard(ck, p, err);
		free(p);
		if (rc < 0)
			goto out;
	}
	rc = index_names(ck, err);
	if (rc < 0)
		goto out;
	/* Every tensor the index names must be in the shard it names. */
	json_object_foreach(wm, key, val) {
		const k2st_tensor *t = k2st_find(ck, key);
		const char *file = json_string_value(val);
		long s = table_find(&sl.tb, sl.names, sizeof(*sl.names), file);
		if (!t) {
			rc = k2_err_set(err, -EINVAL, "%s: tensor %s named by %s is absent from it",
					ck->shard_paths[s], key, index_path);
			goto out;
		}
		if (t->shard != (int)s) {
			rc = k2_err_set(err, -EINVAL,
					"%s: tensor %s named by %s is absent from it (it is in %s)",
					ck->shard_paths[s], key, index_path, ck->shard_paths[t->shard]);
			goto out;
		}
	}
	rc = 0;
out:
	free(sl.names);
	free(sl.tb.slots);
	json_decref(root);
	return rc;
}

static int open_single(k2st_checkpoint *ck, const char *file, k2_err *err)
{
	ck->shard_paths = calloc(1, sizeof(*ck->shard_paths));
	ck->fds = calloc(1, sizeof(*ck->fds));
	ck->shard_bytes = calloc(1, sizeof(*ck->shard_bytes));
	if (!ck->shard_paths || !ck->fds || !ck->shard_bytes)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", file);
	int rc = open_shard(ck, file, err);
	if (rc < 0)
		return rc;
	return index_names(ck, err);
}

static int has_suffix(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && strcmp(s + a - b, suf) == 0;
}

int k2st_open(const char *path, k2st_checkpoint **out, k2_err *err)
{
	*out = NULL;
	struct stat st;
	if (stat(path, &st) < 0)
		return k2_err_set(err, -errno, "%s: %s", path, strerror(errno));
	k2st_checkpoint *ck = calloc(1, sizeof(*ck));
	if (!ck)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", path);
	int rc;
	if (S_ISDIR(st.st_mode)) {
		ck->dir = strdup(path);
		char *idx = path_join(path, "model.safetensors.index.json");
		char *one = path_join(path, "model.safetensors");
		if (!ck->dir || !idx || !one) {
			rc = k2_err_set(err, -ENOMEM, "%s: out of memory", path);
		} else if (access(idx, F_OK) == 0) {
			rc = open_index(ck, idx, err);
		} else if (access(one, F_OK) == 0) {
			rc = open_single(ck, one, err);
		} else {
			rc = k2_err_set(err, -ENOENT,
					"%s: no model.safetensors.index.json or model.safetensors in "
					"this directory", path);
		}
		free(idx);
		free(one);
	} else {
		ck->dir = path_dirname(path);
		if (!ck->dir)
			rc = k2_err_set(err, -ENOMEM, "%s: out of memory", path);
		else if (has_suffix(path, ".json"))
			rc = open_index(ck, path, err);
		else
			rc = open_single(ck, path, err);
	}
	if (rc < 0) {
		k2st_close(ck);
		return rc;
	}
	*out = ck;
	return 0;
}
