"""The slide classifier's patch model: a timm ViT trained on real (+ synthetic) patches of a fold.

Rooms: ``config`` (settings), ``data`` (patch images, leakage checks), ``model`` (build, save, load,
batched prediction), ``train`` (the training loop), ``predict`` (the fold's patch predictions),
``deploy`` (export for new slides). ``train`` and ``predict`` never import each other.
"""

from duvflow.classifier.config import ClassifierConfig
from duvflow.classifier.model import CLASSES, PatchClassifier, build_classifier, load_classifier, predict_probs
from duvflow.classifier.predict import predict_tiles
from duvflow.classifier.train import train_classifier

__all__ = [
           "CLASSES",
           "ClassifierConfig",
           "PatchClassifier",
           "build_classifier",
           "load_classifier",
           "predict_probs",
           "predict_tiles",
           "train_classifier",
]
