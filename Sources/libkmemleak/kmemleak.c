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
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <unwind.h>
#define UNW_LOCAL_ONLY
#include <libunwind.h>

#define KMEMLEAK_BUILDING_LIBRARY 1
#include "kmemleak.h"
#include "kmemleak_abi.h"

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
#define NR_STRIPES 4096u          /* object hash lock stripes */
#define TR_BUCKETS_MIN 1024u      /* initial stack depot buckets */
#define INDEX_LOAD 1u             /* an index grows (x4) past this many entries per bucket */
#define LIVE_BATCH 64             /* a thread adds its live-object changes to the header this many at once */
#define UNWIND_EXTRA 4            /* frames captured beyond KML_MAX_TRACE to skip our own (at most 3) */

#define STATE_LIVE_MASK (KML_STATE_KIND_MASK)
#define KIND_BIT(k) (1u << (k))
#define PLAIN_KINDS (KIND_BIT(KML_KIND_MALLOC) | KIND_BIT(KML_KIND_MMAP) | KIND_BIT(KML_KIND_CUSTOM))
#define PCPU_KINDS (KIND_BIT(KML_KIND_PERCPU) | KIND_BIT(KML_KIND_CUSTOM_PERCPU))

enum { ST_UNINIT, ST_INIT, ST_ON, ST_OFF };
enum { UNWIND_LIBUNWIND, UNWIND_LIBGCC, UNWIND_NONE };

/* ---- global state (all of it in the shim's .bss, registered KML_REGION_SHIM_PRIVATE) ---------- */
static int g_state;                  /* ST_* (atomic) */
static int g_disabled_once;
static int g_unwinder = UNWIND_LIBUNWIND;
static int g_memfd = -1;
static dev_t g_memfd_dev;            /* identity of our memfd: the program may close the fd and */
static ino_t g_memfd_ino;            /* reuse its number; never close someone else's file */
static pid_t g_rendezvous_pid;
static char g_rendezvous_path[512];
static const char *g_run_dir;

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
static uint32_t *g_obj_buckets;      /* 1-based slot of the first object in the chain */
static uint32_t g_obj_bucket_mask;   /* written with every stripe held; >= NR_STRIPES - 1 */
static uint32_t g_obj_bucket_max;
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

/* always inlined, like capture_trace and track_alloc: every shim frame between the caller and
 * the unwinder is a frame unwound for nothing (~30 ns each) */
