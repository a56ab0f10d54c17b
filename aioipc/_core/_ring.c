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
PyObject *
ring_put(PyObject *ring, PyObject *item)
{
    RingCore *self = (RingCore *)ring;
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
PyObject *
ring_take(PyObject *ring, PyObject *Py_UNUSED(ignored))
{
    RingCore *self = (RingCore *)ring;
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


/* The steps of send() and receive(): the fast path, else the slow path's coroutine. */
static int
ring_send_step(PyObject *ring, PyObject *const *args, Py_ssize_t Py_UNUSED(nargs), PyObject **result)
{
    PyObject *sent = ring_put(ring, args[0]);
    if (sent == NULL)
        return FAST_ERROR;
    Py_DECREF(sent);
    if (sent == Py_True) {
        *result = Py_NewRef(Py_None);
        return FAST_DONE;
    }
    *result = PyObject_CallMethod(ring, "_send_slow", "O", args[0]);
    return *result == NULL ? FAST_ERROR : FAST_SLOW;
}

static int
ring_receive_step(PyObject *ring, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs), PyObject **result)
{
    PyObject *data = ring_take(ring, NULL);
    if (data == NULL)
        return FAST_ERROR;
    if (data != Py_None) {
        *result = data;
        return FAST_DONE;
    }
    Py_DECREF(data);
    *result = PyObject_CallMethod(ring, "_receive", NULL);
    return *result == NULL ? FAST_ERROR : FAST_SLOW;
}

static PyObject *
ring_send(RingCore *self, PyObject *item)
{
    return fast_op_new((PyObject *)self, ring_send_step, "Ring.send", &item, 1);
}

static PyObject *
ring_receive(RingCore *self, PyObject *Py_UNUSED(ignored))
{
    return fast_op_new((PyObject *)self, ring_receive_step, "Ring.receive", NULL, 0);
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
    if (PyType_Ready(&RingCoreType) < 0 || fast_op_ready() < 0)
        return -1;
    Py_INCREF(&RingCoreType);
    if (PyModule_AddObject(module, "RingCore", (PyObject *)&RingCoreType) < 0) {
        Py_DECREF(&RingCoreType);
        return -1;
    }
    return 0;
}
