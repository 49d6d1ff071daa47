/*
 * symbol-sites - known call sites for the symbolizer's tests (issue 11 item 1). Built with -g; the
 * Makefile also makes stripped copies (with a separate debug file, without a build id, with
 * MiniDebugInfo). The tests find the lines by the SITE_* markers in this file.
 *
 * "symbol-sites sites": prints the return addresses of three calls, then waits for EOF on stdin:
 *   DIRECT 0x<ra>    the call of where() in direct_site (SITE_DIRECT)
 *   INLINED 0x<ra>   the call of where() in inlined_site, always inlined into inline_caller (SITE_INLINED,
 *                    called at SITE_CALLER)
 *   READY
 * "symbol-sites" (under the shim): leaks one block from leak_site (SITE_LEAK), prints LEAK 0x<addr> and
 * READY, then exits 0 on "exit" or EOF.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) void *where(void)
{
    return __builtin_return_address(0);
}

__attribute__((noinline)) void *direct_site(void)
{
    void *ra = where(); /* SITE_DIRECT */
    __asm__ volatile("" : : "r"(ra) : "memory");
    return ra;
}

static inline __attribute__((always_inline)) void *inlined_site(void)
{
    void *ra = where(); /* SITE_INLINED */
    __asm__ volatile("" : : "r"(ra) : "memory");
    return ra;
}

__attribute__((noinline)) void *inline_caller(void)
{
    void *ra = inlined_site(); /* SITE_CALLER */
    __asm__ volatile("" : : "r"(ra) : "memory");
    return ra;
}

/* Turns the pointer into text at once, so that no copy of it stays where the daemon scans. */
static __attribute__((noinline)) void print_leak(char *line, size_t size)
{
    char *p = malloc(48); /* SITE_LEAK */
    if (p == NULL)
        exit(1);
    memset(p, 0x5a, 48);
    snprintf(line, size, "LEAK %p\n", (void *)p);
    p = NULL;
    __asm__ volatile("" : : "r"(p) : "memory");
}

static __attribute__((noinline)) void leak_site(char *line, size_t size)
{
    print_leak(line, size);
    __asm__ volatile("" : : : "memory");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "sites") == 0) {
        printf("DIRECT %p\nINLINED %p\nREADY\n", direct_site(), inline_caller());
    } else {
        char line[64];
        leak_site(line, sizeof line);
        fputs(line, stdout);
        /* scrub the stack below us: the block's address was passed through it */
        volatile char scrub[4096];
        memset((char *)scrub, 0, sizeof scrub);
        puts("READY");
    }
    char buf[64];
    while (fgets(buf, sizeof buf, stdin) != NULL)
        if (strncmp(buf, "exit", 4) == 0)
            break;
    return 0;
}
