/* Statistics: hak_stats_get() and the report that HAKMEM_STATS=1 prints at
 * exit (also malloc_stats()).  malloc adds one to a per-thread counter;
 * everything else is counted per heap on slow paths (refills, cross-thread
 * frees), read from the span descriptors and thread fronts (blocks in use),
 * or kept in global relaxed counters (syscalls, fallbacks).
 * SPDX-License-Identifier: MIT */
#include "internal.h"
#include "heap.h"
#include "os.h"
#include "registry.h"

#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

GlobalStats global_stats;

HAK_API void hak_stats_get(struct hak_stats *st)
{
    memset(st, 0, sizeof *st);
    heaps_stats(st, NULL);
    extent_stats(st);
    large_stats(st);
#define COPY(name) st->name = atomic_load_explicit(&global_stats.name, memory_order_relaxed);
    HAK_GLOBAL_COUNTERS(COPY)
#undef COPY
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        st->peak_rss = (uint64_t)ru.ru_maxrss * 1024;
}

/* Where the report goes: stderr, or for the report at exit a copy of
 * stderr made at start-up (exit_fd), since programs may close stderr
 * before they exit (coreutils' close_stdout closes both): HAKMEM_STATS=1
 * printed nothing for ls and cat.  The copy is used only if it is still
 * open on the same file: a program that closed it may have opened one of
 * its own under that number, which the report must not write into. */
static int exit_fd = -1;
static uint64_t exit_file[2];
#define LINE(...) do { snprintf(buf, sizeof buf, __VA_ARGS__); write_fd(fd, buf); } while (0)

void stats_init(void)
{
    if (options.stats && exit_fd < 0 && (exit_fd = os_dup_fd(2)) >= 0 && !os_fd_file(exit_fd, exit_file)) {
        close(exit_fd);
        exit_fd = -1;
    }
}

static double mib(uint64_t b) { return (double)b / (1024.0 * 1024.0); }

void stats_print(int fd)
{
    char buf[256];
    struct hak_stats st;
    ClassStats cs[HAK_NCLASS];
    memset(cs, 0, sizeof cs);
    hak_stats_get(&st);
    heaps_stats(&(struct hak_stats){ 0 }, cs);

    LINE("hakmem " HAKMEM_VERSION " statistics\n");
    LINE("  %5s %6s %12s %12s %12s %10s %9s %9s\n", "class", "size", "allocs", "frees",
         "remote", "out", "MiB out", "refills");
    for (unsigned c = 0; c < HAK_NCLASS; c++) {
        if (!cs[c].refills)
            continue;
        LINE("  %5u %6u %12llu %12llu %12llu %10llu %9.2f %9llu\n", c, size_classes[c].block_size,
             (unsigned long long)cs[c].allocs,
             (unsigned long long)(cs[c].allocs > cs[c].out ? cs[c].allocs - cs[c].out : 0),
             (unsigned long long)cs[c].remote_frees, (unsigned long long)cs[c].out,
             mib(cs[c].out * size_classes[c].block_size), (unsigned long long)cs[c].refills);
    }
    LINE("  tiny:  %.2f MiB in blocks out, spans %.2f MiB (peak %.2f MiB)\n",
         mib(st.tiny_bytes_in_use), mib(st.tiny_span_bytes), mib(st.tiny_span_peak));
    LINE("  mid:   %.2f MiB in blocks out, spans %.2f MiB (peak %.2f MiB)\n",
         mib(st.mid_bytes_in_use), mib(st.mid_span_bytes), mib(st.mid_span_peak));
    LINE("  large: %llu allocs, %llu frees, %.2f MiB in use (peak %.2f MiB), %.2f MiB cached;"
         " %llu idle fronts given back\n",
         (unsigned long long)st.large_allocs, (unsigned long long)st.large_frees,
         mib(st.large_bytes_in_use), mib(st.large_bytes_peak), mib(st.large_bytes_cached),
         (unsigned long long)st.large_fronts_decayed);
    LINE("  cross-thread frees %llu, thread-front refills %llu\n",
         (unsigned long long)st.remote_frees, (unsigned long long)st.slab_refills);
    LINE("  superslabs: %llu live, %llu carved from fresh memory, %llu reused from the cache;"
         " free slabs %.2f MiB not yet purged, %.2f MiB purged\n",
         (unsigned long long)st.superslabs_live, (unsigned long long)st.superslabs_mapped,
         (unsigned long long)st.superslabs_reused, mib(st.slab_bytes_dirty), mib(st.slab_bytes_purged));
    LINE("  memory: %.2f MiB reserved, %.2f MiB cached free (%.2f MiB not yet purged), %.2f MiB purged;"
         " decay %llu ms (lengthened %llu times)\n",
         mib(st.bytes_mapped), mib(st.bytes_cached), mib(st.bytes_dirty), mib(st.bytes_purged),
         (unsigned long long)st.decay_ms, (unsigned long long)st.decay_lengthened);
    LINE("  syscalls: mmap %llu, munmap %llu, madvise %llu, mremap %llu, mincore %llu, mprotect %llu;"
         " failed %llu\n",
         (unsigned long long)st.os_mmap, (unsigned long long)st.os_munmap,
         (unsigned long long)st.os_madvise, (unsigned long long)st.os_mremap,
         (unsigned long long)st.os_mincore, (unsigned long long)st.os_mprotect,
         (unsigned long long)st.os_failures);
    LINE("  fallbacks %llu, foreign frees passed to glibc %llu, invalid frees %llu\n",
         (unsigned long long)st.fallbacks, (unsigned long long)st.foreign_frees,
         (unsigned long long)st.invalid_frees);
    LINE("  heaps: %llu created, %llu adopted from exited threads, %llu taken over on free\n",
         (unsigned long long)st.heaps_created, (unsigned long long)st.heaps_adopted,
         (unsigned long long)st.heaps_taken_over);
    LINE("  locks: heap list taken %llu times (%llu waited), extents taken %llu times (%llu waited), "
         "growth taken %llu times (%llu waited)\n",
         (unsigned long long)st.lock_heaps_acquired, (unsigned long long)st.lock_heaps_contended,
         (unsigned long long)st.lock_extents_acquired, (unsigned long long)st.lock_extents_contended,
         (unsigned long long)st.lock_growth_acquired, (unsigned long long)st.lock_growth_contended);
    heaps_report_remote(fd);
    LINE("  peak RSS %.2f MiB\n", mib(st.peak_rss));
}

