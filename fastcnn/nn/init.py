"""Weight initialisation: He/Kaiming normal for layers followed by ReLU.

He et al. 2015, "Delving Deep into Rectifiers": std = sqrt(2 / fan_in) keeps
the activation variance constant through ReLU layers. Values are drawn in
float64 and then cast, so a float32 and a float64 model built from the same
seed hold the same weights up to rounding.
"""
import math

import numpy as np


def kaiming_normal(shape, fan_in, rng, dtype):
    """N(0, 2 / fan_in) samples of ``shape``, cast to ``dtype``."""
    std = math.sqrt(2.0 / fan_in)
    return (rng.standard_normal(shape) * std).astype(dtype)


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)
