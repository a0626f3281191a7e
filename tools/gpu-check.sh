#!/bin/sh
# tools/gpu-check.sh LOGDIR — the GPU acceptance of issue 5 in one command, on a
# GPU machine, in under 5 minutes; prints one table at the end.
#
# Build here first (this machine has nvcc but no GPU): sh tools/gpu-bundle.sh
# puts the binaries (fuse3, liburing … linked static) in .gpu/, which travels
# with the working tree: run(command="sh tools/gpu-check.sh $OUT/gpu",
# carry=[".gpu"], timeout_s=360). Without .gpu/ the script uses bin/ and
# build/tests/prog/ of this checkout. The fixtures are read from
# $K2_FIXTURES, else tests/fixtures/ of the working tree.
#
# Steps (each under `timeout`, all within K2_GPU_BUDGET seconds, default 285):
#   0. the machine: nvidia-smi, kernel, where libcublas.so.13 is
#   1. prog_gpu_kernels: every CUDA kernel against its plain C reference (fresh
#      random inputs, poisoned outputs); then, in a second process, the expert
#      kernel bandwidth at Kimi-K2 dims per format against a device copy and
#      the upload pipeline against the pinned host-to-device ceiling
#   2. k2fs: pack the bf16 and fp8 fixtures (k2pack), mount them (k2fs, FUSE)
#   3. infer --backend cuda through the mount: prompt logits and 16 greedy
#      steps against the reference (prog_gpu_cmp: relative error < 2e-2, first
#      8 ids equal); again with --expert-cache 4experts: identical to the full
#      cache (prog_gpu_cmp --identical)
#   4. decode tokens/s on a `k2gen --preset k2` model (int4 experts; layers,
#      experts, vocabulary cut to fit: K2_BENCH_LAYERS, K2_BENCH_EXPERTS,
#      K2_BENCH_VOCAB) with the expert cache at 10% of its experts, prefetch
#      none and router, with and without --cpu-experts (and the CPU backend)
#   5. tests/it_infer_cuda.sh against this engine, if time is left
# A step whose program or flag is not there yet (infer without --backend cuda,
# no /dev/fuse) is skipped with a line saying why. K2_GPU_BACKEND=cpu runs the
# infer steps with --backend cpu instead (to try this script where no GPU is).
#
# LOGDIR gets three files (the device tool returns at most 8): summary.txt (the
# table), gpu-check.log (all output), logs.tar.gz (one log per step, the infer
# dumps' comparisons and --stats lines). Exit status: 0 when no row FAILs,
# 1 otherwise, 2 on bad usage.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 1 ] || { echo "usage: tools/gpu-check.sh LOGDIR"; exit 2; }
logdir=$1
mkdir -p "$logdir" || exit 2
logdir=$(cd "$logdir" && pwd)
budget=${K2_GPU_BUDGET:-285}
t0=$(date +%s)
work=${K2_GPU_WORK:-/tmp/k2-gpu-check}
# a run killed before its cleanup (a rerun on a warm machine) left its mounts,
# maybe with their daemon gone (mountpoint(1) then fails: read /proc/mounts)
awk -v w="$work/mnt/" 'index($2, w) == 1 { print $2 }' /proc/mounts 2>/dev/null |
	while read -r m; do umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null; done
rm -rf "$work"
mkdir -p "$work/logs" "$work/mnt" || exit 2
results=$work/results.txt
mainlog=$logdir/gpu-check.log
: > "$results"
: > "$mainlog"

g=$here/.gpu
if [ -d "$g/bin" ]; then
	bin=$g/bin
	prog=$g/bin
else
	bin=$here/bin
	prog=$here/build/tests/prog
fi
fixtures=${K2_FIXTURES:-$here/tests/fixtures}
export PATH="$bin:$PATH"
export LD_LIBRARY_PATH="$g/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

say() { echo "$*" | tee -a "$mainlog"; }
row() { printf '@@ %s | %s | %s | %s\n' "$1" "$2" "$3" "$4" >> "$results"; }
left() { echo $((budget - ($(date +%s) - t0))); }
# run LIMIT NAME CMD...: runs CMD under timeout (LIMIT, or what is left of the
# budget), output to logs/NAME.log and the main log; copies its @@ rows.
run() {
	lim=$1 name=$2
	shift 2
	l=$(left)
	[ "$lim" -gt $((l - 5)) ] && lim=$((l - 5))
	if [ "$lim" -le 0 ]; then
		say "== $name: skipped, the time budget is spent"
		row "$name" "not run: out of time" "-" "SKIP"
		return 124
	fi
	say "== $name ($*), limit ${lim}s"
	timeout -k 5 "$lim" "$@" > "$work/logs/$name.log" 2>&1
	rc=$?
	cat "$work/logs/$name.log" >> "$mainlog"
	grep '^@@ ' "$work/logs/$name.log" >> "$results"
	[ $rc -eq 124 ] || [ $rc -eq 137 ] && say "   $name: timed out after ${lim}s"
	say "   $name: exit $rc, $(($(date +%s) - t0))s elapsed"
	return $rc
}

