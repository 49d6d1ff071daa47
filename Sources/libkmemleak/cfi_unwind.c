/*
 * The shim's unwinder (x86-64): what libunwind's unw_backtrace computes, for the frames that
 * compiled code has, at a fraction of the cost.
 *
 * A frame is stepped with one rule, looked up by its return address in a cache: the caller's CFA is
 * rsp or rbp plus an offset, the return address sits at CFA - 8, and rbp is either unchanged or
 * saved at CFA + k. A return address the cache does not know is looked up once in its module's
 * .eh_frame_hdr, and the FDE's CFA program is run up to it; anything else (signal frames, CFA
 * expressions, stack realignment, a module without .eh_frame_hdr, a read outside the thread's
 * stack) makes cfi_backtrace return -1, and the shim unwinds that trace with libunwind.
 *
 * The cache is MAP_SHARED: a forked child starts with its parent's address space, so the rules
 * hold in both, and what a child learns is not lost when it exits (bash's command substitutions
 * run the same code paths in every child: with a private cache each child unwound them from
 * scratch through dl_iterate_phdr, and copied every cache page it wrote). Only rules for code that
 * every sharer has at the same place may go in: a sharer that has loaded or unloaded code since the
 * cache became shared (glibc's dlpi_adds / dlpi_subs moved, by dlopen or by glibc's own NSS and
 * iconv loads) detaches, i.e. maps a new cache, before its next insert and before its next fork;
 * since every rule for a module comes from a miss, no sharer ever reads a rule another sharer
 * made for different code. A cache that is the process's own is emptied after dlclose (other
 * code may be loaded there later; dlopen alone needs nothing: new code lands where no rule points).
 * At most MAX_CACHES are mapped per process; then libunwind does the rest.
 *
 * Rules: nothing allocates (the cache is a raw mmap), the miss path reads .eh_frame inside
 * dl_iterate_phdr's callback (the loader lock is held: the module cannot be unmapped meanwhile),
 * and every stack read is checked against [sp, stack_hi), once sp is known to lie in the thread's
 * stack [stack_lo, stack_hi) (not on a signal stack or a coroutine's, where the range between
 * sp and stack_hi need not be mapped).
 */
#define _GNU_SOURCE
#include <link.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/single_threaded.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cfi_unwind.h"

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* DWARF register numbers, x86-64 */
#define DW_RBP 6
#define DW_RSP 7
#define DW_RA 16

enum { RULE_NONE, RULE_STEP, RULE_LAST, RULE_UNSUPPORTED };

/* one frame's rule, packed into the cache entry's second word */
struct cfi_rule {
    int32_t cfa_off;
    int16_t rbp_off;    /* rbp saved at CFA + rbp_off; 0: rbp unchanged */
    uint8_t cfa_is_rbp; /* CFA = rbp + cfa_off, else rsp + cfa_off */
    uint8_t kind;       /* RULE_* */
};
_Static_assert(sizeof(struct cfi_rule) == 8, "a rule is one word");

/* A cache entry is one word, so that it is written and read atomically, and 32 fit in a cache line
 * pair: the return address (user space is below 2^47) and the rule, encoded. A rule that does not
 * fit the encoding (a frame above 16 KiB, rbp saved further than CFA - 64) is cached as
 * unsupported: libunwind unwinds such traces. 0 is an empty slot. */
typedef uint64_t cfi_entry;
#define IP_BITS 47
#define IP_MASK ((1ull << IP_BITS) - 1)

static inline cfi_entry rule_encode(uint64_t ip, struct cfi_rule r)
{
    uint64_t kind = r.kind, cfa = (uint64_t)r.cfa_off / 8, rbp = r.rbp_off ? (uint64_t)(-r.rbp_off / 8 - 1) : 0;
    if (kind == RULE_STEP && (r.cfa_off % 8 || cfa > 2047 || r.rbp_off % 8 || (r.rbp_off && (rbp < 1 || rbp > 7))))
        kind = RULE_UNSUPPORTED, cfa = 0, rbp = 0;
    if (kind != RULE_STEP)
        cfa = 0, rbp = 0;
    return ip | kind << 47 | (uint64_t)(r.cfa_is_rbp && kind == RULE_STEP) << 49 | cfa << 50 | rbp << 61;
}

static inline struct cfi_rule rule_decode(cfi_entry e)
{
    struct cfi_rule r;
    uint64_t rbp = e >> 61;
    r.kind = (uint8_t)(e >> 47 & 3);
    r.cfa_is_rbp = (uint8_t)(e >> 49 & 1);
    r.cfa_off = (int32_t)((e >> 50 & 2047) * 8);
    r.rbp_off = (int16_t)(rbp ? -8 * (int)(rbp + 1) : 0);
    return r;
}

#define CACHE_BITS 15
#define CACHE_SIZE (1u << CACHE_BITS)
/* The mapping: the cache's CACHE_SIZE entries, then one page of recently used rules (HOT_SIZE in
 * sets of HOT_WAYS), which a lookup tries before the cache. A forked child has none of a MAP_SHARED
 * mapping's pages in its page tables (fork() copies only private mappings' entries): each cache page
 * it touches is a fault, and the rules a child needs that its parent's per-thread copy lacks
 * (child-only code paths, which earlier children put in the cache) are spread over the whole cache by
 * the hash. Found through the hot page, they cost a child one fault instead of one per page. Only
 * forked children write it (t_hot_writer): a parent's own misses (bash's loop has more frames than
 * its per-thread copy holds) would evict the children's rules. */
