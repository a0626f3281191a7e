/* bench_fs.c — `k2bench fs`: how fast experts come out of a pack, four ways, side
 * by side, for each pack (codec none and lz4 when generated):
 *
 *   (a) O_DIRECT read of the pack's expert extents (4 MiB requests; the better of
 *       1 and 4 threads): what the disk gives;
 *   (b) cold whole-expert reads through a k2fs mount: a daemon mounted afresh,
 *       the kernel page cache dropped;
 *   (c) hot reads through the mount: the same files again (kernel page cache,
 *       kept by keep_cache);
 *   (c') reads served from the daemon's RAM cache: the mount's page cache dropped,
 *       the daemon's kept;
 *   (b') cold again with the daemon's memory reused (every expert dropped with
 *       dontneed, its buffers kept by the daemon): (b) without the cost of
 *       first touching fresh memory;
 *   (d) page-cache reads of the same bytes from a plain file (one pread per
 *       expert, the same readers);
 *
 * and the ratios b/a and c/d. Each figure is the median of --runs runs; the runs
 * of all columns (packs × --config option sets) are interleaved, so a machine
 * whose load drifts affects every column alike. Readers
 * read whole experts with one pread each, pulling the next expert from a shared
 * counter. Also holds the helpers shared by k2bench's subcommands (bench.h). */
#define _GNU_SOURCE
#include "bench.h"
#include "layout.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#define FUSE_SUPER_MAGIC 0x65735546
#define MAX_PACKS 8
#define MAX_READERS 64

/* ---------------------------------------------------------------- shared helpers */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

