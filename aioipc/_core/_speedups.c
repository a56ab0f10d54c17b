/* Optional accelerator: batched message socket I/O (sendmmsg / recvmmsg), and the
 * length-prefixed frame parser's inner loop.
 *
 * The pure-Python equivalents live in speedups.py, which decides which one
 * is used (AIOIPC_NO_SPEEDUPS=1 forces Python). Both take and return the
 * same things, so the callers never know which ran.
 *
 * Rule 1: every size comes from the caller (slot, count, control space),
 * never from a peer: a message larger than its slot is truncated by the
 * kernel (MSG_TRUNC) and reported by its real size, never allocated.
 * Rule 2: received fds are never lost: they are handed over in the result,
 * or closed (oversize message, or an error while building the result).
 * Rule 3: errors are OSError with errno (BlockingIOError for EAGAIN); the
 * GIL is released around each syscall, with every buffer it uses held.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define SEND_MAX 256 /* messages handed to one sendmmsg */
#define RECV_MAX 64  /* messages taken by one recvmmsg */
#define CTRL_MAX 4096
#define CRED_SIZE ((Py_ssize_t)sizeof(struct ucred))

static int
fd_of(PyObject *sock)
{
    return PyObject_AsFileDescriptor(sock);
}

/* send_batch(sock, messages: list[bytes], start: int) -> int
 * Send messages[start:] (at most SEND_MAX), each as one message; return how
 * many the kernel took. Raises when it took none. */
static PyObject *
send_batch(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    struct mmsghdr msgs[SEND_MAX];
    struct iovec iov[SEND_MAX];
    PyObject *held[SEND_MAX];
    Py_ssize_t i, n, start;
    int fd, sent, saved;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_batch(sock, messages, start)");
        return NULL;
    }
    if (!PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "messages must be a list of bytes");
        return NULL;
    }
    fd = fd_of(args[0]);
    if (fd < 0)
        return NULL;
    start = PyLong_AsSsize_t(args[2]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    n = PyList_GET_SIZE(args[1]);
    if (start < 0 || start > n) {
        PyErr_SetString(PyExc_ValueError, "start out of range");
        return NULL;
    }
    n -= start;
    if (n > SEND_MAX)
        n = SEND_MAX;
    if (n == 0)
        return PyLong_FromLong(0);
    for (i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(args[1], start + i);
        if (!PyBytes_CheckExact(item)) {
            PyErr_SetString(PyExc_TypeError, "messages must be a list of bytes");
            return NULL;
        }
        iov[i].iov_base = PyBytes_AS_STRING(item);
        iov[i].iov_len = (size_t)PyBytes_GET_SIZE(item);
        memset(&msgs[i], 0, sizeof(msgs[i]));
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    /* Another thread may change the list while the GIL is released: keep the items alive. */
    for (i = 0; i < n; i++) {
        held[i] = PyList_GET_ITEM(args[1], start + i);
        Py_INCREF(held[i]);
    }
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        sent = sendmmsg(fd, msgs, (unsigned int)n, MSG_DONTWAIT | MSG_NOSIGNAL);
        Py_END_ALLOW_THREADS
        if (sent >= 0 || errno != EINTR)
            break;
        if (PyErr_CheckSignals() < 0) {
            sent = -2;
            break;
        }
    }
    saved = errno;
    for (i = 0; i < n; i++)
        Py_DECREF(held[i]);
    if (sent == -2)
        return NULL;
    if (sent < 0) {
        errno = saved;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(sent);
}

static void
close_rights(struct msghdr *hdr)
{
    struct cmsghdr *cmsg;
    for (cmsg = CMSG_FIRSTHDR(hdr); cmsg != NULL; cmsg = CMSG_NXTHDR(hdr, cmsg)) {
        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
            size_t nfds = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int), k;
            for (k = 0; k < nfds; k++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cmsg) + k * sizeof(int), sizeof(int));
                close(fd);
            }
        }
    }
}

/* The sender's address as the socket module gives it: None, bytes (abstract) or str (path). */
static PyObject *
unix_address(const struct sockaddr_un *addr, socklen_t len)
{
    size_t n;
    if (len <= offsetof(struct sockaddr_un, sun_path))
        Py_RETURN_NONE;
    n = len - offsetof(struct sockaddr_un, sun_path);
    if (n > sizeof(addr->sun_path))
        n = sizeof(addr->sun_path);
    if (addr->sun_path[0] == '\0')
        return PyBytes_FromStringAndSize(addr->sun_path, (Py_ssize_t)n);
    return PyUnicode_DecodeFSDefaultAndSize(addr->sun_path, (Py_ssize_t)strnlen(addr->sun_path, n));
}

/* One received message: bytes; an int (its real size) when over the slot; None at the end
 * of a seqpacket stream; (bytes, fds, truncated) when fds came with it (or were cut off).
 * Sets *oversize for a message over the slot, and *creds to the SCM_CREDENTIALS payload in
 * the control buffer (NULL when none came). */
