// How fast one core reads data, by where that data was last written: by itself (its own
// L2), by the other core (a transfer between the cores' caches), or long ago (a buffer
// larger than L2). Also the round trip of one cache line bounced between the two cores,
// which every parallel region pays a few times (publication, task counter, exit).
//
// The batch-1 forward on two threads splits each layer between the cores, so a layer
// reads, in part, what the other core wrote in the layer before; these figures say what
// that costs on the machine at hand.
//
//     cc -O3 -march=native -pthread benchmarks/cross_core_probe.c -o /tmp/cross_core_probe
//     /tmp/cross_core_probe            (pins its two threads to CPUs 0 and 1)
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { BUFFER_FLOATS = 512 * 1024 / 4, ROUNDS = 400, PINGS = 200000 };

static float *buffer;
static atomic_int turn;
static double readSeconds[2];
static volatile float sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// Both threads busy-wait on each other, so each needs a CPU of its own.
static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
        fprintf(stderr, "cross_core_probe: cannot run on CPU %d\n", cpu);
        exit(2);
    }
}

static int canUseCpus01(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
    return CPU_ISSET(0, &set) && CPU_ISSET(1, &set);
}

// 64 independent sums (four vectors' worth), so that the loop waits on loads, not on adds.
static float sumOf(const float *p, size_t n) {
    float lanes[64] = {0};
    for (size_t i = 0; i < n; i += 64)
        for (int l = 0; l < 64; l++) lanes[l] += p[i + l];
    float s = 0;
    for (int l = 0; l < 64; l++) s += lanes[l];
    return s;
}

static void fill(float *p, size_t n, float v) {
    for (size_t i = 0; i < n; i++) p[i] = v;
}

// Threads take turns: read the whole buffer (last written by the other thread), then write it.
static void *alternate(void *arg) {
    int me = (int)(long)arg;
    pin(me);
    for (int r = 0; r < ROUNDS; r++) {
        while (atomic_load_explicit(&turn, memory_order_acquire) != me) {}
        double t = now();
        sink = sumOf(buffer, BUFFER_FLOATS);
        if (r >= 2) readSeconds[me] += now() - t;
        fill(buffer, BUFFER_FLOATS, (float)r);
        atomic_store_explicit(&turn, 1 - me, memory_order_release);
    }
    return NULL;
}

static atomic_int ball;

static void *bounce(void *arg) {
    int me = (int)(long)arg;
    pin(me);
    for (int i = 0; i < PINGS; i++) {
        while (atomic_load_explicit(&ball, memory_order_acquire) != me) {}
        atomic_store_explicit(&ball, 1 - me, memory_order_release);
    }
    return NULL;
}

int main(void) {
    if (!canUseCpus01()) {
        printf("cross_core_probe: needs CPUs 0 and 1; this process may not use both\n");
        return 0;
    }
    double bytes = BUFFER_FLOATS * 4.0;
    buffer = aligned_alloc(64, BUFFER_FLOATS * 4);
    fill(buffer, BUFFER_FLOATS, 1);

    pthread_t a, b;
    pthread_create(&a, NULL, alternate, (void *)0);
    pthread_create(&b, NULL, alternate, (void *)1);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    double crossCore = bytes * (ROUNDS - 2) / (readSeconds[0] + readSeconds[1]);

    pin(0);
    double t = 0;
    for (int r = 0; r < ROUNDS; r++) {
        fill(buffer, BUFFER_FLOATS, (float)r);
        double t0 = now();
        sink = sumOf(buffer, BUFFER_FLOATS);
        t += now() - t0;
    }
    double sameCore = bytes * ROUNDS / t;

    size_t large = 64u * 1024 * 1024 / 4;
    float *big = aligned_alloc(64, large * 4);
    fill(big, large, 1);
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        sink = sumOf(big, large);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    double farAway = large * 4.0 / best;

    double t0 = now();
    pthread_create(&a, NULL, bounce, (void *)0);
    pthread_create(&b, NULL, bounce, (void *)1);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    double roundTrip = (now() - t0) / PINGS;

    printf("read 512 KiB just written by the same core:  %6.1f GB/s\n", sameCore / 1e9);
    printf("read 512 KiB just written by the other core: %6.1f GB/s\n", crossCore / 1e9);
    printf("read 64 MiB written long ago:                 %6.1f GB/s\n", farAway / 1e9);
    printf("one cache line, core 0 -> core 1 -> core 0:   %6.0f ns\n", roundTrip * 1e9);
    free(big);
    free(buffer);
    return 0;
}
