/*
 * kmemleak_abi.h - the shared table between libkmemleak.so (writer, inside every client process)
 * and kmemleakd (reader). One versioned layout; bump KML_ABI_VERSION on any change.
 *
 * Two kinds of table, one layout (KML_TABLE_PRIVATE tells them apart):
 * - private (the shim's default when it has a run directory): private anonymous memory of the client,
 *   one mapping between two PROT_NONE guard pages, so fork() gives the child a copy-on-write copy for
 *   free (the child fixes pid, start_time, daemon_* and its threads, then announces itself). The
 *   daemon checks in /proc/<pid>/maps that the announced range is exactly one private anonymous
 *   mapping and reads it with process_vm_readv, only pages /proc/<pid>/pagemap shows present (or
 *   swapped) and anonymous: never a page of a file (a FUSE server could block the reader).
 * - memfd: a memfd named "kmemleak-table..." that the client maps MAP_SHARED (without a usable run
 *   directory, or KMEMLEAK_TABLE=memfd); the daemon opens /proc/<pid>/map_files/<start>-<end> (or
 *   /proc/<pid>/fd/<fd>) and reads it with pread. A forked child gets a snapshot in a new memfd.
 * The client announces its table with a rendezvous file $KMEMLEAK_RUN_DIR/<pid>.client (below)
 * so that a daemon that starts later, or restarts, can adopt the client with its whole history. A
 * forked child of a private table writes none: the daemon finds it in /proc (its copy of the table at
 * the parent's address, its own pid in the header, KML_TABLE_RUN_DIR naming the run directory).
 *
 * Concurrency: records are written by client threads while the daemon reads them. Every record
 * with a `state` word is a seqlock: a writer sets KML_STATE_BUSY (CAS), writes the fields, then
 * stores the state with KML_STATE_BUSY clear and the version incremented (release). A reader
 * loads the state (acquire), skips it while BUSY, copies the fields, and re-loads the state; a
 * different value means the copy is torn and must be retried or skipped.
 *
 * Fields marked (atomic) are accessed with __atomic builtins on both sides (no _Atomic qualifier,
 * so that Swift imports the structs). kml_load_acquire_* below are the readers' loads.
 *
 * The daemon treats every byte as untrusted: offsets, capacities, counts and ids are validated.
 */
#ifndef KMEMLEAK_ABI_H
#define KMEMLEAK_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KML_MAGIC 0x313050414d4c4d4bULL /* "KMLMAP01" little-endian */
#define KML_ABI_VERSION 2u
#define KML_MAX_TRACE 16u
#define KML_COMM_LEN 16u
/* The memfd is named KML_MEMFD_NAME ":<st_dev hex>:<st_ino hex>" of the client's run directory (plain
 * KML_MEMFD_NAME when it had none it could use): a daemon finding tables in /proc adopts its own. */
#define KML_MEMFD_NAME "kmemleak-table"
#define KML_DEFAULT_RUN_DIR "/run/kmemleak"
/* Rendezvous file $RUN_DIR/<pid>.client, one line of text, written atomically (tmp + rename):
 * "pid=<pid> fd=<fd> addr=<hex start of the mapping> size=<bytes> start=<starttime of /proc/pid/stat>\n"
 * (fd=-1 for a private table)
 * or $RUN_DIR/<pid>.<16 hex digits>.client when <pid>.client is another user's file (a squatter). */
#define KML_RENDEZVOUS_SUFFIX ".client"

/* ---- state words (objects, threads, regions, areas) ---------------------------------------- */
#define KML_STATE_KIND_MASK 0x3u
#define KML_STATE_FREE 0x0u     /* slot unused (or released) */
#define KML_STATE_LIVE 0x1u     /* slot holds a live record */
#define KML_STATE_BUSY 0x4u     /* a writer is changing the record: readers retry/skip */
#define KML_STATE_VERSION_SHIFT 3u /* bits 3..31: version, incremented on every write */

/* ---- header flags ---------------------------------------------------------------------------- */
#define KML_TABLE_TRACKING 0x1u /* set while the client tracks; cleared when tracking is off */
#define KML_TABLE_DISABLED 0x2u /* tracking turned off by an error (reason in disabled_reason) */
#define KML_TABLE_ENV_OFF 0x4u  /* KMEMLEAK=off: the table exists but nothing is tracked */
#define KML_TABLE_FOREIGN_MALLOC 0x8u /* malloc is not glibc's (jemalloc, ...): tracked through it */
/* `userfaultfd` holds the number of a userfaultfd the client created for the daemon (write tracking:
 * UFFD_USER_MODE_ONLY, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, nothing registered by the
 * client). Added compatibly in version 2: an older shim leaves the flag and the field 0. */
#define KML_TABLE_USERFAULTFD 0x10u
/* The table is the client's private anonymous memory (see the top of this file), not a memfd. Added
 * compatibly in version 2: a daemon without it cannot open such a table (no memfd) and adopts nothing. */
