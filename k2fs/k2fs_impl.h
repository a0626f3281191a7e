/* k2fs_impl.h — what every file of k2fs/ shares: the feature macros, the FUSE
 * API version, the error convention and the log. Each internal module has a
 * header of its own, included only where it is used:
 *
 *   k2fs_value.h       xattr value parsers and formatters (value.c)
 *   k2fs_tree.h        the inode tree (tree.c)
 *   k2fs_pool.h        the aligned buffer pool (bufpool.c), for the cache only
 *   k2fs_cache.h       the RAM cache of decoded expert blocks, an opaque object
 *                      (cache.c, loader.c)
 *   k2fs_cache_impl.h  the cache's structs, seen by cache.c and loader.c only
 *   k2fs_fs.h          the mounted file system: its settings and state
 *                      (daemon.c, ops.c)
 *   k2fs_xattr.h       the user.k2.* attributes (xattr.c), for ops.c
 *   k2fs_push.h        the page-cache pusher (push.c), for daemon.c
 *
 * Error convention: functions return 0 (or a count) or -errno. Nothing in k2fs/
 * exits or aborts on input data; only k2fs_main may exit, at start-up. */
#ifndef K2FS_IMPL_H
#define K2FS_IMPL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* O_DIRECT, qsort_r, vasprintf */
#endif

#define FUSE_USE_VERSION 312

#include "k2fs.h"
#include "layout.h"

#include <stddef.h>
#include <stdint.h>

/* Logs one line (no trailing newline needed) to stderr, or to syslog once the
 * daemon runs in the background (daemon.c). Thread-safe. */
void k2fs_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* K2FS_IMPL_H */
