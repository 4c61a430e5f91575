#!/bin/bash
# LD_PRELOAD smoke run of real programs: each workload runs once under
# glibc malloc and once with LD_PRELOAD=$HAK_TEST_LIB (and once more with
# each of $HAK_TEST_DEBUG_LIB and the hardened $HAK_TEST_SECURE_LIB that
# exist); stdout and exit status must be identical, and HAKMEM_STATS=1 must
# show that hakmem was really loaded.
# Programs that are not installed are skipped (SKIP line, not a failure).
#
# Env: ROOT (repo root), HAK_TEST_LIB, HAK_TEST_DEBUG_LIB, HAK_TEST_SECURE_LIB
# (set by tests/run.sh).
set -u
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
HAK_TEST_LIB=${HAK_TEST_LIB:-$ROOT/out/release/libhakmem.so}
HAK_TEST_DEBUG_LIB=${HAK_TEST_DEBUG_LIB:-$ROOT/out/debug/libhakmem.so}
HAK_TEST_SECURE_LIB=${HAK_TEST_SECURE_LIB:-$ROOT/out/secure/libhakmem.so}

if [ ! -f "$HAK_TEST_LIB" ]; then
    echo "FAIL: $HAK_TEST_LIB does not exist (run make)"
    exit 1
fi
LIBS=("$HAK_TEST_LIB")
[ -f "$HAK_TEST_DEBUG_LIB" ] && LIBS+=("$HAK_TEST_DEBUG_LIB")
[ -f "$HAK_TEST_SECURE_LIB" ] && LIBS+=("$HAK_TEST_SECURE_LIB")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hakmem-preload.XXXXXX")
REDIS_PID=
cleanup() {
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
failures=()
export LC_ALL=C TZ=UTC

# ---- workloads: each runs in an empty directory $WORK/run ------------------
w_python3() {
    cat > work.py <<'EOF'
import hashlib, json, random, threading
random.seed(42)
d = {}
for i in range(150000):
    d["k%d" % i] = [i, str(i) * 3, {"x": i * 0.5, "t": "v" * (i % 40)}]
keys = sorted(d, key=lambda k: (len(k), k[::-1]))
s = json.dumps(d, sort_keys=True)
d2 = json.loads(s)
print(len(s), hashlib.sha256(s.encode()).hexdigest(), d2 == d, keys[:3], keys[-3:])
words = ["".join(random.choice("abcdefgh") for _ in range(random.randint(1, 24)))
         for _ in range(80000)]
uniq = sorted(set(words))
print(len(uniq), uniq[:4], uniq[-2:], sum(map(len, words)))
big = [bytearray(random.randint(1, 200000)) for _ in range(200)]
print(sum(map(len, big)))
results = [None] * 8
def work(i):
    acc = {}
    lst = []
    for j in range(30000):
        k = (i * 7919 + j * 31) % 1000
        acc[k] = (acc.get(k, "") + str(j))[-60:]
        lst.append((j * i) % 977)
        if len(lst) > 5000:
            lst.sort()
            del lst[::2]
    results[i] = (sum(len(v) for v in acc.values()), sum(lst))
ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for t in ts: t.start()
for t in ts: t.join()
print(results)
EOF
    python3 work.py
}

w_perl() {
    perl -e '
        my %h;
        for my $i (1 .. 200000) { $h{"key$i"} = "v" . ($i * 7 % 1000) x (1 + $i % 5) }
        my $c = 0;
        for my $k (keys %h) { $c++ if $k =~ /^key(\d*)7$/ }
        my $s = join(",", map { "$_=$h{$_}" } sort keys %h);
        (my $t = $s) =~ s/v(\d+)/"w" . ($1 * 2)/ge;
        print "$c ", length($s), " ", length($t), "\n";
        my @w = sort { length($a) <=> length($b) or $a cmp $b } split /,/, substr($t, 0, 200000);
        print "@w[0 .. 4]\n";
        my @m = ($t =~ /key(\d+)=w(\d+)/g);
        print scalar(@m), " ", $m[-1], "\n";
        delete $h{"key$_"} for 1 .. 100000;
        print scalar(keys %h), "\n";
    '
}

w_sort() {
    awk 'BEGIN { for (i = 0; i < 200000; i++) printf "%d line %x %s\n", (i * 7919) % 200003, i * 31, substr("abcdefghijklmnopqrstuvwxyz", i % 26 + 1, i % 7) }' > in.txt
    sort in.txt | md5sum
    sort -n -k1,1 -S 2M in.txt | md5sum
    sort --parallel=4 -S 10M -k3,3 -k1,1n in.txt | md5sum
    sort -u -k3,3 in.txt | wc -l
    sort -r in.txt | head -3
}

w_sqlite3() {
    {
        echo "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, v REAL, grp INT, blob BLOB);"
        echo "BEGIN;"
        awk 'BEGIN { for (i = 1; i <= 20000; i++) printf "INSERT INTO t VALUES(%d, '"'"'name%d'"'"', %d.5, %d, zeroblob(%d));\n", i, i * 13 % 20011, i * 3, i % 17, i % 700 }'
        echo "COMMIT;"
        echo "SELECT count(*), sum(v), avg(v), min(name), max(name), sum(length(blob)) FROM t;"
        echo "SELECT grp, count(*), sum(v), group_concat(id % 10, '') FROM t GROUP BY grp ORDER BY grp LIMIT 5;"
        echo "CREATE INDEX t_name ON t(name);"
        echo "SELECT id, name FROM t WHERE name LIKE 'name1%' ORDER BY name DESC LIMIT 5;"
        echo "SELECT count(DISTINCT name), total(length(upper(name) || lower(name))) FROM t;"
        echo "UPDATE t SET name = name || '-x' WHERE grp = 3;"
        echo "DELETE FROM t WHERE id % 3 = 0;"
        echo "VACUUM;"
        echo "SELECT count(*), sum(id) FROM t WHERE name LIKE '%-x';"
        echo "PRAGMA integrity_check;"
    } | sqlite3 db.sqlite
}

w_git() {
    export HOME=$PWD/home GIT_CONFIG_NOSYSTEM=1
    export GIT_AUTHOR_NAME=Hak GIT_AUTHOR_EMAIL=hak@example.com
    export GIT_COMMITTER_NAME=Hak GIT_COMMITTER_EMAIL=hak@example.com
    export GIT_AUTHOR_DATE='2020-01-01T00:00:00Z' GIT_COMMITTER_DATE='2020-01-01T00:00:00Z'
    mkdir -p home
    git init -q -b main repo && cd repo || return 1
    git config gc.auto 0
    for c in 1 2 3; do
        for f in $(seq 1 40); do
            awk -v f="$f" -v c="$c" 'BEGIN { for (i = 0; i < 300; i++) print "file", f, "commit", c, "line", i * f * c }' > "f$f.txt"
        done
        mkdir -p "dir$c" && seq 1 $((c * 1000)) > "dir$c/seq.txt"
        git add -A && git commit -q -m "commit $c" || return 1
    done
    git rm -q f1.txt && git commit -q -m "remove f1"
    git log --stat --format='%H %an %ad %s'
    git gc -q || return 1
    git count-objects -v | grep -E '^(count|in-pack|packs):'
    git fsck --full
    git diff --stat HEAD~3 HEAD | tail -1
    git rev-parse HEAD HEAD^{tree}
}

w_gcc() {
    cat > prog.c <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct node { struct node *next; char *s; };
static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
int main(void) {
    struct node *head = NULL;
    unsigned long h = 5381;
    for (int i = 0; i < 100000; i++) {
        struct node *n = malloc(sizeof *n);
        n->s = malloc(1 + i % 300);
        snprintf(n->s, 1 + i % 300, "%d-%x-%o", i * 7, i, i * 3);
        n->next = head;
        head = n;
    }
    char **v = malloc(100000 * sizeof *v);
    int k = 0;
    for (struct node *n = head; n; n = n->next) v[k++] = n->s;
    qsort(v, k, sizeof *v, cmp);
    for (int i = 0; i < k; i++)
        for (char *c = v[i]; *c; c++) h = h * 33 + (unsigned char)*c;
    while (head) { struct node *n = head; head = n->next; free(n->s); free(n); }
    free(v);
    char *r = NULL;
    for (int i = 1; i < 5000; i++) { r = realloc(r, i * 37); r[i * 37 - 1] = 1; }
    free(r);
    printf("%d %lu\n", k, h);
    return 0;
}
EOF
    gcc -O2 -Wall -o prog prog.c && ./prog
}

# glibc's own names for its allocator, which some code calls directly:
# a block may go from either name to the other (hakmem exports both).
w_libc_names() {
    cat > names.c <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);
int main(void) {
    unsigned long sum = 0;
    for (int i = 0; i < 2000; i++) {
        size_t n = (size_t)i * 977 % 300000 + 1;
        char *p = malloc(n);
        memset(p, 1, n);
        __libc_free(p);
        p = __libc_malloc(n);
        memset(p, 2, n);
        p = realloc(p, n + 5000);
        sum += (unsigned char)p[n - 1];
        free(p);
        p = malloc(n);
        memset(p, 3, n);
        p = __libc_realloc(p, n / 2 + 1);
        sum += (unsigned char)p[n / 2];
        __libc_free(p);
        p = __libc_calloc(1, n);
        for (size_t k = 0; k < n; k += 61) sum += (unsigned char)p[k];
        free(p);
        p = __libc_memalign(256, n);
        sum += (size_t)p & 255;
        free(p);
    }
    printf("%lu\n", sum);
    return 0;
}
EOF
    gcc -O1 -o names names.c && ./names
}

