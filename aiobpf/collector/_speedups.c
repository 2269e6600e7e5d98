/* The collector's hottest loops, compiled: aiobpf.collector.speedups holds their
 * Python reference (the same semantics, used when this module is not built, and the
 * oracle of the differential tests).
 *
 * None of them reads the target or makes a system call: every byte they decode comes
 * from a buffer RemoteMemory filled (read_packed's, or a page walk_links asked its
 * page_of for), and every position in it is checked against the buffer's length
 * before it is read.  What the target wrote there is hostile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Bumped with every change of what a function takes or returns; speedups.py checks it. */
#define SPEEDUPS_ABI 4
#ifndef SPEEDUPS_SOURCE
#define SPEEDUPS_SOURCE ""   /* setup.py defines it: the SHA-256 of this file */
#endif

static PyObject *str_seen, *str_frames, *str_errors, *str_awaited, *str_state;
static PyObject *str_suspended, *str_loops, *str_child;

static uint64_t
load_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;   /* x86-64 and the targets aiobpf reads are little-endian */
}

static int32_t
load_i32(const unsigned char *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* A Python int as a u64: 1 (the value in *v), or 0 with no error set when it is not
 * one.  Addresses fit a signed long long, whose conversion walks the int's digits;
 * PyLong_AsUnsignedLongLong goes through a byte array for any int above 2**30. */
static int
u64_of(PyObject *o, uint64_t *v)
{
    int overflow;
    long long s = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (s == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (!overflow) {
        *v = (uint64_t)s;
        return s >= 0;
    }
    if (overflow < 0)
        return 0;
    *v = PyLong_AsUnsignedLongLong(o);   /* 2**63 and up */
    if (*v == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* An address from a Python int; 0 when it is not a u64 (it can be no valid address
 * then either). */
static uint64_t
as_u64(PyObject *o)
{
    uint64_t v;
    return u64_of(o, &v) ? v : 0;
}

/* -- plan_runs ------------------------------------------------------------------ */

/* Append a new reference (NULL: the error of making it) to list, and drop it. */
static int
append_new(PyObject *list, PyObject *item)
{
    if (item == NULL)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

PyDoc_STRVAR(plan_runs_doc,
"plan_runs(addrs, size, run, max_addr) -> (offsets, iov, starts, firsts)\n\n"
"RemoteMemory.read_packed's plan: see speedups.plan_runs_py.");

typedef struct {
    uint64_t start, end;
    Py_ssize_t first;
} Run;

/* The plan as Python objects: (offsets, iov, starts, firsts) from the runs found. */
static PyObject *
plan_objects(PyObject *offsets, const Run *runs, Py_ssize_t nruns, Py_ssize_t naddrs)
{
    PyObject *iov = PyByteArray_FromStringAndSize(NULL, 16 * nruns);
    PyObject *starts = PyList_New(nruns + 1);
    PyObject *firsts = PyList_New(nruns + 1);
    if (iov == NULL || starts == NULL || firsts == NULL)
        goto fail;
    uint64_t *pairs = (uint64_t *)PyByteArray_AS_STRING(iov);
    uint64_t pos = 0;
    for (Py_ssize_t r = 0; r <= nruns; r++) {
        PyObject *at = PyLong_FromUnsignedLongLong(pos);
        PyObject *first = PyLong_FromSsize_t(r < nruns ? runs[r].first : naddrs);
        if (at == NULL || first == NULL) {
            Py_XDECREF(at);
            Py_XDECREF(first);
            goto fail;
        }
        PyList_SET_ITEM(starts, r, at);
        PyList_SET_ITEM(firsts, r, first);
        if (r < nruns) {
            uint64_t length = runs[r].end - runs[r].start;
            memcpy(pairs + 2 * r, &runs[r].start, 8);
            memcpy(pairs + 2 * r + 1, &length, 8);
            pos += length;
        }
    }
    Py_INCREF(offsets);
    return Py_BuildValue("(NNNN)", offsets, iov, starts, firsts);
fail:
    Py_XDECREF(iov);
    Py_XDECREF(starts);
    Py_XDECREF(firsts);
    return NULL;
}

static PyObject *
plan_runs(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *addrs_in, *addrs = NULL, *offsets = NULL, *result = NULL;
    unsigned long long size, run, max_addr;
    Run *runs = NULL;
    if (!PyArg_ParseTuple(args, "OKKK", &addrs_in, &size, &run, &max_addr))
        return NULL;
    if (size > max_addr)
        return PyErr_Format(PyExc_ValueError, "size %llu too large", size);
    addrs = PySequence_Fast(addrs_in, "addrs must be a sequence");
    if (addrs == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(addrs);
    PyObject **items = PySequence_Fast_ITEMS(addrs);
    offsets = PyList_New(n);
    runs = PyMem_Malloc(sizeof(Run) * (n ? n : 1));   /* at most one run per address */
    if (offsets == NULL || runs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t nruns = 0;
    uint64_t pos = 0, highest = max_addr - size;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t addr = as_u64(items[i]);
        Run *open = nruns ? &runs[nruns - 1] : NULL;
        uint64_t limit = open ? (run > UINT64_MAX - open->start ? UINT64_MAX
                                                                 : open->start + run) : 0;
        int64_t at = -1;
        if (open && open->start <= addr && limit >= size && addr <= limit - size) {
            if (addr + size > open->end)
                open->end = addr + size;
            at = (int64_t)(pos + (addr - open->start));
        } else if (addr > 0 && addr <= highest) {
            if (open)   /* the run before ends */
                pos += open->end - open->start;
            runs[nruns++] = (Run){addr, addr + size, i};
            at = (int64_t)pos;
        }
        PyObject *o = PyLong_FromLongLong(at);
        if (o == NULL)
            goto done;
        PyList_SET_ITEM(offsets, i, o);
    }
    result = plan_objects(offsets, runs, nruns, n);
done:
    PyMem_Free(runs);
    Py_XDECREF(addrs);
    Py_XDECREF(offsets);
    return result;
}

/* -- known_level ---------------------------------------------------------------- */

/* Where a generator's fields are, from the layout (speedups.LevelLayout, as a tuple). */
typedef struct {
    Py_ssize_t o_type;
    Py_ssize_t sig_off[4];
    int sig_byte[4];         /* 1: a signed char (the frame state), 0: a u64 */
    Py_ssize_t sp_at;        /* the frame's stack pointer (3.14+), or -1 */
    Py_ssize_t stacktop_at;  /* the frame's stack top, an int (3.11-3.13), or -1 */
    Py_ssize_t locals_at;    /* the first slot of the frame's locals */
    unsigned long long back; /* bytes below the stack pointer of what it awaits */
    Py_ssize_t yf_depth;
    Py_ssize_t span;         /* bytes read of each object */
    long long tag;           /* a tagged int's low bits (3.14+), or -1 */
    unsigned long long clear;/* the mask that makes a stack ref a pointer */
} LevelLayout;

static int
parse_layout(PyObject *t, LevelLayout *L)
{
    return PyArg_ParseTuple(t, "n(nininini)nnnKnnLK;layout", &L->o_type,
                            &L->sig_off[0], &L->sig_byte[0], &L->sig_off[1], &L->sig_byte[1],
                            &L->sig_off[2], &L->sig_byte[2], &L->sig_off[3], &L->sig_byte[3],
                            &L->sp_at, &L->stacktop_at, &L->locals_at, &L->back,
                            &L->yf_depth, &L->span, &L->tag, &L->clear);
}

/* A level's arguments: the layout parsed and checked, and three sequences of one
 * length (offsets, objects, and the chains: ``what``).  0 with an exception set. */
static int
level_args(PyObject *layout, LevelLayout *L, PyObject *offsets_in, PyObject *objs_in,
           PyObject *chains_in, const char *what, PyObject **offsets, PyObject **objs,
           PyObject **chains, Py_ssize_t *n)
{
    if (!parse_layout(layout, L))
        return 0;
    if (L->span < 8 || L->o_type < 0 || L->locals_at < 0) {
        PyErr_SetString(PyExc_ValueError, "layout out of range");
        return 0;
    }
    *offsets = PySequence_Fast(offsets_in, "offsets must be a sequence");
    *objs = *offsets ? PySequence_Fast(objs_in, "objs must be a sequence") : NULL;
    *chains = *objs ? PySequence_Fast(chains_in, "chains must be a sequence") : NULL;
    if (*chains == NULL)
        return 0;
    *n = PySequence_Fast_GET_SIZE(*chains);
    if (PySequence_Fast_GET_SIZE(*objs) != *n || PySequence_Fast_GET_SIZE(*offsets) != *n) {
        PyErr_Format(PyExc_ValueError, "offsets, objs and %s differ in length", what);
        return 0;
    }
    return 1;
}

/* The signature fields of the object at buf[off:] (a signed byte sign-extended); 0 when
 * they do not fit the buffer. */
static int
signature_fields(const LevelLayout *L, const unsigned char *buf, Py_ssize_t len,
                 Py_ssize_t off, uint64_t fields[4])
{
    for (int k = 0; k < 4; k++) {
        Py_ssize_t at = off + L->sig_off[k];
        if (L->sig_off[k] < 0 || at + (L->sig_byte[k] ? 1 : 8) > len)
            return 0;
        fields[k] = L->sig_byte[k] ? (uint64_t)(int64_t)(signed char)buf[at]
                                   : load_u64(buf + at);
    }
    return 1;
}

/* The signature tuple, as field_reader makes it (the key of awaiting_at). */
static PyObject *
signature_tuple(const LevelLayout *L, const uint64_t fields[4])
{
    PyObject *sig = PyTuple_New(4);
    if (sig == NULL)
        return NULL;
    for (int k = 0; k < 4; k++) {
        PyObject *v = L->sig_byte[k] ? PyLong_FromLongLong((int64_t)fields[k])
                                     : PyLong_FromUnsignedLongLong(fields[k]);
        if (v == NULL) {
            Py_DECREF(sig);
            return NULL;
        }
        PyTuple_SET_ITEM(sig, k, v);
    }
    return sig;
}

/* What one call has looked up already: neighbours in a level are mostly alike (tasks
 * parked at the same place), and awaiting_at and ends do not change during a call. */
typedef struct {
    int have_sig;
    uint64_t sig[4];
    PyObject *frame;     /* a new reference, or NULL: not in awaiting_at */
    int have_type;
    uint64_t type;
    int type_ends;
} Memo;

/* The frame awaiting_at holds for these fields (borrowed from the memo), or NULL (-1 on
 * an error). */
static int
known_frame(const LevelLayout *L, PyObject *awaiting_at, Memo *memo, const uint64_t f[4],
            PyObject **frame)
{
    if (!memo->have_sig || memcmp(memo->sig, f, sizeof memo->sig) != 0) {
        PyObject *sig = signature_tuple(L, f);
        if (sig == NULL)
            return -1;
        PyObject *found = PyDict_GetItemWithError(awaiting_at, sig);
        Py_DECREF(sig);
        if (found == NULL && PyErr_Occurred())
            return -1;
        Py_XINCREF(found);
        Py_XSETREF(memo->frame, found);
        memcpy(memo->sig, f, sizeof memo->sig);
        memo->have_sig = 1;
    }
    *frame = memo->frame;
    return 0;
}

/* Whether ``type`` is in the set ``types`` (always the same one for one memo; -1 on an
 * error). */
static int
type_in(PyObject *types, Memo *memo, uint64_t type)
{
    if (!memo->have_type || memo->type != type) {
        PyObject *tp = PyLong_FromUnsignedLongLong(type);
        if (tp == NULL)
            return -1;
        int found = PySet_Contains(types, tp);
        Py_DECREF(tp);
        if (found < 0)
            return -1;
        memo->type_ends = found;
        memo->type = type;
        memo->have_type = 1;
    }
    return memo->type_ends;
}

enum { DEFER = 0, END = 1, NEXT = 2 };

/* What a generator awaiting in a known state awaits, from its bytes at buf[off:]:
 * NEXT (*next set, 0: nothing), or DEFER when that is on the stack beyond the bytes
 * read (the caller reads it: *slot is its address when that is known, else 0). */
static int
stack_object(const LevelLayout *L, const unsigned char *buf, Py_ssize_t len,
             Py_ssize_t off, uint64_t obj, uint64_t *next, uint64_t *slot_at)
{
    *next = 0;
    *slot_at = 0;
    if (L->sp_at >= 0) {
        if (off + L->sp_at + 8 > len)
            return DEFER;
        uint64_t sp = load_u64(buf + off + L->sp_at);
        if (sp < L->back)
            return NEXT;
        uint64_t slot = sp - L->back;
        /* slot < obj + locals_at, without overflow */
        if (slot < obj || slot - obj < (uint64_t)L->locals_at)
            return NEXT;
        uint64_t at = slot - obj;
        if (at > (uint64_t)L->span - 8 || off + (Py_ssize_t)at + 8 > len) {
            *slot_at = slot;
            return DEFER;
        }
        uint64_t bits = load_u64(buf + off + at);
        if (L->tag >= 0 && (long long)(bits & 3) == L->tag)
            return NEXT;
        *next = bits & L->clear;
        return NEXT;
    }
    if (L->stacktop_at < 0 || off + L->stacktop_at + 4 > len)
        return DEFER;
    int32_t top = load_i32(buf + off + L->stacktop_at);
    if (top < L->yf_depth || top > (1 << 20))
        return NEXT;
    Py_ssize_t at = L->locals_at + 8 * (Py_ssize_t)(top - L->yf_depth);
    if (at + 8 > L->span || off + at + 8 > len) {
        *slot_at = obj + (uint64_t)at;
        return DEFER;
    }
    *next = load_u64(buf + off + at);
    return NEXT;
}

static int
append_attr(PyObject *out, PyObject *name, PyObject *item)
{
    PyObject *list = PyObject_GetAttr(out, name);
    if (list == NULL)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(list);
    return rc;
}

PyDoc_STRVAR(known_level_doc,
"known_level(buf, offsets, objs, outs, awaiting_at, ends, layout)\n"
"    -> (next_outs, next_objs, deferred)\n\n"
"One level of await chains, for the objects decoded from what is known already:\n"
"see speedups.known_level_py.");

static PyObject *
known_level(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer view;
    PyObject *offsets_in, *objs_in, *outs_in, *awaiting_at, *ends, *layout;
    PyObject *offsets = NULL, *objs = NULL, *outs = NULL;
    PyObject *next_outs = NULL, *next_objs = NULL, *deferred = NULL;
    LevelLayout L;
    Memo memo = {0};
    if (!PyArg_ParseTuple(args, "y*OOOO!O!O!", &view, &offsets_in, &objs_in, &outs_in,
                          &PyDict_Type, &awaiting_at, &PySet_Type, &ends,
                          &PyTuple_Type, &layout))
        return NULL;
    Py_ssize_t n;
    if (!level_args(layout, &L, offsets_in, objs_in, outs_in, "outs", &offsets, &objs, &outs,
                    &n))
        goto fail;
    next_outs = PyList_New(0);
    next_objs = PyList_New(0);
    deferred = PyList_New(0);
    if (next_outs == NULL || next_objs == NULL || deferred == NULL)
        goto fail;
    const unsigned char *buf = view.buf;
    Py_ssize_t len = view.len;

    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *out = PySequence_Fast_GET_ITEM(outs, i);
        PyObject *obj_o = PySequence_Fast_GET_ITEM(objs, i);
        Py_ssize_t off = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(offsets, i));
        if (off == -1 && PyErr_Occurred())
            goto fail;
        uint64_t obj = 0;
        int is_u64 = u64_of(obj_o, &obj);
        int action = DEFER;
        uint64_t next = 0;
        PyObject *frame = NULL;   /* borrowed from the memo */
        if (is_u64 && off >= 0 && off <= len - L.span) {
            uint64_t fields[4];
            if (signature_fields(&L, buf, len, off, fields)
                    && known_frame(&L, awaiting_at, &memo, fields, &frame) < 0)
                goto fail;
            if (frame != NULL) {
                uint64_t slot;
                action = stack_object(&L, buf, len, off, obj, &next, &slot);
            } else if (off + L.o_type + 8 <= len) {
                int end = type_in(ends, &memo, load_u64(buf + off + L.o_type));
                if (end < 0)
                    goto fail;
                if (end)
                    action = END;
            }
        }
        if (action == DEFER) {
            if (append_new(deferred, PyLong_FromSsize_t(i)) < 0)
                goto fail;
            continue;
        }
        /* Decided: from here on ``out`` changes as Frames._level would change it. */
        PyObject *seen = PyObject_GetAttr(out, str_seen);
        if (seen == NULL)
            goto fail;
        int met = PySet_Contains(seen, obj_o);
        if (met == 0)
            met = PySet_Add(seen, obj_o) < 0 ? -1 : 0;
        Py_DECREF(seen);
        if (met < 0)
            goto fail;
        if (met) {
            if (append_attr(out, str_errors, str_loops) < 0)
                goto fail;
            continue;
        }
        if (action == END) {
            if (PyObject_SetAttr(out, str_awaited, obj_o) < 0)
                goto fail;
            continue;
        }
        if (append_attr(out, str_frames, frame) < 0
                || PyObject_SetAttr(out, str_state, str_suspended) < 0)
            goto fail;
        if (next && (append_new(next_objs, PyLong_FromUnsignedLongLong(next)) < 0
                     || PyList_Append(next_outs, out) < 0))
            goto fail;
    }
    PyBuffer_Release(&view);
    Py_XDECREF(memo.frame);
    Py_DECREF(offsets);
    Py_DECREF(objs);
    Py_DECREF(outs);
    return Py_BuildValue("(NNN)", next_outs, next_objs, deferred);
fail:
    PyBuffer_Release(&view);
    Py_XDECREF(memo.frame);
    Py_XDECREF(offsets);
    Py_XDECREF(objs);
    Py_XDECREF(outs);
    Py_XDECREF(next_outs);
    Py_XDECREF(next_objs);
    Py_XDECREF(deferred);
    return NULL;
}

/* -- stack_level ---------------------------------------------------------------- */

#define FAST_DEPTH 32   /* speedups.FAST_DEPTH */

/* stacks.child(parent, frame): a node >= 0, -2 when the tree is full (None), -1 on an
 * error.  The last answer is kept: chains side by side mostly take the same steps. */
typedef struct {
    PyObject *stacks;
    long long parent;
    PyObject *frame;   /* borrowed: held by awaiting_at's memo for the call */
    long long node;
} Child;

static long long
child_of(Child *c, long long parent, PyObject *frame)
{
    if (c->frame == frame && c->parent == parent && c->node >= 0)
        return c->node;
    PyObject *parent_o = PyLong_FromLongLong(parent);
    if (parent_o == NULL)
        return -1;
    PyObject *got = PyObject_CallMethodObjArgs(c->stacks, str_child, parent_o, frame, NULL);
    Py_DECREF(parent_o);
    if (got == NULL)
        return -1;
    long long node = -2;
    if (got != Py_None) {
        node = PyLong_AsLongLong(got);
        if (node == -1 && PyErr_Occurred()) {
            Py_DECREF(got);
            return -1;
        }
        if (node < 0) {
            Py_DECREF(got);
            PyErr_SetString(PyExc_ValueError, "stacks.child gave a negative node");
            return -1;
        }
        c->parent = parent;
        c->frame = frame;
        c->node = node;
    }
    Py_DECREF(got);
    return node;
}

PyDoc_STRVAR(stack_level_doc,
"stack_level(buf, offsets, objs, chains, nodes, visited, depth, awaiting_at, ends,\n"
"            layout, stacks) -> (going, next_objs, beyond, slots, left)\n\n"
"One level of chains kept as shared stacks: see speedups.stack_level_py.");

static PyObject *
stack_level(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer view, nodes_view, visited_view;
    PyObject *offsets_in, *objs_in, *chains_in, *awaiting_at, *ends, *layout, *stacks;
    PyObject *offsets = NULL, *objs = NULL, *chains = NULL;
    PyObject *going = NULL, *next_objs = NULL, *beyond = NULL, *slots = NULL, *left = NULL;
    Py_ssize_t depth;
    LevelLayout L;
    Memo memo = {0};
    if (!PyArg_ParseTuple(args, "y*OOOw*w*nO!O!O!O", &view, &offsets_in, &objs_in, &chains_in,
                          &nodes_view, &visited_view, &depth, &PyDict_Type, &awaiting_at,
                          &PySet_Type, &ends, &PyTuple_Type, &layout, &stacks))
        return NULL;
    Child child = {stacks, -1, NULL, -1};
    Py_ssize_t n;
    if (nodes_view.itemsize != 8 || visited_view.itemsize != 8
            || nodes_view.len % 8 || visited_view.len % 8) {
        PyErr_SetString(PyExc_TypeError, "nodes and visited must be arrays of 8-byte items");
        goto fail;
    }
    if (!level_args(layout, &L, offsets_in, objs_in, chains_in, "chains", &offsets, &objs,
                    &chains, &n))
        goto fail;
    going = PyList_New(0);
    next_objs = PyList_New(0);
    beyond = PyList_New(0);
    slots = PyList_New(0);
    left = PyList_New(0);
    if (going == NULL || next_objs == NULL || beyond == NULL || slots == NULL || left == NULL)
        goto fail;
    const unsigned char *buf = view.buf;
    Py_ssize_t len = view.len;
    int64_t *nodes = nodes_view.buf;
    uint64_t *visited = visited_view.buf;
    Py_ssize_t nnodes = nodes_view.len / 8, nvisited = visited_view.len / 8;

    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *chain_o = PySequence_Fast_GET_ITEM(chains, k);
        Py_ssize_t i = PyLong_AsSsize_t(chain_o);
        Py_ssize_t off = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(offsets, k));
        if ((i == -1 || off == -1) && PyErr_Occurred())
            goto fail;
        if (i < 0 || i >= nnodes || i > (nvisited - FAST_DEPTH) / FAST_DEPTH) {
            PyErr_SetString(PyExc_IndexError, "chain index out of range");
            goto fail;
        }
        uint64_t obj = 0;
        int is_u64 = u64_of(PySequence_Fast_GET_ITEM(objs, k), &obj);
        uint64_t *row = visited + i * FAST_DEPTH;
        int leave = depth < 0 || depth >= FAST_DEPTH || !is_u64 || off < 0 || off > len - L.span;
        for (Py_ssize_t d = 0; !leave && d < depth; d++)
            leave = row[d] == obj;
        PyObject *frame = NULL;   /* borrowed from the memo */
        uint64_t next = 0;
        if (!leave) {
            uint64_t fields[4];
            if (!signature_fields(&L, buf, len, off, fields))
                leave = 1;
            else if (known_frame(&L, awaiting_at, &memo, fields, &frame) < 0)
                goto fail;
        }
        if (!leave && frame == NULL) {
            int end = off + L.o_type + 8 <= len
                      ? type_in(ends, &memo, load_u64(buf + off + L.o_type)) : 0;
            if (end < 0)
                goto fail;
            if (end)
                continue;   /* it ends the chain: what the task awaits */
            leave = 1;
        }
        uint64_t slot = 0;
        if (!leave && stack_object(&L, buf, len, off, obj, &next, &slot) == DEFER && !slot)
            leave = 1;
        long long node = -2;
        if (!leave) {
            node = child_of(&child, nodes[i], frame);
            if (node == -1)
                goto fail;
            leave = node < 0;
        }
        if (leave) {
            if (PyList_Append(left, chain_o) < 0)
                goto fail;
            continue;
        }
        nodes[i] = node;
        row[depth] = obj;
        if (slot && (PyList_Append(beyond, chain_o) < 0
                     || append_new(slots, PyLong_FromUnsignedLongLong(slot)) < 0))
            goto fail;
        if (next && (PyList_Append(going, chain_o) < 0
                     || append_new(next_objs, PyLong_FromUnsignedLongLong(next)) < 0))
            goto fail;
    }
    PyBuffer_Release(&view);
    PyBuffer_Release(&nodes_view);
    PyBuffer_Release(&visited_view);
    Py_XDECREF(memo.frame);
    Py_DECREF(offsets);
    Py_DECREF(objs);
    Py_DECREF(chains);
    return Py_BuildValue("(NNNNN)", going, next_objs, beyond, slots, left);
fail:
    PyBuffer_Release(&view);
    PyBuffer_Release(&nodes_view);
    PyBuffer_Release(&visited_view);
    Py_XDECREF(memo.frame);
    Py_XDECREF(offsets);
    Py_XDECREF(objs);
    Py_XDECREF(chains);
    Py_XDECREF(going);
    Py_XDECREF(next_objs);
    Py_XDECREF(beyond);
    Py_XDECREF(slots);
    Py_XDECREF(left);
    return NULL;
}

/* -- task_heads ----------------------------------------------------------------- */

PyDoc_STRVAR(task_heads_doc,
"task_heads(buf, offsets, layout, pending) -> (simple, coros, awaited, others)\n\n"
"Sort a batch of 3.14+ tasks: see speedups.task_heads_py.");

static PyObject *
task_heads(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer view;
    PyObject *offsets_in, *layout, *offsets = NULL;
    PyObject *simple = NULL, *coros = NULL, *awaited = NULL, *others = NULL;
    Py_ssize_t state_at, coro_at, awaited_at, is_set_at, span;
    long long pending;
    if (!PyArg_ParseTuple(args, "y*OO!L", &view, &offsets_in, &PyTuple_Type, &layout, &pending))
        return NULL;
    if (!PyArg_ParseTuple(layout, "nnnnn;layout", &state_at, &coro_at, &awaited_at,
                          &is_set_at, &span))
        goto fail;
    if (state_at < 0 || coro_at < 0 || awaited_at < 0 || is_set_at < 0 || state_at + 4 > span
            || coro_at + 8 > span || awaited_at + 8 > span || is_set_at + 1 > span) {
        PyErr_SetString(PyExc_ValueError, "layout out of range");
        goto fail;
    }
    offsets = PySequence_Fast(offsets_in, "offsets must be a sequence");
    simple = PyList_New(0);
    coros = PyList_New(0);
    awaited = PyList_New(0);
    others = PyList_New(0);
    if (offsets == NULL || simple == NULL || coros == NULL || awaited == NULL || others == NULL)
        goto fail;
    const unsigned char *buf = view.buf;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(offsets);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t off = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(offsets, i));
        if (off == -1 && PyErr_Occurred())
            goto fail;
        if (off < 0 || off > view.len - span) {
            if (append_new(others, PyLong_FromSsize_t(i)) < 0)
                goto fail;
            continue;
        }
        if (load_i32(buf + off + state_at) != pending)
            continue;
        uint64_t coro = load_u64(buf + off + coro_at), by = load_u64(buf + off + awaited_at);
        if (!coro || (by && buf[off + is_set_at])) {
            if (append_new(others, PyLong_FromSsize_t(i)) < 0)
                goto fail;
            continue;
        }
        if (append_new(simple, PyLong_FromSsize_t(i)) < 0
                || append_new(coros, PyLong_FromUnsignedLongLong(coro)) < 0
                || append_new(awaited, PyLong_FromUnsignedLongLong(by)) < 0)
            goto fail;
    }
    PyBuffer_Release(&view);
    Py_DECREF(offsets);
    return Py_BuildValue("(NNNN)", simple, coros, awaited, others);
fail:
    PyBuffer_Release(&view);
    Py_XDECREF(offsets);
    Py_XDECREF(simple);
    Py_XDECREF(coros);
    Py_XDECREF(awaited);
    Py_XDECREF(others);
    return NULL;
}

