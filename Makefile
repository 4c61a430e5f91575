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
BENCHES := bench_random_mixed larson bench_mid_large_mt bench_large bench_fragment bench_prodcons
TESTSRC := $(wildcard tests/test_*.c)

OBJ_release := $(SRC:core/%.c=out/release/obj/%.o)
OBJ_debug   := $(SRC:core/%.c=out/debug/obj/%.o)

.SECONDEXPANSION:
.SECONDARY:
.PHONY: all release debug test stress bench bench-deps install uninstall clean
all release: out/release/libhakmem.so out/release/libhakmem.a \
             $(BENCHES:%=out/release/%) $(TESTSRC:tests/%.c=out/release/tests/%)
debug: out/debug/libhakmem.so out/debug/libhakmem.a $(TESTSRC:tests/%.c=out/debug/tests/%)

out/release/obj/%.o: core/%.c $(HDR) | out/release/obj
	$(CC) $(CFLAGS_release) -c $< -o $@
out/debug/obj/%.o: core/%.c $(HDR) | out/debug/obj
	$(CC) $(CFLAGS_debug) -c $< -o $@

out/%/libhakmem.so: $$(OBJ_$$*)
	$(CC) -shared -o $@ $^ $(LDLIBS) -Wl,-z,now -Wl,--version-script=core/exports.map
out/%/libhakmem.a: $$(OBJ_$$*)
	rm -f $@ && ar rcs $@ $^

# Benchmarks call plain malloc/free: one binary for every allocator (LD_PRELOAD).
out/release/bench_%: bench/bench_%.c | out/release
	$(CC) -O2 -g -std=gnu11 -D_GNU_SOURCE -pthread -o $@ $< -lm
out/release/larson: bench/larson.c | out/release
	$(CC) -O2 -g -std=gnu11 -D_GNU_SOURCE -pthread -o $@ $< -lm

# Tests link the static library, so both hak_* and malloc are hakmem's.
out/release/tests/%: tests/%.c tests/testutil.h out/release/libhakmem.a | out/release/tests
	$(CC) -O1 -g -std=gnu11 -D_GNU_SOURCE -pthread -Iinclude $(WARN) -o $@ $< out/release/libhakmem.a -lm
out/debug/tests/%: tests/%.c tests/testutil.h out/debug/libhakmem.a | out/debug/tests
	$(CC) -O1 -g -std=gnu11 -D_GNU_SOURCE -pthread -Iinclude $(WARN) -o $@ $< out/debug/libhakmem.a -lm

out/release out/debug out/release/obj out/debug/obj out/release/tests out/debug/tests:
	mkdir -p $@

test: all debug
	bash tests/run.sh

stress: all debug
	STRESS_SECONDS=120 bash tests/run.sh stress

bench: all
	bash scripts/bench.sh $(if $(QUICK),--quick,)

bench-deps:
	apt-get update && apt-get install -y libmimalloc2.0 libjemalloc2 libtcmalloc-minimal4 strace time

install: all
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 out/release/libhakmem.so $(DESTDIR)$(PREFIX)/lib/libhakmem.so
	install -m 644 out/release/libhakmem.a $(DESTDIR)$(PREFIX)/lib/libhakmem.a
	install -m 644 include/hakmem.h $(DESTDIR)$(PREFIX)/include/hakmem.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' scripts/hakmem > $(DESTDIR)$(PREFIX)/bin/hakmem
	chmod 755 $(DESTDIR)$(PREFIX)/bin/hakmem
	sed -e 's|@PREFIX@|$(PREFIX)|g' scripts/hakmem.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/hakmem.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/lib/libhakmem.so $(DESTDIR)$(PREFIX)/lib/libhakmem.a \
	      $(DESTDIR)$(PREFIX)/include/hakmem.h $(DESTDIR)$(PREFIX)/bin/hakmem \
	      $(DESTDIR)$(PREFIX)/lib/pkgconfig/hakmem.pc

clean:
	rm -rf out
