#!/bin/sh
# tests/cuemu/build.sh — builds the CUDA backend (kernels/*.cu) for the CPU
# with the SIMT emulator of tests/cuemu, and links against it the programs that
# use the backend: build/cuemu/prog_gpu_kernels (the kernel checks) and
# build/cuemu/infer (the whole engine, so `--backend cuda` runs end to end on a
# machine without a GPU, slowly: speed figures mean nothing here).
#
#   sh tests/cuemu/build.sh            (run.sh and tests/it_infer_cuemu.sh call it)
#
# CUEMU_SRC=DIR takes the .cu files (and cuda_common.cuh) from DIR instead of
# kernels/ (to check that the checks catch a planted bug).
#
# Needs: g++, perl, the CUDA headers (CUDA_HOME, default /usr/local/cuda), and
# the libraries of `make` (it runs that). Work files go to build/cuemu. Exit
# status 77 when the CUDA headers are missing or the libraries were built
# without the CUDA backend, 1 when a step fails.
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
cuda=${CUDA_HOME:-/usr/local/cuda}
if [ ! -f "$cuda/include/cuda_runtime.h" ]; then
	echo "cuemu: no CUDA headers at $cuda/include (set CUDA_HOME): skipped"
	exit 77
fi
# CUEMU_LDFLAGS: extra link flags (-fsanitize=address,undefined for a
# sanitizer build made with SAN="… -DK2_HAVE_CUDA=1" NVCC=).
# CUEMU_BUILD=DIR: link the libraries of that build folder (as built, without
# running make: tests/run.sh passes its own); default: build/, made here.
b=${CUEMU_BUILD:-build}
if [ -z "${CUEMU_BUILD:-}" ]; then
	make -s build/libkernels.a build/liblayout.a build/libinfer.a build/libcli.a \
		build/obj/infer/main.o
fi
if ! nm "$b/libkernels.a" 2>/dev/null | grep -q ' U kcu_ctx_create$'; then
	echo "cuemu: $b/libkernels.a was built without the CUDA backend (NVCC=, e.g. make asan): skipped"
	exit 77
fi
# CUEMU_OUT=DIR: where the objects and programs go (default: $b/cuemu).
# CUEMU_CFLAGS: extra flags for the emulated .cu files and runtime.cc (-DK2_CUEMU_FP8_CVT: the
# sm_89+ fp8 conversion branch); give such a build its own CUEMU_OUT.
out=${CUEMU_OUT:-$b/cuemu}
mkdir -p "$out"

pkgs="fuse3 liburing libzstd liblz4 libxxhash libpcre2-8 jansson"
objs=""
src=${CUEMU_SRC:-kernels}
for cu in "$src"/*.cu; do
	name=$(basename "$cu" .cu)
	# kernel launches k<<<g, b, s, st>>>(args) -> cuemu::launch([=] { k(args); }, g, b, s, st);
	# extern __shared__ T name[]; -> T *name = (T *)cuemu::dyn_smem();
	perl -0777 -pe '
		s/extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\]\s*;/$1 *$2 = ($1 *)cuemu::dyn_smem();/g;
		s/(\w+(?:<[^<>;()]*>)?)<<<(.*?)>>>\s*(\((?:[^()]++|(?3))*\))/cuemu::launch([=] { $1$3; }, $2)/gs;
	' "$cu" > "$out/$name.cc"
	# rebuild only what changed (the .cc is rewritten each time; compare it)
	if [ ! -f "$out/$name.o" ] || ! cmp -s "$out/$name.cc" "$out/$name.cc.built" ||
	   [ tests/cuemu/cuemu.h -nt "$out/$name.o" ] || [ "$src/cuda_common.cuh" -nt "$out/$name.o" ] ||
	   [ kernels/backend_cuda.h -nt "$out/$name.o" ]; then
		# shellcheck disable=SC2086
		g++ -std=c++17 -O1 -g -Wall -Wno-unused-function -Wno-unknown-pragmas ${CUEMU_CFLAGS:-} \
			-include tests/cuemu/cuemu.h \
			-I"$cuda/include" -Itests/cuemu -I"$src" -Ilayout -Ikernels -c "$out/$name.cc" -o "$out/$name.o"
		cp "$out/$name.cc" "$out/$name.cc.built"
	fi
	objs="$objs $out/$name.o"
done
# the coroutine scheduler takes ThreadSanitizer's flags alone (it tells TSan
# of its fibers); ASan stays out of its stack switches
simt_flags=""
case "${CUEMU_CFLAGS:-}" in *-fsanitize=thread*) simt_flags=-fsanitize=thread ;; esac
g++ -std=c++17 -O1 -g -Wall $simt_flags -I"$cuda/include" -c tests/cuemu/cuemu.cc -o "$out/cuemu_simt.o"
# shellcheck disable=SC2086
g++ -std=c++17 -O1 -g -Wall ${CUEMU_CFLAGS:-} -I"$cuda/include" -c tests/cuemu/runtime.cc -o "$out/cuemu_runtime.o"
rt="$out/cuemu_simt.o $out/cuemu_runtime.o"
cc -std=gnu11 -O2 -g -Wall -Wextra -pthread -D_FILE_OFFSET_BITS=64 -DK2_HAVE_CUDA=1 \
	-Ilayout -Ikernels $(pkg-config --cflags $pkgs) \
	-c tests/prog_gpu_kernels.c -o "$out/prog_gpu_kernels.o"
libs="$(pkg-config --libs $pkgs) -lm -pthread ${CUEMU_LDFLAGS:-}"
g++ -o "$out/prog_gpu_kernels" "$out/prog_gpu_kernels.o" $objs $rt \
	"$b/libkernels.a" "$b/liblayout.a" $libs
# infer's objects were built with -DK2_HAVE_CUDA=1 where nvcc exists (here and in
# CI); the emulated objects come first, so libkernels.a's CUDA members are unused.
# CUEMU_INFER_OBJS: objects linked ahead of libinfer.a, replacing its members of
# the same name (a test's planted copy of one engine file).
# shellcheck disable=SC2086
g++ -o "$out/infer" "$b/obj/infer/main.o" ${CUEMU_INFER_OBJS:-} "$b/libinfer.a" "$b/libcli.a" $objs \
	$rt "$b/libkernels.a" "$b/liblayout.a" $libs
