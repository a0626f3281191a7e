/* pack_reader.c — opens a pack (FORMAT.md §1), validates its header, index, every
 * entry and every block against the file and the limits of §3 before anything is
 * used, builds the mount paths and lookup tables, and decodes blocks (checksum
 * first, then the codec). Nothing read from the file is trusted unchecked. */
#include "pack_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

struct k2p_pack {
	char *path;
	int fd;
	uint64_t file_bytes;
	uint32_t block_bytes;
	size_t n_entries;
	k2p_entry *entries;   /* [n_entries], in index order */
	uint32_t n_blocks;
	k2p_block *blocks;    /* [n_blocks], in entry order */
	char *strings;        /* names and paths of the entries, NUL-terminated */
	uint32_t *path_table; /* open addressing: entry index + 1, 0 = empty */
	uint32_t *expert_table;
	size_t table_mask;
	uint32_t first_layer, n_layers;
};

/* ---------------------------------------------------------------- shared helpers */

int k2p_format_path(uint32_t kind, const char *name, uint32_t layer, uint32_t expert,
		    char *buf, size_t n)
{
	int r;
	switch (kind) {
	case K2P_KIND_FILE:
		r = snprintf(buf, n, "%s", name);
		break;
	case K2P_KIND_DENSE:
		r = snprintf(buf, n, "dense/%s", name);
		break;
	case K2P_KIND_EXPERT:
		r = snprintf(buf, n, "experts/%03" PRIu32 "/%03" PRIu32, layer, expert);
		break;
	default:
		return -EINVAL;
	}
	return r < 0 || (size_t)r >= n ? -EINVAL : 0;
}

const char *k2p_name_problem(uint32_t kind, const char *name, size_t len)
{
	if (len > K2P_MAX_NAME)
		return "name longer than 1024 bytes";
	if (kind == K2P_KIND_EXPERT)
		return memchr(name, '\0', len) ? "name holds a NUL byte" : NULL;
	if (len == 0)
		return "empty name";
	if (memchr(name, '\0', len))
		return "name holds a NUL byte";
	if (memchr(name, '/', len))
		return "name holds a '/'";
	if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
		return "name is '.' or '..'";
	if (kind == K2P_KIND_FILE &&
	    ((len == 5 && memcmp(name, "dense", 5) == 0) ||
	     (len == 7 && memcmp(name, "experts", 7) == 0)))
		return "file name collides with a mount folder";
	return NULL;
}

/* ---------------------------------------------------------------- lookup tables */

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

static uint64_t expert_key(uint32_t layer, uint32_t expert)
{
	return mix64(((uint64_t)layer << 32) | expert);
}

/* Inserts entry i; returns the index of an entry already there with the same key,
 * or -1. */
static long table_insert_path(k2p_pack *p, uint32_t i)
{
	const char *path = p->entries[i].path;
	size_t h = (size_t)k2_checksum(path, strlen(path)) & p->table_mask;
	for (;; h = (h + 1) & p->table_mask) {
		uint32_t v = p->path_table[h];
		if (v == 0) {
			p->path_table[h] = i + 1;
			return -1;
		}
		if (strcmp(p->entries[v - 1].path, path) == 0)
			return (long)(v - 1);
	}
}

static long table_insert_expert(k2p_pack *p, uint32_t i)
{
	const k2p_entry *e = &p->entries[i];
	size_t h = (size_t)expert_key(e->layer, e->expert) & p->table_mask;
	for (;; h = (h + 1) & p->table_mask) {
		uint32_t v = p->expert_table[h];
		if (v == 0) {
			p->expert_table[h] = i + 1;
			return -1;
		}
		const k2p_entry *o = &p->entries[v - 1];
		if (o->layer == e->layer && o->expert == e->expert)
			return (long)(v - 1);
	}
}

const k2p_entry *k2p_entry_find(const k2p_pack *p, const char *path)
{
	if (!p || !path || !p->path_table)
		return NULL;
	size_t h = (size_t)k2_checksum(path, strlen(path)) & p->table_mask;
	for (;; h = (h + 1) & p->table_mask) {
		uint32_t v = p->path_table[h];
		if (v == 0)
			return NULL;
		if (strcmp(p->entries[v - 1].path, path) == 0)
			return &p->entries[v - 1];
	}
}

