/* test_image.c — Check suite for the expert image layout (FORMAT.md §2): section
 * sizes and offsets for every format at Kimi-K2 and odd dims, header write/parse
 * round trips, and rejection of bad dims and damaged or inconsistent headers. */
#include "layout.h"
#include "pack_impl.h"

#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static uint64_t pad(uint64_t v)
{
	return (v + 4095) / 4096 * 4096;
}

/* Checks the invariants every layout must have, and returns the image size. */
static uint64_t check_layout(const k2x_layout *l)
{
	uint64_t cursor = 4096;
	for (int i = 0; i < K2X_SECTIONS; i++) {
		const k2x_section *s = &l->sec[i];
		ck_assert_uint_eq(s->offset, cursor);
		ck_assert_uint_eq(s->offset % 4096, 0);
		ck_assert_uint_eq(s->bytes, (uint64_t)s->rows * s->cols * k2_dtype_size(s->dtype));
		cursor += pad(s->bytes);
	}
	ck_assert_uint_eq(l->image_bytes, cursor);
	return cursor;
}

START_TEST(layout_kimi_k2_dims)
{
	const uint32_t H = 7168, I = 2048;
	k2x_layout l;

	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_BF16, H, I, 5, 300, &l), 0);
	check_layout(&l);
	ck_assert_uint_eq(l.layer, 5);
	ck_assert_uint_eq(l.expert, 300);
	ck_assert_uint_eq(l.sec[K2X_GATE_W].bytes, 29360128);      /* 2048 * 7168 * 2 */
	ck_assert_uint_eq(l.sec[K2X_GATE_W].rows, I);
	ck_assert_uint_eq(l.sec[K2X_GATE_W].cols, H);
	ck_assert_uint_eq(l.sec[K2X_DOWN_W].rows, H);
	ck_assert_uint_eq(l.sec[K2X_DOWN_W].cols, I);
	ck_assert_uint_eq(l.sec[K2X_GATE_S].bytes, 0);
	ck_assert_uint_eq(l.sec[K2X_GATE_S].offset, l.sec[K2X_UP_W].offset);
	ck_assert_uint_eq(l.sec[K2X_UP_W].offset, 4096 + 29360128);
	ck_assert_uint_eq(l.image_bytes, 4096 + 3ull * 29360128);   /* 88084480 */

	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_FP8_B128, H, I, 0, 0, &l), 0);
	check_layout(&l);
	ck_assert_uint_eq(l.sec[K2X_GATE_W].bytes, 14680064);
	ck_assert_uint_eq(l.sec[K2X_GATE_W].dtype, K2_DTYPE_F8_E4M3);
	ck_assert_uint_eq(l.sec[K2X_GATE_S].rows, 16);
	ck_assert_uint_eq(l.sec[K2X_GATE_S].cols, 56);
	ck_assert_uint_eq(l.sec[K2X_GATE_S].bytes, 16 * 56 * 4);
	ck_assert_uint_eq(l.sec[K2X_DOWN_S].rows, 56);
	ck_assert_uint_eq(l.sec[K2X_DOWN_S].cols, 16);
	ck_assert_uint_eq(l.image_bytes, 4096 + 3ull * (14680064 + 4096));

	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_INT8, H, I, 0, 0, &l), 0);
	check_layout(&l);
	ck_assert_uint_eq(l.sec[K2X_GATE_W].dtype, K2_DTYPE_I8);
	ck_assert_uint_eq(l.sec[K2X_GATE_S].bytes, 2048 * 4);
	ck_assert_uint_eq(l.sec[K2X_DOWN_S].bytes, 7168 * 4);
	ck_assert_uint_eq(l.image_bytes, 4096 + 3ull * 14680064 + 8192 + 8192 + 28672);

	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_INT4_G32, H, I, 0, 0, &l), 0);
	check_layout(&l);
	ck_assert_uint_eq(l.sec[K2X_GATE_W].dtype, K2_DTYPE_U8);
	ck_assert_uint_eq(l.sec[K2X_GATE_W].cols, H / 2);
	ck_assert_uint_eq(l.sec[K2X_GATE_W].bytes, 7340032);
	ck_assert_uint_eq(l.sec[K2X_GATE_S].dtype, K2_DTYPE_BF16);
	ck_assert_uint_eq(l.sec[K2X_GATE_S].cols, H / 32);
	ck_assert_uint_eq(l.sec[K2X_GATE_S].bytes, 917504);
	ck_assert_uint_eq(l.sec[K2X_DOWN_S].rows, H);
	ck_assert_uint_eq(l.sec[K2X_DOWN_S].cols, I / 32);
	ck_assert_uint_eq(l.image_bytes, 24776704);
}
END_TEST

