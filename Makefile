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
BENCHES := bench_random_mixed larson bench_mid_large_mt bench_large bench_large_mt bench_fragment bench_prodcons \
           bench_xthread bench_idle_threads
TESTSRC := $(wildcard tests/test_*.c)

# ---- Build variants ---------------------------------------------------------
# release, debug: the libraries; secure: the hardened library (canaries,
#   guard pages, random order; installed as libhakmem-secure.so, see
#   docs/ARCHITECTURE.md); fault: the debug build with -DHAK_FAULT_INJECTION
#   (hak_fault_inject); zerofree: CANARY and ZERO_ON_FREE alone, without
#   the quarantine and guard pages (core/mitigations.h), so that a
#   mitigation is tested apart from the others that usually come with it;
#   guard: GUARD_PAGES alone; quarantine: CANARY and QUARANTINE, without
#   zeroing or guard pages (the generic tests of tests/mitigations.list:
#   the sets a user may build, whose paths neither the default build nor
#   the hardened one takes);
# ubsan, tsan, fuzz: clang builds without the glibc names
#   (-DHAK_NO_GLIBC_NAMES): the sanitizer runtime interposes malloc itself,
#   so their drivers call hak_* only.  (-Wno-unused-function: valloc and
#   pvalloc exist only as glibc names.)
# Each variant has its compiler (CC_v), flags (CFLAGS_v) and the flags its
# tests link with (SANFLAGS_v); one template makes its objects, libraries
# and test binaries.
SAN_CC  ?= clang
NOGLIBC := -DHAK_NO_GLIBC_NAMES -Wno-unused-function
VARIANTS := release debug secure fault zerofree guard quarantine ubsan tsan fuzz
CFLAGS_secure := $(CFLAGS_release) -DHAK_SECURE
CFLAGS_fault  := $(CFLAGS_debug) -DHAK_FAULT_INJECTION
CFLAGS_zerofree := $(CFLAGS_debug) -DHAK_HARDEN_CANARY=1 -DHAK_HARDEN_ZERO_ON_FREE=1
CFLAGS_guard  := $(CFLAGS_debug) -DHAK_HARDEN_GUARD_PAGES=1
CFLAGS_quarantine := $(CFLAGS_debug) -DHAK_HARDEN_CANARY=1 -DHAK_HARDEN_QUARANTINE=1
SANFLAGS_ubsan := -fsanitize=undefined -fno-sanitize-recover=all
SANFLAGS_tsan  := -fsanitize=thread
CFLAGS_ubsan  := $(BASE) -O1 -g -DHAK_DEBUG=1 $(NOGLIBC) $(SANFLAGS_ubsan)
CFLAGS_tsan   := $(BASE) -O1 -g -DHAK_DEBUG=1 $(NOGLIBC) $(SANFLAGS_tsan)
CFLAGS_fuzz   := $(BASE) -O1 -g -DHAK_DEBUG=1 $(NOGLIBC) -fsanitize=fuzzer-no-link,address
CC_release := $(CC)
CC_debug   := $(CC)
CC_secure  := $(CC)
CC_fault   := $(CC)
CC_zerofree := $(CC)
CC_guard   := $(CC)
CC_quarantine := $(CC)
CC_ubsan   := $(SAN_CC)
CC_tsan    := $(SAN_CC)
CC_fuzz    := $(SAN_CC)
TESTFLAGS := -O1 -g -std=gnu11 -D_GNU_SOURCE -pthread -Iinclude -Itests $(WARN)
TESTHDR   := tests/testutil.h tests/api_table.h
# Where each variant's test sources are (the first that has the name wins).
TESTDIRS_release := tests tests/fault
TESTDIRS_debug   := tests tests/fault tests/debug
TESTDIRS_secure  := tests tests/secure
TESTDIRS_fault   := tests/fault
TESTDIRS_zerofree := tests/zerofree
TESTDIRS_guard   := tests
TESTDIRS_quarantine := tests
TESTDIRS_ubsan   := tests/sanitize
TESTDIRS_tsan    := tests/sanitize

