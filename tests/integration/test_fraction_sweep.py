"""The synthetic-fraction sweep in the tiny DAG, by dry runs: a fraction list multiplies the synthetic
arms but samples once per fold and conditioning, and a fraction no larger than the one sampled
reruns no sampling (nor the `real` arm), only the new arms' classifiers and what follows them."""

from __future__ import annotations

import pytest
from test_reruns import BEFORE_SAMPLING, _planned

pytestmark = pytest.mark.slow

FRACTION_ARMS = {"real+class@0.02", "real+class@0.05", "real+ssl@0.02", "real+ssl@0.05"}


def test_a_fraction_list_gives_an_arm_per_fraction_and_one_synthetic_set_per_fold(tmp_path):
    jobs = _planned(tmp_path, tmp_path, {"sampling": {"synthetic_fraction": [0.05, 0.02]}})
    trained = {(wc["arm"], wc["fold"]) for rule, wc, _ in jobs if rule == "train_classifier"}
    # tests/config.yaml deploys `real` (fold all); the fraction arms train on the cross-validation folds
    assert trained == {(a, f) for a in FRACTION_ARMS for f in "01"} | {("real", f) for f in ("0", "1", "all")}
    sampled = sorted((wc["cond"], wc["fold"]) for rule, wc, _ in jobs if rule == "sample_ldm")
    assert sampled == [("class", "0"), ("class", "1"), ("ssl", "0"), ("ssl", "1")]
    assert {wc["arm"] for rule, wc, _ in jobs if rule == "evaluate_arm"} == FRACTION_ARMS | {"real", "probe",
                                                                                               "handcrafted"}
    assert [rule for rule, _, _ in jobs].count("compare_fractions") == 1


def test_a_fraction_no_larger_than_the_sampled_one_reruns_no_sampling(tiny_run, tmp_path):
    # the tiny run sampled at the default 0.05: a sweep up to 0.05 reuses those sets (and the real arm)
    jobs = _planned(tiny_run, tmp_path, {"sampling": {"synthetic_fraction": [0.02, 0.05]}})
    rules = {rule for rule, _, _ in jobs}
    assert not rules & (BEFORE_SAMPLING | {"sample_ldm", "sample_ldm_guidance", "measure_fidelity"}), sorted(rules)
    trained = {wc["arm"] for rule, wc, _ in jobs if rule == "train_classifier"}
    assert trained == FRACTION_ARMS, sorted(trained)
    assert {"compare_fractions", "compare_arms", "compare_paired"} <= rules
    # a larger fraction than the sets were sampled at: one new set per fold and conditioning
    jobs = _planned(tiny_run, tmp_path, {"sampling": {"synthetic_fraction": [0.05, 0.1]}})
    assert len([rule for rule, _, _ in jobs if rule == "sample_ldm"]) == 4
    assert "real" not in {wc.get("arm") for rule, wc, _ in jobs if rule == "train_classifier"}
