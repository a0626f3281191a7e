#!/bin/sh
# tools/gpu-bundle.sh — builds, on this machine, everything tools/gpu-check.sh
# runs on a lent GPU machine, into the git-ignored folder .gpu/ that travels
# with the working tree (run's `carry: [".gpu"]`):
#
#   .gpu/bin/       k2fs infer k2pack k2gen k2inspect fusermount3
#                   prog_gpu_kernels prog_gpu_cmp prog_infer_cmp
#   .gpu/lib/       shared objects the GPU machine lacks (none by default: see below)
#   .gpu/MANIFEST   what was built, from which commit, sizes
#
# The fixtures are not copied: tests/fixtures/ is part of the working tree and
# travels with it.
#
# The GPU machine (Ubuntu 24.04, CUDA 13.0, gcc, make) has no libfuse3, liburing,
# jansson or Check and no network, so the programs are linked here with fuse3,
# liburing, jansson, zstd, lz4, xxhash and pcre2 static, and the CUDA runtime
# static (libcudart_static); only glibc, libstdc++ and cuBLAS (libcublas.so.13,
# found on the GPU machine by gpu-check.sh) stay shared. The kernels are built
# for sm_80 and sm_90 by the Makefile (nvcc must be here).
#
#   sh tools/gpu-bundle.sh          (fails when the working tree plus .gpu/
#                                    pass 60 MiB)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
out=.gpu
cuda=${CUDA_HOME:-/usr/local/cuda}
[ -x "$cuda/bin/nvcc" ] || { echo "gpu-bundle: no nvcc at $cuda/bin (set CUDA_HOME)"; exit 1; }
[ -f "$cuda/lib64/libcudart_static.a" ] || { echo "gpu-bundle: no libcudart_static.a in $cuda/lib64"; exit 1; }

echo "gpu-bundle: building the libraries (make; the CUDA kernels take minutes on 2 cores)"
make -j2 build/libtools.a build/libinfer.a build/libk2fs.a build/libkernels.a build/libcli.a build/liblayout.a
ar t build/libkernels.a | grep -q '\.cu\.o$' || {
	echo "gpu-bundle: build/libkernels.a has no CUDA objects (was it built with NVCC= ?)"; exit 1; }

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/obj"
pkgs="fuse3 liburing libzstd liblz4 libxxhash libpcre2-8 jansson"
cflags="-std=gnu11 -O2 -g -pthread -fno-strict-aliasing -D_FILE_OFFSET_BITS=64 -DK2_HAVE_CUDA=1 \
	-Ilayout -Ikernels -Iinfer -Ik2fs -Icli -Itools/lib $(pkg-config --cflags $pkgs)"
static="-Wl,-Bstatic -lfuse3 -luring -ljansson -lzstd -llz4 -lxxhash -lpcre2-8 -Wl,-Bdynamic"
cudalibs="-L$cuda/lib64 -Wl,-rpath,/usr/local/cuda/lib64 -Wl,--as-needed -lcublas -Wl,--no-as-needed -lcudart_static -lstdc++"
libs="build/libtools.a build/libinfer.a build/libk2fs.a build/libkernels.a build/libcli.a build/liblayout.a"

# name:main source
progs="k2fs:k2fs/main.c infer:infer/main.c k2pack:tools/k2pack.c k2gen:tools/k2gen.c
	k2inspect:tools/k2inspect.c prog_gpu_kernels:tests/prog_gpu_kernels.c
	prog_gpu_cmp:tests/prog_gpu_cmp.c prog_infer_cmp:tests/prog_infer_cmp.c"
for p in $progs; do
	name=${p%%:*}
	src=${p#*:}
	if [ ! -f "$src" ]; then
		echo "gpu-bundle: $src missing: $name not bundled"
		continue
	fi
	cc $cflags -c "$src" -o "$out/obj/$name.o"
	cc -o "$out/bin/$name" "$out/obj/$name.o" $libs $static $cudalibs -lm -pthread -ldl -lrt
	strip --strip-debug "$out/bin/$name"
done
rm -rf "$out/obj"
cp /usr/bin/fusermount3 "$out/bin/" 2>/dev/null || echo "gpu-bundle: no fusermount3 here (root mounts need none)"

# shared objects the binaries need besides glibc, libstdc++, libgcc and cuBLAS
for b in "$out"/bin/*; do
	ldd "$b" 2>/dev/null | awk '/=>/ {print $1, $3}'
done | sort -u | while read -r soname path; do
	case $soname in
	libc.so.*|libm.so.*|libdl.so.*|librt.so.*|libpthread.so.*|libstdc++.so.*|libgcc_s.so.*|\
	ld-linux*|linux-vdso*|libcublas.so.*|libcublasLt.so.*) ;;
	*) echo "gpu-bundle: copying $soname ($path): not static"; cp -L "$path" "$out/lib/" ;;
	esac
done

chmod -R u+w "$out"

{
	echo "built $(date -u +%FT%TZ) on $(hostname) from $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+dirty')"
	echo "nvcc: $("$cuda/bin/nvcc" --version | tail -1)"
	(cd "$out" && find . -type f | sort | xargs ls -l | awk '{print $5, $9}')
} > "$out/MANIFEST"
size=$(du -sm "$out" | cut -f1)
# the working tree that travels beside .gpu: tracked and untracked, not ignored
tree=$(git ls-files -co --exclude-standard -z | xargs -0 cat 2>/dev/null | wc -c)
tree=$(( (tree + 1048575) / 1048576 ))
echo "gpu-bundle: $out is ${size} MiB, the working tree ${tree} MiB"
cat "$out/MANIFEST" | head -20
if [ $((size + tree)) -gt 60 ]; then
	echo "gpu-bundle: more than 60 MiB: the working tree plus .gpu must stay under 64 MiB"
	exit 1
fi
