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
    Py_ssize_t tx_head_i, tx_gone_i, rx_head_i, tx_tail_i, rx_tail_i;
    long long capacity, max_size, fair_shift, flush_every;
    long long head, tail, head_seen, room_until, budget, sent, read;
    char sending, receiving, closed, eof_sent, flush_scheduled;
} RingCore;

static PyObject *
ring_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    RingCore *self = (RingCore *)core_new(type);
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
 * words: the header word indexes (tx head, tx gone, rx head, tx tail, rx tail). */
static PyObject *
ring_bind(RingCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long tx_offset, rx_offset, capacity, max_size, fair_shift, flush_every;
    Py_ssize_t words[5];
    Py_buffer view;

    if (nargs != 8 || !PyTuple_Check(args[5]) || PyTuple_GET_SIZE(args[5]) != 5) {
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
    for (int i = 0; i < 5; i++)
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
    for (int i = 0; i < 5; i++) {
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
    self->tx_tail_i = words[3];
    self->rx_tail_i = words[4];
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

/* After count messages sent or read (done since the last barrier, these included): the first
 * since the last barrier schedules one (_did), unless one is scheduled already; every
 * flush_every-th runs one now (_flush). -1 when that raised. */
static int
ring_after(RingCore *self, long long done, long long count)
{
    PyObject *result;
    if (done == count) {
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

/* Whether this side may send now without waiting (else the slow path decides, and says why). The
 * peer's gone flag is read by the first send since the last barrier only: it shares a cache line
 * with the tail the peer stores per message, and reading it per message cost a transfer of that
 * line each time (~8% of the ring's msgs/s). A send later in the same burst may go out after the
 * peer closed, as a write into a socket's buffer does. */
static int
ring_may_send(RingCore *self)
{
    return self->bound && !self->sending && self->budget > 0 && !self->closed && !self->eof_sent &&
           (self->sent > 0 || !__atomic_load_n(&self->h[self->tx_gone_i], __ATOMIC_RELAXED));
}

/* Write item's record at head, uncommitted, if it fits before the room last seen (looked at again
 * in the peer's tail when it does not: a lane that was full goes on here, not on the slow path, as
 * soon as the peer gives some back) and the lane's end: the head after it, or -1 (nothing written)
 * for anything else, the slow path's business. */
static long long
ring_write(RingCore *self, long long head, PyObject *item, long long *size)
{
    Py_buffer view;
    const char *data;
    long long end, position;
    uint32_t record[2];

    view.obj = NULL;
    if (PyBytes_CheckExact(item)) {
        data = PyBytes_AS_STRING(item);
        *size = PyBytes_GET_SIZE(item);
    }
    else {
        /* bytearray and memoryview only: their buffers run no Python code, which (a class's
         * __buffer__, Python 3.12) could close the ring or change a batch under us */
        if (!(PyByteArray_CheckExact(item) || PyMemoryView_Check(item)))
            return -1;
        if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear(); /* not contiguous bytes: the slow path says why, or copes */
            return -1;
        }
        data = (const char *)view.buf;
        *size = view.len;
    }
    end = head + RING_RECORD + ((*size + 7) & ~7LL);
    position = head % self->capacity;
    if (end > self->room_until)
        self->room_until = (long long)__atomic_load_n(&self->h[self->tx_tail_i], __ATOMIC_ACQUIRE) + self->capacity;
    if (*size > self->max_size || end > self->room_until || position + end - head > self->capacity) {
        if (view.obj != NULL)
            PyBuffer_Release(&view);
        return -1;
    }
    record[0] = (uint32_t)*size;
    record[1] = 0;
    memcpy(self->tx + position, record, RING_RECORD);
    memcpy(self->tx + position + RING_RECORD, data, (size_t)*size);
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    return end;
}

/* Commit what was written up to end: count messages of total bytes. -1 when the barrier raised. */
static int
ring_commit(RingCore *self, long long end, long long count, long long total)
{
    __atomic_store_n(&self->h[self->tx_head_i], (uint64_t)end, __ATOMIC_RELEASE); /* the commit */
    self->head = end;
    self->budget -= count + (total >> self->fair_shift);
    self->sent += count;
    return ring_after(self, self->sent, count);
}

/* _put(item) -> bool: write and commit one message if it fits now, else False. */
PyObject *
ring_put(PyObject *ring, PyObject *item)
{
    RingCore *self = (RingCore *)ring;
    long long size, end;

    if (!ring_may_send(self) || (end = ring_write(self, self->head, item, &size)) < 0)
        Py_RETURN_FALSE;
    if (ring_commit(self, end, 1, size) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* _put_many(messages) -> bool: for a list or tuple, write all its messages and commit them at
 * once if they all fit now, else write nothing and return False. */
static PyObject *
ring_put_many(PyObject *ring, PyObject *messages)
{
    RingCore *self = (RingCore *)ring;
    long long head, size, total = 0;
    Py_ssize_t i, count;

    if (!ring_may_send(self) || !(PyList_CheckExact(messages) || PyTuple_CheckExact(messages)))
        Py_RETURN_FALSE;
    head = self->head;
    count = PySequence_Fast_GET_SIZE(messages);
    if (count == 0)
        Py_RETURN_FALSE;
    /* a list cannot change under us: nothing here runs Python code (see ring_write) */
    for (i = 0; i < count; i++) {
        head = ring_write(self, head, PySequence_Fast_GET_ITEM(messages, i), &size);
        if (head < 0)
            Py_RETURN_FALSE; /* uncommitted: as if nothing was written */
        total += size;
    }
    if (ring_commit(self, head, count, total) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* Whether this side may receive now without waiting, and a committed record waits. */
static int
ring_may_take(RingCore *self)
{
    if (!self->bound || self->receiving || self->budget <= 0 || self->closed)
        return 0;
    if (self->tail == self->head_seen)
        self->head_seen = (long long)__atomic_load_n(&self->h[self->rx_head_i], __ATOMIC_ACQUIRE);
    return self->head_seen != self->tail;
}

/* The record at *tail (committed): a copy of its message, *tail moved past it, *size its length;
 * Py_None (a new reference) for a record this ring does not write (a bad peer: the slow path's
 * business), NULL when out of memory. */
static PyObject *
ring_read(RingCore *self, long long *tail, long long *size)
{
    long long position, capacity = self->capacity;
    uint32_t length;
    PyObject *data;

    position = *tail % capacity;
    memcpy(&length, self->rx + position, sizeof length);
    if (length == RING_WRAP) {
        *tail += capacity - position;
        position = 0;
        memcpy(&length, self->rx, sizeof length);
    }
    if ((long long)length > capacity - position - RING_RECORD)
        Py_RETURN_NONE;
    data = PyBytes_FromStringAndSize((const char *)self->rx + position + RING_RECORD, (Py_ssize_t)length);
    if (data != NULL) {
        *tail += RING_RECORD + (((long long)length + 7) & ~7LL);
        *size = length;
    }
    return data;
}

/* Give back the lane up to tail: count messages of total bytes read. The shared tail is stored by
 * the barrier (_flush: at once for the first read since the last one, then every flush_every
 * reads, at the loop's turn and before any wait), not per small message: a sender that finds the
 * lane full reads the tail, and with a store per message the two sides traded its cache line for
 * every message, which kept a full lane full (the sender on its slow path, the receiver slowed by
 * the line's transfers). Reads of 4 KiB or more (a budget unit of bytes) give it back at once.
 * -1 when the barrier raised. */
static int
ring_release(RingCore *self, long long tail, long long count, long long total)
{
    self->budget -= count + (total >> self->fair_shift);
    if (total >> self->fair_shift)
        __atomic_store_n(&self->h[self->rx_tail_i], (uint64_t)tail, __ATOMIC_RELEASE);
    self->tail = tail;
    self->read += count;
    return ring_after(self, self->read, count);
}

/* _take() -> bytes | None: the next committed message (a copy), or None. */
PyObject *
ring_take(PyObject *ring, PyObject *Py_UNUSED(ignored))
{
    RingCore *self = (RingCore *)ring;
    long long tail, size;
    PyObject *data;

    if (!ring_may_take(self))
        Py_RETURN_NONE;
    tail = self->tail;
    data = ring_read(self, &tail, &size);
    if (data == NULL || data == Py_None)
        return data;
    if (ring_release(self, tail, 1, size) < 0) {
        Py_DECREF(data);
        return NULL;
    }
    return data;
}

/* _take_many(max_messages) -> list | None: every committed message (copies), at most
 * max_messages (at least 1), or None when none waits. */
static PyObject *
ring_take_many(PyObject *ring, PyObject *limit)
{
    RingCore *self = (RingCore *)ring;
    long long tail, size, total = 0;
    Py_ssize_t most = PyLong_AsSsize_t(limit);
    PyObject *messages, *data;

    if (most < 1) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "max_messages must be at least 1");
        return NULL;
    }
    if (!ring_may_take(self))
        Py_RETURN_NONE;
    /* the peer's newest head: everything committed by now */
    self->head_seen = (long long)__atomic_load_n(&self->h[self->rx_head_i], __ATOMIC_ACQUIRE);
    messages = PyList_New(0);
    if (messages == NULL)
        return NULL;
    tail = self->tail;
    while (tail < self->head_seen && PyList_GET_SIZE(messages) < most) { /* a bad length may step past it */
        data = ring_read(self, &tail, &size);
        if (data == NULL) {
            Py_DECREF(messages);
            return NULL;
        }
        if (data == Py_None) { /* a bad record: hand out what came before it; the slow path sees it */
            Py_DECREF(data);
            break;
        }
        if (PyList_Append(messages, data) < 0) {
            Py_DECREF(data);
            Py_DECREF(messages);
            return NULL;
        }
        Py_DECREF(data);
        total += size;
    }
    if (PyList_GET_SIZE(messages) == 0) {
        Py_DECREF(messages);
        Py_RETURN_NONE;
    }
    if (ring_release(self, tail, PyList_GET_SIZE(messages), total) < 0) {
        Py_DECREF(messages);
        return NULL;
    }
    return messages;
}

/* The steps of send(), receive(), send_many() and receive_many(): the one-call path's outcome
 * (a new reference, NULL on error) ends the operation, True as None, or else (False, None) the
 * slow path's coroutine takes over: ring.slow(arg), or ring.slow() without arg. */
static PyObject *str_send_slow, *str_receive, *str_send_many_slow, *str_receive_many_slow;

static int
ring_step(PyObject *ring, PyObject *outcome, PyObject *slow, PyObject *arg, PyObject **result)
{
    if (outcome == NULL)
        return FAST_ERROR;
    if (outcome != Py_None && outcome != Py_False) {
        if (outcome == Py_True) {
            Py_DECREF(outcome);
            outcome = Py_NewRef(Py_None);
        }
        *result = outcome;
        return FAST_DONE;
    }
    Py_DECREF(outcome);
    *result = arg == NULL ? PyObject_CallMethodNoArgs(ring, slow) : PyObject_CallMethodOneArg(ring, slow, arg);
    return *result == NULL ? FAST_ERROR : FAST_SLOW;
}

static int
ring_send_step(PyObject *ring, PyObject *const *args, Py_ssize_t Py_UNUSED(nargs), PyObject **result)
{
    return ring_step(ring, ring_put(ring, args[0]), str_send_slow, args[0], result);
}

static int
ring_receive_step(PyObject *ring, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs), PyObject **result)
{
    return ring_step(ring, ring_take(ring, NULL), str_receive, NULL, result);
}

static int
ring_send_many_step(PyObject *ring, PyObject *const *args, Py_ssize_t Py_UNUSED(nargs), PyObject **result)
{
    return ring_step(ring, ring_put_many(ring, args[0]), str_send_many_slow, args[0], result);
}

static int
ring_receive_many_step(PyObject *ring, PyObject *const *args, Py_ssize_t Py_UNUSED(nargs), PyObject **result)
{
    return ring_step(ring, ring_take_many(ring, args[0]), str_receive_many_slow, args[0], result);
}

static PyObject *
ring_send(RingCore *self, PyObject *item)
{
    return fast_op_new((PyObject *)self, ring_send_step, "Ring.send", &item, 1);
}

static PyObject *
ring_receive(RingCore *self, PyObject *const *Py_UNUSED(args), Py_ssize_t nargs)
{
    if (fast_no_args("receive", nargs) < 0)
        return NULL;
    return fast_op_new((PyObject *)self, ring_receive_step, "Ring.receive", NULL, 0);
}

static PyObject *
ring_send_many(RingCore *self, PyObject *messages)
{
    return fast_op_new((PyObject *)self, ring_send_many_step, "Ring.send_many", &messages, 1);
}

static PyObject *
ring_receive_many(RingCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const usage = "receive_many(max_messages=1024)";
    PyObject *limit = NULL;
    PyObject *op;

    if (nargs > 1 || (kwnames != NULL && (nargs + PyTuple_GET_SIZE(kwnames) > 1 ||
                                          !PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) ||
                                          PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "max_messages")))) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    if (nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0) == 1)
        limit = Py_NewRef(args[0]);
    else if ((limit = PyLong_FromLong(1024)) == NULL)
        return NULL;
    op = fast_op_new((PyObject *)self, ring_receive_many_step, "Ring.receive_many", &limit, 1);
    Py_DECREF(limit);
    return op;
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

#define RING_SEND_MANY_DOC                                                                                \
    "send_many(messages)\n--\n\nSend several messages with one commit and at most one wake-up per lane-full.\n\n" \
    "A list or tuple of messages that all fit now is written and committed\n"                             \
    "at once, without waiting for anything.\n"                                                             \
    "A cancelled ``send_many`` has sent a prefix of ``messages``, each whole.\n\n"                        \
    "Raises:\n"                                                                                           \
    "    As :meth:`send`; ``FrameTooLarge`` before anything is sent.\n"
#define RING_RECEIVE_MANY_DOC                                                                             \
    "receive_many(max_messages=1024)\n--\n\n"                                                             \
    "Wait for at least one message, then return every waiting one (up to ``max_messages``).\n\n"        \
    "Raises:\n"                                                                                           \
    "    ValueError: ``max_messages`` is below 1.\n"                                                     \
    "    As :meth:`receive` (only when no message at all could be returned).\n"

static PyMethodDef ring_methods[] = {
    {"_bind", (PyCFunction)(void (*)(void))ring_bind, METH_FASTCALL,
     "_bind(memory, tx_offset, rx_offset, capacity, max_size, words, fair_shift, flush_every)"},
    {"_unbind", (PyCFunction)ring_unbind, METH_NOARGS, "Release the mapping (before it is closed)."},
    {"_put", (PyCFunction)ring_put, METH_O, "_put(item) -> bool: send one message now if it fits"},
    {"_take", (PyCFunction)ring_take, METH_NOARGS, "_take() -> bytes | None: the next message if one waits"},
    {"send", (PyCFunction)ring_send, METH_O, RING_SEND_DOC},
    {"receive", (PyCFunction)(void (*)(void))ring_receive, METH_FASTCALL, RING_RECEIVE_DOC},
    {"_put_many", (PyCFunction)ring_put_many, METH_O, "_put_many(messages) -> bool: send them all now if they fit"},
    {"_take_many", (PyCFunction)ring_take_many, METH_O, "_take_many(max_messages) -> list | None: what waits"},
    {"send_many", (PyCFunction)ring_send_many, METH_O, RING_SEND_MANY_DOC},
    {"receive_many", (PyCFunction)(void (*)(void))ring_receive_many, METH_FASTCALL | METH_KEYWORDS, RING_RECEIVE_MANY_DOC},
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
    if ((str_send_slow = PyUnicode_InternFromString("_send_slow")) == NULL ||
        (str_receive = PyUnicode_InternFromString("_receive")) == NULL ||
        (str_send_many_slow = PyUnicode_InternFromString("_send_many_slow")) == NULL ||
        (str_receive_many_slow = PyUnicode_InternFromString("_receive_many_slow")) == NULL)
        return -1;
    if (PyType_Ready(&RingCoreType) < 0 || fast_op_ready() < 0)
        return -1;
    Py_INCREF(&RingCoreType);
    if (PyModule_AddObject(module, "RingCore", (PyObject *)&RingCoreType) < 0) {
        Py_DECREF(&RingCoreType);
        return -1;
    }
    return 0;
}