const k2p_entry *k2p_expert_find(const k2p_pack *p, uint32_t layer, uint32_t expert)
{
	if (!p || !p->expert_table)
		return NULL;
	size_t h = (size_t)expert_key(layer, expert) & p->table_mask;
	for (;; h = (h + 1) & p->table_mask) {
		uint32_t v = p->expert_table[h];
		if (v == 0)
			return NULL;
		const k2p_entry *e = &p->entries[v - 1];
		if (e->layer == layer && e->expert == expert)
			return e;
	}
}

/* ---------------------------------------------------------------- open */

static int pread_full(int fd, void *buf, size_t n, uint64_t off)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ENODATA;
		got += (size_t)r;
	}
	return 0;
}

static int check_header(const char *path, const uint8_t *page, uint64_t size,
			struct k2p_header_disk *h, k2_err *err)
{
	k2p_header_decode(page, h);
	if (memcmp(h->magic, K2P_MAGIC, 8) != 0)
		return k2_err_set(err, -EINVAL, "%s: offset 0: not a k2 pack (bad magic)", path);
	if (h->version != K2P_VERSION)
		return k2_err_set(err, -EINVAL,
				  "%s: offset 8: pack version %" PRIu32 " is not supported (expected %d)",
				  path, h->version, K2P_VERSION);
	uint64_t sum = k2_checksum(page, K2P_HEADER_SUMMED);
	if (sum != h->header_checksum)
		return k2_err_set(err, -EINVAL,
				  "%s: offset 72: header checksum mismatch (stored %016" PRIx64
				  ", computed %016" PRIx64 ")", path, h->header_checksum, sum);
	if (h->flags != 0)
		return k2_err_set(err, -EINVAL,
				  "%s: offset 12: unknown flags 0x%" PRIx32 " (expected 0)", path, h->flags);
	if (h->reserved != 0)
		return k2_err_set(err, -EINVAL, "%s: offset 60: reserved field is not 0", path);
	for (uint32_t i = K2P_HEADER_USED; i < K2P_HEADER_BYTES; i++)
		if (page[i])
			return k2_err_set(err, -EINVAL,
					  "%s: offset %" PRIu32 ": header padding must be zero", path, i);
	if (h->file_bytes > size)
		return k2_err_set(err, -EINVAL,
				  "%s: truncated: expected %" PRIu64 " bytes, file has %" PRIu64,
				  path, h->file_bytes, size);
	if (h->file_bytes < size)
		return k2_err_set(err, -EINVAL,
				  "%s: expected %" PRIu64 " bytes, file has %" PRIu64 " (trailing data)",
				  path, h->file_bytes, size);
	uint32_t bb = h->block_bytes;
	if (bb < K2P_MIN_BLOCK_BYTES || bb > K2P_MAX_BLOCK_BYTES || (bb & (bb - 1)))
		return k2_err_set(err, -EINVAL,
				  "%s: offset 48: block_bytes %" PRIu32
				  " is not a power of two in 4 KiB … 64 MiB", path, bb);
	if (h->n_entries > K2P_MAX_ENTRIES)
		return k2_err_set(err, -EINVAL, "%s: offset 52: %" PRIu32 " entries (limit 2^24)",
				  path, h->n_entries);
	if (h->n_blocks > K2P_MAX_BLOCKS)
		return k2_err_set(err, -EINVAL, "%s: offset 56: %" PRIu32 " blocks (limit 2^28)",
				  path, h->n_blocks);
	if (h->index_offset < K2P_HEADER_BYTES || h->index_offset % K2P_ALIGN)
		return k2_err_set(err, -EINVAL,
				  "%s: offset 24: index_offset %" PRIu64 " is not aligned and >= 4096",
				  path, h->index_offset);
	if (h->index_bytes > K2P_MAX_INDEX_BYTES)
		return k2_err_set(err, -EINVAL, "%s: offset 32: index_bytes %" PRIu64 " above 1 GiB",
				  path, h->index_bytes);
	if (h->index_offset > size || h->index_bytes != size - h->index_offset)
		return k2_err_set(err, -EINVAL,
				  "%s: offset 24: index [%" PRIu64 ", +%" PRIu64 ") does not end the "
				  "file (%" PRIu64 " bytes)", path, h->index_offset, h->index_bytes, size);
	uint64_t tables = (uint64_t)h->n_entries * K2P_ENTRY_BYTES +
			  (uint64_t)h->n_blocks * K2P_BLOCK_BYTES;
	if (tables > h->index_bytes)
		return k2_err_set(err, -EINVAL,
				  "%s: offset 32: index of %" PRIu64 " bytes cannot hold %" PRIu32
				  " entries and %" PRIu32 " blocks (%" PRIu64 " bytes)", path,
				  h->index_bytes, h->n_entries, h->n_blocks, tables);
	if (tables + UINT32_MAX < h->index_bytes)
		return k2_err_set(err, -EINVAL,
				  "%s: offset 32: string table above 4 GiB", path);
	return 0;
}

