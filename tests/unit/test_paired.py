"""Paired arm comparisons (bootstrap, McNemar, DeLong), patient-level units, and failure flags."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from duvflow.core.io import write_parquet
from duvflow.evaluate.aggregate import binary_metrics
from duvflow.evaluate.flags import collect_flags, curve_drop
from duvflow.evaluate.paired import (
    PAIRED_METRICS,
    arm_pairs,
    compare_paired,
    delong_covariance,
    delong_test,
    mcnemar_exact,
    paired_bootstrap,
    patient_table,
)


def _psi(x, y):
    return 1.0 if x > y else (0.5 if x == y else 0.0)


def _direct_delong(y, scores):
    """DeLong's covariance from its definition (double loop over malignant x benign pairs)."""
    y = np.asarray(y, bool)
    k = len(scores)
    v10 = [[np.mean([_psi(x, z) for z in s[~y]]) for x in s[y]] for s in scores]
    v01 = [[np.mean([_psi(x, z) for x in s[y]]) for z in s[~y]] for s in scores]
    m, n = y.sum(), (~y).sum()
    aucs = np.array([np.mean(v) for v in v10])
    s10 = np.array([[np.cov(v10[a], v10[b])[0, 1] for b in range(k)] for a in range(k)])
    s01 = np.array([[np.cov(v01[a], v01[b])[0, 1] for b in range(k)] for a in range(k)])
    return aucs, s10 / m + s01 / n


def _direct_auc(y, s):
    y = np.asarray(y, bool)
    return np.mean([_psi(x, z) for x in s[y] for z in s[~y]])


def test_delong_matches_the_direct_computation_with_ties():
    rng = np.random.default_rng(0)
    y = np.array([1] * 9 + [0] * 12, bool)
    a = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: ties within and across classes
    b = np.round(0.6 * a + rng.normal(y * 0.5, 0.7), 1)
    aucs, cov = delong_covariance(y, np.stack([a, b]))
    direct_aucs, direct_cov = _direct_delong(y, [a, b])
    np.testing.assert_allclose(aucs, direct_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, direct_cov, atol=1e-12)
    assert aucs[0] == pytest.approx(_direct_auc(y, a))
    test = delong_test(y, a, b)
    se = math.sqrt(direct_cov[0, 0] + direct_cov[1, 1] - 2 * direct_cov[0, 1])
    z = (direct_aucs[1] - direct_aucs[0]) / se
    assert test["z"] == pytest.approx(z) and test["se"] == pytest.approx(se)
    assert test["p"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))  # two-sided normal p


def test_delong_known_answers():
    y = np.array([1, 1, 1, 0, 0, 0], bool)
    perfect = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    same = delong_test(y, perfect, perfect)
    assert same["difference"] == 0 and same["p"] == 1.0
    # one swapped pair out of 9: AUC 8/9; the perfect scorer has zero variance, the other not
    swapped = np.array([0.9, 0.8, 0.25, 0.3, 0.2, 0.1])
    res = delong_test(y, perfect, swapped)
    assert res["auc_a"] == 1.0 and res["auc_b"] == pytest.approx(8 / 9)
    # direct: V10 of the positives (1, 1, 2/3), V01 of the negatives (2/3, 1, 1)
    var = np.var([1, 1, 2 / 3], ddof=1) / 3 + np.var([2 / 3, 1, 1], ddof=1) / 3
    assert res["se"] == pytest.approx(math.sqrt(var))
    assert math.isnan(delong_test(y[:4], perfect[:4], swapped[:4])["p"])  # one benign slide: undefined


def test_mcnemar_exact_known_answer():
    # 10 slides: both right on 3; reference only right on 1, arm only right on 6
    y = np.ones(10, bool)
    ref = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    arm = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1, 1], bool)
    res = mcnemar_exact(y, ref, arm)
    assert (res["a_only"], res["b_only"]) == (1, 6)
    # two-sided exact: 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * (1 + 7) / 128
    direct = 2 * sum(math.comb(7, k) for k in (0, 1)) / 2**7
    assert res["p"] == pytest.approx(direct) and direct == pytest.approx(0.125)
    assert mcnemar_exact(y, ref, ref)["p"] == 1.0  # no discordant slide


