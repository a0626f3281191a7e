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

/* ---------------------------------------------------------------- shared helpers */

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
