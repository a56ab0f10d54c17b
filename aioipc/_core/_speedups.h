/* What the accelerator's source files share: the one module aioipc._core._speedups is built
 * from _speedups.c (message sockets, the module), _fastop.c (the frameless
 * coroutine of every compiled send() and receive()), _ring.c (the shared-memory ring's fast paths),
 * _mq.c (non-blocking message queue calls), _mqcore.c (the queues' compiled send() and receive()),
 * _message.c (the message sockets' fast paths), _framer.c (the length-prefixed framer) and
 * _fdsend.c (a send stream's small sends, the framed send()). */
#ifndef AIOIPC_SPEEDUPS_H
#define AIOIPC_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Each adds its functions and types to the module; -1 with an exception set on failure. */
int speedups_add_ring(PyObject *module);
int speedups_add_queues(PyObject *module);
int speedups_add_queue_cores(PyObject *module);

/* _fastop.c: FastOp, what a compiled send() / receive() returns, a coroutine without a frame. Its
 * first step calls step(owner, args, nargs, &result), which returns FAST_DONE with *result the
 * operation's value (a new reference), FAST_SLOW with *result a new reference to the slow path's
 * coroutine (the op runs it from then on), or FAST_ERROR with an exception set. */
enum { FAST_ERROR = -1, FAST_DONE = 0, FAST_SLOW = 1 };
#define FAST_OP_MAX_ARGS 3
typedef int (*fast_step)(PyObject *owner, PyObject *const *args, Py_ssize_t nargs, PyObject **result);
/* name ("Ring.send") is a static string, for the never-awaited warning */
PyObject *fast_op_new(PyObject *owner, fast_step step, const char *name, PyObject *const *args, Py_ssize_t nargs);
int fast_op_ready(void);
/* For a receive() taking no arguments, declared METH_FASTCALL rather than METH_NOARGS: the
 * interpreter specialises a call of a bound builtin FASTCALL method (a receive passed around as
 * a callable), not of a NOARGS one, which costs ~60 instructions more a call. 0, or -1 with a
 * TypeError when arguments were given. */
int fast_no_args(const char *name, Py_ssize_t nargs);
/* A new instance of a C base type whose Python subclass has slow paths: object's __new__, not
 * tp_alloc alone, as on Python 3.11 it also lays out the subclass's instance attributes inline,
 * which the interpreter's attribute caches need (else every self.x of the slow paths is a dict
 * lookup). Its C fields are zero. */
PyObject *core_new(PyTypeObject *type);

/* _mq.c: one call on a POSIX (fd: an mqd) or System V (id: a msqid) queue that never blocks. A receive
 * returns the data, (data, tag) with with_tag, or None when nothing waits (a new reference), NULL with
 * an exception; size is the queue's limit (1 to 2**30). A send returns 1 (sent), 0 (full) or -1 with an
 * exception; priority / type are Python ints, checked here. */
PyObject *queue_posix_receive(int fd, Py_ssize_t size, int with_priority);
int queue_posix_send(int fd, PyObject *data, PyObject *priority);
PyObject *queue_sysv_receive(int id, Py_ssize_t size, int with_type, PyObject *type);
int queue_sysv_send(int id, PyObject *data, PyObject *type, Py_ssize_t limit);

/* _message.c: MessageCore, the base of the message sockets (seqpacket, datagram) */
int speedups_add_message(PyObject *module);

/* _framer.c: FramerCore (the base of the length-prefixed Framer: its state and per-read methods)
 * and recv_fill / try_recv_fill (one read of a stream socket or pipe into a framer). */
int speedups_add_framer(PyObject *module);

/* _fdsend.c: SendCore (the base of FdSendStream: its state and try_send_parts) and frame_send
 * (a framed stream's send(), a FastOp). */
int speedups_add_send(PyObject *module);

#endif
