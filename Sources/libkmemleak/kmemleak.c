/*
 * libkmemleak.so - the in-process half of kmemleak for user space.
 *
 * Loaded with LD_PRELOAD, it records every allocation of the program in a shared table (a memfd,
 * layout in kmemleak_abi.h) that kmemleakd maps and scans. It never talks to the daemon.
 *
 * Reads top to bottom like mm/kmemleak.c: constants and state, helpers (locks, raw syscalls),
 * the table (objects, stack depot, comms, threads, regions), object lifetime, the malloc family,
 * mmap, threads, the per-CPU allocator, the annotation API, fork, initialisation.
 *
 * Rules: nothing here calls the malloc it interposes while tracking (a per-thread initial-exec
 * flag forwards nested allocations, e.g. from the unwinder, untracked); the shim's own memory is
 * mapped with raw syscalls so it is never tracked; any internal error turns tracking off once.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <gnu/libc-version.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <sys/single_threaded.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <unwind.h>
#define UNW_LOCAL_ONLY
#include <libunwind.h>

#define KMEMLEAK_BUILDING_LIBRARY 1
#include "kmemleak.h"
#include "kmemleak_abi.h"
#include "cfi_unwind.h"

#define EXPORT __attribute__((visibility("default")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define PAGE_SIZE_ 4096UL
#define PAGE_ALIGN(x) (((x) + PAGE_SIZE_ - 1) & ~(PAGE_SIZE_ - 1))

/* glibc's allocator entry points (exported, GLIBC_2.2.5): no dlsym bootstrap problem */
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);

/* ---- the allocator underneath ----------------------------------------------------------------
 * Every malloc-family call goes to the next definition after the shim in the global scope, i.e.
 * what the program would call without us, so that the members we do not interpose
 * (malloc_usable_size, malloc_trim, mallinfo2, mallctl, ...) always get pointers of their own
 * allocator. glibc's: direct calls to __libc_*. A foreign allocator (jemalloc, tcmalloc, mimalloc
 * linked into the program): called through pointers and tracked through. Resolved at the first
 * call, before any pointer is handed out; allocations nested in that dlsym come from a small
 * static arena whose blocks free() ignores. */
static int module_text(uintptr_t addr, uintptr_t *lo, uintptr_t *len, const char **name);

enum { ALLOC_UNRESOLVED, ALLOC_GLIBC, ALLOC_FOREIGN };
static int g_alloc_mode;             /* ALLOC_* (atomic) */
static int g_alloc_resolver;         /* tid resolving (atomic) */
static struct {
    void *(*malloc)(size_t);
    void (*free)(void *);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void *(*memalign)(size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*valloc)(size_t);
    void *(*pvalloc)(size_t);
} g_next;

/* malloc_usable_size of the allocator underneath (glibc's or the foreign one's), resolved with it */
static size_t (*g_next_usable)(void *);

#define BOOT_ARENA_SIZE 65536u
static char g_boot_arena[BOOT_ARENA_SIZE] __attribute__((aligned(64)));
static size_t g_boot_used;           /* (atomic) */

static inline int in_boot_arena(const void *p)
{
    return (uintptr_t)p - (uintptr_t)g_boot_arena < BOOT_ARENA_SIZE;
}

/* 16-byte header holding the size (for realloc out of the arena); NULL when exhausted */
static void *boot_alloc(size_t size, size_t align)
{
    if (align < 16)
        align = 16;
    if (size > BOOT_ARENA_SIZE || align > 4096)
        return NULL;
    size_t need = (size + 15) / 16 * 16 + 16 + align; /* header, then up to align - 1 of padding */
    size_t off = __atomic_fetch_add(&g_boot_used, need, __ATOMIC_RELAXED);
    if (off + need > BOOT_ARENA_SIZE)
        return NULL;
    uintptr_t p = ((uintptr_t)g_boot_arena + off + 16 + align - 1) & ~(uintptr_t)(align - 1);
    ((size_t *)p)[-1] = size;
    return (void *)p; /* static .bss: already zero for calloc */
}

