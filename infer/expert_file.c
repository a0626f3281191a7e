/* expert_file.c — expert images as files of the model directory: their paths
 * (experts/LLL/EEE), opening one with a message that names it, reading and
 * checking its header against config.json and against its own path, reading
 * one whole, and the three products of a parsed image wherever it lies. The
 * one place that turns (layer, expert) into a file. */
#include "infer_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The largest file taken as an expert image. */
#define EXPERT_MAX_BYTES (8ull << 30)

int inf_path(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int w = vsnprintf(buf, n, fmt, ap);
	va_end(ap);
	if (w < 0 || (size_t)w >= n) {
		if (n)
			buf[0] = 0;
		return -ENAMETOOLONG;
	}
	return 0;
}

int inf_expert_path(char *buf, size_t n, const char *dir, uint32_t layer, uint32_t expert)
{
	return dir ? inf_path(buf, n, "%s/experts/%03" PRIu32 "/%03" PRIu32, dir, layer, expert)
		   : inf_path(buf, n, "experts/%03" PRIu32 "/%03" PRIu32, layer, expert);
}

int inf_expert_open(const char *dir, const k2_model_config *cfg, uint32_t layer,
		    uint32_t expert, char *path, size_t path_n, uint64_t *size, k2_err *err)
{
	if (inf_expert_path(path, path_n, dir, layer, expert) < 0)
		return k2_err_set(err, -ENAMETOOLONG, "%s: model directory path too long", dir);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		if (e == ENOENT)
			return k2_err_set(err, -ENOENT,
					  "%s: missing (config.json gives layer %u %u routed "
					  "experts)", path, layer, cfg->n_routed_experts);
		return k2_err_set(err, -e, "%s: %s", path, strerror(e));
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return k2_err_set(err, -e, "%s: stat: %s", path, strerror(e));
	}
	*size = (uint64_t)st.st_size;
	if (*size < K2X_HEADER_BYTES || *size > EXPERT_MAX_BYTES) {
		close(fd);
		return k2_err_set(err, -EINVAL, "%s: %" PRIu64 " bytes is not the size of an "
				  "expert image", path, *size);
	}
	return fd;
}

/* The parsed header agrees with the path and with config.json. */
static int check_layout(const k2x_layout *lay, const char *path, const k2_model_config *cfg,
			uint32_t layer, uint32_t expert, k2_err *err)
{
	if (lay->layer != layer || lay->expert != expert)
		return k2_err_set(err, -EINVAL,
				  "%s: header says layer %u expert %u, expected layer %u expert %u",
				  path, lay->layer, lay->expert, layer, expert);
	if (lay->hidden != cfg->hidden_size || lay->inter != cfg->moe_intermediate_size)
		return k2_err_set(err, -EINVAL,
				  "%s: header says hidden %u intermediate %u, config.json says "
				  "hidden_size %u moe_intermediate_size %u", path, lay->hidden,
				  lay->inter, cfg->hidden_size, cfg->moe_intermediate_size);
	return 0;
}

int inf_expert_layout(const char *dir, const k2_model_config *cfg, uint32_t layer,
		      uint32_t expert, k2x_layout *lay, uint64_t *size, k2_err *err)
{
	char path[INF_PATH_MAX];
	int fd = inf_expert_open(dir, cfg, layer, expert, path, sizeof(path), size, err);
	if (fd < 0)
		return fd;
	uint8_t *hdr = malloc(K2X_HEADER_BYTES);
	int rc = hdr ? k2_pread_exact(fd, hdr, K2X_HEADER_BYTES, 0, path, err)
		     : k2_err_set(err, -ENOMEM, "out of memory");
	close(fd);
	if (rc == 0)
		rc = k2x_header_parse(hdr, K2X_HEADER_BYTES, *size, path, lay, err);
	free(hdr);
	if (rc == 0)
		rc = check_layout(lay, path, cfg, layer, expert, err);
	return rc;
}

void inf_expert_mats(const k2x_layout *lay, const void *image, kern_mat mat[3])
{
	const uint8_t *base = image;
	for (int m = 0; m < 3; m++) {
		const k2x_section *ws = &lay->sec[2 * m], *ss = &lay->sec[2 * m + 1];
		mat[m].format = lay->format;
		mat[m].rows = m < 2 ? lay->inter : lay->hidden;
		mat[m].cols = m < 2 ? lay->hidden : lay->inter;
		mat[m].w = base + ws->offset;
		mat[m].s = ss->bytes ? base + ss->offset : NULL;
	}
}

int inf_expert_read(const char *dir, const k2_model_config *cfg, uint32_t layer,
		    uint32_t expert, void **buf, size_t *cap, inf_expert *out, k2_err *err)
{
	char path[INF_PATH_MAX];
	uint64_t size;
	int rc, fd = inf_expert_open(dir, cfg, layer, expert, path, sizeof(path), &size, err);
	if (fd < 0)
		return fd;
	if (*cap < size) {
		void *nb = k2_alloc_large(size);
		if (!nb) {
			close(fd);
			return k2_err_set(err, -ENOMEM, "%s: out of memory for %" PRIu64 " bytes",
					  path, size);
		}
		free(*buf);
		*buf = nb;
		*cap = size;
	}
	rc = k2_pread_exact(fd, *buf, size, 0, path, err);
	close(fd);
	if (rc < 0)
		return rc;
	k2x_layout lay;
	if ((rc = k2x_header_parse(*buf, size, size, path, &lay, err)) < 0 ||
	    (rc = check_layout(&lay, path, cfg, layer, expert, err)) < 0)
		return rc;
	out->layer = layer;
	out->expert = expert;
	out->lay = lay;
	inf_expert_mats(&lay, *buf, out->mat);
	return 0;
}
