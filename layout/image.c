/* image.c — the expert image of FORMAT.md §2: computing where the six sections of
 * an image of a given format and dims go, writing the header page, and parsing a
 * header page back with full validation.
 *
 * Section rows/cols give the shape of the array stored in the section, so that
 * bytes = rows × cols × k2_dtype_size(dtype) for every section: int4-g32 weights
 * are U8 [rows, cols/2], fp8 scales F32 [ceil(rows/128), ceil(cols/128)], int8
 * scales F32 [rows, 1], int4 scales BF16 [rows, cols/32]. The logical matrix dims
 * come from the header: gate and up are [inter, hidden], down is [hidden, inter]. */
#include "pack_impl.h"

#include <errno.h>
#include <inttypes.h>

static void set_section(k2x_section *s, uint32_t rows, uint32_t cols, uint32_t dtype)
{
	s->rows = rows;
	s->cols = cols;
	s->dtype = dtype;
	s->bytes = (uint64_t)rows * cols * k2_dtype_size(dtype);
}

/* Returns 0, or -EINVAL for an unknown format, a zero dim, a dim above 2^20, or
 * int4-g32 with hidden or inter not a multiple of 32. */
int k2x_layout_compute(uint32_t format, uint32_t hidden, uint32_t inter,
		       uint32_t layer, uint32_t expert, k2x_layout *out)
{
	if (format == K2_FORMAT_NONE || format >= K2_FORMAT_COUNT)
		return -EINVAL;
	if (hidden == 0 || inter == 0 || hidden > K2X_MAX_DIM || inter > K2X_MAX_DIM)
		return -EINVAL;
	if (format == K2_FORMAT_INT4_G32 && (hidden % 32 || inter % 32))
		return -EINVAL;

	k2x_layout lay;
	memset(&lay, 0, sizeof(lay));
	lay.format = format;
	lay.layer = layer;
	lay.expert = expert;
	lay.hidden = hidden;
	lay.inter = inter;

	/* (rows, cols) of gate, up, down: rows are outputs. */
	const uint32_t dims[3][2] = {{inter, hidden}, {inter, hidden}, {hidden, inter}};
	for (int m = 0; m < 3; m++) {
		uint32_t r = dims[m][0], c = dims[m][1];
		k2x_section *w = &lay.sec[2 * m], *s = &lay.sec[2 * m + 1];
		switch (format) {
		case K2_FORMAT_BF16:
			set_section(w, r, c, K2_DTYPE_BF16);
			break;
		case K2_FORMAT_FP8_B128:
			set_section(w, r, c, K2_DTYPE_F8_E4M3);
			set_section(s, (r + 127) / 128, (c + 127) / 128, K2_DTYPE_F32);
			break;
		case K2_FORMAT_INT8:
			set_section(w, r, c, K2_DTYPE_I8);
			set_section(s, r, 1, K2_DTYPE_F32);
			break;
		case K2_FORMAT_INT4_G32:
			set_section(w, r, c / 2, K2_DTYPE_U8);
			set_section(s, r, c / 32, K2_DTYPE_BF16);
			break;
		}
	}
	uint64_t cursor = K2X_HEADER_BYTES;
	for (int i = 0; i < K2X_SECTIONS; i++) {
		lay.sec[i].offset = cursor;
		cursor += k2_align_up(lay.sec[i].bytes);
	}
	lay.image_bytes = cursor;
	*out = lay;
	return 0;
}

static void layout_to_disk(const k2x_layout *lay, struct k2x_header_disk *h)
{
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, K2X_MAGIC, 8);
	h->version = K2X_VERSION;
	h->format = lay->format;
	h->layer = lay->layer;
	h->expert = lay->expert;
	h->hidden = lay->hidden;
	h->intermediate = lay->inter;
	h->image_bytes = lay->image_bytes;
	for (int i = 0; i < K2X_SECTIONS; i++) {
		h->sections[i].offset = lay->sec[i].offset;
		h->sections[i].bytes = lay->sec[i].bytes;
		h->sections[i].rows = lay->sec[i].rows;
		h->sections[i].cols = lay->sec[i].cols;
		h->sections[i].dtype = lay->sec[i].dtype;
	}
}

