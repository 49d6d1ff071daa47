/*
 * kmemleak.h - the public API of libkmemleak.so: kmemleak annotations and a per-CPU allocator
 * for user-space programs (the kernel's include/linux/kmemleak.h and alloc_percpu/per_cpu_ptr).
 *
 * Linking model (how a program runs WITH and WITHOUT the library)
 * ----------------------------------------------------------------
 * Every API function is declared here as a WEAK reference. A program that includes this header
 * needs no -lkmemleak: it links on its own, and
 *   - when libkmemleak.so is preloaded (LD_PRELOAD), the dynamic linker binds the weak references
 *     to the library's functions: annotations and the per-CPU allocator are the real ones;
 *   - when it is not, the references stay NULL and each call, through a function-like macro of the
 *     same name, becomes a no-op (annotations) or falls back to a small inline implementation
 *     (per-CPU: the handle is CPU 0's copy in one calloc'd block; copies at handle + cpu*stride).
 * The choice is made once, at load time, so a process never mixes the two per-CPU layouts.
 * The macros only expand when the name is followed by '(' ; taking a function's address
 * (&kmemleak_not_leak) still yields the weak symbol (NULL without the library).
 * Requirements: a PIE executable (the default on Debian) or -Wl,-z,dynamic-undefined-weak so that
 * weak undefined symbols get dynamic relocations.
 *
 * Define KMEMLEAK_NO_WRAPPERS before including this header to get the plain prototypes only
 * (then every call requires the library), e.g. to redeclare or to take function pointers.
 * The library itself is built with KMEMLEAK_BUILDING_LIBRARY.
 */
#ifndef KMEMLEAK_H
#define KMEMLEAK_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* sparse-style annotation: a per-CPU handle is not a dereferenceable address */
#ifndef __percpu
#define __percpu
#endif

#if defined(KMEMLEAK_BUILDING_LIBRARY)
#define KMEMLEAK_API __attribute__((visibility("default")))
#else
#define KMEMLEAK_API __attribute__((weak))
#endif

/* annotations never read the object: tell GCC, or it warns about "uninitialized" malloc memory */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define KMEMLEAK_NOACCESS __attribute__((access(none, 1)))
#else
#define KMEMLEAK_NOACCESS
#endif

/* ---- per-CPU allocator ------------------------------------------------------------------------ */
KMEMLEAK_API void __percpu *__alloc_percpu(size_t size, size_t align);
KMEMLEAK_API void free_percpu(void __percpu *ptr);
KMEMLEAK_API void *kmemleak_per_cpu_ptr(const void __percpu *ptr, unsigned int cpu);
KMEMLEAK_API unsigned int kmemleak_nr_cpu_ids(void); /* highest possible CPU id + 1 */

/* ---- allocator hooks and annotations (the kernel's semantics) --------------------------------- */
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_alloc(const void *ptr, size_t size, int min_count);
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_free(const void *ptr);
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_free_part(const void *ptr, size_t size);
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_alloc_percpu(const void __percpu *ptr, size_t size);
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_free_percpu(const void __percpu *ptr);
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_update_trace(const void *ptr);
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_not_leak(const void *ptr);
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_transient_leak(const void *ptr);
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_ignore(const void *ptr);
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_ignore_percpu(const void __percpu *ptr);
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_scan_area(const void *ptr, size_t size);
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_no_scan(const void *ptr);
/* A foreign per-CPU allocator's layout: handles [handle_base, handle_base+len); CPU c's copy of
 * handle h is at cpu0_base + (h - handle_base) + c*stride, c < nr_cpus (librseq mempool:
 * handle_base == cpu0_base). */
KMEMLEAK_API KMEMLEAK_NOACCESS void kmemleak_percpu_region(const void *handle_base, size_t len, const void *cpu0_base,
                                         size_t stride, unsigned int nr_cpus);

static inline void kmemleak_erase(void **ptr) { *ptr = NULL; }

#define alloc_percpu(type) ((type __percpu *)__alloc_percpu(sizeof(type), __alignof__(type)))
#define per_cpu_ptr(p, cpu) ((__typeof__(p))kmemleak_per_cpu_ptr((p), (cpu)))
#define for_each_possible_cpu(cpu) \
    for ((cpu) = 0; (cpu) < kmemleak_nr_cpu_ids(); (cpu)++)