static void resolve_allocator(void)
{
    int tid = (int)syscall(SYS_gettid), none = 0;
    if (!__atomic_compare_exchange_n(&g_alloc_resolver, &none, tid, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        if (none == tid)
            return; /* nested in our own dlsym: the caller uses the arena */
        while (__atomic_load_n(&g_alloc_mode, __ATOMIC_ACQUIRE) == ALLOC_UNRESOLVED)
            sched_yield();
        return;
    }
    int mode = ALLOC_GLIBC;
    void *m = dlsym(RTLD_NEXT, "malloc"), *f = dlsym(RTLD_NEXT, "free");
    /* glibc's code is the module of gnu_get_libc_version (comparing with __libc_malloc is not
     * enough: tcmalloc defines __libc_malloc too) */
    uintptr_t libc_lo = 0, libc_len = 0;
    if (module_text((uintptr_t)&gnu_get_libc_version, &libc_lo, &libc_len, NULL) != 0)
        libc_lo = (uintptr_t)__libc_malloc, libc_len = 1;
    if (m && f && (uintptr_t)m - libc_lo >= libc_len) {
        g_next.malloc = (void *(*)(size_t))m;
        g_next.free = (void (*)(void *))f;
        g_next.calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
        g_next.realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
        g_next.memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "memalign");
        g_next.aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
        g_next.posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
        g_next.valloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "valloc");
        g_next.pvalloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "pvalloc");
        mode = ALLOC_FOREIGN;
    }
    __atomic_store_n(&g_next_usable, (size_t (*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size"), __ATOMIC_RELEASE);
    __atomic_store_n(&g_alloc_mode, mode, __ATOMIC_RELEASE);
}

/* the mode, resolved if need be; ALLOC_UNRESOLVED only inside our own dlsym */
static __attribute__((noinline)) int alloc_mode_slow(void)
{
    if (__atomic_load_n(&g_alloc_mode, __ATOMIC_ACQUIRE) == ALLOC_UNRESOLVED)
        resolve_allocator();
    return __atomic_load_n(&g_alloc_mode, __ATOMIC_ACQUIRE);
}

#define GLIBC_ALLOCATOR() likely(__atomic_load_n(&g_alloc_mode, __ATOMIC_RELAXED) == ALLOC_GLIBC)
/* the foreign allocator's function, or glibc's if it has none by that name */
#define FOREIGN_OR(fn, glibc) (g_next.fn ? g_next.fn : (glibc))

static void *next_malloc(size_t size)
{
    if (GLIBC_ALLOCATOR())
        return __libc_malloc(size);
    switch (alloc_mode_slow()) {
    case ALLOC_GLIBC: return __libc_malloc(size);
    case ALLOC_FOREIGN: return g_next.malloc(size);
    default: return boot_alloc(size, 16);
    }
}

static void next_free(void *p)
{
    if (unlikely(in_boot_arena(p)))
        return;
    if (GLIBC_ALLOCATOR() || alloc_mode_slow() != ALLOC_FOREIGN)
        __libc_free(p);
    else
        g_next.free(p);
}

static void *next_calloc(size_t n, size_t size)
{
    if (GLIBC_ALLOCATOR())
        return __libc_calloc(n, size);
    switch (alloc_mode_slow()) {
    case ALLOC_GLIBC: return __libc_calloc(n, size);
    case ALLOC_FOREIGN: return FOREIGN_OR(calloc, __libc_calloc)(n, size);
    default: {
        size_t total;
        return __builtin_mul_overflow(n, size, &total) ? NULL : boot_alloc(total, 16);
    }
    }
}

static void *next_realloc(void *old, size_t size)
{
    if (unlikely(in_boot_arena(old))) {
        size_t had = ((size_t *)old)[-1];
        void *p = next_malloc(size);
        if (p)
            memcpy(p, old, had < size ? had : size);
        return p;
    }
    if (GLIBC_ALLOCATOR() || alloc_mode_slow() != ALLOC_FOREIGN)
        return __libc_realloc(old, size);
    return FOREIGN_OR(realloc, __libc_realloc)(old, size);
}

/* memalign, aligned_alloc, valloc, pvalloc: fn is glibc's __libc_* of the same meaning */
static void *next_aligned(int which, size_t align, size_t size)
{
    int mode = GLIBC_ALLOCATOR() ? ALLOC_GLIBC : alloc_mode_slow();
    if (mode == ALLOC_UNRESOLVED)
        return boot_alloc(which >= 2 ? PAGE_ALIGN(size) : size, which >= 2 ? 4096 : align);
    switch (which) {
    case 0: return mode == ALLOC_FOREIGN ? FOREIGN_OR(memalign, __libc_memalign)(align, size) : __libc_memalign(align, size);
    case 1: return mode == ALLOC_FOREIGN ? FOREIGN_OR(aligned_alloc, __libc_memalign)(align, size) : __libc_memalign(align, size);
    case 2: return mode == ALLOC_FOREIGN ? FOREIGN_OR(valloc, __libc_valloc)(size) : __libc_valloc(size);
    default: return mode == ALLOC_FOREIGN ? FOREIGN_OR(pvalloc, __libc_pvalloc)(size) : __libc_pvalloc(size);
    }
}
enum { ALIGNED_MEMALIGN, ALIGNED_ALLOC, ALIGNED_VALLOC, ALIGNED_PVALLOC };

/* ---- constants -------------------------------------------------------------------------------- */
#define DEFAULT_MAX_OBJECTS 4194304u
#define DEFAULT_MAX_TRACES 1048576u
#define DEFAULT_MAX_THREADS 8192u
#define DEFAULT_MAX_COMMS 4096u
#define DEFAULT_MAX_REGIONS 4096u
#define DEFAULT_MAX_AREAS 65536u
#define MAX_MMAPS 65536u          /* tracked program mappings (private list) */
#define SLOT_CHUNK 64u            /* object slots a thread takes from the bump pointer at once */
#define SLOT_BATCH 256u           /* free slots moved between a thread cache and the global list */
#define MEMO_THREADS 1024u        /* thread slots with a trace memo (24 KiB of address space each) */
#define NR_STRIPES_LOG 12u
#define NR_STRIPES (1u << NR_STRIPES_LOG) /* object index lock stripes */
#define TR_BUCKETS_MIN 1024u      /* initial stack depot buckets */
#define INDEX_LOAD 1u             /* the depot's index grows (x4) past this many entries per bucket */
#define LIVE_BATCH 64             /* a thread adds its live-object changes to the header this many at once */
#define UNWIND_EXTRA 4            /* frames captured beyond KML_MAX_TRACE to skip our own (at most 3) */

#define STATE_LIVE_MASK (KML_STATE_KIND_MASK)
#define KIND_BIT(k) (1u << (k))
#define PLAIN_KINDS (KIND_BIT(KML_KIND_MALLOC) | KIND_BIT(KML_KIND_MMAP) | KIND_BIT(KML_KIND_CUSTOM))
#define PCPU_KINDS (KIND_BIT(KML_KIND_PERCPU) | KIND_BIT(KML_KIND_CUSTOM_PERCPU))

enum { ST_UNINIT, ST_INIT, ST_ON, ST_OFF };
enum { UNWIND_CFI, UNWIND_LIBUNWIND, UNWIND_LIBGCC, UNWIND_NONE, UNWIND_CHECK };

/* ---- global state (all of it in the shim's .bss, registered KML_REGION_SHIM_PRIVATE) ---------- */
static int g_state;                  /* ST_* (atomic) */
static int g_disabled_once;
static int g_unwinder = UNWIND_CFI;
static int g_memfd = -1;              /* the memfd table's fd; -1 for a private table */
static int g_table_private;          /* the table is private anonymous memory (KML_TABLE_PRIVATE) */
static dev_t g_memfd_dev;            /* identity of our memfd: the program may close the fd and */
static ino_t g_memfd_ino;            /* reuse its number; never close someone else's file */
static pid_t g_rendezvous_pid;        /* who published g_rendezvous_name (a forked child did not) */
static char g_rendezvous_name[64];    /* our file in g_run_dir, and its identity */
static dev_t g_rendezvous_dev;
static ino_t g_rendezvous_ino;
#define KML_RUN_DIR_MAX 300
static char g_run_dir[KML_RUN_DIR_MAX + 1]; /* a copy: programs rewrite their environment (setproctitle) */
static dev_t g_run_dir_dev;           /* identity of the run directory, 0/0 if unusable */
static ino_t g_run_dir_ino;
static int g_run_dir_fd = -1;         /* kept open (O_CLOEXEC): a forked child publishes without a lookup */
static char g_memfd_name[64] = KML_MEMFD_NAME; /* + ":<dev>:<ino>" of the run dir (see kml_run_dir_init) */

static struct kml_header *g_hdr;
static size_t g_total;
static struct kml_object *g_obj;
static struct kml_trace *g_tr;
static struct kml_thread *g_thr;
static char *g_comm;
static struct kml_region *g_reg;
static struct kml_area *g_area;
static uint32_t g_obj_cap, g_tr_cap, g_thr_cap, g_comm_cap, g_reg_cap, g_area_cap;

/* private index (raw anonymous mapping) */
static void *g_priv;
static size_t g_priv_size;
/* The hash indexes start small and grow in place inside a reservation sized for the capacity: the
 * pages a process touches (and that fork() write-protects, so that parent and child copy each one
 * they touch again) follow its object count, not the table's capacity. */
struct obj_entry;
static struct obj_entry *g_oix;      /* the object index (below), then its growth scratch area */
static uint64_t *g_oix_written;      /* a bit per 4 KiB page of the index: written (oix_first_write) */
static uint32_t g_oix_log;           /* log2 of its entries: written with every stripe held */
static uint32_t g_oix_max_log;
static uint32_t *g_stripes;          /* spinlocks for the object buckets */
static int g_stripes_wiped;          /* MADV_WIPEONFORK took: a forked child's stripes are all zero */
static uint32_t *g_tr_buckets;       /* 1-based trace id */
static uint32_t g_tr_bucket_mask;    /* written under the depot lock, read lock-free */
static uint32_t g_tr_bucket_max;
static uint32_t *g_mm_slots;         /* tracked program mappings: object slot indices */
static uint32_t g_mm_count;
static uint32_t *g_thr_free;         /* free thread slots */
static pthread_t *g_thr_ptid;        /* pthread_t of each thread slot (for renames from elsewhere) */
static uint32_t g_thr_free_count;
static uint32_t *g_batches;          /* (head, length) pairs: chains of free object slots */
static uint32_t g_batch_count, g_batch_cap;

static uint32_t g_depot_lock, g_mm_lock, g_thr_lock, g_comm_lock, g_reg_lock, g_area_lock,
    g_batch_lock, g_pcpu_lock;
static uint32_t g_comm_gen = 1;       /* bumped when any thread is renamed */

static uintptr_t g_text_lo, g_text_hi; /* the shim's code: frames skipped in traces */
static char *g_memo_pool; /* the threads' trace memos (cfi_unwind.c), one per thread slot; NULL = none */
static uint32_t g_memo_slots; /* thread slots below this have one */
static size_t g_tls_static_size, g_tcb_size;

static pthread_key_t g_thread_key;
static int (*real_pthread_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
static int (*real_pthread_setname_np)(pthread_t, const char *);

/* per thread */
struct kml_tls {
    int in_shim;         /* reentrancy guard: nested allocations are forwarded untracked */
    int tid;
    uint32_t comm_id;
    uint32_t comm_gen;
    uint32_t cache_head; /* 1-based chain of free object slots (via hash_next) */
    uint32_t cache_count;
    uint32_t bump_next, bump_end;
    int32_t live_delta;  /* LIVE records made minus released, not yet added to the header */
    int thread_slot;     /* 1-based slot in the thread table, 0 = none */
    int exiting;
    uintptr_t stack_lo, stack_hi; /* this thread's stack for cfi_backtrace, 0/0 = unknown */
    /* fork (the atfork handlers run in the forking thread): here rather than in .bss, whose pages
     * fork() makes copy-on-write, so that a lone thread's fork writes none of them in the parent */
    uint8_t fork_nested, fork_locked, fork_locks, fork_stripes;
    uint64_t fork_tick;  /* boottime_tick() before fork() */
    uint32_t lone_stripe; /* what a lone thread's oix_lock and depot_lock hand out: no shared store */
    uint64_t seq_next, seq_end; /* a lone thread's block of sequence numbers (next_seq) */
    struct cfi_memo *memo; /* this thread's trace memo (its thread slot's), NULL = none */
};
static __thread struct kml_tls t __attribute__((tls_model("initial-exec")));

/* ---- small helpers ---------------------------------------------------------------------------- */
static inline void cpu_relax(void) { __builtin_ia32_pause(); }

static inline void spin_lock(uint32_t *l)
{
    unsigned int spins = 0;
    for (;;) {
        if (!__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
            return;
        while (__atomic_load_n(l, __ATOMIC_RELAXED)) {
            if (++spins < 200)
                cpu_relax();
            else
                sched_yield();
        }
    }
}
static inline void spin_unlock(uint32_t *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

/* glibc's own test (SINGLE_THREAD_P, on which its malloc relies too): true until the process first
 * creates a thread (pthread_create, and glibc's internal users of it), true again in a forked child.
 * Then nothing else can be inside the shim (a signal handler in the shim is forwarded untracked), so
 * the hot path takes no stripe lock and no locked instruction, which would also wait for every
 * store in flight, such as the blind release of a record. */
static inline int lone_thread(void) { return __libc_single_threaded; }

static inline void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}
static inline int raw_munmap(void *addr, size_t len) { return (int)syscall(SYS_munmap, addr, len); }

static inline int cur_tid(void)
{
    if (unlikely(!t.tid))
        t.tid = (int)syscall(SYS_gettid);
    return t.tid;
}

static inline uint64_t ts_ns(const struct timespec *ts)
{
    return (uint64_t)ts->tv_sec * 1000000000ull + (uint64_t)ts->tv_nsec;
}

/* CLOCK_BOOTTIME at tick resolution, cheaply: CLOCK_MONOTONIC_COARSE (a plain vDSO read) plus the
 * BOOTTIME-MONOTONIC offset, which only changes across a suspend; re-read once a second. Objects'
 * times are at most one tick early, far below the USER_HZ jiffies of reports. */
static uint64_t g_boot_offset, g_boot_offset_next;

static __attribute__((noinline)) void refresh_boot_offset(uint64_t coarse)
{
    struct timespec b, m;
    clock_gettime(CLOCK_MONOTONIC, &m);
    clock_gettime(CLOCK_BOOTTIME, &b);
    __atomic_store_n(&g_boot_offset, ts_ns(&b) - ts_ns(&m), __ATOMIC_RELAXED);
    __atomic_store_n(&g_boot_offset_next, coarse + 1000000000ull, __ATOMIC_RELAXED);
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    uint64_t c = ts_ns(&ts);
    if (unlikely(c >= __atomic_load_n(&g_boot_offset_next, __ATOMIC_RELAXED)))
        refresh_boot_offset(c);
    return c + __atomic_load_n(&g_boot_offset, __ATOMIC_RELAXED);
}

static size_t str_len(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* appends s to buf (capacity cap, NUL kept); returns the new length */
static size_t str_cat(char *buf, size_t len, size_t cap, const char *s)
{
    while (*s && len + 1 < cap)
        buf[len++] = *s++;
    buf[len] = 0;
    return len;
}

static size_t num_cat(char *buf, size_t len, size_t cap, uint64_t v, int hex)
{
    char tmp[24];
    int n = 0;
    do {
        unsigned d = (unsigned)(hex ? v % 16 : v % 10);
        tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v = hex ? v / 16 : v / 10;
    } while (v);
    while (n && len + 1 < cap)
        buf[len++] = tmp[--n];
    buf[len] = 0;
    return len;
}

static uint64_t env_u64(const char *name, uint64_t def, uint64_t lo, uint64_t hi)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return def;
    char *end;
    unsigned long long v = strtoull(s, &end, 0);
    if (*end || v < lo)
        return def;
    return v > hi ? hi : v;
}

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

static inline uint32_t hash_ptr(uint64_t p, int pcpu)
{
    uint64_t h = (p ^ (pcpu ? 0x9e3779b97f4a7c15ull : 0)) * 0xff51afd7ed558ccdull;
    return (uint32_t)(h >> 32) ^ (uint32_t)h;
}

static inline int kind_is_pcpu(uint32_t kind) { return kind == KML_KIND_PERCPU || kind == KML_KIND_CUSTOM_PERCPU; }

/* ---- disabling ---------------------------------------------------------------------------------- */
static void kml_disable(const char *reason)
{
    if (__atomic_exchange_n(&g_disabled_once, 1, __ATOMIC_ACQ_REL))
        return;
    __atomic_store_n(&g_state, ST_OFF, __ATOMIC_RELEASE);
    if (g_hdr) {
        size_t n = 0;
        while (reason[n] && n < sizeof(g_hdr->disabled_reason) - 1) {
            g_hdr->disabled_reason[n] = reason[n];
            n++;
        }
        g_hdr->disabled_reason[n] = 0;
        uint32_t f = __atomic_load_n(&g_hdr->flags, __ATOMIC_RELAXED);
        __atomic_store_n(&g_hdr->flags, (f & ~KML_TABLE_TRACKING) | KML_TABLE_DISABLED, __ATOMIC_RELEASE);
    }
    char msg[256];
    size_t len = 0;
    len = str_cat(msg, len, sizeof(msg), "kmemleak: ");
    len = str_cat(msg, len, sizeof(msg), reason);
    len = str_cat(msg, len, sizeof(msg), ", tracking disabled\n");
    ssize_t r = write(2, msg, len);
    (void)r;
}

/* tracking_enter: 1 if the caller must track (and must call tracking_leave), 0 to just forward */
static inline int tracking_enter(void)
{
    if (unlikely(__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) != ST_ON) || t.in_shim)
        return 0;
    t.in_shim = 1;
    return 1;
}
static inline void tracking_leave(void) { t.in_shim = 0; }

/* ---- seqlock writers -------------------------------------------------------------------------- */
static inline void rec_write_begin(uint32_t *state)
{
    uint32_t s = __atomic_load_n(state, __ATOMIC_RELAXED);
    __atomic_store_n(state, s | KML_STATE_BUSY, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}
static inline void rec_write_end(uint32_t *state, uint32_t kind)
{
    uint32_t s = __atomic_load_n(state, __ATOMIC_RELAXED);
    uint32_t v = (s >> KML_STATE_VERSION_SHIFT) + 1;
    __atomic_store_n(state, (v << KML_STATE_VERSION_SHIFT) | kind, __ATOMIC_RELEASE);
}

/* ---- stack depot ------------------------------------------------------------------------------ */
struct trace_ctx {
    int n;
    int len;
};

/* libgcc_s's unwinder, resolved with dlopen: libunwind.so exports its own _Unwind_Backtrace, which a
 * plain link would bind to instead */
static _Unwind_Reason_Code (*gcc_backtrace)(_Unwind_Trace_Fn, void *);
static _Unwind_Ptr (*gcc_get_ip)(struct _Unwind_Context *);

static int resolve_libgcc(void)
{
    void *h = dlopen("libgcc_s.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return -1;
    gcc_backtrace = (_Unwind_Reason_Code(*)(_Unwind_Trace_Fn, void *))dlsym(h, "_Unwind_Backtrace");
    gcc_get_ip = (_Unwind_Ptr(*)(struct _Unwind_Context *))dlsym(h, "_Unwind_GetIP");
    return gcc_backtrace && gcc_get_ip ? 0 : -1;
}

static _Unwind_Reason_Code gcc_trace_cb(struct _Unwind_Context *ctx, void *arg)
{
    void **buf = (void **)arg;
    struct trace_ctx *c = (struct trace_ctx *)buf[-1];
    if (c->n >= c->len)
        return _URC_END_OF_STACK;
    uintptr_t ip = gcc_get_ip(ctx);
    if (!ip)
        return _URC_END_OF_STACK;
    buf[c->n++] = (void *)ip;
    return _URC_NO_REASON;
}

static void unwind_check(void **buf, int n);

/* libunwind, set up at its first use: its set-up (per-thread caching, which initialises it) writes
 * ~70 pages, and with the shim's own unwinder most processes never need it (a `$(/bin/true)` in bash
 * paid it at every exec for the warm-up trace alone). Inside the shim: what it allocates is untracked. */
static int g_unw_ready; /* (atomic) */

static __attribute__((noinline)) void unw_prepare(void)
{
    /* libunwind's DWARF cache per thread (in its TLS): the global one takes a lock on every miss
     * of the per-thread frame cache that unw_backtrace tries first */
    unw_set_caching_policy(unw_local_addr_space, UNW_CACHE_PER_THREAD);
    __atomic_store_n(&g_unw_ready, 1, __ATOMIC_RELEASE);
}

static inline int unw_trace(void **buf, int max)
{
    if (unlikely(!__atomic_load_n(&g_unw_ready, __ATOMIC_ACQUIRE)))
        unw_prepare();
    return unw_backtrace(buf, max);
}

/* always inlined, like capture_trace and track_alloc: every shim frame between the caller and
 * the unwinder is a frame unwound for nothing (~30 ns each) */
static inline __attribute__((always_inline)) int unwind_stack(void **buf, int max)
{
    if (likely(g_unwinder == UNWIND_CFI)) {
        int n = cfi_backtrace(buf, max, t.stack_lo, t.stack_hi);
        return n >= 0 ? n : unw_trace(buf, max);
    }
    if (g_unwinder == UNWIND_LIBUNWIND)
        return unw_trace(buf, max);
    if (g_unwinder == UNWIND_CHECK) {
        int n = unw_trace(buf, max);
        unwind_check(buf, n);
        return n;
    }
    if (g_unwinder == UNWIND_LIBGCC) {
        void *arr[KML_MAX_TRACE + UNWIND_EXTRA + 1];
        struct trace_ctx c = {0, max};
        arr[0] = &c;
        gcc_backtrace(gcc_trace_cb, arr + 1);
        memcpy(buf, arr + 1, (size_t)c.n * sizeof(void *));
        return c.n;
    }
    return 0;
}

/* KMEMLEAK_UNWINDER=check: cfi_backtrace's frames against libunwind's (buf, from the same call
 * site one instruction apart: frame 0 differs, the callers must not); one line per mismatch */
static unsigned g_check_traces, g_check_fallbacks, g_check_mismatches;

static __attribute__((noinline)) void unwind_check(void **ref, int n)
{
    void *buf[KML_MAX_TRACE + UNWIND_EXTRA];
    int m = cfi_backtrace(buf, (int)(KML_MAX_TRACE + UNWIND_EXTRA), t.stack_lo, t.stack_hi);
    __atomic_fetch_add(&g_check_traces, 1, __ATOMIC_RELAXED);
    if (m < 0) {
        __atomic_fetch_add(&g_check_fallbacks, 1, __ATOMIC_RELAXED);
        return;
    }
    /* ours starts one frame deeper (inside unwind_check): compare the callers of unwind_stack */
    int max = (int)(KML_MAX_TRACE + UNWIND_EXTRA);
    int same = n < max ? m == n + 1 : m == max;
    for (int i = 1; same && i < n && i + 1 < m; i++)
        same = buf[i + 1] == ref[i];
    if (same)
        return;
    __atomic_fetch_add(&g_check_mismatches, 1, __ATOMIC_RELAXED);
    char line[1024];
    size_t k = str_cat(line, 0, sizeof(line), "kmemleak: unwind check: libunwind");
    for (int i = 1; i < n; i++) {
        k = str_cat(line, k, sizeof(line), " ");
        k = num_cat(line, k, sizeof(line), (uint64_t)(uintptr_t)ref[i], 1);
    }
    k = str_cat(line, k, sizeof(line), " | cfi");
    for (int i = 2; i < m; i++) {
        k = str_cat(line, k, sizeof(line), " ");
        k = num_cat(line, k, sizeof(line), (uint64_t)(uintptr_t)buf[i], 1);
    }
    k = str_cat(line, k, sizeof(line), "\n");
    ssize_t w = write(2, line, k);
    (void)w;
}

static uint32_t trace_save(void *const *buf, int n);

/* The calling frame's trace through the thread's memo: its depot id in *id, and 2 if the memo held
 * it, 1 if the shim's unwinder unwound it (saved, and memoized), 0 if that unwinder cannot (buf then
 * undefined). Inlined: cfi_backtrace_memo's caller is the frame the trace starts from. */
static inline __attribute__((always_inline)) int memo_trace(struct cfi_memo *M, void **buf, int max, uint32_t *id)
{
    uint32_t tag = 0;
    int n = cfi_backtrace_memo(buf, max, t.stack_lo, t.stack_hi, M, &tag);
    if (n == CFI_MEMO_HIT) {
        *id = tag;
        return 2;
    }
    if (n < 0)
        return 0;
    *id = trace_save(buf, n);
    if (tag)
        cfi_memo_publish(M, *id);
    return 1;
}

/* KMEMLEAK_UNWINDER=check: the memo's id for this stack (its frames trimmed of the shim's, as
 * libunwind's were for id) against id; one line per mismatch */
static unsigned g_check_memo_hits;

static __attribute__((noinline)) void memo_check(uint32_t id)
{
    void *buf[KML_MAX_TRACE + UNWIND_EXTRA + 1]; /* one frame deeper than libunwind's (this one) */
    uint32_t memo;
    if (!t.memo)
        return;
    int m = memo_trace(t.memo, buf, (int)(KML_MAX_TRACE + UNWIND_EXTRA + 1), &memo);
    if (!m)
        return; /* a fallback, counted by unwind_check */
    if (m == 2)
        __atomic_fetch_add(&g_check_memo_hits, 1, __ATOMIC_RELAXED);
    if (memo == id)
        return;
    __atomic_fetch_add(&g_check_mismatches, 1, __ATOMIC_RELAXED);
    char line[160];
    size_t k = str_cat(line, 0, sizeof(line), "kmemleak: unwind check: libunwind trace ");
    k = num_cat(line, k, sizeof(line), id, 0);
    k = str_cat(line, k, sizeof(line), m == 2 ? " | memo hit trace " : " | memo miss trace ");
    k = num_cat(line, k, sizeof(line), memo, 0);
    k = str_cat(line, k, sizeof(line), "\n");
    ssize_t w = write(2, line, k);
    (void)w;
}

static uint32_t trace_hash(const uint64_t *f, uint32_t len)
{
    uint64_t h = 0xcbf29ce484222325ull ^ len;
    for (uint32_t i = 0; i < len; i++) {
        h ^= f[i];
        h *= 0x100000001b3ull;
        h ^= h >> 29;
    }
    uint32_t r = (uint32_t)(h ^ (h >> 32));
    return r ? r : 1;
}

static inline int trace_equal(const struct kml_trace *tr, uint32_t hash, const uint64_t *f, uint32_t len)
{
    if (tr->hash != hash || __atomic_load_n(&tr->len, __ATOMIC_ACQUIRE) != len)
        return 0;
    for (uint32_t i = 0; i < len; i++)
        if (tr->frames[i] != f[i])
            return 0;
    return 1;
}

static int g_depot_full_warned;

/* x4 buckets (x2 to the last size), in place, under the depot lock: bucket b's chain splits into
 * b, b+n, b+2n, b+3n. Lock-free readers may walk a chain while it is relinked; every link points to
 * an older (smaller) id before and after, so a walk always ends, and a miss is retried under the
 * lock. */
static void depot_grow(void)
{
    uint32_t n = g_tr_bucket_mask + 1, shift = (uint32_t)__builtin_ctz(n);
    uint32_t ways = g_tr_bucket_max / n >= 4 ? 4 : 2;
    for (uint32_t b = 0; b < n; b++) {
        uint32_t heads[4] = {0, 0, 0, 0}, tails[4] = {0, 0, 0, 0};
        for (uint32_t id = g_tr_buckets[b]; id; id = g_tr[id - 1].next) {
            uint32_t k = (g_tr[id - 1].hash >> shift) & (ways - 1);
            if (tails[k])
                __atomic_store_n(&g_tr[tails[k] - 1].next, id, __ATOMIC_RELEASE);
            else
                heads[k] = id;
            tails[k] = id;
        }
        for (uint32_t k = 0; k < ways; k++) {
            if (tails[k])
                __atomic_store_n(&g_tr[tails[k] - 1].next, 0, __ATOMIC_RELEASE);
            __atomic_store_n(&g_tr_buckets[b + k * n], heads[k], __ATOMIC_RELEASE);
        }
    }
    __atomic_store_n(&g_tr_bucket_mask, ways * n - 1, __ATOMIC_RELEASE);
}

/* the depot lock, unless this is a lone thread (nobody to exclude: then no store to the shim's
 * .bss, whose page a forked child would copy); the caller unlocks what it returns */
static inline uint32_t *depot_lock(void)
{
    if (lone_thread())
        return &t.lone_stripe;
    spin_lock(&g_depot_lock);
    return &g_depot_lock;
}

/* stack_depot_save: the 1-based id of this trace, added if new (lock-free lookup) */
static uint32_t depot_save(const uint64_t *f, uint32_t len)
{
    uint32_t hash = trace_hash(f, len);
    /* lock-free: a lookup that races with depot_grow may miss, and then finds it under the lock */
    uint32_t *bucket = &g_tr_buckets[hash & __atomic_load_n(&g_tr_bucket_mask, __ATOMIC_ACQUIRE)];
    for (uint32_t id = __atomic_load_n(bucket, __ATOMIC_ACQUIRE); id;
         id = __atomic_load_n(&g_tr[id - 1].next, __ATOMIC_RELAXED))
        if (trace_equal(&g_tr[id - 1], hash, f, len))
            return id;

    uint32_t *lock = depot_lock();
    bucket = &g_tr_buckets[hash & g_tr_bucket_mask];
    uint32_t head = __atomic_load_n(bucket, __ATOMIC_ACQUIRE);
    for (uint32_t id = head; id; id = g_tr[id - 1].next)
        if (trace_equal(&g_tr[id - 1], hash, f, len)) {
            spin_unlock(lock);
            return id;
        }
    uint32_t idx = __atomic_load_n(&g_hdr->traces_used, __ATOMIC_RELAXED);
    if (idx >= g_tr_cap) {
        spin_unlock(lock);
        if (!__atomic_exchange_n(&g_depot_full_warned, 1, __ATOMIC_RELAXED)) {
            static const char m[] = "kmemleak: stack depot full, new traces are not recorded\n";
            ssize_t r = write(2, m, sizeof(m) - 1);
            (void)r;
        }
        return 0;
    }
    struct kml_trace *tr = &g_tr[idx];
    memcpy(tr->frames, f, len * sizeof(uint64_t));
    tr->hash = hash;
    tr->next = head;
    __atomic_store_n(&tr->len, len, __ATOMIC_RELEASE);
    __atomic_store_n(&g_hdr->traces_used, idx + 1, __ATOMIC_RELEASE);
    __atomic_store_n(bucket, idx + 1, __ATOMIC_RELEASE);
    if (unlikely(idx + 1 > INDEX_LOAD * (g_tr_bucket_mask + 1)) && g_tr_bucket_mask + 1 < g_tr_bucket_max)
        depot_grow();
    spin_unlock(lock);
    return idx + 1;
}

/* the depot id of unwound frames, without the shim's own */
static uint32_t trace_save(void *const *buf, int n)
{
    int i = 0;
    while (i < n && (uintptr_t)buf[i] >= g_text_lo && (uintptr_t)buf[i] < g_text_hi)
        i++;
    uint32_t len = (uint32_t)(n - i);
    if (len > KML_MAX_TRACE)
        len = KML_MAX_TRACE;
    if (!len)
        return 0;
    uint64_t f[KML_MAX_TRACE];
    for (uint32_t k = 0; k < len; k++)
        f[k] = (uint64_t)(uintptr_t)buf[i + k];
    return depot_save(f, len);
}

/* the current stack's depot id: the shim's unwinder through its memo (a trace whose stack words are
 * unchanged since it was last unwound is its id again), else unwound and saved */
static inline __attribute__((always_inline)) uint32_t capture_trace(void)
{
    void *buf[KML_MAX_TRACE + UNWIND_EXTRA];
    uint32_t id;
    if (likely(g_unwinder == UNWIND_CFI && t.memo)) {
        if (memo_trace(t.memo, buf, (int)(KML_MAX_TRACE + UNWIND_EXTRA), &id))
            return id;
        return trace_save(buf, unw_trace(buf, (int)(KML_MAX_TRACE + UNWIND_EXTRA)));
    }
    id = trace_save(buf, unwind_stack(buf, (int)(KML_MAX_TRACE + UNWIND_EXTRA)));
    if (g_unwinder == UNWIND_CHECK)
        memo_check(id);
    return id;
}

/* ---- comms ------------------------------------------------------------------------------------- */
static uint32_t comm_intern(const char *name)
{
    char c[KML_COMM_LEN];
    memset(c, 0, sizeof(c));
    for (unsigned i = 0; i < KML_COMM_LEN - 1 && name[i]; i++)
        c[i] = name[i];
    spin_lock(&g_comm_lock);
    uint32_t used = g_hdr->comms_used;
    for (uint32_t i = 0; i < used; i++)
        if (!memcmp(g_comm + (size_t)i * KML_COMM_LEN, c, KML_COMM_LEN)) {
            spin_unlock(&g_comm_lock);
            return i + 1;
        }
    uint32_t id = 0;
    if (used < g_comm_cap) {
        memcpy(g_comm + (size_t)used * KML_COMM_LEN, c, KML_COMM_LEN);
        __atomic_store_n(&g_hdr->comms_used, used + 1, __ATOMIC_RELEASE);
        id = used + 1;
    }
    spin_unlock(&g_comm_lock);
    return id;
}

static void thread_update_comm(const char *name);

static __attribute__((noinline)) void refresh_comm(void)
{
    char name[KML_COMM_LEN + 1];
    memset(name, 0, sizeof(name));
    t.comm_gen = __atomic_load_n(&g_comm_gen, __ATOMIC_ACQUIRE);
    syscall(SYS_prctl, PR_GET_NAME, name, 0, 0, 0);
    t.comm_id = comm_intern(name);
    thread_update_comm(name);
}

static inline uint32_t cur_comm(void)
{
    if (unlikely(t.comm_gen != __atomic_load_n(&g_comm_gen, __ATOMIC_RELAXED)))
        refresh_comm();
    return t.comm_id;
}

/* ---- the object index ------------------------------------------------------------------------- */
/* free() must find the record by its exact pointer. The index is an open-addressed table in the
 * private mapping whose entries hold what a lookup needs: the pointer, the slot, and the record's
 * current version and kind. A lookup reads one 64-byte group of 4 entries (rarely the next one) and
 * never the record; the release is then a blind store of the record's next state. An entry sits at
 * its home or in the nearest free entry after it (linear probing), and a delete shifts the entries
 * after it back (no tombstones: churn does not lengthen the probes).
 *
 * Homes keep neighbours together: the pointer's 4 KiB span picks a run of 256 entries (the top bits
 * of the span's hash), and its offset in the span the entry in the run (one per 16 bytes, so no two
 * blocks of an allocator with 16-byte alignment share a home). A burst of allocations and an
 * interpreter freeing its oldest objects then walk the index line by line instead of missing once
 * an object (python3: 45 % of lookups on the line of the one before, 13 % with hashed homes), and a
 * forked child writes fewer of its pages. Runs are filled unevenly (a heap page holds 20-200
 * objects), so the index grows at half full, not 3/4: linear probing's clusters stay short (python3:
 * 1.6-1.9 entries a lookup).
 *
 * Locking: the table is cut into up to NR_STRIPES domains of consecutive groups, each one probe cycle
 * (probes wrap inside their domain) under one stripe lock, so that a probe never leaves its lock's
 * entries. A hash's domain is the top bits of its group, so growth splits a domain into two
 * neighbours; which stripe guards it follows the table size, read again once the stripe is held
 * (growth holds every stripe).
 *
 * Growth: x2 in place with every stripe held, once objects_used (a bound on the live count) passes
 * half the entries, or when an insert finds its domain full (oix_grow). Runs are the hash's top bits,
 * so it streams through the index, and the records are not touched. */
struct obj_entry {
    uint64_t key;   /* the pointer ^ OIX_KEY_MASK */
    uint32_t slot1; /* slot + 1; 0 = empty */
    uint32_t tag;   /* the record's state with the kind bits replaced by the object's kind (< 8) */
};
#define OIX_TAG_KIND 0x7u
/* The index holds every live object's address, and a probe or a delete's shift loads other objects'
 * entries: stored as is, those addresses stayed behind in registers and stack slots of the thread
 * (the daemon reads a frozen thread's registers as roots) and kept 1-8 of 4096 leaks referenced in
 * AllocatorReferenceTests. Flipped, no key is a canonical user-space address. */
#define OIX_KEY_MASK 0xa5a5a5a5a5a5a5a5ull
#define OIX_MIN_LOG 10u         /* 1024 entries (16 KiB, as many pages as the old bucket heads) */
#define OIX_RUN_LOG 8u          /* a run of 256 entries (64 groups, 4 KiB of index) for ... */
#define OIX_SPACING_LOG 4u      /* ... each 4 KiB span of addresses: one entry per 16 bytes */
#define OIX_SPAN_LOG (OIX_RUN_LOG + OIX_SPACING_LOG)
#define OIX_DOMAIN_MIN_LOG OIX_RUN_LOG /* a domain holds whole runs */

static inline uint32_t oix_domain_log(uint32_t lg)
{
    return lg - OIX_DOMAIN_MIN_LOG < NR_STRIPES_LOG ? lg - OIX_DOMAIN_MIN_LOG : NR_STRIPES_LOG;
}
/* the hash that picks a pointer's run (and so its domain and stripe): its span's */
static inline uint32_t oix_hash(uint64_t ptr, int pcpu) { return hash_ptr(ptr >> OIX_SPAN_LOG, pcpu); }
/* the pointer's home entry: its run's start (the hash's top bits), plus its place in the span */
static inline uint32_t oix_home(uint32_t hash, uint64_t ptr, uint32_t lg)
{
    return (hash >> (32 - (lg - OIX_RUN_LOG))) << OIX_RUN_LOG |
           ((uint32_t)(ptr >> OIX_SPACING_LOG) & ((1u << OIX_RUN_LOG) - 1));
}
/* entries of a domain - 1 */
static inline uint32_t oix_domain_mask(uint32_t lg) { return (1u << (lg - oix_domain_log(lg))) - 1; }
static inline uint32_t oix_next(uint32_t p, uint32_t dmask) { return (p & ~dmask) | ((p + 1) & dmask); }

static inline uint32_t entry_run_hash(const struct obj_entry *e)
{
    return oix_hash(e->key ^ OIX_KEY_MASK, kind_is_pcpu(e->tag & OIX_TAG_KIND));
}
static inline uint32_t entry_home(const struct obj_entry *e, uint32_t lg)
{
    uint64_t ptr = e->key ^ OIX_KEY_MASK;
    return oix_home(oix_hash(ptr, kind_is_pcpu(e->tag & OIX_TAG_KIND)), ptr, lg);
}

/* takes the stripe that guards hash at the current size; *lg = that size, stable while it is held */
static inline uint32_t *oix_lock(uint32_t hash, uint64_t ptr, uint32_t *lg)
{
    for (;;) {
        uint32_t n = __atomic_load_n(&g_oix_log, __ATOMIC_RELAXED);
        uint32_t *l = &g_stripes[hash >> (32 - oix_domain_log(n))];
        if (lone_thread()) {
            /* nobody to exclude; the caller's spin_unlock stores to this thread's own word, not to
             * a stripe page (a forked child's are wiped: a store there is a zero-fill fault) */
            *lg = n;
            return &t.lone_stripe;
        }
        /* the group's miss overlaps the lock's (a locked instruction waits for the stores in flight) */
        __builtin_prefetch(&g_oix[oix_home(hash, ptr, n)], 1, 3);
        spin_lock(l);
        if (likely(__atomic_load_n(&g_oix_log, __ATOMIC_RELAXED) == n)) {
            *lg = n;
            return l;
        }
        spin_unlock(l);
    }
}

/* the entry of ptr with one of kinds, or NULL (stripe held) */
static inline struct obj_entry *oix_find(uint32_t hash, uint32_t lg, uint64_t ptr, uint32_t kinds)
{
    uint32_t dmask = oix_domain_mask(lg), p = oix_home(hash, ptr, lg);
    uint64_t key = ptr ^ OIX_KEY_MASK;
    for (uint32_t n = 0; n <= dmask; n++, p = oix_next(p, dmask)) {
        struct obj_entry *e = &g_oix[p];
        if (!e->slot1)
            return NULL;
        if (e->key == key && (kinds & KIND_BIT(e->tag & OIX_TAG_KIND)))
            return e;
    }
    return NULL;
}

/* An index page's first access is a write, as a fresh chunk's (chunk_first_touch): a probe's load
 * would map the zero page, and the insert's store then faulted a second time (python3: 28 k faults
 * for its 14 k index pages). The write is an atomic add of nothing, so it changes no entry whatever
 * the page holds; the bit is set once. A page lies in one domain (a domain holds whole runs, a run
 * is a page), so only the holder of its stripe writes it. */
#define OIX_PAGE_LOG 8u /* entries a page: 256 x 16 B */
_Static_assert(sizeof(struct obj_entry) << OIX_PAGE_LOG == PAGE_SIZE_, "an index page holds 256 entries");
/* whether index page pg (256 entries) was ever written: a page never written holds no entry, and is
 * neither read nor cleared by a growth (the index grows with objects_used, which counts the header
 * blocks that are never in it: most of a glibc program's index stays untouched) */
static inline int oix_page_written(uint32_t pg)
{
    return (__atomic_load_n(&g_oix_written[pg / 64], __ATOMIC_RELAXED) >> (pg % 64)) & 1;
}

static __attribute__((noinline)) void oix_first_write_slow(uint32_t p)
{
    __atomic_fetch_add(&g_oix[p].slot1, 0, __ATOMIC_RELAXED);
    uint32_t pg = p >> OIX_PAGE_LOG;
    __atomic_fetch_or(&g_oix_written[pg / 64], 1ull << (pg % 64), __ATOMIC_RELAXED);
}
static inline void oix_first_write(uint32_t p)
{
    if (unlikely(!oix_page_written(p >> OIX_PAGE_LOG)))
        oix_first_write_slow(p);
}

/* 1 if stored, 0 if the domain is full (stripe held, or every stripe) */
static inline int oix_insert(uint32_t hash, uint32_t lg, uint64_t key, uint32_t slot1, uint32_t tag)
{
    uint32_t dmask = oix_domain_mask(lg), p = oix_home(hash, key ^ OIX_KEY_MASK, lg);
    oix_first_write(p);
    for (uint32_t n = 0; n <= dmask; n++, p = oix_next(p, dmask)) {
        struct obj_entry *e = &g_oix[p];
        if (!e->slot1) {
            oix_first_write(p); /* a probe that left the home's page: already read, faulted once more */
            e->key = key;
            e->tag = tag;
            e->slot1 = slot1;
            return 1;
        }
    }
    return 0;
}

/* empties entry p and shifts back the entries after it that may move closer to their home */
static inline void oix_remove(uint32_t lg, uint32_t p)
{
    uint32_t dmask = oix_domain_mask(lg), hole = p;
    g_oix[hole].slot1 = 0;
    for (uint32_t j = oix_next(hole, dmask); g_oix[j].slot1; j = oix_next(j, dmask)) {
        uint32_t home = entry_home(&g_oix[j], lg);
        if (((j - home) & dmask) >= ((j - hole) & dmask)) {
            g_oix[hole] = g_oix[j];
            g_oix[j].slot1 = 0;
            hole = j;
        }
    }
}

/* re-inserts the entries of [from, from + n) at size lg (n a multiple of a page; pages of the index
 * from page first_pg on), clearing each page it read */
static void oix_move(struct obj_entry *from, uint32_t n, uint32_t first_pg, uint32_t lg)
{
    for (uint32_t pg = 0; pg < n >> OIX_PAGE_LOG; pg++) {
        if (!oix_page_written(first_pg + pg))
            continue;
        struct obj_entry *e = from + ((size_t)pg << OIX_PAGE_LOG);
        for (uint32_t i = 0; i < 1u << OIX_PAGE_LOG; i++)
            if (e[i].slot1)
                oix_insert(entry_run_hash(&e[i]), lg, e[i].key, e[i].slot1, e[i].tag);
    }
}
static void oix_clear(struct obj_entry *at, uint32_t n, uint32_t first_pg)
{
    for (uint32_t pg = 0; pg < n >> OIX_PAGE_LOG; pg++)
        if (oix_page_written(first_pg + pg))
            memset(at + ((size_t)pg << OIX_PAGE_LOG), 0, PAGE_SIZE_);
}

/* x2, in place, with every stripe held, unless another thread grew it since the caller saw size lg.
 * Old domain d (m entries) becomes the 2m entries from 2dm, which held old domains 2d and 2d + 1 or
 * nothing: top down, each domain is re-inserted into space already emptied, and only domain 0,
 * which overlaps itself, goes through the scratch area (one domain). A domain's entries fit in its
 * two halves (or its doubled self), each as large as it was: nothing overflows. */
static __attribute__((noinline)) void oix_grow(uint32_t lg)
{
    for (uint32_t i = 0; i < NR_STRIPES; i++)
        spin_lock(&g_stripes[i]);
    if (g_oix_log == lg && lg < g_oix_max_log) {
        uint32_t m = oix_domain_mask(lg) + 1;
        for (uint32_t d = 1u << oix_domain_log(lg); d-- > 1;) {
            uint32_t pg = (uint32_t)(((size_t)d * m) >> OIX_PAGE_LOG);
            struct obj_entry *old = g_oix + (size_t)d * m;
            /* read, then cleared: its own entries only land in higher domains (2d, 2d + 1) */
            oix_move(old, m, pg, lg + 1);
            oix_clear(old, m, pg);
        }
        /* domain 0 overlaps itself: through the scratch area, whose pages are written by this copy */
        struct obj_entry *scratch = g_oix + ((size_t)1 << g_oix_max_log);
        uint32_t scratch_pg = (uint32_t)(((size_t)1 << g_oix_max_log) >> OIX_PAGE_LOG);
        for (uint32_t pg = 0; pg < m >> OIX_PAGE_LOG; pg++) {
            if (oix_page_written(pg)) {
                oix_first_write(((uint32_t)1 << g_oix_max_log) + (pg << OIX_PAGE_LOG));
                memcpy(scratch + ((size_t)pg << OIX_PAGE_LOG), g_oix + ((size_t)pg << OIX_PAGE_LOG), PAGE_SIZE_);
            } else if (oix_page_written(scratch_pg + pg)) {
                memset(scratch + ((size_t)pg << OIX_PAGE_LOG), 0, PAGE_SIZE_); /* a stale copy: empty now */
            }
        }
        oix_clear(g_oix, m, 0);
        oix_move(scratch, m, scratch_pg, lg + 1);
        __atomic_store_n(&g_oix_log, lg + 1, __ATOMIC_RELAXED);
    }
    for (uint32_t i = NR_STRIPES; i-- > 0;)
        spin_unlock(&g_stripes[i]);
}

/* the header's live_objects, in per-thread batches: one shared atomic per LIVE_BATCH changes
 * instead of two per malloc/free pair (the daemon reads it as a size hint and for its log) */
static void live_flush(void)
{
    if (t.live_delta && g_hdr)
        __atomic_fetch_add(&g_hdr->live_objects, (uint64_t)(int64_t)t.live_delta, __ATOMIC_RELAXED);
    t.live_delta = 0;
}

static inline void live_count(int32_t d)
{
    t.live_delta += d;
    if (unlikely(t.live_delta >= LIVE_BATCH || t.live_delta <= -LIVE_BATCH || t.exiting))
        live_flush();
}

/* ---- object slots -------------------------------------------------------------------------------- */
/* A fresh chunk's pages are written once before any record in them is read: the record writer's
 * first access is a load of the state, which maps the zero page, and its store then faulted a
 * second time to replace it (python3: 34 k faults for its 17 k record pages). Slots above
 * objects_used are all zero, so a store of 0 to one changes nothing a reader can see. */
_Static_assert(PAGE_SIZE_ % sizeof(struct kml_object) == 0, "a page of the (page-aligned) objects starts a record");
static void chunk_first_touch(uint32_t cur, uint32_t end)
{
    uintptr_t first = (uintptr_t)&g_obj[cur], past = (uintptr_t)&g_obj[end];
    __atomic_store_n(&g_obj[cur].state, 0, __ATOMIC_RELAXED);
    for (uintptr_t a = (first | (PAGE_SIZE_ - 1)) + 1; a < past; a += PAGE_SIZE_)
        __atomic_store_n(&((struct kml_object *)a)->state, 0, __ATOMIC_RELAXED);
}

static uint32_t slot_alloc(void)
{
    uint32_t h = t.cache_head;
    if (h) {
        t.cache_head = g_obj[h - 1].hash_next;
        t.cache_count--;
        /* the next slot's record, whose link the next allocation reads, arrives meanwhile (after a
         * run of frees the cache holds slots freed long ago: a dependent miss each otherwise) */
        if (t.cache_head)
            __builtin_prefetch(&g_obj[t.cache_head - 1], 1, 3);
        return h - 1;
    }
    if (t.bump_next < t.bump_end)
        return t.bump_next++;
    if (__atomic_load_n(&g_batch_count, __ATOMIC_RELAXED)) {
        spin_lock(&g_batch_lock);
        if (g_batch_count) {
            g_batch_count--;
            h = g_batches[2 * g_batch_count];
            uint32_t n = g_batches[2 * g_batch_count + 1];
            spin_unlock(&g_batch_lock);
            t.cache_head = g_obj[h - 1].hash_next;
            t.cache_count = n - 1;
            return h - 1;
        }
        spin_unlock(&g_batch_lock);
    }
    uint32_t cur = __atomic_load_n(&g_hdr->objects_used, __ATOMIC_RELAXED);
    for (;;) {
        if (cur >= g_obj_cap)
            return UINT32_MAX;
        uint32_t end = cur + SLOT_CHUNK > g_obj_cap ? g_obj_cap : cur + SLOT_CHUNK;
        if (__atomic_compare_exchange_n(&g_hdr->objects_used, &cur, end, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED)) {
            t.bump_next = cur + 1;
            t.bump_end = end;
            chunk_first_touch(cur, end);
            /* objects_used bounds the live count: grow the index before it is half full
             * (no stripe is held here; callers may hold the mm or pcpu lock, which come first) */
            uint32_t lg = __atomic_load_n(&g_oix_log, __ATOMIC_RELAXED);
            if (unlikely((uint64_t)end * 2 > (uint64_t)1 << lg) && lg < g_oix_max_log)
                oix_grow(lg);
            return cur;
        }
    }
}

/* gives the chain [head..] of n slots to the global list */
static void batch_push(uint32_t head, uint32_t n)
{
    spin_lock(&g_batch_lock);
    if (g_batch_count < g_batch_cap) {
        g_batches[2 * g_batch_count] = head;
        g_batches[2 * g_batch_count + 1] = n;
        g_batch_count++;
    }
    spin_unlock(&g_batch_lock);
}

/* detaches the first n slots of the thread cache as a chain; returns its head */
static uint32_t cache_detach(uint32_t n)
{
    uint32_t head = t.cache_head, last = head;
    for (uint32_t i = 1; i < n; i++)
        last = g_obj[last - 1].hash_next;
    t.cache_head = g_obj[last - 1].hash_next;
    g_obj[last - 1].hash_next = 0;
    t.cache_count -= n;
    return head;
}

static void slot_free(uint32_t idx)
{
    if (unlikely(t.exiting)) {
        /* after the thread's destructor: straight to the global list */
        g_obj[idx].hash_next = 0;
        batch_push(idx + 1, 1);
        return;
    }
    g_obj[idx].hash_next = t.cache_head;
    t.cache_head = idx + 1;
    if (++t.cache_count >= 2 * SLOT_BATCH)
        batch_push(cache_detach(SLOT_BATCH), SLOT_BATCH);
}

/* thread exit: the cache and the rest of the bump chunk go to the global list */
static void slot_cache_flush(void)
{
    while (t.bump_next < t.bump_end) {
        uint32_t idx = t.bump_next++;
        g_obj[idx].hash_next = t.cache_head;
        t.cache_head = idx + 1;
        t.cache_count++;
    }
    while (t.cache_count) {
        uint32_t n = t.cache_count < SLOT_BATCH ? t.cache_count : SLOT_BATCH;
        batch_push(cache_detach(n), n);
    }
    t.cache_head = 0;
    t.bump_next = t.bump_end = 0;
    live_flush();
}

/* ---- block headers ---------------------------------------------------------------------------
 * A block of glibc's malloc, calloc or realloc that the shim tracks carries 16 bytes in front of the
 * pointer the program gets: its record's slot and version, and a check word. free() finds the record
 * there, in the chunk glibc's own free reads a line of anyway, instead of in the object index: the
 * index entry's load was the one cache miss of every free (most of delete_object), and the index is
 * a table shared by every thread, which 8 threads' objects no longer fit in the cache beside their
 * heaps. Such a block is never in the index. LeakSanitizer's allocator keeps its chunk headers the
 * same way.
 *
 * The check word is the pointer ^ OIX_KEY_MASK mixed with the first word, keeping its top byte 0xa5:
 * at p - 8 a glibc block without a header has its chunk's size, which never has that top byte, so no
 * such block (memalign's, one made while the shim was not tracking) is taken for one, and a first
 * word torn by an underflow of the block before fails the check. Neither word is a canonical
 * address: the daemon reads the heap. A block keeps its header for life; a record released by
 * another path (kmemleak_free) leaves it with slot 0, no record. The record's version follows in
 * the header: a release is then one store of the next version (blk_untrack). */
struct blk_hdr {
    uint64_t rec;   /* (version << 32 | slot + 1) ^ OIX_KEY_MASK; slot + 1 = 0: no record */
    uint64_t check; /* blk_check(pointer, rec) */
};
#define BLK_HDR ((size_t)sizeof(struct blk_hdr))
/* What a header block asks glibc for: at least 25 bytes, so that its chunk (32 bytes before the
 * block, request2size of this) ends where a plain block's of the same size would, at
 * p - 16 + request2size(size), and its usable size is what glibc gives without the shim. The
 * daemon ignores a word of allocator data pointing at that next chunk (glibc's top and bins);
 * a 32-byte chunk would end at p itself, which libc's own data points at when it holds the block
 * (setlocale's strdup). */
#define BLK_MIN_SIZE 9u
static inline size_t blk_request(size_t size) { return (size < BLK_MIN_SIZE ? BLK_MIN_SIZE : size) + BLK_HDR; }
static inline uint64_t blk_check(uint64_t p, uint64_t rec)
{
    return (p ^ OIX_KEY_MASK) ^ ((rec * 0x9e3779b97f4a7c15ull) >> 8);
}
static inline struct blk_hdr *blk_hdr_of(const void *p) { return (struct blk_hdr *)p - 1; }
static inline void blk_set(void *p, uint32_t slot1, uint32_t version)
{
    struct blk_hdr *h = blk_hdr_of(p);
    h->rec = ((uint64_t)version << 32 | slot1) ^ OIX_KEY_MASK;
    h->check = blk_check((uintptr_t)p, h->rec);
}
/* whether p, a pointer glibc's free would accept, has a header (reads p - 16 and p - 8, which
 * glibc's free reads too: the previous chunk's last word and p's chunk size) */
static inline int blk_has(const void *p)
{
    if (!GLIBC_ALLOCATOR() || unlikely(in_boot_arena(p)))
        return 0;
    const struct blk_hdr *h = blk_hdr_of(p);
    return h->check == blk_check((uintptr_t)p, h->rec);
}
/* header block p names the record of slot idx (as it is now), or none for UINT32_MAX */
static inline void blk_name(void *p, uint32_t idx)
{
    if (likely(idx != UINT32_MAX))
        blk_set(p, idx + 1, g_obj[idx].state >> KML_STATE_VERSION_SHIFT);
    else
        blk_set(p, 0, 0);
}
static inline uint32_t blk_slot1(const struct blk_hdr *h) { return (uint32_t)(h->rec ^ OIX_KEY_MASK); }
static inline uint32_t blk_version(const struct blk_hdr *h) { return (uint32_t)((h->rec ^ OIX_KEY_MASK) >> 32); }

/* The annotation API gets pointers from the program, where p - 16 may be unmapped (a pointer at
 * the start of a mapping, a bogus one): its header is read with process_vm_readv on ourselves, which
 * fails with EFAULT instead of faulting. Under a seccomp filter (which may kill on a syscall it does
 * not know) no such read: the header is found through its record, by a walk of the table. 1 if
 * read, 0 if unreadable, -1 if it cannot be read that way. */
static int g_seccomp_seen; /* (atomic) a filter cannot be removed: once seen, no more syscalls to ask */
static int blk_read_safely(uint64_t p, struct blk_hdr *out)
{
    if (p < BLK_HDR || __atomic_load_n(&g_seccomp_seen, __ATOMIC_RELAXED))
        return -1;
    if (syscall(SYS_prctl, PR_GET_SECCOMP, 0, 0, 0, 0) != 0) {
        __atomic_store_n(&g_seccomp_seen, 1, __ATOMIC_RELAXED);
        return -1;
    }
    struct iovec local = {out, BLK_HDR}, remote = {(void *)(uintptr_t)(p - BLK_HDR), BLK_HDR};
    ssize_t n = syscall(SYS_process_vm_readv, (pid_t)syscall(SYS_getpid), &local, 1UL, &remote, 1UL, 0UL);
    if (n == (ssize_t)BLK_HDR)
        return 1;
    return n < 0 && errno == EFAULT ? 0 : -1;
}

/* whether the LIVE malloc record of slot idx is header block p's */
static int blk_names(uint64_t p, const struct blk_hdr *h, uint32_t idx)
{
    if (h->check != blk_check(p, h->rec) || blk_slot1(h) != idx + 1)
        return 0;
    const struct kml_object *o = &g_obj[idx];
    uint32_t st = __atomic_load_n(&o->state, __ATOMIC_ACQUIRE);
    return (st & (KML_STATE_KIND_MASK | KML_STATE_BUSY)) == KML_STATE_LIVE &&
           st >> KML_STATE_VERSION_SHIFT == blk_version(h) && o->pointer == p &&
           (o->flags & KML_KIND_MASK) == KML_KIND_MALLOC;
}

/* the slot of header block p's LIVE record, from a pointer the program passed (its stripe held, so
 * that no free releases the record meanwhile); UINT32_MAX if p is no such block */
static uint32_t blk_find(uint64_t p)
{
    if (!GLIBC_ALLOCATOR() || in_boot_arena((const void *)(uintptr_t)p))
        return UINT32_MAX;
    struct blk_hdr h;
    int r = blk_read_safely(p, &h);
    uint32_t used = __atomic_load_n(&g_hdr->objects_used, __ATOMIC_ACQUIRE);
    if (r >= 0) {
        uint32_t slot1 = r ? blk_slot1(&h) : 0;
        return slot1 && slot1 <= used && blk_names(p, &h, slot1 - 1) ? slot1 - 1 : UINT32_MAX;
    }
    /* a LIVE malloc record of p outside the index is a header block's: p - 16 is then ours to read */
    for (uint32_t i = 0; i < used; i++) {
        const struct kml_object *o = &g_obj[i];
        if (o->pointer == p && (__atomic_load_n(&o->state, __ATOMIC_ACQUIRE) & KML_STATE_KIND_MASK) == KML_STATE_LIVE &&
            (o->flags & KML_KIND_MASK) == KML_KIND_MALLOC && blk_names(p, blk_hdr_of((const void *)(uintptr_t)p), i))
            return i;
    }
    return UINT32_MAX;
}

/* ---- object lifetime --------------------------------------------------------------------------- */
struct objinfo {
    uint64_t pointer, size, seq, time_ns;
    uint32_t trace_id, comm_id, flags, transient_gen;
    int32_t tid, min_count;
};

/* A lone thread takes its sequence numbers SEQ_BLOCK at a time: the header's alloc_seq shares a page
 * with what a forked child rewrites, and a store per allocation was a copy-on-write fault in the
 * parent after every fork. Unused numbers are skipped; allocation order is kept (there is one
 * thread), and the first allocation after a second thread exists drops the rest of the block. */
#define SEQ_BLOCK 256

static __attribute__((noinline)) void seq_block_take(void)
{
    t.seq_next = __atomic_load_n(&g_hdr->alloc_seq, __ATOMIC_RELAXED);
    t.seq_end = t.seq_next + SEQ_BLOCK;
    __atomic_store_n(&g_hdr->alloc_seq, t.seq_end, __ATOMIC_RELAXED);
}

/* a new sequence number (allocation order) */
static inline uint64_t next_seq(void)
{
    if (lone_thread()) {
        if (unlikely(t.seq_next >= t.seq_end))
            seq_block_take();
        return t.seq_next++;
    }
    t.seq_next = t.seq_end; /* later numbers than any of the block: from the header */
    return __atomic_fetch_add(&g_hdr->alloc_seq, 1, __ATOMIC_RELAXED);
}

/* the allocation context: trace, time, thread, comm, a new sequence number */
static inline __attribute__((always_inline)) void current_context(struct objinfo *oi)
{
    oi->trace_id = capture_trace();
    oi->time_ns = now_ns();
    oi->tid = cur_tid();
    oi->comm_id = cur_comm();
    oi->seq = next_seq();
    oi->transient_gen = 0;
}

/* record_new: a LIVE record (not indexed); slot index or UINT32_MAX */
static inline __attribute__((always_inline)) uint32_t record_new(const struct objinfo *oi)
{
    uint32_t idx = slot_alloc();
    if (unlikely(idx == UINT32_MAX)) {
        kml_disable("object table full");
        return UINT32_MAX;
    }
    struct kml_object *o = &g_obj[idx];
    rec_write_begin(&o->state);
    o->pointer = oi->pointer;
    o->size = oi->size;
    o->seq = oi->seq;
    o->time_ns = oi->time_ns;
    o->trace_id = oi->trace_id;
    o->tid = oi->tid;
    o->min_count = oi->min_count;
    o->flags = oi->flags;
    o->comm_id = oi->comm_id;
    o->transient_gen = oi->transient_gen;
    rec_write_end(&o->state, KML_STATE_LIVE);
    live_count(1);
    return idx;
}

/* create_object: a LIVE record, indexed by pointer; slot index or UINT32_MAX */
static uint32_t create_object(const struct objinfo *oi)
{
    uint32_t idx = record_new(oi);
    if (unlikely(idx == UINT32_MAX))
        return UINT32_MAX;
    struct kml_object *o = &g_obj[idx];
    uint32_t kind = oi->flags & KML_KIND_MASK;
    uint32_t tag = (o->state & ~OIX_TAG_KIND) | kind, lg;
    uint32_t h = oix_hash(oi->pointer, kind_is_pcpu(kind));
    for (;;) {
        uint32_t *l = oix_lock(h, oi->pointer, &lg);
        int stored = oix_insert(h, lg, oi->pointer ^ OIX_KEY_MASK, idx + 1, tag);
        spin_unlock(l);
        if (likely(stored))
            break;
        if (lg >= g_oix_max_log) {
            /* a full domain at the largest size: only pointers chosen to collide get here */
            rec_write_begin(&o->state);
            rec_write_end(&o->state, KML_STATE_FREE);
            live_count(-1);
            kml_disable("object index full");
            return UINT32_MAX;
        }
        oix_grow(lg);
    }
    return idx;
}

/* An object found by its exact pointer, its stripe held: through its index entry, or (for the
 * annotation API, FIND_HEADER in kinds) through its block header. */
#define FIND_HEADER 0x80000000u
struct obj_ref {
    struct obj_entry *e; /* its index entry, or NULL: a header block's */
    uint64_t ptr;
    uint32_t idx;        /* its slot */
};
static inline int obj_find(uint32_t hash, uint32_t lg, uint64_t ptr, int pcpu, uint32_t kinds, struct obj_ref *r)
{
    r->ptr = ptr;
    r->e = oix_find(hash, lg, ptr, kinds & ~FIND_HEADER);
    if (r->e) {
        r->idx = r->e->slot1 - 1;
        return 1;
    }
    if (pcpu || !(kinds & FIND_HEADER) || !(kinds & KIND_BIT(KML_KIND_MALLOC)))
        return 0;
    r->idx = blk_find(ptr);
    return r->idx != UINT32_MAX;
}
/* the record's version, as its entry or header holds it */
static inline uint32_t obj_version(const struct obj_ref *r)
{
    return r->e ? r->e->tag >> KML_STATE_VERSION_SHIFT : blk_version(blk_hdr_of((void *)(uintptr_t)r->ptr));
}
/* after a seqlock write of the record: its entry or header follows the version */
static inline void obj_versioned(const struct obj_ref *r)
{
    if (r->e)
        r->e->tag = (g_obj[r->idx].state & ~OIX_TAG_KIND) | (r->e->tag & OIX_TAG_KIND);
    else
        blk_name((void *)(uintptr_t)r->ptr, r->idx);
}

/* A header block's free() takes no lock once the process has threads: it releases the record with a
 * compare-and-swap from the LIVE state of the header's version (blk_untrack). So the annotation
 * API, which holds the stripe, claims such a record by a compare-and-swap too: from LIVE to BUSY to
 * change it, from LIVE to FREE to release it; it loses (0) when the block is being freed. */
static inline int obj_write_begin(const struct obj_ref *r)
{
    struct kml_object *o = &g_obj[r->idx];
    if (r->e) {
        rec_write_begin(&o->state);
        return 1;
    }
    uint32_t live = obj_version(r) << KML_STATE_VERSION_SHIFT | KML_STATE_LIVE;
    if (!__atomic_compare_exchange_n(&o->state, &live, live | KML_STATE_BUSY, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return 0;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    return 1;
}

/* delete_object: unindex and release the record of ptr; copies it to *save; 1 if found in the index,
 * 2 if through its block header (which then names no record) */
static int delete_object(uint64_t ptr, int pcpu, uint32_t kinds, struct kml_object *save)
{
    uint32_t h = oix_hash(ptr, pcpu), lg;
    uint32_t *l = oix_lock(h, ptr, &lg);
    struct obj_ref r;
    if (!obj_find(h, lg, ptr, pcpu, kinds, &r)) {
        spin_unlock(l);
        return 0;
    }
    __builtin_prefetch(&g_obj[r.idx], 1, 3); /* the store below asks for the line only when it commits */
    struct kml_object *o = &g_obj[r.idx];
    if (save)
        *save = *o;
    /* written blind: the entry holds the record's version, and a release changes no other field,
     * so one store of the next state is the whole seqlock write */
    uint32_t v = obj_version(&r), freed = (v + 1) << KML_STATE_VERSION_SHIFT | KML_STATE_FREE;
    if (r.e) {
        __atomic_store_n(&o->state, freed, __ATOMIC_RELEASE);
        oix_remove(lg, (uint32_t)(r.e - g_oix));
    } else {
        uint32_t live = v << KML_STATE_VERSION_SHIFT | KML_STATE_LIVE;
        if (!__atomic_compare_exchange_n(&o->state, &live, freed, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
            spin_unlock(l); /* its free() released it meanwhile */
            return 0;
        }
        blk_set((void *)(uintptr_t)ptr, 0, 0);
    }
    spin_unlock(l);
    live_count(-1);
    slot_free(r.idx);
    return r.e ? 1 : 2;
}

/* runs fn on the LIVE record of ptr under its stripe lock, as one seqlock write; 1 if found */
typedef void (*modify_fn)(struct kml_object *o, uintptr_t arg);
static int modify_object(uint64_t ptr, int pcpu, uint32_t kinds, modify_fn fn, uintptr_t arg)
{
    uint32_t h = oix_hash(ptr, pcpu), lg;
    uint32_t *l = oix_lock(h, ptr, &lg);
    struct obj_ref r;
    int found = obj_find(h, lg, ptr, pcpu, kinds, &r) && obj_write_begin(&r);
    if (found) {
        struct kml_object *o = &g_obj[r.idx];
        fn(o, arg);
        rec_write_end(&o->state, KML_STATE_LIVE);
        obj_versioned(&r); /* the version moved */
    }
    spin_unlock(l);
    return found;
}

/* the start of the LIVE plain object containing ptr (exact match first, then a table walk) */
static int find_containing(uint64_t ptr, uint64_t *start, uint64_t *size, uint32_t *kind)
{
    uint32_t h = oix_hash(ptr, 0), lg;
    uint32_t *l = oix_lock(h, ptr, &lg);
    struct obj_ref r;
    if (obj_find(h, lg, ptr, 0, PLAIN_KINDS | FIND_HEADER, &r)) {
        struct kml_object *o = &g_obj[r.idx];
        *start = o->pointer;
        *size = o->size;
        *kind = o->flags & KML_KIND_MASK;
        spin_unlock(l);
        return 1;
    }
    spin_unlock(l);
    uint32_t used = __atomic_load_n(&g_hdr->objects_used, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < used; i++) {
        struct kml_object *o = &g_obj[i];
        uint32_t s = __atomic_load_n(&o->state, __ATOMIC_ACQUIRE);
        if ((s & (KML_STATE_KIND_MASK | KML_STATE_BUSY)) != KML_STATE_LIVE)
            continue;
        uint64_t p = o->pointer, sz = o->size;
        uint32_t k = o->flags & KML_KIND_MASK;
        if (kind_is_pcpu(k) || ptr < p || ptr >= p + (sz ? sz : 1))
            continue;
        if (__atomic_load_n(&o->state, __ATOMIC_ACQUIRE) != s)
            continue;
        *start = p;
        *size = sz;
        *kind = k;
        return 1;
    }
    return 0;
}

/* ---- mmap list (the vmalloc twin): slots of tracked program mappings, under g_mm_lock ------- */
static void mm_list_add(uint32_t idx)
{
    if (g_mm_count >= MAX_MMAPS) {
        kml_disable("mmap list full");
        return;
    }
    g_mm_slots[g_mm_count++] = idx;
}

static int mm_list_find_exact(uint64_t start)
{
    for (uint32_t i = 0; i < g_mm_count; i++) {
        struct kml_object *o = &g_obj[g_mm_slots[i]];
        if (o->pointer == start && (o->state & KML_STATE_KIND_MASK) == KML_STATE_LIVE)
            return (int)i;
    }
    return -1;
}

static void track_mapping(uint64_t start, uint64_t len, const struct objinfo *ctx, int32_t min_count)
{
    struct objinfo oi = *ctx;
    oi.pointer = start;
    oi.size = len;
    oi.flags = KML_KIND_MMAP;
    oi.min_count = min_count;
    if (oi.seq == UINT64_MAX) /* a fresh sequence number for every new object */
        oi.seq = next_seq();
    uint32_t idx = create_object(&oi);
    if (idx != UINT32_MAX)
        mm_list_add(idx);
}

/* What pages moved out of the tracked mappings overlapping [lo, hi) inherit: their min_count if they
 * agree (a part of a reservation stays one, an ignored mapping stays ignored), else 0 (scanned, never
 * reported). Returns 0 if no tracked mapping overlaps. Under g_mm_lock. */
static int mm_overlap_min_count(uint64_t lo, uint64_t hi, int32_t *min_count)
{
    int found = 0;
    for (uint32_t i = 0; i < g_mm_count; i++) {
        const struct kml_object *o = &g_obj[g_mm_slots[i]];
        if (o->pointer < hi && o->pointer + o->size > lo) {
            *min_count = found && *min_count != o->min_count ? 0 : o->min_count;
            found = 1;
        }
    }
    return found;
}

/* free_part over the mapping list: [lo, hi) is gone; remainders are re-registered with the
 * freeing context (trace, comm, pid, time) and new sequence numbers. Returns 1 if any overlapped. */
static int mm_unmap_range(uint64_t lo, uint64_t hi)
{
    int any = 0, have_ctx = 0;
    struct objinfo ctx;
    for (;;) {
        int found = -1;
        for (uint32_t i = 0; i < g_mm_count; i++) {
            struct kml_object *o = &g_obj[g_mm_slots[i]];
            if (o->pointer < hi && o->pointer + o->size > lo) {
                found = (int)i;
                break;
            }
        }
        if (found < 0)
            return any;
        any = 1;
        uint32_t idx = g_mm_slots[found];
        struct kml_object saved;
        g_mm_slots[found] = g_mm_slots[--g_mm_count];
        if (!delete_object(g_obj[idx].pointer, 0, KIND_BIT(KML_KIND_MMAP), &saved))
            continue;
        uint64_t s = saved.pointer, e = saved.pointer + saved.size;
        if (s < lo || e > hi) {
            if (!have_ctx) {
                current_context(&ctx);
                have_ctx = 1;
            }
            if (s < lo) {
                ctx.seq = UINT64_MAX;
                track_mapping(s, lo - s, &ctx, saved.min_count);
            }
            if (e > hi) {
                ctx.seq = UINT64_MAX;
                track_mapping(hi, e - hi, &ctx, saved.min_count);
            }
        }
    }
}

/* ---- the malloc family -------------------------------------------------------------------------- */
/* The dynamic linker's own allocations (DTVs, dynamic TLS blocks of dlopen'ed libraries and NSS
 * modules, link maps, dlerror strings) are not leaks of the program: it keeps them in places that
 * are no roots (cached thread stacks, its own anonymous memory). As LeakSanitizer does
 * (use_ld_allocations), a block whose caller is ld.so's code gets min_count 0: grey, never
 * reported, its contents scanned (a block stored in a dlopen'ed library's __thread variable stays
 * reachable through its TLS block). */
static uintptr_t g_ldso_lo, g_ldso_len;      /* ld.so's executable segment */
static uintptr_t g_foreign_lo, g_foreign_len; /* a foreign allocator's: its own mmaps are its heap */

static inline int from_code(const void *caller, uintptr_t lo, uintptr_t len)
{
    return (uintptr_t)caller - lo < len;
}

static inline int32_t caller_min_count(const void *caller)
{
    return from_code(caller, g_ldso_lo, g_ldso_len) ? 0 : 1;
}

/* the record saved from a release, to be made again */
static inline struct objinfo objinfo_of(const struct kml_object *o)
{
    return (struct objinfo){o->pointer, o->size, o->seq, o->time_ns, o->trace_id, o->comm_id, o->flags,
                            o->transient_gen, o->tid, o->min_count};
}

/* a malloc block's record: the allocation context, its pointer and size */
static inline __attribute__((always_inline)) void malloc_info(struct objinfo *oi, void *p, size_t size, int32_t min_count)
{
    current_context(oi);
    oi->pointer = (uint64_t)(uintptr_t)p;
    oi->size = size;
    oi->flags = KML_KIND_MALLOC;
    oi->min_count = min_count;
}

static inline __attribute__((always_inline)) void track_alloc(void *p, size_t size, int32_t min_count)
{
    /* the index group arrives while we unwind */
    __builtin_prefetch(&g_oix[oix_home(oix_hash((uintptr_t)p, 0), (uintptr_t)p, __atomic_load_n(&g_oix_log, __ATOMIC_RELAXED))], 1, 3);
    struct objinfo oi;
    malloc_info(&oi, p, size, min_count);
    create_object(&oi);
}

static inline void untrack_free(void *p)
{
    delete_object((uint64_t)(uintptr_t)p, 0, KIND_BIT(KML_KIND_MALLOC), NULL);
}

/* a new record for header block p (tracking entered); the header names it, or no record */
static inline __attribute__((always_inline)) void blk_track(void *p, size_t size, int32_t min_count)
{
    struct objinfo oi;
    malloc_info(&oi, p, size, min_count);
    blk_name(p, record_new(&oi));
}

/* blk_untrack when an annotation holds the record: on the stripe its index entry would have, which
 * the annotation holds until record and header agree again; the released slot + 1, or 0 if the
 * annotation released it (kmemleak_free) */
static __attribute__((noinline)) uint32_t blk_release_claimed(void *p, struct kml_object *save)
{
    uint32_t hash = oix_hash((uintptr_t)p, 0), lg;
    uint32_t *l = oix_lock(hash, (uintptr_t)p, &lg);
    const struct blk_hdr *h = blk_hdr_of(p);
    uint32_t slot1 = blk_slot1(h);
    if (slot1 && slot1 <= g_obj_cap) {
        struct kml_object *o = &g_obj[slot1 - 1];
        if (save)
            *save = *o;
        __atomic_store_n(&o->state, (blk_version(h) + 1) << KML_STATE_VERSION_SHIFT | KML_STATE_FREE, __ATOMIC_RELEASE);
    } else {
        slot1 = 0;
    }
    spin_unlock(l);
    return slot1;
}

/* releases header block p's record, if it has one (tracking entered); copies it to *save; 1 if it had.
 * No lock: a lone thread's release is a blind store of the next version (nothing else runs in the
 * shim); with threads, a compare-and-swap from LIVE at the header's version, which fails only while
 * the annotation API changes the record (obj_write_begin): then blk_release_claimed. */
static inline int blk_untrack(void *p, struct kml_object *save)
{
    /* one load: an annotation may rewrite the header meanwhile (the version, or no record) */
    struct blk_hdr h = {__atomic_load_n(&blk_hdr_of(p)->rec, __ATOMIC_RELAXED), 0};
    uint32_t slot1 = blk_slot1(&h), v = blk_version(&h);
    if (!slot1 || slot1 > g_obj_cap)
        return 0;
    struct kml_object *o = &g_obj[slot1 - 1];
    uint32_t live = v << KML_STATE_VERSION_SHIFT | KML_STATE_LIVE, freed = (v + 1) << KML_STATE_VERSION_SHIFT | KML_STATE_FREE;
    if (save)
        *save = *o;
    if (lone_thread())
        __atomic_store_n(&o->state, freed, __ATOMIC_RELEASE);
    else if (!__atomic_compare_exchange_n(&o->state, &live, freed, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED) &&
             !(slot1 = blk_release_claimed(p, save)))
        return 0;
    blk_set(p, 0, 0);
    live_count(-1);
    slot_free(slot1 - 1);
    return 1;
}

static inline __attribute__((always_inline)) void *malloc_from(size_t size, const void *caller)
{
    if (GLIBC_ALLOCATOR() && tracking_enter()) {
        char *b = size < SIZE_MAX - BLK_HDR ? __libc_malloc(blk_request(size)) : NULL;
        void *p = NULL;
        if (likely(b != NULL)) {
            p = b + BLK_HDR;
            blk_track(p, size, caller_min_count(caller));
        } else {
            errno = ENOMEM;
        }
        tracking_leave();
        return p;
    }
    void *p = next_malloc(size);
    if (likely(p != NULL) && tracking_enter()) {
        track_alloc(p, size, caller_min_count(caller));
        tracking_leave();
    }
    return p;
}

EXPORT void *malloc(size_t size) { return malloc_from(size, __builtin_return_address(0)); }

EXPORT void free(void *p)
{
    if (!p)
        return;
    if (blk_has(p)) {
        if (tracking_enter()) {
            blk_untrack(p, NULL);
            tracking_leave();
        }
        __libc_free(blk_hdr_of(p));
        return;
    }
    if (tracking_enter()) {
        untrack_free(p);
        tracking_leave();
    }
    next_free(p);
}

EXPORT void *calloc(size_t n, size_t size)
{
    if (GLIBC_ALLOCATOR() && tracking_enter()) {
        size_t total;
        char *b = __builtin_mul_overflow(n, size, &total) || total >= SIZE_MAX - BLK_HDR
                      ? NULL : __libc_calloc(1, blk_request(total));
        void *p = NULL;
        if (likely(b != NULL)) {
            p = b + BLK_HDR;
            blk_track(p, total, caller_min_count(__builtin_return_address(0)));
        } else {
            errno = ENOMEM;
        }
        tracking_leave();
        return p;
    }
    void *p = next_calloc(n, size);
    if (likely(p != NULL) && tracking_enter()) {
        track_alloc(p, n * size, caller_min_count(__builtin_return_address(0)));
        tracking_leave();
    }
    return p;
}

/* realloc of a block with a header: it keeps one (realloc(p, 0) frees it, as glibc's does) */
static void *blk_realloc(void *old, size_t size, const void *caller)
{
    if (size == 0) {
        free(old);
        return NULL;
    }
    if (size >= SIZE_MAX - BLK_HDR) {
        errno = ENOMEM;
        return NULL;
    }
    if (!tracking_enter()) {
        /* not tracking now: the record (if any) stays as it is, the new block names none */
        char *b = __libc_realloc(blk_hdr_of(old), blk_request(size));
        if (!b)
            return NULL;
        blk_set(b + BLK_HDR, 0, 0);
        return b + BLK_HDR;
    }
    /* untracked first: once glibc has released old, another thread may get the same address */
    struct kml_object saved;
    int had = blk_untrack(old, &saved);
    char *b = __libc_realloc(blk_hdr_of(old), blk_request(size));
    void *p = NULL;
    if (b) {
        p = b + BLK_HDR;
        blk_track(p, size, caller_min_count(caller));
    } else if (had) {
        /* failed: old is still allocated, give it its record back */
        struct objinfo oi = objinfo_of(&saved);
        blk_name(old, record_new(&oi));
    }
    tracking_leave();
    return p;
}

EXPORT void *realloc(void *old, size_t size)
{
    const void *caller = __builtin_return_address(0);
    if (!old)
        return malloc_from(size, caller);
    if (blk_has(old))
        return blk_realloc(old, size, caller);
    if (!tracking_enter())
        return next_realloc(old, size);
    /* unindex first: once glibc has released old, another thread may get the same address */
    struct kml_object saved;
    int had = delete_object((uint64_t)(uintptr_t)old, 0, KIND_BIT(KML_KIND_MALLOC), &saved);
    void *p = next_realloc(old, size);
    if (p) {
        track_alloc(p, size, caller_min_count(caller));
    } else if (had && size) {
        /* failed: old is still allocated, put its record back */
        struct objinfo oi = objinfo_of(&saved);
        create_object(&oi);
    }
    tracking_leave();
    return p;
}

/* the usable size of a block: a header's 16 bytes are not the program's */
EXPORT size_t malloc_usable_size(void *p)
{
    if (!p)
        return 0;
    if (unlikely(in_boot_arena(p)))
        return ((size_t *)p)[-1]; /* boot_alloc's header: the size asked for */
    size_t (*next)(void *) = __atomic_load_n(&g_next_usable, __ATOMIC_ACQUIRE);
    if (!next)
        return 0;
    if (blk_has(p))
        return next(blk_hdr_of(p)) - BLK_HDR;
    return next(p);
}

EXPORT void *reallocarray(void *old, size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(old, total);
}

static inline void *track_aligned(void *p, size_t size, const void *caller)
{
    if (likely(p != NULL) && tracking_enter()) {
        track_alloc(p, size, caller_min_count(caller));
        tracking_leave();
    }
    return p;
}

EXPORT void *memalign(size_t align, size_t size)
{
    return track_aligned(next_aligned(ALIGNED_MEMALIGN, align, size), size, __builtin_return_address(0));
}

EXPORT void *aligned_alloc(size_t align, size_t size)
{
    return track_aligned(next_aligned(ALIGNED_ALLOC, align, size), size, __builtin_return_address(0));
}

EXPORT int posix_memalign(void **out, size_t align, size_t size)
{
    const void *caller = __builtin_return_address(0);
    if (!GLIBC_ALLOCATOR() && alloc_mode_slow() == ALLOC_FOREIGN && g_next.posix_memalign) {
        int r = g_next.posix_memalign(out, align, size);
        if (r == 0)
            track_aligned(*out, size, caller);
        return r;
    }
    if (align % sizeof(void *) != 0 || (align & (align - 1)) != 0 || align == 0)
        return EINVAL;
    int saved = errno;
    void *p = next_aligned(ALIGNED_MEMALIGN, align, size);
    if (!p) {
        errno = saved;
        return ENOMEM;
    }
    *out = track_aligned(p, size, caller);
    return 0;
}

EXPORT void *valloc(size_t size)
{
    return track_aligned(next_aligned(ALIGNED_VALLOC, 0, size), size, __builtin_return_address(0));
}

EXPORT void *pvalloc(size_t size)
{
    return track_aligned(next_aligned(ALIGNED_PVALLOC, 0, size), PAGE_ALIGN(size ? size : 1),
                         __builtin_return_address(0));
}

/* ---- mmap family ------------------------------------------------------------------------------ */
static inline int mapping_tracked(int flags)
{
    return (flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_PRIVATE;
}

/* A mapping made without PROT_WRITE is a reservation (a JIT's heap: V8 reserves PROT_NONE and makes pages
 * writable with mprotect, which the shim does not see): min_count 0, so its readable pages are scanned and
 * it is never reported, as kmemleak_not_leak. Writable at creation: a leak when unreferenced (min_count 1). */
static inline int32_t mapping_min_count(int prot) { return (prot & PROT_WRITE) ? 1 : 0; }

static __attribute__((noinline)) void *mmap_tracked(void *addr, size_t len, int prot, int flags, int fd,
                                                    off_t off)
{
    void *p;
    if (flags & MAP_FIXED) {
        /* replaces whatever was there: bookkeeping and syscall under one lock */
        spin_lock(&g_mm_lock);
        p = raw_mmap(addr, len, prot, flags, fd, off);
        if (p != MAP_FAILED) {
            mm_unmap_range((uintptr_t)p, (uintptr_t)p + PAGE_ALIGN(len));
            if (mapping_tracked(flags)) {
                struct objinfo ctx;
                current_context(&ctx);
                track_mapping((uintptr_t)p, PAGE_ALIGN(len), &ctx, mapping_min_count(prot));
            }
        }
        spin_unlock(&g_mm_lock);
        return p;
    }
    p = raw_mmap(addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED && mapping_tracked(flags)) {
        struct objinfo ctx;
        current_context(&ctx);
        spin_lock(&g_mm_lock);
        track_mapping((uintptr_t)p, PAGE_ALIGN(len), &ctx, mapping_min_count(prot));
        spin_unlock(&g_mm_lock);
    }
    return p;
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (unlikely(g_foreign_len) && from_code(__builtin_return_address(0), g_foreign_lo, g_foreign_len))
        return raw_mmap(addr, len, prot, flags, fd, off); /* a foreign allocator's heap */
    if (!tracking_enter())
        return raw_mmap(addr, len, prot, flags, fd, off);
    void *p = mmap_tracked(addr, len, prot, flags, fd, off);
    tracking_leave();
    return p;
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mmap")));

EXPORT int munmap(void *addr, size_t len)
{
    if (!tracking_enter())
        return raw_munmap(addr, len);
    spin_lock(&g_mm_lock);
    int r = raw_munmap(addr, len);
    if (r == 0 && g_mm_count)
        mm_unmap_range((uintptr_t)addr, (uintptr_t)addr + PAGE_ALIGN(len));
    spin_unlock(&g_mm_lock);
    tracking_leave();
    return r;
}

EXPORT void *mremap(void *old, size_t old_size, size_t new_size, int flags, ...)
{
    void *new_addr = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        new_addr = va_arg(ap, void *);
        va_end(ap);
    }
    if (!tracking_enter())
        return (void *)syscall(SYS_mremap, old, old_size, new_size, flags, new_addr);
    spin_lock(&g_mm_lock);
    void *p = (void *)syscall(SYS_mremap, old, old_size, new_size, flags, new_addr);
    if (p != MAP_FAILED && old_size) {
        uint64_t o = (uintptr_t)old, n = (uintptr_t)p, olen = PAGE_ALIGN(old_size), nlen = PAGE_ALIGN(new_size);
        int keep_old = (flags & MREMAP_DONTUNMAP) != 0;
        int i = mm_list_find_exact(o);
        uint32_t idx = UINT32_MAX;
        if (i >= 0 && !keep_old && g_obj[g_mm_slots[i]].size == olen) {
            /* the whole mapping moves or resizes: same object (trace, seq), new range */
            idx = g_mm_slots[i];
            g_mm_slots[i] = g_mm_slots[--g_mm_count];
            struct kml_object saved;
            if (!delete_object(o, 0, KIND_BIT(KML_KIND_MMAP), &saved))
                idx = UINT32_MAX;
            if (idx != UINT32_MAX) {
                if (flags & MREMAP_FIXED)
                    mm_unmap_range(n, n + nlen);
                struct objinfo oi = {n, nlen, saved.seq, saved.time_ns, saved.trace_id, saved.comm_id,
                                     saved.flags, saved.transient_gen, saved.tid, saved.min_count};
                uint32_t k = create_object(&oi);
                if (k != UINT32_MAX)
                    mm_list_add(k);
            }
        } else {
            /* part of a mapping (or a copy, with MREMAP_DONTUNMAP): a new object with its sources' min_count */
            int32_t min_count = 1;
            int tracked = mm_overlap_min_count(o, o + olen, &min_count);
            if (!keep_old)
                mm_unmap_range(o, o + olen);
            if (flags & MREMAP_FIXED)
                mm_unmap_range(n, n + nlen);
            if (tracked) {
                struct objinfo ctx;
                current_context(&ctx);
                track_mapping(n, nlen, &ctx, min_count);
            }
        }
    }
    spin_unlock(&g_mm_lock);
    tracking_leave();
    return p;
}

/* ---- threads ------------------------------------------------------------------------------------- */
static inline uintptr_t thread_pointer(void)
{
    uintptr_t tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    return tp;
}

/* the static TLS block and the TCB of the calling thread (x86_64: TLS below tp, TCB at tp) */
static void tls_range(uint64_t *lo, uint64_t *hi)
{
    uintptr_t tp = thread_pointer();
    size_t below = g_tls_static_size > g_tcb_size ? g_tls_static_size - g_tcb_size : g_tls_static_size;
    *lo = tp - below;
    *hi = tp + g_tcb_size;
}

/* A thread's record lives until the thread is really gone, not until its pthread key destructor:
 * later destructors, glibc's own thread cleanup (__libc_thread_freeres: dlerror state, ...) and the
 * value it returns (struct pthread's result, in its TCB) still use the thread's memory. A joinable
 * thread's record is released when it is joined (the daemon scans only the TCB of a thread whose
 * task has exited); a detached one's when its task no longer exists (tgkill(pid, tid, 0) fails
 * with ESRCH), checked in batches when threads register (and when the table is full); any record
 * is released when a new thread gets its descriptor (then glibc has reclaimed it). Under g_thr_lock. */
static uint32_t g_thr_detached;      /* records with KML_THREAD_DETACHED */
static uint32_t g_thr_sweep_at = 32; /* sweep when g_thr_detached reaches this */

static void thread_release_slot(uint32_t idx)
{
    struct kml_thread *th = &g_thr[idx];
    if ((th->state & KML_STATE_KIND_MASK) != KML_STATE_LIVE)
        return;
    if (th->flags & KML_THREAD_DETACHED)
        g_thr_detached--;
    rec_write_begin(&th->state);
    rec_write_end(&th->state, KML_STATE_FREE);
    g_thr_ptid[idx] = 0;
    g_thr_free[g_thr_free_count++] = idx;
}

static void thread_sweep_detached(void)
{
    pid_t pid = (pid_t)syscall(SYS_getpid);
    uint32_t used = g_hdr->threads_used;
    for (uint32_t i = 0; i < used; i++) {
        struct kml_thread *th = &g_thr[i];
        if ((th->state & KML_STATE_KIND_MASK) == KML_STATE_LIVE && (th->flags & KML_THREAD_DETACHED) &&
            syscall(SYS_tgkill, pid, th->tid, 0) != 0 && errno == ESRCH)
            thread_release_slot(i);
    }
    g_thr_sweep_at = 2 * g_thr_detached + 32; /* amortised O(1) per thread however many live */
}

/* releases the records of pthread_t th (joined, or its descriptor reused); under g_thr_lock */
static void thread_release_ptid(pthread_t th)
{
    uint32_t used = g_hdr->threads_used;
    for (uint32_t i = 0; i < used; i++)
        if (g_thr_ptid[i] == th && (int)i + 1 != t.thread_slot)
            thread_release_slot(i);
}

/* the calling thread's detach state as glibc keeps it (pthread_detach included) */
static int thread_detached_in_glibc(void)
{
    pthread_attr_t attr;
    int state = PTHREAD_CREATE_JOINABLE;
    if (pthread_getattr_np(pthread_self(), &attr) != 0)
        return 0;
    pthread_attr_getdetachstate(&attr, &state);
    pthread_attr_destroy(&attr);
    return state == PTHREAD_CREATE_DETACHED;
}

/* marks the live records of pthread_t th detached (once each); under g_thr_lock */
static void thread_mark_detached(pthread_t th)
{
    uint32_t used = g_hdr->threads_used;
    for (uint32_t i = 0; i < used; i++) {
        struct kml_thread *r = &g_thr[i];
        if (g_thr_ptid[i] != th || (r->state & KML_STATE_KIND_MASK) != KML_STATE_LIVE ||
            (r->flags & KML_THREAD_DETACHED))
            continue;
        rec_write_begin(&r->state);
        r->flags |= KML_THREAD_DETACHED;
        rec_write_end(&r->state, KML_STATE_LIVE);
        g_thr_detached++;
    }
}

static void thread_register(int is_main, int detached)
{
    uint64_t stack_lo = 0, stack_hi = 0;
    if (is_main) {
        /* the top: ld.so's initial stack pointer (below argv); the bottom: as far as RLIMIT_STACK
         * lets the stack grow (the kernel puts mmap_base further down) */
        extern void *__libc_stack_end;
        struct rlimit rl;
        uintptr_t top = PAGE_ALIGN((uintptr_t)__libc_stack_end);
        if (getrlimit(RLIMIT_STACK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < top) {
            t.stack_lo = top - (uintptr_t)rl.rlim_cur;
            t.stack_hi = top;
        }
    } else {
        pthread_attr_t attr;
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            void *addr;
            size_t size;
            if (pthread_attr_getstack(&attr, &addr, &size) == 0) {
                stack_lo = (uintptr_t)addr;
                stack_hi = (uintptr_t)addr + size;
                t.stack_lo = (uintptr_t)stack_lo;
                t.stack_hi = (uintptr_t)stack_hi;
            }
            pthread_attr_destroy(&attr);
        }
    }
    char name[KML_COMM_LEN + 1];
    memset(name, 0, sizeof(name));
    syscall(SYS_prctl, PR_GET_NAME, name, 0, 0, 0);
    pthread_t self = pthread_self();
    spin_lock(&g_thr_lock);
    thread_release_ptid(self); /* a finished thread whose descriptor glibc gave us */
    if (g_thr_detached >= g_thr_sweep_at || (!g_thr_free_count && g_hdr->threads_used >= g_thr_cap))
        thread_sweep_detached();
    uint32_t idx;
    if (g_thr_free_count) {
        idx = g_thr_free[--g_thr_free_count];
    } else if (g_hdr->threads_used < g_thr_cap) {
        idx = g_hdr->threads_used;
        __atomic_store_n(&g_hdr->threads_used, idx + 1, __ATOMIC_RELEASE);
    } else {
        spin_unlock(&g_thr_lock);
        kml_disable("thread table full");
        return;
    }
    struct kml_thread *th = &g_thr[idx];
    uint64_t tls_lo, tls_hi;
    tls_range(&tls_lo, &tls_hi);
    rec_write_begin(&th->state);
    th->tid = cur_tid();
    th->stack_lo = stack_lo;
    th->stack_hi = stack_hi;
    th->tls_lo = tls_lo;
    th->tls_hi = tls_hi;
    th->flags = detached ? KML_THREAD_DETACHED : 0;
    th->tcb_offset = (uint32_t)(thread_pointer() - tls_lo);
    memcpy(th->comm, name, KML_COMM_LEN);
    rec_write_end(&th->state, KML_STATE_LIVE);
    if (detached)
        g_thr_detached++;
    g_thr_ptid[idx] = self;
    spin_unlock(&g_thr_lock);
    t.thread_slot = (int)idx + 1;
    if (g_memo_pool && idx < g_memo_slots) {
        t.memo = (struct cfi_memo *)(g_memo_pool + (size_t)idx * CFI_MEMO_BYTES);
        cfi_memo_reset(t.memo);
    }
    /* pthread_detach may have run before this record existed (the creator detaches at once, we ran
     * late): its wrapper found nothing to mark. The record is visible now, so a detach from here on
     * marks it; one before shows in glibc's own state. Unmarked, the record of a detached thread
     * whose descriptor is never reused would stay live for good (and fill the table). */
    if (!is_main && !detached && thread_detached_in_glibc()) {
        spin_lock(&g_thr_lock);
        thread_mark_detached(self);
        spin_unlock(&g_thr_lock);
    }
    if (!is_main)
        pthread_setspecific(g_thread_key, (void *)1);
}

/* after a successful join (release) or detach (mark) of th */
static void thread_joined_or_detached(pthread_t th, int joined)
{
    if (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) != ST_ON || !g_thr || t.in_shim)
        return;
    t.in_shim = 1;
    spin_lock(&g_thr_lock);
    if (joined)
        thread_release_ptid(th);
    else
        thread_mark_detached(th);
    spin_unlock(&g_thr_lock);
    t.in_shim = 0;
}

static void thread_write_comm(uint32_t idx, const char *name)
{
    struct kml_thread *th = &g_thr[idx];
    spin_lock(&g_thr_lock);
    if ((th->state & KML_STATE_KIND_MASK) == KML_STATE_LIVE) {
        rec_write_begin(&th->state);
        memcpy(th->comm, name, KML_COMM_LEN);
        rec_write_end(&th->state, KML_STATE_LIVE);
    }
    spin_unlock(&g_thr_lock);
}

static void thread_update_comm(const char *name)
{
    if (t.thread_slot)
        thread_write_comm((uint32_t)t.thread_slot - 1, name);
}

/* pthread_setname_np on another thread: its record now, its objects when it next allocates */
static void thread_renamed(pthread_t th, const char *name)
{
    char c[KML_COMM_LEN];
    memset(c, 0, sizeof(c));
    for (unsigned i = 0; i < KML_COMM_LEN - 1 && name[i]; i++)
        c[i] = name[i];
    uint32_t used = __atomic_load_n(&g_hdr->threads_used, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < used; i++)
        if (g_thr_ptid[i] == th) {
            thread_write_comm(i, c);
            return;
        }
}

/* pthread key destructor: runs on return, pthread_exit and cancellation. The thread record stays
 * (see thread_register); only the object slot cache goes back. */
static void thread_exit_dtor(void *v)
{
    (void)v;
    int was = t.in_shim;
    t.in_shim = 1;
    if (g_obj)
        slot_cache_flush();
    t.exiting = 1;
    t.memo = NULL; /* the slot is this thread's only until its record is released, after this */
    t.in_shim = was;
}

struct start_arg {
    void *(*fn)(void *);
    void *arg;
    int detached;
};

/* pthread keeps only our wrapper (in the new thread's TCB) until the thread runs: a grey object,
 * so that the program's argument stays reachable through it */
static struct start_arg *start_arg_new(void *(*fn)(void *), void *arg, const pthread_attr_t *attr)
{
    struct start_arg *a = (struct start_arg *)next_malloc(sizeof(*a));
    if (!a)
        return NULL;
    int ds = PTHREAD_CREATE_JOINABLE;
    if (attr)
        pthread_attr_getdetachstate(attr, &ds);
    a->fn = fn;
    a->arg = arg;
    a->detached = ds == PTHREAD_CREATE_DETACHED;
    if (tracking_enter()) {
        track_alloc(a, sizeof(*a), 0);
        tracking_leave();
    }
    return a;
}

static void start_arg_free(struct start_arg *a)
{
    if (tracking_enter()) {
        untrack_free(a);
        tracking_leave();
    }
    next_free(a);
}

static void *thread_start(void *p)
{
    struct start_arg a = *(struct start_arg *)p;
    t.tid = 0;
    if (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) == ST_ON && !t.in_shim) {
        t.in_shim = 1;
        thread_register(0, a.detached);
        t.in_shim = 0;
    }
    start_arg_free((struct start_arg *)p); /* after registering: a now lives on our stack */
    return a.fn(a.arg);
}

static void resolve_pthread(void)
{
    if (!real_pthread_create)
        real_pthread_create = (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))
            dlsym(RTLD_NEXT, "pthread_create");
    if (!real_pthread_setname_np)
        real_pthread_setname_np = (int (*)(pthread_t, const char *))dlsym(RTLD_NEXT, "pthread_setname_np");
}

EXPORT int pthread_create(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
    if (unlikely(!real_pthread_create)) {
        int was = t.in_shim;
        t.in_shim = 1;
        resolve_pthread();
        t.in_shim = was;
        if (!real_pthread_create)
            return EAGAIN;
    }
    if (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) != ST_ON)
        return real_pthread_create(th, attr, fn, arg);
    struct start_arg *a = start_arg_new(fn, arg, attr);
    if (!a)
        return real_pthread_create(th, attr, fn, arg);
    int r = real_pthread_create(th, attr, thread_start, a);
    if (r)
        start_arg_free(a);
    return r;
}

/* join and detach: the next definition, resolved on first use (NULL if there is none) */
static void *next_symbol(void **slot, const char *name)
{
    void *f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (likely(f != NULL))
        return f;
    int was = t.in_shim;
    t.in_shim = 1;
    f = dlsym(RTLD_NEXT, name);
    t.in_shim = was;
    __atomic_store_n(slot, f, __ATOMIC_RELEASE);
    return f;
}

static void *g_next_join, *g_next_tryjoin, *g_next_timedjoin, *g_next_clockjoin, *g_next_detach,
    *g_next_thrd_join, *g_next_thrd_detach;

/* r: the result of a join (joined = 1) or detach of th; 0 is success for both (thrd_success) */
static int joined_or_detached(int r, pthread_t th, int joined)
{
    if (r == 0)
        thread_joined_or_detached(th, joined);
    return r;
}

/* ---- dlclose: the unwinder's rule cache (see cfi_unwind.c) ------------------------------------ */
static void region_add(uint32_t kind, uint64_t start, uint64_t size, uint64_t cpu0, uint64_t stride, uint32_t nr);

/* the unwinder's caches are the shim's memory, never roots */
static void cfi_register_caches(void)
{
    uintptr_t lo, size;
    if (cfi_take_new_cache(&lo, &size))
        region_add(KML_REGION_SHIM_PRIVATE, lo, size, 0, 0, 0);
}

static void *g_next_dlclose;

EXPORT int dlclose(void *handle)
{
    int (*f)(void *) = (int (*)(void *))next_symbol(&g_next_dlclose, "dlclose");
    if (!f)
        return -1;
    int r = f(handle);
    if (r == 0 && !t.in_shim && __atomic_load_n(&g_state, __ATOMIC_ACQUIRE) == ST_ON) {
        t.in_shim = 1;
        cfi_code_unloaded();
        cfi_register_caches();
        t.in_shim = 0;
    }
    return r;
}

EXPORT int pthread_join(pthread_t th, void **ret)
{
    int (*f)(pthread_t, void **) = (int (*)(pthread_t, void **))next_symbol(&g_next_join, "pthread_join");
    return f ? joined_or_detached(f(th, ret), th, 1) : ENOSYS;
}

EXPORT int pthread_tryjoin_np(pthread_t th, void **ret)
{
    int (*f)(pthread_t, void **) = (int (*)(pthread_t, void **))next_symbol(&g_next_tryjoin, "pthread_tryjoin_np");
    return f ? joined_or_detached(f(th, ret), th, 1) : ENOSYS;
}

EXPORT int pthread_timedjoin_np(pthread_t th, void **ret, const struct timespec *abstime)
{
    int (*f)(pthread_t, void **, const struct timespec *) = (int (*)(pthread_t, void **, const struct timespec *))
        next_symbol(&g_next_timedjoin, "pthread_timedjoin_np");
    return f ? joined_or_detached(f(th, ret, abstime), th, 1) : ENOSYS;
}

EXPORT int pthread_clockjoin_np(pthread_t th, void **ret, clockid_t clock, const struct timespec *abstime)
{
    int (*f)(pthread_t, void **, clockid_t, const struct timespec *) =
        (int (*)(pthread_t, void **, clockid_t, const struct timespec *))next_symbol(&g_next_clockjoin,
                                                                                   "pthread_clockjoin_np");
    return f ? joined_or_detached(f(th, ret, clock, abstime), th, 1) : ENOSYS;
}

EXPORT int pthread_detach(pthread_t th)
{
    int (*f)(pthread_t) = (int (*)(pthread_t))next_symbol(&g_next_detach, "pthread_detach");
    return f ? joined_or_detached(f(th), th, 0) : ENOSYS;
}

/* C11 threads: glibc's thrd_join/thrd_detach do not go through pthread_join/pthread_detach's PLT */
EXPORT int thrd_join(pthread_t th, int *res)
{
    int (*f)(pthread_t, int *) = (int (*)(pthread_t, int *))next_symbol(&g_next_thrd_join, "thrd_join");
    return f ? joined_or_detached(f(th, res), th, 1) : 2 /* thrd_error */;
}

EXPORT int thrd_detach(pthread_t th)
{
    int (*f)(pthread_t) = (int (*)(pthread_t))next_symbol(&g_next_thrd_detach, "thrd_detach");
    return f ? joined_or_detached(f(th), th, 0) : 2 /* thrd_error */;
}

static void comm_changed(void)
{
    __atomic_fetch_add(&g_comm_gen, 1, __ATOMIC_RELEASE);
    if (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) == ST_ON && !t.in_shim) {
        t.in_shim = 1;
        refresh_comm();
        t.in_shim = 0;
    }
}

EXPORT int pthread_setname_np(pthread_t th, const char *name)
{
    if (unlikely(!real_pthread_setname_np)) {
        int was = t.in_shim;
        t.in_shim = 1;
        resolve_pthread();
        t.in_shim = was;
        if (!real_pthread_setname_np)
            return ENOSYS;
    }
    int r = real_pthread_setname_np(th, name);
    if (r == 0) {
        if (!pthread_equal(th, pthread_self()) &&
            __atomic_load_n(&g_state, __ATOMIC_ACQUIRE) == ST_ON && !t.in_shim) {
            t.in_shim = 1;
            thread_renamed(th, name);
            t.in_shim = 0;
        }
        comm_changed();
    }
    return r;
}

EXPORT int prctl(int option, ...)
{
    va_list ap;
    va_start(ap, option);
    unsigned long a2 = va_arg(ap, unsigned long), a3 = va_arg(ap, unsigned long),
                  a4 = va_arg(ap, unsigned long), a5 = va_arg(ap, unsigned long);
    va_end(ap);
    int r = (int)syscall(SYS_prctl, option, a2, a3, a4, a5);
    if (r == 0 && option == PR_SET_NAME)
        comm_changed();
    return r;
}

/* ---- regions -------------------------------------------------------------------------------------- */
static void region_add(uint32_t kind, uint64_t start, uint64_t size, uint64_t cpu0, uint64_t stride,
                       uint32_t nr)
{
    if (!g_hdr || (__atomic_load_n(&g_hdr->flags, __ATOMIC_RELAXED) & KML_TABLE_DISABLED))
        return;
    spin_lock(&g_reg_lock);
    uint32_t idx = g_hdr->regions_used;
    if (idx >= g_reg_cap) {
        spin_unlock(&g_reg_lock);
        kml_disable("region table full");
        return;
    }
    struct kml_region *r = &g_reg[idx];
    rec_write_begin(&r->state);
    r->kind = kind;
    r->start = start;
    r->size = size;
    r->cpu0_base = cpu0;
    r->stride = stride;
    r->nr_cpus = nr;
    rec_write_end(&r->state, KML_STATE_LIVE);
    __atomic_store_n(&g_hdr->regions_used, idx + 1, __ATOMIC_RELEASE);
    spin_unlock(&g_reg_lock);
}

/* ---- per-CPU allocator ------------------------------------------------------------------------------
 * A chunk is a PROT_NONE handle window of `size` bytes and nr_cpus data areas of the same size
 * (stride = size). Handle h in the window -> CPU c's copy at data + (h - win) + c * size.
 * Allocation is first-fit over a bitmap of 16-byte units. */
#define PCPU_UNIT 16u
#define PCPU_CHUNK_MIN (1u << 20)
#define PCPU_MAX_CHUNKS 256u
#define PCPU_MAX_FOREIGN 256u

struct pcpu_chunk {
    uintptr_t win, data;
    size_t size;          /* window size = stride */
    uint32_t units;
    uint64_t *bitmap;     /* 1 = used */
    uint32_t *alloc_units; /* at the start unit of each allocation: its length in units */
};
static struct pcpu_chunk g_chunks[PCPU_MAX_CHUNKS];
static uint32_t g_nr_chunks;
struct pcpu_foreign {
    uintptr_t start, size, cpu0, stride;
    uint32_t nr;
};
static struct pcpu_foreign g_foreign[PCPU_MAX_FOREIGN];
static uint32_t g_nr_foreign;
static unsigned int g_nr_cpu_ids;

EXPORT unsigned int kmemleak_nr_cpu_ids(void)
{
    unsigned int n = __atomic_load_n(&g_nr_cpu_ids, __ATOMIC_RELAXED);
    if (n)
        return n;
    char buf[256];
    unsigned int last = 0, cur = 0;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC);
    ssize_t r = fd >= 0 ? (ssize_t)syscall(SYS_read, fd, buf, sizeof(buf) - 1) : -1;
    if (fd >= 0)
        syscall(SYS_close, fd);
    if (r <= 0) {
        long c = sysconf(_SC_NPROCESSORS_CONF);
        n = (unsigned int)(c > 0 ? c : 1);
    } else {
        for (ssize_t i = 0; i < r; i++) {
            if (buf[i] >= '0' && buf[i] <= '9') {
                cur = cur * 10 + (unsigned int)(buf[i] - '0');
                last = cur;
            } else {
                cur = 0;
            }
        }
        n = last + 1;
    }
    __atomic_store_n(&g_nr_cpu_ids, n, __ATOMIC_RELAXED);
    return n;
}

static struct pcpu_chunk *pcpu_new_chunk(size_t min_size)
{
    if (g_nr_chunks >= PCPU_MAX_CHUNKS)
        return NULL;
    size_t size = PCPU_CHUNK_MIN;
    while (size < min_size)
        size <<= 1;
    unsigned int nr = kmemleak_nr_cpu_ids();
    uint32_t units = (uint32_t)(size / PCPU_UNIT);
    size_t meta = PAGE_ALIGN(units / 8 + (size_t)units * 4);
    void *win = raw_mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *data = raw_mmap(NULL, size * nr, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *m = raw_mmap(NULL, meta, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (win == MAP_FAILED || data == MAP_FAILED || m == MAP_FAILED) {
        if (win != MAP_FAILED)
            raw_munmap(win, size);
        if (data != MAP_FAILED)
            raw_munmap(data, size * nr);
        if (m != MAP_FAILED)
            raw_munmap(m, meta);
        return NULL;
    }
    struct pcpu_chunk *c = &g_chunks[g_nr_chunks];
    c->win = (uintptr_t)win;
    c->data = (uintptr_t)data;
    c->size = size;
    c->units = units;
    c->bitmap = (uint64_t *)m;
    c->alloc_units = (uint32_t *)((char *)m + units / 8);
    __atomic_store_n(&g_nr_chunks, g_nr_chunks + 1, __ATOMIC_RELEASE);
    region_add(KML_REGION_PERCPU, c->win, size, c->data, size, nr);
    region_add(KML_REGION_SHIM_PRIVATE, (uintptr_t)m, meta, 0, 0, 0);
    return c;
}

static inline int bit_test(const uint64_t *b, uint32_t i) { return (b[i / 64] >> (i % 64)) & 1; }

static long pcpu_chunk_alloc(struct pcpu_chunk *c, uint32_t n, uint32_t align_units)
{
    uint32_t i = 0;
    while (i + n <= c->units) {
        if (bit_test(c->bitmap, i)) {
            i = (i + align_units) / align_units * align_units;
            continue;
        }
        uint32_t k = 0;
        while (k < n && !bit_test(c->bitmap, i + k))
            k++;
        if (k == n) {
            for (k = 0; k < n; k++)
                c->bitmap[(i + k) / 64] |= 1ull << ((i + k) % 64);
            c->alloc_units[i] = n;
            return (long)i;
        }
        i = (i + k + 1 + align_units - 1) / align_units * align_units;
    }
    return -1;
}

static struct pcpu_chunk *pcpu_chunk_of(uintptr_t h)
{
    uint32_t n = __atomic_load_n(&g_nr_chunks, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < n; i++)
        if (h >= g_chunks[i].win && h < g_chunks[i].win + g_chunks[i].size)
            return &g_chunks[i];
    return NULL;
}

static void track_percpu(uintptr_t h, size_t size, uint32_t kind)
{
    struct objinfo oi;
    current_context(&oi);
    oi.pointer = h;
    oi.size = size;
    oi.flags = kind;
    oi.min_count = 1;
    create_object(&oi);
}

EXPORT void __percpu *__alloc_percpu(size_t size, size_t align)
{
    if (size == 0)
        size = 1;
    if (align == 0)
        align = 1;
    if (align & (align - 1))
        return NULL;
    uint32_t n = (uint32_t)((size + PCPU_UNIT - 1) / PCPU_UNIT);
    uint32_t au = align <= PCPU_UNIT ? 1 : (uint32_t)(align / PCPU_UNIT);
    if (size > (1ul << 30))
        return NULL;
    spin_lock(&g_pcpu_lock);
    long off = -1;
    struct pcpu_chunk *c = NULL;
    for (uint32_t i = 0; i < g_nr_chunks && off < 0; i++) {
        c = &g_chunks[i];
        if ((size_t)n * PCPU_UNIT <= c->size)
            off = pcpu_chunk_alloc(c, n, au);
    }
    if (off < 0) {
        c = pcpu_new_chunk((size_t)n * PCPU_UNIT > align ? (size_t)n * PCPU_UNIT : align);
        if (c)
            off = pcpu_chunk_alloc(c, n, au);
    }
    spin_unlock(&g_pcpu_lock);
    if (off < 0)
        return NULL;
    unsigned int nr = kmemleak_nr_cpu_ids();
    for (unsigned int cpu = 0; cpu < nr; cpu++)
        memset((char *)(c->data + (size_t)off * PCPU_UNIT + (size_t)cpu * c->size), 0, size);
    uintptr_t h = c->win + (size_t)off * PCPU_UNIT;
    if (tracking_enter()) {
        track_percpu(h, size, KML_KIND_PERCPU);
        tracking_leave();
    }
    return (void *)h;
}

EXPORT void free_percpu(void __percpu *ptr)
{
    if (!ptr)
        return;
    uintptr_t h = (uintptr_t)ptr;
    struct pcpu_chunk *c = pcpu_chunk_of(h);
    if (!c)
        return;
    if (tracking_enter()) {
        delete_object(h, 1, KIND_BIT(KML_KIND_PERCPU), NULL);
        tracking_leave();
    }
    uint32_t i = (uint32_t)((h - c->win) / PCPU_UNIT);
    spin_lock(&g_pcpu_lock);
    uint32_t n = c->alloc_units[i];
    c->alloc_units[i] = 0;
    for (uint32_t k = 0; k < n; k++)
        c->bitmap[(i + k) / 64] &= ~(1ull << ((i + k) % 64));
    spin_unlock(&g_pcpu_lock);
}

EXPORT void *kmemleak_per_cpu_ptr(const void __percpu *ptr, unsigned int cpu)
{
    uintptr_t h = (uintptr_t)ptr;
    if (!h)
        return NULL;
    struct pcpu_chunk *c = pcpu_chunk_of(h);
    if (c)
        return (void *)(c->data + (h - c->win) + (size_t)cpu * c->size);
    uint32_t n = __atomic_load_n(&g_nr_foreign, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < n; i++) {
        struct pcpu_foreign *f = &g_foreign[i];
        if (h >= f->start && h < f->start + f->size)
            return (void *)(f->cpu0 + (h - f->start) + (size_t)cpu * f->stride);
    }
    return NULL;
}

EXPORT void kmemleak_percpu_region(const void *handle_base, size_t len, const void *cpu0_base,
                                   size_t stride, unsigned int nr_cpus)
{
    spin_lock(&g_pcpu_lock);
    uint32_t n = g_nr_foreign;
    if (n < PCPU_MAX_FOREIGN) {
        g_foreign[n] = (struct pcpu_foreign){(uintptr_t)handle_base, len, (uintptr_t)cpu0_base, stride, nr_cpus};
        __atomic_store_n(&g_nr_foreign, n + 1, __ATOMIC_RELEASE);
    }
    spin_unlock(&g_pcpu_lock);
    if (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) == ST_ON)
        region_add(KML_REGION_PERCPU, (uintptr_t)handle_base, len, (uintptr_t)cpu0_base, stride, nr_cpus);
}

/* ---- the annotation API (kmemleak_alloc & co) ------------------------------------------------- */
EXPORT void kmemleak_alloc(const void *ptr, size_t size, int min_count)
{
    if (!ptr || !tracking_enter())
        return;
    struct objinfo oi;
    current_context(&oi);
    oi.pointer = (uintptr_t)ptr;
    oi.size = size;
    oi.flags = KML_KIND_CUSTOM;
    oi.min_count = min_count;
    create_object(&oi);
    tracking_leave();
}

EXPORT void kmemleak_alloc_percpu(const void __percpu *ptr, size_t size)
{
    if (!ptr || !tracking_enter())
        return;
    track_percpu((uintptr_t)ptr, size, KML_KIND_CUSTOM_PERCPU);
    tracking_leave();
}

EXPORT void kmemleak_free(const void *ptr)
{
    if (!ptr || !tracking_enter())
        return;
    uint64_t p = (uintptr_t)ptr;
    if (!delete_object(p, 0, KIND_BIT(KML_KIND_CUSTOM), NULL) &&
        !delete_object(p, 0, KIND_BIT(KML_KIND_MALLOC) | FIND_HEADER, NULL)) {
        spin_lock(&g_mm_lock);
        int i = mm_list_find_exact(p);
        if (i >= 0) {
            g_mm_slots[i] = g_mm_slots[--g_mm_count];
            delete_object(p, 0, KIND_BIT(KML_KIND_MMAP), NULL);
        }
        spin_unlock(&g_mm_lock);
    }
    tracking_leave();
}

EXPORT void kmemleak_free_percpu(const void __percpu *ptr)
{
    if (!ptr || !tracking_enter())
        return;
    delete_object((uintptr_t)ptr, 1, PCPU_KINDS, NULL);
    tracking_leave();
}

/* free_part: [ptr, ptr+size) of an object is gone; the remainders become new objects with the same
 * min_count and the freeing context (kernel: delete_object_part) */
EXPORT void kmemleak_free_part(const void *ptr, size_t size)
{
    if (!ptr || !tracking_enter())
        return;
    uint64_t p = (uintptr_t)ptr, start, osize;
    uint32_t kind;
    if (find_containing(p, &start, &osize, &kind)) {
        if (kind == KML_KIND_MMAP) {
            spin_lock(&g_mm_lock);
            mm_unmap_range(p, p + size);
            spin_unlock(&g_mm_lock);
        } else {
            struct kml_object saved;
            int had = delete_object(start, 0, KIND_BIT(kind) | FIND_HEADER, &saved);
            if (had) {
                struct objinfo oi;
                current_context(&oi);
                oi.flags = kind;
                oi.min_count = saved.min_count;
                uint64_t end = start + osize;
                if (p > start) {
                    oi.pointer = start;
                    oi.size = p - start;
                    if (had == 2) {
                        /* a header block's part at its start: its header names it (free() releases it) */
                        uint32_t idx = record_new(&oi), sh = oix_hash(start, 0), slg;
                        uint32_t *l = oix_lock(sh, start, &slg);
                        blk_name((void *)(uintptr_t)start, idx);
                        spin_unlock(l);
                    } else {
                        create_object(&oi);
                    }
                    oi.seq = next_seq();
                }
                if (p + size < end) {
                    oi.pointer = p + size;
                    oi.size = end - (p + size);
                    create_object(&oi);
                }
            }
        }
    }
    tracking_leave();
}

static void set_min_count(struct kml_object *o, uintptr_t v) { o->min_count = (int32_t)(intptr_t)v; }
static void set_ignore(struct kml_object *o, uintptr_t v)
{
    (void)v;
    o->min_count = -1;
    o->flags |= KML_OBJ_NO_SCAN;
}
static void set_flag(struct kml_object *o, uintptr_t v) { o->flags |= (uint32_t)v; }
static void bump_transient(struct kml_object *o, uintptr_t v)
{
    (void)v;
    o->transient_gen++;
}
static void set_trace(struct kml_object *o, uintptr_t v) { o->trace_id = (uint32_t)v; }

/* an annotation on a plain object: the exact pointer, malloc/custom/mmap alike */
static void annotate(const void *ptr, int pcpu, modify_fn fn, uintptr_t arg)
{
    if (!ptr || !tracking_enter())
        return;
    modify_object((uintptr_t)ptr, pcpu, pcpu ? PCPU_KINDS : PLAIN_KINDS | FIND_HEADER, fn, arg);
    tracking_leave();
}

EXPORT void kmemleak_not_leak(const void *ptr) { annotate(ptr, 0, set_min_count, 0); }
EXPORT void kmemleak_ignore(const void *ptr) { annotate(ptr, 0, set_ignore, 0); }
EXPORT void kmemleak_ignore_percpu(const void __percpu *ptr) { annotate(ptr, 1, set_ignore, 0); }
EXPORT void kmemleak_no_scan(const void *ptr) { annotate(ptr, 0, set_flag, KML_OBJ_NO_SCAN); }
EXPORT void kmemleak_transient_leak(const void *ptr) { annotate(ptr, 0, bump_transient, 0); }

EXPORT void kmemleak_update_trace(const void *ptr)
{
    if (!ptr || !tracking_enter())
        return;
    uint32_t id = capture_trace();
    modify_object((uintptr_t)ptr, 0, PLAIN_KINDS | FIND_HEADER, set_trace, id);
    tracking_leave();
}

struct area_arg {
    uint64_t start, size;
    int ok;
};

EXPORT void kmemleak_scan_area(const void *ptr, size_t size)
{
    if (!ptr || !tracking_enter())
        return;
    uint64_t p = (uintptr_t)ptr, start, osize;
    uint32_t kind;
    if (!find_containing(p, &start, &osize, &kind))
        goto out;
    if (size != SIZE_MAX && p + size > start + osize) {
        static const char m[] = "kmemleak: Scan area larger than object\n";
        ssize_t r = write(2, m, sizeof(m) - 1);
        (void)r;
        goto out;
    }
    /* find the object's slot and seq under its stripe lock */
    uint32_t h = oix_hash(start, 0), lg;
    uint32_t *l = oix_lock(h, start, &lg);
    struct obj_ref ref;
    if (obj_find(h, lg, start, 0, PLAIN_KINDS | FIND_HEADER, &ref) && obj_write_begin(&ref)) {
        uint32_t id = ref.idx + 1;
        struct kml_object *o = &g_obj[id - 1];
        uint32_t flag = KML_OBJ_FULL_SCAN;
        spin_lock(&g_area_lock);
        uint32_t ai = g_hdr->areas_used;
        if (ai < g_area_cap) {
            struct kml_area *a = &g_area[ai];
            rec_write_begin(&a->state);
            a->object_index = id - 1;
            a->object_seq = o->seq;
            a->start = p;
            a->size = size == SIZE_MAX ? UINT64_MAX : size;
            rec_write_end(&a->state, KML_STATE_LIVE);
            __atomic_store_n(&g_hdr->areas_used, ai + 1, __ATOMIC_RELEASE);
            flag = KML_OBJ_HAS_AREAS;
        }
        spin_unlock(&g_area_lock);
        o->flags |= flag;
        rec_write_end(&o->state, KML_STATE_LIVE);
        obj_versioned(&ref); /* the version moved */
    }
    spin_unlock(l);
out:
    tracking_leave();
}

/* ---- rendezvous file ------------------------------------------------------------------------------
 * The run directory is usually mode 1777 and shared with every local user: nothing there may be
 * trusted. The shim never follows a link, never opens a name that existed before (O_EXCL), never
 * blocks (O_NONBLOCK: a planted FIFO) and never writes into a file it did not just create. The
 * temporary name carries getrandom() bits, so it cannot be planted in advance. When `<pid>.client`
 * cannot be replaced (another user's file in a sticky directory: a squatter), the file is published
 * as `<pid>.<random>.client`, without replacing anything; the daemon reads both forms. */
/* field n (1-based, n >= 3) of /proc/self/stat, 0 if unreadable */
static uint64_t proc_stat_field(int n)
{
    char buf[1024];
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t len = (ssize_t)syscall(SYS_read, fd, buf, sizeof(buf) - 1);
    syscall(SYS_close, fd);
    if (len <= 0)
        return 0;
    buf[len] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    /* p -> ") S ppid ..." : field 3 starts at p+2 */
    p += 2;
    for (int f = 3; f < n && *p; p++)
        if (*p == ' ')
            f++;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9')
        v = v * 10 + (uint64_t)(*p++ - '0');
    return v;
}

static uint64_t proc_start_time(void) { return proc_stat_field(22); }

/* /proc/PID/stat's starttime is the task's CLOCK_BOOTTIME at creation in clock ticks: a child
 * created between two readings in the same tick started in that tick (0: ask /proc) */
static uint64_t boottime_tick(void)
{
    struct timespec ts;
    long hz = g_hdr ? (long)g_hdr->clk_tck : 0;
    if (hz <= 0 || 1000000000L % hz || clock_gettime(CLOCK_BOOTTIME, &ts) != 0)
        return 0;
    return ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) / (uint64_t)(1000000000L / hz);
}

/* Opens the run directory (created 0755 if missing) if it is safe to publish in: a real directory
 * (not a symlink), owned by root or by us, and writable by others only if sticky (like /tmp), so
 * that nobody else can rename or remove what we create there. -1 otherwise. */
static int run_dir_open(void)
{
    if (!g_run_dir[0])
        return -1;
    const int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
    int dfd = (int)syscall(SYS_openat, AT_FDCWD, g_run_dir, flags);
    if (dfd < 0 && errno == ENOENT && syscall(SYS_mkdirat, AT_FDCWD, g_run_dir, 0755) == 0)
        dfd = (int)syscall(SYS_openat, AT_FDCWD, g_run_dir, flags);
    if (dfd < 0)
        return -1;
    struct stat st;
    uid_t me = (uid_t)syscall(SYS_geteuid);
    if (syscall(SYS_fstat, dfd, &st) != 0 || !S_ISDIR(st.st_mode) || (st.st_uid != 0 && st.st_uid != me)
        || ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))) {
        syscall(SYS_close, dfd);
        return -1;
    }
    g_run_dir_dev = st.st_dev;
    g_run_dir_ino = st.st_ino;
    return dfd;
}

/* The kept run directory descriptor, unless the program closed it (and maybe reused its number) or
 * the directory was removed: then the directory is opened again by its name (-1 if unusable). */
static int run_dir_fd(void)
{
    struct stat st;
    if (g_run_dir_fd >= 0 && syscall(SYS_fstat, g_run_dir_fd, &st) == 0 && S_ISDIR(st.st_mode) && st.st_nlink > 0 &&
        st.st_dev == g_run_dir_dev && st.st_ino == g_run_dir_ino)
        return g_run_dir_fd;
    g_run_dir_fd = run_dir_open(); /* the old number is not ours any more: never closed */
    return g_run_dir_fd;
}

/* KMEMLEAK_RUN_DIR, copied now; the memfd's name carries the directory's identity so that a daemon
 * finding the table through /proc (no rendezvous file) adopts only clients of its own run dir. */
static void kml_run_dir_init(void)
{
    const char *env = getenv("KMEMLEAK_RUN_DIR");
    if (!env || !*env || str_len(env) > KML_RUN_DIR_MAX)
        env = KML_DEFAULT_RUN_DIR;
    str_cat(g_run_dir, 0, sizeof(g_run_dir), env);
    g_run_dir_fd = run_dir_open();
    if (g_run_dir_fd < 0)
        return;
    size_t n = str_len(g_memfd_name);
    n = str_cat(g_memfd_name, n, sizeof(g_memfd_name), ":");
    n = num_cat(g_memfd_name, n, sizeof(g_memfd_name), (uint64_t)g_run_dir_dev, 1);
    n = str_cat(g_memfd_name, n, sizeof(g_memfd_name), ":");
    num_cat(g_memfd_name, n, sizeof(g_memfd_name), (uint64_t)g_run_dir_ino, 1);
}

/* 64 unpredictable bits; never blocks (GRND_NONBLOCK). Before the entropy pool is ready the name is
 * merely unusual: O_EXCL still makes a planted name harmless. */
static uint64_t random_u64(void)
{
    uint64_t v = 0;
    if (syscall(SYS_getrandom, &v, sizeof(v), 0x1 /* GRND_NONBLOCK */) == (long)sizeof(v))
        return v;
    struct timespec ts;
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
    return ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ __builtin_ia32_rdtsc() ^ (uint64_t)(uintptr_t)&v;
}

/* "<prefix><pid>.<16 hex digits><suffix>" */
static void random_name(char *buf, size_t cap, const char *prefix, pid_t pid, const char *suffix)
{
    size_t n = 0;
    buf[0] = 0;
    n = str_cat(buf, n, cap, prefix);
    n = num_cat(buf, n, cap, (uint64_t)pid, 0);
    n = str_cat(buf, n, cap, ".");
    uint64_t r = random_u64();
    for (int i = 60; i >= 0; i -= 4) {
        char d[2] = {"0123456789abcdef"[(r >> i) & 0xf], 0};
        n = str_cat(buf, n, cap, d);
    }
    str_cat(buf, n, cap, suffix);
}

/* Gives `tmp` the name `name` unless that name exists: never replaces anything. */
static int publish_noreplace(int dfd, const char *tmp, const char *name)
{
    if (syscall(SYS_renameat2, dfd, tmp, dfd, name, 0x1 /* RENAME_NOREPLACE */) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    /* a file system without RENAME_NOREPLACE: a hard link fails on an existing name too */
    if (syscall(SYS_linkat, dfd, tmp, dfd, name, 0) != 0)
        return -1;
    syscall(SYS_unlinkat, dfd, tmp, 0);
    return 0;
}

static void rendezvous_write(void)
{
    int dfd = run_dir_fd();
    if (dfd < 0)
        return; /* no usable run dir: the daemon can still find the memfd in /proc/<pid>/maps */
    pid_t pid = (pid_t)syscall(SYS_getpid);
    char line[256];
    size_t ll = 0;
    line[0] = 0;
    ll = str_cat(line, ll, sizeof(line), "pid=");
    ll = num_cat(line, ll, sizeof(line), (uint64_t)pid, 0);
    ll = str_cat(line, ll, sizeof(line), " fd=");
    if (g_table_private)
        ll = str_cat(line, ll, sizeof(line), "-1"); /* no fd: the table is the process's own memory */
    else
        ll = num_cat(line, ll, sizeof(line), (uint64_t)g_memfd, 0);
    ll = str_cat(line, ll, sizeof(line), " addr=");
    ll = num_cat(line, ll, sizeof(line), (uint64_t)(uintptr_t)g_hdr, 1);
    ll = str_cat(line, ll, sizeof(line), " size=");
    ll = num_cat(line, ll, sizeof(line), g_total, 0);
    ll = str_cat(line, ll, sizeof(line), " start=");
    ll = num_cat(line, ll, sizeof(line), g_hdr->start_time, 0);
    ll = str_cat(line, ll, sizeof(line), "\n");

    char tmp[64], name[64];
    int fd = -1;
    for (int attempt = 0; attempt < 4 && fd < 0; attempt++) {
        random_name(tmp, sizeof(tmp), ".", pid, ".tmp");
        fd = (int)syscall(SYS_openat, dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0)
        return;
    /* O_EXCL made it ours; check anyway before writing into it */
    struct stat st;
    int ours = syscall(SYS_fstat, fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1 && st.st_size == 0
        && st.st_uid == (uid_t)syscall(SYS_geteuid);
    ssize_t w = ours ? (ssize_t)syscall(SYS_write, fd, line, ll) : -1;
    syscall(SYS_close, fd);
    if (!ours)
        return; /* not ours after all: leave it alone */
    if (w != (ssize_t)ll) {
        syscall(SYS_unlinkat, dfd, tmp, 0);
        return;
    }
    size_t nl = num_cat(name, 0, sizeof(name), (uint64_t)pid, 0);
    str_cat(name, nl, sizeof(name), KML_RENDEZVOUS_SUFFIX);
    /* rename never follows or writes into the name it replaces: our own file from before an exec,
     * a dead process's. It fails on another user's file in a sticky directory: then a unique name. */
    int rc = (int)syscall(SYS_renameat, dfd, tmp, dfd, name);
    for (int attempt = 0; attempt < 4 && rc != 0 && (attempt == 0 || errno == EEXIST); attempt++) {
        random_name(name, sizeof(name), "", pid, KML_RENDEZVOUS_SUFFIX);
        rc = publish_noreplace(dfd, tmp, name);
    }
    if (rc != 0) {
        syscall(SYS_unlinkat, dfd, tmp, 0);
        return;
    }
    memcpy(g_rendezvous_name, name, sizeof(name));
    g_rendezvous_dev = st.st_dev;
    g_rendezvous_ino = st.st_ino;
    g_rendezvous_pid = pid;
}

/* At exit: removes our own file, only if the name still is that file (same inode, not a link). */
static void rendezvous_remove(void)
{
    if (!g_rendezvous_pid || g_rendezvous_pid != (pid_t)syscall(SYS_getpid))
        return;
    g_rendezvous_pid = 0;
    int dfd = run_dir_fd();
    if (dfd < 0)
        return;
    struct stat st;
    if (syscall(SYS_newfstatat, dfd, g_rendezvous_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)
        && st.st_dev == g_rendezvous_dev && st.st_ino == g_rendezvous_ino)
        syscall(SYS_unlinkat, dfd, g_rendezvous_name, 0);
}

/* ---- the table ---------------------------------------------------------------------------------- */
/* whether a PT_LOAD segment of the module contains addr */
static int module_contains(const struct dl_phdr_info *info, uintptr_t addr)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && addr >= lo && addr < lo + ph->p_memsz)
            return 1;
    }
    return 0;
}

static int phdr_cb(struct dl_phdr_info *info, size_t sz, void *data)
{
    (void)sz;
    if (!module_contains(info, (uintptr_t)data))
        return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (ph->p_flags & PF_X) {
            g_text_lo = lo;
            g_text_hi = hi;
        }
        if ((ph->p_flags & PF_W) && g_hdr)
            region_add(KML_REGION_SHIM_PRIVATE, lo & ~(PAGE_SIZE_ - 1), PAGE_ALIGN(hi) - (lo & ~(PAGE_SIZE_ - 1)),
                       0, 0, 0);
    }
    return 1;
}

