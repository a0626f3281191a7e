/* test_k2fs_cache.c — Check suite for k2fs/ without mounting: the xattr value
 * parsers and formatters, the inode tree, the RAM cache (reads through the
 * io_uring loader and decode workers for codecs none, lz4 and zstd, the byte
 * budget, hints, partial read-ahead, a damaged block) and the xattr layer's
 * errno values, against packs written here with the pack writer. */
#include "k2fs_fs.h"
#include "k2fs_xattr.h"

#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LAYERS 2
#define FIRST 1
#define EXPERTS 6
#define BLOCK (16u << 10)

static char tmpdir[64];
static char pack_path[128];

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Compressible pseudo-random bytes (repeats for LZ4, few symbols for zstd). */
static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i += 8) {
		uint64_t r = splitmix(&seed);
		if (i >= 64 && (r & 1)) {
			memcpy(p + i, p + i - 8 * (1 + ((r >> 1) & 7)), n - i < 8 ? n - i : 8);
			continue;
		}
		r = splitmix(&seed);
		for (size_t k = 0; k < 8 && i + k < n; k++)
			p[i + k] = (uint8_t)((k & 1) ? 0x3c + ((r >> (8 * k)) & 3) : r >> (8 * k));
	}
}

/* Writes a pack: config.json, one dense tensor, LAYERS × EXPERTS bf16 experts
 * (H 256, I 64: 100 KiB, 7 blocks of 16 KiB) with `codec`. */
static void write_pack(uint32_t codec)
{
	strcpy(tmpdir, "/tmp/k2test_k2fs.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	snprintf(pack_path, sizeof(pack_path), "%s/t.k2", tmpdir);
	k2p_writer_opts wo = {.codec = codec, .dense_codec = K2_CODEC_ZSTD, .block_bytes = BLOCK};
	k2p_writer *w;
	k2_err err = {{0}};
	ck_assert_msg(k2p_writer_create(pack_path, &wo, &w, &err) == 0, "%s", err.msg);
	static const char cfg[] = "{\"hidden_size\": 256}\n";
	ck_assert_int_eq(k2p_writer_add_file(w, "config.json", cfg, sizeof(cfg) - 1, &err), 0);
	uint64_t shape[2] = {64, 48};
	uint8_t dense[64 * 48 * 2];
	fill(dense, sizeof(dense), 99);
	ck_assert_int_eq(k2p_writer_add_dense(w, "model.norm.weight", K2_DTYPE_BF16, 2, shape,
					      dense, sizeof(dense), &err), 0);
	for (uint32_t l = FIRST; l < FIRST + LAYERS; l++)
		for (uint32_t e = 0; e < EXPERTS; e++) {
			k2x_layout lay;
			ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_BF16, 256, 64, l, e, &lay), 0);
			uint8_t *img = calloc(1, lay.image_bytes);
			ck_assert_ptr_nonnull(img);
			k2x_header_write(&lay, img);
			for (int s = 0; s < K2X_SECTIONS; s++)
				fill(img + lay.sec[s].offset, lay.sec[s].bytes, l * 100 + e * 7 + s);
			ck_assert_msg(k2p_writer_add_expert(w, img, lay.image_bytes, &err) == 0, "%s",
				      err.msg);
			free(img);
		}
	ck_assert_msg(k2p_writer_finish(w, &err) == 0, "%s", err.msg);
}

static void remove_pack(void)
{
	unlink(pack_path);
	rmdir(tmpdir);
}

static k2p_pack *open_pack(void)
{
	k2p_pack *p;
	k2_err err = {{0}};
	ck_assert_msg(k2p_pack_open(pack_path, &p, &err) == 0, "%s", err.msg);
	return p;
}

static struct k2fs_cache *open_cache(k2p_pack *p, uint64_t limit)
{
	struct k2fs_cache_opts o = {.limit = limit, .threads = 2, .iodepth = 8,
				    .chunk = 32 << 10, .readahead = K2FS_RA_ALL};
	struct k2fs_cache *c;
	k2_err err = {{0}};
	ck_assert_msg(k2fs_cache_create(p, &o, &c, &err) == 0, "%s", err.msg);
	return c;
}

static size_t expert_entry(const k2p_pack *p, uint32_t layer, uint32_t expert)
{
	const k2p_entry *e = k2p_expert_find(p, layer, expert);
	ck_assert_ptr_nonnull(e);
	return (size_t)(e - k2p_entry_at(p, 0));
}

/* Reads [off, off+len) of an expert through the cache into out. */
static int cache_read(struct k2fs_cache *c, size_t entry, uint64_t off, size_t len, uint8_t *out)
{
	struct k2fs_read rd;
	int rc = k2fs_cache_read_begin(c, entry, off, len, &rd);
	if (rc)
		return rc;
	size_t at = 0;
	for (int i = 0; i < rd.niov; i++) {
		memcpy(out + at, rd.iov[i].iov_base, rd.iov[i].iov_len);
		at += rd.iov[i].iov_len;
	}
	ck_assert_uint_eq(at, rd.bytes);
	k2fs_cache_read_end(c, &rd);
	return (int)at;
}

static enum k2fs_state wait_state(struct k2fs_cache *c, size_t entry, enum k2fs_state want)
{
	struct k2fs_slot_info info;
	for (int i = 0; i < 2000; i++) {
		k2fs_cache_info(c, entry, &info);
		if (info.state == want)
			break;
		usleep(1000);
	}
	return info.state;
}

