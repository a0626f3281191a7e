/* xattr.c — the user.k2.* extended attributes of docs/xattrs.md's table: which
 * names each kind of node has, their values, and what setting them does. Errors
 * as getxattr(2)/setxattr(2) say: a name not on this node → ENODATA on get,
 * ENOTSUP on set; a read-only name → EPERM on set; a malformed value → EINVAL
 * with nothing changed (a list is validated whole before any hint is applied). */
#include "k2fs_fs.h"
#include "k2fs_xattr.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct xa_name {
	const char *name;
	int rw;
};

static const struct xa_name expert_names[] = {
	{K2FS_XATTR_FORMAT, 0},   {K2FS_XATTR_CODEC, 0},     {K2FS_XATTR_STORED_BYTES, 0},
	{K2FS_XATTR_STATE, 0},    {K2FS_XATTR_READAHEAD, 1}, {K2FS_XATTR_PREFETCH, 1},
	{K2FS_XATTR_HITS, 0},     {K2FS_XATTR_LOADS, 0},     {NULL, 0},
};
static const struct xa_name layer_names[] = {
	{K2FS_XATTR_PREFETCH, 1}, {K2FS_XATTR_READAHEAD, 1}, {NULL, 0},
};
static const struct xa_name root_names[] = {
	{K2FS_XATTR_PREFETCH, 1},   {K2FS_XATTR_CACHE_LIMIT, 1}, {K2FS_XATTR_CACHE_USED, 0},
	{K2FS_XATTR_STATS, 0},      {NULL, 0},
};
static const struct xa_name dense_names[] = {
	{K2FS_XATTR_DTYPE, 0}, {K2FS_XATTR_SHAPE, 0}, {NULL, 0},
};
static const struct xa_name no_names[] = {{NULL, 0}};

static const struct xa_name *names_of(const struct k2fs_node *n)
{
	switch (n->kind) {
	case K2FS_NODE_EXPERT: return expert_names;
	case K2FS_NODE_LAYER_DIR: return layer_names;
	case K2FS_NODE_ROOT: return root_names;
	case K2FS_NODE_DENSE: return dense_names;
	default: return no_names;
	}
}

/* The table row of `name` on this node, or NULL. */
static const struct xa_name *find_name(const struct k2fs_node *n, const char *name)
{
	for (const struct xa_name *x = names_of(n); x->name; x++)
		if (strcmp(x->name, name) == 0)
			return x;
	return NULL;
}

long k2fs_xattr_list(struct k2fs_fs *fs, const struct k2fs_node *n, char *buf, size_t cap)
{
	(void)fs;
	size_t len = 0;
	for (const struct xa_name *x = names_of(n); x->name; x++) {
		size_t k = strlen(x->name) + 1;
		if (cap && len + k > cap)
			return -ERANGE;
		if (cap)
			memcpy(buf + len, x->name, k);
		len += k;
	}
	return (long)len;
}

/* ---------------------------------------------------------------- get */

