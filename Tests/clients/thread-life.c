/*
 * thread-life: glibc's thread and loader bookkeeping as kmemleak must see it (issue 8, items 1-3).
 * Prints "LEAK 0x..." for the planted leaks (the exact expected report), "READY", then obeys
 * commands on stdin, each answered by lines and "OK". Modes (argv[1]):
 *   pool <lib>  dlopens <lib> (loader-tls-lib); the main thread and 3 idle pool workers keep a block
 *               in its __thread variable; 28 threads are created and joined (8 of them touched the
 *               library's TLS); one planted leak. Expected: exactly the planted leak.
 *   tsd         a joinable thread's pthread key destructor holds the only reference to a block on its
 *               stack and blocks; 4 detached threads failed a dlsym (glibc's dlerror state) and block in
 *               their destructors too. "DTORS-WAITING" when all wait. Command "release": they finish,
 *               "ALL-GONE" when only the main thread is left. Expected: nothing, before and after.
 *   result      a thread returns a malloc'd block and has exited ("EXITED"); command "join" joins it
 *               and frees the block ("JOINED"). Expected: nothing, before and after.
 *   arg         pthread_create's argument is a malloc'd block the new thread has not seen yet: a
 *               SIGUSR1 handler blocks it before its start routine runs ("ARG-WAITING" once it does). Command
 *               "release": it runs, frees the argument and is joined ("ARG-FREED"). Expected: nothing.
 *   churn <n>   n detached threads (at most 4 at a time, half created detached, half detached by
 *               pthread_detach) and n joined ones, each mallocs and frees; then READY. With a small
 *               KMEMLEAK_MAX_THREADS the table must not fill: records of gone threads are reused.
 *               READY once every one of them is gone (a detached thread still exiting would count).
 *   detach-early <n>  n threads, one at a time, each detached by pthread_detach before it has run at
 *               all (a pending SIGUSR1 holds it before its start routine, as in arg), each on a stack
 *               of its own (glibc never reuses its descriptor); READY once the last one is gone. With a
 *               small KMEMLEAK_MAX_THREADS the table must not fill: each record is known as detached.
 * Command "exit" (or EOF) ends it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int release_pipe[2];

static void say(const char *fmt, void *p)
{
    printf(fmt, p);
    fflush(stdout);
}

/* blocks until the main thread writes a byte to release_pipe */
static void wait_release(void)
{
    char c;
    while (read(release_pipe[0], &c, 1) != 1) {
    }
}

static int task_count(void)
{
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

/* waits (up to 30 s) until only `n` tasks are left */
static int wait_tasks(int n)
{
    for (int i = 0; i < 3000; i++) {
        if (task_count() == n)
            return 1;
        usleep(10000);
    }
    return 0;
}

static int task_exists(int tid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/task/%d", tid);
    return access(path, F_OK) == 0;
}

/* ---- pool ---- */
static void *(*tls_keep)(size_t);
static int (*tls_touch)(void);
static void (*tls_release)(void);
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER;
static int pool_ready, pool_stop;

static void *pool_worker(void *arg)
{
    tls_keep(60 + (size_t)arg);
    pthread_mutex_lock(&pool_mu);
    pool_ready++;
    pthread_cond_broadcast(&pool_cv);
    while (!pool_stop)
        pthread_cond_wait(&pool_cv, &pool_mu);
    pthread_mutex_unlock(&pool_mu);
    tls_release();
    return NULL;
}

static void *short_thread(void *arg)
{
    if (arg)
        tls_touch();
    return NULL;
}

static __attribute__((noinline)) void plant_leak(size_t size)
{
    void *p = malloc(size);
    memset(p, 0x33, size);
    say("LEAK %p\n", p);
}

static int mode_pool(const char *lib, pthread_t *workers)
{
    void *h = dlopen(lib, RTLD_NOW);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", lib, dlerror());
        return -1;
    }
    tls_keep = (void *(*)(size_t))dlsym(h, "kml_tls_keep");
    tls_touch = (int (*)(void))dlsym(h, "kml_tls_touch");
    tls_release = (void (*)(void))dlsym(h, "kml_tls_release");
    tls_keep(100);
    for (int i = 0; i < 3; i++)
        pthread_create(&workers[i], NULL, pool_worker, (void *)(size_t)i);
    for (int round = 0; round < 4; round++) {
        pthread_t t[7];
        for (int i = 0; i < 7; i++)
            pthread_create(&t[i], NULL, short_thread, (void *)(size_t)(i < 2));
        for (int i = 0; i < 7; i++)
            pthread_join(t[i], NULL);
    }
    pthread_mutex_lock(&pool_mu);
    while (pool_ready < 3)
        pthread_cond_wait(&pool_cv, &pool_mu);
    pthread_mutex_unlock(&pool_mu);
    plant_leak(4321);
    return 0;
}

