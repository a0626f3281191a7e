/* push.c — fills the kernel page cache ahead of reads: when a load leaves an
 * expert wholly resident in the RAM cache, a thread of its own writes the
 * expert's bytes into the page cache of its file (fuse_lowlevel_notify_store),
 * so that the reads that follow (a prefetched expert read later, the rest of a
 * cold read) are page-cache hits with no FUSE request. Enabled by
 * `-o notify_store`. The queue is bounded; when full, an expert is not pushed
 * (its reads then come through the daemon as usual). */
#include "k2fs_fs.h"
#include "k2fs_push.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PUSH_QUEUE 1024

struct k2fs_push {
	struct k2fs_fs *fs;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	size_t q[PUSH_QUEUE];      /* ring of entry indices; protected by lock */
	size_t head, n;
	int stop;
	int started;
	pthread_t thread;
};

int k2fs_push_create(struct k2fs_fs *fs, struct k2fs_push **out)
{
	struct k2fs_push *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->fs = fs;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	*out = p;
	return 0;
}

void k2fs_push_queue(void *arg, size_t entry)
{
	struct k2fs_push *p = arg;
	pthread_mutex_lock(&p->lock);
	if (p->n < PUSH_QUEUE) {
		p->q[(p->head + p->n) % PUSH_QUEUE] = entry;
		p->n++;
		pthread_cond_signal(&p->cond);
	}
	pthread_mutex_unlock(&p->lock);
}

/* Stores the resident bytes of one expert into its file's page cache, one block
 * buffer per store (no copy on our side). The store may wait on page locks held
 * by read requests of that file; the pusher's ref is one that loads needing
 * memory do not wait for (k2fs_cache_read_resident), so such a wait cannot close
 * a cycle. */
static void push_one(struct k2fs_push *p, size_t entry)
{
	struct k2fs_fs *fs = p->fs;
	const k2p_entry *e = k2p_entry_at(fs->pack, entry);
	struct k2fs_read rd;
	if (!e || k2fs_cache_read_resident(fs->cache, entry, 0, e->raw_bytes, &rd) != 0)
		return; /* evicted meanwhile: nothing to push */
	fuse_ino_t ino = k2fs_tree_entry_ino(&fs->tree, entry);
	off_t off = 0;
	for (int i = 0; i < rd.niov; i++) {
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(rd.iov[i].iov_len);
		bv.buf[0].mem = rd.iov[i].iov_base;
		/* < 0: -ENOENT when the kernel holds no inode for it, else the session ends */
		if (fuse_lowlevel_notify_store(fs->se, ino, off, &bv, 0) < 0)
			break;
		off += (off_t)rd.iov[i].iov_len;
	}
	k2fs_cache_read_end(fs->cache, &rd);
}

static void *push_main(void *arg)
{
	struct k2fs_push *p = arg;
	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (p->n == 0 && !p->stop)
			pthread_cond_wait(&p->cond, &p->lock);
		if (p->stop)
			break;
		size_t entry = p->q[p->head];
		p->head = (p->head + 1) % PUSH_QUEUE;
		p->n--;
		pthread_mutex_unlock(&p->lock);
		push_one(p, entry);
		pthread_mutex_lock(&p->lock);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int k2fs_push_start(struct k2fs_push *p)
{
	int rc = pthread_create(&p->thread, NULL, push_main, p);
	if (rc)
		return -rc;
	p->started = 1;
	return 0;
}

void k2fs_push_destroy(struct k2fs_push *p)
{
	if (!p)
		return;
	if (p->started) {
		pthread_mutex_lock(&p->lock);
		p->stop = 1;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->lock);
		pthread_join(p->thread, NULL);
	}
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
	free(p);
}
