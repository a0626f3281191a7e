/* test_safetensors.c — the safetensors reader and writer (layout/safetensors*.c):
 * every fixture checkpoint parses with the tensors, dtypes and shapes the
 * fixtures are known to hold and payloads read back right (the sharded bf16
 * fixture against the single-file int4 fixture, which shares its non-expert
 * weights); writer → reader round trips; and each kind of bad file or index
 * is an error naming the file. Bad inputs are built in a temporary directory. */
#define _GNU_SOURCE
#include "layout.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"

static const k2st_tensor *expect_tensor(const k2st_checkpoint *ck, const char *name,
					uint32_t dtype, uint32_t ndim, uint64_t d0, uint64_t d1)
{
	const k2st_tensor *t = k2st_find(ck, name);
	ck_assert_msg(t != NULL, "%s missing", name);
	ck_assert_str_eq(t->name, name);
	ck_assert_msg(t->dtype == dtype, "%s: dtype %s", name, k2_dtype_name(t->dtype));
	ck_assert_uint_eq(t->ndim, ndim);
	if (ndim > 0)
		ck_assert_uint_eq(t->shape[0], d0);
	if (ndim > 1)
		ck_assert_uint_eq(t->shape[1], d1);
	uint64_t elems = 1;
	for (uint32_t i = 0; i < ndim; i++)
		elems *= t->shape[i];
	ck_assert_uint_eq(t->bytes, elems * k2_dtype_size(dtype));
	return t;
}

/* Each shard's payloads, as Python writes them, end exactly at the file end
 * and start right after the header. */
static void check_shards_dense(const k2st_checkpoint *ck, int n_shards)
{
	for (int s = 0; s < n_shards; s++) {
		const char *path = k2st_shard_path(ck, s);
		ck_assert_ptr_nonnull(path);
		struct stat st;
		ck_assert_int_eq(stat(path, &st), 0);
		uint64_t lo = UINT64_MAX, hi = 0, sum = 0;
		for (size_t i = 0; i < k2st_count(ck); i++) {
			const k2st_tensor *t = k2st_at(ck, i);
			if (t->shard != s)
				continue;
			lo = t->offset < lo ? t->offset : lo;
			hi = t->offset + t->bytes > hi ? t->offset + t->bytes : hi;
			sum += t->bytes;
		}
		ck_assert_uint_eq(hi, (uint64_t)st.st_size);
		ck_assert_uint_eq(hi - lo, sum);
		ck_assert_uint_eq(lo % 8, 0);
	}
	ck_assert_ptr_null(k2st_shard_path(ck, n_shards));
}

