/* safetensors_writer.c — writes one safetensors file: tensors are declared
 * first, then the header is written (with "__metadata__": {"format": "pt"},
 * padded with spaces to a multiple of 8 as the Python library does), then the
 * payloads are appended in declaration order as one byte stream. Writes go to
 * the final path; callers that need atomicity write a temporary name and
 * rename it. */
#include "layout.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct k2st_writer {
	char *path;
	int fd;
	json_t *header;     /* tensors in declaration order; NULL after begin_data */
	uint64_t data_bytes;/* sum of declared payloads */
	uint64_t written;   /* payload bytes appended */
	int began;
	int failed;         /* a write failed: close reports it */
};

int k2st_writer_create(const char *path, k2st_writer **out, k2_err *err)
{
	*out = NULL;
	k2st_writer *w = calloc(1, sizeof(*w));
	if (!w)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", path);
	w->fd = -1;
	w->path = strdup(path);
	w->header = json_object();
	json_t *meta = json_pack("{s:s}", "format", "pt");
	if (!w->path || !w->header || !meta || json_object_set_new(w->header, "__metadata__", meta)) {
		free(w->path);
		json_decref(w->header);
		free(w);
		return k2_err_set(err, -ENOMEM, "%s: out of memory", path);
	}
	w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (w->fd < 0) {
		int e = errno;
		free(w->path);
		json_decref(w->header);
		free(w);
		return k2_err_set(err, -e, "%s: cannot create: %s", path, strerror(e));
	}
	*out = w;
	return 0;
}

int k2st_writer_declare(k2st_writer *w, const char *name, uint32_t dtype, uint32_t ndim,
			const uint64_t *shape, k2_err *err)
{
	if (w->began)
		return k2_err_set(err, -EINVAL, "%s: tensor %s declared after the header was written",
				  w->path, name);
	size_t len = strlen(name);
	if (len == 0 || len > K2P_MAX_NAME || strcmp(name, "__metadata__") == 0)
		return k2_err_set(err, -EINVAL, "%s: tensor name \"%.64s\" is not allowed", w->path,
				  name);
	if (json_object_get(w->header, name))
		return k2_err_set(err, -EEXIST, "%s: tensor %s declared twice", w->path, name);
	if (k2_dtype_size(dtype) == 0)
		return k2_err_set(err, -EINVAL, "%s: tensor %s: unknown dtype %u", w->path, name,
				  dtype);
	if (ndim > K2P_MAX_DIMS)
		return k2_err_set(err, -EINVAL, "%s: tensor %s: %u dimensions (at most %d)", w->path,
				  name, ndim, K2P_MAX_DIMS);
	uint64_t bytes = k2_dtype_size(dtype), end;
	json_t *jshape = json_array();
	if (!jshape)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", w->path);
	for (uint32_t i = 0; i < ndim; i++) {
		if (shape[i] > (1ull << 40) || __builtin_mul_overflow(bytes, shape[i], &bytes)) {
			json_decref(jshape);
			return k2_err_set(err, -EOVERFLOW, "%s: tensor %s: shape too large", w->path,
					  name);
		}
		json_array_append_new(jshape, json_integer((json_int_t)shape[i]));
	}
	if (__builtin_add_overflow(w->data_bytes, bytes, &end) || end > (uint64_t)INT64_MAX) {
		json_decref(jshape);
		return k2_err_set(err, -EOVERFLOW, "%s: tensor %s: file too large", w->path, name);
	}
	json_t *t = json_pack("{s:s, s:o, s:[I,I]}", "dtype", k2_dtype_name(dtype), "shape",
			      jshape, "data_offsets", (json_int_t)w->data_bytes, (json_int_t)end);
	if (!t || json_object_set_new(w->header, name, t))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", w->path);
	w->data_bytes = end;
	return 0;
}

/* Writes all of buf at the current position. Returns 0 or -errno. */
static int write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t r = write(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EIO;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

int k2st_writer_begin_data(k2st_writer *w, k2_err *err)
{
	if (w->began)
		return k2_err_set(err, -EINVAL, "%s: header written twice", w->path);
	w->began = 1;
	char *js = json_dumps(w->header, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (!js) {
		w->failed = 1;
		return k2_err_set(err, -ENOMEM, "%s: out of memory for the header", w->path);
	}
	size_t len = strlen(js), padded = (len + 7) & ~(size_t)7;
	char *buf = malloc(8 + padded);
	if (!buf) {
		free(js);
		w->failed = 1;
		return k2_err_set(err, -ENOMEM, "%s: out of memory for the header", w->path);
	}
	for (int i = 0; i < 8; i++)
		buf[i] = (char)(((uint64_t)padded >> (8 * i)) & 0xff);
	memcpy(buf + 8, js, len);
	memset(buf + 8 + len, ' ', padded - len);
	free(js);
	int rc = write_all(w->fd, buf, 8 + padded);
	free(buf);
	json_decref(w->header);
	w->header = NULL;
	if (rc < 0) {
		w->failed = 1;
		return k2_err_set(err, rc, "%s: writing the header failed: %s", w->path,
				  strerror(-rc));
	}
	return 0;
}

int k2st_writer_append(k2st_writer *w, const void *data, size_t n, k2_err *err)
{
	if (!w->began)
		return k2_err_set(err, -EINVAL, "%s: payload appended before the header", w->path);
	if (n > w->data_bytes - w->written) {
		w->failed = 1;
		return k2_err_set(err, -EINVAL,
				  "%s: %zu more payload bytes at data offset %llu, past the %llu "
				  "declared", w->path, n, (unsigned long long)w->written,
				  (unsigned long long)w->data_bytes);
	}
	int rc = write_all(w->fd, data, n);
	if (rc < 0) {
		w->failed = 1;
		return k2_err_set(err, rc, "%s: write at data offset %llu failed: %s", w->path,
				  (unsigned long long)w->written, strerror(-rc));
	}
	w->written += n;
	return 0;
}

int k2st_writer_close(k2st_writer *w, k2_err *err)
{
	if (!w)
		return 0;
	int rc = 0;
	if (!w->began)
		rc = k2_err_set(err, -EINVAL, "%s: closed before the header was written", w->path);
	else if (w->failed)
		rc = k2_err_set(err, -EIO, "%s: an earlier write failed", w->path);
	else if (w->written != w->data_bytes)
		rc = k2_err_set(err, -EINVAL, "%s: %llu of %llu declared payload bytes written",
				w->path, (unsigned long long)w->written,
				(unsigned long long)w->data_bytes);
	if (close(w->fd) < 0 && rc == 0)
		rc = k2_err_set(err, -errno, "%s: close failed: %s", w->path, strerror(errno));
	json_decref(w->header);
	free(w->path);
	free(w);
	return rc;
}
