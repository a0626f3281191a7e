/* tree.c — the read-only directory tree of a mounted pack and its fixed inode
 * numbers, computed from the index alone:
 *
 *   1                     /            FILE entries, dense/, experts/
 *   2                     dense/       DENSE entries by hub name
 *   3                     experts/     one directory per layer holding experts
 *   4 + (L - first)       experts/LLL  the experts of layer L, named EEE
 *   entry_base + i        entry i of the pack
 *
 * Names: layers and experts in decimal, zero-padded to at least 3 digits; a name
 * with another spelling ("17", "0017") does not resolve. */
#include "k2fs_tree.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct k2fs_layer {
	size_t *kids;         /* [n_kids] entry indices, by expert index */
	uint32_t n_kids;
};

static int cmp_expert(const void *a, const void *b, void *ctx)
{
	const k2p_pack *pack = ctx;
	uint32_t x = k2p_entry_at(pack, *(const size_t *)a)->expert;
	uint32_t y = k2p_entry_at(pack, *(const size_t *)b)->expert;
	return x < y ? -1 : x > y;
}

/* Returns 0 or -ENOMEM. */
int k2fs_tree_build(struct k2fs_tree *t, const k2p_pack *pack, k2_err *err)
{
	memset(t, 0, sizeof(*t));
	t->pack = pack;
	t->n_entries = k2p_entry_count(pack);
	t->n_layers = k2p_expert_layers(pack, &t->first_layer);
	t->entry_base = K2FS_INO_LAYER0 + (fuse_ino_t)t->n_layers;
	t->uid = getuid();
	t->gid = getgid();
	struct stat st;
	if (fstat(k2p_pack_fd(pack), &st) == 0)
		t->mtime = st.st_mtim;

	t->files = calloc(t->n_entries + 1, sizeof(size_t));
	t->dense = calloc(t->n_entries + 1, sizeof(size_t));
	t->layers = calloc(t->n_layers + 1, sizeof(*t->layers));
	t->present = calloc(t->n_layers + 1, sizeof(uint32_t));
	if (!t->files || !t->dense || !t->layers || !t->present)
		goto nomem;
	for (size_t i = 0; i < t->n_entries; i++) {
		const k2p_entry *e = k2p_entry_at(pack, i);
		if (e->kind == K2P_KIND_FILE)
			t->files[t->n_files++] = i;
		else if (e->kind == K2P_KIND_DENSE)
			t->dense[t->n_dense++] = i;
		else if (e->kind == K2P_KIND_EXPERT && e->layer >= t->first_layer &&
			 e->layer - t->first_layer < t->n_layers)
			t->layers[e->layer - t->first_layer].n_kids++;
	}
	for (uint32_t l = 0; l < t->n_layers; l++) {
		struct k2fs_layer *ly = &t->layers[l];
		if (ly->n_kids == 0)
			continue;
		ly->kids = malloc(ly->n_kids * sizeof(size_t));
		if (!ly->kids)
			goto nomem;
		ly->n_kids = 0;
		t->present[t->n_present++] = t->first_layer + l;
	}
	for (size_t i = 0; i < t->n_entries; i++) {
		const k2p_entry *e = k2p_entry_at(pack, i);
		if (e->kind == K2P_KIND_EXPERT && e->layer >= t->first_layer &&
		    e->layer - t->first_layer < t->n_layers) {
			struct k2fs_layer *ly = &t->layers[e->layer - t->first_layer];
			ly->kids[ly->n_kids++] = i;
		}
	}
	for (uint32_t l = 0; l < t->n_layers; l++)
		if (t->layers[l].n_kids > 1)
			qsort_r(t->layers[l].kids, t->layers[l].n_kids, sizeof(size_t), cmp_expert,
				(void *)pack);
	return 0;
nomem:
	k2fs_tree_free(t);
	return k2_err_set(err, -ENOMEM, "%s: out of memory for the inode table",
			  k2p_pack_path(pack));
}

void k2fs_tree_free(struct k2fs_tree *t)
{
	if (!t)
		return;
	if (t->layers)
		for (uint32_t l = 0; l < t->n_layers; l++)
			free(t->layers[l].kids);
	free(t->layers);
	free(t->files);
	free(t->dense);
	free(t->present);
	memset(t, 0, sizeof(*t));
}

