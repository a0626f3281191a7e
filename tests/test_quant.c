/* test_quant.c — the reference number conversions and quantizers of
 * layout/quant.c: e4m3 and bf16 against independently computed values and
 * their rounding rules, the fixtures reproduced bit for bit (bf16 fixture →
 * int4 fixture's nibbles and scales, bf16 fixture → fp8 fixture's bytes and
 * scale_inv), and dequantization error bounds for every format. */
#include "layout.h"

#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* Deterministic pseudo-random floats, roughly normal with unit variance. */
static uint64_t rng_state;
static float rnd(void)
{
	float s = 0;
	for (int i = 0; i < 4; i++) {
		rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
		s += (float)(rng_state >> 40) / (float)(1 << 24) - 0.5f;
	}
	return s * 1.7320508f;
}

/* ---------------------------------------------------------------- e4m3 */

/* Independent definition of e4m3fn, from the format's parameters in double. */
static double e4m3_ref(unsigned v)
{
	int sign = v & 0x80 ? -1 : 1;
	unsigned e = (v >> 3) & 15, m = v & 7;
	if (e == 0)
		return sign * ldexp(m / 8.0, -6);
	return sign * ldexp(1.0 + m / 8.0, (int)e - 7);
}

START_TEST(test_e4m3_decode_all)
{
	/* Spot values from the OCP FP8 spec. */
	ck_assert_float_eq(k2q_e4m3_to_f32(0x7e), 448.0f);
	ck_assert_float_eq(k2q_e4m3_to_f32(0xfe), -448.0f);
	ck_assert_float_eq(k2q_e4m3_to_f32(0x01), 0x1p-9f);
	ck_assert_float_eq(k2q_e4m3_to_f32(0x07), 7 * 0x1p-9f);
	ck_assert_float_eq(k2q_e4m3_to_f32(0x08), 0x1p-6f);
	ck_assert_float_eq(k2q_e4m3_to_f32(0x38), 1.0f);
	ck_assert_float_eq(k2q_e4m3_to_f32(0x39), 1.125f);
	ck_assert_float_eq(k2q_e4m3_to_f32(0x40), 2.0f);
	ck_assert_float_eq(k2q_e4m3_to_f32(0x77), 240.0f);
	ck_assert_float_eq(k2q_e4m3_to_f32(0x78), 256.0f);
	ck_assert_float_eq(k2q_e4m3_to_f32(0xb8), -1.0f);
	ck_assert(k2q_e4m3_to_f32(0x00) == 0.0f && !signbit(k2q_e4m3_to_f32(0x00)));
	ck_assert(k2q_e4m3_to_f32(0x80) == 0.0f && signbit(k2q_e4m3_to_f32(0x80)));
	ck_assert(isnan(k2q_e4m3_to_f32(0x7f)));
	ck_assert(isnan(k2q_e4m3_to_f32(0xff)));
	/* Every code: no infinities, only two NaNs, values as defined, and the
	 * positive codes strictly increasing. */
	float prev = -1;
	for (unsigned v = 0; v < 256; v++) {
		float f = k2q_e4m3_to_f32((uint8_t)v);
		EXPECT(!isinf(f), "code 0x%02x is infinite", v);
		if ((v & 0x7f) == 0x7f) {
			EXPECT(isnan(f), "code 0x%02x is not NaN", v);
			continue;
		}
		EXPECT((double)f == e4m3_ref(v), "code 0x%02x decodes to %g, expected %g", v,
			      (double)f, e4m3_ref(v));
		if (v < 0x7f) {
			EXPECT(f > prev || v == 0, "code 0x%02x not increasing", v);
			prev = f;
		}
		EXPECT(k2q_e4m3_to_f32((uint8_t)(v ^ 0x80)) == -f, "code 0x%02x sign", v);
	}
}
END_TEST