static PyObject *
message_item(struct mmsghdr *m, const char *data, Py_ssize_t slot, int eof_on_empty, char *oversize,
             const char **creds)
{
    struct msghdr *hdr = &m->msg_hdr;
    struct cmsghdr *cmsg;
    Py_ssize_t size = (Py_ssize_t)m->msg_len;
    PyObject *fds = NULL, *bytes, *item;
    int nrights = 0;

    *creds = NULL;
    for (cmsg = CMSG_FIRSTHDR(hdr); cmsg != NULL; cmsg = CMSG_NXTHDR(hdr, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET)
            continue;
        if (cmsg->cmsg_type == SCM_CREDENTIALS && cmsg->cmsg_len >= CMSG_LEN(sizeof(struct ucred)))
            *creds = (const char *)CMSG_DATA(cmsg);
        else if (cmsg->cmsg_type == SCM_RIGHTS && cmsg->cmsg_len > CMSG_LEN(0))
            nrights = 1;
    }
    if (size == 0 && eof_on_empty && *creds == NULL && !nrights)
        Py_RETURN_NONE;
    if (size >= slot || (hdr->msg_flags & MSG_TRUNC)) {
        *oversize = 1; /* its fds are closed once the batch is built */
        item = PyLong_FromSsize_t(size);
    } else if (!nrights && !(hdr->msg_flags & MSG_CTRUNC)) {
        item = PyBytes_FromStringAndSize(data, size);
    } else {
        fds = PyList_New(0);
        if (fds == NULL)
            return NULL;
        for (cmsg = CMSG_FIRSTHDR(hdr); cmsg != NULL; cmsg = CMSG_NXTHDR(hdr, cmsg)) {
            size_t nfds, k;
            if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
                continue;
            nfds = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (k = 0; k < nfds; k++) {
                int fd;
                PyObject *number;
                memcpy(&fd, CMSG_DATA(cmsg) + k * sizeof(int), sizeof(int));
                number = PyLong_FromLong(fd);
                if (number == NULL || PyList_Append(fds, number) < 0) {
                    Py_XDECREF(number);
                    Py_DECREF(fds);
                    return NULL;
                }
                Py_DECREF(number);
            }
        }
        bytes = PyBytes_FromStringAndSize(data, size);
        if (bytes == NULL) {
            Py_DECREF(fds);
            return NULL;
        }
        item = Py_BuildValue("(NNO)", bytes, fds, (hdr->msg_flags & MSG_CTRUNC) ? Py_True : Py_False);
    }
    return item;
}

/* recv_batch(sock, buffer, slot, count, control, eof_on_empty, want_address)
 *     -> (items, credentials, addresses or None)
 * Receive up to count messages (at most RECV_MAX) into slots of `slot` bytes
 * of `buffer`, each with `control` bytes of ancillary space after the slots.
 * items[i] is as message_item() says; credentials[i] is the 12-byte ucred or
 * None; addresses[i] the sender (when asked). Raises when none was waiting. */
static PyObject *
recv_batch(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    struct mmsghdr msgs[RECV_MAX];
    struct iovec iov[RECV_MAX];
    struct sockaddr_un names[RECV_MAX];
    Py_buffer view;
    Py_ssize_t slot, count, control, ctrl_at, i;
    int fd, eof_on_empty, want_address, got, saved;
    PyObject *items = NULL, *creds = NULL, *addrs = NULL, *prev_cred = NULL, *prev_addr = NULL;
    char *base;
    char oversize[RECV_MAX] = {0};

    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "recv_batch(sock, buffer, slot, count, control, eof_on_empty, want_address)");
        return NULL;
    }
    fd = fd_of(args[0]);
    if (fd < 0)
        return NULL;
    slot = PyLong_AsSsize_t(args[2]);
    count = PyLong_AsSsize_t(args[3]);
    control = PyLong_AsSsize_t(args[4]);
    eof_on_empty = PyObject_IsTrue(args[5]);
    want_address = PyObject_IsTrue(args[6]);
    if (PyErr_Occurred() || eof_on_empty < 0 || want_address < 0)
        return NULL;
    if (slot < 1 || count < 1 || control < 0 || control > CTRL_MAX) {
        PyErr_SetString(PyExc_ValueError, "bad slot, count or control size");
        return NULL;
    }
    if (count > RECV_MAX)
        count = RECV_MAX;
    control = (control + 7) & ~(Py_ssize_t)7;
    if (slot > (PY_SSIZE_T_MAX - 8) / count - control) {
        PyErr_SetString(PyExc_ValueError, "slot too large");
        return NULL;
    }
    ctrl_at = (slot * count + 7) & ~(Py_ssize_t)7; /* cmsghdr wants aligned space */
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (view.len < ctrl_at + control * count) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "buffer too small for count slots and their control space");
        return NULL;
    }
    base = (char *)view.buf;
    for (i = 0; i < count; i++) {
        memset(&msgs[i], 0, sizeof(msgs[i]));
        iov[i].iov_base = base + i * slot;
        iov[i].iov_len = (size_t)slot;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        if (control) {
            msgs[i].msg_hdr.msg_control = base + ctrl_at + i * control;
            msgs[i].msg_hdr.msg_controllen = (size_t)control;
        }
        if (want_address) {
            msgs[i].msg_hdr.msg_name = &names[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
        }
    }
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        got = recvmmsg(fd, msgs, (unsigned int)count, MSG_DONTWAIT | MSG_TRUNC | MSG_CMSG_CLOEXEC, NULL);
        Py_END_ALLOW_THREADS
        if (got >= 0 || errno != EINTR)
            break;
        if (PyErr_CheckSignals() < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    saved = errno;
    if (got < 0) {
        PyBuffer_Release(&view);
        errno = saved;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    items = PyList_New(0);
    creds = PyList_New(0);
    addrs = want_address ? PyList_New(0) : Py_NewRef(Py_None);
    if (items == NULL || creds == NULL || addrs == NULL)
        goto fail;
    for (i = 0; i < got; i++) {
        PyObject *cred = NULL, *item, *addr = NULL;
        const char *raw;
        struct msghdr *hdr = &msgs[i].msg_hdr;
        item = message_item(&msgs[i], base + i * slot, slot, eof_on_empty, &oversize[i], &raw);
        if (item == NULL)
            goto fail;
        if (raw != NULL) {
            if (prev_cred != NULL && memcmp(raw, PyBytes_AS_STRING(prev_cred), CRED_SIZE) == 0)
                cred = Py_NewRef(prev_cred); /* one sender: share one object */
            else if ((cred = PyBytes_FromStringAndSize(raw, CRED_SIZE)) == NULL) {
                Py_DECREF(item);
                goto fail;
            }
        }
        if (want_address) {
            if (prev_addr != NULL && msgs[i - 1].msg_hdr.msg_namelen == hdr->msg_namelen &&
                memcmp(&names[i - 1], &names[i], hdr->msg_namelen) == 0)
                addr = Py_NewRef(prev_addr);
            else
                addr = unix_address(&names[i], hdr->msg_namelen);
        }
        if ((want_address && addr == NULL) || PyList_Append(items, item) < 0 ||
            PyList_Append(creds, cred != NULL ? cred : Py_None) < 0 ||
            (want_address && PyList_Append(addrs, addr) < 0)) {
            Py_DECREF(item);
            Py_XDECREF(cred);
            Py_XDECREF(addr);
            goto fail;
        }
        if (cred != NULL)
            Py_XSETREF(prev_cred, cred);
        if (addr != NULL)
            Py_XSETREF(prev_addr, addr);
        Py_DECREF(item);
        if (item == Py_None) { /* the end of the stream: what follows is the same end again */
            i++;
            break;
        }
    }
    /* Fds that reach nobody: an oversize message's, and any after the end of the stream. */
    for (Py_ssize_t j = 0; j < got; j++)
        if (j >= i || oversize[j])
            close_rights(&msgs[j].msg_hdr);
    Py_XDECREF(prev_cred);
    Py_XDECREF(prev_addr);
    PyBuffer_Release(&view);
    return Py_BuildValue("(NNN)", items, creds, addrs);

fail:
    /* Nothing reaches the caller: close every fd received, those already in items included. */
    for (Py_ssize_t j = 0; j < got; j++)
        close_rights(&msgs[j].msg_hdr);
    Py_XDECREF(items);
    Py_XDECREF(creds);
    Py_XDECREF(addrs);
    Py_XDECREF(prev_cred);
    Py_XDECREF(prev_addr);
    PyBuffer_Release(&view);
    return NULL;
}

/* parse_frames(buffer, start, end, max_size, batch, append) -> (start, need, bad_size)
 * Framer._parse's loop: hand each whole length-prefixed frame (4-byte big-endian length, then
 * the payload) in buffer[start:end] to append() as bytes, at most `batch` of them. Stops at a
 * partial frame (need: the bytes that frame takes, header included; else 4) or at a header over
 * max_size (bad_size: its size, else -1), after every whole frame before it. Nothing is
 * allocated but the messages, each no larger than max_size. */
static PyObject *
parse_frames(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t start, end, batch;
    unsigned long long max_size;
    long long need = 4, bad = -1;
    const unsigned char *buf;
    PyObject *append;

    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "parse_frames(buffer, start, end, max_size, batch, append)");
        return NULL;
    }
    start = PyLong_AsSsize_t(args[1]);
    end = PyLong_AsSsize_t(args[2]);
    max_size = PyLong_AsUnsignedLongLong(args[3]);
    batch = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    append = args[5];
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (start < 0 || end < start || end > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start and end must lie within the buffer");
        return NULL;
    }
    buf = (const unsigned char *)view.buf;
    while (end - start >= 4 && batch > 0) {
        unsigned long long size = ((unsigned long long)buf[start] << 24) | ((unsigned long long)buf[start + 1] << 16) |
                                  ((unsigned long long)buf[start + 2] << 8) | (unsigned long long)buf[start + 3];
        PyObject *message, *result;
        if (size > max_size) {
            bad = (long long)size;
            break;
        }
        if ((unsigned long long)(end - start - 4) < size) {
            need = 4 + (long long)size;
            break;
        }
        message = PyBytes_FromStringAndSize((const char *)buf + start + 4, (Py_ssize_t)size);
        if (message == NULL)
            goto fail;
        result = PyObject_CallOneArg(append, message);
        Py_DECREF(message);
        if (result == NULL)
            goto fail;
        Py_DECREF(result);
        start += 4 + (Py_ssize_t)size;
        batch--;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nLL)", start, need, bad);
fail:
    PyBuffer_Release(&view);
    return NULL;
}

