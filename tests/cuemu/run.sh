#!/bin/sh
# tests/cuemu/run.sh — runs tests/prog_gpu_kernels against the CUDA backend
# built for the CPU with the SIMT emulator (tests/cuemu/build.sh): the same
# checks against the plain C references that tools/gpu-check.sh runs on a GPU,
# without one. Speed figures mean nothing here, so the benchmarks are off.
#
#   sh tests/cuemu/run.sh [prog_gpu_kernels options]   (default: --quick --no-bench)
#
# CUEMU_SRC=DIR: see build.sh. Exit status: that of prog_gpu_kernels (77 when
# the CUDA headers are missing).
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
rc=0
sh tests/cuemu/build.sh || rc=$?
[ $rc -eq 0 ] || exit $rc
[ $# -gt 0 ] || set -- --quick --no-bench
exec "${CUEMU_BUILD:-build}/cuemu/prog_gpu_kernels" "$@"