/* the executable segment(s) of the module containing addr, and its name */
struct text_query {
    uintptr_t addr, lo, hi;
    const char *name;
};

static int text_query_cb(struct dl_phdr_info *info, size_t sz, void *data)
{
    (void)sz;
    struct text_query *q = (struct text_query *)data;
    if (!module_contains(info, q->addr))
        return 0;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t s = info->dlpi_addr + ph->p_vaddr, e = s + ph->p_memsz;
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
            lo = s < lo ? s : lo;
            hi = e > hi ? e : hi;
        }
    }
    if (lo >= hi)
        return 0;
    q->lo = lo;
    q->hi = hi;
    q->name = info->dlpi_name;
    return 1;
}

static int module_text(uintptr_t addr, uintptr_t *lo, uintptr_t *len, const char **name)
{
    struct text_query q = {addr, 0, 0, NULL};
    if (!addr || !dl_iterate_phdr(text_query_cb, &q))
        return -1;
    *lo = q.lo;
    *len = q.hi - q.lo;
    if (name)
        *name = q.name;
    return 0;
}

/* ld.so's code (the module loaded at AT_BASE, as LeakSanitizer finds it) and a foreign malloc's */
static void find_allocating_modules(void)
{
    uintptr_t base = (uintptr_t)getauxval(AT_BASE);
    if (module_text(base ? base : (uintptr_t)&_r_debug, &g_ldso_lo, &g_ldso_len, NULL) != 0)
        g_ldso_lo = g_ldso_len = 0;
    if (__atomic_load_n(&g_alloc_mode, __ATOMIC_ACQUIRE) != ALLOC_FOREIGN)
        return;
    const char *name = NULL;
    if (module_text((uintptr_t)g_next.malloc, &g_foreign_lo, &g_foreign_len, &name) != 0)
        g_foreign_lo = g_foreign_len = 0;
    char msg[512];
    size_t len = str_cat(msg, 0, sizeof(msg), "kmemleak: malloc is not glibc's (");
    len = str_cat(msg, len, sizeof(msg), name && *name ? name : "the program");
    len = str_cat(msg, len, sizeof(msg), "): tracking through it\n");
    ssize_t r = write(2, msg, len);
    (void)r;
}

