/* Part of the optional accelerator aioipc._core._speedups (see _speedups.h). */
#include "_speedups.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

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

/* A receive's first arguments: the descriptor (id), the buffer size, whether the tag is wanted. */
static int
queue_receive_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected, const char *usage, int *fd,
                   Py_ssize_t *size, int *with_tag)
{
    if (nargs != expected) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    if (queue_int_arg(args[0], fd) < 0)
        return -1;
    *size = PyLong_AsSsize_t(args[1]); /* its range: checked by the call */
    if (*size == -1 && PyErr_Occurred())
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

static int
queue_check_size(Py_ssize_t size)
{
    if (size >= 1 && size <= QUEUE_SIZE_MAX)
        return 0;
    PyErr_SetString(PyExc_ValueError, "size must be from 1 to 2**30");
    return -1;
}

static const struct timespec queue_now = {0, 0}; /* a deadline already past: never wait */

PyObject *
queue_posix_receive(int fd, Py_ssize_t size, int with_priority)
{
    char stack[QUEUE_STACK];
    PyObject *data = NULL;
    ssize_t n;
    unsigned int priority = 0;
    int saved;

    if (queue_check_size(size) < 0)
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

/* mq_receive(mqd, size, with_priority) -> bytes | (bytes, priority) | None (empty)
 * size: the queue's mq_msgsize. */
static PyObject *
posix_mq_receive(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t size;
    int fd, with_priority;

    if (queue_receive_args(args, nargs, 3, "mq_receive(mqd, size, with_priority)", &fd, &size, &with_priority) < 0)
        return NULL;
    return queue_posix_receive(fd, size, with_priority);
}

int
queue_posix_send(int fd, PyObject *data, PyObject *priority_arg)
{
    Py_buffer view;
    unsigned long priority;
    int rc, saved;

    priority = PyLong_AsUnsignedLong(priority_arg);
    if (priority == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (priority > UINT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "priority out of range");
        return -1;
    }
    if (PyBytes_CheckExact(data)) {
        rc = mq_timedsend(fd, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data), (unsigned int)priority,
                          &queue_now);
        saved = errno;
    } else {
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
            return -1;
        rc = mq_timedsend(fd, view.buf, (size_t)view.len, (unsigned int)priority, &queue_now);
        saved = errno; /* before the release, which may run code */
        PyBuffer_Release(&view);
    }
    if (rc == 0)
        return 1;
    if (saved == EAGAIN || saved == ETIMEDOUT)
        return 0;
    errno = saved;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

static PyObject *
queue_sent(int rc)
{
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(rc);
}

/* mq_send(mqd, data, priority) -> True, or False when the queue is full. */
static PyObject *
posix_mq_send(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int fd;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "mq_send(mqd, data, priority)");
        return NULL;
    }
    if (queue_int_arg(args[0], &fd) < 0)
        return NULL;
    return queue_sent(queue_posix_send(fd, args[1], args[2]));
}

/* A System V message: the type, then the text (struct msgbuf with a flexible tail). */
struct queue_message {
    long mtype;
    char mtext[];
};

PyObject *
queue_sysv_receive(int id, Py_ssize_t size, int with_type, PyObject *type_arg)
{
    long stack[1 + QUEUE_STACK / sizeof(long)];
    struct queue_message *message = (struct queue_message *)stack;
    PyObject *data = NULL;
    ssize_t n;
    long type;
    int saved;

    if (queue_check_size(size) < 0)
        return NULL;
    type = PyLong_AsLong(type_arg);
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

/* msg_receive(msqid, size, with_type, type) -> bytes | (bytes, mtype) | None (none matched)
 * size: the largest message the caller accepts (msgmax); a larger one stays queued (E2BIG). */
static PyObject *
sysv_msg_receive(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t size;
    int id, with_type;

    if (queue_receive_args(args, nargs, 4, "msg_receive(msqid, size, with_type, type)", &id, &size, &with_type) < 0)
        return NULL;
    return queue_sysv_receive(id, size, with_type, args[3]);
}

int
queue_sysv_send(int id, PyObject *data, PyObject *type_arg, Py_ssize_t limit)
{
    long stack[1 + QUEUE_STACK / sizeof(long)];
    struct queue_message *message = (struct queue_message *)stack;
    Py_buffer view;
    long type;
    int rc, saved;

    type = PyLong_AsLong(type_arg);
    if (type == -1 && PyErr_Occurred())
        return -1;
    if (type < 1 || type > INT_MAX) { /* as sysv_ipc: a C int (the kernel would take any long) */
        PyErr_SetString(PyExc_ValueError, "type out of range");
        return -1;
    }
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view.len > QUEUE_SIZE_MAX || view.len > limit) { /* the kernel's msgmax may be higher: ours holds */
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "message over the queue's limit");
        return -1;
    }
    if (view.len > QUEUE_STACK) {
        message = PyMem_Malloc(sizeof(long) + (size_t)view.len);
        if (message == NULL) {
            PyBuffer_Release(&view);
            PyErr_NoMemory();
            return -1;
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
        return 1;
    if (saved == EAGAIN)
        return 0;
    errno = saved;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* msg_send(msqid, data, type) -> True, or False when the queue is full. */
static PyObject *
sysv_msg_send(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int id;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "msg_send(msqid, data, type)");
        return NULL;
    }
    if (queue_int_arg(args[0], &id) < 0)
        return NULL;
    return queue_sent(queue_sysv_send(id, args[1], args[2], QUEUE_SIZE_MAX));
}

static PyMethodDef queue_methods[] = {
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

int
speedups_add_queues(PyObject *module)
{
    return PyModule_AddFunctions(module, queue_methods);
}