START_TEST(test_e4m3_encode)
{
	/* Every finite code survives decode → encode. */
	for (unsigned v = 0; v < 256; v++) {
		if ((v & 0x7f) == 0x7f)
			continue;
		EXPECT(k2q_f32_to_e4m3(k2q_e4m3_to_f32((uint8_t)v)) == v, "code 0x%02x", v);
	}
	/* Ties between adjacent codes go to the even code; just off the tie goes to
	 * the nearer one. Covers subnormals, the subnormal/normal boundary and
	 * every binade. */
	for (unsigned v = 0; v < 0x7e; v++) {
		float a = k2q_e4m3_to_f32((uint8_t)v), b = k2q_e4m3_to_f32((uint8_t)(v + 1));
		float mid = (float)(((double)a + (double)b) / 2);
		EXPECT((double)mid == ((double)a + (double)b) / 2, "mid 0x%02x inexact", v);
		unsigned even = v % 2 == 0 ? v : v + 1;
		EXPECT(k2q_f32_to_e4m3(mid) == even, "tie %g: 0x%02x, expected 0x%02x",
			      (double)mid, k2q_f32_to_e4m3(mid), even);
		EXPECT(k2q_f32_to_e4m3(-mid) == (even | 0x80), "tie -%g", (double)mid);
		EXPECT(k2q_f32_to_e4m3(nextafterf(mid, 0)) == v, "below tie 0x%02x", v);
		EXPECT(k2q_f32_to_e4m3(nextafterf(mid, 1000)) == v + 1, "above tie 0x%02x", v);
	}
	/* Below half the smallest subnormal: zero; the tie 2^-10 goes to 0 (even). */
	ck_assert_uint_eq(k2q_f32_to_e4m3(0x1p-10f), 0x00);
	ck_assert_uint_eq(k2q_f32_to_e4m3(0x1.000002p-10f), 0x01);
	ck_assert_uint_eq(k2q_f32_to_e4m3(1e-30f), 0x00);
	ck_assert_uint_eq(k2q_f32_to_e4m3(-1e-30f), 0x80);
	/* 0.3 → nearest of 0.28125 (0x29) and 0.3125 (0x2a): 0.3125 is nearer. */
	ck_assert_uint_eq(k2q_f32_to_e4m3(0.3f), 0x2a);
	/* Saturation and NaN. */
	ck_assert_uint_eq(k2q_f32_to_e4m3(448.0f), 0x7e);
	ck_assert_uint_eq(k2q_f32_to_e4m3(460.0f), 0x7e);
	ck_assert_uint_eq(k2q_f32_to_e4m3(1e6f), 0x7e);
	ck_assert_uint_eq(k2q_f32_to_e4m3(-1e6f), 0xfe);
	ck_assert_uint_eq(k2q_f32_to_e4m3(INFINITY), 0x7e);
	ck_assert_uint_eq(k2q_f32_to_e4m3(NAN) & 0x7f, 0x7f);
}
END_TEST

/* ---------------------------------------------------------------- bf16 */