/* A malloc that comes before ours in the global scope (an allocator earlier in LD_PRELOAD, or in
 * the program itself) gets every call: nothing could be tracked. Says so and disables tracking. */
static int malloc_is_not_ours(void)
{
    uintptr_t first = (uintptr_t)dlsym(RTLD_DEFAULT, "malloc");
    if (!first || (first >= g_text_lo && first < g_text_hi))
        return 0;
    /* a non-PIE program that takes malloc's address has its PLT stub as the canonical address: an
     * undefined symbol there defines nothing (the stub jumps to the first definition) */
    Dl_info info;
    const ElfW(Sym) *sym = NULL;
    if (!dladdr1((void *)first, &info, (void **)&sym, RTLD_DL_SYMENT) || !sym || sym->st_shndx == SHN_UNDEF)
        return 0;
    uintptr_t lo, len;
    const char *name = NULL;
    if (module_text(first, &lo, &len, &name) != 0 || !name || !*name)
        name = "the program";
    char reason[128];
    size_t n = str_cat(reason, 0, sizeof(reason), "malloc is not the shim's but ");
    n = str_cat(reason, n, sizeof(reason), name);
    str_cat(reason, n, sizeof(reason), "'s (put libkmemleak.so first in LD_PRELOAD)");
    kml_disable(reason);
    return 1;
}

