#!/bin/sh
# tests/cuemu/sanitize.sh — the run half of `make cuemu-asan` and
# `make cuemu-tsan` (the Makefile builds first): with the emulator programs of
# build folder B linked under a sanitizer by tests/cuemu/build.sh, runs
#   1. the kernel checks, B/cuemu/prog_gpu_kernels --quick --no-bench: every
#      one under ASan (each CUDA kernel against its plain C reference, the
#      expert cache's loads); under TSan only the expert and cache checks,
#      the ones with host threads of their own (the cache's I/O threads): the
#      rest run launches on one thread and take 9 more minutes under TSan
#      (CUEMU_SAN_CHECKS="" runs every check, CUEMU_SAN_CHECKS=a,b those);
#   2. B/cuemu/infer --backend cuda on the bf16 fixture laid out as a plain
#      directory (B/bin/k2pack, then B/bin/k2inspect --extract of every entry:
#      no FUSE mount needed) with a 3-expert cache and router prefetch, and
#      again with --cpu-experts; both must give --backend cpu's tokens.
#
#   sh tests/cuemu/sanitize.sh B asan|tsan
#
# A sanitizer report ends the program that made it with a non-zero status
# (ASan, UBSan built with -fno-sanitize-recover, LSan, TSan at exit), so this
# script exits 1 on any report, 0 when everything ran clean. LeakSanitizer
# ignores what the emulator keeps until exit by design: its coroutine stacks
# and the records of destroyed streams (tests/cuemu/lsan.supp).
set -u
b=${1:?usage: sanitize.sh BUILD asan|tsan}
san=${2:?usage: sanitize.sh BUILD asan|tsan}
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here" || exit 1
emu=$b/cuemu
fx=${K2_FIXTURES:-tests/fixtures}/k2-tiny-bf16
work=$(mktemp -d /tmp/cuemu-sanitize.XXXXXX)
trap 'rm -rf "$work"' EXIT
export LSAN_OPTIONS="suppressions=$here/tests/cuemu/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export TSAN_OPTIONS="halt_on_error=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
fails=0
fail() { echo "cuemu-$san: FAIL: $*"; fails=$((fails + 1)); }
for p in "$emu/prog_gpu_kernels" "$emu/infer" "$b/bin/k2pack" "$b/bin/k2inspect"; do
	[ -x "$p" ] || { echo "cuemu-$san: FAIL: $p not built"; exit 1; }
done

# 1. the kernel checks
only=
[ "$san" = tsan ] && only=expert,cache
only=${CUEMU_SAN_CHECKS-$only}
t0=$(date +%s)
if "$emu/prog_gpu_kernels" --quick --no-bench ${only:+--only "$only"} >"$work/checks.log" 2>&1; then
	echo "cuemu-$san: ok: $(grep '^@@ kernel checks' "$work/checks.log" | cut -d'|' -f1-2 |
		cut -c4- | sed 's/ *$//') ($(($(date +%s) - t0)) s)"
else
	grep -E 'FAIL|^@@|Sanitizer|runtime error' "$work/checks.log" | head -20
	tail -5 "$work/checks.log"
	fail "prog_gpu_kernels"
fi

# 2. infer --backend cuda through a plain directory laid out like the mount
m=$work/model
if "$b/bin/k2pack" "$fx/model" "$work/m.k2" >"$work/pack.log" 2>&1 &&
   "$b/bin/k2inspect" "$work/m.k2" --list >"$work/list" 2>>"$work/pack.log"; then
	n=0
	for e in $(awk '$2 == "file" || $2 == "dense" || $2 == "expert" { print $1 }' "$work/list"); do
		mkdir -p "$m/$(dirname "$e")"
		"$b/bin/k2inspect" "$work/m.k2" --extract "$e" "$m/$e" 2>>"$work/pack.log" ||
			{ fail "k2inspect --extract $e: $(tail -1 "$work/pack.log")"; break; }
		n=$((n + 1))
	done
	echo "cuemu-$san: ok: bf16 fixture laid out as a plain directory ($n entries)"
else
	fail "k2pack / k2inspect of the bf16 fixture: $(tail -3 "$work/pack.log")"
fi
run() {
	out=$1
	shift
	t0=$(date +%s)
	if "$emu/infer" --model "$m" --tokens 1,5,9,13,17 -n 6 --ignore-eos --threads 2 "$@" \
		>"$work/$out.ids" 2>"$work/$out.err"; then
		echo "cuemu-$san: ok: infer $* -> $(cat "$work/$out.ids") ($(($(date +%s) - t0)) s)"
	else
		grep -E 'Sanitizer|runtime error|#[0-9] ' "$work/$out.err" | head -20
		tail -3 "$work/$out.err"
		fail "infer $*"
	fi
}
if [ -d "$m/experts" ]; then
	run cpu --backend cpu
	run cuda --backend cuda --expert-cache 3experts --prefetch router
	run cpux --backend cuda --expert-cache 3experts --prefetch router --cpu-experts
	for r in cuda cpux; do
		[ -s "$work/$r.ids" ] && cmp -s "$work/cpu.ids" "$work/$r.ids" ||
			fail "infer $r: tokens differ from --backend cpu's"
	done
fi

if [ $fails -ne 0 ]; then
	echo "cuemu-$san: $fails failure(s)"
	exit 1
fi
echo "cuemu-$san: all clean"
