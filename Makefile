# hakmem build.  `make` builds the release library and benchmarks,
# `make debug` the assertion build, `make test` runs the whole suite.
CC      ?= cc
PREFIX  ?= /usr/local
MODE    ?= release

WARN    := -Wall -Wextra -Werror -Wno-unused-parameter
BASE    := -std=gnu11 -fPIC -fvisibility=hidden -pthread -D_GNU_SOURCE -Iinclude -Icore $(WARN)
CFLAGS_release := $(BASE) -O2 -g -DNDEBUG -fno-tree-slp-vectorize -fno-plt -ftls-model=initial-exec -fno-semantic-interposition
CFLAGS_debug   := $(BASE) -O1 -g -DHAK_DEBUG=1 -ftls-model=initial-exec
LDLIBS  := -pthread

SRC     := $(wildcard core/*.c)
HDR     := $(wildcard core/*.h) include/hakmem.h
BENCHES := bench_random_mixed larson bench_mid_large_mt bench_large bench_large_mt bench_fragment bench_prodcons
TESTSRC := $(wildcard tests/test_*.c)

OBJ_release := $(SRC:core/%.c=out/release/obj/%.o)
OBJ_debug   := $(SRC:core/%.c=out/debug/obj/%.o)

.SECONDEXPANSION:
.SECONDARY:
.PHONY: all release debug test stress bench bench-scale bench-hardening print-release-cflags bench-deps install uninstall clean
all release: out/release/libhakmem.so out/release/libhakmem.a out/secure/libhakmem.so \
             $(BENCHES:%=out/release/%) $(TESTSRC:tests/%.c=out/release/tests/%)
debug: out/debug/libhakmem.so out/debug/libhakmem.a $(TESTSRC:tests/%.c=out/debug/tests/%)

out/release/obj/%.o: core/%.c $(HDR) | out/release/obj
	$(CC) $(CFLAGS_release) -c $< -o $@
out/debug/obj/%.o: core/%.c $(HDR) | out/debug/obj
	$(CC) $(CFLAGS_debug) -c $< -o $@

out/%/libhakmem.so: $$(OBJ_$$*)
	$(CC) -shared -o $@ $^ $(LDLIBS) -Wl,-z,now -Wl,-z,nodelete -Wl,--version-script=core/exports.map
out/%/libhakmem.a: $$(OBJ_$$*)
	rm -f $@ && ar rcs $@ $^

# Benchmarks call plain malloc/free: one binary for every allocator (LD_PRELOAD).
out/release/bench_%: bench/bench_%.c bench/bench_util.h | out/release
	$(CC) -O2 -g -std=gnu11 -D_GNU_SOURCE -pthread -o $@ $< -lm
out/release/larson: bench/larson.c bench/bench_util.h | out/release
	$(CC) -O2 -g -std=gnu11 -D_GNU_SOURCE -pthread -o $@ $< -lm

# Tests link the static library, so both hak_* and malloc are hakmem's.
out/release/tests/%: tests/%.c tests/testutil.h out/release/libhakmem.a | out/release/tests
	$(CC) -O1 -g -std=gnu11 -D_GNU_SOURCE -pthread -Iinclude $(WARN) -o $@ $< out/release/libhakmem.a -lm
out/debug/tests/%: tests/%.c tests/testutil.h out/debug/libhakmem.a | out/debug/tests
	$(CC) -O1 -g -std=gnu11 -D_GNU_SOURCE -pthread -Iinclude $(WARN) -o $@ $< out/debug/libhakmem.a -lm

out/release out/debug out/release/obj out/debug/obj out/release/tests out/debug/tests:
	mkdir -p $@

# ---- Fault injection, sanitizer and fuzzing builds ------------------------
# out/fault:  the debug build with -DHAK_FAULT_INJECTION (hak_fault_inject)
# out/ubsan, out/tsan, out/fuzz: clang builds without the glibc names
#   (-DHAK_NO_GLIBC_NAMES): the sanitizer runtime interposes malloc itself,
#   so their drivers call hak_* only.  (-Wno-unused-function: valloc and
#   pvalloc exist only as glibc names.)
SAN_CC  ?= clang
NOGLIBC := -DHAK_NO_GLIBC_NAMES -Wno-unused-function
CFLAGS_fault := $(CFLAGS_debug) -DHAK_FAULT_INJECTION
# out/secure: the hardened library (canaries, guard pages, random order),
# installed as libhakmem-secure.so; see docs/ARCHITECTURE.md.
CFLAGS_secure := $(CFLAGS_release) -DHAK_SECURE
OBJ_secure := $(SRC:core/%.c=out/secure/obj/%.o)
SECURE_TESTS := test_hardened test_misuse_matrix test_xthread_stress test_align test_mt_prodcons test_stress test_fork test_thread_churn test_foreign test_realloc_race test_fork_handlers test_tls_dtors
CFLAGS_ubsan := $(BASE) -O1 -g -DHAK_DEBUG=1 $(NOGLIBC) -fsanitize=undefined -fno-sanitize-recover=all
CFLAGS_tsan  := $(BASE) -O1 -g -DHAK_DEBUG=1 $(NOGLIBC) -fsanitize=thread
CFLAGS_fuzz  := $(BASE) -O1 -g -DHAK_DEBUG=1 $(NOGLIBC) -fsanitize=fuzzer-no-link,address
SANFLAGS_ubsan := -fsanitize=undefined -fno-sanitize-recover=all
SANFLAGS_tsan  := -fsanitize=thread
OBJ_fault := $(SRC:core/%.c=out/fault/obj/%.o)
OBJ_ubsan := $(SRC:core/%.c=out/ubsan/obj/%.o)
OBJ_tsan  := $(SRC:core/%.c=out/tsan/obj/%.o)
OBJ_fuzz  := $(SRC:core/%.c=out/fuzz/obj/%.o)
TESTFLAGS := -O1 -g -std=gnu11 -D_GNU_SOURCE -pthread -Iinclude -Itests $(WARN)
FUZZ_SECONDS ?= 60
FUZZ_SEED    ?= 0

# Everything tests/run.sh runs besides out/{release,debug}/tests/test_*.
# The sanitizer and fuzzing builds need clang with its runtimes: on a
# machine with gcc alone they are left out, and run.sh prints a SKIP line
# for each (HAK_SANITIZERS=no).
SAN_BINS := out/ubsan/tests/san_api out/ubsan/tests/san_threads \
            out/tsan/tests/san_api out/tsan/tests/san_threads out/fuzz/fuzz_api
HAVE_SAN := $(shell printf 'int main(void){return 0;}' | \
              $(SAN_CC) -x c -fsanitize=thread -o /dev/null - >/dev/null 2>&1 && \
              printf 'int main(void){return 0;}' | \
              $(SAN_CC) -x c -fsanitize=address,undefined -o /dev/null - >/dev/null 2>&1 && echo yes)
CHECK_BINS := $(SECURE_TESTS:%=out/secure/tests/%) out/fault/tests/test_fault out/release/tests/oom_ulimit out/debug/tests/oom_ulimit \
              $(if $(HAVE_SAN),$(SAN_BINS))

.PHONY: fault sanitize fuzz fuzz-run
fault: out/fault/libhakmem.a out/fault/tests/test_fault
sanitize: out/ubsan/tests/san_api out/ubsan/tests/san_threads out/tsan/tests/san_api out/tsan/tests/san_threads
fuzz: out/fuzz/fuzz_api

out/fault/obj/%.o: core/%.c $(HDR) | out/fault/obj
	$(CC) $(CFLAGS_fault) -c $< -o $@
out/secure/obj/%.o: core/%.c $(HDR) | out/secure/obj
	$(CC) $(CFLAGS_secure) -c $< -o $@
out/secure/tests/test_hardened: tests/secure/test_hardened.c tests/testutil.h out/secure/libhakmem.a | out/secure/tests
	$(CC) $(TESTFLAGS) -o $@ $< out/secure/libhakmem.a -lm
out/secure/tests/%: tests/%.c tests/testutil.h out/secure/libhakmem.a | out/secure/tests
	$(CC) $(TESTFLAGS) -o $@ $< out/secure/libhakmem.a -lm
out/ubsan/obj/%.o: core/%.c $(HDR) | out/ubsan/obj
	$(SAN_CC) $(CFLAGS_ubsan) -c $< -o $@
out/tsan/obj/%.o: core/%.c $(HDR) | out/tsan/obj
	$(SAN_CC) $(CFLAGS_tsan) -c $< -o $@
out/fuzz/obj/%.o: core/%.c $(HDR) | out/fuzz/obj
	$(SAN_CC) $(CFLAGS_fuzz) -c $< -o $@

out/fault/tests/test_fault: tests/fault/test_fault.c tests/testutil.h out/fault/libhakmem.a | out/fault/tests
	$(CC) $(TESTFLAGS) -o $@ $< out/fault/libhakmem.a -lm
# Allocates until malloc fails: only ever run under a small ulimit -v.
out/release/tests/oom_ulimit: tests/fault/oom_ulimit.c tests/testutil.h out/release/libhakmem.a | out/release/tests
	$(CC) $(TESTFLAGS) -o $@ $< out/release/libhakmem.a -lm
out/debug/tests/oom_ulimit: tests/fault/oom_ulimit.c tests/testutil.h out/debug/libhakmem.a | out/debug/tests
	$(CC) $(TESTFLAGS) -o $@ $< out/debug/libhakmem.a -lm
out/ubsan/tests/%: tests/sanitize/%.c tests/testutil.h out/ubsan/libhakmem.a | out/ubsan/tests
	$(SAN_CC) $(TESTFLAGS) $(SANFLAGS_ubsan) -o $@ $< out/ubsan/libhakmem.a -lm
out/tsan/tests/%: tests/sanitize/%.c tests/testutil.h out/tsan/libhakmem.a | out/tsan/tests
	$(SAN_CC) $(TESTFLAGS) $(SANFLAGS_tsan) -o $@ $< out/tsan/libhakmem.a -lm
out/fuzz/fuzz_api: tests/fuzz/fuzz_api.c out/fuzz/libhakmem.a | out/fuzz
	$(SAN_CC) -O1 -g -std=gnu11 -D_GNU_SOURCE -pthread -Iinclude $(WARN) -fsanitize=fuzzer,address \
	    -o $@ $< out/fuzz/libhakmem.a -lm

# make fuzz-run [FUZZ_SECONDS=60] [FUZZ_SEED=0 (random)]: new inputs go to
# out/fuzz/corpus (tests/fuzz/corpus is the read-only seed corpus), crashes
# to out/fuzz/crash-*.
fuzz-run: out/fuzz/fuzz_api
	mkdir -p out/fuzz/corpus
	out/fuzz/fuzz_api -max_total_time=$(FUZZ_SECONDS) -seed=$(FUZZ_SEED) -timeout=30 \
	    -artifact_prefix=out/fuzz/ out/fuzz/corpus tests/fuzz/corpus

out/secure/obj out/secure/tests out/fault out/fault/obj out/fault/tests out/ubsan/obj out/ubsan/tests out/tsan/obj out/tsan/tests \
out/fuzz out/fuzz/obj:
	mkdir -p $@

test: all debug $(CHECK_BINS)
	HAK_SANITIZERS=$(if $(HAVE_SAN),yes,no) bash tests/run.sh

stress: all debug $(CHECK_BINS)
	HAK_SANITIZERS=$(if $(HAVE_SAN),yes,no) STRESS_SECONDS=120 bash tests/run.sh stress

bench: all
	bash scripts/bench.sh $(if $(QUICK),--quick,)

# Throughput against threads (1, 2, 4 ... nproc; THREADS="..." to choose)
# for prodcons, larson and bench_large_mt: out/bench-scale/scale.{csv,svg}.
bench-scale: all
	bash scripts/bench_scale.sh $(if $(QUICK),--quick,) $(if $(THREADS),--threads "$(THREADS)",)

# The cost of each hardening mitigation: out/harden/cost.md.
bench-hardening: all
	bash scripts/hardening_cost.sh $(if $(QUICK),--quick,)

print-release-cflags:
	@echo $(CFLAGS_release)

bench-deps:
	apt-get update && apt-get install -y libmimalloc2.0 libjemalloc2 libtcmalloc-minimal4 strace time

install: all
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 out/release/libhakmem.so $(DESTDIR)$(PREFIX)/lib/libhakmem.so
	install -m 755 out/secure/libhakmem.so $(DESTDIR)$(PREFIX)/lib/libhakmem-secure.so
	install -m 644 out/release/libhakmem.a $(DESTDIR)$(PREFIX)/lib/libhakmem.a
	install -m 644 include/hakmem.h $(DESTDIR)$(PREFIX)/include/hakmem.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' scripts/hakmem > $(DESTDIR)$(PREFIX)/bin/hakmem
	chmod 755 $(DESTDIR)$(PREFIX)/bin/hakmem
	sed -e 's|@PREFIX@|$(PREFIX)|g' scripts/hakmem.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/hakmem.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/lib/libhakmem.so $(DESTDIR)$(PREFIX)/lib/libhakmem.a \
	      $(DESTDIR)$(PREFIX)/lib/libhakmem-secure.so \
	      $(DESTDIR)$(PREFIX)/include/hakmem.h $(DESTDIR)$(PREFIX)/bin/hakmem \
	      $(DESTDIR)$(PREFIX)/lib/pkgconfig/hakmem.pc

clean:
	rm -rf out