double bench_median(double *v, size_t n)
{
	if (n == 0)
		return 0;
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int bench_drop_caches(void)
{
	sync();
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = write(fd, "3\n", 2) == 2 ? 0 : -errno;
	close(fd);
	return rc;
}

int bench_run(char *const argv[])
{
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		execvp(argv[0], argv);
		fprintf(stderr, "k2bench: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

const char *bench_bin_dir(char *buf, size_t n)
{
	ssize_t r = readlink("/proc/self/exe", buf, n - 1);
	if (r <= 0) {
		snprintf(buf, n, ".");
		return buf;
	}
	buf[r] = '\0';
	char *slash = strrchr(buf, '/');
	if (slash)
		*slash = '\0';
	return buf;
}

/* ---------------------------------------------------------------- packs */

struct fs_expert {
	char path[64];       /* experts/LLL/EEE */
	uint64_t raw;
	uint64_t plain_off;  /* where its bytes are in the plain file */
};

struct fs_pack {
	char *path;
	char codec[16];
	size_t n;
	struct fs_expert *ex;
	uint64_t total, biggest;
	uint64_t lo, hi;     /* the pack's span of expert extents, 4K-aligned */
};

static int pack_load(const char *path, struct fs_pack *fp)
{
	k2_err err = {{0}};
	k2p_pack *p;
	memset(fp, 0, sizeof(*fp));
	if (k2p_pack_open(path, &p, &err)) {
		fprintf(stderr, "k2bench: %s\n", err.msg);
		return -1;
	}
	fp->path = strdup(path);
	fp->ex = calloc(k2p_entry_count(p) + 1, sizeof(*fp->ex));
	if (!fp->path || !fp->ex) {
		k2p_pack_close(p);
		return -1;
	}
	fp->lo = UINT64_MAX;
	int codec = -1;
	for (size_t i = 0; i < k2p_entry_count(p); i++) {
		const k2p_entry *e = k2p_entry_at(p, i);
		if (e->kind != K2P_KIND_EXPERT)
			continue;
		struct fs_expert *x = &fp->ex[fp->n++];
		snprintf(x->path, sizeof(x->path), "%s", e->path);
		x->raw = e->raw_bytes;
		x->plain_off = fp->total;
		fp->total += e->raw_bytes;
		if (e->raw_bytes > fp->biggest)
			fp->biggest = e->raw_bytes;
		if (e->extent_offset < fp->lo)
			fp->lo = e->extent_offset;
		if (e->extent_offset + e->extent_bytes > fp->hi)
			fp->hi = e->extent_offset + e->extent_bytes;
		for (uint32_t b = 0; b < e->n_blocks; b++) {
			const k2p_block *bl = k2p_entry_block(p, e, b);
			int c = (int)bl->codec;
			codec = codec == -1 || codec == c ? c : -2;
		}
	}
	snprintf(fp->codec, sizeof(fp->codec), "%s",
		 codec >= 0 ? k2_codec_name((uint32_t)codec) : "mixed");
	fp->lo &= ~(uint64_t)4095;
	fp->hi = (fp->hi + 4095) & ~(uint64_t)4095;
	k2p_pack_close(p);
	if (fp->n == 0) {
		fprintf(stderr, "k2bench: %s holds no experts\n", path);
		return -1;
	}
	return 0;
}

/* Writes every expert's decoded bytes, in pack order, into `plain`. */
static int plain_write(const char *pack, const char *plain)
{
	k2_err err = {{0}};
	k2p_pack *p;
	if (k2p_pack_open(pack, &p, &err)) {
		fprintf(stderr, "k2bench: %s\n", err.msg);
		return -1;
	}
	FILE *f = fopen(plain, "wb");
	if (!f) {
		fprintf(stderr, "k2bench: %s: %s\n", plain, strerror(errno));
		k2p_pack_close(p);
		return -1;
	}
	int rc = 0;
	uint8_t *buf = NULL;
	size_t cap = 0;
	for (size_t i = 0; i < k2p_entry_count(p) && rc == 0; i++) {
		const k2p_entry *e = k2p_entry_at(p, i);
		if (e->kind != K2P_KIND_EXPERT)
			continue;
		if (cap < e->raw_bytes) {
			free(buf);
			cap = e->raw_bytes;
			buf = malloc(cap);
			if (!buf) {
				rc = -1;
				break;
			}
		}
		if (k2p_entry_read(p, e, 0, buf, e->raw_bytes, &err) != (long)e->raw_bytes) {
			fprintf(stderr, "k2bench: %s\n", err.msg);
			rc = -1;
		} else if (fwrite(buf, 1, e->raw_bytes, f) != e->raw_bytes) {
			fprintf(stderr, "k2bench: %s: %s\n", plain, strerror(errno));
			rc = -1;
		}
	}
	free(buf);
	if (fclose(f) != 0)
		rc = -1;
	k2p_pack_close(p);
	return rc;
}

/* ---------------------------------------------------------------- readers */

enum rmode { RMODE_MOUNT, RMODE_PLAIN };

/* One buffer per reader, allocated and touched once before anything is timed:
 * the first touch of fresh memory is not what is measured (on some virtual
 * machines it costs more than the reads themselves). */
static uint8_t *reader_buf[MAX_READERS];

static int reader_bufs(uint64_t biggest, int readers)
{
	static size_t have[MAX_READERS];
	size_t cap = (size_t)((biggest + 4095) & ~(uint64_t)4095);
	for (int i = 0; i < readers; i++) {
		if (reader_buf[i] && have[i] >= cap)
			continue;
		free(reader_buf[i]);
		reader_buf[i] = aligned_alloc(4096, cap);
		if (!reader_buf[i])
			return -1;
		memset(reader_buf[i], 0, cap);
		have[i] = cap;
	}
	return 0;
}

struct rjob {
	const struct fs_pack *fp;
	enum rmode mode;
	const char *mnt;
	int plain_fd;
	atomic_size_t next;
	atomic_int errors;
	atomic_int slot;
};

static void *reader_main(void *arg)
{
	struct rjob *j = arg;
	uint8_t *buf = reader_buf[atomic_fetch_add(&j->slot, 1)];
	for (;;) {
		size_t k = atomic_fetch_add(&j->next, 1);
		if (k >= j->fp->n)
			break;
		const struct fs_expert *x = &j->fp->ex[k];
		int fd = j->plain_fd;
		uint64_t base = x->plain_off;
		if (j->mode == RMODE_MOUNT) {
			char path[PATH_MAX + 128];
			snprintf(path, sizeof(path), "%s/%s", j->mnt, x->path);
			fd = open(path, O_RDONLY | O_CLOEXEC);
			base = 0;
			if (fd < 0) {
				atomic_fetch_add(&j->errors, 1);
				continue;
			}
		}
		uint64_t got = 0;
		while (got < x->raw) {
			ssize_t r = pread(fd, buf + got, x->raw - got, (off_t)(base + got));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				atomic_fetch_add(&j->errors, 1);
				break;
			}
			got += (uint64_t)r;
		}
		if (j->mode == RMODE_MOUNT)
			close(fd);
	}
	return NULL;
}

/* Reads every expert once with `readers` threads; returns GB/s, or -1. */
static double read_all(const struct fs_pack *fp, enum rmode mode, const char *mnt,
		       int plain_fd, int readers)
{
	struct rjob j = {.fp = fp, .mode = mode, .mnt = mnt, .plain_fd = plain_fd};
	pthread_t t[MAX_READERS];
	double t0 = k2_now();
	for (int i = 0; i < readers; i++)
		pthread_create(&t[i], NULL, reader_main, &j);
	for (int i = 0; i < readers; i++)
		pthread_join(t[i], NULL);
	double dt = k2_now() - t0;
	if (atomic_load(&j.errors)) {
		fprintf(stderr, "k2bench: %d reads failed\n", atomic_load(&j.errors));
		return -1;
	}
	return (double)fp->total / dt / 1e9;
}

struct djob {
	int fd;
	uint64_t lo, hi, chunk;
	int threads, id;
	int err;
};

static void *direct_main(void *arg)
{
	struct djob *d = arg;
	uint8_t *buf = aligned_alloc(4096, d->chunk);
	if (!buf) {
		d->err = 1;
		return NULL;
	}
	for (uint64_t off = d->lo + (uint64_t)d->id * d->chunk; off < d->hi;
	     off += (uint64_t)d->threads * d->chunk) {
		uint64_t n = d->hi - off < d->chunk ? d->hi - off : d->chunk;
		ssize_t r = pread(d->fd, buf, n, (off_t)off);
		if (r <= 0) {
			d->err = 1;
			break;
		}
	}
	free(buf);
	return NULL;
}

/* O_DIRECT read of [lo, hi) of the pack with `threads` threads; GB/s or -1. */
static double read_direct(const struct fs_pack *fp, int threads)
{
	int fd = open(fp->path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "k2bench: O_DIRECT open of %s: %s\n", fp->path, strerror(errno));
		return -1;
	}
	struct djob d[MAX_READERS];
	pthread_t t[MAX_READERS];
	double t0 = k2_now();
	for (int i = 0; i < threads; i++) {
		d[i] = (struct djob){.fd = fd, .lo = fp->lo, .hi = fp->hi, .chunk = 4u << 20,
				     .threads = threads, .id = i};
		pthread_create(&t[i], NULL, direct_main, &d[i]);
	}
	int err = 0;
	for (int i = 0; i < threads; i++) {
		pthread_join(t[i], NULL);
		err |= d[i].err;
	}
	double dt = k2_now() - t0;
	close(fd);
	return err ? -1 : (double)(fp->hi - fp->lo) / dt / 1e9;
}

/* ---------------------------------------------------------------- the mount */

/* The mount in use, so that an interrupted benchmark leaves none behind. */
static char cur_mnt[PATH_MAX];
static volatile pid_t cur_pid;

static void on_signal(int sig)
{
	if (cur_mnt[0])
		umount2(cur_mnt, MNT_DETACH);
	if (cur_pid > 0)
		kill(cur_pid, SIGTERM);
	signal(sig, SIG_DFL);
	raise(sig);
}

static int is_fuse(const char *mnt)
{
	struct statfs s;
	return statfs(mnt, &s) == 0 && s.f_type == FUSE_SUPER_MAGIC;
}

static pid_t mount_pack(const char *k2fs, const char *pack, const char *mnt, const char *opts)
{
	mkdir(mnt, 0755);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		execl(k2fs, k2fs, pack, mnt, "-f", "-o", opts, (char *)NULL);
		fprintf(stderr, "k2bench: cannot run %s: %s\n", k2fs, strerror(errno));
		_exit(127);
	}
	for (int i = 0; i < 200; i++) {
		if (is_fuse(mnt)) {
			snprintf(cur_mnt, sizeof(cur_mnt), "%s", mnt);
			cur_pid = pid;
			return pid;
		}
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			fprintf(stderr, "k2bench: k2fs exited before mounting %s\n", pack);
			return -1;
		}
		usleep(50000);
	}
	fprintf(stderr, "k2bench: %s did not mount\n", pack);
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	return -1;
}

