"""The MNIST CNN end to end: a training step at batch 64 and inference at batch 1, 16, 64, 256, 1000.

A training step is forward, softmax cross-entropy, backward and an SGD
momentum update (``fastcnn.training.train_step``); inference is
``model.forward`` in eval mode. PyTorch and the tutorial code run the same
network the same way (``benchmarks.torch_ref``, ``benchmarks.tutorial``).
"""
import pytest

from benchmarks import common, runners

IMPLS = runners.implementations()


@pytest.mark.parametrize("dtype", common.DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_train_step(run, make, impl, dtype):
    batch = common.TRAIN_BATCH
    fn = make(runners.make_train_step, impl, dtype, batch)
    run(fn, f"train_step b{batch} {dtype}", runners.step_work(batch, training=True),
        impl=impl, batch=batch)


@pytest.mark.parametrize("dtype", common.DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", common.INFERENCE_BATCHES)
def test_inference(run, make, batch, impl, dtype):
    fn = make(runners.make_inference, impl, dtype, batch)
    run(fn, f"inference b{batch} {dtype}", runners.step_work(batch, training=False),
        impl=impl, batch=batch)
