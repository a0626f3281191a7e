/* test_import.c — Check suite for the checkpoint importer (tools/lib/import.c):
 * packs the three fixtures (k2-tiny-bf16 / -fp8 / -int4) into temporary packs
 * and reads them back with the pack reader:
 *   - keep: every dense tensor, config.json and every expert image section is
 *     the source bytes exactly (int4: the compressed-tensors words as nibbles);
 *   - conversions bf16→fp8/int8/int4 and fp8→int4: each scale is what the rule
 *     says and every dequantized weight is within the bound the format allows;
 *   - bf16 --experts int4 == the int4 fixture and bf16 --experts fp8 == the fp8
 *     fixture, image for image, byte for byte;
 *   - the output does not depend on the thread count;
 *   - bad checkpoints built here (wrong shape, unknown kind, F64, missing or
 *     inconsistent tensors, cancel) fail with a message naming the tensor and
 *     leave no file behind. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "import.h"
#include "layout.h"

static const char *const fixture_names[3] = {"k2-tiny-bf16", "k2-tiny-fp8", "k2-tiny-int4"};
static const uint32_t fixture_formats[3] = {K2_FORMAT_BF16, K2_FORMAT_FP8_B128,
					    K2_FORMAT_INT4_G32};
static const char *const projs[3] = {"gate_proj", "up_proj", "down_proj"};

static char tmpdir[256];

static const char *fixtures(void)
{
	const char *f = getenv("K2_FIXTURES");
	return f && *f ? f : "../shared/fixtures";
}

static void model_dir(int fx, char *buf, size_t n)
{
	snprintf(buf, n, "%s/%s/model", fixtures(), fixture_names[fx]);
}

/* Unchecked fixture: runs in the parent once per test case, so the directory
 * is removed even when a (forked) test fails. */
static void setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/k2-test-import-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void rm_tree(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char p[512];
		snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
		struct stat sb;
		if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
			rm_tree(p);
		else
			unlink(p);
	}
	closedir(d);
	rmdir(dir);
}

static void teardown(void)
{
	rm_tree(tmpdir);
}

/* Imports model directory src into tmpdir/name; asserts success. */
static void import_ok(const char *src, const char *name, uint32_t experts, int threads,
		      char *out, size_t n)
{
	snprintf(out, n, "%s/%s", tmpdir, name);
	k2i_opts o;
	k2i_opts_default(&o);
	o.experts = experts;
	o.threads = threads;
	k2_err err = {{0}};
	k2i_stats st;
	int rc = k2i_import(src, out, &o, &st, &err);
	ck_assert_msg(rc == 0, "import %s: %s", src, err.msg);
	ck_assert_uint_gt(st.n_experts, 0);
}

static k2p_pack *open_pack(const char *path)
{
	k2p_pack *p = NULL;
	k2_err err = {{0}};
	int rc = k2p_pack_open(path, &p, &err);
	ck_assert_msg(rc == 0, "open %s: %s", path, err.msg);
	return p;
}

static k2st_checkpoint *open_ck(const char *dir)
{
	k2st_checkpoint *ck = NULL;
	k2_err err = {{0}};
	int rc = k2st_open(dir, &ck, &err);
	ck_assert_msg(rc == 0, "open %s: %s", dir, err.msg);
	return ck;
}

/* Reads an entry's decoded bytes into a malloc'd buffer. */
static uint8_t *read_entry(const k2p_pack *p, const k2p_entry *e)
{
	uint8_t *buf = malloc(e->raw_bytes ? e->raw_bytes : 1);
	ck_assert_ptr_nonnull(buf);
	k2_err err = {{0}};
	long r = k2p_entry_read(p, e, 0, buf, e->raw_bytes, &err);
	ck_assert_msg(r == (long)e->raw_bytes, "read %s: %ld: %s", e->path, r, err.msg);
	return buf;
}

static uint8_t *read_tensor(const k2st_checkpoint *ck, const char *name, const k2st_tensor **tp)
{
	const k2st_tensor *t = k2st_find(ck, name);
	ck_assert_msg(t != NULL, "tensor %s missing", name);
	uint8_t *buf = malloc(t->bytes ? t->bytes : 1);
	ck_assert_ptr_nonnull(buf);
	k2_err err = {{0}};
	int rc = k2st_read(ck, t, buf, &err);
	ck_assert_msg(rc == 0, "read %s: %s", name, err.msg);
	if (tp)
		*tp = t;
	return buf;
}

static void parse_image(const uint8_t *img, uint64_t n, k2x_layout *lay)
{
	k2_err err = {{0}};
	int rc = k2x_header_parse(img, n, n, "image", lay, &err);
	ck_assert_msg(rc == 0, "%s", err.msg);
}

/* ---------------------------------------------------------------- keep */

