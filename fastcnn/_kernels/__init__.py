"""Compiled kernels: Cython extensions (``*.pyx``) and Numba kernels (``numba_*.py``).

Nothing here validates input or chooses a backend; the adapters in
``fastcnn.backends`` call these with arguments ``fastcnn.ops`` has checked.
"""
