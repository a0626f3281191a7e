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
name=it_k2fs_stress
. "$here/k2fs_helpers.sh"
require_fuse
require_built "$K2_BIN/k2fs" "$K2_BIN/k2pack" "$client"
make_scratch
fails=0

run() { # CODEC SECONDS [k2fs options]
	pack_fixture "$T/p.k2" "$1" || { echo "it_k2fs_stress: FAIL: k2pack"; exit 1; }
	start_k2fs "$T/p.k2" "cache=64M${3:+,$3}" ||
		{ echo "it_k2fs_stress: FAIL: no mount"; cat "$T/log"; exit 1; }
	if "$client" stress "$T/p.k2" "$T/mnt" --seconds "$2" --threads 8; then
		echo "it_k2fs_stress: ok: codec $1, $2 s ${3:-}"
	else
		echo "it_k2fs_stress: FAIL: codec $1"
		fails=$((fails + 1))
	fi
	kill -0 $pid 2>/dev/null || { echo "it_k2fs_stress: FAIL: the daemon died"; fails=$((fails + 1)); }
	stop_k2fs
	rc=$?
	[ $rc -eq 0 ] || { echo "it_k2fs_stress: FAIL: k2fs exit $rc"; fails=$((fails + 1)); }
	[ -s "$T/log" ] && { echo "it_k2fs_stress: FAIL: k2fs logged:"; cat "$T/log"; fails=$((fails + 1)); }
}
run zstd 20
run none 5 notify_store
[ $fails -eq 0 ] || exit 1
echo "it_k2fs_stress: all passed"
