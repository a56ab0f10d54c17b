/* Part of the optional accelerator aioipc._core._speedups (see _speedups.h). */
#include "_speedups.h"

#include <stddef.h>
#include <structmember.h>

/* ---- message sockets: the one-message fast paths of aioipc.sockets.MessageSocket -------------
 *
 * MessageCore is the base type of MessageSocket (seqpacket and datagram streams): it holds the
 * state the fast paths read and write, as members named as the Python attributes the slow paths
 * use (the received batch and its next index, the fairness budget, the pending batch, the flush
 * handle, the busy flags), and its send() and receive() return a FastOp:
 *
 * - send(item): in the burst state (a flush is scheduled for the end of this loop iteration) a
 *   small bytes message joins the pending batch, as _message's Rule 3 says; anything else is the
 *   slow path's: self._send_message(item).
 * - receive(): the next message of the batch received earlier, when it is plain bytes (no
 *   syscall); anything else is self._receive_slow()'s.
 *
 * Neither raises: every error, and every wait, is the slow path's. The limits are messagecore.py's
 * SEND_MAX and HIGH_WATER, handed over by message_core_setup (speedups.py calls it at import). */

static Py_ssize_t msg_send_max = 0, msg_high_water = 0; /* until set up, every send is the slow path's */

typedef struct {
    PyObject_HEAD
    PyObject *items;        /* received, not yet handed out: list of bytes | int | None | tuple */
    PyObject *creds;        /* their senders' credentials: list of bytes | None */
    PyObject *addrs;        /* their senders' addresses: list, or None */
    PyObject *last_creds;   /* the credentials of the last message handed out */
    PyObject *last_sender;  /* the address of the last message handed out */
    PyObject *pending;      /* list of bytes: the burst's messages, sent at its end */
    PyObject *flush_handle; /* the end of the burst, scheduled (asyncio.Handle), or None */
    Py_ssize_t next, pending_bytes, batch_largest;
    long long budget;
    int fair_shift;         /* a message costs 1 + (its size >> fair_shift) of the budget */
    char sending, receiving;
} MessageCore;

static PyObject *str_send_message, *str_receive_slow;

static PyObject *
message_core_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    MessageCore *self = (MessageCore *)core_new(type);
    if (self == NULL)
        return NULL;
    self->items = PyList_New(0);
    self->creds = PyList_New(0);
    self->pending = PyList_New(0);
    if (self->items == NULL || self->creds == NULL || self->pending == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->addrs = Py_NewRef(Py_None);
    self->last_creds = Py_NewRef(Py_None);
    self->last_sender = Py_NewRef(Py_None);
    self->flush_handle = Py_NewRef(Py_None);
    self->batch_largest = -1; /* no batched sends until the subclass says how large */
    self->fair_shift = 62;
    return (PyObject *)self;
}

static int
message_core_traverse(MessageCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->items);
    Py_VISIT(self->creds);
    Py_VISIT(self->addrs);
    Py_VISIT(self->last_creds);
    Py_VISIT(self->last_sender);
    Py_VISIT(self->pending);
    Py_VISIT(self->flush_handle);
    return 0;
}

static int
message_core_clear(MessageCore *self)
{
    Py_CLEAR(self->items);
    Py_CLEAR(self->creds);
    Py_CLEAR(self->addrs);
    Py_CLEAR(self->last_creds);
    Py_CLEAR(self->last_sender);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->flush_handle);
    return 0;
}

