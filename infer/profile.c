/* profile.c — expert profiles (contract in infer.h): the hottest experts of a
 * model as `k2trace stats --profile` writes them, read for `infer --pin` and
 * `k2trace sim --pin`. Depends on nothing of the engine, so k2trace links it
 * alone. */
#include "infer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int inf_profile_read(const char *path, uint32_t n_layers, const uint8_t *moe, uint32_t n_experts,
		     uint32_t **keys, uint32_t *n, k2_err *err)
{
	*keys = NULL;
	*n = 0;
	FILE *f = fopen(path, "r");
	if (!f) {
		int rc = -errno;
		return k2_err_set(err, rc, "%s: %s", path, strerror(-rc));
	}
	const size_t n_keys = (size_t)n_layers * n_experts;
	uint8_t *seen = calloc(n_keys ? n_keys : 1, 1);
	uint32_t *out = NULL, cap = 0, cnt = 0;
	char *line = NULL;
	size_t lcap = 0;
	unsigned long long ln = 0;
	int rc = seen ? 0 : k2_err_set(err, -ENOMEM, "out of memory");
	while (rc == 0 && getline(&line, &lcap, f) > 0) {
		ln++;
		const char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '#' || *p == '\n' || *p == 0)
			continue;
		unsigned long long l, x, c;
		int used = 0;
		if (sscanf(p, "%llu %llu %llu %n", &l, &x, &c, &used) != 3 || p[used] != 0) {
			rc = k2_err_set(err, -EINVAL, "%s:%llu: not \"layer expert count\"", path, ln);
			break;
		}
		if (l >= n_layers || !moe[l] || x >= n_experts) {
			rc = k2_err_set(err, -EINVAL, "%s:%llu: layer %llu expert %llu is not a routed "
					"expert of the model (%u layers of %u experts)", path, ln, l, x,
					n_layers, n_experts);
			break;
		}
		const uint32_t key = (uint32_t)(l * n_experts + x);
		if (seen[key]) {
			rc = k2_err_set(err, -EINVAL, "%s:%llu: layer %llu expert %llu listed twice", path,
					ln, l, x);
			break;
		}
		seen[key] = 1;
		if (cnt == cap) {
			uint32_t *k = realloc(out, sizeof(uint32_t) * (cap = cap ? cap * 2 : 64));
			if (!k) {
				rc = k2_err_set(err, -ENOMEM, "out of memory");
				break;
			}
			out = k;
		}
		out[cnt++] = key;
	}
	if (rc == 0 && ferror(f))
		rc = k2_err_set(err, -EIO, "%s: read error", path);
	free(line);
	free(seen);
	fclose(f);
	if (rc < 0) {
		free(out);
		return rc;
	}
	*keys = out;
	*n = cnt;
	return 0;
}
