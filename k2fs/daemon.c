/* daemon.c — start-up and shutdown of the k2fs daemon: the command line
 * (k2 options plus the standard FUSE ones), opening and validating the pack,
 * mounting, daemonizing, the multithreaded session loop, and a clean unmount on
 * SIGTERM/SIGINT/SIGHUP or `fusermount3 -u`. */
#include "k2fs_fs.h"
#include "k2fs_push.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <liburing.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#define K2FS_DEFAULT_MAX_READ (1u << 20)
/* The kernel sends reads of at most max_pages pages (65535 at most): a larger
 * max_read would change nothing. */
#define K2FS_MAX_MAX_READ (256u << 20)
#define K2FS_DEFAULT_IODEPTH 64
#define K2FS_DEFAULT_WINDOW 8
#define K2FS_DEFAULT_FUSE_THREADS 64

static volatile int log_to_syslog;

void k2fs_log(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (log_to_syslog)
		syslog(LOG_ERR, "%s", line);
	else
		fprintf(stderr, "k2fs: %s\n", line);
}

static void fuse_log_func(enum fuse_log_level level, const char *fmt, va_list ap)
{
	if (log_to_syslog)
		vsyslog((int)level, fmt, ap);
	else
		vfprintf(stderr, fmt, ap);
}

/* ---------------------------------------------------------------- command line */

struct cli {
	char *pack;
	char *cache, *threads, *readahead, *iodepth, *chunk, *window, *prefault;
	int direct_io, no_odirect, notify_store, auto_direct;
	char *timeout, *kernel_ra;
	char *max_read;       /* a FUSE mount option k2fs sets itself (cli_config) */
	int help, version;
	int max_threads_given;
};

enum { KEY_HELP, KEY_VERSION, KEY_MAX_THREADS };

#define K2OPT(t, p) {t, offsetof(struct cli, p), 1}

static const struct fuse_opt cli_opts[] = {
	{"cache=%s", offsetof(struct cli, cache), 0},
	{"threads=%s", offsetof(struct cli, threads), 0},
	{"readahead=%s", offsetof(struct cli, readahead), 0},
	{"iodepth=%s", offsetof(struct cli, iodepth), 0},
	{"window=%s", offsetof(struct cli, window), 0},
	{"prefault=%s", offsetof(struct cli, prefault), 0},
	{"chunk=%s", offsetof(struct cli, chunk), 0},
	{"timeout=%s", offsetof(struct cli, timeout), 0},
	{"kernel_readahead=%s", offsetof(struct cli, kernel_ra), 0},
	{"max_read=%s", offsetof(struct cli, max_read), 0},
	K2OPT("direct_io", direct_io),
	K2OPT("no_odirect", no_odirect),
	K2OPT("notify_store", notify_store),
	K2OPT("auto_direct", auto_direct),
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_KEY("max_threads=", KEY_MAX_THREADS),
	FUSE_OPT_END
};

static int cli_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	(void)outargs;
	struct cli *cli = data;
	switch (key) {
	case KEY_HELP:
		cli->help = 1;
		return 0;
	case KEY_VERSION:
		cli->version = 1;
		return 0;
	case KEY_MAX_THREADS:
		cli->max_threads_given = 1;
		return 1; /* fuse_parse_cmdline reads it */
	case FUSE_OPT_KEY_NONOPT:
		if (!cli->pack) {
			cli->pack = strdup(arg);
			return cli->pack ? 0 : -1;
		}
		return 1; /* the mount point, for fuse_parse_cmdline */
	default:
		return 1;
	}
}