/* ---------------------------------------------------------------- values */

START_TEST(test_parse_size)
{
	static const struct {
		const char *s;
		uint64_t v;
	} good[] = {{"0", 0}, {"123", 123}, {"64K", 65536}, {"1.5M", 1572864},
		    {"2G", 2147483648ull}, {"2GiB", 2147483648ull}, {"1KB", 1024}, {"7k", 7168}};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		uint64_t v = 1;
		ck_assert_msg(k2fs_value_parse_size(good[i].s, strlen(good[i].s), &v) == 0, "%s",
			      good[i].s);
		ck_assert_uint_eq(v, good[i].v);
	}
	static const char *const bad[] = {"", " 1", "1 ", "-1", "+1", "0x10", "inf", "nan",
					  "1e3", "1Q", "K", "1.", ".5", "1M\n", "all", "1KK"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint64_t v = 42;
		ck_assert_msg(k2fs_value_parse_size(bad[i], strlen(bad[i]), &v) == -EINVAL, "'%s'",
			      bad[i]);
		ck_assert_uint_eq(v, 42);
	}
	/* not NUL-terminated: only n bytes count */
	uint64_t v = 0;
	ck_assert_int_eq(k2fs_value_parse_size("12345", 2, &v), 0);
	ck_assert_uint_eq(v, 12);
	/* a NUL inside: the whole value must match, not its prefix (fuzz_xattr_value) */
	ck_assert_int_eq(k2fs_value_parse_size("64K\0x", 5, &v), -EINVAL);
}
END_TEST

START_TEST(test_parse_readahead_hint)
{
	uint64_t v = 0;
	ck_assert_int_eq(k2fs_value_parse_readahead("all", 3, &v), 0);
	ck_assert_uint_eq(v, K2FS_RA_ALL);
	ck_assert_int_eq(k2fs_value_parse_readahead("4M", 2, &v), 0);
	ck_assert_uint_eq(v, 4u << 20);
	ck_assert_int_eq(k2fs_value_parse_readahead("ALL", 3, &v), -EINVAL);
	ck_assert_int_eq(k2fs_value_parse_readahead("al", 2, &v), -EINVAL);
	enum k2fs_hint h = K2FS_HINT_NONE;
	ck_assert_int_eq(k2fs_value_parse_hint("willneed", 8, &h), 0);
	ck_assert_int_eq(h, K2FS_HINT_WILLNEED);
	ck_assert_int_eq(k2fs_value_parse_hint("pin", 3, &h), 0);
	ck_assert_int_eq(h, K2FS_HINT_PIN);
	ck_assert_int_eq(k2fs_value_parse_hint("unpin", 5, &h), 0);
	ck_assert_int_eq(h, K2FS_HINT_UNPIN);
	ck_assert_int_eq(k2fs_value_parse_hint("dontneed", 8, &h), 0);
	ck_assert_int_eq(h, K2FS_HINT_DONTNEED);
	ck_assert_int_eq(k2fs_value_parse_hint("willneedx", 9, &h), -EINVAL);
	ck_assert_int_eq(k2fs_value_parse_hint("pi", 2, &h), -EINVAL);
	ck_assert_int_eq(k2fs_value_parse_hint("", 0, &h), -EINVAL);
	ck_assert_int_eq(h, K2FS_HINT_DONTNEED);
	ck_assert_str_eq(k2fs_hint_name(K2FS_HINT_NONE), "none");
	ck_assert_str_eq(k2fs_hint_name(K2FS_HINT_PIN), "pin");
}
END_TEST