static void remember_memfd(int fd)
{
    struct stat st;
    if (fstat(fd, &st) == 0) {
        g_memfd_dev = st.st_dev;
        g_memfd_ino = st.st_ino;
    }
}

static int still_our_memfd(int fd)
{
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == g_memfd_dev && st.st_ino == g_memfd_ino;
}

static uint32_t pow2_at_least(uint32_t v)
{
    uint32_t p = 1024;
    while (p < v && p < (1u << 30))
        p <<= 1;
    return p;
}

/* The private table: anonymous memory that fork() copies on write, between two PROT_NONE guard
 * pages so that no neighbour with the same flags merges into its mapping (the daemon checks that
 * the announced range is exactly one private anonymous mapping). Named "[anon:<memfd name>]" where
 * the kernel can (CONFIG_ANON_VMA_NAME). */
static void *table_map_private(size_t size)
{
    char *r = raw_mmap(NULL, size + 2 * PAGE_SIZE_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED)
        return MAP_FAILED;
    if (syscall(SYS_mprotect, r + PAGE_SIZE_, size, PROT_READ | PROT_WRITE) != 0) {
        raw_munmap(r, size + 2 * PAGE_SIZE_);
        return MAP_FAILED;
    }
    prctl(0x53564d41 /* PR_SET_VMA */, 0 /* PR_SET_VMA_ANON_NAME */, (unsigned long)(r + PAGE_SIZE_), size,
          (unsigned long)g_memfd_name);
    return r + PAGE_SIZE_;
}