# A binary built against glibc before 2.26 binds cfree by its old version
# (cfree@GLIBC_2.2.5, which libc.so.6 still defines: its free): glibc's
# free got hakmem's blocks and aborted until hakmem defined cfree too.
w_cfree() {
    cat > old.c <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
void cfree(void *);
__asm__(".symver cfree,cfree@GLIBC_2.2.5");
int main(void) {
    static const size_t sizes[] = { 24, 5000, 300000, 3 << 20 };
    unsigned long sum = 0;
    for (int round = 0; round < 100; round++)
        for (int i = 0; i < 4; i++) {
            char *p = malloc(sizes[i]);
            memset(p, round, sizes[i]);
            sum += (unsigned char)p[sizes[i] - 1];
            cfree(p);
        }
    printf("%lu\n", sum);
    return 0;
}
EOF
    gcc -O1 -o old old.c && ./old
}

# A failed dlopen, then a free of one of glibc's own blocks, then dlerror():
# the free must not clear the error the program has not read yet (hakmem
# looks glibc's free up by name, once, when it starts, not inside a free).
w_dlerror() {
    cat > dlerr.c <<'EOF'
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    void *(*glibc_malloc)(size_t) = libc ? (void *(*)(size_t))dlsym(libc, "malloc") : NULL;
    void *p = glibc_malloc ? glibc_malloc(100) : NULL;
    void *h = dlopen("/nonexistent/libx.so", RTLD_NOW);
    free(p);
    const char *e = dlerror();
    printf("%p %s\n", h, e ? e : "(error lost)");
    return 0;
}
EOF
    gcc -O1 -o dlerr dlerr.c && ./dlerr
}

