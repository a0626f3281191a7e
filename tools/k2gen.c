/* k2gen.c — bin/k2gen: writes a synthetic DeepSeek-V3-family checkpoint in the
 * hub's format (config.json, safetensors with hub names, sharded with an index
 * above --shard-size) for tests and benchmarks. The work is done by
 * tools/lib/gen.c; this file parses options and handles SIGINT/SIGTERM (the
 * temporary files are removed). */
#include "cli.h"
#include "gen.h"
#include "layout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
	"usage: k2gen [options] OUT_DIR\n"
	"\n"
	"Writes a synthetic checkpoint with random weights (deterministic for a seed).\n"
	"\n"
	"  --preset tiny|k2     dimensions: tiny = the test fixtures' (default), k2 =\n"
	"                       Kimi-K2's (hidden 7168, 61 layers, 384 experts, ...)\n"
	"  --layers N           num_hidden_layers (cuts the preset's)\n"
	"  --experts N          n_routed_experts (cuts the preset's)\n"
	"  --seed S             random seed (default 0)\n"
	"  --format F           bf16 (default), fp8 (e4m3 + 128x128 weight_scale_inv on\n"
	"                       every *_proj), int4 (compressed-tensors routed experts)\n"
	"  --set KEY=VALUE      override a config.json key (JSON value or string;\n"
	"                       KEY may be dotted: rope_scaling.factor=40); repeatable\n"
	"  --shard-size SIZE    shard above this size (default 5G)\n"
	"  --tokenizer DIR      copy tokenizer.json or tiktoken.model, tokenizer_config.json\n"
	"                       (and the other tokenizer files there) from DIR\n"
	"  --threads N          generation threads (default: online cores)\n"
	"  --help               this text\n";

int main(int argc, char **argv)
{
	const char *prog = "k2gen";
	k2g_opts o;
	k2g_opts_default(&o);
	o.progress = 1;
	const char **sets = calloc((size_t)argc + 1, sizeof(char *));
	const char *out = NULL;
	int nout = 0, bad = !sets;
	for (int i = 1; i < argc && !bad; i++) {
		const char *v;
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			k2cli_usage(stdout, usage_text);
			free(sets);
			return 0;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--preset", &bad))) {
			if (strcmp(v, "tiny") && strcmp(v, "k2")) {
				fprintf(stderr, "%s: --preset: expected tiny or k2, got '%s'\n", prog, v);
				bad = 1;
			}
			o.preset = v;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--layers", &bad))) {
			bad = k2cli_parse_long(prog, "--layers", v, 1, 4096, &o.layers) < 0;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--experts", &bad))) {
			bad = k2cli_parse_long(prog, "--experts", v, 1, 65536, &o.experts) < 0;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--seed", &bad))) {
			bad = k2cli_parse_u64(prog, "--seed", v, &o.seed) < 0;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--format", &bad))) {
			bad = k2cli_parse_format(prog, "--format", v, 1u << K2_FORMAT_BF16 |
						 1u << K2_FORMAT_FP8_B128 | 1u << K2_FORMAT_INT4_G32,
						 &o.format) < 0;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--set", &bad))) {
			sets[o.n_sets++] = v;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--shard-size", &bad))) {
			bad = k2cli_parse_size(prog, "--shard-size", v, 1, UINT64_MAX >> 2,
					       &o.shard_bytes) < 0;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--tokenizer", &bad))) {
			o.tokenizer_dir = v;
		} else if ((v = k2cli_opt_value(prog, argc, argv, &i, "--threads", &bad))) {
			bad = k2cli_parse_int(prog, "--threads", v, 1, 1024, &o.threads) < 0;
		} else {
			k2cli_other_arg(prog, a, &out, 1, &nout, &bad);
		}
	}
	if (bad || !out) {
		if (!bad)
			k2cli_usage(stderr, usage_text);
		free(sets);
		return 2;
	}
	o.sets = sets;
	o.cancel = k2cli_cancel_on_signals();

	k2g_stats st;
	k2_err err = {{0}};
	int rc = k2g_generate(out, &o, &st, &err);
	free(sets);
	if (rc < 0)
		return k2cli_failed(prog, rc, &err);
	char b[32];
	printf("k2gen: %s: %llu weights in %llu shard%s, %s, %.1f s\n", out,
	       (unsigned long long)st.n_tensors, (unsigned long long)st.n_shards,
	       st.n_shards == 1 ? "" : "s", k2_format_bytes(st.bytes, b, sizeof(b)), st.seconds);
	return 0;
}
