/*
 * slow-fuse: a FUSE file system whose one file never answers a read (issue 9 item 6).
 *
 *   slow-fuse MOUNTPOINT
 *
 * Serves MOUNTPOINT/slow, a regular 1 MiB file. Lookups, getattr and open answer at once; every read
 * prints "READ <offset> <size>" on stdout and then blocks until the server exits, so a reader of the
 * file (or a process touching a mapping of it) waits for as long as the server lives. Prints
 * "MOUNTED" once the kernel has initialised the session, and "READS <n>" at exit.
 * SIGTERM prints "READS <n>" and exits at once (libfuse's own handler would wait for the blocked
 * workers); neither it nor SIGKILL leaves a mount: auto_unmount has fusermount3 unmount when the
 * server's /dev/fuse descriptor closes.
 */
#define FUSE_USE_VERSION 35
#include <errno.h>
#include <fuse.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char file_name[] = "/slow";
static const off_t file_size = 1 << 20;
static atomic_long reads;

/* One write(2) per line: lines from concurrent workers never interleave. */
static void say(const char *line) {
    size_t length = strlen(line);
    while (length > 0) {
        ssize_t n = write(1, line, length);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        line += n;
        length -= (size_t)n;
    }
}

/* "READS <n>\n" with async-signal-safe calls only. */
static void say_reads(void) {
    char line[32] = "READS ", digits[24];
    long n = atomic_load(&reads);
    int k = 0;
    do { digits[k++] = (char)('0' + n % 10); n /= 10; } while (n > 0 && k < (int)sizeof digits);
    size_t at = strlen(line);
    while (k > 0) line[at++] = digits[--k];
    line[at++] = '\n';
    line[at] = 0;
    say(line);
}

static void on_sigterm(int signal) {
    (void)signal;
    say_reads();
    _exit(0);
}

static void *slow_init(struct fuse_conn_info *conn, struct fuse_config *config) {
    (void)conn;
    config->kernel_cache = 0;
    /* Here, after fuse_main installed its handlers: ours replaces its SIGTERM one. */
    struct sigaction action = { .sa_handler = on_sigterm };
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    say("MOUNTED\n");
    return NULL;
}

static int slow_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    (void)fi;
    memset(st, 0, sizeof *st);
    if (strcmp(path, "/") == 0) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        return 0;
    }
    if (strcmp(path, file_name) == 0) {
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = file_size;
        return 0;
    }
    return -ENOENT;
}

static int slow_readdir(const char *path, void *buffer, fuse_fill_dir_t fill, off_t offset,
                        struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)offset; (void)fi; (void)flags;
    if (strcmp(path, "/") != 0) return -ENOENT;
    fill(buffer, ".", NULL, 0, 0);
    fill(buffer, "..", NULL, 0, 0);
    fill(buffer, file_name + 1, NULL, 0, 0);
    return 0;
}

static int slow_open(const char *path, struct fuse_file_info *fi) {
    if (strcmp(path, file_name) != 0) return -ENOENT;
    if ((fi->flags & O_ACCMODE) != O_RDONLY) return -EACCES;
    return 0;
}

static int slow_read(const char *path, char *buffer, size_t size, off_t offset, struct fuse_file_info *fi) {
    (void)path; (void)buffer; (void)fi;
    atomic_fetch_add(&reads, 1);
    char line[96];
    snprintf(line, sizeof line, "READ %lld %zu\n", (long long)offset, size);
    say(line);
    /* Never answers: poll is a cancellation point, so the session's end still takes this worker. */
    for (;;) poll(NULL, 0, -1);
    return 0;
}

static const struct fuse_operations operations = {
    .init = slow_init,
    .getattr = slow_getattr,
    .readdir = slow_readdir,
    .open = slow_open,
    .read = slow_read,
};

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: slow-fuse MOUNTPOINT\n");
        return 64;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    /* -f: foreground (the test kills us by pid); multithreaded, so a blocked read stops nothing else. */
    char *fuse_argv[] = { argv[0], "-f", "-o", "auto_unmount,fsname=slow-fuse,subtype=slow-fuse", argv[1], NULL };
    int rc = fuse_main(5, fuse_argv, &operations, NULL);
    say_reads();
    return rc;
}
