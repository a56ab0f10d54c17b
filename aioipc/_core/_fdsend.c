/* Part of the optional accelerator aioipc._core._speedups (see _speedups.h).
 *
 * SendCore: the state of a send stream over a non-blocking fd (fdstreams.FdSendStream, whose Python
 * slow paths read and write the same attributes; the pure-Python twin is speedups.PySendCore) and
 * its try_send_parts: a small send is appended to the pending buffer when a flush is due anyway,
 * else written at once (one write(), or writev() for a large one), the end of the burst scheduled
 * from the second such write (a lone send, a round trip's, costs no loop iteration). And frame_send, the framed
 * streams' send(): a FastOp whose step sends header and payload through that try_send_parts when
 * the transport is such a stream, and hands over to the Python slow path (_send_slow) otherwise. */
#include "_speedups.h"

#include <errno.h>
#include <stddef.h>
#include <structmember.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_PARTS 8
#define JOIN_BELOW 2048 /* parts this small in all are copied together and written with one write() */

typedef struct {
    PyObject_HEAD
    PyObject *pending;      /* bytearray: what the loop writes at the end of the burst or when writable */
    PyObject *held;         /* the unwritten rest of a large send of bytes, written before pending, or None */
    PyObject *units;        /* deque of pending message sizes (atomic FIFO writes), or None */
    PyObject *flush_handle; /* the scheduled end of the burst or flush, or None */
    PyObject *error;        /* the write error every later send raises, or None */
    PyObject *handle;       /* the FdHandle */
    PyObject *guard;        /* the ResourceGuard of the sending direction */
    Py_ssize_t budget;      /* fairness budget */
    char parked, closed;
    char wrote; /* written at once with no end of burst scheduled (FdSendStream's "wrote" state) */
} SendCore;

static struct {
    Py_ssize_t direct_write, high_water;
    PyObject *str_busy, *str_fd, *str_loop, *str_get_loop, *str_call_soon, *str_flush, *str_end_burst,
        *str_check, *str_send_slow, *str_transport, *str_sender, *str_max_size, *str_lines;
} send_setup = {.direct_write = 16 * 1024, .high_water = 64 * 1024};

static PyTypeObject SendCoreType;

#define IS_SET(o) ((o) != NULL && (o) != Py_None)

