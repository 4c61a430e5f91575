/* Thread heaps: the runtime's set-up (secret, free mark, options, class
 * table), refilling a thread front from the heap's spans, and the life
 * cycle of heaps: a thread takes one (a new one, or one an exited thread
 * gave up), gives it back at exit, trims it; fork.
 *
 * The fast paths (api.c) only pop and push front.free[cls]; spans are in
 * span.c, the slow paths of free in free.c.  See types.h for the data
 * structures.
 * SPDX-License-Identifier: MIT */
#include "harden.h"
#include "heap.h"
#include "os.h"
#include "registry.h"

#include <errno.h>
#include <stdio.h>
#include <pthread.h>
#include <string.h>
#include <sys/auxv.h>

__thread ThreadFront thread_front __attribute__((tls_model("initial-exec")));
uintptr_t process_secret;
uintptr_t free_mark_value;
uint64_t tail_pattern;

Lock   heaps_mutex = LOCK_INIT;
Heap  *all_heaps;          /* every heap, linked by all_next      */
Heap  *abandoned_heaps;    /* heaps of exited threads, oldest first */
static Heap *abandoned_tail; /* (heaps_mutex: the queue below)       */
static char  *heap_store;         /* storage that new heaps are cut from */
static size_t heap_store_left;
static pthread_key_t exit_key;
static bool          exit_key_made; /* false: the process has no key left */
bool          runtime_ready;
static _Atomic bool atfork_registered;
__thread bool fork_locks_held __attribute__((tls_model("initial-exec")));
static uint64_t last_collect_ms;
/* HEAP_ACTIVE ones, and a thread taking a heap over (heap_take_over):
 * atomic adds, read without a lock by the purger (heaps_running) */
static unsigned running_heaps;

#define HEAP_STRIDE align_up(sizeof(Heap), 64)


static void runtime_init(void)
{
    int saved = errno; /* a first malloc that succeeds leaves errno alone */
    /* The kernel gives every process 16 random bytes (AT_RANDOM). */
    const unsigned char *rnd = (const unsigned char *)getauxval(AT_RANDOM);
    uint64_t r = 0;
    if (rnd)
        memcpy(&r, rnd + 8, sizeof r); /* not 8-aligned */
    uintptr_t s = (uintptr_t)r;
    s ^= (uintptr_t)&s * 0x9E3779B97F4A7C15ull;
    process_secret = s | 1;
    tail_pattern = (uint64_t)((uint8_t)(process_secret >> 40) | 0x81) * 0x0101010101010101ull;
    /* The free mark sits in every free block, where a program with a
     * use-after-free can read it: it is drawn on its own, not derived from
     * AT_RANDOM (glibc's stack-protector and pointer-guard bytes). */
    uint64_t mark = 0;
    if (!os_random(&mark, sizeof mark))
        mark = (os_now_ms() ^ (uintptr_t)&mark) * 0xD6E8FEB86659FD93ull;
    free_mark_value = (uintptr_t)mark | 1;
    options_init();
    stats_init();
    classes_init();
    /* Without the key (a process that used up its 1024, hakmem dlopen()ed
     * late) no thread gives its heap back when it exits, so the count of
     * running heaps never tells the purger that the program's threads
     * have ended: there is none (decay runs inside operations). */
    exit_key_made = pthread_key_create(&exit_key, heap_thread_exit) == 0;
    if (!exit_key_made) {
        write_stderr("hakmem: no thread-specific key left: heaps of exited threads are not reused, no purger thread\n");
        purger_forgo();
    }
    __atomic_store_n(&runtime_ready, true, __ATOMIC_RELEASE);
    if (options.verbose)
        options_print();
    errno = saved;
}

/* ------------------------------------------------------------------ */
/* Refill                                                               */

/* A span whose free list was just taken: all its blocks but the never-used
 * ones are out.  It carves for the class if nobody does, or waits on the
 * partial queue, or is marked FULL until blocks come back. */
