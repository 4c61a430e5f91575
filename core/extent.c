/* Extents: the one place where memory comes from and goes back to the OS.
 *
 * Address space is reserved from the OS in large 2 MiB-aligned
 * reservations (32 MiB growing to 1 GiB), registered as CHUNK_EXTENT.  The
 * page-granular free ranges of all reservations are kept in an index
 * (ranges.c) that finds a range by size (best fit among resident,
 * not-yet-purged ranges first) and by its neighbours (frees coalesce),
 * each in O(1) expected time.  SuperSlabs (2 MiB, 2 MiB-aligned) and large
 * blocks both come from here, so an emptied SuperSlab and a freed large
 * block are the same kind of cached memory.
 *
 * Nothing is unmapped in steady state.  Free ranges stay "dirty" (resident)
 * until the decay policy purges them with madvise: after the decay time, or
 * at once when dirty bytes exceed HAKMEM_CACHE_MAX_MB.  extent_trim()
 * (malloc_trim) purges everything and unmaps wholly free reservations.
 *
 * All of this runs under one lock, taken only when a SuperSlab or a large
 * extent changes hands outside the caches (large_cache.c); mapping a new
 * reservation takes the growth lock instead (grow_lock).
 *
 * With guard pages (the hardened build), free ranges are PROT_NONE: a run
 * off the end of any block into memory nobody holds faults.  extent_alloc
 * makes what it hands out accessible, extent_free inaccessible again.
 * SPDX-License-Identifier: MIT */
#include "os.h"
#include "ranges.h"
#include "registry.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <string.h>

/* solo: mapped for one request bigger than the reservation due next
 * (reserve_and_lock), of that request's size. */
typedef struct Reservation { uintptr_t start; size_t len; bool solo; } Reservation;

static Lock ext_lock = LOCK_INIT;
/* Taken (before ext_lock) by a thread that found no fit, for as long as it
 * maps a new reservation: threads that miss at the same time then wait for
 * that one instead of each mapping their own (16 threads of 64-576 KiB
 * blocks reserved 0.6-1.9 GiB for 40 MB in use), while every other extent
 * operation goes on under ext_lock. */
static Lock grow_lock = LOCK_INIT;
static Reservation reservations[MAX_RESERVATIONS]; /* sorted by start */
static size_t      nreservations;
static size_t      bytes_mapped;
static uint64_t    last_decay_ms;
static uint64_t    last_dirty_ms; /* the latest free's time (range_since_after) */
static _Atomic bool purger_started; /* written under the lock (the purger, below) */

/* The decay time adapts to the program (internal.h, decay_time): memory
 * that decay purged and that an allocation takes back soon after was
 * purged too early (the program frees it, pauses, and uses it again: a
 * worker between requests, a loop with a sleep).  Its pages fault in
 * again, so the decay time doubles, up to DECAY_MAX_FACTOR times
 * HAKMEM_DECAY_MS; it halves for each DECAY_CALM_FACTOR times that longest
 * time that passes without a change, down to HAKMEM_DECAY_MS, once decay
 * has purged something since the change (a program that keeps reusing its
 * memory within the longer time purges nothing, and a shorter one would
 * only purge it and fault it back in again).  A program that frees
 * memory for good (an interpreter's peak, an idle pool) keeps the short
 * one.  The resident parts of the last RECENT_PURGES ranges that decay
 * purged say where such an allocation would land; only allocations of
 * memory that is not resident (purged, or never used) look, since they
 * fault pages in anyway; under the lock. */
_Atomic uint64_t decay_lengthened_ms; /* 0: HAKMEM_DECAY_MS */
static uint64_t    decay_changed_ms;
static bool        decay_purged_since_change;
typedef struct RecentPurge { uintptr_t start, end; uint64_t ms; size_t taken; } RecentPurge;
static RecentPurge recent_purges[RECENT_PURGES];
static unsigned    recent_purge_next;

static uint64_t decay_max_ms(void) { return (uint64_t)options.decay_ms * DECAY_MAX_FACTOR; }

