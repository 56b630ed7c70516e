/*
 * rng.h - the counter-based random numbers of sampling, shared by the CPU
 * and CUDA backends so that both draw the very same numbers.
 *
 * A draw is a pure function of (seed, counter): no state, no stream, so a
 * request's tokens do not depend on what else is in the batch, on thread
 * scheduling or on the device. The mixing is splitmix64's finaliser applied
 * twice (once to the seed, once to the seed's hash xor the counter), and a
 * uniform double in [0, 1) takes the top 53 bits. Header-only, `static
 * inline`, and host/device when compiled by nvcc.
 */
#ifndef ES_RNG_H
#define ES_RNG_H

#include <stdint.h>

#ifdef __CUDACC__
#define RNG_HD __host__ __device__
#else
#define RNG_HD
#endif

/* splitmix64 step: adds the golden-ratio increment, then mixes. */
static inline RNG_HD uint64_t rng_mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* 64 random bits for draw number `counter` of the stream `seed`. */
static inline RNG_HD uint64_t rng_bits(uint64_t seed, uint64_t counter)
{
    return rng_mix64(rng_mix64(seed) ^ counter);
}

/* Uniform double in [0, 1) with 53 random bits. */
static inline RNG_HD double rng_uniform(uint64_t seed, uint64_t counter)
{
    return (double)(rng_bits(seed, counter) >> 11) * (1.0 / 9007199254740992.0);
}

#endif
