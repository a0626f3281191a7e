/* k2fs_xattr.h — the user.k2.* extended attributes (xattr.c), for the FUSE
 * operations of ops.c: which names each node has, their values, and what
 * setting them does (docs/xattrs.md). Thread-safe: the cache and fs->hint_lock
 * guard what they change. */
#ifndef K2FS_XATTR_H
#define K2FS_XATTR_H

#include "k2fs_fs.h"

/* Names of a node's xattrs, as listxattr returns them (NUL-separated), into
 * buf[cap]; cap 0 asks for the length only. Returns the length, or -ERANGE when
 * cap (non-zero) is too small. */
long k2fs_xattr_list(struct k2fs_fs *fs, const struct k2fs_node *n, char *buf, size_t cap);
/* The value of `name` on node n into *val, malloc'd and owned by the caller
 * (not NUL-terminated, *len bytes). Returns 0, -ENODATA (no such name here) or
 * -ENOMEM; *val is NULL after an error. */
int k2fs_xattr_get(struct k2fs_fs *fs, const struct k2fs_node *n, const char *name,
		   char **val, size_t *len);
/* Sets `name` to val[0 … len): 0, -ENOTSUP (no such name here), -EPERM
 * (read-only), -EINVAL (malformed value, or a list naming an expert the pack
 * lacks; nothing changed) or -ENOMEM. */
int k2fs_xattr_set(struct k2fs_fs *fs, const struct k2fs_node *n, const char *name,
		   const char *val, size_t len);
/* removexattr: -EPERM for a name of the node's table, -ENODATA otherwise. */
int k2fs_xattr_remove(struct k2fs_fs *fs, const struct k2fs_node *n, const char *name);

#endif /* K2FS_XATTR_H */
