#!/bin/sh
# tests/cuemu/run.sh — builds the CUDA backend (kernels/*.cu) for the CPU with
# the SIMT emulator of tests/cuemu and runs tests/prog_gpu_kernels against it:
# the same checks against the plain C references that tools/gpu-check.sh runs on
# a GPU, without one. Speed figures mean nothing here, so the benchmarks are off.
#
#   sh tests/cuemu/run.sh [prog_gpu_kernels options]   (default: --quick --no-bench)
#
# CUEMU_SRC=DIR takes the .cu files (and cuda_common.cuh) from DIR instead of
# kernels/ (to check that the checks catch a planted bug).
#
# Needs: g++, perl, the CUDA headers (CUDA_HOME, default /usr/local/cuda), and
# `make build/libkernels.a build/liblayout.a` done (it runs that). Work files go
# to build/cuemu. Exit status: that of prog_gpu_kernels (77 when the CUDA headers
# are missing).
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
cuda=${CUDA_HOME:-/usr/local/cuda}
if [ ! -f "$cuda/include/cuda_runtime.h" ]; then
	echo "cuemu: no CUDA headers at $cuda/include (set CUDA_HOME): skipped"
	exit 77
fi
out=build/cuemu
mkdir -p "$out"
make -s build/libkernels.a build/liblayout.a

pkgs="fuse3 liburing libzstd liblz4 libxxhash libpcre2-8 jansson"
objs=""
src=${CUEMU_SRC:-kernels}
for cu in "$src"/*.cu; do
	name=$(basename "$cu" .cu)
	# kernel launches k<<<g, b, s, st>>>(args) -> cuemu::launch([&] { k(args); }, g, b, s, st);
	# extern __shared__ T name[]; -> T *name = (T *)cuemu::dyn_smem();
	perl -0777 -pe '
		s/extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\]\s*;/$1 *$2 = ($1 *)cuemu::dyn_smem();/g;
		s/(\w+(?:<[^<>;()]*>)?)<<<(.*?)>>>\s*(\((?:[^()]++|(?3))*\))/cuemu::launch([&] { $1$3; }, $2)/gs;
	' "$cu" > "$out/$name.cc"
	g++ -std=c++17 -O1 -g -Wall -Wno-unused-function -Wno-unknown-pragmas -include tests/cuemu/cuemu.h \
		-I"$cuda/include" -Itests/cuemu -I"$src" -Ilayout -Ikernels -c "$out/$name.cc" -o "$out/$name.o"
	objs="$objs $out/$name.o"
done
g++ -std=c++17 -O1 -g -Wall -I"$cuda/include" -c tests/cuemu/cuemu.cc -o "$out/cuemu_rt.o"
cc -std=gnu11 -O2 -g -Wall -Wextra -pthread -D_FILE_OFFSET_BITS=64 -DK2_HAVE_CUDA=1 \
	-Ilayout -Ikernels $(pkg-config --cflags $pkgs) \
	-c tests/prog_gpu_kernels.c -o "$out/prog_gpu_kernels.o"
g++ -o "$out/prog_gpu_kernels" "$out/prog_gpu_kernels.o" $objs "$out/cuemu_rt.o" \
	build/libkernels.a build/liblayout.a $(pkg-config --libs $pkgs) -lm -pthread
[ $# -gt 0 ] || set -- --quick --no-bench
exec "$out/prog_gpu_kernels" "$@"
