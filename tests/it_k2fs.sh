#!/bin/sh
# it_k2fs.sh — mounts packs of the bf16 and fp8 fixtures (k2pack --experts keep)
# with bin/k2fs for real and checks, with real clients (cmp, getfattr,
# setfattr, dd) and prog_k2fs_client for exact errno values:
#   - every file under the mount equals `k2inspect --extract` of the same name,
#     and the mount holds exactly the pack's entries, sizes from stat;
#   - `getfattr -d -m user.k2` shows every name of docs/xattrs.md's table on expert
#     files, layer dirs, the root and dense files, with values that match the pack;
#   - hints: dontneed → disk, willneed → ram, pin → pinned, unpin → ram;
#     layer and root lists load exactly the experts named;
#   - cache_limit lowered evicts at once; readahead 0 loads only the blocks read;
#   - malformed values → EINVAL and nothing changes (a list with one bad index
#     queues nothing); unknown name → ENODATA on get and ENOTSUP on set;
#     read-only name → EPERM; small buffer → ERANGE; size 0 → the length;
#   - a bad pack at start-up: exit 1 and one line; SIGTERM and fusermount3 -u
#     unmount cleanly (exit 0).
# Exits 77 (skipped) when /dev/fuse cannot be used here.
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${K2_BIN:=$here/../bin}" "${K2_FIXTURES:=$here/fixtures}"
: "${K2_TESTPROGS:=$here/../build/tests/prog}"
client="$K2_TESTPROGS/prog_k2fs_client"

if ! [ -c /dev/fuse ] || ! [ -r /dev/fuse ] || ! [ -w /dev/fuse ] ||
   ! command -v fusermount3 >/dev/null 2>&1; then
	echo "it_k2fs: skipped: /dev/fuse or fusermount3 is not usable here"
	exit 77
fi
for t in getfattr setfattr mountpoint cmp dd; do
	if ! command -v $t >/dev/null 2>&1; then
		echo "it_k2fs: skipped: $t is not installed (packages attr, util-linux)"
		exit 77
	fi
done
for p in "$K2_BIN/k2fs" "$K2_BIN/k2pack" "$K2_BIN/k2inspect" "$client"; do
	[ -x "$p" ] || { echo "it_k2fs: FAIL: $p is not built"; exit 1; }
done

T=$(mktemp -d /tmp/it_k2fs.XXXXXX)
pids=""
cleanup() {
	for m in "$T"/mnt*; do
		[ -d "$m" ] && mountpoint -q "$m" && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }
	done
	for p in $pids; do kill "$p" 2>/dev/null; done
	rm -rf "$T"
}
trap cleanup EXIT INT TERM

