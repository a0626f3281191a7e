/* k2fs.h — the public interface of k2fs/: the FUSE daemon that serves a pack as a
 * read-only tree (config.json and tokenizer files, dense/<tensor>,
 * experts/<LLL>/<EEE>) with per-file read-ahead, decompression and prefetch
 * control through extended attributes (docs/design.md, "The mount tree";
 * docs/xattrs.md).
 *
 * Clients need nothing from here but the xattr names below: everything else is
 * paths, open, pread and {get,set}xattr on the mount. */
#ifndef K2FS_H
#define K2FS_H

/* The extended attributes of docs/xattrs.md's table ("Names on each kind of
 * node"). */
#define K2FS_XATTR_FORMAT "user.k2.format"             /* expert file, r */
#define K2FS_XATTR_CODEC "user.k2.codec"               /* expert file, r */
#define K2FS_XATTR_STORED_BYTES "user.k2.stored_bytes" /* expert file, r */
#define K2FS_XATTR_STATE "user.k2.state"               /* expert file, r */
#define K2FS_XATTR_READAHEAD "user.k2.readahead"       /* expert file, layer dir: rw */
#define K2FS_XATTR_PREFETCH "user.k2.prefetch"         /* expert file, layer dir, root: rw */
#define K2FS_XATTR_HITS "user.k2.hits"                 /* expert file, r */
#define K2FS_XATTR_LOADS "user.k2.loads"               /* expert file, r */
#define K2FS_XATTR_CACHE_LIMIT "user.k2.cache_limit"   /* root, rw */
#define K2FS_XATTR_CACHE_USED "user.k2.cache_used"     /* root, r */
#define K2FS_XATTR_STATS "user.k2.stats"               /* root, r */
#define K2FS_XATTR_DTYPE "user.k2.dtype"               /* dense file, r */
#define K2FS_XATTR_SHAPE "user.k2.shape"               /* dense file, r */

/* Runs the daemon: `k2fs PACK MOUNTPOINT [-f] [-d] [-s] [-o OPTIONS]` (see
 * `k2fs --help`). Opens and validates the pack, mounts, serves until unmounted
 * or until SIGTERM/SIGINT/SIGHUP, unmounts. Returns the process exit status:
 * 0 after a clean unmount, 1 on a bad pack, bad options or a failed mount
 * (after one line on stderr saying why). */
int k2fs_main(int argc, char **argv);

#endif /* K2FS_H */