/* -- short_ascii ---------------------------------------------------------------- */

PyDoc_STRVAR(short_ascii_doc,
"short_ascii(buf, offsets, layout, str_types) -> list of str or None\n\n"
"The text of each short ASCII str whose head is in buf: see speedups.short_ascii_py.");

static PyObject *
short_ascii(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer view;
    PyObject *offsets_in, *layout, *str_types, *offsets = NULL, *out = NULL;
    Py_ssize_t o_type, u_len, u_state, ascii_size, peek;
    unsigned long long mask, bits;
    Memo memo = {0};
    if (!PyArg_ParseTuple(args, "y*OO!O!", &view, &offsets_in, &PyTuple_Type, &layout,
                          &PySet_Type, &str_types))
        return NULL;
    if (!PyArg_ParseTuple(layout, "nnnKKnn;layout", &o_type, &u_len, &u_state, &mask, &bits,
                          &ascii_size, &peek))
        goto done;
    if (o_type < 0 || u_len < 0 || u_state < 0 || ascii_size < 0 || o_type + 8 > peek
            || u_len + 8 > peek || u_state + 4 > peek || ascii_size > peek) {
        PyErr_SetString(PyExc_ValueError, "layout out of range");
        goto done;
    }
    offsets = PySequence_Fast(offsets_in, "offsets must be a sequence");
    if (offsets == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(offsets);
    out = PyList_New(n);
    if (out == NULL)
        goto done;
    const unsigned char *buf = view.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t off = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(offsets, i));
        if (off == -1 && PyErr_Occurred())
            goto fail;
        PyObject *text = NULL;
        if (off >= 0 && off <= view.len - peek) {
            const unsigned char *head = buf + off;
            int is_str = type_in(str_types, &memo, load_u64(head + o_type));
            if (is_str < 0)
                goto fail;
            int64_t length = (int64_t)load_u64(head + u_len);
            uint32_t state;
            memcpy(&state, head + u_state, 4);
            if (is_str && (state & mask) == bits && length >= 0 && length <= peek - ascii_size) {
                text = PyUnicode_DecodeLatin1((const char *)head + ascii_size, length, NULL);
                if (text == NULL)
                    goto fail;
            }
        }
        if (text == NULL)
            text = Py_NewRef(Py_None);
        PyList_SET_ITEM(out, i, text);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyBuffer_Release(&view);
    Py_XDECREF(offsets);
    return out;
}