/* ---- tsd ---- */
static pthread_key_t slow_key;
static pthread_mutex_t tsd_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tsd_cv = PTHREAD_COND_INITIALIZER;
static int tsd_waiting;

static void slow_dtor(void *v)
{
    void *volatile held = v; /* glibc has cleared the key's slot: this frame holds the only pointer */
    pthread_mutex_lock(&tsd_mu);
    tsd_waiting++;
    pthread_cond_broadcast(&tsd_cv);
    pthread_mutex_unlock(&tsd_mu);
    wait_release();
    free(held);
}

static void *tsd_thread(void *arg)
{
    void *p = malloc(555);
    memset(p, 0x44, 555);
    pthread_setspecific(slow_key, p);
    return NULL;
}

static void *dlerror_thread(void *arg)
{
    /* fails: glibc keeps the error (a malloc'd struct in its own TLS) until the thread ends */
    if (dlsym(RTLD_DEFAULT, "kml_no_such_symbol") != NULL)
        fprintf(stderr, "dlsym unexpectedly succeeded\n");
    pthread_setspecific(slow_key, malloc(16));
    return NULL;
}

static int mode_tsd(pthread_t *joinable)
{
    pthread_key_create(&slow_key, slow_dtor);
    pthread_create(joinable, NULL, tsd_thread, NULL);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (int i = 0; i < 4; i++) {
        pthread_t t;
        if (i < 2) {
            pthread_create(&t, &attr, dlerror_thread, NULL);
        } else {
            pthread_create(&t, NULL, dlerror_thread, NULL);
            pthread_detach(t);
        }
    }
    pthread_attr_destroy(&attr);
    pthread_mutex_lock(&tsd_mu);
    while (tsd_waiting < 5)
        pthread_cond_wait(&tsd_cv, &tsd_mu);
    pthread_mutex_unlock(&tsd_mu);
    printf("DTORS-WAITING\n");
    return 0;
}

/* ---- result ---- */
static int result_tid;

static void *result_thread(void *arg)
{
    result_tid = (int)syscall(SYS_gettid);
    void *p = malloc(777);
    memset(p, 0x55, 777);
    return p;
}

static int mode_result(pthread_t *t)
{
    pthread_create(t, NULL, result_thread, NULL);
    while (!__atomic_load_n(&result_tid, __ATOMIC_ACQUIRE) || task_exists(result_tid))
        usleep(10000);
    printf("EXITED\n");
    return 0;
}

/* ---- arg ---- */
static volatile sig_atomic_t arg_waiting;

static void usr1_blocks(int sig)
{
    arg_waiting = 1;
    wait_release();
}

/* Blocks SIGUSR1 in the calling thread and sets `none` to the empty mask: a thread created with
 * `none` (pthread_attr_setsigmask_np) takes a pending SIGUSR1 and waits in usr1_blocks before it runs. */
static void hold_new_threads_at_start(sigset_t *none)
{
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigemptyset(none);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    signal(SIGUSR1, usr1_blocks);
}

static void *arg_thread(void *arg)
{
    free(arg);
    return NULL;
}

static __attribute__((noinline)) void start_with_arg(pthread_t *t)
{
    /* every thread blocks SIGUSR1 but the new one, which takes the pending signal before it runs */
    sigset_t none;
    hold_new_threads_at_start(&none);
    kill(getpid(), SIGUSR1);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setsigmask_np(&attr, &none);
    void *p = malloc(888);
    memset(p, 0x66, 888);
    pthread_create(t, &attr, arg_thread, p);
    pthread_attr_destroy(&attr);
    for (int i = 0; i < 3000 && !arg_waiting; i++)
        usleep(10000);
    printf(arg_waiting ? "ARG-WAITING\n" : "ARG-NOT-WAITING\n");
}

/* ---- churn ---- */
static pthread_mutex_t churn_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t churn_cv = PTHREAD_COND_INITIALIZER;
static int churn_running;

static void *churn_thread(void *arg)
{
    free(malloc(64));
    if (arg) {
        pthread_mutex_lock(&churn_mu);
        churn_running--;
        pthread_cond_broadcast(&churn_cv);
        pthread_mutex_unlock(&churn_mu);
    }
    return NULL;
}

