"""``fastcnn serve``: a page to draw a digit and watch a trained model read it.

    preprocess.py   canvas -> the 28x28 image MNIST would have made of it (numpy only)
    inference.py    Predictor: the checkpoint's model on every backend, timed and compared
    payload.py      what POST /api/predict accepts, checked before any work
    app.py          the Flask app: the page (static/) and the JSON API
    command.py      the ``fastcnn serve`` command: checks, loads, serves on localhost

Only app.py and command.py need the ``web`` extra (``pip install "fastcnn[web]"``,
i.e. Flask); importing this package imports nothing, so ``fastcnn`` works
without it and ``fastcnn serve`` can say what is missing.
"""
