/*
 * proctitle: sets its process title the way nginx (ngx_setproctitle), postgres and sshd do: it copies
 * the environment strings to the heap, points environ at the copies, then overwrites the whole
 * contiguous argv + environment area with the title. Only then does it fork its workers (nginx's
 * workers start after the master has set its title), so an LD_PRELOAD library that kept a pointer
 * into the original environment reads the title instead.
 *
 *   proctitle [WORKERS]   every process prints "LEAK 0x..." for the one block it leaked
 *                         (master 96 bytes, worker i 208+16i: sizes that
 *                         glibc's top-chunk pointer cannot hide) and "PID <pid>"; the master prints
 *                         "READY" once every worker has; on stdin EOF or "exit" all of them exit.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* output is built as text first: no binary copy of a leaked pointer stays in our data */
static char out[4096];
static size_t out_len;

static __attribute__((noinline)) void leak_malloc(size_t size)
{
    void *volatile p = malloc(size);
    memset((void *)p, 0x5a, size);
    out_len += (size_t)snprintf(out + out_len, sizeof(out) - out_len, "LEAK %p\nPID %d\n", p, (int)getpid());
    p = NULL;
}

/* overwrite the dead stack frames below ours, where copies of leaked pointers may linger */
static __attribute__((noinline)) void scrub_stack(void)
{
    volatile char buf[64 * 1024];
    memset((char *)buf, 0, sizeof(buf));
    __asm__ volatile("" : : "r"(buf) : "memory");
}

static void flush_out(void)
{
    fwrite(out, 1, out_len, stdout);
    fflush(stdout);
    memset(out, 0, out_len);
    out_len = 0;
}

/* ngx_init_setproctitle + ngx_setproctitle */
static void set_proctitle(char **argv, const char *title)
{
    char *end = argv[0];
    for (int i = 0; argv[i]; i++)
        if (argv[i] == end)
            end = argv[i] + strlen(argv[i]) + 1;
    size_t n = 0;
    while (environ[n])
        n++;
    char **copy = calloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        if (environ[i] == end)
            end = environ[i] + strlen(environ[i]) + 1;
        copy[i] = strdup(environ[i]);
    }
    environ = copy;
    memset(argv[0], 0, (size_t)(end - argv[0]));
    strncpy(argv[0], title, (size_t)(end - argv[0]) - 1);
    argv[1] = NULL;
}

int main(int argc, char **argv)
{
    int workers = argc > 1 ? atoi(argv[1]) : 2;
    if (workers < 0 || workers > 64)
        workers = 2;
    set_proctitle(argv, "proctitle: master process /etc/nowhere.conf");
    leak_malloc(96);
    scrub_stack();
    flush_out();

    int ready[2], quit[2];
    if (pipe(ready) || pipe(quit))
        return 1;
    pid_t pids[64];
    for (int i = 0; i < workers; i++) {
        pids[i] = fork();
        if (pids[i] < 0)
            return 1;
        if (pids[i] == 0) {
            close(ready[0]);
            close(quit[1]);
            strncpy(argv[0], "proctitle: worker process", strlen(argv[0]));
            leak_malloc(208 + 16 * (size_t)i);
            scrub_stack();
            flush_out();
            if (write(ready[1], "r", 1) != 1)
                _exit(1);
            char c;
            while (read(quit[0], &c, 1) > 0) {
            }
            _exit(0);
        }
    }
    close(ready[1]);
    close(quit[0]);
    for (int i = 0; i < workers; i++) {
        char c;
        if (read(ready[0], &c, 1) != 1)
            return 1;
    }
    printf("READY\n");
    fflush(stdout);
    char line[128];
    while (fgets(line, sizeof(line), stdin) && strncmp(line, "exit", 4)) {
    }
    close(quit[1]); /* workers see EOF */
    for (int i = 0; i < workers; i++)
        waitpid(pids[i], NULL, 0);
    return 0;
}
