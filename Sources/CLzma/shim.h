// liblzma: the daemon decompresses a client's MiniDebugInfo (.gnu_debugdata) once, bounded, before
// libdwfl does (see ELFDebugImage.swift).
#include <lzma.h>

/* LZMA_STREAM_INIT is a macro Swift cannot import. */
static inline lzma_stream kml_lzma_stream_init(void) {
    lzma_stream s = LZMA_STREAM_INIT;
    return s;
}

/* LZMA_CONCATENATED is a macro of a cast Swift cannot import. */
static inline uint32_t kml_lzma_concatenated(void) { return LZMA_CONCATENATED; }