static int table_create(void)
{
    g_obj_cap = (uint32_t)env_u64("KMEMLEAK_MAX_OBJECTS", DEFAULT_MAX_OBJECTS, 1024, 1u << 30);
    g_tr_cap = (uint32_t)env_u64("KMEMLEAK_MAX_TRACES", DEFAULT_MAX_TRACES, 256, 1u << 28);
    g_thr_cap = (uint32_t)env_u64("KMEMLEAK_MAX_THREADS", DEFAULT_MAX_THREADS, 16, 1u << 20);
    g_comm_cap = DEFAULT_MAX_COMMS;
    g_reg_cap = DEFAULT_MAX_REGIONS;
    g_area_cap = (uint32_t)env_u64("KMEMLEAK_MAX_AREAS", DEFAULT_MAX_AREAS, 16, 1u << 24);

    /* the thread records right after the header, on its page: a forked child rewrites both (its
     * pid, its thread's tid), and fork() makes every page copy-on-write: one fault for both */
    size_t off = round_up(sizeof(struct kml_header), 64);
    size_t thr_off = off;
    off = round_up(off + (size_t)g_thr_cap * sizeof(struct kml_thread), PAGE_SIZE_);
    size_t obj_off = off;
    off = round_up(off + (size_t)g_obj_cap * sizeof(struct kml_object), PAGE_SIZE_);
    size_t tr_off = off;
    off = round_up(off + (size_t)g_tr_cap * sizeof(struct kml_trace), PAGE_SIZE_);
    size_t comm_off = off;
    off = round_up(off + (size_t)g_comm_cap * KML_COMM_LEN, PAGE_SIZE_);
    size_t reg_off = off;
    off = round_up(off + (size_t)g_reg_cap * sizeof(struct kml_region), PAGE_SIZE_);
    size_t area_off = off;
    off = round_up(off + (size_t)g_area_cap * sizeof(struct kml_area), PAGE_SIZE_);
    g_total = off;

    /* A private table needs a rendezvous file to be found (nothing in /proc/PID/maps names it on a
     * kernel without CONFIG_ANON_VMA_NAME); without a usable run directory, a memfd. */
    const char *kind = getenv("KMEMLEAK_TABLE");
    void *m = g_run_dir_fd >= 0 && !(kind && !strcmp(kind, "memfd")) ? table_map_private(g_total) : MAP_FAILED;
    if (m != MAP_FAILED) {
        g_table_private = 1;
    } else {
        int fd = (int)syscall(SYS_memfd_create, g_memfd_name, MFD_CLOEXEC);
        if (fd < 0)
            return -1;
        if (syscall(SYS_ftruncate, fd, (off_t)g_total) != 0) {
            syscall(SYS_close, fd);
            return -1;
        }
        m = raw_mmap(NULL, g_total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
        if (m == MAP_FAILED) {
            syscall(SYS_close, fd);
            return -1;
        }
        g_memfd = fd;
        remember_memfd(fd);
    }
    g_hdr = (struct kml_header *)m;
    g_obj = (struct kml_object *)((char *)m + obj_off);
    g_tr = (struct kml_trace *)((char *)m + tr_off);
    g_thr = (struct kml_thread *)((char *)m + thr_off);
    g_comm = (char *)m + comm_off;
    g_reg = (struct kml_region *)((char *)m + reg_off);
    g_area = (struct kml_area *)((char *)m + area_off);

    struct kml_header *h = g_hdr;
    h->version = KML_ABI_VERSION;
    h->header_size = sizeof(struct kml_header);
    h->total_size = g_total;
    h->pid = (int32_t)syscall(SYS_getpid);
    h->start_time = proc_start_time();
    h->nr_cpu_ids = kmemleak_nr_cpu_ids();
    long tck = sysconf(_SC_CLK_TCK);
    h->clk_tck = (uint32_t)(tck > 0 ? tck : 100);
    /* the precise clock, not now_ns's coarse one: an exec within a tick would otherwise give the new
     * table the old one's creation time, which is what tells the daemon that a table was replaced */
    struct timespec created;
    clock_gettime(CLOCK_BOOTTIME, &created);
    h->created_ns = ts_ns(&created);
    h->objects_offset = obj_off;
    h->objects_capacity = g_obj_cap;
    h->object_size = sizeof(struct kml_object);
    h->traces_offset = tr_off;
    h->traces_capacity = g_tr_cap;
    h->trace_size = sizeof(struct kml_trace);
    h->threads_offset = thr_off;
    h->threads_capacity = g_thr_cap;
    h->thread_size = sizeof(struct kml_thread);
    h->comms_offset = comm_off;
    h->comms_capacity = g_comm_cap;
    h->comm_size = KML_COMM_LEN;
    h->regions_offset = reg_off;
    h->regions_capacity = g_reg_cap;
    h->region_size = sizeof(struct kml_region);
    h->areas_offset = area_off;
    h->areas_capacity = g_area_cap;
    h->area_size = sizeof(struct kml_area);
    h->alloc_seq = 1;
    if (g_table_private)
        h->flags |= KML_TABLE_PRIVATE;
    if (g_run_dir_fd >= 0) {
        /* which daemon's: a forked child is found in /proc by its table, without a file */
        h->run_dir_dev = (uint32_t)g_run_dir_dev;
        h->run_dir_ino_lo = (uint32_t)g_run_dir_ino;
        h->run_dir_ino_hi = (uint32_t)((uint64_t)g_run_dir_ino >> 32);
        h->flags |= KML_TABLE_RUN_DIR;
    }
    /* published last: a daemon's /proc discovery may read the header while we write it, and takes
     * a zero magic for "not yet", not for a bad table */
    __atomic_store_n(&h->magic, KML_MAGIC, __ATOMIC_RELEASE);

    /* private index */
    /* reservations: the object index for four times the capacity (the load rule keeps it at most half
     * full, and a full domain of an unevenly filled index may double it once more), then its growth
     * scratch area (one domain), used from OIX_MIN_LOG entries up; the depot's buckets for a quarter
     * of its capacity (chains of 4 when full), used from 1024 buckets up */
    g_oix_max_log = (uint32_t)__builtin_ctz(pow2_at_least(g_obj_cap)) + 2;
    uint32_t tr_buckets = pow2_at_least(g_tr_cap / 4);
    g_batch_cap = g_obj_cap + 64; /* worst case: chains of one slot */
    size_t p = 0;
    size_t ob_off = p;
    size_t oix_entries = (size_t)1 << g_oix_max_log;
    size_t oix_scratch = (size_t)oix_domain_mask(g_oix_max_log - 1) + 1; /* the largest domain to grow */
    p = round_up(p + oix_entries * sizeof(struct obj_entry), PAGE_SIZE_);
    p = round_up(p + oix_scratch * sizeof(struct obj_entry), PAGE_SIZE_);
    size_t ow_off = p;
    p = round_up(p + (((oix_entries + oix_scratch) >> OIX_PAGE_LOG) + 63) / 64 * 8, PAGE_SIZE_); /* scratch's too */
    size_t st_off = p;
    p = round_up(p + (size_t)NR_STRIPES * 4, PAGE_SIZE_);
    size_t tb_off = p;
    p = round_up(p + (size_t)tr_buckets * 4, PAGE_SIZE_);
    size_t mm_off = p;
    p = round_up(p + (size_t)MAX_MMAPS * 4, PAGE_SIZE_);
    size_t tf_off = p;
    p = round_up(p + (size_t)g_thr_cap * 4, PAGE_SIZE_);
    size_t ba_off = p;
    p = round_up(p + (size_t)g_batch_cap * 8, PAGE_SIZE_);
    size_t pt_off = p;
    p = round_up(p + (size_t)g_thr_cap * sizeof(pthread_t), PAGE_SIZE_);
    size_t me_off = p; /* a trace memo for each of the first thread slots, touched as threads use them */
    g_memo_slots = g_thr_cap < MEMO_THREADS ? g_thr_cap : MEMO_THREADS;
    p = round_up(p + (size_t)g_memo_slots * CFI_MEMO_BYTES, PAGE_SIZE_);
    g_priv_size = p;
    void *pm = raw_mmap(NULL, g_priv_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (pm == MAP_FAILED)
        return -1;
    /* the stripes and the depot's buckets are read at random: huge pages spare the TLB. Not the
     * object index: its homes keep neighbours on one page, and its huge pages' first touch (2 MiB
     * zeroed at once, compacted for under THP's defrag=madvise) cost python3 0.3-0.7 s of system
     * time as it grew to 64 MiB, against 0.15 s in 4 KiB pages, the user time unchanged */
    syscall(SYS_madvise, (char *)pm + st_off, mm_off - st_off, MADV_HUGEPAGE);
    /* a forked child starts with zeroed (unlocked) stripes, and fork() leaves the parent's stripe
     * pages writable: neither side copies them when it next takes a lock */
    g_stripes_wiped = syscall(SYS_madvise, (char *)pm + st_off, tb_off - st_off, MADV_WIPEONFORK) == 0;
    g_priv = pm;
    g_oix = (struct obj_entry *)((char *)pm + ob_off);
    g_oix_log = OIX_MIN_LOG;
    g_oix_written = (uint64_t *)((char *)pm + ow_off);
    g_stripes = (uint32_t *)((char *)pm + st_off);
    g_tr_buckets = (uint32_t *)((char *)pm + tb_off);
    g_tr_bucket_max = tr_buckets;
    g_tr_bucket_mask = (tr_buckets < TR_BUCKETS_MIN ? tr_buckets : TR_BUCKETS_MIN) - 1;
    g_mm_slots = (uint32_t *)((char *)pm + mm_off);
    g_thr_free = (uint32_t *)((char *)pm + tf_off);
    g_batches = (uint32_t *)((char *)pm + ba_off);
    g_thr_ptid = (pthread_t *)((char *)pm + pt_off);
    /* a forked child starts with empty memos (zero pages) instead of copying the parent's */
    if (syscall(SYS_madvise, (char *)pm + me_off, g_priv_size - me_off, MADV_WIPEONFORK) == 0)
        g_memo_pool = (char *)pm + me_off;

    /* the shim's own memory is never a root */
    region_add(KML_REGION_SHIM_PRIVATE, (uintptr_t)m, g_total, 0, 0, 0);
    region_add(KML_REGION_SHIM_PRIVATE, (uintptr_t)pm, g_priv_size, 0, 0, 0);
    return 0;
}

/* ---- write tracking: a userfaultfd for the daemon (issue 10 goal 2) -------------------------------
 * The daemon takes this fd (pidfd_getfd), write-protects the heap through it before a scan, and asks
 * the kernel (PAGEMAP_SCAN on /proc/PID/pagemap) which pages were written while it scanned: while the
 * client is frozen it then re-reads only those. The client registers nothing itself. In async mode
 * (UFFD_FEATURE_WP_ASYNC, Linux 6.7) the kernel resolves a write fault by clearing the page's
 * protection: no thread here serves faults, a write never waits. UFFD_USER_MODE_ONLY needs no
 * privilege. Never fatal: without it the daemon re-reads everything frozen, as before.
 * Not under a seccomp filter: a filter may kill on an unknown syscall (systemd's default action).
 * Debian 12's headers predate WP_ASYNC: its bits are below. */
#define KML_UFFD_API 0xAAull
#define KML_UFFD_USER_MODE_ONLY 1
#define KML_UFFD_FEATURE_WP_UNPOPULATED (1ull << 13)
#define KML_UFFD_FEATURE_WP_ASYNC (1ull << 15)
#define KML_UFFDIO_API 0xc018aa3fu /* _IOWR(0xAA, 0x3F, struct uffdio_api) */
struct kml_uffdio_api { uint64_t api, features, ioctls; };
static int g_uffd = -1;
static dev_t g_uffd_dev;
static ino_t g_uffd_ino;
static int g_uffd_off; /* KMEMLEAK_WRITE_TRACKING=off or a seccomp filter, decided at start: a forked
                        * child reads no environment (its strings' page would be a fault) */

/* Creates the userfaultfd and advertises it in the header (a forked child's table still names the
 * parent's, whose memory it would track: `inherited` closes that copy first). */
static void uffd_advertise(int inherited)
{
    struct stat st;
    if (inherited && g_uffd >= 0 && syscall(SYS_fstat, g_uffd, &st) == 0 && st.st_dev == g_uffd_dev &&
        st.st_ino == g_uffd_ino)
        syscall(SYS_close, g_uffd); /* unless the program closed it and reused the number */
    if (g_uffd != -1)
        g_uffd = -1;
    __atomic_and_fetch(&g_hdr->flags, ~KML_TABLE_USERFAULTFD, __ATOMIC_RELEASE);
    if (!inherited) {
        const char *env = getenv("KMEMLEAK_WRITE_TRACKING");
        g_uffd_off = (env && !strcmp(env, "off")) || prctl(PR_GET_SECCOMP, 0, 0, 0, 0) != 0;
    } else if (!g_uffd_off && syscall(SYS_prctl, PR_GET_SECCOMP, 0, 0, 0, 0) != 0) {
        g_uffd_off = 1; /* the parent may have installed a filter since */
    }
    if (g_uffd_off)
        return;
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | KML_UFFD_USER_MODE_ONLY);
    if (fd < 0)
        return;
    /* stored field by field: an initialiser is copied from .rodata, a page a forked child would
     * fault in for this alone */
    struct kml_uffdio_api api;
    __atomic_store_n(&api.api, KML_UFFD_API, __ATOMIC_RELAXED);
    __atomic_store_n(&api.features, KML_UFFD_FEATURE_WP_ASYNC | KML_UFFD_FEATURE_WP_UNPOPULATED, __ATOMIC_RELAXED);
    __atomic_store_n(&api.ioctls, 0, __ATOMIC_RELAXED);
    if (syscall(SYS_ioctl, fd, KML_UFFDIO_API, &api) != 0 || !(api.features & KML_UFFD_FEATURE_WP_ASYNC) ||
        syscall(SYS_fstat, fd, &st) != 0) {
        syscall(SYS_close, fd);
        return;
    }
    g_uffd = fd;
    g_uffd_dev = st.st_dev;
    g_uffd_ino = st.st_ino;
    __atomic_store_n(&g_hdr->userfaultfd, fd, __ATOMIC_RELAXED);
    __atomic_or_fetch(&g_hdr->flags, KML_TABLE_USERFAULTFD, __ATOMIC_RELEASE);
}

/* ---- fork: the child gets its own table -------------------------------------------------------
 * Lock order (every nested acquisition in this file follows it): mm, pcpu, thr, comm, reg, depot,
 * batch, stripes, area. */
/* LIVE thread records, up to 2: a cheap first test before the kernel's count of threads */
static uint32_t live_thread_records(void)
{
    uint32_t n = 0, used = __atomic_load_n(&g_hdr->threads_used, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < used && n < 2; i++)
        n += (__atomic_load_n(&g_thr[i].state, __ATOMIC_ACQUIRE) & KML_STATE_KIND_MASK) == KML_STATE_LIVE;
    return n;
}

static void lock_all(int stripes)
{
    spin_lock(&g_mm_lock);
    spin_lock(&g_pcpu_lock);
    spin_lock(&g_thr_lock);
    spin_lock(&g_comm_lock);
    spin_lock(&g_reg_lock);
    spin_lock(&g_depot_lock);
    spin_lock(&g_batch_lock);
    for (uint32_t i = 0; stripes && i < NR_STRIPES; i++)
        spin_lock(&g_stripes[i]);
    spin_lock(&g_area_lock); /* taken under a stripe lock by kmemleak_scan_area */
}

static void unlock_all(int stripes)
{
    spin_unlock(&g_area_lock);
    for (uint32_t i = 0; stripes && i < NR_STRIPES; i++)
        spin_unlock(&g_stripes[i]);
    spin_unlock(&g_batch_lock);
    spin_unlock(&g_depot_lock);
    spin_unlock(&g_reg_lock);
    spin_unlock(&g_comm_lock);
    spin_unlock(&g_thr_lock);
    spin_unlock(&g_pcpu_lock);
    spin_unlock(&g_mm_lock);
}

static int g_fork_fd = -1;           /* the child's table, filled by the parent before fork() */
static const char *g_fork_why;       /* why it could not be, for the child's disable message */
static int g_fork_errno;

/* writes [off, off+len) of the table to fd at the same offset: the kernel reads our mapping (present
 * pages, no faults) and fills the memfd's pages directly, without mapping them anywhere */
static int snapshot_range(int fd, size_t off, size_t len)
{
    const char *src = (const char *)g_hdr;
    while (len) {
        long w = syscall(SYS_pwrite64, fd, src + off, len, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w == 0)
            errno = EIO; /* no progress, and no errno of its own */
        if (w <= 0)
            return -1;
        off += (size_t)w;
        len -= (size_t)w;
    }
    return 0;
}

/* the table as it is at fork time, in a new memfd for the child: taken in the parent with every
 * lock held, because once fork() returns the parent goes on changing its table. Only the used part
 * of each array is copied, so the cost follows what is used, and the child maps it with one mmap. */
static int table_snapshot(void)
{
    int fd = (int)syscall(SYS_memfd_create, g_memfd_name, MFD_CLOEXEC);
    if (fd < 0) {
        g_fork_why = "fork: memfd_create failed";
        g_fork_errno = errno;
        return -1;
    }
    if (syscall(SYS_ftruncate, fd, (off_t)g_total) != 0) {
        g_fork_why = "fork: ftruncate failed";
        g_fork_errno = errno;
        syscall(SYS_close, fd);
        return -1;
    }
    const struct kml_header *h = g_hdr;
    /* slot allocation is lock-free: the header copied next may count more slots than are copied
     * here; those stay all-zero (FREE) in the child, and their writers do not exist there */
    uint32_t objects = __atomic_load_n(&h->objects_used, __ATOMIC_ACQUIRE);
    if (snapshot_range(fd, 0, sizeof(*h)) ||
        snapshot_range(fd, h->objects_offset, (size_t)objects * sizeof(struct kml_object)) ||
        snapshot_range(fd, h->traces_offset, (size_t)h->traces_used * sizeof(struct kml_trace)) ||
        snapshot_range(fd, h->threads_offset, (size_t)h->threads_used * sizeof(struct kml_thread)) ||
        snapshot_range(fd, h->comms_offset, (size_t)h->comms_used * KML_COMM_LEN) ||
        snapshot_range(fd, h->regions_offset, (size_t)h->regions_used * sizeof(struct kml_region)) ||
        snapshot_range(fd, h->areas_offset, (size_t)h->areas_used * sizeof(struct kml_area))) {
        g_fork_why = "fork: writing the child's table failed";
        g_fork_errno = errno;
        syscall(SYS_close, fd);
        return -1;
    }
    return fd;
}

/* The kernel's count of our threads (threads the shim never saw start count too): /proc/self/task
 * has two links more than the process has threads (one stat, no open or read); 0 if unknown. */
static uint64_t kernel_thread_count(void)
{
    struct stat st;
    if (syscall(SYS_newfstatat, AT_FDCWD, "/proc/self/task", &st, 0) != 0 || st.st_nlink < 3)
        return 0;
    return (uint64_t)st.st_nlink - 2;
}

/* A private table that no rendezvous file announces at start (the run directory could be opened but
 * not written: another user's) would be invisible to a daemon that does not look in /proc: it becomes
 * a memfd table at the same address, found by its name in /proc/PID/maps. Only the calling thread may
 * be writing the table (init). A forked child needs no file (see atfork_child). */
static void table_to_memfd(void)
{
    int fd = table_snapshot();
    if (fd < 0)
        return; /* stays private, unannounced */
    void *m = raw_mmap(g_hdr, g_total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_NORESERVE, fd, 0);
    if (m == MAP_FAILED) {
        syscall(SYS_close, fd);
        return;
    }
    g_table_private = 0;
    g_memfd = fd;
    remember_memfd(fd);
    __atomic_and_fetch(&g_hdr->flags, ~KML_TABLE_PRIVATE, __ATOMIC_RELEASE);
}

static void atfork_prepare(void)
{
    if (t.in_shim) {
        /* fork from a signal handler that interrupted the shim: our locks may be held by this very
         * thread, so they cannot be taken; the child will not track (see atfork_child) */
        t.fork_nested = 1;
        t.in_shim++;
        return;
    }
    t.in_shim++;
    if (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) == ST_ON && g_priv) {
        if (g_unwinder == UNWIND_CFI || g_unwinder == UNWIND_CHECK) {
            cfi_prefork(); /* the child shares the unwinder's rules */
            cfi_register_caches();
        }
        /* A process that never had a second thread (glibc's __libc_single_threaded, as on the
         * malloc path) has nobody else inside the shim: no lock is taken, so nothing of the shim's
         * .data/.bss is written around fork() (the parent would copy each page it writes). Else the
         * 4096 stripe locks cost more than the rest of a fork's bookkeeping: a process whose only
         * thread is this one (the kernel's count: threads the shim did not see start count too)
         * has nobody inside them. */
        t.fork_locks = !lone_thread();
        t.fork_stripes = t.fork_locks && !(live_thread_records() == 1 && kernel_thread_count() == 1);
        if (t.fork_locks)
            lock_all(t.fork_stripes);
        t.fork_locked = 1;
        /* a private table is copied by fork() itself, copy-on-write, while every lock is held */
        if (!g_table_private)
            g_fork_fd = table_snapshot();
        t.fork_tick = boottime_tick();
    }
}