# A plugin loaded with RTLD_DEEPBIND (as php loads its extensions) frees
# the program's blocks and hands it its own: with the flag, the plugin
# binds to glibc's malloc and free, and glibc's free of a hakmem block
# crashes (php died at startup), so hakmem's dlopen clears it.  The plugin
# is found by bare name through the program's RUNPATH: dlopen must still
# see the program as its caller.
w_deepbind() {
    mkdir sub
    cat > plug.c <<'EOF'
#include <stdlib.h>
#include <string.h>
void plug_free(void *p) { free(p); }
void *plug_realloc(void *p, size_t n) { return realloc(p, n); }
char *plug_strdup(const char *s) { return strdup(s); }
void *plug_malloc(size_t n) { void *p = malloc(n); memset(p, 7, n); return p; }
EOF
    cat > deep.c <<'EOF'
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    void *h = dlopen("libplug.so", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!h) { printf("dlopen: %s\n", dlerror()); return 1; }
    void (*pfree)(void *) = (void (*)(void *))dlsym(h, "plug_free");
    void *(*prealloc)(void *, size_t) = (void *(*)(void *, size_t))dlsym(h, "plug_realloc");
    char *(*pstrdup)(const char *) = (char *(*)(const char *))dlsym(h, "plug_strdup");
    void *(*pmalloc)(size_t) = (void *(*)(size_t))dlsym(h, "plug_malloc");
    unsigned long sum = 0;
    for (int i = 0; i < 3000; i++) {
        size_t n = (size_t)i * 7919 % 400000 + 1;
        char *p = malloc(n);
        memset(p, i, n);
        p = prealloc(p, n + 100);
        sum += (unsigned char)p[n - 1];
        pfree(p);
        unsigned char *q = pmalloc(n);
        sum += q[n - 1];
        q = realloc(q, n / 2 + 1);
        free(q);
        char *s = pstrdup("plugin");
        sum += strlen(s);
        free(s);
    }
    printf("%lu\n", sum);
    return dlclose(h);
}
EOF
    gcc -O1 -shared -fPIC -o sub/libplug.so plug.c &&
        gcc -O1 -o deep deep.c -Wl,--enable-new-dtags,-rpath,'$ORIGIN/sub' && ./deep
}