START_TEST(test_bf16)
{
	ck_assert_uint_eq(k2q_f32_to_bf16(1.0f), 0x3f80);
	ck_assert_uint_eq(k2q_f32_to_bf16(-2.0f), 0xc000);
	/* 1 + 2^-8 is the tie between 1 (0x3f80, even) and 1 + 2^-7 (0x3f81). */
	ck_assert_uint_eq(k2q_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
	/* 1 + 3·2^-8 ties 0x3f81 (odd) and 0x3f82 (even). */
	ck_assert_uint_eq(k2q_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
	ck_assert_uint_eq(k2q_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
	ck_assert_uint_eq(k2q_f32_to_bf16(3.0e38f), 0x7f62);
	ck_assert_uint_eq(k2q_f32_to_bf16(3.4e38f), 0x7f80); /* rounds up to inf */
	ck_assert(isnan(k2q_bf16_to_f32(k2q_f32_to_bf16(NAN))));
	ck_assert(isnan(k2q_bf16_to_f32(k2q_f32_to_bf16(-NAN))));
	ck_assert_float_eq(k2q_bf16_to_f32(0x3f80), 1.0f);
	ck_assert_float_eq(k2q_bf16_to_f32(0x0001), 0x1p-133f);
	for (uint32_t v = 0; v < 65536; v++) {
		float f = k2q_bf16_to_f32((uint16_t)v);
		if (isnan(f)) {
			EXPECT(isnan(k2q_bf16_to_f32(k2q_f32_to_bf16(f))), "NaN 0x%04x", v);
			continue;
		}
		EXPECT(k2q_f32_to_bf16(f) == v, "bf16 0x%04x does not round-trip", v);
	}
}
END_TEST

START_TEST(test_to_f32)
{
	uint16_t h[] = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x7c00, 0x8000, 0x3555};
	float f[7];
	ck_assert_int_eq(k2q_to_f32(K2_DTYPE_F16, h, 7, f), 0);
	ck_assert_float_eq(f[0], 1.0f);
	ck_assert_float_eq(f[1], -2.0f);
	ck_assert_float_eq(f[2], 0x1p-24f);
	ck_assert_float_eq(f[3], 65504.0f);
	ck_assert(isinf(f[4]) && f[4] > 0);
	ck_assert(f[5] == 0 && signbit(f[5]));
	ck_assert_float_eq(f[6], 0x1.554p-2f);
	uint8_t e[] = {0x38, 0xc0, 0x01};
	ck_assert_int_eq(k2q_to_f32(K2_DTYPE_F8_E4M3, e, 3, f), 0);
	ck_assert_float_eq(f[0], 1.0f);
	ck_assert_float_eq(f[1], -2.0f);
	ck_assert_float_eq(f[2], 0x1p-9f);
	uint16_t b[] = {0x4049};
	ck_assert_int_eq(k2q_to_f32(K2_DTYPE_BF16, b, 1, f), 0);
	ck_assert_float_eq(f[0], 3.140625f);
	ck_assert_int_eq(k2q_to_f32(K2_DTYPE_I32, b, 1, f), -EINVAL);
}
END_TEST

/* ---------------------------------------------------------------- fixtures */

static int has_suffix(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && strcmp(s + a - b, suf) == 0;
}

/* bf16 fixture → int4: every routed expert projection equals the int4 fixture's
 * weight_packed bytes and weight_scale exactly. */
START_TEST(test_int4_reproduces_fixture)
{
	k2st_checkpoint *src = tu_fixture_open("k2-tiny-bf16");
	k2st_checkpoint *ref = tu_fixture_open("k2-tiny-int4");
	size_t checked = 0;
	for (size_t i = 0; i < k2st_count(ref); i++) {
		const k2st_tensor *tp = k2st_at(ref, i);
		if (!has_suffix(tp->name, ".weight_packed"))
			continue;
		char base[1100], name[1200];
		snprintf(base, sizeof(base), "%.*s", (int)(strlen(tp->name) - strlen("weight_packed")),
			 tp->name);
		snprintf(name, sizeof(name), "%sweight", base);
		const k2st_tensor *tw = k2st_find(src, name);
		EXPECT(tw != NULL, "%s missing from the bf16 fixture", name);
		snprintf(name, sizeof(name), "%sweight_scale", base);
		const k2st_tensor *ts = k2st_find(ref, name);
		snprintf(name, sizeof(name), "%sweight_shape", base);
		const k2st_tensor *tsh = k2st_find(ref, name);
		ck_assert(ts && tsh);
		ck_assert_uint_eq(tw->dtype, K2_DTYPE_BF16);
		ck_assert_uint_eq(tw->ndim, 2);
		uint32_t rows = (uint32_t)tw->shape[0], cols = (uint32_t)tw->shape[1];
		ck_assert_uint_eq(tp->dtype, K2_DTYPE_I32);
		ck_assert_uint_eq(tp->shape[0], rows);
		ck_assert_uint_eq(tp->shape[1], cols / 8);
		ck_assert_uint_eq(ts->dtype, K2_DTYPE_BF16);
		ck_assert_uint_eq(ts->shape[1], cols / 32);
		int32_t *shp = tu_tensor_read(ref, tsh);
		ck_assert_int_eq(shp[0], (int32_t)rows);
		ck_assert_int_eq(shp[1], (int32_t)cols);
		free(shp);

		size_t n;
		float *w = tu_tensor_f32(src, tw, &n);
		uint8_t *packed = malloc(n / 2);
		uint16_t *scale = malloc(n / 32 * 2);
		ck_assert_int_eq(k2q_quant_int4_g32(w, rows, cols, packed, scale), 0);
		uint8_t *want_p = tu_tensor_read(ref, tp);
		uint16_t *want_s = tu_tensor_read(ref, ts);
		ck_assert_uint_eq(tp->bytes, n / 2);
		ck_assert_uint_eq(ts->bytes, n / 32 * 2);
		for (size_t k = 0; k < n / 32; k++)
			EXPECT(scale[k] == want_s[k], "%s: scale %zu is 0x%04x, fixture 0x%04x",
				      tw->name, k, scale[k], want_s[k]);
		for (size_t k = 0; k < n / 2; k++)
			EXPECT(packed[k] == want_p[k], "%s: packed byte %zu is 0x%02x, fixture 0x%02x",
				      tw->name, k, packed[k], want_p[k]);

		/* Dequantization error: |w − q·s| ≤ 0.53·s. 0.5 from rounding, plus the
		 * bf16 rounding of s = max/7.5 (relative 2^-8), which can push the
		 * largest element to 7.53·s, clamped to 7. */
		float *deq = malloc(n * sizeof(float));
		ck_assert_int_eq(k2q_dequant(K2_FORMAT_INT4_G32, packed, scale, rows, cols, deq), 0);
		for (size_t k = 0; k < n; k++) {
			float s = k2q_bf16_to_f32(scale[k / 32]);
			EXPECT(fabsf(w[k] - deq[k]) <= 0.53f * s, "%s[%zu]: %g vs %g (s %g)",
				      tw->name, k, (double)w[k], (double)deq[k], (double)s);
		}
		free(deq);
		free(w);
		free(packed);
		free(scale);
		free(want_p);
		free(want_s);
		checked++;
	}
	/* 3 MoE layers × 32 experts × 3 projections. */
	ck_assert_uint_eq(checked, 288);
	k2st_close(src);
	k2st_close(ref);
}
END_TEST

/* bf16 fixture → fp8: every tensor the fp8 fixture stores as F8_E4M3 with a
 * _scale_inv (attention, dense, shared and routed projections) equals it exactly. */
START_TEST(test_fp8_reproduces_fixture)
{
	k2st_checkpoint *src = tu_fixture_open("k2-tiny-bf16");
	k2st_checkpoint *ref = tu_fixture_open("k2-tiny-fp8");
	size_t checked = 0, edge_blocks = 0;
	for (size_t i = 0; i < k2st_count(ref); i++) {
		const k2st_tensor *tsi = k2st_at(ref, i);
		if (!has_suffix(tsi->name, "_scale_inv"))
			continue;
		char name[1200];
		snprintf(name, sizeof(name), "%.*s", (int)(strlen(tsi->name) - strlen("_scale_inv")),
			 tsi->name);
		const k2st_tensor *tq = k2st_find(ref, name), *tw = k2st_find(src, name);
		EXPECT(tq && tw, "%s missing", name);
		ck_assert_uint_eq(tq->dtype, K2_DTYPE_F8_E4M3);
		ck_assert_uint_eq(tsi->dtype, K2_DTYPE_F32);
		uint32_t rows = (uint32_t)tw->shape[0], cols = (uint32_t)tw->shape[1];
		uint32_t br = (rows + 127) / 128, bc = (cols + 127) / 128;
		ck_assert_uint_eq(tsi->shape[0], br);
		ck_assert_uint_eq(tsi->shape[1], bc);
		if (rows % 128 || cols % 128)
			edge_blocks++;

		size_t n;
		float *w = tu_tensor_f32(src, tw, &n);
		uint8_t *q = malloc(n);
		float *s = malloc((size_t)br * bc * sizeof(float));
		ck_assert_int_eq(k2q_quant_fp8_b128(w, rows, cols, q, s), 0);
		uint8_t *want_q = tu_tensor_read(ref, tq);
		float *want_s = tu_tensor_read(ref, tsi);
		for (size_t k = 0; k < (size_t)br * bc; k++)
			EXPECT(memcmp(&s[k], &want_s[k], 4) == 0,
				      "%s: scale_inv %zu is %a, fixture %a", name, k, (double)s[k],
				      (double)want_s[k]);
		for (size_t k = 0; k < n; k++)
			EXPECT(q[k] == want_q[k], "%s: byte %zu is 0x%02x, fixture 0x%02x",
				      name, k, q[k], want_q[k]);

		/* Dequantization error: e4m3 keeps 3 mantissa bits, so a normal value is
		 * off by at most 2^-4 of itself, a subnormal (|w/s| < 2^-6) by half
		 * the step 2^-9·s; plus float32 rounding (2^-22 relative). */
		float *deq = malloc(n * sizeof(float));
		ck_assert_int_eq(k2q_dequant(K2_FORMAT_FP8_B128, q, s, rows, cols, deq), 0);
		for (uint32_t r = 0; r < rows; r++)
			for (uint32_t c = 0; c < cols; c++) {
				size_t k = (size_t)r * cols + c;
				float sc = s[(r / 128) * bc + c / 128];
				float bound = fmaxf(fabsf(w[k]) * 0x1p-4f, sc * 0x1p-10f) +
					      fabsf(w[k]) * 0x1p-22f;
				EXPECT(fabsf(w[k] - deq[k]) <= bound, "%s[%zu]: %g vs %g",
					      name, k, (double)w[k], (double)deq[k]);
			}
		free(deq);
		free(w);
		free(q);
		free(s);
		free(want_q);
		free(want_s);
		checked++;
	}
	/* 4 layers × 5 attention projections + 3 dense + 3 × (96 routed + 3 shared). */
	ck_assert_uint_eq(checked, 320);
	ck_assert_uint_gt(edge_blocks, 0); /* partial edge blocks were exercised */
	k2st_close(src);
	k2st_close(ref);
}
END_TEST

/* ---------------------------------------------------------------- synthetic */

START_TEST(test_int8_roundtrip)
{
	const uint32_t rows = 37, cols = 300;
	float *w = malloc(rows * cols * sizeof(float)), *deq = malloc(rows * cols * sizeof(float));
	int8_t *q = malloc(rows * cols);
	float s[37];
	rng_state = 42;
	for (uint32_t i = 0; i < rows * cols; i++)
		w[i] = rnd() * (float)(1 + i / cols);
	for (uint32_t c = 0; c < cols; c++)
		w[5 * cols + c] = 0; /* an all-zero row: scale 1e-12, q all 0 */
	ck_assert_int_eq(k2q_quant_int8_row(w, rows, cols, q, s), 0);
	ck_assert_int_eq(k2q_dequant(K2_FORMAT_INT8, q, s, rows, cols, deq), 0);
	ck_assert_float_eq(s[5], 1e-12f);
	for (uint32_t r = 0; r < rows; r++) {
		float amax = 0;
		int qmax = 0;
		for (uint32_t c = 0; c < cols; c++)
			amax = fmaxf(amax, fabsf(w[r * cols + c]));
		if (r != 5)
			ck_assert_float_eq(s[r], amax / 127.0f);
		/* Bound: |w − q·s| ≤ s/2 (rounding), plus float32 error of the
		 * division and product (≤ 127·s·2^-23). */
		for (uint32_t c = 0; c < cols; c++) {
			size_t k = (size_t)r * cols + c;
			EXPECT(fabsf(w[k] - deq[k]) <= s[r] * (0.5f + 1e-4f), "[%u,%u]", r, c);
			EXPECT(q[k] >= -127 && q[k] <= 127, "q out of range");
			if (abs(q[k]) > qmax)
				qmax = abs(q[k]);
		}
		ck_assert_int_eq(qmax, r == 5 ? 0 : 127); /* the largest element maps to ±127 */
	}
	/* Ties: s = 1 exactly when max = 127; 2.5 → 2, 3.5 → 4, -2.5 → -2. */
	float t[4] = {127.0f, 2.5f, 3.5f, -2.5f};
	int8_t tq[4];
	float ts;
	ck_assert_int_eq(k2q_quant_int8_row(t, 1, 4, tq, &ts), 0);
	ck_assert_float_eq(ts, 1.0f);
	ck_assert_int_eq(tq[1], 2);
	ck_assert_int_eq(tq[2], 4);
	ck_assert_int_eq(tq[3], -2);
	free(w);
	free(deq);
	free(q);
}
END_TEST

START_TEST(test_int4_rules)
{
	/* One group: max 7.5 → scale exactly 1.0; q = rne(w), clamped. */
	float w[64];
	for (int i = 0; i < 64; i++)
		w[i] = 0;
	w[0] = 7.5f;   /* 7.5/1 → rne 8 → clamped 7 */
	w[1] = -7.5f;  /* → -8 */
	w[2] = 2.5f;   /* → 2 (even) */
	w[3] = 3.5f;   /* → 4 */
	w[4] = -0.5f;  /* → -0 = 0 */
	w[5] = 1.49f;  /* → 1 */
	uint8_t p[32];
	uint16_t s[2];
	ck_assert_int_eq(k2q_quant_int4_g32(w, 1, 64, p, s), 0);
	ck_assert_uint_eq(s[0], 0x3f80);              /* bf16 1.0 */
	ck_assert_uint_eq(s[1], k2q_f32_to_bf16(1e-8f)); /* all-zero group: clamp min */
	ck_assert_uint_eq(p[0], (uint8_t)((7 + 8) | ((-8 + 8) << 4)));
	ck_assert_uint_eq(p[1], (uint8_t)((2 + 8) | ((4 + 8) << 4)));
	ck_assert_uint_eq(p[2], (uint8_t)((0 + 8) | ((1 + 8) << 4)));
	for (int i = 16; i < 32; i++)
		ck_assert_uint_eq(p[i], 0x88);
	ck_assert_int_eq(k2q_quant_int4_g32(w, 1, 48, p, s), -EINVAL); /* cols % 32 */

	/* Synthetic round trip, bound 0.53·s as in the fixture test. */
	const uint32_t rows = 9, cols = 96;
	float *x = malloc(rows * cols * 4), *d = malloc(rows * cols * 4);
	uint8_t *pk = malloc(rows * cols / 2);
	uint16_t *sc = malloc(rows * cols / 32 * 2);
	rng_state = 7;
	for (uint32_t i = 0; i < rows * cols; i++)
		x[i] = rnd() * 0.05f;
	ck_assert_int_eq(k2q_quant_int4_g32(x, rows, cols, pk, sc), 0);
	ck_assert_int_eq(k2q_dequant(K2_FORMAT_INT4_G32, pk, sc, rows, cols, d), 0);
	for (uint32_t i = 0; i < rows * cols; i++)
		EXPECT(fabsf(x[i] - d[i]) <= 0.53f * k2q_bf16_to_f32(sc[i / 32]), "int4 error at %u", i);
	free(x);
	free(d);
	free(pk);
	free(sc);
}
END_TEST

START_TEST(test_fp8_partial_blocks)
{
	/* 130 × 260: blocks of 128×128, 128×4, 2×128, 2×4 at the edges. */
	const uint32_t rows = 130, cols = 260;
	float *w = malloc(rows * cols * 4), *d = malloc(rows * cols * 4);
	uint8_t *q = malloc(rows * cols);
	float s[2 * 3];
	rng_state = 99;
	for (uint32_t i = 0; i < rows * cols; i++)
		w[i] = rnd();
	w[129 * cols + 259] = 50.0f; /* the max of the last (2×4) block */
	ck_assert_int_eq(k2q_quant_fp8_b128(w, rows, cols, q, s), 0);
	ck_assert_float_eq(s[5], 50.0f / 448.0f);
	ck_assert_uint_eq(q[129 * cols + 259], 0x7e); /* 50 / (50/448) = 448 */
	for (int b = 0; b < 6; b++) {
		uint32_t r0 = (b / 3) * 128, c0 = (b % 3) * 128;
		float amax = 0;
		for (uint32_t r = r0; r < rows && r < r0 + 128; r++)
			for (uint32_t c = c0; c < cols && c < c0 + 128; c++)
				amax = fmaxf(amax, fabsf(w[r * cols + c]));
		ck_assert_float_eq(s[b], amax / 448.0f);
	}
	ck_assert_int_eq(k2q_dequant(K2_FORMAT_FP8_B128, q, s, rows, cols, d), 0);
	for (uint32_t r = 0; r < rows; r++)
		for (uint32_t c = 0; c < cols; c++) {
			size_t k = (size_t)r * cols + c;
			float sc = s[(r / 128) * 3 + c / 128];
			EXPECT(fabsf(w[k] - d[k]) <=
				       fmaxf(fabsf(w[k]) * 0x1p-4f, sc * 0x1p-10f) + fabsf(w[k]) * 0x1p-22f,
			       "fp8 error at [%u,%u]", r, c);
		}
	/* An all-zero block: scale 1e-12/448, q 0. */
	float z[4] = {0, 0, 0, 0};
	uint8_t zq[4];
	float zs;
	ck_assert_int_eq(k2q_quant_fp8_b128(z, 2, 2, zq, &zs), 0);
	ck_assert_float_eq(zs, 1e-12f / 448.0f);
	ck_assert_uint_eq(zq[0] | zq[1] | zq[2] | zq[3], 0);
	free(w);
	free(d);
	free(q);
}
END_TEST

START_TEST(test_dequant_bad_args)
{
	uint8_t b[64] = {0};
	float f[64];
	ck_assert_int_eq(k2q_dequant(K2_FORMAT_NONE, b, b, 1, 1, f), -EINVAL);
	ck_assert_int_eq(k2q_dequant(99, b, b, 1, 1, f), -EINVAL);
	ck_assert_int_eq(k2q_dequant(K2_FORMAT_INT4_G32, b, b, 1, 16, f), -EINVAL);
	ck_assert_int_eq(k2q_dequant(K2_FORMAT_BF16, b, NULL, 0, 4, f), -EINVAL);
	uint16_t one[2] = {0x3f80, 0xbf80};
	ck_assert_int_eq(k2q_dequant(K2_FORMAT_BF16, one, NULL, 1, 2, f), 0);
	ck_assert_float_eq(f[0], 1.0f);
	ck_assert_float_eq(f[1], -1.0f);
}
END_TEST

static Suite *quant_suite(void)
{
	Suite *s = suite_create("quant");
	TU_ADD_TESTS(tu_tcase(s, "scalar", 0), test_e4m3_decode_all, test_e4m3_encode, test_bf16,
		     test_to_f32);
	TU_ADD_TESTS(tu_tcase(s, "quantizers", 0), test_int8_roundtrip, test_int4_rules,
		     test_fp8_partial_blocks, test_dequant_bad_args);
	TU_ADD_TESTS(tu_tcase(s, "fixtures", 120), test_int4_reproduces_fixture,
		     test_fp8_reproduces_fixture);
	return s;
}

int main(void)
{
	return tu_run_suite(quant_suite());
}
