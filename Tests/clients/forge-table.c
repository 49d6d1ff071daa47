/*
 * forge-table: a squatter's try at the daemon's /proc discovery of private tables (forked children
 * write no rendezvous file). Runs WITHOUT the shim:
 *
 *   forge-table RUN_DIR PID [PID...]
 *
 * For each PID it maps, in its own memory, what the discovery takes for a private table (a private
 * anonymous read-write mapping between two PROT_NONE ones) whose header claims to be PID's table
 * (its pid, its start time from /proc/PID/stat) and RUN_DIR's (KML_TABLE_RUN_DIR with RUN_DIR's
 * st_dev/st_ino). Then prints "FORGED <n>" and waits for stdin EOF or "exit".
 * The daemon must adopt none of them as PID (it reads this process's memory: the header's pid is not
 * this process's), and every real PID must still be adopted and reported exactly.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kmemleak_abi.h"

#define TABLE_SIZE (64 * 4096)

static uint64_t start_time(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p += 2; /* field 3 */
    for (int field = 3; field < 22 && *p; p++)
        if (*p == ' ')
            field++;
    return strtoull(p, NULL, 10);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: forge-table RUN_DIR PID [PID...]\n");
        return 2;
    }
    struct stat dir;
    if (stat(argv[1], &dir) != 0) {
        perror(argv[1]);
        return 1;
    }
    int forged = 0;
    for (int i = 2; i < argc; i++) {
        char *m = mmap(NULL, TABLE_SIZE + 2 * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED || mprotect(m + 4096, TABLE_SIZE, PROT_READ | PROT_WRITE) != 0) {
            perror("mmap");
            return 1;
        }
        struct kml_header *h = (struct kml_header *)(m + 4096);
        h->version = KML_ABI_VERSION;
        h->header_size = sizeof *h;
        h->total_size = TABLE_SIZE;
        h->pid = atoi(argv[i]);
        h->start_time = start_time(h->pid);
        h->nr_cpu_ids = 1;
        h->clk_tck = 100;
        h->flags = KML_TABLE_PRIVATE | KML_TABLE_RUN_DIR | KML_TABLE_TRACKING;
        h->run_dir_dev = (uint32_t)dir.st_dev;
        h->run_dir_ino_lo = (uint32_t)dir.st_ino;
        h->run_dir_ino_hi = (uint32_t)((uint64_t)dir.st_ino >> 32);
        h->alloc_seq = 1;
        h->magic = KML_MAGIC;
        forged++;
    }
    printf("FORGED %d\n", forged);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
    }
    return 0;
}
