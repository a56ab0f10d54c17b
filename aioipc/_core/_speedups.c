/* Optional accelerator: batched message socket I/O (sendmmsg / recvmmsg); the module's init.
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
#include "_speedups.h"

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

static PyMethodDef methods[] = {
    {"send_batch", (PyCFunction)(void (*)(void))send_batch, METH_FASTCALL,
     "send_batch(sock, messages, start) -> number of messages sent (sendmmsg)"},
    {"recv_batch", (PyCFunction)(void (*)(void))recv_batch, METH_FASTCALL,
     "recv_batch(sock, buffer, slot, count, control, eof_on_empty, want_address)"
     " -> (items, credentials, addresses) (recvmmsg)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aioipc._core._speedups",
    .m_doc = "Batched message socket I/O (sendmmsg/recvmmsg), a length-prefixed framer, the shared-memory ring's fast paths,"
             " and non-blocking message queue calls.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (speedups_add_ring(m) < 0 || speedups_add_queues(m) < 0 || speedups_add_queue_cores(m) < 0 ||
                      speedups_add_message(m) < 0 ||
                      speedups_add_framer(m) < 0 || speedups_add_send(m) < 0 ||
                      PyModule_AddIntConstant(m, "RECV_MAX", RECV_MAX) < 0))
        Py_CLEAR(m);
    return m;
}
