"""Demo models built from data and trained weights that ship inside Python packages (nothing downloaded).

Importing this package loads neither TensorFlow nor the training data: a model's `build` does that work,
and caching its output is the caller's job.
"""

from engine.zoo.demo import DemoModel
from engine.zoo.digits import DIGITS
from engine.zoo.faces import FACES

DEMO_MODELS: tuple[DemoModel, ...] = (DIGITS, FACES)

__all__ = ["DEMO_MODELS", "DemoModel"]
