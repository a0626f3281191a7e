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

#include "import.h"
#include "layout.h"
#include "test_util.h"

static const char *const fixture_names[3] = {"k2-tiny-bf16", "k2-tiny-fp8", "k2-tiny-int4"};
static const uint32_t fixture_formats[3] = {K2_FORMAT_BF16, K2_FORMAT_FP8_B128,
					    K2_FORMAT_INT4_G32};
static const char *const projs[3] = {"gate_proj", "up_proj", "down_proj"};

static void model_dir(int fx, char *buf, size_t n)
{
	tu_fixture_model(fixture_names[fx], buf, n);
}

/* Imports model directory src into tu_tmpdir/name; asserts success. */
static void import_ok(const char *src, const char *name, uint32_t experts, int threads,
		      char *out, size_t n)
{
	snprintf(out, n, "%s/%s", tu_tmpdir, name);
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
	k2p_pack *p = tu_pack_open(out);
	k2st_checkpoint *ck = tu_checkpoint_open(src);

	/* config.json byte for byte */
	snprintf(cfg, sizeof(cfg), "%s/config.json", src);
	size_t cn;
	char *cj = tu_read_file(cfg, &cn);
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
		uint8_t *b = tu_tensor_read(ck, t);
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
	k2p_pack *p = tu_pack_open(out);
	k2st_checkpoint *ck = tu_checkpoint_open(src);
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
				uint8_t *w = tu_tensor_read_named(ck, name, &t);
				ck_assert_uint_eq(lay.sec[2 * pj].bytes, t->bytes);
				ck_assert_msg(memcmp(img + lay.sec[2 * pj].offset, w, t->bytes) == 0,
					      "%s differs in expert %u/%u", name, l, e);
				free(w);
				if (ssuf) {
					snprintf(name, sizeof(name), "model.layers.%u.mlp.experts.%u.%s.%s",
						 l, e, projs[pj], ssuf);
					uint8_t *s = tu_tensor_read_named(ck, name, &t);
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
	k2p_pack *p = tu_pack_open(out);
	k2st_checkpoint *ck = tu_checkpoint_open(src);
	const k2p_entry *en = k2p_expert_find(p, 2, 7);
	ck_assert_ptr_nonnull(en);
	uint8_t *img = read_entry(p, en);
	k2x_layout lay;
	parse_image(img, en->raw_bytes, &lay);
	const k2st_tensor *tw, *ts;
	int32_t *words = tu_tensor_read_named(ck, "model.layers.2.mlp.experts.7.down_proj.weight_packed", &tw);
	uint16_t *sc = tu_tensor_read_named(ck, "model.layers.2.mlp.experts.7.down_proj.weight_scale", &ts);
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
	uint8_t *w = tu_tensor_read_named(ck, name, &t);
	float *f = malloc(sizeof(float) * rows * cols);
	ck_assert_ptr_nonnull(f);
	if (fx == 0) {
		ck_assert_int_eq(k2q_to_f32(K2_DTYPE_BF16, w, (size_t)rows * cols, f), 0);
	} else if (fx == 2) {
		/* compressed-tensors: w = (nibble - 8) × weight_scale, decoded here by hand */
		snprintf(name, sizeof(name), "model.layers.%u.mlp.experts.%u.%s.weight_scale", l, e,
			 projs[pj]);
		const uint16_t *sc = tu_tensor_read_named(ck, name, NULL);
		const uint32_t *words = (const uint32_t *)w;
		for (uint32_t r = 0; r < rows; r++)
			for (uint32_t c = 0; c < cols; c++) {
				int q = (int)((words[r * (cols / 8) + c / 8] >> (4 * (c % 8))) & 15) - 8;
				f[(size_t)r * cols + c] = (float)q * k2q_bf16_to_f32(sc[r * (cols / 32) + c / 32]);
			}
		free((void *)sc);
	} else {
		strcat(name, "_scale_inv");
		uint8_t *s = tu_tensor_read_named(ck, name, NULL);
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
	k2p_pack *p = tu_pack_open(out);
	k2st_checkpoint *ck = tu_checkpoint_open(src);
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
	k2p_pack *a = tu_pack_open(pa), *b = tu_pack_open(pb);
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

/* Fixture `from` imported with --experts `format` has the expert images of
 * fixture `to` imported as it is. */
static void assert_import_reproduces(int from, uint32_t format, int to)
{
	char src[512], ref[512], name[64], pa[512], pb[512];
	model_dir(from, src, sizeof(src));
	model_dir(to, ref, sizeof(ref));
	snprintf(name, sizeof(name), "%s-%u.k2", fixture_names[from], format);
	import_ok(src, name, format, 2, pa, sizeof(pa));
	snprintf(name, sizeof(name), "%s-keep.k2", fixture_names[to]);
	import_ok(ref, name, K2_FORMAT_NONE, 2, pb, sizeof(pb));
	assert_same_experts(pa, pb);
}

START_TEST(test_int4_reproduces_fixture)
{
	assert_import_reproduces(0, K2_FORMAT_INT4_G32, 2);
	/* --experts int4 of an int4 source keeps it bit-exactly */
	assert_import_reproduces(2, K2_FORMAT_INT4_G32, 2);
}
END_TEST

START_TEST(test_fp8_reproduces_fixture)
{
	assert_import_reproduces(0, K2_FORMAT_FP8_B128, 1);
}
END_TEST

START_TEST(test_threads_same_output)
{
	char bf[512], pa[512], pb[512];
	model_dir(0, bf, sizeof(bf));
	setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
	import_ok(bf, "t1.k2", K2_FORMAT_INT4_G32, 1, pa, sizeof(pa));
	import_ok(bf, "t5.k2", K2_FORMAT_INT4_G32, 5, pb, sizeof(pb));
	unsetenv("SOURCE_DATE_EPOCH");
	tu_assert_same_file(pa, pb, "packs made with 1 and 5 threads differ");
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

/* Writes the checkpoint of tensors t[0..n) into tu_tmpdir/name, whose path
 * goes to dir[dn]. */
static void write_checkpoint(const char *name, const struct tdef *t, int n, char *dir, size_t dn)
{
	char path[600], cfgsrc[600];
	snprintf(dir, dn, "%s/%s", tu_tmpdir, name);
	mkdir(dir, 0755);
	snprintf(cfgsrc, sizeof(cfgsrc), "%s/k2-tiny-bf16/model/config.json", tu_fixtures());
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

/* Checks that nothing named out.k2* remains in tu_tmpdir. */
static void assert_no_output_left(void)
{
	DIR *d = opendir(tu_tmpdir);
	struct dirent *de;
	while ((de = readdir(d)))
		ck_assert_msg(strncmp(de->d_name, "out.k2", 6) != 0, "%s left behind", de->d_name);
	closedir(d);
}

/* Imports dir into tu_tmpdir/out.k2, expects failure with a message
 * containing each of want[], and checks that no output remains. */
static void import_fails(const char *dir, uint32_t experts, const char *const *want)
{
	char out[600];
	snprintf(out, sizeof(out), "%s/out.k2", tu_tmpdir);
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
	assert_no_output_left();
}

#define EXP(p, s) "model.layers.1.mlp.experts.0." p "." s

START_TEST(test_small_checkpoint_ok)
{
	char dir[600], out[600];
	const struct tdef t[] = {
		{"model.embed_tokens.weight", K2_DTYPE_BF16, 1024, 256, NULL},
		{EXP("gate_proj", "weight"), K2_DTYPE_BF16, 64, 256, NULL},
		{EXP("up_proj", "weight"), K2_DTYPE_F32, 64, 256, NULL},
		{EXP("down_proj", "weight"), K2_DTYPE_BF16, 256, 64, NULL},
	};
	write_checkpoint("ok", t, 4, dir, sizeof(dir));
	/* an F32 expert cannot be kept, but converts */
	static const char *const want[] = {EXP("up_proj", "weight"), "F32", "--experts bf16", NULL};
	import_fails(dir, K2_FORMAT_NONE, want);
	import_ok(dir, "ok.k2", K2_FORMAT_BF16, 2, out, sizeof(out));
	k2p_pack *p = tu_pack_open(out);
	const k2p_entry *e = k2p_expert_find(p, 1, 0);
	ck_assert_ptr_nonnull(e);
	ck_assert_ptr_nonnull(k2p_entry_find(p, "dense/model.embed_tokens.weight"));
	ck_assert_uint_eq(k2p_entry_count(p), 3);
	k2p_pack_close(p);
}
END_TEST

/* A checkpoint of up to three tensors that the importer refuses. */
struct bad_case {
	const char *name;    /* its folder in tu_tmpdir */
	struct tdef t[3];    /* unused entries: name NULL */
	uint32_t experts;    /* --experts */
	const char *want[5]; /* what the message contains; NULL-terminated */
};

static const struct bad_case bad_cases[] = {
	{"bad",
	 {{EXP("gate_proj", "weight"), K2_DTYPE_BF16, 64, 256, NULL},
	  {EXP("up_proj", "weight"), K2_DTYPE_BF16, 64, 128, NULL},
	  {EXP("down_proj", "weight"), K2_DTYPE_BF16, 256, 64, NULL}},
	 K2_FORMAT_NONE,
	 {"model.safetensors", EXP("up_proj", "weight"), "[64, 128]", "expected [64, 256]"}},
	{"kind",
	 {{EXP("gate_proj", "weight"), K2_DTYPE_BF16, 64, 256, NULL},
	  {EXP("gate_proj", "bias"), K2_DTYPE_BF16, 64, 0, NULL}},
	 K2_FORMAT_NONE,
	 {EXP("gate_proj", "bias"), "unknown kind"}},
	{"f64",
	 {{EXP("gate_proj", "weight"), K2_DTYPE_BF16, 64, 256, NULL},
	  {EXP("up_proj", "weight"), K2_DTYPE_F64, 64, 256, NULL},
	  {EXP("down_proj", "weight"), K2_DTYPE_BF16, 256, 64, NULL}},
	 K2_FORMAT_INT4_G32,
	 {EXP("up_proj", "weight"), "unsupported dtype F64"}},
	{"missing",
	 {{EXP("gate_proj", "weight"), K2_DTYPE_BF16, 64, 256, NULL},
	  {EXP("down_proj", "weight"), K2_DTYPE_BF16, 256, 64, NULL}},
	 K2_FORMAT_NONE,
	 {"missing tensor", EXP("up_proj", "weight")}},
	{"range",
	 {{"model.layers.1.mlp.experts.1.gate_proj.weight", K2_DTYPE_BF16, 64, 256, NULL}},
	 K2_FORMAT_NONE,
	 {"experts.1.gate_proj", "n_routed_experts 1"}},
	{"fp8",
	 {{EXP("gate_proj", "weight"), K2_DTYPE_F8_E4M3, 64, 256, NULL},
	  {EXP("up_proj", "weight"), K2_DTYPE_BF16, 64, 256, NULL},
	  {EXP("down_proj", "weight"), K2_DTYPE_BF16, 256, 64, NULL}},
	 K2_FORMAT_NONE,
	 {"missing tensor", EXP("gate_proj", "weight_scale_inv")}},
};

START_TEST(test_bad_checkpoint)
{
	const struct bad_case *bc = &bad_cases[_i];
	int n = 0;
	while (n < 3 && bc->t[n].name)
		n++;
	char dir[600];
	write_checkpoint(bc->name, bc->t, n, dir, sizeof(dir));
	import_fails(dir, bc->experts, bc->want);
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
	write_checkpoint("i4", ok, 9, dir, sizeof(dir));
	static const char *const w1[] = {EXP("up_proj", "weight_shape"), "[64, 255]",
					 "expected [64, 256]", NULL};
	import_fails(dir, K2_FORMAT_NONE, w1);
	import_fails(dir, K2_FORMAT_BF16, w1);

	struct tdef fixed[9];
	memcpy(fixed, ok, sizeof(ok));
	fixed[5].vals = good_gate;
	write_checkpoint("i4ok", fixed, 9, dir, sizeof(dir));
	import_ok(dir, "i4.k2", K2_FORMAT_NONE, 1, out, sizeof(out));

	fixed[4].c = 4; /* weight_scale [64, 4]: group 64 is not supported */
	write_checkpoint("i4g", fixed, 9, dir, sizeof(dir));
	static const char *const w2[] = {EXP("up_proj", "weight_scale"), "[64, 4]",
					 "expected [64, 8]", NULL};
	import_fails(dir, K2_FORMAT_NONE, w2);
}
END_TEST

START_TEST(test_cancel_leaves_nothing)
{
	char src[512], out[600];
	model_dir(0, src, sizeof(src));
	snprintf(out, sizeof(out), "%s/out.k2", tu_tmpdir);
	volatile sig_atomic_t flag = 1;
	k2i_opts o;
	k2i_opts_default(&o);
	o.cancel = &flag;
	k2_err err = {{0}};
	ck_assert_int_eq(k2i_import(src, out, &o, NULL, &err), -EINTR);
	ck_assert_ptr_nonnull(strstr(err.msg, "interrupted"));
	assert_no_output_left();
}
END_TEST

static Suite *import_suite(void)
{
	Suite *s = suite_create("import");
	TCase *tc = tu_tcase(s, "fixtures", 120);
	tcase_add_unchecked_fixture(tc, tu_tmpdir_setup, tu_tmpdir_teardown);
	tcase_add_loop_test(tc, test_keep_dense_and_files, 0, 3);
	tcase_add_loop_test(tc, test_keep_experts_exact, 0, 3);
	tcase_add_test(tc, test_keep_int4_nibble_order);
	tcase_add_loop_test(tc, test_convert_bounds, 0,
			    (int)(sizeof(conv_cases) / sizeof(conv_cases[0])));
	TU_ADD_TESTS(tc, test_int4_reproduces_fixture, test_fp8_reproduces_fixture,
		     test_threads_same_output);

	tc = tu_tcase(s, "bad input", 60);
	tcase_add_unchecked_fixture(tc, tu_tmpdir_setup, tu_tmpdir_teardown);
	TU_ADD_TESTS(tc, test_expert_name_parse, test_small_checkpoint_ok);
	tcase_add_loop_test(tc, test_bad_checkpoint, 0,
			    (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
	TU_ADD_TESTS(tc, test_bad_int4, test_cancel_leaves_nothing);
	return s;
}

int main(void)
{
	return tu_run_suite(import_suite());
}
