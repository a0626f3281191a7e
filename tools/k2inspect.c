/* k2inspect — lists, verifies and extracts the contents of a k2 pack
 * (layout/FORMAT.md). Reads through layout/'s validating reader only; exits 1 with
 * one line "k2inspect: <message>" on bad input, and on any damaged block found by
 * --verify. */
#include "layout.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage_text[] =
"NAME\n"
"    k2inspect - list, verify and extract the contents of a k2 pack\n"
"\n"
"SYNOPSIS\n"
"    k2inspect PACK [--list] [--verify] [--extract NAME OUT]\n"
"    k2inspect --help\n"
"\n"
"DESCRIPTION\n"
"    Opens PACK, a pack written by k2pack (layout/FORMAT.md), and checks its\n"
"    header, index, every entry and every block descriptor before doing\n"
"    anything else. With no option it lists the contents (as --list).\n"
"\n"
"OPTIONS\n"
"    --list\n"
"        One line per entry, in pack order: the path the k2fs mount shows it\n"
"        under, its kind (file, dense, expert), its type (dtype and shape for a\n"
"        dense tensor, format and hidden x intermediate for an expert), its\n"
"        decoded size in bytes, the bytes it occupies in the pack, the\n"
"        compression ratio (decoded / stored) and its codec (zstd, lz4, none,\n"
"        or mixed when its blocks differ). Totals follow.\n"
"\n"
"    --verify\n"
"        Reads and decodes every block of every entry: checks the XXH64\n"
"        checksum of its stored bytes, decompresses it and checks its decoded\n"
"        length. Each damaged block is reported on one line naming the block,\n"
"        its entry's path and its offset in the pack. Prints\n"
"        \"ok: N blocks verified\" when all are intact.\n"
"\n"
"    --extract NAME OUT\n"
"        Writes the decoded bytes of the entry NAME to the file OUT, or to\n"
"        standard output when OUT is \"-\". NAME is a path as the mount shows\n"
"        it: \"config.json\", \"dense/<hub tensor name>\", \"experts/001/017\"\n"
"        (layer and expert, zero-padded to 3 digits). An OUT that cannot be\n"
"        fully written is removed.\n"
"\n"
"    --help\n"
"        Prints this text and exits 0.\n"
"\n"
"EXIT STATUS\n"
"    0   success\n"
"    1   bad usage, a pack that cannot be opened or fails validation, an\n"
"        unknown NAME, a damaged block, or an I/O error; one line on standard\n"
"        error, \"k2inspect: <message>\", says what and where\n"
"\n"
"EXAMPLES\n"
"    k2inspect model.k2\n"
"    k2inspect model.k2 --verify\n"
"    k2inspect model.k2 --extract experts/003/017 expert.bin\n"
"    k2inspect model.k2 --extract config.json - | head\n";

static int fail(const char *fmt, const char *arg)
{
	fprintf(stderr, "k2inspect: ");
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	return 1;
}

static const char *kind_name(uint32_t kind)
{
	switch (kind) {
	case K2P_KIND_FILE: return "file";
	case K2P_KIND_DENSE: return "dense";
	case K2P_KIND_EXPERT: return "expert";
	default: return "?";
	}
}

static void type_string(const k2p_entry *e, char *buf, size_t n)
{
	if (e->kind == K2P_KIND_DENSE) {
		int off = snprintf(buf, n, "%s[", k2_dtype_name(e->dtype));
		for (uint32_t i = 0; i < e->ndim && off > 0 && (size_t)off < n; i++)
			off += snprintf(buf + off, n - (size_t)off, "%s%" PRIu64, i ? "," : "",
					e->shape[i]);
		if (off > 0 && (size_t)off < n)
			snprintf(buf + off, n - (size_t)off, "]");
	} else if (e->kind == K2P_KIND_EXPERT) {
		snprintf(buf, n, "%s %" PRIu64 "x%" PRIu64, k2_format_name(e->format), e->shape[0],
			 e->shape[1]);
	} else {
		snprintf(buf, n, "-");
	}
}

static const char *codec_string(const k2p_pack *p, const k2p_entry *e)
{
	if (e->n_blocks == 0)
		return "-";
	uint32_t c = k2p_entry_block(p, e, 0)->codec;
	for (uint32_t i = 1; i < e->n_blocks; i++)
		if (k2p_entry_block(p, e, i)->codec != c)
			return "mixed";
	return k2_codec_name(c);
}

static double ratio(uint64_t raw, uint64_t stored)
{
	return stored ? (double)raw / (double)stored : 1.0;
}

