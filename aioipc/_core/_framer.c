/* Part of the optional accelerator aioipc._core._speedups (see _speedups.h).
 *
 * FramerCore: the length-prefixed framer's state and its per-read methods (get_buffer,
 * buffer_updated, release, _parse), the base of aioipc._core.framing.Framer, whose Python code
 * reads and writes the same attributes (the pure-Python twin is framing._PyFramerCore). And
 * recv_fill, the one read of a stream socket or pipe into a framer (or any BufferSink): one
 * recvmsg() (read() for a pipe) straight into the framer's buffer, the frames parsed at once. */
#include "_speedups.h"

#include <errno.h>
#include <stddef.h>
#include <structmember.h>
#include <sys/socket.h>
#include <unistd.h>
typedef struct {
    PyObject_HEAD
    Py_ssize_t max_size;
    PyObject *buf;    /* bytearray; empty (the shared _NO_BUFFER) while the stream is idle */
    PyObject *view;   /* memoryview of buf */
    Py_ssize_t start, end; /* the first unparsed byte, the end of valid data */
    Py_ssize_t need;  /* bytes the next frame needs in the buffer */
    PyObject *parsed; /* deque of messages not yet taken (the shared _NO_PARSED until the first parse) */
    Py_ssize_t total; /* messages parsed so far */
    char eof;
    PyObject *error; /* FrameTooLarge kept for next_message(), or None */
} FramerCore;

/* What framing.py hands over once (framer_setup): its buffer pool and sentinels. */
static struct {
    PyObject *pool;           /* list of idle _MIN_READ buffers */
    PyObject *give_back;      /* _give_back(buffer): the pool of other sizes */
    PyObject *no_buffer;      /* _NO_BUFFER */
    PyObject *no_view;        /* _NO_VIEW */
    PyObject *no_parsed;      /* _NO_PARSED */
    PyObject *frame_too_large; /* FrameTooLarge(size, max_size) */
    PyObject *need_data;      /* NEED_DATA */
    PyObject *str_append;     /* "append", interned: looked up once a parse */
    Py_ssize_t min_read, pool_size, batch;
} setup;

static PyTypeObject FramerCoreType;

#define HAS_ERROR(f) ((f)->error != NULL && (f)->error != Py_None)
/* nothing parsed and no error: the frame in progress needs more bytes */
#define UNFINISHED(f) \
    (!HAS_ERROR(f) && ((f)->parsed == NULL || (f)->parsed == setup.no_parsed || PyObject_Length((f)->parsed) == 0))

static PyObject *
framer_setup(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t min_read, pool_size, batch;

    if (nargs != 10 || !PyList_Check(args[0]) || !PyByteArray_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "framer_setup(pool, give_back, no_buffer, no_view, no_parsed, "
                                         "frame_too_large, min_read, pool_size, batch, need_data)");
        return NULL;
    }
    min_read = PyLong_AsSsize_t(args[6]);
    pool_size = PyLong_AsSsize_t(args[7]);
    batch = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred())
        return NULL;
    Py_XSETREF(setup.pool, Py_NewRef(args[0]));
    Py_XSETREF(setup.give_back, Py_NewRef(args[1]));
    Py_XSETREF(setup.no_buffer, Py_NewRef(args[2]));
    Py_XSETREF(setup.no_view, Py_NewRef(args[3]));
    Py_XSETREF(setup.no_parsed, Py_NewRef(args[4]));
    Py_XSETREF(setup.frame_too_large, Py_NewRef(args[5]));
    Py_XSETREF(setup.need_data, Py_NewRef(args[9]));
    setup.min_read = min_read;
    setup.pool_size = pool_size;
    setup.batch = batch;
    Py_RETURN_NONE;
}

/* Make sure the buffer has room to read into: a pooled one when idle, else (rarely) the Python
 * side's _make_room(). 0, or -1 with an exception set. */