#define HOT_BITS 9
#define HOT_SIZE (1u << HOT_BITS)
#define HOT_WAYS 4 /* a set is half a cache line: a child's rules that share a set all stay */
#define CACHE_BYTES ((size_t)(CACHE_SIZE + HOT_SIZE) * sizeof(cfi_entry))
#define CACHE_PROBES 8

static cfi_entry *g_cache; /* (atomic pointer) */
static unsigned g_gen = 1;  /* bumped when the rules change (a detach, an emptied cache): L1s are stale */
static int g_cache_shared;        /* a fork happened since this cache was mapped */
static unsigned long long g_share_adds, g_share_subs; /* glibc's load counters when it became shared */
static cfi_entry *g_cache_unregistered; /* mapped by a detach, not yet handed to the shim */
static unsigned g_caches_mapped;
static uint32_t g_detach_lock;
#define MAX_CACHES 16

static void *cache_map(void)
{
    if (g_caches_mapped >= MAX_CACHES)
        return NULL;
    void *m = (void *)syscall(SYS_mmap, NULL, CACHE_BYTES, PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    g_caches_mapped++;
    return m;
}

int cfi_init(void)
{
    cfi_entry *c = cache_map();
    if (!c)
        return -1;
    __atomic_store_n(&g_cache, c, __ATOMIC_RELEASE);
    g_cache_unregistered = c;
    return 0;
}

int cfi_take_new_cache(uintptr_t *start, uintptr_t *size)
{
    /* read first: the exchange is a store, and this runs before every fork (a copy-on-write fault
     * of this file's .bss in the parent each time) */
    cfi_entry *c = __atomic_load_n(&g_cache_unregistered, __ATOMIC_ACQUIRE)
                       ? __atomic_exchange_n(&g_cache_unregistered, NULL, __ATOMIC_ACQ_REL)
                       : NULL;
    *start = (uintptr_t)c;
    *size = c ? CACHE_BYTES : 0;
    return c != NULL;
}

/* a new, empty cache for this process alone; other threads may be walking the old one (and other
 * processes use it): it stays mapped. Under g_detach_lock. */
static void cache_detach(void)
{
    cfi_entry *n = cache_map();
    if (n)
        __atomic_store_n(&g_cache_unregistered, n, __ATOMIC_RELEASE);
    __atomic_store_n(&g_cache, n, __ATOMIC_RELEASE); /* NULL: libunwind from now on */
    __atomic_fetch_add(&g_gen, 1, __ATOMIC_RELEASE);
    g_cache_shared = 0;
}

static inline void detach_lock(void)
{
    while (__atomic_exchange_n(&g_detach_lock, 1, __ATOMIC_ACQUIRE))
        __builtin_ia32_pause();
}
static inline void detach_unlock(void) { __atomic_store_n(&g_detach_lock, 0, __ATOMIC_RELEASE); }

/* detaches a shared cache if this process loaded or unloaded code since it became shared */
static void detach_if_code_changed(unsigned long long adds, unsigned long long subs)
{
    detach_lock();
    if (g_cache_shared && (adds != g_share_adds || subs != g_share_subs))
        cache_detach();
    detach_unlock();
}

static int counters_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    unsigned long long *c = data;
    c[0] = info->dlpi_adds;
    c[1] = info->dlpi_subs;
    return 1;
}

void cfi_prefork(void)
{
    if (!__atomic_load_n(&g_cache, __ATOMIC_ACQUIRE))
        return;
    unsigned long long c[2] = {0, 0};
    dl_iterate_phdr(counters_cb, c);
    /* a lone thread (glibc's __libc_single_threaded) whose cache is already shared with the same
     * code loaded has nothing to change: no store to this file's .bss, whose page fork() would make
     * copy-on-write again (a fault in the parent at every fork) */
    if (__libc_single_threaded && g_cache_shared && c[0] == g_share_adds && c[1] == g_share_subs)
        return;
    detach_if_code_changed(c[0], c[1]);
    detach_lock();
    if (!g_cache_shared) {
        g_share_adds = c[0];
        g_share_subs = c[1];
        g_cache_shared = 1; /* from the fork on: the child inherits the flag and the counters */
    }
    detach_unlock();
}

void cfi_code_unloaded(void)
{
    detach_lock();
    cfi_entry *c = __atomic_load_n(&g_cache, __ATOMIC_ACQUIRE);
    if (c && g_cache_shared)
        cache_detach();
    else if (c) {
        syscall(SYS_madvise, c, CACHE_BYTES, MADV_DONTNEED);
        __atomic_fetch_add(&g_gen, 1, __ATOMIC_RELEASE);
    }
    detach_unlock();
}

/* each thread's last rules, direct-mapped: the shared cache is 256 KiB read at random, and an
 * allocation-heavy program evicts it from the CPU caches between two mallocs; a thread's hot
 * frames (an interpreter's eval loop) fit in a few lines. Decoded (not the cache's packed word): a
 * step is one dependent chain, return address -> entry -> CFA -> return address, and the offset is
 * then added as loaded instead of after three shifts and masks. Addresses and rules are two arrays
 * of words (the loads index them scaled), the slot is a multiplicative hash's top bits: python3's
 * workload missed 8.6 % of its steps with 128 slots and an xor-shift hash (each miss a read of the
 * shared cache), 2.4 % with this hash, 0.2 % with 256 slots; the low bits alone missed 30 %. */
