#!/bin/bash
# fuzz_long.sh — a fuzzing campaign: every libFuzzer target given, for a
# number of seconds or of runs each, JOBS at a time, each on its growing corpus
# (CORPUS/<target>, kept between campaigns) plus its seeds
# (tests/corpus/<target>). Writes OUT, one JSON object:
#   {"seconds_each": S, "runs_each": R, "jobs": J, "started": "...", "targets": [
#     {"target", "exit", "seconds", "runs", "exec_per_sec", "cov_start",
#      "ft_start", "cov", "ft", "corpus_files", "corpus_bytes", "new_units",
#      "peak_rss_mb", "crashes": ["path", ...], "log"}, ...]}
# where cov/ft are libFuzzer's last "cov:"/"ft:" numbers (code edges and
# features reached), *_start the same after loading the corpus, and crashes
# the inputs it saved (crash-, leak-, timeout-, oom-), which stop that target.
# Exits 1 when any target crashed or failed. Run by `make fuzz-long`:
#   make fuzz-long FUZZ_SECONDS=3600          (an hour each)
#   make fuzz-long FUZZ_RUNS=1000000 FUZZ_JOBS=1
set -u

usage() {
	echo "usage: $0 --seconds S [--runs N] [--jobs J] --corpus DIR --out FILE FUZZER..." >&2
	exit 2
}

seconds=60 runs='' jobs=2 corpus='' out=''
while [ $# -gt 0 ]; do
	case "$1" in
	--seconds) seconds=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--jobs) jobs=$2; shift 2 ;;
	--corpus) corpus=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--*) usage ;;
	*) break ;;
	esac
done
if [ -z "$corpus" ] || [ -z "$out" ] || [ $# -eq 0 ]; then usage; fi
case "$seconds$runs$jobs" in *[!0-9]*) usage ;; esac
[ "$jobs" -ge 1 ] || jobs=1

work=$(dirname "$out")/campaign
rm -rf "$work"
mkdir -p "$work" "$corpus"

# One target: its log, its artifacts under $work/<name>/, a JSON line in
# $work/<name>.json.
run_one() {
	local f=$1 name
	name=$(basename "$f")
	local dir="$corpus/$name" art="$work/$name/" log="$work/$name.log"
	mkdir -p "$dir" "$art"
	local limit=(-max_total_time="$seconds")
	[ -n "$runs" ] && limit=(-runs="$runs")
	local t0 t1 rc
	t0=$(date +%s.%N)
	"$f" "${limit[@]}" -timeout=25 -print_final_stats=1 -artifact_prefix="$art" \
		"$dir" "tests/corpus/$name" >"$log" 2>&1
	rc=$?
	t1=$(date +%s.%N)
	# libFuzzer's status lines: "#N INITED cov: C ft: F ..." after loading
	# the corpus, then "#N NEW|REDUCE|pulse|DONE cov: C ft: F ...".
	local start last
	start=$(grep -a -m1 'INITED cov:' "$log")
	last=$(grep -a 'cov: [0-9]' "$log" | tail -n1)
	num() { sed -n "s/.*$1 \([0-9][0-9]*\).*/\1/p" <<<"$2" | head -n1; }
	fstat() { sed -n "s/^stat::$1: *\([0-9][0-9]*\).*/\1/p" "$log" | tail -n1; }
	local crashes="" c
	for c in "$art"crash-* "$art"leak-* "$art"timeout-* "$art"oom-*; do
		[ -e "$c" ] && crashes="$crashes${crashes:+, }\"$c\""
	done
	local files bytes
	files=$(find "$dir" -type f | wc -l)
	bytes=$(find "$dir" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
	printf '{"target": "%s", "exit": %d, "seconds": %.1f, "runs": %s, "exec_per_sec": %s, "cov_start": %s, "ft_start": %s, "cov": %s, "ft": %s, "corpus_files": %d, "corpus_bytes": %d, "new_units": %s, "peak_rss_mb": %s, "crashes": [%s], "log": "%s"}\n' \
		"$name" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" "$(fstat number_of_executed_units || true)" \
		"$(fstat average_exec_per_sec)" "$(num cov: "$start")" "$(num ft: "$start")" \
		"$(num cov: "$last")" "$(num ft: "$last")" "$files" "$bytes" \
		"$(fstat new_units_added)" "$(fstat peak_rss_mb)" "$crashes" "$log" |
		sed 's/: ,/: null,/g; s/: }/: null}/g' >"$work/$name.json"
	echo "fuzz-long: $name exit $rc, $(num cov: "$last") edges, log $log"
}

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "fuzz-long: $# targets, ${runs:+$runs runs}${runs:-$seconds s} each, $jobs at a time"
running=0
for f in "$@"; do
	if [ "$running" -ge "$jobs" ]; then
		wait -n
		running=$((running - 1))
	fi
	run_one "$f" &
	running=$((running + 1))
done
wait

status=0
{
	printf '{"seconds_each": %s, "runs_each": %s, "jobs": %d, "started": "%s", "targets": [\n' \
		"$([ -n "$runs" ] && echo null || echo "$seconds")" "${runs:-null}" "$jobs" "$started"
	sep=""
	for f in "$@"; do
		name=$(basename "$f")
		line=$(cat "$work/$name.json" 2>/dev/null || echo "{\"target\": \"$name\", \"exit\": -1}")
		printf '%s  %s' "$sep" "$line"
		sep=$',\n'
	done
	printf '\n]}\n'
} >"$out"
for f in "$@"; do
	name=$(basename "$f")
	grep -q '"exit": 0,.*"crashes": \[\]' "$work/$name.json" 2>/dev/null || status=1
done
echo "fuzz-long: wrote $out"
[ "$status" -eq 0 ] || echo "fuzz-long: a target crashed or failed (see $out)" >&2
exit "$status"