#define KML_TABLE_PRIVATE 0x20u
/* run_dir_dev/run_dir_ino_* hold the identity (st_dev, st_ino) of the run directory the client announces
 * itself in: a daemon that finds private tables in /proc (a forked child writes no rendezvous file)
 * adopts only those of its own run directory, as it does memfds by their name. A claim, not a proof: it
 * only decides which daemon adopts the process, and only as itself. Set before the magic, inherited by
 * forked children. Added compatibly in version 2 (the fields were reserved, 0): an older shim leaves
 * the flag 0. */
#define KML_TABLE_RUN_DIR 0x40u

/* ---- object kinds (low 4 bits of kml_object.flags) ------------------------------------------- */
#define KML_KIND_MASK 0xfu
#define KML_KIND_MALLOC 0x0u        /* malloc family, min_count 1 */
#define KML_KIND_MMAP 0x1u          /* anonymous private mmap by the program (the vmalloc twin) */
#define KML_KIND_PERCPU 0x2u        /* __alloc_percpu handle (pointer = handle; size = per-CPU size) */
#define KML_KIND_CUSTOM 0x3u        /* kmemleak_alloc() by a custom allocator */
#define KML_KIND_CUSTOM_PERCPU 0x4u /* kmemleak_alloc_percpu() by a foreign per-CPU allocator */

/* ---- object flags (annotations); min_count carries not_leak (0) and ignore (-1) -------------- */
#define KML_OBJ_NO_SCAN 0x10u   /* kmemleak_no_scan / kmemleak_ignore: contents not scanned */
#define KML_OBJ_HAS_AREAS 0x20u /* kmemleak_scan_area registered at least one area */
#define KML_OBJ_FULL_SCAN 0x40u /* a scan area could not be stored: scan the whole object */

/* Header at offset 0 of the table. All offsets are from the start of the table. */
struct kml_header {
    uint64_t magic;        /* KML_MAGIC, stored last: 0 while the shim writes the header */
    uint32_t version;      /* KML_ABI_VERSION */
    uint32_t header_size;  /* sizeof(struct kml_header) */
    uint64_t total_size;   /* size of the table (the memfd, the private mapping) in bytes */
    int32_t pid;           /* owning process (getpid()) */
    uint32_t flags;        /* KML_TABLE_* */
    uint64_t start_time;   /* field 22 of /proc/<pid>/stat: detects pid reuse */
    uint32_t nr_cpu_ids;   /* highest possible CPU id + 1 */
    uint32_t clk_tck;      /* sysconf(_SC_CLK_TCK), the "jiffies" unit of reports */
    uint64_t created_ns;   /* CLOCK_BOOTTIME when the table was created */

    /* objects: one record per tracked allocation; slots [0, objects_used) have been used */
    uint64_t objects_offset;
    uint32_t objects_capacity;
    uint32_t object_size;             /* sizeof(struct kml_object) */
    uint32_t objects_used;    /* (atomic) high-water mark of slots ever used */
    int32_t userfaultfd;      /* valid with KML_TABLE_USERFAULTFD (set before the flag, release) */

    /* stack depot: immutable traces; trace id N (1-based) is entry N-1 */
    uint64_t traces_offset;
    uint32_t traces_capacity;
    uint32_t trace_size;              /* sizeof(struct kml_trace) */
    uint32_t traces_used;
    uint32_t run_dir_dev;     /* with KML_TABLE_RUN_DIR: st_dev of the run directory (Linux's 32-bit encoding) */

    /* threads: live threads with their stack and static TLS ranges */
    uint64_t threads_offset;
    uint32_t threads_capacity;
    uint32_t thread_size;             /* sizeof(struct kml_thread) */
    uint32_t threads_used;
    uint32_t run_dir_ino_lo;  /* with KML_TABLE_RUN_DIR: st_ino of the run directory, low 32 bits */

    /* comm strings (16 bytes each, NUL padded); comm id N (1-based) is entry N-1 */
    uint64_t comms_offset;
    uint32_t comms_capacity;
    uint32_t comm_size;               /* KML_COMM_LEN */
    uint32_t comms_used;
    uint32_t run_dir_ino_hi;  /* with KML_TABLE_RUN_DIR: st_ino of the run directory, high 32 bits */

    /* regions: per-CPU layouts and the shim's own memory (never a root) */
    uint64_t regions_offset;
    uint32_t regions_capacity;
    uint32_t region_size;             /* sizeof(struct kml_region) */
    uint32_t regions_used;
    uint32_t reserved4;

    /* scan areas (kmemleak_scan_area) */
    uint64_t areas_offset;
    uint32_t areas_capacity;
    uint32_t area_size;               /* sizeof(struct kml_area) */
    uint32_t areas_used;
    uint32_t reserved5;

