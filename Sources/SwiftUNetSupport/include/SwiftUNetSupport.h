// Small C helpers the Swift kernels call where Swift has no spelling of their own.
#ifndef SWIFTUNET_SUPPORT_H
#define SWIFTUNET_SUPPORT_H

/// A hint to bring the cache line holding `p` into every cache level for reading.
/// Never faults, whatever `p` is. Inlined into the Swift callers.
static inline __attribute__((always_inline)) void swiftunet_prefetch_read(const void *p) {
    __builtin_prefetch(p, 0, 3);
}

#endif