define variant
OBJ_$(1) := $$(SRC:core/%.c=out/$(1)/obj/%.o)
out/$(1)/obj/%.o: core/%.c $$(HDR) | out/$(1)/obj
	$$(CC_$(1)) $$(CFLAGS_$(1)) -c $$< -o $$@
$$(foreach d,$$(TESTDIRS_$(1)),$$(eval $$(call variant_tests,$(1),$$(d))))
endef
# Tests link the static library, so both hak_* and malloc are hakmem's.
define variant_tests
out/$(1)/tests/%: $(2)/%.c $$(TESTHDR) out/$(1)/libhakmem.a | out/$(1)/tests
	$$(CC_$(1)) $$(TESTFLAGS) $$(SANFLAGS_$(1)) -o $$@ $$< out/$(1)/libhakmem.a -lm
endef
$(foreach v,$(VARIANTS),$(eval $(call variant,$(v))))

.SECONDEXPANSION:
.SECONDARY:
.PHONY: all release debug test stress bench bench-scale bench-programs bench-hardening print-release-cflags bench-deps install uninstall clean
all release: out/release/libhakmem.so out/release/libhakmem.a out/secure/libhakmem.so \
             $(BENCHES:%=out/release/%) $(TESTSRC:tests/%.c=out/release/tests/%)
debug: out/debug/libhakmem.so out/debug/libhakmem.a $(TESTSRC:tests/%.c=out/debug/tests/%)

out/%/libhakmem.so: $$(OBJ_$$*)
	$(CC) -shared -o $@ $^ $(LDLIBS) -Wl,-z,now -Wl,-z,nodelete -Wl,--version-script=core/exports.map
# The static library is one relocatable object whose hidden symbols are made
# local: a program linking it sees only the API (include/hakmem.h and the
# glibc names), so none of hakmem's internal names can clash with its own.
# dlopen (core/dlopen.c) is the shared library's alone: a program linked
# with the archive keeps libc's.
# C++'s operator new is a member of its own (core/cxx_new.c,
# HAK_CXX_ARCHIVE), which only programs that call it take: its references
# to the C++ runtime are strong, so that a static link takes the runtime's
# std::bad_alloc and new handler in.
out/%/libhakmem.a: $$(OBJ_$$*) out/%/obj/cxx_new_archive.o
	rm -f $@ && ld -r -o out/$*/hakmem.o $(filter-out %/cxx_new.o %/cxx_new_archive.o %/dlopen.o,$^) && \
	    objcopy --localize-hidden out/$*/hakmem.o && ar rcs $@ out/$*/hakmem.o out/$*/obj/cxx_new_archive.o
out/%/obj/cxx_new_archive.o: core/cxx_new.c $(HDR) | out/%/obj
	$(CC_$*) $(CFLAGS_$*) -DHAK_CXX_ARCHIVE -c $< -o $@ && objcopy --localize-hidden $@

# Benchmarks call plain malloc/free: one binary for every allocator (LD_PRELOAD).
BENCHFLAGS := -O2 -g -std=gnu11 -D_GNU_SOURCE -pthread
out/release/bench_%: bench/bench_%.c bench/bench_util.h | out/release
	$(CC) $(BENCHFLAGS) -o $@ $< -lm
out/release/larson: bench/larson.c bench/bench_util.h | out/release
	$(CC) $(BENCHFLAGS) -o $@ $< -lm

out/release out/fuzz $(foreach v,$(VARIANTS),out/$(v)/obj out/$(v)/tests):
	mkdir -p $@

