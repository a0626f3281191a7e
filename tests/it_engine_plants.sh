#!/bin/sh
# it_engine_plants.sh — the checks of the shared engine can fail: bugs planted
# one at a time into copies of infer/ files, each linked into the Check suite
# test_infer_model in place of the real file, must make that suite fail.
#
#   moe-order    the MoE layer looks up each expert's place again in every
#                pass instead of once (the race of c0e05fd: an expert loading
#                in one pass and landed in the next is left out); caught by
#                device_tier_matches_cpu, whose script backend lands loads
#                between two looks, deterministically.
#
# Exit 77 when the build folder lacks the suite's object (make test builds it).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$here/..
tests=${K2_TESTS:-$root/build/tests}
build=$(dirname "$tests")
fx=${K2_FIXTURES:-$here/fixtures}
obj=$build/obj/tests/test_infer_model.o
if [ ! -f "$obj" ] || [ ! -f "$build/libinfer.a" ]; then
	echo "it_engine_plants: skipped: $obj not built (run make test)"
	exit 77
fi
work=$(mktemp -d /tmp/it_engine_plants.XXXXXX)
trap 'rm -rf "$work"' EXIT
fails=0
fail() { echo "it_engine_plants: FAIL: $*"; fails=$((fails + 1)); }

pkgs="check fuse3 liburing libzstd liblz4 libxxhash libpcre2-8 jansson"
libs="$(pkg-config --libs $pkgs) -lm -pthread"
# a build with the CUDA backend links its runtime too
if nm "$build/libkernels.a" 2>/dev/null | grep -q ' T kcu_ctx_create$'; then
	cuda=${CUDA_HOME:-/usr/local/cuda}
	libs="$libs -L$cuda/lib64 -Wl,-rpath,$cuda/lib64 -lcublas -lcudart -lstdc++"
fi
cflags="-std=gnu11 -O2 -g -pthread -D_FILE_OFFSET_BITS=64 -I$root/layout -I$root/kernels -I$root/infer \
	$(pkg-config --cflags jansson libpcre2-8)"

# plant NAME FILE PERL: applies the substitution PERL to infer/FILE, links the
# suite against it and expects device_tier_matches_cpu to fail.
plant() {
	name=$1 file=$2 expr=$3
	perl -0pe "$expr" "$root/infer/$file" >"$work/$file"
	if cmp -s "$root/infer/$file" "$work/$file"; then
		fail "plant $name no longer applies to infer/$file (update it_engine_plants.sh)"
		return
	fi
	# shellcheck disable=SC2086
	if ! cc $cflags -c "$work/$file" -o "$work/$name.o" >"$work/$name.log" 2>&1 ||
	   ! cc -o "$work/$name" "$obj" "$work/$name.o" "$build/libinfer.a" "$build/libkernels.a" \
		"$build/libcli.a" "$build/liblayout.a" $libs >>"$work/$name.log" 2>&1; then
		fail "plant $name does not build: $(tail -3 "$work/$name.log")"
		return
	fi
	out=$(CK_FORK=yes K2_FIXTURES=$fx "$work/$name" 2>&1)
	case "$out" in
	*device_tier_matches_cpu*)
		echo "   plant $name: caught ($(echo "$out" | grep -o 'device_tier_matches_cpu:[^(]*' | head -1))" ;;
	*) fail "plant $name: the suite did not notice: $(echo "$out" | tail -2)" ;;
	esac
}

echo "== planted bugs in the shared engine (each must fail test_infer_model):"
plant moe-order moe.c \
	's/const uint8_t st = e->state\[x\];/const uint8_t st = (uint8_t)inf_experts_state(e->experts, e->tier, layer, x);/'

if [ $fails -ne 0 ]; then
	echo "it_engine_plants: $fails failure(s)"
	exit 1
fi
echo "it_engine_plants: all caught"