static void span_park(Heap *h, ThreadFront *front, Span *s)
{
    if (s->fresh) {
        if (!front->cur[s->cls]) {
            s->state = SPAN_CURRENT;
            front->cur[s->cls] = s;
        } else {
            partial_push(h, s);
        }
        return;
    }
    uintptr_t expected = 0;
    if (atomic_compare_exchange_strong(&s->thread_free, &expected, SPAN_NOTIFY))
        s->state = SPAN_FULL;
    else
        partial_push(h, s); /* remote frees arrived meanwhile */
}

/* The front's list of cls is empty: take a whole span's free blocks, preferring
 * blocks that came back (the partial queue) to never-used ones. */
static Block *refill(Heap *h, ThreadFront *front, unsigned cls, uint32_t *count)
{
#if HAK_DEBUG
    /* A check of the whole heap costs O(its blocks): one per 16 refills
     * for each SuperSlab it holds keeps its cost per refill bounded as the
     * heap grows (one per 64 refills of each class made perl with a
     * 1.2 GB heap 14x slower than the release build). */
    if (h->checks_due-- == 0) {
        heap_validate(h, front);
        h->checks_due = 16 * (h->superslabs_live + 1);
    }
#endif
    for (;;) {
        Span *s = h->partial[cls];
        if (s) {
            partial_remove(h, s);
            s->state = 0;
            Block *list = span_take(h, superslab_of(s), s, count);
            span_park(h, front, s);
            if (list)
                return list;
            continue;
        }
        if ((s = front->cur[cls]) != NULL) {
            Block *list = span_take(h, superslab_of(s), s, count);
            if (list)
                return list;
            /* Exhausted: mark it FULL unless remote frees just arrived. */
            uintptr_t expected = 0;
            if (!atomic_compare_exchange_strong(&s->thread_free, &expected, SPAN_NOTIFY))
                continue;
            HAK_ASSERT(s->used == span_capacity(s) && !s->free && !s->fresh);
            s->state = SPAN_FULL;
            front->cur[cls] = NULL;
            continue;
        }
        if ((s = span_new(h, cls)) == NULL)
            return NULL;
        s->state = SPAN_CURRENT;
        front->cur[cls] = s;
    }
}

static void atfork_register(void);
static void heap_release(ThreadFront *front);

/* h becomes front's heap (heaps_mutex held: released here); counted: the
 * thread is among the running heaps already (heap_take_over). */
static void front_attach(ThreadFront *front, Heap *h, bool counted)
{
    atomic_store(&h->state, HEAP_ACTIVE);
    large_fronts_share(counted ? __atomic_load_n(&running_heaps, __ATOMIC_RELAXED)
                               : __atomic_add_fetch(&running_heaps, 1, __ATOMIC_RELAXED));
    lock_release(&heaps_mutex);
    front->heap = h;
    for (unsigned c = 0; c < HAK_NCLASS; c++) /* the front is empty */
        front->room[c] = (int32_t)size_classes[c].front_max;
}

/* The abandoned heaps are a queue (heaps_mutex held): a thread that starts
 * adopts the heap given up longest ago.  The heap given up last is the one
 * whose blocks are being freed right now by the thread that took over its
 * thread's work (larson's successor, a server's next worker), which takes
 * it over on such a free (heap_take_over); adopted instead by some other
 * starting thread, it has that work's frees land in a heap whose thread
 * does not need them (larson at 16 threads, 2 cores, 12 interleaved runs:
 * median peak RSS 44.2 MB adopting the newest first, 36.8 MB the oldest;
 * at 8 threads 21.0 MB either way). */
static void abandoned_push(Heap *h)
{
    h->abandoned_next = NULL;
    if (abandoned_tail)
        abandoned_tail->abandoned_next = h;
    else
        __atomic_store_n(&abandoned_heaps, h, __ATOMIC_RELAXED);
    abandoned_tail = h;
}

/* The heap given up longest ago that no collector holds (heaps_mutex
 * held), or NULL: heap_collect_abandoned leaves the heaps it collects on
 * the queue, HEAP_BUSY. */
