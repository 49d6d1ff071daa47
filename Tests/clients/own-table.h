/* The shim's table of this very process, for test clients that corrupt it as a hostile client
 * could: the address its rendezvous file $KMEMLEAK_RUN_DIR/<pid>.client announces (a private table,
 * or a memfd), else a memfd table found by its name in /proc/self/maps. NULL if none. */
#ifndef OWN_TABLE_H
#define OWN_TABLE_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* kmemleak_abi.h is included first by the client (from its own include path) */

static struct kml_header *own_table(void)
{
    const char *dir = getenv("KMEMLEAK_RUN_DIR");
    char path[512], line[512];
    snprintf(path, sizeof path, "%s/%d" KML_RENDEZVOUS_SUFFIX, dir && *dir ? dir : KML_DEFAULT_RUN_DIR, (int)getpid());
    FILE *f = fopen(path, "r");
    int pid, fd;
    unsigned long long addr;
    if (f) {
        int ok = fgets(line, sizeof line, f) && sscanf(line, "pid=%d fd=%d addr=%llx", &pid, &fd, &addr) == 3 && pid == getpid();
        fclose(f);
        if (ok)
            return (struct kml_header *)(uintptr_t)addr;
    }
    f = fopen("/proc/self/maps", "r");
    void *found = NULL;
    while (f && fgets(line, sizeof line, f)) {
        if (strstr(line, "/memfd:" KML_MEMFD_NAME)) {
            found = (void *)(uintptr_t)strtoull(line, NULL, 16);
            break;
        }
    }
    if (f)
        fclose(f);
    return found;
}
#endif
