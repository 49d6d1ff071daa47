/* The shim's own unwinder (x86-64): DWARF CFI rules cached by return address. Internal to
 * libkmemleak.so; nothing here allocates, and every stack read is bounds-checked. */
#ifndef KMEMLEAK_CFI_UNWIND_H
#define KMEMLEAK_CFI_UNWIND_H
#include <stdint.h>

/* maps the rule cache (shared with forked children: see cfi_unwind.c); 0 on success */
int cfi_init(void);
/* the return addresses of the caller's stack, innermost first (frame 0: the return address of the
 * call to cfi_backtrace), at most max; -1 when a frame cannot be unwound from cached or simple
 * CFI rules (signal frames, CFA expressions, sp outside [stack_lo, stack_hi), a read outside
 * [sp, stack_hi)): use another unwinder */
int cfi_backtrace(void **buf, int max, uintptr_t stack_lo, uintptr_t stack_hi);
/* A thread's memo of recent traces (cfi_unwind.c), CFI_MEMO_BYTES of zeroed or reset memory.
 * cfi_backtrace_memo is cfi_backtrace through it (max <= CFI_MEMO_FRAMES, else without): CFI_MEMO_HIT
 * and *tag when every stack word the memoized trace of this caller read is unchanged (buf is not
 * filled); else as cfi_backtrace, and when it sets *tag to 1 (a result >= 0 this call logged),
 * cfi_memo_publish must follow with the caller's tag for these frames (0: keep nothing). */
#define CFI_MEMO_FRAMES 24
#define CFI_MEMO_HIT (-2)
#define CFI_MEMO_BYTES 24576
struct cfi_memo;
void cfi_memo_reset(struct cfi_memo *m);
int cfi_backtrace_memo(void **buf, int max, uintptr_t stack_lo, uintptr_t stack_hi, struct cfi_memo *m, uint32_t *tag);
void cfi_memo_publish(struct cfi_memo *m, uint32_t tag);
/* before fork(), in the parent: the cache is shared with the child from then on */
void cfi_prefork(void);
/* after fork(), in the child's forking thread: it keeps the cache's hot page (cfi_unwind.c) */
void cfi_forked_child(void);
/* after a successful dlclose */
void cfi_code_unloaded(void);
/* a cache mapped since the last call (the table's KML_REGION_SHIM_PRIVATE entry): 1 and its range */
int cfi_take_new_cache(uintptr_t *start, uintptr_t *size);
#endif
