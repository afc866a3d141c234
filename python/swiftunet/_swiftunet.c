/*
 * _swiftunet.c — the thin CPython binding of libSwiftUNetC (swiftunet.h).
 *
 * Only the buffer protocol is used (no numpy C API), so building this file
 * needs no numpy headers. The Python layer (model.py) validates arguments and
 * produces friendly messages; this layer still checks everything it hands to
 * the library (formats, sizes, alignment, overlap) so that no call through
 * this module can crash the interpreter, whatever it is given.
 *
 * Every call that runs Swift code for more than a moment releases the GIL and
 * holds its own reference on the model for the duration of the call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "swiftunet.h"

#define ERRBUF_SIZE 2048

/* ------------------------------------------------------------------------ */
/* errors                                                                     */

/* Copies the calling thread's last library error into buf (always
 * NUL-terminated). Safe to call without the GIL. */
static void copy_last_error(char *buf, size_t cap)
{
    const char *msg = swiftunet_last_error();
    if (msg == NULL) {
        msg = "";
    }
    size_t n = strlen(msg);
    if (n >= cap) {
        n = cap - 1;
    }
    memcpy(buf, msg, n);
    buf[n] = '\0';
}

/* Sets the Python exception that corresponds to a library status. Needs the
 * GIL. Always returns NULL. */
static PyObject *set_status_error(int32_t status, const char *msg)
{
    PyObject *type;
    const char *prefix = "";
    switch (status) {
    case SWIFTUNET_ERR_ARGUMENT:
        type = PyExc_ValueError;
        break;
    case SWIFTUNET_ERR_MEMORY:
        type = PyExc_MemoryError;
        break;
    case SWIFTUNET_ERR_INTERRUPTED:
        type = PyExc_KeyboardInterrupt;
        break;
    case SWIFTUNET_ERR_INTERNAL:
        type = PyExc_RuntimeError;
        prefix = "swiftunet internal error (please report it): ";
        break;
    default:
        type = PyExc_RuntimeError;
        prefix = "swiftunet: unexpected status from the library: ";
        break;
    }
    if (msg == NULL || msg[0] == '\0') {
        msg = "(no message)";
    }
    /* The message may have been truncated in the middle of a UTF-8 sequence. */
    PyObject *text = PyUnicode_DecodeUTF8(msg, (Py_ssize_t)strlen(msg), "replace");
    if (text == NULL) {
        return NULL;
    }
    PyObject *full;
    if (status != SWIFTUNET_ERR_ARGUMENT && status != SWIFTUNET_ERR_MEMORY &&
        status != SWIFTUNET_ERR_INTERRUPTED && status != SWIFTUNET_ERR_INTERNAL) {
        full = PyUnicode_FromFormat("%s%d: %U", prefix, (int)status, text);
    } else {
        full = PyUnicode_FromFormat("%s%U", prefix, text);
    }
    Py_DECREF(text);
    if (full == NULL) {
        return NULL;
    }
    PyErr_SetObject(type, full);
    Py_DECREF(full);
    return NULL;
}

/* For calls made with the GIL held: reads the message right away. */
static PyObject *raise_last_error(int32_t status)
{
    char buf[ERRBUF_SIZE];
    copy_last_error(buf, sizeof buf);
    return set_status_error(status, buf);
}

/* ------------------------------------------------------------------------ */
/* the Model handle                                                           */

typedef struct {
    PyObject_HEAD
    swiftunet_model *model; /* holds one reference; NULL only if creation failed */
} ModelObject;

static void Model_dealloc(ModelObject *self)
{
    swiftunet_model *m = self->model;
    self->model = NULL;
    if (m != NULL) {
        swiftunet_model_release(m);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "swiftunet._swiftunet.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Opaque handle of a swiftunet_model (one reference). "
              "Created by _swiftunet.create(); not instantiable directly.",
    /* tp_new stays NULL: Python code cannot create an empty handle. */
};

/* Parses a Model argument; returns the model pointer or NULL with an exception. */
static swiftunet_model *model_of(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &ModelType)) {
        PyErr_Format(PyExc_TypeError, "expected a swiftunet._swiftunet.Model handle, got %.200s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    swiftunet_model *m = ((ModelObject *)obj)->model;
    if (m == NULL) {
        PyErr_SetString(PyExc_ValueError, "the model handle is empty");
        return NULL;
    }
    return m;
}

/* ------------------------------------------------------------------------ */
/* buffers                                                                    */

static int host_is_little_endian(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* Returns the type character of a buffer format when it describes a single
 * native-order scalar ("f", "@f", "=f", "<f" on little-endian hosts, ...),
 * or 0 otherwise. */
static char scalar_format(const Py_buffer *view)
{
    const char *f = view->format;
    if (f == NULL) {
        return 'B'; /* the buffer protocol's default: unsigned bytes */
    }
    if (f[0] == '@' || f[0] == '=') {
        f++;
    } else if (f[0] == '<' && host_is_little_endian()) {
        f++;
    } else if ((f[0] == '>' || f[0] == '!') && !host_is_little_endian()) {
        f++;
    }
    if (f[0] == '\0' || f[1] != '\0') {
        return 0;
    }
    return f[0];
}

/* The element types the library exchanges through buffers. */
typedef struct {
    const char *name;  /* for messages: "float32", "int64" */
    Py_ssize_t itemsize;
    char format;       /* struct-module code */
    char alt_format;   /* a second code with the same meaning on LP64 ('l' for int64), or 0 */
} element_type;

static const element_type FLOAT32 = {"float32", 4, 'f', 0};
static const element_type INT64 = {"int64", 8, 'q', 'l'};

/* Gets a C-contiguous buffer of `count` values of `type` (writable if asked).
 * On failure sets an exception naming `what` and returns -1; the buffer is
 * then not held. */
static int get_typed_buffer(PyObject *obj, Py_buffer *view, const element_type *type, int writable,
                            Py_ssize_t count, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyObject *exc_type, *value, *tb;
        PyErr_Fetch(&exc_type, &value, &tb);
        PyErr_Format(PyExc_TypeError,
                     "%s must support the buffer protocol as a C-contiguous%s %s array "
                     "(got %.200s)", what, writable ? ", writable" : "", type->name, Py_TYPE(obj)->tp_name);
        Py_XDECREF(exc_type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return -1;
    }
    char c = scalar_format(view);
    if (view->itemsize != type->itemsize || c == 0 || (c != type->format && c != type->alt_format)) {
        PyErr_Format(PyExc_TypeError, "%s must hold %s values (buffer format '%s', itemsize %zd)",
                     what, type->name, view->format ? view->format : "B", view->itemsize);
        goto fail;
    }
    if (view->len != count * type->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s must hold %zd %s values, got %zd",
                     what, count, type->name, view->len / type->itemsize);
        goto fail;
    }
    if (((uintptr_t)view->buf) % (uintptr_t)type->itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s is not aligned to %zd bytes", what, type->itemsize);
        goto fail;
    }
    return 0;
fail:
    PyBuffer_Release(view);
    return -1;
}

static int get_float_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t count, const char *what)
{
    return get_typed_buffer(obj, view, &FLOAT32, writable, count, what);
}

static int get_int64_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t count, const char *what)
{
    return get_typed_buffer(obj, view, &INT64, 0, count, what);
}

static int ranges_overlap(const Py_buffer *a, const Py_buffer *b)
{
    if (a->len == 0 || b->len == 0) {
        return 0;
    }
    uintptr_t a0 = (uintptr_t)a->buf, a1 = a0 + (uintptr_t)a->len;
    uintptr_t b0 = (uintptr_t)b->buf, b1 = b0 + (uintptr_t)b->len;
    return a0 < b1 && b0 < a1;
}

/* count = a*b*c*d with overflow checks against PY_SSIZE_T_MAX / 8. */
static int checked_count(long long a, long long b, long long c, long long d, Py_ssize_t *count)
{
    const long long limit = (long long)(PY_SSIZE_T_MAX / 8);
    long long dims[4] = {a, b, c, d};
    long long n = 1;
    for (int i = 0; i < 4; i++) {
        if (dims[i] < 0) {
            return -1;
        }
        if (dims[i] != 0 && n > limit / dims[i]) {
            return -1;
        }
        n *= dims[i];
    }
    *count = (Py_ssize_t)n;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* module functions                                                           */

PyDoc_STRVAR(create_doc,
"create(image_size, channels, hidden_dims, time_dim, seed) -> Model\n\n"
"Creates a model with PyTorch's default initialisation from `seed`.");

static PyObject *py_create(PyObject *module, PyObject *args)
{
    long long image_size, channels, time_dim;
    PyObject *dims_obj, *seed_obj;
    if (!PyArg_ParseTuple(args, "LLOLO:create", &image_size, &channels, &dims_obj,
                          &time_dim, &seed_obj)) {
        return NULL;
    }
    if (!PyLong_Check(seed_obj)) {
        PyErr_SetString(PyExc_TypeError, "seed must be an int");
        return NULL;
    }
    unsigned long long seed = PyLong_AsUnsignedLongLong(seed_obj);
    if (seed == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "seed must be an int in [0, 2**64)");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(dims_obj, "hidden_dims must be a sequence of ints");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int64_t *dims = PyMem_New(int64_t, n > 0 ? n : 1);
    if (dims == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i); /* borrowed */
        long long v = PyLong_AsLongLong(item);
        if (v == -1 && PyErr_Occurred()) {
            PyMem_Free(dims);
            Py_DECREF(seq);
            return NULL;
        }
        dims[i] = (int64_t)v;
    }
    Py_DECREF(seq);

    swiftunet_model *m = NULL;
    int32_t status;
    char err[ERRBUF_SIZE];
    err[0] = '\0';
    Py_BEGIN_ALLOW_THREADS
    status = swiftunet_model_create(image_size, channels, dims, (int64_t)n, time_dim,
                                    (uint64_t)seed, &m);
    if (status != SWIFTUNET_OK) {
        copy_last_error(err, sizeof err);
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(dims);
    if (status != SWIFTUNET_OK) {
        return set_status_error(status, err);
    }
    if (m == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "swiftunet internal error: create returned no model");
        return NULL;
    }
    ModelObject *obj = PyObject_New(ModelObject, &ModelType);
    if (obj == NULL) {
        swiftunet_model_release(m);
        return NULL;
    }
    obj->model = m;
    return (PyObject *)obj;
}