static int
framer_room(FramerCore *f, Py_ssize_t size_hint)
{
    Py_ssize_t free;

    if (f->buf == NULL || setup.pool == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "framer not set up");
        return -1;
    }
    if (PyByteArray_GET_SIZE(f->buf) == 0) {
        PyObject *buf, *view;
        Py_ssize_t n = PyList_GET_SIZE(setup.pool);
        if (n > 0) {
            buf = Py_NewRef(PyList_GET_ITEM(setup.pool, n - 1));
            if (PyList_SetSlice(setup.pool, n - 1, n, NULL) < 0) {
                Py_DECREF(buf);
                return -1;
            }
        }
        else if ((buf = PyByteArray_FromStringAndSize(NULL, setup.min_read)) == NULL)
            return -1;
        if ((view = PyMemoryView_FromObject(buf)) == NULL) {
            Py_DECREF(buf);
            return -1;
        }
        Py_SETREF(f->buf, buf);
        Py_XSETREF(f->view, view);
        f->start = f->end = 0;
        return 0;
    }
    free = PyByteArray_GET_SIZE(f->buf) - f->end;
    if (free < size_hint && free < f->need - (f->end - f->start)) {
        PyObject *r = PyObject_CallMethod((PyObject *)f, "_make_room", NULL);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* Framer._parse: hand each whole frame in buf[start:end] to parsed, at most one batch. */
static int
framer_parse(FramerCore *f)
{
    const unsigned char *buf;
    Py_ssize_t start = f->start, end = f->end, batch = setup.batch, count = 0;
    long long need = 4, bad = -1;
    PyObject *append;

    if (f->parsed == NULL || f->parsed == setup.no_parsed) {
        PyObject *deque = PyObject_CallNoArgs((PyObject *)Py_TYPE(setup.no_parsed));
        if (deque == NULL)
            return -1;
        Py_XSETREF(f->parsed, deque);
    }
    append = PyObject_GetAttr(f->parsed, setup.str_append);
    if (append == NULL)
        return -1;
    buf = (const unsigned char *)PyByteArray_AS_STRING(f->buf);
    while (end - start >= 4 && count < batch) {
        unsigned long long size = ((unsigned long long)buf[start] << 24) | ((unsigned long long)buf[start + 1] << 16) |
                                  ((unsigned long long)buf[start + 2] << 8) | (unsigned long long)buf[start + 3];
        PyObject *message, *result;
        if (size > (unsigned long long)f->max_size) {
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
        buf = (const unsigned char *)PyByteArray_AS_STRING(f->buf); /* append ran no Python code, but be safe */
        start += 4 + (Py_ssize_t)size;
        count++;
    }
    Py_DECREF(append);
    f->total += count;
    f->need = (Py_ssize_t)need;
    if (bad >= 0) {
        PyObject *error = PyObject_CallFunction(setup.frame_too_large, "Ln", bad, f->max_size);
        if (error == NULL)
            return -1;
        Py_XSETREF(f->error, error);
    }
    if (start == end)
        f->start = f->end = 0;
    else
        f->start = start;
    return 0;
fail:
    Py_DECREF(append);
    f->total += count;
    f->start = start;
    return -1;
}

static int
framer_updated(FramerCore *f, Py_ssize_t nbytes)
{
    if (nbytes < 0 || nbytes > PyByteArray_GET_SIZE(f->buf) - f->end) {
        PyErr_SetString(PyExc_ValueError, "buffer_updated: more bytes than the buffer had room for");
        return -1;
    }
    f->end += nbytes;
    if (f->end - f->start >= f->need && !HAS_ERROR(f))
        return framer_parse(f);
    return 0;
}

static int
framer_release(FramerCore *f)
{
    PyObject *buf = f->buf;
    Py_ssize_t size;

    if (buf == NULL || f->start != f->end || (size = PyByteArray_GET_SIZE(buf)) == 0)
        return 0;
    if (size == setup.min_read && PyList_GET_SIZE(setup.pool) < setup.pool_size) {
        if (PyList_Append(setup.pool, buf) < 0)
            return -1;
    }
    else {
        PyObject *r = PyObject_CallOneArg(setup.give_back, buf);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    Py_SETREF(f->buf, Py_NewRef(setup.no_buffer));
    Py_XSETREF(f->view, Py_NewRef(setup.no_view));
    f->start = f->end = 0;
    return 0;
}

static PyObject *
framer_get_buffer(FramerCore *f, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t hint = setup.min_read, end;
    PyObject *start, *slice, *view;

    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "get_buffer(size_hint=65536)");
        return NULL;
    }
    if (nargs == 1 && (hint = PyLong_AsSsize_t(args[0])) == -1 && PyErr_Occurred())
        return NULL;
    if (framer_room(f, hint) < 0)
        return NULL;
    end = f->end;
    if (end == 0)
        return Py_NewRef(f->view);
    if ((start = PyLong_FromSsize_t(end)) == NULL)
        return NULL;
    slice = PySlice_New(start, NULL, NULL);
    Py_DECREF(start);
    if (slice == NULL)
        return NULL;
    view = PyObject_GetItem(f->view, slice);
    Py_DECREF(slice);
    return view;
}

static PyObject *
framer_buffer_updated(FramerCore *f, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if ((n == -1 && PyErr_Occurred()) || framer_updated(f, n) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
framer_release_method(FramerCore *f, PyObject *Py_UNUSED(arg))
{
    if (framer_release(f) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
framer_parse_method(FramerCore *f, PyObject *Py_UNUSED(arg))
{
    if (f->buf == NULL || setup.pool == NULL || f->start < 0 || f->end < f->start ||
        f->end > PyByteArray_GET_SIZE(f->buf)) {
        PyErr_SetString(PyExc_ValueError, "framer state out of range");
        return NULL;
    }
    if (framer_parse(f) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
framer_popleft(FramerCore *f)
{
    static PyObject *name;
    if (name == NULL && (name = PyUnicode_InternFromString("popleft")) == NULL)
        return NULL;
    return PyObject_CallMethodNoArgs(f->parsed, name);
}

/* Framer.next_message: a parsed message, the next batch's first, the error, NEED_DATA; at the
 * end of input the Python side's _next_at_end() says (EOF, or TruncatedMessage). */
static PyObject *
framer_next_message(FramerCore *f, PyObject *Py_UNUSED(arg))
{
    if (f->buf == NULL || setup.pool == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "framer not set up");
        return NULL;
    }
    if (f->parsed != NULL && f->parsed != Py_None && PyObject_Length(f->parsed) > 0)
        return framer_popleft(f);
    if (PyErr_Occurred())
        return NULL;
    if (f->end - f->start >= f->need && !HAS_ERROR(f)) {
        if (framer_parse(f) < 0)
            return NULL;
        if (PyObject_Length(f->parsed) > 0)
            return framer_popleft(f);
    }
    if (HAS_ERROR(f)) {
        PyErr_SetObject((PyObject *)Py_TYPE(f->error), f->error);
        return NULL;
    }
    if (f->eof)
        return PyObject_CallMethod((PyObject *)f, "_next_at_end", NULL);
    return Py_NewRef(setup.need_data);
}

/* The sink's methods: the framer's own in C, any other sink's through Python. */
static int
sink_release(PyObject *sink)
{
    PyObject *r;
    if (PyObject_TypeCheck(sink, &FramerCoreType))
        return framer_release((FramerCore *)sink);
    if ((r = PyObject_CallMethod(sink, "release", NULL)) == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int
sink_updated(PyObject *sink, Py_ssize_t n)
{
    PyObject *r;
    if (PyObject_TypeCheck(sink, &FramerCoreType))
        return framer_updated((FramerCore *)sink, n);
    if ((r = PyObject_CallMethod(sink, "buffer_updated", "n", n)) == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* recv_fill(fd, sock, sink, ancsize) -> int | (bytes, ancdata, flags); try_recv_fill: None, not
 * BlockingIOError, when the fd is empty. One recvmsg() (read() when ancsize < 0) into
 * sink.get_buffer(), the bytes handed to sink.buffer_updated() at once, so a cancelled wait
 * loses none; sink.release() when nothing came. Returns the byte count (0: end of stream) when
 * no ancillary data came, else the bytes read, the ancillary data (as socket.recvmsg gives it)
 * and the flags. ``sock`` is unused (the Python twin's signature). recv_fill also raises it when a
 * framer's frame in progress is not whole yet: the parked task wakes once a frame, not a chunk. */
static PyObject *
fill(PyObject *const *args, Py_ssize_t nargs, int try_only)
{
    int fd;
    long ancsize;
    PyObject *sink, *bufobj = NULL, *result = NULL, *data = NULL, *ancdata = NULL;
    Py_buffer view = {0};
    char *ptr;
    Py_ssize_t len, n;
    int framer, err;
    struct msghdr msg;
    struct iovec iov;
    char small[256], *control = small;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "recv_fill(fd, sock, sink, ancsize)");
        return NULL;
    }
    fd = (int)PyLong_AsLong(args[0]);
    ancsize = PyLong_AsLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (ancsize > 65536) {
        PyErr_SetString(PyExc_ValueError, "ancsize is over 64 KiB");
        return NULL;
    }
    sink = args[2];
    framer = PyObject_TypeCheck(sink, &FramerCoreType);
    if (framer) {
        FramerCore *f = (FramerCore *)sink;
        if (framer_room(f, setup.min_read) < 0)
            return NULL;
        ptr = PyByteArray_AS_STRING(f->buf) + f->end;
        len = PyByteArray_GET_SIZE(f->buf) - f->end;
    }
    else {
        if ((bufobj = PyObject_CallMethod(sink, "get_buffer", NULL)) == NULL)
            return NULL;
        if (PyObject_GetBuffer(bufobj, &view, PyBUF_WRITABLE) < 0) {
            Py_DECREF(bufobj);
            return NULL;
        }
        ptr = view.buf;
        len = view.len;
    }
    if (ancsize > (long)sizeof(small) && (control = PyMem_Malloc((size_t)ancsize)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (ancsize < 0) {
        memset(&msg, 0, sizeof(msg));
        n = read(fd, ptr, (size_t)len); /* non-blocking: the GIL is kept */
    }
    else {
        memset(&msg, 0, sizeof(msg));
        iov.iov_base = ptr;
        iov.iov_len = (size_t)len;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ancsize ? control : NULL;
        msg.msg_controllen = (size_t)ancsize;
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    }
    err = errno;
    if (n < 0) {
        if (bufobj != NULL) {
            PyBuffer_Release(&view);
            Py_CLEAR(bufobj);
        }
        if ((err == EAGAIN || err == EWOULDBLOCK) && sink_release(sink) == 0 && try_only)
            result = Py_NewRef(Py_None);
        else if (!PyErr_Occurred()) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
        }
        goto done;
    }
    if (msg.msg_controllen > 0 || (msg.msg_flags & MSG_CTRUNC)) {
        struct cmsghdr *cmsg;
        if ((data = PyBytes_FromStringAndSize(ptr, n)) == NULL || (ancdata = PyList_New(0)) == NULL)
            goto close_fds; /* out of memory: the fds that came must not leak */
        for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
            PyObject *item;
            size_t size;
            if (cmsg->cmsg_len < CMSG_LEN(0) || (char *)cmsg + cmsg->cmsg_len > control + msg.msg_controllen)
                break;
            size = cmsg->cmsg_len - CMSG_LEN(0);
            item = Py_BuildValue("(iiy#)", cmsg->cmsg_level, cmsg->cmsg_type, CMSG_DATA(cmsg), (Py_ssize_t)size);
            if (item == NULL || PyList_Append(ancdata, item) < 0) {
                /* the fds that came must not leak: close every one of them */
                Py_XDECREF(item);
                goto close_fds;
            }
            Py_DECREF(item);
        }
    }
    if (bufobj != NULL) {
        PyBuffer_Release(&view);
        Py_CLEAR(bufobj);
    }
    if (data == NULL) {
        if ((n ? sink_updated(sink, n) : sink_release(sink)) < 0)
            goto done;
        if (n && framer && !try_only && UNFINISHED((FramerCore *)sink))
            PyErr_SetNone(PyExc_BlockingIOError); /* the caller keeps waiting */
        else
            result = PyLong_FromSsize_t(n);
        goto done;
    }
    if (sink_updated(sink, n) < 0)
        goto close_fds;
    result = Py_BuildValue("(OOi)", data, ancdata, msg.msg_flags);
    if (result == NULL)
        goto close_fds;
    goto done;
close_fds:
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(0) &&
            (char *)c + c->cmsg_len <= control + msg.msg_controllen) {
            size_t i, count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (i = 0; i < count; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                close(fd);
            }
        }
    }
done:
    if (bufobj != NULL) {
        PyBuffer_Release(&view);
        Py_DECREF(bufobj);
    }
    if (control != small)
        PyMem_Free(control);
    Py_XDECREF(data);
    Py_XDECREF(ancdata);
    return result;
}

static PyObject *
recv_fill(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    return fill(args, nargs, 0);
}

static PyObject *
try_recv_fill(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    return fill(args, nargs, 1);
}

static PyObject *
framer_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    FramerCore *f = (FramerCore *)core_new(type);
    if (f == NULL)
        return NULL;
    f->need = 4;
    return (PyObject *)f;
}

static int
framer_traverse(FramerCore *f, visitproc visit, void *arg)
{
    Py_VISIT(f->buf);
    Py_VISIT(f->view);
    Py_VISIT(f->parsed);
    Py_VISIT(f->error);
    return 0;
}

static int
framer_clear(FramerCore *f)
{
    Py_CLEAR(f->buf);
    Py_CLEAR(f->view);
    Py_CLEAR(f->parsed);
    Py_CLEAR(f->error);
    return 0;
}

static void
framer_dealloc(FramerCore *f)
{
    PyObject_GC_UnTrack(f);
    framer_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyMethodDef framer_methods[] = {
    {"get_buffer", (PyCFunction)(void (*)(void))framer_get_buffer, METH_FASTCALL,
     "get_buffer(size_hint=65536)\n--\n\nA writable view to read into: the free room at the end of the buffer."},
    {"buffer_updated", (PyCFunction)framer_buffer_updated, METH_O,
     "buffer_updated(nbytes)\n--\n\nReport that nbytes were written at the start of the last get_buffer view."},
    {"release", (PyCFunction)framer_release_method, METH_NOARGS,
     "release()\n--\n\nGive the buffer back if no unparsed byte is in it (a stream about to go idle)."},
    {"_parse", (PyCFunction)framer_parse_method, METH_NOARGS, "Parse one batch of whole frames."},
    {"next_message", (PyCFunction)framer_next_message, METH_NOARGS,
     "next_message()\n--\n\nThe next whole message, NEED_DATA, or EOF after a clean end.\n\n"
     "Raises:\n    FrameTooLarge: the next frame announced more than max_size.\n"
     "    TruncatedMessage: the input ended inside a frame.\n"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef framer_members[] = {
    {"max_size", T_PYSSIZET, offsetof(FramerCore, max_size), 0, "the largest message accepted"},
    {"_buf", T_OBJECT, offsetof(FramerCore, buf), 0, NULL},
    {"_view", T_OBJECT, offsetof(FramerCore, view), 0, NULL},
    {"_start", T_PYSSIZET, offsetof(FramerCore, start), 0, NULL},
    {"_end", T_PYSSIZET, offsetof(FramerCore, end), 0, NULL},
    {"_need", T_PYSSIZET, offsetof(FramerCore, need), 0, NULL},
    {"parsed", T_OBJECT, offsetof(FramerCore, parsed), 0, "messages parsed, not yet taken"},
    {"total", T_PYSSIZET, offsetof(FramerCore, total), 0, "messages parsed so far"},
    {"_eof", T_BOOL, offsetof(FramerCore, eof), 0, NULL},
    {"_error", T_OBJECT, offsetof(FramerCore, error), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FramerCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aioipc._core._speedups.FramerCore",
    .tp_doc = "A length-prefixed framer's state and its per-read methods (the base of framing.Framer).",
    .tp_basicsize = sizeof(FramerCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = framer_new,
    .tp_dealloc = (destructor)framer_dealloc,
    .tp_traverse = (traverseproc)framer_traverse,
    .tp_clear = (inquiry)framer_clear,
    .tp_methods = framer_methods,
    .tp_members = framer_members,
};

static PyMethodDef fill_functions[] = {
    {"framer_setup", (PyCFunction)(void (*)(void))framer_setup, METH_FASTCALL,
     "framer_setup(pool, give_back, no_buffer, no_view, no_parsed, frame_too_large, min_read, pool_size, batch)"},
    {"recv_fill", (PyCFunction)(void (*)(void))recv_fill, METH_FASTCALL,
     "recv_fill(fd, sock, sink, ancsize) -> int | (bytes, ancdata, flags): one read into sink"},
    {"try_recv_fill", (PyCFunction)(void (*)(void))try_recv_fill, METH_FASTCALL,
     "try_recv_fill(fd, sock, sink, ancsize): recv_fill, None when the fd is empty"},
    {NULL, NULL, 0, NULL},
};

int
speedups_add_framer(PyObject *module)
{
    if ((setup.str_append = PyUnicode_InternFromString("append")) == NULL || PyType_Ready(&FramerCoreType) < 0 ||
        PyModule_AddFunctions(module, fill_functions) < 0)
        return -1;
    Py_INCREF(&FramerCoreType);
    if (PyModule_AddObject(module, "FramerCore", (PyObject *)&FramerCoreType) < 0) {
        Py_DECREF(&FramerCoreType);
        return -1;
    }
    return 0;
}