/* Validates the fields of entry i that do not involve blocks; the extent and the
 * blocks are checked by the caller. */
static int check_entry_fields(const char *path, uint64_t at, uint32_t i,
			      const struct k2p_entry_disk *d, const uint8_t *strings,
			      uint64_t strings_len, k2_err *err)
{
	if (d->kind < K2P_KIND_FILE || d->kind > K2P_KIND_EXPERT)
		return k2_err_set(err, -EINVAL,
				  "%s: index entry %" PRIu32 " at offset %" PRIu64
				  ": unknown kind %" PRIu32, path, i, at, d->kind);
	if ((uint64_t)d->name_off + d->name_len > strings_len)
		return k2_err_set(err, -EINVAL,
				  "%s: index entry %" PRIu32 " at offset %" PRIu64 ": name [%" PRIu32
				  ", +%" PRIu32 ") outside the string table (%" PRIu64 " bytes)",
				  path, i, at, d->name_off, d->name_len, strings_len);
	const char *why = k2p_name_problem(d->kind, (const char *)strings + d->name_off,
					   d->name_len);
	if (why)
		return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %" PRIu64
				  ": %s", path, i, at, why);
	if (d->kind != K2P_KIND_DENSE && (d->dtype || d->ndim))
		return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %" PRIu64
				  ": dtype and ndim must be 0 for this kind", path, i, at);
	if (d->kind != K2P_KIND_EXPERT && (d->layer || d->expert || d->format))
		return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %" PRIu64
				  ": layer, expert and format must be 0 for this kind", path, i, at);
	switch (d->kind) {
	case K2P_KIND_FILE:
		for (int k = 0; k < K2P_MAX_DIMS; k++)
			if (d->shape[k])
				return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32
						  " at offset %" PRIu64 ": a file has no shape",
						  path, i, at);
		break;
	case K2P_KIND_DENSE: {
		size_t es = k2_dtype_size(d->dtype);
		if (!es)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": unknown dtype %" PRIu32, path, i, at, d->dtype);
		if (d->ndim > K2P_MAX_DIMS)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": ndim %" PRIu32 " above 8", path, i, at, d->ndim);
		uint64_t prod = es;
		for (uint32_t k = 0; k < K2P_MAX_DIMS; k++) {
			uint64_t dim = d->shape[k];
			if (k >= d->ndim) {
				if (dim)
					return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32
							  " at offset %" PRIu64 ": unused dim %" PRIu32
							  " is not 0", path, i, at, k);
				continue;
			}
			if (dim > K2P_MAX_DIM)
				return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32
						  " at offset %" PRIu64 ": dim %" PRIu32 " = %" PRIu64
						  " above 2^40", path, i, at, k, dim);
			if (dim && prod > UINT64_MAX / dim)
				return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32
						  " at offset %" PRIu64 ": shape overflows", path, i, at);
			prod *= dim;
		}
		if (prod != d->raw_bytes)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": raw_bytes %" PRIu64 ", expected %" PRIu64
					  " from its dtype and shape", path, i, at, d->raw_bytes, prod);
		break;
	}
	case K2P_KIND_EXPERT: {
		if (d->layer >= K2P_MAX_LAYERS || d->expert >= K2P_MAX_EXPERTS)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": expert %" PRIu32 "/%" PRIu32 " outside the limits"
					  " (layer < %u, expert < %u)", path, i, at, d->layer,
					  d->expert, K2P_MAX_LAYERS, K2P_MAX_EXPERTS);
		for (int k = 2; k < K2P_MAX_DIMS; k++)
			if (d->shape[k])
				return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32
						  " at offset %" PRIu64 ": expert shape[%d] is not 0",
						  path, i, at, k);
		k2x_layout lay;
		if (d->shape[0] > K2X_MAX_DIM || d->shape[1] > K2X_MAX_DIM ||
		    k2x_layout_compute(d->format, (uint32_t)d->shape[0], (uint32_t)d->shape[1],
				       d->layer, d->expert, &lay) < 0)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": invalid expert format %" PRIu32 " with hidden %"
					  PRIu64 ", intermediate %" PRIu64, path, i, at, d->format,
					  d->shape[0], d->shape[1]);
		if (lay.image_bytes != d->raw_bytes)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": expert raw_bytes %" PRIu64 ", expected %" PRIu64
					  " for %s %" PRIu64 "x%" PRIu64, path, i, at, d->raw_bytes,
					  lay.image_bytes, k2_format_name(d->format), d->shape[0],
					  d->shape[1]);
		break;
	}
	}
	return 0;
}

