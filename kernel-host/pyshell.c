/* The native kernel's Python thread (see kernel_int.h): the process's main thread, running
 * an embedded CPython (Debian's libpython3.11, its /usr/lib/python3 paths, no PYTHON*
 * environment) and IPython's InteractiveShell through the glue in pyglue.py.
 *
 * Between requests it serves the sockets itself when it owns them (kio_py_*, kernel.c) and
 * sleeps in poll() with the GIL released. Per request it publishes busy (and execute_input),
 * runs the handler, flushes Python's stdout/stderr buffers and publishes idle; the messages go
 * through out_q as jansson values built here and are sent by whichever thread owns the
 * sockets. The common path (a trivial execute) converts nothing to JSON in Python: the code
 * string goes in as a str, the reply is built from a small tuple.
 * Rich data (display data, results, payloads, completion replies) are converted to JSON by
 * py2json() below, with the cleaning ipykernel's json_clean does (bytes as base64, non-finite
 * floats as strings, unknown objects as their str()).
 *
 * The `_kbox` module is what the glue and user code call into: execute_result, display_data,
 * clear_output, error, input, getpass. They all run with the GIL held, publish under the
 * current request's header (outputs from threads after the cell go under the last one, as
 * with ipykernel) and do nothing in a process forked by user code (its sockets are the
 * parent's). SIGINT is Python's KeyboardInterrupt while a request runs; one that arrives between
 * requests is discarded, as ipykernel ignores SIGINT when idle. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "karena.h"
#include "kernel_int.h"
#include "kmsg.h"
#include "pyglue.h" /* generated from pyglue.py: KHOST_PYGLUE_SOURCE */

#include "log.h"
#include "util.h"

#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define PY2JSON_MAX_DEPTH 200
/* pymalloc's arenas on huge pages (karena.h): the size CPython 3.11 asks for on 64-bit, and
 * the heap mapped 32 MiB at a time (an idle kernel's heap is ~16 MB). */
#define ARENA_SIZE    ((size_t)1 << 20)
#define ARENA_CHUNK   ((size_t)32 << 20)
#define INPUT_POLL_MS 50
#define FLUSH_MS      200 /* a partial line waits at most this long (ipykernel's interval) */

static kshared_t *S;
static volatile bool forked; /* set in a child of os.fork(): never touch the queues there */

static PyObject *glue, *g_shell, *g_run, *g_user_expressions, *g_complete, *g_inspect,
    *g_is_complete, *g_history, *g_at_exit, *g_comm, *g_comm_info, *g_loop_state, *g_run_loop;
static PyObject *s_execution_count, *s_flush;
static PyObject *StdinNotImplementedError;

/* The request being served, or the last one: its header is the parent of everything the
 * Python side publishes, including output from threads after the request ended. */
static struct {
    jwire_msg_t *msg;
    jwire_channel_t ch;
    bool allow_stdin;
} cur;

static uint64_t abort_until_seq; /* execute_requests up to this seq are aborted */
static bool exit_after_request;  /* exit() or quit() in the cell: end once it is answered */

const char *kpy_version(void) {
    return Py_GetVersion();
}

static void atfork_child(void) {
    forked = true;
    atomic_store(&S->forked, true);
}

/* ---- Python -> JSON ----------------------------------------------------------------------- */

static json_t *str_of(PyObject *o, size_t *bytes);