/* ---- shared-memory ring: the one-message fast paths of aioipc.shm.Ring -------------------------
 *
 * RingCore is the base type of the ring's Lanes: it holds the counters and flags of one side
 * (members the Python slow paths read and write by the same names) and the mapping's pointers,
 * and does a send or a receive that needs no waiting in one call: _put(item) -> bool and
 * _take() -> bytes | None. None / False: take the Python slow path, which also raises every
 * error. The record layout and the rules are the _ring module's: the record is written first,
 * then head is stored once (a release store: x86-64 keeps stores in order, the compiler is kept
 * from moving them); the peer's head is read with an acquire load before its record. The full
 * barriers of the wake-up handshake stay in Python (_flush), called as the Python fast path
 * calls it. A record whose length points past its lane (a bad peer) is left to the slow path,
 * which never reads past the mapping. */

#include <stdint.h>
#include <structmember.h>

#define RING_WRAP 0xFFFFFFFFu
#define RING_RECORD 8

typedef struct {
    PyObject_HEAD
    Py_buffer view; /* the whole mapping, held from _bind to _unbind */
    int bound;
    uint64_t *h;
    unsigned char *tx, *rx;
    Py_ssize_t tx_head_i, tx_gone_i, rx_head_i, rx_tail_i;
    long long capacity, max_size, fair_shift, flush_every;
    long long head, tail, head_seen, room_until, budget, sent, read;
    char sending, receiving, closed, eof_sent, flush_scheduled;
} RingCore;

static PyObject *
ring_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    RingCore *self = (RingCore *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->closed = 1; /* until bound: a half-made ring is a closed one */
    return (PyObject *)self;
}

static void
ring_unbind_view(RingCore *self)
{
    if (self->bound) {
        self->bound = 0;
        self->h = NULL;
        self->tx = self->rx = NULL;
        PyBuffer_Release(&self->view);
    }
}