/* -- walk_links ----------------------------------------------------------------- */

enum { WALK_END = 0, WALK_LOOPS = 1, WALK_LIMIT = 2, WALK_FAULT = 3 };
#define PAGE_SIZE 4096

/* The pages of a walk: page_of(base) gives them (RemoteMemory.page: cached, or read),
 * the last one is kept. */
typedef struct {
    PyObject *page_of;
    uint64_t base;
    PyObject *page;   /* a new reference, or NULL */
} Pages;

/* The bytes of the page at ``base``; NULL with an exception set. */
static const unsigned char *
page_at(Pages *pages, uint64_t base)
{
    if (pages->page == NULL || pages->base != base) {
        PyObject *page = PyObject_CallFunction(pages->page_of, "K", (unsigned long long)base);
        if (page == NULL)
            return NULL;
        if (!PyBytes_Check(page) || PyBytes_GET_SIZE(page) != PAGE_SIZE) {
            Py_DECREF(page);
            PyErr_SetString(PyExc_TypeError, "page_of must return the page's 4096 bytes");
            return NULL;
        }
        Py_XSETREF(pages->page, page);
        pages->base = base;
    }
    return (const unsigned char *)PyBytes_AS_STRING(pages->page);
}

/* Ask page_of for the page of ``addr`` + ``offset``, a sum past 2**64: it must refuse
 * (RemoteMemory.page raises ReadFault beyond user space).  Always -1. */