START_TEST(layout_odd_dims)
{
	k2x_layout l;
	/* fp8 with partial 128-blocks on both axes: H = 300, I = 200. */
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_FP8_B128, 300, 200, 1, 2, &l), 0);
	check_layout(&l);
	ck_assert_uint_eq(l.sec[K2X_GATE_W].bytes, 60000);
	ck_assert_uint_eq(l.sec[K2X_GATE_S].rows, 2);
	ck_assert_uint_eq(l.sec[K2X_GATE_S].cols, 3);
	ck_assert_uint_eq(l.sec[K2X_GATE_S].offset, 4096 + 61440);
	ck_assert_uint_eq(l.sec[K2X_DOWN_S].rows, 3);
	ck_assert_uint_eq(l.sec[K2X_DOWN_S].cols, 2);
	ck_assert_uint_eq(l.image_bytes, 200704);
	/* int8 small */
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_INT8, 64, 96, 0, 0, &l), 0);
	check_layout(&l);
	ck_assert_uint_eq(l.image_bytes, 40960);
	/* bf16 1x1 */
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_BF16, 1, 1, 0, 0, &l), 0);
	ck_assert_uint_eq(check_layout(&l), 4096 * 4);
	/* the largest allowed */
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_INT4_G32, 1u << 20, 1u << 20, 0, 0, &l), 0);
	check_layout(&l);
}
END_TEST

START_TEST(layout_rejects)
{
	k2x_layout l;
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_NONE, 64, 64, 0, 0, &l), -EINVAL);
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_COUNT, 64, 64, 0, 0, &l), -EINVAL);
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_BF16, 0, 64, 0, 0, &l), -EINVAL);
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_BF16, 64, 0, 0, 0, &l), -EINVAL);
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_BF16, (1u << 20) + 1, 64, 0, 0, &l), -EINVAL);
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_INT8, 64, (1u << 20) + 1, 0, 0, &l), -EINVAL);
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_INT4_G32, 48, 64, 0, 0, &l), -EINVAL);
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_INT4_G32, 64, 48, 0, 0, &l), -EINVAL);
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_INT4_G32, 64, 96, 0, 0, &l), 0);
}
END_TEST

START_TEST(header_round_trip)
{
	uint32_t fmt = (uint32_t)_i + 1;
	k2x_layout l, back;
	ck_assert_int_eq(k2x_layout_compute(fmt, 7168, 2048, 60, 383, &l), 0);
	uint8_t *hdr = malloc(4096);
	memset(hdr, 0xee, 4096);
	k2x_header_write(&l, hdr);
	ck_assert_int_eq(memcmp(hdr, "K2EXPRT\1", 8), 0);
	ck_assert_uint_eq(k2le_get32(hdr + 12), fmt);
	ck_assert_uint_eq(k2le_get64(hdr + 32), l.image_bytes);
	ck_assert_uint_eq(k2le_get64(hdr + 40 + 32 * 2), l.sec[K2X_UP_W].offset);
	ck_assert_uint_eq(k2le_get64(hdr + 232), k2_checksum(hdr, 232));
	for (int i = 240; i < 4096; i++)
		ck_assert_uint_eq(hdr[i], 0);
	k2_err err;
	memset(&back, 0, sizeof(back));
	ck_assert_int_eq(k2x_header_parse(hdr, 4096, l.image_bytes, "x", &back, &err), 0);
	ck_assert_int_eq(memcmp(&back, &l, sizeof(l)), 0);
	/* The used bytes alone are enough. */
	ck_assert_int_eq(k2x_header_parse(hdr, 240, l.image_bytes, "x", &back, &err), 0);
	free(hdr);
}
END_TEST

