/* The C floor for the message-socket benchmarks (seqpacket, datagram): each message is one
 * kernel message, no framing, moved in batches of BATCH with sendmmsg/recvmmsg, the fewest
 * system calls a program can spend on them (what aioipc's message sockets do per loop turn).
 *
 *   msg_bench recv FD_DATA FD_GO SIZE COUNT CPU   receive COUNT messages, print the elapsed time
 *   msg_bench send FD_DATA FD_GO SIZE COUNT CPU   wait for the go byte, send COUNT messages
 *
 * The result is one JSON line on stdout. The receiving
 * side copies each payload out of its batch buffer, as a language runtime delivering a
 * message would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench.h"

#define BATCH 64

int main(int argc, char **argv) {
    struct bench b = bench_start(argc, argv, "recv|send");
    const char *role = b.role;
    int fd = b.fd_a, go_fd = b.fd_b;
    size_t size = b.size;
    long count = b.count;
    size_t slot = size ? size : 1;
    char *buffers = malloc(slot * BATCH), *message = malloc(slot);
    if (!buffers || !message) die("malloc");
    memset(buffers, 'x', slot * BATCH);
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iovs[i].iov_base = buffers + (size_t)i * slot;
        iovs[i].iov_len = size;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }

    if (!strcmp(role, "send")) {
        char go;
        if (read(go_fd, &go, 1) != 1) die("read go");
        long sent = 0;
        while (sent < count) {
            unsigned int want = count - sent < BATCH ? (unsigned int)(count - sent) : BATCH;
            int n = sendmmsg(fd, msgs, want, 0);
            if (n < 0) {
                if (errno == EINTR) continue;
                die("sendmmsg");
            }
            sent += n;
        }
        close(fd);
        return 0;
    }
    if (!strcmp(role, "recv")) {
        double t0 = now();
        if (write(go_fd, "g", 1) != 1) die("write go");
        long got = 0;
        while (got < count) {
            for (int i = 0; i < BATCH; i++) iovs[i].iov_len = slot;
            int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
            if (n < 0) {
                if (errno == EINTR) continue;
                die("recvmmsg");
            }
            if (n > count - got)
                n = (int)(count - got); /* a seqpacket batch may end with the sender's EOF */
            for (int i = 0; i < n; i++) {
                if (msgs[i].msg_len != size) {
                    fprintf(stderr, "a message of %u bytes, not %zu\n", msgs[i].msg_len, size);
                    return 2;
                }
                memcpy(message, iovs[i].iov_base, size);
            }
            got += n;
        }
        double elapsed = now() - t0;
        printf("{\"elapsed\": %.9f, \"count\": %ld, \"size\": %zu}\n", elapsed, count, size);
        return 0;
    }
    fprintf(stderr, "unknown role %s\n", role);
    return 2;
}