static void decay_set(uint64_t ms, uint64_t now)
{
    atomic_store_explicit(&decay_lengthened_ms, ms > (uint64_t)options.decay_ms ? ms : 0,
                          memory_order_relaxed);
    decay_changed_ms = now;
    decay_purged_since_change = false;
}

/* decay_now is purging r at now: its resident part is noted, where it is
 * known.  A range is often a freed extent's pages beside memory never
 * used or purged long ago, which an allocation of fresh memory takes: the
 * part that was dirty is noted where the range's dirty bounds are exact
 * (range_dirty_exact), and nothing otherwise. */
static void purge_noted(const FreeRange *r, uint64_t now)
{
    if (!range_dirty_exact(r))
        return;
    recent_purges[recent_purge_next] = (RecentPurge){ r->dirty_lo, r->dirty_hi, now, 0 };
    recent_purge_next = (recent_purge_next + 1) % RECENT_PURGES;
}

/* An allocation takes [start, end) from purged memory: was it purged by
 * decay so recently that a longer decay time would have kept it?  Decay
 * was too short if the program takes back most of what it purged (a
 * block reused now and then in memory purged for good says nothing). */
static void decay_check_refault(uintptr_t start, uintptr_t end)
{
    uint64_t now = os_now_ms(), decay = decay_time();
    size_t purged = 0, taken = 0;
    for (unsigned i = 0; i < RECENT_PURGES; i++) {
        RecentPurge *p = &recent_purges[i];
        if (!p->ms || now - p->ms + decay >= decay_max_ms())
            continue;
        uintptr_t lo = p->start > start ? p->start : start, hi = p->end < end ? p->end : end;
        if (lo < hi) { /* (taken twice, it counts once) */
            p->taken += hi - lo;
            if (p->taken > p->end - p->start)
                p->taken = p->end - p->start;
        }
        purged += p->end - p->start;
        taken += p->taken;
    }
    if (!purged || taken < purged / 2)
        return;
    /* Once for all that decay purged until now: the rest of it being taken
     * back is the same pause. */
    memset(recent_purges, 0, sizeof recent_purges);
    decay_set(decay * 2 < decay_max_ms() ? decay * 2 : decay_max_ms(), now);
    STAT_INC(decay_lengthened);
}

void extent_lock(void) { lock_acquire(&ext_lock); }
void extent_unlock(void) { lock_release(&ext_lock); }

/* The debug build checks the whole range index every 256th allocation
 * and free (it is O(free ranges)); with the lock held. */
#ifdef HAK_DEBUG
static void ranges_validate_sometimes(void)
{
    static unsigned ops;
    if (++ops % 256 == 0)
        ranges_validate();
}
#else
static inline void ranges_validate_sometimes(void) { }
#endif

/* Free ranges never span two reservations, so that a reservation that is
 * entirely free is one range (extent_trim unmaps it). */
static size_t reservation_index(uintptr_t addr) /* the first starting at addr or above */
{
    size_t lo = 0, hi = nreservations;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (reservations[mid].start < addr) lo = mid + 1; else hi = mid;
    }
    return lo;
}

bool extent_reservation_starts_at(uintptr_t addr)
{
    size_t k = reservation_index(addr);
    return k < nreservations && reservations[k].start == addr;
}

/* Unmap reservation k, entirely free: r, its one free range, goes. */
static void reservation_unmap(size_t k, FreeRange *r)
{
    Reservation rv = reservations[k];
    range_remove(r);
    registry_set((void *)rv.start, rv.len, CHUNK_NONE);
    os_unmap((void *)rv.start, rv.len);
    bytes_mapped -= rv.len;
    memmove(&reservations[k], &reservations[k + 1], (nreservations - k - 1) * sizeof *reservations);
    __atomic_store_n(&nreservations, nreservations - 1, __ATOMIC_RELAXED);
}

