"""Compiled ReLU, forward and backward, over flat contiguous arrays.

What this is: one typed loop each, fused float32/float64, GIL released,
single-threaded (the adapter runs element ranges concurrently on fastcnn's
pool), a plain C loop over raw pointers per block for the compiler to
vectorise. The backward's select needs setup.py's -fno-trapping-math: without
it GCC kept ``g * 0`` behind a branch, which random signs mispredict half the
time (8 ms for the MNIST conv1 output instead of 0.45 ms on one thread).
The loops are C below, compiled twice where GCC or Clang can (x86-64 ELF:
``target_clones``): for AVX2 and for the portable baseline, the loader
picking one for the CPU it runs on. The wheel's portable flags give SSE2
only, where the float compare and its packing into the uint8 mask took
about twice the instructions - the loop no longer kept up with memory.

What this is not: no validation and no allocation -- the adapter
``fastcnn.backends.cython`` flattens and allocates; ``fastcnn.ops`` validates.

    y = x where x > 0 or x is NaN, else +0     (np.maximum(x, 0): -0.0 -> 0.0)
    m = [x > 0]                                (backward's own record: the
                                                caller holds y and may change it)
    dx = dy * m                                (an inf or NaN in dy gives NaN
                                                where m is 0; PyTorch's select: 0)
"""
from cython cimport floating

DEF BLOCK = 16384


cdef extern from *:
    """
    /* fastcnn: the relu loops (see the module docstring), one per type. */
    #if defined(__x86_64__) && defined(__ELF__) && defined(__has_attribute)
    #  if __has_attribute(target_clones)
    #    define FASTCNN_CLONES __attribute__((target_clones("avx2", "default")))
    #  endif
    #endif
    #ifndef FASTCNN_CLONES
    #  define FASTCNN_CLONES
    #endif
    #define FASTCNN_RELU(T, SUFFIX)                                                 \
    static FASTCNN_CLONES void fastcnn_relu_forward_##SUFFIX(                       \
            const T* x, T* y, unsigned char* m, Py_ssize_t n) {                     \
        Py_ssize_t i;                                                               \
        const T zero = 0;                                                           \
        for (i = 0; i < n; i++) {                                                   \
            T v = x[i];                                                             \
            y[i] = !(v <= zero) ? v : zero;      /* NaN <= 0 is false: NaN stays */ \
            m[i] = v > zero;                                                        \
        }                                                                           \
    }                                                                               \
    static FASTCNN_CLONES void fastcnn_relu_backward_##SUFFIX(                      \
            const T* dy, const unsigned char* m, T* dx, Py_ssize_t n) {             \
        Py_ssize_t i;                                                               \
        for (i = 0; i < n; i++) {                                                   \
            T g = dy[i], z = g * 0;              /* NaN for an inf or NaN g */      \
            dx[i] = m[i] ? g : z;                                                   \
        }                                                                           \
    }
    FASTCNN_RELU(float, f32)
    FASTCNN_RELU(double, f64)
    """
    void fastcnn_relu_forward_f32(const float* x, float* y, unsigned char* m,
                                  Py_ssize_t n) nogil
    void fastcnn_relu_forward_f64(const double* x, double* y, unsigned char* m,
                                  Py_ssize_t n) nogil
    void fastcnn_relu_backward_f32(const float* dy, const unsigned char* m, float* dx,
                                   Py_ssize_t n) nogil
    void fastcnn_relu_backward_f64(const double* dy, const unsigned char* m, double* dx,
                                   Py_ssize_t n) nogil


cdef inline void _forward(const floating* x, floating* y, unsigned char* m,
                          Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastcnn_relu_forward_f32(x, y, m, n)
    else:
        fastcnn_relu_forward_f64(x, y, m, n)


cdef inline void _backward(const floating* dy, const unsigned char* m, floating* dx,
                           Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastcnn_relu_backward_f32(dy, m, dx, n)
    else:
        fastcnn_relu_backward_f64(dy, m, dx, n)


def relu_forward(const floating[::1] x, floating[::1] y, unsigned char[::1] m):
    cdef Py_ssize_t b, lo, n = x.shape[0]
    with nogil:
        for b in range((n + BLOCK - 1) // BLOCK):
            lo = b * BLOCK
            _forward(&x[lo], &y[lo], &m[lo], min(BLOCK, n - lo))


def relu_backward(const floating[::1] dy, const unsigned char[::1] m, floating[::1] dx):
    cdef Py_ssize_t b, lo, n = dy.shape[0]
    with nogil:
        for b in range((n + BLOCK - 1) // BLOCK):
            lo = b * BLOCK
            _backward(&dy[lo], &m[lo], &dx[lo], min(BLOCK, n - lo))
