/* prog_k2fs_client.c — a client of a k2fs mount for the integration tests; it
 * checks bytes against the pack itself (k2p_entry_read) and errno values
 * exactly (getxattr/setxattr directly, not through getfattr's messages).
 *
 *   verify PACK MNT [--expect-eio PATH]...
 *       reads every file of the pack through the mount (sizes from stat, bytes
 *       against k2p_entry_read); a PATH given must fail with EIO instead.
 *   stress PACK MNT [--seconds S] [--threads N]
 *       N threads read random experts (whole files, alternately O_DIRECT and
 *       buffered + FADV_DONTNEED) and check every byte, while one thread sends
 *       prefetch hints (file, layer and root) and changes cache_limit between a
 *       quarter and a fifth of the experts' bytes, and one polls cache_used:
 *       fails when a byte is wrong, any call fails, or cache_used exceeds the
 *       limit by more than one expert.
 *   getx PATH NAME [SIZE]   prints the value, the length (SIZE 0) or "ERR ENAME"
 *   setx PATH NAME VALUE    prints "OK" or "ERR ENAME"
 *   listx PATH              prints the names, one per line
 *   wait-state PATH STATE [SECONDS]  polls user.k2.state until it equals STATE
 *   where PACK NAME BLOCK   prints "OFFSET STORED RAW" of block BLOCK of entry NAME
 *
 * Exit status 0 when every check passed, 1 otherwise. */
#define _GNU_SOURCE
#include "layout.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static const char *errname(int e)
{
	if (e == ENOTSUP) /* = EOPNOTSUPP on Linux; setxattr(2) documents ENOTSUP */
		return "ENOTSUP";
	const char *n = strerrorname_np(e);
	return n ? n : "E?";
}

/* ---------------------------------------------------------------- xattr probes */

static int cmd_getx(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	size_t size = argc > 2 ? strtoul(argv[2], NULL, 10) : 65536;
	char *buf = malloc(size + 1);
	if (!buf)
		return 1;
	ssize_t r = getxattr(argv[0], argv[1], size ? buf : NULL, size);
	if (r < 0) {
		printf("ERR %s\n", errname(errno));
	} else if (size == 0) {
		printf("%zd\n", r);
	} else {
		buf[r] = '\0';
		printf("%s\n", buf);
	}
	free(buf);
	return 0;
}

static int cmd_setx(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	if (setxattr(argv[0], argv[1], argv[2], strlen(argv[2]), 0) < 0)
		printf("ERR %s\n", errname(errno));
	else
		printf("OK\n");
	return 0;
}

static int cmd_listx(int argc, char **argv)
{
	if (argc < 1)
		return 2;
	char buf[4096];
	ssize_t r = listxattr(argv[0], buf, sizeof(buf));
	if (r < 0) {
		printf("ERR %s\n", errname(errno));
		return 0;
	}
	for (ssize_t i = 0; i < r; i += (ssize_t)strlen(buf + i) + 1)
		printf("%s\n", buf + i);
	return 0;
}

static int cmd_wait_state(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	double limit = argc > 2 ? atof(argv[2]) : 10, t0 = k2_now();
	char buf[64];
	for (;;) {
		ssize_t r = getxattr(argv[0], "user.k2.state", buf, sizeof(buf) - 1);
		if (r >= 0) {
			buf[r] = '\0';
			if (strcmp(buf, argv[1]) == 0)
				return 0;
		}
		if (k2_now() - t0 > limit) {
			fprintf(stderr, "wait-state: %s stayed '%s', expected '%s'\n", argv[0],
				r >= 0 ? buf : errname(errno), argv[1]);
			return 1;
		}
		usleep(2000);
	}
}