def test_paired_bootstrap_matches_a_direct_loop():
    rng = np.random.default_rng(5)
    y = rng.random(30) < 0.4
    s_a, s_b = rng.random(30) * 0.5 + 0.3 * y, rng.random(30) * 0.5 + 0.45 * y
    p_a, p_b = s_a > 0.4, s_b > 0.4
    res = paired_bootstrap(y, p_a, p_b, s_a, s_b, n=300, seed=9, ci=0.9)
    idx = np.random.default_rng(9).integers(0, 30, size=(300, 30))  # the same resamples, by hand
    diffs = {m: [] for m in PAIRED_METRICS}
    for rows in idx:
        yy = y[rows]
        ma, mb = binary_metrics(yy, p_a[rows]), binary_metrics(yy, p_b[rows])
        if 0 < yy.sum() < len(yy):
            ma["auc"], mb["auc"] = _direct_auc(yy, s_a[rows]), _direct_auc(yy, s_b[rows])
        else:
            ma["auc"] = mb["auc"] = math.nan
        for m in PAIRED_METRICS:
            diffs[m].append(mb[m] - ma[m])
    for m in PAIRED_METRICS:
        d = np.array(diffs[m])
        d = d[~np.isnan(d)]
        assert res[m]["ci_low"] == pytest.approx(np.percentile(d, 5))
        assert res[m]["ci_high"] == pytest.approx(np.percentile(d, 95))
        assert res[m]["p_bootstrap"] == pytest.approx(min(1, 2 * min((d <= 0).mean(), (d >= 0).mean())))
        point_a, point_b = binary_metrics(y, p_a), binary_metrics(y, p_b)
        point_a["auc"], point_b["auc"] = _direct_auc(y, s_a), _direct_auc(y, s_b)
        assert res[m]["difference"] == pytest.approx(point_b[m] - point_a[m])
    same = paired_bootstrap(y, p_a, p_a, s_a, s_a, n=50, seed=0)
    assert all(same[m]["difference"] == 0 and same[m]["ci_low"] == same[m]["ci_high"] == 0 for m in PAIRED_METRICS)
    assert all(same[m]["p_bootstrap"] == 1.0 for m in PAIRED_METRICS)


def test_arm_pairs_compare_every_arm_with_real_and_ssl_with_class():
    assert arm_pairs(["real+ssl", "real", "real+class"]) == [
        ("real", "real+class"), ("real", "real+ssl"), ("real+class", "real+ssl")]
    assert arm_pairs(["real"]) == []


def test_patient_table_means_slide_scores_and_mixed_patients_are_malignant():
    slides = pd.DataFrame({"slide_id": ["a1", "a2", "b1"], "fold": ["0", "0", "1"], "label": ["benign", "malignant",
                           "benign"], "y": [0, 1, 0], "score": [0.1, 0.5, 0.2], "theta": [0.2, 0.2, 0.25]})
    table = patient_table(slides, {"a1": "A", "a2": "A", "b1": "B"})
    assert list(table["unit_id"]) == ["A", "B"]
    assert table["score"].tolist() == pytest.approx([0.3, 0.2])
    assert list(table["label"]) == ["malignant", "benign"] and list(table["n_slides"]) == [2, 1]
    with pytest.raises(ValueError, match="more than one fold"):
        patient_table(slides.assign(fold=["0", "1", "1"]), {"a1": "A", "a2": "A", "b1": "B"})


# ------------------------------------------------------------------------------------ flags and the tables


def _write_curve(folder, column, values):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"step": range(1, len(values) + 1), column: values}).to_csv(folder / "metrics.csv", index=False)
    return str(folder)


def _write_synthetic(folder, n_rows, n_requested):
    folder.mkdir(parents=True)
    files = [f"syn_{i:06d}.png" for i in range(n_rows)]
    for f in files:
        (folder / f).write_bytes(b"png")
    write_parquet(pd.DataFrame({"file": files, "label": "benign", "source_slide": "s"}), folder / "manifest.parquet",
                  metadata={"n_requested": n_requested})
    return str(folder)


def _stage_outputs(tmp_path, collapsed_fold=None):
    teachers = {}
    for fold in ("0", "1"):
        path = tmp_path / "dino" / f"fold_{fold}" / "teacher.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"collapse_warnings": ["embeddings"] if fold == collapsed_fold else []}))
        teachers[fold] = str(path)
    falling = list(np.linspace(1.0, 0.3, 10))
    vaes = {f: _write_curve(tmp_path / "vae" / f"fold_{f}", "recon", falling) for f in ("0", "1")}
    for f in vaes.values():
        (tmp_path / f / "config.json").write_text("{}")
    ldms = {c: {f: _write_curve(tmp_path / "ldm" / c / f"fold_{f}", "loss", falling) for f in ("0", "1")}
            for c in ("class", "ssl")}
    synthetic = {c: {f: _write_synthetic(tmp_path / "synthetic" / c / f"fold_{f}", 3, 3) for f in ("0", "1")}
                 for c in ("class", "ssl")}
    return {"teachers": teachers, "vaes": vaes, "ldms": ldms, "synthetic": synthetic}