static void usage(FILE *f, const char *prog)
{
	fprintf(f,
"usage: %s PACK MOUNTPOINT [-f] [-d] [-s] [-o OPTION[,OPTION...]]\n"
"\n"
"Mounts the k2 pack PACK (made by k2pack) read-only at MOUNTPOINT:\n"
"\n"
"  MOUNTPOINT/config.json, tokenizer files   the checkpoint's files, byte for byte\n"
"  MOUNTPOINT/dense/<hub tensor name>        every tensor that is not a routed expert\n"
"  MOUNTPOINT/experts/<LLL>/<EEE>            one expert image per routed expert\n"
"\n"
"Experts are read from the pack with io_uring (O_DIRECT, a deep queue), checked and\n"
"decompressed by a pool of worker threads into a RAM cache with a byte budget (LRU,\n"
"with pinning), and served from there; the kernel page cache keeps what was read.\n"
"A damaged block fails only the reads that touch it (EIO, one log line naming the\n"
"pack offset). Runs in the background unless -f is given; logs go to stderr, or to\n"
"syslog when in the background. SIGTERM, SIGINT and `fusermount3 -u MOUNTPOINT`\n"
"unmount cleanly.\n"
"\n"
"k2fs options:\n"
"    -o cache=SIZE          RAM cache budget for decoded experts, with K/M/G\n"
"                           suffixes (default: a quarter of physical memory)\n"
"    -o threads=N           decode worker threads (default: online CPUs)\n"
"    -o readahead=SIZE|all  default read-ahead of expert files: how far past a read\n"
"                           k2fs decodes ahead; all = the whole expert on first\n"
"                           touch (default all)\n"
"    -o iodepth=N           pack reads in flight (default %d)\n"
"    -o window=N            pack reads in flight for one expert's load (default %d):\n"
"                           its pieces complete nearly in order, so replies start\n"
"                           early and overlap with the rest of the load\n"
"    -o chunk=SIZE          largest single pack read (default 1M)\n"
"    -o prefault=SIZE       allocate and touch this much of the cache's memory at\n"
"                           start, beside serving (default 0: on first use)\n"
"    -o direct_io           serve files with FUSE direct_io instead of keeping them in\n"
"                           the kernel page cache\n"
"    -o auto_direct         open experts that are not resident in the RAM cache with\n"
"                           direct_io (cold reads: parallel requests, one copy\n"
"                           less), resident ones through the page cache\n"
"    -o no_odirect          read the pack through the page cache, not O_DIRECT\n"
"    -o notify_store        push each expert into the kernel page cache as soon as\n"
"                           its load finishes (fuse_lowlevel_notify_store)\n"
"    -o timeout=SECONDS     entry and attribute timeouts (default 86400)\n"
"    -o kernel_readahead=SIZE  the kernel's read-ahead for this mount, set through\n"
"                           /sys/class/bdi after mounting (needs root; FUSE\n"
"                           offers at most 128K otherwise); 0 leaves it\n"
"                           (default 1M)\n"
"\n"
"Control through extended attributes (getfattr -d -m user.k2 FILE):\n"
"  expert file  user.k2.format, .codec, .stored_bytes, .state (disk, loading, ram,\n"
"               pinned), .hits, .loads (read-only); user.k2.readahead (SIZE|all);\n"
"               user.k2.prefetch = willneed | pin | unpin | dontneed\n"
"  layer dir    user.k2.prefetch = \"3,17,200\" (willneed for each expert);\n"
"               user.k2.readahead = default of the layer's files\n"
"  mount root   user.k2.prefetch = \"1/3,2/17\"; user.k2.cache_limit = SIZE (lowering\n"
"               it evicts at once); user.k2.cache_used, user.k2.stats (JSON)\n"
"  dense file   user.k2.dtype, user.k2.shape\n"
"Errors: unknown name ENODATA on get and ENOTSUP on set, read-only name EPERM,\n"
"malformed value EINVAL (nothing changes). A hint that does not fit the budget\n"
"now is dropped (willneed) or kept for the next read (pin).\n"
"\n"
"Exit status: 0 after a clean unmount; 1 when the pack is bad, an option is bad or\n"
"the mount fails (with one line saying why).\n"
"\n"
"FUSE options:\n"
"    -h   --help            print help\n"
"    -V   --version         print version\n"
"    -d   -o debug          enable debug output (implies -f)\n"
"    -f                     foreground operation\n"
"    -s                     disable multi-threaded operation\n"
"    -o max_threads=N       the maximum number of FUSE worker threads\n"
"                           (default %d)\n"
"    -o max_idle_threads=N  the maximum number of idle FUSE worker threads\n"
"                           (default: no limit, idle threads are kept)\n"
"    -o clone_fd            accepted; k2fs always gives each worker thread its\n"
"                           own /dev/fuse descriptor\n"
"    -o max_read=SIZE       largest read request the kernel sends, 4K to 256M\n"
"                           (default 1M)\n",
		prog, K2FS_DEFAULT_IODEPTH, K2FS_DEFAULT_WINDOW, K2FS_DEFAULT_FUSE_THREADS);
}

static int parse_count(const char *what, const char *s, unsigned lo, unsigned hi,
		       unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) {
		fprintf(stderr, "k2fs: bad value for -o %s: '%s' (expected %u … %u)\n", what, s,
			lo, hi);
		return -1;
	}
	*out = (unsigned)v;
	return 0;
}