static void
message_core_dealloc(MessageCore *self)
{
    PyObject_GC_UnTrack(self);
    message_core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* send(item): join the pending batch in the burst state, else the slow path. */
static int
message_send_step(PyObject *owner, PyObject *const *args, Py_ssize_t Py_UNUSED(nargs), PyObject **result)
{
    MessageCore *self = (MessageCore *)owner;
    PyObject *item = args[0], *pending = self->pending;
    Py_ssize_t size;

    if (self->flush_handle != NULL && self->flush_handle != Py_None && PyBytes_CheckExact(item) &&
        (size = PyBytes_GET_SIZE(item)) <= self->batch_largest && self->budget > 0 && !self->sending &&
        pending != NULL && PyList_CheckExact(pending) && PyList_GET_SIZE(pending) < msg_send_max &&
        self->pending_bytes < msg_high_water) {
        if (PyList_Append(pending, item) < 0)
            return FAST_ERROR;
        self->budget -= 1;
        self->pending_bytes += size;
        *result = Py_NewRef(Py_None);
        return FAST_DONE;
    }
    *result = PyObject_CallMethodOneArg(owner, str_send_message, item);
    return *result == NULL ? FAST_ERROR : FAST_SLOW;
}

/* The batch is spent: hold no messages (empty lists, no addresses). 0, or -1 with an error set. */
static int
message_drop_batch(MessageCore *self)
{
    PyObject *items = PyList_New(0), *creds = PyList_New(0);
    if (items == NULL || creds == NULL) {
        Py_XDECREF(items);
        Py_XDECREF(creds);
        return -1;
    }
    Py_XSETREF(self->items, items);
    Py_XSETREF(self->creds, creds);
    Py_XSETREF(self->addrs, Py_NewRef(Py_None));
    self->next = 0;
    return 0;
}

/* receive(): the next message of the batch received earlier when it is plain bytes, else the slow path. */
static int
message_receive_step(PyObject *owner, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs),
                     PyObject **result)
{
    MessageCore *self = (MessageCore *)owner;
    PyObject *items = self->items, *creds = self->creds, *addrs = self->addrs, *item;
    Py_ssize_t i = self->next;

    if (!self->receiving && items != NULL && PyList_CheckExact(items) && i >= 0 && i < PyList_GET_SIZE(items) &&
        PyBytes_CheckExact(item = PyList_GET_ITEM(items, i)) && creds != NULL && PyList_CheckExact(creds) &&
        i < PyList_GET_SIZE(creds) && addrs != NULL &&
        (addrs == Py_None || (PyList_CheckExact(addrs) && i < PyList_GET_SIZE(addrs)))) {
        PyObject *cred = PyList_GET_ITEM(creds, i);
        if (cred != Py_None)
            Py_XSETREF(self->last_creds, Py_NewRef(cred));
        if (addrs != Py_None)
            Py_XSETREF(self->last_sender, Py_NewRef(PyList_GET_ITEM(addrs, i)));
        if (self->fair_shift >= 0 && self->fair_shift < 63)
            self->budget -= PyBytes_GET_SIZE(item) >> self->fair_shift;
        *result = Py_NewRef(item);
        if (i + 1 < PyList_GET_SIZE(items))
            self->next = i + 1;
        else if (message_drop_batch(self) < 0) {
            Py_CLEAR(*result);
            return FAST_ERROR;
        }
        return FAST_DONE;
    }
    *result = PyObject_CallMethodNoArgs(owner, str_receive_slow);
    return *result == NULL ? FAST_ERROR : FAST_SLOW;
}

static PyObject *
message_send(PyObject *self, PyObject *item)
{
    return fast_op_new(self, message_send_step, "MessageSocket.send", &item, 1);
}

static PyObject *
message_receive(PyObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t nargs)
{
    if (fast_no_args("receive", nargs) < 0)
        return NULL;
    return fast_op_new(self, message_receive_step, "MessageSocket.receive", NULL, 0);
}

#define MESSAGE_SEND_DOC                                                                                  \
    "send(item)\n--\n\n"                                                                                  \
    "Send one message; it goes out at once, or with the others sent in this loop iteration.\n\n"          \
    "Waits while the peer's queue is full and enough is pending.\n\n"                                     \
    "Raises:\n"                                                                                           \
    "    FrameTooLarge: over ``max_size``; nothing was sent.\n"                                          \
    "    OSError: ``EMSGSIZE`` when the kernel's limit (the socket's\n"                                   \
    "        ``SO_SNDBUF``) is lower than ``max_size``.\n"                                                \
    "    anyio.BrokenResourceError: the peer is gone (now, or for a message sent earlier).\n"            \
    "    anyio.BusyResourceError: another task is sending.\n"