#if !defined(KMEMLEAK_BUILDING_LIBRARY) && !defined(KMEMLEAK_NO_WRAPPERS)
/* ---- fallbacks used when libkmemleak.so is not loaded ----------------------------------------- */
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>

static inline unsigned int kml_fallback_nr_cpu_ids(void)
{
    static unsigned int cached;
    if (cached)
        return cached;
    char buf[256];
    unsigned int last = 0, cur = 0;
    int fd = open("/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_CONF);
        return cached = (unsigned int)(c > 0 ? c : 1);
    }
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] >= '0' && buf[i] <= '9') {
            cur = cur * 10 + (unsigned int)(buf[i] - '0');
            last = cur;
        } else {
            cur = 0;
        }
    }
    return cached = last + 1;
}

/* block: [stride (size_t)][pad to 16] CPU0 copy | CPU1 copy | ...; handle = CPU 0's copy */
static inline void *kml_fallback_alloc_percpu(size_t size, size_t align)
{
    (void)align; /* calloc's 16-byte alignment; larger alignments are not honoured here */
    size_t stride = (size + 15) & ~(size_t)15;
    if (stride == 0)
        stride = 16;
    char *b = (char *)calloc(1, 16 + stride * kml_fallback_nr_cpu_ids());
    if (!b)
        return NULL;
    *(size_t *)b = stride;
    return b + 16;
}

static inline void kml_fallback_free_percpu(void *ptr)
{
    if (ptr)
        free((char *)ptr - 16);
}

static inline void *kml_fallback_per_cpu_ptr(const void *ptr, unsigned int cpu)
{
    if (!ptr)
        return NULL;
    return (char *)ptr + (size_t)cpu * *(const size_t *)((const char *)ptr - 16);
}

#define __alloc_percpu(size, align) \
    (__alloc_percpu ? __alloc_percpu((size), (align)) : kml_fallback_alloc_percpu((size), (align)))
#define free_percpu(ptr) (free_percpu ? free_percpu(ptr) : kml_fallback_free_percpu(ptr))
#define kmemleak_per_cpu_ptr(ptr, cpu) \
    (kmemleak_per_cpu_ptr ? kmemleak_per_cpu_ptr((ptr), (cpu)) : kml_fallback_per_cpu_ptr((ptr), (cpu)))
#define kmemleak_nr_cpu_ids() (kmemleak_nr_cpu_ids ? kmemleak_nr_cpu_ids() : kml_fallback_nr_cpu_ids())

#define KML_CALL_IF_LOADED(fn, args) ((fn) ? fn args : (void)0)
#define kmemleak_alloc(ptr, size, min_count) KML_CALL_IF_LOADED(kmemleak_alloc, ((ptr), (size), (min_count)))
#define kmemleak_free(ptr) KML_CALL_IF_LOADED(kmemleak_free, (ptr))
#define kmemleak_free_part(ptr, size) KML_CALL_IF_LOADED(kmemleak_free_part, ((ptr), (size)))
#define kmemleak_alloc_percpu(ptr, size) KML_CALL_IF_LOADED(kmemleak_alloc_percpu, ((ptr), (size)))
#define kmemleak_free_percpu(ptr) KML_CALL_IF_LOADED(kmemleak_free_percpu, (ptr))
#define kmemleak_update_trace(ptr) KML_CALL_IF_LOADED(kmemleak_update_trace, (ptr))
#define kmemleak_not_leak(ptr) KML_CALL_IF_LOADED(kmemleak_not_leak, (ptr))
#define kmemleak_transient_leak(ptr) KML_CALL_IF_LOADED(kmemleak_transient_leak, (ptr))
#define kmemleak_ignore(ptr) KML_CALL_IF_LOADED(kmemleak_ignore, (ptr))
#define kmemleak_ignore_percpu(ptr) KML_CALL_IF_LOADED(kmemleak_ignore_percpu, (ptr))
#define kmemleak_scan_area(ptr, size) KML_CALL_IF_LOADED(kmemleak_scan_area, ((ptr), (size)))
#define kmemleak_no_scan(ptr) KML_CALL_IF_LOADED(kmemleak_no_scan, (ptr))
#define kmemleak_percpu_region(base, len, cpu0, stride, nr) \
    KML_CALL_IF_LOADED(kmemleak_percpu_region, ((base), (len), (cpu0), (stride), (nr)))
#endif /* wrappers */

#ifdef __cplusplus
}
#endif
#endif /* KMEMLEAK_H */
