"""Slide-level aggregation, evaluation, threshold sweeps and the comparison of arms."""