ARMS = ["real", "real+class", "real+ssl"]


def test_healthy_stages_raise_no_flag_and_each_failure_is_flagged(tmp_path):
    stages = _stage_outputs(tmp_path)
    assert collect_flags(**stages, arms=ARMS, output=tmp_path / "flags.csv").empty
    assert pd.read_csv(tmp_path / "flags.csv").columns.tolist()[:4] == ["stage", "condition", "fold", "flag"]
    # plant: a flat LDM loss, a VAE that does not reconstruct, a short synthetic set, a NaN loss
    _write_curve(tmp_path / "ldm" / "class" / "fold_1", "loss", [0.5, 0.51, 0.49, 0.5, 0.5])
    _write_curve(tmp_path / "vae" / "fold_0", "recon", [0.3, 0.3, 0.29, 0.3])
    _write_curve(tmp_path / "ldm" / "ssl" / "fold_0", "loss", [0.5, float("nan"), 0.2])
    stages["synthetic"]["ssl"]["1"] = _write_synthetic(tmp_path / "short", 2, 5)
    flags = collect_flags(**stages, arms=ARMS, output=tmp_path / "flags.csv")
    got = {(r.flag, r.condition, r.fold): r.arms for r in flags.itertuples()}
    assert got == {("ldm_loss_flat", "class", "1"): "real+class", ("ldm_loss_flat", "ssl", "0"): "real+ssl",
                   ("vae_no_reconstruction", "", "0"): "real+class;real+ssl",
                   ("synthetic_short", "ssl", "1"): "real+ssl"}
    assert "2 manifest rows and 2 image files for 5 requested" in flags.set_index("flag").loc["synthetic_short", "detail"]


def test_pretrained_vae_is_not_checked_and_curves_need_two_points(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "reference.json").write_text("{}")
    assert collect_flags(teachers={}, vaes={"0": str(tmp_path / "vae")}, ldms={}, synthetic={}, arms=ARMS,
                         output=tmp_path / "f.csv").empty
    assert curve_drop([1.0], 0.2) is None
    assert curve_drop([2.0, 1.5, 1.0, 1.0, 0.5], 0.2) == (2.0, 0.5, 0.75)


def _pooled_slides(tmp_path, arm, scores, labels, folds):
    path = tmp_path / "evaluation" / arm / "slides.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"slide_id": [f"s{i:02d}" for i in range(len(scores))], "fold": folds, "role": "test",
                  "label": labels, "score": scores, "n_patches": 10, "theta_fixed": 0.5,
                  "theta_auto": 0.4}).to_csv(path, index=False)
    return str(path)