static void atfork_parent(void)
{
    t.fork_nested = 0;
    if (t.fork_locked) {
        t.fork_locked = 0;
        if (g_fork_fd >= 0) {
            syscall(SYS_close, g_fork_fd);
            g_fork_fd = -1;
        }
        if (t.fork_locks)
            unlock_all(t.fork_stripes);
    }
    t.in_shim--;
}

/* A memfd table's child: the parent's snapshot replaces the parent's mapping at the same address.
 * -1 (tracking disabled, detached from the parent's table) when there is none. */
static int table_adopt_snapshot(void)
{
    int fd = g_fork_fd;
    g_fork_fd = -1;
    void *m = fd < 0 ? MAP_FAILED
                     : raw_mmap(g_hdr, g_total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_NORESERVE, fd, 0);
    if (m == MAP_FAILED) {
        char why[128];
        size_t n = str_cat(why, 0, sizeof(why), fd < 0 ? g_fork_why : "fork: remap failed");
        n = str_cat(why, n, sizeof(why), " (errno ");
        n = num_cat(why, n, sizeof(why), (uint64_t)(fd < 0 ? g_fork_errno : errno), 0);
        str_cat(why, n, sizeof(why), ")");
        if (fd >= 0)
            syscall(SYS_close, fd);
        /* the parent's table must stay intact: detach from it before saying anything */
        g_hdr = NULL;
        kml_disable(why);
        return -1;
    }
    if (still_our_memfd(g_memfd)) /* the parent's memfd, unless the program closed and reused it */
        syscall(SYS_close, g_memfd);
    g_memfd = fd;
    remember_memfd(fd);
    return 0;
}

