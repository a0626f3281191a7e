/* ops.c — the FUSE low-level operations of k2fs: a read-only tree with fixed
 * inodes and long timeouts (the pack is immutable), reads of experts through the
 * RAM cache, reads of files and dense tensors by direct decoding (the kernel page
 * cache keeps them), and the user.k2.* xattrs. Each handler converts -errno to a
 * reply exactly once; nothing here exits or aborts. Operations that would change
 * the tree reply EROFS (the mount itself is not read-only, because Linux refuses
 * setxattr on read-only mounts and the xattrs are the control interface). */
#include "k2fs_fs.h"
#include "k2fs_xattr.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

static struct k2fs_fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	const struct k2fs_fs *fs = userdata;
	/* libfuse refuses the connection unless this equals the max_read mount
	 * option, which k2fs_main sets from the same value */
	conn->max_read = fs->cfg.max_read;
	/* many reads in flight: async read-ahead and parallel readers */
	conn->max_background = 128;
	conn->congestion_threshold = 96;
	/* files never change: do not drop cached pages on attribute refreshes */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
}

static void reply_entry(fuse_req_t req, struct k2fs_fs *fs, const struct k2fs_node *n)
{
	struct fuse_entry_param ep;
	memset(&ep, 0, sizeof(ep));
	ep.ino = n->ino;
	ep.generation = 1;
	ep.attr_timeout = fs->cfg.timeout;
	ep.entry_timeout = fs->cfg.timeout;
	k2fs_tree_stat(&fs->tree, n, &ep.attr);
	fuse_reply_entry(req, &ep);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct k2fs_fs *fs = fs_of(req);
	k2fs_after_init(fs);
	struct k2fs_node n;
	int rc = k2fs_tree_lookup(&fs->tree, parent, name, &n);
	if (rc == -ENOENT) {
		/* the tree never changes: let the kernel remember the miss too */
		struct fuse_entry_param ep;
		memset(&ep, 0, sizeof(ep));
		ep.entry_timeout = fs->cfg.timeout;
		fuse_reply_entry(req, &ep);
		return;
	}
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	reply_entry(req, fs, &n);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct k2fs_fs *fs = fs_of(req);
	k2fs_after_init(fs);
	struct k2fs_node n;
	int rc = k2fs_tree_node(&fs->tree, ino, &n);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	struct stat st;
	k2fs_tree_stat(&fs->tree, &n, &st);
	fuse_reply_attr(req, &st, fs->cfg.timeout);
}

static int node_is_dir(const struct k2fs_node *n)
{
	return n->kind == K2FS_NODE_ROOT || n->kind == K2FS_NODE_DENSE_DIR ||
	       n->kind == K2FS_NODE_EXPERTS_DIR || n->kind == K2FS_NODE_LAYER_DIR;
}

static fuse_ino_t parent_of(const struct k2fs_node *n)
{
	return n->kind == K2FS_NODE_LAYER_DIR ? K2FS_INO_EXPERTS : K2FS_INO_ROOT;
}

/* What an operation needs its inode to be. */
enum node_want {
	NODE_WANT_FILE,
	NODE_WANT_DIR,
};

/* The node of ino into *n, which must be a directory for NODE_WANT_DIR and must
 * not be one for NODE_WANT_FILE. Returns 0, -ENOTDIR or -EISDIR when it is of
 * the other kind, or the -errno of k2fs_tree_node. */
static int wanted_node(struct k2fs_fs *fs, fuse_ino_t ino, enum node_want want,
		       struct k2fs_node *n)
{
	int rc = k2fs_tree_node(&fs->tree, ino, n);
	if (rc == 0 && node_is_dir(n) != (want == NODE_WANT_DIR))
		rc = want == NODE_WANT_DIR ? -ENOTDIR : -EISDIR;
	return rc;
}

/* As wanted_node, for a read of the file or of the directory's entries at
 * offset off: -EINVAL, after the other checks, when off is negative. */