START_TEST(test_keep_dense_and_files)
{
	char src[512], out[512], cfg[600];
	model_dir(_i, src, sizeof(src));
	import_ok(src, "keep.k2", K2_FORMAT_NONE, 2, out, sizeof(out));
	k2p_pack *p = open_pack(out);
	k2st_checkpoint *ck = open_ck(src);

	/* config.json byte for byte */
	snprintf(cfg, sizeof(cfg), "%s/config.json", src);
	char *cj;
	size_t cn;
	ck_assert_int_eq(k2_read_file(cfg, &cj, &cn, NULL), 0);
	const k2p_entry *ce = k2p_entry_find(p, "config.json");
	ck_assert_ptr_nonnull(ce);
	ck_assert_uint_eq(ce->kind, K2P_KIND_FILE);
	ck_assert_uint_eq(ce->raw_bytes, cn);
	uint8_t *cb = read_entry(p, ce);
	ck_assert_mem_eq(cb, cj, cn);
	free(cb);
	free(cj);

	/* every dense tensor: name, dtype, shape and bytes */
	size_t n_dense = 0;
	for (size_t i = 0; i < k2st_count(ck); i++) {
		const k2st_tensor *t = k2st_at(ck, i);
		if (strstr(t->name, ".mlp.experts."))
			continue;
		n_dense++;
		char path[1200];
		snprintf(path, sizeof(path), "dense/%s", t->name);
		const k2p_entry *e = k2p_entry_find(p, path);
		ck_assert_msg(e != NULL, "%s missing from the pack", path);
		ck_assert_uint_eq(e->kind, K2P_KIND_DENSE);
		ck_assert_str_eq(e->name, t->name);
		ck_assert_uint_eq(e->dtype, t->dtype);
		ck_assert_uint_eq(e->ndim, t->ndim);
		for (uint32_t d = 0; d < t->ndim; d++)
			ck_assert_uint_eq(e->shape[d], t->shape[d]);
		ck_assert_uint_eq(e->raw_bytes, t->bytes);
		uint8_t *a = read_entry(p, e);
		uint8_t *b = read_tensor(ck, t->name, NULL);
		ck_assert_msg(memcmp(a, b, t->bytes) == 0, "%s differs from the source", t->name);
		free(a);
		free(b);
	}
	size_t n_pack_dense = 0, n_experts = 0, n_files = 0;
	for (size_t i = 0; i < k2p_entry_count(p); i++) {
		const k2p_entry *e = k2p_entry_at(p, i);
		n_pack_dense += e->kind == K2P_KIND_DENSE;
		n_experts += e->kind == K2P_KIND_EXPERT;
		n_files += e->kind == K2P_KIND_FILE;
	}
	ck_assert_uint_eq(n_pack_dense, n_dense);
	ck_assert_uint_eq(n_experts, 3 * 32); /* layers 1..3, 32 experts each */
	ck_assert_uint_eq(n_files, 1);
	k2st_close(ck);
	k2p_pack_close(p);
}
END_TEST

/* Checks that the bytes after a section's payload up to the next aligned
 * offset are zero. */
static void assert_padding_zero(const uint8_t *img, const k2x_layout *lay)
{
	for (int s = 0; s < K2X_SECTIONS; s++) {
		uint64_t end = lay->sec[s].offset + lay->sec[s].bytes;
		uint64_t pad = (end + 4095) & ~(uint64_t)4095;
		for (uint64_t k = end; k < pad && k < lay->image_bytes; k++)
			if (img[k] != 0)
				ck_abort_msg("padding byte %llu of section %d is %u",
					     (unsigned long long)k, s, img[k]);
	}
}

START_TEST(test_keep_experts_exact)
{
	char src[512], out[512];
	model_dir(_i, src, sizeof(src));
	import_ok(src, "keep.k2", K2_FORMAT_NONE, 3, out, sizeof(out));
	k2p_pack *p = open_pack(out);
	k2st_checkpoint *ck = open_ck(src);
	for (uint32_t l = 1; l <= 3; l++) {
		for (uint32_t e = 0; e < 32; e++) {
			const k2p_entry *en = k2p_expert_find(p, l, e);
			ck_assert_msg(en != NULL, "expert %u/%u missing", l, e);
			ck_assert_uint_eq(en->format, fixture_formats[_i]);
			ck_assert_uint_eq(en->shape[0], 256);
			ck_assert_uint_eq(en->shape[1], 64);
			uint8_t *img = read_entry(p, en);
			k2x_layout lay;
			parse_image(img, en->raw_bytes, &lay);
			ck_assert_uint_eq(lay.layer, l);
			ck_assert_uint_eq(lay.expert, e);
			ck_assert_uint_eq(lay.format, fixture_formats[_i]);
			assert_padding_zero(img, &lay);
			for (int pj = 0; pj < 3; pj++) {
				char name[256];
				const char *wsuf = _i == 2 ? "weight_packed" : "weight";
				const char *ssuf = _i == 1 ? "weight_scale_inv"
						 : _i == 2 ? "weight_scale" : NULL;
				snprintf(name, sizeof(name), "model.layers.%u.mlp.experts.%u.%s.%s", l,
					 e, projs[pj], wsuf);
				const k2st_tensor *t;
				uint8_t *w = read_tensor(ck, name, &t);
				ck_assert_uint_eq(lay.sec[2 * pj].bytes, t->bytes);
				ck_assert_msg(memcmp(img + lay.sec[2 * pj].offset, w, t->bytes) == 0,
					      "%s differs in expert %u/%u", name, l, e);
				free(w);
				if (ssuf) {
					snprintf(name, sizeof(name), "model.layers.%u.mlp.experts.%u.%s.%s",
						 l, e, projs[pj], ssuf);
					uint8_t *s = read_tensor(ck, name, &t);
					ck_assert_uint_eq(lay.sec[2 * pj + 1].bytes, t->bytes);
					ck_assert_msg(memcmp(img + lay.sec[2 * pj + 1].offset, s,
							     t->bytes) == 0,
						      "%s differs in expert %u/%u", name, l, e);
					free(s);
				} else {
					ck_assert_uint_eq(lay.sec[2 * pj + 1].bytes, 0);
				}
			}
			free(img);
		}
	}
	k2st_close(ck);
	k2p_pack_close(p);
}
END_TEST

