/* The C floor for the pipe benchmarks: the same length-prefixed frames
 * (4-byte big-endian length, then the payload) over inherited pipe fds.
 *
 *   pipe_bench recv FD_DATA FD_GO   SIZE COUNT CPU   receive COUNT frames, print msgs/s
 *   pipe_bench send FD_DATA FD_GO   SIZE COUNT CPU   wait for the go byte, send COUNT frames
 *   pipe_bench ping FD_OUT  FD_IN   SIZE COUNT CPU   COUNT round trips, print p50/p99
 *   pipe_bench echo FD_IN   FD_OUT  SIZE COUNT CPU   send every frame back until EOF
 *
 * CPU < 0 leaves the process unpinned. Results are one JSON line on stdout.
 * The receiving sides copy each payload out of the read buffer, as a
 * language runtime delivering a message would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

static void write_all(int fd, const char *buf, size_t len) {
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        buf += n;
        len -= (size_t)n;
    }
}

static uint32_t get_be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* A reusable read buffer that yields whole frames. */
struct reader {
    int fd;
    char *buf;
    size_t cap, start, end;
};

static void reader_init(struct reader *r, int fd, size_t frame) {
    r->fd = fd;
    r->cap = frame > 256 * 1024 ? 2 * frame : 256 * 1024;
    r->buf = malloc(r->cap);
    if (!r->buf) die("malloc");
    r->start = r->end = 0;
}

/* Return the next frame's payload (length in *len), NULL at EOF between frames. */
static char *next_frame(struct reader *r, size_t *len) {
    for (;;) {
        size_t have = r->end - r->start;
        if (have >= 4) {
            size_t size = get_be32((unsigned char *)r->buf + r->start);
            if (size + 4 > r->cap) {
                fprintf(stderr, "frame of %zu bytes is too large\n", size);
                exit(2);
            }
            if (have >= size + 4) {
                char *payload = r->buf + r->start + 4;
                r->start += size + 4;
                *len = size;
                return payload;
            }
            if (r->start + size + 4 > r->cap) {
                memmove(r->buf, r->buf + r->start, have);
                r->start = 0;
                r->end = have;
            }
        } else if (r->start == r->end) {
            r->start = r->end = 0;
        }
        ssize_t n = read(r->fd, r->buf + r->end, r->cap - r->end);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("read");
        }
        if (n == 0) {
            if (r->end != r->start) {
                fprintf(stderr, "EOF inside a frame\n");
                exit(2);
            }
            return NULL;
        }
        r->end += (size_t)n;
    }
}

static char *make_frame(size_t size) {
    char *frame = malloc(size + 4);
    if (!frame) die("malloc");
    frame[0] = (char)(size >> 24);
    frame[1] = (char)(size >> 16);
    frame[2] = (char)(size >> 8);
    frame[3] = (char)size;
    memset(frame + 4, 'x', size);
    return frame;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    struct bench b = bench_start(argc, argv, "recv|send|ping|echo");
    const char *role = b.role;
    int fd_a = b.fd_a, fd_b = b.fd_b;
    size_t size = b.size;
    long count = b.count;
    char *message = malloc(size ? size : 1);
    if (!message) die("malloc");
    struct reader r;
    size_t len;

    if (!strcmp(role, "send")) {
        char go;
        if (read(fd_b, &go, 1) != 1) die("read go");
        char *frame = make_frame(size);
        for (long i = 0; i < count; i++) write_all(fd_a, frame, size + 4);
        close(fd_a);
        return 0;
    }
    if (!strcmp(role, "recv")) {
        reader_init(&r, fd_a, size + 4);
        double t0 = now();
        write_all(fd_b, "g", 1);
        long got = 0;
        char *payload;
        while (got < count && (payload = next_frame(&r, &len))) {
            memcpy(message, payload, len);
            got++;
        }
        double elapsed = now() - t0;
        if (got != count) {
            fprintf(stderr, "received %ld of %ld frames\n", got, count);
            return 2;
        }
        printf("{\"elapsed\": %.9f, \"count\": %ld, \"size\": %zu}\n", elapsed, count, size);
        return 0;
    }
    if (!strcmp(role, "echo")) {
        reader_init(&r, fd_a, size + 4);
        char *payload;
        while ((payload = next_frame(&r, &len))) write_all(fd_b, payload - 4, len + 4);
        return 0;
    }
    if (!strcmp(role, "ping")) {
        long warmup = count / 10 + 10;
        double *lat = malloc(sizeof(double) * (size_t)count);
        if (!lat) die("malloc");
        reader_init(&r, fd_b, size + 4);
        char *frame = make_frame(size);
        for (long i = 0; i < warmup + count; i++) {
            double t0 = now();
            write_all(fd_a, frame, size + 4);
            char *payload = next_frame(&r, &len);
            if (!payload || len != size) {
                fprintf(stderr, "bad echo\n");
                return 2;
            }
            memcpy(message, payload, len);
            if (i >= warmup) lat[i - warmup] = now() - t0;
        }
        close(fd_a);
        qsort(lat, (size_t)count, sizeof(double), cmp_double);
        printf("{\"latencies_p50\": %.9f, \"latencies_p99\": %.9f}\n", lat[(count - 1) / 2],
               lat[(long)((double)(count - 1) * 0.99)]);
        return 0;
    }
    fprintf(stderr, "unknown role %s\n", role);
    return 2;
}