/* Purge a free range, dirty and due (decay, the cap), or unmap it if it
 * is a solo reservation, entirely free: no other request can use it
 * whole, for free ranges never span reservations, and one a little
 * bigger would map one more.  (A loop of blocks of 1 GiB and a little
 * more each time, freed at once, mapped a reservation a round for good,
 * to 19 TiB of address space and the commit charge of its blocks, until
 * the table of reservations was full and malloc failed with nothing in
 * use: review 15.)  The reservations of the schedule stay, for the next
 * requests of any size.  False if madvise failed. */
static bool purge_or_unmap(FreeRange *r)
{
    size_t k = reservation_index(r->start);
    if (k < nreservations && reservations[k].solo && reservations[k].start == r->start &&
        reservations[k].len == r->len) {
        range_bytes_purged += r->dirty;
        reservation_unmap(k, r);
        return true;
    }
    return range_purge(r);
}

/* Above the cap on resident free memory, the ranges least recently made
 * dirty are purged first. */
static __attribute__((noinline)) void purge_down_to(size_t cap)
{
    while (range_bytes_dirty > cap) {
        FreeRange *oldest = ranges_dirty_oldest();
        if (!oldest || !purge_or_unmap(oldest)) /* madvise failed: later */
            break;
    }
}

static inline void purge_over_cap(void)
{
    size_t cap = (size_t)options.cache_max_mb << 20;
    if (unlikely(range_bytes_dirty > cap))
        purge_down_to(cap);
}

/* Decay: purge the ranges that stayed free longer than the decay time,
 * then what is above the cap.  Returns when the next dirty range expires
 * (0: none is left). */
static uint64_t decay_now(uint64_t now)
{
    uint64_t next = 0;
    last_decay_ms = now;
    /* halved for each calm period since it last changed (the purger may
     * have slept through several, with nothing to purge) */
    uint64_t calm = DECAY_CALM_FACTOR * decay_max_ms();
    if (atomic_load_explicit(&decay_lengthened_ms, memory_order_relaxed) && decay_purged_since_change &&
        now - decay_changed_ms >= calm) {
        uint64_t periods = (now - decay_changed_ms) / calm;
        decay_set(periods < 8 ? decay_time() >> periods : 0, now);
    }
    uint64_t decay = decay_time();
    for (FreeRange *r = ranges_dirty(), *n; r; r = n) {
        n = r->dirty_next; /* a purge takes r off the list */
        if (now - r->dirty_since >= decay) {
            FreeRange before = *r; /* the purge clears its counts */
            if (purge_or_unmap(r)) {
                purge_noted(&before, now);
                if (before.dirty) /* (a range counted clean, left by a carve */
                    decay_purged_since_change = true; /* from its resident end) */
            }
        } else if (!next || r->dirty_since + decay < next) {
            next = r->dirty_since + decay;
        }
    }
    purge_over_cap();
    return range_bytes_dirty ? (next ? next : now + 1) : 0;
}

/* How often decay runs (a quarter of the decay time, at least 1 ms): the
 * extents' inside extent operations, the purger's sleeps, the central large
 * cache's without a purger. */
static uint64_t decay_period(void)
{
    uint64_t quarter = decay_time() / 4;
    return quarter ? quarter : 1;
}

/* Does the purger's thread run?  Asked for (purger_want) is not enough:
 * it starts at the next malloc slow path (purger_poll), and a program
 * that only frees from then on would decay nothing. */
static inline bool purger_running(void)
{
    return atomic_load_explicit(&purger_started, memory_order_relaxed) &&
           !atomic_load_explicit(&purger_wanted, memory_order_relaxed);
}

/* Inside extent operations (never on the malloc/free fast path): the full
 * decay at most every decay period (with a decay time of 0, at every one),
 * unless the purger runs (it wakes when the next range is due; it never
 * runs with a decay time of 0), the cap at every one. */
static inline void decay(uint64_t now)
{
    if (!purger_running() && (!options.decay_ms || now - last_decay_ms >= decay_period()))
        decay_now(now);
    else
        purge_over_cap();
}

