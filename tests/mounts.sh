# tests/mounts.sh — sourced by the integration scripts that mount packs
# (it_infer.sh, it_infer_cuda.sh). Expects $bin (k2fs there) from the caller;
# mount_scratch sets up the rest.

# mount_scratch NAME: $work (a scratch folder), $mounted (mounts still up),
# $fails and fail() (a line "NAME: FAIL: …", counted), and a trap that
# unmounts what is still mounted and removes $work on exit.
mount_scratch() {
	scratch_name=$1
	work=$(mktemp -d "/tmp/$1.XXXXXX")
	mounted=""
	fails=0
	trap mount_cleanup EXIT INT TERM
}
mount_cleanup() {
	for m in $mounted; do fusermount3 -u "$m" 2>/dev/null; done
	rm -rf "$work"
}
fail() { echo "$scratch_name: FAIL: $*"; fails=$((fails + 1)); }

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

# same_routing A B [--weights]: the token lines of two routing traces
# (infer --trace, docs/trace.md) agree — positions, tokens, steps, experts,
# and with --weights the route weights too — whatever their headers (the
# engine's options) say. Needs $work.
same_routing() {
	if [ "${3:-}" = --weights ]; then
		grep '^{"pos"' "$1" >"$work/routing.a"
		grep '^{"pos"' "$2" >"$work/routing.b"
	else
		grep '^{"pos"' "$1" | sed 's/,"weights":.*$//' >"$work/routing.a"
		grep '^{"pos"' "$2" | sed 's/,"weights":.*$//' >"$work/routing.b"
	fi
	[ -s "$work/routing.a" ] && cmp -s "$work/routing.a" "$work/routing.b"
}

# umount_pack DIR: unmounts DIR (a failure is a test failure).
umount_pack() {
	fusermount3 -u "$1" || fail "unmount $1"
	mounted=$(echo "$mounted" | sed "s| $1||")
}
