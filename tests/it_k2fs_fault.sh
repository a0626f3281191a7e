#!/bin/sh
# it_k2fs_fault.sh — a damaged block fails only the reads that touch it: packs
# the bf16 fixture (16K blocks, zstd), copies the pack, flips one byte inside
# block 2 of one expert's extent, mounts the copy with bin/k2fs and checks that
#   - reading that expert whole gives EIO, and so does a read of just block 2,
#   - a read of that expert's first block (intact) succeeds with the right bytes,
#   - every other file reads correctly (bytes against the pack's own decoder),
#   - the daemon stays up, logged one line naming the block's pack offset, and
#     user.k2.stats counts the error;
# then the same with codec none (the O_DIRECT straight-into-cache path, where
# only the checksum catches the damage). Exits 77 when /dev/fuse is unusable.
set -u
here=$(cd "$(dirname "$0")" && pwd)
name=it_k2fs_fault
. "$here/k2fs_helpers.sh"
require_fuse
require_built "$K2_BIN/k2fs" "$K2_BIN/k2pack" "$K2_BIN/k2inspect" "$client"
make_scratch
fails=0
fail() { echo "it_k2fs_fault: FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "it_k2fs_fault: ok: $*"; }

victim=experts/002/011
for codec in zstd none; do
	pack_fixture "$T/good.k2" $codec || { fail "k2pack"; exit 1; }
	cp "$T/good.k2" "$T/bad.k2"
	set -- $("$client" where "$T/good.k2" $victim 2)
	off=$1 stored=$2
	at=$((off + stored / 2))
	byte=$(od -An -tu1 -j $at -N1 "$T/bad.k2" | tr -d ' ')
	printf "$(printf '\\%03o' $((byte ^ 0x5a)))" |
		dd of="$T/bad.k2" bs=1 seek=$at conv=notrunc 2>/dev/null
	cmp -s "$T/good.k2" "$T/bad.k2" && { fail "$codec: the byte did not flip"; continue; }

	start_k2fs "$T/bad.k2" cache=64M || { fail "$codec: no mount"; cat "$T/log"; exit 1; }
	if cat "$T/mnt/$victim" >/dev/null 2>"$T/cat.err"; then
		fail "$codec: reading the damaged expert succeeded"
	else
		grep -q "Input/output error" "$T/cat.err" && ok "$codec: cat of the damaged expert: EIO" ||
			fail "$codec: cat error: $(cat "$T/cat.err")"
	fi
	dd if="$T/mnt/$victim" of=/dev/null bs=16K skip=2 count=1 iflag=direct 2>/dev/null &&
		fail "$codec: a read of the damaged block alone succeeded" ||
		ok "$codec: a read of the damaged block alone: EIO"
	"$K2_BIN/k2inspect" "$T/good.k2" --extract $victim "$T/ref" &&
		head -c 32768 "$T/ref" >"$T/first.ref" &&
		dd if="$T/mnt/$victim" of="$T/first" bs=32K count=1 iflag=direct 2>/dev/null &&
		cmp -s "$T/first" "$T/first.ref" &&
		ok "$codec: blocks 0-1 of the damaged expert read right" ||
		fail "$codec: blocks 0-1 of the damaged expert"
	"$client" verify "$T/good.k2" "$T/mnt" --expect-eio $victim >"$T/verify.out" 2>&1 &&
		ok "$codec: $(cat "$T/verify.out")" || fail "$codec: $(cat "$T/verify.out")"
	kill -0 $pid 2>/dev/null && mountpoint -q "$T/mnt" && ok "$codec: the daemon stays up" ||
		fail "$codec: the daemon died"
	errors=$("$client" getx "$T/mnt" user.k2.stats | sed 's/.*"errors":\([0-9]*\).*/\1/')
	[ "$errors" -ge 1 ] 2>/dev/null && ok "$codec: stats count $errors error(s)" ||
		fail "$codec: stats errors = '$errors'"
	lines=$(grep -c "pack offset $off" "$T/log")
	[ "$lines" -eq 1 ] && ok "$codec: one log line: $(grep "pack offset" "$T/log")" ||
		fail "$codec: expected one log line naming pack offset $off, log: $(cat "$T/log")"
	stop_k2fs
	rc=$?
	[ $rc -eq 0 ] && ok "$codec: clean unmount" || fail "$codec: k2fs exit $rc"
done

[ $fails -eq 0 ] || { echo "it_k2fs_fault: $fails failures"; exit 1; }
echo "it_k2fs_fault: all passed"
