# tests/k2fs_helpers.sh — sourced by the integration scripts that mount one
# pack at a time with bin/k2fs -f (it_k2fs_fault.sh, it_k2fs_stress.sh).
# Expects $here (the tests folder) and $name (the script's name, which starts
# every line these helpers print). Defaults K2_BIN, K2_FIXTURES and
# K2_TESTPROGS, and sets $client.
: "${K2_BIN:=$here/../bin}" "${K2_FIXTURES:=$here/fixtures}"
: "${K2_TESTPROGS:=$here/../build/tests/prog}"
client="$K2_TESTPROGS/prog_k2fs_client"

# require_fuse: exits 77 (skipped) unless /dev/fuse, fusermount3 and
# mountpoint can be used here.
require_fuse() {
	if ! [ -c /dev/fuse ] || ! [ -r /dev/fuse ] || ! [ -w /dev/fuse ] ||
	   ! command -v fusermount3 >/dev/null 2>&1 || ! command -v mountpoint >/dev/null 2>&1; then
		echo "$name: skipped: /dev/fuse, fusermount3 or mountpoint is not usable here"
		exit 77
	fi
}

# require_built PROGRAM...: exits 1 unless every PROGRAM is an executable.
require_built() {
	for p in "$@"; do
		[ -x "$p" ] || { echo "$name: FAIL: $p is not built"; exit 1; }
	done
}

# make_scratch: makes the scratch folder $T, removed on exit together with the
# mount on $T/mnt and the k2fs daemon $pid.
make_scratch() {
	T=$(mktemp -d "/tmp/$name.XXXXXX")
	pid=""
	trap cleanup EXIT INT TERM
}

cleanup() {
	mountpoint -q "$T/mnt" 2>/dev/null && { fusermount3 -u "$T/mnt" 2>/dev/null || umount -l "$T/mnt"; }
	[ -n "$pid" ] && kill "$pid" 2>/dev/null
	rm -rf "$T"
}

# pack_fixture OUT CODEC: packs the bf16 fixture into OUT (experts kept, 16K
# blocks: several blocks per expert). Returns k2pack's status.
pack_fixture() {
	"$K2_BIN/k2pack" "$K2_FIXTURES/k2-tiny-bf16/model" "$1" --experts keep \
		--block-size 16K --codec "$2" >/dev/null 2>&1
}

# start_k2fs PACK OPTIONS: mounts PACK on $T/mnt with k2fs -f -o OPTIONS in
# the background (pid in $pid, stderr in $T/log). Returns 1 when the mount
# has not appeared after 10 s.
start_k2fs() {
	mkdir -p "$T/mnt"
	"$K2_BIN/k2fs" "$1" "$T/mnt" -f -o "$2" 2>"$T/log" &
	pid=$!
	i=0
	while ! mountpoint -q "$T/mnt"; do
		i=$((i + 1))
		[ $i -gt 100 ] && return 1
		sleep 0.1
	done
}

# stop_k2fs: unmounts $T/mnt and waits for the daemon; returns its exit status.
stop_k2fs() {
	fusermount3 -u "$T/mnt"
	wait $pid
	_rc=$?
	pid=""
	return $_rc
}