pids=""
mounts=""
cleanup() {
	for m in $mounts; do
		mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; }
	done
	for p in $pids; do kill "$p" 2>/dev/null; done
	for p in $pids; do wait "$p" 2>/dev/null; done
	pids=""
	mounts=""
}
trap cleanup EXIT INT TERM

# mount PACK DIR: starts k2fs in the background; 0 when mounted.
mount_pack() {
	mkdir -p "$2"
	"$bin/k2fs" "$1" "$2" -f > "$work/logs/k2fs-$(basename "$2").log" 2>&1 &
	pids="$pids $!"
	mounts="$mounts $2"
	i=0
	until mountpoint -q "$2"; do
		i=$((i + 1))
		if [ $i -gt 100 ] || ! kill -0 "$!" 2>/dev/null; then
			cat "$work/logs/k2fs-$(basename "$2").log" >> "$mainlog"
			return 1
		fi
		sleep 0.1
	done
	return 0
}

# ---------------------------------------------------------------- 0. machine
say "gpu-check: $(date -u +%FT%TZ), $(uname -r), budget ${budget}s, binaries from $bin"
[ -f "$g/MANIFEST" ] && head -2 "$g/MANIFEST" | tee -a "$mainlog"
if command -v nvidia-smi > /dev/null; then
	nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
		--format=csv 2>&1 | tee -a "$mainlog"
else
	say "no nvidia-smi"
fi
need_cublas() { ldd "$prog/prog_gpu_kernels" 2>/dev/null | grep -q 'libcublas.*not found'; }
if [ -x "$prog/prog_gpu_kernels" ] && need_cublas; then
	for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
		/usr/local/cuda-13*/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu \
		/opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib \
		/opt/torch/.venv/lib/python3*/site-packages/nvidia/cublas/lib; do
		if [ -e "$d/libcublas.so.13" ]; then
			LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
			break
		fi
	done
	if need_cublas; then
		d=$(timeout 30 find /usr /opt -name 'libcublas.so.13' 2>/dev/null | head -1)
		[ -n "$d" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$d")"
	fi
	export LD_LIBRARY_PATH
	need_cublas && say "libcublas.so.13 not found on this machine: the CUDA programs cannot start"
fi
ldd "$prog/prog_gpu_kernels" 2>/dev/null | grep -E 'cublas|not found' | tee -a "$mainlog"

# ---------------------------------------------------------------- 1. kernels
gpu=0
if [ -x "$prog/prog_gpu_kernels" ]; then
	# checks and benchmarks in two processes: a kernel that faults ends its
	# process (the context is lost), and the benchmarks still get measured
	run 150 prog_gpu_kernels "$prog/prog_gpu_kernels" --no-bench
	rc=$?
	case $rc in
	0|1) gpu=1
	     grep -q '^@@ kernel checks\|^@@ prog_gpu_kernels stopped' "$work/logs/prog_gpu_kernels.log" ||
		row "GPU kernels" "exit $rc before its summary: $(tail -1 "$work/logs/prog_gpu_kernels.log" | cut -c1-60)" "exit 0" "FAIL" ;;
	77) row "GPU kernels" "no CUDA device: $(tail -1 "$work/logs/prog_gpu_kernels.log")" "-" "SKIP" ;;
	*) row "GPU kernels" "prog_gpu_kernels exit $rc (see the log)" "exit 0" "FAIL" ;;
	esac
	if [ $gpu = 1 ]; then
		run 90 prog_gpu_bench "$prog/prog_gpu_kernels" --bench-only
		rc=$?
		[ $rc -eq 0 ] || row "GPU benchmarks" "prog_gpu_kernels --bench-only exit $rc" "exit 0" "FAIL"
	fi
else
	row "GPU kernels" "no prog_gpu_kernels (run tools/gpu-bundle.sh)" "-" "FAIL"
fi

# ---------------------------------------------------------------- 2. mount
fuse_ok=0
if [ ! -x "$bin/k2fs" ] || [ ! -x "$bin/k2pack" ] || [ ! -x "$bin/infer" ]; then
	row "k2fs + infer steps" "k2fs, k2pack or infer missing in $bin" "-" "SKIP"
else
	if [ ! -c /dev/fuse ]; then
		modprobe fuse 2>/dev/null
		[ -c /dev/fuse ] || { grep -qw fuse /proc/filesystems 2>/dev/null && mknod /dev/fuse c 10 229 2>/dev/null; }
	fi
	if [ -c /dev/fuse ]; then
		fuse_ok=1
	else
		row "k2fs mount" "no /dev/fuse (and fuse not in /proc/filesystems)" "-" "SKIP"
	fi