#define L1_BITS 8
static inline uint32_t l1_slot(uint64_t ip) { return (uint32_t)((ip * 0x9e3779b97f4a7c15ull) >> (64 - L1_BITS)); }
static __thread uint64_t t_l1_ip[1u << L1_BITS] __attribute__((tls_model("initial-exec"))); /* 0: empty */
static __thread struct cfi_rule t_l1_rule[1u << L1_BITS] __attribute__((tls_model("initial-exec")));
static __thread unsigned t_l1_gen __attribute__((tls_model("initial-exec")));

static inline uint32_t cache_slot(uint64_t ip) { return (uint32_t)((ip * 0x9e3779b97f4a7c15ull) >> (64 - CACHE_BITS)); }

static __thread int t_hot_writer __attribute__((tls_model("initial-exec")));

void cfi_forked_child(void) { t_hot_writer = 1; }

static inline cfi_entry *hot_set(cfi_entry *c, uint64_t ip)
{
    return &c[CACHE_SIZE + ((ip * 0x9e3779b97f4a7c15ull) >> (64 - HOT_BITS)) / HOT_WAYS * HOT_WAYS];
}

static inline int hot_get(cfi_entry *c, uint64_t ip, cfi_entry *out)
{
    cfi_entry *h = hot_set(c, ip);
    for (int i = 0; i < HOT_WAYS; i++) {
        cfi_entry e = __atomic_load_n(&h[i], __ATOMIC_RELAXED);
        if ((e & IP_MASK) == ip) {
            *out = e;
            return 1;
        }
    }
    return 0;
}

/* a forked child's rule, found in the cache or learned, at the front of its set (the last way
 * goes); nothing is written when it is there already (the page is shared: a store takes the line
 * from the other cores) */
static inline void hot_put(cfi_entry *c, cfi_entry e)
{
    if (!t_hot_writer)
        return;
    cfi_entry *h = hot_set(c, e & IP_MASK);
    for (int i = 0; i < HOT_WAYS; i++)
        if (__atomic_load_n(&h[i], __ATOMIC_RELAXED) == e)
            return;
    for (int i = HOT_WAYS - 1; i > 0; i--)
        __atomic_store_n(&h[i], __atomic_load_n(&h[i - 1], __ATOMIC_RELAXED), __ATOMIC_RELAXED);
    __atomic_store_n(&h[0], e, __ATOMIC_RELAXED);
}

static inline int cache_get(const cfi_entry *c, uint64_t ip, struct cfi_rule *r)
{
    uint32_t h = cache_slot(ip);
    for (uint32_t i = 0; i < CACHE_PROBES; i++) {
        cfi_entry e = __atomic_load_n(&c[(h + i) & (CACHE_SIZE - 1)], __ATOMIC_RELAXED);
        if ((e & IP_MASK) == ip) {
            *r = rule_decode(e);
            return 1;
        }
        if (e == 0)
            return 0;
    }
    return 0;
}

static void cache_put(cfi_entry *c, uint64_t ip, struct cfi_rule r)
{
    if (ip > IP_MASK)
        return; /* not cacheable: recomputed each time */
    cfi_entry v = rule_encode(ip, r);
    uint32_t h = cache_slot(ip);
    for (uint32_t i = 0; i < CACHE_PROBES; i++) {
        cfi_entry *e = &c[(h + i) & (CACHE_SIZE - 1)], k = __atomic_load_n(e, __ATOMIC_RELAXED);
        if ((k & IP_MASK) == ip)
            return;
        if (k == 0 && __atomic_compare_exchange_n(e, &k, v, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return;
        if ((k & IP_MASK) == ip) /* lost the race to the same rule */
            return;
    }
    /* the probe window is full: this rule is recomputed each time */
}

/* ---- reading .eh_frame ------------------------------------------------------------------------ */
struct rd {
    const uint8_t *p, *end;
    int bad;
};

static inline uint8_t rd_u8(struct rd *r)
{
    if (r->p >= r->end) {
        r->bad = 1;
        return 0;
    }
    return *r->p++;
}

static uint64_t rd_fixed(struct rd *r, unsigned n)
{
    if ((size_t)(r->end - r->p) < n) {
        r->bad = 1;
        r->p = r->end;
        return 0;
    }
    uint64_t v = 0;
    memcpy(&v, r->p, n); /* little-endian */
    r->p += n;
    return v;
}

static uint64_t rd_uleb(struct rd *r)
{
    uint64_t v = 0;
    for (unsigned shift = 0;; shift += 7) {
        uint8_t b = rd_u8(r);
        if (shift < 64)
            v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80) || r->bad)
            return v;
    }
}

static int64_t rd_sleb(struct rd *r)
{
    uint64_t v = 0;
    unsigned shift = 0;
    uint8_t b;
    do {
        b = rd_u8(r);
        if (shift < 64)
            v |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
    } while ((b & 0x80) && !r->bad);
    if (shift < 64 && (b & 0x40))
        v |= ~(uint64_t)0 << shift;
    return (int64_t)v;
}