static int wanted_node_at(struct k2fs_fs *fs, fuse_ino_t ino, enum node_want want, off_t off,
			  struct k2fs_node *n)
{
	int rc = wanted_node(fs, ino, want, n);
	if (rc == 0 && off < 0)
		rc = -EINVAL;
	return rc;
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct k2fs_fs *fs = fs_of(req);
	struct k2fs_node n;
	int rc = wanted_node(fs, ino, NODE_WANT_DIR, &n);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	fi->cache_readdir = 1;
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)fi;
	struct k2fs_fs *fs = fs_of(req);
	struct k2fs_node dir;
	int rc = wanted_node_at(fs, ino, NODE_WANT_DIR, off, &dir);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	char *buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t used = 0;
	char name[K2P_MAX_NAME + 1];
	for (size_t i = (size_t)off;; i++) {
		struct stat st;
		memset(&st, 0, sizeof(st));
		if (i < 2) {
			strcpy(name, i == 0 ? "." : "..");
			st.st_ino = i == 0 ? ino : parent_of(&dir);
			st.st_mode = S_IFDIR;
		} else {
			struct k2fs_node child;
			if (k2fs_tree_child(&fs->tree, &dir, i - 2, &child, name, sizeof(name)))
				break;
			st.st_ino = child.ino;
			st.st_mode = node_is_dir(&child) ? S_IFDIR : S_IFREG;
		}
		size_t need = fuse_add_direntry(req, buf + used, size - used, name, &st,
						(off_t)(i + 1));
		if (need > size - used)
			break;
		used += need;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct k2fs_fs *fs = fs_of(req);
	k2fs_after_init(fs);
	struct k2fs_node n;
	int rc = wanted_node(fs, ino, NODE_WANT_FILE, &n);
	if (rc == 0 && ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)))
		rc = -EROFS;
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	if (fs->cfg.direct_io ||
	    (fs->cfg.auto_direct && n.kind == K2FS_NODE_EXPERT &&
	     !k2fs_cache_resident(fs->cache, n.entry)))
		fi->direct_io = 1; /* cold: requests in parallel, no page-cache copy */
	else
		fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void read_entry(fuse_req_t req, struct k2fs_fs *fs, const struct k2fs_node *n,
		       size_t size, uint64_t off)
{
	const k2p_entry *e = n->e;
	if (off >= e->raw_bytes || size == 0) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	size_t len = size < e->raw_bytes - off ? size : (size_t)(e->raw_bytes - off);
	char *buf = malloc(len);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	k2_err err = {{0}};
	long r = k2p_entry_read(fs->pack, e, off, buf, len, &err);
	if (r < 0) {
		k2fs_log("%s", err.msg);
		if (r != -ENOMEM) {
			k2fs_cache_count_error(fs->cache);
			r = -EIO;
		}
		fuse_reply_err(req, (int)-r);
	} else {
		fuse_reply_buf(req, buf, (size_t)r);
	}
	free(buf);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	(void)fi;
	struct k2fs_fs *fs = fs_of(req);
	struct k2fs_node n;
	int rc = wanted_node_at(fs, ino, NODE_WANT_FILE, off, &n);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	if (n.kind != K2FS_NODE_EXPERT) {
		read_entry(req, fs, &n, size, (uint64_t)off);
		return;
	}
	struct k2fs_read rd;
	rc = k2fs_cache_read_begin(fs->cache, n.entry, (uint64_t)off, size, &rd);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	if (rd.niov == 0)
		fuse_reply_buf(req, NULL, 0);
	else
		fuse_reply_iov(req, rd.iov, rd.niov);
	k2fs_cache_read_end(fs->cache, &rd);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct k2fs_fs *fs = fs_of(req);
	struct statvfs sv;
	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = 4096;
	sv.f_frsize = 4096;
	sv.f_blocks = (fsblkcnt_t)((k2p_pack_file_bytes(fs->pack) + 4095) / 4096);
	sv.f_files = (fsfilcnt_t)(fs->tree.entry_base + fs->tree.n_entries);
	sv.f_namemax = K2P_MAX_NAME;
	sv.f_flag = ST_NOSUID | ST_NODEV;
	fuse_reply_statfs(req, &sv);
}

/* Replies to getxattr or listxattr with a value of len bytes: its size when the
 * caller asks for the size (size 0), ERANGE when it does not fit in size bytes,
 * else the value itself. */
static void reply_xattr_value(fuse_req_t req, size_t size, const char *val, size_t len)
{
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, val, len);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct k2fs_fs *fs = fs_of(req);
	struct k2fs_node n;
	char *val = NULL;
	size_t len = 0;
	int rc = k2fs_tree_node(&fs->tree, ino, &n);
	if (rc == 0)
		rc = k2fs_xattr_get(fs, &n, name, &val, &len);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		reply_xattr_value(req, size, val, len);
	free(val);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct k2fs_fs *fs = fs_of(req);
	struct k2fs_node n;
	char buf[512];
	int rc = k2fs_tree_node(&fs->tree, ino, &n);
	long len = rc ? rc : k2fs_xattr_list(fs, &n, buf, sizeof(buf));
	if (len < 0)
		fuse_reply_err(req, (int)-len);
	else
		reply_xattr_value(req, size, buf, (size_t)len);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	(void)flags;
	struct k2fs_fs *fs = fs_of(req);
	struct k2fs_node n;
	int rc = k2fs_tree_node(&fs->tree, ino, &n);
	if (rc == 0)
		rc = k2fs_xattr_set(fs, &n, name, value, size);
	fuse_reply_err(req, -rc);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct k2fs_fs *fs = fs_of(req);
	struct k2fs_node n;
	int rc = k2fs_tree_node(&fs->tree, ino, &n);
	if (rc == 0)
		rc = k2fs_xattr_remove(fs, &n, name);
	fuse_reply_err(req, -rc);
}

/* ---------------------------------------------------------------- refused: the tree is immutable */

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	(void)ino, (void)attr, (void)to_set, (void)fi;
	fuse_reply_err(req, EROFS);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	(void)parent, (void)name, (void)mode, (void)rdev;
	fuse_reply_err(req, EROFS);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	(void)parent, (void)name, (void)mode;
	fuse_reply_err(req, EROFS);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent, (void)name;
	fuse_reply_err(req, EROFS);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	(void)link, (void)parent, (void)name;
	fuse_reply_err(req, EROFS);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	(void)parent, (void)name, (void)newparent, (void)newname, (void)flags;
	fuse_reply_err(req, EROFS);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	(void)ino, (void)newparent, (void)newname;
	fuse_reply_err(req, EROFS);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	(void)parent, (void)name, (void)mode, (void)fi;
	fuse_reply_err(req, EROFS);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)ino, (void)buf, (void)size, (void)off, (void)fi;
	fuse_reply_err(req, EROFS);
}

const struct fuse_lowlevel_ops k2fs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_unlink,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.create = op_create,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
};