/* The int4 fixture's nibbles, decoded from the compressed-tensors int32 words
 * by hand (value = nibble - 8, element j*8+i at bits 4i), equal the image's
 * dequantized weights. This pins the image's nibble order independently of
 * the importer copying bytes. */
START_TEST(test_keep_int4_nibble_order)
{
	char src[512], out[512];
	model_dir(2, src, sizeof(src));
	import_ok(src, "keep.k2", K2_FORMAT_NONE, 1, out, sizeof(out));
	k2p_pack *p = open_pack(out);
	k2st_checkpoint *ck = open_ck(src);
	const k2p_entry *en = k2p_expert_find(p, 2, 7);
	ck_assert_ptr_nonnull(en);
	uint8_t *img = read_entry(p, en);
	k2x_layout lay;
	parse_image(img, en->raw_bytes, &lay);
	const k2st_tensor *tw, *ts;
	int32_t *words = (int32_t *)read_tensor(ck, "model.layers.2.mlp.experts.7.down_proj.weight_packed", &tw);
	uint16_t *sc = (uint16_t *)read_tensor(ck, "model.layers.2.mlp.experts.7.down_proj.weight_scale", &ts);
	uint32_t rows = 256, cols = 64;
	float *deq = malloc(sizeof(float) * rows * cols);
	ck_assert_int_eq(k2q_dequant(K2_FORMAT_INT4_G32, img + lay.sec[K2X_DOWN_W].offset,
				     img + lay.sec[K2X_DOWN_S].offset, rows, cols, deq), 0);
	for (uint32_t r = 0; r < rows; r++)
		for (uint32_t c = 0; c < cols; c++) {
			uint32_t word = (uint32_t)words[r * (cols / 8) + c / 8];
			int q = (int)((word >> (4 * (c % 8))) & 15) - 8;
			float want = (float)q * k2q_bf16_to_f32(sc[r * (cols / 32) + c / 32]);
			if (deq[r * cols + c] != want)
				ck_abort_msg("[%u,%u]: %g != %g", r, c, deq[r * cols + c], want);
		}
	free(deq);
	free(words);
	free(sc);
	free(img);
	k2st_close(ck);
	k2p_pack_close(p);
}
END_TEST

/* ---------------------------------------------------------------- conversions */

/* Source weights of one projection as float32 (bf16 or fp8 fixture). */
static float *source_f32(const k2st_checkpoint *ck, int fx, uint32_t l, uint32_t e, int pj,
			 uint32_t rows, uint32_t cols)
{
	char name[256];
	snprintf(name, sizeof(name), "model.layers.%u.mlp.experts.%u.%s.%s", l, e, projs[pj],
		 fx == 2 ? "weight_packed" : "weight");
	const k2st_tensor *t;
	uint8_t *w = read_tensor(ck, name, &t);
	float *f = malloc(sizeof(float) * rows * cols);
	ck_assert_ptr_nonnull(f);
	if (fx == 0) {
		ck_assert_int_eq(k2q_to_f32(K2_DTYPE_BF16, w, (size_t)rows * cols, f), 0);
	} else if (fx == 2) {
		/* compressed-tensors: w = (nibble - 8) × weight_scale, decoded here by hand */
		snprintf(name, sizeof(name), "model.layers.%u.mlp.experts.%u.%s.weight_scale", l, e,
			 projs[pj]);
		const uint16_t *sc = (const uint16_t *)read_tensor(ck, name, NULL);
		const uint32_t *words = (const uint32_t *)w;
		for (uint32_t r = 0; r < rows; r++)
			for (uint32_t c = 0; c < cols; c++) {
				int q = (int)((words[r * (cols / 8) + c / 8] >> (4 * (c % 8))) & 15) - 8;
				f[(size_t)r * cols + c] = (float)q * k2q_bf16_to_f32(sc[r * (cols / 32) + c / 32]);
			}
		free((void *)sc);
	} else {
		strcat(name, "_scale_inv");
		uint8_t *s = read_tensor(ck, name, NULL);
		ck_assert_int_eq(k2q_dequant(K2_FORMAT_FP8_B128, w, s, rows, cols, f), 0);
		free(s);
	}
	free(w);
	return f;
}