/* a DW_EH_PE_* encoded value: absolute and pc-relative only (what GNU toolchains write in FDEs) */
static uint64_t rd_encoded(struct rd *r, uint8_t enc)
{
    if (enc == 0xff) /* DW_EH_PE_omit */
        return 0;
    uintptr_t base = 0;
    switch (enc & 0x70) {
    case 0x00: break;
    case 0x10: base = (uintptr_t)r->p; break; /* pcrel */
    default: r->bad = 1; return 0;
    }
    uint64_t v;
    switch (enc & 0x0f) {
    case 0x00: v = rd_fixed(r, 8); break;
    case 0x01: v = rd_uleb(r); break;
    case 0x02: v = rd_fixed(r, 2); break;
    case 0x03: v = rd_fixed(r, 4); break;
    case 0x04: v = rd_fixed(r, 8); break;
    case 0x09: v = (uint64_t)rd_sleb(r); break;
    case 0x0a: v = (uint64_t)(int64_t)(int16_t)rd_fixed(r, 2); break;
    case 0x0b: v = (uint64_t)(int64_t)(int32_t)rd_fixed(r, 4); break;
    case 0x0c: v = rd_fixed(r, 8); break;
    default: r->bad = 1; return 0;
    }
    return v + base;
}

/* ---- the CFA program ---------------------------------------------------------------------------- */
enum { REG_SAME, REG_OFFSET, REG_UNDEFINED, REG_OTHER };

struct cfa_row {
    uint8_t cfa_reg;   /* DWARF register, or 0xff: an expression */
    int64_t cfa_off;
    uint8_t rbp_how, ra_how; /* REG_* */
    int64_t rbp_off, ra_off;
};

struct cie_info {
    uint64_t code_align;
    int64_t data_align;
    uint64_t ra_reg;
    uint8_t fde_enc;
    int has_z, signal;
    const uint8_t *insns, *end;
};

static void set_reg(struct cfa_row *row, uint64_t reg, uint8_t how, int64_t off)
{
    if (reg == DW_RBP)
        row->rbp_how = how, row->rbp_off = off;
    else if (reg == DW_RA)
        row->ra_how = how, row->ra_off = off;
}

#define STATE_STACK 8

/* skips a DWARF expression: a uleb length, then that many bytes */
static int skip_block(struct rd *r)
{
    uint64_t n = rd_uleb(r);
    if (r->bad || n > (uint64_t)(r->end - r->p))
        return -1;
    r->p += n;
    return 0;
}

/* runs insns until the row for pc; *loc is the row's start address. -1: an opcode we cannot run */
static int run_cfa(struct rd *r, const struct cie_info *cie, uint64_t *loc, uint64_t pc, struct cfa_row *row,
                   const struct cfa_row *initial)
{
    struct cfa_row stack[STATE_STACK];
    int depth = 0;
    while (r->p < r->end && !r->bad) {
        uint8_t op = rd_u8(r);
        uint64_t reg, delta = 0;
        int advance = 0;
        switch (op & 0xc0) {
        case 0x40:
            delta = (op & 0x3f) * cie->code_align;
            advance = 1;
            op = 0x00; /* nothing more to decode */
            break;
        case 0x80:
            set_reg(row, op & 0x3f, REG_OFFSET, (int64_t)rd_uleb(r) * cie->data_align);
            continue;
        case 0xc0:
            reg = op & 0x3f;
            if (!initial)
                return -1; /* DW_CFA_restore in a CIE */
            if (reg == DW_RBP)
                row->rbp_how = initial->rbp_how, row->rbp_off = initial->rbp_off;
            else if (reg == DW_RA)
                row->ra_how = initial->ra_how, row->ra_off = initial->ra_off;
            continue;
        }
        switch (op) {
        case 0x00: break; /* nop */
        case 0x02: delta = rd_fixed(r, 1) * cie->code_align; advance = 1; break;
        case 0x03: delta = rd_fixed(r, 2) * cie->code_align; advance = 1; break;
        case 0x04: delta = rd_fixed(r, 4) * cie->code_align; advance = 1; break;
        case 0x05: /* offset_extended */
            reg = rd_uleb(r);
            set_reg(row, reg, REG_OFFSET, (int64_t)rd_uleb(r) * cie->data_align);
            break;
        case 0x06: /* restore_extended */
            reg = rd_uleb(r);
            if (!initial)
                return -1;
            if (reg == DW_RBP)
                row->rbp_how = initial->rbp_how, row->rbp_off = initial->rbp_off;
            else if (reg == DW_RA)
                row->ra_how = initial->ra_how, row->ra_off = initial->ra_off;
            break;
        case 0x07: set_reg(row, rd_uleb(r), REG_UNDEFINED, 0); break;
        case 0x08: set_reg(row, rd_uleb(r), REG_SAME, 0); break;
        case 0x09: /* register: rbp or the return address in another register */
            reg = rd_uleb(r);
            rd_uleb(r);
            set_reg(row, reg, REG_OTHER, 0);
            break;
        case 0x0a:
            if (depth == STATE_STACK)
                return -1;
            stack[depth++] = *row;
            break;
        case 0x0b:
            if (depth == 0)
                return -1;
            *row = stack[--depth]; /* the CFA too, as libunwind does */
            break;
        case 0x0c:
            row->cfa_reg = (uint8_t)rd_uleb(r);
            row->cfa_off = (int64_t)rd_uleb(r);
            break;
        case 0x0d: row->cfa_reg = (uint8_t)rd_uleb(r); break;
        case 0x0e: row->cfa_off = (int64_t)rd_uleb(r); break;
        case 0x0f: /* def_cfa_expression */
            if (skip_block(r) != 0)
                return -1;
            row->cfa_reg = 0xff;
            break;
        case 0x10: /* expression */
        case 0x16: /* val_expression */
            reg = rd_uleb(r);
            if (skip_block(r) != 0)
                return -1;
            set_reg(row, reg, REG_OTHER, 0);
            break;
        case 0x11: /* offset_extended_sf */
            reg = rd_uleb(r);
            set_reg(row, reg, REG_OFFSET, rd_sleb(r) * cie->data_align);
            break;
        case 0x12:
            row->cfa_reg = (uint8_t)rd_uleb(r);
            row->cfa_off = rd_sleb(r) * cie->data_align;
            break;
        case 0x13: row->cfa_off = rd_sleb(r) * cie->data_align; break;
        case 0x14: /* val_offset */
            reg = rd_uleb(r);
            rd_uleb(r);
            set_reg(row, reg, REG_OTHER, 0);
            break;
        case 0x15: /* val_offset_sf */
            reg = rd_uleb(r);
            rd_sleb(r);
            set_reg(row, reg, REG_OTHER, 0);
            break;
        case 0x2e: rd_uleb(r); break; /* GNU_args_size */
        case 0x2f: /* GNU_negative_offset_extended */
            reg = rd_uleb(r);
            set_reg(row, reg, REG_OFFSET, -(int64_t)rd_uleb(r) * cie->data_align);
            break;
        default: return -1; /* set_loc, vendor opcodes: not in what we unwind */
        }
        if (advance) {
            if (!initial)
                return -1; /* an advance in a CIE */
            if (*loc + delta > pc)
                return 0; /* the row for pc is complete */
            *loc += delta;
        }
    }
    return r->bad ? -1 : 0;
}