PyDoc_STRVAR(config_doc,
"config(handle) -> (image_size, channels, hidden_dims tuple, time_dim)");

static PyObject *py_config(PyObject *module, PyObject *handle)
{
    swiftunet_model *m = model_of(handle);
    if (m == NULL) {
        return NULL;
    }
    int64_t image_size = 0, channels = 0, time_dim = 0, n = 0;
    int32_t status = swiftunet_model_config(m, &image_size, &channels, &time_dim, NULL, 0, &n);
    if (status != SWIFTUNET_OK) {
        return raise_last_error(status);
    }
    if (n < 0 || n > 4096) {
        PyErr_Format(PyExc_RuntimeError, "swiftunet internal error: %lld hidden dims", (long long)n);
        return NULL;
    }
    int64_t *dims = PyMem_New(int64_t, n > 0 ? n : 1);
    if (dims == NULL) {
        return PyErr_NoMemory();
    }
    int64_t n2 = 0;
    status = swiftunet_model_config(m, NULL, NULL, NULL, dims, n, &n2);
    if (status != SWIFTUNET_OK) {
        PyMem_Free(dims);
        return raise_last_error(status);
    }
    if (n2 != n) {
        PyMem_Free(dims);
        PyErr_SetString(PyExc_RuntimeError, "swiftunet internal error: hidden dims changed");
        return NULL;
    }
    PyObject *tuple = PyTuple_New((Py_ssize_t)n);
    if (tuple == NULL) {
        PyMem_Free(dims);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromLongLong(dims[i]);
        if (v == NULL) {
            PyMem_Free(dims);
            Py_DECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, (Py_ssize_t)i, v); /* steals v */
    }
    PyMem_Free(dims);
    return Py_BuildValue("(LLNL)", (long long)image_size, (long long)channels, tuple,
                         (long long)time_dim);
}

PyDoc_STRVAR(param_info_doc,
"param_info(handle) -> list of (name, shape tuple, numel), in state_dict order");

