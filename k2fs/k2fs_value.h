/* k2fs_value.h — the values of the user.k2.* xattrs (value.c): read-ahead
 * settings, hints and prefetch lists, their parsers and formatters. Pure
 * functions, no state; used by xattr.c and daemon.c (the -o options), and the
 * constants by the cache. Grammar: docs/xattrs.md, "Writable values". */
#ifndef K2FS_VALUE_H
#define K2FS_VALUE_H

#include "k2fs_impl.h"

/* Read-ahead settings: a byte count, or one of these. */
#define K2FS_RA_ALL UINT64_MAX           /* the whole expert on first touch */
#define K2FS_RA_INHERIT (UINT64_MAX - 1) /* use the layer's, then the mount's */

enum k2fs_hint {
	K2FS_HINT_NONE = 0,
	K2FS_HINT_WILLNEED,
	K2FS_HINT_PIN,
	K2FS_HINT_UNPIN,
	K2FS_HINT_DONTNEED,
};

/* One expert named in a prefetch list. */
struct k2fs_ref {
	uint32_t layer, expert;
};

/* Parsers of xattr values (not NUL-terminated: v[0 … n)). Each accepts exactly
 * its syntax (no spaces, no trailing newline) and returns 0, or -EINVAL and
 * leaves *out untouched. */
/* "123", "64K", "1.5M", "2G", "2GiB" (binary units). */
int k2fs_value_parse_size(const char *v, size_t n, uint64_t *out);
/* A size, or "all" (K2FS_RA_ALL). */
int k2fs_value_parse_readahead(const char *v, size_t n, uint64_t *out);
/* "willneed", "pin", "unpin", "dontneed". */
int k2fs_value_parse_hint(const char *v, size_t n, enum k2fs_hint *out);
/* "3,17,200": decimal expert indices (at most 9 digits each), at least one.
 * On success *out is a malloc'd array of *count values, owned by the caller;
 * -ENOMEM when it cannot be allocated. */
int k2fs_value_parse_list(const char *v, size_t n, uint32_t **out, size_t *count);
/* "1/3,2/17": layer/expert pairs, at least one; *out malloc'd as above. */
int k2fs_value_parse_pairs(const char *v, size_t n, struct k2fs_ref **out, size_t *count);
/* "willneed" … or "none": a static string. */
const char *k2fs_hint_name(enum k2fs_hint h);
/* Formats a size the way the parser reads it back: "all" for K2FS_RA_ALL, "1M"
 * when an exact multiple of a binary unit, else decimal bytes. Returns buf
 * (n bytes, 32 are enough). */
const char *k2fs_value_format_size(uint64_t v, char *buf, size_t n);

#endif /* K2FS_VALUE_H */
