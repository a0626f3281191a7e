/* k2fs_tree.h — the read-only inode tree of a mounted pack (tree.c): fixed inode
 * numbers computed from the pack's index, lookups, listings and attributes.
 * The tree never changes after k2fs_tree_build, so every function may be called
 * from any thread without a lock. Layout: docs/design.md, "The mount tree". */
#ifndef K2FS_TREE_H
#define K2FS_TREE_H

#include "k2fs_impl.h"

#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <time.h>

enum k2fs_node_kind {
	K2FS_NODE_NONE = 0,
	K2FS_NODE_ROOT,
	K2FS_NODE_DENSE_DIR,
	K2FS_NODE_EXPERTS_DIR,
	K2FS_NODE_LAYER_DIR,
	K2FS_NODE_FILE,   /* FILE entry at the root */
	K2FS_NODE_DENSE,  /* dense/<name> */
	K2FS_NODE_EXPERT, /* experts/LLL/EEE */
};

/* Fixed inode numbers, computed from the index alone. */
#define K2FS_INO_ROOT 1
#define K2FS_INO_DENSE 2
#define K2FS_INO_EXPERTS 3
#define K2FS_INO_LAYER0 4 /* + (layer - first_layer) */

/* What the tree says about one inode: a value, filled by the functions below. */
struct k2fs_node {
	enum k2fs_node_kind kind;
	fuse_ino_t ino;
	uint32_t layer;       /* LAYER_DIR, EXPERT */
	size_t entry;         /* FILE, DENSE, EXPERT: index in the pack */
	const k2p_entry *e;   /* FILE, DENSE, EXPERT: the pack's, valid while it is open */
};

struct k2fs_layer; /* the experts of one layer directory: tree.c's own */

/* Built once, then read-only. Other files may read first_layer, n_layers,
 * entry_base and n_entries; the lists are tree.c's. */
struct k2fs_tree {
	const k2p_pack *pack;             /* not owned */
	size_t n_entries;
	uint32_t first_layer, n_layers;   /* span of layers holding experts */
	fuse_ino_t entry_base;            /* inode of entry 0 */
	size_t *files, n_files;           /* FILE entries, index order */
	size_t *dense, n_dense;           /* DENSE entries, index order */
	struct k2fs_layer *layers;        /* [n_layers] */
	uint32_t *present, n_present;     /* layers with experts, ascending */
	struct timespec mtime;            /* the pack's, for every node */
	uid_t uid;
	gid_t gid;
};

/* Builds the tree of an open pack, which must stay open while the tree is used.
 * Returns 0, or -ENOMEM with a message in err (t then needs no k2fs_tree_free). */
int k2fs_tree_build(struct k2fs_tree *t, const k2p_pack *pack, k2_err *err);
/* Frees what k2fs_tree_build allocated; accepts NULL and a zeroed tree. */
void k2fs_tree_free(struct k2fs_tree *t);
/* The node of an inode: 0, or -ENOENT for a number the tree does not hold. */
int k2fs_tree_node(const struct k2fs_tree *t, fuse_ino_t ino, struct k2fs_node *out);
/* The child `name` of directory `parent`: 0, -ENOENT or -ENOTDIR. */
int k2fs_tree_lookup(const struct k2fs_tree *t, fuse_ino_t parent, const char *name,
		     struct k2fs_node *out);
/* Child number i (0-based, in listing order) of a directory node; writes its
 * name (NUL-terminated, cut to fit) into name[cap]. Returns 0, or -ENOENT past
 * the end. */
int k2fs_tree_child(const struct k2fs_tree *t, const struct k2fs_node *dir, size_t i,
		    struct k2fs_node *child, char *name, size_t cap);
/* The attributes of a node: read-only files and directories, the pack's mtime,
 * the daemon's uid and gid. */
void k2fs_tree_stat(const struct k2fs_tree *t, const struct k2fs_node *n, struct stat *st);
/* Inode of an expert's layer directory. */
fuse_ino_t k2fs_tree_layer_ino(const struct k2fs_tree *t, uint32_t layer);
/* Inode of pack entry `entry` (any kind; entry < n_entries). */
fuse_ino_t k2fs_tree_entry_ino(const struct k2fs_tree *t, size_t entry);
/* Entry index of expert (layer, expert), or -ENOENT. */
long k2fs_tree_expert(const struct k2fs_tree *t, uint32_t layer, uint32_t expert);

#endif /* K2FS_TREE_H */