START_TEST(test_fixture_bf16_sharded)
{
	k2st_checkpoint *ck = tu_fixture_open("k2-tiny-bf16");
	/* 3 (embed, norm, lm_head) + layer 0: 9 + 3 dense mlp + 3 MoE layers × (9 +
	 * router 2 + 96 experts + 3 shared) */
	ck_assert_uint_eq(k2st_count(ck), 345);
	expect_tensor(ck, "model.embed_tokens.weight", K2_DTYPE_BF16, 2, 1024, 256);
	expect_tensor(ck, "lm_head.weight", K2_DTYPE_BF16, 2, 1024, 256);
	expect_tensor(ck, "model.layers.1.mlp.gate.e_score_correction_bias", K2_DTYPE_F32, 1, 32, 0);
	expect_tensor(ck, "model.layers.3.mlp.experts.31.down_proj.weight", K2_DTYPE_BF16, 2, 256, 64);
	expect_tensor(ck, "model.layers.0.self_attn.q_b_proj.weight", K2_DTYPE_BF16, 2, 192, 128);
	expect_tensor(ck, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", K2_DTYPE_BF16, 2, 80, 256);
	ck_assert_ptr_null(k2st_find(ck, "model.layers.0.mlp.experts.0.up_proj.weight"));
	ck_assert_ptr_null(k2st_find(ck, ""));
	ck_assert_ptr_null(k2st_at(ck, 345));
	int in_second = 0;
	for (size_t i = 0; i < k2st_count(ck); i++) {
		const k2st_tensor *t = k2st_at(ck, i);
		EXPECT(k2st_find(ck, t->name) == t, "%s not found by name", t->name);
		in_second += t->shard == 1;
	}
	ck_assert_int_gt(in_second, 0);
	ck_assert_ptr_nonnull(strstr(k2st_shard_path(ck, 0), "model-00001-of-00002.safetensors"));
	ck_assert_ptr_nonnull(strstr(k2st_shard_path(ck, 1), "model-00002-of-00002.safetensors"));
	check_shards_dense(ck, 2);
	char dir[1024];
	snprintf(dir, sizeof(dir), "%s/k2-tiny-bf16/model", tu_fixtures());
	ck_assert_str_eq(k2st_dir(ck), dir);

	/* Norm weights were drawn as 1 + 0.1·N(0,1): all near 1. */
	const k2st_tensor *t = k2st_find(ck, "model.norm.weight");
	uint16_t *v = tu_tensor_read(ck, t);
	for (size_t i = 0; i < 256; i++) {
		float f = k2q_bf16_to_f32(v[i]);
		ck_assert_msg(f > 0.4f && f < 1.6f, "norm[%zu] = %g", i, (double)f);
	}
	free(v);

	/* The int4 fixture stores the same non-expert weights in one file: every
	 * bf16 tensor they share must read back byte for byte. */
	k2st_checkpoint *i4 = tu_fixture_open("k2-tiny-int4");
	size_t same = 0;
	for (size_t i = 0; i < k2st_count(ck); i++) {
		const k2st_tensor *a = k2st_at(ck, i), *b = k2st_find(i4, a->name);
		if (!b)
			continue;
		ck_assert_uint_eq(a->bytes, b->bytes);
		void *x = tu_tensor_read(ck, a), *y = tu_tensor_read(i4, b);
		ck_assert_msg(memcmp(x, y, a->bytes) == 0, "%s differs", a->name);
		free(x);
		free(y);
		same++;
	}
	ck_assert_uint_eq(same, 345 - 288); /* all but the routed experts */
	k2st_close(i4);
	k2st_close(ck);
}
END_TEST

START_TEST(test_fixture_fp8_int4_reference)
{
	k2st_checkpoint *ck = tu_fixture_open("k2-tiny-fp8");
	ck_assert_uint_eq(k2st_count(ck), 345 + 320);
	expect_tensor(ck, "model.layers.1.mlp.experts.0.gate_proj.weight", K2_DTYPE_F8_E4M3, 2, 64, 256);
	expect_tensor(ck, "model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv", K2_DTYPE_F32, 2, 1, 2);
	expect_tensor(ck, "model.layers.0.mlp.down_proj.weight_scale_inv", K2_DTYPE_F32, 2, 2, 4);
	expect_tensor(ck, "model.embed_tokens.weight", K2_DTYPE_BF16, 2, 1024, 256);
	check_shards_dense(ck, 1);
	k2st_close(ck);

	ck = tu_fixture_open("k2-tiny-int4");
	ck_assert_uint_eq(k2st_count(ck), 345 + 2 * 288);
	expect_tensor(ck, "model.layers.2.mlp.experts.5.up_proj.weight_packed", K2_DTYPE_I32, 2, 64, 32);
	expect_tensor(ck, "model.layers.2.mlp.experts.5.up_proj.weight_scale", K2_DTYPE_BF16, 2, 64, 8);
	expect_tensor(ck, "model.layers.2.mlp.experts.5.down_proj.weight_packed", K2_DTYPE_I32, 2, 256, 8);
	const k2st_tensor *t = expect_tensor(ck, "model.layers.2.mlp.experts.5.down_proj.weight_shape",
					     K2_DTYPE_I32, 1, 2, 0);
	int32_t *shape = tu_tensor_read(ck, t);
	ck_assert_int_eq(shape[0], 256);
	ck_assert_int_eq(shape[1], 64);
	free(shape);
	ck_assert_ptr_null(k2st_find(ck, "model.layers.2.mlp.experts.5.down_proj.weight"));
	check_shards_dense(ck, 1);
	k2st_close(ck);

	/* A single .safetensors path. */
	char path[1024];
	snprintf(path, sizeof(path), "%s/k2-tiny-bf16/reference.safetensors", tu_fixtures());
	ck = tu_checkpoint_open(path);
	expect_tensor(ck, "input_ids", K2_DTYPE_I64, 1, 24, 0);
	expect_tensor(ck, "logits", K2_DTYPE_F32, 2, 24, 1024);
	expect_tensor(ck, "route.layer1.gate_out2", K2_DTYPE_I64, 2, 24, 8);
	snprintf(path, sizeof(path), "%s/k2-tiny-bf16", tu_fixtures());
	ck_assert_str_eq(k2st_dir(ck), path);
	k2st_close(ck);

	/* One shard on its own, and the index file named directly. */
	snprintf(path, sizeof(path), "%s/k2-tiny-bf16/model/model-00002-of-00002.safetensors",
		 tu_fixtures());
	ck = tu_checkpoint_open(path);
	ck_assert_uint_gt(k2st_count(ck), 0);
	ck_assert_uint_lt(k2st_count(ck), 345);
	k2st_close(ck);
	snprintf(path, sizeof(path), "%s/k2-tiny-bf16/model/model.safetensors.index.json", tu_fixtures());
	ck = tu_checkpoint_open(path);
	ck_assert_uint_eq(k2st_count(ck), 345);
	k2st_close(ck);
}
END_TEST

/* ---------------------------------------------------------------- bad files */

/* Writes a safetensors file by hand: the header length field (`hlen_field`,
 * or the real length when UINT64_MAX), the header and `data_bytes` bytes. */
static void write_raw(const char *path, const char *header, uint64_t hlen_field,
		      size_t data_bytes)
{
	FILE *f = fopen(path, "wb");
	ck_assert_ptr_nonnull(f);
	uint64_t n = hlen_field == UINT64_MAX ? strlen(header) : hlen_field;
	uint8_t le[8];
	for (int i = 0; i < 8; i++)
		le[i] = (uint8_t)(n >> (8 * i));
	fwrite(le, 1, 8, f);
	fputs(header, f);
	for (size_t i = 0; i < data_bytes; i++)
		fputc((int)(i * 7 + 1) & 0xff, f);
	ck_assert_int_eq(fclose(f), 0);
}

static int count_cb(void *ctx, const k2st_tensor *t)
{
	(void)t;
	(*(int *)ctx)++;
	return 0;
}

/* The file at `path` must be refused, by k2st_open and by k2st_parse_buffer,
 * with one line naming it and containing `want`. */
static void expect_bad_file(const char *name, const char *want)
{
	const char *path = tu_tmp_path(name);
	k2st_checkpoint *ck = NULL;
	k2_err err = {{0}};
	int rc = k2st_open(path, &ck, &err);
	ck_assert_msg(rc < 0, "%s accepted", name);
	ck_assert_ptr_null(ck);
	ck_assert_msg(strstr(err.msg, name) != NULL, "file name not in: %s", err.msg);
	ck_assert_msg(strstr(err.msg, want) != NULL, "'%s' not in: %s", want, err.msg);
	ck_assert_msg(strchr(err.msg, '\n') == NULL, "not one line: %s", err.msg);

	size_t n;
	char *data = tu_read_file(path, &n);
	int calls = 0;
	memset(&err, 0, sizeof(err));
	rc = k2st_parse_buffer(data, n, name, count_cb, &calls, &err);
	ck_assert_int_eq(rc, -EINVAL);
	ck_assert_int_eq(calls, 0); /* nothing handed on from a bad header */
	ck_assert_msg(strstr(err.msg, name) && strstr(err.msg, want), "buffer: %s", err.msg);
	free(data);
}

#define T(name, dtype, shape, b, e) \
	"\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

/* Files k2st_open and k2st_parse_buffer refuse: name, header length field
 * (UINT64_MAX: the header's real length), data bytes after the header, the
 * header, and what the message must contain. */
static const struct {
	const char *name;
	uint64_t hlen_field;
	size_t data_bytes;
	const char *header, *want;
} bad_files[] = {
	{"hlen.safetensors", 1000, 16, "{}", "past the end of the file"},
	{"hlen_huge.safetensors", UINT64_MAX - 3, 16, "{}", "past the end of the file"},
	{"outside.safetensors", UINT64_MAX, 8,
	 "{" T("a", "U8", "[16]", 0, 16) "}",
	 "data_offsets [0,16] end past the file (data is 8 bytes)"},
	{"outside1.safetensors", UINT64_MAX, 8,
	 "{" T("a", "U8", "[9]", 0, 9) "}",
	 "data_offsets [0,9] end past the file (data is 8 bytes)"},
	{"overlap1.safetensors", UINT64_MAX, 16,
	 "{" T("a", "U8", "[8]", 0, 8) "," T("b", "U8", "[2]", 7, 9) "}", "overlap tensor a [0,8]"},
	{"overlap.safetensors", UINT64_MAX, 16,
	 "{" T("a", "U8", "[8]", 0, 8) "," T("b", "U8", "[8]", 4, 12) "}", "overlap"},
	{"overlap2.safetensors", UINT64_MAX, 16,
	 "{" T("a", "F32", "[4]", 0, 16) "," T("b", "U8", "[2]", 6, 8) "}", "overlap"},
	{"mismatch.safetensors", UINT64_MAX, 16,
	 "{" T("a", "F32", "[4]", 0, 8) "}", "shape needs 16"},
	{"dtype.safetensors", UINT64_MAX, 16,
	 "{" T("a", "Q3", "[4]", 0, 4) "}", "unsupported dtype \"Q3\""},
	{"json.safetensors", UINT64_MAX, 16, "{\"a\":{\"dtype\":", "malformed"},
	{"array.safetensors", UINT64_MAX, 16, "[1,2]", "not a JSON object"},
	{"dup.safetensors", UINT64_MAX, 16,
	 "{" T("a", "U8", "[4]", 0, 4) "," T("a", "U8", "[4]", 4, 8) "}", "duplicate"},
	{"negdim.safetensors", UINT64_MAX, 16, "{" T("a", "U8", "[-4]", 0, 4) "}", "shape[0]"},
	{"ndim.safetensors", UINT64_MAX, 16,
	 "{" T("a", "U8", "[1,1,1,1,1,1,1,1,1]", 0, 1) "}", "dimensions"},
	{"overflow.safetensors", UINT64_MAX, 16,
	 "{" T("a", "F32", "[1099511627776,1099511627776]", 0, 4) "}", "overflows"},
	{"backwards.safetensors", UINT64_MAX, 16,
	 "{" T("a", "U8", "[0]", 8, 4) "}", "end before begin"},
	{"offsets.safetensors", UINT64_MAX, 16,
	 "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0]}}", "data_offsets"},
	{"nodtype.safetensors", UINT64_MAX, 16,
	 "{\"a\":{\"shape\":[4],\"data_offsets\":[0,4]}}", "dtype"},
	{"meta.safetensors", UINT64_MAX, 0, "{\"__metadata__\":[1]}", "__metadata__"},
};

START_TEST(test_bad_files)
{
	write_raw(tu_tmp_path("short.safetensors"), "", UINT64_MAX, 0);
	truncate(tu_tmp_path("short.safetensors"), 5);
	expect_bad_file("short.safetensors", "too short");
	for (size_t i = 0; i < sizeof(bad_files) / sizeof(bad_files[0]); i++) {
		write_raw(tu_tmp_path(bad_files[i].name), bad_files[i].header,
			  bad_files[i].hlen_field, bad_files[i].data_bytes);
		expect_bad_file(bad_files[i].name, bad_files[i].want);
	}

	/* Still valid: zero-size tensors anywhere, padding spaces, gaps. */
	write_raw(tu_tmp_path("ok.safetensors"),
		  "{\"__metadata__\":{\"format\":\"pt\"}," T("z", "F32", "[0,3]", 4, 4) ","
		  T("a", "U8", "[2,2]", 0, 4) "," T("b", "I16", "[]", 6, 8) "}     ", UINT64_MAX, 8);
	k2st_checkpoint *ck = tu_checkpoint_open(tu_tmp_path("ok.safetensors"));
	ck_assert_uint_eq(k2st_count(ck), 3);
	const k2st_tensor *t = expect_tensor(ck, "b", K2_DTYPE_I16, 0, 0, 0);
	uint8_t b[2];
	ck_assert_int_eq(k2st_read(ck, t, b, NULL), 0);
	ck_assert_uint_eq(b[0], (6 * 7 + 1) & 0xff);
	ck_assert_uint_eq(b[1], (7 * 7 + 1) & 0xff);
	k2st_close(ck);

	/* A directory with neither model.safetensors nor an index. */
	k2_err err = {{0}};
	ck_assert_int_eq(k2st_open(tu_tmpdir, &ck, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, tu_tmpdir));
	ck_assert_int_lt(k2st_open(tu_tmp_path("nonexistent"), &ck, &err), 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "nonexistent"));
}
END_TEST

