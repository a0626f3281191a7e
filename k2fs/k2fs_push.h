/* k2fs_push.h — the page-cache pusher of `-o notify_store` (push.c), for
 * daemon.c: a thread that writes each expert a load leaves wholly resident into
 * the kernel page cache of its file (fuse_lowlevel_notify_store). */
#ifndef K2FS_PUSH_H
#define K2FS_PUSH_H

#include "k2fs_fs.h"

/* Creates a stopped pusher for fs into *out (fs must outlive it). Returns 0 or
 * -ENOMEM. */
int k2fs_push_create(struct k2fs_fs *fs, struct k2fs_push **out);
/* The cache's `loaded` callback (arg: the pusher): queues an expert, or drops it
 * when the queue is full. Never blocks on anything but the pusher's own lock,
 * so it may run under the cache's. */
void k2fs_push_queue(void *arg, size_t entry);
/* Starts the thread, once fs->cache and fs->se exist. Returns 0 or -errno. */
int k2fs_push_start(struct k2fs_push *p);
/* Stops the thread (before the cache it reads from is destroyed) and frees the
 * pusher; what is still queued is dropped. Accepts NULL. */
void k2fs_push_destroy(struct k2fs_push *p);

#endif /* K2FS_PUSH_H */