    uint64_t alloc_seq;       /* next allocation sequence number (allocation order) */
    uint64_t live_objects;    /* number of LIVE object records, approximate: each client thread adds
                                 its changes in batches (within 64 per thread) */

    /* written only by the daemon */
    int32_t daemon_pid;       /* pid of the daemon that adopted this table, 0 if none */
    uint32_t reserved6;
    uint64_t daemon_scans;    /* scans the daemon has run over this client */

    char disabled_reason[128];        /* NUL-terminated, set with KML_TABLE_DISABLED */
};

/* One tracked object. 64 bytes. */
struct kml_object {
    uint32_t state;   /* KML_STATE_* | version << KML_STATE_VERSION_SHIFT */
    uint32_t hash_next;       /* shim-private link (lists of free slots); meaningless to readers */
    uint64_t pointer;         /* start address (per-CPU: the handle) */
    uint64_t size;            /* bytes (mmap: page-aligned length; per-CPU: size of one copy) */
    uint64_t seq;             /* allocation order, unique for the life of the process */
    uint64_t time_ns;         /* CLOCK_BOOTTIME at creation */
    uint32_t trace_id;        /* 1-based stack depot id, 0 = no trace */
    int32_t tid;              /* allocating thread id */
    int32_t min_count;        /* 1 normally; 0 not_leak; -1 ignore; custom allocators: theirs */
    uint32_t flags;           /* KML_KIND_* | KML_OBJ_* */
    uint32_t comm_id;         /* 1-based comm id, 0 = unknown */
    uint32_t transient_gen;   /* incremented by kmemleak_transient_leak() */
};

/* One stack-depot entry. Immutable once `len` has been published (release store). */
struct kml_trace {
    uint32_t len;     /* number of frames, published last; 0 = not yet written */
    uint32_t hash;
    uint32_t next;            /* shim-private hash chain link */
    uint32_t reserved;
    uint64_t frames[KML_MAX_TRACE];
};

/* One thread. stack_* = 0 for the main thread (the daemon uses [stack] from /proc/pid/maps).
 * A record lives until the thread is gone for good: a thread whose task has exited keeps its
 * record until it is joined (joinable: only its TCB [tls_lo + tcb_offset, tls_hi) is a root, it
 * holds the value the thread returned) or until the shim notices (detached: no roots at all). */
#define KML_THREAD_DETACHED 0x1u      /* created detached or pthread_detach'ed */
struct kml_thread {
    uint32_t state;
    int32_t tid;
    uint64_t stack_lo, stack_hi;  /* [lo, hi) */
    uint64_t tls_lo, tls_hi;      /* static TLS block and thread control block */
    char comm[KML_COMM_LEN];
    uint32_t flags;               /* KML_THREAD_* */
    uint32_t tcb_offset;          /* thread pointer - tls_lo: where struct pthread starts */
};

#define KML_REGION_PERCPU 0x1u      /* per-CPU handles [start, start+size) -> copies */
#define KML_REGION_SHIM_PRIVATE 0x2u /* the shim's own memory: never scanned, never a root */

/* One region. For KML_REGION_PERCPU, CPU c's copy of handle h is at
 * cpu0_base + (h - start) + c * stride, for c < nr_cpus. */
struct kml_region {
    uint32_t state;
    uint32_t kind;
    uint64_t start;
    uint64_t size;
    uint64_t cpu0_base;
    uint64_t stride;
    uint32_t nr_cpus;
    uint32_t reserved;
};

/* One scan area of an object: valid only while the object slot's seq equals object_seq. */
struct kml_area {
    uint32_t state;
    uint32_t object_index;    /* slot in the object array */
    uint64_t object_seq;
    uint64_t start;           /* absolute address */
    uint64_t size;            /* UINT64_MAX: to the end of the object */
};

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(struct kml_object) == 64, "kml_object is 64 bytes");
_Static_assert(sizeof(struct kml_trace) == 16 + 8 * KML_MAX_TRACE, "kml_trace layout");
_Static_assert(sizeof(struct kml_thread) == 64, "kml_thread is 64 bytes");
_Static_assert(sizeof(struct kml_region) == 48, "kml_region is 48 bytes");
_Static_assert(sizeof(struct kml_area) == 32, "kml_area is 32 bytes");
#endif

/* Reader helpers (imported by Swift): acquire loads and a full fence for seqlock re-checks. */
static inline uint32_t kml_load_acquire_u32(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE); }
static inline uint64_t kml_load_acquire_u64(const void *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
static inline void kml_store_release_u64(void *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }
static inline void kml_store_release_i32(void *p, int32_t v) { __atomic_store_n((int32_t *)p, v, __ATOMIC_RELEASE); }
static inline void kml_acquire_fence(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }

#ifdef __cplusplus
}
#endif
#endif /* KMEMLEAK_ABI_H */