/* ---------------------------------------------------------------- index */

static void write_text(const char *path, const char *text)
{
	tu_write_file(path, text, strlen(text));
}

static void expect_bad_dir(const char *want1, const char *want2)
{
	k2st_checkpoint *ck = NULL;
	k2_err err = {{0}};
	ck_assert_msg(k2st_open(tu_tmpdir, &ck, &err) < 0, "accepted");
	ck_assert_ptr_null(ck);
	ck_assert_msg(strstr(err.msg, want1) != NULL, "'%s' not in: %s", want1, err.msg);
	if (want2)
		ck_assert_msg(strstr(err.msg, want2) != NULL, "'%s' not in: %s", want2, err.msg);
}

START_TEST(test_bad_index)
{
	write_raw(tu_tmp_path("s1.safetensors"), "{" T("a", "U8", "[4]", 0, 4) "," T("b", "U8", "[4]", 4, 8) "}",
		  UINT64_MAX, 8);
	write_raw(tu_tmp_path("s2.safetensors"), "{" T("c", "U8", "[4]", 0, 4) "}", UINT64_MAX, 4);
	const char *index = tu_tmp_path("model.safetensors.index.json");

	write_text(index, "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\","
			  "\"c\":\"s2.safetensors\"}}");
	k2st_checkpoint *ck = tu_checkpoint_open(tu_tmpdir);
	ck_assert_uint_eq(k2st_count(ck), 3);
	const k2st_tensor *c = k2st_find(ck, "c");
	ck_assert_int_eq(c->shard, 1);
	uint8_t v[4];
	ck_assert_int_eq(k2st_read(ck, c, v, NULL), 0);
	ck_assert_uint_eq(v[0], 1);
	ck_assert_uint_eq(v[3], 22);
	k2st_close(ck);

	/* A shard the index names is missing. */
	write_text(index, "{\"weight_map\":{\"a\":\"s1.safetensors\",\"c\":\"model-00002-of-00002.safetensors\"}}");
	expect_bad_dir("model-00002-of-00002.safetensors", "model.safetensors.index.json");
	/* A tensor absent from the shard the index names. */
	write_text(index, "{\"weight_map\":{\"a\":\"s1.safetensors\",\"zz\":\"s2.safetensors\"}}");
	expect_bad_dir("tensor zz", "s2.safetensors");
	expect_bad_dir("model.safetensors.index.json", "absent");
	/* A tensor in another shard than the index says. */
	write_text(index, "{\"weight_map\":{\"a\":\"s2.safetensors\",\"c\":\"s2.safetensors\","
			  "\"b\":\"s1.safetensors\"}}");
	expect_bad_dir("tensor a", "it is in");
	/* A bad shard is reported under its own name. */
	write_raw(tu_tmp_path("s3.safetensors"), "{" T("d", "U8", "[4]", 0, 4) "}", UINT64_MAX, 2);
	write_text(index, "{\"weight_map\":{\"a\":\"s1.safetensors\",\"d\":\"s3.safetensors\"}}");
	expect_bad_dir("s3.safetensors", "end past the file");
	/* The same tensor in two shards. */
	write_raw(tu_tmp_path("s4.safetensors"), "{" T("a", "U8", "[4]", 0, 4) "}", UINT64_MAX, 4);
	write_text(index, "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s4.safetensors\"}}");
	expect_bad_dir("tensor a is also in", NULL);
	/* Malformed or unusable index files. */
	write_text(index, "{\"weight_map\":{\"a\":\"s1.safetensors\",}}");
	expect_bad_dir("model.safetensors.index.json", "malformed");
	write_text(index, "{\"metadata\":{}}");
	expect_bad_dir("model.safetensors.index.json", "weight_map");
	write_text(index, "{\"weight_map\":{\"a\":\"../s1.safetensors\"}}");
	expect_bad_dir("model.safetensors.index.json", "plain file name");
	write_text(index, "{\"weight_map\":{\"a\":5}}");
	expect_bad_dir("model.safetensors.index.json", "not a string");
	write_text(index, "{\"weight_map\":{}}");
	expect_bad_dir("model.safetensors.index.json", "no shard");
}
END_TEST

