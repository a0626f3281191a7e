/* bench_infer.h — `k2bench infer`: decode speed of the CPU engine on a
 * Kimi-K2-shaped model, against a memory copy rate measured in the same run. */
#ifndef K2_BENCH_INFER_H
#define K2_BENCH_INFER_H

/* Runs the benchmark with argv[0] = "infer" and its options; prints the report
 * on stdout. Returns a process exit status (0 ok, 1 failure, 2 usage). */
int k2bench_infer_main(int argc, char **argv);

#endif /* K2_BENCH_INFER_H */