static json_t *unicode_to_json(PyObject *o, size_t *bytes) {
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(o, &len);
    if (s) {
        *bytes += (size_t)len;
        return json_stringn(s, (size_t)len);
    }
    /* Lone surrogates: not UTF-8; replace them as json.dumps would escape them. */
    PyErr_Clear();
    PyObject *b = PyUnicode_AsEncodedString(o, "utf-8", "replace");
    if (!b) {
        PyErr_Clear();
        return json_string("");
    }
    json_t *j = json_stringn(PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
    *bytes += (size_t)PyBytes_GET_SIZE(b);
    Py_DECREF(b);
    return j;
}

static json_t *bytes_to_json(const void *data, size_t len, size_t *bytes) {
    size_t b64len = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = malloc(b64len);
    if (!b64)
        return NULL;
    sodium_bin2base64(b64, b64len, data, len, sodium_base64_VARIANT_ORIGINAL);
    json_t *j = json_string(b64);
    *bytes += b64len;
    free(b64);
    return j;
}

static json_t *float_to_json(double d, size_t *bytes) {
    *bytes += 8;
    if (isfinite(d))
        return json_real(d);
    return json_string(isnan(d) ? "nan" : d > 0 ? "inf" : "-inf");
}

static json_t *py2json_depth(PyObject *o, size_t *bytes, int depth);

static json_t *dict_to_json(PyObject *o, size_t *bytes, int depth) {
    json_t *obj = json_object();
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (obj && PyDict_Next(o, &pos, &k, &v)) {
        /* PyDict_Next hands out borrowed references that user code run by str() or a
         * property below could free: hold them. */
        Py_INCREF(k);
        Py_INCREF(v);
        json_t *jk = PyUnicode_Check(k) ? unicode_to_json(k, bytes) : str_of(k, bytes);
        json_t *jv = py2json_depth(v, bytes, depth + 1);
        if (json_is_string(jk))
            json_object_setn_new(obj, json_string_value(jk), json_string_length(jk),
                                 jv ? jv : json_null());
        else
            json_decref(jv);
        json_decref(jk);
        Py_DECREF(k);
        Py_DECREF(v);
    }
    return obj;
}

static json_t *seq_to_json(PyObject *o, size_t *bytes, int depth) {
    PyObject *fast = PySequence_Fast(o, "");
    if (!fast) {
        PyErr_Clear();
        return json_array();
    }
    json_t *arr = json_array();
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    for (Py_ssize_t i = 0; arr && i < n; i++) {
        json_t *jv = py2json_depth(PySequence_Fast_GET_ITEM(fast, i), bytes, depth + 1);
        json_array_append_new(arr, jv ? jv : json_null());
    }
    Py_DECREF(fast);
    return arr;
}

static json_t *str_of(PyObject *o, size_t *bytes) {
    PyObject *s = PyObject_Str(o);
    if (!s) {
        PyErr_Clear();
        return json_string("<unprintable object>");
    }
    json_t *j = unicode_to_json(s, bytes);
    Py_DECREF(s);
    return j;
}

static json_t *py2json_depth(PyObject *o, size_t *bytes, int depth) {
    if (depth > PY2JSON_MAX_DEPTH)
        return json_null();
    if (o == Py_None)
        return json_null();
    if (PyBool_Check(o))
        return json_boolean(o == Py_True);
    if (PyLong_Check(o)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (!overflow && !(v == -1 && PyErr_Occurred())) {
            *bytes += 8;
            return json_integer(v);
        }
        PyErr_Clear();
        return str_of(o, bytes); /* beyond 64 bits: JSON has no such integer here */
    }
    if (PyFloat_Check(o))
        return float_to_json(PyFloat_AS_DOUBLE(o), bytes);
    if (PyUnicode_Check(o))
        return unicode_to_json(o, bytes);
    if (PyDict_Check(o))
        return dict_to_json(o, bytes, depth);
    if (PyList_Check(o) || PyTuple_Check(o))
        return seq_to_json(o, bytes, depth);
    if (PyBytes_Check(o))
        return bytes_to_json(PyBytes_AS_STRING(o), (size_t)PyBytes_GET_SIZE(o), bytes);
    if (PyByteArray_Check(o))
        return bytes_to_json(PyByteArray_AS_STRING(o), (size_t)PyByteArray_GET_SIZE(o), bytes);
    if (PyAnySet_Check(o))
        return seq_to_json(o, bytes, depth);
    /* numpy and friends: integers through __index__, floats through __float__. */
    if (PyIndex_Check(o)) {
        PyObject *i = PyNumber_Index(o);
        if (i) {
            json_t *j = py2json_depth(i, bytes, depth + 1);
            Py_DECREF(i);
            return j;
        }
        PyErr_Clear();
    }
    if (Py_TYPE(o)->tp_as_number && Py_TYPE(o)->tp_as_number->nb_float) {
        double d = PyFloat_AsDouble(o);
        if (!(d == -1.0 && PyErr_Occurred()))
            return float_to_json(d, bytes);
        PyErr_Clear();
    }
    if (PyMapping_Check(o) && PyObject_HasAttrString(o, "items")) {
        PyObject *d = PyDict_New();
        if (d && PyDict_Update(d, o) == 0) {
            json_t *j = dict_to_json(d, bytes, depth);
            Py_DECREF(d);
            return j;
        }
        Py_XDECREF(d);
        PyErr_Clear();
    }
    if (PyObject_HasAttrString(o, "isoformat")) { /* datetime, date, time */
        PyObject *s = PyObject_CallMethod(o, "isoformat", NULL);
        if (s && PyUnicode_Check(s)) {
            json_t *j = unicode_to_json(s, bytes);
            Py_DECREF(s);
            return j;
        }
        Py_XDECREF(s);
        PyErr_Clear();
    }
    return str_of(o, bytes);
}

/* A JSON value for any Python object (never NULL except on ENOMEM); clears Python errors. */
static json_t *py2json(PyObject *o, size_t *bytes) {
    size_t dummy = 0;
    json_t *j = py2json_depth(o, bytes ? bytes : &dummy, 0);
    if (PyErr_Occurred())
        PyErr_Clear();
    return j;
}

static PyObject *json2py(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        PyObject *d = PyDict_New();
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) {
            PyObject *pv = json2py(v);
            if (!d || !pv || PyDict_SetItemString(d, k, pv) < 0) {
                Py_XDECREF(pv);
                Py_XDECREF(d);
                return NULL;
            }
            Py_DECREF(pv);
        }
        return d;
    }
    case JSON_ARRAY: {
        PyObject *l = PyList_New((Py_ssize_t)json_array_size(j));
        for (size_t i = 0; l && i < json_array_size(j); i++) {
            PyObject *pv = json2py(json_array_get(j, i));
            if (!pv) {
                Py_DECREF(l);
                return NULL;
            }
            PyList_SET_ITEM(l, (Py_ssize_t)i, pv);
        }
        return l;
    }
    case JSON_STRING:
        return PyUnicode_DecodeUTF8(json_string_value(j), (Py_ssize_t)json_string_length(j),
                                    "replace");
    case JSON_INTEGER:
        return PyLong_FromLongLong(json_integer_value(j));
    case JSON_REAL:
        return PyFloat_FromDouble(json_real_value(j));
    case JSON_TRUE:
        Py_RETURN_TRUE;
    case JSON_FALSE:
        Py_RETURN_FALSE;
    case JSON_NULL:
    default:
        Py_RETURN_NONE;
    }
}

/* ---- output ------------------------------------------------------------------------------- */

/* Python-level buffers of sys.stdout / sys.stderr down to the pipes, so what was printed is
 * in the pipe before the message that follows it is queued. Keeps a pending exception. */
