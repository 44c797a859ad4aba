"""Paired comparisons of classifier arms on the same pooled test slides (and patients).

Every arm is evaluated on the same test slides (the splits are shared), so the question "does arm B
beat arm A" is a paired one. For each pair (every arm against ``real``, and among the other arms
the later against the earlier, with ``real+class`` before the rest, so ``real+ssl`` is compared
with ``real+class``; arms of a fraction sweep only with ``real`` and with the other conditioning at
their fraction) this module reports, at the configured theta rule:

* a paired percentile bootstrap over slides of the difference (B - A) in accuracy, sensitivity,
  specificity, balanced accuracy and ROC AUC, with a two-sided bootstrap p-value;
* the exact McNemar test on the slide calls: under H0 the discordant slides (right by one arm
  only) split 50:50, so the count of "B right, A wrong" among them is Binomial(n, 1/2)
  (``scipy.stats.binomtest``);
* DeLong's test for the difference of two correlated AUCs (DeLong, DeLong & Clarke-Pearson,
  Biometrics 1988) in the fast midrank form of Sun & Xu (IEEE SPL 2014).

When the sample sheet names patients, the same comparisons run at patient level too (a patient's
score is the mean of its test slides' scores, called malignant when it exceeds the fold's theta;
its label is malignant when any of its slides is), and per-arm patient metrics with bootstrap CIs
over patients are written. Only NumPy, pandas and SciPy are imported (no torch, no scikit-learn).
"""

from __future__ import annotations

import html
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from duvflow.core.arms import arm_condition, arm_fraction
from duvflow.core.config import from_dict
from duvflow.core.io import atomic_path, write_csv
from duvflow.core.labels import label_to_int
from duvflow.core.splits import patient_labels, read_splits
from duvflow.evaluate.aggregate import AggregateConfig
from duvflow.evaluate.evaluation import EvaluateConfig
from duvflow.evaluate.flags import arm_flags, read_flags

__all__ = [
    "PAIRED_METRICS",
    "arm_pairs",
    "compare_paired",
    "delong_covariance",
    "delong_test",
    "mcnemar_exact",
    "paired_bootstrap",
    "patient_table",
    "unit_metrics",
]

_log = logging.getLogger(__name__)
PAIRED_METRICS = ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "auc")
REFERENCE_ORDER = ("real", "real+class")


# ------------------------------------------------------------------------------------ statistics


def unit_metrics(y: np.ndarray, pred: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """The paired metrics over the last axis of (..., N) labels / calls / scores (NaN where undefined).

    Balanced accuracy is the mean of the defined class recalls; AUC is the Mann-Whitney statistic
    (ties count one half).
    """
    y, pred = np.asarray(y, dtype=bool), np.asarray(pred, dtype=bool)
    tp, fn = (y & pred).sum(-1), (y & ~pred).sum(-1)
    tn, fp = (~y & ~pred).sum(-1), (~y & pred).sum(-1)
    ranks = stats.rankdata(np.asarray(scores, dtype=float), axis=-1)
    n_pos, n_neg = tp + fn, tn + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(n_pos > 0, tp / n_pos, np.nan)
        spec = np.where(n_neg > 0, tn / n_neg, np.nan)
        bacc = np.where(np.isnan(sens), spec, np.where(np.isnan(spec), sens, (sens + spec) / 2))
        auc = ((ranks * y).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return {"accuracy": (tp + tn) / y.shape[-1], "sensitivity": sens, "specificity": spec,
            "balanced_accuracy": bacc, "auc": np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)}


def _percentile_interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return math.nan, math.nan
    low, high = np.percentile(values, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return float(low), float(high)


def paired_bootstrap(y, pred_a, pred_b, scores_a, scores_b, *, n: int, seed: int,
                     ci: float = 0.95) -> dict[str, dict[str, float]]:
    """Paired percentile bootstrap of B - A for every metric of :data:`PAIRED_METRICS`.

    Both arms are resampled with the same indices (the pairing). Returns ``{metric: {a, b,
    difference, ci_low, ci_high, p_bootstrap}}``; the two-sided p-value is twice the smaller
    share of resampled differences on either side of 0 (capped at 1). Resamples where a metric is
    undefined (one class drawn) are left out of that metric.
    """
    y = np.asarray(y, dtype=bool)
    point_a = unit_metrics(y, pred_a, scores_a)
    point_b = unit_metrics(y, pred_b, scores_b)
    out = {m: {"a": float(point_a[m]), "b": float(point_b[m]), "difference": float(point_b[m] - point_a[m]),
               "ci_low": math.nan, "ci_high": math.nan, "p_bootstrap": math.nan} for m in PAIRED_METRICS}
    if n == 0 or len(y) == 0:
        return out
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n, len(y)))
    boot_a = unit_metrics(y[idx], np.asarray(pred_a, bool)[idx], np.asarray(scores_a, float)[idx])
    boot_b = unit_metrics(y[idx], np.asarray(pred_b, bool)[idx], np.asarray(scores_b, float)[idx])
    for m in PAIRED_METRICS:
        diff = boot_b[m] - boot_a[m]
        out[m]["ci_low"], out[m]["ci_high"] = _percentile_interval(diff, ci)
        diff = diff[~np.isnan(diff)]
        if len(diff):
            out[m]["p_bootstrap"] = float(min(1.0, 2 * min((diff <= 0).mean(), (diff >= 0).mean())))
    return out