/* Append buffers to the pending bytearray; 0, or -1 with an exception set. */
static int
append_pending(SendCore *s, Py_buffer *bufs, int n, Py_ssize_t skip)
{
    Py_ssize_t old = PyByteArray_GET_SIZE(s->pending), add = 0;
    char *to;
    int i;

    for (i = 0; i < n; i++)
        add += bufs[i].len;
    add -= skip;
    if (PyByteArray_Resize(s->pending, old + add) < 0)
        return -1;
    to = PyByteArray_AS_STRING(s->pending) + old;
    for (i = 0; i < n; i++) {
        Py_ssize_t len = bufs[i].len;
        const char *from = bufs[i].buf;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(to, from + skip, (size_t)(len - skip));
        to += len - skip;
        skip = 0;
    }
    if (IS_SET(s->units)) {
        PyObject *r = PyObject_CallMethod(s->units, "append", "n", add);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

static int
schedule(SendCore *s, PyObject *name)
{
    PyObject *loop, *callback, *handle;

    loop = PyObject_GetAttr(s->handle, send_setup.str_loop);
    if (loop == Py_None) {
        Py_DECREF(loop);
        loop = PyObject_CallMethodNoArgs(s->handle, send_setup.str_get_loop);
    }
    if (loop == NULL)
        return -1;
    callback = PyObject_GetAttr((PyObject *)s, name);
    if (callback == NULL) {
        Py_DECREF(loop);
        return -1;
    }
    handle = PyObject_CallMethodOneArg(loop, send_setup.str_call_soon, callback);
    Py_DECREF(callback);
    Py_DECREF(loop);
    if (handle == NULL)
        return -1;
    Py_XSETREF(s->flush_handle, handle);
    return 0;
}

/* try_send_parts over Py_buffers: 1 taken, 0 not (the caller awaits the slow path), -1 error. */
static int
core_try(SendCore *s, Py_buffer *bufs, int n)
{
    Py_ssize_t size = 0, written, fd;
    PyObject *value;
    struct iovec iov[MAX_PARTS];
    int i, busy;

    for (i = 0; i < n; i++)
        size += bufs[i].len;
    if (size >= send_setup.direct_write || s->pending == NULL || !PyByteArray_Check(s->pending) ||
        PyByteArray_GET_SIZE(s->pending) >= send_setup.high_water || IS_SET(s->held) || s->budget <= 0 ||
        IS_SET(s->error) ||
        s->closed || s->handle == NULL || s->guard == NULL)
        return 0;
    if ((value = PyObject_GetAttr(s->guard, send_setup.str_busy)) == NULL)
        return -1;
    busy = PyObject_IsTrue(value);
    Py_DECREF(value);
    if (busy)
        return busy < 0 ? -1 : 0;
    if ((value = PyObject_GetAttr(s->handle, send_setup.str_fd)) == NULL)
        return -1;
    fd = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0)
        return 0;
    s->budget--; /* a small send: its bytes are bounded by HIGH_WATER between flushes */
    if (IS_SET(s->flush_handle) || s->parked) /* burst or parked: a flush is due, queue behind it */
        return append_pending(s, bufs, n, 0) < 0 ? -1 : 1;
    /* idle or wrote: write at once (see FdSendStream's states) */
    if (n == 1)
        written = write((int)fd, bufs[0].buf, (size_t)size);
    else if (size < JOIN_BELOW) {
        char joined[JOIN_BELOW], *to = joined;
        for (i = 0; i < n; i++) {
            memcpy(to, bufs[i].buf, (size_t)bufs[i].len);
            to += bufs[i].len;
        }
        written = write((int)fd, joined, (size_t)size);
    }
    else {
        for (i = 0; i < n; i++) {
            iov[i].iov_base = bufs[i].buf;
            iov[i].iov_len = (size_t)bufs[i].len;
        }
        written = writev((int)fd, iov, n);
    }
    if (written < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            PyObject *type, *exc, *tb, *r;
            PyErr_SetFromErrno(PyExc_OSError);
            PyErr_Fetch(&type, &exc, &tb);
            PyErr_NormalizeException(&type, &exc, &tb);
            Py_XDECREF(type);
            Py_XDECREF(tb);
            Py_XSETREF(s->error, exc);
            r = PyObject_CallMethodNoArgs((PyObject *)s, send_setup.str_check); /* raises BrokenResourceError */
            if (r != NULL) {
                Py_DECREF(r);
                PyErr_SetString(PyExc_SystemError, "_check() did not raise the write error");
            }
            return -1;
        }
        written = 0;
    }
    if (written < size) {
        if (append_pending(s, bufs, n, written) < 0)
            return -1;
        return schedule(s, send_setup.str_flush) < 0 ? -1 : 1;
    }
    if (!s->wrote) { /* idle: a lone send schedules nothing */
        s->wrote = 1;
        return 1;
    }
    /* the second in a row: the sends that follow in this iteration queue behind the end of the
     * burst scheduled here and go out together. */
    return schedule(s, send_setup.str_end_burst) < 0 ? -1 : 1;
}

static int
get_buffers(PyObject *const *items, int n, Py_buffer *bufs)
{
    int i;
    for (i = 0; i < n; i++) {
        if (PyObject_GetBuffer(items[i], &bufs[i], PyBUF_SIMPLE) < 0) {
            while (i-- > 0)
                PyBuffer_Release(&bufs[i]);
            return -1;
        }
    }
    return 0;
}

static void
release_buffers(Py_buffer *bufs, int n)
{
    int i;
    for (i = 0; i < n; i++)
        PyBuffer_Release(&bufs[i]);
}