static int parse_bytes(const char *what, const char *s, uint64_t *out)
{
	if (k2fs_value_parse_size(s, strlen(s), out)) {
		fprintf(stderr, "k2fs: bad value for -o %s: '%s' (expected a size such as 512M "
			"or 8G)\n", what, s);
		return -1;
	}
	return 0;
}

/* Fills cfg from the k2 options; returns 0 or -1 after printing why. */
static int cli_config(const struct cli *cli, struct k2fs_config *cfg)
{
	long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	memset(cfg, 0, sizeof(*cfg));
	cfg->cache.limit = pages > 0 && psize > 0 ? (uint64_t)pages * (uint64_t)psize / 4
						  : (1ull << 30);
	cfg->cache.threads = ncpu > 0 ? (unsigned)ncpu : 1;
	cfg->cache.iodepth = K2FS_DEFAULT_IODEPTH;
	cfg->cache.window = K2FS_DEFAULT_WINDOW;
	cfg->cache.chunk = 1 << 20;
	cfg->cache.readahead = K2FS_RA_ALL;
	cfg->cache.no_odirect = cli->no_odirect;
	cfg->direct_io = cli->direct_io;
	cfg->notify_store = cli->notify_store;
	cfg->auto_direct = cli->auto_direct;
	cfg->timeout = 86400;
	cfg->max_read = K2FS_DEFAULT_MAX_READ;
	if (cli->cache && parse_bytes("cache", cli->cache, &cfg->cache.limit))
		return -1;
	if (cli->threads && parse_count("threads", cli->threads, 1, 1024, &cfg->cache.threads))
		return -1;
	if (cli->iodepth && parse_count("iodepth", cli->iodepth, 1, 4096, &cfg->cache.iodepth))
		return -1;
	if (cli->window && parse_count("window", cli->window, 1, 4096, &cfg->cache.window))
		return -1;
	if (cli->prefault && parse_bytes("prefault", cli->prefault, &cfg->cache.prefault))
		return -1;
	if (cli->chunk) {
		if (parse_bytes("chunk", cli->chunk, &cfg->cache.chunk))
			return -1;
		if (cfg->cache.chunk < 4096 || cfg->cache.chunk > (256u << 20) ||
		    cfg->cache.chunk % 4096) {
			fprintf(stderr, "k2fs: bad value for -o chunk: '%s' (expected a multiple "
				"of 4K between 4K and 256M)\n", cli->chunk);
			return -1;
		}
	}
	if (cli->readahead &&
	    k2fs_value_parse_readahead(cli->readahead, strlen(cli->readahead),
				       &cfg->cache.readahead)) {
		fprintf(stderr, "k2fs: bad value for -o readahead: '%s' (expected a size or "
			"'all')\n", cli->readahead);
		return -1;
	}
	if (cli->max_read) {
		uint64_t v;
		if (parse_bytes("max_read", cli->max_read, &v))
			return -1;
		if (v < 4096 || v > K2FS_MAX_MAX_READ) {
			fprintf(stderr, "k2fs: bad value for -o max_read: '%s' (expected a size "
				"between 4K and 256M)\n", cli->max_read);
			return -1;
		}
		cfg->max_read = (unsigned)v;
	}
	cfg->kernel_ra = 1 << 20;
	if (cli->kernel_ra && parse_bytes("kernel_readahead", cli->kernel_ra, &cfg->kernel_ra))
		return -1;
	if (cli->timeout) {
		unsigned t;
		if (parse_count("timeout", cli->timeout, 0, 100000000, &t))
			return -1;
		cfg->timeout = t;
	}
	return 0;
}

/* ---------------------------------------------------------------- kernel read-ahead */

/* The "major:minor" of the mount at `mnt` (an absolute path), from
 * /proc/self/mountinfo (field 3 of the last line whose field 5 is the mount
 * point). Returns 0 or -ENOENT. Touches nothing on the mount itself. */
static int mount_devno(const char *mnt, char *out, size_t n)
{
	FILE *f = fopen("/proc/self/mountinfo", "r");
	int rc = -ENOENT;
	char line[4096];
	while (f && fgets(line, sizeof(line), f)) {
		char dev[64], point[2048];
		if (sscanf(line, "%*s %*s %63s %*s %2047s", dev, point) != 2)
			continue;
		if (strcmp(point, mnt) == 0) {
			snprintf(out, n, "%s", dev);
			rc = 0;
		}
	}
	if (f)
		fclose(f);
	return rc;
}

