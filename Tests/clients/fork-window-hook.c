/*
 * fork-window-hook: preloaded after libkmemleak.so (LD_PRELOAD="libkmemleak.so libfork-window-hook.so"),
 * so that its constructor, and with it its pthread_atfork child handler, comes before the shim's.
 * Child handlers run in the order they were registered: a child that fork-window asked to hold stops
 * here, before the shim gives it its own table, and so keeps mapping its parent's table (header pid:
 * the parent's) for as long as the test wants. That is the window every fork child passes through.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int hold_fd = -1;

/* fork-window calls this (through dlsym) before fork(): the child waits for a byte on fd. */
__attribute__((visibility("default"))) void fork_window_hold(int fd) { hold_fd = fd; }

static void hold_child(void)
{
    if (hold_fd < 0)
        return;
    char line[64];
    int n = snprintf(line, sizeof line, "HELD %d\n", (int)getpid());
    (void)!write(1, line, (size_t)n);
    char c;
    (void)!read(hold_fd, &c, 1);
    hold_fd = -1;
}

__attribute__((constructor)) static void register_hold(void) { pthread_atfork(NULL, NULL, hold_child); }
