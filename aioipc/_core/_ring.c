/* Part of the optional accelerator aioipc._core._speedups (see _speedups.h). */
#include "_speedups.h"

#include <stddef.h>
#include <string.h>

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

int
speedups_add_ring(PyObject *module)
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
