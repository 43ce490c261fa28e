"""``python -m benchmarks.step IMPL[,IMPL...] [--threads N] [--dtype D] [--batch B] [--infer]``:
time the MNIST training step (or inference) of the named implementations in THIS process.

The report runs every implementation in one process, so thread pools
(PyTorch's OpenMP, numba's, the Cython kernels' OpenMP, OpenBLAS) share it;
run one implementation per process here to see each one alone. Deliberately
only a stopwatch: no files written.
"""
import argparse

from benchmarks import machine, runners


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.split("\n\n")[0])
    p.add_argument("impls", help="comma-separated: torch, tutorial, or fastcnn backends")
    p.add_argument("--threads", type=int, default=machine.default_threads())
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--infer", action="store_true", help="time eval-mode inference instead")
    p.add_argument("--kernel-threads", type=int, default=None,
                   help="threads of the compiled backends' own loops (OpenMP, numba), "
                        "leaving BLAS at --threads: shows what the two pools cost each other")
    args = p.parse_args(argv)
    impls = args.impls.split(",")
    fastcnn_impls = [i for i in impls if i not in runners.REFERENCES]
    if not fastcnn_impls:
        # PyTorch alone runs as its users run it: no fastcnn backend loaded,
        # and OpenMP's wait policy left to PyTorch (fastcnn sets PASSIVE at
        # import; nothing has loaded libgomp yet, so dropping it still counts)
        from fastcnn import _threads
        _threads.drop_default_wait_policy()
    machine.prepare(args.threads, warm=bool(fastcnn_impls))
    if args.kernel_threads is not None:
        from fastcnn import backend
        for name in ("cython", "numba"):
            if name in backend.available_backends():
                backend.get_module(name).set_num_threads(args.kernel_threads)
    make = runners.make_inference if args.infer else runners.make_train_step
    fns = {i: make(i, args.dtype, args.batch) for i in impls}
    for fn in fns.values():
        fn()                                   # warm: JIT, caches, buffers
    times = machine.median_times(fns, target_s=0.3, repeat=7)
    for impl, s in times.items():
        what = "inference" if args.infer else "step"
        print(f"{impl:9s} {what} {args.dtype} b{args.batch} threads={args.threads}: "
              f"{s * 1e3:7.1f} ms  {args.batch / s:7.0f} images/s")


if __name__ == "__main__":
    main()