static int build_index(k2p_pack *p, const struct k2p_header_disk *h, const uint8_t *idx,
		       k2_err *err)
{
	const char *path = p->path;
	const uint64_t bb = h->block_bytes;
	const uint64_t blocks_at = (uint64_t)h->n_entries * K2P_ENTRY_BYTES;
	const uint64_t strings_at = blocks_at + (uint64_t)h->n_blocks * K2P_BLOCK_BYTES;
	const uint8_t *strings = idx + strings_at;
	const uint64_t strings_len = h->index_bytes - strings_at;

	p->n_entries = h->n_entries;
	p->n_blocks = h->n_blocks;
	p->entries = calloc(h->n_entries ? h->n_entries : 1, sizeof(*p->entries));
	p->blocks = calloc(h->n_blocks ? h->n_blocks : 1, sizeof(*p->blocks));
	if (!p->entries || !p->blocks)
		return k2_err_set(err, -ENOMEM, "%s: out of memory for the index", path);

	/* Blocks first: each must be well formed on its own. */
	for (uint32_t g = 0; g < h->n_blocks; g++) {
		struct k2p_block_disk b;
		uint64_t at = h->index_offset + blocks_at + (uint64_t)g * K2P_BLOCK_BYTES;
		k2p_block_decode_disk(idx + blocks_at + (uint64_t)g * K2P_BLOCK_BYTES, &b);
		if (b.codec >= K2_CODEC_COUNT)
			return k2_err_set(err, -EINVAL, "%s: block %" PRIu32 " at index offset %"
					  PRIu64 ": unknown codec %" PRIu32, path, g, at, b.codec);
		if (b.reserved)
			return k2_err_set(err, -EINVAL, "%s: block %" PRIu32 " at index offset %"
					  PRIu64 ": reserved field is not 0", path, g, at);
		if (b.raw_bytes == 0 || b.raw_bytes > bb || b.stored_bytes == 0 ||
		    b.stored_bytes > K2P_MAX_BLOCK_BYTES ||
		    b.stored_bytes > k2_codec_bound(b.codec, b.raw_bytes) ||
		    (b.codec == K2_CODEC_NONE && b.stored_bytes != b.raw_bytes))
			return k2_err_set(err, -EINVAL, "%s: block %" PRIu32 " at index offset %"
					  PRIu64 ": stored %" PRIu32 " / raw %" PRIu32
					  " bytes impossible for codec %s and block_bytes %" PRIu64,
					  path, g, at, b.stored_bytes, b.raw_bytes,
					  k2_codec_name(b.codec), bb);
		p->blocks[g] = (k2p_block){.offset = b.offset, .stored_bytes = b.stored_bytes,
					   .raw_bytes = b.raw_bytes, .codec = b.codec,
					   .checksum = b.checksum};
	}

	/* Strings: each entry's name and path, NUL-terminated. */
	uint64_t arena = 1;
	for (uint32_t i = 0; i < h->n_entries; i++) {
		uint32_t len = k2le_get32(idx + (uint64_t)i * K2P_ENTRY_BYTES + 8);
		arena += 2 * (uint64_t)(len > K2P_MAX_NAME ? 0 : len) + 48;
	}
	p->strings = malloc(arena);
	if (!p->strings)
		return k2_err_set(err, -ENOMEM, "%s: out of memory for names", path);
	char *s = p->strings;

	uint64_t prev_end = K2P_HEADER_BYTES, next_block = 0;
	uint32_t min_layer = UINT32_MAX, max_layer = 0;
	for (uint32_t i = 0; i < h->n_entries; i++) {
		struct k2p_entry_disk d;
		uint64_t at = h->index_offset + (uint64_t)i * K2P_ENTRY_BYTES;
		k2p_entry_decode(idx + (uint64_t)i * K2P_ENTRY_BYTES, &d);
		int rc = check_entry_fields(path, at, i, &d, strings, strings_len, err);
		if (rc)
			return rc;
		uint64_t want_blocks = (d.raw_bytes + bb - 1) / bb;
		if (d.n_blocks != want_blocks)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": %" PRIu32 " blocks, expected %" PRIu64
					  " for %" PRIu64 " raw bytes", path, i, at, d.n_blocks,
					  want_blocks, d.raw_bytes);
		if (d.first_block != next_block)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": first_block %" PRIu32 ", expected %" PRIu64
					  " (blocks are listed in entry order)", path, i, at,
					  d.first_block, next_block);
		if ((uint64_t)d.first_block + d.n_blocks > h->n_blocks)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": blocks [%" PRIu32 ", +%" PRIu32
					  ") beyond the %" PRIu32 " in the table", path, i, at,
					  d.first_block, d.n_blocks, h->n_blocks);
		next_block += d.n_blocks;
		if (d.extent_offset % K2P_ALIGN)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": extent offset %" PRIu64 " is not aligned", path, i,
					  at, d.extent_offset);
		if (d.extent_offset < prev_end)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": extent at %" PRIu64 " overlaps the previous extent "
					  "or the header (ending at %" PRIu64 ")", path, i, at,
					  d.extent_offset, prev_end);
		if (d.extent_offset > h->index_offset ||
		    d.extent_bytes > h->index_offset - d.extent_offset)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": extent [%" PRIu64 ", +%" PRIu64 ") runs past the "
					  "index at %" PRIu64, path, i, at, d.extent_offset,
					  d.extent_bytes, h->index_offset);
		prev_end = d.extent_offset + d.extent_bytes;
		uint64_t pos = d.extent_offset;
		for (uint32_t k = 0; k < d.n_blocks; k++) {
			const k2p_block *b = &p->blocks[d.first_block + k];
			uint64_t want_raw = k + 1 < d.n_blocks ? bb : d.raw_bytes - (uint64_t)k * bb;
			if (b->offset != pos || b->raw_bytes != want_raw ||
			    b->stored_bytes > prev_end - pos)
				return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32
						  " at offset %" PRIu64 ": block %" PRIu32
						  " (offset %" PRIu64 ", stored %" PRIu32 ", raw %"
						  PRIu32 ") does not follow on at %" PRIu64
						  " with %" PRIu64 " raw bytes inside the extent",
						  path, i, at, k, b->offset, b->stored_bytes,
						  b->raw_bytes, pos, want_raw);
			pos += b->stored_bytes;
		}
		if (pos != prev_end)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 " at offset %"
					  PRIu64 ": extent_bytes %" PRIu64 ", its blocks hold %" PRIu64,
					  path, i, at, d.extent_bytes, pos - d.extent_offset);

		k2p_entry *e = &p->entries[i];
		e->kind = d.kind;
		e->name = s;
		memcpy(s, strings + d.name_off, d.name_len);
		s[d.name_len] = '\0';
		s += d.name_len + 1;
		e->path = s;
		size_t room = (size_t)d.name_len + 48;
		if (k2p_format_path(d.kind, e->name, d.layer, d.expert, s, room) < 0)
			return k2_err_set(err, -EINVAL, "%s: index entry %" PRIu32 ": bad path",
					  path, i);
		s += strlen(s) + 1;
		e->dtype = d.dtype;
		e->ndim = d.ndim;
		memcpy(e->shape, d.shape, sizeof(e->shape));
		e->layer = d.layer;
		e->expert = d.expert;
		e->format = d.format;
		e->raw_bytes = d.raw_bytes;
		e->extent_offset = d.extent_offset;
		e->extent_bytes = d.extent_bytes;
		e->first_block = d.first_block;
		e->n_blocks = d.n_blocks;
		if (d.kind == K2P_KIND_EXPERT) {
			min_layer = d.layer < min_layer ? d.layer : min_layer;
			max_layer = d.layer > max_layer ? d.layer : max_layer;
		}
	}
	if (next_block != h->n_blocks)
		return k2_err_set(err, -EINVAL, "%s: the entries use %" PRIu64 " blocks, the header "
				  "says %" PRIu32, path, next_block, h->n_blocks);
	if (min_layer != UINT32_MAX) {
		p->first_layer = min_layer;
		p->n_layers = max_layer - min_layer + 1;
	}

	size_t cap = 16;
	while (cap < 2 * p->n_entries)
		cap *= 2;
	p->table_mask = cap - 1;
	p->path_table = calloc(cap, sizeof(uint32_t));
	p->expert_table = calloc(cap, sizeof(uint32_t));
	if (!p->path_table || !p->expert_table)
		return k2_err_set(err, -ENOMEM, "%s: out of memory for the lookup tables", path);
	for (uint32_t i = 0; i < h->n_entries; i++) {
		long dup = table_insert_path(p, i);
		if (dup >= 0)
			return k2_err_set(err, -EINVAL, "%s: index entries %ld and %" PRIu32
					  " have the same path %s", path, dup, i, p->entries[i].path);
		if (p->entries[i].kind == K2P_KIND_EXPERT) {
			dup = table_insert_expert(p, i);
			if (dup >= 0)
				return k2_err_set(err, -EINVAL, "%s: index entries %ld and %"
						  PRIu32 " are both expert %" PRIu32 "/%" PRIu32,
						  path, dup, i, p->entries[i].layer,
						  p->entries[i].expert);
		}
	}
	return 0;
}

