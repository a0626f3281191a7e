/* value.c — parsers and formatters of the user.k2.* xattr values (sizes,
 * read-ahead, hints, prefetch lists). Pure functions: the unit tests drive them
 * without a mount. Values arrive as byte strings that are not NUL-terminated;
 * each parser accepts exactly its syntax and changes nothing on -EINVAL. */
#include "k2fs_value.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VALUE_MAX 64

static int value_eq(const char *v, size_t n, const char *word)
{
	return strlen(word) == n && memcmp(v, word, n) == 0;
}

/* Returns 0 or -EINVAL. */
int k2fs_value_parse_size(const char *v, size_t n, uint64_t *out)
{
	char buf[VALUE_MAX];
	/* a NUL inside would end the copy early and accept its prefix */
	if (!v || n == 0 || n >= sizeof(buf) || memchr(v, '\0', n))
		return -EINVAL;
	memcpy(buf, v, n);
	buf[n] = '\0';
	/* the grammar is k2_parse_size's (layout.h), which refuses signs,
	 * spaces, hex, inf, nan and exponents */
	uint64_t bytes;
	if (k2_parse_size(buf, &bytes))
		return -EINVAL;
	if (bytes >= K2FS_RA_INHERIT)
		return -EINVAL;
	*out = bytes;
	return 0;
}

int k2fs_value_parse_readahead(const char *v, size_t n, uint64_t *out)
{
	if (v && value_eq(v, n, "all")) {
		*out = K2FS_RA_ALL;
		return 0;
	}
	return k2fs_value_parse_size(v, n, out);
}

int k2fs_value_parse_hint(const char *v, size_t n, enum k2fs_hint *out)
{
	static const struct {
		const char *name;
		enum k2fs_hint h;
	} hints[] = {
		{"willneed", K2FS_HINT_WILLNEED},
		{"pin", K2FS_HINT_PIN},
		{"unpin", K2FS_HINT_UNPIN},
		{"dontneed", K2FS_HINT_DONTNEED},
	};
	if (!v)
		return -EINVAL;
	for (size_t i = 0; i < sizeof(hints) / sizeof(hints[0]); i++)
		if (value_eq(v, n, hints[i].name)) {
			*out = hints[i].h;
			return 0;
		}
	return -EINVAL;
}

const char *k2fs_hint_name(enum k2fs_hint h)
{
	switch (h) {
	case K2FS_HINT_WILLNEED: return "willneed";
	case K2FS_HINT_PIN: return "pin";
	case K2FS_HINT_UNPIN: return "unpin";
	case K2FS_HINT_DONTNEED: return "dontneed";
	default: return "none";
	}
}

/* Reads a decimal number of 1 … 9 digits at v[*i], advancing *i. */
static int parse_index(const char *v, size_t n, size_t *i, uint32_t *out)
{
	size_t start = *i;
	uint32_t x = 0;
	while (*i < n && v[*i] >= '0' && v[*i] <= '9') {
		if (*i - start >= 9)
			return -EINVAL;
		x = x * 10 + (uint32_t)(v[*i] - '0');
		(*i)++;
	}
	if (*i == start)
		return -EINVAL;
	*out = x;
	return 0;
}

/* Counts the comma-separated items of a list (an upper bound for allocation). */
static size_t count_items(const char *v, size_t n)
{
	size_t k = 1;
	for (size_t i = 0; i < n; i++)
		k += v[i] == ',';
	return k;
}

/* Reads one item of a list at v[*i] into *item, advancing *i; returns 0 or
 * -EINVAL. */
typedef int (*parse_item_fn)(const char *v, size_t n, size_t *i, void *item);

/* Parses a non-empty comma-separated list of items of item_size bytes each,
 * with no spaces. Returns 0 with *out a malloc'd array of *count items (owned
 * by the caller), -EINVAL (nothing changed) or -ENOMEM. */
static int parse_items(const char *v, size_t n, size_t item_size, parse_item_fn parse_item,
		       void **out, size_t *count)
{
	if (!v || n == 0)
		return -EINVAL;
	size_t cap = count_items(v, n), k = 0, i = 0;
	char *a = malloc(cap * item_size);
	if (!a)
		return -ENOMEM;
	for (;;) {
		if (parse_item(v, n, &i, a + k * item_size))
			goto bad;
		k++;
		if (i == n)
			break;
		if (v[i] != ',')
			goto bad;
		i++;
	}
	*out = a;
	*count = k;
	return 0;
bad:
	free(a);
	return -EINVAL;
}

/* An item of k2fs_value_parse_list: an index. */
static int parse_index_item(const char *v, size_t n, size_t *i, void *item)
{
	return parse_index(v, n, i, item);
}

/* An item of k2fs_value_parse_pairs: layer/expert. */
static int parse_ref_item(const char *v, size_t n, size_t *i, void *item)
{
	struct k2fs_ref *ref = item;
	if (parse_index(v, n, i, &ref->layer))
		return -EINVAL;
	if (*i == n || v[*i] != '/')
		return -EINVAL;
	(*i)++;
	return parse_index(v, n, i, &ref->expert);
}

int k2fs_value_parse_list(const char *v, size_t n, uint32_t **out, size_t *count)
{
	void *a;
	int rc = parse_items(v, n, sizeof(**out), parse_index_item, &a, count);
	if (rc == 0)
		*out = a;
	return rc;
}

int k2fs_value_parse_pairs(const char *v, size_t n, struct k2fs_ref **out, size_t *count)
{
	void *a;
	int rc = parse_items(v, n, sizeof(**out), parse_ref_item, &a, count);
	if (rc == 0)
		*out = a;
	return rc;
}

const char *k2fs_value_format_size(uint64_t v, char *buf, size_t n)
{
	static const char units[] = "KMGT";
	if (v == K2FS_RA_ALL) {
		snprintf(buf, n, "all");
		return buf;
	}
	int u = -1;
	uint64_t x = v;
	while (x != 0 && x % 1024 == 0 && u < 3) {
		x /= 1024;
		u++;
	}
	if (u < 0)
		snprintf(buf, n, "%" PRIu64, v);
	else
		snprintf(buf, n, "%" PRIu64 "%c", x, units[u]);
	return buf;
}