def mcnemar_exact(y, pred_a, pred_b) -> dict[str, float]:
    """Exact McNemar test of the slide calls of two arms on the same slides.

    ``a_only``: slides A calls right and B wrong; ``b_only``: the reverse. Two-sided binomial test
    of ``b_only`` out of the discordant slides at p = 1/2 (p = 1 without discordant slides).
    """
    y = np.asarray(y, dtype=bool)
    right_a, right_b = np.asarray(pred_a, bool) == y, np.asarray(pred_b, bool) == y
    a_only, b_only = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    n = a_only + b_only
    p = stats.binomtest(b_only, n, 0.5).pvalue if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": float(p)}


def delong_covariance(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of the rows of ``scores`` (k, N) for labels ``y`` and their DeLong covariance (k, k).

    Structural components from midranks (Sun & Xu 2014): for positive i, V10_i = share of negatives
    scored below it (ties half); for negative j, V01_j = share of positives scored above it;
    cov = S10 / m + S01 / n with S the sample covariances of the components.
    """
    y = np.asarray(y, dtype=bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least 2 slides of each class, got {m} malignant and {n} benign")
    rank_all = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    rank_pos, rank_neg = stats.rankdata(pos, axis=1), stats.rankdata(neg, axis=1)
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(y, scores_a, scores_b) -> dict[str, float]:
    """DeLong's two-sided z-test of AUC(B) - AUC(A) on the same slides (NaN with < 2 of a class)."""
    try:
        aucs, cov = delong_covariance(y, np.stack([np.asarray(scores_a, float), np.asarray(scores_b, float)]))
    except ValueError:
        return {"auc_a": math.nan, "auc_b": math.nan, "difference": math.nan, "se": math.nan, "z": math.nan,
                "p": math.nan}
    diff = float(aucs[1] - aucs[0])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se < 1e-12:  # identical rankings: no evidence of a difference
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "se": se, "z": z, "p": p}


# ------------------------------------------------------------------------------------ arms and units


def arm_pairs(arms: Sequence[str]) -> list[tuple[str, str]]:
    """(reference, arm) pairs: every arm against ``real``, then ``real+class`` against the rest, then
    the remaining arms among themselves in config order; the difference is always arm - reference.

    The arms of a fraction sweep (``real+ssl@0.1``) are compared with ``real`` and with the other
    conditioning at the same fraction only (``real+class@0.1`` vs ``real+ssl@0.1``); the fraction
    plot (:mod:`duvflow.evaluate.fraction`) shows them against each other.
    """
    def rank(arm: str) -> int:
        return 0 if arm == REFERENCE_ORDER[0] else 1 if arm_condition(arm) == "class" else 2

    ordered = sorted(arms, key=rank)  # stable: config order within a rank
    return [(ref, arm) for i, ref in enumerate(ordered) for arm in ordered[i + 1:]
            if ref == REFERENCE_ORDER[0] or arm_fraction(ref) == arm_fraction(arm)]


