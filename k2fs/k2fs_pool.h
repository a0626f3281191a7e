/* k2fs_pool.h — page-aligned buffers (usable for O_DIRECT) recycled by exact
 * capacity (bufpool.c), so that loading an expert into memory freed by an
 * eviction costs no page faults. Used by the cache only (cache.c, loader.c).
 * Thread-safe: every function takes the pool's own lock. */
#ifndef K2FS_POOL_H
#define K2FS_POOL_H

#include "k2fs_impl.h"

struct k2fs_pool;

/* Creates an empty pool into *out. Returns 0 or -ENOMEM. */
int k2fs_pool_create(struct k2fs_pool **out);
/* Unmaps every free buffer and frees the pool; buffers still handed out must
 * have been given back. Accepts NULL. */
void k2fs_pool_destroy(struct k2fs_pool *p);
/* A buffer of exactly `cap` bytes (cap a multiple of 4096), owned by the caller
 * until k2fs_pool_put; NULL when out of memory. */
void *k2fs_pool_get(struct k2fs_pool *p, size_t cap);
/* Gives a buffer of k2fs_pool_get(p, cap) back: kept for reuse while the pool's
 * free bytes stay within `keep`, else unmapped. NULL is ignored. */
void k2fs_pool_put(struct k2fs_pool *p, void *buf, size_t cap, uint64_t keep);
/* Unmaps free buffers until at most `keep` bytes are free. */
void k2fs_pool_trim(struct k2fs_pool *p, uint64_t keep);
/* Bytes of free buffers the pool holds now. */
uint64_t k2fs_pool_idle_bytes(struct k2fs_pool *p);

#endif /* K2FS_POOL_H */