struct conv_case {
	int fx;          /* source fixture */
	uint32_t format; /* target */
};

static const struct conv_case conv_cases[] = {
	{0, K2_FORMAT_FP8_B128},
	{0, K2_FORMAT_INT8},
	{0, K2_FORMAT_INT4_G32},
	{1, K2_FORMAT_INT4_G32},
	{0, K2_FORMAT_BF16},
	{2, K2_FORMAT_BF16},
	{2, K2_FORMAT_FP8_B128},
	{1, K2_FORMAT_INT8},
};

/* Checks one converted projection: the scales follow the format's rule, and
 * |w - dequant| is within the rounding bound of that format:
 *   fp8:  s = max|block|/448;   |err| <= s * max(2^-4 |w/s|, 2^-10)  (3 mantissa bits; subnormal step 2^-9)
 *   int8: s = max|row|/127;     |err| <= s/2 (+ float32 rounding, 3e-5 s)
 *   int4: s = bf16(max|g|/7.5); |err| <= 0.54 s (s/2, or up to 0.53 s where bf16
 *         rounding of s clamps the group maximum to 7)
 *   bf16: |err| <= 2^-8 |w| (exact for a bf16 source: checked as such) */
static void check_converted(uint32_t format, const float *w, const uint8_t *qw, const uint8_t *qs,
			    uint32_t rows, uint32_t cols, double *worst, double *worst_abs)
{
	float *d = malloc(sizeof(float) * rows * cols);
	ck_assert_ptr_nonnull(d);
	ck_assert_int_eq(k2q_dequant(format, qw, qs, rows, cols, d), 0);
	/* max |w| over each element's scale group: fp8 128x128 block, int8 row,
	 * int4 32 inputs of a row */
	uint32_t gr = format == K2_FORMAT_FP8_B128 ? 128 : 1;
	uint32_t gc = format == K2_FORMAT_FP8_B128 ? 128 : format == K2_FORMAT_INT8 ? cols : 32;
	uint32_t nbr = (rows + gr - 1) / gr, nbc = (cols + gc - 1) / gc;
	float *amax = calloc((size_t)nbr * nbc, sizeof(float));
	ck_assert_ptr_nonnull(amax);
	for (uint32_t r = 0; r < rows; r++)
		for (uint32_t c = 0; c < cols; c++) {
			float *a = &amax[(r / gr) * nbc + c / gc];
			*a = fmaxf(*a, fabsf(w[(size_t)r * cols + c]));
		}
	for (uint32_t r = 0; r < rows; r++) {
		for (uint32_t c = 0; c < cols; c++) {
			size_t i = (size_t)r * cols + c;
			float am = amax[(r / gr) * nbc + c / gc];
			double err = fabs((double)w[i] - (double)d[i]), s = 0, bound = 0;
			switch (format) {
			case K2_FORMAT_FP8_B128: {
				float want = fmaxf(am, 1e-12f) / 448.0f;
				float got = ((const float *)qs)[(r / 128) * nbc + c / 128];
				if (got != want)
					ck_abort_msg("fp8 scale [%u,%u] %g != %g", r, c, got, want);
				s = got;
				bound = s * fmax(fabs(w[i] / s) * 0x1p-4, 0x1p-10) + fabs(w[i]) * 0x1p-22;
				break;
			}
			case K2_FORMAT_INT8: {
				float want = fmaxf(am, 1e-12f) / 127.0f;
				float got = ((const float *)qs)[r];
				if (got != want)
					ck_abort_msg("int8 scale [%u] %g != %g", r, got, want);
				s = got;
				/* + float32 rounding of w/s and q*s: 2 × 2^-24 × 127 s */
				bound = s * (0.5 + 3e-5);
				break;
			}
			case K2_FORMAT_INT4_G32: {
				uint16_t want = k2q_f32_to_bf16(fmaxf(am / 7.5f, 1e-8f));
				uint16_t got = ((const uint16_t *)qs)[r * (cols / 32) + c / 32];
				if (got != want)
					ck_abort_msg("int4 scale [%u,%u] %04x != %04x", r, c, got, want);
				s = k2q_bf16_to_f32(got);
				bound = 0.54 * s;
				break;
			}
			case K2_FORMAT_BF16:
				/* exact from a bf16 source; else round to nearest with 8 significant bits */
				bound = fabs(w[i]) * 0x1p-8;
				break;
			}
			if (err > bound)
				ck_abort_msg("[%u,%u]: |%g - %g| = %g > bound %g (scale %g)", r, c, w[i],
					     d[i], err, bound, s);
			if (s > 0 && err / s > *worst)
				*worst = err / s;
			if (err > *worst_abs)
				*worst_abs = err;
		}
	}
	free(amax);
	free(d);
}