HAK_API void hak_stats_print(void) { stats_print(2); }

/* HAKMEM_STATS=1: the report at exit. */
__attribute__((destructor)) static void stats_at_exit(void)
{
    if (options.stats) {
        uint64_t file[2];
        bool copy = exit_fd >= 0 && os_fd_file(exit_fd, file) && file[0] == exit_file[0] && file[1] == exit_file[1];
        stats_print(copy ? exit_fd : 2);
    }
}

/* ------------------------------------------------------------------ */
/* The walk over every heap's spans and fronts                        */

/* HAKMEM_STATS: the cross-thread frees each heap's threads sent, for the
 * busiest heaps (where threads collide on each other's spans). */
void heaps_report_remote(int fd)
{
    enum { TOP = 8 };
    Heap *top[TOP] = { 0 };
    uint64_t sent[TOP] = { 0 };
    unsigned n = 0, idx = 0, heap_no[TOP] = { 0 };
    lock_acquire(&heaps_mutex);
    for (Heap *h = all_heaps; h; h = h->all_next, idx++) {
        uint64_t total = 0;
        for (unsigned c = 0; c < HAK_NCLASS; c++)
            total += __atomic_load_n(&h->remote[c], __ATOMIC_RELAXED);
        if (!total)
            continue;
        unsigned k = n < TOP ? n++ : TOP - 1;
        if (k == TOP - 1 && n == TOP && total <= sent[k])
            continue;
        while (k > 0 && sent[k - 1] < total) { /* keep them sorted */
            top[k] = top[k - 1]; sent[k] = sent[k - 1]; heap_no[k] = heap_no[k - 1];
            k--;
        }
        top[k] = h; sent[k] = total; heap_no[k] = idx;
    }
    lock_release(&heaps_mutex);
    char buf[160];
    for (unsigned i = 0; i < n; i++) {
        snprintf(buf, sizeof buf, "  heap %u: %llu cross-thread frees sent\n", heap_no[i],
                 (unsigned long long)sent[i]);
        write_fd(fd, buf);
    }
}

/* Bytes in use are summed over the spans of every heap, less the blocks
 * cached in thread fronts: the caller's own front as it is, the others'
 * as their threads last published them (front_publish), never read from
 * their TLS.  Other threads change their lists meanwhile: each SuperSlab
 * pointer is checked against the registry before it is followed, and the
 * extent lock keeps every reservation mapped; so the figures of other
 * threads may be slightly inexact but reading never faults. */
