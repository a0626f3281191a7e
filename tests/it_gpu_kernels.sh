#!/bin/sh
# it_gpu_kernels.sh — the CUDA backend's checks in `make test`: every CUDA
# kernel against its plain C reference on fresh random inputs, with outputs
# poisoned first (tests/prog_gpu_kernels --quick, no benchmarks). Exits 77
# (skipped) where there is no GPU or the build has no CUDA; the full run with
# the benchmarks is tools/gpu-check.sh.
set -u
here=$(cd "$(dirname "$0")" && pwd)
progs=${K2_TESTPROGS:-$here/../build/tests/prog}
p=$progs/prog_gpu_kernels
[ -x "$p" ] || { echo "it_gpu_kernels: FAIL: $p not built"; exit 1; }
"$p" --quick --no-bench > /tmp/it_gpu_kernels.$$.log 2>&1
rc=$?
if [ $rc -eq 77 ]; then
	echo "it_gpu_kernels: skipped: $(tail -1 /tmp/it_gpu_kernels.$$.log)"
	rm -f /tmp/it_gpu_kernels.$$.log
	exit 77
fi
grep -E 'FAIL|^@@ kernel checks' /tmp/it_gpu_kernels.$$.log
tail -1 /tmp/it_gpu_kernels.$$.log
rm -f /tmp/it_gpu_kernels.$$.log
[ $rc -eq 0 ] && echo "it_gpu_kernels: ok" || echo "it_gpu_kernels: FAIL (exit $rc)"
exit $rc
