/*
 * memexpose.link._hotpath: the forwarded-access hot path in C.
 *
 * Two loops of the link that run once per forwarded access, and whose
 * Python overhead per system call was most of a round trip
 * (docs/protocol.md, "Speed"):
 *
 *   request()  the requester's fast path: take the socket out of the
 *              server thread's epoll, send the request, receive one reply,
 *              and, when it is exactly the plain reply expected, put the
 *              socket back.
 *   serve()    the server thread's fast loop: sleep in epoll, take the
 *              machine lock, receive one request, and answer a plain READ
 *              or WRITE that lands in the exporter's hot RAM range.
 *
 * Both do only what the Python code they shortcut does (session.py,
 * exporter.py); anything else is handed back to that Python code with the
 * bytes received and the lock in a stated condition. The checks on frames
 * are the same as codec.match_* (the tests run both implementations).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define ANC_SPACE 64  /* >= CMSG_SPACE(4 * sizeof(int)), as transport._ANC_SPACE */

/*
 * The wire constants come from codec.py through configure(), called once
 * by hotpath.py at import, so the codec stays their one definition. Frames
 * are sequences of little-endian u64 words (docs/protocol.md).
 */
static Py_ssize_t READ_LEN, WRITE_LEN, READ_REPLY_LEN, WRITE_REPLY_LEN;
static uint64_t WANT_SHARE_BIT, ACCESS_TAIL_BAD;
static int configured;

static inline uint64_t
word(const unsigned char *p, int i)
{
    uint64_t w;
    memcpy(&w, p + 8 * i, 8);  /* the protocol and the host are little-endian */
    return w;
}

static inline void
set_word(unsigned char *p, int i, uint64_t w)
{
    memcpy(p + 8 * i, &w, 8);
}

/*
 * send() all of buf; -1 with errno set on failure (a timeout is EAGAIN), -2
 * with a Python exception (a signal handler raised). A small frame nearly
 * always fits the socket buffer, so the first try keeps the GIL.
 */
static int
send_all(int fd, const unsigned char *buf, Py_ssize_t len)
{
    Py_ssize_t done = 0;
    ssize_t first = send(fd, buf, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (first > 0)
        done = first;
    else if (first < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        return -1;
    while (done < len) {
        ssize_t n;
        Py_BEGIN_ALLOW_THREADS
        n = send(fd, buf + done, (size_t)(len - done), MSG_NOSIGNAL);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    return -2;
                continue;
            }
            return -1;
        }
        done += n;
    }
    return 0;
}

/* The ancillary data of msg as socket.recvmsg gives it: [(level, type, data)]. */
static PyObject *
ancillary_list(struct msghdr *msg)
{
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        Py_ssize_t len = (Py_ssize_t)c->cmsg_len - (Py_ssize_t)CMSG_LEN(0);
        if (len < 0)
            len = 0;
        PyObject *item = Py_BuildValue("(iiy#)", c->cmsg_level, c->cmsg_type,
                                       (const char *)CMSG_DATA(c), len);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

/* Room for the fds of one receive (the control buffer of recvmsg). */
typedef union {
    struct cmsghdr align;
    unsigned char space[ANC_SPACE];
} control_buf;

/* recvmsg() once into buf; no Python API (may run without the GIL). */
static ssize_t
recv_core(int fd, unsigned char *buf, Py_ssize_t len, int fd_passing, int flags,
          struct msghdr *msg, struct iovec *iov, control_buf *control)
{
    iov->iov_base = buf;
    iov->iov_len = (size_t)len;
    memset(msg, 0, sizeof *msg);
    msg->msg_iov = iov;
    msg->msg_iovlen = 1;
    if (fd_passing) {
        msg->msg_control = control->space;
        msg->msg_controllen = sizeof control->space;
    }
    return recvmsg(fd, msg, flags | (fd_passing ? MSG_CMSG_CLOEXEC : 0));
}

static int
has_ancillary(const struct msghdr *msg)
{
    return msg->msg_controllen > 0 || (msg->msg_flags & MSG_CTRUNC);
}

/* [n, ancillary, flags] for n bytes that came with ancillary data (fds closed on failure). */
static PyObject *
ancillary_result(struct msghdr *msg, Py_ssize_t n)
{
    PyObject *list = ancillary_list(msg);
    if (list == NULL) {
        /* Do not leak fds we cannot hand over. */
        for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < count; i++) {
                    int fd;
                    memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                    close(fd);
                }
            }
        }
        return NULL;
    }
    return Py_BuildValue("[nNi]", n, list, msg->msg_flags);
}