/* Re-checksums a header after an edit, so only the structural checks can catch it. */
static void resum(uint8_t *hdr)
{
	k2le_put64(hdr + 232, k2_checksum(hdr, 232));
}

START_TEST(header_rejects)
{
	k2x_layout l, out;
	ck_assert_int_eq(k2x_layout_compute(K2_FORMAT_FP8_B128, 300, 200, 1, 2, &l), 0);
	uint8_t good[4096], h[4096];
	k2x_header_write(&l, good);
	k2_err err;
	const char *what = "experts/001/002";

#define REJECT(needle) do { \
		err.msg[0] = 0; \
		ck_assert_int_eq(k2x_header_parse(h, sizeof(h), l.image_bytes, what, &out, &err), \
				 -EINVAL); \
		ck_assert_msg(strstr(err.msg, needle) && strstr(err.msg, what), \
			      "message \"%s\" lacks \"%s\"", err.msg, needle); \
	} while (0)

	memcpy(h, good, sizeof(h));
	h[3] ^= 1;
	REJECT("bad magic");
	memcpy(h, good, sizeof(h));
	k2le_put32(h + 8, 2);
	resum(h);
	REJECT("version 2");
	/* Every used byte flipped is caught by the checksum. */
	for (int i = 8; i < 240; i++) {
		memcpy(h, good, sizeof(h));
		h[i] ^= 0x04;
		REJECT("offset");
	}
	memcpy(h, good, sizeof(h));
	h[3000] = 1;
	REJECT("padding");
	memcpy(h, good, sizeof(h));
	k2le_put32(h + 12, 9);  /* unknown format */
	resum(h);
	REJECT("invalid format 9");
	memcpy(h, good, sizeof(h));
	k2le_put32(h + 24, 0);  /* hidden 0 */
	resum(h);
	REJECT("invalid format");
	memcpy(h, good, sizeof(h));
	k2le_put32(h + 28, 2000000);  /* intermediate above 2^20 */
	resum(h);
	REJECT("invalid format");
	memcpy(h, good, sizeof(h));
	k2le_put32(h + 28, 201);  /* same padded size, other section shapes */
	resum(h);
	REJECT("section 0 (gate weights)");
	memcpy(h, good, sizeof(h));
	k2le_put32(h + 28, 1000);  /* another size: image_bytes no longer fits the dims */
	resum(h);
	REJECT("image_bytes");
	memcpy(h, good, sizeof(h));
	k2le_put64(h + 40 + 32 * 3, l.sec[3].offset + 4096);  /* up scales moved */
	resum(h);
	REJECT("section 3 (up scales)");
	memcpy(h, good, sizeof(h));
	k2le_put32(h + 40 + 32 * 1 + 24, K2_DTYPE_BF16);  /* gate scale dtype */
	resum(h);
	REJECT("section 1 (gate scales)");
	memcpy(h, good, sizeof(h));
	k2le_put32(h + 40 + 32 * 5 + 28, 1);  /* reserved */
	resum(h);
	REJECT("section 5");
	/* The file size must match. */
	memcpy(h, good, sizeof(h));
	ck_assert_int_eq(k2x_header_parse(h, sizeof(h), l.image_bytes - 1, what, &out, &err),
			 -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "image bytes"));
	ck_assert_int_eq(k2x_header_parse(h, 239, l.image_bytes, what, &out, &err), -EINVAL);
	ck_assert_int_eq(k2x_header_parse(NULL, 4096, l.image_bytes, what, &out, &err), -EINVAL);
	ck_assert_int_eq(k2x_header_parse(h, sizeof(h), l.image_bytes, what, &out, &err), 0);
#undef REJECT
}
END_TEST

static Suite *image_suite(void)
{
	Suite *s = suite_create("image");
	TU_ADD_TESTS(tu_tcase(s, "layout", 0), layout_kimi_k2_dims, layout_odd_dims,
		     layout_rejects);
	TCase *tc = tu_tcase(s, "header", 0);
	tcase_add_loop_test(tc, header_round_trip, 0, 4);
	tcase_add_test(tc, header_rejects);
	return s;
}

int main(void)
{
	return tu_run_suite(image_suite());
}