START_TEST(test_convert_bounds)
{
	const struct conv_case *cc = &conv_cases[_i];
	char src[512], out[512];
	model_dir(cc->fx, src, sizeof(src));
	import_ok(src, "conv.k2", cc->format, 2, out, sizeof(out));
	k2p_pack *p = open_pack(out);
	k2st_checkpoint *ck = open_ck(src);
	double worst = 0, worst_abs = 0;
	size_t n = 0;
	for (size_t i = 0; i < k2p_entry_count(p); i++) {
		const k2p_entry *en = k2p_entry_at(p, i);
		if (en->kind != K2P_KIND_EXPERT)
			continue;
		n++;
		ck_assert_uint_eq(en->format, cc->format);
		uint8_t *img = read_entry(p, en);
		k2x_layout lay;
		parse_image(img, en->raw_bytes, &lay);
		ck_assert_uint_eq(lay.format, cc->format);
		assert_padding_zero(img, &lay);
		for (int pj = 0; pj < 3; pj++) {
			uint32_t rows = pj == 2 ? 256 : 64, cols = pj == 2 ? 64 : 256;
			float *w = source_f32(ck, cc->fx, en->layer, en->expert, pj, rows, cols);
			check_converted(cc->format, w, img + lay.sec[2 * pj].offset,
					img + lay.sec[2 * pj + 1].offset, rows, cols, &worst, &worst_abs);
			free(w);
		}
		free(img);
	}
	ck_assert_uint_eq(n, 96);
	if (cc->format == K2_FORMAT_BF16 && cc->fx == 0)
		ck_assert_msg(worst_abs == 0, "bf16 -> bf16 is not exact: %g", worst_abs);
	/* the bound is not vacuous: rounding does reach a good part of it */
	if (cc->format == K2_FORMAT_INT8 || cc->format == K2_FORMAT_INT4_G32)
		ck_assert_msg(worst > 0.45, "worst error %g of a scale: suspiciously small", worst);
	k2st_close(ck);
	k2p_pack_close(p);
}
END_TEST

/* Every expert image of pack a equals that of pack b. */
static void assert_same_experts(const char *pa, const char *pb)
{
	k2p_pack *a = open_pack(pa), *b = open_pack(pb);
	size_t n = 0;
	for (size_t i = 0; i < k2p_entry_count(a); i++) {
		const k2p_entry *ea = k2p_entry_at(a, i);
		if (ea->kind != K2P_KIND_EXPERT)
			continue;
		const k2p_entry *eb = k2p_expert_find(b, ea->layer, ea->expert);
		ck_assert_msg(eb != NULL, "%s: expert %s missing", pb, ea->path);
		ck_assert_uint_eq(ea->raw_bytes, eb->raw_bytes);
		uint8_t *x = read_entry(a, ea), *y = read_entry(b, eb);
		size_t k = 0;
		while (k < ea->raw_bytes && x[k] == y[k])
			k++;
		ck_assert_msg(k == ea->raw_bytes, "%s differs at byte %zu", ea->path, k);
		free(x);
		free(y);
		n++;
	}
	ck_assert_uint_eq(n, 96);
	size_t nb = 0;
	for (size_t i = 0; i < k2p_entry_count(b); i++)
		nb += k2p_entry_at(b, i)->kind == K2P_KIND_EXPERT;
	ck_assert_uint_eq(nb, n);
	k2p_pack_close(a);
	k2p_pack_close(b);
}

START_TEST(test_int4_reproduces_fixture)
{
	char bf[512], i4[512], pa[512], pb[512];
	model_dir(0, bf, sizeof(bf));
	model_dir(2, i4, sizeof(i4));
	import_ok(bf, "bf16-int4.k2", K2_FORMAT_INT4_G32, 2, pa, sizeof(pa));
	import_ok(i4, "int4-keep.k2", K2_FORMAT_NONE, 2, pb, sizeof(pb));
	assert_same_experts(pa, pb);
	/* --experts int4 of an int4 source keeps it bit-exactly */
	char pc[512];
	import_ok(i4, "int4-int4.k2", K2_FORMAT_INT4_G32, 2, pc, sizeof(pc));
	assert_same_experts(pc, pb);
}
END_TEST

START_TEST(test_fp8_reproduces_fixture)
{
	char bf[512], f8[512], pa[512], pb[512];
	model_dir(0, bf, sizeof(bf));
	model_dir(1, f8, sizeof(f8));
	import_ok(bf, "bf16-fp8.k2", K2_FORMAT_FP8_B128, 2, pa, sizeof(pa));
	import_ok(f8, "fp8-keep.k2", K2_FORMAT_NONE, 2, pb, sizeof(pb));
	assert_same_experts(pa, pb);
}
END_TEST

static uint8_t *slurp(const char *path, size_t *n)
{
	char *d;
	ck_assert_int_eq(k2_read_file(path, &d, n, NULL), 0);
	return (uint8_t *)d;
}

START_TEST(test_threads_same_output)
{
	char bf[512], pa[512], pb[512];
	model_dir(0, bf, sizeof(bf));
	setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
	import_ok(bf, "t1.k2", K2_FORMAT_INT4_G32, 1, pa, sizeof(pa));
	import_ok(bf, "t5.k2", K2_FORMAT_INT4_G32, 5, pb, sizeof(pb));
	unsetenv("SOURCE_DATE_EPOCH");
	size_t na, nb;
	uint8_t *a = slurp(pa, &na), *b = slurp(pb, &nb);
	ck_assert_uint_eq(na, nb);
	ck_assert_msg(memcmp(a, b, na) == 0, "packs made with 1 and 5 threads differ");
	free(a);
	free(b);
}
END_TEST