static void flush_std_ex(bool rearm) {
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    static const char *const names[2] = {"stdout", "stderr"};
    for (int i = 0; i < 2; i++) {
        PyObject *f = PySys_GetObject(names[i]); /* borrowed */
        if (!f || f == Py_None)
            continue;
        PyObject *r = PyObject_CallMethodNoArgs(f, s_flush);
        if (r) {
            Py_DECREF(r);
        } else {
            /* rearm: SIGINT while the write waited for a full pipe (iopub back-pressure)
             * in user code's display call is not swallowed: its KeyboardInterrupt comes at
             * the next check. */
            if (rearm && PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
                PyErr_SetInterrupt();
            PyErr_Clear();
        }
    }
    PyErr_Restore(et, ev, tb);
}

static void flush_std(void) {
    flush_std_ex(false);
}

/* ---- the flusher ---------------------------------------------------------------------------
 *
 * sys.stdout and sys.stderr are line-buffered: a partial line (`print(i, end=" ")`, a
 * progress bar) stays in Python's buffer until a newline, the cell's end or the next message.
 * ipykernel flushes its streams every 0.2 s from its I/O thread; ours is this thread, which
 * takes the GIL every FLUSH_MS while it has a reason to: a cell that runs longer than the
 * takeover delay (kernel.c kicks it when the I/O thread takes the sockets), or threads of the
 * user's that may still print after their cell ended. Short cells never wake it. It flushes
 * the streams the kernel made (user code's replacements of sys.stdout are its own business),
 * and has every signal blocked, so SIGINT still lands on the Python thread. It never flushes
 * into a pipe without room for what a stream can hold: blocked in write() (iopub
 * back-pressure) it would hold the stream's lock, and the Python thread's next print would
 * wait for it where an interrupt cannot reach. */
#define FLUSH_ROOM ((size_t)64 * 1024) /* > a TextIOWrapper's + a BufferedWriter's buffers */

static int flush_efd = -1;
static atomic_bool cell_running;
static PyThreadState *main_ts;
static PyObject *std_streams[2]; /* sys.stdout and sys.stderr as the kernel set them up */
static size_t pipe_size[2];

/* Whether the pipe behind fd 1 or 2 has room for a flush. */
static bool pipe_room(int i) {
    int queued = 0;
    return ioctl(S->out_w[i], FIONREAD, &queued) == 0 && queued >= 0 &&
           pipe_size[i] >= (size_t)queued + FLUSH_ROOM;
}

/* Python threads besides the main one and the caller: the user's. */
static bool user_threads(void) {
    PyThreadState *self = PyThreadState_Get();
    for (PyThreadState *t = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(self)); t;
         t = PyThreadState_Next(t))
        if (t != self && t != main_ts)
            return true;
    return false;
}

void kpy_flusher_kick(void) {
    if (flush_efd >= 0 && !forked)
        (void)!eventfd_write(flush_efd, 1);
}

static void *flusher_main(void *arg) {
    (void)arg;
    struct pollfd p = {.fd = flush_efd, .events = POLLIN};
    eventfd_t n;
    for (;;) {
        if (poll(&p, 1, -1) < 0)
            continue; /* EINTR cannot happen (signals blocked); nothing else is transient */
        (void)eventfd_read(flush_efd, &n);
        bool more = true;
        while (more) {
            if (poll(&p, 1, FLUSH_MS) > 0)
                (void)eventfd_read(flush_efd, &n);
            PyGILState_STATE g = PyGILState_Ensure();
            for (int i = 0; i < 2; i++) {
                PyObject *r = std_streams[i] && pipe_room(i)
                                  ? PyObject_CallMethodNoArgs(std_streams[i], s_flush)
                                  : NULL;
                Py_XDECREF(r);
            }
            PyErr_Clear();
            more = atomic_load(&cell_running) || user_threads();
            PyGILState_Release(g);
        }
    }
    return NULL;
}

/* Called once Python is up, with the GIL. A kernel without it still works (output then
 * waits for a newline or the cell's end), so failing to start it is only logged. */
static void flusher_start(void) {
    main_ts = PyThreadState_Get();
    std_streams[0] = PySys_GetObject("stdout"); /* borrowed; kept alive below */
    std_streams[1] = PySys_GetObject("stderr");
    Py_XINCREF(std_streams[0]);
    Py_XINCREF(std_streams[1]);
    for (int i = 0; i < 2; i++) {
        int n = fcntl(S->out_w[i], F_GETPIPE_SZ);
        pipe_size[i] = n > 0 ? (size_t)n : 0; /* unknown: never flushed from here */
    }
    flush_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t tid = 0;
    int r = flush_efd < 0 ? -errno : -pthread_create(&tid, NULL, flusher_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r < 0) {
        klog(LOG_LVL_WARN, "no output flusher: partial lines wait for a newline", "{s:s}", "error",
             strerror(-r));
        if (flush_efd >= 0)
            close(flush_efd);
        flush_efd = -1;
        return;
    }
    pthread_detach(tid);
}

/* Queues an item for the I/O thread. Called with the GIL; waits for room with it released. */
static void out_push(kout_t *it, size_t bytes) {
    if (!it)
        return;
    if (forked) {
        kout_free(it);
        return;
    }
    if (kq_push(S->out_q, it, bytes, false) == -EAGAIN) {
        Py_BEGIN_ALLOW_THREADS kq_push(S->out_q, it, bytes, true);
        Py_END_ALLOW_THREADS
    }
}

static json_t *cur_parent(void) {
    return cur.msg ? cur.msg->header : NULL;
}

/* Waits for room in out_q with the GIL released. out_q is full for long only when iopub is
 * blocked by a slow reader (kernel.c): user code publishing then waits at the reader's pace,
 * and `interruptible` lets SIGINT end the wait (-1, KeyboardInterrupt set). */
static int wait_room(size_t bytes, bool interruptible) {
    while (kq_full(S->out_q, bytes)) {
        bool room;
        Py_BEGIN_ALLOW_THREADS room = kq_wait_room_ms(S->out_q, bytes, INPUT_POLL_MS);
        Py_END_ALLOW_THREADS if (room) break;
        if (interruptible && PyErr_CheckSignals() < 0)
            return -1;
    }
    return 0;
}

/* A message after the output written before it (kout_publish_ordered drains the pipes
 * first): iopub messages, and replies too, so a reply never overtakes the request's last
 * output. Waits for room with the GIL released; -1 (the item dropped, KeyboardInterrupt set)
 * if `interruptible` and SIGINT came meanwhile. */
static int push_ordered(kout_t *it, size_t bytes, bool interruptible) {
    if (!it)
        return 0;
    if (forked) {
        kout_free(it);
        return 0;
    }
    if (wait_room(bytes, interruptible) < 0) {
        kout_free(it);
        return -1;
    }
    kout_publish_ordered(S, it, bytes);
    return 0;
}