static void
ring_dealloc(RingCore *self)
{
    ring_unbind_view(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* _bind(memory, tx_offset, rx_offset, capacity, max_size, words, fair_shift, flush_every)
 * words: the header word indexes (tx head, tx gone, rx head, rx tail). */
static PyObject *
ring_bind(RingCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long tx_offset, rx_offset, capacity, max_size, fair_shift, flush_every;
    Py_ssize_t words[4];
    Py_buffer view;

    if (nargs != 8 || !PyTuple_Check(args[5]) || PyTuple_GET_SIZE(args[5]) != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "_bind(memory, tx_offset, rx_offset, capacity, max_size, words, fair_shift, flush_every)");
        return NULL;
    }
    tx_offset = PyLong_AsLongLong(args[1]);
    rx_offset = PyLong_AsLongLong(args[2]);
    capacity = PyLong_AsLongLong(args[3]);
    max_size = PyLong_AsLongLong(args[4]);
    fair_shift = PyLong_AsLongLong(args[6]);
    flush_every = PyLong_AsLongLong(args[7]);
    for (int i = 0; i < 4; i++)
        words[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(args[5], i));
    if (PyErr_Occurred())
        return NULL;
    if (self->bound) {
        PyErr_SetString(PyExc_RuntimeError, "the ring is bound already");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (capacity < 2 * RING_RECORD || capacity % RING_RECORD || max_size < 0 || max_size > capacity / 2 - RING_RECORD ||
        tx_offset < 0 || rx_offset < 0 || tx_offset % RING_RECORD || rx_offset % RING_RECORD ||
        tx_offset > view.len - capacity || rx_offset > view.len - capacity || fair_shift < 0 || fair_shift > 62 ||
        flush_every < 1 || (uintptr_t)view.buf % RING_RECORD) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the lanes must lie within the mapping, aligned");
        return NULL;
    }
    for (int i = 0; i < 4; i++) {
        if (words[i] < 0 || (words[i] + 1) * 8 > (tx_offset < rx_offset ? tx_offset : rx_offset)) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_ValueError, "the header words must lie before the lanes");
            return NULL;
        }
    }
    self->view = view;
    self->bound = 1;
    self->h = (uint64_t *)view.buf;
    self->tx = (unsigned char *)view.buf + tx_offset;
    self->rx = (unsigned char *)view.buf + rx_offset;
    self->tx_head_i = words[0];
    self->tx_gone_i = words[1];
    self->rx_head_i = words[2];
    self->rx_tail_i = words[3];
    self->capacity = capacity;
    self->max_size = max_size;
    self->fair_shift = fair_shift;
    self->flush_every = flush_every;
    Py_RETURN_NONE;
}

static PyObject *
ring_unbind(RingCore *self, PyObject *Py_UNUSED(ignored))
{
    ring_unbind_view(self);
    Py_RETURN_NONE;
}

/* After a message sent or read: the first since the last barrier schedules one (_did), unless
 * one is scheduled already; every flush_every-th runs one now (_flush). -1 when that raised. */
static int
ring_after(RingCore *self, long long done)
{
    PyObject *result;
    if (done == 1) {
        if (self->flush_scheduled)
            return 0;
        result = PyObject_CallMethod((PyObject *)self, "_did", NULL);
    }
    else if (done >= self->flush_every)
        result = PyObject_CallMethod((PyObject *)self, "_flush", NULL);
    else
        return 0;
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* _put(item) -> bool: write and commit one message if it fits now, else False. */
static PyObject *
ring_put(RingCore *self, PyObject *item)
{
    Py_buffer view;
    const char *data;
    long long size, head, end, position;
    uint32_t record[2];

    if (!self->bound || self->sending || self->budget <= 0 || self->closed || self->eof_sent ||
        __atomic_load_n(&self->h[self->tx_gone_i], __ATOMIC_RELAXED))
        Py_RETURN_FALSE;
    view.obj = NULL;
    if (PyBytes_CheckExact(item)) {
        data = PyBytes_AS_STRING(item);
        size = PyBytes_GET_SIZE(item);
    }
    else {
        if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear(); /* not contiguous bytes: the slow path says why, or copes */
            Py_RETURN_FALSE;
        }
        data = (const char *)view.buf;
        size = view.len;
    }
    head = self->head;
    end = head + RING_RECORD + ((size + 7) & ~7LL);
    position = head % self->capacity;
    if (size > self->max_size || end > self->room_until || position + end - head > self->capacity) {
        if (view.obj != NULL)
            PyBuffer_Release(&view);
        Py_RETURN_FALSE;
    }
    record[0] = (uint32_t)size;
    record[1] = 0;
    memcpy(self->tx + position, record, RING_RECORD);
    memcpy(self->tx + position + RING_RECORD, data, (size_t)size);
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    __atomic_store_n(&self->h[self->tx_head_i], (uint64_t)end, __ATOMIC_RELEASE); /* the commit */
    self->head = end;
    self->budget -= 1 + (size >> self->fair_shift);
    self->sent += 1;
    if (ring_after(self, self->sent) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* _take() -> bytes | None: the next committed message (a copy), or None. */
static PyObject *
ring_take(RingCore *self, PyObject *Py_UNUSED(ignored))
{
    long long tail, position, capacity;
    uint32_t size;
    PyObject *data;

    if (!self->bound || self->receiving || self->budget <= 0 || self->closed)
        Py_RETURN_NONE;
    tail = self->tail;
    if (tail == self->head_seen) {
        self->head_seen = (long long)__atomic_load_n(&self->h[self->rx_head_i], __ATOMIC_ACQUIRE);
        if (self->head_seen == tail)
            Py_RETURN_NONE;
    }
    capacity = self->capacity;
    position = tail % capacity;
    memcpy(&size, self->rx + position, sizeof size);
    if (size == RING_WRAP) {
        tail += capacity - position;
        position = 0;
        memcpy(&size, self->rx, sizeof size);
    }
    if ((long long)size > capacity - position - RING_RECORD)
        Py_RETURN_NONE; /* not a record this ring writes: the slow path's business */
    data = PyBytes_FromStringAndSize((const char *)self->rx + position + RING_RECORD, (Py_ssize_t)size);
    if (data == NULL)
        return NULL;
    tail += RING_RECORD + (((long long)size + 7) & ~7LL);
    self->budget -= 1 + ((long long)size >> self->fair_shift);
    __atomic_store_n(&self->h[self->rx_tail_i], (uint64_t)tail, __ATOMIC_RELEASE);
    self->tail = tail;
    self->read += 1;
    if (ring_after(self, self->read) < 0) {
        Py_DECREF(data);
        return NULL;
    }
    return data;
}

/* RingOp: what RingCore.send(item) and receive() return, a coroutine without a frame. Its first
 * step (an await, or a task's send(None)) tries the fast path (_put / _take); when that cannot
 * finish, it calls the Python slow path (_send_slow(item) / _receive()) and hands every later
 * step, throw() and close() to that coroutine. As with a coroutine: nothing happens before the
 * first step, one dropped unstarted warns that it was never awaited, a finished one cannot be
 * awaited again, and it answers what asyncio and anyio ask of one (send, throw, close,
 * cr_running, cr_suspended, cr_frame). */

enum { OP_NEW, OP_INNER, OP_DONE };

typedef struct {
    PyObject_HEAD
    RingCore *ring;
    PyObject *item;  /* the message to send; NULL for a receive */
    PyObject *inner; /* the slow path's coroutine, while OP_INNER */
    int state;
} RingOp;

static PyTypeObject RingOpType;

static PyObject *
ring_op_new(RingCore *ring, PyObject *item)
{
    RingOp *op = PyObject_GC_New(RingOp, &RingOpType);
    if (op == NULL)
        return NULL;
    Py_INCREF(ring);
    op->ring = ring;
    Py_XINCREF(item);
    op->item = item;
    op->inner = NULL;
    op->state = OP_NEW;
    PyObject_GC_Track(op);
    return (PyObject *)op;
}

static int
ring_op_traverse(RingOp *op, visitproc visit, void *arg)
{
    Py_VISIT(op->ring);
    Py_VISIT(op->item);
    Py_VISIT(op->inner);
    return 0;
}

static int
ring_op_clear(RingOp *op)
{
    Py_CLEAR(op->ring);
    Py_CLEAR(op->item);
    Py_CLEAR(op->inner);
    return 0;
}

static void
ring_op_dealloc(RingOp *op)
{
    PyObject_GC_UnTrack(op);
    if (op->state == OP_NEW) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "Ring.%s() was never awaited",
                             op->item != NULL ? "send" : "receive") < 0)
            PyErr_WriteUnraisable((PyObject *)op);
        PyErr_Restore(type, value, traceback);
    }
    ring_op_clear(op);
    PyObject_GC_Del(op);
}