static PyObject *py_param_info(PyObject *module, PyObject *handle)
{
    swiftunet_model *m = model_of(handle);
    if (m == NULL) {
        return NULL;
    }
    int64_t count = swiftunet_model_param_count(m);
    if (count < 0) {
        PyErr_SetString(PyExc_RuntimeError, "swiftunet internal error: negative parameter count");
        return NULL;
    }
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    for (int64_t i = 0; i < count; i++) {
        const char *name = NULL;
        int64_t ndim = 0, shape[4] = {0, 0, 0, 0}, numel = 0;
        int32_t status = swiftunet_model_param_info(m, i, &name, &ndim, shape, &numel);
        if (status != SWIFTUNET_OK) {
            Py_DECREF(list);
            return raise_last_error(status);
        }
        if (name == NULL || ndim < 1 || ndim > 4 || numel < 0) {
            Py_DECREF(list);
            PyErr_Format(PyExc_RuntimeError,
                         "swiftunet internal error: bad info for parameter %lld", (long long)i);
            return NULL;
        }
        PyObject *shape_t = PyTuple_New((Py_ssize_t)ndim);
        if (shape_t == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        for (int64_t d = 0; d < ndim; d++) {
            PyObject *v = PyLong_FromLongLong(shape[d]);
            if (v == NULL) {
                Py_DECREF(shape_t);
                Py_DECREF(list);
                return NULL;
            }
            PyTuple_SET_ITEM(shape_t, (Py_ssize_t)d, v);
        }
        PyObject *entry = Py_BuildValue("(sNL)", name, shape_t, (long long)numel); /* steals shape_t */
        if (entry == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        int rc = PyList_Append(list, entry);
        Py_DECREF(entry);
        if (rc != 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    return list;
}

/* numel of parameter `index`, or -1 with an exception set. */
static Py_ssize_t param_numel(swiftunet_model *m, int64_t index)
{
    const char *name = NULL;
    int64_t ndim = 0, shape[4] = {0, 0, 0, 0}, numel = 0;
    int32_t status = swiftunet_model_param_info(m, index, &name, &ndim, shape, &numel);
    if (status != SWIFTUNET_OK) {
        raise_last_error(status);
        return -1;
    }
    if (numel < 0 || numel > (int64_t)(PY_SSIZE_T_MAX / 8)) {
        PyErr_SetString(PyExc_RuntimeError, "swiftunet internal error: bad parameter size");
        return -1;
    }
    return (Py_ssize_t)numel;
}

PyDoc_STRVAR(get_param_doc,
"get_param(handle, index, dst) -> None\n\n"
"Copies parameter `index` into dst, a writable C-contiguous float32 buffer\n"
"of exactly its element count.");

static PyObject *py_get_param(PyObject *module, PyObject *args)
{
    PyObject *handle, *dst;
    long long index;
    if (!PyArg_ParseTuple(args, "OLO:get_param", &handle, &index, &dst)) {
        return NULL;
    }
    swiftunet_model *m = model_of(handle);
    if (m == NULL) {
        return NULL;
    }
    int64_t count = swiftunet_model_param_count(m);
    if (index < 0 || index >= count) {
        PyErr_Format(PyExc_IndexError, "parameter index %lld out of range [0, %lld)", index,
                     (long long)count);
        return NULL;
    }
    Py_ssize_t numel = param_numel(m, index);
    if (numel < 0) {
        return NULL;
    }
    Py_buffer view;
    if (get_float_buffer(dst, &view, 1, numel, "dst") != 0) {
        return NULL;
    }
    int32_t status;
    char err[ERRBUF_SIZE];
    err[0] = '\0';
    swiftunet_model_retain(m);
    Py_BEGIN_ALLOW_THREADS
    status = swiftunet_model_get_param(m, index, (float *)view.buf, (int64_t)numel);
    if (status != SWIFTUNET_OK) {
        copy_last_error(err, sizeof err);
    }
    swiftunet_model_release(m);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (status != SWIFTUNET_OK) {
        return set_status_error(status, err);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(set_params_doc,
"set_params(handle, buffers) -> None\n\n"
"Replaces every parameter at once from a sequence of C-contiguous float32\n"
"buffers in state_dict order. Either all parameters change or none do.");

static PyObject *py_set_params(PyObject *module, PyObject *args)
{
    PyObject *handle, *sources;
    if (!PyArg_ParseTuple(args, "OO:set_params", &handle, &sources)) {
        return NULL;
    }
    swiftunet_model *m = model_of(handle);
    if (m == NULL) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(sources, "set_params needs a sequence of buffers");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int64_t count = swiftunet_model_param_count(m);
    if ((int64_t)n != count) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "set_params needs %lld buffers, got %zd", (long long)count, n);
        return NULL;
    }
    Py_buffer *views = PyMem_New(Py_buffer, n > 0 ? n : 1);
    const float **ptrs = PyMem_New(const float *, n > 0 ? n : 1);
    if (views == NULL || ptrs == NULL) {
        PyMem_Free(views);
        PyMem_Free(ptrs);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    Py_ssize_t held = 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t numel = param_numel(m, (int64_t)i);
        if (numel < 0) {
            goto done;
        }
        char what[64];
        snprintf(what, sizeof what, "buffer %zd", i);
        if (get_float_buffer(PySequence_Fast_GET_ITEM(seq, i), &views[i], 0, numel, what) != 0) {
            goto done;
        }
        held++;
        ptrs[i] = (const float *)views[i].buf;
    }
    {
        int32_t status;
        char err[ERRBUF_SIZE];
        err[0] = '\0';
        swiftunet_model_retain(m);
        Py_BEGIN_ALLOW_THREADS
        status = swiftunet_model_set_params(m, (const float *const *)ptrs, (int64_t)n);
        if (status != SWIFTUNET_OK) {
            copy_last_error(err, sizeof err);
        }
        swiftunet_model_release(m);
        Py_END_ALLOW_THREADS
        if (status != SWIFTUNET_OK) {
            set_status_error(status, err);
            goto done;
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    for (Py_ssize_t i = 0; i < held; i++) {
        PyBuffer_Release(&views[i]);
    }
    PyMem_Free(views);
    PyMem_Free(ptrs);
    Py_DECREF(seq);
    return result;
}

PyDoc_STRVAR(forward_doc,
"forward(handle, x, t, out, batch, channels, height, width) -> None\n\n"
"out = model(x, t). x and out: C-contiguous float32 buffers of\n"
"batch*channels*height*width values (out writable, not overlapping x);\n"
"t: C-contiguous int64 buffer of batch values. Releases the GIL.");

static PyObject *py_forward(PyObject *module, PyObject *args)
{
    PyObject *handle, *x_obj, *t_obj, *out_obj;
    long long batch, channels, height, width;
    if (!PyArg_ParseTuple(args, "OOOOLLLL:forward", &handle, &x_obj, &t_obj, &out_obj,
                          &batch, &channels, &height, &width)) {
        return NULL;
    }
    swiftunet_model *m = model_of(handle);
    if (m == NULL) {
        return NULL;
    }
    if (batch < 0 || channels < 1 || height < 1 || width < 1) {
        PyErr_Format(PyExc_ValueError,
                     "forward: bad dimensions batch=%lld channels=%lld height=%lld width=%lld",
                     batch, channels, height, width);
        return NULL;
    }
    Py_ssize_t count;
    if (checked_count(batch, channels, height, width, &count) != 0 || batch > PY_SSIZE_T_MAX / 8) {
        PyErr_SetString(PyExc_ValueError, "forward: the tensor is too large");
        return NULL;
    }
    Py_buffer xv, tv, ov;
    if (get_float_buffer(x_obj, &xv, 0, count, "x") != 0) {
        return NULL;
    }
    if (get_int64_buffer(t_obj, &tv, (Py_ssize_t)batch, "t") != 0) {
        PyBuffer_Release(&xv);
        return NULL;
    }
    if (get_float_buffer(out_obj, &ov, 1, count, "out") != 0) {
        PyBuffer_Release(&tv);
        PyBuffer_Release(&xv);
        return NULL;
    }
    PyObject *result = NULL;
    if (ranges_overlap(&xv, &ov)) {
        PyErr_SetString(PyExc_ValueError, "forward: out must not overlap x");
        goto done;
    }
    {
        int32_t status;
        char err[ERRBUF_SIZE];
        err[0] = '\0';
        swiftunet_model_retain(m);
        Py_BEGIN_ALLOW_THREADS
        status = swiftunet_model_forward(m, (const float *)xv.buf, batch, channels, height, width,
                                         (const int64_t *)tv.buf, (float *)ov.buf);
        if (status != SWIFTUNET_OK) {
            copy_last_error(err, sizeof err);
        }
        swiftunet_model_release(m);
        Py_END_ALLOW_THREADS
        if (status != SWIFTUNET_OK) {
            set_status_error(status, err);
            goto done;
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&ov);
    PyBuffer_Release(&tv);
    PyBuffer_Release(&xv);
    return result;
}

PyDoc_STRVAR(set_num_threads_doc, "set_num_threads(n) -> None");

static PyObject *py_set_num_threads(PyObject *module, PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int32_t status = swiftunet_set_num_threads(n);
    if (status != SWIFTUNET_OK) {
        return raise_last_error(status);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(get_num_threads_doc, "get_num_threads() -> int");

static PyObject *py_get_num_threads(PyObject *module, PyObject *unused)
{
    return PyLong_FromLongLong((long long)swiftunet_get_num_threads());
}

PyDoc_STRVAR(build_info_doc, "build_info() -> str");

static PyObject *py_build_info(PyObject *module, PyObject *unused)
{
    const char *info = swiftunet_build_info();
    if (info == NULL) {
        info = "";
    }
    return PyUnicode_DecodeUTF8(info, (Py_ssize_t)strlen(info), "replace");
}

PyDoc_STRVAR(abi_version_doc, "abi_version() -> int: the ABI version of the loaded library");

static PyObject *py_abi_version(PyObject *module, PyObject *unused)
{
    return PyLong_FromLong((long)swiftunet_abi_version());
}

PyDoc_STRVAR(debug_last_input_doc,
"debug_last_input() -> int\n\n"
"Address of the x buffer read by the last forward on this thread (0 if none).");

static PyObject *py_debug_last_input(PyObject *module, PyObject *unused)
{
    return PyLong_FromVoidPtr((void *)swiftunet_debug_last_input());
}

/* ------------------------------------------------------------------------ */
/* sampling (noise schedules, q_sample, randn, DDIM/DDPM loops)               */

/* Gets a C-contiguous buffer of `count` float64 values (read-only). */
static int get_double_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t count, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_Format(PyExc_TypeError,
                     "%s must support the buffer protocol as a C-contiguous float64 array (got %.200s)",
                     what, Py_TYPE(obj)->tp_name);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return -1;
    }
    if (view->itemsize != 8 || scalar_format(view) != 'd') {
        PyErr_Format(PyExc_TypeError, "%s must hold float64 values (buffer format '%s', itemsize %zd)",
                     what, view->format ? view->format : "B", view->itemsize);
        goto fail;
    }
    if (count >= 0 && view->len != count * 8) {
        PyErr_Format(PyExc_ValueError, "%s must hold %zd float64 values, got %zd", what, count, view->len / 8);
        goto fail;
    }
    if (((uintptr_t)view->buf) % 8 != 0) {
        PyErr_Format(PyExc_ValueError, "%s is not aligned to 8 bytes", what);
        goto fail;
    }
    return 0;
fail:
    PyBuffer_Release(view);
    return -1;
}

/* Writable float64 buffer of `count` values. */
static int get_writable_double_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t count, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a writable C-contiguous float64 array", what);
        return -1;
    }
    if (view->itemsize != 8 || scalar_format(view) != 'd' || view->len != count * 8 ||
        ((uintptr_t)view->buf) % 8 != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be an aligned float64 array of %zd values", what, count);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(schedule_doc,
"schedule(kind, num_timesteps, beta_start, beta_end, betas_out, alphas_cumprod_out) -> None\n\n"
"kind 'cosine' or 'linear' (beta_start/beta_end used only by 'linear'); fills the two\n"
"writable float64 buffers of num_timesteps values.");

static PyObject *py_schedule(PyObject *module, PyObject *args)
{
    const char *kind;
    long long T;
    double start, end;
    PyObject *b_obj, *a_obj;
    if (!PyArg_ParseTuple(args, "sLddOO:schedule", &kind, &T, &start, &end, &b_obj, &a_obj)) {
        return NULL;
    }
    if (T < 1 || T > PY_SSIZE_T_MAX / 8) {
        PyErr_Format(PyExc_ValueError, "num_timesteps must be >= 1, got %lld", T);
        return NULL;
    }
    Py_buffer bv, av;
    if (get_writable_double_buffer(b_obj, &bv, (Py_ssize_t)T, "betas_out") != 0) {
        return NULL;
    }
    if (get_writable_double_buffer(a_obj, &av, (Py_ssize_t)T, "alphas_cumprod_out") != 0) {
        PyBuffer_Release(&bv);
        return NULL;
    }
    int32_t status;
    if (strcmp(kind, "cosine") == 0) {
        status = swiftunet_schedule_cosine(T, (double *)bv.buf, (double *)av.buf);
    } else if (strcmp(kind, "linear") == 0) {
        status = swiftunet_schedule_linear(T, start, end, (double *)bv.buf, (double *)av.buf);
    } else {
        PyBuffer_Release(&av);
        PyBuffer_Release(&bv);
        PyErr_Format(PyExc_ValueError, "schedule kind must be 'cosine' or 'linear', got '%s'", kind);
        return NULL;
    }
    PyBuffer_Release(&av);
    PyBuffer_Release(&bv);
    if (status != SWIFTUNET_OK) {
        return raise_last_error(status);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(schedule_from_betas_doc,
"schedule_from_betas(betas, alphas_cumprod_out) -> None\n\n"
"Validates float64 betas and writes their running product of (1 - beta).");

static PyObject *py_schedule_from_betas(PyObject *module, PyObject *args)
{
    PyObject *b_obj, *a_obj;
    if (!PyArg_ParseTuple(args, "OO:schedule_from_betas", &b_obj, &a_obj)) {
        return NULL;
    }
    Py_buffer bv, av;
    if (get_double_buffer(b_obj, &bv, -1, "betas") != 0) {
        return NULL;
    }
    Py_ssize_t T = bv.len / 8;
    if (get_writable_double_buffer(a_obj, &av, T, "alphas_cumprod_out") != 0) {
        PyBuffer_Release(&bv);
        return NULL;
    }
    int32_t status = swiftunet_schedule_from_betas((const double *)bv.buf, (int64_t)T, (double *)av.buf);
    PyBuffer_Release(&av);
    PyBuffer_Release(&bv);
    if (status != SWIFTUNET_OK) {
        return raise_last_error(status);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(ddim_timesteps_doc,
"ddim_timesteps(num_timesteps, steps, out, spacing=0) -> None\n\n"
"Writes the `steps` timesteps of a run (descending) under `spacing` (SWIFTUNET_SPACING_*)\n"
"into the int64 buffer out.");

static PyObject *py_ddim_timesteps(PyObject *module, PyObject *args)
{
    long long T, steps;
    PyObject *o_obj;
    int spacing = 0;
    if (!PyArg_ParseTuple(args, "LLO|i:ddim_timesteps", &T, &steps, &o_obj, &spacing)) {
        return NULL;
    }
    if (steps < 1 || steps > T || steps > PY_SSIZE_T_MAX / 8) {
        PyErr_Format(PyExc_ValueError, "steps must be between 1 and num_timesteps = %lld, got %lld", T, steps);
        return NULL;
    }
    Py_buffer ov;
    if (PyObject_GetBuffer(o_obj, &ov, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) != 0) {
        PyErr_Clear(); /* a BufferError for read-only buffers: say what is expected instead */
        PyErr_SetString(PyExc_TypeError, "out must be a writable C-contiguous int64 array");
        return NULL;
    }
    char c = scalar_format(&ov);
    if (ov.itemsize != 8 || (c != 'q' && c != 'l') || ov.len != (Py_ssize_t)steps * 8 ||
        ((uintptr_t)ov.buf) % 8 != 0) {
        PyBuffer_Release(&ov);
        PyErr_SetString(PyExc_TypeError, "out must be an aligned int64 array of `steps` values");
        return NULL;
    }
    int32_t status = swiftunet_schedule_timesteps(T, steps, (int32_t)spacing, (int64_t *)ov.buf);
    PyBuffer_Release(&ov);
    if (status != SWIFTUNET_OK) {
        return raise_last_error(status);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(q_sample_doc,
"q_sample(betas, x0, t, noise, out, batch, per_image) -> None\n\n"
"out = sqrt(ab[t]) * x0 + sqrt(1 - ab[t]) * noise per image (float32 buffers of\n"
"batch*per_image values, t an int64 buffer of batch values). Releases the GIL.");

static PyObject *py_q_sample(PyObject *module, PyObject *args)
{
    PyObject *b_obj, *x_obj, *t_obj, *n_obj, *o_obj;
    long long batch, per_image;
    if (!PyArg_ParseTuple(args, "OOOOOLL:q_sample", &b_obj, &x_obj, &t_obj, &n_obj, &o_obj,
                          &batch, &per_image)) {
        return NULL;
    }
    Py_ssize_t count;
    if (checked_count(batch, per_image, 1, 1, &count) != 0) {
        PyErr_SetString(PyExc_ValueError, "q_sample: bad or too large sizes");
        return NULL;
    }
    Py_buffer bv, xv, tv, nv, ov;
    if (get_double_buffer(b_obj, &bv, -1, "betas") != 0) {
        return NULL;
    }
    if (get_float_buffer(x_obj, &xv, 0, count, "x0") != 0) {
        PyBuffer_Release(&bv);
        return NULL;
    }
    if (get_int64_buffer(t_obj, &tv, (Py_ssize_t)batch, "t") != 0) {
        PyBuffer_Release(&xv);
        PyBuffer_Release(&bv);
        return NULL;
    }
    if (get_float_buffer(n_obj, &nv, 0, count, "noise") != 0) {
        PyBuffer_Release(&tv);
        PyBuffer_Release(&xv);
        PyBuffer_Release(&bv);
        return NULL;
    }
    if (get_float_buffer(o_obj, &ov, 1, count, "out") != 0) {
        PyBuffer_Release(&nv);
        PyBuffer_Release(&tv);
        PyBuffer_Release(&xv);
        PyBuffer_Release(&bv);
        return NULL;
    }
    int32_t status;
    char err[ERRBUF_SIZE];
    err[0] = '\0';
    Py_BEGIN_ALLOW_THREADS
    status = swiftunet_q_sample((const double *)bv.buf, (int64_t)(bv.len / 8), (const float *)xv.buf,
                                (const int64_t *)tv.buf, (const float *)nv.buf, batch, per_image,
                                (float *)ov.buf);
    if (status != SWIFTUNET_OK) {
        copy_last_error(err, sizeof err);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&ov);
    PyBuffer_Release(&nv);
    PyBuffer_Release(&tv);
    PyBuffer_Release(&xv);
    PyBuffer_Release(&bv);
    if (status != SWIFTUNET_OK) {
        return set_status_error(status, err);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(randn_doc,
"randn(seed, out, first=0) -> None\n\n"
"Fills the writable float32 buffer out with the seeded generator's standard normals,\n"
"from normal `first` of its stream on.");

static PyObject *py_randn(PyObject *module, PyObject *args)
{
    PyObject *seed_obj, *o_obj;
    long long first = 0;
    if (!PyArg_ParseTuple(args, "OO|L:randn", &seed_obj, &o_obj, &first)) {
        return NULL;
    }
    unsigned long long seed = PyLong_AsUnsignedLongLong(seed_obj);
    if (seed == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "seed must be an int in [0, 2**64)");
        return NULL;
    }
    Py_buffer ov;
    if (PyObject_GetBuffer(o_obj, &ov, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) != 0) {
        PyErr_Clear(); /* a BufferError for read-only buffers: say what is expected instead */
        PyErr_SetString(PyExc_TypeError, "out must be a writable C-contiguous float32 array");
        return NULL;
    }
    if (ov.itemsize != 4 || scalar_format(&ov) != 'f' || ((uintptr_t)ov.buf) % 4 != 0) {
        PyBuffer_Release(&ov);
        PyErr_SetString(PyExc_TypeError, "out must be an aligned writable float32 array");
        return NULL;
    }
    int32_t status;
    Py_BEGIN_ALLOW_THREADS
    status = swiftunet_randn_at((uint64_t)seed, (int64_t)first, (float *)ov.buf, (int64_t)(ov.len / 4));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&ov);
    if (status != SWIFTUNET_OK) {
        return raise_last_error(status);
    }
    Py_RETURN_NONE;
}

/* What the progress callback of a sampling run needs: the thread state saved
 * when the GIL was released, the Python hook, and the exception it raised. */
typedef struct {
    PyThreadState *tstate;
    PyObject *hook; /* callable(done, total) or Py_None */
    PyObject *exc_type, *exc_value, *exc_tb;
} SampleContext;

/* Runs between steps on the thread that called sample(): takes the GIL back,
 * calls the hook, checks for signals (Ctrl-C), and releases the GIL again.
 * A nonzero return stops the Swift loop. */
static int32_t sample_progress(void *context, int64_t done, int64_t total)
{
    SampleContext *ctx = (SampleContext *)context;
    int32_t stop = 0;
    PyEval_RestoreThread(ctx->tstate);
    if (ctx->hook != Py_None) {
        PyObject *r = PyObject_CallFunction(ctx->hook, "LL", (long long)done, (long long)total);
        if (r == NULL) {
            stop = 1;
        } else {
            Py_DECREF(r);
        }
    }
    if (!stop && PyErr_CheckSignals() != 0) {
        stop = 1;
    }
    if (stop && ctx->exc_type == NULL) {
        PyErr_Fetch(&ctx->exc_type, &ctx->exc_value, &ctx->exc_tb);
    }
    ctx->tstate = PyEval_SaveThread();
    return stop;
}

PyDoc_STRVAR(sample_doc,
"sample(handle, betas, sampler, steps, eta, clip, seed, x_T, out, n, height, width, hook,\n"
"       spacing=0, karras=False, first_image=0) -> None\n\n"
"Runs the DDIM (sampler 0), DDPM (1) or DPM-Solver++ 2M (2) loop in Swift, writing images\n"
"first_image .. first_image + n - 1 of the seed into the\n"
"float32 buffer out [n, C, height, width]. x_T is None or a float32 buffer like out.\n"
"hook is None or callable(done, total), called with the GIL between steps; if it\n"
"raises, or a signal handler raises (Ctrl-C), the loop stops and that exception\n"
"propagates. Releases the GIL while the loop runs.");

static PyObject *py_sample(PyObject *module, PyObject *args)
{
    PyObject *handle, *b_obj, *seed_obj, *x_obj, *o_obj, *hook;
    int sampler, clip;
    long long steps, n, height, width;
    double eta;
    int spacing = 0, karras = 0;
    long long first_image = 0;
    PyObject *ts_obj = Py_None;
    if (!PyArg_ParseTuple(args, "OOiLdpOOOLLLO|ipLO:sample", &handle, &b_obj, &sampler, &steps, &eta, &clip,
                          &seed_obj, &x_obj, &o_obj, &n, &height, &width, &hook, &spacing, &karras,
                          &first_image, &ts_obj)) {
        return NULL;
    }
    swiftunet_model *m = model_of(handle);
    if (m == NULL) {
        return NULL;
    }
    if (hook != Py_None && !PyCallable_Check(hook)) {
        PyErr_SetString(PyExc_TypeError, "hook must be None or callable(done, total)");
        return NULL;
    }
    unsigned long long seed = PyLong_AsUnsignedLongLong(seed_obj);
    if (seed == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "seed must be an int in [0, 2**64)");
        return NULL;
    }
    int64_t channels = 0;
    if (swiftunet_model_config(m, NULL, &channels, NULL, NULL, 0, NULL) != SWIFTUNET_OK) {
        return raise_last_error(SWIFTUNET_ERR_INTERNAL);
    }
    Py_ssize_t count;
    if (n < 0 || height < 1 || width < 1 || checked_count(n, channels, height, width, &count) != 0) {
        PyErr_Format(PyExc_ValueError, "sample: bad dimensions n=%lld height=%lld width=%lld", n, height, width);
        return NULL;
    }
    Py_buffer bv, ov, xv, tv;
    int have_x = x_obj != Py_None;
    int have_ts = ts_obj != Py_None;
    if (have_ts && (steps < 1 || steps > PY_SSIZE_T_MAX / 8)) {
        PyErr_Format(PyExc_ValueError, "sample: timesteps need steps >= 1, got %lld", steps);
        return NULL;
    }
    if (get_double_buffer(b_obj, &bv, -1, "betas") != 0) {
        return NULL;
    }
    if (get_float_buffer(o_obj, &ov, 1, count, "out") != 0) {
        PyBuffer_Release(&bv);
        return NULL;
    }
    if (have_x && get_float_buffer(x_obj, &xv, 0, count, "x_T") != 0) {
        PyBuffer_Release(&ov);
        PyBuffer_Release(&bv);
        return NULL;
    }
    if (have_ts && get_int64_buffer(ts_obj, &tv, (Py_ssize_t)steps, "timesteps") != 0) {
        if (have_x) {
            PyBuffer_Release(&xv);
        }
        PyBuffer_Release(&ov);
        PyBuffer_Release(&bv);
        return NULL;
    }
    PyObject *result = NULL;
    if (have_x && ranges_overlap(&xv, &ov) && xv.buf != ov.buf) {
        PyErr_SetString(PyExc_ValueError, "sample: x_T must not partly overlap out");
        goto done;
    }
    {
        SampleContext ctx = {NULL, hook, NULL, NULL, NULL};
        char err[ERRBUF_SIZE];
        err[0] = '\0';
        swiftunet_model_retain(m);
        ctx.tstate = PyEval_SaveThread();
        int32_t status = swiftunet_model_sample_images(
            m, (const double *)bv.buf, (int64_t)(bv.len / 8), (int32_t)sampler, steps, eta, (int32_t)spacing,
            have_ts ? (const int64_t *)tv.buf : NULL, (int32_t)karras, clip, (uint64_t)seed, (int64_t)first_image, have_x ? (const float *)xv.buf : NULL, n,
            height, width, (float *)ov.buf, sample_progress, &ctx);
        if (status != SWIFTUNET_OK) {
            copy_last_error(err, sizeof err);
        }
        swiftunet_model_release(m);
        PyEval_RestoreThread(ctx.tstate);
        if (ctx.exc_type != NULL) {
            /* The hook or a signal handler raised: that exception wins. */
            PyErr_Restore(ctx.exc_type, ctx.exc_value, ctx.exc_tb);
            goto done;
        }
        if (status != SWIFTUNET_OK) {
            set_status_error(status, err);
            goto done;
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (have_ts) {
        PyBuffer_Release(&tv);
    }
    if (have_x) {
        PyBuffer_Release(&xv);
    }
    PyBuffer_Release(&ov);
    PyBuffer_Release(&bv);
    return result;
}

/* ------------------------------------------------------------------------ */
/* training (loss_and_grad, the Trainer handle)                               */

PyDoc_STRVAR(param_total_doc,
"param_total(handle) -> int: floats in the flat parameter layout (sum of numel)");

static PyObject *py_param_total(PyObject *module, PyObject *handle)
{
    swiftunet_model *m = model_of(handle);
    if (m == NULL) {
        return NULL;
    }
    int64_t total = swiftunet_model_param_total(m);
    if (total < 0 || total > (int64_t)(PY_SSIZE_T_MAX / 8)) {
        PyErr_Format(PyExc_RuntimeError, "swiftunet internal error: param_total is %lld", (long long)total);
        return NULL;
    }
    return PyLong_FromLongLong((long long)total);
}

/* param_total of a model as a Py_ssize_t, or -1 with an exception set. */
static Py_ssize_t param_total_of(swiftunet_model *m)
{
    int64_t total = swiftunet_model_param_total(m);
    if (total < 0 || total > (int64_t)(PY_SSIZE_T_MAX / 8)) {
        PyErr_Format(PyExc_RuntimeError, "swiftunet internal error: param_total is %lld", (long long)total);
        return -1;
    }
    return (Py_ssize_t)total;
}

PyDoc_STRVAR(loss_and_grad_doc,
"loss_and_grad(handle, x, t, target, grads, batch, channels, height, width) -> float\n\n"
"loss = mean((model(x, t) - target)**2) and its gradient for every parameter, written\n"
"into grads (a writable float32 buffer of param_total values, flat layout, not\n"
"overlapping x or target). x and target: float32 buffers of batch*channels*height*width\n"
"values (batch >= 1); t: int64 buffer of batch values. The weights are not changed.\n"
"Releases the GIL.");

static PyObject *py_loss_and_grad(PyObject *module, PyObject *args)
{
    PyObject *handle, *x_obj, *t_obj, *y_obj, *g_obj;
    long long batch, channels, height, width;
    if (!PyArg_ParseTuple(args, "OOOOOLLLL:loss_and_grad", &handle, &x_obj, &t_obj, &y_obj, &g_obj,
                          &batch, &channels, &height, &width)) {
        return NULL;
    }
    swiftunet_model *m = model_of(handle);
    if (m == NULL) {
        return NULL;
    }
    if (batch < 1 || channels < 1 || height < 1 || width < 1) {
        PyErr_Format(PyExc_ValueError,
                     "loss_and_grad: bad dimensions batch=%lld channels=%lld height=%lld width=%lld "
                     "(batch must be >= 1: the loss is a mean)",
                     batch, channels, height, width);
        return NULL;
    }
    Py_ssize_t count;
    if (checked_count(batch, channels, height, width, &count) != 0 || batch > PY_SSIZE_T_MAX / 8) {
        PyErr_SetString(PyExc_ValueError, "loss_and_grad: the tensor is too large");
        return NULL;
    }
    Py_ssize_t total = param_total_of(m);
    if (total < 0) {
        return NULL;
    }
    Py_buffer xv, tv, yv, gv;
    if (get_float_buffer(x_obj, &xv, 0, count, "x") != 0) {
        return NULL;
    }
    if (get_int64_buffer(t_obj, &tv, (Py_ssize_t)batch, "t") != 0) {
        PyBuffer_Release(&xv);
        return NULL;
    }
    if (get_float_buffer(y_obj, &yv, 0, count, "target") != 0) {
        PyBuffer_Release(&tv);
        PyBuffer_Release(&xv);
        return NULL;
    }
    if (get_float_buffer(g_obj, &gv, 1, total, "grads") != 0) {
        PyBuffer_Release(&yv);
        PyBuffer_Release(&tv);
        PyBuffer_Release(&xv);
        return NULL;
    }
    PyObject *result = NULL;
    if (ranges_overlap(&gv, &xv) || ranges_overlap(&gv, &yv) || ranges_overlap(&gv, &tv)) {
        PyErr_SetString(PyExc_ValueError, "loss_and_grad: grads must not overlap x, t or target");
        goto done;
    }
    {
        int32_t status;
        double loss = 0.0;
        char err[ERRBUF_SIZE];
        err[0] = '\0';
        swiftunet_model_retain(m);
        Py_BEGIN_ALLOW_THREADS
        status = swiftunet_model_loss_and_grad(m, (const float *)xv.buf, batch, channels, height, width,
                                               (const int64_t *)tv.buf, (const float *)yv.buf, &loss,
                                               (float *)gv.buf, (int64_t)total);
        if (status != SWIFTUNET_OK) {
            copy_last_error(err, sizeof err);
        }
        swiftunet_model_release(m);
        Py_END_ALLOW_THREADS
        if (status != SWIFTUNET_OK) {
            set_status_error(status, err);
            goto done;
        }
        result = PyFloat_FromDouble(loss);
    }
done:
    PyBuffer_Release(&gv);
    PyBuffer_Release(&yv);
    PyBuffer_Release(&tv);
    PyBuffer_Release(&xv);
    return result;
}

static int parse_seed(PyObject *seed_obj, unsigned long long *seed);

/* The Scheduler handle: one reference on a swiftunet_scheduler. Its calls are
 * short element-wise loops and keep the GIL (the library also locks it). */
typedef struct {
    PyObject_HEAD
    swiftunet_scheduler *scheduler; /* holds one reference; NULL only if creation failed */
} SchedulerObject;

static void Scheduler_dealloc(SchedulerObject *self)
{
    swiftunet_scheduler *sc = self->scheduler;
    self->scheduler = NULL;
    if (sc != NULL) {
        swiftunet_scheduler_release(sc);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject SchedulerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "swiftunet._swiftunet.Scheduler",
    .tp_basicsize = sizeof(SchedulerObject),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)Scheduler_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Opaque handle of a swiftunet_scheduler (one reference). "
              "Created by _swiftunet.scheduler_create(); not instantiable directly.",
};

static swiftunet_scheduler *scheduler_of(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &SchedulerType)) {
        PyErr_Format(PyExc_TypeError, "expected a swiftunet._swiftunet.Scheduler handle, got %.200s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    swiftunet_scheduler *sc = ((SchedulerObject *)obj)->scheduler;
    if (sc == NULL) {
        PyErr_SetString(PyExc_ValueError, "the scheduler handle is empty");
        return NULL;
    }
    return sc;
}

PyDoc_STRVAR(scheduler_create_doc,
"scheduler_create(betas, sampler, steps, eta, spacing, karras, clip, timesteps=None) -> Scheduler\n\n"
"A scheduler over the schedule given by the float64 betas (sampler and spacing codes as\n"
"in swiftunet.h); timesteps: None or `steps` int64 custom timesteps.");

static PyObject *py_scheduler_create(PyObject *module, PyObject *args)
{
    PyObject *b_obj;
    int sampler, spacing, karras, clip;
    long long steps;
    double eta;
    PyObject *ts_obj = Py_None;
    if (!PyArg_ParseTuple(args, "OiLdipp|O:scheduler_create", &b_obj, &sampler, &steps, &eta, &spacing, &karras,
                          &clip, &ts_obj)) {
        return NULL;
    }
    int have_ts = ts_obj != Py_None;
    if (have_ts && (steps < 1 || steps > PY_SSIZE_T_MAX / 8)) {
        PyErr_Format(PyExc_ValueError, "scheduler_create: timesteps need steps >= 1, got %lld", steps);
        return NULL;
    }
    Py_buffer bv, tv;
    if (get_double_buffer(b_obj, &bv, -1, "betas") != 0) {
        return NULL;
    }
    if (have_ts && get_int64_buffer(ts_obj, &tv, (Py_ssize_t)steps, "timesteps") != 0) {
        PyBuffer_Release(&bv);
        return NULL;
    }
    swiftunet_scheduler *sc = NULL;
    int32_t status = swiftunet_scheduler_create((const double *)bv.buf, (int64_t)(bv.len / 8), (int32_t)sampler,
                                                steps, eta, (int32_t)spacing,
                                                have_ts ? (const int64_t *)tv.buf : NULL, (int32_t)karras,
                                                (int32_t)clip, &sc);
    if (have_ts) {
        PyBuffer_Release(&tv);
    }
    PyBuffer_Release(&bv);
    if (status != SWIFTUNET_OK) {
        return raise_last_error(status);
    }
    if (sc == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "swiftunet internal error: scheduler_create returned no scheduler");
        return NULL;
    }
    SchedulerObject *obj = PyObject_New(SchedulerObject, &SchedulerType);
    if (obj == NULL) {
        swiftunet_scheduler_release(sc);
        return NULL;
    }
    obj->scheduler = sc;
    return (PyObject *)obj;
}

PyDoc_STRVAR(scheduler_plan_doc,
"scheduler_plan(scheduler, timesteps_out, alpha_bars_out) -> None\n\n"
"Writes the timesteps (int64) and the alpha_bar of every step (float64); both buffers\n"
"must hold scheduler_num_steps(scheduler) values.");

static PyObject *py_scheduler_plan(PyObject *module, PyObject *args)
{
    PyObject *h, *t_obj, *a_obj;
    if (!PyArg_ParseTuple(args, "OOO:scheduler_plan", &h, &t_obj, &a_obj)) {
        return NULL;
    }
    swiftunet_scheduler *sc = scheduler_of(h);
    if (sc == NULL) {
        return NULL;
    }
    int64_t steps = swiftunet_scheduler_num_steps(sc);
    Py_buffer tv, av;
    if (PyObject_GetBuffer(t_obj, &tv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) != 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "timesteps_out must be a writable C-contiguous int64 array");
        return NULL;
    }
    char c = scalar_format(&tv);
    if (tv.itemsize != 8 || (c != 'q' && c != 'l') || tv.len != (Py_ssize_t)steps * 8 ||
        ((uintptr_t)tv.buf) % 8 != 0) {
        PyBuffer_Release(&tv);
        PyErr_SetString(PyExc_TypeError, "timesteps_out must be an aligned int64 array of num_steps values");
        return NULL;
    }
    if (get_double_buffer(a_obj, &av, (Py_ssize_t)steps, "alpha_bars_out") != 0) {
        PyBuffer_Release(&tv);
        return NULL;
    }
    int32_t status = swiftunet_scheduler_plan(sc, (int64_t *)tv.buf, (double *)av.buf);
    PyBuffer_Release(&av);
    PyBuffer_Release(&tv);
    if (status != SWIFTUNET_OK) {
        return raise_last_error(status);
    }
    Py_RETURN_NONE;
}

static PyObject *py_scheduler_num_steps(PyObject *module, PyObject *h)
{
    swiftunet_scheduler *sc = scheduler_of(h);
    return sc == NULL ? NULL : PyLong_FromLongLong((long long)swiftunet_scheduler_num_steps(sc));
}

static PyObject *py_scheduler_step_index(PyObject *module, PyObject *h)
{
    swiftunet_scheduler *sc = scheduler_of(h);
    return sc == NULL ? NULL : PyLong_FromLongLong((long long)swiftunet_scheduler_step_index(sc));
}

static PyObject *py_scheduler_reset(PyObject *module, PyObject *h)
{
    swiftunet_scheduler *sc = scheduler_of(h);
    if (sc == NULL) {
        return NULL;
    }
    int32_t status = swiftunet_scheduler_reset(sc);
    if (status != SWIFTUNET_OK) {
        return raise_last_error(status);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(scheduler_step_doc,
"scheduler_step(scheduler, t, eps, x, out, batch, per_image, noise_kind, noise, seed, first_image) -> None\n\n"
"One step into the float32 buffer out (which may be x); eps and x (and noise, when\n"
"noise_kind is 1) are float32 buffers of batch * per_image values; noise_kind 2 draws\n"
"the step's noise from the per-image stream of (seed, first_image).");

static PyObject *py_scheduler_step(PyObject *module, PyObject *args)
{
    PyObject *h, *e_obj, *x_obj, *o_obj, *z_obj, *seed_obj;
    long long t, batch, per_image, first_image;
    int noise_kind;
    if (!PyArg_ParseTuple(args, "OLOOOLLiOOL:scheduler_step", &h, &t, &e_obj, &x_obj, &o_obj, &batch,
                          &per_image, &noise_kind, &z_obj, &seed_obj, &first_image)) {
        return NULL;
    }
    swiftunet_scheduler *sc = scheduler_of(h);
    if (sc == NULL) {
        return NULL;
    }
    unsigned long long seed;
    if (parse_seed(seed_obj, &seed) != 0) {
        return NULL;
    }
    if (batch < 0 || per_image < 0 || (per_image > 0 && batch > PY_SSIZE_T_MAX / 4 / per_image)) {
        PyErr_SetString(PyExc_ValueError, "scheduler_step: bad sizes");
        return NULL;
    }
    Py_ssize_t count = (Py_ssize_t)(batch * per_image);
    Py_buffer ev, xv, ov, zv;
    int have_z = z_obj != Py_None;
    if (get_float_buffer(e_obj, &ev, 0, count, "eps") != 0) {
        return NULL;
    }
    if (get_float_buffer(x_obj, &xv, 0, count, "x") != 0) {
        PyBuffer_Release(&ev);
        return NULL;
    }
    if (get_float_buffer(o_obj, &ov, 1, count, "out") != 0) {
        PyBuffer_Release(&xv);
        PyBuffer_Release(&ev);
        return NULL;
    }
    if (have_z && get_float_buffer(z_obj, &zv, 0, count, "noise") != 0) {
        PyBuffer_Release(&ov);
        PyBuffer_Release(&xv);
        PyBuffer_Release(&ev);
        return NULL;
    }
    int32_t status = swiftunet_scheduler_step(sc, (int64_t)t, (const float *)ev.buf, (const float *)xv.buf,
                                              (int64_t)batch, (int64_t)per_image, (int32_t)noise_kind,
                                              have_z ? (const float *)zv.buf : NULL, (uint64_t)seed,
                                              (int64_t)first_image, (float *)ov.buf);
    if (have_z) {
        PyBuffer_Release(&zv);
    }
    PyBuffer_Release(&ov);
    PyBuffer_Release(&xv);
    PyBuffer_Release(&ev);
    if (status != SWIFTUNET_OK) {
        return raise_last_error(status);
    }
    Py_RETURN_NONE;
}

/* The Trainer handle: one reference on a swiftunet_trainer, plus a reference
 * on the Python Model handle it trains (the library also holds the model, but
 * the Python handle must outlive every Python object that uses the trainer). */
typedef struct {
    PyObject_HEAD
    swiftunet_trainer *trainer; /* holds one reference; NULL only if creation failed */
    PyObject *model;            /* the ModelObject given to trainer_create (strong) */
} TrainerObject;

static void Trainer_dealloc(TrainerObject *self)
{
    swiftunet_trainer *tr = self->trainer;
    self->trainer = NULL;
    if (tr != NULL) {
        swiftunet_trainer_release(tr);
    }
    Py_CLEAR(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject TrainerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "swiftunet._swiftunet.Trainer",
    .tp_basicsize = sizeof(TrainerObject),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)Trainer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Opaque handle of a swiftunet_trainer (one reference) and of the Model it trains. "
              "Created by _swiftunet.trainer_create(); not instantiable directly.",
    /* tp_new stays NULL: Python code cannot create an empty handle. */
};

/* Parses a Trainer argument; returns the trainer pointer or NULL with an exception. */
static swiftunet_trainer *trainer_of(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &TrainerType)) {
        PyErr_Format(PyExc_TypeError, "expected a swiftunet._swiftunet.Trainer handle, got %.200s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    swiftunet_trainer *tr = ((TrainerObject *)obj)->trainer;
    if (tr == NULL) {
        PyErr_SetString(PyExc_ValueError, "the trainer handle is empty");
        return NULL;
    }
    return tr;
}

/* The model of a Trainer handle (already type-checked by trainer_of). */
static swiftunet_model *trainer_model(PyObject *obj)
{
    return model_of(((TrainerObject *)obj)->model);
}

static int parse_seed(PyObject *seed_obj, unsigned long long *seed)
{
    if (!PyLong_Check(seed_obj)) {
        PyErr_SetString(PyExc_TypeError, "seed must be an int");
        return -1;
    }
    *seed = PyLong_AsUnsignedLongLong(seed_obj);
    if (*seed == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "seed must be an int in [0, 2**64)");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(trainer_create_doc,
"trainer_create(handle, betas, lr, beta1, beta2, eps, weight_decay, grad_clip, ema_decay, seed)\n"
"-> Trainer\n\n"
"A trainer (AdamW, clipping when grad_clip > 0, EMA) of the model over the schedule given\n"
"by its float64 betas. The EMA starts equal to the weights, the moments at 0.");

static PyObject *py_trainer_create(PyObject *module, PyObject *args)
{
    PyObject *handle, *b_obj, *seed_obj;
    double lr, beta1, beta2, eps, weight_decay, grad_clip, ema_decay;
    if (!PyArg_ParseTuple(args, "OOdddddddO:trainer_create", &handle, &b_obj, &lr, &beta1, &beta2, &eps,
                          &weight_decay, &grad_clip, &ema_decay, &seed_obj)) {
        return NULL;
    }
    swiftunet_model *m = model_of(handle);
    if (m == NULL) {
        return NULL;
    }
    unsigned long long seed;
    if (parse_seed(seed_obj, &seed) != 0) {
        return NULL;
    }
    Py_buffer bv;
    if (get_double_buffer(b_obj, &bv, -1, "betas") != 0) {
        return NULL;
    }
    swiftunet_trainer *tr = NULL;
    int32_t status;
    char err[ERRBUF_SIZE];
    err[0] = '\0';
    swiftunet_model_retain(m);
    Py_BEGIN_ALLOW_THREADS
    status = swiftunet_trainer_create(m, (const double *)bv.buf, (int64_t)(bv.len / 8), lr, beta1, beta2,
                                      eps, weight_decay, grad_clip, ema_decay, (uint64_t)seed, &tr);
    if (status != SWIFTUNET_OK) {
        copy_last_error(err, sizeof err);
    }
    swiftunet_model_release(m);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&bv);
    if (status != SWIFTUNET_OK) {
        return set_status_error(status, err);
    }
    if (tr == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "swiftunet internal error: trainer_create returned no trainer");
        return NULL;
    }
    TrainerObject *obj = PyObject_New(TrainerObject, &TrainerType);
    if (obj == NULL) {
        swiftunet_trainer_release(tr);
        return NULL;
    }
    obj->trainer = tr;
    Py_INCREF(handle);
    obj->model = handle;
    return (PyObject *)obj;
}

PyDoc_STRVAR(trainer_step_doc,
"trainer_step(trainer, x0, batch, channels, height, width, losses) -> float\n\n"
"One training step on the float32 buffer x0 [batch, channels, height, width] (batch >= 1).\n"
"On success the loss is appended to the list `losses` before control returns to Python\n"
"code, so a KeyboardInterrupt arriving right after the step cannot separate the two; on\n"
"failure nothing changes (neither the trainer nor the list). Releases the GIL.");

static PyObject *py_trainer_step(PyObject *module, PyObject *args)
{
    PyObject *handle, *x_obj, *losses;
    long long batch, channels, height, width;
    if (!PyArg_ParseTuple(args, "OOLLLLO!:trainer_step", &handle, &x_obj, &batch, &channels, &height, &width,
                          &PyList_Type, &losses)) {
        return NULL;
    }
    swiftunet_trainer *tr = trainer_of(handle);
    if (tr == NULL) {
        return NULL;
    }
    if (batch < 1 || channels < 1 || height < 1 || width < 1) {
        PyErr_Format(PyExc_ValueError,
                     "trainer_step: bad dimensions batch=%lld channels=%lld height=%lld width=%lld "
                     "(x0 must hold at least one image)",
                     batch, channels, height, width);
        return NULL;
    }
    Py_ssize_t count;
    if (checked_count(batch, channels, height, width, &count) != 0) {
        PyErr_SetString(PyExc_ValueError, "trainer_step: the tensor is too large");
        return NULL;
    }
    Py_buffer xv;
    if (get_float_buffer(x_obj, &xv, 0, count, "x0") != 0) {
        return NULL;
    }
    /* Grow the list first (with a placeholder), so that nothing that can fail
     * is left between a successful step and the recording of its loss. */
    Py_ssize_t slot = PyList_GET_SIZE(losses);
    if (PyList_Append(losses, Py_None) != 0) {
        PyBuffer_Release(&xv);
        return NULL;
    }
    PyObject *loss_obj = PyFloat_FromDouble(0.0); /* a fresh float, filled in below */
    if (loss_obj == NULL) {
        PyList_SetSlice(losses, slot, slot + 1, NULL);
        PyBuffer_Release(&xv);
        return NULL;
    }
    int32_t status;
    double loss = 0.0;
    char err[ERRBUF_SIZE];
    err[0] = '\0';
    swiftunet_trainer_retain(tr);
    Py_BEGIN_ALLOW_THREADS
    status = swiftunet_trainer_step(tr, (const float *)xv.buf, batch, channels, height, width, &loss);
    if (status != SWIFTUNET_OK) {
        copy_last_error(err, sizeof err);
    }
    swiftunet_trainer_release(tr);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&xv);
    if (status != SWIFTUNET_OK) {
        Py_DECREF(loss_obj);
        /* Removing the placeholder: the list only shrinks, which cannot fail for
         * a list (it may have been changed meanwhile by other threads only
         * through the caller's own lock, which serialises steps). */
        if (slot < PyList_GET_SIZE(losses) && PyList_GET_ITEM(losses, slot) == Py_None) {
            PyList_SetSlice(losses, slot, slot + 1, NULL);
        }
        return set_status_error(status, err);
    }
    if (Py_REFCNT(loss_obj) == 1 && PyFloat_CheckExact(loss_obj)) {
        /* loss_obj is referenced only here (floats are not shared when fresh):
         * setting its value is safe and cannot fail. */
        ((PyFloatObject *)loss_obj)->ob_fval = loss;
    } else {
        Py_DECREF(loss_obj);
        loss_obj = PyFloat_FromDouble(loss);
        if (loss_obj == NULL) {
            return NULL;
        }
    }
    if (slot < PyList_GET_SIZE(losses) && PyList_GET_ITEM(losses, slot) == Py_None) {
        Py_INCREF(loss_obj);
        PyList_SetItem(losses, slot, loss_obj); /* steals the new reference; releases None */
    } else {
        /* The list was changed during the step: append (rather than lose) the loss. */
        if (PyList_Append(losses, loss_obj) != 0) {
            Py_DECREF(loss_obj);
            return NULL;
        }
    }
    return loss_obj;
}

PyDoc_STRVAR(trainer_step_count_doc, "trainer_step_count(trainer) -> int: steps taken so far");

static PyObject *py_trainer_step_count(PyObject *module, PyObject *handle)
{
    swiftunet_trainer *tr = trainer_of(handle);
    if (tr == NULL) {
        return NULL;
    }
    int64_t n = swiftunet_trainer_step_count(tr);
    if (n < 0) {
        PyErr_SetString(PyExc_RuntimeError, "swiftunet internal error: negative step count");
        return NULL;
    }
    return PyLong_FromLongLong((long long)n);
}

PyDoc_STRVAR(trainer_model_doc, "trainer_model(trainer) -> Model: the model handle the trainer trains");

static PyObject *py_trainer_model(PyObject *module, PyObject *handle)
{
    if (trainer_of(handle) == NULL) {
        return NULL;
    }
    PyObject *m = ((TrainerObject *)handle)->model;
    Py_INCREF(m);
    return m;
}

PyDoc_STRVAR(trainer_draw_doc,
"trainer_draw(seed, step, num_timesteps, batch, per_image, t_out, noise_out) -> None\n\n"
"Writes the timesteps (int64 buffer of batch values) and the noise (float32 buffer of\n"
"batch*per_image values) that training step `step` of a trainer seeded with `seed` uses.");

static PyObject *py_trainer_draw(PyObject *module, PyObject *args)
{
    PyObject *seed_obj, *t_obj, *n_obj;
    long long step, T, batch, per_image;
    if (!PyArg_ParseTuple(args, "OLLLLOO:trainer_draw", &seed_obj, &step, &T, &batch, &per_image, &t_obj,
                          &n_obj)) {
        return NULL;
    }
    unsigned long long seed;
    if (parse_seed(seed_obj, &seed) != 0) {
        return NULL;
    }
    Py_ssize_t count;
    if (step < 0 || batch < 0 || checked_count(batch, per_image, 1, 1, &count) != 0 ||
        batch > PY_SSIZE_T_MAX / 8) {
        PyErr_Format(PyExc_ValueError, "trainer_draw: bad sizes step=%lld batch=%lld per_image=%lld",
                     step, batch, per_image);
        return NULL;
    }
    Py_buffer tv, nv;
    if (PyObject_GetBuffer(t_obj, &tv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) != 0) {
        PyErr_Clear(); /* a BufferError for read-only buffers: say what is expected instead */
        PyErr_SetString(PyExc_TypeError, "t_out must be a writable C-contiguous int64 array");
        return NULL;
    }
    char c = scalar_format(&tv);
    if (tv.itemsize != 8 || (c != 'q' && c != 'l') || tv.len != (Py_ssize_t)batch * 8 ||
        ((uintptr_t)tv.buf) % 8 != 0) {
        PyBuffer_Release(&tv);
        PyErr_SetString(PyExc_TypeError, "t_out must be an aligned int64 array of `batch` values");
        return NULL;
    }
    if (get_float_buffer(n_obj, &nv, 1, count, "noise_out") != 0) {
        PyBuffer_Release(&tv);
        return NULL;
    }
    int32_t status;
    char err[ERRBUF_SIZE];
    err[0] = '\0';
    Py_BEGIN_ALLOW_THREADS
    status = swiftunet_trainer_draw((uint64_t)seed, step, T, batch, per_image, (int64_t *)tv.buf,
                                    (float *)nv.buf);
    if (status != SWIFTUNET_OK) {
        copy_last_error(err, sizeof err);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&nv);
    PyBuffer_Release(&tv);
    if (status != SWIFTUNET_OK) {
        return set_status_error(status, err);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(trainer_get_state_doc,
"trainer_get_state(trainer, which, dst) -> None\n\n"
"Copies the EMA (which 0), AdamW's first (1) or second (2) moments into dst, a writable\n"
"float32 buffer of param_total values (flat layout).");

static PyObject *py_trainer_get_state(PyObject *module, PyObject *args)
{
    PyObject *handle, *dst;
    int which;
    if (!PyArg_ParseTuple(args, "OiO:trainer_get_state", &handle, &which, &dst)) {
        return NULL;
    }
    swiftunet_trainer *tr = trainer_of(handle);
    if (tr == NULL) {
        return NULL;
    }
    if (which != SWIFTUNET_STATE_EMA && which != SWIFTUNET_STATE_ADAM_M && which != SWIFTUNET_STATE_ADAM_V) {
        PyErr_Format(PyExc_ValueError, "which must be 0 (EMA), 1 (adam_m) or 2 (adam_v), got %d", which);
        return NULL;
    }
    swiftunet_model *m = trainer_model(handle);
    if (m == NULL) {
        return NULL;
    }
    Py_ssize_t total = param_total_of(m);
    if (total < 0) {
        return NULL;
    }
    Py_buffer view;
    if (get_float_buffer(dst, &view, 1, total, "dst") != 0) {
        return NULL;
    }
    int32_t status;
    char err[ERRBUF_SIZE];
    err[0] = '\0';
    swiftunet_trainer_retain(tr);
    Py_BEGIN_ALLOW_THREADS
    status = swiftunet_trainer_get_state(tr, (int32_t)which, (float *)view.buf, (int64_t)total);
    if (status != SWIFTUNET_OK) {
        copy_last_error(err, sizeof err);
    }
    swiftunet_trainer_release(tr);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (status != SWIFTUNET_OK) {
        return set_status_error(status, err);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(trainer_set_state_doc,
"trainer_set_state(trainer, ema, adam_m, adam_v, step_count) -> None\n\n"
"Restores the EMA and moments (float32 buffers of param_total values each, finite,\n"
"adam_v >= 0) and the step count (>= 0). All or nothing.");

static PyObject *py_trainer_set_state(PyObject *module, PyObject *args)
{
    PyObject *handle, *e_obj, *m_obj, *v_obj;
    long long step_count;
    if (!PyArg_ParseTuple(args, "OOOOL:trainer_set_state", &handle, &e_obj, &m_obj, &v_obj, &step_count)) {
        return NULL;
    }
    swiftunet_trainer *tr = trainer_of(handle);
    if (tr == NULL) {
        return NULL;
    }
    if (step_count < 0) {
        PyErr_Format(PyExc_ValueError, "step_count must be >= 0, got %lld", step_count);
        return NULL;
    }
    swiftunet_model *m = trainer_model(handle);
    if (m == NULL) {
        return NULL;
    }
    Py_ssize_t total = param_total_of(m);
    if (total < 0) {
        return NULL;
    }
    Py_buffer ev, mv, vv;
    if (get_float_buffer(e_obj, &ev, 0, total, "ema") != 0) {
        return NULL;
    }
    if (get_float_buffer(m_obj, &mv, 0, total, "adam_m") != 0) {
        PyBuffer_Release(&ev);
        return NULL;
    }
    if (get_float_buffer(v_obj, &vv, 0, total, "adam_v") != 0) {
        PyBuffer_Release(&mv);
        PyBuffer_Release(&ev);
        return NULL;
    }
    int32_t status;
    char err[ERRBUF_SIZE];
    err[0] = '\0';
    swiftunet_trainer_retain(tr);
    Py_BEGIN_ALLOW_THREADS
    status = swiftunet_trainer_set_state(tr, (const float *)ev.buf, (const float *)mv.buf,
                                         (const float *)vv.buf, (int64_t)total, step_count);
    if (status != SWIFTUNET_OK) {
        copy_last_error(err, sizeof err);
    }
    swiftunet_trainer_release(tr);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&vv);
    PyBuffer_Release(&mv);
    PyBuffer_Release(&ev);
    if (status != SWIFTUNET_OK) {
        return set_status_error(status, err);
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"create", py_create, METH_VARARGS, create_doc},
    {"config", py_config, METH_O, config_doc},
    {"param_info", py_param_info, METH_O, param_info_doc},
    {"get_param", py_get_param, METH_VARARGS, get_param_doc},
    {"set_params", py_set_params, METH_VARARGS, set_params_doc},
    {"forward", py_forward, METH_VARARGS, forward_doc},
    {"set_num_threads", py_set_num_threads, METH_O, set_num_threads_doc},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, get_num_threads_doc},
    {"build_info", py_build_info, METH_NOARGS, build_info_doc},
    {"abi_version", py_abi_version, METH_NOARGS, abi_version_doc},
    {"debug_last_input", py_debug_last_input, METH_NOARGS, debug_last_input_doc},
    {"schedule", py_schedule, METH_VARARGS, schedule_doc},
    {"schedule_from_betas", py_schedule_from_betas, METH_VARARGS, schedule_from_betas_doc},
    {"ddim_timesteps", py_ddim_timesteps, METH_VARARGS, ddim_timesteps_doc},
    {"q_sample", py_q_sample, METH_VARARGS, q_sample_doc},
    {"randn", py_randn, METH_VARARGS, randn_doc},
    {"sample", py_sample, METH_VARARGS, sample_doc},
    {"scheduler_create", py_scheduler_create, METH_VARARGS, scheduler_create_doc},
    {"scheduler_plan", py_scheduler_plan, METH_VARARGS, scheduler_plan_doc},
    {"scheduler_num_steps", py_scheduler_num_steps, METH_O, "scheduler_num_steps(scheduler) -> int"},
    {"scheduler_step_index", py_scheduler_step_index, METH_O, "scheduler_step_index(scheduler) -> int"},
    {"scheduler_reset", py_scheduler_reset, METH_O, "scheduler_reset(scheduler) -> None"},
    {"scheduler_step", py_scheduler_step, METH_VARARGS, scheduler_step_doc},
    {"param_total", py_param_total, METH_O, param_total_doc},
    {"loss_and_grad", py_loss_and_grad, METH_VARARGS, loss_and_grad_doc},
    {"trainer_create", py_trainer_create, METH_VARARGS, trainer_create_doc},
    {"trainer_step", py_trainer_step, METH_VARARGS, trainer_step_doc},
    {"trainer_step_count", py_trainer_step_count, METH_O, trainer_step_count_doc},
    {"trainer_model", py_trainer_model, METH_O, trainer_model_doc},
    {"trainer_draw", py_trainer_draw, METH_VARARGS, trainer_draw_doc},
    {"trainer_get_state", py_trainer_get_state, METH_VARARGS, trainer_get_state_doc},
    {"trainer_set_state", py_trainer_set_state, METH_VARARGS, trainer_set_state_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "swiftunet._swiftunet",
    "Low-level binding of libSwiftUNetC. Use the swiftunet package instead.",
    -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__swiftunet(void)
{
    int32_t abi = swiftunet_abi_version();
    if (abi != SWIFTUNET_ABI_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "swiftunet: libSwiftUNetC has ABI version %d but this extension was built "
                     "for version %d; reinstall swiftunet",
                     (int)abi, (int)SWIFTUNET_ABI_VERSION);
        return NULL;
    }
    if (PyType_Ready(&ModelType) < 0) {
        return NULL;
    }
    if (PyType_Ready(&TrainerType) < 0) {
        return NULL;
    }
    if (PyType_Ready(&SchedulerType) < 0) {
        return NULL;
    }
    PyObject *mod = PyModule_Create(&moduledef);
    if (mod == NULL) {
        return NULL;
    }
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(mod, "Model", (PyObject *)&ModelType) < 0) {
        Py_DECREF(&ModelType);
        Py_DECREF(mod);
        return NULL;
    }
    Py_INCREF(&TrainerType);
    if (PyModule_AddObject(mod, "Trainer", (PyObject *)&TrainerType) < 0) {
        Py_DECREF(&TrainerType);
        Py_DECREF(mod);
        return NULL;
    }
    if (PyModule_AddIntConstant(mod, "ABI_VERSION", SWIFTUNET_ABI_VERSION) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