START_TEST(test_expert_name_parse)
{
	uint32_t l = 99, e = 99;
	int pj = -1;
	const char *suf = NULL;
	ck_assert_int_eq(k2i_expert_name_parse("model.layers.12.mlp.experts.345.down_proj.weight_scale_inv",
					       &l, &e, &pj, &suf), 1);
	ck_assert_uint_eq(l, 12);
	ck_assert_uint_eq(e, 345);
	ck_assert_int_eq(pj, 2);
	ck_assert_str_eq(suf, "weight_scale_inv");
	ck_assert_int_eq(k2i_expert_name_parse("model.layers.3.mlp.shared_experts.up_proj.weight",
					       &l, &e, &pj, &suf), 0);
	ck_assert_int_eq(k2i_expert_name_parse("model.layers.3.mlp.gate.weight", &l, &e, &pj, &suf), 0);
	ck_assert_int_eq(k2i_expert_name_parse("model.embed_tokens.weight", &l, &e, &pj, &suf), 0);
	ck_assert_int_eq(k2i_expert_name_parse("model.layers.3.mlp.experts.gate_up_proj", &l, &e, &pj, &suf),
			 -EINVAL);
	ck_assert_int_eq(k2i_expert_name_parse("model.layers.3.mlp.experts.1.fc1.weight", &l, &e, &pj, &suf),
			 -EINVAL);
	ck_assert_int_eq(k2i_expert_name_parse("model.layers.3.mlp.experts.1.up_proj.", &l, &e, &pj, &suf),
			 -EINVAL);
	ck_assert_int_eq(k2i_expert_name_parse("model.layers.3.mlp.experts.99999999.up_proj.weight", &l,
					       &e, &pj, &suf), -EINVAL);
}
END_TEST

/* ---------------------------------------------------------------- bad input */

/* A checkpoint made here: the fixture's config cut to 2 layers and 1 expert,
 * so layer 1 expert 0 is the only routed expert, plus the tensors given. */
struct tdef {
	const char *name;
	uint32_t dtype;
	uint64_t r, c; /* c == 0: 1-D */
	const int32_t *vals; /* I32 contents, or NULL for a pattern */
};

static void write_checkpoint(const char *dir, const struct tdef *t, int n)
{
	char path[600], cfgsrc[600];
	mkdir(dir, 0755);
	snprintf(cfgsrc, sizeof(cfgsrc), "%s/k2-tiny-bf16/model/config.json", fixtures());
	json_error_t je;
	json_t *cfg = json_load_file(cfgsrc, 0, &je);
	ck_assert_ptr_nonnull(cfg);
	json_object_set_new(cfg, "num_hidden_layers", json_integer(2));
	json_object_set_new(cfg, "n_routed_experts", json_integer(1));
	json_object_set_new(cfg, "num_experts_per_tok", json_integer(1));
	snprintf(path, sizeof(path), "%s/config.json", dir);
	ck_assert_int_eq(json_dump_file(cfg, path, JSON_INDENT(2)), 0);
	json_decref(cfg);

	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	k2st_writer *w;
	k2_err err = {{0}};
	ck_assert_msg(k2st_writer_create(path, &w, &err) == 0, "%s", err.msg);
	for (int i = 0; i < n; i++) {
		uint64_t shape[2] = {t[i].r, t[i].c};
		ck_assert_msg(k2st_writer_declare(w, t[i].name, t[i].dtype, t[i].c ? 2 : 1, shape,
						  &err) == 0, "%s", err.msg);
	}
	ck_assert_msg(k2st_writer_begin_data(w, &err) == 0, "%s", err.msg);
	for (int i = 0; i < n; i++) {
		size_t bytes = t[i].r * (t[i].c ? t[i].c : 1) * k2_dtype_size(t[i].dtype);
		uint8_t *b = malloc(bytes);
		if (t[i].vals)
			memcpy(b, t[i].vals, bytes);
		else
			for (size_t k = 0; k < bytes; k++)
				b[k] = (uint8_t)(k * 7 + 3) & 0x3f; /* small finite bf16/f32 bytes */
		ck_assert_msg(k2st_writer_append(w, b, bytes, &err) == 0, "%s", err.msg);
		free(b);
	}
	ck_assert_msg(k2st_writer_close(w, &err) == 0, "%s", err.msg);
}

/* Imports dir, expects failure with a message containing each of want[],
 * and checks that nothing named out* remains in tmpdir. */
static void import_fails(const char *dir, uint32_t experts, const char *const *want)
{
	char out[600];
	snprintf(out, sizeof(out), "%s/out.k2", tmpdir);
	k2i_opts o;
	k2i_opts_default(&o);
	o.experts = experts;
	o.threads = 2;
	k2_err err = {{0}};
	int rc = k2i_import(dir, out, &o, NULL, &err);
	ck_assert_int_lt(rc, 0);
	ck_assert_ptr_null(strchr(err.msg, '\n'));
	for (int i = 0; want[i]; i++)
		ck_assert_msg(strstr(err.msg, want[i]) != NULL, "message '%s' lacks '%s'", err.msg,
			      want[i]);
	DIR *d = opendir(tmpdir);
	struct dirent *de;
	while ((de = readdir(d)))
		ck_assert_msg(strncmp(de->d_name, "out.k2", 6) != 0, "%s left behind", de->d_name);
	closedir(d);
}