static int
past_end(Pages *pages, uint64_t addr, uint64_t offset)
{
    PyObject *a = PyLong_FromUnsignedLongLong(addr);
    PyObject *o = PyLong_FromUnsignedLongLong(offset);
    PyObject *mask = PyLong_FromLong(-PAGE_SIZE);
    PyObject *sum = a && o ? PyNumber_Add(a, o) : NULL;
    PyObject *base = sum && mask ? PyNumber_And(sum, mask) : NULL;
    PyObject *page = base ? PyObject_CallOneArg(pages->page_of, base) : NULL;
    if (page != NULL) {
        Py_DECREF(page);
        PyErr_SetString(PyExc_ValueError, "page_of gave a page past 2**64");
    }
    Py_XDECREF(a);
    Py_XDECREF(o);
    Py_XDECREF(mask);
    Py_XDECREF(sum);
    Py_XDECREF(base);
    return -1;
}

/* The pointer at ``addr`` + ``offset``; -1 with an exception set. */
static int
pointer_at(Pages *pages, uint64_t addr, uint64_t offset, uint64_t *out)
{
    if (addr > UINT64_MAX - offset)
        return past_end(pages, addr, offset);
    addr += offset;
    uint64_t base = addr & ~(uint64_t)(PAGE_SIZE - 1), start = addr - base;
    unsigned char bytes[8];
    const unsigned char *page = page_at(pages, base);
    if (page == NULL)
        return -1;
    if (start <= PAGE_SIZE - 8) {
        memcpy(out, page + start, 8);
        return 0;
    }
    size_t low = PAGE_SIZE - start;   /* the pointer spans two pages */
    memcpy(bytes, page + start, low);
    if (base > UINT64_MAX - PAGE_SIZE)
        return past_end(pages, base, PAGE_SIZE);
    if ((page = page_at(pages, base + PAGE_SIZE)) == NULL)
        return -1;
    memcpy(bytes + low, page, 8 - low);
    memcpy(out, bytes, 8);
    return 0;
}

