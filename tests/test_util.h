/* test_util.h — helpers shared by the Check suites tests/test_*.c: where the
 * fixtures are, a temporary directory per test case, whole-file reads and
 * writes, opening checkpoints and packs and reading their tensors, adding
 * tests to a test case and running a suite.
 *
 * Every helper asserts with Check (a failure ends the test), so call them
 * from tests and fixtures only. Header-only, `static inline`: the Makefile
 * builds each tests/test_<x>.c on its own into build/tests/test_<x>. */
#ifndef K2_TEST_UTIL_H
#define K2_TEST_UTIL_H

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layout.h"

/* ck_assert records a mark point (a pipe write under CK_FORK) even when it
 * passes; loops use this instead, which costs nothing on success. */
#define EXPECT(cond, ...) do { if (!(cond)) ck_abort_msg(__VA_ARGS__); } while (0)

/* ---------------------------------------------------------------- fixtures */

/* The fixture checkpoints' folder: $K2_FIXTURES, else tests/fixtures (relative
 * to the repository root, where make test runs the suites). */
static inline const char *tu_fixtures(void)
{
	const char *f = getenv("K2_FIXTURES");
	return f && *f ? f : "tests/fixtures";
}

/* Writes the model folder of fixture `name` (k2-tiny-bf16 …) into buf[n]. */
static inline void tu_fixture_model(const char *name, char *buf, size_t n)
{
	snprintf(buf, n, "%s/%s/model", tu_fixtures(), name);
}

/* ---------------------------------------------------------------- temp dir */

/* The temporary directory: made by tu_tmpdir_setup, removed with all it holds
 * by tu_tmpdir_teardown. As an unchecked fixture the pair runs in the parent
 * once per test case, so the directory goes even when a forked test fails; as
 * a checked fixture each test gets a fresh one. */
static char tu_tmpdir[256];

static inline void tu_tmpdir_setup(void)
{
	snprintf(tu_tmpdir, sizeof(tu_tmpdir), "/tmp/k2-test-XXXXXX");
	ck_assert_msg(mkdtemp(tu_tmpdir) != NULL, "mkdtemp: %s", strerror(errno));
}

/* Removes dir and everything below it; what cannot be removed stays. */
static inline void tu_rm_tree(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char p[512];
		if ((size_t)snprintf(p, sizeof(p), "%s/%s", dir, de->d_name) >= sizeof(p))
			continue;
		struct stat sb;
		if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
			tu_rm_tree(p);
		else
			unlink(p);
	}
	closedir(d);
	rmdir(dir);
}

static inline void tu_tmpdir_teardown(void)
{
	tu_rm_tree(tu_tmpdir);
}

/* tu_tmpdir/name, in one of four static buffers used in turn: a result
 * stays valid until the fourth call after it. */
static inline const char *tu_tmp_path(const char *name)
{
	static char buf[4][512];
	static int k;
	k = (k + 1) % 4;
	snprintf(buf[k], sizeof(buf[k]), "%s/%s", tu_tmpdir, name);
	return buf[k];
}

/* ---------------------------------------------------------------- files */

/* Reads the whole of path into a malloc'd, NUL-terminated buffer (the
 * caller frees it) and its length into *n. */
static inline void *tu_read_file(const char *path, size_t *n)
{
	char *d = NULL;
	k2_err err = {{0}};
	EXPECT(k2_read_file(path, &d, n, &err) == 0, "%s", err.msg);
	return d;
}

/* Writes the n bytes at d to path, replacing what was there. */
static inline void tu_write_file(const char *path, const void *d, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	EXPECT(fd >= 0, "create %s: %s", path, strerror(errno));
	EXPECT(write(fd, d, n) == (ssize_t)n, "write %s: %s", path, strerror(errno));
	EXPECT(close(fd) == 0, "close %s: %s", path, strerror(errno));
}

/* Asserts that files pa and pb hold the same bytes; what says in a failure
 * how they were made. */
