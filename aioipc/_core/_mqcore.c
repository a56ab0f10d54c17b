/* Part of the optional accelerator aioipc._core._speedups (see _speedups.h). */
#include "_speedups.h"

#include <limits.h>
#include <stddef.h>
#include <structmember.h>

/* ---- message queues: the compiled send() and receive() of aioipc.mq and aioipc.sysv ---------------
 *
 * PosixQueueCore and SysVQueueCore, the bases of the two MessageQueue classes, are one struct and one
 * pair of steps: the fairness budgets and the queue's size limit, members by the names the Python
 * slow paths read and write, and send() / receive() that return a FastOp. Its step spends one unit
 * of the direction's budget on one call that never blocks (_mq.c), and finishes there when that
 * sent (received) a message. Anything else goes to the slow path's coroutine: a budget spent (it
 * is also 0 while a slow path runs, a message is kept, or the direction is closed or not opened),
 * a queue found full (empty), or a call that refused its arguments, which the slow path checks and
 * reports. The slow paths: _send(item, tag, tried), _receive(tried, whole) (POSIX) and
 * _receive(type, tried, whole) (System V); tried: the queue was just found full (empty); whole:
 * receive_with_priority / receive_with_type. */

enum { QUEUE_POSIX, QUEUE_SYSV };

typedef struct {
    PyObject_HEAD
    long long receive_budget, send_budget;
    Py_ssize_t max_message_size;
    int id;   /* the mqd or msqid, from _bind; -1 before */
    int kind; /* QUEUE_POSIX or QUEUE_SYSV, from the type */
} QueueCore;

static PyTypeObject PosixQueueCoreType;

static PyObject *queue_zero, *queue_one;               /* the default tags */
static PyObject *queue_send_name, *queue_receive_name; /* "_send", "_receive", interned (the method cache's key) */

static PyObject *
queue_core_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    QueueCore *self = (QueueCore *)core_new(type);
    if (self != NULL) {
        self->id = -1; /* budgets 0: every operation takes the slow path until bound */
        self->kind = PyType_IsSubtype(type, &PosixQueueCoreType) ? QUEUE_POSIX : QUEUE_SYSV;
    }
    return (PyObject *)self;
}

static void
queue_core_dealloc(QueueCore *self)
{
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* _bind(id): the queue's mqd (POSIX) or msqid (System V). */
static PyObject *
queue_core_bind(QueueCore *self, PyObject *arg)
{
    long id = PyLong_AsLong(arg);
    if (id == -1 && PyErr_Occurred())
        return NULL;
    if (id < 0 || id > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "a queue descriptor or id is a C int, at least 0");
        return NULL;
    }
    self->id = (int)id;
    Py_RETURN_NONE;
}

/* After a call refused (nothing was sent or taken): 1 when the slow path is to check and report it
 * (the exception is cleared), 0 for an error of another kind (kept). */