static void list(const k2p_pack *p)
{
	size_t n = k2p_entry_count(p), width = 4;
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(k2p_entry_at(p, i)->path);
		width = l > width ? l : width;
	}
	if (width > 72)
		width = 72;
	printf("%-*s  %-6s  %-28s  %14s  %14s  %7s  %s\n", (int)width, "PATH", "KIND", "TYPE",
	       "RAW", "STORED", "RATIO", "CODEC");
	uint64_t raw[4] = {0}, stored[4] = {0}, count[4] = {0};
	for (size_t i = 0; i < n; i++) {
		const k2p_entry *e = k2p_entry_at(p, i);
		char type[160];
		type_string(e, type, sizeof(type));
		printf("%-*s  %-6s  %-28s  %14" PRIu64 "  %14" PRIu64 "  %6.2fx  %s\n", (int)width,
		       e->path, kind_name(e->kind), type, e->raw_bytes, e->extent_bytes,
		       ratio(e->raw_bytes, e->extent_bytes), codec_string(p, e));
		uint32_t k = e->kind <= K2P_KIND_EXPERT ? e->kind : 0;
		raw[k] += e->raw_bytes;
		stored[k] += e->extent_bytes;
		count[k]++;
		raw[0] += e->raw_bytes;
		stored[0] += e->extent_bytes;
	}
	char a[32], b[32];
	static const char *const names[4] = {"all", "files", "dense", "experts"};
	for (int k = 1; k <= 3; k++)
		if (count[k])
			printf("%s: %" PRIu64 " entries, raw %s, stored %s, ratio %.2fx\n", names[k],
			       count[k], k2_format_bytes(raw[k], a, sizeof(a)),
			       k2_format_bytes(stored[k], b, sizeof(b)), ratio(raw[k], stored[k]));
	uint32_t first = 0, layers = k2p_expert_layers(p, &first);
	printf("total: %zu entries, raw %s, stored %s, ratio %.2fx; pack %" PRIu64
	       " bytes, block size %" PRIu32, n, k2_format_bytes(raw[0], a, sizeof(a)),
	       k2_format_bytes(stored[0], b, sizeof(b)), ratio(raw[0], stored[0]),
	       k2p_pack_file_bytes(p), k2p_pack_block_bytes(p));
	if (layers)
		printf("; experts in layers %" PRIu32 "-%" PRIu32, first, first + layers - 1);
	printf("\n");
}

/* ---------------------------------------------------------------- verify */

/* Workers take entries in turn; each reads its entry's blocks and decodes them. */
struct verify {
	const k2p_pack *p;
	pthread_mutex_t lock;
	size_t next;           /* next entry index; protected by lock */
	uint64_t blocks, bad;  /* protected by lock */
	int io_error;          /* protected by lock */
};

static int pread_all(int fd, void *buf, size_t n, uint64_t off)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		got += (size_t)r;
	}
	return 0;
}

static void *verify_main(void *arg)
{
	struct verify *v = arg;
	const k2p_pack *p = v->p;
	size_t cap = 0;
	uint8_t *stored = NULL, *raw = malloc(k2p_pack_block_bytes(p));
	k2_err err;
	for (;;) {
		pthread_mutex_lock(&v->lock);
		size_t i = v->next++;
		int stop = v->io_error;
		pthread_mutex_unlock(&v->lock);
		if (stop || i >= k2p_entry_count(p))
			break;
		const k2p_entry *e = k2p_entry_at(p, i);
		uint64_t bad = 0;
		for (uint32_t k = 0; k < e->n_blocks; k++) {
			const k2p_block *b = k2p_entry_block(p, e, k);
			if (!raw || cap < b->stored_bytes) {
				free(stored);
				cap = b->stored_bytes;
				stored = malloc(cap);
			}
			if (!raw || !stored) {
				pthread_mutex_lock(&v->lock);
				if (!v->io_error)
					fprintf(stderr, "k2inspect: out of memory\n");
				v->io_error = 1;
				pthread_mutex_unlock(&v->lock);
				goto out;
			}
			int rc = pread_all(k2p_pack_fd(p), stored, b->stored_bytes, b->offset);
			if (rc) {
				pthread_mutex_lock(&v->lock);
				if (!v->io_error)
					fprintf(stderr, "k2inspect: %s: cannot read block %" PRIu32
						" of %s at pack offset %" PRIu64 ": %s\n",
						k2p_pack_path(p), k, e->path, b->offset,
						strerror(-rc));
				v->io_error = 1;
				pthread_mutex_unlock(&v->lock);
				goto out;
			}
			if (k2p_block_decode(p, b, stored, raw, &err) < 0) {
				bad++;
				pthread_mutex_lock(&v->lock);
				fprintf(stderr, "k2inspect: %s\n", err.msg);
				pthread_mutex_unlock(&v->lock);
			}
		}
		pthread_mutex_lock(&v->lock);
		v->blocks += e->n_blocks;
		v->bad += bad;
		pthread_mutex_unlock(&v->lock);
	}
out:
	free(stored);
	free(raw);
	return NULL;
}

