/* layout.h — the public interface of layout/: the pack format (reader and writer),
 * the expert image, dtypes and codecs, safetensors checkpoints, model config.json,
 * and the reference (de)quantizers. Shared by every program; byte layouts are
 * specified in layout/FORMAT.md.
 *
 * Error convention: functions that can fail return 0 (or a count) on success and
 * -errno on failure, and, when given a non-NULL `k2_err *`, write one line that
 * names the file, the offset or tensor, and what was expected. Nothing here exits,
 * aborts or asserts on input data. Objects come in create/destroy pairs; every
 * destructor accepts NULL. */
#ifndef K2_LAYOUT_H
#define K2_LAYOUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---------------------------------------------------------------- errors */

typedef struct k2_err {
	char msg[768];
} k2_err;

/* Formats a message into err (if non-NULL) and returns `code` (a -errno), so a
 * caller can write `return k2_err_set(err, -EINVAL, "%s: ...", path);`. */
int k2_err_set(k2_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---------------------------------------------------------------- dtypes */

enum k2_dtype {
	K2_DTYPE_NONE = 0,
	K2_DTYPE_BOOL = 1,
	K2_DTYPE_U8 = 2,
	K2_DTYPE_I8 = 3,
	K2_DTYPE_I16 = 4,
	K2_DTYPE_U16 = 5,
	K2_DTYPE_I32 = 6,
	K2_DTYPE_U32 = 7,
	K2_DTYPE_I64 = 8,
	K2_DTYPE_U64 = 9,
	K2_DTYPE_F16 = 10,
	K2_DTYPE_BF16 = 11,
	K2_DTYPE_F32 = 12,
	K2_DTYPE_F64 = 13,
	K2_DTYPE_F8_E4M3 = 14,
	K2_DTYPE_F8_E5M2 = 15,
	K2_DTYPE_COUNT
};

/* Element size in bytes, or 0 for an unknown dtype. */
size_t k2_dtype_size(uint32_t dtype);
/* The safetensors name ("BF16", "F8_E4M3" …), or NULL for an unknown dtype. */
const char *k2_dtype_name(uint32_t dtype);
/* Parses a safetensors dtype name; returns K2_DTYPE_NONE when unknown. */
uint32_t k2_dtype_parse(const char *name);

/* Expert image formats (FORMAT.md §2.2). */
enum k2_format {
	K2_FORMAT_NONE = 0,
	K2_FORMAT_BF16 = 1,
	K2_FORMAT_FP8_B128 = 2,
	K2_FORMAT_INT8 = 3,
	K2_FORMAT_INT4_G32 = 4,
	K2_FORMAT_COUNT
};

/* "bf16", "fp8-b128", "int8", "int4-g32"; NULL when unknown. */
const char *k2_format_name(uint32_t format);
/* Parses the names above; returns K2_FORMAT_NONE when unknown. */
uint32_t k2_format_parse(const char *name);

/* ---------------------------------------------------------------- codecs */

enum k2_codec {
	K2_CODEC_NONE = 0,
	K2_CODEC_ZSTD = 1,
	K2_CODEC_LZ4 = 2,
	K2_CODEC_COUNT
};

const char *k2_codec_name(uint32_t codec);  /* "none", "zstd", "lz4"; NULL unknown */
uint32_t k2_codec_parse(const char *name);  /* K2_CODEC_COUNT when unknown */

/* Worst-case compressed size of n bytes for codec. */
size_t k2_codec_bound(uint32_t codec, size_t n);

/* Compresses src[0..n) into dst (capacity cap). Returns the compressed size,
 * or -EINVAL (bad codec or level) / -ENOSPC (cap too small). level: zstd
 * 1…19 (0 = default 3); lz4 0 = fast, >= 3 = HC at that level. */
long k2_codec_compress(uint32_t codec, int level, const void *src, size_t n,
		       void *dst, size_t cap);

/* Decompresses exactly raw_n bytes. Returns 0, or -EBADMSG when the input is
 * corrupt or decodes to another length. Never reads or writes outside the
 * given buffers, whatever the input. */
int k2_codec_decompress(uint32_t codec, const void *src, size_t n, void *dst,
			size_t raw_n);

/* XXH64 with seed 0, the checksum of FORMAT.md. */
uint64_t k2_checksum(const void *data, size_t n);

/* ---------------------------------------------------------------- pack */

#define K2P_VERSION 1
#define K2P_ALIGN 4096u
#define K2P_MAX_DIMS 8
#define K2P_MAX_NAME 1024
#define K2P_MAX_BLOCK_BYTES (64u << 20)
#define K2P_MAX_LAYERS 4096u      /* expert layer indices are below this */
#define K2P_MAX_EXPERTS 65536u    /* expert indices are below this */

enum k2p_kind {
	K2P_KIND_FILE = 1,
	K2P_KIND_DENSE = 2,
	K2P_KIND_EXPERT = 3,
};

/* One block of an entry, as validated by k2p_pack_open. */
typedef struct k2p_block {
	uint64_t offset;        /* absolute offset in the pack */
	uint32_t stored_bytes;
	uint32_t raw_bytes;
	uint32_t codec;         /* enum k2_codec */
	uint64_t checksum;      /* XXH64 of the stored bytes */
} k2p_block;

/* One entry of the index, validated. `name` is NUL-terminated and owned by the
 * pack; `path` is the entry's path in the mount (FORMAT.md §1.3). */
typedef struct k2p_entry {
	uint32_t kind;          /* enum k2p_kind */
	const char *name;       /* FILE: file name; DENSE: hub name; EXPERT: "" */
	const char *path;       /* "config.json", "dense/<name>", "experts/001/017" */
	uint32_t dtype;         /* DENSE */
	uint32_t ndim;          /* DENSE */
	uint64_t shape[K2P_MAX_DIMS]; /* DENSE: dims; EXPERT: [hidden, intermediate] */
	uint32_t layer, expert, format; /* EXPERT */
	uint64_t raw_bytes;     /* size in the mount */
	uint64_t extent_offset; /* aligned */
	uint64_t extent_bytes;
	uint32_t first_block, n_blocks;
} k2p_entry;

typedef struct k2p_pack k2p_pack;

/* Opens and validates a pack: header, index checksum, every entry and block
 * against the file size and the limits of FORMAT.md §3 (block checksums are
 * checked when blocks are read). On success *out owns the open file. */
int k2p_pack_open(const char *path, k2p_pack **out, k2_err *err);
void k2p_pack_close(k2p_pack *pack);

const char *k2p_pack_path(const k2p_pack *pack);
int k2p_pack_fd(const k2p_pack *pack);         /* buffered O_RDONLY descriptor */
uint64_t k2p_pack_file_bytes(const k2p_pack *pack);
uint32_t k2p_pack_block_bytes(const k2p_pack *pack);
size_t k2p_entry_count(const k2p_pack *pack);
const k2p_entry *k2p_entry_at(const k2p_pack *pack, size_t i);
/* Looks an entry up by its mount path; NULL when absent. */
const k2p_entry *k2p_entry_find(const k2p_pack *pack, const char *path);
/* The expert at (layer, expert), or NULL. */
const k2p_entry *k2p_expert_find(const k2p_pack *pack, uint32_t layer, uint32_t expert);
/* Block i (0 … entry->n_blocks-1) of an entry. */
const k2p_block *k2p_entry_block(const k2p_pack *pack, const k2p_entry *e, uint32_t i);
/* Number of layers that have experts, and experts per layer, as the index says
 * (max index + 1). */
uint32_t k2p_expert_layers(const k2p_pack *pack, uint32_t *first_layer);

/* Checks one block's stored bytes (checksum) and decodes them into raw
 * (block->raw_bytes long). Returns 0, or -EIO with a message naming the pack
 * and the block's offset when the checksum or the decoding fails. */
int k2p_block_decode(const k2p_pack *pack, const k2p_block *block,
		     const void *stored, void *raw, k2_err *err);

/* Reads decoded bytes [off, off+len) of an entry with pread and decodes the
 * blocks involved (a simple synchronous path for tools and tests; k2fs has its
 * own io_uring path). Returns bytes read (short only at the end), or -errno. */
long k2p_entry_read(const k2p_pack *pack, const k2p_entry *e, uint64_t off,
		    void *buf, size_t len, k2_err *err);

/* Writer. Entries are written in the order they are added; the index and the
 * header go last, into `path.tmp-<pid>`, renamed to `path` by k2p_writer_finish.
 * An aborted or crashed writer leaves no file named `path`. */
typedef struct k2p_writer_opts {
	uint32_t codec;        /* enum k2_codec for experts */
	uint32_t dense_codec;  /* for dense tensors and files */
	int level;             /* codec level, 0 = default */
	uint32_t block_bytes;  /* 0 = 256 KiB */
	int threads;           /* compression threads, 0 = online cores */
} k2p_writer_opts;

typedef struct k2p_writer k2p_writer;

int k2p_writer_create(const char *path, const k2p_writer_opts *opts,
		      k2p_writer **out, k2_err *err);
int k2p_writer_add_file(k2p_writer *w, const char *name, const void *data,
			size_t n, k2_err *err);
int k2p_writer_add_dense(k2p_writer *w, const char *name, uint32_t dtype,
			 uint32_t ndim, const uint64_t *shape, const void *data,
			 size_t n, k2_err *err);
/* Like k2p_writer_add_dense, for an entry too large to hold in memory: pulls
 * its n bytes in order with read(ctx, off, buf, len, err) (returns 0 or -errno
 * with err set), a chunk of a few blocks (32 MiB or one block) at a time, so
 * memory stays at the writer's queue bound; the pack is byte for byte what
 * add_dense would write. A failed first read leaves the writer usable; a later
 * one fails the writer (finish fails; k2p_writer_abort it). */
typedef int (*k2p_read_fn)(void *ctx, uint64_t off, void *buf, size_t len,
			   k2_err *err);
int k2p_writer_add_dense_from(k2p_writer *w, const char *name, uint32_t dtype,
			      uint32_t ndim, const uint64_t *shape, uint64_t n,
			      k2p_read_fn read, void *ctx, k2_err *err);
/* `image` is a complete expert image (k2x_image_build); its header gives
 * layer, expert, format and dims. */
int k2p_writer_add_expert(k2p_writer *w, const void *image, size_t n, k2_err *err);
/* Totals so far, for progress and reports. */
void k2p_writer_totals(const k2p_writer *w, uint64_t *raw_bytes,
		       uint64_t *stored_bytes);
int k2p_writer_finish(k2p_writer *w, k2_err *err); /* writes, fsyncs, renames; frees w */
void k2p_writer_abort(k2p_writer *w);              /* unlinks the temp file; frees w */

/* ---------------------------------------------------------------- expert image */

#define K2X_HEADER_BYTES 4096u
#define K2X_SECTIONS 6

enum k2x_section_id {
	K2X_GATE_W = 0, K2X_GATE_S, K2X_UP_W, K2X_UP_S, K2X_DOWN_W, K2X_DOWN_S
};

typedef struct k2x_section {
	uint64_t offset;  /* from the image start, aligned */
	uint64_t bytes;   /* payload bytes */
	uint32_t rows, cols;
	uint32_t dtype;   /* enum k2_dtype */
} k2x_section;

/* A parsed image header: where everything is. */
typedef struct k2x_layout {
	uint32_t format, layer, expert;
	uint32_t hidden, inter;
	uint64_t image_bytes;
	k2x_section sec[K2X_SECTIONS];
} k2x_layout;

/* Computes the layout of an image of this format and these dims. Returns 0, or
 * -EINVAL (unknown format, zero dims, int4 with cols % 32 != 0, dims > 2^20). */
int k2x_layout_compute(uint32_t format, uint32_t hidden, uint32_t inter,
		       uint32_t layer, uint32_t expert, k2x_layout *out);
/* Writes the header page for `lay` into hdr (K2X_HEADER_BYTES, zeroed first). */
void k2x_header_write(const k2x_layout *lay, void *hdr);
/* Parses and validates a header page against `image_bytes` (the file size).
 * Returns 0 or -EINVAL with a message naming `what` (a path). */
int k2x_header_parse(const void *hdr, size_t hdr_bytes, uint64_t image_bytes,
		     const char *what, k2x_layout *out, k2_err *err);

/* ---------------------------------------------------------------- quantization */

/* Scalar conversions; rounding is to nearest, ties to even, as torch does. */
float k2q_bf16_to_f32(uint16_t v);
uint16_t k2q_f32_to_bf16(float v);
float k2q_e4m3_to_f32(uint8_t v);
uint8_t k2q_f32_to_e4m3(float v);   /* saturates finite values to ±448; NaN -> 0x7f */

/* Each quantizer takes w [rows, cols] float32 row-major. Returns 0 or -EINVAL. */
/* fp8-b128: s = max|block| / 448 (float32, min 1e-12), q = e4m3(w / s). */
int k2q_quant_fp8_b128(const float *w, uint32_t rows, uint32_t cols,
		       uint8_t *q /* [rows, cols] */,
		       float *scale_inv /* [ceil(rows/128), ceil(cols/128)] */);
/* int8: s = max|row| / 127 (min 1e-12), q = clamp(rne(w / s), -127, 127). */
int k2q_quant_int8_row(const float *w, uint32_t rows, uint32_t cols,
		       int8_t *q /* [rows, cols] */, float *scale /* [rows] */);
/* int4-g32 (compressed-tensors minmax): s = bf16(max|group| / 7.5, min 1e-8),
 * q = clamp(rne(w / f32(s)), -8, 7), packed as FORMAT.md §2.2. */
int k2q_quant_int4_g32(const float *w, uint32_t rows, uint32_t cols,
		       uint8_t *packed /* [rows, cols/2] */,
		       uint16_t *scale_bf16 /* [rows, cols/32] */);

/* Dequantizes one section pair back to float32 w [rows, cols]. `scales` is
 * ignored for bf16. Returns 0 or -EINVAL. */
int k2q_dequant(uint32_t format, const void *weights, const void *scales,
		uint32_t rows, uint32_t cols, float *w);

/* Converts a source tensor of any supported dtype (BF16, F16, F32, F8_E4M3 with
 * an optional block-128 scale_inv) into float32. Used by k2pack. */
int k2q_to_f32(uint32_t dtype, const void *src, size_t n_elems, float *dst);

/* ---------------------------------------------------------------- safetensors */

typedef struct k2st_tensor {
	const char *name;      /* owned by the checkpoint */
	uint32_t dtype;        /* enum k2_dtype */
	uint32_t ndim;
	uint64_t shape[K2P_MAX_DIMS];
	uint64_t bytes;        /* payload bytes = product(shape) × size */
	int shard;             /* index into the checkpoint's shard files */
	uint64_t offset;       /* absolute offset of the payload in its shard */
} k2st_tensor;

typedef struct k2st_checkpoint k2st_checkpoint;

/* Opens a HuggingFace checkpoint directory: `model.safetensors`, or the shards
 * listed in `model.safetensors.index.json`, or a single .safetensors file path.
 * Parses every header and validates every tensor's offsets against its file;
 * a tensor named in the index but missing from its shard, a shard that does
 * not exist, an unknown dtype, overlapping or out-of-file payloads are errors
 * naming the file. Reads no payload. */
int k2st_open(const char *path, k2st_checkpoint **out, k2_err *err);
void k2st_close(k2st_checkpoint *ck);

size_t k2st_count(const k2st_checkpoint *ck);
const k2st_tensor *k2st_at(const k2st_checkpoint *ck, size_t i);
const k2st_tensor *k2st_find(const k2st_checkpoint *ck, const char *name);
const char *k2st_shard_path(const k2st_checkpoint *ck, int shard);
/* The directory holding config.json etc. */
const char *k2st_dir(const k2st_checkpoint *ck);

/* Reads a tensor's payload (t->bytes) into buf with pread. */
int k2st_read(const k2st_checkpoint *ck, const k2st_tensor *t, void *buf,
	      k2_err *err);

/* Parses one safetensors file image held in memory (for the fuzzer and for
 * reading dumps): calls back once per tensor, in header order, with offsets
 * relative to the file start. Returns 0 or -EINVAL naming `what`. */
typedef int (*k2st_tensor_cb)(void *ctx, const k2st_tensor *t);
int k2st_parse_buffer(const void *data, size_t n, const char *what,
		      k2st_tensor_cb cb, void *ctx, k2_err *err);

/* Writer: one safetensors file at a time. Tensors are declared first (so the
 * header can be written), then their payloads appended in the same order. */
typedef struct k2st_writer k2st_writer;
int k2st_writer_create(const char *path, k2st_writer **out, k2_err *err);
int k2st_writer_declare(k2st_writer *w, const char *name, uint32_t dtype,
			uint32_t ndim, const uint64_t *shape, k2_err *err);
/* Writes the header; after this, k2st_writer_append payloads in declared order. */
int k2st_writer_begin_data(k2st_writer *w, k2_err *err);
int k2st_writer_append(k2st_writer *w, const void *data, size_t n, k2_err *err);
int k2st_writer_close(k2st_writer *w, k2_err *err); /* checks all bytes came; frees w */

/* ---------------------------------------------------------------- model config */

/* What every program needs from a DeepSeek-V3-family config.json. */
typedef struct k2_model_config {
	uint32_t vocab_size, hidden_size, intermediate_size, moe_intermediate_size;
	uint32_t num_hidden_layers, num_attention_heads, num_key_value_heads;
	uint32_t n_shared_experts, n_routed_experts, num_experts_per_tok;
	uint32_t n_group, topk_group, first_k_dense_replace, moe_layer_freq;
	uint32_t q_lora_rank;  /* 0 = no q LoRA (config null) */
	uint32_t kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim;
	uint32_t max_position_embeddings;
	float routed_scaling_factor, rms_norm_eps, rope_theta;
	int norm_topk_prob;    /* bool */
	int tie_word_embeddings;
	int32_t bos_token_id, eos_token_id; /* -1 when absent */
	char scoring_func[16];  /* "sigmoid" (or "softmax") */
	char topk_method[32];   /* "noaux_tc", "greedy", "group_limited_greedy" */
	/* rope_scaling: type "yarn" or none */
	int rope_yarn;
	float rope_factor, rope_beta_fast, rope_beta_slow, rope_mscale, rope_mscale_all_dim;
	uint32_t rope_original_max_position;
	/* quantization_config of the source checkpoint */
	uint32_t source_format; /* K2_FORMAT_BF16, _FP8_B128 or _INT4_G32 for its experts */
	uint32_t fp8_block_rows, fp8_block_cols; /* weight_block_size, 128×128 */
	uint32_t int4_group;                     /* 32 */
} k2_model_config;

/* Parses config.json text. Every required key missing, of the wrong type or out
 * of range is an error naming `what` (the file) and the key. */
int k2_config_parse(const char *json, size_t n, const char *what,
		    k2_model_config *out, k2_err *err);
/* Reads and parses a file. */
int k2_config_load(const char *path, k2_model_config *out, k2_err *err);
/* 1 when layer l has routed experts (l >= first_k_dense_replace and
 * l % moe_layer_freq == 0). */
int k2_config_is_moe_layer(const k2_model_config *c, uint32_t layer);

/* ---------------------------------------------------------------- small helpers */

/* Parses a size in bytes: "123", "64K", "1.5M", "2GiB". The whole string must be
 *
 *   size   = digits [ "." digits ] [ unit [ "i" | "I" ] [ "b" | "B" ] ]
 *   unit   = "k" | "K" | "m" | "M" | "g" | "G" | "t" | "T"
 *   digits = one or more of 0-9
 *
 * Units are binary: K = 1024, M = 1024², G = 1024³, T = 1024⁴, so "64K",
 * "64k", "64KiB", "64KB" and "64Kib" all mean 65536. A fraction is exact and
 * truncated to whole bytes ("1.5M" = 1572864, "0.5" = 0, "1.0000001K" = 1024).
 * No sign, space, hex, exponent, inf or nan; "i" and "b" only after a unit
 * ("100i", "100B" are malformed); ".5" and "1." are malformed.
 * Returns 0 with *out set, or -EINVAL (*out unchanged) for a malformed string
 * or NULL, or a result above UINT64_MAX. */
int k2_parse_size(const char *s, uint64_t *out);
/* Reads exactly n bytes at offset off with pread (retrying EINTR and short
 * reads). Returns 0, or -errno / -EIO (file ended early) with a message
 * naming `path` and the offset. */
int k2_pread_exact(int fd, void *buf, size_t n, uint64_t off, const char *path,
		   k2_err *err);
/* Reads a whole file into a malloc'd, NUL-terminated buffer. */
int k2_read_file(const char *path, char **data, size_t *n, k2_err *err);
/* Memory for large buffers read in streams (weights, expert images): 64-byte
 * aligned, and from 2 MiB on aligned to 2 MiB and advised for transparent huge
 * pages (madvise MADV_HUGEPAGE; ignored where the kernel refuses), which
 * streaming reads need to keep the TLB out of the way, and which a machine
 * that faults 4 KiB pages in slowly fills far faster. Uninitialised; release
 * with free(). NULL when memory runs out. */
void *k2_alloc_large(size_t bytes);
/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates (U+D800..DFFF),
 * nothing above U+10FFFF, no truncated sequence at the end. NUL bytes are
 * valid. Returns 1 when all n bytes of s are valid; else 0 with *bad_off (if
 * non-NULL) set to the offset of the first byte of the first sequence that is
 * not. Reads only s[0..n). */
int k2_utf8_valid(const void *s, size_t n, size_t *bad_off);
/* Formats bytes as "1.50 GiB" into buf. */
const char *k2_format_bytes(uint64_t bytes, char *buf, size_t n);
/* Monotonic seconds. */
double k2_now(void);

#endif /* K2_LAYOUT_H */