static int parse_cie(const uint8_t *cie, const uint8_t *limit, struct cie_info *ci)
{
    struct rd r = {cie, limit, 0};
    uint32_t len = (uint32_t)rd_fixed(&r, 4);
    if (len == 0 || len == 0xffffffffu || len > (size_t)(limit - r.p))
        return -1;
    r.end = r.p + len;
    if (rd_fixed(&r, 4) != 0) /* CIE id */
        return -1;
    uint8_t version = rd_u8(&r);
    if (version != 1 && version != 3)
        return -1;
    const char *aug = (const char *)r.p;
    size_t alen = strnlen(aug, (size_t)(r.end - r.p));
    if (alen == (size_t)(r.end - r.p))
        return -1;
    r.p += alen + 1;
    ci->code_align = rd_uleb(&r);
    ci->data_align = rd_sleb(&r);
    ci->ra_reg = version == 1 ? rd_u8(&r) : rd_uleb(&r);
    ci->fde_enc = 0; /* absptr */
    ci->has_z = 0;
    ci->signal = 0;
    if (aug[0] == 'z') {
        ci->has_z = 1;
        uint64_t n = rd_uleb(&r);
        if (r.bad || n > (uint64_t)(r.end - r.p))
            return -1;
        struct rd a = {r.p, r.p + n, 0};
        for (size_t i = 1; i < alen; i++) {
            switch (aug[i]) {
            case 'R': ci->fde_enc = rd_u8(&a); break;
            case 'L': rd_u8(&a); break;
            case 'P': {
                uint8_t enc = rd_u8(&a);
                rd_encoded(&a, enc & 0x7f); /* skipped; indirection does not change the size */
                break;
            }
            case 'S': ci->signal = 1; break;
            case 'B': break;
            default: return -1;
            }
        }
        if (a.bad)
            return -1;
        r.p += n;
    } else if (alen) {
        return -1; /* "eh" and other old augmentations */
    }
    if (r.bad || ci->ra_reg != DW_RA || ci->code_align == 0)
        return -1;
    ci->insns = r.p;
    ci->end = r.end;
    return 0;
}

/* the rule for the frame whose return address is ip, from the FDE at fde (in .eh_frame) */
static struct cfi_rule rule_from_fde(const uint8_t *fde, const uint8_t *eh_lo, const uint8_t *eh_hi, uint64_t pc)
{
    struct cfi_rule out = {0, 0, 0, RULE_UNSUPPORTED};
    if (fde < eh_lo || fde >= eh_hi)
        return out;
    struct rd r = {fde, eh_hi, 0};
    uint32_t len = (uint32_t)rd_fixed(&r, 4);
    if (r.bad || len == 0 || len == 0xffffffffu || len > (size_t)(eh_hi - r.p))
        return out;
    r.end = r.p + len;
    const uint8_t *cie_ptr_at = r.p;
    uint32_t cie_off = (uint32_t)rd_fixed(&r, 4);
    if (cie_off == 0 || cie_off > (size_t)(cie_ptr_at - eh_lo))
        return out;
    struct cie_info ci;
    if (parse_cie(cie_ptr_at - cie_off, eh_hi, &ci) != 0 || ci.signal)
        return out;
    uint64_t start = rd_encoded(&r, ci.fde_enc);
    uint64_t range = rd_encoded(&r, ci.fde_enc & 0x0f);
    if (r.bad || pc < start || pc - start >= range)
        return out;
    if (ci.has_z) {
        uint64_t n = rd_uleb(&r);
        if (r.bad || n > (uint64_t)(r.end - r.p))
            return out;
        r.p += n;
    }
    struct cfa_row row = {DW_RSP, 8, REG_SAME, REG_SAME, 0, 0};
    struct rd cr = {ci.insns, ci.end, 0};
    uint64_t loc = start;
    if (run_cfa(&cr, &ci, &loc, pc, &row, NULL) != 0)
        return out;
    struct cfa_row initial = row;
    if (run_cfa(&r, &ci, &loc, pc, &row, &initial) != 0)
        return out;
    if (row.ra_how == REG_UNDEFINED) {
        out.kind = RULE_LAST; /* the outermost frame (_start, a thread's clone) */
        return out;
    }
    if ((row.cfa_reg != DW_RSP && row.cfa_reg != DW_RBP) || row.cfa_off <= 0 || row.cfa_off > INT32_MAX ||
        row.ra_how != REG_OFFSET || row.ra_off != -8 || (row.rbp_how != REG_SAME && row.rbp_how != REG_OFFSET) ||
        (row.rbp_how == REG_OFFSET && (row.rbp_off >= 0 || row.rbp_off < INT16_MIN)))
        return out;
    out.cfa_off = (int32_t)row.cfa_off;
    out.cfa_is_rbp = row.cfa_reg == DW_RBP;
    out.rbp_off = row.rbp_how == REG_OFFSET ? (int16_t)row.rbp_off : 0;
    out.kind = RULE_STEP;
    return out;
}