fi

# infer --backend cuda is tried on the first fixture; an engine without it
# answers "not built" and the infer steps are skipped from there on.
be=${K2_GPU_BACKEND:-cuda}
infer_cuda=0
[ $fuse_ok = 1 ] && { [ $gpu = 1 ] || [ "$be" != cuda ]; } && infer_cuda=1

# ---------------------------------------------------------------- 3. fixtures
for fx in ${K2_GPU_FIXTURES:-bf16 fp8}; do
	[ $fuse_ok = 1 ] || break
	src=$fixtures/k2-tiny-$fx
	if [ ! -d "$src/model" ]; then
		row "fixture $fx" "no $src" "-" "SKIP"
		continue
	fi
	run 60 "pack-$fx" "$bin/k2pack" "$src/model" "$work/$fx.k2" || {
		row "fixture $fx: k2pack" "failed (see pack-$fx.log)" "exit 0" "FAIL"; continue; }
	if ! mount_pack "$work/$fx.k2" "$work/mnt/$fx"; then
		row "fixture $fx: k2fs mount" "did not mount (see k2fs-$fx.log)" "mounted" "FAIL"
		continue
	fi
	ids=$("$prog/prog_infer_cmp" "$src/reference.safetensors" --print input_ids 2>/dev/null)
	if [ -z "$ids" ]; then
		row "fixture $fx" "cannot read input_ids from the reference" "-" "FAIL"
		continue
	fi
	if [ $infer_cuda = 0 ]; then
		row "fixture $fx: infer --backend $be" "not run (no GPU or no k2fs)" "-" "SKIP"
		continue
	fi
	run 60 "infer-$fx-full" "$bin/infer" --model "$work/mnt/$fx" --backend "$be" --tokens "$ids" -n 16 \
		--ignore-eos --dump-logits "$work/$fx.full.st" --stats
	rc=$?
	if grep -qi 'not built\|unknown backend\|no CUDA' "$work/logs/infer-$fx-full.log"; then
		row "fixture $fx: infer --backend $be" "$(grep -i -m1 'not built\|unknown backend\|no CUDA' \
			"$work/logs/infer-$fx-full.log" | cut -c1-90)" "-" "SKIP"
		infer_cuda=0
		continue
	fi
	if [ $rc -ne 0 ] || [ ! -f "$work/$fx.full.st" ]; then
		row "fixture $fx: infer --backend $be" "exit $rc (see infer-$fx-full.log)" "exit 0" "FAIL"
		continue
	fi
	run 30 "cmp-$fx-full" "$prog/prog_gpu_cmp" "$src/reference.safetensors" "$work/$fx.full.st" \
		--max-rel 2e-2 --min-ids 8 --label "fixture $fx ($be)"
	# the infer engineer's comparison too (max abs error; information only)
	[ -x "$prog/prog_infer_cmp" ] && run 30 "infercmp-$fx" "$prog/prog_infer_cmp" \
		"$src/reference.safetensors" --dump "$work/$fx.full.st"
	run 60 "infer-$fx-cache4" "$bin/infer" --model "$work/mnt/$fx" --backend "$be" --tokens "$ids" -n 16 \
		--ignore-eos --expert-cache 4experts --dump-logits "$work/$fx.c4.st" --stats
	if run 30 "cmp-$fx-cache4" "$prog/prog_gpu_cmp" --identical "$work/$fx.full.st" "$work/$fx.c4.st"; then
		row "fixture $fx: cache of 4 experts vs full" "identical" "identical" "PASS"
	else
		row "fixture $fx: cache of 4 experts vs full" "differs (see cmp-$fx-cache4.log)" "identical" "FAIL"
	fi
done
cleanup

