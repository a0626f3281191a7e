/* k2bench.c — benchmarks of the k2 tools, one subcommand each:
 *
 *   k2bench fs [options]     filesystem throughput (tools/lib/bench_fs.c)
 *   k2bench infer [options]  CPU decode speed vs memory copy rate (tools/lib/bench_infer.c)
 *   k2bench tok [options]    tokenizer encode speed, Kimi-K2 vs DeepSeek-V3 (tools/lib/bench_tok.c)
 *   k2bench serve [options]  concurrent decode through k2serve's scheduler (tools/lib/bench_serve.c)
 *
 * Benchmarks measure and print; they are not tests and assert nothing. The
 * command table below is the only place a new subcommand is registered (its
 * entry point declared in tools/lib/bench.h). */
#include "bench.h"

#include <stdio.h>
#include <string.h>

struct bench_cmd {
	const char *name;
	int (*main)(int argc, char **argv);
	const char *what;
};

static const struct bench_cmd commands[] = {
	{"fs", bench_fs_main,
	 "O_DIRECT pack reads vs cold/hot whole-expert reads through a k2fs mount vs "
	 "page-cache reads of a plain file, for each codec"},
	{"infer", bench_infer_main,
	 "decode tokens/s of the CPU engine on a Kimi-K2-shaped int4 model, weight bytes "
	 "touched per token, vs a memory copy rate"},
	{"serve", bench_serve_main,
	 "aggregate decode tokens/s of k2serve's scheduler with 1, 2, 4, 8 concurrent "
	 "streams vs one, and expert bytes per generated token"},
	{"tok", bench_tok_main,
	 "tokenizer encode MB/s, Kimi-K2 (tiktoken.model) vs DeepSeek-V3 (tokenizer.json) "
	 "on the same texts"},
};

static void usage(FILE *f)
{
	fprintf(f, "usage: k2bench COMMAND [options]   (k2bench COMMAND --help for its options)\n\n"
		   "commands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].what);
}

int main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(argv[1], commands[i].name) == 0)
			return commands[i].main(argc - 1, argv + 1);
	fprintf(stderr, "k2bench: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
