/* Statistics: hak_stats_get() and the report that HAKMEM_STATS=1 prints at
 * exit (also malloc_stats()).  malloc adds one to a per-thread counter;
 * everything else is counted per heap on slow paths (refills, cross-thread
 * frees), read from the span descriptors and thread fronts (blocks in use),
 * or kept in global relaxed counters (syscalls, fallbacks).
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

GlobalStats hak_gstats;

HAK_API void hak_stats_get(struct hak_stats *st)
{
    memset(st, 0, sizeof *st);
    heaps_stats(st, NULL);
    extent_stats(st);
    large_stats(st);
    st->superslabs_mapped = atomic_load(&hak_gstats.superslabs_mapped);
    st->superslabs_reused = atomic_load(&hak_gstats.superslabs_reused);
    st->os_mmap = atomic_load(&hak_gstats.os_mmap);
    st->os_munmap = atomic_load(&hak_gstats.os_munmap);
    st->os_madvise = atomic_load(&hak_gstats.os_madvise);
    st->os_mremap = atomic_load(&hak_gstats.os_mremap);
    st->os_mincore = atomic_load(&hak_gstats.os_mincore);
    st->os_mprotect = atomic_load(&hak_gstats.os_mprotect);
    st->os_failures = atomic_load(&hak_gstats.os_failures);
    st->fallbacks = atomic_load(&hak_gstats.fallbacks);
    st->foreign_frees = atomic_load(&hak_gstats.foreign_frees);
    st->invalid_frees = atomic_load(&hak_gstats.invalid_frees);
    st->heaps_created = atomic_load(&hak_gstats.heaps_created);
    st->heaps_adopted = atomic_load(&hak_gstats.heaps_adopted);
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        st->peak_rss = (uint64_t)ru.ru_maxrss * 1024;
}

#define LINE(...) do { snprintf(buf, sizeof buf, __VA_ARGS__); hak_write_stderr(buf); } while (0)

static double mib(uint64_t b) { return (double)b / (1024.0 * 1024.0); }

HAK_API void hak_stats_print(void)
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
        LINE("  %5u %6u %12llu %12llu %12llu %10llu %9.2f %9llu\n", c, hak_classes[c].block_size,
             (unsigned long long)cs[c].allocs,
             (unsigned long long)(cs[c].allocs > cs[c].out ? cs[c].allocs - cs[c].out : 0),
             (unsigned long long)cs[c].remote_frees, (unsigned long long)cs[c].out,
             mib(cs[c].out * hak_classes[c].block_size), (unsigned long long)cs[c].refills);
    }
    LINE("  tiny:  %.2f MiB in blocks out, spans %.2f MiB (peak %.2f MiB)\n",
         mib(st.tiny_bytes_in_use), mib(st.tiny_span_bytes), mib(st.tiny_span_peak));
    LINE("  mid:   %.2f MiB in blocks out, spans %.2f MiB (peak %.2f MiB)\n",
         mib(st.mid_bytes_in_use), mib(st.mid_span_bytes), mib(st.mid_span_peak));
    LINE("  large: %llu allocs, %llu frees, %.2f MiB in use (peak %.2f MiB)\n",
         (unsigned long long)st.large_allocs, (unsigned long long)st.large_frees,
         mib(st.large_bytes_in_use), mib(st.large_bytes_peak));
    LINE("  cross-thread frees %llu, thread-front refills %llu\n",
         (unsigned long long)st.remote_frees, (unsigned long long)st.slab_refills);
    LINE("  superslabs: %llu live, %llu carved from fresh memory, %llu reused from the cache\n",
         (unsigned long long)st.superslabs_live, (unsigned long long)st.superslabs_mapped,
         (unsigned long long)st.superslabs_reused);
    LINE("  memory: %.2f MiB reserved, %.2f MiB cached free (%.2f MiB not yet purged), %.2f MiB purged\n",
         mib(st.bytes_mapped), mib(st.bytes_cached), mib(st.bytes_dirty), mib(st.bytes_purged));
    LINE("  syscalls: mmap %llu, munmap %llu, madvise %llu, mremap %llu, mincore %llu, mprotect %llu;"
         " failed %llu\n",
         (unsigned long long)st.os_mmap, (unsigned long long)st.os_munmap,
         (unsigned long long)st.os_madvise, (unsigned long long)st.os_mremap,
         (unsigned long long)st.os_mincore, (unsigned long long)st.os_mprotect,
         (unsigned long long)st.os_failures);
    LINE("  fallbacks %llu, foreign frees passed to glibc %llu, invalid frees %llu\n",
         (unsigned long long)st.fallbacks, (unsigned long long)st.foreign_frees,
         (unsigned long long)st.invalid_frees);
    LINE("  heaps: %llu created, %llu adopted from exited threads\n",
         (unsigned long long)st.heaps_created, (unsigned long long)st.heaps_adopted);
    LINE("  locks: heap list taken %llu times (%llu waited), extents taken %llu times (%llu waited)\n",
         (unsigned long long)st.lock_heaps_acquired, (unsigned long long)st.lock_heaps_contended,
         (unsigned long long)st.lock_extents_acquired, (unsigned long long)st.lock_extents_contended);
    heaps_report_remote();
    LINE("  peak RSS %.2f MiB\n", mib(st.peak_rss));
}

/* HAKMEM_STATS=1: the report at exit. */
__attribute__((destructor)) static void hak_stats_at_exit(void)
{
    if (hak_opt.stats)
        hak_stats_print();
}
