/*
 * fork-window: a forked child that the daemon's /proc discovery meets before the shim gave it its own
 * table (it still maps its parent's, whose header names the parent) is adopted once it has one.
 * Run with LD_PRELOAD="libkmemleak.so libfork-window-hook.so" (see fork-window-hook.c).
 *
 * The parent forks one child, held in the hook, and prints "CHILD <pid>" and "READY". Command
 * "release": the child goes on, leaks one 208-byte block (a size glibc's top-chunk pointer cannot hide), prints "LEAK 0x..." and "CHILD-READY"
 * (relayed by the parent, which prints "OK" after it). Command "exit" (or EOF): both exit.
 * Expected report: exactly the child's leak.
 *
 * fork-window race: on "release", the parent first allocates two 208-byte blocks it keeps in globals,
 * while the child is still held. The child copies its table after fork() returned, from the table the
 * parent goes on writing: the parent's blocks must not become the child's (the second one would be
 * the child's false leak; its own leak replaces the first). Expected report: the same, exactly the child's leak.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* the child's output is built as text first: no binary copy of the leaked pointer stays in our data */
static char out[256];
/* static stdio buffers, set before fork: the parent allocates nothing while its child is held (in
 * "race" mode it does, on purpose) */
static char stdin_buffer[4096], stdout_buffer[4096];
/* race mode: the parent's blocks, allocated while its child is held (two: the child's own leak lands
 * where the first one is in the parent) */
static void *volatile parent_blocks[2];

static __attribute__((noinline)) void leak_block(void)
{
    void *volatile p = malloc(208);
    memset((void *)p, 0x5a, 208);
    snprintf(out, sizeof out, "LEAK %p\nCHILD-READY\n", p);
    p = NULL;
}

/* overwrite the dead stack frames below ours, where copies of the leaked pointer may linger */
static __attribute__((noinline)) void scrub_stack(void)
{
    volatile char buf[64 * 1024];
    memset((char *)buf, 0, sizeof(buf));
    __asm__ volatile("" : : "r"(buf) : "memory");
}

int main(int argc, char **argv)
{
    int race = argc > 1 && strcmp(argv[1], "race") == 0;
    void (*hold)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "fork_window_hold");
    if (!hold) {
        fprintf(stderr, "fork-window: libfork-window-hook.so is not preloaded\n");
        return 2;
    }
    setvbuf(stdin, stdin_buffer, _IOLBF, sizeof stdin_buffer);
    setvbuf(stdout, stdout_buffer, _IOLBF, sizeof stdout_buffer);
    int release[2], report[2], stay[2];
    if (pipe(release) || pipe(report) || pipe(stay))
        return 1;
    hold(release[0]);
    pid_t child = fork();
    if (child < 0)
        return 1;
    if (child == 0) { /* runs only after the hook let it go and the shim gave it its table */
        close(release[1]);
        close(report[0]);
        close(stay[1]);
        leak_block();
        scrub_stack();
        (void)!write(report[1], out, strlen(out));
        memset(out, 0, sizeof out);
        char c;
        while (read(stay[0], &c, 1) > 0) {} /* until the parent closes it */
        _exit(0);
    }
    hold(-1);
    close(release[0]);
    close(report[1]);
    close(stay[0]);
    printf("CHILD %d\nREADY\n", (int)child);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "release", 7) == 0) {
            for (int i = 0; race && i < 2; i++)
                parent_blocks[i] = malloc(208);
            (void)!write(release[1], "x", 1);
            char buf[256];
            size_t used = 0;
            ssize_t n;
            while (used < sizeof buf - 1 && (n = read(report[0], buf + used, sizeof buf - 1 - used)) > 0) {
                used += (size_t)n;
                buf[used] = 0;
                if (strstr(buf, "CHILD-READY\n"))
                    break;
            }
            buf[used] = 0;
            fputs(buf, stdout);
            memset(buf, 0, sizeof buf);
            printf("OK\n");
        } else if (strncmp(line, "exit", 4) == 0) {
            break;
        }
    }
    close(release[1]);
    close(stay[1]);
    waitpid(child, NULL, 0);
    return 0;
}
