/* prog_k2fs_mkpack.c — writes a synthetic pack for the k2fs tests with the pack
 * writer API: a config.json, a tokenizer file, a few dense tensors and
 * layers × experts expert images of a given format whose payload is
 * pseudo-random but compressible like bf16 weights (random mantissas, a few
 * exponents), so every codec has work to do.
 *
 *   prog_k2fs_mkpack OUT.k2 [--layers N] [--first-layer L] [--experts N]
 *       [--hidden H] [--inter I] [--format bf16|fp8-b128|int8|int4-g32]
 *       [--codec none|lz4|zstd] [--block SIZE] [--seed S] [--dense N]
 *
 * Prints one line: entries, raw and stored bytes. Exit 0, or 1 with a message. */
#include "layout.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* bf16-like bytes: low byte random, high byte one of a few exponents; half of
 * the 8-byte groups repeat an earlier one, so that LZ4 (no entropy coder) finds
 * matches as zstd does. */
static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t s = seed;
	for (size_t i = 0; i + 8 <= n; i += 8) {
		uint64_t r = splitmix(&s);
		if (i >= 64 && (r & 1)) {
			memcpy(p + i, p + i - 8 * (1 + ((r >> 1) & 7)), 8);
			continue;
		}
		r = splitmix(&s);
		for (int k = 0; k < 8; k += 2) {
			p[i + k] = (uint8_t)(r >> (8 * k));
			p[i + k + 1] = (uint8_t)(0x3c + ((r >> (8 * k + 8)) & 3)) |
				       (uint8_t)((r >> (8 * k + 10)) & 0x80);
		}
	}
	for (size_t i = n & ~(size_t)7; i < n; i++)
		p[i] = (uint8_t)splitmix(&s);
}

static int die(const char *msg)
{
	fprintf(stderr, "prog_k2fs_mkpack: %s\n", msg);
	return 1;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return die("usage: prog_k2fs_mkpack OUT.k2 [--layers N] [--first-layer L] "
			   "[--experts N] [--hidden H] [--inter I] [--format F] [--codec C] "
			   "[--block SIZE] [--seed S] [--dense N]");
	const char *out = argv[1];
	uint32_t layers = 2, first = 1, experts = 8, hidden = 256, inter = 64, n_dense = 3;
	uint32_t format = K2_FORMAT_BF16;
	uint64_t seed = 1, block = 0;
	k2p_writer_opts wo = {0};
	wo.codec = K2_CODEC_LZ4;
	wo.dense_codec = K2_CODEC_ZSTD;
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v)
			return die("an option lacks its value");
		i++;
		if (strcmp(a, "--layers") == 0)
			layers = (uint32_t)strtoul(v, NULL, 10);
		else if (strcmp(a, "--first-layer") == 0)
			first = (uint32_t)strtoul(v, NULL, 10);
		else if (strcmp(a, "--experts") == 0)
			experts = (uint32_t)strtoul(v, NULL, 10);
		else if (strcmp(a, "--hidden") == 0)
			hidden = (uint32_t)strtoul(v, NULL, 10);
		else if (strcmp(a, "--inter") == 0)
			inter = (uint32_t)strtoul(v, NULL, 10);
		else if (strcmp(a, "--dense") == 0)
			n_dense = (uint32_t)strtoul(v, NULL, 10);
		else if (strcmp(a, "--seed") == 0)
			seed = strtoull(v, NULL, 10);
		else if (strcmp(a, "--format") == 0) {
			format = k2_format_parse(v);
			if (format == K2_FORMAT_NONE)
				return die("unknown --format");
		} else if (strcmp(a, "--codec") == 0) {
			wo.codec = k2_codec_parse(v);
			if (wo.codec == K2_CODEC_COUNT)
				return die("unknown --codec");
		} else if (strcmp(a, "--block") == 0) {
			if (k2_parse_size(v, &block) || block > UINT32_MAX)
				return die("bad --block");
		} else {
			return die("unknown option");
		}
	}
	wo.block_bytes = (uint32_t)block;
	k2_err err = {{0}};
	k2p_writer *w;
	if (k2p_writer_create(out, &wo, &w, &err))
		return die(err.msg);
	char config[512];
	int cn = snprintf(config, sizeof(config),
			  "{\n  \"architectures\": [\"DeepseekV3ForCausalLM\"],\n"
			  "  \"hidden_size\": %u,\n  \"moe_intermediate_size\": %u,\n"
			  "  \"n_routed_experts\": %u,\n  \"num_hidden_layers\": %u\n}\n",
			  hidden, inter, experts, first + layers);
	static const char tok[] = "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\"}}\n";
	if (k2p_writer_add_file(w, "config.json", config, (size_t)cn, &err) ||
	    k2p_writer_add_file(w, "tokenizer.json", tok, sizeof(tok) - 1, &err))
		goto fail;
	for (uint32_t d = 0; d < n_dense; d++) {
		char name[128];
		uint64_t shape[2] = {hidden, (uint64_t)(d + 1) * 96};
		size_t n = (size_t)(shape[0] * shape[1] * 2);
		uint8_t *buf = malloc(n);
		if (!buf)
			return die("out of memory");
		fill(buf, n, seed * 7919 + d);
		snprintf(name, sizeof(name), "model.layers.%u.self_attn.q_a_proj.weight", d);
		int rc = k2p_writer_add_dense(w, name, K2_DTYPE_BF16, 2, shape, buf, n, &err);
		free(buf);
		if (rc)
			goto fail;
	}
	for (uint32_t l = first; l < first + layers; l++) {
		for (uint32_t e = 0; e < experts; e++) {
			k2x_layout lay;
			if (k2x_layout_compute(format, hidden, inter, l, e, &lay)) {
				k2p_writer_abort(w);
				return die("bad expert dims for this format");
			}
			uint8_t *img = calloc(1, (size_t)lay.image_bytes);
			if (!img)
				return die("out of memory");
			k2x_header_write(&lay, img);
			for (int s = 0; s < K2X_SECTIONS; s++)
				fill(img + lay.sec[s].offset, (size_t)lay.sec[s].bytes,
				     seed * 1000003 + l * 4099 + e * 31 + (uint64_t)s);
			int rc = k2p_writer_add_expert(w, img, (size_t)lay.image_bytes, &err);
			free(img);
			if (rc)
				goto fail;
		}
	}
	uint64_t raw, stored;
	k2p_writer_totals(w, &raw, &stored);
	if (k2p_writer_finish(w, &err))
		return die(err.msg);
	printf("%s: %u experts, raw %" PRIu64 " bytes, stored %" PRIu64 " bytes\n", out,
	       layers * experts, raw, stored);
	return 0;
fail:
	k2p_writer_abort(w);
	return die(err.msg);
}