/*
 * Receive once into buf (len bytes) with room for fds, the GIL held.
 * Returns the byte count, 0 for "no data" (EAGAIN: a timeout or
 * MSG_DONTWAIT), -1 with a Python exception set. *anc is set to a new
 * [n, ancillary, flags] list when ancillary data came (or was cut off).
 */
static Py_ssize_t
receive(int fd, unsigned char *buf, Py_ssize_t len, int fd_passing, int flags,
        PyObject **anc, int *eof)
{
    control_buf control;
    struct iovec iov;
    struct msghdr msg;
    ssize_t n;

    *anc = NULL;
    *eof = 0;
    for (;;) {
        n = recv_core(fd, buf, len, fd_passing, flags, &msg, &iov, &control);
        if (n >= 0)
            break;
        if (errno == EINTR) {
            if (PyErr_CheckSignals() < 0)
                return -1;
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (n == 0) {
        *eof = 1;
        return 0;
    }
    if (fd_passing && has_ancillary(&msg)) {
        *anc = ancillary_result(&msg, n);
        if (*anc == NULL)
            return -1;
    }
    return (Py_ssize_t)n;
}

/*
 * Whether p[0:reply_len] is the share-less reply to rid with first word head:
 * codec.match_read_reply (reply_len 64: a value no wider than value_mask)
 * or codec.match_write_reply (reply_len 56: no value, *value = 0).
 */
static int
plain_reply(const unsigned char *p, Py_ssize_t reply_len, uint64_t head, uint64_t rid,
            uint64_t value_mask, uint64_t *value, uint64_t *result)
{
    /* result <= 7: MemTxResult bits only, and the reserved u32 above it is 0 */
    if (word(p, 0) != head || word(p, 1) != rid || word(p, 2) > 7)
        return 0;
    *result = word(p, 2);
    if (reply_len == WRITE_REPLY_LEN) {  /* words 3..6: the empty share block */
        *value = 0;
        return !(word(p, 3) | word(p, 4) | word(p, 5) | word(p, 6));
    }
    *value = word(p, 3);
    return reply_len == READ_REPLY_LEN && *value <= value_mask
           && !(word(p, 4) | word(p, 5) | word(p, 6) | word(p, 7));
}

typedef struct {
    int is_write, want;
    uint64_t rid, addr, size, value, attrs;
} plain_access_t;

/*
 * Whether p[0:n] is a valid plain READ or WRITE of the peer (codec.match_read
 * and match_write: read_head and write_head carry FLAG_WANT_SHARE).
 */
static int
plain_access(const unsigned char *p, Py_ssize_t n, uint64_t read_head, uint64_t write_head,
             plain_access_t *a)
{
    uint64_t w0 = word(p, 0);
    if (n == READ_LEN && (w0 | WANT_SHARE_BIT) == read_head)
        a->is_write = 0;
    else if (n == WRITE_LEN && (w0 | WANT_SHARE_BIT) == write_head)
        a->is_write = 1;
    else
        return 0;
    a->want = (w0 & WANT_SHARE_BIT) != 0;
    a->rid = word(p, 1);
    a->addr = word(p, 2);
    uint64_t tail = word(p, a->is_write ? 4 : 3);
    a->size = tail & 0xFF;
    a->attrs = tail >> 32;
    a->value = a->is_write ? word(p, 3) : 0;
    /* addr + size may reach 2**64 exactly, not beyond */
    if (!a->rid || (tail & ACCESS_TAIL_BAD) || a->size == 0 || a->size > 8
        || a->addr > UINT64_MAX - a->size + 1)
        return 0;
    if (a->is_write && a->size < 8 && (a->value >> (8 * a->size)))
        return 0;
    return 1;
}

static void
epoll_events(int ep_fd, int fd, uint32_t events)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.fd = fd;
    (void)epoll_ctl(ep_fd, EPOLL_CTL_MOD, fd, &ev);  /* as Session._disarm: errors ignored */
}

/* Interned attribute names, made once at import. */
static PyObject *s_closed, *s_start, *s_end, *s_base,
    *s_hot, *s_hot_view, *s_hot_fd, *s_flatview, *s_read_view, *s_write_view, *s_host_delta,
    *s_served_requests;

/* Whether obj.name is true; -1 with an exception. */
static int
attr_true(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

static int
attr_u64(PyObject *obj, PyObject *name, uint64_t *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    return (*out == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

static int
add_to_attr(PyObject *obj, PyObject *name, Py_ssize_t delta)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    PyObject *d = PyLong_FromSsize_t(delta);
    PyObject *sum = d ? PyNumber_Add(v, d) : NULL;
    Py_DECREF(v);
    Py_XDECREF(d);
    if (sum == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return rc;
}

/* Channel.fill_empty's rebase: everything buffered was consumed; receive at buf[0]. */
static int
rebase(PyObject *mem, uint64_t end)
{
    PyObject *zero = PyLong_FromLong(0);
    int rc = zero == NULL || add_to_attr(mem, s_base, (Py_ssize_t)end) < 0
             || PyObject_SetAttr(mem, s_start, zero) < 0 || PyObject_SetAttr(mem, s_end, zero) < 0;
    Py_XDECREF(zero);
    return rc ? -1 : 0;
}

/*
 * request(mem, sock_fd, ep_fd, fd_passing, buf, w0, rid, addr, w3, w4,
 *         reply_len, reply_head, value_mask)
 *
 * The requester's fast path (Session.request_read / request_write), with
 * the machine lock held and nothing buffered on the channel ``mem`` (a
 * transport.Channel; buf is its buffer, sock_fd its socket). Sends the
 * READ (w4 None: words w0, rid, addr, w3) or WRITE (w0, rid, addr, w3 =
 * value, w4) frame, after disarming the socket in the server's epoll
 * (ep_fd < 0: leave it), and receives once at buf[0]. Returns
 *   (value, result)   exactly the plain reply to rid came (checked as
 *                     codec.match_read_reply / match_write_reply; a
 *                     WRITE_REPLY has no value: 0). It is consumed and the
 *                     socket is armed again;
 *   n >= 0            n other bytes are buffered (mem.end = n; 0: the
 *                     receive timed out); the socket stays disarmed;
 *   -1                the peer closed the connection;
 *   [n, anc, flags]   ancillary data came with n bytes (as recvmsg gives
 *                     it): the caller records the fds, then buffers n.
 * The channel's reader guard (mem._reading) is held throughout.
 */
static PyObject *s_reading;
static PyObject *busy_error;

static PyObject *
hot_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 13 || !configured) {
        PyErr_SetString(PyExc_TypeError, "request() takes 13 arguments, after configure()");
        return NULL;
    }
    PyObject *mem = args[0];
    int sock_fd = _PyLong_AsInt(args[1]);
    int ep_fd = _PyLong_AsInt(args[2]);
    int fd_passing = PyObject_IsTrue(args[3]);
    unsigned char frame[40];
    Py_ssize_t frame_len = args[9] == Py_None ? READ_LEN : WRITE_LEN;
    set_word(frame, 0, PyLong_AsUnsignedLongLong(args[5]));
    set_word(frame, 1, PyLong_AsUnsignedLongLong(args[6]));
    set_word(frame, 2, PyLong_AsUnsignedLongLong(args[7]));
    set_word(frame, 3, PyLong_AsUnsignedLongLong(args[8]));
    if (args[9] != Py_None)
        set_word(frame, 4, PyLong_AsUnsignedLongLong(args[9]));
    Py_ssize_t reply_len = PyLong_AsSsize_t(args[10]);
    uint64_t head = PyLong_AsUnsignedLongLong(args[11]);
    uint64_t rid = word(frame, 1);
    uint64_t value_mask = PyLong_AsUnsignedLongLong(args[12]);
    if (PyErr_Occurred())
        return NULL;
    int reading = attr_true(mem, s_reading);
    if (reading != 0) {
        if (reading > 0)
            PyErr_SetString(busy_error, "two threads read the link socket at once; hold the "
                            "machine lock around link calls");
        return NULL;
    }
    uint64_t start, end;
    if (attr_u64(mem, s_start, &start) < 0 || attr_u64(mem, s_end, &end) < 0)
        return NULL;
    if (start != end) {
        PyErr_SetString(PyExc_AssertionError, "request() with bytes buffered");
        return NULL;
    }
    if (end && rebase(mem, end) < 0)
        return NULL;
    Py_buffer buf;
    if (PyObject_GetBuffer(args[4], &buf, PyBUF_WRITABLE) < 0)
        return NULL;
    PyObject *ret = NULL;
    if (buf.len < 64) {
        PyErr_SetString(PyExc_ValueError, "receive buffer too small");
        goto out;
    }
    if (PyObject_SetAttr(mem, s_reading, Py_True) < 0)
        goto out;
    /*
     * Disarm, send, receive and (on the expected reply) re-arm in one
     * stretch without the GIL; a signal (EINTR) resumes where it stopped.
     */
    control_buf control;
    struct iovec iov;
    struct msghdr msg;
    enum { DISARM, SEND, RECEIVE, RECEIVED } phase = ep_fd >= 0 ? DISARM : SEND;
    Py_ssize_t sent = 0;
    ssize_t n = 0;
    int err = 0, matched = 0;
    uint64_t value = 0, result = 0;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        if (phase == DISARM) {
            epoll_events(ep_fd, sock_fd, 0);
            phase = SEND;
        }
        while (phase == SEND) {
            ssize_t k = send(sock_fd, frame + sent, (size_t)(frame_len - sent), MSG_NOSIGNAL);
            if (k < 0) {
                err = errno;
                break;
            }
            sent += k;
            if (sent == frame_len)
                phase = RECEIVE;
        }
        if (phase == RECEIVE) {
            n = recv_core(sock_fd, buf.buf, buf.len, fd_passing, 0, &msg, &iov, &control);
            if (n < 0) {
                err = errno;
            } else {
                phase = RECEIVED;
                matched = n == reply_len && !(fd_passing && has_ancillary(&msg))
                          && plain_reply(buf.buf, reply_len, head, rid, value_mask, &value,
                                         &result);
                if (matched && ep_fd >= 0)
                    epoll_events(ep_fd, sock_fd, EPOLLIN);
            }
        }
        Py_END_ALLOW_THREADS
        if (phase == RECEIVED)
            break;
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0)
                goto unguard;
            err = 0;
            continue;
        }
        if (phase == RECEIVE && (err == EAGAIN || err == EWOULDBLOCK)) {
            n = 0;  /* the receive timed out (SO_RCVTIMEO): the caller's wait goes on */
            break;
        }
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        goto unguard;
    }
    if (phase == RECEIVED && n == 0) {
        ret = PyLong_FromLong(-1);
        goto unguard;
    }
    if (matched) {
        /* consumed whole: the buffer stays empty, the stream moved on */
        if (add_to_attr(mem, s_base, n) < 0)
            goto unguard;
        ret = Py_BuildValue("(KK)", (unsigned long long)value, (unsigned long long)result);
        goto unguard;
    }
    if (n > 0 && fd_passing && has_ancillary(&msg)) {
        ret = ancillary_result(&msg, n);
        goto unguard;
    }
    PyObject *count = PyLong_FromSsize_t(n);
    if (count != NULL && PyObject_SetAttr(mem, s_end, count) < 0)
        Py_CLEAR(count);
    ret = count;