#define EXP(p, s) "model.layers.1.mlp.experts.0." p "." s

START_TEST(test_small_checkpoint_ok)
{
	char dir[600], out[600];
	snprintf(dir, sizeof(dir), "%s/ok", tmpdir);
	const struct tdef t[] = {
		{"model.embed_tokens.weight", K2_DTYPE_BF16, 1024, 256, NULL},
		{EXP("gate_proj", "weight"), K2_DTYPE_BF16, 64, 256, NULL},
		{EXP("up_proj", "weight"), K2_DTYPE_F32, 64, 256, NULL},
		{EXP("down_proj", "weight"), K2_DTYPE_BF16, 256, 64, NULL},
	};
	write_checkpoint(dir, t, 4);
	/* an F32 expert cannot be kept, but converts */
	static const char *const want[] = {EXP("up_proj", "weight"), "F32", "--experts bf16", NULL};
	import_fails(dir, K2_FORMAT_NONE, want);
	import_ok(dir, "ok.k2", K2_FORMAT_BF16, 2, out, sizeof(out));
	k2p_pack *p = open_pack(out);
	const k2p_entry *e = k2p_expert_find(p, 1, 0);
	ck_assert_ptr_nonnull(e);
	ck_assert_ptr_nonnull(k2p_entry_find(p, "dense/model.embed_tokens.weight"));
	ck_assert_uint_eq(k2p_entry_count(p), 3);
	k2p_pack_close(p);
}
END_TEST

START_TEST(test_bad_shape)
{
	char dir[600];
	snprintf(dir, sizeof(dir), "%s/bad", tmpdir);
	const struct tdef t[] = {
		{EXP("gate_proj", "weight"), K2_DTYPE_BF16, 64, 256, NULL},
		{EXP("up_proj", "weight"), K2_DTYPE_BF16, 64, 128, NULL},
		{EXP("down_proj", "weight"), K2_DTYPE_BF16, 256, 64, NULL},
	};
	write_checkpoint(dir, t, 3);
	static const char *const want[] = {"model.safetensors", EXP("up_proj", "weight"),
					   "[64, 128]", "expected [64, 256]", NULL};
	import_fails(dir, K2_FORMAT_NONE, want);
}
END_TEST

START_TEST(test_bad_kind_dtype_missing)
{
	char dir[600];
	snprintf(dir, sizeof(dir), "%s/kind", tmpdir);
	const struct tdef a[] = {
		{EXP("gate_proj", "weight"), K2_DTYPE_BF16, 64, 256, NULL},
		{EXP("gate_proj", "bias"), K2_DTYPE_BF16, 64, 0, NULL},
	};
	write_checkpoint(dir, a, 2);
	static const char *const w1[] = {EXP("gate_proj", "bias"), "unknown kind", NULL};
	import_fails(dir, K2_FORMAT_NONE, w1);

	snprintf(dir, sizeof(dir), "%s/f64", tmpdir);
	const struct tdef b[] = {
		{EXP("gate_proj", "weight"), K2_DTYPE_BF16, 64, 256, NULL},
		{EXP("up_proj", "weight"), K2_DTYPE_F64, 64, 256, NULL},
		{EXP("down_proj", "weight"), K2_DTYPE_BF16, 256, 64, NULL},
	};
	write_checkpoint(dir, b, 3);
	static const char *const w2[] = {EXP("up_proj", "weight"), "unsupported dtype F64", NULL};
	import_fails(dir, K2_FORMAT_INT4_G32, w2);

	snprintf(dir, sizeof(dir), "%s/missing", tmpdir);
	const struct tdef c[] = {
		{EXP("gate_proj", "weight"), K2_DTYPE_BF16, 64, 256, NULL},
		{EXP("down_proj", "weight"), K2_DTYPE_BF16, 256, 64, NULL},
	};
	write_checkpoint(dir, c, 2);
	static const char *const w3[] = {"missing tensor", EXP("up_proj", "weight"), NULL};
	import_fails(dir, K2_FORMAT_NONE, w3);

	snprintf(dir, sizeof(dir), "%s/range", tmpdir);
	const struct tdef d[] = {
		{"model.layers.1.mlp.experts.1.gate_proj.weight", K2_DTYPE_BF16, 64, 256, NULL},
	};
	write_checkpoint(dir, d, 1);
	static const char *const w4[] = {"experts.1.gate_proj", "n_routed_experts 1", NULL};
	import_fails(dir, K2_FORMAT_NONE, w4);

	snprintf(dir, sizeof(dir), "%s/fp8", tmpdir);
	const struct tdef f[] = {
		{EXP("gate_proj", "weight"), K2_DTYPE_F8_E4M3, 64, 256, NULL},
		{EXP("up_proj", "weight"), K2_DTYPE_BF16, 64, 256, NULL},
		{EXP("down_proj", "weight"), K2_DTYPE_BF16, 256, 64, NULL},
	};
	write_checkpoint(dir, f, 3);
	static const char *const w5[] = {"missing tensor", EXP("gate_proj", "weight_scale_inv"), NULL};
	import_fails(dir, K2_FORMAT_NONE, w5);
}
END_TEST