def _load_arm(path: str | os.PathLike, arm: str, mode: str) -> pd.DataFrame:
    """An arm's pooled test slides (``evaluate_arm`` output): slide_id, fold, y, score, theta, call."""
    table = pd.read_csv(path, dtype={"slide_id": str, "fold": str, "label": str})
    column = f"theta_{mode}"
    missing = {"slide_id", "fold", "label", "score", column} - set(table.columns)
    if missing:
        raise ValueError(f"{path} (arm {arm}) lacks column(s) {', '.join(sorted(missing))}")
    if table["slide_id"].duplicated().any():
        raise ValueError(f"{path} (arm {arm}) lists a slide twice: pooled test slides must be unique")
    return pd.DataFrame({"slide_id": table["slide_id"], "fold": table["fold"], "label": table["label"],
                         "y": label_to_int(table["label"]) if len(table) else np.zeros(0, int),
                         "score": table["score"].astype(float), "theta": table[column].astype(float)})


def patient_table(slides: pd.DataFrame, patients: Mapping[str, str]) -> pd.DataFrame:
    """Patient rows from an arm's test slides: mean slide score, label malignant when any slide is,
    the fold's theta (a patient's slides share their test fold)."""
    df = slides.assign(patient_id=slides["slide_id"].map(patients))
    if df["patient_id"].isna().any():
        raise ValueError(f"test slides without a patient: {', '.join(df.loc[df['patient_id'].isna(), 'slide_id'][:10])}")
    folds = df.groupby("patient_id")["fold"].nunique()
    if (folds > 1).any():
        raise ValueError(f"patients tested in more than one fold: {', '.join(folds[folds > 1].index[:10])}")
    labels = patient_labels(dict(zip(df["slide_id"], df["label"], strict=True)), patients)
    grouped = df.groupby("patient_id", sort=True)
    out = pd.DataFrame({"fold": grouped["fold"].first(), "score": grouped["score"].mean(),
                        "theta": grouped["theta"].first(), "n_slides": grouped.size()}).reset_index()
    out["label"] = out["patient_id"].map(labels)
    out["y"] = label_to_int(out["label"]) if len(out) else np.zeros(0, int)
    return out.rename(columns={"patient_id": "unit_id"})


def _paired_rows(units: Mapping[str, pd.DataFrame], pairs: Sequence[tuple[str, str]], level: str,
                 cfg: EvaluateConfig, seed: int) -> list[dict]:
    """One wide row per pair: both arms' metrics, bootstrap differences, McNemar, DeLong."""
    rows = []
    for k, (ref, arm) in enumerate(pairs):
        both = units[ref].merge(units[arm], on="unit_id", suffixes=("_a", "_b"), validate="one_to_one")
        if (both["y_a"] != both["y_b"]).any():
            raise ValueError(f"arms {ref} and {arm} disagree on the labels of the same {level}s")
        dropped = len(units[ref]) + len(units[arm]) - 2 * len(both)
        if dropped:
            _log.warning("%s vs %s: %d %s(s) tested in only one of the arms are left out", arm, ref, dropped, level)
        y = both["y_a"].to_numpy(bool)
        pred_a = both["score_a"].to_numpy() > both["theta_a"].to_numpy()
        pred_b = both["score_b"].to_numpy() > both["theta_b"].to_numpy()
        boot = paired_bootstrap(y, pred_a, pred_b, both["score_a"], both["score_b"], n=cfg.bootstrap,
                                seed=cfg.seed + seed + k, ci=cfg.ci)
        row = {"level": level, "reference": ref, "arm": arm, "n": len(both), "n_malignant": int(y.sum())}
        for m, values in boot.items():
            row.update({f"{m}_reference": values["a"], f"{m}_arm": values["b"], f"{m}_difference": values["difference"],
                        f"{m}_ci_low": values["ci_low"], f"{m}_ci_high": values["ci_high"],
                        f"{m}_p_bootstrap": values["p_bootstrap"]})
        mc = mcnemar_exact(y, pred_a, pred_b)
        dl = delong_test(y, both["score_a"], both["score_b"])
        row.update({"mcnemar_reference_only": mc["a_only"], "mcnemar_arm_only": mc["b_only"], "mcnemar_p": mc["p"],
                    "delong_auc_difference": dl["difference"], "delong_se": dl["se"], "delong_z": dl["z"],
                    "delong_p": dl["p"]})
        rows.append(row)
    return rows