static void publish(const char *msg_type, json_t *content, unsigned flags, size_t bytes) {
    push_ordered(
        kout_new(KOUT_MSG, JWIRE_IOPUB, msg_type, cur_parent(), NULL, content, NULL, flags),
        bytes + 256, false);
}

/* Output published by user code (display, results, errors): interruptible. */
static PyObject *publish_user(const char *msg_type, json_t *content, size_t bytes) {
    if (push_ordered(
            kout_new(KOUT_MSG, JWIRE_IOPUB, msg_type, cur_parent(), NULL, content, NULL, 0),
            bytes + 256, true) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static void reply(const char *msg_type, json_t *content, json_t *metadata) {
    if (!cur.msg)
        return;
    push_ordered(
        kout_new(KOUT_MSG, cur.ch, msg_type, cur.msg->header, cur.msg->ids, content, metadata, 0),
        512, false);
}

/* ---- the _kbox module --------------------------------------------------------------------- */

static PyObject *kb_execute_result(PyObject *self, PyObject *args) {
    PyObject *count, *data, *md;
    if (!PyArg_ParseTuple(args, "OOO", &count, &data, &md))
        return NULL;
    if (forked)
        Py_RETURN_NONE;
    flush_std_ex(true);
    size_t bytes = 0;
    json_t *c = json_pack("{s:o, s:o, s:o}", "execution_count", py2json(count, NULL), "data",
                          py2json(data, &bytes), "metadata", py2json(md, &bytes));
    return publish_user("execute_result", c, bytes);
}

static PyObject *kb_display_data(PyObject *self, PyObject *args) {
    PyObject *data, *md, *transient;
    int update = 0;
    if (!PyArg_ParseTuple(args, "OOO|p", &data, &md, &transient, &update))
        return NULL;
    if (forked)
        Py_RETURN_NONE;
    flush_std_ex(true);
    size_t bytes = 0;
    json_t *c = json_pack("{s:o, s:o, s:o}", "data", py2json(data, &bytes), "metadata",
                          py2json(md, &bytes), "transient", py2json(transient, &bytes));
    return publish_user(update ? "update_display_data" : "display_data", c, bytes);
}

static PyObject *kb_clear_output(PyObject *self, PyObject *args) {
    int wait = 0;
    if (!PyArg_ParseTuple(args, "|p", &wait))
        return NULL;
    if (forked)
        Py_RETURN_NONE;
    flush_std_ex(true);
    return publish_user("clear_output", json_pack("{s:b}", "wait", wait), 0);
}

static PyObject *kb_error(PyObject *self, PyObject *args) {
    PyObject *ename, *evalue, *tb;
    if (!PyArg_ParseTuple(args, "OOO", &ename, &evalue, &tb))
        return NULL;
    if (forked)
        Py_RETURN_NONE;
    flush_std();
    size_t bytes = 0;
    json_t *c = json_pack("{s:o, s:o, s:o}", "ename", py2json(ename, &bytes), "evalue",
                          py2json(evalue, &bytes), "traceback", py2json(tb, &bytes));
    publish("error", c, 0, bytes); /* the cell's own error: never dropped */
    Py_RETURN_NONE;
}

/* A comm message to the frontend, with binary buffers (any contiguous buffer object). */
static PyObject *kb_comm_publish(PyObject *self, PyObject *args) {
    const char *type;
    PyObject *content, *md, *bufs;
    if (!PyArg_ParseTuple(args, "sOOO", &type, &content, &md, &bufs))
        return NULL;
    static const char *const types[] = {"comm_open", "comm_msg", "comm_close"};
    const char *msg_type = NULL;
    for (size_t i = 0; i < 3; i++)
        if (streq(type, types[i]))
            msg_type = types[i];
    if (!msg_type)
        return PyErr_Format(PyExc_ValueError, "not a comm message type: %s", type);
    if (forked)
        Py_RETURN_NONE;
    PyObject *fast = PySequence_Fast(bufs, "buffers must be a sequence");
    if (!fast)
        return NULL;
    zmsg_t *z = zmsg_new();
    size_t bytes = 0;
    for (Py_ssize_t i = 0; z && i < PySequence_Fast_GET_SIZE(fast); i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, i), &view, PyBUF_CONTIG_RO) < 0) {
            zmsg_destroy(&z);
            Py_DECREF(fast);
            return NULL;
        }
        zmsg_addmem(z, view.buf, (size_t)view.len);
        bytes += (size_t)view.len;
        PyBuffer_Release(&view);
    }
    Py_DECREF(fast);
    flush_std_ex(true);
    kout_t *it = kout_new(KOUT_MSG, JWIRE_IOPUB, msg_type, cur_parent(), NULL,
                          py2json(content, &bytes), py2json(md, &bytes), 0);
    if (!it) {
        zmsg_destroy(&z);
        return PyErr_NoMemory();
    }
    it->buffers = z;
    bytes += 256;
    if (push_ordered(it, bytes, true) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* input() / getpass(): input_request on stdin, then wait for the input_reply with the GIL
 * released; SIGINT ends the wait with KeyboardInterrupt. */
static PyObject *request_input(PyObject *prompt, bool password) {
    if (forked)
        return PyErr_Format(PyExc_EOFError, "input() is not available in a forked process");
    if (!cur.allow_stdin || !cur.msg)
        return PyErr_Format(StdinNotImplementedError,
                            "%s was called, but this frontend does not support input requests.",
                            password ? "getpass" : "raw_input");
    flush_std();
    /* Stale replies (to an interrupted earlier input()) must not answer this one. */
    jwire_msg_t *stale;
    while ((stale = kq_pop(S->stdin_q)))
        jwire_msg_destroy(&stale);
    json_t *jp = prompt ? py2json(prompt, NULL) : json_string("");
    if (jp && !json_is_string(jp)) {
        json_decref(jp);
        jp = json_string("");
    }
    push_ordered(kout_new(KOUT_MSG, JWIRE_STDIN, "input_request", cur.msg->header, cur.msg->ids,
                          json_pack("{s:o, s:b}", "prompt", jp, "password", password), NULL, 0),
                 512, false);
    kio_py_need_io(S);
    for (;;) {
        kq_ack(S->stdin_q);
        jwire_msg_t *m = kq_pop(S->stdin_q);
        if (m) {
            const json_t *v = json_object_get(m->content, "value");
            PyObject *r = NULL;
            if (json_is_string(v) && streq(json_string_value(v), "\x04"))
                PyErr_SetNone(PyExc_EOFError);
            else if (json_is_string(v))
                r = PyUnicode_DecodeUTF8(json_string_value(v), (Py_ssize_t)json_string_length(v),
                                         "replace");
            else
                r = PyUnicode_FromString("");
            jwire_msg_destroy(&m);
            return r;
        }
        int n;
        Py_BEGIN_ALLOW_THREADS struct pollfd p = {.fd = kq_fd(S->stdin_q), .events = POLLIN};
        n = poll(&p, 1, INPUT_POLL_MS);
        Py_END_ALLOW_THREADS(void) n;
        if (PyErr_CheckSignals() < 0) {
            if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_KeyboardInterrupt, "Interrupted by user");
            }
            return NULL;
        }
    }
}

