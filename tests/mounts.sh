# tests/mounts.sh — sourced by the integration scripts that mount packs
# (it_infer.sh, it_infer_cuda.sh). Expects $bin (k2fs there), $work (a
# scratch folder), $mounted (a list, initially "") and fail() from the caller.

# mount_pack PACK DIR: mounts PACK on DIR and waits for config.json to appear.
mount_pack() {
	mkdir -p "$2"
	if ! "$bin/k2fs" "$1" "$2" -o cache=256M 2>"$work/k2fs.err"; then
		cat "$work/k2fs.err"
		return 1
	fi
	mounted="$mounted $2"
	i=0
	while [ ! -f "$2/config.json" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	[ -f "$2/config.json" ]
}

# umount_pack DIR: unmounts DIR (a failure is a test failure).
umount_pack() {
	fusermount3 -u "$1" || fail "unmount $1"
	mounted=$(echo "$mounted" | sed "s| $1||")
}