/* The operation's result, as a finished coroutine gives it: StopIteration(value). Steals value. */
static PyObject *
ring_op_return(PyObject *value)
{
    if (value == Py_None) {
        Py_DECREF(value);
        PyErr_SetNone(PyExc_StopIteration);
    }
    else if (PyTuple_Check(value) || PyExceptionInstance_Check(value)) {
        PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
        Py_DECREF(value);
        if (stop == NULL)
            return NULL;
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    else {
        PyErr_SetObject(PyExc_StopIteration, value);
        Py_DECREF(value);
    }
    return NULL;
}

static PyObject *
ring_op_inner_result(RingOp *op, PySendResult status, PyObject *result)
{
    if (status == PYGEN_NEXT)
        return result;
    op->state = OP_DONE;
    Py_CLEAR(op->inner);
    return status == PYGEN_RETURN ? ring_op_return(result) : NULL;
}

static PyObject *ring_put(RingCore *self, PyObject *item);
static PyObject *ring_take(RingCore *self, PyObject *Py_UNUSED(ignored));

static PyObject *
ring_op_step(RingOp *op, PyObject *value)
{
    PyObject *result;

    if (op->state == OP_INNER) {
        PySendResult status = PyIter_Send(op->inner, value, &result);
        return ring_op_inner_result(op, status, result);
    }
    if (op->state == OP_DONE) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited ring operation");
        return NULL;
    }
    if (value != Py_None) {
        PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started ring operation");
        return NULL;
    }
    op->state = OP_DONE;
    if (op->item != NULL) {
        result = ring_put(op->ring, op->item);
        if (result == NULL)
            return NULL;
        Py_DECREF(result);
        if (result == Py_True)
            return ring_op_return(Py_NewRef(Py_None));
        op->inner = PyObject_CallMethod((PyObject *)op->ring, "_send_slow", "O", op->item);
    }
    else {
        result = ring_take(op->ring, NULL);
        if (result == NULL)
            return NULL;
        if (result != Py_None)
            return ring_op_return(result);
        Py_DECREF(result);
        op->inner = PyObject_CallMethod((PyObject *)op->ring, "_receive", NULL);
    }
    Py_CLEAR(op->item);
    if (op->inner == NULL)
        return NULL;
    op->state = OP_INNER;
    return ring_op_step(op, Py_None);
}

static PyObject *
ring_op_iternext(RingOp *op)
{
    PyObject *result = ring_op_step(op, Py_None);
    if (result == NULL && PyErr_ExceptionMatches(PyExc_StopIteration)) {
        /* a plain end with the value: what tp_iternext callers (await, PyIter_Send) expect */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (value == NULL || value == Py_None) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
            return NULL;
        }
        PyErr_Restore(type, value, traceback);
    }
    return result;
}

static PyObject *
ring_op_send(RingOp *op, PyObject *value)
{
    return ring_op_step(op, value);
}