void k2x_header_write(const k2x_layout *lay, void *hdr)
{
	uint8_t *p = hdr;
	struct k2x_header_disk h;
	memset(p, 0, K2X_HEADER_BYTES);
	layout_to_disk(lay, &h);
	k2x_header_encode(&h, p);
	k2le_put64(p + K2X_HEADER_SUMMED, k2_checksum(p, K2X_HEADER_SUMMED));
}

static const char *const section_names[K2X_SECTIONS] = {
	"gate weights", "gate scales", "up weights", "up scales", "down weights", "down scales",
};

/* Returns 0, or -EINVAL with a message naming `what` and the first field found wrong. */
int k2x_header_parse(const void *hdr, size_t hdr_bytes, uint64_t image_bytes,
		     const char *what, k2x_layout *out, k2_err *err)
{
	const uint8_t *p = hdr;
	if (!what)
		what = "expert image";
	if (!p || hdr_bytes < K2X_HEADER_USED)
		return k2_err_set(err, -EINVAL,
				  "%s: expert header needs %u bytes, got %zu", what,
				  K2X_HEADER_USED, p ? hdr_bytes : 0);
	struct k2x_header_disk h;
	k2x_header_decode(p, &h);
	if (memcmp(h.magic, K2X_MAGIC, 8) != 0)
		return k2_err_set(err, -EINVAL, "%s: offset 0: not an expert image (bad magic)",
				  what);
	if (h.version != K2X_VERSION)
		return k2_err_set(err, -EINVAL,
				  "%s: offset 8: expert image version %" PRIu32
				  " is not supported (expected %d)", what, h.version, K2X_VERSION);
	uint64_t sum = k2_checksum(p, K2X_HEADER_SUMMED);
	if (sum != h.header_checksum)
		return k2_err_set(err, -EINVAL,
				  "%s: offset 232: header checksum mismatch (stored %016" PRIx64
				  ", computed %016" PRIx64 ")", what, h.header_checksum, sum);
	size_t tail = hdr_bytes < K2X_HEADER_BYTES ? hdr_bytes : K2X_HEADER_BYTES;
	for (size_t i = K2X_HEADER_USED; i < tail; i++)
		if (p[i] != 0)
			return k2_err_set(err, -EINVAL,
					  "%s: offset %zu: header padding must be zero", what, i);
	if (h.image_bytes != image_bytes)
		return k2_err_set(err, -EINVAL,
				  "%s: offset 32: header says %" PRIu64 " image bytes, file has %" PRIu64,
				  what, h.image_bytes, image_bytes);
	k2x_layout lay;
	if (k2x_layout_compute(h.format, h.hidden, h.intermediate, h.layer, h.expert, &lay) < 0)
		return k2_err_set(err, -EINVAL,
				  "%s: offset 12: invalid format %" PRIu32 " with hidden %" PRIu32
				  ", intermediate %" PRIu32 " (known formats 1-4, dims 1..2^20, int4 "
				  "dims multiples of 32)", what, h.format, h.hidden, h.intermediate);
	if (lay.image_bytes != h.image_bytes)
		return k2_err_set(err, -EINVAL,
				  "%s: offset 32: image_bytes %" PRIu64 ", expected %" PRIu64
				  " for %s %" PRIu32 "x%" PRIu32, what, h.image_bytes, lay.image_bytes,
				  k2_format_name(h.format), h.hidden, h.intermediate);
	for (int i = 0; i < K2X_SECTIONS; i++) {
		const struct k2x_section_disk *s = &h.sections[i];
		const k2x_section *e = &lay.sec[i];
		if (s->offset != e->offset || s->bytes != e->bytes || s->rows != e->rows ||
		    s->cols != e->cols || s->dtype != e->dtype || s->reserved != 0)
			return k2_err_set(err, -EINVAL,
					  "%s: offset %d: section %d (%s) is offset %" PRIu64
					  " bytes %" PRIu64 " [%" PRIu32 "x%" PRIu32 "] dtype %" PRIu32
					  ", expected offset %" PRIu64 " bytes %" PRIu64 " [%" PRIu32
					  "x%" PRIu32 "] dtype %" PRIu32, what, 40 + 32 * i, i,
					  section_names[i], s->offset, s->bytes, s->rows, s->cols,
					  s->dtype, e->offset, e->bytes, e->rows, e->cols, e->dtype);
	}
	if (out)
		*out = lay;
	return 0;
}