/* The purger: decay for a program that stopped calling malloc and free
 * (an idle server keeps whatever it freed last otherwise).  One thread,
 * started the first time at least PURGER_MIN_DIRTY bytes are in use or
 * wait for decay, so that small programs never get it; it sleeps until the next range
 * expires (at most four wake-ups per decay time) or, with nothing dirty,
 * until a free makes something dirty again.  It blocks every signal, so
 * that none of the program's handlers ever runs on it. */
static _Atomic uint32_t purger_wakeups; /* bumped under the lock to wake it */
static _Atomic bool   purger_idle; /* waiting for a free, not for a time */
/* The signal mask of the thread that started it: restored when it stops,
 * since it may be the process's last thread, which then runs exit() and
 * the atexit handlers (on the default stack size, for the same reason). */
static sigset_t       purger_creator_mask;
static _Atomic bool   purger_never; /* its start failed, or it stopped: never again */
_Atomic bool          purger_wanted; /* see purger_poll in internal.h */

/* Called and returns with the lock held: sleep without it until woken or
 * until deadline_ms (0: none).  A wake-up between the unlock and the sleep
 * is not lost: it changed the count the futex sleeps on.  false, without
 * sleeping, once the program's threads have ended: the purger must not be
 * the process's last thread.  A process lives as long as one of its
 * threads does, so a main thread that ended with pthread_exit, or a fork
 * child's only thread ending that way (Python's threads do), would leave
 * it running for ever, deaf to every signal the purger blocks.
 * While no thread holds a heap (heaps_running: each thread that ends
 * gives its heap back, and the last one wakes the purger), it asks the
 * kernel whether any other thread still runs (one may never have called
 * malloc, or be ending), and looks again after 1, 2, 4 ... ms, then every
 * second.  With no answer (no /proc when it started, a failed read), no
 * heap held is taken to mean none runs: better a purger lost than a
 * process that never ends. */
static unsigned purger_look_ms = 1;
static bool purger_sleep(uint64_t deadline_ms)
{
    uint32_t seen = atomic_load(&purger_wakeups);
    bool look = !heaps_running();
    extent_unlock();
    if (look) {
        if (os_last_thread() != 0) {
            extent_lock();
            return false;
        }
        uint64_t again = os_now_ms() + purger_look_ms;
        purger_look_ms = purger_look_ms < 512 ? purger_look_ms * 2 : 1000;
        if (!deadline_ms || again < deadline_ms)
            deadline_ms = again;
    } else {
        purger_look_ms = 1;
    }
    os_futex_wait(&purger_wakeups, seen, deadline_ms);
    extent_lock();
    return true;
}

static void purger_wake(void) /* with the lock held */
{
    purger_idle = false;
    atomic_fetch_add(&purger_wakeups, 1);
    os_futex_wake(&purger_wakeups, 1);
}

static void *purger_main(void *unused)
{
    extent_lock();
    for (;;) {
        purger_idle = false;
        extent_unlock(); /* the large cache gives extents back through here */
        uint64_t large_due = large_cache_decay(false);
        uint64_t fronts_due = heaps_decay(os_now_ms());
        if (fronts_due && (!large_due || fronts_due < large_due))
            large_due = fronts_due;
        extent_lock();
        uint64_t now = os_now_ms(), next = decay_now(now);
        if (large_due && (!next || large_due < next))
            next = large_due;
        if (!next) {
            /* Nothing to wait for, unless the large cache, a thread's
             * front or a heap's free slabs got something since they were
             * decayed: purger_request and purger_notify (after adding to
             * them) and this check (after setting idle) cannot both miss. */
            atomic_store(&purger_idle, true);
            atomic_thread_fence(memory_order_seq_cst);
            if (!large_cache_central_bytes() && !heaps_hold_decaying()) {
                if (!purger_sleep(0))
                    break;
                continue;
            }
            atomic_store(&purger_idle, false);
            next = now + decay_time();
        }
        /* (a heap with more free slabs to purge than a look may purge is
         * due now: again at once, the locks let go meanwhile) */
        if (next < now + decay_period() && !(fronts_due && fronts_due <= now))
            next = now + decay_period();
        if (!purger_sleep(next))
            break;
    }
    /* Stopped for good, as if its start had failed (no thread is left to
     * need it, but atexit handlers may still allocate): decay goes back
     * inside extent operations and purger_poll. */
    atomic_store(&purger_never, true);
    atomic_store(&purger_idle, false);
    atomic_store_explicit(&purger_started, false, memory_order_relaxed);
    atomic_store_explicit(&purger_wanted, true, memory_order_relaxed);
    extent_unlock();
    pthread_sigmask(SIG_SETMASK, &purger_creator_mask, NULL);
    return NULL;
}

