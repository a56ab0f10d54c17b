/* Part of the optional accelerator aioipc._core._speedups (see _speedups.h). */
#include "_speedups.h"

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
    PyObject *ring; /* the RingCore */
    PyObject *item;  /* the message to send; NULL for a receive */
    PyObject *inner; /* the slow path's coroutine, while OP_INNER */
    int state;
} RingOp;

static PyTypeObject RingOpType;

PyObject *
ring_op_new(PyObject *ring, PyObject *item)
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
        op->inner = PyObject_CallMethod(op->ring, "_send_slow", "O", op->item);
    }
    else {
        result = ring_take(op->ring, NULL);
        if (result == NULL)
            return NULL;
        if (result != Py_None)
            return ring_op_return(result);
        Py_DECREF(result);
        op->inner = PyObject_CallMethod(op->ring, "_receive", NULL);
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

int
ring_op_ready(void)
{
    return PyType_Ready(&RingOpType);
}
