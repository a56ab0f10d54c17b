/* What the C floors share: their command line, ROLE FD_A FD_B SIZE COUNT CPU (CPU < 0 leaves the
 * process unpinned), the pinning, the clock and the way out. */
#ifndef AIOIPC_BENCH_H
#define AIOIPC_BENCH_H
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct bench {
    const char *role;
    int fd_a, fd_b;
    size_t size;
    long count;
};

static inline void die(const char *what) {
    perror(what);
    exit(2);
}

static inline double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The command line, read; the process pinned to its CPU. A bad command line exits 2. */
static inline struct bench bench_start(int argc, char **argv, const char *roles) {
    struct bench b;
    if (argc != 7) {
        fprintf(stderr, "usage: %s %s FD_A FD_B SIZE COUNT CPU\n", argv[0], roles);
        exit(2);
    }
    b.role = argv[1];
    b.fd_a = atoi(argv[2]);
    b.fd_b = atoi(argv[3]);
    b.size = strtoul(argv[4], NULL, 10);
    b.count = atol(argv[5]);
    int cpu = atoi(argv[6]);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
    }
    return b;
}
#endif