static void atfork_child(void)
{
    t.tid = 0; /* g_rendezvous_pid stays the parent's: rendezvous_remove compares it with our pid */
    if (t.fork_nested) {
        /* a memfd table mapping is still the parent's: detach before anything can write to it */
        t.fork_nested = 0;
        g_hdr = NULL;
        if (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) == ST_ON)
            kml_disable("fork from a signal handler inside the shim");
        t.in_shim--;
        return;
    }
    if (!t.fork_locked) {
        t.in_shim--;
        return;
    }
    t.fork_locked = 0;
    if (t.fork_locks)
        unlock_all(t.fork_stripes && !g_stripes_wiped);
    int old_tid_slot = t.thread_slot;
    if (!g_table_private && table_adopt_snapshot() != 0) {
        t.in_shim--;
        return;
    }
    struct kml_header *h = g_hdr;
    h->pid = (int32_t)syscall(SYS_getpid);
    uint64_t tick = boottime_tick();
    h->start_time = tick && tick == t.fork_tick ? tick : proc_start_time();
    h->daemon_pid = 0;
    h->daemon_scans = 0;
    /* only the forking thread exists in the child */
    int others = 0;
    uint32_t free_count = 0; /* .bss is written only where it changes (copy-on-write) */
    for (uint32_t i = 0; i < h->threads_used; i++) {
        struct kml_thread *th = &g_thr[i];
        th->state &= ~KML_STATE_BUSY;
        if ((int)i + 1 == old_tid_slot && (th->state & KML_STATE_KIND_MASK) == KML_STATE_LIVE) {
            rec_write_begin(&th->state);
            th->tid = cur_tid();
            rec_write_end(&th->state, KML_STATE_LIVE);
        } else {
            if ((th->state & KML_STATE_KIND_MASK) == KML_STATE_LIVE) {
                others = 1;
                rec_write_begin(&th->state);
                rec_write_end(&th->state, KML_STATE_FREE);
            }
            g_thr_ptid[i] = 0;
            g_thr_free[free_count++] = i;
        }
    }
    if (g_thr_free_count != free_count)
        g_thr_free_count = free_count;
    uint32_t detached = old_tid_slot && (g_thr[old_tid_slot - 1].state & KML_STATE_KIND_MASK) == KML_STATE_LIVE &&
                        (g_thr[old_tid_slot - 1].flags & KML_THREAD_DETACHED);
    if (g_thr_detached != detached)
        g_thr_detached = detached;
    /* writers that vanished with the other threads: clear their BUSY bits. Alone, the forking
     * thread was not inside the shim, so no record can be BUSY: the pages need not be touched. */
    if (others)
        for (uint32_t i = 0; i < h->objects_used; i++)
            if (g_obj[i].state & KML_STATE_BUSY)
                g_obj[i].state &= ~KML_STATE_BUSY;
    if (g_unwinder == UNWIND_CFI || g_unwinder == UNWIND_CHECK)
        cfi_forked_child();
    uffd_advertise(1);
    /* The new table mapping is the same range: its SHIM_PRIVATE region stays valid. A private
     * table's child writes no rendezvous file (creating, renaming and removing it was ~9 % of a
     * `$(true)`'s CPU): the daemon finds it in /proc, its copy of the table at the announced range
     * with its own pid and KML_TABLE_RUN_DIR in the header. A memfd child announces its snapshot. */
    if (!g_table_private)
        rendezvous_write();
    t.in_shim--;
}

/* ---- initialisation and exit ---------------------------------------------------------------------- */
static void kml_init_tls_info(void)
{
    void (*get_tls)(size_t *, size_t *) = (void (*)(size_t *, size_t *))dlsym(RTLD_DEFAULT, "_dl_get_tls_static_info");
    size_t size = 0, align = 0;
    if (get_tls)
        get_tls(&size, &align);
    const unsigned int *tcb = (const unsigned int *)dlsym(RTLD_DEFAULT, "_thread_db_sizeof_pthread");
    g_tcb_size = tcb ? *tcb : 2304; /* sizeof(struct pthread), glibc 2.36 x86_64 */
    g_tls_static_size = size ? size : 4096 + g_tcb_size;
}

__attribute__((constructor(101))) static void kml_init(void)
{
    if (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) != ST_UNINIT)
        return;
    __atomic_store_n(&g_state, ST_INIT, __ATOMIC_RELEASE);
    t.in_shim = 1;
    dl_iterate_phdr(phdr_cb, (void *)(uintptr_t)&kml_init); /* text range (regions come later) */
    alloc_mode_slow(); /* usually resolved already, by the first allocation */
    const char *env = getenv("KMEMLEAK");
    if (env && (!strcmp(env, "off") || !strcmp(env, "0"))) {
        /* KMEMLEAK=off: no table, no rendezvous file; everything is forwarded untouched */
        __atomic_store_n(&g_state, ST_OFF, __ATOMIC_RELEASE);
        t.in_shim = 0;
        return;
    }
    const char *uw = getenv("KMEMLEAK_UNWINDER");
    if (uw && !strcmp(uw, "libgcc"))
        g_unwinder = resolve_libgcc() == 0 ? UNWIND_LIBGCC : UNWIND_LIBUNWIND;
    else if (uw && !strcmp(uw, "libunwind"))
        g_unwinder = UNWIND_LIBUNWIND;
    else if (uw && !strcmp(uw, "none"))
        g_unwinder = UNWIND_NONE;
    else if (uw && !strcmp(uw, "check"))
        g_unwinder = UNWIND_CHECK;
    if ((g_unwinder == UNWIND_CFI || g_unwinder == UNWIND_CHECK) && cfi_init() != 0)
        g_unwinder = UNWIND_LIBUNWIND;
    kml_run_dir_init();

    if (table_create() != 0) {
        t.in_shim = 0;
        kml_disable("cannot create the shared table");
        return;
    }
    dl_iterate_phdr(phdr_cb, (void *)(uintptr_t)&kml_init); /* the shim's writable segments */
    if (malloc_is_not_ours()) {
        t.in_shim = 0;
        return;
    }
    find_allocating_modules();
    if (__atomic_load_n(&g_alloc_mode, __ATOMIC_ACQUIRE) == ALLOC_FOREIGN)
        g_hdr->flags |= KML_TABLE_FOREIGN_MALLOC;
    kml_init_tls_info();
    resolve_pthread();
    if (pthread_key_create(&g_thread_key, thread_exit_dtor) != 0) {
        t.in_shim = 0;
        kml_disable("pthread_key_create failed");
        return;
    }
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    if (syscall(SYS_gettid) == syscall(SYS_getpid))
        thread_register(1, 0);
    cfi_register_caches();
    /* warm libunwind up where it is the unwinder (its first call may allocate: untracked here); the
     * shim's own needs none, and its fallback to libunwind sets it up when first needed (unw_trace) */
    if (g_unwinder != UNWIND_CFI)
        capture_trace();
    uffd_advertise(0);
    rendezvous_write();
    if (g_table_private && !g_rendezvous_pid)
        table_to_memfd();
    __atomic_store_n(&g_hdr->flags, g_hdr->flags | KML_TABLE_TRACKING, __ATOMIC_RELEASE);
    __atomic_store_n(&g_state, ST_ON, __ATOMIC_RELEASE);
    t.in_shim = 0;
}

__attribute__((destructor)) static void kml_exit(void)
{
    if (g_unwinder == UNWIND_CHECK) {
        char line[160];
        size_t k = str_cat(line, 0, sizeof(line), "kmemleak: unwind check: ");
        k = num_cat(line, k, sizeof(line), __atomic_load_n(&g_check_traces, __ATOMIC_RELAXED), 0);
        k = str_cat(line, k, sizeof(line), " traces, ");
        k = num_cat(line, k, sizeof(line), __atomic_load_n(&g_check_fallbacks, __ATOMIC_RELAXED), 0);
        k = str_cat(line, k, sizeof(line), " fallbacks, ");
        k = num_cat(line, k, sizeof(line), __atomic_load_n(&g_check_mismatches, __ATOMIC_RELAXED), 0);
        k = str_cat(line, k, sizeof(line), " mismatches, ");
        k = num_cat(line, k, sizeof(line), __atomic_load_n(&g_check_memo_hits, __ATOMIC_RELAXED), 0);
        k = str_cat(line, k, sizeof(line), " memo hits\n");
        ssize_t w = write(2, line, k);
        (void)w;
    }
    rendezvous_remove();
}