/* The last heap was given back (heap.c): wake the purger to look whether
 * it must stop. */
void purger_threads_ended(void)
{
    if (!atomic_load_explicit(&purger_started, memory_order_relaxed) || fork_locks_held)
        return;
    extent_lock();
    purger_wake();
    extent_unlock();
}

/* fork: the growth lock is taken before the extents' lock, as everywhere. */
void extent_fork_prepare(void)
{
    lock_acquire(&grow_lock);
    lock_acquire(&ext_lock);
}

void extent_fork_parent(void)
{
    lock_release(&ext_lock);
    lock_release(&grow_lock);
}

/* The child has no purger: it asks for one as the parent did. */
void extent_fork_child(void)
{
    lock_reset(&ext_lock);
    lock_reset(&grow_lock);
    atomic_store_explicit(&purger_started, false, memory_order_relaxed);
    atomic_store(&purger_idle, false);
    atomic_store_explicit(&purger_wanted, atomic_load(&purger_never), memory_order_relaxed);
}

/* Ask for the purger (with the lock held); purger_poll starts it.  Not
 * while fork holds the locks, and not again once a start failed (a
 * program short of threads would pay a failing pthread_create on every
 * malloc slow path): decay then runs inside extent operations (extent_alloc)
 * and, for the central large cache, in purger_poll, so an idle program
 * keeps what it freed last. */
static inline void purger_want(void)
{
    if (atomic_load_explicit(&purger_started, memory_order_relaxed) || !options.decay_ms ||
        fork_locks_held || atomic_load_explicit(&purger_never, memory_order_relaxed))
        return;
    atomic_store_explicit(&purger_started, true, memory_order_relaxed);
    atomic_store_explicit(&purger_wanted, true, memory_order_relaxed);
}

/* The large cache holds cached bytes in its central part: the purger must
 * run to decay them (wake it if it sleeps with nothing to do; ask for one
 * past the threshold).  Lock-free once the purger runs. */
void purger_request(size_t cached)
{
    if (!options.decay_ms || fork_locks_held || atomic_load_explicit(&purger_never, memory_order_relaxed))
        return;
    if (atomic_load_explicit(&purger_started, memory_order_relaxed) && !atomic_load(&purger_idle))
        return;
    extent_lock();
    if (purger_idle)
        purger_wake();
    if (cached >= PURGER_MIN_DIRTY)
        purger_want();
    extent_unlock();
}

/* A large front was empty and holds extents now, or a heap had no free
 * slab that may be resident and has one now: wake the purger if it sleeps
 * with nothing to wait for.  Rare (a front seldom empties; a heap's free
 * slabs are seldom all purged or taken), so the fence that orders the
 * count before the look at purger_idle costs little. */
void purger_notify(void)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (!atomic_load_explicit(&purger_idle, memory_order_relaxed) || fork_locks_held)
        return;
    extent_lock();
    if (purger_idle)
        purger_wake();
    extent_unlock();
}

/* Without a purger (its start failed): the central large cache's decay
 * and the idle fronts', at most every decay/4 ms, from the malloc slow
 * paths. */