PyDoc_STRVAR(walk_links_doc,
"walk_links(page_of, head, next_off, limit, faults, minus=0) -> (nodes, status, error)\n\n"
"The nodes of a circular linked list: see speedups.walk_links_py.");

static PyObject *
walk_links(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *page_of, *faults, *nodes;
    unsigned long long head, next_off, minus = 0;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "OKKnO|K", &page_of, &head, &next_off, &limit, &faults, &minus))
        return NULL;
    nodes = PyList_New(0);
    if (nodes == NULL)
        return NULL;
    Pages pages = {page_of, 0, NULL};
    int status = WALK_END;
    uint64_t node, saved = head, power = 1, lam = 0;
    if (pointer_at(&pages, head, next_off, &node) < 0)
        goto fault;
    while (node && node != head) {
        if (append_new(nodes, PyLong_FromUnsignedLongLong(node - minus)) < 0)
            goto fail;
        if (node == saved) {
            status = WALK_LOOPS;
            break;
        }
        if (PyList_GET_SIZE(nodes) >= limit) {
            status = WALK_LIMIT;
            break;
        }
        if (++lam == power) {   /* Brent: a loop that misses the head ends at ``saved`` */
            saved = node;
            power *= 2;
            lam = 0;
        }
        if (pointer_at(&pages, node, next_off, &node) < 0)
            goto fault;
    }
    Py_XDECREF(pages.page);
    return Py_BuildValue("(NiO)", nodes, status, Py_None);
