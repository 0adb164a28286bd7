#!/bin/sh
# fuzz.sh — fuzzes the safetensors reader and the model loader with libFuzzer.
#
#   tools/fuzz.sh [SECONDS] [extra libFuzzer flags...]      (default 60 seconds)
#
# Builds csrc/test/fuzz_safetensors.c and the library sources with
# clang -fsanitize=fuzzer,address,undefined into build/fuzz/ (ignored by git), copies
# csrc/test/corpus/ (the seeds and past crashers) to build/fuzz/corpus/ so that the inputs the
# fuzzer adds stay out of the source tree, and runs the harness for SECONDS of wall time
# (-max_total_time). A crash, leak, UBSan report or excessive allocation stops the run and writes
# the input to build/fuzz/crash-* (or leak-*, oom-*, timeout-*); minimise it with
#   build/fuzz/fuzz_safetensors -minimize_crash=1 -runs=10000 build/fuzz/crash-...
# fix the bug, and copy the minimised input into csrc/test/corpus/ as a regression test:
# `make -C csrc test` (and `make -C csrc sanitize`) replays every corpus file (test_corpus).
# CI does not run this script, only the replay test. Needs clang (Debian: apt-get install -y clang).
set -eu

seconds=${1:-60}
[ $# -gt 0 ] && shift
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build/fuzz
CC=${CC:-clang}
command -v "$CC" > /dev/null || { echo "fuzz.sh: $CC not found (apt-get install -y clang)" >&2; exit 1; }

mkdir -p "$out/corpus"
# No OpenMP (libFuzzer runs one input at a time) and -O1 for speed with useful stacks.
"$CC" -std=gnu11 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -fno-math-errno -I"$root/csrc" \
    "$root/csrc/test/fuzz_safetensors.c" "$root"/csrc/*.c -lm -o "$out/fuzz_safetensors"
cp "$root"/csrc/test/corpus/* "$out/corpus/"

cd "$out"
# -rss_limit_mb / -malloc_limit_mb: a small input must not make the loader allocate gigabytes.
# -max_len: large enough for a few tensors and a spec; the seeds are up to a few KB.
exec ./fuzz_safetensors -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -max_len=16384 -timeout=10 -print_final_stats=1 "$@" corpus