static int
queue_refused(void)
{
    if (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_ValueError) ||
        PyErr_ExceptionMatches(PyExc_OverflowError) || PyErr_ExceptionMatches(PyExc_BufferError) ||
        PyErr_ExceptionMatches(PyExc_OSError)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

/* The slow path's coroutine: call[1].<name>(*call[2:nargs + 1]); call[0] is scratch space for the call. */
static int
queue_slow(PyObject *name, PyObject **call, size_t nargs, PyObject **result)
{
    *result = PyObject_VectorcallMethod(name, call + 1, nargs | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    return *result == NULL ? FAST_ERROR : FAST_SLOW;
}

/* The steps of send() and receive(). args: (item, tag) */
static int
queue_send_step(PyObject *owner, PyObject *const *args, Py_ssize_t Py_UNUSED(nargs), PyObject **result)
{
    QueueCore *self = (QueueCore *)owner;
    int kind = self->kind;
    PyObject *tried = Py_False;
    int sent;

    if (self->send_budget > 0) {
        self->send_budget--;
        sent = kind == QUEUE_POSIX ? queue_posix_send(self->id, args[0], args[1])
                                   : queue_sysv_send(self->id, args[0], args[1], self->max_message_size);
        if (sent > 0) {
            *result = Py_NewRef(Py_None);
            return FAST_DONE;
        }
        if (sent == 0)
            tried = Py_True;
        else if (!queue_refused())
            return FAST_ERROR;
    }
    PyObject *call[5] = {NULL, owner, args[0], args[1], tried};
    return queue_slow(queue_send_name, call, 4, result);
}

/* args: POSIX (whole), System V (type, whole) */
static int
queue_receive_step(PyObject *owner, PyObject *const *args, Py_ssize_t Py_UNUSED(nargs), PyObject **result)
{
    QueueCore *self = (QueueCore *)owner;
    int kind = self->kind;
    PyObject *whole = args[kind == QUEUE_POSIX ? 0 : 1], *tried = Py_False, *message;

    if (self->receive_budget > 0) {
        self->receive_budget--;
        message = kind == QUEUE_POSIX
                      ? queue_posix_receive(self->id, self->max_message_size, whole == Py_True)
                      : queue_sysv_receive(self->id, self->max_message_size, whole == Py_True, args[0]);
        if (message == NULL) {
            if (!queue_refused())
                return FAST_ERROR;
        }
        else if (message != Py_None) {
            *result = message;
            return FAST_DONE;
        }
        else {
            Py_DECREF(message);
            tried = Py_True;
        }
    }
    if (kind == QUEUE_POSIX) {
        PyObject *call[4] = {NULL, owner, tried, whole};
        return queue_slow(queue_receive_name, call, 3, result);
    }
    PyObject *call[5] = {NULL, owner, args[0], tried, whole};
    return queue_slow(queue_receive_name, call, 4, result);
}

/* The arguments (item, tag=default) (required 1) or (tag=default) (required 0), the tag also by the
 * keyword name: into out[0..required] (borrowed references). */
static int
queue_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, Py_ssize_t required, const char *name,
           PyObject *default_tag, const char *usage, PyObject **out)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);

    if (nargs < required || nargs + nkw > required + 1 ||
        (nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), name) != 0)) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    if (required)
        out[0] = args[0];
    out[required] = nargs + nkw > required ? args[required] : default_tag;
    return 0;
}

/* send(item, priority=0) (POSIX), send(item, type=1) (System V) */
static PyObject *
queue_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int posix = ((QueueCore *)self)->kind == QUEUE_POSIX;
    PyObject *call[2];
    if (queue_args(args, nargs, kwnames, 1, posix ? "priority" : "type", posix ? queue_zero : queue_one,
                   posix ? "send(item, priority=0)" : "send(item, type=1)", call) < 0)
        return NULL;
    return fast_op_new(self, queue_send_step, "MessageQueue.send", call, 2);
}

static PyObject *
posix_receive(PyObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t nargs)
{
    PyObject *whole = Py_False;
    if (fast_no_args("receive", nargs) < 0)
        return NULL;
    return fast_op_new(self, queue_receive_step, "MessageQueue.receive", &whole, 1);
}

static PyObject *
posix_receive_with_priority(PyObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t nargs)
{
    PyObject *whole = Py_True;
    if (fast_no_args("receive_with_priority", nargs) < 0)
        return NULL;
    return fast_op_new(self, queue_receive_step, "MessageQueue.receive_with_priority", &whole, 1);
}

static PyObject *
sysv_receive_op(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject *whole,
                const char *name)
{
    PyObject *call[2];
    if (queue_args(args, nargs, kwnames, 0, "type", queue_zero, "receive(type=0)", call) < 0)
        return NULL;
    call[1] = whole;
    return fast_op_new(self, queue_receive_step, name, call, 2);
}

static PyObject *
sysv_receive(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return sysv_receive_op(self, args, nargs, kwnames, Py_False, "MessageQueue.receive");
}

static PyObject *
sysv_receive_with_type(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return sysv_receive_op(self, args, nargs, kwnames, Py_True, "MessageQueue.receive_with_type");
}

/* The docstrings: the same as the pure-Python twins' in aioipc._core.speedups. */
#define POSIX_SEND_DOC                                                                                        \
    "send(item, priority=0)\n--\n\nSend one message; wait while the queue is full.\n\n"                        \
    "Raises:\n"                                                                                               \
    "    FrameTooLarge: the message is larger than :attr:`max_message_size`.\n"                              \
    "    ValueError: ``priority`` is not from 0 to ``PRIORITY_MAX`` (32767).\n"                               \
    "    TypeError: ``item`` is not bytes-like.\n"                                                            \
    "    PermissionError: the queue was opened with ``write=False``.\n"
#define POSIX_RECEIVE_WITH_PRIORITY_DOC                                                                       \
    "receive_with_priority()\n--\n\n"                                                                         \
    "Receive the oldest message of the highest priority; return ``(data, priority)``.\n\n"                    \
    "Raises:\n"                                                                                               \
    "    PermissionError: the queue was opened with ``read=False``.\n"
