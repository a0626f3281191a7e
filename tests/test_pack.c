/* test_pack.c — Check suite for layout/'s codecs and the pack writer and reader:
 * round trips for every codec across block boundaries, raw fallback, ranged reads,
 * entries streamed with add_dense_from (identical to add_dense's pack; a failed
 * read), and rejection of truncated, damaged and crafted packs with the right
 * message. */
#include "layout.h"
#include "pack_impl.h"

#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dirent.h>

#include "test_util.h"

#define BB 4096u  /* block size of the test packs: small, so entries span blocks */

/* ---------------------------------------------------------------- helpers */

static uint64_t rng_state = 88172645463325252ull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static uint8_t *random_bytes(size_t n)
{
	uint8_t *p = malloc(n ? n : 1);
	ck_assert_ptr_nonnull(p);
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(rng() >> 24);
	return p;
}

/* Text-like data that every codec shrinks a lot. */
static uint8_t *compressible_bytes(size_t n)
{
	static const char words[] = "expert gate up down scale weight block layer hidden ";
	uint8_t *p = malloc(n ? n : 1);
	ck_assert_ptr_nonnull(p);
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(words[(i + i / 997) % (sizeof(words) - 1)]);
	return p;
}

static uint8_t *make_image(uint32_t format, uint32_t hidden, uint32_t inter, uint32_t layer,
			   uint32_t expert, int compressible, size_t *n)
{
	k2x_layout lay;
	ck_assert_int_eq(k2x_layout_compute(format, hidden, inter, layer, expert, &lay), 0);
	uint8_t *img = compressible ? compressible_bytes(lay.image_bytes)
				    : random_bytes(lay.image_bytes);
	k2x_header_write(&lay, img);
	*n = lay.image_bytes;
	return img;
}

/* The standard test pack: what went in, to compare with what comes out. */
struct content {
	const char *path;
	uint8_t *data;
	size_t n;
};

#define N_STD 9
static struct content std_pack[N_STD];

static void std_pack_write(const char *path, uint32_t codec, int level, int threads)
{
	k2p_writer_opts o = {.codec = codec, .dense_codec = codec, .level = level,
			     .block_bytes = BB, .threads = threads};
	k2p_writer *w;
	k2_err err;
	ck_assert_msg(k2p_writer_create(path, &o, &w, &err) == 0, "%s", err.msg);
	static const char cfg[] = "{\"model_type\": \"kimi_k2\", \"hidden_size\": 64}";
	std_pack[0] = (struct content){"config.json", (uint8_t *)strdup(cfg), strlen(cfg)};
	ck_assert_int_eq(k2p_writer_add_file(w, "config.json", cfg, strlen(cfg), &err), 0);

	/* Dense tensors smaller than, equal to and larger than a block, and empty. */
	struct { const char *name; size_t n; int comp; } dense[] = {
		{"small.weight", 1000, 1}, {"exact.weight", BB, 0},
		{"large.weight", 3 * BB + 18, 1}, {"random.weight", 5 * BB + 2, 0},
		{"empty.bias", 0, 0},
	};
	for (int i = 0; i < 5; i++) {
		uint8_t *d = dense[i].comp ? compressible_bytes(dense[i].n) : random_bytes(dense[i].n);
		uint64_t shape[2] = {dense[i].n / 2, 1};
		char *p = malloc(64);
		snprintf(p, 64, "dense/%s", dense[i].name);
		std_pack[1 + i] = (struct content){p, d, dense[i].n};
		ck_assert_msg(k2p_writer_add_dense(w, dense[i].name, K2_DTYPE_BF16, 2, shape, d,
						   dense[i].n, &err) == 0, "%s", err.msg);
	}
	static const struct { uint32_t fmt, h, i, l, e; int comp; } ex[] = {
		{K2_FORMAT_INT4_G32, 64, 32, 1, 2, 0},
		{K2_FORMAT_BF16, 48, 40, 1, 3, 1},
		{K2_FORMAT_FP8_B128, 200, 130, 2, 0, 1},
	};
	for (int i = 0; i < 3; i++) {
		size_t n;
		uint8_t *img = make_image(ex[i].fmt, ex[i].h, ex[i].i, ex[i].l, ex[i].e, ex[i].comp, &n);
		char *p = malloc(64);
		snprintf(p, 64, "experts/%03u/%03u", ex[i].l, ex[i].e);
		std_pack[6 + i] = (struct content){p, img, n};
		ck_assert_msg(k2p_writer_add_expert(w, img, n, &err) == 0, "%s", err.msg);
	}
	ck_assert_msg(k2p_writer_finish(w, &err) == 0, "%s", err.msg);
}

static void std_pack_free(void)
{
	for (int i = 0; i < N_STD; i++) {
		if (i > 0)
			free((char *)std_pack[i].path);
		free(std_pack[i].data);
	}
	memset(std_pack, 0, sizeof(std_pack));
}

/* Checked fixture of the test cases that write packs: each test gets a fresh
 * tu_tmpdir, and std_pack is freed after it. */
static void pack_teardown(void)
{
	std_pack_free();
	tu_tmpdir_teardown();
}

static void open_fails(const char *path, const char *needle)
{
	k2p_pack *p = (k2p_pack *)1;
	k2_err err = {{0}};
	int rc = k2p_pack_open(path, &p, &err);
	ck_assert_int_lt(rc, 0);
	ck_assert_ptr_null(p);
	ck_assert_msg(strstr(err.msg, needle) != NULL, "message \"%s\" lacks \"%s\"", err.msg,
		      needle);
	ck_assert_msg(strstr(err.msg, path) != NULL, "message \"%s\" lacks the path", err.msg);
}

static void check_entry_content(k2p_pack *p, const struct content *c)
{
	const k2p_entry *e = k2p_entry_find(p, c->path);
	ck_assert_msg(e != NULL, "%s missing", c->path);
	ck_assert_str_eq(e->path, c->path);
	ck_assert_uint_eq(e->raw_bytes, c->n);
	uint8_t *buf = malloc(c->n + 16);
	k2_err err;
	long r = k2p_entry_read(p, e, 0, buf, c->n + 16, &err);
	ck_assert_msg(r == (long)c->n, "%s: read %ld: %s", c->path, r, err.msg);
	ck_assert_msg(memcmp(buf, c->data, c->n) == 0, "%s differs", c->path);
	free(buf);
}

/* ---------------------------------------------------------------- codecs */

static const struct { uint32_t codec; int level; } codec_cases[] = {
	{K2_CODEC_NONE, 0}, {K2_CODEC_ZSTD, 0}, {K2_CODEC_ZSTD, 1}, {K2_CODEC_ZSTD, 19},
	{K2_CODEC_LZ4, 0}, {K2_CODEC_LZ4, 9},
};
#define N_CODEC_CASES (int)(sizeof(codec_cases) / sizeof(codec_cases[0]))