static inline __attribute__((always_inline)) int unwind_stack(void **buf, int max)
{
    if (g_unwinder == UNWIND_LIBUNWIND)
        return unw_backtrace(buf, max);
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

    spin_lock(&g_depot_lock);
    bucket = &g_tr_buckets[hash & g_tr_bucket_mask];
    uint32_t head = __atomic_load_n(bucket, __ATOMIC_ACQUIRE);
    for (uint32_t id = head; id; id = g_tr[id - 1].next)
        if (trace_equal(&g_tr[id - 1], hash, f, len)) {
            spin_unlock(&g_depot_lock);
            return id;
        }
    uint32_t idx = __atomic_load_n(&g_hdr->traces_used, __ATOMIC_RELAXED);
    if (idx >= g_tr_cap) {
        spin_unlock(&g_depot_lock);
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
    spin_unlock(&g_depot_lock);
    return idx + 1;
}

/* the current stack, without the shim's own frames */
static inline __attribute__((always_inline)) uint32_t capture_trace(void)
{
    void *buf[KML_MAX_TRACE + UNWIND_EXTRA];
    int n = unwind_stack(buf, (int)(KML_MAX_TRACE + UNWIND_EXTRA));
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
/* A pointer's stripe is its hash's low bits: every bucket mask covers them, so it does not change
 * when the index grows. The bucket is read with the stripe held (obj_index_grow holds them all). */
static inline uint32_t *obj_stripe(uint32_t hash) { return &g_stripes[hash & (NR_STRIPES - 1)]; }
static inline uint32_t *obj_bucket(uint32_t hash) { return &g_obj_buckets[hash & g_obj_bucket_mask]; }

static inline uint32_t obj_hash(const struct kml_object *o)
{
    return hash_ptr(o->pointer, kind_is_pcpu(o->flags & KML_KIND_MASK));
}

/* x4 buckets (x2 to the last size), in place, with every stripe held: bucket b's chain splits into
 * b, b+n, b+2n, b+3n */
static __attribute__((noinline)) void obj_index_grow(void)
{
    for (uint32_t i = 0; i < NR_STRIPES; i++)
        spin_lock(&g_stripes[i]);
    uint32_t n = g_obj_bucket_mask + 1, shift = (uint32_t)__builtin_ctz(n);
    uint32_t used = __atomic_load_n(&g_hdr->objects_used, __ATOMIC_RELAXED);
    uint32_t ways = g_obj_bucket_max / n >= 4 ? 4 : 2;
    if (used > INDEX_LOAD * n && n < g_obj_bucket_max) {
        for (uint32_t b = 0; b < n; b++) {
            uint32_t heads[4] = {0, 0, 0, 0}, tails[4] = {0, 0, 0, 0};
            for (uint32_t id = g_obj_buckets[b]; id; id = g_obj[id - 1].hash_next) {
                uint32_t k = (obj_hash(&g_obj[id - 1]) >> shift) & (ways - 1);
                if (tails[k])
                    g_obj[tails[k] - 1].hash_next = id;
                else
                    heads[k] = id;
                tails[k] = id;
            }
            for (uint32_t k = 0; k < ways; k++) {
                if (tails[k])
                    g_obj[tails[k] - 1].hash_next = 0;
                g_obj_buckets[b + k * n] = heads[k];
            }
        }
        __atomic_store_n(&g_obj_bucket_mask, ways * n - 1, __ATOMIC_RELAXED);
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
static uint32_t slot_alloc(void)
{
    uint32_t h = t.cache_head;
    if (h) {
        t.cache_head = g_obj[h - 1].hash_next;
        t.cache_count--;
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
            /* objects_used bounds the live count: grow the index before its chains get long
             * (no stripe is held here; callers may hold the mm or pcpu lock, which come first) */
            uint32_t buckets = __atomic_load_n(&g_obj_bucket_mask, __ATOMIC_RELAXED) + 1;
            if (unlikely(end > INDEX_LOAD * buckets) && buckets < g_obj_bucket_max)
                obj_index_grow();
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

/* ---- object lifetime --------------------------------------------------------------------------- */
struct objinfo {
    uint64_t pointer, size, seq, time_ns;
    uint32_t trace_id, comm_id, flags, transient_gen;
    int32_t tid, min_count;
};

/* the allocation context: trace, time, thread, comm, a new sequence number */
static inline __attribute__((always_inline)) void current_context(struct objinfo *oi)
{
    oi->trace_id = capture_trace();
    oi->time_ns = now_ns();
    oi->tid = cur_tid();
    oi->comm_id = cur_comm();
    oi->seq = __atomic_fetch_add(&g_hdr->alloc_seq, 1, __ATOMIC_RELAXED);
    oi->transient_gen = 0;
}

/* create_object: a LIVE record, indexed by pointer; slot index or UINT32_MAX */
static uint32_t create_object(const struct objinfo *oi)
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

    uint32_t h = hash_ptr(oi->pointer, kind_is_pcpu(oi->flags & KML_KIND_MASK));
    uint32_t *l = obj_stripe(h);
    spin_lock(l);
    uint32_t *bucket = obj_bucket(h);
    o->hash_next = *bucket;
    *bucket = idx + 1;
    spin_unlock(l);
    live_count(1);
    return idx;
}

static inline int obj_matches(const struct kml_object *o, uint64_t ptr, uint32_t kinds)
{
    return o->pointer == ptr && (o->state & KML_STATE_KIND_MASK) == KML_STATE_LIVE &&
           (kinds & KIND_BIT(o->flags & KML_KIND_MASK));
}

/* delete_object: unindex and release the record of ptr; copies it to *save; 1 if found */
static int delete_object(uint64_t ptr, int pcpu, uint32_t kinds, struct kml_object *save)
{
    uint32_t h = hash_ptr(ptr, pcpu);
    uint32_t *l = obj_stripe(h);
    spin_lock(l);
    uint32_t *link = obj_bucket(h);
    for (uint32_t id = *link; id; link = &g_obj[id - 1].hash_next, id = *link) {
        struct kml_object *o = &g_obj[id - 1];
        if (!obj_matches(o, ptr, kinds))
            continue;
        *link = o->hash_next;
        if (save)
            *save = *o;
        rec_write_begin(&o->state);
        rec_write_end(&o->state, KML_STATE_FREE);
        spin_unlock(l);
        live_count(-1);
        slot_free(id - 1);
        return 1;
    }
    spin_unlock(l);
    return 0;
}

/* runs fn on the LIVE record of ptr under its stripe lock, as one seqlock write; 1 if found */
typedef void (*modify_fn)(struct kml_object *o, uintptr_t arg);
static int modify_object(uint64_t ptr, int pcpu, uint32_t kinds, modify_fn fn, uintptr_t arg)
{
    uint32_t h = hash_ptr(ptr, pcpu);
    uint32_t *l = obj_stripe(h);
    spin_lock(l);
    for (uint32_t id = *obj_bucket(h); id; id = g_obj[id - 1].hash_next) {
        struct kml_object *o = &g_obj[id - 1];
        if (!obj_matches(o, ptr, kinds))
            continue;
        rec_write_begin(&o->state);
        fn(o, arg);
        rec_write_end(&o->state, KML_STATE_LIVE);
        spin_unlock(l);
        return 1;
    }
    spin_unlock(l);
    return 0;
}

/* the start of the LIVE plain object containing ptr (exact match first, then a table walk) */
static int find_containing(uint64_t ptr, uint64_t *start, uint64_t *size, uint32_t *kind)
{
    uint32_t h = hash_ptr(ptr, 0);
    uint32_t *l = obj_stripe(h);
    spin_lock(l);
    for (uint32_t id = *obj_bucket(h); id; id = g_obj[id - 1].hash_next) {
        struct kml_object *o = &g_obj[id - 1];
        if (obj_matches(o, ptr, PLAIN_KINDS)) {
            *start = o->pointer;
            *size = o->size;
            *kind = o->flags & KML_KIND_MASK;
            spin_unlock(l);
            return 1;
        }
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
        oi.seq = __atomic_fetch_add(&g_hdr->alloc_seq, 1, __ATOMIC_RELAXED);
    uint32_t idx = create_object(&oi);
    if (idx != UINT32_MAX)
        mm_list_add(idx);
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
static inline __attribute__((always_inline)) void track_alloc(void *p, size_t size)
{
    struct objinfo oi;
    current_context(&oi);
    oi.pointer = (uint64_t)(uintptr_t)p;
    oi.size = size;
    oi.flags = KML_KIND_MALLOC;
    oi.min_count = 1;
    create_object(&oi);
}

static inline void untrack_free(void *p)
{
    delete_object((uint64_t)(uintptr_t)p, 0, KIND_BIT(KML_KIND_MALLOC), NULL);
}

EXPORT void *malloc(size_t size)
{
    void *p = __libc_malloc(size);
    if (likely(p != NULL) && tracking_enter()) {
        /* the bucket line arrives while we unwind */
        __builtin_prefetch(&g_obj_buckets[hash_ptr((uintptr_t)p, 0) & __atomic_load_n(&g_obj_bucket_mask, __ATOMIC_RELAXED)], 1, 3);
        track_alloc(p, size);
        tracking_leave();
    }
    return p;
}

EXPORT void free(void *p)
{
    if (!p)
        return;
    if (tracking_enter()) {
        untrack_free(p);
        tracking_leave();
    }
    __libc_free(p);
}

EXPORT void *calloc(size_t n, size_t size)
{
    void *p = __libc_calloc(n, size);
    if (likely(p != NULL) && tracking_enter()) {
        track_alloc(p, n * size);
        tracking_leave();
    }
    return p;
}

EXPORT void *realloc(void *old, size_t size)
{
    if (!old)
        return malloc(size);
    if (!tracking_enter())
        return __libc_realloc(old, size);
    /* unindex first: once glibc has released old, another thread may get the same address */
    struct kml_object saved;
    int had = delete_object((uint64_t)(uintptr_t)old, 0, KIND_BIT(KML_KIND_MALLOC), &saved);
    void *p = __libc_realloc(old, size);
    if (p) {
        track_alloc(p, size);
    } else if (had && size) {
        /* failed: old is still allocated, put its record back */
        struct objinfo oi = {saved.pointer, saved.size, saved.seq, saved.time_ns, saved.trace_id,
                             saved.comm_id, saved.flags, saved.transient_gen, saved.tid,
                             saved.min_count};
        create_object(&oi);
    }
    tracking_leave();
    return p;
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

static inline void *track_aligned(void *p, size_t size)
{
    if (likely(p != NULL) && tracking_enter()) {
        track_alloc(p, size);
        tracking_leave();
    }
    return p;
}

EXPORT void *memalign(size_t align, size_t size) { return track_aligned(__libc_memalign(align, size), size); }

EXPORT void *aligned_alloc(size_t align, size_t size)
{
    return track_aligned(__libc_memalign(align, size), size);
}

EXPORT int posix_memalign(void **out, size_t align, size_t size)
{
    if (align % sizeof(void *) != 0 || (align & (align - 1)) != 0 || align == 0)
        return EINVAL;
    int saved = errno;
    void *p = __libc_memalign(align, size);
    if (!p) {
        errno = saved;
        return ENOMEM;
    }
    *out = track_aligned(p, size);
    return 0;
}

EXPORT void *valloc(size_t size) { return track_aligned(__libc_valloc(size), size); }

EXPORT void *pvalloc(size_t size) { return track_aligned(__libc_pvalloc(size), PAGE_ALIGN(size ? size : 1)); }

/* ---- mmap family ------------------------------------------------------------------------------ */
static inline int mapping_tracked(int prot, int flags)
{
    return (flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_PRIVATE && (prot & PROT_WRITE);
}

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
            if (mapping_tracked(prot, flags)) {
                struct objinfo ctx;
                current_context(&ctx);
                track_mapping((uintptr_t)p, PAGE_ALIGN(len), &ctx, 1);
            }
        }
        spin_unlock(&g_mm_lock);
        return p;
    }
    p = raw_mmap(addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED && mapping_tracked(prot, flags)) {
        struct objinfo ctx;
        current_context(&ctx);
        spin_lock(&g_mm_lock);
        track_mapping((uintptr_t)p, PAGE_ALIGN(len), &ctx, 1);
        spin_unlock(&g_mm_lock);
    }
    return p;
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
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
            int tracked = keep_old ? (i >= 0) : mm_unmap_range(o, o + olen);
            if (flags & MREMAP_FIXED)
                mm_unmap_range(n, n + nlen);
            if (tracked) {
                struct objinfo ctx;
                current_context(&ctx);
                track_mapping(n, nlen, &ctx, 1);
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

static void thread_register(int is_main)
{
    uint64_t stack_lo = 0, stack_hi = 0;
    if (!is_main) {
        pthread_attr_t attr;
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            void *addr;
            size_t size;
            if (pthread_attr_getstack(&attr, &addr, &size) == 0) {
                stack_lo = (uintptr_t)addr;
                stack_hi = (uintptr_t)addr + size;
            }
            pthread_attr_destroy(&attr);
        }
    }
    spin_lock(&g_thr_lock);
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
    spin_unlock(&g_thr_lock);

    char name[KML_COMM_LEN + 1];
    memset(name, 0, sizeof(name));
    syscall(SYS_prctl, PR_GET_NAME, name, 0, 0, 0);
    struct kml_thread *th = &g_thr[idx];
    rec_write_begin(&th->state);
    th->tid = cur_tid();
    th->stack_lo = stack_lo;
    th->stack_hi = stack_hi;
    tls_range(&th->tls_lo, &th->tls_hi);
    memcpy(th->comm, name, KML_COMM_LEN);
    rec_write_end(&th->state, KML_STATE_LIVE);
    g_thr_ptid[idx] = pthread_self();
    t.thread_slot = (int)idx + 1;
    if (!is_main)
        pthread_setspecific(g_thread_key, (void *)1);
}

static void thread_unregister(void)
{
    if (!t.thread_slot || !g_thr)
        return;
    uint32_t idx = (uint32_t)t.thread_slot - 1;
    t.thread_slot = 0;
    struct kml_thread *th = &g_thr[idx];
    spin_lock(&g_thr_lock); /* a rename from another thread writes the record under this lock */
    rec_write_begin(&th->state);
    rec_write_end(&th->state, KML_STATE_FREE);
    g_thr_ptid[idx] = 0;
    g_thr_free[g_thr_free_count++] = idx;
    spin_unlock(&g_thr_lock);
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

/* pthread key destructor: runs on return, pthread_exit and cancellation */
static void thread_exit_dtor(void *v)
{
    (void)v;
    int was = t.in_shim;
    t.in_shim = 1;
    thread_unregister();
    if (g_obj)
        slot_cache_flush();
    t.exiting = 1;
    t.in_shim = was;
}

struct start_arg {
    void *(*fn)(void *);
    void *arg;
};

static void *thread_start(void *p)
{
    struct start_arg a = *(struct start_arg *)p;
    __libc_free(p);
    t.tid = 0;
    if (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) == ST_ON && !t.in_shim) {
        t.in_shim = 1;
        thread_register(0);
        t.in_shim = 0;
    }
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
    struct start_arg *a = (struct start_arg *)__libc_malloc(sizeof(*a));
    if (!a)
        return real_pthread_create(th, attr, fn, arg);
    a->fn = fn;
    a->arg = arg;
    int r = real_pthread_create(th, attr, thread_start, a);
    if (r)
        __libc_free(a);
    return r;
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
        !delete_object(p, 0, KIND_BIT(KML_KIND_MALLOC), NULL)) {
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
            if (delete_object(start, 0, KIND_BIT(kind), &saved)) {
                struct objinfo oi;
                current_context(&oi);
                oi.flags = kind;
                oi.min_count = saved.min_count;
                uint64_t end = start + osize;
                if (p > start) {
                    oi.pointer = start;
                    oi.size = p - start;
                    create_object(&oi);
                    oi.seq = __atomic_fetch_add(&g_hdr->alloc_seq, 1, __ATOMIC_RELAXED);
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
    modify_object((uintptr_t)ptr, pcpu, pcpu ? PCPU_KINDS : PLAIN_KINDS, fn, arg);
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
    modify_object((uintptr_t)ptr, 0, PLAIN_KINDS, set_trace, id);
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
    uint32_t h = hash_ptr(start, 0);
    uint32_t *l = obj_stripe(h);
    spin_lock(l);
    for (uint32_t id = *obj_bucket(h); id; id = g_obj[id - 1].hash_next) {
        struct kml_object *o = &g_obj[id - 1];
        if (!obj_matches(o, start, PLAIN_KINDS))
            continue;
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
        rec_write_begin(&o->state);
        o->flags |= flag;
        rec_write_end(&o->state, KML_STATE_LIVE);
        break;
    }
    spin_unlock(l);
out:
    tracking_leave();
}

/* ---- rendezvous file ------------------------------------------------------------------------------ */
static uint64_t proc_start_time(void)
{
    char buf[1024];
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = (ssize_t)syscall(SYS_read, fd, buf, sizeof(buf) - 1);
    syscall(SYS_close, fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    /* p -> ") S ppid ..." : field 3 starts at p+2; field 22 is 19 fields further */
    p += 2;
    for (int f = 3; f < 22 && *p; p++)
        if (*p == ' ')
            f++;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9')
        v = v * 10 + (uint64_t)(*p++ - '0');
    return v;
}

static void rendezvous_write(void)
{
    pid_t pid = (pid_t)syscall(SYS_getpid);
    char dir[400];
    size_t dl = 0;
    dir[0] = 0;
    dl = str_cat(dir, dl, sizeof(dir), g_run_dir);
    mkdir(dir, 0755); /* if missing and possible */
    char path[512], tmp[512], line[256];
    size_t pl = 0, tl = 0, ll = 0;
    path[0] = tmp[0] = line[0] = 0;
    pl = str_cat(path, pl, sizeof(path), dir);
    pl = str_cat(path, pl, sizeof(path), "/");
    pl = num_cat(path, pl, sizeof(path), (uint64_t)pid, 0);
    pl = str_cat(path, pl, sizeof(path), KML_RENDEZVOUS_SUFFIX);
    tl = str_cat(tmp, tl, sizeof(tmp), dir);
    tl = str_cat(tmp, tl, sizeof(tmp), "/.");
    tl = num_cat(tmp, tl, sizeof(tmp), (uint64_t)pid, 0);
    tl = str_cat(tmp, tl, sizeof(tmp), ".client.tmp");
    ll = str_cat(line, ll, sizeof(line), "pid=");
    ll = num_cat(line, ll, sizeof(line), (uint64_t)pid, 0);
    ll = str_cat(line, ll, sizeof(line), " fd=");
    ll = num_cat(line, ll, sizeof(line), (uint64_t)g_memfd, 0);
    ll = str_cat(line, ll, sizeof(line), " addr=");
    ll = num_cat(line, ll, sizeof(line), (uint64_t)(uintptr_t)g_hdr, 1);
    ll = str_cat(line, ll, sizeof(line), " size=");
    ll = num_cat(line, ll, sizeof(line), g_total, 0);
    ll = str_cat(line, ll, sizeof(line), " start=");
    ll = num_cat(line, ll, sizeof(line), g_hdr->start_time, 0);
    ll = str_cat(line, ll, sizeof(line), "\n");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return; /* no run dir: the daemon can still find the memfd in /proc/<pid>/maps */
    ssize_t w = write(fd, line, ll);
    close(fd);
    if (w != (ssize_t)ll || rename(tmp, path) != 0) {
        unlink(tmp);
        return;
    }
    memcpy(g_rendezvous_path, path, pl + 1);
    g_rendezvous_pid = pid;
}

static void rendezvous_remove(void)
{
    if (g_rendezvous_pid && g_rendezvous_pid == (pid_t)syscall(SYS_getpid)) {
        unlink(g_rendezvous_path);
        g_rendezvous_pid = 0;
    }
}

/* ---- the table ---------------------------------------------------------------------------------- */
static int phdr_cb(struct dl_phdr_info *info, size_t sz, void *data)
{
    (void)sz;
    uintptr_t self = (uintptr_t)data;
    int mine = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (self >= lo && self < hi)
            mine = 1;
    }
    if (!mine)
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

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

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

static int table_create(void)
{
    g_obj_cap = (uint32_t)env_u64("KMEMLEAK_MAX_OBJECTS", DEFAULT_MAX_OBJECTS, 1024, 1u << 30);
    g_tr_cap = (uint32_t)env_u64("KMEMLEAK_MAX_TRACES", DEFAULT_MAX_TRACES, 256, 1u << 28);
    g_thr_cap = (uint32_t)env_u64("KMEMLEAK_MAX_THREADS", DEFAULT_MAX_THREADS, 16, 1u << 20);
    g_comm_cap = DEFAULT_MAX_COMMS;
    g_reg_cap = DEFAULT_MAX_REGIONS;
    g_area_cap = (uint32_t)env_u64("KMEMLEAK_MAX_AREAS", DEFAULT_MAX_AREAS, 16, 1u << 24);

    size_t off = round_up(sizeof(struct kml_header), PAGE_SIZE_);
    size_t obj_off = off;
    off = round_up(off + (size_t)g_obj_cap * sizeof(struct kml_object), PAGE_SIZE_);
    size_t tr_off = off;
    off = round_up(off + (size_t)g_tr_cap * sizeof(struct kml_trace), PAGE_SIZE_);
    size_t thr_off = off;
    off = round_up(off + (size_t)g_thr_cap * sizeof(struct kml_thread), PAGE_SIZE_);
    size_t comm_off = off;
    off = round_up(off + (size_t)g_comm_cap * KML_COMM_LEN, PAGE_SIZE_);
    size_t reg_off = off;
    off = round_up(off + (size_t)g_reg_cap * sizeof(struct kml_region), PAGE_SIZE_);
    size_t area_off = off;
    off = round_up(off + (size_t)g_area_cap * sizeof(struct kml_area), PAGE_SIZE_);
    g_total = off;

    int fd = (int)syscall(SYS_memfd_create, KML_MEMFD_NAME, MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    if (syscall(SYS_ftruncate, fd, (off_t)g_total) != 0) {
        syscall(SYS_close, fd);
        return -1;
    }
    void *m = raw_mmap(NULL, g_total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (m == MAP_FAILED) {
        syscall(SYS_close, fd);
        return -1;
    }
    g_memfd = fd;
    remember_memfd(fd);
    g_hdr = (struct kml_header *)m;
    g_obj = (struct kml_object *)((char *)m + obj_off);
    g_tr = (struct kml_trace *)((char *)m + tr_off);
    g_thr = (struct kml_thread *)((char *)m + thr_off);
    g_comm = (char *)m + comm_off;
    g_reg = (struct kml_region *)((char *)m + reg_off);
    g_area = (struct kml_area *)((char *)m + area_off);

    struct kml_header *h = g_hdr;
    h->magic = KML_MAGIC;
    h->version = KML_ABI_VERSION;
    h->header_size = sizeof(struct kml_header);
    h->total_size = g_total;
    h->pid = (int32_t)syscall(SYS_getpid);
    h->start_time = proc_start_time();
    h->nr_cpu_ids = kmemleak_nr_cpu_ids();
    long tck = sysconf(_SC_CLK_TCK);
    h->clk_tck = (uint32_t)(tck > 0 ? tck : 100);
    h->created_ns = now_ns();
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

    /* private index */
    /* bucket reservations for a quarter of the capacities (chains of 4 when full); the indexes use
     * only their first 4096 (objects) and 1024 (traces) buckets until they grow */
    uint32_t obj_buckets = pow2_at_least(g_obj_cap / 4);
    uint32_t tr_buckets = pow2_at_least(g_tr_cap / 4);
    if (obj_buckets < NR_STRIPES)
        obj_buckets = NR_STRIPES;
    g_batch_cap = g_obj_cap + 64; /* worst case: chains of one slot */
    size_t p = 0;
    size_t ob_off = p;
    p = round_up(p + (size_t)obj_buckets * 4, PAGE_SIZE_);
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
    g_priv_size = p;
    void *pm = raw_mmap(NULL, g_priv_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (pm == MAP_FAILED)
        return -1;
    /* the hash buckets are accessed at random: huge pages spare the TLB (not the lists) */
    syscall(SYS_madvise, pm, mm_off, MADV_HUGEPAGE);
    /* a forked child starts with zeroed (unlocked) stripes, and fork() leaves the parent's stripe
     * pages writable: neither side copies them when it next takes a lock */
    g_stripes_wiped = syscall(SYS_madvise, (char *)pm + st_off, tb_off - st_off, MADV_WIPEONFORK) == 0;
    g_priv = pm;
    g_obj_buckets = (uint32_t *)((char *)pm + ob_off);
    g_obj_bucket_max = obj_buckets;
    g_obj_bucket_mask = NR_STRIPES - 1;
    g_stripes = (uint32_t *)((char *)pm + st_off);
    g_tr_buckets = (uint32_t *)((char *)pm + tb_off);
    g_tr_bucket_max = tr_buckets;
    g_tr_bucket_mask = (tr_buckets < TR_BUCKETS_MIN ? tr_buckets : TR_BUCKETS_MIN) - 1;
    g_mm_slots = (uint32_t *)((char *)pm + mm_off);
    g_thr_free = (uint32_t *)((char *)pm + tf_off);
    g_batches = (uint32_t *)((char *)pm + ba_off);
    g_thr_ptid = (pthread_t *)((char *)pm + pt_off);

    /* the shim's own memory is never a root */
    region_add(KML_REGION_SHIM_PRIVATE, (uintptr_t)m, g_total, 0, 0, 0);
    region_add(KML_REGION_SHIM_PRIVATE, (uintptr_t)pm, g_priv_size, 0, 0, 0);
    return 0;
}

/* ---- fork: the child gets its own table -------------------------------------------------------
 * Lock order (every nested acquisition in this file follows it): mm, pcpu, thr, comm, reg, depot,
 * batch, stripes, area. */
static void lock_all(void)
{
    spin_lock(&g_mm_lock);
    spin_lock(&g_pcpu_lock);
    spin_lock(&g_thr_lock);
    spin_lock(&g_comm_lock);
    spin_lock(&g_reg_lock);
    spin_lock(&g_depot_lock);
    spin_lock(&g_batch_lock);
    for (uint32_t i = 0; i < NR_STRIPES; i++)
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

static int g_fork_locked, g_fork_nested;
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
    int fd = (int)syscall(SYS_memfd_create, KML_MEMFD_NAME, MFD_CLOEXEC);
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

static void atfork_prepare(void)
{
    if (t.in_shim) {
        /* fork from a signal handler that interrupted the shim: our locks may be held by this very
         * thread, so they cannot be taken; the child will not track (see atfork_child) */
        g_fork_nested = 1;
        t.in_shim++;
        return;
    }
    t.in_shim++;
    if (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) == ST_ON && g_priv) {
        lock_all();
        g_fork_locked = 1;
        g_fork_fd = table_snapshot();
    }
}

static void atfork_parent(void)
{
    g_fork_nested = 0;
    if (g_fork_locked) {
        g_fork_locked = 0;
        if (g_fork_fd >= 0)
            syscall(SYS_close, g_fork_fd);
        g_fork_fd = -1;
        unlock_all(1);
    }
    t.in_shim--;
}

static void atfork_child(void)
{
    t.tid = 0;
    g_rendezvous_pid = 0;
    if (g_fork_nested) {
        /* the table mapping is still the parent's: detach before anything can write to it */
        g_fork_nested = 0;
        g_hdr = NULL;
        if (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) == ST_ON)
            kml_disable("fork from a signal handler inside the shim");
        t.in_shim--;
        return;
    }
    if (!g_fork_locked) {
        t.in_shim--;
        return;
    }
    g_fork_locked = 0;
    unlock_all(!g_stripes_wiped);
    int old_tid_slot = t.thread_slot;
    int fd = g_fork_fd;
    g_fork_fd = -1;
    /* the snapshot replaces the parent's mapping at the same address */
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
        t.in_shim--;
        return;
    }
    if (still_our_memfd(g_memfd)) /* the parent's memfd, unless the program closed and reused it */
        syscall(SYS_close, g_memfd);
    g_memfd = fd;
    remember_memfd(fd);
    struct kml_header *h = g_hdr;
    h->pid = (int32_t)syscall(SYS_getpid);
    h->start_time = proc_start_time();
    h->daemon_pid = 0;
    h->daemon_scans = 0;
    /* only the forking thread exists in the child */
    int others = 0;
    g_thr_free_count = 0;
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
            g_thr_free[g_thr_free_count++] = i;
        }
    }
    /* writers that vanished with the other threads: clear their BUSY bits. Alone, the forking
     * thread was not inside the shim, so no record can be BUSY: the pages need not be touched. */
    if (others)
        for (uint32_t i = 0; i < h->objects_used; i++)
            if (g_obj[i].state & KML_STATE_BUSY)
                g_obj[i].state &= ~KML_STATE_BUSY;
    /* the new table mapping is the same range: its SHIM_PRIVATE region stays valid */
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
    else if (uw && !strcmp(uw, "none"))
        g_unwinder = UNWIND_NONE;
    g_run_dir = getenv("KMEMLEAK_RUN_DIR");
    if (!g_run_dir || !*g_run_dir || str_len(g_run_dir) > 300)
        g_run_dir = KML_DEFAULT_RUN_DIR;

    if (table_create() != 0) {
        t.in_shim = 0;
        kml_disable("cannot create the shared table");
        return;
    }
    dl_iterate_phdr(phdr_cb, (void *)(uintptr_t)&kml_init); /* the shim's writable segments */
    kml_init_tls_info();
    resolve_pthread();
    if (pthread_key_create(&g_thread_key, thread_exit_dtor) != 0) {
        t.in_shim = 0;
        kml_disable("pthread_key_create failed");
        return;
    }
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    if (syscall(SYS_gettid) == syscall(SYS_getpid))
        thread_register(1);
    /* libunwind's DWARF cache per thread (in its TLS): the global one takes a lock on every miss
     * of the per-thread frame cache that unw_backtrace tries first */
    if (g_unwinder == UNWIND_LIBUNWIND)
        unw_set_caching_policy(unw_local_addr_space, UNW_CACHE_PER_THREAD);
    /* warm the unwinder up (its first call may allocate: untracked here) */
    capture_trace();
    rendezvous_write();
    __atomic_store_n(&g_hdr->flags, KML_TABLE_TRACKING, __ATOMIC_RELEASE);
    __atomic_store_n(&g_state, ST_ON, __ATOMIC_RELEASE);
    t.in_shim = 0;
}

__attribute__((destructor)) static void kml_exit(void) { rendezvous_remove(); }
