/* util.c — errors, dtype/format/codec names, size parsing, small file helpers. */
#include "layout.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int k2_err_set(k2_err *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return code;
}

static const struct {
	const char *name;
	size_t size;
} dtype_table[K2_DTYPE_COUNT] = {
	[K2_DTYPE_BOOL] = {"BOOL", 1},  [K2_DTYPE_U8] = {"U8", 1},
	[K2_DTYPE_I8] = {"I8", 1},      [K2_DTYPE_I16] = {"I16", 2},
	[K2_DTYPE_U16] = {"U16", 2},    [K2_DTYPE_I32] = {"I32", 4},
	[K2_DTYPE_U32] = {"U32", 4},    [K2_DTYPE_I64] = {"I64", 8},
	[K2_DTYPE_U64] = {"U64", 8},    [K2_DTYPE_F16] = {"F16", 2},
	[K2_DTYPE_BF16] = {"BF16", 2},  [K2_DTYPE_F32] = {"F32", 4},
	[K2_DTYPE_F64] = {"F64", 8},    [K2_DTYPE_F8_E4M3] = {"F8_E4M3", 1},
	[K2_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
};

size_t k2_dtype_size(uint32_t dtype)
{
	return dtype < K2_DTYPE_COUNT ? dtype_table[dtype].size : 0;
}

const char *k2_dtype_name(uint32_t dtype)
{
	return dtype < K2_DTYPE_COUNT ? dtype_table[dtype].name : NULL;
}

uint32_t k2_dtype_parse(const char *name)
{
	for (uint32_t i = 1; i < K2_DTYPE_COUNT; i++)
		if (strcmp(dtype_table[i].name, name) == 0)
			return i;
	return K2_DTYPE_NONE;
}

static const char *const format_names[K2_FORMAT_COUNT] = {
	[K2_FORMAT_BF16] = "bf16",
	[K2_FORMAT_FP8_B128] = "fp8-b128",
	[K2_FORMAT_INT8] = "int8",
	[K2_FORMAT_INT4_G32] = "int4-g32",
};

const char *k2_format_name(uint32_t format)
{
	return format < K2_FORMAT_COUNT ? format_names[format] : NULL;
}

uint32_t k2_format_parse(const char *name)
{
	for (uint32_t i = 1; i < K2_FORMAT_COUNT; i++)
		if (strcmp(format_names[i], name) == 0)
			return i;
	return K2_FORMAT_NONE;
}

static const char *const codec_names[K2_CODEC_COUNT] = {"none", "zstd", "lz4"};

const char *k2_codec_name(uint32_t codec)
{
	return codec < K2_CODEC_COUNT ? codec_names[codec] : NULL;
}

uint32_t k2_codec_parse(const char *name)
{
	for (uint32_t i = 0; i < K2_CODEC_COUNT; i++)
		if (strcmp(codec_names[i], name) == 0)
			return i;
	return K2_CODEC_COUNT;
}

/* The multiplier of a size unit letter (case-insensitive), 0 for none. */
static uint64_t size_unit(char c)
{
	switch (c) {
	case 'k': case 'K': return UINT64_C(1) << 10;
	case 'm': case 'M': return UINT64_C(1) << 20;
	case 'g': case 'G': return UINT64_C(1) << 30;
	case 't': case 'T': return UINT64_C(1) << 40;
	default: return 0;
	}
}

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Integer arithmetic throughout (no strtod): the grammar is in layout.h. */
int k2_parse_size(const char *s, uint64_t *out)
{
	if (!s || !is_digit(*s))
		return -EINVAL;
	uint64_t whole = 0;
	int overflow = 0;
	const char *p = s;
	for (; is_digit(*p); p++) {
		unsigned d = (unsigned)(*p - '0');
		if (whole > (UINT64_MAX - d) / 10)
			overflow = 1;
		else
			whole = whole * 10 + d;
	}
	const char *frac = NULL, *frac_end = NULL;
	if (*p == '.') {
		frac = ++p;
		while (is_digit(*p))
			p++;
		frac_end = p;
		if (frac_end == frac)
			return -EINVAL;
	}
	uint64_t mul = size_unit(*p);
	if (mul) {
		p++;
		if (*p == 'i' || *p == 'I')
			p++;
		if (*p == 'b' || *p == 'B')
			p++;
	} else {
		mul = 1;
	}
	if (*p != '\0' || overflow)
		return -EINVAL;
	/* floor(mul × 0.d1…dn), exactly, from the last digit up:
	 * floor((mul·d + t) / 10) = (mul·d + floor(t)) / 10 for any real t ≥ 0,
	 * and every step stays below 10·mul ≤ 10 · 2^40. */
	uint64_t part = 0;
	for (const char *q = frac_end; frac && q > frac; q--)
		part = (mul * (uint64_t)(q[-1] - '0') + part) / 10;
	if (whole > (UINT64_MAX - part) / mul)
		return -EINVAL;
	*out = whole * mul + part;
	return 0;
}

/* Huge pages are 2 MiB on x86-64 and most arm64 kernels. */
#define K2_HUGE_PAGE ((size_t)2 << 20)

void *k2_alloc_large(size_t bytes)
{
	void *p = NULL;
	if (bytes == 0)
		bytes = 64;
	if (bytes < K2_HUGE_PAGE)
		return posix_memalign(&p, 64, bytes) == 0 ? p : NULL;
	bytes = (bytes + K2_HUGE_PAGE - 1) & ~(K2_HUGE_PAGE - 1);
	if (posix_memalign(&p, K2_HUGE_PAGE, bytes) != 0)
		return NULL;
#ifdef MADV_HUGEPAGE
	(void)madvise(p, bytes, MADV_HUGEPAGE);
#endif
	return p;
}

int k2_pread_exact(int fd, void *buf, size_t n, uint64_t off, const char *path,
		   k2_err *err)
{
	size_t done = 0;
	while (done < n) {
		ssize_t r = pread(fd, (char *)buf + done, n - done, (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			return k2_err_set(err, -e, "%s: read at offset %llu: %s", path,
					  (unsigned long long)(off + done), strerror(e));
		}
		if (r == 0)
			return k2_err_set(err, -EIO, "%s: file ended at offset %llu, expected %llu bytes",
					  path, (unsigned long long)(off + done),
					  (unsigned long long)(off + n));
		done += (size_t)r;
	}
	return 0;
}

int k2_read_file(const char *path, char **data, size_t *n, k2_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return k2_err_set(err, -errno, "%s: cannot open: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		int e = S_ISREG(st.st_mode) ? errno : EINVAL;
		close(fd);
		return k2_err_set(err, -e, "%s: not a readable regular file", path);
	}
	size_t size = (size_t)st.st_size, got = 0;
	char *buf = malloc(size + 1);
	if (!buf) {
		close(fd);
		return k2_err_set(err, -ENOMEM, "%s: out of memory for %zu bytes", path, size);
	}
	while (got < size) {
		ssize_t r = pread(fd, buf + got, size - got, (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? errno : EIO;
			free(buf);
			close(fd);
			return k2_err_set(err, -e, "%s: read failed at offset %zu: %s", path,
					  got, r < 0 ? strerror(e) : "unexpected end of file");
		}
		got += (size_t)r;
	}
	close(fd);
	buf[size] = '\0';
	*data = buf;
	*n = size;
	return 0;
}

const char *k2_format_bytes(uint64_t bytes, char *buf, size_t n)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double v = (double)bytes;
	int u = 0;
	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, n, "%llu B", (unsigned long long)bytes);
	else
		snprintf(buf, n, "%.2f %s", v, units[u]);
	return buf;
}

double k2_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