static int cmd_where(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	k2_err err = {{0}};
	k2p_pack *pack;
	if (k2p_pack_open(argv[0], &pack, &err)) {
		fprintf(stderr, "where: %s\n", err.msg);
		return 1;
	}
	const k2p_entry *e = k2p_entry_find(pack, argv[1]);
	const k2p_block *b = e ? k2p_entry_block(pack, e, (uint32_t)atoi(argv[2])) : NULL;
	if (!b) {
		fprintf(stderr, "where: %s has no block %s\n", argv[1], argv[2]);
		k2p_pack_close(pack);
		return 1;
	}
	printf("%" PRIu64 " %" PRIu32 " %" PRIu32 "\n", b->offset, b->stored_bytes, b->raw_bytes);
	k2p_pack_close(pack);
	return 0;
}

/* ---------------------------------------------------------------- reading files */

/* Reads a whole file: returns bytes read, or -errno. */
static long read_whole(const char *path, uint8_t *buf, size_t cap, int direct)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
	if (fd < 0)
		return -errno;
	size_t got = 0;
	long rc = 0;
	for (;;) {
		ssize_t r = pread(fd, buf + got, cap - got, (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = -errno;
			break;
		}
		if (r == 0)
			break;
		got += (size_t)r;
		if (got == cap)
			break;
	}
	if (!direct)
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
	return rc ? rc : (long)got;
}

static uint8_t *ref_of(const k2p_pack *pack, const k2p_entry *e, k2_err *err)
{
	uint8_t *ref = malloc(e->raw_bytes ? e->raw_bytes : 1);
	if (!ref)
		return NULL;
	long r = k2p_entry_read(pack, e, 0, ref, e->raw_bytes, err);
	if (r != (long)e->raw_bytes) {
		free(ref);
		return NULL;
	}
	return ref;
}

static int cmd_verify(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	const char *mnt = argv[1];
	k2_err err = {{0}};
	k2p_pack *pack;
	if (k2p_pack_open(argv[0], &pack, &err)) {
		fprintf(stderr, "verify: %s\n", err.msg);
		return 1;
	}
	int fails = 0;
	size_t n_ok = 0, n_eio = 0;
	uint64_t bytes = 0;
	for (size_t i = 0; i < k2p_entry_count(pack); i++) {
		const k2p_entry *e = k2p_entry_at(pack, i);
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", mnt, e->path);
		int expect_eio = 0;
		for (int a = 2; a + 1 < argc; a += 2)
			if (strcmp(argv[a], "--expect-eio") == 0 && strcmp(argv[a + 1], e->path) == 0)
				expect_eio = 1;
		struct stat st;
		if (stat(path, &st) < 0 || (uint64_t)st.st_size != e->raw_bytes) {
			fprintf(stderr, "verify: %s: size %lld, expected %" PRIu64 "\n", path,
				(long long)st.st_size, e->raw_bytes);
			fails++;
			continue;
		}
		size_t cap = (size_t)((e->raw_bytes + 4096) & ~(uint64_t)4095);
		uint8_t *buf = aligned_alloc(4096, cap);
		if (!buf)
			return 1;
		long r = read_whole(path, buf, cap, 0);
		if (expect_eio) {
			if (r != -EIO) {
				fprintf(stderr, "verify: %s: expected EIO, got %s\n", path,
					r < 0 ? errname((int)-r) : "success");
				fails++;
			} else {
				n_eio++;
			}
			free(buf);
			continue;
		}
		uint8_t *ref = ref_of(pack, e, &err);
		if (!ref) {
			fprintf(stderr, "verify: reference of %s: %s\n", e->path, err.msg);
			free(buf);
			fails++;
			continue;
		}
		if (r != (long)e->raw_bytes || memcmp(buf, ref, e->raw_bytes) != 0) {
			fprintf(stderr, "verify: %s: %s\n", path,
				r < 0 ? errname((int)-r) : "bytes differ from the pack");
			fails++;
		} else {
			n_ok++;
			bytes += e->raw_bytes;
		}
		free(ref);
		free(buf);
	}
	printf("verify: %zu files identical (%" PRIu64 " bytes), %zu EIO as expected, %d "
	       "failures\n", n_ok, bytes, n_eio, fails);
	k2p_pack_close(pack);
	return fails ? 1 : 0;
}

