/* The CPU's fp32 arithmetic peak, measured: every thread runs independent chains of
 * vector multiply-adds with no memory traffic, so nothing but the FMA units limits it.
 * Built by benchmarks/ceiling.py with -O3 -march=native -fopenmp; prints GFLOP/s. */
#include <omp.h>
#include <stdio.h>
#include <time.h>

#ifdef __AVX512F__
#define LANES 16
#else
#define LANES 8 /* AVX2: 12 chains of 8 lanes fit the 16 vector registers */
#endif
#define CHAINS 12 /* enough in flight to hide the FMA latency on every x86 core seen */

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

static double seconds_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec + now.tv_nsec * 1e-9;
}

int main(void) {
    const long steps = 50 * 1000 * 1000;
    double best = 0.0, checksum = 0.0;
    for (int attempt = 0; attempt < 5; attempt++) {
        double start = seconds_now();
#pragma omp parallel reduction(+ : checksum)
        {
            vec chain[CHAINS], scale, offset;
            for (int lane = 0; lane < LANES; lane++) {
                scale[lane] = 0.999999f; /* a fixed point, so no overflow or denormals */
                offset[lane] = 1e-3f;
            }
            for (int i = 0; i < CHAINS; i++)
                for (int lane = 0; lane < LANES; lane++) chain[i][lane] = (float)i;
            for (long step = 0; step < steps; step++)
                for (int i = 0; i < CHAINS; i++) chain[i] = chain[i] * scale + offset;
            for (int i = 0; i < CHAINS; i++) checksum += chain[i][0]; /* keeps the work */
        }
        double flops = 2.0 * LANES * CHAINS * steps * omp_get_max_threads();
        double rate = flops / (seconds_now() - start) / 1e9;
        if (rate > best) best = rate;
    }
    printf("%.1f GFLOP/s on %d threads (checksum %g)\n", best, omp_get_max_threads(), checksum);
    return 0;
}