/* Returns 0 and *out, or -errno with a message naming the file and what is wrong. */
int k2p_pack_open(const char *path, k2p_pack **out, k2_err *err)
{
	int rc;
	*out = NULL;
	k2p_pack *p = calloc(1, sizeof(*p));
	if (!p)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", path);
	p->fd = -1;
	p->path = strdup(path);
	if (!p->path) {
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory", path);
		goto out_free;
	}
	/* O_NONBLOCK so that a FIFO given by mistake cannot hang the open; it has no
	 * effect on the regular file we accept. */
	p->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (p->fd < 0) {
		rc = k2_err_set(err, -errno, "%s: cannot open: %s", path, strerror(errno));
		goto out_free;
	}
	struct stat st;
	if (fstat(p->fd, &st) < 0) {
		rc = k2_err_set(err, -errno, "%s: cannot stat: %s", path, strerror(errno));
		goto out_free;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = k2_err_set(err, -EINVAL, "%s: not a regular file", path);
		goto out_free;
	}
	int fl = fcntl(p->fd, F_GETFL);
	if (fl >= 0)
		fcntl(p->fd, F_SETFL, fl & ~O_NONBLOCK);
	uint64_t size = (uint64_t)st.st_size;
	uint8_t page[K2P_HEADER_BYTES];
	if (size < K2P_HEADER_BYTES) {
		if (size >= K2P_HEADER_USED && pread_full(p->fd, page, K2P_HEADER_USED, 0) == 0 &&
		    memcmp(page, K2P_MAGIC, 8) == 0 &&
		    k2_checksum(page, K2P_HEADER_SUMMED) == k2le_get64(page + 72))
			rc = k2_err_set(err, -EINVAL,
					"%s: truncated: expected %" PRIu64 " bytes, file has %" PRIu64,
					path, k2le_get64(page + 16), size);
		else
			rc = k2_err_set(err, -EINVAL,
					"%s: truncated: %" PRIu64 " bytes, shorter than the %u-byte "
					"pack header", path, size, K2P_HEADER_BYTES);
		goto out_free;
	}
	rc = pread_full(p->fd, page, K2P_HEADER_BYTES, 0);
	if (rc) {
		k2_err_set(err, rc, "%s: cannot read the header: %s", path, strerror(-rc));
		goto out_free;
	}
	struct k2p_header_disk h;
	rc = check_header(path, page, size, &h, err);
	if (rc)
		goto out_free;
	p->file_bytes = h.file_bytes;
	p->block_bytes = h.block_bytes;

	uint8_t *idx = malloc(h.index_bytes ? h.index_bytes : 1);
	if (!idx) {
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory for a %" PRIu64 "-byte index",
				path, h.index_bytes);
		goto out_free;
	}
	rc = pread_full(p->fd, idx, h.index_bytes, h.index_offset);
	if (rc) {
		k2_err_set(err, rc == -ENODATA ? -EIO : rc, "%s: cannot read the index at offset %"
			   PRIu64 ": %s", path, h.index_offset,
			   rc == -ENODATA ? "unexpected end of file" : strerror(-rc));
		rc = rc == -ENODATA ? -EIO : rc;
		goto out_free_idx;
	}
	uint64_t sum = k2_checksum(idx, h.index_bytes);
	if (sum != h.index_checksum) {
		rc = k2_err_set(err, -EINVAL,
				"%s: index at offset %" PRIu64 ": checksum mismatch (header says %016"
				PRIx64 ", computed %016" PRIx64 ")", path, h.index_offset,
				h.index_checksum, sum);
		goto out_free_idx;
	}
	rc = build_index(p, &h, idx, err);
	if (rc)
		goto out_free_idx;
	free(idx);
	*out = p;
	return 0;