START_TEST(codec_round_trip)
{
	uint32_t codec = codec_cases[_i].codec;
	int level = codec_cases[_i].level;
	static const size_t sizes[] = {1, 7, 4096, 65536 + 13, 1 << 20};
	for (int comp = 0; comp < 2; comp++)
		for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
			size_t n = sizes[s];
			uint8_t *src = comp ? compressible_bytes(n) : random_bytes(n);
			size_t cap = k2_codec_bound(codec, n);
			ck_assert_uint_ge(cap, n);
			uint8_t *dst = malloc(cap), *back = malloc(n + 1);
			long c = k2_codec_compress(codec, level, src, n, dst, cap);
			ck_assert_msg(c > 0, "%s level %d size %zu: %ld", k2_codec_name(codec), level,
				      n, c);
			if (comp && n >= 4096 && codec != K2_CODEC_NONE)
				ck_assert_msg((size_t)c < n / 4, "%s compressed %zu to %ld",
					      k2_codec_name(codec), n, c);
			memset(back, 0xa5, n + 1);
			ck_assert_int_eq(k2_codec_decompress(codec, dst, (size_t)c, back, n), 0);
			ck_assert_int_eq(memcmp(src, back, n), 0);
			ck_assert_uint_eq(back[n], 0xa5);  /* nothing written past the end */
			/* Wrong expected lengths are rejected. */
			ck_assert_int_eq(k2_codec_decompress(codec, dst, (size_t)c, back, n - 1),
					 -EBADMSG);
			ck_assert_int_eq(k2_codec_decompress(codec, dst, (size_t)c, back, n + 1),
					 -EBADMSG);
			/* Truncated input is rejected. */
			if (c > 1)
				ck_assert_int_eq(k2_codec_decompress(codec, dst, (size_t)c - 1, back,
								     n), -EBADMSG);
			free(src);
			free(dst);
			free(back);
		}
}
END_TEST

START_TEST(codec_errors)
{
	uint8_t src[8192], dst[16], big[16384];
	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (uint8_t)rng();
	ck_assert_int_eq(k2_codec_compress(K2_CODEC_COUNT, 0, src, sizeof(src), big, sizeof(big)),
			 -EINVAL);
	ck_assert_int_eq(k2_codec_compress(K2_CODEC_ZSTD, 99, src, sizeof(src), big, sizeof(big)),
			 -EINVAL);
	ck_assert_int_eq(k2_codec_compress(K2_CODEC_ZSTD, -1, src, sizeof(src), big, sizeof(big)),
			 -EINVAL);
	ck_assert_int_eq(k2_codec_compress(K2_CODEC_ZSTD, 0, src, sizeof(src), dst, sizeof(dst)),
			 -ENOSPC);
	ck_assert_int_eq(k2_codec_compress(K2_CODEC_LZ4, 0, src, sizeof(src), dst, sizeof(dst)),
			 -ENOSPC);
	ck_assert_int_eq(k2_codec_compress(K2_CODEC_NONE, 0, src, sizeof(src), dst, sizeof(dst)),
			 -ENOSPC);
	ck_assert_int_eq(k2_codec_decompress(K2_CODEC_COUNT, src, 10, big, 10), -EBADMSG);
	/* Garbage never decodes to the asked length by accident, and never overruns. */
	for (int codec = K2_CODEC_ZSTD; codec <= K2_CODEC_LZ4; codec++)
		for (int t = 0; t < 200; t++) {
			size_t n = 1 + rng() % 64;
			for (size_t i = 0; i < n; i++)
				src[i] = (uint8_t)rng();
			int rc = k2_codec_decompress((uint32_t)codec, src, n, big, 4096);
			ck_assert_int_eq(rc, -EBADMSG);
		}
	/* A flipped byte inside a zstd frame is caught by zstd or by the length. */
	ck_assert_uint_eq(k2_checksum("", 0), 0xef46db3751d8e999ull);  /* XXH64("") seed 0 */
}
END_TEST

/* ---------------------------------------------------------------- pack round trips */

START_TEST(pack_round_trip)
{
	uint32_t codec = codec_cases[_i].codec;
	int level = codec_cases[_i].level;
	const char *path = tu_tmp_path("rt.k2");
	std_pack_write(path, codec, level, 1 + _i % 3);
	k2p_pack *p = tu_pack_open(path);
	ck_assert_uint_eq(k2p_entry_count(p), N_STD);
	ck_assert_uint_eq(k2p_pack_block_bytes(p), BB);
	for (int i = 0; i < N_STD; i++) {
		const k2p_entry *e = k2p_entry_at(p, (size_t)i);
		ck_assert_str_eq(e->path, std_pack[i].path);  /* index order = add order */
		check_entry_content(p, &std_pack[i]);
		ck_assert_uint_eq(e->extent_offset % 4096, 0);
		ck_assert_uint_eq(e->n_blocks, (std_pack[i].n + BB - 1) / BB);
		uint64_t sum = 0;
		for (uint32_t k = 0; k < e->n_blocks; k++) {
			const k2p_block *b = k2p_entry_block(p, e, k);
			ck_assert_uint_eq(b->offset, e->extent_offset + sum);
			sum += b->stored_bytes;
			ck_assert_uint_le(b->stored_bytes, b->raw_bytes);
			if (codec == K2_CODEC_NONE)
				ck_assert_uint_eq(b->codec, K2_CODEC_NONE);
		}
		ck_assert_uint_eq(sum, e->extent_bytes);
		ck_assert_ptr_null(k2p_entry_block(p, e, e->n_blocks));
	}
	const k2p_entry *e = k2p_entry_find(p, "dense/large.weight");
	ck_assert_uint_eq(e->kind, K2P_KIND_DENSE);
	ck_assert_str_eq(e->name, "large.weight");
	ck_assert_uint_eq(e->dtype, K2_DTYPE_BF16);
	ck_assert_uint_eq(e->ndim, 2);
	ck_assert_uint_eq(e->shape[0], (3 * BB + 18) / 2);
	ck_assert_uint_eq(e->n_blocks, 4);
	ck_assert_uint_eq(k2p_entry_block(p, e, 3)->raw_bytes, 18);
	e = k2p_expert_find(p, 2, 0);
	ck_assert_ptr_nonnull(e);
	ck_assert_str_eq(e->path, "experts/002/000");
	ck_assert_uint_eq(e->format, K2_FORMAT_FP8_B128);
	ck_assert_uint_eq(e->shape[0], 200);
	ck_assert_uint_eq(e->shape[1], 130);
	ck_assert_ptr_null(k2p_expert_find(p, 2, 1));
	ck_assert_ptr_null(k2p_expert_find(p, 0, 2));
	ck_assert_ptr_null(k2p_entry_find(p, "dense/nope"));
	ck_assert_ptr_null(k2p_entry_find(p, "experts/1/2"));
	ck_assert_ptr_nonnull(k2p_entry_find(p, "experts/001/002"));
	uint32_t first = 99;
	ck_assert_uint_eq(k2p_expert_layers(p, &first), 2);
	ck_assert_uint_eq(first, 1);
	e = k2p_entry_find(p, "dense/empty.bias");
	ck_assert_uint_eq(e->n_blocks, 0);
	ck_assert_uint_eq(e->extent_bytes, 0);
	if (codec != K2_CODEC_NONE) {
		/* Compressible entries shrink and use the codec ... */
		e = k2p_entry_find(p, "dense/large.weight");
		ck_assert_uint_eq(k2p_entry_block(p, e, 0)->codec, codec);
		ck_assert_uint_lt(e->extent_bytes, e->raw_bytes / 4);
		/* ... random ones fall back to raw blocks. */
		e = k2p_entry_find(p, "dense/random.weight");
		for (uint32_t k = 0; k < e->n_blocks; k++) {
			ck_assert_uint_eq(k2p_entry_block(p, e, k)->codec, K2_CODEC_NONE);
			ck_assert_uint_eq(k2p_entry_block(p, e, k)->stored_bytes,
					  k2p_entry_block(p, e, k)->raw_bytes);
		}
		ck_assert_uint_eq(e->extent_bytes, e->raw_bytes);
	}
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq((uint64_t)st.st_size, k2p_pack_file_bytes(p));
	k2p_pack_close(p);
	/* No temporary file is left next to the pack. */
	DIR *d = opendir(tu_tmpdir);
	struct dirent *de;
	int files = 0;
	while ((de = readdir(d)))
		files += de->d_name[0] != '.';
	closedir(d);
	ck_assert_int_eq(files, 1);
}
END_TEST

