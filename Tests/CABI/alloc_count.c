/* Counts heap allocations made by forwards after the first call at a shape.
 *
 * This program defines malloc, calloc, realloc, posix_memalign and
 * aligned_alloc itself; the dynamic linker then routes every allocation in the
 * process (the Swift runtime's and libSwiftUNetC's included) through them. They
 * count while `counting` is set and hand the request on to glibc.
 *
 * Prints one line per case: "threads=T batch=B allocations_per_forward=N". */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "swiftunet.h"

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static atomic_int counting;
static atomic_long allocations;

static void note(void) {
    if (atomic_load_explicit(&counting, memory_order_relaxed)) atomic_fetch_add(&allocations, 1);
}

void *malloc(size_t n) { note(); return __libc_malloc(n); }
void *calloc(size_t k, size_t n) { note(); return __libc_calloc(k, n); }
void *realloc(void *p, size_t n) { note(); return __libc_realloc(p, n); }
void *aligned_alloc(size_t a, size_t n) { note(); return __libc_memalign(a, n); }
int posix_memalign(void **p, size_t a, size_t n) {
    note();
    void *q = __libc_memalign(a, n);
    if (q == NULL) return 12; /* ENOMEM */
    *p = q;
    return 0;
}

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); return 1; } } while (0)

int main(void) {
    const int64_t dims[3] = {8, 16, 32};
    swiftunet_model *model = NULL;
    int32_t rc = swiftunet_model_create(16, 3, dims, 3, 16, 7, &model);
    CHECK(rc == SWIFTUNET_OK, "create failed: %s", swiftunet_last_error());
    enum { C = 3, H = 16, W = 16, MAXB = 2, REPEATS = 20 };
    static float x[MAXB * C * H * W], out[MAXB * C * H * W];
    for (int i = 0; i < MAXB * C * H * W; i++) x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    int64_t t[MAXB] = {0, 999};
    const int thread_counts[2] = {1, 2};
    const int batches[2] = {1, MAXB};
    for (int ti = 0; ti < 2; ti++) {
        CHECK(swiftunet_set_num_threads(thread_counts[ti]) == SWIFTUNET_OK, "set_num_threads failed");
        for (int bi = 0; bi < 2; bi++) {
            int64_t b = batches[bi];
            for (int r = 0; r < 3; r++) { /* first calls at this shape: arenas grow, workers start */
                rc = swiftunet_model_forward(model, x, b, C, H, W, t, out);
                CHECK(rc == SWIFTUNET_OK, "forward failed: %s", swiftunet_last_error());
            }
            atomic_store(&allocations, 0);
            atomic_store(&counting, 1);
            for (int r = 0; r < REPEATS; r++) rc |= swiftunet_model_forward(model, x, b, C, H, W, t, out);
            atomic_store(&counting, 0);
            CHECK(rc == SWIFTUNET_OK, "forward failed: %s", swiftunet_last_error());
            printf("threads=%d batch=%d allocations_per_forward=%g\n", thread_counts[ti], (int)b,
                   (double)atomic_load(&allocations) / REPEATS);
        }
    }
    swiftunet_model_release(model);
    return 0;
}