START_TEST(test_parse_lists)
{
	uint32_t *a;
	size_t n;
	ck_assert_int_eq(k2fs_value_parse_list("3,17,200", 8, &a, &n), 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_uint_eq(a[0], 3);
	ck_assert_uint_eq(a[1], 17);
	ck_assert_uint_eq(a[2], 200);
	free(a);
	ck_assert_int_eq(k2fs_value_parse_list("7", 1, &a, &n), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_uint_eq(a[0], 7);
	free(a);
	static const char *const bad[] = {"", ",", "1,", ",1", "1,,2", "a", "1 ,2", "1;2",
					  "1234567890", "-1", "1/2"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(k2fs_value_parse_list(bad[i], strlen(bad[i]), &a, &n) == -EINVAL,
			      "'%s'", bad[i]);
	struct k2fs_ref *r;
	ck_assert_int_eq(k2fs_value_parse_pairs("1/3,2/17", 8, &r, &n), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(r[0].layer, 1);
	ck_assert_uint_eq(r[0].expert, 3);
	ck_assert_uint_eq(r[1].layer, 2);
	ck_assert_uint_eq(r[1].expert, 17);
	free(r);
	static const char *const badp[] = {"", "1", "1/", "/1", "1/2/3", "1/2,", "1/2,,3/4",
					   "a/b", "1/2 ", "1-2"};
	for (size_t i = 0; i < sizeof(badp) / sizeof(badp[0]); i++)
		ck_assert_msg(k2fs_value_parse_pairs(badp[i], strlen(badp[i]), &r, &n) == -EINVAL,
			      "'%s'", badp[i]);
}
END_TEST

START_TEST(test_format_size)
{
	char buf[32];
	ck_assert_str_eq(k2fs_value_format_size(0, buf, sizeof(buf)), "0");
	ck_assert_str_eq(k2fs_value_format_size(1536, buf, sizeof(buf)), "1536");
	ck_assert_str_eq(k2fs_value_format_size(3072, buf, sizeof(buf)), "3K");
	ck_assert_str_eq(k2fs_value_format_size(1 << 20, buf, sizeof(buf)), "1M");
	ck_assert_str_eq(k2fs_value_format_size(5ull << 30, buf, sizeof(buf)), "5G");
	ck_assert_str_eq(k2fs_value_format_size(K2FS_RA_ALL, buf, sizeof(buf)), "all");
	static const uint64_t vals[] = {0, 1, 4095, 4096, 65536, 1572864, 3ull << 40, 12345678};
	for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
		uint64_t back = 0;
		k2fs_value_format_size(vals[i], buf, sizeof(buf));
		ck_assert_int_eq(k2fs_value_parse_readahead(buf, strlen(buf), &back), 0);
		ck_assert_uint_eq(back, vals[i]);
	}
}
END_TEST

/* ---------------------------------------------------------------- tree */

START_TEST(test_tree)
{
	write_pack(K2_CODEC_LZ4);
	k2p_pack *p = open_pack();
	struct k2fs_tree t;
	k2_err err = {{0}};
	ck_assert_int_eq(k2fs_tree_build(&t, p, &err), 0);
	ck_assert_uint_eq(t.first_layer, FIRST);
	ck_assert_uint_eq(t.n_layers, LAYERS);
	ck_assert_uint_eq(t.entry_base, K2FS_INO_LAYER0 + LAYERS);
	struct k2fs_node n, d;
	ck_assert_int_eq(k2fs_tree_node(&t, K2FS_INO_ROOT, &n), 0);
	ck_assert_int_eq(n.kind, K2FS_NODE_ROOT);
	ck_assert_int_eq(k2fs_tree_lookup(&t, K2FS_INO_ROOT, "experts", &n), 0);
	ck_assert_uint_eq(n.ino, K2FS_INO_EXPERTS);
	ck_assert_int_eq(k2fs_tree_lookup(&t, K2FS_INO_EXPERTS, "002", &d), 0);
	ck_assert_int_eq(d.kind, K2FS_NODE_LAYER_DIR);
	ck_assert_uint_eq(d.layer, 2);
	ck_assert_uint_eq(d.ino, K2FS_INO_LAYER0 + 1);
	ck_assert_int_eq(k2fs_tree_lookup(&t, K2FS_INO_EXPERTS, "2", &n), -ENOENT);
	ck_assert_int_eq(k2fs_tree_lookup(&t, K2FS_INO_EXPERTS, "0002", &n), -ENOENT);
	ck_assert_int_eq(k2fs_tree_lookup(&t, K2FS_INO_EXPERTS, "000", &n), -ENOENT);
	ck_assert_int_eq(k2fs_tree_lookup(&t, K2FS_INO_EXPERTS, "003", &n), -ENOENT);
	ck_assert_int_eq(k2fs_tree_lookup(&t, d.ino, "005", &n), 0);
	ck_assert_int_eq(n.kind, K2FS_NODE_EXPERT);
	ck_assert_uint_eq(n.e->layer, 2);
	ck_assert_uint_eq(n.e->expert, 5);
	ck_assert_uint_eq(n.ino, t.entry_base + n.entry);
	ck_assert_int_eq(k2fs_tree_lookup(&t, d.ino, "5", &n), -ENOENT);
	ck_assert_int_eq(k2fs_tree_lookup(&t, d.ino, "006", &n), -ENOENT);
	struct stat st;
	ck_assert_int_eq(k2fs_tree_lookup(&t, d.ino, "000", &n), 0);
	k2fs_tree_stat(&t, &n, &st);
	ck_assert(S_ISREG(st.st_mode));
	ck_assert_int_eq(st.st_size, 102400);
	ck_assert_int_eq(k2fs_tree_lookup(&t, n.ino, "x", &d), -ENOTDIR);
	ck_assert_int_eq(k2fs_tree_lookup(&t, K2FS_INO_ROOT, "config.json", &n), 0);
	ck_assert_int_eq(n.kind, K2FS_NODE_FILE);
	ck_assert_int_eq(k2fs_tree_lookup(&t, K2FS_INO_DENSE, "model.norm.weight", &n), 0);
	ck_assert_int_eq(n.kind, K2FS_NODE_DENSE);
	ck_assert_int_eq(k2fs_tree_lookup(&t, K2FS_INO_ROOT, "model.norm.weight", &n), -ENOENT);
	ck_assert_int_eq(k2fs_tree_node(&t, t.entry_base + t.n_entries, &n), -ENOENT);
	/* listings: root = dense, experts, config.json; a layer = 000 … 005 */
	char name[64];
	ck_assert_int_eq(k2fs_tree_node(&t, K2FS_INO_ROOT, &d), 0);
	ck_assert_int_eq(k2fs_tree_child(&t, &d, 0, &n, name, sizeof(name)), 0);
	ck_assert_str_eq(name, "dense");
	ck_assert_int_eq(k2fs_tree_child(&t, &d, 2, &n, name, sizeof(name)), 0);
	ck_assert_str_eq(name, "config.json");
	ck_assert_int_eq(k2fs_tree_child(&t, &d, 3, &n, name, sizeof(name)), -ENOENT);
	ck_assert_int_eq(k2fs_tree_node(&t, k2fs_tree_layer_ino(&t, 1), &d), 0);
	for (int i = 0; i < EXPERTS; i++) {
		char want[16];
		snprintf(want, sizeof(want), "%03d", i);
		ck_assert_int_eq(k2fs_tree_child(&t, &d, (size_t)i, &n, name, sizeof(name)), 0);
		ck_assert_str_eq(name, want);
	}
	ck_assert_int_eq(k2fs_tree_child(&t, &d, EXPERTS, &n, name, sizeof(name)), -ENOENT);
	k2fs_tree_free(&t);
	k2p_pack_close(p);
	remove_pack();
}
END_TEST

/* ---------------------------------------------------------------- cache */

static const uint32_t codecs[] = {K2_CODEC_NONE, K2_CODEC_LZ4, K2_CODEC_ZSTD};

START_TEST(test_cache_reads)
{
	write_pack(codecs[_i]);
	k2p_pack *p = open_pack();
	struct k2fs_cache *c = open_cache(p, 64 << 20);
	k2_err err = {{0}};
	uint8_t *ref = malloc(102400), *got = malloc(102400);
	uint64_t seed = 7;
	int n_experts = 0;
	for (uint32_t l = FIRST; l < FIRST + LAYERS; l++)
		for (uint32_t e = 0; e < EXPERTS; e++) {
			size_t ent = expert_entry(p, l, e);
			ck_assert_int_eq(k2p_entry_read(p, k2p_entry_at(p, ent), 0, ref, 102400, &err),
					 102400);
			/* uneven pieces across block boundaries */
			uint64_t off = 0;
			while (off < 102400) {
				size_t len = 1 + splitmix(&seed) % 40000;
				int r = cache_read(c, ent, off, len, got + off);
				ck_assert_int_gt(r, 0);
				off += (uint64_t)r;
			}
			ck_assert_mem_eq(got, ref, 102400);
			/* past the end */
			ck_assert_int_eq(cache_read(c, ent, 102400, 10, got), 0);
			ck_assert_int_eq(cache_read(c, ent, 102300, 1000, got), 100);
			ck_assert_mem_eq(got, ref + 102300, 100);
			n_experts++;
		}
	struct k2fs_stats st;
	k2fs_cache_stats(c, &st);
	ck_assert_uint_eq(st.loads, (uint64_t)n_experts); /* readahead all: one load each */
	ck_assert_uint_eq(st.errors, 0);
	ck_assert_uint_eq(st.cache_used, (uint64_t)n_experts * 102400);
	ck_assert_uint_eq(st.bytes_decompressed, (uint64_t)n_experts * 102400);
	ck_assert_uint_gt(st.hits, 0);
	if (codecs[_i] != K2_CODEC_NONE)
		ck_assert_uint_lt(st.bytes_read, st.bytes_decompressed);
	struct k2fs_slot_info info;
	k2fs_cache_info(c, expert_entry(p, FIRST, 0), &info);
	ck_assert_int_eq(info.state, K2FS_STATE_RAM);
	ck_assert_uint_eq(info.loads, 1);
	free(ref);
	free(got);
	k2fs_cache_destroy(c);
	k2p_pack_close(p);
	remove_pack();
}
END_TEST

START_TEST(test_cache_budget)
{
	write_pack(K2_CODEC_ZSTD);
	k2p_pack *p = open_pack();
	struct k2fs_cache *c = open_cache(p, 3 * 102400);
	uint8_t *got = malloc(102400);
	for (uint32_t l = FIRST; l < FIRST + LAYERS; l++)
		for (uint32_t e = 0; e < EXPERTS; e++) {
			ck_assert_int_eq(cache_read(c, expert_entry(p, l, e), 0, 102400, got), 102400);
			struct k2fs_stats st;
			k2fs_cache_stats(c, &st);
			ck_assert_uint_le(st.cache_used, 3 * 102400);
		}
	struct k2fs_stats st;
	k2fs_cache_stats(c, &st);
	ck_assert_uint_eq(st.evictions, LAYERS * EXPERTS - 3);
	/* the three most recent stay, the first is gone (LRU) */
	struct k2fs_slot_info info;
	k2fs_cache_info(c, expert_entry(p, FIRST + LAYERS - 1, EXPERTS - 1), &info);
	ck_assert_int_eq(info.state, K2FS_STATE_RAM);
	k2fs_cache_info(c, expert_entry(p, FIRST, 0), &info);
	ck_assert_int_eq(info.state, K2FS_STATE_DISK);
	/* touching an old one makes it the most recent */
	ck_assert_int_eq(cache_read(c, expert_entry(p, FIRST + 1, 3), 0, 10, got), 10);
	ck_assert_int_eq(cache_read(c, expert_entry(p, FIRST, 1), 0, 10, got), 10);
	k2fs_cache_info(c, expert_entry(p, FIRST + 1, 3), &info);
	ck_assert_int_eq(info.state, K2FS_STATE_RAM);
	k2fs_cache_info(c, expert_entry(p, FIRST + 1, 4), &info);
	ck_assert_int_eq(info.state, K2FS_STATE_DISK);
	/* lowering the limit evicts at once */
	k2fs_cache_set_limit(c, 102400);
	k2fs_cache_stats(c, &st);
	ck_assert_uint_le(st.cache_used, 102400);
	ck_assert_uint_eq(st.cache_limit, 102400);
	free(got);
	k2fs_cache_destroy(c);
	k2p_pack_close(p);
	remove_pack();
}
END_TEST

START_TEST(test_cache_hints)
{
	write_pack(K2_CODEC_LZ4);
	k2p_pack *p = open_pack();
	struct k2fs_cache *c = open_cache(p, 4 * 102400);
	size_t a = expert_entry(p, FIRST, 1), b = expert_entry(p, FIRST, 2);
	struct k2fs_slot_info info;
	k2fs_cache_info(c, a, &info);
	ck_assert_int_eq(info.state, K2FS_STATE_DISK);
	ck_assert_int_eq(info.hint, K2FS_HINT_NONE);
	ck_assert_int_eq(k2fs_cache_hint(c, a, K2FS_HINT_WILLNEED), 0);
	ck_assert_int_eq(wait_state(c, a, K2FS_STATE_RAM), K2FS_STATE_RAM);
	k2fs_cache_info(c, a, &info);
	ck_assert_int_eq(info.hint, K2FS_HINT_WILLNEED);
	ck_assert_uint_eq(info.loads, 1);
	/* again: already cached, no load */
	ck_assert_int_eq(k2fs_cache_hint(c, a, K2FS_HINT_WILLNEED), 0);
	k2fs_cache_info(c, a, &info);
	ck_assert_uint_eq(info.loads, 1);
	/* a read after the prefetch counts as prefetch_used, and as a hit */
	uint8_t buf[64];
	ck_assert_int_eq(cache_read(c, a, 0, 64, buf), 64);
	struct k2fs_stats st;
	k2fs_cache_stats(c, &st);
	ck_assert_uint_eq(st.prefetch_used, 1);
	ck_assert_uint_eq(st.hits, 1);
	ck_assert_uint_eq(st.prefetch_requests, 2);
	/* pin survives a limit of 0; unpin lets it go */
	ck_assert_int_eq(k2fs_cache_hint(c, b, K2FS_HINT_PIN), 0);
	ck_assert_int_eq(wait_state(c, b, K2FS_STATE_PINNED), K2FS_STATE_PINNED);
	k2fs_cache_set_limit(c, 0);
	k2fs_cache_info(c, b, &info);
	ck_assert_int_eq(info.state, K2FS_STATE_PINNED);
	k2fs_cache_info(c, a, &info);
	ck_assert_int_eq(info.state, K2FS_STATE_DISK);
	k2fs_cache_stats(c, &st);
	ck_assert_uint_eq(st.cache_used, 102400);
	ck_assert_uint_eq(st.pinned_bytes, 102400);
	ck_assert_int_eq(k2fs_cache_hint(c, b, K2FS_HINT_UNPIN), 0);
	k2fs_cache_info(c, b, &info);
	ck_assert_int_eq(info.state, K2FS_STATE_DISK);
	/* dontneed drops */
	k2fs_cache_set_limit(c, 4 * 102400);
	ck_assert_int_eq(cache_read(c, b, 0, 64, buf), 64);
	/* the read returns once its block is decoded; the rest may still load */
	ck_assert_int_eq(wait_state(c, b, K2FS_STATE_RAM), K2FS_STATE_RAM);
	ck_assert_int_eq(k2fs_cache_hint(c, b, K2FS_HINT_DONTNEED), 0);
	k2fs_cache_info(c, b, &info);
	ck_assert_int_eq(info.state, K2FS_STATE_DISK);
	k2fs_cache_stats(c, &st);
	ck_assert_uint_eq(st.cache_used, 0);
	/* willneed many */
	size_t many[3] = {expert_entry(p, FIRST, 3), expert_entry(p, FIRST + 1, 0),
			  expert_entry(p, FIRST + 1, 5)};
	k2fs_cache_willneed_many(c, many, 3);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(wait_state(c, many[i], K2FS_STATE_RAM), K2FS_STATE_RAM);
	k2fs_cache_info(c, expert_entry(p, FIRST + 1, 1), &info);
	ck_assert_int_eq(info.state, K2FS_STATE_DISK);
	k2fs_cache_destroy(c);
	k2p_pack_close(p);
	remove_pack();
}
END_TEST

START_TEST(test_cache_partial)
{
	write_pack(K2_CODEC_ZSTD);
	k2p_pack *p = open_pack();
	struct k2fs_cache *c = open_cache(p, 64 << 20);
	size_t a = expert_entry(p, FIRST + 1, 2);
	k2_err err = {{0}};
	uint8_t ref[102400], got[200];
	ck_assert_int_eq(k2p_entry_read(p, k2p_entry_at(p, a), 0, ref, sizeof(ref), &err), 102400);
	k2fs_cache_set_readahead(c, a, 0);
	ck_assert_int_eq(cache_read(c, a, 20000, 100, got), 100);
	ck_assert_mem_eq(got, ref + 20000, 100);
	struct k2fs_stats st;
	k2fs_cache_stats(c, &st);
	ck_assert_uint_eq(st.cache_used, BLOCK);     /* block 1 only */
	/* spanning blocks 2 and 3 loads both */
	ck_assert_int_eq(cache_read(c, a, 3 * BLOCK - 50, 100, got), 100);
	ck_assert_mem_eq(got, ref + 3 * BLOCK - 50, 100);
	k2fs_cache_stats(c, &st);
	ck_assert_uint_eq(st.cache_used, 3 * BLOCK);
	/* read-ahead of the layer applies when the file has none of its own */
	k2fs_cache_set_readahead(c, a, K2FS_RA_INHERIT);
	k2fs_cache_set_layer_readahead(c, FIRST + 1, 20000);
	ck_assert_uint_eq(k2fs_cache_layer_readahead(c, FIRST + 1), 20000);
	ck_assert_uint_eq(k2fs_cache_layer_readahead(c, FIRST), K2FS_RA_ALL);
	ck_assert_int_eq(cache_read(c, a, 4 * BLOCK, 10, got), 10); /* blocks 4 and 5 */
	k2fs_cache_stats(c, &st);
	ck_assert_uint_eq(st.cache_used, 5 * BLOCK);
	struct k2fs_slot_info info;
	k2fs_cache_info(c, a, &info);
	ck_assert_uint_eq(info.effective_ra, 20000);
	ck_assert_uint_eq(info.loads, 3);
	k2fs_cache_destroy(c);
	k2p_pack_close(p);
	remove_pack();
}
END_TEST

START_TEST(test_cache_damage)
{
	write_pack(codecs[_i]);
	k2p_pack *p = open_pack();
	size_t a = expert_entry(p, FIRST, 4);
	const k2p_block *b = k2p_entry_block(p, k2p_entry_at(p, a), 3);
	uint64_t at = b->offset + b->stored_bytes / 2;
	k2p_pack_close(p);
	FILE *f = fopen(pack_path, "r+b");
	ck_assert_ptr_nonnull(f);
	fseek(f, (long)at, SEEK_SET);
	int ch = fgetc(f);
	fseek(f, (long)at, SEEK_SET);
	fputc(ch ^ 0x40, f);
	fclose(f);
	p = open_pack();
	struct k2fs_cache *c = open_cache(p, 64 << 20);
	k2_err err = {{0}};
	uint8_t ref[102400], got[102400];
	ck_assert_int_eq(cache_read(c, a, 0, 102400, got), -EIO);
	ck_assert_int_eq(cache_read(c, a, 3 * BLOCK + 5, 10, got), -EIO);
	ck_assert_int_eq(k2p_entry_read(p, k2p_entry_at(p, a), 0, ref, 3 * BLOCK, &err), 3 * BLOCK);
	ck_assert_int_eq(cache_read(c, a, 0, 3 * BLOCK, got), 3 * BLOCK);
	ck_assert_mem_eq(got, ref, 3 * BLOCK);
	ck_assert_int_eq(cache_read(c, a, 4 * BLOCK, BLOCK, got), BLOCK);
	size_t o = expert_entry(p, FIRST, 5);
	ck_assert_int_eq(k2p_entry_read(p, k2p_entry_at(p, o), 0, ref, 102400, &err), 102400);
	ck_assert_int_eq(cache_read(c, o, 0, 102400, got), 102400);
	ck_assert_mem_eq(got, ref, 102400);
	struct k2fs_stats st;
	k2fs_cache_stats(c, &st);
	ck_assert_uint_eq(st.errors, 1);
	/* dontneed and read again: the damage is found again. The reads above
	 * return before the rest of the expert has loaded; a dontneed on a loading
	 * expert only marks it to drop, so let the load end first. */
	struct k2fs_slot_info info;
	for (int i = 0; i < 5000; i++) {
		k2fs_cache_info(c, a, &info);
		if (info.state != K2FS_STATE_LOADING)
			break;
		usleep(1000);
	}
	ck_assert_int_ne(info.state, K2FS_STATE_LOADING);
	ck_assert_int_eq(k2fs_cache_hint(c, a, K2FS_HINT_DONTNEED), 0);
	ck_assert_int_eq(cache_read(c, a, 3 * BLOCK, 10, got), -EIO);
	k2fs_cache_stats(c, &st);
	ck_assert_uint_eq(st.errors, 2);
	k2fs_cache_destroy(c);
	k2p_pack_close(p);
	remove_pack();
}
END_TEST

/* Destroying the cache with loads queued and in flight: started loads finish,
 * queued ones are dropped, nothing leaks or crashes (run it under ASan). */
START_TEST(test_cache_shutdown)
{
	write_pack(codecs[_i]);
	k2p_pack *p = open_pack();
	struct k2fs_cache_opts o = {.limit = 64 << 20, .threads = 1, .iodepth = 1,
				    .chunk = 4096, .readahead = K2FS_RA_ALL};
	struct k2fs_cache *c;
	k2_err err = {{0}};
	ck_assert_msg(k2fs_cache_create(p, &o, &c, &err) == 0, "%s", err.msg);
	size_t all[LAYERS * EXPERTS], n = 0;
	for (uint32_t l = FIRST; l < FIRST + LAYERS; l++)
		for (uint32_t e = 0; e < EXPERTS; e++)
			all[n++] = expert_entry(p, l, e);
	k2fs_cache_willneed_many(c, all, n);
	struct k2fs_stats st;
	k2fs_cache_stats(c, &st);
	ck_assert_uint_eq(st.loads, n);
	ck_assert_uint_eq(st.cache_used, n * 102400);
	k2fs_cache_destroy(c);
	k2p_pack_close(p);
	remove_pack();
}
END_TEST

/* ---------------------------------------------------------------- xattr layer */


static void fs_open(struct k2fs_fs *fs)
{
	memset(fs, 0, sizeof(*fs));
	fs->pack = open_pack();
	k2_err err = {{0}};
	ck_assert_int_eq(k2fs_tree_build(&fs->tree, fs->pack, &err), 0);
	fs->cache = open_cache(fs->pack, 64 << 20);
	pthread_mutex_init(&fs->hint_lock, NULL);
	fs->layer_prefetch = calloc(fs->tree.n_layers, sizeof(char *));
}

static void fs_close(struct k2fs_fs *fs)
{
	k2fs_cache_destroy(fs->cache);
	for (uint32_t l = 0; l < fs->tree.n_layers; l++)
		free(fs->layer_prefetch[l]);
	free(fs->layer_prefetch);
	free(fs->root_prefetch);
	k2fs_tree_free(&fs->tree);
	k2p_pack_close(fs->pack);
}

static char *get(struct k2fs_fs *fs, const struct k2fs_node *n, const char *name, int *rc)
{
	char *v = NULL;
	size_t len = 0;
	*rc = k2fs_xattr_get(fs, n, name, &v, &len);
	if (*rc)
		return NULL;
	char *s = strndup(v, len);
	free(v);
	return s;
}

#define EXPECT_VALUE(fs, n, name, want)                                  \
	do {                                                             \
		int rc_;                                                 \
		char *v_ = get(fs, n, name, &rc_);                       \
		ck_assert_int_eq(rc_, 0);                                \
		ck_assert_str_eq(v_, want);                              \
		free(v_);                                                \
	} while (0)

START_TEST(test_xattr)
{
	write_pack(K2_CODEC_LZ4);
	struct k2fs_fs fs;
	fs_open(&fs);
	struct k2fs_node root, layer, ex, dense, file;
	ck_assert_int_eq(k2fs_tree_node(&fs.tree, K2FS_INO_ROOT, &root), 0);
	ck_assert_int_eq(k2fs_tree_lookup(&fs.tree, K2FS_INO_EXPERTS, "001", &layer), 0);
	ck_assert_int_eq(k2fs_tree_lookup(&fs.tree, layer.ino, "002", &ex), 0);
	ck_assert_int_eq(k2fs_tree_lookup(&fs.tree, K2FS_INO_DENSE, "model.norm.weight", &dense), 0);
	ck_assert_int_eq(k2fs_tree_lookup(&fs.tree, K2FS_INO_ROOT, "config.json", &file), 0);

	char names[512];
	long n = k2fs_xattr_list(&fs, &ex, names, sizeof(names));
	ck_assert_int_gt(n, 0);
	int count = 0;
	for (long i = 0; i < n; i += (long)strlen(names + i) + 1)
		count++;
	ck_assert_int_eq(count, 8);
	ck_assert_int_eq(k2fs_xattr_list(&fs, &ex, NULL, 0), n);
	ck_assert_int_eq(k2fs_xattr_list(&fs, &ex, names, 10), -ERANGE);
	ck_assert_int_eq(k2fs_xattr_list(&fs, &file, names, sizeof(names)), 0);

	EXPECT_VALUE(&fs, &ex, "user.k2.format", "bf16");
	EXPECT_VALUE(&fs, &ex, "user.k2.state", "disk");
	EXPECT_VALUE(&fs, &ex, "user.k2.prefetch", "none");
	EXPECT_VALUE(&fs, &ex, "user.k2.readahead", "all");
	EXPECT_VALUE(&fs, &ex, "user.k2.hits", "0");
	EXPECT_VALUE(&fs, &dense, "user.k2.dtype", "BF16");
	EXPECT_VALUE(&fs, &dense, "user.k2.shape", "64,48");
	EXPECT_VALUE(&fs, &layer, "user.k2.prefetch", "none");
	int rc;
	ck_assert_ptr_null(get(&fs, &ex, "user.k2.nope", &rc));
	ck_assert_int_eq(rc, -ENODATA);
	ck_assert_ptr_null(get(&fs, &root, "user.k2.state", &rc));
	ck_assert_int_eq(rc, -ENODATA);
	ck_assert_ptr_null(get(&fs, &file, "user.k2.dtype", &rc));
	ck_assert_int_eq(rc, -ENODATA);

	ck_assert_int_eq(k2fs_xattr_set(&fs, &ex, "user.k2.nope", "1", 1), -ENOTSUP);
	ck_assert_int_eq(k2fs_xattr_set(&fs, &ex, "user.k2.state", "ram", 3), -EPERM);
	ck_assert_int_eq(k2fs_xattr_set(&fs, &root, "user.k2.cache_used", "1", 1), -EPERM);
	ck_assert_int_eq(k2fs_xattr_set(&fs, &dense, "user.k2.shape", "1", 1), -EPERM);
	ck_assert_int_eq(k2fs_xattr_set(&fs, &file, "user.k2.prefetch", "pin", 3), -ENOTSUP);
	ck_assert_int_eq(k2fs_xattr_remove(&fs, &ex, "user.k2.readahead"), -EPERM);
	ck_assert_int_eq(k2fs_xattr_remove(&fs, &ex, "user.k2.nope"), -ENODATA);

	ck_assert_int_eq(k2fs_xattr_set(&fs, &ex, "user.k2.readahead", "64K", 3), 0);
	EXPECT_VALUE(&fs, &ex, "user.k2.readahead", "64K");
	ck_assert_int_eq(k2fs_xattr_set(&fs, &ex, "user.k2.readahead", "64Q", 3), -EINVAL);
	EXPECT_VALUE(&fs, &ex, "user.k2.readahead", "64K");
	ck_assert_int_eq(k2fs_xattr_set(&fs, &ex, "user.k2.prefetch", "later", 5), -EINVAL);
	EXPECT_VALUE(&fs, &ex, "user.k2.prefetch", "none");

	/* a layer list with one index out of range changes nothing */
	ck_assert_int_eq(k2fs_xattr_set(&fs, &layer, "user.k2.prefetch", "0,3,6", 5), -EINVAL);
	EXPECT_VALUE(&fs, &layer, "user.k2.prefetch", "none");
	struct k2fs_slot_info info;
	size_t e0 = expert_entry(fs.pack, 1, 0), e3 = expert_entry(fs.pack, 1, 3);
	usleep(20000);
	k2fs_cache_info(fs.cache, e0, &info);
	ck_assert_int_eq(info.state, K2FS_STATE_DISK);
	ck_assert_int_eq(k2fs_xattr_set(&fs, &layer, "user.k2.prefetch", "0,3", 3), 0);
	EXPECT_VALUE(&fs, &layer, "user.k2.prefetch", "0,3");
	ck_assert_int_eq(wait_state(fs.cache, e0, K2FS_STATE_RAM), K2FS_STATE_RAM);
	ck_assert_int_eq(wait_state(fs.cache, e3, K2FS_STATE_RAM), K2FS_STATE_RAM);
	/* root pairs */
	size_t f = expert_entry(fs.pack, 2, 5);
	ck_assert_int_eq(k2fs_xattr_set(&fs, &root, "user.k2.prefetch", "2/5,3/1", 7), -EINVAL);
	ck_assert_int_eq(k2fs_xattr_set(&fs, &root, "user.k2.prefetch", "2/5,1/1", 7), 0);
	EXPECT_VALUE(&fs, &root, "user.k2.prefetch", "2/5,1/1");
	ck_assert_int_eq(wait_state(fs.cache, f, K2FS_STATE_RAM), K2FS_STATE_RAM);
	/* cache_limit */
	ck_assert_int_eq(k2fs_xattr_set(&fs, &root, "user.k2.cache_limit", "1x", 2), -EINVAL);
	EXPECT_VALUE(&fs, &root, "user.k2.cache_limit", "67108864");
	ck_assert_int_eq(k2fs_xattr_set(&fs, &root, "user.k2.cache_limit", "200K", 4), 0);
	EXPECT_VALUE(&fs, &root, "user.k2.cache_limit", "204800");
	char *used = get(&fs, &root, "user.k2.cache_used", &rc);
	ck_assert_uint_le(strtoull(used, NULL, 10), 204800);
	free(used);
	/* stats: one line of JSON with every counter */
	char *js = get(&fs, &root, "user.k2.stats", &rc);
	ck_assert_ptr_nonnull(js);
	ck_assert_ptr_null(strchr(js, '\n'));
	json_error_t je;
	json_t *o = json_loads(js, 0, &je);
	ck_assert_msg(o != NULL, "%s", je.text);
	static const char *const keys[] = {"hits", "misses", "loads", "evictions", "bytes_read",
					   "bytes_decompressed", "prefetch_requests",
					   "prefetch_used", "errors", "cache_used", "cache_limit"};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		ck_assert_msg(json_is_integer(json_object_get(o, keys[i])), "%s", keys[i]);
	ck_assert_int_eq(json_integer_value(json_object_get(o, "loads")), 4);
	ck_assert_int_eq(json_integer_value(json_object_get(o, "prefetch_requests")), 4);
	json_decref(o);
	free(js);
	fs_close(&fs);
	remove_pack();
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("k2fs_cache");
	TCase *t = tcase_create("values");
	tcase_add_test(t, test_parse_size);
	tcase_add_test(t, test_parse_readahead_hint);
	tcase_add_test(t, test_parse_lists);
	tcase_add_test(t, test_format_size);
	suite_add_tcase(s, t);
	t = tcase_create("tree");
	tcase_add_test(t, test_tree);
	suite_add_tcase(s, t);
	t = tcase_create("cache");
	tcase_set_timeout(t, 60);
	tcase_add_loop_test(t, test_cache_reads, 0, 3);
	tcase_add_test(t, test_cache_budget);
	tcase_add_test(t, test_cache_hints);
	tcase_add_test(t, test_cache_partial);
	tcase_add_loop_test(t, test_cache_damage, 0, 3);
	tcase_add_loop_test(t, test_cache_shutdown, 0, 3);
	suite_add_tcase(s, t);
	t = tcase_create("xattr");
	tcase_set_timeout(t, 60);
	tcase_add_test(t, test_xattr);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *r = srunner_create(suite());
	srunner_run_all(r, CK_NORMAL);
	int failed = srunner_ntests_failed(r);
	srunner_free(r);
	return failed ? 1 : 0;
}
