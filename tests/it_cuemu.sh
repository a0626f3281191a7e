#!/bin/sh
# it_cuemu.sh — the CUDA backend's kernel checks where no GPU is, on the CPU
# SIMT emulator of tests/cuemu (whose streams run late, as a GPU's may):
#   1. every check of tests/prog_gpu_kernels (each CUDA kernel against its
#      plain C reference, outputs poisoned; the expert cache's loads), then
#      again with the blocks of each launch in reverse and copies early;
#   2. the fp8 products again through the sm_89+ conversion branch;
#   3. ordering bugs planted one at a time into a copy of kernels/cuda_cache.cu
#      must each make the expert and cache checks fail — so those checks can
#      fail, and the emulator's streams really are asynchronous:
#        used     the copy into a slot does not wait for the kernels still
#                 reading it (kcu_cache_end_use's event)
#        ready    the compute stream does not wait for the slot's copy
#        staging  a staging buffer is refilled before its last copy ran
#        record   the slot's `ready` event is recorded on the compute stream
#
# Exit 77 (skipped) when the CUDA headers are missing or the libraries were
# built without the CUDA backend (make asan).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$here/..
build=$root/build
[ -n "${K2_TESTS:-}" ] && build=$(dirname "$K2_TESTS")
work=$(mktemp -d /tmp/it_cuemu.XXXXXX)
trap 'rm -rf "$work"' EXIT
fails=0
fail() { echo "it_cuemu: FAIL: $*"; fails=$((fails + 1)); }

cd "$root" || exit 1
rc=0
CUEMU_BUILD=$build sh tests/cuemu/build.sh > "$work/build.log" 2>&1 || rc=$?
if [ $rc -eq 77 ]; then
	echo "it_cuemu: skipped: $(tail -1 "$work/build.log")"
	exit 77
elif [ $rc -ne 0 ]; then
	cat "$work/build.log"
	echo "it_cuemu: FAIL: tests/cuemu/build.sh"
	exit 1
fi
emu=$build/cuemu

# 1. every kernel check
if "$emu/prog_gpu_kernels" --quick --no-bench > "$work/checks.log" 2>&1; then
	echo "it_cuemu: ok: $(grep '^@@ kernel checks' "$work/checks.log" | cut -d'|' -f1-2 | cut -c4-)"
else
	grep -E 'FAIL|^@@' "$work/checks.log"
	tail -3 "$work/checks.log"
	fail "prog_gpu_kernels on the emulator"
fi

# and again with the other orders: blocks last first (a block reading what
# another block of its launch writes), copies at once with kernels late
if CUEMU_BLOCKS=reverse CUEMU_ORDER=copies-early "$emu/prog_gpu_kernels" --quick --no-bench \
	> "$work/checks2.log" 2>&1; then
	echo "it_cuemu: ok: the same, blocks in reverse, copies early"
else
	grep -E 'FAIL|^@@' "$work/checks2.log"
	fail "prog_gpu_kernels on the emulator, blocks in reverse, copies early"
fi

# 2. the sm_89+ branch of the fp8 conversion (the one an H100/H200 runs), through
# the host version of the same intrinsic
d=$work/fp8cvt
mkdir -p "$d"
if CUEMU_CFLAGS=-DK2_CUEMU_FP8_CVT CUEMU_BUILD=$build CUEMU_OUT="$d" sh tests/cuemu/build.sh \
	> "$d/build.log" 2>&1 &&
   "$d/prog_gpu_kernels" --quick --no-bench --only matmul,expert > "$d/run.log" 2>&1; then
	echo "it_cuemu: ok: sm_89+ fp8 conversion: $(grep -c 'fp8.* ok$' "$d/run.log") fp8 families pass"
else
	grep -E 'FAIL' "$d/run.log" "$d/build.log" | head -5
	fail "the sm_89+ fp8 conversion branch"
fi

# 3. planted ordering bugs: NAME PERL-SUBSTITUTION (applied to cuda_cache.cu)
plant() {
	name=$1 subst=$2
	d=$work/$name
	mkdir -p "$d/src" "$d/out"
	cp kernels/*.cu kernels/*.cuh "$d/src/"
	# the unplanted objects, so that only cuda_cache.cu is compiled again
	cp "$emu"/*.o "$emu"/*.cc.built "$d/out/" 2>/dev/null
	perl -0pi -e "$subst" "$d/src/cuda_cache.cu"
	if cmp -s kernels/cuda_cache.cu "$d/src/cuda_cache.cu"; then
		fail "plant $name no longer applies to kernels/cuda_cache.cu (update it_cuemu.sh)"
		return
	fi
	if ! CUEMU_SRC="$d/src" CUEMU_BUILD=$build CUEMU_OUT="$d/out" sh tests/cuemu/build.sh \
		> "$d/build.log" 2>&1; then
		cat "$d/build.log"
		fail "plant $name does not build"
		return
	fi
	"$d/out/prog_gpu_kernels" --quick --no-bench --only expert,cache > "$d/run.log" 2>&1
	rc=$?
	case $rc in
	0) fail "plant $name: every expert and cache check passed" ;;
	1) echo "it_cuemu: ok: plant $name caught: $(grep -m1 '^@@ check' "$d/run.log" |
		cut -d'|' -f1-2 | cut -c4-)" ;;
	*) echo "it_cuemu: ok: plant $name caught: exit $rc ($(tail -1 "$d/run.log" | cut -c1-80))" ;;
	esac
}
plant used 's/e = cudaEventSynchronize\(s->used\);/e = cudaSuccess;/'
plant ready 's/cudaStreamWaitEvent\(c->ctx->stream, c->slots\[slot\]\.ready, 0\)/cudaSuccess/'
plant staging 's/cudaEventSynchronize\(b->copied\);/(void)b;/'
plant record 's/cudaEventRecord\(s->ready, c->copy\)/cudaEventRecord(s->ready, c->ctx->stream)/'

if [ $fails -eq 0 ]; then
	echo "it_cuemu: all passed"
	exit 0
fi
echo "it_cuemu: $fails failure(s)"
exit 1