static PyObject *
core_try_send_parts(SendCore *s, PyObject *parts)
{
    PyObject *seq = PySequence_Fast(parts, "parts must be a sequence of buffers");
    Py_buffer bufs[MAX_PARTS];
    Py_ssize_t n;
    int taken;

    if (seq == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_PARTS) {
        Py_DECREF(seq);
        Py_RETURN_FALSE; /* many parts: the slow path joins them */
    }
    if (get_buffers(PySequence_Fast_ITEMS(seq), (int)n, bufs) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    taken = core_try(s, bufs, (int)n);
    release_buffers(bufs, (int)n);
    Py_DECREF(seq);
    if (taken < 0)
        return NULL;
    return PyBool_FromLong(taken);
}

/* frame_send(stream, item): the step of a framed stream's send. */
static int
frame_send_step(PyObject *stream, PyObject *const *args, Py_ssize_t Py_UNUSED(nargs), PyObject **result)
{
    PyObject *item = args[0], *transport, *sender = NULL, *value;
    Py_ssize_t size, max_size;
    unsigned char header[4];
    Py_buffer bufs[2];
    int taken = 0, lines;

    if (!PyBytes_CheckExact(item))
        goto slow;
    size = PyBytes_GET_SIZE(item);
    if ((value = PyObject_GetAttr(stream, send_setup.str_lines)) == NULL)
        return FAST_ERROR;
    lines = PyObject_IsTrue(value);
    Py_DECREF(value);
    if (lines)
        goto slow; /* also on an error: the slow path raises it again */
    if ((value = PyObject_GetAttr(stream, send_setup.str_max_size)) == NULL)
        return FAST_ERROR;
    max_size = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    if (max_size < 0 || size > max_size || size > 0xFFFFFFFFLL) {
        PyErr_Clear();
        goto slow; /* FrameTooLarge, from the slow path */
    }
    if ((transport = PyObject_GetAttr(stream, send_setup.str_transport)) == NULL)
        return FAST_ERROR;
    if (PyObject_TypeCheck(transport, &SendCoreType))
        sender = transport;
    else {
        sender = PyObject_GetAttr(transport, send_setup.str_sender);
        Py_DECREF(transport);
        if (sender == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return FAST_ERROR;
            PyErr_Clear();
        }
        if (sender != NULL && !PyObject_TypeCheck(sender, &SendCoreType))
            Py_CLEAR(sender);
    }
    if (sender == NULL)
        goto slow;
    header[0] = (unsigned char)(size >> 24);
    header[1] = (unsigned char)(size >> 16);
    header[2] = (unsigned char)(size >> 8);
    header[3] = (unsigned char)size;
    bufs[0].buf = header;
    bufs[0].len = 4;
    bufs[1].buf = PyBytes_AS_STRING(item);
    bufs[1].len = size;
    taken = core_try((SendCore *)sender, bufs, 2);
    Py_DECREF(sender);
    if (taken < 0)
        return FAST_ERROR;
    if (taken) {
        *result = Py_NewRef(Py_None);
        return FAST_DONE;
    }
slow:
    *result = PyObject_CallMethodOneArg(stream, send_setup.str_send_slow, item);
    return *result == NULL ? FAST_ERROR : FAST_SLOW;
}

static PyObject *
frame_send(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send(item)");
        return NULL;
    }
    return fast_op_new(args[0], frame_send_step, "FramedStream.send", args + 1, 1);
}

static PyObject *
send_core_setup(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send_core_setup(direct_write, high_water)");
        return NULL;
    }
    send_setup.direct_write = PyLong_AsSsize_t(args[0]);
    send_setup.high_water = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
send_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    return core_new(type); /* the subclass's attributes inline (see _speedups.h) */
}

static int
send_traverse(SendCore *s, visitproc visit, void *arg)
{
    Py_VISIT(s->pending);
    Py_VISIT(s->held);
    Py_VISIT(s->units);
    Py_VISIT(s->flush_handle);
    Py_VISIT(s->error);
    Py_VISIT(s->handle);
    Py_VISIT(s->guard);
    return 0;
}

static int
send_clear(SendCore *s)
{
    Py_CLEAR(s->pending);
    Py_CLEAR(s->held);
    Py_CLEAR(s->units);
    Py_CLEAR(s->flush_handle);
    Py_CLEAR(s->error);
    Py_CLEAR(s->handle);
    Py_CLEAR(s->guard);
    return 0;
}