static void decay_without_purger(void)
{
    static _Atomic uint64_t last_ms;
    uint64_t now = os_now_ms(), last = atomic_load_explicit(&last_ms, memory_order_relaxed);
    if (now - last >= decay_period() && atomic_compare_exchange_strong(&last_ms, &last, now)) {
        large_cache_decay(false);
        heaps_decay(now);
    }
}

/* No purger, ever (heap.c: the process has no thread-specific key left) */
void purger_forgo(void)
{
    atomic_store(&purger_never, true);
    atomic_store_explicit(&purger_wanted, true, memory_order_relaxed);
}

/* pthread_create allocates: only from purger_poll, where the allocator is
 * between operations and holds no lock (and never from free, internal.h). */
void purger_start(void)
{
    if (atomic_load_explicit(&purger_never, memory_order_relaxed)) {
        decay_without_purger();
        return;
    }
    if (!atomic_exchange(&purger_wanted, false))
        return; /* another thread got there first */
    int saved = errno; /* the malloc that starts it leaves errno alone */
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    purger_creator_mask = old;
    pthread_t t;
    if (pthread_create(&t, &a, purger_main, NULL) == 0) {
        pthread_setname_np(t, "hakmem-purge");
    } else { /* decay goes back inside extent operations and purger_poll */
        STAT_INC(fallbacks);
        atomic_store(&purger_never, true);
        atomic_store_explicit(&purger_started, false, memory_order_relaxed);
        atomic_store_explicit(&purger_wanted, true, memory_order_relaxed);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
    errno = saved;
}

/* dirty_since: the time the range became free, or 0 if it reads as zero;
 * dirty: how many of its bytes may be resident. */
static void free_range_locked(uintptr_t start, size_t len, uint64_t dirty_since, size_t dirty, unsigned hot,
                              const FreeRange *part_of)
{
    if (!range_insert(start, len, dirty_since, dirty, hot, part_of)) {
        /* No record for it (out of memory): release the pages, keep the
         * address range reserved but unused, and count it. */
        os_purge((void *)start, len);
        STAT_INC(fallbacks);
    }
}

/* Map a new reservation that can hold len bytes at an address a with
 * (a + offset) a multiple of align.  Called with the lock released (mmap is
 * slow and must not make other threads wait); returns with the lock held. */
static bool reserve_and_lock(size_t len, size_t align, size_t offset)
{
    size_t n = __atomic_load_n(&nreservations, __ATOMIC_RELAXED);
    size_t want = RESERVE_MIN; /* doubling every second reservation */
    for (size_t i = 0; i < n / 2 && want < RESERVE_MAX; i++)
        want <<= 1;
    /* The reservation starts 2 MiB-aligned: a larger alignment may cost up
     * to align bytes of slack, a smaller one up to align less a page. */
    size_t slack = align > HAK_PAGE_SIZE ? align : 0;
    size_t need = len > SIZE_MAX / 2 - offset - slack ? 0 /* impossible */
                  : align_up(len + offset + slack, HAK_CHUNK_SIZE);
    /* A reservation of the request's own size is one block's: the kernel
     * judges it (os_map_aligned). */
    size_t planned = want;
    if (need > want) want = need;
    void *p = need ? os_map_aligned(want, HAK_CHUNK_SIZE, want == need) : NULL;
    if (!p && need && want > need) {
        want = need; /* low on address space: try the bare minimum */
        p = os_map_aligned(want, HAK_CHUNK_SIZE, true);
    }
    extent_lock();
    if (!p)
        return false;
    if (nreservations == MAX_RESERVATIONS) {
        os_unmap(p, want);
        return false;
    }
    registry_set(p, want, CHUNK_EXTENT);
    os_guard(p, want);
    size_t k = nreservations;
    while (k > 0 && reservations[k - 1].start > (uintptr_t)p) {
        reservations[k] = reservations[k - 1];
        k--;
    }
    reservations[k] = (Reservation){ (uintptr_t)p, want, want != planned };
    __atomic_store_n(&nreservations, nreservations + 1, __ATOMIC_RELAXED); /* read unlocked */
    bytes_mapped += want;
    free_range_locked((uintptr_t)p, want, 0, 0, 0, NULL);
    return true;
}

/* Out of memory, or of address space (RLIMIT_AS): the memory hakmem keeps
 * that holds no block goes back to the OS, as malloc_trim gives it, and
 * the request is tried once more (extent_alloc).  glibc unmaps a big
 * block at its free: without this, a program under `ulimit -v` that freed
 * 800 MiB could not have 1000, nor a C++ new handler that frees a reserve
 * get its retry.
 * Only what takes no lock a caller may hold (a new heap is made under
 * the heap list's): the central large cache and the extents' own free
 * memory, where wholly free reservations are unmapped.  (Running
 * threads' fronts stay theirs; the hardened build's large quarantine
 * keeps its blocks, whose protection could not be lifted anyway at the
 * kernel's cap on mappings.) */
static __attribute__((noinline, cold)) bool extent_reclaim(void)
{
    large_cache_decay(true);
    return extent_trim() != 0;
}

/* Big extents (BIG_EXTENT, tunables.h) are placed at the top of their
 * range and the rest at the bottom, so the two populations grow from
 * opposite ends instead of interleaving: holes left by big buffers then
 * stay big (bench_large: -12% peak RSS).  A close fit goes against the
 * range's resident end instead (range_find_fit). */
void *extent_alloc(size_t len, size_t align, size_t offset, bool *zeroed)
{
    HAK_ASSERT(len % HAK_PAGE_SIZE == 0 && offset % HAK_PAGE_SIZE == 0 && is_pow2(align) &&
               align >= HAK_PAGE_SIZE);
    uintptr_t at;
    bool reclaimed = false;
again:
    extent_lock();
    /* Once the purger runs, decay by time is its work (it wakes when the
     * next range is due): an allocation then reads no clock, unless it
     * takes memory that is not resident (decay_check_refault). */
    if (purger_running())
        purge_over_cap();
    else
        decay(os_now_ms());
    FreeRange *f = range_find_fit(len, align, offset, &at);
    if (!f) {
        extent_unlock();
        lock_acquire(&grow_lock);
        extent_lock();
        f = range_find_fit(len, align, offset, &at); /* another thread grew? */
        if (!f) {
            extent_unlock();
            /* A new reservation always fits the request: one is enough. */
            if (!reserve_and_lock(len, align, offset) ||
                !(f = range_find_fit(len, align, offset, &at))) {
                extent_unlock();
                lock_release(&grow_lock);
                if (!reclaimed && extent_reclaim()) {
                    reclaimed = true;
                    goto again;
                }
                return NULL;
            }
        }
        lock_release(&grow_lock);
    }
    /* The parts left below and above keep the record (the lower one if
     * there are two) and never carry more resident bytes than the whole. */
    uintptr_t start = f->start, end = f->start + f->len;
    size_t below = at - start, above = end - (at + len);
    size_t d_below = range_dirty_in(f, start, at);
    size_t d_above = range_dirty_in(f, at + len, end);
    if (d_above > f->dirty - d_below)
        d_above = f->dirty - d_below; /* (bounds not exact) */
    uint64_t since = range_since_after(f, d_below + d_above, last_dirty_ms);
    bool was_purged = !f->dirty_since;
    if (below && above) { /* (rare: an aligned carve) */
        FreeRange whole = *f; /* its bounds, which the trim cuts */
        range_trim(f, start, below, d_below, since);
        free_range_locked(at + len, above, since, d_above, whole.hot & RANGE_HOT_HI, &whole);
    } else if (below) {
        range_trim(f, start, below, d_below, since);
    } else if (above) {
        range_trim(f, at + len, above, d_above, since);
    } else {
        range_remove(f);
    }
    if (was_purged && options.decay_ms)
        decay_check_refault(at, at + len);
    /* A program that holds PURGER_MIN_DIRTY may free it all and never call
     * malloc again: it gets the purger now, at its next malloc slow path
     * (free never starts a thread), not at one after the frees. */
    if (bytes_mapped - range_bytes_free >= PURGER_MIN_DIRTY)
        purger_want();
    ranges_validate_sometimes();
    extent_unlock();
    if (HAK_GUARD_SIZE && !os_protect((void *)at, len, true)) {
        extent_free((void *)at, len);
        return NULL;
    }
    if (zeroed)
        *zeroed = was_purged;
    return (void *)at;
}

void extent_free(void *p, size_t len) { extent_free_since(p, len, 0); }

void extent_free_since(void *p, size_t len, uint64_t since)
{
    HAK_ASSERT((uintptr_t)p % HAK_PAGE_SIZE == 0 && len % HAK_PAGE_SIZE == 0);
    extent_lock();
    os_guard(p, len); /* under the lock: heaps_stats reads SuperSlab headers under it */
    /* dirty_since is never 0 (that means purged), and never ahead of the
     * clock: now | 1 would be, on a clock that only returns even values,
     * and decay would see the range as 2^64 ms old and purge it at once. */
    uint64_t now = os_now_ms();
    if (!since || since > now)
        since = now;
    last_dirty_ms = now;
    free_range_locked((uintptr_t)p, len, since ? since : 1, len, RANGE_HOT_LO | RANGE_HOT_HI, NULL);
    decay(now);
    ranges_validate_sometimes();
    if (range_bytes_dirty && options.decay_ms) {
        if (purger_idle) /* it sleeps with nothing to do: one wake-up */
            purger_wake();
        if (range_bytes_dirty >= PURGER_MIN_DIRTY)
            purger_want();
    }
    extent_unlock();
}

bool extent_grow(void *end, size_t extra)
{
    bool ok = false;
    extent_lock();
    FreeRange *f = range_starting_at((uintptr_t)end);
    /* not into the next reservation: a block freed there would make a
     * free range across the two, and neither could be unmapped */
    if (f && f->len >= extra && !extent_reservation_edge((uintptr_t)end)) {
        FreeRange r = *f;
        range_remove(f);
        if (r.len > extra) {
            size_t left = range_dirty_in(&r, r.start + extra, r.start + r.len);
            free_range_locked(r.start + extra, r.len - extra, range_since_after(&r, left, last_dirty_ms), left,
                              r.hot & RANGE_HOT_HI, &r);
        }
        ok = true;
    }
    extent_unlock();
    if (ok && HAK_GUARD_SIZE && !os_protect(end, extra, true)) {
        extent_free(end, extra);
        ok = false;
    }
    return ok;
}

void extent_free_purged(void *p, size_t len)
{
    extent_lock();
    os_guard(p, len);
    free_range_locked((uintptr_t)p, len, 0, 0, 0, NULL);
    extent_unlock();
}

size_t extent_trim(void)
{
    extent_lock();
    size_t released = range_bytes_dirty;
    for (FreeRange *r = ranges_dirty(), *n; r; r = n) {
        n = r->dirty_next;
        if (!range_purge(r))
            released -= r->dirty;
    }
    /* Unmap reservations that are entirely free: each is one free range. */
    for (size_t k = 0; k < nreservations;) {
        Reservation rv = reservations[k];
        FreeRange *f = range_starting_at(rv.start);
        if (!f || f->len != rv.len) {
            k++;
            continue;
        }
        reservation_unmap(k, f);
        released += rv.len;
    }
    extent_unlock();
    return released;
}

void extent_stats(struct hak_stats *st)
{
    extent_lock();
    st->lock_extents_acquired = ext_lock.acquired;
    st->lock_extents_contended = ext_lock.contended;
    st->lock_growth_acquired = grow_lock.acquired;
    st->lock_growth_contended = grow_lock.contended;
    st->bytes_mapped += bytes_mapped;
    st->bytes_cached += range_bytes_free;
    st->bytes_dirty += range_bytes_dirty;
    st->bytes_purged += range_bytes_purged;
    st->decay_ms = decay_time();
    extent_unlock();
}