struct lookup {
    uint64_t pc;
    struct cfi_rule rule;
    int found;
    unsigned long long adds, subs;
};

/* the module holding pc, its .eh_frame_hdr's binary search table, the FDE: all read here, with the
 * loader lock held */
static int lookup_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    struct lookup *l = data;
    l->adds = info->dlpi_adds;
    l->subs = info->dlpi_subs;
    const ElfW(Phdr) *hdr = NULL;
    int in = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && l->pc - (info->dlpi_addr + ph->p_vaddr) < ph->p_memsz)
            in = 1;
        else if (ph->p_type == PT_GNU_EH_FRAME)
            hdr = ph;
    }
    if (!in)
        return 0;
    l->found = 1;
    if (!hdr)
        return 1;
    const uint8_t *h = (const uint8_t *)(info->dlpi_addr + hdr->p_vaddr);
    /* version 1, eh_frame_ptr pcrel|sdata4, fde_count udata4, table datarel|sdata4: GNU ld's */
    if (hdr->p_memsz < 12 || h[0] != 1 || h[1] != 0x1b || h[2] != 0x03 || h[3] != 0x3b)
        return 1;
    uint32_t count;
    memcpy(&count, h + 8, 4);
    if (count == 0 || count > (hdr->p_memsz - 12) / 8)
        return 1;
    const int32_t *table = (const int32_t *)(h + 12);
    /* the last entry whose start is <= pc */
    uint32_t lo = 0, hi = count;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if ((uint64_t)(uintptr_t)(h + table[2 * mid]) <= l->pc)
            lo = mid;
        else
            hi = mid;
    }
    if ((uint64_t)(uintptr_t)(h + table[2 * lo]) > l->pc)
        return 1;
    /* the FDE and its CIE are read within the file-backed part of the segment that holds them */
    const uint8_t *fde = h + table[2 * lo + 1];
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        const uint8_t *s = (const uint8_t *)(info->dlpi_addr + ph->p_vaddr);
        if (ph->p_type == PT_LOAD && fde >= s && fde < s + ph->p_filesz) {
            l->rule = rule_from_fde(fde, s, s + ph->p_filesz, l->pc);
            break;
        }
    }
    return 1;
}

static struct cfi_rule rule_lookup(uint64_t pc, unsigned long long *adds, unsigned long long *subs)
{
    struct lookup l = {pc, {0, 0, 0, RULE_UNSUPPORTED}, 0, 0, 0};
    dl_iterate_phdr(lookup_cb, &l);
    *adds = l.adds;
    *subs = l.subs;
    return l.rule;
}

/* ---- the trace memo ------------------------------------------------------------------------------
 * A trace is a function of where the unwind starts, of the rules (fixed while g_gen is) and of the
 * stack words it reads: the return addresses, and the saved rbp values that a CFA rule uses. Each
 * thread keeps its recent traces keyed by the first step's result (the allocator's caller: return
 * address, CFA, and rbp if a later rule reads the register before reloading it), with every word
 * read after it and the caller's tag for the trace (the depot's id). When every one of those words is unchanged, the unwind
 * would give the same trace: the tag is returned without stepping the frames or hashing the trace.
 * An interpreter allocates from a few hundred call sites at a few stack depths, so most traces repeat.
 * Reads are bounds-checked as the unwinder's are; a signal handler's allocation while the memo is being
 * filled leaves it alone (busy), and an entry is read under a sequence count, so a handler that
 * publishes meanwhile makes the reader miss, not mix two traces. An entry is right for any thread
 * whose stack holds those words at those places (a new thread on a cached stack may reuse it). */