def _patient_metrics(units: Mapping[str, pd.DataFrame], cfg: EvaluateConfig, seed: int) -> pd.DataFrame:
    """Per-arm patient-level metrics with percentile bootstrap CIs over patients."""
    rows = []
    for arm, table in units.items():
        y, s = table["y"].to_numpy(bool), table["score"].to_numpy(float)
        pred = s > table["theta"].to_numpy(float)
        point = unit_metrics(y, pred, s)
        resampled = None
        if cfg.bootstrap and len(y):
            idx = np.random.default_rng(cfg.seed + seed).integers(0, len(y), size=(cfg.bootstrap, len(y)))
            resampled = unit_metrics(y[idx], pred[idx], s[idx])
        row = {"arm": arm, "n_patients": len(table), "n_malignant": int(y.sum()),
               "n_slides": int(table["n_slides"].sum())}
        for m in PAIRED_METRICS:
            low, high = _percentile_interval(resampled[m], cfg.ci) if resampled is not None else (math.nan, math.nan)
            row.update({m: float(point[m]), f"{m}_ci_low": low, f"{m}_ci_high": high})
        rows.append(row)
    return pd.DataFrame(rows, columns=["arm", "n_patients", "n_malignant", "n_slides",
                                       *[c for m in PAIRED_METRICS for c in (m, f"{m}_ci_low", f"{m}_ci_high")]])


# ------------------------------------------------------------------------------------ entry point


def compare_paired(*, slides: Sequence[str | os.PathLike], arms: Sequence[str], splits: str | os.PathLike,
                   flags: str | os.PathLike, table: str | os.PathLike, markdown: str | os.PathLike,
                   patients: str | os.PathLike, summary: str | os.PathLike, summary_html: str | os.PathLike,
                   aggregate: dict, evaluate: dict, seed: int = 0) -> pd.DataFrame:
    """Paired comparisons of the arms (``slides``: each arm's pooled test slides, in ``arms`` order).

    Writes ``table`` (CSV, one row per level and pair), ``markdown`` (the same, readable, with the
    patient-level metrics), ``patients`` (per-arm patient-level metrics; only a header without
    ``patient_id``), ``summary`` (Markdown: the flags, then one sentence per arm on whether it
    beat ``real``) and ``summary_html`` (the summary and the tables, for the report). ``flags`` is
    the table of :func:`duvflow.evaluate.flags.collect_flags`.
    """
    if len(slides) != len(arms):
        raise ValueError("slides and arms must list the same arms in the same order")
    agg, cfg = from_dict(AggregateConfig, aggregate, "aggregate"), from_dict(EvaluateConfig, evaluate, "evaluate")
    per_slide = {arm: _load_arm(path, arm, agg.mode).rename(columns={"slide_id": "unit_id"})
                 for arm, path in zip(arms, slides, strict=True)}
    split = read_splits(splits)
    pairs = arm_pairs(arms)
    rows = _paired_rows(per_slide, pairs, "slide", cfg, seed)
    patient_metrics = _patient_metrics({}, cfg, seed)
    if "patient_id" in split.columns:
        mapping = dict(zip(split["slide_id"], split["patient_id"], strict=False))
        per_patient = {arm: patient_table(t.rename(columns={"unit_id": "slide_id"}), mapping)
                       for arm, t in per_slide.items()}
        rows += _paired_rows(per_patient, pairs, "patient", cfg, seed)
        patient_metrics = _patient_metrics(per_patient, cfg, seed)
    flag_table = read_flags(flags)
    out = pd.DataFrame(rows, columns=list(rows[0]) if rows else ["level", "reference", "arm", "n", "n_malignant"])
    out["flags_reference"] = [", ".join(arm_flags(flag_table, a)) for a in out["reference"]]
    out["flags_arm"] = [", ".join(arm_flags(flag_table, a)) for a in out["arm"]]
    out.insert(3, "theta_mode", agg.mode)
    write_csv(out, table)
    write_csv(patient_metrics, patients)
    with atomic_path(markdown) as tmp:
        tmp.write_text(_markdown(out, patient_metrics, agg, cfg))
    glance = _summary(out, flag_table, arms, cfg)
    with atomic_path(summary) as tmp:
        tmp.write_text(glance)
    with atomic_path(summary_html) as tmp:  # the report shows HTML (Markdown would only download)
        tmp.write_text(_markdown_html(glance + "\n" + _markdown(out, patient_metrics, agg, cfg), "Results at a glance"))
    for r in out.itertuples():
        _log.info("%s level, %s - %s on %d: balanced accuracy %+.3f, McNemar p %.3g, DeLong p %.3g", r.level, r.arm,
                  r.reference, r.n, r.balanced_accuracy_difference, r.mcnemar_p, r.delong_p)
    return out