START_TEST(pack_read_ranges)
{
	const char *path = tu_tmp_path("ranges.k2");
	std_pack_write(path, K2_CODEC_ZSTD, 0, 2);
	k2p_pack *p = tu_pack_open(path);
	k2_err err;
	uint8_t *buf = malloc(8 * BB);
	for (int i = 0; i < N_STD; i++) {
		const struct content *c = &std_pack[i];
		const k2p_entry *e = k2p_entry_find(p, c->path);
		for (int t = 0; t < 200; t++) {
			uint64_t off = c->n ? rng() % (c->n + 2) : rng() % 3;
			size_t len = (size_t)(rng() % (3 * BB));
			/* Ranges on block boundaries too. */
			if (t % 5 == 0 && c->n)
				off = (rng() % (c->n / BB + 1)) * BB;
			long r = k2p_entry_read(p, e, off, buf, len, &err);
			size_t want = off >= c->n ? 0 : (len < c->n - off ? len : c->n - off);
			ck_assert_msg(r == (long)want, "%s [%" PRIu64 ", +%zu): %ld, want %zu",
				      c->path, off, len, r, want);
			if (want)
				ck_assert_int_eq(memcmp(buf, c->data + off, want), 0);
		}
	}
	free(buf);
	k2p_pack_close(p);
}
END_TEST

START_TEST(pack_large_entry_many_threads)
{
	/* An entry above the writer's copy threshold is borrowed; check it and its
	 * neighbours anyway, with 256 KiB blocks and 4 threads. */
	const char *path = tu_tmp_path("big.k2");
	size_t n = (100u << 20) + 12345;
	uint8_t *d = compressible_bytes(n);
	for (size_t i = 0; i < n; i += 4096 * 7)
		d[i] = (uint8_t)rng();
	k2p_writer_opts o = {.codec = K2_CODEC_LZ4, .dense_codec = K2_CODEC_LZ4, .threads = 4};
	k2p_writer *w;
	k2_err err;
	ck_assert_int_eq(k2p_writer_create(path, &o, &w, &err), 0);
	uint64_t shape[1] = {n};
	ck_assert_int_eq(k2p_writer_add_file(w, "a.txt", d, 100, &err), 0);
	ck_assert_int_eq(k2p_writer_add_dense(w, "big", K2_DTYPE_U8, 1, shape, d, n, &err), 0);
	ck_assert_int_eq(k2p_writer_add_file(w, "b.txt", d + 1, 100, &err), 0);
	uint64_t raw, stored;
	k2p_writer_totals(w, &raw, &stored);
	ck_assert_uint_eq(raw, n + 200);
	ck_assert_int_eq(k2p_writer_finish(w, &err), 0);
	k2p_pack *p = tu_pack_open(path);
	ck_assert_uint_eq(k2p_pack_block_bytes(p), 256u << 10);
	struct content c[3] = {{"a.txt", d, 100}, {"dense/big", d, n}, {"b.txt", d + 1, 100}};
	for (int i = 0; i < 3; i++)
		check_entry_content(p, &c[i]);
	k2p_pack_close(p);
	free(d);
}
END_TEST

/* ---------------------------------------------------------------- streamed entries */

#define STREAM_PART (32u << 20)  /* the writer's part size for blocks up to 32 MiB */

/* Serves src to k2p_writer_add_dense_from, checking it asks in order, in parts of
 * `part` bytes; fails with -EIO on call number fail_call (1-based; 0 = never). */
struct stream_src {
	const uint8_t *d;
	uint64_t n, part, next;
	int calls, fail_call;
};

static int stream_read(void *ctx, uint64_t off, void *buf, size_t len, k2_err *err)
{
	struct stream_src *s = ctx;
	s->calls++;
	ck_assert_uint_eq(off, s->next);
	ck_assert_uint_eq(len, s->n - off < s->part ? s->n - off : s->part);
	if (s->calls == s->fail_call)
		return k2_err_set(err, -EIO, "stream source: disk on fire at %" PRIu64, off);
	memcpy(buf, s->d + off, len);
	s->next = off + len;
	return 0;
}

static size_t count_dir_entries(const char *dir)
{
	DIR *d = opendir(dir);
	ck_assert_ptr_nonnull(d);
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
	closedir(d);
	return n;
}

/* Streamed entry sizes: smaller than a part, a part exactly, one byte more, and
 * three parts with a ragged tail (none a multiple of the block size but one). */
static const uint64_t stream_sizes[] = {
	1000, STREAM_PART, STREAM_PART + 1, 2ull * STREAM_PART + 12345,
};
#define N_STREAM (sizeof(stream_sizes) / sizeof(stream_sizes[0]))

static const struct {
	uint32_t codec, block_bytes;
} stream_cases[] = {
	{K2_CODEC_ZSTD, 64u << 10},
	{K2_CODEC_LZ4, BB},
	{K2_CODEC_LZ4, 64u << 20},  /* a block larger than a part: one block per part */
};