static Heap *abandoned_first(void)
{
    for (Heap *h = abandoned_heaps; h; h = h->abandoned_next)
        if (atomic_load_explicit(&h->state, memory_order_relaxed) == HEAP_ABANDONED)
            return h;
    return NULL;
}

/* Take h off the queue (false: it is not there). */
static bool abandoned_remove(Heap *h)
{
    Heap **link = &abandoned_heaps, *prev = NULL;
    while (*link && *link != h) {
        prev = *link;
        link = &(*link)->abandoned_next;
    }
    if (!*link)
        return false;
    __atomic_store_n(link, h->abandoned_next, __ATOMIC_RELAXED);
    if (abandoned_tail == h)
        abandoned_tail = prev;
    return true;
}

/* The thread frees into h, which its thread gave up: it gives up its own
 * heap and takes h, if its own heap is young (it has served fewer than
 * RECLAIM_MAX_ALLOCS mallocs: a thread with a working set of its own
 * keeps it) and h is still waiting on the abandoned queue (another thread
 * may have adopted it, or be collecting it).  Once a thread: it then frees
 * its old heap's blocks into a heap nobody runs, and taking that one back
 * would undo this.  This runs inside free(), which glibc calls with its
 * own locks held (pthread_join frees the exited thread's TLS under the
 * stack cache lock): nothing here may call into glibc's thread functions,
 * so the purger is not started from here (purger_poll). */
bool heap_take_over(ThreadFront *front, Heap *h)
{
    uint64_t allocs = 0;
    for (unsigned c = 0; c < HAK_NCLASS; c++)
        allocs += front->allocs[c];
    if (allocs >= RECLAIM_MAX_ALLOCS) {
        front->reclaim_tries = RECLAIM_WINDOW;
        return false;
    }
    lock_acquire(&heaps_mutex);
    if (atomic_load_explicit(&h->state, memory_order_relaxed) != HEAP_ABANDONED || !abandoned_remove(h)) {
        lock_release(&heaps_mutex);
        return false;
    }
    atomic_store(&h->state, HEAP_BUSY); /* nobody else adopts or collects it */
    STAT_INC(heaps_taken_over);
    lock_release(&heaps_mutex);
    /* first: giving the old heap up frees blocks (the hardened build's
     * quarantine), and none of those frees may take a heap over */
    front->reclaim_tries = RECLAIM_WINDOW;
    /* counted across the switch, so the count of heaps never reads 0 */
    __atomic_add_fetch(&running_heaps, 1, __ATOMIC_RELAXED);
    heap_release(front);
    lock_acquire(&heaps_mutex);
    front_attach(front, h, true);
    heap_validate(h, front);
    return true;
}

/* Give the thread a heap: an abandoned one if any, else a new one.  With
 * at_exit, heap_thread_exit runs when the thread exits. */
Heap *heap_acquire(ThreadFront *front, bool at_exit)
{
    lock_acquire(&heaps_mutex);
    if (!runtime_ready)
        runtime_init();
    Heap *h = abandoned_first();
    bool adopted = h != NULL;
    if (adopted) {
        abandoned_remove(h);
        STAT_INC(heaps_adopted);
    } else {
        if (heap_store_left < HEAP_STRIDE) {
            bool zeroed;
            size_t len = 64 * 1024;
            heap_store = extent_alloc(len, HAK_PAGE_SIZE, 0, &zeroed);
            if (!heap_store) {
                lock_release(&heaps_mutex);
                return NULL;
            }
            if (!zeroed)
                memset(heap_store, 0, len);
            heap_store_left = len;
        }
        h = (Heap *)heap_store;
        heap_store += HEAP_STRIDE;
        heap_store_left -= HEAP_STRIDE;
        large_front_init(&h->large);
        h->all_next = all_heaps;
        /* published whole: heaps_hold_decaying walks the list without the lock */
        __atomic_store_n(&all_heaps, h, __ATOMIC_RELEASE);
        STAT_INC(heaps_created);
    }
    front_attach(front, h, false);
    if (adopted)
        heap_validate(h, front); /* what the thread that gave it up left */
    if (at_exit && exit_key_made)
        pthread_setspecific(exit_key, h);
    atfork_register(); /* may allocate: only now that this thread has a heap */
    return h;
}