# ---------------------------------------------------------------- 4. decode speed
if [ $fuse_ok = 1 ] && [ $infer_cuda = 1 ] && [ -x "$bin/k2gen" ]; then
	L=${K2_BENCH_LAYERS:-3} E=${K2_BENCH_EXPERTS:-32} V=${K2_BENCH_VOCAB:-32768}
	N=${K2_BENCH_TOKENS:-16}
	if run 100 gen-k2 "$bin/k2gen" --preset k2 --layers "$L" --experts "$E" --format int4 \
		--set vocab_size="$V" --seed 1 "$work/k2ckpt" &&
	   run 60 pack-k2 "$bin/k2pack" "$work/k2ckpt" "$work/k2.k2" --codec none &&
	   mount_pack "$work/k2.k2" "$work/mnt/k2"; then
		rm -rf "$work/k2ckpt"
		moe=$(ls "$work/mnt/k2/experts" | wc -l)
		n_exp=$(find "$work/mnt/k2/experts" -type f | wc -l)
		cache=$((n_exp / 10))
		[ $cache -ge 1 ] || cache=1
		say "decode bench: $moe MoE layers, $n_exp experts, cache $cache experts, $N tokens"
		for cfg in "none:" "router:" "none:--cpu-experts" "router:--cpu-experts" "router:cpu"; do
			pf=${cfg%%:*}
			extra=${cfg#*:}
			backend=$be
			[ "$extra" = cpu ] && { backend=cpu; extra=""; }
			name="decode-$backend-$pf${extra:+-cpuexp}"
			if [ "$backend" = cpu ] && [ -n "$extra" ]; then
				row "decode cpu, prefetch $pf, --cpu-experts" "only with --backend cuda" "-" "SKIP"
				continue
			fi
			run 60 "$name" "$bin/infer" --model "$work/mnt/k2" --backend $backend --tokens 1,2,3,4,5,6,7,8 \
				-n "$N" --ignore-eos --expert-cache "${cache}experts" --prefetch "$pf" $extra --stats
			rc=$?
			line=$(grep -o '"tokens_per_s":[0-9.eE+-]*' "$work/logs/$name.log" | head -1 | cut -d: -f2)
			hit=$(grep -o '"hit_rate":[0-9.eE+-]*' "$work/logs/$name.log" | head -1 | cut -d: -f2)
			what="decode $backend, cache 10% ($cache), prefetch $pf${extra:+, --cpu-experts}"
			if [ $rc -ne 0 ] && grep -qi 'unknown option\|unknown.*cpu-experts' "$work/logs/$name.log"; then
				row "$what" "flag not in infer yet" "-" "SKIP"
			elif [ $rc -ne 0 ] || [ -z "$line" ]; then
				row "$what" "exit $rc, no --stats line (see $name.log)" "runs" "FAIL"
			else
				row "$what" "$(printf '%.2f' "$line") tok/s, hit rate $(printf '%.2f' "${hit:-0}")" "-" "INFO"
			fi
		done
	else
		row "decode bench" "k2gen / k2pack / mount failed (see gen-k2, pack-k2 logs)" "-" "FAIL"
	fi
	cleanup
else
	row "decode tokens/s (k2 preset)" "not run: needs the GPU, FUSE and infer --backend cuda" "-" "SKIP"
fi

# ---------------------------------------------------------------- 5. more engine checks
# tests/it_infer_cuda.sh with this engine (caches of 1, 3, 4, 5 experts and LFU
# identical to the full one, --cpu-experts, the int4 fixture, another model
# shape against --backend cpu, bad files), when time is left
if [ $fuse_ok = 1 ] && [ $infer_cuda = 1 ] && [ "$be" = cuda ] && [ -f "$here/tests/it_infer_cuda.sh" ]; then
	if run 120 it_infer_cuda env K2_BIN="$bin" K2_TESTPROGS="$prog" K2_FIXTURES="$fixtures" \
		K2_CUDA_INFER="$bin/infer" sh "$here/tests/it_infer_cuda.sh"; then
		row "tests/it_infer_cuda.sh on the GPU" "all passed" "pass" "PASS"
	elif grep -q 'time budget is spent' "$work/logs/it_infer_cuda.log" 2>/dev/null; then
		:
	else
		row "tests/it_infer_cuda.sh on the GPU" "$(grep -c 'FAIL' "$work/logs/it_infer_cuda.log" 2>/dev/null) failure(s) (see it_infer_cuda.log)" "pass" "FAIL"
	fi
fi

# ---------------------------------------------------------------- table
{
	echo
	echo "== gpu-check summary ($(($(date +%s) - t0))s)"
	sed 's/^@@ //' "$results" | awk -F' [|] ' '
		{ n++; a[n]=$1; b[n]=$2; c[n]=$3; d[n]=$4; if (length($1) > w) w = length($1) }
		END {
			if (w > 70) w = 70
			printf "%-" w "s  %-44s %-10s %s\n", "check", "value", "goal", "result"
			for (i = 1; i <= n; i++)
				printf "%-" w "s  %-44s %-10s %s\n", substr(a[i], 1, w), b[i], c[i], d[i]
		}'
	fails=$(grep -c '| FAIL$' "$results")
	below=$(grep -c '| BELOW$' "$results")
	skips=$(grep -c '| SKIP$' "$results")
	echo "gpu-check: $fails failed, $below below goal, $skips skipped"
} > "$work/summary.txt"
cat "$work/summary.txt" | tee -a "$mainlog"
cp "$work/summary.txt" "$logdir/summary.txt"
tar -czf "$logdir/logs.tar.gz" -C "$work" logs results.txt 2>/dev/null
grep -q '| FAIL$' "$results" && exit 1
exit 0