/* Raises the kernel's read-ahead of the mount: FUSE offers 128K at most at INIT,
 * which caps buffered requests to 128K; the bdi setting lifts that, so requests
 * reach max_read. The kernel applies FUSE's value when it processes the INIT
 * reply, so this runs once, on the first request after INIT (k2fs_after_init).
 * Logs and carries on when it cannot (not root). */
static void set_kernel_readahead(const char *mnt, uint64_t bytes)
{
	char dev[64], path[128], val[32];
	if (bytes == 0 || !mnt)
		return;
	if (mount_devno(mnt, dev, sizeof(dev))) {
		k2fs_log("%s: not found in /proc/self/mountinfo; kernel read-ahead left as is", mnt);
		return;
	}
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	snprintf(val, sizeof(val), "%" PRIu64 "\n", (bytes + 1023) / 1024);
	FILE *f = fopen(path, "w");
	if (!f || fputs(val, f) < 0 || fclose(f) != 0) {
		if (f)
			fclose(f);
		k2fs_log("%s: cannot set (%s); kernel read-ahead left at FUSE's 128K", path,
			 strerror(errno));
	}
}

void k2fs_after_init(struct k2fs_fs *fs)
{
	if (atomic_load_explicit(&fs->after_init_done, memory_order_acquire))
		return;
	if (atomic_exchange(&fs->after_init_done, 1))
		return;
	set_kernel_readahead(fs->cfg.mountpoint, fs->cfg.kernel_ra);
}

/* ---------------------------------------------------------------- main */

static void cli_free(struct cli *cli)
{
	free(cli->pack);
	free(cli->cache);
	free(cli->threads);
	free(cli->readahead);
	free(cli->iodepth);
	free(cli->chunk);
	free(cli->window);
	free(cli->prefault);
	free(cli->timeout);
	free(cli->kernel_ra);
	free(cli->max_read);
}

/* Passes cfg->max_read on as the max_read mount option: libfuse refuses the
 * connection unless it equals what op_init sets at INIT. Returns 0 or -1. */
static int add_max_read(struct fuse_args *args, const struct k2fs_config *cfg)
{
	char opt[32];
	snprintf(opt, sizeof(opt), "-omax_read=%u", cfg->max_read);
	return fuse_opt_add_arg(args, opt);
}

static void fs_free(struct k2fs_fs *fs)
{
	k2fs_push_destroy(fs->push);
	k2fs_cache_destroy(fs->cache);
	if (fs->layer_prefetch)
		for (uint32_t l = 0; l < fs->tree.n_layers; l++)
			free(fs->layer_prefetch[l]);
	free(fs->layer_prefetch);
	free(fs->root_prefetch);
	k2fs_tree_free(&fs->tree);
	k2p_pack_close(fs->pack);
	pthread_mutex_destroy(&fs->hint_lock);
	free(fs->cfg.pack_path);
	free(fs->cfg.mountpoint);
}