static PyObject *
ring_op_throw(RingOp *op, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *thrown;

    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw(exception)");
        return NULL;
    }
    if (op->state == OP_INNER) {
        PyObject *method = PyObject_GetAttrString(op->inner, "throw"), *result;
        if (method == NULL)
            return NULL;
        result = PyObject_Vectorcall(method, args, (size_t)nargs, NULL);
        Py_DECREF(method);
        if (result == NULL) {
            op->state = OP_DONE;
            Py_CLEAR(op->inner);
        }
        return result;
    }
    op->state = OP_DONE; /* thrown into before it started, or after it ended: it raises that */
    Py_CLEAR(op->item);
    thrown = args[0];
    if (PyExceptionInstance_Check(thrown))
        PyErr_SetObject((PyObject *)Py_TYPE(thrown), thrown);
    else if (PyExceptionClass_Check(thrown))
        PyErr_SetObject(thrown, nargs > 1 ? args[1] : NULL);
    else
        PyErr_SetString(PyExc_TypeError, "exceptions must be classes or instances deriving from BaseException");
    return NULL;
}

static PyObject *
ring_op_close(RingOp *op, PyObject *Py_UNUSED(ignored))
{
    PyObject *result;
    if (op->state != OP_INNER) {
        op->state = OP_DONE;
        Py_CLEAR(op->item);
        Py_RETURN_NONE;
    }
    result = PyObject_CallMethod(op->inner, "close", NULL);
    op->state = OP_DONE;
    Py_CLEAR(op->inner);
    return result;
}

static PyObject *
ring_op_await(RingOp *op)
{
    return Py_NewRef(op);
}

static PyObject *
ring_op_inner_attribute(RingOp *op, const char *name)
{
    if (op->state == OP_INNER)
        return PyObject_GetAttrString(op->inner, name);
    Py_RETURN_FALSE;
}

static PyObject *
ring_op_running(RingOp *op, void *Py_UNUSED(closure))
{
    return ring_op_inner_attribute(op, "cr_running");
}

static PyObject *
ring_op_suspended(RingOp *op, void *Py_UNUSED(closure))
{
    return ring_op_inner_attribute(op, "cr_suspended");
}

static PyObject *
ring_op_frame(RingOp *op, void *Py_UNUSED(closure))
{
    if (op->state == OP_INNER)
        return PyObject_GetAttrString(op->inner, "cr_frame");
    if (op->state == OP_DONE)
        Py_RETURN_NONE;
    return Py_NewRef(op); /* not None: created, not started (it has no frame of its own) */
}