def test_compare_paired_writes_tables_summary_and_shows_a_planted_collapsed_teacher(tmp_path):
    rng = np.random.default_rng(1)
    n = 24
    y = np.array([0, 1] * (n // 2))
    labels = np.where(y == 1, "malignant", "benign")
    # patient k: slides 4k, 4k+2 (benign) or 4k+1, 4k+3 (malignant), all four in fold k % 2
    patient_of = [f"p{i // 4 * 2 + i % 2}" for i in range(n)]
    folds = [str(i // 4 % 2) for i in range(n)]
    real = np.clip(0.5 + (y - 0.5) * 0.2 + rng.normal(0, 0.2, n), 0, 1)
    ssl = np.clip(0.5 + (y - 0.5) * 0.9 + rng.normal(0, 0.05, n), 0, 1)  # near-perfect arm
    slides = [_pooled_slides(tmp_path, "real", real, labels, folds),
              _pooled_slides(tmp_path, "real+class", real[::-1].copy(), labels, folds),
              _pooled_slides(tmp_path, "real+ssl", ssl, labels, folds)]
    splits = tmp_path / "splits.csv"
    pd.DataFrame({"slide_id": [f"s{i:02d}" for i in range(n)], "label": labels, "fold": folds, "role": "test",
                  "patient_id": patient_of}).to_csv(splits, index=False)
    flags = tmp_path / "flags.csv"
    collect_flags(**_stage_outputs(tmp_path / "stages", collapsed_fold="1"), arms=ARMS, output=flags)
    outputs = {k: tmp_path / "comparison" / f for k, f in
               (("table", "paired.csv"), ("markdown", "paired.md"), ("patients", "patients.csv"),
                ("summary", "summary.md"), ("summary_html", "summary.html"))}
    table = compare_paired(slides=slides, arms=ARMS, splits=splits, flags=flags, **outputs,
                           aggregate={"theta": 0.5}, evaluate={"bootstrap": 200})
    assert set(zip(table["level"], table["reference"], table["arm"])) == {
        (lv, r, a) for lv in ("slide", "patient") for r, a in arm_pairs(ARMS)}
    csv = pd.read_csv(outputs["table"], dtype={"flags_arm": str, "flags_reference": str}).fillna(
        {"flags_arm": "", "flags_reference": ""})
    ssl_row = csv[(csv["level"] == "slide") & (csv["arm"] == "real+ssl") & (csv["reference"] == "real")].iloc[0]
    assert ssl_row["n"] == n and ssl_row["flags_arm"] == "dino_collapse fold 1" and ssl_row["flags_reference"] == ""
    # the McNemar and DeLong columns are those of the functions on the same slides
    pred_real, pred_ssl = real > 0.5, ssl > 0.5
    assert ssl_row["mcnemar_p"] == pytest.approx(mcnemar_exact(y, pred_real, pred_ssl)["p"])
    assert ssl_row["delong_p"] == pytest.approx(delong_test(y, real, ssl)["p"])
    assert ssl_row["accuracy_difference"] == pytest.approx((pred_ssl == y).mean() - (pred_real == y).mean())
    assert (csv.loc[csv["level"] == "patient", "n"] == n // 2).all()
    patients = pd.read_csv(outputs["patients"])
    assert list(patients["arm"]) == ARMS and (patients["n_patients"] == n // 2).all()
    markdown = outputs["markdown"].read_text()
    assert "## Slide level" in markdown and "## Patient level" in markdown and "real+ssl: dino_collapse fold 1" in markdown
    summary = outputs["summary"].read_text()
    assert summary.index("1 failure flag") < summary.index("**real+ssl**")
    assert "DINO teacher of fold 1 collapsed (embeddings)" in summary
    sentences = [line for line in summary.splitlines() if line.startswith("- **")]
    assert len(sentences) == 2 and all("`real`" in s for s in sentences)  # one sentence per arm against real
    verdict = "beat" if ssl_row["mcnemar_p"] < 0.05 else "did not beat"
    assert f"**real+ssl** {verdict} `real` with significance on {n} test slides" in summary
    page = outputs["summary_html"].read_text()
    assert page.index("1 failure flag") < page.index("<b>real+ssl</b>") < page.index("<table>")
    assert page.count("<table>") == 3 and "<td>real+ssl: dino_collapse fold 1</td>" in page


def test_compare_paired_without_patients_has_slide_rows_only(tmp_path):
    y = np.array([0, 1] * 5)
    labels = np.where(y == 1, "malignant", "benign")
    folds = ["0"] * 5 + ["1"] * 5
    slides = [_pooled_slides(tmp_path, a, np.linspace(0.1, 0.9, 10), labels, folds) for a in ("real", "real+ssl")]
    pd.DataFrame({"slide_id": [f"s{i:02d}" for i in range(10)], "label": labels, "fold": folds,
                  "role": "test"}).to_csv(tmp_path / "splits.csv", index=False)
    pd.DataFrame(columns=["stage", "condition", "fold", "flag", "arms", "detail", "source"]).to_csv(
        tmp_path / "flags.csv", index=False)
    out = {k: tmp_path / f for k, f in (("table", "p.csv"), ("markdown", "p.md"), ("patients", "pt.csv"),
                                        ("summary", "s.md"), ("summary_html", "s.html"))}
    table = compare_paired(slides=slides, arms=["real", "real+ssl"], splits=tmp_path / "splits.csv",
                           flags=tmp_path / "flags.csv", **out, aggregate={"theta": "auto"}, evaluate={"bootstrap": 20})
    assert list(table["level"]) == ["slide"] and table["theta_mode"].iloc[0] == "auto"
    assert table["mcnemar_p"].iloc[0] == 1.0 and table["delong_p"].iloc[0] == 1.0  # identical scores
    assert pd.read_csv(out["patients"]).empty
    assert "No failure flagged" in out["summary"].read_text()
    assert "did not beat `real` with significance on 10 test slides" in out["summary"].read_text()
    # one arm: nothing to compare, but every output is written
    alone = compare_paired(slides=slides[:1], arms=["real"], splits=tmp_path / "splits.csv",
                           flags=tmp_path / "flags.csv", **out, aggregate={}, evaluate={"bootstrap": 20})
    assert alone.empty and "nothing to compare" in out["summary"].read_text()


def test_comparison_modules_import_neither_torch_nor_sklearn():
    import subprocess
    import sys

    code = ("import sys, duvflow.evaluate.paired, duvflow.evaluate.flags; "
            "print(','.join(m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