/* ---------------------------------------------------------------- stress */

struct stress {
	k2p_pack *pack;
	const char *mnt;
	size_t *experts, n_experts;
	uint8_t **refs;
	uint64_t total, biggest;
	double deadline;
	atomic_uint_fast64_t allowed;   /* the limit in force */
	atomic_uint_fast64_t gen;       /* odd while the limit changes */
	atomic_int failed;
	atomic_uint_fast64_t reads, bytes, hints, max_over;
	atomic_int stop;
};

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void fail(struct stress *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(struct stress *st, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "stress: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	atomic_fetch_add(&st->failed, 1);
}

static void *reader(void *arg)
{
	struct stress *st = arg;
	uint64_t seed = (uint64_t)(uintptr_t)&seed ^ 0x9e3779b97f4a7c15ull;
	size_t cap = (size_t)((st->biggest + 4096) & ~(uint64_t)4095);
	uint8_t *buf = aligned_alloc(4096, cap);
	if (!buf)
		return NULL;
	while (k2_now() < st->deadline && !atomic_load(&st->stop)) {
		size_t k = (size_t)(rnd(&seed) % st->n_experts);
		const k2p_entry *e = k2p_entry_at(st->pack, st->experts[k]);
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", st->mnt, e->path);
		int direct = (int)(rnd(&seed) & 1);
		long r = read_whole(path, buf, cap, direct);
		if (r != (long)e->raw_bytes) {
			fail(st, "%s: read %s", path, r < 0 ? errname((int)-r) : "short");
			continue;
		}
		if (memcmp(buf, st->refs[k], e->raw_bytes) != 0)
			fail(st, "%s: bytes differ from the pack (%s read)", path,
			     direct ? "O_DIRECT" : "buffered");
		atomic_fetch_add(&st->reads, 1);
		atomic_fetch_add(&st->bytes, e->raw_bytes);
	}
	free(buf);
	return NULL;
}

static uint64_t get_u64(struct stress *st, const char *name)
{
	char buf[64];
	ssize_t r = getxattr(st->mnt, name, buf, sizeof(buf) - 1);
	if (r < 0) {
		fail(st, "getxattr %s: %s", name, errname(errno));
		return 0;
	}
	buf[r] = '\0';
	return strtoull(buf, NULL, 10);
}

/* Compares cache_used with the limit in force, skipping a sample taken while
 * the limit changed (the hinter brackets each change with gen++). */
static void check_used(struct stress *st)
{
	uint64_t g1 = atomic_load(&st->gen);
	uint64_t allowed = atomic_load(&st->allowed);
	uint64_t used = get_u64(st, "user.k2.cache_used");
	if ((g1 & 1) || atomic_load(&st->gen) != g1)
		return;
	if (used > allowed) {
		uint64_t over = used - allowed;
		if (over > atomic_load(&st->max_over))
			atomic_store(&st->max_over, over);
		if (over > st->biggest)
			fail(st, "cache_used %" PRIu64 " exceeds the limit %" PRIu64
			     " by more than one expert (%" PRIu64 ")", used, allowed, st->biggest);
	}
}

static void set_x(struct stress *st, const char *path, const char *name, const char *v)
{
	if (setxattr(path, name, v, strlen(v), 0) < 0)
		fail(st, "setxattr %s %s=%s: %s", path, name, v, errname(errno));
	atomic_fetch_add(&st->hints, 1);
}

static void *hinter(void *arg)
{
	struct stress *st = arg;
	uint64_t seed = 0x1234567;
	uint64_t limits[2] = {st->total / 4, st->total / 5};
	int li = 0;
	size_t pinned[2] = {0, 0};
	int n_pinned = 0;
	while (k2_now() < st->deadline && !atomic_load(&st->stop)) {
		const k2p_entry *e =
			k2p_entry_at(st->pack, st->experts[rnd(&seed) % st->n_experts]);
		char path[4096], val[256];
		int action = (int)(rnd(&seed) % 10);
		if (action < 3) {
			static const char *const hints[] = {"willneed", "dontneed", "unpin"};
			snprintf(path, sizeof(path), "%s/%s", st->mnt, e->path);
			set_x(st, path, "user.k2.prefetch", hints[rnd(&seed) % 3]);
		} else if (action == 3) {
			/* pin one, unpin the oldest: at most two pinned */
			if (n_pinned == 2) {
				const k2p_entry *o = k2p_entry_at(st->pack, pinned[0]);
				snprintf(path, sizeof(path), "%s/%s", st->mnt, o->path);
				set_x(st, path, "user.k2.prefetch", "unpin");
				pinned[0] = pinned[1];
				n_pinned = 1;
			}
			snprintf(path, sizeof(path), "%s/%s", st->mnt, e->path);
			set_x(st, path, "user.k2.prefetch", "pin");
			pinned[n_pinned++] = (size_t)(e - k2p_entry_at(st->pack, 0));
		} else if (action < 6) {
			/* a layer list of three experts of e's layer */
			snprintf(path, sizeof(path), "%s/experts/%03" PRIu32, st->mnt, e->layer);
			size_t at = 0;
			for (int i = 0; i < 3; i++) {
				const k2p_entry *x =
					k2p_entry_at(st->pack, st->experts[rnd(&seed) % st->n_experts]);
				if (x->layer != e->layer)
					x = e;
				at += (size_t)snprintf(val + at, sizeof(val) - at, "%s%" PRIu32,
						       i ? "," : "", x->expert);
			}
			set_x(st, path, "user.k2.prefetch", val);
		} else if (action < 8) {
			size_t at = 0;
			for (int i = 0; i < 4; i++) {
				const k2p_entry *x =
					k2p_entry_at(st->pack, st->experts[rnd(&seed) % st->n_experts]);
				at += (size_t)snprintf(val + at, sizeof(val) - at,
						       "%s%" PRIu32 "/%" PRIu32, i ? "," : "",
						       x->layer, x->expert);
			}
			set_x(st, st->mnt, "user.k2.prefetch", val);
		} else {
			uint64_t next = limits[li ^ 1];
			li ^= 1;
			atomic_fetch_add(&st->gen, 1);
			snprintf(val, sizeof(val), "%" PRIu64, next);
			set_x(st, st->mnt, "user.k2.cache_limit", val);
			atomic_store(&st->allowed, next);
			atomic_fetch_add(&st->gen, 1);
		}
		check_used(st);
		usleep(500);
	}
	return NULL;
}

static void *poller(void *arg)
{
	struct stress *st = arg;
	while (k2_now() < st->deadline && !atomic_load(&st->stop)) {
		check_used(st);
		usleep(200);
	}
	return NULL;
}

static int cmd_stress(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	double seconds = 20;
	int threads = 8;
	for (int a = 2; a + 1 < argc; a += 2) {
		if (strcmp(argv[a], "--seconds") == 0)
			seconds = atof(argv[a + 1]);
		else if (strcmp(argv[a], "--threads") == 0)
			threads = atoi(argv[a + 1]);
	}
	struct stress st;
	memset(&st, 0, sizeof(st));
	st.mnt = argv[1];
	k2_err err = {{0}};
	if (k2p_pack_open(argv[0], &st.pack, &err)) {
		fprintf(stderr, "stress: %s\n", err.msg);
		return 1;
	}
	size_t n = k2p_entry_count(st.pack);
	st.experts = malloc(n * sizeof(size_t));
	st.refs = calloc(n, sizeof(uint8_t *));
	if (!st.experts || !st.refs)
		return 1;
	for (size_t i = 0; i < n; i++) {
		const k2p_entry *e = k2p_entry_at(st.pack, i);
		if (e->kind != K2P_KIND_EXPERT)
			continue;
		st.refs[st.n_experts] = ref_of(st.pack, e, &err);
		if (!st.refs[st.n_experts]) {
			fprintf(stderr, "stress: reference of %s: %s\n", e->path, err.msg);
			return 1;
		}
		st.experts[st.n_experts++] = i;
		st.total += e->raw_bytes;
		if (e->raw_bytes > st.biggest)
			st.biggest = e->raw_bytes;
	}
	if (st.n_experts == 0) {
		fprintf(stderr, "stress: the pack has no experts\n");
		return 1;
	}
	char val[64];
	snprintf(val, sizeof(val), "%" PRIu64, st.total / 4);
	set_x(&st, st.mnt, "user.k2.cache_limit", val);
	atomic_store(&st.allowed, st.total / 4);
	st.deadline = k2_now() + seconds;
	pthread_t tr[64], th, tp;
	if (threads < 1 || threads > 64)
		threads = 8;
	for (int i = 0; i < threads; i++)
		pthread_create(&tr[i], NULL, reader, &st);
	pthread_create(&th, NULL, hinter, &st);
	pthread_create(&tp, NULL, poller, &st);
	for (int i = 0; i < threads; i++)
		pthread_join(tr[i], NULL);
	pthread_join(th, NULL);
	pthread_join(tp, NULL);

	char stats[1024];
	ssize_t r = getxattr(st.mnt, "user.k2.stats", stats, sizeof(stats) - 1);
	json_t *js = NULL;
	if (r < 0) {
		fail(&st, "getxattr user.k2.stats: %s", errname(errno));
	} else {
		stats[r] = '\0';
		json_error_t je;
		js = json_loads(stats, 0, &je);
		if (!js)
			fail(&st, "user.k2.stats is not JSON: %s", je.text);
		else if (json_integer_value(json_object_get(js, "errors")) != 0)
			fail(&st, "the daemon counted errors: %s", stats);
		else if (json_integer_value(json_object_get(js, "loads")) == 0 ||
			 json_integer_value(json_object_get(js, "evictions")) == 0)
			fail(&st, "expected loads and evictions under a quarter budget: %s", stats);
	}
	printf("stress: %d readers, %.0f s: %" PRIuFAST64 " whole-expert reads (%.1f MB), %"
	       PRIuFAST64 " hints/limit changes, %zu experts of %" PRIu64
	       " bytes, budget 1/4..1/5 of %" PRIu64 ", max over limit %" PRIuFAST64
	       " bytes, %d failures\n  stats %s\n",
	       threads, seconds, atomic_load(&st.reads), (double)atomic_load(&st.bytes) / 1e6,
	       atomic_load(&st.hints), st.n_experts, st.biggest, st.total,
	       atomic_load(&st.max_over), atomic_load(&st.failed), r > 0 ? stats : "-");
	json_decref(js);
	for (size_t i = 0; i < st.n_experts; i++)
		free(st.refs[i]);
	free(st.refs);
	free(st.experts);
	k2p_pack_close(st.pack);
	if (atomic_load(&st.reads) == 0)
		return 1;
	return atomic_load(&st.failed) ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: prog_k2fs_client verify|stress|getx|setx|listx|wait-state|where "
			"ARGS (see the source)\n");
		return 2;
	}
	const char *cmd = argv[1];
	argc -= 2;
	argv += 2;
	if (strcmp(cmd, "verify") == 0)
		return cmd_verify(argc, argv);
	if (strcmp(cmd, "stress") == 0)
		return cmd_stress(argc, argv);
	if (strcmp(cmd, "getx") == 0)
		return cmd_getx(argc, argv);
	if (strcmp(cmd, "setx") == 0)
		return cmd_setx(argc, argv);
	if (strcmp(cmd, "listx") == 0)
		return cmd_listx(argc, argv);
	if (strcmp(cmd, "wait-state") == 0)
		return cmd_wait_state(argc, argv);
	if (strcmp(cmd, "where") == 0)
		return cmd_where(argc, argv);
	fprintf(stderr, "prog_k2fs_client: unknown command %s\n", cmd);
	return 2;
}
