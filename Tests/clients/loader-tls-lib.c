/*
 * loader-tls-lib: a library that thread-life dlopens. Its __thread variable lives in a dynamic TLS
 * block that ld.so allocates (tls_get_addr_tail) on each thread's first access.
 */
#include <stdlib.h>
#include <string.h>

static __thread void *kept;

/* mallocs a block that only this thread's __thread variable references */
void *kml_tls_keep(size_t size)
{
    kept = malloc(size);
    memset(kept, 0x5a, size);
    return kept;
}

/* the first access allocates this thread's TLS block of the library */
int kml_tls_touch(void) { return kept != NULL; }

void kml_tls_release(void)
{
    free(kept);
    kept = NULL;
}