int k2fs_main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts;
	struct cli cli;
	struct k2fs_fs fs;
	int ret = 1;
	const char *prog = argc > 0 ? argv[0] : "k2fs";

	memset(&cli, 0, sizeof(cli));
	memset(&opts, 0, sizeof(opts));
	memset(&fs, 0, sizeof(fs));
	pthread_mutex_init(&fs.hint_lock, NULL);
	fuse_set_log_func(fuse_log_func);

	if (fuse_opt_parse(&args, &cli, cli_opts, cli_proc) == -1)
		goto out_args;
	if (cli.help) {
		usage(stdout, prog); /* fuse_cmdline_help's defaults are not k2fs's */
		fuse_lowlevel_help();
		ret = 0;
		goto out_args;
	}
	if (cli.version) {
		printf("k2fs (pack format %d)\n", K2P_VERSION);
		fuse_lowlevel_version();
		ret = 0;
		goto out_args;
	}
	if (fuse_parse_cmdline(&args, &opts) != 0)
		goto out_args;
	if (opts.show_help || opts.show_version) {
		usage(stdout, prog);
		ret = 0;
		goto out_opts;
	}
	if (!cli.pack || !opts.mountpoint) {
		fprintf(stderr, "k2fs: usage: %s PACK MOUNTPOINT [-f] [-o OPTIONS] "
			"(see --help)\n", prog);
		goto out_opts;
	}
	if (cli_config(&cli, &fs.cfg))
		goto out_opts;
	fs.cfg.foreground = opts.foreground;
	if (add_max_read(&args, &fs.cfg) == -1)
		goto out_opts;
	if (fuse_opt_add_arg(&args, "-osubtype=k2fs,fsname=k2fs") == -1)
		goto out_opts;

	/* absolute paths: daemonizing changes the directory */
	fs.cfg.mountpoint = realpath(opts.mountpoint, NULL);
	fs.cfg.pack_path = realpath(cli.pack, NULL);
	k2_err err = {{0}};
	if (!fs.cfg.pack_path) {
		fprintf(stderr, "k2fs: %s: %s\n", cli.pack, strerror(errno));
		goto out_opts;
	}
	int rc = k2p_pack_open(fs.cfg.pack_path, &fs.pack, &err);
	if (rc) {
		fprintf(stderr, "k2fs: %s\n", err.msg);
		goto out_fs;
	}
	rc = k2fs_tree_build(&fs.tree, fs.pack, &err);
	if (rc) {
		fprintf(stderr, "k2fs: %s\n", err.msg);
		goto out_fs;
	}
	fs.layer_prefetch = calloc(fs.tree.n_layers + 1, sizeof(char *));
	if (!fs.layer_prefetch) {
		fprintf(stderr, "k2fs: out of memory\n");
		goto out_fs;
	}
	{
		/* io_uring may be disabled (sysctl, seccomp): say so before forking */
		struct io_uring probe;
		rc = io_uring_queue_init(4, &probe, 0);
		if (rc < 0) {
			fprintf(stderr, "k2fs: io_uring is not available here: %s\n",
				strerror(-rc));
			goto out_fs;
		}
		io_uring_queue_exit(&probe);
	}

	fs.se = fuse_session_new(&args, &k2fs_ops, sizeof(k2fs_ops), &fs);
	if (!fs.se)
		goto out_fs;
	if (fuse_set_signal_handlers(fs.se) != 0)
		goto out_session;
	if (fuse_session_mount(fs.se, opts.mountpoint) != 0)
		goto out_signals;
	fuse_daemonize(opts.foreground);
	if (!opts.foreground) {
		openlog("k2fs", LOG_PID, LOG_DAEMON);
		log_to_syslog = 1;
	}
	/* threads start after the fork of fuse_daemonize */
	if (fs.cfg.notify_store && !fs.cfg.direct_io) {
		if (k2fs_push_create(&fs, &fs.push)) {
			k2fs_log("out of memory");
			goto out_unmount;
		}
		fs.cfg.cache.loaded = k2fs_push_queue;
		fs.cfg.cache.loaded_arg = fs.push;
	}
	rc = k2fs_cache_create(fs.pack, &fs.cfg.cache, &fs.cache, &err);
	if (rc) {
		k2fs_log("%s", err.msg);
		goto out_unmount;
	}
	if (fs.push && k2fs_push_start(fs.push)) {
		k2fs_log("cannot start the notify_store thread");
		goto out_unmount;
	}

	if (opts.singlethread) {
		rc = fuse_session_loop(fs.se);
	} else {
		struct fuse_loop_config *lc = fuse_loop_cfg_create();
		if (!lc) {
			k2fs_log("out of memory");
			goto out_unmount;
		}
		fuse_loop_cfg_set_clone_fd(lc, 1);
		fuse_loop_cfg_set_max_threads(lc, cli.max_threads_given ? opts.max_threads
								: K2FS_DEFAULT_FUSE_THREADS);
		if (opts.max_idle_threads != UINT_MAX)
			fuse_loop_cfg_set_idle_threads(lc, opts.max_idle_threads);
		rc = fuse_session_loop_mt(fs.se, lc);
		fuse_loop_cfg_destroy(lc);
	}
	/* rc > 0: the signal that ended the loop; 0: unmounted; < 0: an error */
	ret = rc < 0 ? 1 : 0;
	k2fs_push_destroy(fs.push); /* before the cache it reads from */
	fs.push = NULL;

out_unmount:
	fuse_session_unmount(fs.se);
out_signals:
	fuse_remove_signal_handlers(fs.se);
out_session:
	fuse_session_destroy(fs.se);
out_fs:
	fs_free(&fs);
out_opts:
	free(opts.mountpoint);
out_args:
	fuse_opt_free_args(&args);
	cli_free(&cli);
	return ret;
}
