"""MobileNet v1 on CIFAR-10: model, statistics, data, training, checkpoints and safe inference."""

from importlib import import_module

__version__ = "0.1.0"  # the one home of the version: pyproject.toml reads it
__all__ = ["Classifier", "ImageError", "MobileNetV1", "Prediction", "__version__"]
# Loaded when first asked for: the command line starts (and takes Ctrl-C in words) before torch loads.
_HOMES = {"Classifier": "infer", "Prediction": "infer", "ImageError": "intake", "MobileNetV1": "model"}


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