static inline void tu_assert_same_file(const char *pa, const char *pb, const char *what)
{
	size_t na, nb;
	void *a = tu_read_file(pa, &na), *b = tu_read_file(pb, &nb);
	ck_assert_uint_eq(na, nb);
	ck_assert_msg(memcmp(a, b, na) == 0, "%s", what);
	free(a);
	free(b);
}

/* ---------------------------------------------------------------- checkpoints and packs */

/* Opens a checkpoint (a folder, a .safetensors file or an index). */
static inline k2st_checkpoint *tu_checkpoint_open(const char *path)
{
	k2st_checkpoint *ck = NULL;
	k2_err err = {{0}};
	EXPECT(k2st_open(path, &ck, &err) == 0, "open %s: %s", path, err.msg);
	return ck;
}

/* Opens the model folder of fixture `name`. */
static inline k2st_checkpoint *tu_fixture_open(const char *name)
{
	char path[1024];
	tu_fixture_model(name, path, sizeof(path));
	return tu_checkpoint_open(path);
}

/* The tensor named name, which must exist. */
static inline const k2st_tensor *tu_tensor_find(const k2st_checkpoint *ck, const char *name)
{
	const k2st_tensor *t = k2st_find(ck, name);
	EXPECT(t != NULL, "tensor %s missing", name);
	return t;
}

/* Reads tensor t into a new malloc'd buffer (the caller frees it). */
static inline void *tu_tensor_read(const k2st_checkpoint *ck, const k2st_tensor *t)
{
	void *buf = malloc(t->bytes ? t->bytes : 1);
	ck_assert_ptr_nonnull(buf);
	k2_err err = {{0}};
	EXPECT(k2st_read(ck, t, buf, &err) == 0, "read %s: %s", t->name, err.msg);
	return buf;
}

/* tu_tensor_read of the tensor named name; *tp (unless tp is NULL) gets it. */
static inline void *tu_tensor_read_named(const k2st_checkpoint *ck, const char *name,
					 const k2st_tensor **tp)
{
	const k2st_tensor *t = tu_tensor_find(ck, name);
	if (tp)
		*tp = t;
	return tu_tensor_read(ck, t);
}

/* Tensor t as a new malloc'd float32 array (the caller frees it) of *n
 * elements. */
static inline float *tu_tensor_f32(const k2st_checkpoint *ck, const k2st_tensor *t, size_t *n)
{
	size_t elems = t->bytes / k2_dtype_size(t->dtype);
	void *raw = tu_tensor_read(ck, t);
	float *f = malloc(elems * sizeof(float) + 1);
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(k2q_to_f32(t->dtype, raw, elems, f), 0);
	free(raw);
	*n = elems;
	return f;
}

/* Opens a pack. */
static inline k2p_pack *tu_pack_open(const char *path)
{
	k2p_pack *p = NULL;
	k2_err err = {{0}};
	EXPECT(k2p_pack_open(path, &p, &err) == 0, "open %s: %s", path, err.msg);
	return p;
}

/* ---------------------------------------------------------------- suites */

/* Adds a test case named name to s and returns it; each of its tests may run
 * timeout_s seconds (0: Check's default, 4 s or $CK_DEFAULT_TIMEOUT). */
static inline TCase *tu_tcase(Suite *s, const char *name, double timeout_s)
{
	TCase *tc = tcase_create(name);
	if (timeout_s > 0)
		tcase_set_timeout(tc, timeout_s);
	suite_add_tcase(s, tc);
	return tc;
}

/* Adds the tests given after tc to it, in order:
 * TU_ADD_TESTS(tc, test_a, test_b, …). */
#define TU_ADD_TESTS(tc, ...)                                                              \
	tu_add_tests(tc, (const TTest *const[]){__VA_ARGS__},                              \
		     sizeof((const TTest *const[]){__VA_ARGS__}) / sizeof(const TTest *))

static inline void tu_add_tests(TCase *tc, const TTest *const *tests, size_t n)
{
	for (size_t i = 0; i < n; i++)
		tcase_add_test(tc, tests[i]);
}

/* Runs every test of s and frees it; returns main's exit status:
 * EXIT_FAILURE when a test failed, else EXIT_SUCCESS. */
static inline int tu_run_suite(Suite *s)
{
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