unguard:
    {
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        if (PyObject_SetAttr(mem, s_reading, Py_False) < 0) {
            Py_CLEAR(ret);
            Py_XDECREF(exc_type);
            Py_XDECREF(exc_value);
            Py_XDECREF(exc_tb);
        } else {
            PyErr_Restore(exc_type, exc_value, exc_tb);
        }
    }
out:
    PyBuffer_Release(&buf);
    return ret;
}

/* -- the server thread's fast loop ----------------------------------------- */


enum {
    SERVE_SLOW = 1,      /* lock not held: run the Python body from the top */
    SERVE_LOCKED = 2,    /* lock held, nothing received: run the body under the lock */
    SERVE_BYTES = 3,     /* lock held, (3, n): n bytes at buf[0], no fds */
    SERVE_ANCILLARY = 4, /* lock held, (4, n, [n, ancillary, flags]) as request() gives it */
    SERVE_EOF = 5,       /* lock held, the peer closed the connection */
};

typedef struct {
    PyObject *session, *mem, *exporter, *address_space, *counters;
    /*
     * The exporter's hot flat range as last seen, with its constants: a
     * strong reference, so that its identity cannot be reused, held no
     * longer than exporter._hot holds it plus one access (HostMemory.close
     * copes with views still exported, as it must for exporter._hot).
     */
    PyObject *fr;
    uint64_t fr_start, fr_end, fr_delta;
    int fr_fd;
    uint64_t exp_base, exp_size;
    int exp_readonly, fd_passing_negotiated;
    uint64_t read_head, write_head, rr_head, wr_head;
} serve_ctx;

