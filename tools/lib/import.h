/* import.h — the checkpoint importer behind bin/k2pack, as a library so the
 * tests can run it: reads a HuggingFace DeepSeek-V3-family checkpoint
 * directory (config.json + safetensors, single file or sharded) and writes one
 * pack (layout/FORMAT.md): config.json and tokenizer files as FILE entries,
 * every tensor that is not a routed expert's as a DENSE entry (bytes as stored),
 * and one expert image per routed expert, kept in its source format or
 * converted. Streams: memory stays at a few experts per worker thread whatever
 * the checkpoint's size. Errors: 0 or -errno with one line in the
 * k2_err naming the file, tensor or offset (layout.h's convention); an
 * interrupted import returns -EINTR (the pack is written under a temporary
 * name and renamed only when complete). */
#ifndef K2_IMPORT_H
#define K2_IMPORT_H

#include <signal.h>
#include <stdint.h>

#include "layout.h"

typedef struct k2i_opts {
	uint32_t experts;     /* target enum k2_format; K2_FORMAT_NONE = keep the source's */
	uint32_t codec;       /* enum k2_codec, for experts and dense entries */
	int level;            /* codec level, 0 = default */
	uint32_t block_bytes; /* pack block size, 0 = the writer's default */
	int threads;          /* conversion (and compression) threads, 0 = online cores */
	int progress;         /* draw a progress line on stderr if it is a terminal */
	/* Polled between units of work; when it becomes non-zero the import stops,
	 * removes its temporary file and returns -EINTR. May be NULL. */
	volatile sig_atomic_t *cancel;
} k2i_opts;

typedef struct k2i_stats {
	uint64_t n_files, n_dense, n_experts;
	uint64_t bytes_in;                /* payload bytes read from the checkpoint */
	uint64_t raw_bytes, stored_bytes; /* of the pack's entries (writer totals) */
	uint64_t pack_bytes;              /* size of the finished pack file */
	double seconds;
	/* the expert phase alone: from the first expert to the finished pack */
	uint64_t expert_in, expert_raw, expert_stored;
	double expert_seconds;
} k2i_stats;

/* Fills o with the defaults: keep, zstd, level 0, default blocks, all cores,
 * no progress, no cancel flag. */
void k2i_opts_default(k2i_opts *o);

/* Imports the checkpoint in src_dir into the pack out_path. The pack is built
 * in a temporary file and renamed to out_path only when complete; on any error
 * (or cancel) the temporary file is removed and out_path is left untouched.
 * Returns 0 and fills *stats (may be NULL), or -errno with one line in err
 * naming the file (and tensor) and what was wrong. */
int k2i_import(const char *src_dir, const char *out_path, const k2i_opts *o,
	       k2i_stats *stats, k2_err *err);

/* Splits a routed-expert tensor name "model.layers.L.mlp.experts.E.PROJ.SUFFIX".
 * Returns 1 and fills the outputs (proj: 0 gate, 1 up, 2 down; suffix points
 * into name) when it is one, 0 when the name is not a routed expert's, and
 * -EINVAL when it lies under "model.layers.L.mlp.experts." but does not have
 * that form. */
int k2i_expert_name_parse(const char *name, uint32_t *layer, uint32_t *expert,
			  int *proj, const char **suffix);

#endif /* K2_IMPORT_H */
