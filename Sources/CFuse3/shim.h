/* libfuse3 for Swift: function-like macros and versioned entry points behind static inline wrappers. */
#define FUSE_USE_VERSION 31
#include <fuse.h>
#include <fuse_lowlevel.h>

static inline struct fuse *cfuse_new(struct fuse_args *args, const struct fuse_operations *op, void *user_data) {
    return fuse_new(args, op, sizeof(*op), user_data);
}
static inline int cfuse_loop_mt(struct fuse *f, int clone_fd) { return fuse_loop_mt(f, clone_fd); }

