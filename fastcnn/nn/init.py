"""Weight initialisation: He/Kaiming normal for layers followed by ReLU, and
small weights for a final layer whose outputs are logits.

He et al. 2015, "Delving Deep into Rectifiers": std = sqrt(2 / fan_in) keeps
the activation variance constant through ReLU layers. A layer that produces
logits wants the opposite: outputs near zero, so the softmax starts near
uniform and the initial cross-entropy is about ln(classes) instead of a few
confident wrong guesses (Karpathy, "A Recipe for Training Neural Networks":
"verify loss @ init"; his makemore lectures scale the last layer by 0.01).
He init there gives the MNIST CNN an initial loss of 4-6, because max-pooling
raises the second moment of the features layer by layer.

Values are drawn in float64 and then cast, so a float32 and a float64 model
built from the same seed hold the same weights up to rounding. Every
initialiser draws the same number of values, so choosing another one for a
layer leaves the weights of all the other layers unchanged.
"""
import math

import numpy as np

LOGITS_STD = 0.01


def kaiming_normal(shape, fan_in, rng, dtype):
    """N(0, 2 / fan_in) samples of ``shape``, cast to ``dtype``."""
    std = math.sqrt(2.0 / fan_in)
    return (rng.standard_normal(shape) * std).astype(dtype)


def logits_normal(shape, fan_in, rng, dtype):
    """N(0, LOGITS_STD^2) samples of ``shape``, whatever ``fan_in``: for the
    layer whose outputs are logits."""
    return (rng.standard_normal(shape) * LOGITS_STD).astype(dtype)


WEIGHT_INITS = {"kaiming": kaiming_normal, "logits": logits_normal}


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)
