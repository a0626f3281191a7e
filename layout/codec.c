/* codec.c — the block codecs of the pack (none, zstd, lz4 block format) and the
 * XXH64 checksum. zstd contexts are cached per thread (freed at thread exit), so
 * the writer's workers and k2fs's decoders never share or re-create them. Decoders
 * never read or write outside the given buffers and reject any output length
 * other than the one expected. */
#include "layout.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>

#include <lz4.h>
#include <lz4hc.h>
#include <xxhash.h>
#include <zstd.h>
#include <zstd_errors.h>

#define ZSTD_DEFAULT_LEVEL 3
#define LZ4_MAX_LEVEL LZ4HC_CLEVEL_MAX

static pthread_key_t cctx_key, dctx_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static int keys_ok;

static void free_cctx(void *p)
{
	ZSTD_freeCCtx(p);
}

static void free_dctx(void *p)
{
	ZSTD_freeDCtx(p);
}

static void make_keys(void)
{
	keys_ok = pthread_key_create(&cctx_key, free_cctx) == 0 &&
		  pthread_key_create(&dctx_key, free_dctx) == 0;
}

/* This thread's zstd compression context, or NULL when out of memory. */
static ZSTD_CCtx *thread_cctx(void)
{
	pthread_once(&key_once, make_keys);
	if (!keys_ok)
		return NULL;
	ZSTD_CCtx *c = pthread_getspecific(cctx_key);
	if (!c) {
		c = ZSTD_createCCtx();
		if (c && pthread_setspecific(cctx_key, c) != 0) {
			ZSTD_freeCCtx(c);
			c = NULL;
		}
	}
	return c;
}

static ZSTD_DCtx *thread_dctx(void)
{
	pthread_once(&key_once, make_keys);
	if (!keys_ok)
		return NULL;
	ZSTD_DCtx *d = pthread_getspecific(dctx_key);
	if (!d) {
		d = ZSTD_createDCtx();
		if (d && pthread_setspecific(dctx_key, d) != 0) {
			ZSTD_freeDCtx(d);
			d = NULL;
		}
	}
	return d;
}

size_t k2_codec_bound(uint32_t codec, size_t n)
{
	switch (codec) {
	case K2_CODEC_NONE:
		return n;
	case K2_CODEC_ZSTD:
		return ZSTD_compressBound(n);
	case K2_CODEC_LZ4:
		if (n > (size_t)LZ4_MAX_INPUT_SIZE)
			return 0;
		return (size_t)LZ4_compressBound((int)n);
	default:
		return 0;
	}
}

/* Returns the compressed size, -EINVAL (bad codec or level, or an input lz4 cannot
 * take) or -ENOSPC (cap too small). zstd accepts levels 0 (= 3) … ZSTD_maxCLevel();
 * lz4 accepts 0 … 12: below 3 the fast compressor, from 3 HC at that level. */
long k2_codec_compress(uint32_t codec, int level, const void *src, size_t n,
		       void *dst, size_t cap)
{
	if (level < 0 || (n > 0 && !src))
		return -EINVAL;
	switch (codec) {
	case K2_CODEC_NONE:
		if (cap < n)
			return -ENOSPC;
		if (n)
			memcpy(dst, src, n);
		return (long)n;
	case K2_CODEC_ZSTD: {
		if (level > ZSTD_maxCLevel())
			return -EINVAL;
		ZSTD_CCtx *c = thread_cctx();
		if (!c)
			return -ENOMEM;
		size_t r = ZSTD_compressCCtx(c, dst, cap, src, n,
					     level ? level : ZSTD_DEFAULT_LEVEL);
		if (ZSTD_isError(r))
			return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? -ENOSPC
										   : -EINVAL;
		return (long)r;
	}
	case K2_CODEC_LZ4: {
		if (level > LZ4_MAX_LEVEL || n > (size_t)LZ4_MAX_INPUT_SIZE)
			return -EINVAL;
		int icap = cap > (size_t)INT_MAX ? INT_MAX : (int)cap;
		int r;
		if (level >= 3)
			r = LZ4_compress_HC(src, dst, (int)n, icap, level);
		else
			r = LZ4_compress_default(src, dst, (int)n, icap);
		if (r <= 0 && n > 0)
			return -ENOSPC;
		return r;
	}
	default:
		return -EINVAL;
	}
}

/* Returns 0, or -EBADMSG for corrupt input or a length other than raw_n (also for
 * an unknown codec); -ENOMEM when no zstd context can be made. */
int k2_codec_decompress(uint32_t codec, const void *src, size_t n, void *dst,
			size_t raw_n)
{
	switch (codec) {
	case K2_CODEC_NONE:
		if (n != raw_n)
			return -EBADMSG;
		if (n)
			memcpy(dst, src, n);
		return 0;
	case K2_CODEC_ZSTD: {
		if (n == 0)
			return -EBADMSG;
		ZSTD_DCtx *d = thread_dctx();
		if (!d)
			return -ENOMEM;
		size_t r = ZSTD_decompressDCtx(d, dst, raw_n, src, n);
		if (ZSTD_isError(r) || r != raw_n)
			return -EBADMSG;
		return 0;
	}
	case K2_CODEC_LZ4: {
		if (n == 0 || n > (size_t)INT_MAX || raw_n > (size_t)INT_MAX)
			return -EBADMSG;
		int r = LZ4_decompress_safe(src, dst, (int)n, (int)raw_n);
		if (r < 0 || (size_t)r != raw_n)
			return -EBADMSG;
		return 0;
	}
	default:
		return -EBADMSG;
	}
}

uint64_t k2_checksum(const void *data, size_t n)
{
	return (uint64_t)XXH64(data, n, 0);
}
