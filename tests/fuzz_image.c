/* fuzz_image.c — libFuzzer target for the expert image header
 * (layout/image.c, FORMAT.md §2: k2x_header_parse, k2x_layout_compute,
 * k2x_header_write). Any bytes are the start of an expert image (the seeds
 * are header pages of real images, extracted from packs), parsed three ways:
 *   - as they are, the input's size taken as the image's;
 *   - with the image size the header claims (offset 32), as a pack whose
 *     index agrees with the header would give it;
 *   - as the second, with the header checksum (offset 232) recomputed, so
 *     that mutations reach the checks of the fields behind it.
 * The first 20 bytes are also read as format, hidden, intermediate, layer and
 * expert, and an image header of that shape is written and parsed back.
 * The contract:
 *   - a refusal is -EINVAL with a message naming the file;
 *   - a header is accepted only when it is exactly the header that
 *     k2x_header_write makes of what was parsed (every byte, padding zero);
 *   - the parsed layout is k2x_layout_compute's for those dims: sections in
 *     order, aligned, each rows x cols x dtype size bytes, inside the image;
 *   - a header written from any shape k2x_layout_compute accepts parses back
 *     to the same layout.
 * A broken promise aborts, for libFuzzer to report. Built by `make fuzz`. */
#include "layout.h"
#include "pack_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_PATH "fuzz/experts/001/017"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_image: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	abort();
}

static void check_layout(const k2x_layout *lay, uint64_t image_bytes)
{
	k2x_layout want;
	if (k2x_layout_compute(lay->format, lay->hidden, lay->inter, lay->layer, lay->expert,
			       &want))
		fail("a parsed layout has a shape k2x_layout_compute refuses", NULL);
	if (memcmp(&want, lay, sizeof(want)) != 0)
		fail("a parsed layout is not k2x_layout_compute's", NULL);
	if (lay->image_bytes != image_bytes)
		fail("a parsed layout has another image size", NULL);
	uint64_t end = K2X_HEADER_BYTES;
	for (int i = 0; i < K2X_SECTIONS; i++) {
		const k2x_section *s = &lay->sec[i];
		if (s->offset != end || s->offset % K2P_ALIGN)
			fail("a section out of order or unaligned", NULL);
		if (s->bytes != (uint64_t)s->rows * s->cols * k2_dtype_size(s->dtype))
			fail("a section's bytes are not its shape's", NULL);
		if (s->bytes > image_bytes - s->offset)
			fail("a section past the image's end", NULL);
		end = k2_align_up(s->offset + s->bytes);
	}
	if (end != image_bytes)
		fail("the image does not end after its last section", NULL);
}

/* Parses hdr[0..n) as the header of an image of image_bytes. */
static void parse_one(const uint8_t *hdr, size_t n, uint64_t image_bytes)
{
	k2x_layout lay;
	k2_err err = {{0}};
	int rc = k2x_header_parse(hdr, n, image_bytes, FUZZ_PATH, &lay, &err);
	if (rc) {
		if (rc != -EINVAL)
			fail("unexpected error code", err.msg);
		if (strncmp(err.msg, FUZZ_PATH ": ", sizeof(FUZZ_PATH ": ") - 1) != 0)
			fail("a refusal does not name the file", err.msg);
		return;
	}
	check_layout(&lay, image_bytes);
	/* The header is canonical: writing the layout gives back its bytes. */
	uint8_t *page = malloc(K2X_HEADER_BYTES);
	if (!page)
		return;
	k2x_header_write(&lay, page);
	size_t cmp = n < K2X_HEADER_BYTES ? n : K2X_HEADER_BYTES;
	if (memcmp(page, hdr, cmp) != 0)
		fail("an accepted header is not the one its layout writes", NULL);
	free(page);
}

/* A header written from a shape the input picks must parse back. */
static void write_parse(const uint8_t *data, size_t size)
{
	if (size < 20)
		return;
	uint32_t v[5];
	for (int i = 0; i < 5; i++)
		v[i] = k2le_get32(data + 4 * i);
	/* Small dims most of the time, so that shapes are often valid. */
	uint32_t format = v[0] % (K2_FORMAT_COUNT + 1);
	uint32_t hidden = v[1] & 0x80000000u ? v[1] & 0x7fffffffu : v[1] % 4097;
	uint32_t inter = v[2] & 0x80000000u ? v[2] & 0x7fffffffu : v[2] % 4097;
	k2x_layout lay, back;
	if (k2x_layout_compute(format, hidden, inter, v[3], v[4], &lay))
		return;
	uint8_t *page = malloc(K2X_HEADER_BYTES);
	if (!page)
		return;
	k2x_header_write(&lay, page);
	k2_err err = {{0}};
	if (k2x_header_parse(page, K2X_HEADER_BYTES, lay.image_bytes, FUZZ_PATH, &back, &err))
		fail("a written header is refused", err.msg);
	if (memcmp(&lay, &back, sizeof(lay)) != 0)
		fail("a written header parses to another layout", NULL);
	check_layout(&back, lay.image_bytes);
	free(page);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A private copy sized exactly, so ASan flags a read one past the end. */
	size_t n = size < K2X_HEADER_BYTES ? size : K2X_HEADER_BYTES;
	uint8_t *hdr = malloc(n ? n : 1);
	if (!hdr)
		return 0;
	memcpy(hdr, data, n);
	parse_one(hdr, n, size);
	if (n >= 40) {
		uint64_t claimed = k2le_get64(hdr + 32);
		parse_one(hdr, n, claimed);
		if (n >= K2X_HEADER_USED) {
			k2le_put64(hdr + K2X_HEADER_SUMMED, k2_checksum(hdr, K2X_HEADER_SUMMED));
			parse_one(hdr, n, claimed);
		}
	}
	free(hdr);
	write_parse(data, size);
	return 0;
}
