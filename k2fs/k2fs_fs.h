/* k2fs_fs.h — the mounted file system: its settings (from the command line,
 * daemon.c) and the state its FUSE operations (ops.c), xattrs (xattr.c) and
 * page-cache pusher (push.c) share. daemon.c creates it, starts the session
 * with it as the session's userdata, and frees it after the session ends. */
#ifndef K2FS_FS_H
#define K2FS_FS_H

#include "k2fs_cache.h"
#include "k2fs_tree.h"

#include <pthread.h>
#include <stdatomic.h>

struct k2fs_push;

/* Read-only once the session starts. */
struct k2fs_config {
	char *pack_path;
	char *mountpoint;
	struct k2fs_cache_opts cache;
	unsigned max_read;    /* bytes: the max_read mount option and INIT's, equal */
	int direct_io;        /* open files with direct_io instead of keep_cache */
	int auto_direct;      /* direct_io for experts not resident at open, else keep_cache */
	int notify_store;     /* push loaded experts into the kernel page cache */
	double timeout;       /* entry and attribute timeouts, seconds */
	uint64_t kernel_ra;   /* bytes for /sys/class/bdi/<dev>/read_ahead_kb, 0: leave */
	int foreground;
};

struct k2fs_fs {
	k2p_pack *pack;            /* owned; open for the life of the mount */
	struct k2fs_tree tree;     /* immutable */
	struct k2fs_cache *cache;  /* owned; thread-safe */
	struct k2fs_config cfg;
	struct fuse_session *se;
	struct k2fs_push *push;    /* owned; NULL unless cfg.notify_store */
	atomic_int after_init_done;
	pthread_mutex_t hint_lock;
	char *root_prefetch;       /* last list set on the root; protected by hint_lock */
	char **layer_prefetch;     /* [tree.n_layers] last list per layer dir; protected by
				    * hint_lock */
};

/* The FUSE low-level operations (ops.c); their userdata is the struct k2fs_fs. */
extern const struct fuse_lowlevel_ops k2fs_ops;

/* Runs once, on the first request after FUSE's INIT (daemon.c): settings the
 * kernel only accepts once the connection is up (the mount's read-ahead).
 * Thread-safe; later calls return at once. */
void k2fs_after_init(struct k2fs_fs *fs);

#endif /* K2FS_FS_H */
