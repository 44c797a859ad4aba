"""Launch target for tests/integration/test_ddp.py: the torchrun workers import it by name.

One data-parallel launch runs all four trainers in turn (one process-group start-up instead of
four); each trainer sees the same torchrun environment a rule's ``job.launch`` would give it.
"""

from __future__ import annotations

from duvflow.classifier.train import train_classifier
from duvflow.ldm.train import train_ldm, train_vae
from duvflow.ssl.train import train_dino

TRAINERS = {"dino": train_dino, "classifier": train_classifier, "vae": train_vae, "ldm": train_ldm}


def train_all(runs: list[tuple[str, dict]]) -> list:
    """``runs``: (trainer name, keyword arguments) pairs; returns each trainer's result."""
    return [TRAINERS[name](**kwargs) for name, kwargs in runs]