/* The fork handlers are registered as early as possible: by the first
 * heap or by hakmem's constructor, whichever comes first.  Handlers that
 * other code registered earlier run after our prepare handler and may
 * allocate: see lock_acquire. */
static void atfork_register(void)
{
    if (!atomic_load_explicit(&atfork_registered, memory_order_relaxed) &&
        !atomic_exchange(&atfork_registered, true))
        pthread_atfork(heaps_fork_prepare, heaps_fork_parent, heaps_fork_child);
}

void runtime_start(void)
{
    hak_free(hak_malloc(1)); /* the first heap sets up the runtime */
}

/* Set up before main when hakmem is preloaded or linked, so that
 * HAKMEM_VERBOSE reports early and fork handlers exist before threads. */
__attribute__((constructor)) static void process_start(void)
{
    runtime_ensure();
    atfork_register();
}

void *heap_alloc_slow(size_t size, unsigned cls)
{
    purger_poll();
    ThreadFront *front = &thread_front;
    Heap *h = front->heap;
    if (unlikely(!h)) {
        if (!(h = heap_acquire(front, !front->exited))) {
            errno = ENOMEM;
            return NULL;
        }
        if (size_classes[cls].block_size < size) /* the table was empty until now */
            cls = size_class_compute(size);
        if (unlikely(front->exited)) {
            /* Called from a thread-exit destructor that ran after ours: the
             * heap serves this one call and is given back at once, since
             * nothing would give it back later. */
            void *b = heap_alloc_slow(size, cls);
            heap_release(front);
            purger_poll();
            return b;
        }
    }
    if (HAK_HARDEN_ZERO_SIZE_GUARD && unlikely(cls == HAK_NO_CLASS)) /* size 0 */
        return zero_alloc(h);
    Block *b = front->free[cls];
    if (!b) {
        if (atomic_load_explicit(&h->delayed, memory_order_relaxed))
            heap_drain_delayed(h);
        uint32_t n;
        if (!(b = refill(h, front, cls, &n))) {
            errno = ENOMEM;
            return NULL;
        }
        front->room[cls] = (int32_t)(size_classes[cls].front_max - n);
    }
    front->free[cls] = block_pop_next(b);
    b->free_mark = 0;
    front->room[cls]++;
    front->allocs[cls]++;
    front_publish(h, front, cls);
    return b;
}

/* ------------------------------------------------------------------ */
/* Heap life cycle                                                      */

/* Collect the remote frees of every span of a heap nobody runs, and give
 * back what became empty.  The caller owns h exclusively (HEAP_BUSY). */
static void heap_collect(Heap *h)
{
    heap_drain_delayed(h);
    SuperSlab *ss = h->superslabs;
    while (ss) {
        SuperSlab *next = ss->next; /* ss may be released below */
        for (unsigned i = 1; i < HAK_SLABS_PER_SS; i++) {
            Span *s = &ss->spans[i];
            if (!s->nslabs || ss->span_head[i] != i)
                continue;
            if (atomic_load_explicit(&s->thread_free, memory_order_relaxed) <= SPAN_NOTIFY)
                continue;
            Block *b = (Block *)atomic_exchange_explicit(&s->thread_free, 0, memory_order_acquire);
            bool gone = false;
            while (b) {
                Block *n = block_next(b);
                gone = span_put(h, ss, s, b);
                b = n;
            }
            if (gone)
                break; /* every span of ss was empty, and ss is no longer ours */
        }
        ss = next;
    }
    lock_acquire(&h->slabs_lock);
    if (h->spare) {
        superslab_to_extents(h, h->spare);
        h->spare = NULL;
    }
    lock_release(&h->slabs_lock);
    heap_validate(h, NULL);
}

