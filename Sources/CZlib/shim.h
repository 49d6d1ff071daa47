// zlib (Debian zlib1g-dev) for the pprof view's gzip wrapper.
#include <zlib.h>

// deflateInit2 is a macro (it passes ZLIB_VERSION and sizeof(z_stream)), which Swift cannot import:
// the gzip wrapper (window bits 15 + 16) at `level`.
static inline int czlib_deflate_init_gzip(z_streamp stream, int level) {
    return deflateInit2(stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
}
