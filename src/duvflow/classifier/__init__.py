"""The slide classifier's patch model: a timm ViT trained on real (+ synthetic) patches of a fold."""

from duvflow.classifier.model import CLASSES, PatchClassifier, build_classifier, load_classifier
from duvflow.classifier.predict import predict_probs, predict_tiles
from duvflow.classifier.train import ClassifierConfig, train_classifier

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