static int mode_churn(int n)
{
    pthread_attr_t detached;
    pthread_attr_init(&detached);
    pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
    for (int i = 0; i < n; i++) {
        pthread_mutex_lock(&churn_mu);
        while (churn_running >= 4)
            pthread_cond_wait(&churn_cv, &churn_mu);
        churn_running++;
        pthread_mutex_unlock(&churn_mu);
        pthread_t t;
        if (i % 2) {
            if (pthread_create(&t, &detached, churn_thread, (void *)1) != 0)
                return -1;
        } else {
            if (pthread_create(&t, NULL, churn_thread, (void *)1) != 0)
                return -1;
            pthread_detach(t);
        }
        if (pthread_create(&t, NULL, churn_thread, NULL) != 0)
            return -1;
        pthread_join(t, NULL);
    }
    pthread_attr_destroy(&detached);
    /* churn_running counts threads until they return, not until their task is gone */
    return wait_tasks(1) ? 0 : -1;
}

/* ---- detach-early ---- */
static int early_tid;

static void *early_thread(void *arg)
{
    free(malloc(64));
    __atomic_store_n(&early_tid, (int)syscall(SYS_gettid), __ATOMIC_RELEASE);
    return NULL;
}

static int mode_detach_early(int n)
{
    sigset_t none;
    hold_new_threads_at_start(&none);
    for (int i = 0; i < n; i++) {
        size_t size = 256 << 10;
        void *stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED)
            return -1;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setsigmask_np(&attr, &none);
        pthread_attr_setstack(&attr, stack, size);
        arg_waiting = 0;
        __atomic_store_n(&early_tid, 0, __ATOMIC_RELEASE);
        kill(getpid(), SIGUSR1);
        pthread_t t;
        if (pthread_create(&t, &attr, early_thread, NULL) != 0)
            return -1;
        pthread_attr_destroy(&attr);
        for (int k = 0; k < 3000 && !arg_waiting; k++)
            usleep(1000);
        if (!arg_waiting || pthread_detach(t) != 0 || write(release_pipe[1], "x", 1) != 1)
            return -1;
        for (int k = 0; k < 30000 && (!__atomic_load_n(&early_tid, __ATOMIC_ACQUIRE) || task_exists(early_tid)); k++)
            usleep(1000);
        if (!__atomic_load_n(&early_tid, __ATOMIC_ACQUIRE) || task_exists(early_tid))
            return -1;
        /* its stack stays mapped: no later thread gets its descriptor */
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (pipe(release_pipe) != 0)
        return 1;
    pthread_t threads[8];
    int rc = -1;
    if (!strcmp(mode, "pool") && argc > 2)
        rc = mode_pool(argv[2], threads);
    else if (!strcmp(mode, "tsd"))
        rc = mode_tsd(threads);
    else if (!strcmp(mode, "result"))
        rc = mode_result(threads);
    else if (!strcmp(mode, "churn") && argc > 2)
        rc = mode_churn(atoi(argv[2]));
    else if (!strcmp(mode, "detach-early") && argc > 2)
        rc = mode_detach_early(atoi(argv[2]));
    else if (!strcmp(mode, "arg")) {
        start_with_arg(threads);
        rc = 0;
    }
    if (rc != 0) {
        fprintf(stderr, "usage: thread-life pool <lib> | tsd | result | arg | churn <n> | detach-early <n>\n");
        return 2;
    }
    printf("READY\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof(line), stdin) && strncmp(line, "exit", 4) != 0) {
        if (!strncmp(line, "release", 7) && !strcmp(mode, "tsd")) {
            if (write(release_pipe[1], "xxxxx", 5) != 5)
                return 1;
            pthread_join(threads[0], NULL);
            printf(wait_tasks(1) ? "ALL-GONE\n" : "STILL-RUNNING\n");
        } else if (!strncmp(line, "release", 7) && !strcmp(mode, "arg")) {
            if (write(release_pipe[1], "x", 1) != 1)
                return 1;
            pthread_join(threads[0], NULL);
            printf("ARG-FREED\n");
        } else if (!strncmp(line, "join", 4) && !strcmp(mode, "result")) {
            void *ret = NULL;
            pthread_join(threads[0], &ret);
            free(ret);
            printf("JOINED\n");
        } else {
            printf("ERROR %s", line);
        }
        printf("OK\n");
        fflush(stdout);
    }
    if (!strcmp(mode, "pool")) {
        pthread_mutex_lock(&pool_mu);
        pool_stop = 1;
        pthread_cond_broadcast(&pool_cv);
        pthread_mutex_unlock(&pool_mu);
        for (int i = 0; i < 3; i++)
            pthread_join(threads[i], NULL);
    }
    return 0;
}
