/*
 * evil-lib: a library whose symbol names are not to be trusted. hostile-client copies the built
 * .so, overwrites every occurrence of PLACEHOLDER (the static function's name in .symtab and the
 * debug info) with a forged report record, and dlopens the copy. evil_leak() allocates from that
 * function, so the leak's backtrace has a frame whose %pS is the forged text.
 */
#include <stdlib.h>
#include <string.h>

#define PLACEHOLDER kmemleak_evil_placeholder_0123456789abcdefghijklmnopqrstuvwxyz_0123456789abcdefghijklmnopqrstuvwxyz

__attribute__((noinline)) static void *PLACEHOLDER(size_t n)
{
    void *p = malloc(n);
    if (p)
        memset(p, 0x5a, n); /* after the call: no tail call, the frame stays in the trace */
    return p;
}

void *evil_leak(void) { return PLACEHOLDER(48); }
