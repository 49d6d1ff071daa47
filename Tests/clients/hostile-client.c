/*
 * hostile-client: a client of kmemleakd that attacks it from inside its own process (issue 9).
 * Under libkmemleak.so it leaks two 64-byte buffers holding a password (prints "LEAK 0x..."), prints
 * "READY", then runs commands from stdin, one per line, answering "OK ..." or "ERR ...":
 *   header FIELD VALUE   store VALUE (decimal) into its own table header (the address its
 *                        rendezvous file announces, see own-table.h): live_objects, objects_used, objects_capacity, ...
 *   map-files DIR N      create N small files in DIR and map each (then close it)
 *   map-elf DIR N        create N sparse ELF files with 65535 program and section headers, map each
 *   hold N               allocate N small objects and keep them referenced (a static array)
 *   evil-lib SO DIR      copy SO (evil-lib) into DIR under a name with a quote and an ESC, replace
 *                        its placeholder symbol name with a forged record, dlopen it, leak through it
 * With --evil-comm as argument it first names itself 'x"\nunreferenced' (prctl), so the comm of its
 * leaks and of its adoption log line holds a quote and a newline.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>
#include "kmemleak_abi.h"
#include "own-table.h"

#define FIELD(name) { #name, offsetof(struct kml_header, name), sizeof(((struct kml_header *)0)->name) }
static const struct { const char *name; size_t offset, width; } fields[] = {
    FIELD(total_size), FIELD(pid), FIELD(flags), FIELD(nr_cpu_ids), FIELD(clk_tck),
    FIELD(objects_offset), FIELD(objects_capacity), FIELD(objects_used),
    FIELD(traces_offset), FIELD(traces_capacity), FIELD(traces_used),
    FIELD(threads_capacity), FIELD(threads_used), FIELD(comms_capacity), FIELD(comms_used),
    FIELD(regions_used), FIELD(areas_used), FIELD(alloc_seq), FIELD(live_objects), FIELD(daemon_scans),
};

static int set_header(const char *name, unsigned long long value)
{
    struct kml_header *h = own_table();
    if (!h)
        return -1;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (strcmp(fields[i].name, name) != 0)
            continue;
        char *p = (char *)h + fields[i].offset;
        if (fields[i].width == 8) { uint64_t v = value; memcpy(p, &v, 8); }
        else { uint32_t v = (uint32_t)value; memcpy(p, &v, 4); }
        return 0;
    }
    return -1;
}

static int map_files(const char *dir, int n, int elf)
{
    for (int i = 0; i < n; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s%d", dir, elf ? "elf" : "file", i);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            return -1;
        if (elf) {
            unsigned char h[64] = { 0x7f, 'E', 'L', 'F', 2, 1, 1 };
            uint64_t phoff = 64, shoff = 64 + 65535ull * 56;
            h[16] = 3; /* ET_DYN */
            memcpy(h + 32, &phoff, 8);
            memcpy(h + 40, &shoff, 8);
            h[54] = 56; h[56] = 0xff; h[57] = 0xff; /* e_phentsize, e_phnum 65535 */
            h[58] = 64; h[60] = 0xff; h[61] = 0xff; /* e_shentsize, e_shnum 65535 */
            if (write(fd, h, sizeof h) != sizeof h || ftruncate(fd, (off_t)(shoff + 65535ull * 64)) != 0)
                return -1;
        } else if (write(fd, "small file\n", 11) != 11 || ftruncate(fd, 4096) != 0) {
            return -1;
        }
        void *m = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (m == MAP_FAILED)
            return -1;
    }
    return 0;
}

static const char placeholder[] =
    "kmemleak_evil_placeholder_0123456789abcdefghijklmnopqrstuvwxyz_0123456789abcdefghijklmnopqrstuvwxyz";
static const char forged[] = "\nunreferenced object 0x00000bad (size 1):\n  comm \"sshd\", pid 1, jiffies 1\n";

/* Overwrites the dead frames below the caller: no stale copy of a leaked pointer stays where a
 * later, deeper call (fgets) would make it part of the live stack again. */
static __attribute__((noinline)) void scrub_stack(void)
{
    volatile char dead[32768];
    for (size_t i = 0; i < sizeof dead; i++)
        dead[i] = 0;
}

static __attribute__((noinline)) void leak_through(void *(*leak)(void))
{
    void *p = leak();
    printf("LEAK %p\n", p);
}

static int evil_lib(const char *so, const char *dir)
{
    FILE *in = fopen(so, "rb");
    if (!in)
        return -1;
    static char buf[1 << 22];
    size_t n = fread(buf, 1, sizeof buf, in);
    fclose(in);
    size_t len = strlen(placeholder), patched = 0;
    char name[sizeof placeholder];
    memset(name, 'x', len);
    memcpy(name, forged, strlen(forged));
    for (size_t i = 0; i + len <= n; i++) {
        if (memcmp(buf + i, placeholder, len) == 0) {
            memcpy(buf + i, name, len);
            patched++;
        }
    }
    char path[8192];
    snprintf(path, sizeof path, "%s/lib\"evil\033.so", dir);
    FILE *out = fopen(path, "wb");
    if (!out || fwrite(buf, 1, n, out) != n || fclose(out) != 0 || patched == 0)
        return -1;
    void *h = dlopen(path, RTLD_NOW);
    void *(*leak)(void) = h ? (void *(*)(void))dlsym(h, "evil_leak") : NULL;
    if (!leak)
        return -1;
    leak_through(leak);
    scrub_stack();
    return 0;
}

/* Not static: stores to it must not be optimised away (nor, then, the mallocs). */
void *hostile_held[1 << 16];

static int hold(int n)
{
    if (n < 0 || n > (int)(sizeof hostile_held / sizeof hostile_held[0]))
        return -1;
    for (int i = 0; i < n; i++)
        hostile_held[i] = malloc(16);
    return 0;
}

static void leak_secret(void)
{
    char *volatile p = malloc(64);
    snprintf(p, 64, "password=hunter2 (pid %d)", (int)getpid());
    printf("LEAK %p\n", (void *)p);
    p = NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--evil-comm") == 0)
        prctl(PR_SET_NAME, "x\"\nunreferenced", 0, 0, 0);
    leak_secret();
    leak_secret();
    printf("READY\n");
    fflush(stdout);
    char line[8192];
    while (fgets(line, sizeof line, stdin)) {
        char a[4096], b[4096];
        unsigned long long v;
        int n, rc = -1;
        if (sscanf(line, "header %255s %llu", a, &v) == 2)
            rc = set_header(a, v);
        else if (sscanf(line, "map-files %4095s %d", a, &n) == 2)
            rc = map_files(a, n, 0);
        else if (sscanf(line, "map-elf %4095s %d", a, &n) == 2)
            rc = map_files(a, n, 1);
        else if (sscanf(line, "hold %d", &n) == 1)
            rc = hold(n);
        else if (sscanf(line, "evil-lib %4095s %4095s", a, b) == 2)
            rc = evil_lib(a, b);
        else if (strncmp(line, "exit", 4) == 0)
            break;
        if (rc == 0)
            printf("OK\n");
        else
            printf("ERR %s", line);
        fflush(stdout);
    }
    return 0;
}