# php loads its extensions with RTLD_DEEPBIND (w_deepbind).
w_php() {
    php -r '$a = []; for ($i = 0; $i < 200000; $i++) $a["k$i"] = str_repeat("x", $i % 50);
            ksort($a); echo count($a), " ", md5(serialize($a)), " ", count(get_loaded_extensions()) > 0, "\n";'
}

w_redis() {
    local port tries=0 ok=0
    while [ $tries -lt 5 ] && [ $ok -eq 0 ]; do
        port=$((20000 + RANDOM % 30000))
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no --logfile '' --dir "$PWD" > server.log 2>&1 &
        REDIS_PID=$!
        for _ in $(seq 1 100); do
            [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && { ok=1; break; }
            kill -0 "$REDIS_PID" 2>/dev/null || break
            sleep 0.1
        done
        if [ $ok -eq 0 ]; then
            kill "$REDIS_PID" 2>/dev/null; wait "$REDIS_PID" 2>/dev/null; REDIS_PID=
        fi
        tries=$((tries + 1))
    done
    if [ $ok -eq 0 ]; then
        echo "redis-server did not start" >&2
        cat server.log >&2
        return 1
    fi
    awk 'BEGIN { for (i = 0; i < 4000; i++) { printf "SET key:%d ", i; for (j = 0; j <= i % 50; j++) printf "v%d", i; printf "\n" } }' \
        | redis-cli -p "$port" | sort | uniq -c
    awk 'BEGIN { for (i = 0; i < 4000; i += 3) printf "GET key:%d\n", i }' | redis-cli -p "$port" | md5sum
    awk 'BEGIN { for (i = 0; i < 4000; i += 2) printf "APPEND key:%d xyz\nDEL key:%d\n", i, i + 1 }' | redis-cli -p "$port" | md5sum
    redis-cli -p "$port" dbsize
    redis-cli -p "$port" mget key:0 key:2 key:3 key:3998
    redis-cli -p "$port" shutdown nosave > /dev/null 2>&1
    wait "$REDIS_PID"
    REDIS_PID=
    cat server.log >&2
}

# ---- driver ----------------------------------------------------------------
# run_one WORKLOAD TAG [LIB]: run in a fresh $WORK/run, output in $WORK/TAG.{out,err,rc}
run_one() {
    local w=$1 tag=$2 lib=${3:-}
    rm -rf "$WORK/run" && mkdir -p "$WORK/run"
    (
        cd "$WORK/run" || exit 1
        # not hakmem options: keep them away from the programs under test
        unset HAK_TEST_LIB HAK_TEST_DEBUG_LIB HAK_TEST_SECURE_LIB ROOT
        if [ -n "$lib" ]; then
            export LD_PRELOAD=$lib HAKMEM_STATS=1
        fi
        "w_$w"
    ) > "$WORK/$tag.out" 2> "$WORK/$tag.err"
    echo $? > "$WORK/$tag.rc"
}

# A program that leaves by _exit runs no destructor, so the HAKMEM_STATS
# report cannot appear; then ask ld.so whether it initialised the library.
# (Programs that close stderr before exit, as coreutils do, get the report
# on the copy of stderr hakmem keeps: checked below with cat.)
ld_loaded() {
    local lib=$1 prog=$2
    LD_PRELOAD=$lib LD_DEBUG=libs "$prog" --version 2>&1 > /dev/null < /dev/null \
        | grep -q "calling init: $lib"
}

check() {
    local w=$1
    shift
    for prog in "$@"; do
        if ! command -v "$prog" > /dev/null 2>&1; then
            echo "SKIP $w ($prog not installed)"
            return
        fi
    done
    run_one "$w" glibc
    if [ "$(cat "$WORK/glibc.rc")" != 0 ]; then
        echo "FAIL $w: fails even without hakmem (exit $(cat "$WORK/glibc.rc"))"
        tail -5 "$WORK/glibc.err"
        failures+=("$w(glibc)")
        return
    fi
    local ok=1 lib tag
    for lib in "${LIBS[@]}"; do
        case $lib in *debug*) tag=debug ;; *secure*) tag=secure ;; *) tag=release ;; esac
        run_one "$w" "$tag" "$lib"
        local bad=
        if [ "$(cat "$WORK/$tag.rc")" != 0 ]; then
            bad="exit status $(cat "$WORK/$tag.rc") (glibc 0)"
        elif ! cmp -s "$WORK/glibc.out" "$WORK/$tag.out"; then
            bad="output differs"
        elif grep -q "cannot be preloaded" "$WORK/$tag.err"; then
            bad="library not preloaded"
        elif ! grep -qi hakmem "$WORK/$tag.err" && ! ld_loaded "$lib" "$1"; then
            bad="no hakmem report on stderr with HAKMEM_STATS=1 and ld.so did not load it"
        fi
        if [ -n "$bad" ]; then
            echo "FAIL $w with $tag libhakmem: $bad"
            diff "$WORK/glibc.out" "$WORK/$tag.out" | head -10
            grep -v '^hakmem' "$WORK/$tag.err" | tail -10
            failures+=("$w($tag)")
            ok=0
        fi
    done
    [ $ok = 1 ] && echo "ok   $w ($(wc -l < "$WORK/glibc.out") lines identical, ${#LIBS[@]} libs)"
}