/* ---------------------------------------------------------------- writer */

START_TEST(test_writer_roundtrip)
{
	const char *path = tu_tmp_path("model.safetensors");
	k2st_writer *w;
	k2_err err = {{0}};
	ck_assert_msg(k2st_writer_create(path, &w, &err) == 0, "%s", err.msg);
	uint64_t s_a[2] = {3, 5}, s_b[1] = {2}, s_d[2] = {0, 4};
	ck_assert_int_eq(k2st_writer_declare(w, "model.a.weight", K2_DTYPE_BF16, 2, s_a, &err), 0);
	ck_assert_int_eq(k2st_writer_declare(w, "b", K2_DTYPE_F32, 1, s_b, &err), 0);
	ck_assert_int_eq(k2st_writer_declare(w, "scalar", K2_DTYPE_I64, 0, NULL, &err), 0);
	ck_assert_int_eq(k2st_writer_declare(w, "empty", K2_DTYPE_U8, 2, s_d, &err), 0);
	ck_assert_int_eq(k2st_writer_declare(w, "b", K2_DTYPE_F32, 1, s_b, &err), -EEXIST);
	ck_assert_int_eq(k2st_writer_declare(w, "__metadata__", K2_DTYPE_F32, 1, s_b, &err), -EINVAL);
	ck_assert_int_eq(k2st_writer_declare(w, "bad", 99, 1, s_b, &err), -EINVAL);
	ck_assert_int_eq(k2st_writer_append(w, "x", 1, &err), -EINVAL); /* before the header */
	ck_assert_msg(k2st_writer_begin_data(w, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(k2st_writer_declare(w, "late", K2_DTYPE_U8, 1, s_b, &err), -EINVAL);
	uint8_t a[30], b[8], sc[8];
	for (int i = 0; i < 30; i++)
		a[i] = (uint8_t)(i * 3);
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(200 + i), sc[i] = (uint8_t)(i + 1);
	/* Appends need not follow tensor boundaries. */
	ck_assert_int_eq(k2st_writer_append(w, a, 20, &err), 0);
	ck_assert_int_eq(k2st_writer_append(w, a + 20, 10, &err), 0);
	ck_assert_int_eq(k2st_writer_append(w, b, 8, &err), 0);
	ck_assert_int_eq(k2st_writer_append(w, sc, 8, &err), 0);
	ck_assert_msg(k2st_writer_close(w, &err) == 0, "%s", err.msg);

	/* The header as the Python library writes it: length a multiple of 8,
	 * padded with spaces, format metadata. */
	size_t n;
	char *raw = tu_read_file(path, &n);
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | (uint8_t)raw[i];
	ck_assert_uint_eq(hlen % 8, 0);
	ck_assert_uint_eq(n, 8 + hlen + 46);
	ck_assert_ptr_nonnull(memmem(raw + 8, hlen, "\"__metadata__\":{\"format\":\"pt\"}", 30));
	ck_assert(raw[8 + hlen - 1] == ' ' || raw[8 + hlen - 1] == '}');
	free(raw);

	/* Read back by directory (model.safetensors) and by file. */
	for (int by = 0; by < 2; by++) {
		k2st_checkpoint *ck = tu_checkpoint_open(by ? path : tu_tmpdir);
		ck_assert_uint_eq(k2st_count(ck), 4);
		ck_assert_str_eq(k2st_at(ck, 0)->name, "model.a.weight"); /* declaration order */
		ck_assert_str_eq(k2st_at(ck, 3)->name, "empty");
		const k2st_tensor *t = expect_tensor(ck, "model.a.weight", K2_DTYPE_BF16, 2, 3, 5);
		uint8_t *got = tu_tensor_read(ck, t);
		ck_assert_mem_eq(got, a, 30);
		free(got);
		t = expect_tensor(ck, "b", K2_DTYPE_F32, 1, 2, 0);
		got = tu_tensor_read(ck, t);
		ck_assert_mem_eq(got, b, 8);
		free(got);
		t = expect_tensor(ck, "scalar", K2_DTYPE_I64, 0, 0, 0);
		got = tu_tensor_read(ck, t);
		ck_assert_mem_eq(got, sc, 8);
		free(got);
		expect_tensor(ck, "empty", K2_DTYPE_U8, 2, 0, 4);
		k2st_close(ck);
	}

	/* Too many bytes, too few, no header. */
	ck_assert_int_eq(k2st_writer_create(path, &w, &err), 0);
	ck_assert_int_eq(k2st_writer_declare(w, "b", K2_DTYPE_F32, 1, s_b, &err), 0);
	ck_assert_int_eq(k2st_writer_begin_data(w, &err), 0);
	ck_assert_int_eq(k2st_writer_append(w, a, 9, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, path));
	ck_assert_int_eq(k2st_writer_append(w, a, 5, &err), 0);
	ck_assert_int_eq(k2st_writer_close(w, &err), -EIO); /* the failed append */
	ck_assert_int_eq(k2st_writer_create(path, &w, &err), 0);
	ck_assert_int_eq(k2st_writer_declare(w, "b", K2_DTYPE_F32, 1, s_b, &err), 0);
	ck_assert_int_eq(k2st_writer_begin_data(w, &err), 0);
	ck_assert_int_eq(k2st_writer_append(w, a, 5, &err), 0);
	ck_assert_int_eq(k2st_writer_close(w, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "5 of 8"));
	ck_assert_int_eq(k2st_writer_create(path, &w, &err), 0);
	ck_assert_int_eq(k2st_writer_close(w, &err), -EINVAL);
	ck_assert_int_eq(k2st_writer_close(NULL, &err), 0);
	ck_assert_int_lt(k2st_writer_create("/nonexistent/dir/x.safetensors", &w, &err), 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/dir/x.safetensors"));
}
END_TEST

/* A checkpoint of real size: 100 000 tensors, each found by name quickly. */
START_TEST(test_many_tensors)
{
	const char *path = tu_tmp_path("many.safetensors");
	enum { N = 100000 };
	k2st_writer *w;
	k2_err err = {{0}};
	ck_assert_int_eq(k2st_writer_create(path, &w, &err), 0);
	char name[96];
	uint64_t shape[1] = {1};
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "model.layers.%d.mlp.experts.%d.up_proj.weight", i / 384, i % 384);
		EXPECT(k2st_writer_declare(w, name, K2_DTYPE_U8, 1, shape, &err) == 0, "%s", err.msg);
	}
	ck_assert_int_eq(k2st_writer_begin_data(w, &err), 0);
	uint8_t *data = malloc(N);
	for (int i = 0; i < N; i++)
		data[i] = (uint8_t)(i * 13);
	ck_assert_int_eq(k2st_writer_append(w, data, N, &err), 0);
	ck_assert_int_eq(k2st_writer_close(w, &err), 0);

	k2st_checkpoint *ck = tu_checkpoint_open(path);
	ck_assert_uint_eq(k2st_count(ck), N);
	double t0 = k2_now();
	int bad = 0;
	for (int i = N - 1; i >= 0; i--) {
		snprintf(name, sizeof(name), "model.layers.%d.mlp.experts.%d.up_proj.weight", i / 384, i % 384);
		const k2st_tensor *t = k2st_find(ck, name);
		uint8_t v;
		if (!t || t != k2st_at(ck, (size_t)i) || k2st_read(ck, t, &v, NULL) || v != data[i])
			bad++;
	}
	ck_assert_int_eq(bad, 0);
	double dt = k2_now() - t0;
	/* A linear search would take minutes; a hash or binary search well under
	 * a second, even under ASan. */
	ck_assert_msg(dt < 5.0, "100k lookups and reads took %.2f s", dt);
	k2st_close(ck);
	free(data);
}
END_TEST

/* ---------------------------------------------------------------- buffer parser */

struct collect {
	int n;
	char names[4][16];
	uint64_t offsets[4];
	int fail_at;
};

static int collect_cb(void *ctx, const k2st_tensor *t)
{
	struct collect *c = ctx;
	if (c->n == c->fail_at)
		return -ECANCELED;
	snprintf(c->names[c->n], sizeof(c->names[0]), "%s", t->name);
	c->offsets[c->n] = t->offset;
	c->n++;
	return 0;
}

START_TEST(test_parse_buffer)
{
	const char *hdr = "{" T("zz", "U8", "[4]", 4, 8) "," T("aa", "U16", "[2]", 0, 4) "}";
	size_t hlen = strlen(hdr);
	uint8_t buf[256] = {0};
	buf[0] = (uint8_t)hlen;
	memcpy(buf + 8, hdr, hlen);
	struct collect c = {.fail_at = -1};
	k2_err err = {{0}};
	ck_assert_msg(k2st_parse_buffer(buf, 8 + hlen + 8, "mem", collect_cb, &c, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(c.n, 2);
	ck_assert_str_eq(c.names[0], "zz"); /* header order */
	ck_assert_str_eq(c.names[1], "aa");
	ck_assert_uint_eq(c.offsets[0], 8 + hlen + 4);
	ck_assert_uint_eq(c.offsets[1], 8 + hlen);
	/* One byte short of the data. */
	ck_assert_int_eq(k2st_parse_buffer(buf, 8 + hlen + 7, "mem", collect_cb, &c, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "mem: tensor zz"));
	/* A callback's error stops the walk and is returned. */
	struct collect c2 = {.fail_at = 1};
	ck_assert_int_eq(k2st_parse_buffer(buf, 8 + hlen + 8, "mem", collect_cb, &c2, &err), -ECANCELED);
	ck_assert_int_eq(c2.n, 1);
	ck_assert_int_eq(k2st_parse_buffer(buf, 3, "mem", collect_cb, &c, &err), -EINVAL);
	ck_assert_int_eq(k2st_parse_buffer(buf, 0, NULL, collect_cb, &c, &err), -EINVAL);
}
END_TEST

static Suite *st_suite(void)
{
	Suite *s = suite_create("safetensors");
	TU_ADD_TESTS(tu_tcase(s, "fixtures", 60), test_fixture_bf16_sharded,
		     test_fixture_fp8_int4_reference);
	TCase *tc = tu_tcase(s, "bad input", 0);
	tcase_add_checked_fixture(tc, tu_tmpdir_setup, tu_tmpdir_teardown);
	TU_ADD_TESTS(tc, test_bad_files, test_bad_index, test_parse_buffer);
	tc = tu_tcase(s, "writer", 60);
	tcase_add_checked_fixture(tc, tu_tmpdir_setup, tu_tmpdir_teardown);
	TU_ADD_TESTS(tc, test_writer_roundtrip, test_many_tensors);
	return s;
}

int main(void)
{
	return tu_run_suite(st_suite());
}
