// Small C helpers the Swift kernels call where Swift has no spelling of their own.
#ifndef SWIFTUNET_SUPPORT_H
#define SWIFTUNET_SUPPORT_H

/// A hint to bring the cache line holding `p` into every cache level for reading.
/// Never faults, whatever `p` is. Inlined into the Swift callers.
static inline __attribute__((always_inline)) void swiftunet_prefetch_read(const void *p) {
    __builtin_prefetch(p, 0, 3);
}

/// The widest vector instruction set the code importing this header is compiled for.
/// The Swift targets pass their `-target-cpu` to the C importer, so these macros are
/// those of the Swift code's own compilation (Swift has no spelling for them).
static inline const char *swiftunet_compiled_isa(void) {
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2+fma";
#elif defined(__AVX2__)
    return "avx2";
#elif defined(__AVX__)
    return "avx";
#elif defined(__SSE4_2__)
    return "sse4.2";
#elif defined(__SSE2__)
    return "sse2";
#elif defined(__ARM_FEATURE_SVE)
    return "sve";
#elif defined(__ARM_NEON)
    return "neon";
#else
    return "scalar";
#endif
}

#endif