static PyObject *kb_input(PyObject *self, PyObject *args) {
    PyObject *prompt = NULL;
    if (!PyArg_ParseTuple(args, "|O", &prompt))
        return NULL;
    PyObject *p = prompt ? PyObject_Str(prompt) : NULL;
    if (prompt && !p)
        return NULL;
    PyObject *r = request_input(p, false);
    Py_XDECREF(p);
    return r;
}

static PyObject *kb_getpass(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"prompt", "stream", NULL};
    PyObject *prompt = NULL, *stream = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO", kwlist, &prompt, &stream))
        return NULL;
    PyObject *p = prompt ? PyObject_Str(prompt) : PyUnicode_FromString("Password: ");
    if (!p)
        return NULL;
    PyObject *r = request_input(p, true);
    Py_DECREF(p);
    return r;
}

/* exit() and quit() end the kernel, as in ipykernel: its client sees the reply (with the
 * ask_exit payload) and the idle first, then the process ends (a frontend restarts it). */
static PyObject *kb_exit_after_request(PyObject *self, PyObject *args) {
    exit_after_request = true;
    Py_RETURN_NONE;
}

static PyMethodDef kb_methods[] = {
    {"execute_result", kb_execute_result, METH_VARARGS, "execute_result(count, data, metadata)"},
    {"display_data", kb_display_data, METH_VARARGS,
     "display_data(data, metadata, transient, update=False)"},
    {"clear_output", kb_clear_output, METH_VARARGS, "clear_output(wait=False)"},
    {"error", kb_error, METH_VARARGS, "error(ename, evalue, traceback)"},
    {"comm_publish", kb_comm_publish, METH_VARARGS,
     "comm_publish(msg_type, content, metadata, buffers)"},
    {"input", kb_input, METH_VARARGS,
     "input(prompt='')\n\nRead a line from the frontend (an input_request on stdin)."},
    {"getpass", (PyCFunction)(void (*)(void))kb_getpass, METH_VARARGS | METH_KEYWORDS,
     "getpass(prompt='Password: ', stream=None)"},
    {"exit_after_request", kb_exit_after_request, METH_NOARGS,
     "exit_after_request()\n\nEnd the kernel once the current request is answered."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kb_module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_kbox",
    .m_doc = "The kbox native kernel's C side.",
    .m_size = -1,
    .m_methods = kb_methods,
};

static PyObject *kb_init(void) {
    return PyModule_Create(&kb_module);
}

/* ---- requests ----------------------------------------------------------------------------- */

/* SIGINT between requests (or after a cell ended) must not become the next cell's
 * KeyboardInterrupt. */
static void discard_signals(void) {
    if (PyErr_CheckSignals() < 0)
        PyErr_Clear();
}

/* User code may have closed or replaced fds 1 and 2: put the pipes back before a cell. */
static void restore_stdio(void) {
    for (int i = 0; i < 2; i++) {
        struct stat st;
        if (fstat(1 + i, &st) == 0 && st.st_dev == S->out_dev[i] && st.st_ino == S->out_ino[i])
            continue;
        (void)dup2(S->out_w[i], 1 + i);
    }
}

/* The current exception as (ename, evalue), cleared. */
static void take_exception(char *ename, size_t elen, char *evalue, size_t vlen) {
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    snprintf(ename, elen, "%s", et ? ((PyTypeObject *)et)->tp_name : "Error");
    evalue[0] = '\0';
    if (ev) {
        PyObject *s = PyObject_Str(ev);
        const char *u = s ? PyUnicode_AsUTF8(s) : NULL;
        snprintf(evalue, vlen, "%s", u ? u : "");
        Py_XDECREF(s);
    }
    PyErr_Clear();
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(tb);
}

static long execution_count(void) {
    PyObject *c = PyObject_GetAttr(g_shell, s_execution_count);
    long n = c ? PyLong_AsLong(c) : 0;
    Py_XDECREF(c);
    if (PyErr_Occurred())
        PyErr_Clear();
    return n;
}

static void do_execute(const kreq_t *r) {
    kmsg_execute_t e;
    char started[32];
    jwire_now_iso8601(started);
    if (kmsg_execute_parse(cur.msg->content, &e) < 0) {
        reply("execute_reply", kmsg_error_reply("ValueError", "malformed execute_request"),
              kmsg_execute_metadata(started, S->session, "error"));
        return;
    }
    if (r->seq <= abort_until_seq) {
        reply("execute_reply", kmsg_aborted(),
              kmsg_execute_metadata(started, S->session, "aborted"));
        return;
    }
    restore_stdio();
    if (!e.silent)
        publish("execute_input", kmsg_execute_input(e.code, e.code_len, execution_count()), 0,
                e.code_len);

    PyObject *code = PyUnicode_DecodeUTF8(e.code, (Py_ssize_t)e.code_len, "replace");
    PyObject *res = NULL;
    cur.allow_stdin = e.allow_stdin;
    atomic_store(&cell_running, true);
    if (code)
        res = PyObject_CallFunctionObjArgs(g_run, code, e.silent ? Py_True : Py_False,
                                           e.store_history ? Py_True : Py_False, NULL);
    atomic_store(&cell_running, false);
    cur.allow_stdin = false;
    if (user_threads())
        kpy_flusher_kick(); /* they may print after the cell, without a newline */
    Py_XDECREF(code);

    json_t *content;
    if (!res || !PyTuple_Check(res) || PyTuple_GET_SIZE(res) < 2) {
        /* The glue itself failed (an interrupt outside the cell, a broken shell). */
        char ename[128] = "Error", evalue[512] = "";
        if (PyErr_Occurred())
            take_exception(ename, sizeof ename, evalue, sizeof evalue);
        publish(
            "error",
            json_pack("{s:s, s:s, s:[s]}", "ename", ename, "evalue", evalue, "traceback", evalue),
            0, 0);
        content = kmsg_execute_error(execution_count() - 1, ename, evalue, NULL, NULL);
    } else {
        long count = PyLong_AsLong(PyTuple_GET_ITEM(res, 0));
        PyObject *payload = PyTuple_GET_ITEM(res, 1);
        json_t *jpayload = payload == Py_None ? NULL : py2json(payload, NULL);
        if (PyTuple_GET_SIZE(res) >= 5) {
            json_t *ename = py2json(PyTuple_GET_ITEM(res, 2), NULL);
            json_t *evalue = py2json(PyTuple_GET_ITEM(res, 3), NULL);
            content = kmsg_execute_error(count, json_string_value(ename), json_string_value(evalue),
                                         py2json(PyTuple_GET_ITEM(res, 4), NULL), jpayload);
            json_decref(ename);
            json_decref(evalue);
        } else {
            json_t *ue = NULL;
            if (e.user_expressions) {
                PyObject *pe = json2py(e.user_expressions);
                PyObject *pr = pe ? PyObject_CallOneArg(g_user_expressions, pe) : NULL;
                ue = pr ? py2json(pr, NULL) : NULL;
                Py_XDECREF(pe);
                Py_XDECREF(pr);
                if (PyErr_Occurred())
                    PyErr_Clear();
            }
            content = kmsg_execute_ok(count, ue, jpayload);
        }
    }
    Py_XDECREF(res);
    const char *status = json_string_value(json_object_get(content, "status"));
    bool failed = streq(status, "error");
    flush_std();
    reply("execute_reply", content,
          kmsg_execute_metadata(started, S->session, status ? status : "error"));
    if (failed && !e.silent && e.stop_on_error) {
        kio_py_pull_shell(S); /* what is already waiting gets aborted, as ipykernel does */
        abort_until_seq = atomic_load(&S->last_seq);
    }
}

/* complete / inspect / is_complete / history: a glue function returning the reply content. */
static void do_glue_call(PyObject *fn, PyObject *args, PyObject *kwargs, const char *reply_type) {
    PyObject *res = args ? PyObject_Call(fn, args, kwargs) : NULL;
    json_t *content;
    if (res && PyDict_Check(res)) {
        content = py2json(res, NULL);
    } else {
        char ename[128] = "Error", evalue[512] = "";
        if (PyErr_Occurred())
            take_exception(ename, sizeof ename, evalue, sizeof evalue);
        content = kmsg_error_reply(ename, evalue);
    }
    Py_XDECREF(res);
    reply(reply_type, content, NULL);
}

/* comm_open / comm_msg / comm_close: the message as ipykernel hands it to comm code. */
static void do_comm(const char *type) {
    jwire_msg_t *m = cur.msg;
    PyObject *bufs = PyList_New(0);
    for (zframe_t *f = m->buffers ? zmsg_first(m->buffers) : NULL; bufs && f;
         f = zmsg_next(m->buffers)) {
        PyObject *b =
            PyBytes_FromStringAndSize((const char *)zframe_data(f), (Py_ssize_t)zframe_size(f));
        if (!b || PyList_Append(bufs, b) < 0)
            Py_CLEAR(bufs);
        Py_XDECREF(b);
    }
    PyObject *msg =
        bufs ? Py_BuildValue("{s:N, s:N, s:N, s:N, s:N, s:s, s:s}", "header", json2py(m->header),
                             "parent_header", json2py(m->parent_header), "metadata",
                             json2py(m->metadata), "content", json2py(m->content), "buffers", bufs,
                             "msg_id", jwire_msg_id(m), "msg_type", type)
             : NULL;
    PyObject *res = msg ? PyObject_CallFunction(g_comm, "sO", type, msg) : NULL;
    if (!res) /* a malformed message (handler errors are shown to the user by the glue) */
        PyErr_Clear();
    Py_XDECREF(res);
    Py_XDECREF(msg);
}

static PyObject *arg_str(const json_t *content, const char *key) {
    const json_t *v = json_object_get(content, key);
    return json_is_string(v) ? json2py(v) : PyUnicode_FromString("");
}

static PyObject *arg_int_or_none(const json_t *content, const char *key) {
    const json_t *v = json_object_get(content, key);
    if (json_is_integer(v))
        return PyLong_FromLongLong(json_integer_value(v));
    Py_RETURN_NONE;
}

static void handle_msg(const kreq_t *r) {
    /* The request message itself is cur.msg (it outlives the request as the parent). */
    const json_t *content = cur.msg->content;
    const char *type = jwire_msg_type(cur.msg);
    if (streq(type, "execute_request")) {
        do_execute(r);
    } else if (streq(type, "complete_request")) {
        PyObject *args =
            Py_BuildValue("(NN)", arg_str(content, "code"), arg_int_or_none(content, "cursor_pos"));
        do_glue_call(g_complete, args, NULL, "complete_reply");
        Py_XDECREF(args);
    } else if (streq(type, "inspect_request")) {
        const json_t *dl = json_object_get(content, "detail_level");
        const json_t *om = json_object_get(content, "omit_sections");
        PyObject *args = Py_BuildValue("(NNiN)", arg_str(content, "code"),
                                       arg_int_or_none(content, "cursor_pos"),
                                       json_is_integer(dl) ? (int)json_integer_value(dl) : 0,
                                       json_is_array(om) ? json2py(om) : PyList_New(0));
        do_glue_call(g_inspect, args, NULL, "inspect_reply");
        Py_XDECREF(args);
    } else if (streq(type, "is_complete_request")) {
        PyObject *args = Py_BuildValue("(N)", arg_str(content, "code"));
        do_glue_call(g_is_complete, args, NULL, "is_complete_reply");
        Py_XDECREF(args);
    } else if (streq(type, "history_request")) {
        PyObject *kwargs = json2py(content);
        PyObject *args = PyTuple_New(0);
        if (!kwargs || !PyDict_Check(kwargs))
            Py_CLEAR(args);
        do_glue_call(g_history, args, kwargs, "history_reply");
        Py_XDECREF(args);
        Py_XDECREF(kwargs);
    } else if (streq(type, "kernel_info_request")) {
        reply("kernel_info_reply", json_incref(S->kernel_info), NULL);
    } else if (streq(type, "comm_info_request")) {
        const json_t *tn = json_object_get(content, "target_name");
        PyObject *args =
            Py_BuildValue("(N)", json_is_string(tn) ? json2py(tn) : Py_NewRef(Py_None));
        do_glue_call(g_comm_info, args, NULL, "comm_info_reply");
        Py_XDECREF(args);
    } else if (streq(type, "comm_open") || streq(type, "comm_msg") || streq(type, "comm_close")) {
        do_comm(type);
    } else {
        klog(LOG_LVL_DEBUG, "unhandled shell message", "{s:s}", "msg_type", type);
    }
    if (PyErr_Occurred())
        PyErr_Clear();
}

/* atexit handlers, the last output, then the process ends. */
_Noreturn static void exit_kernel(void) {
    PyObject *res = PyObject_CallNoArgs(g_at_exit);
    Py_XDECREF(res);
    PyErr_Clear();
    flush_std();
    kio_py_exit(S);
}

static void serve(const kreq_t *r) {
    if (r->kind == KREQ_SHUTDOWN)
        exit_kernel();
    kio_py_request_start(S);
    publish("status", kmsg_status("busy"), KOUT_F_STREAM_PARENT, 0);
    handle_msg(r);
    flush_std();
    if (forked)
        _exit(0); /* a child of os.fork() that left its cell: it has no kernel to serve */
    publish("status", kmsg_status("idle"), KOUT_F_REQUEST_DONE, 0);
    kio_py_request_end(S);
    if (exit_after_request) {
        klog(LOG_LVL_INFO, "exit() called: the kernel ends", NULL);
        exit_kernel();
    }
}

static void log_python_error(const char *msg);

/* Whether the failed call's exception is a KeyboardInterrupt, which it then clears: SIGINT
 * between requests is discarded (an interrupt that arrived before the call ran Python's
 * handler at its first instruction). */
static bool interrupted(void) {
    if (!PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return false;
    PyErr_Clear();
    return true;
}

/* The asyncio loop between requests (pyglue.py): the fd to sleep on for it (-1: none), and
 * in *timeout_ms how long until it has callbacks due (0: now, -1: no timer). */
static int loop_state(int *timeout_ms) {
    int fd = -1;
    *timeout_ms = -1;
    PyObject *r = PyObject_CallNoArgs(g_loop_state);
    if (!r && interrupted()) {
        *timeout_ms = 0; /* unknown: a pass (which asks nothing) and the question again */
        return -1;
    }
    if (!r || !PyArg_ParseTuple(r, "ii", &fd, timeout_ms)) {
        Py_XDECREF(r);
        log_python_error("asyncio loop state unknown");
        *timeout_ms = -1;
        return -1;
    }
    Py_DECREF(r);
    return fd;
}

/* One pass of the loop: user code, timed like a request (past the takeover delay the I/O
 * thread serves the sockets; the flusher sends partial lines). */
static void run_asyncio(void) {
    kio_py_request_start(S);
    atomic_store(&cell_running, true);
    PyObject *r = PyObject_CallNoArgs(g_run_loop);
    atomic_store(&cell_running, false);
    if (!r && !interrupted()) /* interrupted: the pass may not have run; the next one will */
        log_python_error("asyncio loop failed");
    Py_XDECREF(r);
    if (forked)
        _exit(0); /* a child of os.fork() in a task: it has no kernel to serve */
    flush_std();
    kio_py_request_end(S);
}

/* The next request; between requests the Python thread serves the sockets itself (when it
 * owns them) and sleeps in poll() with the GIL released, waking for the asyncio loop too. */
static kreq_t *next_request(void) {
    for (;;) {
        kq_ack(S->req_q);
        kreq_t *r = kq_pop(S->req_q);
        if (r)
            return r;
        kio_py_service(S);
        if ((r = kq_pop(S->req_q)))
            return r;
        int timeout_ms;
        int lfd = loop_state(&timeout_ms);
        if (timeout_ms == 0) {
            run_asyncio();
            continue;
        }
        struct pollfd fds[9];
        int nfds = kio_py_wait_fds(S, fds);
        if (lfd >= 0)
            fds[nfds++] = (struct pollfd){.fd = lfd, .events = POLLIN};
        int n;
        Py_BEGIN_ALLOW_THREADS n = poll(fds, (nfds_t)nfds, timeout_ms);
        Py_END_ALLOW_THREADS if (n < 0) discard_signals();
        else if (n == 0 || (lfd >= 0 && fds[nfds - 1].revents)) run_asyncio();
    }
}

/* ---- start -------------------------------------------------------------------------------- */

static karena_t *arenas;

static void *arena_alloc(void *ctx, size_t size) {
    void *p = karena_alloc(ctx, size);
    if (p)
        return p;
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void arena_free(void *ctx, void *p, size_t size) {
    if (!karena_free(ctx, p, size))
        (void)munmap(p, size);
}

/* Before the interpreter allocates anything. */
static void arenas_install(void) {
    arenas = karena_new(ARENA_CHUNK, ARENA_SIZE, true);
    if (!arenas) {
        klog(LOG_LVL_WARN, "huge-page arenas unavailable", "{s:s}", "error", strerror(errno));
        return;
    }
    PyObjectArenaAllocator a = {.ctx = arenas, .alloc = arena_alloc, .free = arena_free};
    PyObject_SetArenaAllocator(&a);
}

static int python_start(void) {
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    /* Debian's interpreter and paths whatever the environment says: no PYTHON* variables,
     * no argv parsing; the user site stays on, as it is for ipykernel. */
    config.use_environment = 0;
    config.parse_argv = 0;
    config.install_signal_handlers = 1;
    config.write_bytecode = 0;
    PyStatus st = PyConfig_SetString(&config, &config.program_name, L"/usr/bin/python3");
    if (!PyStatus_Exception(st))
        st = PyConfig_SetString(&config, &config.executable, L"/usr/bin/python3");
    wchar_t *argv[] = {L""};
    if (!PyStatus_Exception(st))
        st = PyConfig_SetArgv(&config, 1, argv);
    if (!PyStatus_Exception(st))
        st = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(st)) {
        klog(LOG_LVL_ERROR, "python initialization failed", "{s:s}", "error",
             st.err_msg ? st.err_msg : "?");
        return -EIO;
    }
    return 0;
}

static PyObject *glue_fn(const char *name) {
    PyObject *f = PyObject_GetAttrString(glue, name);
    if (!f)
        klog(LOG_LVL_ERROR, "glue function missing", "{s:s}", "name", name);
    return f;
}

static void log_python_error(const char *msg) {
    char ename[128] = "Error", evalue[512] = "";
    if (PyErr_Occurred())
        take_exception(ename, sizeof ename, evalue, sizeof evalue);
    klog(LOG_LVL_ERROR, msg, "{s:s, s:s}", "ename", ename, "evalue", evalue);
}

int kpy_run(kshared_t *sh) {
    S = sh;
    pthread_atfork(NULL, NULL, atfork_child);
    if (PyImport_AppendInittab("_kbox", kb_init) < 0)
        return -ENOMEM;
    /* An interrupt while IPython is still being imported (a client may already have queued a
     * cell and sent one) must not kill the start: SIGINT waits (blocked since before the
     * sockets were bound, khost_kernel_run), and is discarded below. */
    sigset_t sigint;
    sigemptyset(&sigint);
    sigaddset(&sigint, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigint, NULL);
    arenas_install();
    int r = python_start();
    if (r < 0)
        return r;
    s_execution_count = PyUnicode_InternFromString("execution_count");
    s_flush = PyUnicode_InternFromString("flush");

    PyObject *code = Py_CompileString(KHOST_PYGLUE_SOURCE, "<kbox_kernel>", Py_file_input);
    glue = code ? PyImport_ExecCodeModule("kbox_kernel", code) : NULL;
    Py_XDECREF(code);
    if (!glue) {
        log_python_error("kernel glue failed to load");
        return -EIO;
    }
    PyObject *init = glue_fn("init");
    g_shell = init ? PyObject_CallFunction(init, "s", S->conn_file ? S->conn_file : "") : NULL;
    Py_XDECREF(init);
    if (!g_shell) {
        log_python_error("IPython shell failed to start");
        return -EIO;
    }
    PyObject *errmod = PyImport_ImportModule("IPython.core.error");
    StdinNotImplementedError =
        errmod ? PyObject_GetAttrString(errmod, "StdinNotImplementedError") : NULL;
    Py_XDECREF(errmod);
    if (!StdinNotImplementedError) {
        PyErr_Clear();
        StdinNotImplementedError = PyExc_RuntimeError;
    }
    if (!(g_run = glue_fn("run")) || !(g_user_expressions = glue_fn("user_expressions")) ||
        !(g_complete = glue_fn("complete")) || !(g_inspect = glue_fn("inspect")) ||
        !(g_is_complete = glue_fn("is_complete")) || !(g_history = glue_fn("history")) ||
        !(g_at_exit = glue_fn("at_exit")) || !(g_comm = glue_fn("comm")) ||
        !(g_comm_info = glue_fn("comm_info")) || !(g_loop_state = glue_fn("loop_state")) ||
        !(g_run_loop = glue_fn("run_loop_once")))
        return -EIO;
    flush_std();
    flusher_start();
    /* Start-up garbage (import machinery, IPython's configuration) goes back to the OS: an
     * idle kernel's RSS is what a host full of sessions pays for. */
    PyGC_Collect();
    PyObject *gc = PyImport_ImportModule("gc");
    PyObject *fr = gc ? PyObject_CallMethod(gc, "freeze", NULL) : NULL; /* never traversed again */
    Py_XDECREF(fr);
    Py_XDECREF(gc);
    PyErr_Clear();
    malloc_trim(0);
    klog(LOG_LVL_INFO, "python heap", "{s:I, s:b}", "arenas", (json_int_t)karena_in_use(arenas),
         "huge_pages", karena_huge(arenas));
    pthread_sigmask(SIG_UNBLOCK, &sigint, NULL);
    discard_signals();
    out_push(kout_new(KOUT_PY_READY, JWIRE_SHELL, NULL, NULL, NULL, NULL, NULL, 0), 0);

    for (;;) {
        kreq_t *req = next_request();
        if (forked)
            _exit(0); /* a child of os.fork() that left its cell: it has no kernel to serve */
        discard_signals();
        if (req->kind == KREQ_MSG) {
            /* The previous request stays the parent of late output until now. */
            jwire_msg_t *old = cur.msg;
            cur.msg = TAKE_PTR(req->msg);
            cur.ch = req->ch;
            jwire_msg_destroy(&old);
        }
        serve(req);
        kreq_free(req);
        if (forked)
            _exit(0);
        discard_signals();
    }
}
