#!/usr/bin/env bash
# The misuse matrix (tests/test_misuse_matrix.c) under other allocators:
# built once without hakmem (-DMATRIX_PEERS), run with glibc and with each
# allocator found, by LD_PRELOAD: hakmem's two libraries, mimalloc,
# jemalloc, tcmalloc, LLVM's Scudo and (given its path) GrapheneOS
# hardened_malloc.  Prints each one's matrix into out/misuse-peers/NAME.txt
# and a summary of cells caught or prevented.
#   bash scripts/misuse_peers.sh
#   HARDENED_MALLOC=/path/to/libhardened_malloc.so bash scripts/misuse_peers.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=out/misuse-peers
mkdir -p "$out"
make -s out/release/libhakmem.so out/secure/libhakmem.so
cc -O1 -g -std=gnu11 -D_GNU_SOURCE -pthread -Iinclude -Itests -DMATRIX_PEERS \
    -o "$out/matrix" tests/test_misuse_matrix.c -lstdc++
peers=(glibc= "hakmem=$PWD/out/release/libhakmem.so" "hakmem-secure=$PWD/out/secure/libhakmem.so")
for lib in /usr/lib/x86_64-linux-gnu/libmimalloc.so.2 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
           /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4; do
    [ -f "$lib" ] && peers+=("$(basename "$lib" | sed 's/^lib//; s/[_.].*//')=$lib")
done
scudo=$(ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.scudo_standalone-x86_64.so 2>/dev/null | head -1 || true)
[ -n "$scudo" ] && peers+=("scudo=$scudo")
# GrapheneOS hardened_malloc has no package: built from source, its path
# is given by HARDENED_MALLOC.
[ -n "${HARDENED_MALLOC:-}" ] && peers+=("hardened_malloc=$HARDENED_MALLOC")
printf '%-15s %s\n' allocator "caught or prevented"
for p in "${peers[@]}"; do
    name=${p%%=*} lib=${p#*=}
    MATRIX_NAME=$name LD_PRELOAD=$lib "$out/matrix" > "$out/$name.txt" 2>&1 || true
    printf '%-15s %s\n' "$name" "$(sed -n 's/.*catches or prevents \([0-9]* of [0-9]*\) cases/\1/p' "$out/$name.txt")"
done