fuse_ino_t k2fs_tree_layer_ino(const struct k2fs_tree *t, uint32_t layer)
{
	return K2FS_INO_LAYER0 + (fuse_ino_t)(layer - t->first_layer);
}

fuse_ino_t k2fs_tree_entry_ino(const struct k2fs_tree *t, size_t entry)
{
	return t->entry_base + (fuse_ino_t)entry;
}

static void entry_node(const struct k2fs_tree *t, size_t i, struct k2fs_node *out)
{
	const k2p_entry *e = k2p_entry_at(t->pack, i);
	memset(out, 0, sizeof(*out));
	out->ino = k2fs_tree_entry_ino(t, i);
	out->entry = i;
	out->e = e;
	switch (e->kind) {
	case K2P_KIND_FILE: out->kind = K2FS_NODE_FILE; break;
	case K2P_KIND_DENSE: out->kind = K2FS_NODE_DENSE; break;
	default:
		out->kind = K2FS_NODE_EXPERT;
		out->layer = e->layer;
		break;
	}
}

/* Returns 0 or -ENOENT. */
int k2fs_tree_node(const struct k2fs_tree *t, fuse_ino_t ino, struct k2fs_node *out)
{
	memset(out, 0, sizeof(*out));
	out->ino = ino;
	switch (ino) {
	case K2FS_INO_ROOT: out->kind = K2FS_NODE_ROOT; return 0;
	case K2FS_INO_DENSE: out->kind = K2FS_NODE_DENSE_DIR; return 0;
	case K2FS_INO_EXPERTS: out->kind = K2FS_NODE_EXPERTS_DIR; return 0;
	default: break;
	}
	if (ino >= K2FS_INO_LAYER0 && ino < t->entry_base) {
		uint32_t l = (uint32_t)(ino - K2FS_INO_LAYER0);
		if (t->layers[l].n_kids == 0)
			return -ENOENT;
		out->kind = K2FS_NODE_LAYER_DIR;
		out->layer = t->first_layer + l;
		return 0;
	}
	if (ino >= t->entry_base && ino - t->entry_base < t->n_entries) {
		size_t i = (size_t)(ino - t->entry_base);
		const k2p_entry *e = k2p_entry_at(t->pack, i);
		if (e->kind == K2P_KIND_EXPERT &&
		    (e->layer < t->first_layer || e->layer - t->first_layer >= t->n_layers))
			return -ENOENT;
		entry_node(t, i, out);
		return 0;
	}
	return -ENOENT;
}

/* Parses a canonical "%03u" name: digits only, no extra leading zeros. */
static int parse_number_name(const char *name, uint32_t *out)
{
	size_t n = strlen(name);
	if (n < 3 || n > 10)
		return -ENOENT;
	uint64_t x = 0;
	for (size_t i = 0; i < n; i++) {
		if (name[i] < '0' || name[i] > '9')
			return -ENOENT;
		x = x * 10 + (uint64_t)(name[i] - '0');
	}
	if (x > UINT32_MAX)
		return -ENOENT;
	char canon[16];
	snprintf(canon, sizeof(canon), "%03" PRIu32, (uint32_t)x);
	if (strcmp(canon, name) != 0)
		return -ENOENT;
	*out = (uint32_t)x;
	return 0;
}

long k2fs_tree_expert(const struct k2fs_tree *t, uint32_t layer, uint32_t expert)
{
	const k2p_entry *e = k2p_expert_find(t->pack, layer, expert);
	if (!e || layer < t->first_layer || layer - t->first_layer >= t->n_layers)
		return -ENOENT;
	return (long)(e - k2p_entry_at(t->pack, 0));
}

/* The node of the pack entry at `path`, which must be of kind `kind` (enum
 * k2p_kind): 0 or -ENOENT. */
static int named_entry_node(const struct k2fs_tree *t, const char *path, uint32_t kind,
			    struct k2fs_node *out)
{
	const k2p_entry *e = k2p_entry_find(t->pack, path);
	if (!e || e->kind != kind)
		return -ENOENT;
	entry_node(t, (size_t)(e - k2p_entry_at(t->pack, 0)), out);
	return 0;
}