/*
 * Serve the access in buf[0:n] from the exporter's hot RAM range and send
 * the reply, as Exporter.serve_read / serve_write's hot path and
 * Session._serve_read / _serve_write do. Returns 1 if done, 0 if Python
 * must serve it, -1 with an exception (the link fails).
 */
static int
serve_hot(serve_ctx *c, int sock_fd, const unsigned char *p, Py_ssize_t n)
{
    plain_access_t acc;
    if (!plain_access(p, n, c->read_head, c->write_head, &acc))
        return 0;
    int is_write = acc.is_write;
    uint64_t rid = acc.rid, addr = acc.addr, size = acc.size, value = acc.value;
    int want = acc.want && c->fd_passing_negotiated;
    /* Exporter hot path: in the window, writable if a write, the hot range current. */
    if (c->exporter == Py_None || addr > c->exp_size || size > c->exp_size - addr
        || (is_write && c->exp_readonly))
        return 0;
    uint64_t a = c->exp_base + addr;
    if (a < addr || a > UINT64_MAX - size)
        return 0;
    int result = 0;
    PyObject *fr = PyObject_GetAttr(c->exporter, s_hot);
    if (fr == NULL)
        return -1;
    if (fr == Py_None) {
        Py_DECREF(fr);
        return 0;
    }
    PyObject *hot_view = PyObject_GetAttr(c->exporter, s_hot_view);
    PyObject *view = hot_view ? PyObject_GetAttr(c->address_space, s_flatview) : NULL;
    PyObject *host = NULL;
    uint64_t start, end, delta;
    if (view == NULL)
        goto fail;
    if (view != hot_view)
        goto out;  /* the map changed since: Python looks the range up again */
    if (fr != c->fr) {
        /* another range: read its constants once */
        uint64_t d;
        if (attr_u64(fr, s_start, &start) < 0)
            goto fail;
        if (attr_u64(fr, s_end, &end) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                goto fail;
            PyErr_Clear();  /* the range ends at 2**64 */
            end = UINT64_MAX;
        }
        PyObject *dobj = PyObject_GetAttr(fr, s_host_delta);
        if (dobj == NULL)
            goto fail;
        long long sdelta = PyLong_AsLongLong(dobj);
        Py_DECREF(dobj);
        if (sdelta == -1 && PyErr_Occurred())
            goto fail;
        d = (uint64_t)sdelta;
        int hot_fd = attr_true(c->exporter, s_hot_fd);
        if (hot_fd < 0)
            goto fail;
        Py_INCREF(fr);
        Py_XSETREF(c->fr, fr);
        c->fr_start = start;
        c->fr_end = end;
        c->fr_delta = d;
        c->fr_fd = hot_fd;
    }
    start = c->fr_start;
    end = c->fr_end;
    delta = c->fr_delta;
    /* a + size <= end; a range ending at 2**64 holds a + size <= 2**64 - 1 */
    if (!(start <= a && a + size <= end))
        goto out;
    if (want && c->fr_fd)
        goto out;  /* the reply shares the RAM: Python sends the fd */
    host = PyObject_GetAttr(fr, is_write ? s_write_view : s_read_view);
    if (host == NULL)
        goto fail;
    if (host == Py_None)
        goto out;  /* revoke_direct dropped the host view */
    {
        Py_buffer hb;
        if (PyObject_GetBuffer(host, &hb, is_write ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) {
            /* e.g. a released view: the Python path answers (MEMTX_ERROR) and logs */
            PyErr_Clear();
            goto out;
        }
        uint64_t o = a + delta;
        if (o > (uint64_t)hb.len || size > (uint64_t)hb.len - o) {
            PyBuffer_Release(&hb);
            goto out;
        }
        unsigned char *h = (unsigned char *)hb.buf + o;
        if (is_write) {
            for (uint64_t i = 0; i < size; i++)
                h[i] = (unsigned char)(value >> (8 * i));
        } else {
            for (uint64_t i = 0; i < size; i++)
                value |= (uint64_t)h[i] << (8 * i);
        }
        PyBuffer_Release(&hb);
    }
    if (add_to_attr(c->counters, s_served_requests, 1) < 0)
        goto fail;
    {
        unsigned char reply[64];
        memset(reply, 0, sizeof reply);
        set_word(reply, 0, is_write ? c->wr_head : c->rr_head);
        set_word(reply, 1, rid);
        if (!is_write)
            set_word(reply, 3, value);
        int rc = send_all(sock_fd, reply, is_write ? WRITE_REPLY_LEN : READ_REPLY_LEN);
        if (rc < 0) {
            if (rc == -1)
                PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
    }
    result = 1;
    goto out;
fail:
    result = -1;
out:
    Py_DECREF(fr);
    Py_XDECREF(hot_view);
    Py_XDECREF(view);
    Py_XDECREF(host);
    return result;
}

/*
 * Whether the session has nothing for the server thread but the socket.
 * Deferred requests, a queue level to report and unmapped windows to reap
 * all come with a kick (Session.kick): the wake pipe's event sends the
 * loop back to Python, so only two things are checked here: that the link
 * is open (teardown closes the socket) and that the buffer is empty.
 */
static int
quiet(serve_ctx *c)
{
    int t;
    if ((t = attr_true(c->session, s_closed)) != 0)
        return t < 0 ? -1 : 0;
    uint64_t start, end;
    if (attr_u64(c->mem, s_start, &start) < 0 || attr_u64(c->mem, s_end, &end) < 0)
        return -1;
    if (start != end)
        return 0;  /* part of a frame is buffered: Python appends to it */
    if (end && rebase(c->mem, end) < 0)
        return -1;
    return 1;
}

/* Release the machine lock (release: its bound method); -1 with an exception. */
static int
release_lock(PyObject *release)
{
    PyObject *r = PyObject_CallNoArgs(release);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/*
 * serve(ep_fd, sock_fd, fd_passing, buf, acquire, release, session, mem,
 *       exporter, address_space, counters, exp_base, exp_size,
 *       exp_readonly, fd_passing_negotiated, read_head, write_head,
 *       rr_head, wr_head)
 *
 * The server thread's loop while nothing but plain accesses come: sleep in
 * epoll without the GIL, take the machine lock without blocking, receive
 * one request, and serve it from the exporter's hot RAM range. Returns
 * when Python must act, saying whether it holds the lock (SERVE_*). On an
 * exception the lock is not held.
 */
static PyObject *
hot_serve(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 19 || !configured) {
        PyErr_SetString(PyExc_TypeError, "serve() takes 19 arguments, after configure()");
        return NULL;
    }
    int ep_fd = _PyLong_AsInt(args[0]);
    int sock_fd = _PyLong_AsInt(args[1]);
    int fd_passing = PyObject_IsTrue(args[2]);
    PyObject *acquire = args[4], *release = args[5];
    serve_ctx c;
    c.session = args[6];
    c.mem = args[7];
    c.exporter = args[8];
    c.address_space = args[9];
    c.counters = args[10];
    c.exp_base = PyLong_AsUnsignedLongLong(args[11]);
    c.exp_size = PyLong_AsUnsignedLongLong(args[12]);
    c.exp_readonly = PyObject_IsTrue(args[13]);
    c.fd_passing_negotiated = PyObject_IsTrue(args[14]);
    c.read_head = PyLong_AsUnsignedLongLong(args[15]);
    c.write_head = PyLong_AsUnsignedLongLong(args[16]);
    c.rr_head = PyLong_AsUnsignedLongLong(args[17]);
    c.wr_head = PyLong_AsUnsignedLongLong(args[18]);
    c.fr = NULL;
    c.fr_start = c.fr_end = c.fr_delta = 0;
    c.fr_fd = 0;
    if (PyErr_Occurred())
        return NULL;
    Py_buffer buf;
    if (PyObject_GetBuffer(args[3], &buf, PyBUF_WRITABLE) < 0)
        return NULL;
    PyObject *ret = NULL;
    if (buf.len < READ_REPLY_LEN) {
        PyErr_SetString(PyExc_ValueError, "receive buffer too small");
        goto done;
    }
    for (;;) {
        struct epoll_event evs[4];
        int ne;
        Py_BEGIN_ALLOW_THREADS
        ne = epoll_wait(ep_fd, evs, 4, -1);
        Py_END_ALLOW_THREADS
        if (ne < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    goto done;
                continue;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
        if (ne != 1 || evs[0].data.fd != sock_fd) {
            ret = PyLong_FromLong(SERVE_SLOW);
            goto done;
        }
        PyObject *got = PyObject_CallOneArg(acquire, Py_False);
        if (got == NULL)
            goto done;
        int locked = PyObject_IsTrue(got);
        Py_DECREF(got);
        if (locked < 0)
            goto done;
        if (!locked) {
            ret = PyLong_FromLong(SERVE_SLOW);
            goto done;
        }
        /* From here the lock is held: release it before raising. */
        int q = quiet(&c);
        if (q <= 0) {
            if (q == 0)
                ret = PyLong_FromLong(SERVE_LOCKED);
            goto locked_exit;
        }
        PyObject *anc;
        int eof;
        Py_ssize_t n = receive(sock_fd, buf.buf, buf.len, fd_passing, MSG_DONTWAIT, &anc, &eof);
        if (n < 0)
            goto locked_exit;
        if (eof) {
            ret = PyLong_FromLong(SERVE_EOF);
            goto done;
        }
        if (anc != NULL) {
            ret = Py_BuildValue("(inN)", SERVE_ANCILLARY, n, anc);
            goto locked_exit;
        }
        if (n == 0) {  /* nothing after all (another reader took it): sleep again */
            if (release_lock(release) < 0)
                goto done;
            continue;
        }
        int served = serve_hot(&c, sock_fd, buf.buf, n);
        if (served < 0)
            goto locked_exit;
        if (!served) {
            ret = Py_BuildValue("(in)", SERVE_BYTES, n);
            goto locked_exit;
        }
        /* The bytes were one whole frame, consumed: the stream moved on. */
        if (add_to_attr(c.mem, s_base, n) < 0)
            goto locked_exit;
        if (release_lock(release) < 0)
            goto done;
    }
locked_exit:
    /* Leaving with the lock held: Python goes on with it, unless this is an error. */
    if (ret == NULL) {
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        (void)release_lock(release);
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
done:
    Py_XDECREF(c.fr);
    PyBuffer_Release(&buf);
    return ret;
}

/*
 * configure(read_len, write_len, read_reply_len, write_reply_len, want_share_bit, tail_bad,
 *           busy_error)
 */
static PyObject *
hot_configure(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t r, w, rr, wr;
    unsigned long long want, bad;
    PyObject *busy;
    if (!PyArg_ParseTuple(args, "nnnnKKO", &r, &w, &rr, &wr, &want, &bad, &busy))
        return NULL;
    if (r != 32 || w != 40 || rr != 64 || wr != 56) {
        /* The word layouts below (match and pack) are written for these sizes. */
        PyErr_Format(PyExc_ValueError, "frame sizes %zd/%zd/%zd/%zd do not match the C hot "
                     "path (rebuild it with the codec)", r, w, rr, wr);
        return NULL;
    }
    READ_LEN = r;
    WRITE_LEN = w;
    READ_REPLY_LEN = rr;
    WRITE_REPLY_LEN = wr;
    WANT_SHARE_BIT = want;
    ACCESS_TAIL_BAD = bad;
    Py_XDECREF(busy_error);
    Py_INCREF(busy);
    busy_error = busy;
    configured = 1;
    Py_RETURN_NONE;
}

/* match_reply(frame, head, rid, value_mask): (value, result) or None; as plain_reply. */
static PyObject *
hot_match_reply(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer b;
    unsigned long long head, rid, mask;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*KKK", &b, &head, &rid, &mask))
        return NULL;
    uint64_t value, result;
    int ok = (b.len == READ_REPLY_LEN || b.len == WRITE_REPLY_LEN)
             && plain_reply(b.buf, b.len, head, rid, mask, &value, &result);
    PyBuffer_Release(&b);
    if (!ok)
        Py_RETURN_NONE;
    return Py_BuildValue("(KK)", (unsigned long long)value, (unsigned long long)result);
}

/*
 * match_access(frame, read_head, write_head): as codec.match_read
 * ((id, flags, addr, size, attrs)) or codec.match_write ((id, flags, addr,
 * value, size, attrs)), or None.
 */
static PyObject *
hot_match_access(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer b;
    unsigned long long rh, wh;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*KK", &b, &rh, &wh))
        return NULL;
    plain_access_t a;
    int ok = b.len >= 8 && plain_access(b.buf, b.len, rh, wh, &a);
    PyBuffer_Release(&b);
    if (!ok)
        Py_RETURN_NONE;
    int flags = a.want ? 1 : 0;
    if (a.is_write)
        return Py_BuildValue("(KiKKKK)", (unsigned long long)a.rid, flags,
                             (unsigned long long)a.addr, (unsigned long long)a.value,
                             (unsigned long long)a.size, (unsigned long long)a.attrs);
    return Py_BuildValue("(KiKKK)", (unsigned long long)a.rid, flags, (unsigned long long)a.addr,
                         (unsigned long long)a.size, (unsigned long long)a.attrs);
}

static PyMethodDef hotpath_methods[] = {
    {"configure", hot_configure, METH_VARARGS,
     "configure(read_len, write_len, read_reply_len, write_reply_len, want_share_bit, "
     "tail_bad, busy_error)\nSet the wire constants (from codec.py) and the error for two "
     "readers, before any other call."},
    {"match_reply", hot_match_reply, METH_VARARGS,
     "match_reply(frame, head, rid, value_mask): the request() matcher, for tests."},
    {"match_access", hot_match_access, METH_VARARGS,
     "match_access(frame, read_head, write_head): the serve() matcher, for tests."},
    {"request", (PyCFunction)(void (*)(void))hot_request, METH_FASTCALL,
     "request(mem, sock_fd, ep_fd, fd_passing, buf, w0, rid, addr, w3, w4, reply_len,\n"
     "        reply_head, value_mask)\n"
     "The requester's fast path: send one request and receive its plain reply."},
    {"serve", (PyCFunction)(void (*)(void))hot_serve, METH_FASTCALL,
     "serve(ep_fd, sock_fd, fd_passing, buf, acquire, release, session, mem, exporter,\n"
     "      address_space, counters, exp_base, exp_size, exp_readonly,\n"
     "      fd_passing_negotiated, read_head, write_head, rr_head, wr_head)\n"
     "The server thread's fast loop; returns SERVE_* when Python must act."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT,
    "memexpose.link._hotpath",
    "The forwarded-access hot path of the link, in C (see session.py).",
    -1,
    hotpath_methods,
    NULL, NULL, NULL, NULL,
};

#define INTERN(var, text)                          \
    do {                                           \
        if ((var = PyUnicode_InternFromString(text)) == NULL) \
            return NULL;                           \
    } while (0)

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    INTERN(s_closed, "_closed");
    INTERN(s_start, "start");
    INTERN(s_end, "end");
    INTERN(s_base, "base");
    INTERN(s_hot, "_hot");
    INTERN(s_hot_view, "_hot_view");
    INTERN(s_hot_fd, "_hot_fd");
    INTERN(s_flatview, "_flatview");
    INTERN(s_read_view, "read_view");
    INTERN(s_write_view, "write_view");
    INTERN(s_host_delta, "host_delta");
    INTERN(s_served_requests, "served_requests");
    INTERN(s_reading, "_reading");
    PyObject *m = PyModule_Create(&hotpath_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "SERVE_SLOW", SERVE_SLOW) < 0
        || PyModule_AddIntConstant(m, "SERVE_LOCKED", SERVE_LOCKED) < 0
        || PyModule_AddIntConstant(m, "SERVE_BYTES", SERVE_BYTES) < 0
        || PyModule_AddIntConstant(m, "SERVE_ANCILLARY", SERVE_ANCILLARY) < 0
        || PyModule_AddIntConstant(m, "SERVE_EOF", SERVE_EOF) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
