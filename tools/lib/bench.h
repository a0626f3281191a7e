/* bench.h — the subcommands of k2bench (tools/k2bench.c dispatches on the first
 * argument) and the helpers they share. A subcommand is
 * `int bench_<name>_main(int argc, char **argv)`, argv[0] being its name; it
 * prints its own usage on --help and returns the process exit status. To add one,
 * declare it here and list it in k2bench.c's command table. */
#ifndef K2_BENCH_H
#define K2_BENCH_H

#include <stddef.h>
#include <stdint.h>

/* k2bench fs: O_DIRECT pack reads vs cold and hot reads through a k2fs mount vs
 * page-cache reads of a plain file (tools/lib/bench_fs.c). */
int bench_fs_main(int argc, char **argv);
/* k2bench infer: decode tokens/s of the CPU engine on a Kimi-K2-shaped model,
 * weight bytes touched per token, vs a memory copy rate (tools/lib/bench_infer.c). */
int bench_infer_main(int argc, char **argv);
/* k2bench tok: encode MB/s of the tokenizer, Kimi-K2's tiktoken.model vs
 * DeepSeek-V3's tokenizer.json on the same texts (tools/lib/bench_tok.c). */
int bench_tok_main(int argc, char **argv);
/* k2bench serve: aggregate decode tokens/s of k2serve's scheduler with 1, 2, 4,
 * 8 concurrent streams against one, and the expert bytes each generated token
 * costs (tools/lib/bench_serve.c). */
int bench_serve_main(int argc, char **argv);

/* ---------------------------------------------------------------- shared helpers */

struct k2_err;

/* The model the engine benchmarks run on (tools/lib/bench_model.c): a
 * directory given with --model (a mount, or a directory laid out like one),
 * or a `k2gen --preset k2` checkpoint of `layers` MoE layers × `experts`
 * routed experts (int4, every layer MoE, vocabulary `vocab`) generated,
 * imported and laid out like the mount under `work`, once per shape (a
 * stamp file names it; later runs reuse it). */
struct bench_model_opts {
	const char *model;  /* NULL: generate into work */
	const char *work;
	long layers, experts, vocab;
};
/* Their usage lines, for a benchmark's --help (the defaults below). */
#define BENCH_MODEL_USAGE \
	"  --model DIR     a mount (or a directory laid out like one) to run on;\n" \
	"                  default: generate one into the work directory\n" \
	"  --work DIR      work directory (default /tmp/k2bench-infer); the generated\n" \
	"                  model is kept there and reused\n" \
	"  --layers N      MoE layers of the generated model (default 2)\n" \
	"  --experts N     routed experts per layer (default 64)\n" \
	"  --vocab N       vocabulary of the generated model (default: Kimi-K2's 163840)\n"
/* Work dir /tmp/k2bench-infer, 2 layers, 64 experts, vocabulary 163840. */
void bench_model_opts_default(struct bench_model_opts *o);
/* Parses argv[*i] if it is one of BENCH_MODEL_USAGE's options (advancing *i
 * past a separate value). Returns 1 when it was (o updated), 0 when it is
 * not one of them (or its value is missing: *bad is then set, the error
 * printed), -1 for a bad value (the error printed as "prog: --opt: …"). */
int bench_model_opt(const char *prog, int argc, char **argv, int *i, struct bench_model_opts *o,
		    int *bad);
/* Writes the model's directory into model_dir[n], generating it first when
 * it is not there yet (minutes: progress on stderr, each line prefixed by
 * prog). Returns 0, or -errno with a message in err. */
int bench_model_dir(const char *prog, const struct bench_model_opts *o, char *model_dir,
		    size_t n, struct k2_err *err);

/* Median of v[0 … n) (sorts v in place); 0 when n is 0. */
double bench_median(double *v, size_t n);
/* Writes "3" to /proc/sys/vm/drop_caches after sync. Returns 0, or -errno
 * (typically -EACCES when not root). */
int bench_drop_caches(void);
/* Runs argv[0] with argv (PATH search), waits, and returns its exit status,
 * or -errno when it cannot start. stdout/stderr are inherited. */
int bench_run(char *const argv[]);
/* The directory holding this executable (for sibling programs such as bin/k2fs),
 * written into buf. Returns buf, or "." when unknown. */
const char *bench_bin_dir(char *buf, size_t n);

#endif /* K2_BENCH_H */