/* Everything the thread holds back goes to the heap: the front's blocks to
 * their spans, the carving spans to the partial queues (or away, if
 * empty). */
static void front_give_back(Heap *h, ThreadFront *front)
{
    for (unsigned cls = 0; cls < HAK_NCLASS; cls++)
        front_flush(h, front, cls, 0);
    for (unsigned cls = 0; cls < HAK_NCLASS; cls++) {
        Span *s = front->cur[cls];
        if (!s)
            continue;
        front->cur[cls] = NULL;
        partial_push(h, s);
        if (s->used == 0)
            span_release(h, superslab_of(s), s);
    }
}

static void heap_release(ThreadFront *front)
{
    quarantine_flush(front);
    Heap *h = front->heap; /* (after the flush, as in heap_trim) */
    front_give_back(h, front);
    large_front_flush(&h->large);
    front->heap = NULL;
    lock_acquire(&heaps_mutex);
    for (unsigned cls = 0; cls < HAK_NCLASS; cls++) { /* the TLS goes away */
        h->allocs[cls] += front->allocs[cls];
        front->allocs[cls] = 0;
        front_publish(h, front, cls);
    }
    atomic_store(&h->state, HEAP_BUSY);
    unsigned running = __atomic_sub_fetch(&running_heaps, 1, __ATOMIC_RELAXED);
    large_fronts_share(running);
    lock_release(&heaps_mutex);
    heap_collect(h);
    lock_acquire(&heaps_mutex);
    atomic_store(&h->state, HEAP_ABANDONED);
    abandoned_push(h);
    lock_release(&heaps_mutex);
    if (!running)
        purger_threads_ended();
}

/* Does any thread hold a heap?  If none does, the program's threads may
 * all have ended, and the purger looks (extent.c). */
bool heaps_running(void)
{
    return __atomic_load_n(&running_heaps, __ATOMIC_RELAXED) != 0;
}

/* malloc_trim, for the calling thread: its front and carving spans, the
 * frees other threads sent to its spans, its spare SuperSlab and the pages
 * of its free slabs all go back.  (Other running threads' fronts are
 * theirs alone: they are given back when those threads exit.) */
void heap_trim(void)
{
    ThreadFront *front = &thread_front;
    if (!front->heap)
        return;
    /* first, and the heap read after it: a block the flush frees into an
     * abandoned heap takes that heap over (heap_take_over), which gives
     * the one the thread had up */
    quarantine_flush(front);
    Heap *h = front->heap;
    front_give_back(h, front);
    large_front_flush(&h->large);
    heap_collect(h);
    heap_purge_free_slabs(h);
    heap_validate(h, front);
}

/* The exit_key destructor.  Other keys' destructors (and C++ thread_local
 * ones) may still allocate after it: such a malloc gets a heap for that
 * one call (heap_alloc_slow), since nothing would give a heap back later. */
void heap_thread_exit(void *unused)
{
    ThreadFront *front = &thread_front;
    if (!front->heap)
        return;
    front->exited = true;
    heap_release(front);
    purger_poll();
}

LargeFront *heap_large_front_slow(ThreadFront *front)
{
    if (front->exited)
        return NULL;
    Heap *h = heap_acquire(front, true);
    return h ? &h->large : NULL;
}

/* Reclaim the memory that other threads freed into abandoned heaps.  Runs
 * before mapping a new SuperSlab (rate-limited) and in malloc_trim.  Each
 * heap is collected where it waits on the queue, marked HEAP_BUSY (no
 * adopter, take-over or other collector touches it meanwhile), so that a
 * thread starting meanwhile still adopts one of the others: a collector
 * that took them all off the queue had such threads make new heaps, and
 * with malloc_trim called often beside short threads their number grew
 * without bound (583 heaps, 24 MiB after 60,000 rounds of 4 threads, a
 * trim every millisecond; tests/test_thread_churn.c).  Heaps given up
 * meanwhile join the queue's end: the walk stops at the count it saw
 * first. */
