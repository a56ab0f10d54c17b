/* What the accelerator's source files share: the one module aioipc._core._speedups is built
 * from _speedups.c (message sockets, the frame parser, the module), _ring.c (the shared-memory
 * ring's fast paths) and _mq.c (non-blocking message queue calls). */
#ifndef AIOIPC_SPEEDUPS_H
#define AIOIPC_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Each adds its functions and types to the module; -1 with an exception set on failure. */
int speedups_add_ring(PyObject *module);
int speedups_add_queues(PyObject *module);

#endif
