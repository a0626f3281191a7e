/* gen.h — the synthetic checkpoint generator behind bin/k2gen: writes a
 * DeepSeek-V3-family checkpoint in the hub's own format (config.json in
 * Kimi-K2's style, safetensors with hub tensor names, sharded with
 * model.safetensors.index.json above a size) with random weights drawn like
 * tests/fixtures/mkref.py does. Every value is a pure function of (seed,
 * tensor name, element index), so output is identical for a seed whatever the
 * thread count, and large checkpoints are generated in parallel. Errors: 0 or
 * -errno with one line in the k2_err naming the file (layout.h's convention). */
#ifndef K2_GEN_H
#define K2_GEN_H

#include <signal.h>
#include <stdint.h>

#include "layout.h"

typedef struct k2g_opts {
	const char *preset;        /* "tiny" (the fixtures' dims) or "k2" (Kimi-K2's) */
	long layers;               /* num_hidden_layers, < 0 = the preset's */
	long experts;              /* n_routed_experts, < 0 = the preset's */
	uint64_t seed;
	uint32_t format;           /* K2_FORMAT_BF16, _FP8_B128 or _INT4_G32 */
	const char *const *sets;   /* "key=value" config overrides, applied last */
	int n_sets;
	uint64_t shard_bytes;      /* shard above this many bytes; 0 = 5 GiB */
	const char *tokenizer_dir; /* copy tokenizer files from here, or NULL */
	int threads;               /* 0 = online cores */
	int progress;              /* progress line on stderr if it is a terminal */
	volatile sig_atomic_t *cancel; /* polled; non-zero stops with -EINTR */
} k2g_opts;

typedef struct k2g_stats {
	uint64_t n_tensors, n_shards, bytes;
	double seconds;
} k2g_stats;

void k2g_opts_default(k2g_opts *o);

/* Builds the config.json text the options describe (malloc'd, NUL-terminated,
 * owned by the caller) and checks it with k2_config_parse. Returns 0 or
 * -EINVAL naming the bad option or key. */
int k2g_config_json(const k2g_opts *o, char **json, k2_err *err);

/* Writes the checkpoint into out_dir (created if missing). Files are written
 * under temporary names and renamed when all are complete; on error or cancel
 * the temporary files are removed. Returns 0 or -errno with a message. */
int k2g_generate(const char *out_dir, const k2g_opts *o, k2g_stats *stats, k2_err *err);

#endif /* K2_GEN_H */
