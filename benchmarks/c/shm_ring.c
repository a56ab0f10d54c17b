/* The floor: the hand-written SPSC ring of bench_shm.py in C, on an inherited memfd.
 *   shm_ring recv FD GO SIZE COUNT CPU  |  shm_ring send FD GO SIZE COUNT CPU */
#define _GNU_SOURCE
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 7) return 2;
    int fd = atoi(argv[2]), go = atoi(argv[3]), cpu = atoi(argv[6]);
    size_t size = strtoull(argv[4], NULL, 10), count = strtoull(argv[5], NULL, 10);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        sched_setaffinity(0, sizeof set, &set);
    }
    size_t record = 8 + (size + 7) / 8 * 8, per = 4u << 20;
    size_t capacity = (per / record < 4 ? 4 : per / record) * record;
    uint8_t *base = mmap(NULL, 128 + capacity, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) { perror("mmap"); return 2; }
    _Atomic uint64_t *head = (_Atomic uint64_t *)base, *tail = (_Atomic uint64_t *)(base + 64);
    uint8_t *data = base + 128, *message = malloc(size + 1);
    char byte = 'g';
    if (argv[1][0] == 'r') {
        uint64_t t = 0;
        double start = now();
        if (write(go, &byte, 1) != 1) return 2;
        for (size_t i = 0; i < count; i++) {
            while (atomic_load_explicit(head, memory_order_acquire) == t) sched_yield();
            uint8_t *at = data + t % capacity;
            uint64_t n;
            memcpy(&n, at, 8);
            memcpy(message, at + 8, n);
            t += record;
            atomic_store_explicit(tail, t, memory_order_release);
        }
        printf("{\"elapsed\": %.9f, \"count\": %zu, \"size\": %zu}\n", now() - start, count, size);
    } else {
        memset(message, 'x', size);
        uint64_t hd = 0, n = size;
        if (read(go, &byte, 1) != 1) return 2;
        for (size_t i = 0; i < count; i++) {
            while (hd - atomic_load_explicit(tail, memory_order_acquire) >= capacity) sched_yield();
            uint8_t *at = data + hd % capacity;
            memcpy(at, &n, 8);
            memcpy(at + 8, message, size);
            hd += record;
            atomic_store_explicit(head, hd, memory_order_release);
        }
    }
    return 0;
}