static int verify(const k2p_pack *p)
{
	struct verify v = {.p = p};
	pthread_mutex_init(&v.lock, NULL);
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int n = ncpu > 0 ? (int)(ncpu > 32 ? 32 : ncpu) : 1;
	pthread_t t[32];
	int started = 0;
	for (int i = 0; i < n; i++)
		if (pthread_create(&t[i], NULL, verify_main, &v) == 0)
			started++;
		else
			break;
	if (started == 0)
		verify_main(&v);
	for (int i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	pthread_mutex_destroy(&v.lock);
	if (v.io_error)
		return 1;
	if (v.bad) {
		fprintf(stderr, "k2inspect: %s: %" PRIu64 " of %" PRIu64 " blocks damaged\n",
			k2p_pack_path(p), v.bad, v.blocks);
		return 1;
	}
	printf("ok: %" PRIu64 " blocks verified\n", v.blocks);
	return 0;
}

/* ---------------------------------------------------------------- extract */

static int write_all(int fd, const void *buf, size_t n)
{
	size_t done = 0;
	while (done < n) {
		ssize_t r = write(fd, (const char *)buf + done, n - done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		done += (size_t)r;
	}
	return 0;
}

static int extract(const k2p_pack *p, const char *name, const char *out)
{
	const k2p_entry *e = k2p_entry_find(p, name);
	if (!e) {
		fprintf(stderr, "k2inspect: %s: no entry named %s (see --list)\n", k2p_pack_path(p),
			name);
		return 1;
	}
	int to_stdout = strcmp(out, "-") == 0;
	int fd = to_stdout ? STDOUT_FILENO : open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, "k2inspect: %s: cannot create: %s\n", out, strerror(errno));
		return 1;
	}
	size_t chunk = (size_t)k2p_pack_block_bytes(p) * 16;
	uint8_t *buf = malloc(chunk);
	int status = 0;
	k2_err err;
	if (!buf) {
		fprintf(stderr, "k2inspect: out of memory\n");
		status = 1;
	}
	for (uint64_t off = 0; !status && off < e->raw_bytes;) {
		long r = k2p_entry_read(p, e, off, buf, chunk, &err);
		if (r <= 0) {
			fprintf(stderr, "k2inspect: %s\n",
				r < 0 ? err.msg : "unexpected end of entry");
			status = 1;
			break;
		}
		int rc = write_all(fd, buf, (size_t)r);
		if (rc) {
			fprintf(stderr, "k2inspect: %s: write failed: %s\n", out, strerror(-rc));
			status = 1;
			break;
		}
		off += (uint64_t)r;
	}
	free(buf);
	if (!to_stdout) {
		if (close(fd) < 0 && !status) {
			fprintf(stderr, "k2inspect: %s: close failed: %s\n", out, strerror(errno));
			status = 1;
		}
		if (status)
			unlink(out);
	}
	return status;
}

int main(int argc, char **argv)
{
	const char *pack_path = NULL, *name = NULL, *out = NULL;
	int do_list = 0, do_verify = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			fputs(usage_text, stdout);
			return 0;
		} else if (strcmp(a, "--list") == 0) {
			do_list = 1;
		} else if (strcmp(a, "--verify") == 0) {
			do_verify = 1;
		} else if (strcmp(a, "--extract") == 0) {
			if (i + 2 >= argc)
				return fail("%s needs NAME and OUT (see --help)", a);
			if (name)
				return fail("%s given twice", a);
			name = argv[++i];
			out = argv[++i];
		} else if (a[0] == '-' && a[1] != '\0') {
			return fail("unknown option %s (see --help)", a);
		} else if (!pack_path) {
			pack_path = a;
		} else {
			return fail("unexpected argument %s (one PACK only; see --help)", a);
		}
	}
	if (!pack_path)
		return fail("%s", "no PACK given (usage: k2inspect PACK [--list] [--verify] "
			    "[--extract NAME OUT]; see --help)");
	if (!do_list && !do_verify && !name)
		do_list = 1;

	k2p_pack *p;
	k2_err err;
	if (k2p_pack_open(pack_path, &p, &err) < 0)
		return fail("%s", err.msg);
	int status = 0;
	/* With --extract to stdout, keep stdout for the entry's bytes. */
	if (name && strcmp(out, "-") == 0 && (do_list || do_verify))
		status = fail("%s", "--extract NAME - writes to stdout: give --list or --verify "
			      "in a separate call");
	if (!status && do_list)
		list(p);
	if (!status && do_verify)
		status = verify(p);
	if (!status && name)
		status = extract(p, name, out);
	if (fflush(stdout) != 0 && !status)
		status = fail("%s", "cannot write to stdout");
	k2p_pack_close(p);
	return status;
}