out_free_idx:
	free(idx);
out_free:
	k2p_pack_close(p);
	return rc;
}

void k2p_pack_close(k2p_pack *p)
{
	if (!p)
		return;
	if (p->fd >= 0)
		close(p->fd);
	free(p->path_table);
	free(p->expert_table);
	free(p->strings);
	free(p->entries);
	free(p->blocks);
	free(p->path);
	free(p);
}

/* ---------------------------------------------------------------- accessors */

const char *k2p_pack_path(const k2p_pack *p) { return p->path; }
int k2p_pack_fd(const k2p_pack *p) { return p->fd; }
uint64_t k2p_pack_file_bytes(const k2p_pack *p) { return p->file_bytes; }
uint32_t k2p_pack_block_bytes(const k2p_pack *p) { return p->block_bytes; }
size_t k2p_entry_count(const k2p_pack *p) { return p->n_entries; }

const k2p_entry *k2p_entry_at(const k2p_pack *p, size_t i)
{
	return i < p->n_entries ? &p->entries[i] : NULL;
}

const k2p_block *k2p_entry_block(const k2p_pack *p, const k2p_entry *e, uint32_t i)
{
	if (!e || i >= e->n_blocks || (uint64_t)e->first_block + i >= p->n_blocks)
		return NULL;
	return &p->blocks[e->first_block + i];
}