# ---- What tests/run.sh runs besides out/{release,debug}/tests/test_* ------
# The hardened build runs its own test and the tests that do not depend on
# the exact tier boundaries (canaries add 8 bytes to each block): the list
# is tests/secure/tests.list, which run.sh reads too.
SECURE_TESTS := $(shell cat tests/secure/tests.list)
MITIGATION_TESTS := $(shell cat tests/mitigations.list)
FUZZ_SECONDS ?= 60
FUZZ_SEED    ?= 0
# The sanitizer and fuzzing builds need clang with its runtimes: on a
# machine with gcc alone they are left out, and run.sh prints a SKIP line
# for each (HAK_SANITIZERS=no).
SAN_BINS := out/ubsan/tests/san_api out/ubsan/tests/san_threads \
            out/tsan/tests/san_api out/tsan/tests/san_threads out/fuzz/fuzz_api
HAVE_SAN := $(shell printf 'int main(void){return 0;}' | \
              $(SAN_CC) -x c -fsanitize=thread -o /dev/null - >/dev/null 2>&1 && \
              printf 'int main(void){return 0;}' | \
              $(SAN_CC) -x c -fsanitize=address,undefined -o /dev/null - >/dev/null 2>&1 && echo yes)
# (oom_ulimit allocates until malloc fails: run.sh runs it only under a
# small ulimit -v.)
CHECK_BINS := $(SECURE_TESTS:%=out/secure/tests/%) out/fault/tests/test_fault out/release/tests/oom_ulimit out/debug/tests/oom_ulimit \
              out/debug/tests/test_validate out/zerofree/tests/test_zero_on_free \
              $(MITIGATION_TESTS:%=out/guard/tests/%) $(MITIGATION_TESTS:%=out/quarantine/tests/%) \
              $(if $(HAVE_SAN),$(SAN_BINS))

.PHONY: fault sanitize fuzz fuzz-run
fault: out/fault/libhakmem.a out/fault/tests/test_fault
sanitize: out/ubsan/tests/san_api out/ubsan/tests/san_threads out/tsan/tests/san_api out/tsan/tests/san_threads
fuzz: out/fuzz/fuzz_api

out/fuzz/fuzz_api: tests/fuzz/fuzz_api.c out/fuzz/libhakmem.a | out/fuzz
	$(SAN_CC) $(TESTFLAGS) -fsanitize=fuzzer,address -o $@ $< out/fuzz/libhakmem.a -lm

# make fuzz-run [FUZZ_SECONDS=60] [FUZZ_SEED=0 (random)]: new inputs go to
# out/fuzz/corpus (tests/fuzz/corpus is the read-only seed corpus), crashes
# to out/fuzz/crash-*.
fuzz-run: out/fuzz/fuzz_api
	mkdir -p out/fuzz/corpus
	out/fuzz/fuzz_api -max_total_time=$(FUZZ_SECONDS) -seed=$(FUZZ_SEED) -timeout=30 \
	    -artifact_prefix=out/fuzz/ out/fuzz/corpus tests/fuzz/corpus

test: all debug $(CHECK_BINS)
	HAK_SANITIZERS=$(if $(HAVE_SAN),yes,no) bash tests/run.sh

stress: all debug $(CHECK_BINS)
	HAK_SANITIZERS=$(if $(HAVE_SAN),yes,no) STRESS_SECONDS=120 bash tests/run.sh stress

bench: all
	bash scripts/bench.sh $(if $(QUICK),--quick,)

# Throughput against threads (1, 2, 4 ... nproc; THREADS="..." to choose)
# for bench_xthread (prodcons, pairs), larson and bench_large_mt:
# out/bench-scale/scale.{csv,svg}.
bench-scale: all
	bash scripts/bench_scale.sh $(if $(QUICK),--quick,) $(if $(THREADS),--threads "$(THREADS)",)

# Real programs (python3, perl, sqlite3, gcc, git, redis) under each
# allocator: out/bench-programs/programs.csv.
bench-programs: all
	bash scripts/bench_programs.sh $(if $(QUICK),--runs 1,)

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
