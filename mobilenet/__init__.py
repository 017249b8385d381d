"""MobileNet v1 on CIFAR-10: model, statistics, data, training, checkpoints and safe inference."""

from .infer import Classifier, Prediction
from .intake import ImageError
from .model import MobileNetV1

__version__ = "0.1.0"  # the one home of the version: pyproject.toml reads it
__all__ = ["Classifier", "ImageError", "MobileNetV1", "Prediction", "__version__"]