# the library itself loads and reports
if ! out=$(LD_PRELOAD=$HAK_TEST_LIB HAKMEM_STATS=1 /bin/true 2>&1) || ! grep -qi hakmem <<<"$out"; then
    echo "FAIL: LD_PRELOAD=$HAK_TEST_LIB HAKMEM_STATS=1 /bin/true did not print a hakmem report:"
    echo "$out" | head -5
    failures+=(load)
fi
if ! out=$(LD_PRELOAD=$HAK_TEST_LIB HAKMEM_STATS=1 cat /dev/null 2>&1) || ! grep -q "peak RSS" <<<"$out"; then
    echo "FAIL: LD_PRELOAD=$HAK_TEST_LIB HAKMEM_STATS=1 cat /dev/null (closes stderr at exit) printed no report:"
    echo "$out" | head -5
    failures+=(report-after-close)
fi

check python3 python3
check perl perl
check sort sort awk md5sum
check sqlite3 sqlite3 awk
check git git awk
check gcc gcc
check libc_names gcc
check cfree gcc
check dlerror gcc
check deepbind gcc
check php php
check redis redis-server redis-cli awk

if [ ${#failures[@]} -gt 0 ]; then
    echo "test_preload: FAILED: ${failures[*]}"
    exit 1
fi
echo "test_preload: ok"