START_TEST(test_bad_int4)
{
	char dir[600], out[600];
	static const int32_t good_gate[2] = {64, 256}, good_down[2] = {256, 64},
			     bad_shape[2] = {64, 255};
	const struct tdef ok[] = {
		{EXP("gate_proj", "weight_packed"), K2_DTYPE_I32, 64, 32, NULL},
		{EXP("gate_proj", "weight_scale"), K2_DTYPE_BF16, 64, 8, NULL},
		{EXP("gate_proj", "weight_shape"), K2_DTYPE_I32, 2, 0, good_gate},
		{EXP("up_proj", "weight_packed"), K2_DTYPE_I32, 64, 32, NULL},
		{EXP("up_proj", "weight_scale"), K2_DTYPE_BF16, 64, 8, NULL},
		{EXP("up_proj", "weight_shape"), K2_DTYPE_I32, 2, 0, bad_shape},
		{EXP("down_proj", "weight_packed"), K2_DTYPE_I32, 256, 8, NULL},
		{EXP("down_proj", "weight_scale"), K2_DTYPE_BF16, 256, 2, NULL},
		{EXP("down_proj", "weight_shape"), K2_DTYPE_I32, 2, 0, good_down},
	};
	snprintf(dir, sizeof(dir), "%s/i4", tmpdir);
	write_checkpoint(dir, ok, 9);
	static const char *const w1[] = {EXP("up_proj", "weight_shape"), "[64, 255]",
					 "expected [64, 256]", NULL};
	import_fails(dir, K2_FORMAT_NONE, w1);
	import_fails(dir, K2_FORMAT_BF16, w1);

	struct tdef fixed[9];
	memcpy(fixed, ok, sizeof(ok));
	fixed[5].vals = good_gate;
	snprintf(dir, sizeof(dir), "%s/i4ok", tmpdir);
	write_checkpoint(dir, fixed, 9);
	import_ok(dir, "i4.k2", K2_FORMAT_NONE, 1, out, sizeof(out));

	fixed[4].c = 4; /* weight_scale [64, 4]: group 64 is not supported */
	snprintf(dir, sizeof(dir), "%s/i4g", tmpdir);
	write_checkpoint(dir, fixed, 9);
	static const char *const w2[] = {EXP("up_proj", "weight_scale"), "[64, 4]",
					 "expected [64, 8]", NULL};
	import_fails(dir, K2_FORMAT_NONE, w2);
}
END_TEST

START_TEST(test_cancel_leaves_nothing)
{
	char src[512], out[600];
	model_dir(0, src, sizeof(src));
	snprintf(out, sizeof(out), "%s/out.k2", tmpdir);
	volatile sig_atomic_t flag = 1;
	k2i_opts o;
	k2i_opts_default(&o);
	o.cancel = &flag;
	k2_err err = {{0}};
	ck_assert_int_eq(k2i_import(src, out, &o, NULL, &err), -EINTR);
	ck_assert_ptr_nonnull(strstr(err.msg, "interrupted"));
	static const char *const none[] = {NULL};
	(void)none;
	DIR *d = opendir(tmpdir);
	struct dirent *de;
	while ((de = readdir(d)))
		ck_assert_msg(strncmp(de->d_name, "out.k2", 6) != 0, "%s left behind", de->d_name);
	closedir(d);
}
END_TEST

static Suite *import_suite(void)
{
	Suite *s = suite_create("import");
	TCase *tc = tcase_create("fixtures");
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_keep_dense_and_files, 0, 3);
	tcase_add_loop_test(tc, test_keep_experts_exact, 0, 3);
	tcase_add_test(tc, test_keep_int4_nibble_order);
	tcase_add_loop_test(tc, test_convert_bounds, 0,
			    (int)(sizeof(conv_cases) / sizeof(conv_cases[0])));
	tcase_add_test(tc, test_int4_reproduces_fixture);
	tcase_add_test(tc, test_fp8_reproduces_fixture);
	tcase_add_test(tc, test_threads_same_output);
	suite_add_tcase(s, tc);

	TCase *tb = tcase_create("bad input");
	tcase_add_unchecked_fixture(tb, setup, teardown);
	tcase_set_timeout(tb, 60);
	tcase_add_test(tb, test_expert_name_parse);
	tcase_add_test(tb, test_small_checkpoint_ok);
	tcase_add_test(tb, test_bad_shape);
	tcase_add_test(tb, test_bad_kind_dtype_missing);
	tcase_add_test(tb, test_bad_int4);
	tcase_add_test(tb, test_cancel_leaves_nothing);
	suite_add_tcase(s, tb);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(import_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