#define MEMO_BITS 6
#define MEMO_READS 32 /* the return address of each frame, and its saved rbp if used; more: not kept */
struct memo_key {
    unsigned gen;
    uint8_t max; /* the unwind's frame limit */
    uint8_t nreads;
    uint8_t uses_rbp1; /* a rule reads rbp before any frame reloads it: rbp1 is part of the key */
    uintptr_t ip0, ip1, sp1, rbp1;
};
struct memo_entry {
    unsigned seq; /* odd while written; used when even and nonzero */
    uint32_t tag;
    struct memo_key k;
    int16_t off[MEMO_READS]; /* the words read after the first step: at sp1 + off ... */
    uintptr_t val[MEMO_READS]; /* ... holding val */
};
/* one thread's (not in TLS: a thread made with a PTHREAD_STACK_MIN stack must still fit its static TLS) */
struct cfi_memo {
    int busy; /* pending is being filled, or waits for cfi_memo_publish */
    int keep; /* pending is complete */
    struct memo_entry pending;
    struct memo_entry e[1u << MEMO_BITS];
};
_Static_assert(sizeof(struct cfi_memo) <= CFI_MEMO_BYTES, "CFI_MEMO_BYTES holds a memo");

void cfi_memo_reset(struct cfi_memo *M)
{
    M->busy = 0;
    M->keep = 0;
}

static inline uint32_t memo_slot(uintptr_t ip1, uintptr_t sp1)
{
    return (uint32_t)(((ip1 ^ (sp1 << 17)) * 0x9e3779b97f4a7c15ull) >> (64 - MEMO_BITS));
}

/* the memoized trace for this first step, if every word it read is unchanged: its tag, else 0 */
static inline uint32_t memo_find(const struct cfi_memo *M, uintptr_t ip0, uintptr_t ip1, uintptr_t sp1, uintptr_t rbp1,
                                 unsigned gen, int max, uintptr_t lo, uintptr_t stack_hi)
{
    const struct memo_entry *e = &M->e[memo_slot(ip1, sp1)];
    unsigned seq = e->seq;
    __atomic_signal_fence(__ATOMIC_ACQUIRE);
    const struct memo_key *k = &e->k;
    if (!seq || (seq & 1) || k->gen != gen || k->max != max || k->ip1 != ip1 || k->sp1 != sp1 || k->ip0 != ip0 ||
        (k->uses_rbp1 && k->rbp1 != rbp1) || k->nreads > MEMO_READS)
        return 0;
    for (unsigned i = 0; i < k->nreads; i++) {
        uintptr_t at = sp1 + (uintptr_t)(intptr_t)e->off[i];
        if (at < lo || at + 8 > stack_hi || *(const uintptr_t *)at != e->val[i])
            return 0;
    }
    uint32_t tag = e->tag;
    __atomic_signal_fence(__ATOMIC_ACQUIRE);
    return e->seq == seq ? tag : 0;
}

static inline void memo_log(struct cfi_memo *M, uintptr_t at, uintptr_t val)
{
    struct memo_entry *m = &M->pending;
    intptr_t off = (intptr_t)(at - m->k.sp1);
    if (m->k.nreads >= MEMO_READS || off != (int16_t)off) {
        M->keep = 0;
        return;
    }
    m->off[m->k.nreads] = (int16_t)off;
    m->val[m->k.nreads++] = val;
}

void cfi_memo_publish(struct cfi_memo *M, uint32_t tag)
{
    if (M->keep && tag) {
        const struct memo_entry *m = &M->pending;
        struct memo_entry *e = &M->e[memo_slot(m->k.ip1, m->k.sp1)];
        unsigned seq = e->seq | 1; /* odd: being written */
        e->seq = seq;
        __atomic_signal_fence(__ATOMIC_RELEASE);
        e->k = m->k;
        memcpy(e->off, m->off, m->k.nreads * sizeof(m->off[0]));
        memcpy(e->val, m->val, m->k.nreads * sizeof(m->val[0]));
        e->tag = tag;
        __atomic_signal_fence(__ATOMIC_RELEASE);
        e->seq = seq + 1;
    }
    __atomic_signal_fence(__ATOMIC_RELEASE);
    M->busy = 0;
}

/* ---- the unwinder ------------------------------------------------------------------------------- */
/* The frames from (ip, sp, rbp), lo being the unwinder's own frame; with memo, a first step whose
 * trace is memoized returns CFI_MEMO_HIT and its tag, and any other is logged: then *tag = 1 on
 * success, and the caller owes cfi_memo_publish. */