fault:
    if (PyErr_ExceptionMatches(faults)) {   /* what a torn or forged list raises */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        PyErr_NormalizeException(&type, &value, &traceback);
        Py_XDECREF(type);
        Py_XDECREF(traceback);
        Py_XDECREF(pages.page);
        return Py_BuildValue("(NiN)", nodes, WALK_FAULT, value);
    }
fail:
    Py_XDECREF(pages.page);
    Py_DECREF(nodes);
    return NULL;
}

static PyMethodDef methods[] = {
    {"plan_runs", plan_runs, METH_VARARGS, plan_runs_doc},
    {"known_level", known_level, METH_VARARGS, known_level_doc},
    {"short_ascii", short_ascii, METH_VARARGS, short_ascii_doc},
    {"walk_links", walk_links, METH_VARARGS, walk_links_doc},
    {"stack_level", stack_level, METH_VARARGS, stack_level_doc},
    {"task_heads", task_heads, METH_VARARGS, task_heads_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "aiobpf.collector._speedups",
    "Compiled hot loops of the collector (reference: aiobpf.collector.speedups).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(str_seen, "seen");
    INTERN(str_frames, "frames");
    INTERN(str_errors, "errors");
    INTERN(str_awaited, "awaited");
    INTERN(str_state, "innermost_state");
    INTERN(str_suspended, "suspended");
    INTERN(str_loops, "await chain loops");
    INTERN(str_child, "child");
#undef INTERN
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI", SPEEDUPS_ABI) < 0
            || PyModule_AddStringConstant(m, "SOURCE", SPEEDUPS_SOURCE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