#define SYSV_SEND_DOC                                                                                         \
    "send(item, type=1)\n--\n\nSend one message of ``type`` (1 to 2**31 - 1); wait while the queue is full.\n\n" \
    "Raises:\n"                                                                                               \
    "    FrameTooLarge: the message is larger than :attr:`max_message_size`.\n"                              \
    "    ValueError: ``type`` out of range.\n"                                                                \
    "    TypeError: ``item`` is not bytes-like.\n"
#define SYSV_RECEIVE_WITH_TYPE_DOC                                                                            \
    "receive_with_type(type=0)\n--\n\nReceive the next message matching ``type``; return ``(data, mtype)``.\n\n" \
    "Raises:\n"                                                                                               \
    "    ValueError: ``type`` out of range.\n"                                                                \
    "    anyio.BrokenResourceError: the queue was removed.\n"

#define QUEUE_BIND_DOC "_bind(id): the queue's descriptor (POSIX) or id (System V), for the fast paths"

static PyMethodDef posix_methods[] = {
    {"_bind", (PyCFunction)queue_core_bind, METH_O, QUEUE_BIND_DOC},
    {"send", (PyCFunction)(void (*)(void))queue_send, METH_FASTCALL | METH_KEYWORDS, POSIX_SEND_DOC},
    {"receive", (PyCFunction)(void (*)(void))posix_receive, METH_FASTCALL,
     "receive()\n--\n\nReceive the next message's data (see :meth:`receive_with_priority`)."},
    {"receive_with_priority", (PyCFunction)(void (*)(void))posix_receive_with_priority, METH_FASTCALL, POSIX_RECEIVE_WITH_PRIORITY_DOC},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef sysv_methods[] = {
    {"_bind", (PyCFunction)queue_core_bind, METH_O, QUEUE_BIND_DOC},
    {"send", (PyCFunction)(void (*)(void))queue_send, METH_FASTCALL | METH_KEYWORDS, SYSV_SEND_DOC},
    {"receive", (PyCFunction)(void (*)(void))sysv_receive, METH_FASTCALL | METH_KEYWORDS,
     "receive(type=0)\n--\n\nReceive the data of the next message matching ``type`` (see "
     ":meth:`receive_with_type`)."},
    {"receive_with_type", (PyCFunction)(void (*)(void))sysv_receive_with_type, METH_FASTCALL | METH_KEYWORDS,
     SYSV_RECEIVE_WITH_TYPE_DOC},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef queue_core_members[] = {
    {"max_message_size", T_PYSSIZET, offsetof(QueueCore, max_message_size), 0,
     "the largest message the queue takes, in bytes"},
    {"_receive_budget", T_LONGLONG, offsetof(QueueCore, receive_budget), 0, NULL},
    {"_send_budget", T_LONGLONG, offsetof(QueueCore, send_budget), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject PosixQueueCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aioipc._core._speedups.PosixQueueCore",
    .tp_doc = "A POSIX queue's fairness budgets and size limit, and its compiled send() and receive().",
    .tp_basicsize = sizeof(QueueCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = queue_core_new,
    .tp_dealloc = (destructor)queue_core_dealloc,
    .tp_methods = posix_methods,
    .tp_members = queue_core_members,
};

static PyTypeObject SysVQueueCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aioipc._core._speedups.SysVQueueCore",
    .tp_doc = "A System V queue's fairness budgets and size limit, and its compiled send() and receive().",
    .tp_basicsize = sizeof(QueueCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = queue_core_new,
    .tp_dealloc = (destructor)queue_core_dealloc,
    .tp_methods = sysv_methods,
    .tp_members = queue_core_members,
};

int
speedups_add_queue_cores(PyObject *module)
{
    if ((queue_zero == NULL && (queue_zero = PyLong_FromLong(0)) == NULL) ||
        (queue_one == NULL && (queue_one = PyLong_FromLong(1)) == NULL) ||
        (queue_send_name == NULL && (queue_send_name = PyUnicode_InternFromString("_send")) == NULL) ||
        (queue_receive_name == NULL && (queue_receive_name = PyUnicode_InternFromString("_receive")) == NULL))
        return -1;
    if (PyType_Ready(&PosixQueueCoreType) < 0 || PyType_Ready(&SysVQueueCoreType) < 0 || fast_op_ready() < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "PosixQueueCore", (PyObject *)&PosixQueueCoreType) < 0 ||
        PyModule_AddObjectRef(module, "SysVQueueCore", (PyObject *)&SysVQueueCoreType) < 0)
        return -1;
    return 0;
}