void heap_collect_abandoned(bool all)
{
    uint64_t now = os_now_ms();
    if (!all && now - __atomic_load_n(&last_collect_ms, __ATOMIC_RELAXED) < COLLECT_INTERVAL_MS)
        return;
    __atomic_store_n(&last_collect_ms, now, __ATOMIC_RELAXED);
    lock_acquire(&heaps_mutex);
    unsigned left = 0;
    for (Heap *h = abandoned_heaps; h; h = h->abandoned_next)
        left++;
    for (Heap *h = abandoned_heaps; h && left; h = h->abandoned_next, left--) {
        if (atomic_load_explicit(&h->state, memory_order_relaxed) != HEAP_ABANDONED)
            continue; /* another collector's */
        atomic_store(&h->state, HEAP_BUSY); /* so it stays on the queue, linked */
        lock_release(&heaps_mutex);
        heap_collect(h);
        if (all)
            heap_purge_free_slabs(h);
        lock_acquire(&heaps_mutex);
        atomic_store(&h->state, HEAP_ABANDONED);
    }
    lock_release(&heaps_mutex);
}

/* Under the heap list's lock, which fork takes first: a fork never
 * happens while the purger holds a front. */
uint64_t heaps_decay(uint64_t now)
{
    uint64_t next = 0;
    CachedExtent *idle = NULL;
    lock_acquire(&heaps_mutex);
    for (Heap *h = all_heaps; h; h = h->all_next) {
        int st = atomic_load_explicit(&h->state, memory_order_relaxed);
        if (st == HEAP_ORPHAN)
            continue; /* a fork child's: its thread is gone, maybe mid-update */
        uint64_t due = heap_slabs_decay(h, now);
        if (due && (!next || due < next))
            next = due;
        if (st != HEAP_ACTIVE)
            continue; /* given up: its large front was given back then */
        due = large_front_decay(&h->large, now, &idle);
        if (due && (!next || due < next))
            next = due;
    }
    lock_release(&heaps_mutex); /* threads start, exit and take over heaps meanwhile */
    large_cache_release_decayed(idle);
    return next;
}

bool heaps_hold_decaying(void)
{
    for (Heap *h = __atomic_load_n(&all_heaps, __ATOMIC_ACQUIRE); h; h = h->all_next) {
        int st = atomic_load_explicit(&h->state, memory_order_relaxed);
        if ((st == HEAP_ACTIVE && large_front_held(&h->large)) ||
            (st != HEAP_ORPHAN && atomic_load_explicit(&h->slabs_dirty, memory_order_relaxed)))
            return true;
    }
    return false;
}

void heaps_fork_prepare(void)
{
    harden_fork(0);
    lock_acquire(&heaps_mutex);
    extent_fork_prepare();
    fork_locks_held = true;
}

void heaps_fork_parent(void)
{
    fork_locks_held = false;
    extent_fork_parent();
    lock_release(&heaps_mutex);
    harden_fork(1);
}

/* In the child only the forking thread exists.  The heaps of the other
 * threads may have been in the middle of an update: they are left alone
 * (leaked, like glibc leaks their tcaches), never adopted. */
void heaps_fork_child(void)
{
    fork_locks_held = false;
    extent_fork_child();
    lock_reset(&heaps_mutex);
    harden_fork(2);
    for (Heap *h = all_heaps; h; h = h->all_next) {
        int st = atomic_load(&h->state);
        if (h != thread_front.heap && (st == HEAP_ACTIVE || st == HEAP_BUSY)) {
            atomic_store(&h->state, HEAP_ORPHAN);
            abandoned_remove(h); /* (one a collector held stayed on the queue) */
        }
    }
    unsigned running = thread_front.heap != NULL;
    __atomic_store_n(&running_heaps, running, __ATOMIC_RELAXED);
    large_fronts_share(running);
    large_cache_fork_child();
}

