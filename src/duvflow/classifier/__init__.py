"""The slide classifier's patch model: a timm ViT trained on real (+ synthetic) patches of a fold.

The names below are imported from their submodules on first use, not here: ``classifier.deploy``
(exporting the deployable model reruns on every theta change) must not pay for importing torch.
"""

import importlib

# public name -> the submodule that defines it
_EXPORTS = {
    "CLASSES": "model",
    "PatchClassifier": "model",
    "build_classifier": "model",
    "load_classifier": "model",
    "predict_probs": "predict",
    "predict_tiles": "predict",
    "ClassifierConfig": "train",
    "train_classifier": "train",
}
__all__ = ["CLASSES", "ClassifierConfig", "PatchClassifier", "build_classifier", "load_classifier", "predict_probs",
           "predict_tiles", "train_classifier"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