static void unmount_pack(const char *mnt, pid_t pid)
{
	char *argv[] = {"fusermount3", "-u", (char *)mnt, NULL};
	if (bench_run(argv) != 0)
		kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	cur_mnt[0] = '\0';
	cur_pid = 0;
}

/* Drops the kernel's cached pages of every expert file of the mount. */
static void drop_mount_pages(const struct fs_pack *fp, const char *mnt)
{
	for (size_t i = 0; i < fp->n; i++) {
		char path[PATH_MAX + 128];
		snprintf(path, sizeof(path), "%s/%s", mnt, fp->ex[i].path);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
			close(fd);
		}
	}
}

static void drop_file_pages(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		fdatasync(fd);
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
}

/* ---------------------------------------------------------------- the benchmark */

enum { COL_A, COL_B, COL_BW, COL_C, COL_CD, COL_D, N_COLS };

#define MAX_RUNS 16
#define MAX_CONFIGS 6

struct fs_opts {
	int runs;
	int readers[8], n_readers;
	const char *k2fs;
	const char *mount_opts;
	const char *configs[MAX_CONFIGS];
	int n_configs;
	const char *dir;
	int verbose;
	int no_drop;            /* --fadvise-only: no /proc/sys/vm/drop_caches */
};

/* One column of the table: a pack mounted with one set of options. */
struct target {
	const struct fs_pack *fp;
	const char *plain;
	const char *config;     /* extra -o options, "" for none */
	double v[8][N_COLS][MAX_RUNS];
	char stats[1024];
};

