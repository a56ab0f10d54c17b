/* Part of the optional accelerator aioipc._core._speedups (see _speedups.h). */
#include "_speedups.h"

/* FastOp: a coroutine without a frame, what the compiled fast paths' send() and receive() return
 * (the ring's, the queues', the message sockets'). Its first step (an await, or a task's
 * send(None)) calls the mechanism's C step function: that finishes the operation (its result),
 * raises, or hands over a coroutine of the Python slow path, to which the op passes every later
 * step, throw() and close(). As with a coroutine: nothing happens before the first step, one
 * dropped unstarted warns that it was never awaited, a finished one cannot be awaited again, and
 * it answers what asyncio and anyio ask of one (send, throw, close, cr_running, cr_suspended,
 * cr_frame). */

enum { OP_NEW, OP_INNER, OP_DONE };

typedef struct {
    PyObject_HEAD
    PyObject *owner;             /* the object whose operation this is */
    PyObject *args[FAST_OP_MAX_ARGS];
    Py_ssize_t nargs;
    fast_step step;              /* the fast path */
    const char *name;            /* "Ring.send": for the never-awaited warning */
    PyObject *inner;             /* the slow path's coroutine, while OP_INNER */
    int state;
} FastOp;

static PyTypeObject FastOpType;

PyObject *
core_new(PyTypeObject *type)
{
    static PyObject *no_args;
    if (no_args == NULL && (no_args = PyTuple_New(0)) == NULL)
        return NULL;
    return PyBaseObject_Type.tp_new(type, no_args, NULL);
}

int
fast_no_args(const char *name, Py_ssize_t nargs)
{
    if (nargs == 0)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes no arguments (%zd given)", name, nargs);
    return -1;
}

/* Ops freed for reuse: most live for one step, so the next one takes the memory (and the GC
 * header) the last one left, without the allocator or a GC generation count. */
#define FAST_OP_FREE_MAX 16
static FastOp *free_ops[FAST_OP_FREE_MAX];
static int free_count;

PyObject *
fast_op_new(PyObject *owner, fast_step step, const char *name, PyObject *const *args, Py_ssize_t nargs)
{
    FastOp *op;
    Py_ssize_t i;

    if (nargs > FAST_OP_MAX_ARGS) {
        PyErr_SetString(PyExc_SystemError, "fast_op_new: too many arguments");
        return NULL;
    }
    if (free_count > 0) {
        op = free_ops[--free_count];
        PyObject_Init((PyObject *)op, &FastOpType);
    }
    else if ((op = PyObject_GC_New(FastOp, &FastOpType)) == NULL)
        return NULL;
    op->owner = Py_NewRef(owner);
    for (i = 0; i < FAST_OP_MAX_ARGS; i++)
        op->args[i] = i < nargs ? Py_NewRef(args[i]) : NULL;
    op->nargs = nargs;
    op->step = step;
    op->name = name;
    op->inner = NULL;
    op->state = OP_NEW;
    PyObject_GC_Track(op);
    return (PyObject *)op;
}

static void
fast_op_clear_args(FastOp *op)
{
    Py_ssize_t i;
    for (i = 0; i < FAST_OP_MAX_ARGS; i++)
        Py_CLEAR(op->args[i]);
}

static int
fast_op_traverse(FastOp *op, visitproc visit, void *arg)
{
    Py_ssize_t i;
    Py_VISIT(op->owner);
    for (i = 0; i < FAST_OP_MAX_ARGS; i++)
        Py_VISIT(op->args[i]);
    Py_VISIT(op->inner);
    return 0;
}

static int
fast_op_clear(FastOp *op)
{
    Py_CLEAR(op->owner);
    fast_op_clear_args(op);
    Py_CLEAR(op->inner);
    return 0;
}

static void
fast_op_dealloc(FastOp *op)
{
    if (op->state == OP_NEW) {
        /* alive while it warns: a warning turned into an error reports it as unraisable, and the
         * hook takes a reference (as CPython keeps a coroutine alive for its finalizer) */
        PyObject *type, *value, *traceback;
        op->state = OP_DONE;
        Py_SET_REFCNT(op, 1);
        PyErr_Fetch(&type, &value, &traceback);
        if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "%s() was never awaited", op->name) < 0)
            PyErr_WriteUnraisable((PyObject *)op);
        PyErr_Restore(type, value, traceback);
        Py_SET_REFCNT(op, Py_REFCNT(op) - 1);
        if (Py_REFCNT(op) > 0)
            return; /* kept by what it warned to */
    }
    PyObject_GC_UnTrack(op);
    fast_op_clear(op);
    if (free_count < FAST_OP_FREE_MAX)
        free_ops[free_count++] = op;
    else
        PyObject_GC_Del(op);
}

/* The operation's result, as a finished coroutine gives it: StopIteration(value). Steals value. */
static PyObject *
fast_op_return(PyObject *value)
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

/* One step (am_send, what await and PyIter_Send call): PYGEN_NEXT with *result the value to yield,
 * PYGEN_RETURN with *result the operation's value (no StopIteration to make and catch), or
 * PYGEN_ERROR with an exception set. */
