"""MobileNet v1 on CIFAR-10: model, statistics, data, training, checkpoints and safe inference."""

from .infer import Classifier, Prediction
from .intake import ImageError
from .model import MobileNetV1

__all__ = ["Classifier", "ImageError", "MobileNetV1", "Prediction"]