static inline __attribute__((always_inline)) int unwind_from(void **buf, int max, uintptr_t stack_hi, uintptr_t lo,
                                                             uintptr_t sp, uintptr_t rbp, uintptr_t ip, cfi_entry *c,
                                                             struct cfi_memo *M, uint32_t *tag)
{
    unsigned gen = __atomic_load_n(&g_gen, __ATOMIC_ACQUIRE);
    if (unlikely(t_l1_gen != gen)) {
        memset(t_l1_ip, 0, sizeof(t_l1_ip));
        t_l1_gen = gen;
    }
    uint64_t *l1_ip = t_l1_ip; /* their addresses once: off the step's chain */
    struct cfi_rule *l1_rule = t_l1_rule;
    uintptr_t ip0 = ip;
    int n = 0, logging = 0, owner = 0, rbp_reloaded = 0, rbp_pending = 0;
    uintptr_t rbp_at = 0; /* where rbp was last reloaded from, logged only if a rule uses it */
    int memo = M != NULL;
    if (memo)
        *tag = 0;
    while (n < max) {
        buf[n++] = (void *)ip;
        uint32_t k = l1_slot(ip);
        if (unlikely(l1_ip[k] != ip)) {
            /* every way fills l1_rule[k], so that the step below has one load of its rule */
            cfi_entry hot;
            if (hot_get(c, ip, &hot)) {
                l1_rule[k] = rule_decode(hot);
            } else if (cache_get(c, ip, &l1_rule[k])) {
                hot_put(c, rule_encode(ip, l1_rule[k]));
            } else {
                unsigned long long adds, subs;
                struct cfi_rule found = rule_lookup(ip - 1, &adds, &subs); /* the call: a noreturn call may end its function */
                if (__atomic_load_n(&g_cache_shared, __ATOMIC_RELAXED) && (adds != g_share_adds || subs != g_share_subs)) {
                    detach_if_code_changed(adds, subs);
                    c = __atomic_load_n(&g_cache, __ATOMIC_ACQUIRE);
                    if (!c)
                        goto fail;
                    if (logging)
                        M->keep = 0; /* the rules changed under the trace: not memoized */
                    logging = 0;
                    memo = 0; /* nor looked up with the old rules' generation */
                }
                cache_put(c, ip, found);
                if (ip <= IP_MASK) {
                    /* as the cache gives it back: a rule the encoding cannot hold is unsupported */
                    cfi_entry e = rule_encode(ip, found);
                    l1_rule[k] = rule_decode(e);
                    hot_put(c, e);
                } else {
                    l1_rule[k] = found; /* not cacheable: used once, the slot left empty */
                }
            }
            l1_ip[k] = ip <= IP_MASK ? ip : 0;
        }
        struct cfi_rule r = l1_rule[k];
        if (unlikely(r.kind != RULE_STEP)) {
            if (r.kind == RULE_LAST)
                goto done;
            goto fail;
        }
        if (logging && r.cfa_is_rbp) {
            /* the trace depends on rbp's value only here: a saved rbp no rule reads (code without
             * frame pointers saves arbitrary data there) is not part of the memo's key */
            if (!rbp_reloaded)
                M->pending.k.uses_rbp1 = 1;
            else if (rbp_pending)
                memo_log(M, rbp_at, rbp);
            rbp_pending = 0;
        }
        uintptr_t cfa = (r.cfa_is_rbp ? rbp : sp) + (uintptr_t)(intptr_t)r.cfa_off;
        /* sp only grows from lo + 16, so cfa > sp also keeps the return address's word above lo */
        if (cfa <= sp || cfa > stack_hi)
            goto fail;
        if (r.rbp_off) {
            uintptr_t at = cfa + (uintptr_t)(intptr_t)r.rbp_off;
            if (at < lo || at + 8 > stack_hi)
                goto fail;
            rbp = *(const uintptr_t *)at;
            if (logging) {
                rbp_at = at;
                rbp_pending = 1;
                rbp_reloaded = 1;
            }
        }
        ip = *(const uintptr_t *)(cfa - 8);
        sp = cfa;
        if (logging)
            memo_log(M, cfa - 8, ip);
        if (memo && n == 1) {
            /* the first step is done: (ip, sp) is the allocator's caller */
            memo = 0;
            if (!M->busy) {
                uint32_t found = memo_find(M, ip0, ip, sp, rbp, gen, max, lo, stack_hi);
                if (found) {
                    *tag = found;
                    return CFI_MEMO_HIT;
                }
                M->busy = 1;
                M->keep = 1;
                owner = 1;
                __atomic_signal_fence(__ATOMIC_SEQ_CST);
                M->pending.k = (struct memo_key){gen, (uint8_t)max, 0, 0, ip0, ip, sp, rbp};
                logging = 1;
            }
        }
        if (ip < 0x4000)
            break; /* libunwind's end: a zero or bogus return address */
    }
done:
    if (owner)
        *tag = 1;
    return n;
fail:
    if (owner) {
        M->keep = 0;
        __atomic_signal_fence(__ATOMIC_RELEASE);
        M->busy = 0;
    }
    return -1;
}

/* where the caller's stack starts: this function's own frame (a frame pointer, forced) */
#define UNWIND_START(stack_lo, stack_hi)                                                                  \
    cfi_entry *c = __atomic_load_n(&g_cache, __ATOMIC_ACQUIRE);                                            \
    if (!c || !stack_hi)                                                                                   \
        return -1;                                                                                         \
    const uintptr_t *fp = (const uintptr_t *)__builtin_frame_address(0);                                   \
    uintptr_t lo = (uintptr_t)fp, sp = (uintptr_t)fp + 16, rbp = fp[0];                                    \
    uintptr_t ip = (uintptr_t)__builtin_return_address(0);                                                 \
    if (lo < stack_lo || sp > stack_hi)                                                                    \
        return -1 /* another stack (sigaltstack, a coroutine's) */

__attribute__((noinline, optimize("no-omit-frame-pointer"))) int cfi_backtrace(void **buf, int max, uintptr_t stack_lo, uintptr_t stack_hi)
{
    UNWIND_START(stack_lo, stack_hi);
    return unwind_from(buf, max, stack_hi, lo, sp, rbp, ip, c, NULL, NULL);
}

__attribute__((noinline, optimize("no-omit-frame-pointer"))) int cfi_backtrace_memo(void **buf, int max, uintptr_t stack_lo,
                                                                                     uintptr_t stack_hi, struct cfi_memo *M,
                                                                                     uint32_t *tag)
{
    UNWIND_START(stack_lo, stack_hi);
    return unwind_from(buf, max, stack_hi, lo, sp, rbp, ip, c, max <= CFI_MEMO_FRAMES ? M : NULL, tag);
}
