/* fuzz_pack.c — libFuzzer target for the pack reader: each input is written to a
 * memfd and opened as a pack through /proc/self/fd/N; every entry is then read in
 * full (every block checksummed and decoded), expert images' headers are parsed,
 * and the pack is closed. The input is also parsed as an expert image header and,
 * since block checksums keep mutated streams away from the decoders, fed to each
 * codec's decoder directly (byte 0 picks the codec, bytes 1-3 the output size).
 * Must not crash, hang or leak whatever the bytes. Built with the layout/ sources
 * only. */
#define _GNU_SOURCE  /* memfd_create */
#include "layout.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_DECODE_BYTES (256ull << 20)  /* per input, to keep each run short */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;

static int write_input(const uint8_t *data, size_t size)
{
	if (memfd < 0) {
		memfd = memfd_create("fuzz_pack", MFD_CLOEXEC);
		if (memfd < 0)
			return -1;
	}
	if (ftruncate(memfd, 0) < 0)
		return -1;
	size_t done = 0;
	while (done < size) {
		ssize_t r = pwrite(memfd, data + done, size - done, (off_t)done);
		if (r <= 0)
			return -1;
		done += (size_t)r;
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	k2_err err;
	k2x_layout lay;
	(void)k2x_header_parse(data, size, size, "input", &lay, &err);

	if (size >= 4) {
		size_t raw_n = ((size_t)data[1] | (size_t)data[2] << 8 | (size_t)data[3] << 16) & 0xfffff;
		uint8_t *out = malloc(raw_n ? raw_n : 1);
		if (out)
			(void)k2_codec_decompress(data[0] % K2_CODEC_COUNT, data + 4, size - 4, out,
						  raw_n);
		free(out);
	}

	if (write_input(data, size) < 0)
		return 0;
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
	k2p_pack *p;
	if (k2p_pack_open(path, &p, &err) < 0)
		return 0;

	size_t bb = k2p_pack_block_bytes(p);
	uint8_t *buf = malloc(bb);
	uint64_t budget = MAX_DECODE_BYTES;
	for (size_t i = 0; buf && i < k2p_entry_count(p); i++) {
		const k2p_entry *e = k2p_entry_at(p, i);
		/* Lookups must find what the index holds. */
		if (k2p_entry_find(p, e->path) != e)
			abort();
		if (e->kind == K2P_KIND_EXPERT && k2p_expert_find(p, e->layer, e->expert) != e)
			abort();
		for (uint64_t off = 0; off < e->raw_bytes && budget > 0;) {
			long r = k2p_entry_read(p, e, off, buf, bb, &err);
			if (r <= 0)
				break;
			if (off == 0 && e->kind == K2P_KIND_EXPERT)
				(void)k2x_header_parse(buf, (size_t)r, e->raw_bytes, e->path, &lay,
						       &err);
			off += (uint64_t)r;
			budget = (uint64_t)r < budget ? budget - (uint64_t)r : 0;
		}
		/* An unaligned read across a block boundary. */
		if (e->raw_bytes > 3 && budget > 0)
			(void)k2p_entry_read(p, e, 1, buf, bb < e->raw_bytes ? bb : 2, &err);
	}
	uint32_t first;
	(void)k2p_expert_layers(p, &first);
	free(buf);
	k2p_pack_close(p);
	return 0;
}
