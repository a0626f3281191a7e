/* quant.c — reference (plain C, exact) number conversions and quantizers:
 * bf16 <-> f32, float8 e4m3fn <-> f32, and the expert formats of FORMAT.md §2.2
 * (fp8 block-128, int8 per row, int4 group-32). The quantizers follow the rules
 * the fixtures were made with (tests/fixtures/mkref.py, i.e. DeepSeek-V3's
 * fp8 blocks and compressed-tensors' minmax int4) operation for operation in
 * float32, so they reproduce them bit for bit. */
#include "layout.h"

#include <errno.h>
#include <math.h>
#include <string.h>

static inline uint32_t f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static inline float bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

float k2q_bf16_to_f32(uint16_t v)
{
	return bits_f32((uint32_t)v << 16);
}

/* Round to nearest even, as c10::BFloat16; every NaN becomes the quiet 0x7fc0. */
uint16_t k2q_f32_to_bf16(float v)
{
	uint32_t u = f32_bits(v);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return 0x7fc0;
	u += 0x7fffu + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

/* e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities; S.1111.111
 * is NaN; max 448; subnormals m × 2^-9. */
float k2q_e4m3_to_f32(uint8_t v)
{
	uint32_t sign = (uint32_t)(v & 0x80) << 24;
	uint32_t e = (v >> 3) & 0xf, m = v & 7;
	if (e == 0xf && m == 7)
		return bits_f32(sign | 0x7fc00000u);
	if (e == 0) /* subnormal or zero: exact in float32 */
		return bits_f32(sign | f32_bits((float)m * 0x1p-9f));
	return bits_f32(sign | ((e + 120) << 23) | (m << 20));
}

/* c10::detail::fp8e4m3fn_from_fp32_value, except that finite values (and
 * infinities) beyond 448 saturate to ±448 where torch would give NaN: only
 * |x| > 464 differs, and the quantizers never produce it. */
uint8_t k2q_f32_to_e4m3(float v)
{
	uint32_t u = f32_bits(v);
	uint32_t sign = u & 0x80000000u;
	u ^= sign;
	uint8_t r;
	if (u > 0x7f800000u) {
		return 0x7f | (uint8_t)(sign >> 24);
	} else if (u > 0x43e00000u) { /* above 448 */
		r = 0x7e;
	} else if (u < (121u << 23)) { /* below 2^-6, the smallest normal */
		/* Adding 2^14 leaves the e4m3 subnormal step (2^-9) as the float32
		 * ulp, so the addition itself rounds to nearest even. */
		const uint32_t denorm_mask = 141u << 23;
		uint32_t t = f32_bits(bits_f32(u) + bits_f32(denorm_mask));
		r = (uint8_t)(t - denorm_mask);
	} else {
		uint32_t mant_odd = (u >> 20) & 1;
		u += ((uint32_t)(7 - 127) << 23) + 0x7ffffu;
		u += mant_odd;
		r = (uint8_t)(u >> 20);
	}
	return r | (uint8_t)(sign >> 24);
}

/* Round half to even into [lo, hi]; NaN gives 0. */
static inline int round_clamp(float x, int lo, int hi)
{
	if (x != x)
		return 0;
	float r = rintf(x); /* the default rounding mode: nearest, ties to even */
	if (r < (float)lo)
		return lo;
	if (r > (float)hi)
		return hi;
	return (int)r;
}

#define FP8_BLOCK 128u

int k2q_quant_fp8_b128(const float *w, uint32_t rows, uint32_t cols, uint8_t *q,
		       float *scale_inv)
{
	if (!rows || !cols)
		return -EINVAL;
	uint32_t bcols = (cols + FP8_BLOCK - 1) / FP8_BLOCK;
	for (uint32_t r0 = 0; r0 < rows; r0 += FP8_BLOCK) {
		uint32_t r1 = rows - r0 < FP8_BLOCK ? rows : r0 + FP8_BLOCK;
		float *s = scale_inv + (size_t)(r0 / FP8_BLOCK) * bcols;
		for (uint32_t b = 0; b < bcols; b++)
			s[b] = 0.0f;
		for (uint32_t r = r0; r < r1; r++) {
			const float *row = w + (size_t)r * cols;
			for (uint32_t c = 0; c < cols; c++)
				s[c / FP8_BLOCK] = fmaxf(s[c / FP8_BLOCK], fabsf(row[c]));
		}
		/* torch: blk.abs().max().clamp(min=1e-12) / 448.0, in float32 */
		for (uint32_t b = 0; b < bcols; b++)
			s[b] = fmaxf(s[b], 1e-12f) / 448.0f;
		for (uint32_t r = r0; r < r1; r++) {
			const float *row = w + (size_t)r * cols;
			uint8_t *qr = q + (size_t)r * cols;
			for (uint32_t c = 0; c < cols; c++)
				qr[c] = k2q_f32_to_e4m3(row[c] / s[c / FP8_BLOCK]);
		}
	}
	return 0;
}

int k2q_quant_int8_row(const float *w, uint32_t rows, uint32_t cols, int8_t *q, float *scale)
{
	if (!rows || !cols)
		return -EINVAL;
	for (uint32_t r = 0; r < rows; r++) {
		const float *row = w + (size_t)r * cols;
		float amax = 0.0f;
		for (uint32_t c = 0; c < cols; c++)
			amax = fmaxf(amax, fabsf(row[c]));
		float s = fmaxf(amax / 127.0f, 1e-12f);
		scale[r] = s;
		for (uint32_t c = 0; c < cols; c++)
			q[(size_t)r * cols + c] = (int8_t)round_clamp(row[c] / s, -127, 127);
	}
	return 0;
}

#define INT4_GROUP 32u

int k2q_quant_int4_g32(const float *w, uint32_t rows, uint32_t cols, uint8_t *packed,
		       uint16_t *scale_bf16)
{
	if (!rows || !cols || cols % INT4_GROUP)
		return -EINVAL;
	uint32_t groups = cols / INT4_GROUP;
	for (uint32_t r = 0; r < rows; r++) {
		for (uint32_t g = 0; g < groups; g++) {
			const float *x = w + (size_t)r * cols + (size_t)g * INT4_GROUP;
			float amax = 0.0f;
			for (uint32_t i = 0; i < INT4_GROUP; i++)
				amax = fmaxf(amax, fabsf(x[i]));
			/* compressed-tensors minmax: (amax / 7.5).clamp(min=1e-8).to(bf16) */
			uint16_t sb = k2q_f32_to_bf16(fmaxf(amax / 7.5f, 1e-8f));
			scale_bf16[(size_t)r * groups + g] = sb;
			float s = k2q_bf16_to_f32(sb);
			uint8_t *p = packed + (size_t)r * (cols / 2) + (size_t)g * (INT4_GROUP / 2);
			for (uint32_t i = 0; i < INT4_GROUP; i += 2) {
				int lo = round_clamp(x[i] / s, -8, 7) + 8;
				int hi = round_clamp(x[i + 1] / s, -8, 7) + 8;
				p[i / 2] = (uint8_t)(lo | (hi << 4));
			}
		}
	}
	return 0;
}

int k2q_dequant(uint32_t format, const void *weights, const void *scales, uint32_t rows,
		uint32_t cols, float *w)
{
	if (!rows || !cols)
		return -EINVAL;
	size_t n = (size_t)rows * cols;
	switch (format) {
	case K2_FORMAT_BF16: {
		const uint16_t *b = weights;
		for (size_t i = 0; i < n; i++)
			w[i] = k2q_bf16_to_f32(b[i]);
		return 0;
	}
	case K2_FORMAT_FP8_B128: {
		const uint8_t *q = weights;
		const float *s = scales;
		uint32_t bcols = (cols + FP8_BLOCK - 1) / FP8_BLOCK;
		for (uint32_t r = 0; r < rows; r++) {
			const float *sr = s + (size_t)(r / FP8_BLOCK) * bcols;
			for (uint32_t c = 0; c < cols; c++) {
				size_t i = (size_t)r * cols + c;
				w[i] = k2q_e4m3_to_f32(q[i]) * sr[c / FP8_BLOCK];
			}
		}
		return 0;
	}
	case K2_FORMAT_INT8: {
		const int8_t *q = weights;
		const float *s = scales;
		for (uint32_t r = 0; r < rows; r++)
			for (uint32_t c = 0; c < cols; c++) {
				size_t i = (size_t)r * cols + c;
				w[i] = (float)q[i] * s[r];
			}
		return 0;
	}
	case K2_FORMAT_INT4_G32: {
		if (cols % INT4_GROUP)
			return -EINVAL;
		const uint8_t *p = weights;
		const uint16_t *s = scales;
		uint32_t groups = cols / INT4_GROUP;
		for (uint32_t r = 0; r < rows; r++) {
			const uint8_t *pr = p + (size_t)r * (cols / 2);
			float *wr = w + (size_t)r * cols;
			for (uint32_t c = 0; c < cols; c += 2) {
				float sc = k2q_bf16_to_f32(s[(size_t)r * groups + c / INT4_GROUP]);
				uint8_t b = pr[c / 2];
				wr[c] = (float)((int)(b & 0xf) - 8) * sc;
				wr[c + 1] = (float)((int)(b >> 4) - 8) * sc;
			}
		}
		return 0;
	}
	default:
		return -EINVAL;
	}
}

int k2q_to_f32(uint32_t dtype, const void *src, size_t n_elems, float *dst)
{
	switch (dtype) {
	case K2_DTYPE_BF16: {
		const uint16_t *s = src;
		for (size_t i = 0; i < n_elems; i++)
			dst[i] = k2q_bf16_to_f32(s[i]);
		return 0;
	}
	case K2_DTYPE_F16: {
		const uint16_t *s = src;
		for (size_t i = 0; i < n_elems; i++) {
			uint32_t h = s[i], sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1f,
				 m = h & 0x3ff;
			float f;
			if (e == 0)
				f = (float)m * 0x1p-24f; /* zero or subnormal, exact */
			else if (e == 31)
				f = bits_f32(0x7f800000u | (m << 13) | (m ? 0x400000u : 0));
			else
				f = bits_f32(((e + 112) << 23) | (m << 13));
			dst[i] = bits_f32(f32_bits(f) | sign);
		}
		return 0;
	}
	case K2_DTYPE_F32:
		memcpy(dst, src, n_elems * sizeof(float));
		return 0;
	case K2_DTYPE_F8_E4M3: {
		const uint8_t *s = src;
		for (size_t i = 0; i < n_elems; i++)
			dst[i] = k2q_e4m3_to_f32(s[i]);
		return 0;
	}
	default:
		return -EINVAL;
	}
}
