/* k2pack.c — bin/k2pack: converts a HuggingFace DeepSeek-V3 / Kimi-K2
 * checkpoint directory into one pack file (layout/FORMAT.md). The work is done
 * by tools/lib/import.c; this file parses options, turns SIGINT/SIGTERM into a
 * clean abort (no half pack remains) and prints the summary line. */
#include "cli.h"
#include "import.h"
#include "layout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
	"usage: k2pack SRC_DIR OUT.k2 [options]\n"
	"\n"
	"Packs a HuggingFace checkpoint directory (config.json, model.safetensors or the\n"
	"shards of model.safetensors.index.json, tokenizer files) into one pack.\n"
	"\n"
	"  --experts F       routed expert format: keep (default: as stored; bf16, fp8\n"
	"                    with weight_scale_inv, compressed-tensors int4), bf16,\n"
	"                    fp8 (e4m3, 128x128 block scales), int8 (per row), int4\n"
	"                    (group 32)\n"
	"  --codec C         zstd (default), lz4 or none\n"
	"  --level N         codec level (zstd 1-19, lz4 0 fast or 3-12 HC; 0 default)\n"
	"  --threads N       conversion and compression threads (default: online cores)\n"
	"  --block-size SIZE pack block size, 4K-64M, power of two (default 256K)\n"
	"  --help            this text\n";

int main(int argc, char **argv)
{
	const char *prog = "k2pack";
	k2i_opts o;
	k2i_opts_default(&o);
	o.progress = 1;
	const char *pos[2];
	int npos = 0, bad = 0;
	for (int i = 1; i < argc && !bad; i++) {
		const char *v;
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			k2cli_usage(stdout, usage_text);
			return 0;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--experts", &bad))) {
			bad = k2cli_parse_format(prog, "--experts", v, ~0u, &o.experts) < 0;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--codec", &bad))) {
			o.codec = k2_codec_parse(v);
			if (o.codec >= K2_CODEC_COUNT) {
				fprintf(stderr, "%s: --codec: expected zstd, lz4 or none, got '%s'\n",
					prog, v);
				bad = 1;
			}
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--level", &bad))) {
			bad = k2cli_parse_int(prog, "--level", v, 0, 22, &o.level) < 0;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--threads", &bad))) {
			bad = k2cli_parse_int(prog, "--threads", v, 1, 1024, &o.threads) < 0;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--block-size", &bad))) {
			uint64_t b;
			bad = k2cli_parse_size(prog, "--block-size", v, 4096, K2P_MAX_BLOCK_BYTES,
					       &b) < 0;
			if (!bad && (b & (b - 1))) {
				fprintf(stderr, "%s: --block-size: %s is not a power of two\n", prog, v);
				bad = 1;
			}
			o.block_bytes = (uint32_t)b;
		} else {
			k2cli_other_arg(prog, a, pos, 2, &npos, &bad);
		}
	}
	if (bad)
		return 2;
	if (npos != 2) {
		k2cli_usage(stderr, usage_text);
		return 2;
	}

	o.cancel = k2cli_cancel_on_signals();

	k2i_stats st;
	k2_err err = {{0}};
	int rc = k2i_import(pos[0], pos[1], &o, &st, &err);
	if (rc < 0)
		return k2cli_failed(prog, rc, &err);
	char raw[32], stored[32];
	double es = st.expert_seconds > 0 ? st.expert_seconds : 1e-9;
	printf("k2pack: %s: %llu entries (%llu files, %llu dense, %llu experts), %s -> %s "
	       "(ratio %.3f), %.1f s, %.0f MB/s in; experts %.0f MB -> %.0f MB (ratio %.3f) "
	       "in %.1f s, %.0f MB/s in, %.0f MB/s out\n",
	       pos[1], (unsigned long long)(st.n_files + st.n_dense + st.n_experts),
	       (unsigned long long)st.n_files, (unsigned long long)st.n_dense,
	       (unsigned long long)st.n_experts, k2_format_bytes(st.raw_bytes, raw, sizeof(raw)),
	       k2_format_bytes(st.stored_bytes, stored, sizeof(stored)),
	       st.raw_bytes ? (double)st.stored_bytes / (double)st.raw_bytes : 0.0, st.seconds,
	       st.seconds > 0 ? (double)st.bytes_in / st.seconds / 1e6 : 0.0,
	       (double)st.expert_raw / 1e6, (double)st.expert_stored / 1e6,
	       st.expert_raw ? (double)st.expert_stored / (double)st.expert_raw : 0.0,
	       st.expert_seconds, (double)st.expert_in / es / 1e6,
	       (double)st.expert_stored / es / 1e6);
	return 0;
}