/* Returns 0, -ENOENT or -ENOTDIR. */
int k2fs_tree_lookup(const struct k2fs_tree *t, fuse_ino_t parent, const char *name,
		     struct k2fs_node *out)
{
	struct k2fs_node dir;
	int rc = k2fs_tree_node(t, parent, &dir);
	if (rc)
		return rc;
	char path[K2P_MAX_NAME + 16];
	uint32_t x;
	switch (dir.kind) {
	case K2FS_NODE_ROOT:
		if (strcmp(name, "dense") == 0)
			return k2fs_tree_node(t, K2FS_INO_DENSE, out);
		if (strcmp(name, "experts") == 0)
			return k2fs_tree_node(t, K2FS_INO_EXPERTS, out);
		return named_entry_node(t, name, K2P_KIND_FILE, out);
	case K2FS_NODE_DENSE_DIR:
		if ((size_t)snprintf(path, sizeof(path), "dense/%s", name) >= sizeof(path))
			return -ENOENT;
		return named_entry_node(t, path, K2P_KIND_DENSE, out);
	case K2FS_NODE_EXPERTS_DIR:
		if (parse_number_name(name, &x) || x < t->first_layer ||
		    x - t->first_layer >= t->n_layers)
			return -ENOENT;
		return k2fs_tree_node(t, k2fs_tree_layer_ino(t, x), out);
	case K2FS_NODE_LAYER_DIR: {
		if (parse_number_name(name, &x))
			return -ENOENT;
		long i = k2fs_tree_expert(t, dir.layer, x);
		if (i < 0)
			return -ENOENT;
		entry_node(t, (size_t)i, out);
		return 0;
	}
	default:
		return -ENOTDIR;
	}
}

int k2fs_tree_child(const struct k2fs_tree *t, const struct k2fs_node *dir, size_t i,
		    struct k2fs_node *child, char *name, size_t cap)
{
	switch (dir->kind) {
	case K2FS_NODE_ROOT:
		if (i == 0) {
			snprintf(name, cap, "dense");
			return k2fs_tree_node(t, K2FS_INO_DENSE, child);
		}
		if (i == 1) {
			snprintf(name, cap, "experts");
			return k2fs_tree_node(t, K2FS_INO_EXPERTS, child);
		}
		if (i - 2 >= t->n_files)
			return -ENOENT;
		entry_node(t, t->files[i - 2], child);
		snprintf(name, cap, "%s", child->e->name);
		return 0;
	case K2FS_NODE_DENSE_DIR:
		if (i >= t->n_dense)
			return -ENOENT;
		entry_node(t, t->dense[i], child);
		snprintf(name, cap, "%s", child->e->name);
		return 0;
	case K2FS_NODE_EXPERTS_DIR:
		if (i >= t->n_present)
			return -ENOENT;
		snprintf(name, cap, "%03" PRIu32, t->present[i]);
		return k2fs_tree_node(t, k2fs_tree_layer_ino(t, t->present[i]), child);
	case K2FS_NODE_LAYER_DIR: {
		const struct k2fs_layer *ly = &t->layers[dir->layer - t->first_layer];
		if (i >= ly->n_kids)
			return -ENOENT;
		entry_node(t, ly->kids[i], child);
		snprintf(name, cap, "%03" PRIu32, child->e->expert);
		return 0;
	}
	default:
		return -ENOENT;
	}
}

void k2fs_tree_stat(const struct k2fs_tree *t, const struct k2fs_node *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_uid = t->uid;
	st->st_gid = t->gid;
	st->st_atim = st->st_mtim = st->st_ctim = t->mtime;
	st->st_blksize = 1 << 20;
	switch (n->kind) {
	case K2FS_NODE_ROOT:
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 4;
		break;
	case K2FS_NODE_EXPERTS_DIR:
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2 + t->n_present;
		break;
	case K2FS_NODE_DENSE_DIR:
	case K2FS_NODE_LAYER_DIR:
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		break;
	default:
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)n->e->raw_bytes;
		st->st_blocks = (blkcnt_t)((n->e->raw_bytes + 511) / 512);
		break;
	}
}
