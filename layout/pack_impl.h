/* pack_impl.h — internal to layout/: the on-disk structs of FORMAT.md (pack header,
 * index entry, block, expert image header and section) and their explicit
 * little-endian encoders and decoders. File bytes are never cast to these structs:
 * every field is read with memcpy at its documented offset and converted from
 * little-endian, so any alignment of the source buffer is fine. */
#ifndef K2_PACK_IMPL_H
#define K2_PACK_IMPL_H

#include "layout.h"

#include <endian.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- little-endian */

static inline uint32_t k2le_get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return le32toh(v);
}

static inline uint64_t k2le_get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return le64toh(v);
}

static inline void k2le_put32(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}

static inline void k2le_put64(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static inline uint64_t k2_align_up(uint64_t v)
{
	return (v + (K2P_ALIGN - 1)) & ~(uint64_t)(K2P_ALIGN - 1);
}

/* ---------------------------------------------------------------- pack (FORMAT.md §1) */

#define K2P_MAGIC "K2PACK\0\1"
#define K2P_HEADER_BYTES 4096u
#define K2P_HEADER_USED 80u
#define K2P_HEADER_SUMMED 72u          /* header_checksum covers bytes 0 … 71 */
#define K2P_ENTRY_BYTES 128u
#define K2P_BLOCK_BYTES 32u
#define K2P_MAX_INDEX_BYTES (1ull << 30)
#define K2P_MAX_ENTRIES (1u << 24)
#define K2P_MAX_BLOCKS (1u << 28)
#define K2P_MIN_BLOCK_BYTES 4096u
#define K2P_DEFAULT_BLOCK_BYTES (256u << 10)
#define K2P_MAX_DIM (1ull << 40)

struct k2p_header_disk {
	uint8_t magic[8];
	uint32_t version;
	uint32_t flags;
	uint64_t file_bytes;
	uint64_t index_offset;
	uint64_t index_bytes;
	uint64_t index_checksum;
	uint32_t block_bytes;
	uint32_t n_entries;
	uint32_t n_blocks;
	uint32_t reserved;
	uint64_t created_unix;
	uint64_t header_checksum;
};
_Static_assert(sizeof(struct k2p_header_disk) == K2P_HEADER_USED, "pack header is 80 bytes");

struct k2p_entry_disk {
	uint32_t kind;
	uint32_t name_off;
	uint32_t name_len;
	uint32_t dtype;
	uint32_t ndim;
	uint32_t layer;
	uint32_t expert;
	uint32_t format;
	uint64_t shape[K2P_MAX_DIMS];
	uint64_t raw_bytes;
	uint64_t extent_offset;
	uint64_t extent_bytes;
	uint32_t first_block;
	uint32_t n_blocks;
};
_Static_assert(sizeof(struct k2p_entry_disk) == K2P_ENTRY_BYTES, "pack entry is 128 bytes");

struct k2p_block_disk {
	uint64_t offset;
	uint32_t stored_bytes;
	uint32_t raw_bytes;
	uint32_t codec;
	uint32_t reserved;
	uint64_t checksum;
};
_Static_assert(sizeof(struct k2p_block_disk) == K2P_BLOCK_BYTES, "pack block is 32 bytes");

/* Encodes h into p[0 … 79] (checksum field as given). */
static inline void k2p_header_encode(const struct k2p_header_disk *h, uint8_t *p)
{
	memcpy(p, h->magic, 8);
	k2le_put32(p + 8, h->version);
	k2le_put32(p + 12, h->flags);
	k2le_put64(p + 16, h->file_bytes);
	k2le_put64(p + 24, h->index_offset);
	k2le_put64(p + 32, h->index_bytes);
	k2le_put64(p + 40, h->index_checksum);
	k2le_put32(p + 48, h->block_bytes);
	k2le_put32(p + 52, h->n_entries);
	k2le_put32(p + 56, h->n_blocks);
	k2le_put32(p + 60, h->reserved);
	k2le_put64(p + 64, h->created_unix);
	k2le_put64(p + 72, h->header_checksum);
}

static inline void k2p_header_decode(const uint8_t *p, struct k2p_header_disk *h)
{
	memcpy(h->magic, p, 8);
	h->version = k2le_get32(p + 8);
	h->flags = k2le_get32(p + 12);
	h->file_bytes = k2le_get64(p + 16);
	h->index_offset = k2le_get64(p + 24);
	h->index_bytes = k2le_get64(p + 32);
	h->index_checksum = k2le_get64(p + 40);
	h->block_bytes = k2le_get32(p + 48);
	h->n_entries = k2le_get32(p + 52);
	h->n_blocks = k2le_get32(p + 56);
	h->reserved = k2le_get32(p + 60);
	h->created_unix = k2le_get64(p + 64);
	h->header_checksum = k2le_get64(p + 72);
}

static inline void k2p_entry_encode(const struct k2p_entry_disk *e, uint8_t *p)
{
	k2le_put32(p + 0, e->kind);
	k2le_put32(p + 4, e->name_off);
	k2le_put32(p + 8, e->name_len);
	k2le_put32(p + 12, e->dtype);
	k2le_put32(p + 16, e->ndim);
	k2le_put32(p + 20, e->layer);
	k2le_put32(p + 24, e->expert);
	k2le_put32(p + 28, e->format);
	for (int i = 0; i < K2P_MAX_DIMS; i++)
		k2le_put64(p + 32 + 8 * i, e->shape[i]);
	k2le_put64(p + 96, e->raw_bytes);
	k2le_put64(p + 104, e->extent_offset);
	k2le_put64(p + 112, e->extent_bytes);
	k2le_put32(p + 120, e->first_block);
	k2le_put32(p + 124, e->n_blocks);
}

static inline void k2p_entry_decode(const uint8_t *p, struct k2p_entry_disk *e)
{
	e->kind = k2le_get32(p + 0);
	e->name_off = k2le_get32(p + 4);
	e->name_len = k2le_get32(p + 8);
	e->dtype = k2le_get32(p + 12);
	e->ndim = k2le_get32(p + 16);
	e->layer = k2le_get32(p + 20);
	e->expert = k2le_get32(p + 24);
	e->format = k2le_get32(p + 28);
	for (int i = 0; i < K2P_MAX_DIMS; i++)
		e->shape[i] = k2le_get64(p + 32 + 8 * i);
	e->raw_bytes = k2le_get64(p + 96);
	e->extent_offset = k2le_get64(p + 104);
	e->extent_bytes = k2le_get64(p + 112);
	e->first_block = k2le_get32(p + 120);
	e->n_blocks = k2le_get32(p + 124);
}

static inline void k2p_block_encode(const struct k2p_block_disk *b, uint8_t *p)
{
	k2le_put64(p + 0, b->offset);
	k2le_put32(p + 8, b->stored_bytes);
	k2le_put32(p + 12, b->raw_bytes);
	k2le_put32(p + 16, b->codec);
	k2le_put32(p + 20, b->reserved);
	k2le_put64(p + 24, b->checksum);
}

static inline void k2p_block_decode_disk(const uint8_t *p, struct k2p_block_disk *b)
{
	b->offset = k2le_get64(p + 0);
	b->stored_bytes = k2le_get32(p + 8);
	b->raw_bytes = k2le_get32(p + 12);
	b->codec = k2le_get32(p + 16);
	b->reserved = k2le_get32(p + 20);
	b->checksum = k2le_get64(p + 24);
}

/* ---------------------------------------------------------------- expert image (§2) */

#define K2X_MAGIC "K2EXPRT\1"
#define K2X_VERSION 1
#define K2X_HEADER_USED 240u
#define K2X_HEADER_SUMMED 232u         /* header_checksum covers bytes 0 … 231 */
#define K2X_MAX_DIM (1u << 20)

struct k2x_section_disk {
	uint64_t offset;
	uint64_t bytes;
	uint32_t rows;
	uint32_t cols;
	uint32_t dtype;
	uint32_t reserved;
};
_Static_assert(sizeof(struct k2x_section_disk) == 32, "image section is 32 bytes");

struct k2x_header_disk {
	uint8_t magic[8];
	uint32_t version;
	uint32_t format;
	uint32_t layer;
	uint32_t expert;
	uint32_t hidden;
	uint32_t intermediate;
	uint64_t image_bytes;
	struct k2x_section_disk sections[K2X_SECTIONS];
	uint64_t header_checksum;
};
_Static_assert(sizeof(struct k2x_header_disk) == K2X_HEADER_USED, "image header is 240 bytes");

static inline void k2x_header_encode(const struct k2x_header_disk *h, uint8_t *p)
{
	memcpy(p, h->magic, 8);
	k2le_put32(p + 8, h->version);
	k2le_put32(p + 12, h->format);
	k2le_put32(p + 16, h->layer);
	k2le_put32(p + 20, h->expert);
	k2le_put32(p + 24, h->hidden);
	k2le_put32(p + 28, h->intermediate);
	k2le_put64(p + 32, h->image_bytes);
	for (int i = 0; i < K2X_SECTIONS; i++) {
		uint8_t *s = p + 40 + 32 * i;
		k2le_put64(s + 0, h->sections[i].offset);
		k2le_put64(s + 8, h->sections[i].bytes);
		k2le_put32(s + 16, h->sections[i].rows);
		k2le_put32(s + 20, h->sections[i].cols);
		k2le_put32(s + 24, h->sections[i].dtype);
		k2le_put32(s + 28, h->sections[i].reserved);
	}
	k2le_put64(p + 232, h->header_checksum);
}

static inline void k2x_header_decode(const uint8_t *p, struct k2x_header_disk *h)
{
	memcpy(h->magic, p, 8);
	h->version = k2le_get32(p + 8);
	h->format = k2le_get32(p + 12);
	h->layer = k2le_get32(p + 16);
	h->expert = k2le_get32(p + 20);
	h->hidden = k2le_get32(p + 24);
	h->intermediate = k2le_get32(p + 28);
	h->image_bytes = k2le_get64(p + 32);
	for (int i = 0; i < K2X_SECTIONS; i++) {
		const uint8_t *s = p + 40 + 32 * i;
		h->sections[i].offset = k2le_get64(s + 0);
		h->sections[i].bytes = k2le_get64(s + 8);
		h->sections[i].rows = k2le_get32(s + 16);
		h->sections[i].cols = k2le_get32(s + 20);
		h->sections[i].dtype = k2le_get32(s + 24);
		h->sections[i].reserved = k2le_get32(s + 28);
	}
	h->header_checksum = k2le_get64(p + 232);
}

/* ---------------------------------------------------------------- shared helpers */

/* Formats an entry's mount path (FORMAT.md §1.3) into buf. Returns 0, or -EINVAL
 * when the kind is unknown or buf is too small. */
int k2p_format_path(uint32_t kind, const char *name, uint32_t layer, uint32_t expert,
		    char *buf, size_t n);

/* Checks a name for `kind` (FORMAT.md §1.2): length bounds, no NUL byte, and for
 * FILE and DENSE a single path component (no '/', not "." or ".."); FILE names
 * may not shadow the mount's "dense" and "experts" folders. Returns NULL when
 * fine, else a short reason. */
const char *k2p_name_problem(uint32_t kind, const char *name, size_t len);

#endif /* K2_PACK_IMPL_H */