static PySendResult
fast_op_am_send(FastOp *op, PyObject *value, PyObject **result)
{
    PySendResult status;

    *result = NULL;
    if (op->state == OP_INNER) {
        status = PyIter_Send(op->inner, value, result);
        if (status != PYGEN_NEXT) {
            op->state = OP_DONE;
            Py_CLEAR(op->inner);
        }
        return status;
    }
    if (op->state == OP_DONE) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited operation");
        return PYGEN_ERROR;
    }
    if (value != Py_None) {
        PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started operation");
        return PYGEN_ERROR;
    }
    op->state = OP_DONE;
    status = PYGEN_ERROR;
    switch (op->step(op->owner, op->args, op->nargs, result)) {
    case FAST_DONE:
        status = PYGEN_RETURN;
        break;
    case FAST_SLOW:
        op->inner = *result;
        op->state = OP_INNER;
        *result = NULL;
        status = PYGEN_NEXT; /* stepped below, once the arguments are let go */
        break;
    default:
        *result = NULL;
    }
    fast_op_clear_args(op);
    return status == PYGEN_NEXT ? fast_op_am_send(op, Py_None, result) : status;
}

static PyObject *
fast_op_step(FastOp *op, PyObject *value)
{
    PyObject *result;
    switch (fast_op_am_send(op, value, &result)) {
    case PYGEN_NEXT:
        return result;
    case PYGEN_RETURN:
        return fast_op_return(result);
    default:
        return NULL;
    }
}

static PyObject *
fast_op_iternext(FastOp *op)
{
    PyObject *result;
    switch (fast_op_am_send(op, Py_None, &result)) {
    case PYGEN_NEXT:
        return result;
    case PYGEN_RETURN:
        if (result == Py_None) { /* a plain end: what tp_iternext callers expect */
            Py_DECREF(result);
            return NULL;
        }
        return fast_op_return(result);
    default:
        return NULL;
    }
}

static PyObject *
fast_op_send(FastOp *op, PyObject *value)
{
    return fast_op_step(op, value);
}

static PyObject *
fast_op_throw(FastOp *op, PyObject *const *args, Py_ssize_t nargs)
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
    fast_op_clear_args(op);
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
fast_op_close(FastOp *op, PyObject *Py_UNUSED(ignored))
{
    PyObject *result;
    if (op->state != OP_INNER) {
        op->state = OP_DONE;
        fast_op_clear_args(op);
        Py_RETURN_NONE;
    }
    result = PyObject_CallMethod(op->inner, "close", NULL);
    op->state = OP_DONE;
    Py_CLEAR(op->inner);
    return result;
}

static PyObject *
fast_op_await(FastOp *op)
{
    return Py_NewRef(op);
}

static PyObject *
fast_op_inner_attribute(FastOp *op, const char *name)
{
    if (op->state == OP_INNER)
        return PyObject_GetAttrString(op->inner, name);
    Py_RETURN_FALSE;
}

static PyObject *
fast_op_running(FastOp *op, void *Py_UNUSED(closure))
{
    return fast_op_inner_attribute(op, "cr_running");
}

static PyObject *
fast_op_suspended(FastOp *op, void *Py_UNUSED(closure))
{
    return fast_op_inner_attribute(op, "cr_suspended");
}

static PyObject *
fast_op_frame(FastOp *op, void *Py_UNUSED(closure))
{
    if (op->state == OP_INNER)
        return PyObject_GetAttrString(op->inner, "cr_frame");
    if (op->state == OP_DONE)
        Py_RETURN_NONE;
    return Py_NewRef(op); /* not None: created, not started (it has no frame of its own) */
}

static PyMethodDef fast_op_methods[] = {
    {"send", (PyCFunction)fast_op_send, METH_O, "send(value): one step, as a coroutine's"},
    {"throw", (PyCFunction)(void (*)(void))fast_op_throw, METH_FASTCALL, "throw(exception), as a coroutine's"},
    {"close", (PyCFunction)fast_op_close, METH_NOARGS, "close(), as a coroutine's"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef fast_op_getset[] = {
    {"cr_running", (getter)fast_op_running, NULL, NULL, NULL},
    {"cr_suspended", (getter)fast_op_suspended, NULL, NULL, NULL},
    {"cr_frame", (getter)fast_op_frame, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyAsyncMethods fast_op_async = {
    .am_await = (unaryfunc)fast_op_await,
    .am_send = (sendfunc)fast_op_am_send,
};

static PyTypeObject FastOpType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aioipc._core._speedups.FastOp",
    .tp_doc = "A send() or receive() of a compiled fast path: a coroutine whose fast path needs no frame.",
    .tp_basicsize = sizeof(FastOp),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)fast_op_dealloc,
    .tp_traverse = (traverseproc)fast_op_traverse,
    .tp_clear = (inquiry)fast_op_clear,
    .tp_as_async = &fast_op_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)fast_op_iternext,
    .tp_methods = fast_op_methods,
    .tp_getset = fast_op_getset,
};

int
fast_op_ready(void)
{
    return PyType_Ready(&FastOpType);
}