/* Writes a file, the streamed (or whole) tensors, and a file, into path. */
static void stream_pack_write(const char *path, int c, uint8_t *const *d, int streamed,
			      int *calls)
{
	k2p_writer_opts o = {.codec = stream_cases[c].codec,
			     .dense_codec = stream_cases[c].codec,
			     .block_bytes = stream_cases[c].block_bytes, .threads = 2};
	uint64_t part = o.block_bytes > STREAM_PART ? o.block_bytes : STREAM_PART;
	k2p_writer *w;
	k2_err err;
	ck_assert_msg(k2p_writer_create(path, &o, &w, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(k2p_writer_add_file(w, "a.txt", d[0], 77, &err), 0);
	for (size_t i = 0; i < N_STREAM; i++) {
		char name[32];
		snprintf(name, sizeof(name), "t%zu", i);
		/* [n/4, 2] bf16 when n is a multiple of 4, else [n, 1] u8 */
		int bf = stream_sizes[i] % 4 == 0;
		uint32_t dt = bf ? K2_DTYPE_BF16 : K2_DTYPE_U8;
		uint64_t shape[2] = {bf ? stream_sizes[i] / 4 : stream_sizes[i], bf ? 2 : 1};
		if (streamed) {
			struct stream_src src = {.d = d[i], .n = stream_sizes[i], .part = part};
			ck_assert_msg(k2p_writer_add_dense_from(w, name, dt, 2, shape,
								stream_sizes[i], stream_read, &src,
								&err) == 0, "%s", err.msg);
			ck_assert_uint_eq(src.next, stream_sizes[i]);
			calls[i] = src.calls;
		} else {
			ck_assert_msg(k2p_writer_add_dense(w, name, dt, 2, shape, d[i],
							   stream_sizes[i], &err) == 0, "%s", err.msg);
		}
	}
	ck_assert_int_eq(k2p_writer_add_file(w, "b.txt", d[1] + 5, 300, &err), 0);
	uint64_t raw;
	k2p_writer_totals(w, &raw, NULL);
	uint64_t want = 377;
	for (size_t i = 0; i < N_STREAM; i++)
		want += stream_sizes[i];
	ck_assert_uint_eq(raw, want);
	ck_assert_msg(k2p_writer_finish(w, &err) == 0, "%s", err.msg);
}

START_TEST(stream_matches_add_dense)
{
	setenv("SOURCE_DATE_EPOCH", "1700000000", 1);  /* same header time in both packs */
	uint8_t *d[N_STREAM];
	for (size_t i = 0; i < N_STREAM; i++) {
		d[i] = compressible_bytes(stream_sizes[i]);
		for (uint64_t k = i; k < stream_sizes[i]; k += 3001)  /* some raw blocks */
			d[i][k] = (uint8_t)rng();
		if (stream_sizes[i] > (1u << 20))
			for (uint64_t k = 0; k < (1u << 20); k++)
				d[i][stream_sizes[i] / 2 + k] = (uint8_t)(rng() >> 24);
	}
	const char *ps = tu_tmp_path("streamed.k2"), *pw = tu_tmp_path("whole.k2");
	int calls[N_STREAM];
	stream_pack_write(ps, _i, d, 1, calls);
	stream_pack_write(pw, _i, d, 0, NULL);
	unsetenv("SOURCE_DATE_EPOCH");
	uint64_t part = stream_cases[_i].block_bytes > STREAM_PART ?
				stream_cases[_i].block_bytes : STREAM_PART;
	for (size_t i = 0; i < N_STREAM; i++)
		ck_assert_int_eq(calls[i], (int)((stream_sizes[i] + part - 1) / part));
	ck_assert_int_eq(calls[N_STREAM - 1], part == STREAM_PART ? 3 : 2);

	tu_assert_same_file(ps, pw, "streamed pack differs from add_dense's");

	k2p_pack *p = tu_pack_open(ps);
	struct content c0 = {"a.txt", d[0], 77}, c1 = {"b.txt", d[1] + 5, 300};
	check_entry_content(p, &c0);
	check_entry_content(p, &c1);
	for (size_t i = 0; i < N_STREAM; i++) {
		char name[32];
		snprintf(name, sizeof(name), "dense/t%zu", i);
		struct content c = {name, d[i], stream_sizes[i]};
		check_entry_content(p, &c);
	}
	k2p_pack_close(p);
	for (size_t i = 0; i < N_STREAM; i++)
		free(d[i]);
}
END_TEST

START_TEST(stream_read_fails)
{
	size_t n = 2 * STREAM_PART + 999;
	uint8_t *d = compressible_bytes(n);
	uint64_t shape[1] = {n};
	k2p_writer_opts o = {.codec = K2_CODEC_LZ4, .dense_codec = K2_CODEC_LZ4,
			     .block_bytes = 64u << 10, .threads = 2};
	k2p_writer *w;
	k2_err err;

	/* Bad arguments are refused before any read. */
	const char *path = tu_tmp_path("args.k2");
	ck_assert_int_eq(k2p_writer_create(path, &o, &w, &err), 0);
	struct stream_src src = {.d = d, .n = n, .part = STREAM_PART};
	ck_assert_int_eq(k2p_writer_add_dense_from(w, "t", K2_DTYPE_BF16, 1, shape, n,
						   stream_read, &src, &err), -EINVAL);
	ck_assert_int_eq(k2p_writer_add_dense_from(w, "t", K2_DTYPE_U8, 1, shape, n, NULL,
						   &src, &err), -EINVAL);
	ck_assert_int_eq(src.calls, 0);
	/* A duplicate name is refused (after its first part was read). */
	ck_assert_int_eq(k2p_writer_add_file(w, "x.txt", d, 10, &err), 0);
	uint64_t one[1] = {10};
	ck_assert_int_eq(k2p_writer_add_dense(w, "dup", K2_DTYPE_U8, 1, one, d, 10, &err), 0);
	src = (struct stream_src){.d = d, .n = 10, .part = STREAM_PART};
	ck_assert_int_eq(k2p_writer_add_dense_from(w, "dup", K2_DTYPE_U8, 1, one, 10,
						   stream_read, &src, &err), -EEXIST);
	ck_assert_int_eq(k2p_writer_finish(w, &err), 0);
	k2p_pack *p = tu_pack_open(path);
	ck_assert_uint_eq(k2p_entry_count(p), 2);
	k2p_pack_close(p);

	/* The first read fails: nothing was registered, the writer goes on. */
	path = tu_tmp_path("first.k2");
	ck_assert_int_eq(k2p_writer_create(path, &o, &w, &err), 0);
	ck_assert_int_eq(k2p_writer_add_file(w, "x.txt", d, 10, &err), 0);
	src = (struct stream_src){.d = d, .n = n, .part = STREAM_PART, .fail_call = 1};
	ck_assert_int_eq(k2p_writer_add_dense_from(w, "t", K2_DTYPE_U8, 1, shape, n,
						   stream_read, &src, &err), -EIO);
	ck_assert_msg(strstr(err.msg, "disk on fire at 0"), "%s", err.msg);
	ck_assert_int_eq(k2p_writer_add_file(w, "y.txt", d, 20, &err), 0);
	ck_assert_int_eq(k2p_writer_finish(w, &err), 0);
	p = tu_pack_open(path);
	ck_assert_uint_eq(k2p_entry_count(p), 2);
	ck_assert_ptr_null(k2p_entry_find(p, "dense/t"));
	struct content cy = {"y.txt", d, 20};
	check_entry_content(p, &cy);
	k2p_pack_close(p);
	ck_assert_uint_eq(count_dir_entries(tu_tmpdir), 2);

	/* A later read fails: the writer is failed; finish reports it, leaves no file. */
	path = tu_tmp_path("later.k2");
	ck_assert_int_eq(k2p_writer_create(path, &o, &w, &err), 0);
	src = (struct stream_src){.d = d, .n = n, .part = STREAM_PART, .fail_call = 3};
	ck_assert_int_eq(k2p_writer_add_dense_from(w, "t", K2_DTYPE_U8, 1, shape, n,
						   stream_read, &src, &err), -EIO);
	ck_assert_int_eq(src.calls, 3);
	ck_assert_msg(strstr(err.msg, "disk on fire at 67108864"), "%s", err.msg);
	ck_assert_int_eq(k2p_writer_add_file(w, "y.txt", d, 20, &err), -EIO);
	ck_assert_int_eq(k2p_writer_finish(w, &err), -EIO);
	ck_assert_msg(strstr(err.msg, "disk on fire"), "%s", err.msg);
	ck_assert_int_eq(access(path, F_OK), -1);
	ck_assert_uint_eq(count_dir_entries(tu_tmpdir), 2);

	/* Same, then abort: no file, no temp file. */
	path = tu_tmp_path("aborted.k2");
	ck_assert_int_eq(k2p_writer_create(path, &o, &w, &err), 0);
	ck_assert_int_eq(k2p_writer_add_file(w, "x.txt", d, 10, &err), 0);
	src = (struct stream_src){.d = d, .n = n, .part = STREAM_PART, .fail_call = 2};
	ck_assert_int_eq(k2p_writer_add_dense_from(w, "t", K2_DTYPE_U8, 1, shape, n,
						   stream_read, &src, &err), -EIO);
	ck_assert_msg(strstr(err.msg, "disk on fire at 33554432"), "%s", err.msg);
	ck_assert_uint_eq(count_dir_entries(tu_tmpdir), 3);  /* the temp file */
	k2p_writer_abort(w);
	ck_assert_int_eq(access(path, F_OK), -1);
	ck_assert_uint_eq(count_dir_entries(tu_tmpdir), 2);
	free(d);
}
END_TEST

/* ---------------------------------------------------------------- writer errors */

START_TEST(writer_rejects)
{
	const char *path = tu_tmp_path("w.k2");
	k2p_writer *w;
	k2_err err;
	k2p_writer_opts bad = {.block_bytes = 5000};
	ck_assert_int_eq(k2p_writer_create(path, &bad, &w, &err), -EINVAL);
	bad = (k2p_writer_opts){.codec = 7};
	ck_assert_int_eq(k2p_writer_create(path, &bad, &w, &err), -EINVAL);
	k2p_writer_opts o = {.codec = K2_CODEC_ZSTD, .dense_codec = K2_CODEC_LZ4,
			     .block_bytes = BB, .threads = 2};
	ck_assert_int_eq(k2p_writer_create(path, &o, &w, &err), 0);
	uint8_t d[64] = {1, 2, 3};
	uint64_t shape[2] = {4, 8};
	ck_assert_int_eq(k2p_writer_add_dense(w, "t", K2_DTYPE_BF16, 2, shape, d, 64, &err), 0);
	ck_assert_int_eq(k2p_writer_add_dense(w, "t", K2_DTYPE_BF16, 2, shape, d, 64, &err),
			 -EEXIST);
	ck_assert_ptr_nonnull(strstr(err.msg, "dense/t"));
	ck_assert_int_eq(k2p_writer_add_dense(w, "u", K2_DTYPE_BF16, 2, shape, d, 63, &err),
			 -EINVAL);
	ck_assert_int_eq(k2p_writer_add_dense(w, "u", 99, 2, shape, d, 64, &err), -EINVAL);
	ck_assert_int_eq(k2p_writer_add_dense(w, "a/b", K2_DTYPE_U8, 1, shape, d, 4, &err),
			 -EINVAL);
	ck_assert_int_eq(k2p_writer_add_file(w, "x/y", d, 4, &err), -EINVAL);
	ck_assert_int_eq(k2p_writer_add_file(w, "", d, 4, &err), -EINVAL);
	ck_assert_int_eq(k2p_writer_add_file(w, "experts", d, 4, &err), -EINVAL);
	ck_assert_int_eq(k2p_writer_add_file(w, "t", d, 4, &err), 0);  /* not dense/t */
	size_t n;
	uint8_t *img = make_image(K2_FORMAT_INT8, 64, 32, 4, 5, 0, &n);
	ck_assert_int_eq(k2p_writer_add_expert(w, img, n, &err), 0);
	ck_assert_int_eq(k2p_writer_add_expert(w, img, n, &err), -EEXIST);
	ck_assert_ptr_nonnull(strstr(err.msg, "experts/004/005"));
	ck_assert_int_eq(k2p_writer_add_expert(w, img, n - 1, &err), -EINVAL);
	img[100] ^= 1;  /* header checksum */
	ck_assert_int_eq(k2p_writer_add_expert(w, img, n, &err), -EINVAL);
	free(img);
	/* Abort leaves nothing behind. */
	k2p_writer_abort(w);
	k2p_writer_abort(NULL);
	ck_assert_int_ne(access(path, F_OK), 0);
	DIR *dir = opendir(tu_tmpdir);
	struct dirent *de;
	while ((de = readdir(dir)))
		ck_assert_msg(de->d_name[0] == '.', "left behind: %s", de->d_name);
	closedir(dir);
	/* An empty pack is valid. */
	ck_assert_int_eq(k2p_writer_create(path, &o, &w, &err), 0);
	ck_assert_int_eq(k2p_writer_finish(w, &err), 0);
	k2p_pack *p = tu_pack_open(path);
	ck_assert_uint_eq(k2p_entry_count(p), 0);
	uint32_t first = 7;
	ck_assert_uint_eq(k2p_expert_layers(p, &first), 0);
	k2p_pack_close(p);
	k2p_pack_close(NULL);
	/* A writer into a missing folder fails with its name. */
	ck_assert_int_lt(k2p_writer_create("/nonexistent-dir/x.k2", &o, &w, &err), 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent-dir/x.k2"));
}
END_TEST

/* ---------------------------------------------------------------- damage */

START_TEST(truncated_pack)
{
	const char *path = tu_tmp_path("t.k2");
	std_pack_write(path, K2_CODEC_ZSTD, 0, 1);
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0);
	char want[128];
	snprintf(want, sizeof(want), "truncated: expected %lld bytes, file has %lld",
		 (long long)st.st_size, (long long)st.st_size - 1);
	ck_assert_int_eq(truncate(path, st.st_size - 1), 0);
	open_fails(path, want);
	snprintf(want, sizeof(want), "truncated: expected %lld bytes, file has 5000",
		 (long long)st.st_size);
	ck_assert_int_eq(truncate(path, 5000), 0);
	open_fails(path, want);
	snprintf(want, sizeof(want), "truncated: expected %lld bytes, file has 100",
		 (long long)st.st_size);
	ck_assert_int_eq(truncate(path, 100), 0);
	open_fails(path, want);
	ck_assert_int_eq(truncate(path, 10), 0);
	open_fails(path, "truncated");
	ck_assert_int_eq(truncate(path, 0), 0);
	open_fails(path, "truncated");
	/* Longer than the header says. */
	std_pack_free();
	std_pack_write(path, K2_CODEC_ZSTD, 0, 1);
	ck_assert_int_eq(truncate(path, st.st_size + 4096), 0);
	open_fails(path, "trailing");
	/* Not a regular file: refused without blocking on a FIFO. */
	const char *fifo = tu_tmp_path("fifo");
	ck_assert_int_eq(mkfifo(fifo, 0600), 0);
	open_fails(fifo, "not a regular file");
	open_fails(tu_tmpdir, "not a regular file");
	open_fails(tu_tmp_path("missing.k2"), "cannot open");
}
END_TEST

START_TEST(flipped_block_byte)
{
	const char *path = tu_tmp_path("f.k2");
	std_pack_write(path, _i ? K2_CODEC_LZ4 : K2_CODEC_ZSTD, 0, 2);
	k2p_pack *p = tu_pack_open(path);
	/* Damage block 2 of dense/large.weight. */
	const k2p_entry *e = k2p_entry_find(p, "dense/large.weight");
	const k2p_block *b = k2p_entry_block(p, e, 2);
	uint64_t at = b->offset + b->stored_bytes / 2;
	k2p_pack_close(p);
	size_t n;
	uint8_t *d = tu_read_file(path, &n);
	d[at] ^= 0x10;
	tu_write_file(path, d, n);
	free(d);

	p = tu_pack_open(path);  /* blocks are checked when read */
	e = k2p_entry_find(p, "dense/large.weight");
	b = k2p_entry_block(p, e, 2);
	k2_err err = {{0}};
	uint8_t *buf = malloc(e->raw_bytes);
	ck_assert_int_eq(k2p_entry_read(p, e, 0, buf, e->raw_bytes, &err), -EIO);
	char want[160];
	snprintf(want, sizeof(want), "block 2 of dense/large.weight at pack offset %" PRIu64
		 ": checksum mismatch", b->offset);
	ck_assert_msg(strstr(err.msg, want) != NULL, "message \"%s\"", err.msg);
	ck_assert_ptr_nonnull(strstr(err.msg, path));
	/* Reads that avoid the damaged block, and other entries, still work. */
	ck_assert_int_eq(k2p_entry_read(p, e, 0, buf, 2 * BB, &err), 2 * BB);
	ck_assert_int_eq(memcmp(buf, std_pack[3].data, 2 * BB), 0);
	ck_assert_int_eq(k2p_entry_read(p, e, 3 * BB, buf, 100, &err), 18);
	ck_assert_int_eq(k2p_entry_read(p, e, 2 * BB + 5, buf, 1, &err), -EIO);
	for (int i = 0; i < N_STD; i++)
		if (i != 3)
			check_entry_content(p, &std_pack[i]);
	free(buf);
	k2p_pack_close(p);
}
END_TEST

START_TEST(block_decode_bad_stream)
{
	/* A block whose checksum matches but whose stream is not valid data. */
	const char *path = tu_tmp_path("d.k2");
	std_pack_write(path, K2_CODEC_ZSTD, 0, 1);
	k2p_pack *p = tu_pack_open(path);
	const k2p_entry *e = k2p_entry_find(p, "dense/small.weight");
	k2p_block b = *k2p_entry_block(p, e, 0);
	ck_assert_uint_eq(b.codec, K2_CODEC_ZSTD);
	uint8_t junk[64], out[BB];
	memset(junk, 0x33, sizeof(junk));
	b.stored_bytes = sizeof(junk);
	b.checksum = k2_checksum(junk, sizeof(junk));
	k2_err err;
	ck_assert_int_eq(k2p_block_decode(p, &b, junk, out, &err), -EIO);
	ck_assert_ptr_nonnull(strstr(err.msg, "does not decode"));
	k2p_pack_close(p);
}
END_TEST

START_TEST(flipped_header_or_index_byte)
{
	const char *path = tu_tmp_path("h.k2");
	std_pack_write(path, K2_CODEC_ZSTD, 0, 1);
	size_t n;
	uint8_t *orig = tu_read_file(path, &n);
	struct k2p_header_disk h;
	k2p_header_decode(orig, &h);
	uint8_t *d = malloc(n);
	/* Every byte of the used header, and some of the padding. */
	for (uint32_t at = 0; at < 4096; at += at < 80 ? 1 : 397) {
		memcpy(d, orig, n);
		d[at] ^= 0x01;
		tu_write_file(path, d, n);
		k2p_pack *p;
		k2_err err;
		ck_assert_msg(k2p_pack_open(path, &p, &err) < 0, "flip at %u accepted", at);
	}
	/* Bytes across the index. */
	for (uint64_t at = h.index_offset; at < n; at += 1 + (n - h.index_offset) / 40) {
		memcpy(d, orig, n);
		d[at] ^= 0x80;
		tu_write_file(path, d, n);
		open_fails(path, "checksum mismatch");
	}
	memcpy(d, orig, n);
	d[0] = 'X';
	tu_write_file(path, d, n);
	open_fails(path, "bad magic");
	free(d);
	free(orig);
}
END_TEST

/* Rewrites the header fields (through fn) and re-checksums the header. */
static void edit_header(const char *path, void (*fn)(struct k2p_header_disk *))
{
	size_t n;
	uint8_t *d = tu_read_file(path, &n);
	struct k2p_header_disk h;
	k2p_header_decode(d, &h);
	fn(&h);
	k2p_header_encode(&h, d);
	k2le_put64(d + 72, k2_checksum(d, 72));
	tu_write_file(path, d, n);
	free(d);
}

/* The decoded index of a pack: n entries e[] and nb blocks b[]. */
struct index_view {
	struct k2p_entry_disk *e;
	uint32_t n;
	struct k2p_block_disk *b;
	uint32_t nb;
};

/* Lets fn edit entries and blocks of the index, then fixes both checksums, so only
 * the reader's structural checks can catch the change. */
static void edit_index(const char *path, void (*fn)(struct index_view *))
{
	size_t n;
	uint8_t *d = tu_read_file(path, &n);
	struct k2p_header_disk h;
	k2p_header_decode(d, &h);
	uint8_t *idx = d + h.index_offset;
	struct index_view v = {calloc(h.n_entries, sizeof(*v.e)), h.n_entries,
			       calloc(h.n_blocks, sizeof(*v.b)), h.n_blocks};
	for (uint32_t i = 0; i < v.n; i++)
		k2p_entry_decode(idx + i * 128, &v.e[i]);
	for (uint32_t i = 0; i < v.nb; i++)
		k2p_block_decode_disk(idx + v.n * 128 + i * 32, &v.b[i]);
	fn(&v);
	for (uint32_t i = 0; i < v.n; i++)
		k2p_entry_encode(&v.e[i], idx + i * 128);
	for (uint32_t i = 0; i < v.nb; i++)
		k2p_block_encode(&v.b[i], idx + v.n * 128 + i * 32);
	h.index_checksum = k2_checksum(idx, h.index_bytes);
	k2p_header_encode(&h, d);
	k2le_put64(d + 72, k2_checksum(d, 72));
	tu_write_file(path, d, n);
	free(v.e);
	free(v.b);
	free(d);
}

/* The nth entry (from 0) of the given kind. */
static struct k2p_entry_disk *find_disk(struct index_view *v, uint32_t kind, uint32_t nth)
{
	for (uint32_t i = 0; i < v->n; i++)
		if (v->e[i].kind == kind && nth-- == 0)
			return &v->e[i];
	ck_abort_msg("entry not found");
	return NULL;
}

/* Index editors: each makes one inconsistency that crafted_index expects the
 * reader to name. */
static void ed_past_index(struct index_view *v) { v->e[v->n - 1].extent_offset += 1u << 20; }
static void ed_block_raw(struct index_view *v) { v->b[v->e[3].first_block].raw_bytes -= 1; }
static void ed_block_codec(struct index_view *v) { v->b[v->nb - 1].codec = 9; }
static void ed_kind(struct index_view *v) { v->e[0].kind = 4; }
static void ed_nblocks(struct index_view *v) { v->e[3].n_blocks -= 1; }

static void ed_expert_dims(struct index_view *v)
{
	find_disk(v, K2P_KIND_EXPERT, 0)->shape[1] *= 64;  /* image size no longer matches */
}

static void ed_expert_raw(struct index_view *v)
{
	find_disk(v, K2P_KIND_EXPERT, 1)->raw_bytes -= 4096;
}

static void ed_dense_shape(struct index_view *v)
{
	find_disk(v, K2P_KIND_DENSE, 0)->shape[0] += 1;
}

static void ed_block_gap(struct index_view *v)
{
	v->b[v->e[3].first_block + 1].offset += 1;  /* not contiguous */
}

/* Moves entry 4's extent (and its blocks) back onto entry 3's. */
static void ed_overlap(struct index_view *v)
{
	uint64_t shift = v->e[4].extent_offset - v->e[3].extent_offset;
	v->e[4].extent_offset -= shift;
	for (uint32_t k = 0; k < v->e[4].n_blocks; k++)
		v->b[v->e[4].first_block + k].offset -= shift;
}

static void ed_dup_expert(struct index_view *v)
{
	struct k2p_entry_disk *a = find_disk(v, K2P_KIND_EXPERT, 0);
	struct k2p_entry_disk *c = find_disk(v, K2P_KIND_EXPERT, 1);
	c->expert = a->expert;
	c->layer = a->layer;
}

/* small.weight and exact.weight: names of the same length */
static void ed_dup_name(struct index_view *v)
{
	struct k2p_entry_disk *a = find_disk(v, K2P_KIND_DENSE, 0);
	struct k2p_entry_disk *c = find_disk(v, K2P_KIND_DENSE, 1);
	c->name_off = a->name_off;
	c->name_len = a->name_len;
}

static void ed_name_oob(struct index_view *v)
{
	v->e[v->n - 1].name_off = 1u << 30;
	v->e[0].name_len = 2000;
}

static void eh_version(struct k2p_header_disk *h) { h->version = 2; }
static void eh_flags(struct k2p_header_disk *h) { h->flags = 4; }
static void eh_block_bytes(struct k2p_header_disk *h) { h->block_bytes = 3000; }
static void eh_entries(struct k2p_header_disk *h) { h->n_entries = 1u << 25; }
static void eh_index_off(struct k2p_header_disk *h) { h->index_offset += 1; }
static void eh_index_short(struct k2p_header_disk *h) { h->index_bytes -= 1; }
static void eh_file_bytes(struct k2p_header_disk *h) { h->file_bytes -= 1; }

START_TEST(crafted_index)
{
	static const struct {
		void (*fn)(struct index_view *);
		const char *needle;
	} cases[] = {
		{ed_expert_dims, "expert raw_bytes"},
		{ed_expert_raw, "expert raw_bytes"},
		{ed_overlap, "overlaps"},
		{ed_past_index, "runs past the index"},
		{ed_block_gap, "does not follow on"},
		{ed_block_raw, "does not follow on"},
		{ed_dense_shape, "from its dtype and shape"},
		{ed_dup_expert, "same path experts/001/002"},
		{ed_dup_name, "same path dense/small.weight"},
		{ed_name_oob, "outside the string table"},
		{ed_block_codec, "unknown codec 9"},
		{ed_kind, "unknown kind 4"},
		{ed_nblocks, "blocks, expected"},
	};
	const char *path = tu_tmp_path("c.k2");
	std_pack_write(path, K2_CODEC_ZSTD, 0, 1);
	size_t n;
	uint8_t *orig = tu_read_file(path, &n);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		tu_write_file(path, orig, n);
		edit_index(path, cases[i].fn);
		open_fails(path, cases[i].needle);
	}
	/* The untouched pack, put back through the same edit path, still opens. */
	tu_write_file(path, orig, n);
	edit_header(path, eh_version);
	open_fails(path, "pack version 2 is not supported");
	static const struct {
		void (*fn)(struct k2p_header_disk *);
		const char *needle;
	} hcases[] = {
		{eh_flags, "unknown flags"},
		{eh_block_bytes, "block_bytes 3000"},
		{eh_entries, "entries (limit 2^24)"},
		{eh_index_off, "index_offset"},
		{eh_index_short, "does not end the file"},
		{eh_file_bytes, "expected"},
	};
	for (size_t i = 0; i < sizeof(hcases) / sizeof(hcases[0]); i++) {
		tu_write_file(path, orig, n);
		edit_header(path, hcases[i].fn);
		open_fails(path, hcases[i].needle);
	}
	tu_write_file(path, orig, n);
	k2p_pack_close(tu_pack_open(path));
	free(orig);
}
END_TEST

/* ---------------------------------------------------------------- k2inspect */

/* Runs a shell command, captures stdout+stderr into out, returns its exit status. */
static int run_cmd(const char *cmd, char *out, size_t cap)
{
	FILE *f = popen(cmd, "r");
	ck_assert_ptr_nonnull(f);
	size_t n = fread(out, 1, cap - 1, f);
	out[n] = '\0';
	int st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static size_t count_lines(const char *s)
{
	size_t n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

START_TEST(k2inspect_cli)
{
	const char *bin = getenv("K2_BIN");
	char tool[512], cmd[2048], out[16384];
	snprintf(tool, sizeof(tool), "%s/k2inspect", bin ? bin : "bin");
	if (access(tool, X_OK) != 0) {
		printf("k2inspect_cli: skipped, %s not built\n", tool);
		return;
	}
	const char *path = tu_tmp_path("i.k2");
	std_pack_write(path, K2_CODEC_ZSTD, 0, 2);

	snprintf(cmd, sizeof(cmd), "%s %s 2>&1", tool, path);
	ck_assert_int_eq(run_cmd(cmd, out, sizeof(out)), 0);
	ck_assert_ptr_nonnull(strstr(out, "dense/large.weight"));
	ck_assert_ptr_nonnull(strstr(out, "BF16[6153,1]"));
	ck_assert_ptr_nonnull(strstr(out, "experts/002/000"));
	ck_assert_ptr_nonnull(strstr(out, "fp8-b128 200x130"));
	ck_assert_ptr_nonnull(strstr(out, "total: 9 entries"));

	snprintf(cmd, sizeof(cmd), "%s %s --verify 2>&1", tool, path);
	ck_assert_int_eq(run_cmd(cmd, out, sizeof(out)), 0);
	k2p_pack *p = tu_pack_open(path);
	size_t nblocks = 0;
	for (size_t i = 0; i < k2p_entry_count(p); i++)
		nblocks += k2p_entry_at(p, i)->n_blocks;
	char want[256];
	snprintf(want, sizeof(want), "ok: %zu blocks verified\n", nblocks);
	ck_assert_str_eq(out, want);

	/* --extract equals what went in, to a file and to stdout. */
	const char *x = tu_tmp_path("x.bin");
	for (int i = 0; i < N_STD; i++) {
		snprintf(cmd, sizeof(cmd), "%s %s --extract '%s' %s 2>&1", tool, path,
			 std_pack[i].path, x);
		ck_assert_int_eq(run_cmd(cmd, out, sizeof(out)), 0);
		size_t n;
		uint8_t *d = tu_read_file(x, &n);
		ck_assert_uint_eq(n, std_pack[i].n);
		ck_assert_int_eq(memcmp(d, std_pack[i].data, n), 0);
		free(d);
	}
	snprintf(cmd, sizeof(cmd), "%s %s --extract config.json -", tool, path);
	ck_assert_int_eq(run_cmd(cmd, out, sizeof(out)), 0);
	ck_assert_str_eq(out, (const char *)std_pack[0].data);
	snprintf(cmd, sizeof(cmd), "%s %s --extract dense/nope %s 2>&1", tool, path, x);
	ck_assert_int_eq(run_cmd(cmd, out, sizeof(out)), 1);
	ck_assert_uint_eq(count_lines(out), 1);
	ck_assert_ptr_nonnull(strstr(out, "k2inspect: "));
	ck_assert_ptr_nonnull(strstr(out, "dense/nope"));

	/* Damage two blocks: --verify names each, with its pack offset, and exits 1;
	 * extracting the damaged entry fails, another still works. */
	const k2p_entry *e = k2p_entry_find(p, "dense/large.weight");
	uint64_t at1 = k2p_entry_block(p, e, 1)->offset;
	e = k2p_entry_find(p, "experts/001/003");
	uint64_t at2 = k2p_entry_block(p, e, 0)->offset;
	k2p_pack_close(p);
	size_t n;
	uint8_t *d = tu_read_file(path, &n);
	d[at1 + 3] ^= 0xff;
	d[at2] ^= 0x01;
	tu_write_file(path, d, n);
	free(d);
	snprintf(cmd, sizeof(cmd), "%s %s --verify 2>&1", tool, path);
	ck_assert_int_eq(run_cmd(cmd, out, sizeof(out)), 1);
	snprintf(want, sizeof(want), "block 1 of dense/large.weight at pack offset %" PRIu64
		 ": checksum mismatch", at1);
	ck_assert_msg(strstr(out, want) != NULL, "output: %s", out);
	snprintf(want, sizeof(want), "block 0 of experts/001/003 at pack offset %" PRIu64, at2);
	ck_assert_msg(strstr(out, want) != NULL, "output: %s", out);
	ck_assert_uint_eq(count_lines(out), 3);  /* two blocks and the count */
	snprintf(cmd, sizeof(cmd), "%s %s --extract dense/large.weight %s 2>&1", tool, path, x);
	ck_assert_int_eq(run_cmd(cmd, out, sizeof(out)), 1);
	ck_assert_ptr_nonnull(strstr(out, "checksum mismatch"));
	ck_assert_int_ne(access(x, F_OK), 0);  /* no partial output left */
	snprintf(cmd, sizeof(cmd), "%s %s --extract dense/small.weight %s 2>&1", tool, path, x);
	ck_assert_int_eq(run_cmd(cmd, out, sizeof(out)), 0);

	/* A truncated pack: one line naming the file and the expected size. */
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(truncate(path, st.st_size - 100), 0);
	snprintf(cmd, sizeof(cmd), "%s %s --list 2>&1", tool, path);
	ck_assert_int_eq(run_cmd(cmd, out, sizeof(out)), 1);
	ck_assert_uint_eq(count_lines(out), 1);
	snprintf(want, sizeof(want), "k2inspect: %s: truncated: expected %lld bytes, file has %lld\n",
		 path, (long long)st.st_size, (long long)st.st_size - 100);
	ck_assert_str_eq(out, want);

	/* Usage errors and help. */
	snprintf(cmd, sizeof(cmd), "%s 2>&1", tool);
	ck_assert_int_eq(run_cmd(cmd, out, sizeof(out)), 1);
	ck_assert_uint_eq(count_lines(out), 1);
	snprintf(cmd, sizeof(cmd), "%s %s --bogus 2>&1", tool, path);
	ck_assert_int_eq(run_cmd(cmd, out, sizeof(out)), 1);
	ck_assert_ptr_nonnull(strstr(out, "--bogus"));
	snprintf(cmd, sizeof(cmd), "%s --help", tool);
	ck_assert_int_eq(run_cmd(cmd, out, sizeof(out)), 0);
	ck_assert_ptr_nonnull(strstr(out, "SYNOPSIS"));
	ck_assert_ptr_nonnull(strstr(out, "--extract NAME OUT"));
}
END_TEST

static Suite *pack_suite(void)
{
	Suite *s = suite_create("pack");
	TCase *tc = tu_tcase(s, "codec", 60);
	tcase_add_loop_test(tc, codec_round_trip, 0, N_CODEC_CASES);
	tcase_add_test(tc, codec_errors);

	tc = tu_tcase(s, "pack", 120);
	tcase_add_checked_fixture(tc, tu_tmpdir_setup, pack_teardown);
	tcase_add_loop_test(tc, pack_round_trip, 0, N_CODEC_CASES);
	TU_ADD_TESTS(tc, pack_read_ranges, pack_large_entry_many_threads, writer_rejects);
	tcase_add_loop_test(tc, stream_matches_add_dense, 0,
			    (int)(sizeof(stream_cases) / sizeof(stream_cases[0])));
	tcase_add_test(tc, stream_read_fails);

	tc = tu_tcase(s, "damage", 60);
	tcase_add_checked_fixture(tc, tu_tmpdir_setup, pack_teardown);
	tcase_add_test(tc, truncated_pack);
	tcase_add_loop_test(tc, flipped_block_byte, 0, 2);
	TU_ADD_TESTS(tc, block_decode_bad_stream, flipped_header_or_index_byte, crafted_index,
		     k2inspect_cli);
	return s;
}

int main(void)
{
	return tu_run_suite(pack_suite());
}
