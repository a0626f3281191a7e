#!/bin/sh
# it_k2fs_stress.sh — the concurrency test of k2fs: mounts a pack of the bf16
# fixture (16K blocks: several blocks per expert) and runs
# `prog_k2fs_client stress` for 20 seconds: 8 threads read random experts whole
# (alternately O_DIRECT and buffered, dropping the page cache after each) and
# check every byte against the pack's own decoder, while another thread sends
# prefetch hints (file willneed/pin/unpin/dontneed, layer lists, root lists) and
# moves user.k2.cache_limit between a quarter and a fifth of the experts' bytes,
# and a third polls user.k2.cache_used. Passes when every byte is right, no call
# fails, cache_used never exceeds the limit by more than one expert, and the
# daemon counted no errors. Then 5 more seconds on a codec-none pack (the
# O_DIRECT straight-into-cache path) mounted with -o notify_store (loaded experts
# pushed into the page cache while readers read them). Exits 77 when /dev/fuse
# is unusable.
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${K2_BIN:=$here/../bin}" "${K2_FIXTURES:=$here/../../shared/fixtures}"
: "${K2_TESTPROGS:=$here/../build/tests/prog}"
client="$K2_TESTPROGS/prog_k2fs_client"

if ! [ -c /dev/fuse ] || ! [ -r /dev/fuse ] || ! [ -w /dev/fuse ] ||
   ! command -v fusermount3 >/dev/null 2>&1 || ! command -v mountpoint >/dev/null 2>&1; then
	echo "it_k2fs_stress: skipped: /dev/fuse, fusermount3 or mountpoint is not usable here"
	exit 77
fi
for p in "$K2_BIN/k2fs" "$K2_BIN/k2pack" "$client"; do
	[ -x "$p" ] || { echo "it_k2fs_stress: FAIL: $p is not built"; exit 1; }
done

T=$(mktemp -d /tmp/it_k2fs_stress.XXXXXX)
pid=""
cleanup() {
	mountpoint -q "$T/mnt" 2>/dev/null && { fusermount3 -u "$T/mnt" 2>/dev/null || umount -l "$T/mnt"; }
	[ -n "$pid" ] && kill "$pid" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT INT TERM
fails=0

run() { # CODEC SECONDS [k2fs options]
	"$K2_BIN/k2pack" "$K2_FIXTURES/k2-tiny-bf16/model" "$T/p.k2" --experts keep \
		--block-size 16K --codec "$1" >/dev/null 2>&1 || { echo "it_k2fs_stress: FAIL: k2pack"; exit 1; }
	mkdir -p "$T/mnt"
	"$K2_BIN/k2fs" "$T/p.k2" "$T/mnt" -f -o cache=64M${3:+,$3} 2>"$T/log" &
	pid=$!
	i=0
	while ! mountpoint -q "$T/mnt"; do
		i=$((i + 1))
		[ $i -gt 100 ] && { echo "it_k2fs_stress: FAIL: no mount"; cat "$T/log"; exit 1; }
		sleep 0.1
	done
	if "$client" stress "$T/p.k2" "$T/mnt" --seconds "$2" --threads 8; then
		echo "it_k2fs_stress: ok: codec $1, $2 s ${3:-}"
	else
		echo "it_k2fs_stress: FAIL: codec $1"
		fails=$((fails + 1))
	fi
	kill -0 $pid 2>/dev/null || { echo "it_k2fs_stress: FAIL: the daemon died"; fails=$((fails + 1)); }
	fusermount3 -u "$T/mnt"
	wait $pid
	rc=$?
	pid=""
	[ $rc -eq 0 ] || { echo "it_k2fs_stress: FAIL: k2fs exit $rc"; fails=$((fails + 1)); }
	[ -s "$T/log" ] && { echo "it_k2fs_stress: FAIL: k2fs logged:"; cat "$T/log"; fails=$((fails + 1)); }
}
run zstd 20
run none 5 notify_store
[ $fails -eq 0 ] || exit 1
echo "it_k2fs_stress: all passed"