/* One run of every figure for one target: mounts, measures (a), (b), (c), (c'),
 * (d) with `readers` threads, unmounts. Returns 0 or -1. */
static int measure(const struct fs_opts *o, struct target *t, int ri, int run, int can_drop)
{
	const struct fs_pack *fp = t->fp;
	char mnt[PATH_MAX], opts[1024];
	int readers = o->readers[ri];
	double *v[N_COLS];
	for (int c = 0; c < N_COLS; c++) {
		v[c] = &t->v[ri][c][run];
		*v[c] = 0;
	}
	snprintf(mnt, sizeof(mnt), "%s/mnt", o->dir);
	/* room for every expert: (c') must come from the daemon's RAM */
	snprintf(opts, sizeof(opts), "cache=%" PRIu64 "%s%s%s%s", fp->total + (64u << 20),
		 o->mount_opts ? "," : "", o->mount_opts ? o->mount_opts : "",
		 t->config[0] ? "," : "", t->config);
	/* (a) the disk */
	drop_file_pages(fp->path);
	double a1 = read_direct(fp, 1), a4 = read_direct(fp, 4);
	*v[COL_A] = a1 > a4 ? a1 : a4;
	/* (b) cold: a fresh daemon, nothing of the pack or the mount in the page cache */
	drop_file_pages(fp->path);
	if (can_drop)
		bench_drop_caches();
	pid_t pid = mount_pack(o->k2fs, fp->path, mnt, opts);
	if (pid < 0)
		return -1;
	int plain_fd = open(t->plain, O_RDONLY | O_CLOEXEC);
	if (plain_fd < 0) {
		fprintf(stderr, "k2bench: %s: %s\n", t->plain, strerror(errno));
		unmount_pack(mnt, pid);
		return -1;
	}
	*v[COL_B] = read_all(fp, RMODE_MOUNT, mnt, -1, readers);
	/* (c) hot: the same files again */
	*v[COL_C] = read_all(fp, RMODE_MOUNT, mnt, -1, readers);
	/* (c') the daemon's RAM cache: the mount's page cache dropped */
	drop_mount_pages(fp, mnt);
	*v[COL_CD] = read_all(fp, RMODE_MOUNT, mnt, -1, readers);
	/* (b') cold again, the daemon's memory reused: every expert dropped with
	 * user.k2.prefetch=dontneed (its buffers stay in the daemon's pool), the
	 * mount's page cache dropped */
	for (size_t i = 0; i < fp->n; i++) {
		char path[PATH_MAX + 128];
		snprintf(path, sizeof(path), "%s/%s", mnt, fp->ex[i].path);
		if (setxattr(path, "user.k2.prefetch", "dontneed", 8, 0) < 0) {
			fprintf(stderr, "k2bench: setxattr %s: %s\n", path, strerror(errno));
			*v[COL_BW] = -1;
		}
	}
	drop_mount_pages(fp, mnt);
	drop_file_pages(fp->path);
	if (*v[COL_BW] == 0)
		*v[COL_BW] = read_all(fp, RMODE_MOUNT, mnt, -1, readers);
	/* (d) a plain file in the page cache (warmed untimed) */
	read_all(fp, RMODE_PLAIN, NULL, plain_fd, readers);
	*v[COL_D] = read_all(fp, RMODE_PLAIN, NULL, plain_fd, readers);
	ssize_t n = getxattr(mnt, "user.k2.stats", t->stats, sizeof(t->stats) - 1);
	t->stats[n > 0 ? n : 0] = '\0';
	close(plain_fd);
	unmount_pack(mnt, pid);
	if (o->verbose)
		fprintf(stderr, "  %s%s%s, %d reader%s, run %d: a %.2f b %.2f b' %.2f c %.2f c' %.2f "
			"d %.2f GB/s\n", fp->codec, t->config[0] ? " " : "", t->config, readers,
			readers > 1 ? "s" : "", run + 1, *v[COL_A], *v[COL_B], *v[COL_BW], *v[COL_C],
			*v[COL_CD], *v[COL_D]);
	for (int c = 0; c < N_COLS; c++)
		if (*v[c] < 0)
			return -1;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
"usage: k2bench fs (--pack PACK [--pack PACK]... | --gen) [options]\n"
"\n"
"Measures, side by side for each pack (each run mounts it afresh): (a) an O_DIRECT read of the pack's expert\n"
"extents (4 MiB requests, better of 1 and 4 threads), (b) cold whole-expert reads\n"
"through a k2fs mount (a fresh daemon, kernel page cache\n"
"dropped), (b') cold again with the daemon's memory reused (dontneed), (c) hot\n"
"reads through the mount (page cache), (c') reads from the\n"
"daemon's RAM cache (the mount's page cache dropped), (d) page-cache reads of the\n"
"same bytes from a plain file; and the ratios b/a and c/d. Medians of --runs runs.\n"
"Run it as root (drop_caches).\n"
"\n"
"  --pack PACK        a pack to measure (repeatable)\n"
"  --gen              generate a checkpoint with k2gen --preset k2 and pack it twice,\n"
"                     with --codec none and --codec lz4 (reused when present in --dir)\n"
"  --layers N         k2gen layers (default 3: layer 0 dense, 1 and 2 MoE)\n"
"  --experts N        k2gen experts per layer (default 32)\n"
"  --format F         k2gen format of the experts: fp8 (default, 44 MB each), int4, bf16\n"
"  --dir DIR          work directory (default /tmp/k2bench-fs): packs, plain file, mount\n"
"  --runs N           runs per figure (default 3)\n"
"  --readers LIST     reader threads, comma-separated (default 1,4)\n"
"  --k2fs PATH        the daemon (default: k2fs beside k2bench)\n"
"  --mount-opts OPTS  more -o options for k2fs (e.g. threads=4,iodepth=32)\n"
"  --config OPTS      measure each pack also with these -o options (repeatable, up\n"
"                     to 6; \"\" for the defaults): one more column each, runs\n"
"                     interleaved so that all columns see the same machine load\n"
"  --fadvise-only     drop pages with posix_fadvise only, never drop_caches (on\n"
"                     virtual machines that hand freed memory back to the host,\n"
"                     drop_caches makes the next page allocations slow)\n"
"  --quiet            only the table\n");
}