void heaps_stats(struct hak_stats *st, ClassStats *by_class)
{
    uint64_t out[HAK_NCLASS] = { 0 };
    const ThreadFront *own = &thread_front;
    lock_acquire(&heaps_mutex);
    extent_lock();
    for (Heap *h = all_heaps; h; h = h->all_next) {
        bool mine = h == own->heap;
        for (unsigned c = 0; c < HAK_NCLASS; c++) {
            uint64_t r = __atomic_load_n(&h->refills[c], __ATOMIC_RELAXED);
            uint64_t rf = __atomic_load_n(&h->remote[c], __ATOMIC_RELAXED);
            uint64_t a = h->allocs[c];
            a += mine ? own->allocs[c] : __atomic_load_n(&h->front_allocs[c], __ATOMIC_RELAXED);
            out[c] -= mine ? front_count(own, c) : __atomic_load_n(&h->front_held[c], __ATOMIC_RELAXED);
            st->slab_refills += r;
            st->remote_frees += rf;
            if (by_class) {
                by_class[c].refills += r;
                by_class[c].remote_frees += rf;
                by_class[c].allocs += a;
            }
        }
        SuperSlab *ss = __atomic_load_n(&h->superslabs, __ATOMIC_RELAXED);
        for (unsigned n = 0; ss && n < (1u << 20); n++) {
            if (((uintptr_t)ss & (HAK_CHUNK_SIZE - 1)) || registry_kind(ss) != CHUNK_SUPERSLAB)
                break;
            for (unsigned i = 1; i < HAK_SLABS_PER_SS; i++) {
                Span *s = &ss->spans[i];
                uint8_t k = __atomic_load_n(&s->nslabs, __ATOMIC_RELAXED);
                uint8_t c = __atomic_load_n(&s->cls, __ATOMIC_RELAXED);
                if (!k || ss->span_head[i] != i || c >= HAK_NCLASS)
                    continue;
                out[c] += __atomic_load_n(&s->used, __ATOMIC_RELAXED);
            }
            ss = __atomic_load_n(&ss->next, __ATOMIC_RELAXED);
        }
        st->superslabs_live += __atomic_load_n(&h->superslabs_live, __ATOMIC_RELAXED);
        st->slab_bytes_dirty += (uint64_t)atomic_load_explicit(&h->slabs_dirty, memory_order_relaxed)
                                << HAK_SLAB_SHIFT;
        st->slab_bytes_purged += __atomic_load_n(&h->slab_bytes_purged, __ATOMIC_RELAXED);
        st->tiny_span_bytes += (uint64_t)__atomic_load_n(&h->span_bytes[0], __ATOMIC_RELAXED);
        st->tiny_span_peak += (uint64_t)__atomic_load_n(&h->span_peak[0], __ATOMIC_RELAXED);
        st->mid_span_bytes += (uint64_t)__atomic_load_n(&h->span_bytes[1], __ATOMIC_RELAXED);
        st->mid_span_peak += (uint64_t)__atomic_load_n(&h->span_peak[1], __ATOMIC_RELAXED);
        st->large_allocs += __atomic_load_n(&h->large.allocs, __ATOMIC_RELAXED);
        st->large_frees += __atomic_load_n(&h->large.frees, __ATOMIC_RELAXED);
        st->large_bytes_in_use += (uint64_t)__atomic_load_n(&h->large.bytes_out, __ATOMIC_RELAXED);
        size_t cached = __atomic_load_n(&h->large.bytes, __ATOMIC_RELAXED);
        st->bytes_cached += cached; /* freed large extents, still resident */
        st->bytes_dirty += cached;
        st->large_bytes_cached += cached;
    }
    st->lock_heaps_acquired = heaps_mutex.acquired;
    st->lock_heaps_contended = heaps_mutex.contended;
    extent_unlock();
    lock_release(&heaps_mutex);
    for (unsigned c = 0; c < HAK_NCLASS; c++) {
        if ((int64_t)out[c] < 0) /* a racing front: never report negative */
            out[c] = 0;
        uint64_t bytes = out[c] * size_classes[c].block_size;
        if (c < HAK_NCLASS_TINY) st->tiny_bytes_in_use += bytes; else st->mid_bytes_in_use += bytes;
        if (by_class) by_class[c].out += out[c];
    }
    st->remote_frees += atomic_load(&global_stats.remote_frees_exited);

}