fails=0
fail() { echo "it_k2fs: FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "it_k2fs: ok: $*"; }

# mount_k2fs PACK MNT LOG [k2fs options]: starts k2fs -f in the background
# (pid in $pid) and waits for the mount.
mount_k2fs() {
	_pack=$1 _mnt=$2 _log=$3
	shift 3
	mkdir -p "$_mnt"
	"$K2_BIN/k2fs" "$_pack" "$_mnt" -f "$@" 2>"$_log" &
	pid=$!
	pids="$pids $pid"
	_i=0
	while ! mountpoint -q "$_mnt"; do
		_i=$((_i + 1))
		if [ $_i -gt 100 ] || ! kill -0 $pid 2>/dev/null; then
			echo "it_k2fs: FAIL: $_pack did not mount on $_mnt:"; cat "$_log"
			exit 1
		fi
		sleep 0.1
	done
}

# xa PATH NAME: the value of an xattr (or "ERR E...")
xa() { "$client" getx "$1" "$2"; }
# expect WHAT GOT WANT
expect() { if [ "$2" = "$3" ]; then ok "$1"; else fail "$1: got '$2', expected '$3'"; fi; }

# ---------------------------------------------------------------- packs
"$K2_BIN/k2pack" "$K2_FIXTURES/k2-tiny-bf16/model" "$T/bf16.k2" --experts keep \
	--block-size 16K >"$T/pack.log" 2>&1 || { cat "$T/pack.log"; fail "k2pack bf16"; exit 1; }
"$K2_BIN/k2pack" "$K2_FIXTURES/k2-tiny-fp8/model" "$T/fp8.k2" --experts keep \
	--codec lz4 >"$T/pack.log" 2>&1 || { cat "$T/pack.log"; fail "k2pack fp8"; exit 1; }

# ---------------------------------------------------------------- start-up errors
head -c 10000 "$T/bf16.k2" >"$T/bad.k2"
mkdir -p "$T/mntbad"
"$K2_BIN/k2fs" "$T/bad.k2" "$T/mntbad" -f >"$T/bad.out" 2>"$T/bad.err"
rc=$?
if [ $rc -eq 1 ] && [ "$(wc -l <"$T/bad.err")" -eq 1 ] && grep -q "bad.k2" "$T/bad.err" &&
   ! mountpoint -q "$T/mntbad"; then
	ok "a truncated pack: exit 1, one line: $(cat "$T/bad.err")"
else
	fail "a truncated pack: exit $rc, stderr: $(cat "$T/bad.err")"
fi
"$K2_BIN/k2fs" "$T/bf16.k2" "$T/mntbad" -f -o cache=lots 2>"$T/bad.err"
rc=$?
[ $rc -eq 1 ] && grep -q "cache" "$T/bad.err" && ok "a bad -o cache value: exit 1" ||
	fail "a bad -o cache value: exit $rc: $(cat "$T/bad.err")"
"$K2_BIN/k2fs" "$T/bf16.k2" "$T/mntbad" -f -o no_such_option 2>"$T/bad.err"
rc=$?
[ $rc -eq 1 ] && ok "an unknown option: exit 1" || fail "an unknown option: exit $rc"
"$K2_BIN/k2fs" --help >"$T/help.out" 2>&1
grep -q "user.k2.prefetch" "$T/help.out" && grep -q "cache=SIZE" "$T/help.out" &&
	ok "--help documents options and xattrs" || fail "--help"
grep -A1 "max_threads" "$T/help.out" | grep -q "default 64" && ! grep -q "default: 10" "$T/help.out" &&
	ok "--help states k2fs's own thread default (64)" || fail "--help: thread default"
"$K2_BIN/k2fs" "$T/bf16.k2" "$T/mntbad" -f -o max_read=100 2>"$T/bad.err"
rc=$?
[ $rc -eq 1 ] && grep -q "max_read" "$T/bad.err" && ok "-o max_read out of range: exit 1" ||
	fail "-o max_read=100: exit $rc: $(cat "$T/bad.err")"
# a max_read other than 1 MiB mounts and serves (it used to break the mount)
mount_k2fs "$T/bf16.k2" "$T/mnt_mr" "$T/mr.log" -o max_read=64K,direct_io
e=$("$K2_BIN/k2inspect" "$T/bf16.k2" --list | awk '$2 == "expert" { print $1; exit }')
"$K2_BIN/k2inspect" "$T/bf16.k2" --extract "$e" "$T/mr.want" >/dev/null 2>&1
if grep -q "max_read=65536" /proc/mounts && cmp -s "$T/mnt_mr/$e" "$T/mr.want"; then
	ok "-o max_read=64K,direct_io: mounted, $e reads back exact"
else
	fail "-o max_read=64K: $(grep mnt_mr /proc/mounts) $(cat "$T/mr.log")"
fi
fusermount3 -u "$T/mnt_mr"
wait "$pid"

# ---------------------------------------------------------------- every file, both packs
for kind in bf16 fp8; do
	pack="$T/$kind.k2" mnt="$T/mnt_$kind"
	# the fp8 pack also exercises -o notify_store (loads pushed into the page cache)
	opts=cache=64M
	[ $kind = fp8 ] && opts=cache=64M,notify_store
	mount_k2fs "$pack" "$mnt" "$T/$kind.log" -o $opts
	eval "pid_$kind=$pid"
	n_pack=$("$K2_BIN/k2inspect" "$pack" --list | awk 'NR > 1 && $2 ~ /^(file|dense|expert)$/' | wc -l)
	n_mnt=$(cd "$mnt" && find . -type f | wc -l)
	expect "$kind: files in the mount = entries in the pack ($n_pack)" "$n_mnt" "$n_pack"
	bad=0 n=0
	for rel in $(cd "$mnt" && find config.json dense experts -type f | sort); do
		"$K2_BIN/k2inspect" "$pack" --extract "$rel" "$T/x" || { bad=$((bad + 1)); continue; }
		cmp -s "$T/x" "$mnt/$rel" || { echo "  differs: $rel"; bad=$((bad + 1)); }
		n=$((n + 1))
	done
	expect "$kind: cmp of $n files (config.json, dense/, experts/) against k2inspect --extract" "$bad" 0
	"$client" verify "$pack" "$mnt" >"$T/verify.out" 2>&1 &&
		ok "$kind: $(cat "$T/verify.out")" || fail "$kind: $(cat "$T/verify.out")"
done

# ---------------------------------------------------------------- notify_store (fp8 mount)
if command -v fincore >/dev/null 2>&1; then
	f="$T/mnt_fp8/experts/002/009"
	size=$(stat -c %s "$f")
	setfattr -n user.k2.prefetch -v dontneed "$f"
	dd if="$f" iflag=nocache count=0 2>/dev/null
	before=$(fincore -b -n -o RES "$f" | tr -d ' ')
	setfattr -n user.k2.prefetch -v willneed "$f"
	"$client" wait-state "$f" ram 10 >/dev/null
	i=0
	while [ "$(fincore -b -n -o RES "$f" | tr -d ' ')" -lt "$size" ] && [ $i -lt 100 ]; do
		sleep 0.05; i=$((i + 1))
	done
	after=$(fincore -b -n -o RES "$f" | tr -d ' ')
	[ "$after" -ge "$size" ] && [ "$before" -lt "$size" ] &&
		ok "notify_store: willneed put the expert in the page cache ($before → $after bytes)" ||
		fail "notify_store: page cache $before → $after bytes of $size"
	"$K2_BIN/k2inspect" "$T/fp8.k2" --extract experts/002/009 "$T/x.fp8"
	cmp -s "$f" "$T/x.fp8" && ok "notify_store: the pushed pages hold the right bytes" ||
		fail "notify_store: pushed pages differ"
fi

# ---------------------------------------------------------------- kernel read-ahead (root only)
mnt="$T/mnt_bf16" pack="$T/bf16.k2"
if [ "$(id -u)" = 0 ]; then
	ra=$(cat "/sys/class/bdi/$(mountpoint -d "$mnt")/read_ahead_kb" 2>/dev/null)
	expect "the mount's kernel read-ahead raised to 1M (FUSE offers 128K)" "$ra" "1024"
fi

# ---------------------------------------------------------------- xattr names and values
layer=$(ls "$mnt/experts" | head -1)
ex="$mnt/experts/$layer/003"
getfattr -d -m user.k2 "$ex" >"$T/gf.out" 2>/dev/null
for n in format codec stored_bytes state readahead prefetch hits loads; do
	grep -q "^user.k2.$n=" "$T/gf.out" || fail "getfattr -d on an expert lacks user.k2.$n"
done
getfattr -d -m user.k2 "$mnt" >"$T/gf.out" 2>/dev/null
for n in prefetch cache_limit cache_used stats; do
	grep -q "^user.k2.$n=" "$T/gf.out" || fail "getfattr -d on the root lacks user.k2.$n"
done
getfattr -d -m user.k2 "$mnt/experts/$layer" >"$T/gf.out" 2>/dev/null
for n in prefetch readahead; do
	grep -q "^user.k2.$n=" "$T/gf.out" || fail "getfattr -d on a layer dir lacks user.k2.$n"
done
getfattr -d -m user.k2 "$mnt/dense/model.embed_tokens.weight" >"$T/gf.out" 2>/dev/null
expect "dense dtype" "$(xa "$mnt/dense/model.embed_tokens.weight" user.k2.dtype)" "BF16"
expect "dense shape" "$(xa "$mnt/dense/model.embed_tokens.weight" user.k2.shape)" "1024,256"
grep -q '^user.k2.dtype="BF16"' "$T/gf.out" && grep -q '^user.k2.shape="1024,256"' "$T/gf.out" &&
	ok "getfattr -d on a dense file" || fail "getfattr -d on a dense file: $(cat "$T/gf.out")"
expect "expert format (bf16 pack)" "$(xa "$ex" user.k2.format)" "bf16"
expect "expert format (fp8 pack)" "$(xa "$T/mnt_fp8/experts/$layer/003" user.k2.format)" "fp8-b128"
expect "expert codec (fp8 pack, lz4)" "$(xa "$T/mnt_fp8/experts/$layer/003" user.k2.codec)" "lz4"
stored=$("$K2_BIN/k2inspect" "$pack" --list | awk -v p="experts/$layer/003" '$1 == p { print $(NF - 2) }')
expect "stored_bytes = the pack's" "$(xa "$ex" user.k2.stored_bytes)" "$stored"
expect "readahead default" "$(xa "$ex" user.k2.readahead)" "all"
expect "prefetch before any hint" "$(xa "$ex" user.k2.prefetch)" "none"
expect "state after a whole read" "$(xa "$ex" user.k2.state)" "ram"
expect "loads after one read" "$(xa "$ex" user.k2.loads)" "1"

# ---------------------------------------------------------------- hints
setfattr -n user.k2.prefetch -v dontneed "$ex" && expect "dontneed → disk" "$(xa "$ex" user.k2.state)" "disk"
expect "prefetch reads back the last hint" "$(xa "$ex" user.k2.prefetch)" "dontneed"
setfattr -n user.k2.prefetch -v willneed "$ex"
"$client" wait-state "$ex" ram 10 && ok "willneed → ram" || fail "willneed → ram"
setfattr -n user.k2.prefetch -v pin "$ex"
"$client" wait-state "$ex" pinned 10 && ok "pin → pinned" || fail "pin → pinned"
setfattr -n user.k2.prefetch -v unpin "$ex" && expect "unpin → ram" "$(xa "$ex" user.k2.state)" "ram"
expect "loads: one more after dontneed + willneed" "$(xa "$ex" user.k2.loads)" "2"
# a cached expert: willneed costs nothing
setfattr -n user.k2.prefetch -v willneed "$ex"
expect "willneed of a cached expert loads nothing" "$(xa "$ex" user.k2.loads)" "2"

# layer list: exactly the experts named get loaded
for e in 005 006 007 008; do setfattr -n user.k2.prefetch -v dontneed "$mnt/experts/$layer/$e"; done
setfattr -n user.k2.prefetch -v "5,7" "$mnt/experts/$layer" || fail "layer list 5,7"
"$client" wait-state "$mnt/experts/$layer/005" ram 10 && "$client" wait-state "$mnt/experts/$layer/007" ram 10 &&
	ok "layer prefetch 5,7 → 005 and 007 in ram" || fail "layer prefetch 5,7"
expect "layer prefetch leaves 006 alone" "$(xa "$mnt/experts/$layer/006" user.k2.state)" "disk"
expect "layer prefetch reads back the list" "$(xa "$mnt/experts/$layer" user.k2.prefetch)" "5,7"
l2=$(ls "$mnt/experts" | sed -n 2p)
setfattr -n user.k2.prefetch -v dontneed "$mnt/experts/$l2/008"
setfattr -n user.k2.prefetch -v "$((1$layer - 1000))/6,$((1$l2 - 1000))/8" "$mnt" || fail "root list"
"$client" wait-state "$mnt/experts/$layer/006" ram 10 && "$client" wait-state "$mnt/experts/$l2/008" ram 10 &&
	ok "root prefetch L/E,L/E → both in ram" || fail "root prefetch"
expect "layer prefetch left 008 alone" "$(xa "$mnt/experts/$layer/008" user.k2.state)" "disk"

# ---------------------------------------------------------------- malformed values change nothing
one_bad() { # PATH NAME VALUE: must give EINVAL and leave the value as it was
	before=$(xa "$1" "$2")
	got=$("$client" setx "$1" "$2" "$3")
	after=$(xa "$1" "$2")
	if [ "$got" = "ERR EINVAL" ] && [ "$before" = "$after" ]; then
		ok "$2='$3' → EINVAL, unchanged"
	else
		fail "$2='$3' on $1: got '$got', value '$before' → '$after'"
	fi
}
for v in "" abc -1 1Q " 1M" "1M " 0x10 inf; do one_bad "$ex" user.k2.readahead "$v"; done
for v in maybe WILLNEED "willneed " ""; do one_bad "$ex" user.k2.prefetch "$v"; done
for v in "" "1,,2" "1,x" "1;2" "9999" "6,9999" "-1" "1/2"; do one_bad "$mnt/experts/$layer" user.k2.prefetch "$v"; done
expect "a layer list with one bad index queued nothing" "$(xa "$mnt/experts/$layer/008" user.k2.state)" "disk"
for v in "" "1" "1/2/3" "99/1" "$((1$layer - 1000))/8,99/1" "a/b"; do one_bad "$mnt" user.k2.prefetch "$v"; done
expect "a root list with one bad pair queued nothing" "$(xa "$mnt/experts/$layer/008" user.k2.state)" "disk"
for v in "" lots 1.2.3 -5 "1 G"; do one_bad "$mnt" user.k2.cache_limit "$v"; done
one_bad "$mnt/experts/$layer" user.k2.readahead "nope"

# ---------------------------------------------------------------- errno of unknown, read-only, sizes
expect "unknown name on a file → ENODATA" "$(xa "$ex" user.k2.nope)" "ERR ENODATA"
expect "unknown name on the root → ENODATA" "$(xa "$mnt" user.k2.nope)" "ERR ENODATA"
expect "a file's name on the root → ENODATA" "$(xa "$mnt" user.k2.state)" "ERR ENODATA"
expect "no user.k2 names on config.json" "$(xa "$mnt/config.json" user.k2.state)" "ERR ENODATA"
expect "set unknown name → ENOTSUP" "$("$client" setx "$ex" user.k2.nope 1)" "ERR ENOTSUP"
expect "set read-only state → EPERM" "$("$client" setx "$ex" user.k2.state ram)" "ERR EPERM"
expect "set read-only stats → EPERM" "$("$client" setx "$mnt" user.k2.stats "{}")" "ERR EPERM"
expect "set read-only dtype → EPERM" "$("$client" setx "$mnt/dense/model.embed_tokens.weight" user.k2.dtype F32)" "ERR EPERM"
expect "small buffer → ERANGE" "$("$client" getx "$ex" user.k2.format 2)" "ERR ERANGE"
expect "size 0 → the length" "$("$client" getx "$ex" user.k2.format 0)" "4"
n_names=$("$client" listx "$ex" | grep -c '^user\.k2\.')
expect "listxattr of an expert: 8 names" "$n_names" "8"
getfattr -n user.k2.nope "$ex" 2>"$T/gf.err" && fail "getfattr of an unknown name succeeded"
grep -qi "no such attribute" "$T/gf.err" && ok "getfattr says: $(cat "$T/gf.err")" ||
	fail "getfattr error text: $(cat "$T/gf.err")"

# ---------------------------------------------------------------- readahead and partial loads
setfattr -n user.k2.prefetch -v dontneed "$ex"
setfattr -n user.k2.readahead -v 0 "$ex"
expect "readahead reads back" "$(xa "$ex" user.k2.readahead)" "0"
used0=$(xa "$mnt" user.k2.cache_used)
dd if="$ex" of=/dev/null bs=4096 count=1 skip=5 iflag=direct 2>/dev/null
used1=$(xa "$mnt" user.k2.cache_used)
expect "readahead 0: a 4K read loads one 16K block" "$((used1 - used0))" "16384"
setfattr -n user.k2.readahead -v 32K "$ex"
dd if="$ex" of=/dev/null bs=4096 count=1 skip=12 iflag=direct 2>/dev/null
used2=$(xa "$mnt" user.k2.cache_used)
expect "readahead 32K: a 4K read at 48K loads blocks 3..5" "$((used2 - used1))" "49152"
setfattr -n user.k2.readahead -v 64K "$mnt/experts/$layer"
setfattr -n user.k2.readahead -v all "$ex"
expect "a file's own readahead wins over its layer's" "$(xa "$ex" user.k2.readahead)" "all"
expect "other files inherit the layer's readahead" "$(xa "$mnt/experts/$layer/010" user.k2.readahead)" "64K"
expect "the layer dir reads back its readahead" "$(xa "$mnt/experts/$layer" user.k2.readahead)" "64K"
setfattr -n user.k2.readahead -v all "$mnt/experts/$layer"

# ---------------------------------------------------------------- cache_limit lowered evicts at once
cat "$mnt"/experts/*/* >/dev/null
used=$(xa "$mnt" user.k2.cache_used)
ev0=$("$client" getx "$mnt" user.k2.stats | sed 's/.*"evictions":\([0-9]*\).*/\1/')
size=$(stat -c %s "$ex")
setfattr -n user.k2.cache_limit -v $((2 * size)) "$mnt"
used_after=$(xa "$mnt" user.k2.cache_used)
ev1=$("$client" getx "$mnt" user.k2.stats | sed 's/.*"evictions":\([0-9]*\).*/\1/')
if [ "$used" -gt $((2 * size)) ] && [ "$used_after" -le $((2 * size)) ] && [ "$ev1" -gt "$ev0" ]; then
	ok "cache_limit lowered to 2 experts: cache_used $used → $used_after at once, evictions $ev0 → $ev1"
else
	fail "cache_limit lowered: cache_used $used → $used_after (limit $((2 * size))), evictions $ev0 → $ev1"
fi
expect "cache_limit reads back" "$(xa "$mnt" user.k2.cache_limit)" "$((2 * size))"
setfattr -n user.k2.cache_limit -v 64M "$mnt"
expect "cache_limit with a suffix" "$(xa "$mnt" user.k2.cache_limit)" "67108864"
"$client" getx "$mnt" user.k2.stats | grep -q '"errors":0' && ok "stats: no errors" || fail "stats: $("$client" getx "$mnt" user.k2.stats)"

# ---------------------------------------------------------------- clean unmounts
kill -TERM "$pid_bf16"
wait "$pid_bf16"
rc=$?
if [ $rc -eq 0 ] && ! mountpoint -q "$T/mnt_bf16"; then ok "SIGTERM: exit 0, unmounted"
else fail "SIGTERM: exit $rc, still mounted: $(mountpoint "$T/mnt_bf16")"; fi
fusermount3 -u "$T/mnt_fp8"
wait "$pid_fp8"
rc=$?
if [ $rc -eq 0 ] && ! mountpoint -q "$T/mnt_fp8"; then ok "fusermount3 -u: k2fs exits 0"
else fail "fusermount3 -u: exit $rc"; fi
for kind in bf16 fp8; do
	if [ -s "$T/$kind.log" ]; then
		fail "k2fs ($kind) logged:"; cat "$T/$kind.log"
	fi
done

if [ $fails -ne 0 ]; then
	echo "it_k2fs: $fails failures"
	exit 1
fi
echo "it_k2fs: all passed"
exit 0