#define MESSAGE_RECEIVE_DOC                                                                               \
    "receive()\n--\n\nThe next whole message.\n\n"                                                        \
    "Raises:\n"                                                                                           \
    "    FrameTooLarge: the message was over ``max_size``; it was discarded\n"                            \
    "        and the next ``receive()`` goes on with the following one.\n"                                \
    "    anyio.EndOfStream: the peer closed (seqpacket only).\n"                                         \
    "    anyio.BrokenResourceError: the peer vanished with data unread (``ECONNRESET``).\n"              \
    "    anyio.BusyResourceError: another task is receiving.\n"

static PyMethodDef message_core_methods[] = {
    {"send", (PyCFunction)message_send, METH_O, MESSAGE_SEND_DOC},
    {"receive", (PyCFunction)(void (*)(void))message_receive, METH_FASTCALL, MESSAGE_RECEIVE_DOC},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef message_core_members[] = {
    {"_items", T_OBJECT, offsetof(MessageCore, items), 0, NULL},
    {"_creds", T_OBJECT, offsetof(MessageCore, creds), 0, NULL},
    {"_addrs", T_OBJECT, offsetof(MessageCore, addrs), 0, NULL},
    {"_last_creds", T_OBJECT, offsetof(MessageCore, last_creds), 0, NULL},
    {"_last_sender", T_OBJECT, offsetof(MessageCore, last_sender), 0, NULL},
    {"_pending", T_OBJECT, offsetof(MessageCore, pending), 0, NULL},
    {"_flush_handle", T_OBJECT, offsetof(MessageCore, flush_handle), 0, NULL},
    {"_next", T_PYSSIZET, offsetof(MessageCore, next), 0, NULL},
    {"_pending_bytes", T_PYSSIZET, offsetof(MessageCore, pending_bytes), 0, NULL},
    {"_batch_largest", T_PYSSIZET, offsetof(MessageCore, batch_largest), 0, NULL},
    {"_budget", T_LONGLONG, offsetof(MessageCore, budget), 0, NULL},
    {"_fair_shift", T_INT, offsetof(MessageCore, fair_shift), 0, NULL},
    {"_sending", T_BOOL, offsetof(MessageCore, sending), 0, NULL},
    {"_receiving", T_BOOL, offsetof(MessageCore, receiving), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject MessageCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aioipc._core._speedups.MessageCore",
    .tp_doc = "The state of a message socket, and its one-message send and receive fast paths.",
    .tp_basicsize = sizeof(MessageCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = message_core_new,
    .tp_dealloc = (destructor)message_core_dealloc,
    .tp_traverse = (traverseproc)message_core_traverse,
    .tp_clear = (inquiry)message_core_clear,
    .tp_methods = message_core_methods,
    .tp_members = message_core_members,
};

static PyObject *
message_core_setup(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t send_max, high_water;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "message_core_setup(send_max, high_water)");
        return NULL;
    }
    send_max = PyLong_AsSsize_t(args[0]);
    high_water = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    msg_send_max = send_max;
    msg_high_water = high_water;
    Py_RETURN_NONE;
}

static PyMethodDef message_functions[] = {
    {"message_core_setup", (PyCFunction)(void (*)(void))message_core_setup, METH_FASTCALL,
     "message_core_setup(send_max, high_water): the message sockets' limits (messagecore.py's)"},
    {NULL, NULL, 0, NULL},
};

int
speedups_add_message(PyObject *module)
{
    str_send_message = PyUnicode_InternFromString("_send_message");
    str_receive_slow = PyUnicode_InternFromString("_receive_slow");
    if (str_send_message == NULL || str_receive_slow == NULL || PyType_Ready(&MessageCoreType) < 0 ||
        fast_op_ready() < 0 || PyModule_AddFunctions(module, message_functions) < 0)
        return -1;
    Py_INCREF(&MessageCoreType);
    if (PyModule_AddObject(module, "MessageCore", (PyObject *)&MessageCoreType) < 0) {
        Py_DECREF(&MessageCoreType);
        return -1;
    }
    return 0;
}