static int value_printf(char **val, size_t *len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int value_printf(char **val, size_t *len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vasprintf(val, fmt, ap);
	va_end(ap);
	if (r < 0) {
		*val = NULL;
		return -ENOMEM;
	}
	*len = (size_t)r;
	return 0;
}

static int value_str(char **val, size_t *len, const char *s)
{
	return value_printf(val, len, "%s", s);
}

static const char *expert_codec(const struct k2fs_fs *fs, const k2p_entry *e)
{
	const char *name = "none";
	for (uint32_t i = 0; i < e->n_blocks; i++) {
		const k2p_block *b = k2p_entry_block(fs->pack, e, i);
		const char *c = b ? k2_codec_name(b->codec) : NULL;
		if (!c)
			return "mixed";
		if (i == 0)
			name = c;
		else if (strcmp(name, c) != 0)
			return "mixed";
	}
	return name;
}

static int get_expert(struct k2fs_fs *fs, const struct k2fs_node *n, const char *name,
		      char **val, size_t *len)
{
	const k2p_entry *e = n->e;
	char buf[32];
	if (strcmp(name, K2FS_XATTR_FORMAT) == 0) {
		const char *f = k2_format_name(e->format);
		return value_str(val, len, f ? f : "unknown");
	}
	if (strcmp(name, K2FS_XATTR_CODEC) == 0)
		return value_str(val, len, expert_codec(fs, e));
	if (strcmp(name, K2FS_XATTR_STORED_BYTES) == 0)
		return value_printf(val, len, "%" PRIu64, e->extent_bytes);
	struct k2fs_slot_info info;
	k2fs_cache_info(fs->cache, n->entry, &info);
	if (strcmp(name, K2FS_XATTR_STATE) == 0)
		return value_str(val, len, k2fs_state_name(info.state));
	if (strcmp(name, K2FS_XATTR_READAHEAD) == 0)
		return value_str(val, len, k2fs_value_format_size(info.effective_ra, buf,
								  sizeof(buf)));
	if (strcmp(name, K2FS_XATTR_PREFETCH) == 0)
		return value_str(val, len, k2fs_hint_name(info.hint));
	if (strcmp(name, K2FS_XATTR_HITS) == 0)
		return value_printf(val, len, "%" PRIu64, info.hits);
	if (strcmp(name, K2FS_XATTR_LOADS) == 0)
		return value_printf(val, len, "%" PRIu64, info.loads);
	return -ENODATA;
}

static int get_last_list(struct k2fs_fs *fs, char *const *slot, char **val, size_t *len)
{
	pthread_mutex_lock(&fs->hint_lock);
	int rc = value_str(val, len, *slot ? *slot : "none");
	pthread_mutex_unlock(&fs->hint_lock);
	return rc;
}

static int get_stats(struct k2fs_fs *fs, char **val, size_t *len)
{
	struct k2fs_stats s;
	k2fs_cache_stats(fs->cache, &s);
	return value_printf(
		val, len,
		"{\"hits\":%" PRIu64 ",\"misses\":%" PRIu64 ",\"loads\":%" PRIu64
		",\"evictions\":%" PRIu64 ",\"bytes_read\":%" PRIu64
		",\"bytes_decompressed\":%" PRIu64 ",\"prefetch_requests\":%" PRIu64
		",\"prefetch_used\":%" PRIu64 ",\"prefetch_dropped\":%" PRIu64
		",\"errors\":%" PRIu64 ",\"cache_used\":%" PRIu64 ",\"cache_limit\":%" PRIu64
		",\"pinned_bytes\":%" PRIu64 "}",
		s.hits, s.misses, s.loads, s.evictions, s.bytes_read, s.bytes_decompressed,
		s.prefetch_requests, s.prefetch_used, s.prefetch_dropped, s.errors, s.cache_used,
		s.cache_limit, s.pinned_bytes);
}

int k2fs_xattr_get(struct k2fs_fs *fs, const struct k2fs_node *n, const char *name,
		   char **val, size_t *len)
{
	*val = NULL;
	*len = 0;
	if (!find_name(n, name))
		return -ENODATA;
	char buf[32];
	switch (n->kind) {
	case K2FS_NODE_EXPERT:
		return get_expert(fs, n, name, val, len);
	case K2FS_NODE_LAYER_DIR:
		if (strcmp(name, K2FS_XATTR_PREFETCH) == 0)
			return get_last_list(fs, &fs->layer_prefetch[n->layer - fs->tree.first_layer],
					     val, len);
		return value_str(val, len,
				 k2fs_value_format_size(
					 k2fs_cache_layer_readahead(fs->cache, n->layer), buf,
					 sizeof(buf)));
	case K2FS_NODE_ROOT: {
		if (strcmp(name, K2FS_XATTR_PREFETCH) == 0)
			return get_last_list(fs, &fs->root_prefetch, val, len);
		if (strcmp(name, K2FS_XATTR_STATS) == 0)
			return get_stats(fs, val, len);
		struct k2fs_stats s;
		k2fs_cache_stats(fs->cache, &s);
		return value_printf(val, len, "%" PRIu64,
				    strcmp(name, K2FS_XATTR_CACHE_LIMIT) == 0 ? s.cache_limit
									   : s.cache_used);
	}
	case K2FS_NODE_DENSE: {
		const k2p_entry *e = n->e;
		if (strcmp(name, K2FS_XATTR_DTYPE) == 0) {
			const char *d = k2_dtype_name(e->dtype);
			return value_str(val, len, d ? d : "unknown");
		}
		char shape[K2P_MAX_DIMS * 24 + 1] = "";
		size_t at = 0;
		for (uint32_t d = 0; d < e->ndim && d < K2P_MAX_DIMS; d++)
			at += (size_t)snprintf(shape + at, sizeof(shape) - at, "%s%" PRIu64,
					       d ? "," : "", e->shape[d]);
		return value_str(val, len, shape);
	}
	default:
		return -ENODATA;
	}
}

/* ---------------------------------------------------------------- set */

/* Replaces *slot with a copy of v[0 … n) (hint_lock taken here). */
static int store_list(struct k2fs_fs *fs, char **slot, const char *v, size_t n)
{
	char *copy = strndup(v, n);
	if (!copy)
		return -ENOMEM;
	pthread_mutex_lock(&fs->hint_lock);
	free(*slot);
	*slot = copy;
	pthread_mutex_unlock(&fs->hint_lock);
	return 0;
}

/* Queues WILLNEED for the experts refs[0 … count) name and records v[0 … n) as
 * the last list set on the node (*slot). Frees refs. Returns 0, -EINVAL when
 * the pack lacks one of the experts (then nothing is queued or recorded), or
 * -ENOMEM. */
static int set_prefetch(struct k2fs_fs *fs, char **slot, struct k2fs_ref *refs, size_t count,
			const char *v, size_t n)
{
	size_t *entries = malloc(count * sizeof(*entries));
	int rc = entries ? 0 : -ENOMEM;
	for (size_t i = 0; rc == 0 && i < count; i++) {
		long e = k2fs_tree_expert(&fs->tree, refs[i].layer, refs[i].expert);
		if (e < 0)
			rc = -EINVAL;
		else
			entries[i] = (size_t)e;
	}
	if (rc == 0)
		rc = store_list(fs, slot, v, n);
	if (rc == 0)
		k2fs_cache_willneed_many(fs->cache, entries, count);
	free(refs);
	free(entries);
	return rc;
}

static int set_layer_prefetch(struct k2fs_fs *fs, uint32_t layer, const char *v, size_t n)
{
	uint32_t *idx;
	size_t count;
	int rc = k2fs_value_parse_list(v, n, &idx, &count);
	if (rc)
		return rc;
	struct k2fs_ref *refs = malloc(count * sizeof(*refs));
	if (!refs) {
		free(idx);
		return -ENOMEM;
	}
	for (size_t i = 0; i < count; i++)
		refs[i] = (struct k2fs_ref){.layer = layer, .expert = idx[i]};
	free(idx);
	return set_prefetch(fs, &fs->layer_prefetch[layer - fs->tree.first_layer], refs, count,
			    v, n);
}

static int set_root_prefetch(struct k2fs_fs *fs, const char *v, size_t n)
{
	struct k2fs_ref *refs;
	size_t count;
	int rc = k2fs_value_parse_pairs(v, n, &refs, &count);
	if (rc)
		return rc;
	return set_prefetch(fs, &fs->root_prefetch, refs, count, v, n);
}

int k2fs_xattr_set(struct k2fs_fs *fs, const struct k2fs_node *n, const char *name,
		   const char *val, size_t len)
{
	const struct xa_name *x = find_name(n, name);
	if (!x)
		return -ENOTSUP;
	if (!x->rw)
		return -EPERM;
	uint64_t v;
	enum k2fs_hint h;
	int rc;
	switch (n->kind) {
	case K2FS_NODE_EXPERT:
		if (strcmp(name, K2FS_XATTR_READAHEAD) == 0) {
			rc = k2fs_value_parse_readahead(val, len, &v);
			if (rc == 0)
				k2fs_cache_set_readahead(fs->cache, n->entry, v);
			return rc;
		}
		rc = k2fs_value_parse_hint(val, len, &h);
		if (rc)
			return rc;
		return k2fs_cache_hint(fs->cache, n->entry, h);
	case K2FS_NODE_LAYER_DIR:
		if (strcmp(name, K2FS_XATTR_READAHEAD) == 0) {
			rc = k2fs_value_parse_readahead(val, len, &v);
			if (rc == 0)
				k2fs_cache_set_layer_readahead(fs->cache, n->layer, v);
			return rc;
		}
		return set_layer_prefetch(fs, n->layer, val, len);
	case K2FS_NODE_ROOT:
		if (strcmp(name, K2FS_XATTR_CACHE_LIMIT) == 0) {
			rc = k2fs_value_parse_size(val, len, &v);
			if (rc == 0)
				k2fs_cache_set_limit(fs->cache, v);
			return rc;
		}
		return set_root_prefetch(fs, val, len);
	default:
		return -ENOTSUP;
	}
}

int k2fs_xattr_remove(struct k2fs_fs *fs, const struct k2fs_node *n, const char *name)
{
	(void)fs;
	return find_name(n, name) ? -EPERM : -ENODATA;
}
