/* What the accelerator's source files share: the one module aioipc._core._speedups is built
 * from _speedups.c (message sockets, the frame parser, the module), _ring.c and _ringop.c (the
 * shared-memory ring's fast paths) and _mq.c (non-blocking message queue calls). */
#ifndef AIOIPC_SPEEDUPS_H
#define AIOIPC_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Each adds its functions and types to the module; -1 with an exception set on failure. */
int speedups_add_ring(PyObject *module);
int speedups_add_queues(PyObject *module);

/* _ring.c: a RingCore's one-call fast paths, the first step of its RingOps. */
PyObject *ring_put(PyObject *ring, PyObject *item);
PyObject *ring_take(PyObject *ring, PyObject *ignored);
/* _ringop.c: what RingCore.send() / receive() return, a coroutine without a frame. */
PyObject *ring_op_new(PyObject *ring, PyObject *item);
int ring_op_ready(void);

#endif