static PyMethodDef ring_op_methods[] = {
    {"send", (PyCFunction)ring_op_send, METH_O, "send(value): one step, as a coroutine's"},
    {"throw", (PyCFunction)(void (*)(void))ring_op_throw, METH_FASTCALL, "throw(exception), as a coroutine's"},
    {"close", (PyCFunction)ring_op_close, METH_NOARGS, "close(), as a coroutine's"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ring_op_getset[] = {
    {"cr_running", (getter)ring_op_running, NULL, NULL, NULL},
    {"cr_suspended", (getter)ring_op_suspended, NULL, NULL, NULL},
    {"cr_frame", (getter)ring_op_frame, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyAsyncMethods ring_op_async = {
    .am_await = (unaryfunc)ring_op_await,
};

static PyTypeObject RingOpType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aioipc._core._speedups.RingOp",
    .tp_doc = "A ring's send() or receive(): a coroutine whose fast path needs no frame.",
    .tp_basicsize = sizeof(RingOp),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)ring_op_dealloc,
    .tp_traverse = (traverseproc)ring_op_traverse,
    .tp_clear = (inquiry)ring_op_clear,
    .tp_as_async = &ring_op_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)ring_op_iternext,
    .tp_methods = ring_op_methods,
    .tp_getset = ring_op_getset,
};

static PyObject *
ring_send(RingCore *self, PyObject *item)
{
    return ring_op_new(self, item);
}

static PyObject *
ring_receive(RingCore *self, PyObject *Py_UNUSED(ignored))
{
    return ring_op_new(self, NULL);
}

#define RING_SEND_DOC                                                                                     \
    "send(item)\n--\n\nSend one message; wait while the lane is full.\n\n"                                       \
    "A send that finds room copies the message into the lane and commits\n"                               \
    "it without waiting for anything; the doorbell, if the peer sleeps,\n"                                \
    "rings once per loop iteration for all of them.\n\n"                                                   \
    "Raises:\n"                                                                                           \
    "    FrameTooLarge: over ``max_size``; nothing was sent.\n"                                          \
    "    anyio.BrokenResourceError: the peer closed its receiving side.\n"                               \
    "    PeerDied: the peer died while this waited for room.\n"                                          \
    "    anyio.ClosedResourceError: this side closed (or sent EOF).\n"                                   \
    "    anyio.BusyResourceError: another task is sending.\n"
#define RING_RECEIVE_DOC                                                                                  \
    "receive()\n--\n\nReceive the next message (a copy); wait while the lane is empty.\n\n"                   \
    "Raises:\n"                                                                                           \
    "    anyio.EndOfStream: the peer sent EOF or closed, and everything was read.\n"                     \
    "    PeerDied: the peer died, and everything it committed was read.\n"                               \
    "    anyio.ClosedResourceError: this side closed (also wakes a waiting ``receive``).\n"              \
    "    anyio.BusyResourceError: another task is receiving.\n"

static PyMethodDef ring_methods[] = {
    {"_bind", (PyCFunction)(void (*)(void))ring_bind, METH_FASTCALL,
     "_bind(memory, tx_offset, rx_offset, capacity, max_size, words, fair_shift, flush_every)"},
    {"_unbind", (PyCFunction)ring_unbind, METH_NOARGS, "Release the mapping (before it is closed)."},
    {"_put", (PyCFunction)ring_put, METH_O, "_put(item) -> bool: send one message now if it fits"},
    {"_take", (PyCFunction)ring_take, METH_NOARGS, "_take() -> bytes | None: the next message if one waits"},
    {"send", (PyCFunction)ring_send, METH_O, RING_SEND_DOC},
    {"receive", (PyCFunction)ring_receive, METH_NOARGS, RING_RECEIVE_DOC},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef ring_members[] = {
    {"capacity", T_LONGLONG, offsetof(RingCore, capacity), READONLY, "bytes per lane"},
    {"max_size", T_LONGLONG, offsetof(RingCore, max_size), READONLY, "the largest message"},
    {"_head", T_LONGLONG, offsetof(RingCore, head), 0, NULL},
    {"_tail", T_LONGLONG, offsetof(RingCore, tail), 0, NULL},
    {"_head_seen", T_LONGLONG, offsetof(RingCore, head_seen), 0, NULL},
    {"_room_until", T_LONGLONG, offsetof(RingCore, room_until), 0, NULL},
    {"_budget", T_LONGLONG, offsetof(RingCore, budget), 0, NULL},
    {"_sent", T_LONGLONG, offsetof(RingCore, sent), 0, NULL},
    {"_read", T_LONGLONG, offsetof(RingCore, read), 0, NULL},
    {"_sending", T_BOOL, offsetof(RingCore, sending), 0, NULL},
    {"_receiving", T_BOOL, offsetof(RingCore, receiving), 0, NULL},
    {"_closed", T_BOOL, offsetof(RingCore, closed), 0, NULL},
    {"_eof_sent", T_BOOL, offsetof(RingCore, eof_sent), 0, NULL},
    {"_flush_scheduled", T_BOOL, offsetof(RingCore, flush_scheduled), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject RingCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aioipc._core._speedups.RingCore",
    .tp_doc = "One side of a shared-memory ring: its counters, and one-call send and receive fast paths.",
    .tp_basicsize = sizeof(RingCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = ring_new,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_methods = ring_methods,
    .tp_members = ring_members,
};

static int
ring_add_type(PyObject *module)
{
    if (PyType_Ready(&RingCoreType) < 0 || PyType_Ready(&RingOpType) < 0)
        return -1;
    Py_INCREF(&RingCoreType);
    if (PyModule_AddObject(module, "RingCore", (PyObject *)&RingCoreType) < 0) {
        Py_DECREF(&RingCoreType);
        return -1;
    }
    return 0;
}

/* ---- message queues: POSIX mq_send / mq_receive, System V msgsnd / msgrcv ------------------
 *
 * One call that never blocks: a queue that is empty (full) answers None (False), not an
 * exception, because a waiting consumer (a flooding producer) meets that every few messages.
 * Rule 1: sizes come from the caller, from the queue's own limit (mq_msgsize; msgmax), never
 * from a peer: the receive buffer is that size (on the stack up to QUEUE_STACK bytes), and
 * the message is copied out at its real size. Rule 2: errors are OSError with errno. Rule 3:
 * the GIL is kept, as these calls return at once (a deadline already past for mq_*, even on
 * a blocking descriptor; IPC_NOWAIT for msg*). */

#include <limits.h>
#include <mqueue.h>
#include <sys/msg.h>
#include <time.h>

#define QUEUE_STACK 8192
#define QUEUE_SIZE_MAX (1 << 30)

static int
queue_int_arg(PyObject *arg, int *value)
{
    long number = PyLong_AsLong(arg);
    if (number == -1 && PyErr_Occurred())
        return -1;
    if (number < INT_MIN || number > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "a descriptor or queue id is a C int");
        return -1;
    }
    *value = (int)number;
    return 0;
}

static int
queue_size_arg(PyObject *arg, Py_ssize_t *size)
{
    *size = PyLong_AsSsize_t(arg);
    if (*size == -1 && PyErr_Occurred())
        return -1;
    if (*size < 1 || *size > QUEUE_SIZE_MAX) {
        PyErr_SetString(PyExc_ValueError, "size must be from 1 to 2**30");
        return -1;
    }
    return 0;
}

/* A receive's first arguments: the descriptor (id), the buffer size, whether the tag is wanted. */
static int
queue_receive_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected, const char *usage, int *fd,
                   Py_ssize_t *size, int *with_tag)
{
    if (nargs != expected) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    if (queue_int_arg(args[0], fd) < 0 || queue_size_arg(args[1], size) < 0)
        return -1;
    *with_tag = PyObject_IsTrue(args[2]);
    return *with_tag < 0 ? -1 : 0;
}

static PyObject *
queue_result(PyObject *data, long tag, int with_tag)
{
    if (data == NULL || !with_tag)
        return data;
    return Py_BuildValue("(Nl)", data, tag);
}

static const struct timespec queue_now = {0, 0}; /* a deadline already past: never wait */

/* mq_receive(mqd, size, with_priority) -> bytes | (bytes, priority) | None (empty)
 * size: the queue's mq_msgsize. */
static PyObject *
posix_mq_receive(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    char stack[QUEUE_STACK];
    PyObject *data = NULL;
    Py_ssize_t size;
    ssize_t n;
    unsigned int priority = 0;
    int fd, with_priority, saved;

    if (queue_receive_args(args, nargs, 3, "mq_receive(mqd, size, with_priority)", &fd, &size, &with_priority) < 0)
        return NULL;
    if (size <= QUEUE_STACK) {
        n = mq_timedreceive(fd, stack, (size_t)size, &priority, &queue_now);
        saved = errno;
        if (n >= 0)
            data = PyBytes_FromStringAndSize(stack, n);
    } else { /* into a bytes object of the queue's size, then cut to the message's */
        data = PyBytes_FromStringAndSize(NULL, size);
        if (data == NULL)
            return NULL;
        n = mq_timedreceive(fd, PyBytes_AS_STRING(data), (size_t)size, &priority, &queue_now);
        saved = errno;
        if (n < 0)
            Py_CLEAR(data);
        else if (_PyBytes_Resize(&data, n) < 0)
            return NULL;
    }
    if (n >= 0)
        return queue_result(data, (long)priority, with_priority);
    if (saved == EAGAIN || saved == ETIMEDOUT)
        Py_RETURN_NONE;
    errno = saved;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* mq_send(mqd, data, priority) -> True, or False when the queue is full. */
static PyObject *
posix_mq_send(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    unsigned long priority;
    int fd, rc;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "mq_send(mqd, data, priority)");
        return NULL;
    }
    if (queue_int_arg(args[0], &fd) < 0)
        return NULL;
    priority = PyLong_AsUnsignedLong(args[2]);
    if (priority == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (priority > UINT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "priority out of range");
        return NULL;
    }
    if (PyBytes_CheckExact(args[1])) {
        rc = mq_timedsend(fd, PyBytes_AS_STRING(args[1]), (size_t)PyBytes_GET_SIZE(args[1]),
                          (unsigned int)priority, &queue_now);
    } else {
        if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
            return NULL;
        rc = mq_timedsend(fd, view.buf, (size_t)view.len, (unsigned int)priority, &queue_now);
        PyBuffer_Release(&view);
    }
    if (rc == 0)
        Py_RETURN_TRUE;
    if (errno == EAGAIN || errno == ETIMEDOUT)
        Py_RETURN_FALSE;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* A System V message: the type, then the text (struct msgbuf with a flexible tail). */
struct queue_message {
    long mtype;
    char mtext[];
};

/* msg_receive(msqid, size, with_type, type) -> bytes | (bytes, mtype) | None (none matched)
 * size: the largest message the caller accepts (msgmax); a larger one stays queued (E2BIG). */
static PyObject *
sysv_msg_receive(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    long stack[1 + QUEUE_STACK / sizeof(long)];
    struct queue_message *message = (struct queue_message *)stack;
    PyObject *data = NULL;
    Py_ssize_t size;
    ssize_t n;
    long type;
    int id, with_type, saved;

    if (queue_receive_args(args, nargs, 4, "msg_receive(msqid, size, with_type, type)", &id, &size, &with_type) < 0)
        return NULL;
    type = PyLong_AsLong(args[3]);
    if (type == -1 && PyErr_Occurred())
        return NULL;
    if (type < -INT_MAX || type > INT_MAX) { /* as sysv_ipc: a C int */
        PyErr_SetString(PyExc_OverflowError, "type out of range");
        return NULL;
    }
    if (size > QUEUE_STACK) {
        message = PyMem_Malloc(sizeof(long) + (size_t)size);
        if (message == NULL)
            return PyErr_NoMemory();
    }
    n = msgrcv(id, message, (size_t)size, type, IPC_NOWAIT);
    saved = errno;
    if (n >= 0)
        data = queue_result(PyBytes_FromStringAndSize(message->mtext, n), message->mtype, with_type);
    if (message != (struct queue_message *)stack)
        PyMem_Free(message);
    if (n >= 0)
        return data;
    if (saved == ENOMSG || saved == EAGAIN)
        Py_RETURN_NONE;
    errno = saved;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* msg_send(msqid, data, type) -> True, or False when the queue is full. */
static PyObject *
sysv_msg_send(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    long stack[1 + QUEUE_STACK / sizeof(long)];
    struct queue_message *message = (struct queue_message *)stack;
    Py_buffer view;
    long type;
    int id, rc, saved;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "msg_send(msqid, data, type)");
        return NULL;
    }
    if (queue_int_arg(args[0], &id) < 0)
        return NULL;
    type = PyLong_AsLong(args[2]);
    if (type == -1 && PyErr_Occurred())
        return NULL;
    if (type < 1 || type > INT_MAX) { /* as sysv_ipc: a C int (the kernel would take any long) */
        PyErr_SetString(PyExc_ValueError, "type out of range");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (view.len > QUEUE_SIZE_MAX) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "message over 2**30 bytes");
        return NULL;
    }
    if (view.len > QUEUE_STACK) {
        message = PyMem_Malloc(sizeof(long) + (size_t)view.len);
        if (message == NULL) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
    }
    message->mtype = type;
    memcpy(message->mtext, view.buf, (size_t)view.len);
    rc = msgsnd(id, message, (size_t)view.len, IPC_NOWAIT);
    saved = errno;
    if (message != (struct queue_message *)stack)
        PyMem_Free(message);
    PyBuffer_Release(&view);
    if (rc == 0)
        Py_RETURN_TRUE;
    if (saved == EAGAIN)
        Py_RETURN_FALSE;
    errno = saved;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyMethodDef methods[] = {
    {"parse_frames", (PyCFunction)(void (*)(void))parse_frames, METH_FASTCALL,
     "parse_frames(buffer, start, end, max_size, batch, append) -> (start, need, bad_size)"},
    {"send_batch", (PyCFunction)(void (*)(void))send_batch, METH_FASTCALL,
     "send_batch(sock, messages, start) -> number of messages sent (sendmmsg)"},
    {"recv_batch", (PyCFunction)(void (*)(void))recv_batch, METH_FASTCALL,
     "recv_batch(sock, buffer, slot, count, control, eof_on_empty, want_address)"
     " -> (items, credentials, addresses) (recvmmsg)"},
    {"mq_receive", (PyCFunction)(void (*)(void))posix_mq_receive, METH_FASTCALL,
     "mq_receive(mqd, size, with_priority) -> bytes | (bytes, priority) | None when empty"},
    {"mq_send", (PyCFunction)(void (*)(void))posix_mq_send, METH_FASTCALL,
     "mq_send(mqd, data, priority) -> True, or False when full"},
    {"msg_receive", (PyCFunction)(void (*)(void))sysv_msg_receive, METH_FASTCALL,
     "msg_receive(msqid, size, with_type, type) -> bytes | (bytes, mtype) | None when none matches"},
    {"msg_send", (PyCFunction)(void (*)(void))sysv_msg_send, METH_FASTCALL,
     "msg_send(msqid, data, type) -> True, or False when full"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aioipc._core._speedups",
    .m_doc = "Batched message socket I/O (sendmmsg/recvmmsg), a frame parser, the shared-memory ring's fast paths,"
             " and non-blocking message queue calls.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && ring_add_type(m) < 0)
        Py_CLEAR(m);
    return m;
}