def _fmt(value: float, digits: int = 3, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _fmt_p(p: float) -> str:
    return "–" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _p_is(p: float) -> str:
    text = _fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _markdown(table: pd.DataFrame, patient_metrics: pd.DataFrame, agg: AggregateConfig, cfg: EvaluateConfig) -> str:
    names = {"accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity",
             "balanced_accuracy": "balanced acc.", "auc": "ROC AUC"}
    rule = f"fixed, theta = {agg.fixed_theta:g}" if agg.mode == "fixed" else "auto, chosen per fold on validation slides"
    lines = ["# Paired comparisons of the arms", "",
             (f"Differences arm - reference on the same pooled test units at the configured theta rule ({rule}); "
             f"{100 * cfg.ci:g}% paired bootstrap CIs ({cfg.bootstrap} resamples) "
             "in brackets. McNemar: exact test of the discordant calls (reference right only / arm right only). "
             "DeLong: test of the AUC difference. p-values are not corrected for the number of pairs."), ""]
    header = ["reference", "arm", "n", *[f"Δ {names[m]}" for m in PAIRED_METRICS], "McNemar (ref / arm), p",
              "DeLong p", "flags"]
    for level in ("slide", "patient"):
        part = table[table["level"] == level] if len(table) else table
        if not len(part):
            continue
        lines += [f"## {level.capitalize()} level", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in part.to_dict("records"):
            cells = [r["reference"], r["arm"], f"{r['n']} ({r['n_malignant']} malignant)"]
            cells += [f"{_fmt(r[f'{m}_difference'], sign=True)} [{_fmt(r[f'{m}_ci_low'], sign=True)}, "
                      f"{_fmt(r[f'{m}_ci_high'], sign=True)}]" for m in PAIRED_METRICS]
            cells += [f"{r['mcnemar_reference_only']} / {r['mcnemar_arm_only']}, {_fmt_p(r['mcnemar_p'])}",
                      _fmt_p(r["delong_p"]),
                      "; ".join(f"{a}: {f}" for a, f in ((r["reference"], r["flags_reference"]),
                                                          (r["arm"], r["flags_arm"])) if f) or "none"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if len(patient_metrics):
        lines += ["## Patient-level metrics per arm", "",
                  ("A patient's score is the mean of its test slides' scores (malignant above its fold's theta); "
                  "a patient with any malignant slide is malignant. Bootstrap CIs over patients."), "",
                  "| arm | patients (slides) | " + " | ".join(names[m] for m in PAIRED_METRICS) + " |",
                  "|" + "---|" * (2 + len(PAIRED_METRICS))]
        for r in patient_metrics.to_dict("records"):
            cells = [r["arm"], f"{r['n_patients']} ({r['n_slides']})"]
            cells += [f"{_fmt(r[m])} [{_fmt(r[f'{m}_ci_low'])}, {_fmt(r[f'{m}_ci_high'])}]" for m in PAIRED_METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _verdict(r: Mapping, alpha: float) -> str:
    """One sentence: did ``r['arm']`` beat ``r['reference']`` on the slides, judged by McNemar at theta."""
    better = r["mcnemar_arm_only"] > r["mcnemar_reference_only"]
    if r["mcnemar_p"] < alpha:
        outcome = "beat" if better else "was worse than"
        head = f"**{r['arm']}** {outcome} `{r['reference']}` with significance"
    else:
        head = f"**{r['arm']}** did not beat `{r['reference']}` with significance"
    return (f"{head} on {r['n']} test slides: balanced accuracy {_fmt(r['balanced_accuracy_arm'])} vs "
            f"{_fmt(r['balanced_accuracy_reference'])} (difference {_fmt(r['balanced_accuracy_difference'], sign=True)}, "
            f"{100 * (1 - alpha):g}% CI [{_fmt(r['balanced_accuracy_ci_low'], sign=True)}, "
            f"{_fmt(r['balanced_accuracy_ci_high'], sign=True)}]), exact McNemar {_p_is(r['mcnemar_p'])} "
            f"({r['mcnemar_arm_only']} slides right only with {r['arm']}, {r['mcnemar_reference_only']} only with "
            f"{r['reference']}); AUC {_fmt(r['auc_arm'])} vs {_fmt(r['auc_reference'])}, DeLong "
            f"{_p_is(r['delong_p'])}" + (f"; flagged: {r['flags_arm']}." if r["flags_arm"] else "."))


def _summary(table: pd.DataFrame, flags: pd.DataFrame, arms: Sequence[str], cfg: EvaluateConfig) -> str:
    alpha = 1 - cfg.ci
    lines = ["# Results at a glance", ""]
    if len(flags):
        lines += [f"**{len(flags)} failure flag(s)**: the arms they affect rest on a stage that did not work.", ""]
        lines += [f"- {r['detail']}" + (f" (affects {r['arms'].replace(';', ', ')})" if r["arms"] else "")
                  for r in flags.to_dict("records")]
    else:
        lines.append("No failure flagged: the DINO teachers, VAEs, LDMs and synthetic sets passed their checks.")
    lines.append("")
    reference = next((a for a in REFERENCE_ORDER if a in arms), arms[0])
    if reference != "real":
        lines += [f"No `real` arm is configured; the arms are compared with `{reference}`.", ""]
    slide_rows = table[(table["level"] == "slide") & (table["reference"] == reference)] if len(table) else table
    for r in slide_rows.to_dict("records"):
        lines.append(f"- {_verdict(r, alpha)}")
    if not len(slide_rows):
        lines.append(f"Only one arm (`{reference}`): nothing to compare.")
    lines += ["", (f"Significance: exact McNemar test of the slide calls at the configured theta, two-sided, "
              f"alpha = {alpha:.2g}, not corrected for the {len(slide_rows)} comparison(s). All pairs, patient level "
              "and the bootstrap CIs of every metric: `comparison/paired.md`."), ""]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _markdown_html(text: str, title: str) -> str:
    """A standalone HTML page of the Markdown this module writes (headings, lists, tables, paragraphs)."""
    body: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline_html(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline_html(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not set(lines[i]) <= set("|-: "):  # the separator row
                    cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                    tag = "th" if not rows else "td"
                    rows.append("<tr>" + "".join(f"<{tag}>{_inline_html(c)}</{tag}>" for c in cells) + "</tr>")
                i += 1
            body.append("<table>" + "".join(rows) + "</table>")
            continue
        elif line.strip():
            body.append(f"<p>{_inline_html(line)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:80em;margin:1em auto;line-height:1.4}"
             "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px}"
             "li{margin-bottom:.4em}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