static int gen_packs(const struct fs_opts *o, const char *bindir, const char *layers,
		     const char *experts, const char *format, char packs[][PATH_MAX], int *n)
{
	char ckpt[PATH_MAX], tool[PATH_MAX];
	snprintf(ckpt, sizeof(ckpt), "%s/ckpt", o->dir);
	static const char *const codecs[] = {"none", "lz4"};
	for (int i = 0; i < 2; i++)
		snprintf(packs[i], PATH_MAX, "%s/%s-%s-%s-%s.k2", o->dir, format, layers, experts,
			 codecs[i]);
	*n = 2;
	struct stat st;
	if (stat(packs[0], &st) == 0 && stat(packs[1], &st) == 0) {
		fprintf(stderr, "k2bench: reusing %s and %s\n", packs[0], packs[1]);
		return 0;
	}
	snprintf(tool, sizeof(tool), "%s/k2gen", bindir);
	char *gen[] = {tool, "--preset", "k2", "--layers", (char *)layers, "--experts",
		       (char *)experts, "--format", (char *)format, "--set", "vocab_size=2048",
		       "--set", "intermediate_size=2048", ckpt, NULL};
	fprintf(stderr, "k2bench: %s --preset k2 --layers %s --experts %s --format %s %s\n",
		tool, layers, experts, format, ckpt);
	if (bench_run(gen) != 0)
		return -1;
	snprintf(tool, sizeof(tool), "%s/k2pack", bindir);
	for (int i = 0; i < 2; i++) {
		char *pk[] = {tool, ckpt, packs[i], "--experts", "keep", "--codec",
			      (char *)codecs[i], NULL};
		if (bench_run(pk) != 0)
			return -1;
	}
	char *rm[] = {"rm", "-rf", ckpt, NULL};
	bench_run(rm);
	return 0;
}