/* Returns the span of layers holding experts, from the lowest such layer
 * (*first_layer) to the highest: highest − lowest + 1, or 0 (and *first_layer 0)
 * when the pack has no experts. */
uint32_t k2p_expert_layers(const k2p_pack *p, uint32_t *first_layer)
{
	if (first_layer)
		*first_layer = p->first_layer;
	return p->n_layers;
}

/* ---------------------------------------------------------------- decode */

/* The entry owning block index g (entries list their blocks in order). */
static const k2p_entry *block_owner(const k2p_pack *p, uint32_t g)
{
	size_t lo = 0, hi = p->n_entries;
	while (lo < hi) {  /* first entry with first_block > g */
		size_t mid = lo + (hi - lo) / 2;
		if (p->entries[mid].first_block <= g)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	const k2p_entry *e = &p->entries[lo - 1];
	return g < (uint64_t)e->first_block + e->n_blocks ? e : NULL;
}

static int block_error(const k2p_pack *p, const k2p_block *b, const char *what, k2_err *err)
{
	const k2p_entry *e = NULL;
	uint32_t g = 0;
	if (b >= p->blocks && b < p->blocks + p->n_blocks) {
		g = (uint32_t)(b - p->blocks);
		e = block_owner(p, g);
	}
	if (e)
		return k2_err_set(err, -EIO, "%s: block %" PRIu32 " of %s at pack offset %" PRIu64
				  ": %s", p->path, g - e->first_block, e->path, b->offset, what);
	return k2_err_set(err, -EIO, "%s: block at pack offset %" PRIu64 ": %s", p->path,
			  b->offset, what);
}

/* Returns 0, or -EIO with a message naming the block, its entry and pack offset. */
int k2p_block_decode(const k2p_pack *p, const k2p_block *b, const void *stored, void *raw,
		     k2_err *err)
{
	uint64_t sum = k2_checksum(stored, b->stored_bytes);
	if (sum != b->checksum)
		return block_error(p, b, "checksum mismatch", err);
	int rc = k2_codec_decompress(b->codec, stored, b->stored_bytes, raw, b->raw_bytes);
	if (rc == -ENOMEM)
		return k2_err_set(err, -ENOMEM, "%s: out of memory decoding a block", p->path);
	if (rc)
		return block_error(p, b, "does not decode (corrupt data or wrong length)", err);
	return 0;
}

/* Returns bytes read (short only at the entry's end), or -errno. */
long k2p_entry_read(const k2p_pack *p, const k2p_entry *e, uint64_t off, void *buf,
		    size_t len, k2_err *err)
{
	if (off >= e->raw_bytes || len == 0)
		return 0;
	if (len > e->raw_bytes - off)
		len = (size_t)(e->raw_bytes - off);
	if (len > (size_t)LONG_MAX)
		len = (size_t)LONG_MAX;
	const uint64_t bb = p->block_bytes;
	uint32_t k0 = (uint32_t)(off / bb), k1 = (uint32_t)((off + len - 1) / bb);
	uint8_t *sbuf = NULL, *rbuf = NULL;
	size_t scap = 0;
	long rc = 0;
	for (uint32_t k = k0; k <= k1; k++) {
		const k2p_block *b = k2p_entry_block(p, e, k);
		if (!b) {
			rc = k2_err_set(err, -EINVAL, "%s: %s has no block %" PRIu32, p->path,
					e->path, k);
			goto out;
		}
		if (scap < b->stored_bytes) {
			free(sbuf);
			scap = b->stored_bytes;
			sbuf = malloc(scap);
			if (!sbuf) {
				rc = k2_err_set(err, -ENOMEM, "%s: out of memory", p->path);
				goto out;
			}
		}
		int r = pread_full(p->fd, sbuf, b->stored_bytes, b->offset);
		if (r) {
			rc = k2_err_set(err, r == -ENODATA ? -EIO : r,
					"%s: cannot read block %" PRIu32 " of %s at pack offset %"
					PRIu64 ": %s", p->path, k, e->path, b->offset,
					r == -ENODATA ? "unexpected end of file" : strerror(-r));
			goto out;
		}
		uint64_t bstart = (uint64_t)k * bb;
		uint64_t from = off > bstart ? off - bstart : 0;
		uint64_t to = off + len - bstart;
		if (to > b->raw_bytes)
			to = b->raw_bytes;
		uint8_t *dst = (uint8_t *)buf + (bstart + from - off);
		if (from == 0 && to == b->raw_bytes) {
			r = k2p_block_decode(p, b, sbuf, dst, err);
		} else {
			if (!rbuf) {
				rbuf = malloc(bb);
				if (!rbuf) {
					rc = k2_err_set(err, -ENOMEM, "%s: out of memory", p->path);
					goto out;
				}
			}
			r = k2p_block_decode(p, b, sbuf, rbuf, err);
			if (!r)
				memcpy(dst, rbuf + from, (size_t)(to - from));
		}
		if (r) {
			rc = r;
			goto out;
		}
	}
	rc = (long)len;
out:
	free(sbuf);
	free(rbuf);
	return rc;
}