static void
send_dealloc(SendCore *s)
{
    PyObject_GC_UnTrack(s);
    send_clear(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

/* The loop iteration of an idle write is over: write what queued behind it. */
static PyObject *
core_end_burst(SendCore *s, PyObject *Py_UNUSED(arg))
{
    Py_XSETREF(s->flush_handle, Py_NewRef(Py_None));
    s->wrote = 0;
    if (s->pending != NULL && PyByteArray_Check(s->pending) && PyByteArray_GET_SIZE(s->pending) > 0)
        return PyObject_CallMethodNoArgs((PyObject *)s, send_setup.str_flush);
    Py_RETURN_NONE;
}

static PyMethodDef send_methods[] = {
    {"_end_burst", (PyCFunction)core_end_burst, METH_NOARGS, "The end of a burst: write what queued behind it."},
    {"try_send_parts", (PyCFunction)core_try_send_parts, METH_O,
     "try_send_parts(parts)\n--\n\nTake parts (byte buffers) as one unit now if no wait is needed: True, "
     "else False (await send_parts(parts))."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef send_members[] = {
    {"_pending", T_OBJECT, offsetof(SendCore, pending), 0, NULL},
    {"_held", T_OBJECT, offsetof(SendCore, held), 0, NULL},
    {"_units", T_OBJECT, offsetof(SendCore, units), 0, NULL},
    {"_flush_handle", T_OBJECT, offsetof(SendCore, flush_handle), 0, NULL},
    {"_error", T_OBJECT, offsetof(SendCore, error), 0, NULL},
    {"_handle", T_OBJECT, offsetof(SendCore, handle), 0, NULL},
    {"_guard", T_OBJECT, offsetof(SendCore, guard), 0, NULL},
    {"_budget", T_PYSSIZET, offsetof(SendCore, budget), 0, NULL},
    {"_parked", T_BOOL, offsetof(SendCore, parked), 0, NULL},
    {"_closed", T_BOOL, offsetof(SendCore, closed), 0, NULL},
    {"_wrote", T_BOOL, offsetof(SendCore, wrote), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SendCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aioipc._core._speedups.SendCore",
    .tp_doc = "The state of a send stream over a non-blocking fd, and its try_send_parts.",
    .tp_basicsize = sizeof(SendCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = send_new,
    .tp_dealloc = (destructor)send_dealloc,
    .tp_traverse = (traverseproc)send_traverse,
    .tp_clear = (inquiry)send_clear,
    .tp_methods = send_methods,
    .tp_members = send_members,
};

static PyMethodDef send_functions[] = {
    {"send_core_setup", (PyCFunction)(void (*)(void))send_core_setup, METH_FASTCALL,
     "send_core_setup(direct_write, high_water): fdstreams' limits"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef frame_send_def = {
    "send", (PyCFunction)(void (*)(void))frame_send, METH_FASTCALL,
    "send(item)\n--\n\nSend one message as a length-prefixed frame.\n\n"
    "Raises:\n    FrameTooLarge: the message is over ``max_size``; nothing was sent.\n"};

int
speedups_add_send(PyObject *module)
{
    PyObject *func, *method;
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&send_setup.str_busy, "busy"},           {&send_setup.str_fd, "fd"},
        {&send_setup.str_loop, "_loop"},          {&send_setup.str_get_loop, "loop"},
        {&send_setup.str_call_soon, "call_soon"}, {&send_setup.str_flush, "_flush"},
        {&send_setup.str_end_burst, "_end_burst"}, {&send_setup.str_check, "_check"},
        {&send_setup.str_send_slow, "_send_slow"}, {&send_setup.str_transport, "transport_stream"},
        {&send_setup.str_sender, "sender"},       {&send_setup.str_max_size, "max_size"},
        {&send_setup.str_lines, "_lines"},
    };
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return -1;
    if (PyType_Ready(&SendCoreType) < 0 || fast_op_ready() < 0 || PyModule_AddFunctions(module, send_functions) < 0)
        return -1;
    Py_INCREF(&SendCoreType);
    if (PyModule_AddObject(module, "SendCore", (PyObject *)&SendCoreType) < 0) {
        Py_DECREF(&SendCoreType);
        return -1;
    }
    /* an instancemethod: bound like a function when a class takes it as its send() */
    if ((func = PyCFunction_New(&frame_send_def, NULL)) == NULL)
        return -1;
    method = PyInstanceMethod_New(func);
    Py_DECREF(func);
    if (method == NULL || PyModule_AddObject(module, "frame_send", method) < 0) {
        Py_XDECREF(method);
        return -1;
    }
    return 0;
}