int bench_fs_main(int argc, char **argv)
{
	struct fs_opts o = {.runs = 3, .readers = {1, 4}, .n_readers = 2,
			    .dir = "/tmp/k2bench-fs", .verbose = 1};
	char packs[MAX_PACKS][PATH_MAX];
	int n_packs = 0, gen = 0;
	const char *layers = "3", *experts = "32", *format = "fp8";
	char bindir[PATH_MAX - 64], k2fs[PATH_MAX];
	bench_bin_dir(bindir, sizeof(bindir));
	snprintf(k2fs, sizeof(k2fs), "%s/k2fs", bindir);
	o.k2fs = k2fs;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--gen") == 0) {
			gen = 1;
			continue;
		} else if (strcmp(a, "--quiet") == 0) {
			o.verbose = 0;
			continue;
		} else if (strcmp(a, "--fadvise-only") == 0) {
			o.no_drop = 1;
			continue;
		}
		if (!v) {
			fprintf(stderr, "k2bench fs: %s needs a value\n", a);
			return 2;
		}
		i++;
		if (strcmp(a, "--pack") == 0 && n_packs < MAX_PACKS)
			snprintf(packs[n_packs++], PATH_MAX, "%s", v);
		else if (strcmp(a, "--layers") == 0)
			layers = v;
		else if (strcmp(a, "--experts") == 0)
			experts = v;
		else if (strcmp(a, "--format") == 0)
			format = v;
		else if (strcmp(a, "--dir") == 0)
			o.dir = v;
		else if (strcmp(a, "--runs") == 0)
			o.runs = atoi(v);
		else if (strcmp(a, "--k2fs") == 0)
			o.k2fs = v;
		else if (strcmp(a, "--mount-opts") == 0)
			o.mount_opts = v;
		else if (strcmp(a, "--config") == 0 && o.n_configs < MAX_CONFIGS)
			o.configs[o.n_configs++] = v;
		else if (strcmp(a, "--readers") == 0) {
			o.n_readers = 0;
			char *s = strdup(v), *save = NULL;
			for (char *t = strtok_r(s, ",", &save); t && o.n_readers < 8;
			     t = strtok_r(NULL, ",", &save))
				o.readers[o.n_readers++] = atoi(t);
			free(s);
		} else {
			fprintf(stderr, "k2bench fs: unknown option %s\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (o.runs < 1 || o.runs > MAX_RUNS || o.n_readers == 0) {
		fprintf(stderr, "k2bench fs: --runs 1…%d and at least one reader count\n",
			MAX_RUNS);
		return 2;
	}
	int most = 1;
	for (int r = 0; r < o.n_readers; r++) {
		if (o.readers[r] < 1 || o.readers[r] > MAX_READERS) {
			fprintf(stderr, "k2bench fs: readers 1…%d\n", MAX_READERS);
			return 2;
		}
		most = o.readers[r] > most ? o.readers[r] : most;
	}
	if (o.n_configs == 0)
		o.configs[o.n_configs++] = "";
	if ((n_packs == 0) == !gen) {
		fprintf(stderr, "k2bench fs: give --pack PACK or --gen\n");
		usage(stderr);
		return 2;
	}
	if (mkdir(o.dir, 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "k2bench fs: %s: %s\n", o.dir, strerror(errno));
		return 1;
	}
	if (gen && gen_packs(&o, bindir, layers, experts, format, packs, &n_packs))
		return 1;

	static struct fs_pack fp[MAX_PACKS];
	static char plain[MAX_PACKS][PATH_MAX];
	static struct target tg[MAX_PACKS * MAX_CONFIGS];
	int n_tg = 0, rc = 0;
	for (int p = 0; p < n_packs && rc == 0; p++) {
		if (pack_load(packs[p], &fp[p]))
			return 1;
		snprintf(plain[p], sizeof(plain[p]), "%s/plain-%d.bin", o.dir, p);
		if (plain_write(packs[p], plain[p]))
			rc = 1;
		if (o.verbose)
			fprintf(stderr, "k2bench: %s: %zu experts, %.2f GB, codec %s\n", packs[p],
				fp[p].n, (double)fp[p].total / 1e9, fp[p].codec);
		if (reader_bufs(fp[p].biggest, most)) {
			fprintf(stderr, "k2bench: out of memory\n");
			rc = 1;
		}
		for (int c = 0; c < o.n_configs; c++)
			tg[n_tg++] = (struct target){.fp = &fp[p], .plain = plain[p],
						     .config = o.configs[c]};
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	int can_drop = !o.no_drop && bench_drop_caches() == 0;
	if (!can_drop && !o.no_drop)
		fprintf(stderr, "k2bench: cannot write /proc/sys/vm/drop_caches (not root?): "
			"dropping pages with posix_fadvise only\n");
	for (int r = 0; r < o.n_readers && rc == 0; r++)
		for (int run = 0; run < o.runs && rc == 0; run++)
			for (int t = 0; t < n_tg && rc == 0; t++)
				if (measure(&o, &tg[t], r, run, can_drop))
					rc = 1;
	for (int p = 0; p < n_packs; p++)
		unlink(plain[p]);
	if (rc)
		return 1;
	if (o.verbose)
		for (int t = 0; t < n_tg; t++)
			fprintf(stderr, "k2fs stats after the last run of %s %s: %s\n", tg[t].fp->path,
				tg[t].config, tg[t].stats);

	printf("k2bench fs: GB/s, medians of %d runs; whole-expert preads%s%s\n", o.runs,
	       o.mount_opts ? "; k2fs -o " : "", o.mount_opts ? o.mount_opts : "");
	static const char *const rows[N_COLS] = {
		"(a) O_DIRECT pack  ", "(b) cold, mount    ", "(b') cold, mem warm",
		"(c) hot, mount     ", "(c') daemon RAM    ", "(d) plain, pg cache"};
	for (int r = 0; r < o.n_readers; r++) {
		double med[MAX_PACKS * MAX_CONFIGS][N_COLS];
		for (int t = 0; t < n_tg; t++)
			for (int c = 0; c < N_COLS; c++)
				med[t][c] = bench_median(tg[t].v[r][c], (size_t)o.runs);
		printf("\n%2d reader%s      ", o.readers[r], o.readers[r] > 1 ? "s" : " ");
		for (int t = 0; t < n_tg; t++)
			printf(" %14s", tg[t].fp->codec);
		if (o.n_configs > 1 || o.configs[0][0]) {
			printf("\n                   ");
			for (int t = 0; t < n_tg; t++)
				printf(" %14.14s", tg[t].config[0] ? tg[t].config : "defaults");
		}
		printf("\n");
		for (int c = 0; c < N_COLS; c++) {
			printf("%s", rows[c]);
			for (int t = 0; t < n_tg; t++)
				printf(" %14.2f", med[t][c]);
			printf("\n");
		}
		printf("b/a                ");
		for (int t = 0; t < n_tg; t++)
			printf(" %14.2f", med[t][COL_B] / med[t][COL_A]);
		printf("\nc/d                ");
		for (int t = 0; t < n_tg; t++)
			printf(" %14.2f", med[t][COL_C] / med[t][COL_D]);
		printf("\n");
	}
	printf("\npacks:");
	for (int p = 0; p < n_packs; p++)
		printf(" %s (%zu experts, %.2f GB, %s)", fp[p].path, fp[p].n,
		       (double)fp[p].total / 1e9, fp[p].codec);
	printf("\n");
	for (int p = 0; p < n_packs; p++) {
		free(fp[p].path);
		free(fp[p].ex);
	}
	return 0;
}
