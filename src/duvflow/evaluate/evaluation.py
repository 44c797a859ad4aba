"""Cross-validated slide-level evaluation: metrics with bootstrap CIs, theta sweep, arm comparison.

Inputs are the per-fold slide tables of :mod:`duvflow.evaluate.aggregate`. The test slides of the
cross-validation folds (``0..K-1``; each slide is a test slide of exactly one fold) are pooled per
arm. Metrics are computed for both thresholds the aggregation wrote: the fixed theta and the
per-fold ``auto`` theta chosen on validation slides. 95% confidence intervals come from a
percentile bootstrap over slides. Neither torch nor scikit-learn nor SciPy is imported here:
these jobs rerun on every theta change, and their imports would dominate their run time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from duvflow.core.arms import arm_condition, arm_fraction
from duvflow.core.config import from_dict
from duvflow.core.figures import pyplot
from duvflow.core.io import atomic_path, read_json, write_csv, write_json
from duvflow.core.labels import label_to_int
from duvflow.core.metrics import roc_auc, roc_curve
from duvflow.evaluate.aggregate import AggregateConfig, binary_metrics, choose_theta, confusion_counts

__all__ = [
    "METRICS",
    "EvaluateConfig",
    "bootstrap_metrics",
    "compare_arms",
    "compare_fractions",
    "evaluate_arm",
    "load_slide_tables",
    "metric_table",
    "roc_auc",
    "roc_curve",
    "sweep_theta",
]

_log = logging.getLogger(__name__)
METRICS = ("accuracy", "sensitivity", "specificity", "balanced_accuracy")
MODES = ("fixed", "auto")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The ``evaluate`` config section."""

    bootstrap: int = 2000
    ci: float = 0.95
    seed: int = 0

    def __post_init__(self):
        if self.bootstrap < 0:
            raise ValueError("evaluate.bootstrap must be >= 0")
        if not 0 < self.ci < 1:
            raise ValueError("evaluate.ci must lie in (0, 1)")


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks within each row of a (B, N) matrix, ties sharing their mean rank (as
    ``scipy.stats.rankdata(s, axis=1)``): (#smaller + #smaller-or-equal + 1) / 2."""
    ordered = np.sort(s, axis=1)
    return np.stack([(np.searchsorted(o, row, "left") + np.searchsorted(o, row, "right") + 1) / 2
                     for o, row in zip(ordered, s, strict=True)]).reshape(s.shape)


def _counts_metrics(y, p) -> dict[str, np.ndarray]:
    """Vectorised metrics over the rows of (B, N) label / prediction matrices."""
    tp = (y & p).sum(1)
    fn = (y & ~p).sum(1)
    tn = (~y & ~p).sum(1)
    fp = (~y & p).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        acc = (tp + tn) / y.shape[1]
        bacc = np.nanmean(np.stack([sens, spec]), axis=0)
    return {"accuracy": acc, "sensitivity": sens, "specificity": spec, "balanced_accuracy": bacc}


def _auc_rows(y, s) -> np.ndarray:
    """Mann-Whitney AUC per row of (B, N) label / score matrices (ties count one half)."""
    ranks = _average_ranks(s)
    n_pos = y.sum(1)
    n_neg = y.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def bootstrap_metrics(labels, scores, predictions: Mapping[str, np.ndarray], *, n: int, seed: int,
                      ci: float = 0.95) -> dict[str, dict[str, tuple[float, float]]]:
    """Percentile bootstrap CIs over slides: ``{mode: {metric: (low, high)}}`` plus ``{"auc": ...}``
    under the key ``"scores"``. Resamples where a metric is undefined (one class drawn) are skipped."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    nan = (float("nan"), float("nan"))
    out: dict[str, dict[str, tuple[float, float]]] = {}
    if n == 0 or len(y) == 0:
        out = {mode: dict.fromkeys(METRICS, nan) for mode in predictions}
        out["scores"] = {"auc": nan}
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n, len(y)))
    q = (100 * (1 - ci) / 2, 100 * (1 + ci) / 2)

    def interval(values: np.ndarray) -> tuple[float, float]:
        values = values[~np.isnan(values)]
        if len(values) == 0:
            return nan
        low, high = np.percentile(values, q)
        return float(low), float(high)

    for mode, pred in predictions.items():
        rows = _counts_metrics(y[idx], np.asarray(pred, dtype=bool)[idx])
        out[mode] = {m: interval(rows[m]) for m in METRICS}
    out["scores"] = {"auc": interval(_auc_rows(y[idx], s[idx]))}
    return out


def load_slide_tables(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate per-fold slide tables (``aggregate_slides`` outputs)."""
    frames = [pd.read_csv(p, dtype={"slide_id": str, "fold": str, "role": str, "label": str}) for p in paths]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["slide_id", "fold", "role", "label", "score", "n_patches", "theta",
                                     "prediction", "theta_fixed", "theta_auto"])
    return pd.concat(frames, ignore_index=True)


def metric_table(labels, scores, thetas) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, balanced accuracy (``score > theta``), confusion counts, AUC."""
    labels = np.asarray(labels, dtype=int)
    pred = np.asarray(scores, dtype=float) > np.asarray(thetas, dtype=float)
    return {**binary_metrics(labels, pred), **confusion_counts(labels, pred), "auc": roc_auc(labels, scores),
            "n_slides": len(labels)}


def _test_slides(tables: pd.DataFrame) -> pd.DataFrame:
    test = tables[tables["role"] == "test"].copy()
    dup = test["slide_id"][test["slide_id"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"slides are test slides of more than one fold: {', '.join(dup[:10])}; "
                         "pooling needs each slide tested once")
    test["y"] = label_to_int(test["label"]) if len(test) else np.zeros(0, int)
    return test.sort_values(["fold", "slide_id"], ignore_index=True)


def evaluate_arm(*, slides: Sequence[str | os.PathLike], arm: str, metrics_json: str | os.PathLike,
                 metrics_csv: str | os.PathLike, pooled_slides: str | os.PathLike, roc_plot: str | os.PathLike,
                 evaluate: dict, seed: int = 0) -> dict:
    """Pooled and per-fold metrics of one arm for the fixed and the auto theta, with bootstrap CIs.

    ``slides`` are the arm's per-fold tables of the cross-validation folds. Writes a JSON with
    everything, a long CSV (``arm, scope, fold, theta_mode, theta, metric, value, ci_low, ci_high``),
    the pooled test slides with both predictions, and a ROC plot (pooled and per fold).
    """
    cfg = from_dict(EvaluateConfig, evaluate, "evaluate")
    _log.info("arm %s: evaluating %d fold table(s)", arm, len(slides))
    test = _test_slides(load_slide_tables(slides))
    if test.empty:
        raise ValueError(f"arm {arm}: no test slides in {', '.join(map(str, slides))}")
    y, s = test["y"].to_numpy(), test["score"].to_numpy(float)
    thetas = {"fixed": test["theta_fixed"].to_numpy(float), "auto": test["theta_auto"].to_numpy(float)}
    preds = {mode: s > thetas[mode] for mode in MODES}
    boot = bootstrap_metrics(y, s, preds, n=cfg.bootstrap, seed=cfg.seed + seed, ci=cfg.ci)
    auc = roc_auc(y, s)
    folds = sorted(test["fold"].unique(), key=_fold_key)

    result = {"arm": arm, "n_slides": len(test), "n_malignant": int(y.sum()), "folds": folds,
              "bootstrap": {"n": cfg.bootstrap, "ci": cfg.ci, "seed": cfg.seed + seed},
              "auc": {"value": auc, "ci_low": boot["scores"]["auc"][0], "ci_high": boot["scores"]["auc"][1]},
              "modes": {}}
    rows = [_row(arm, "pooled", "", "", "auc", auc, *boot["scores"]["auc"], len(test))]
    for mode in MODES:
        point = binary_metrics(y, preds[mode])
        fold_theta = test.groupby("fold")[f"theta_{mode}"].first()
        entry = {
            "theta_per_fold": {f: float(fold_theta[f]) for f in folds},
            "pooled": {m: {"value": point[m], "ci_low": boot[mode][m][0], "ci_high": boot[mode][m][1]}
                       for m in METRICS},
            "confusion": confusion_counts(y, preds[mode]),
            "per_fold": {},
        }
        rows += [_row(arm, "pooled", "", mode, m, point[m], *boot[mode][m], len(test)) for m in METRICS]
        rows += [_row(arm, "pooled", "", mode, k, v, math.nan, math.nan, len(test))
                 for k, v in entry["confusion"].items()]
        for fold in folds:
            part = test[test["fold"] == fold]
            values = metric_table(part["y"], part["score"], part[f"theta_{mode}"])
            entry["per_fold"][fold] = {"theta": float(fold_theta[fold]), **values}
            rows += [_row(arm, "fold", fold, mode, m, values[m], math.nan, math.nan, len(part), fold_theta[fold])
                     for m in (*METRICS, "tp", "fn", "tn", "fp")]
        result["modes"][mode] = entry
    for fold in folds:
        part = test[test["fold"] == fold]
        rows.append(_row(arm, "fold", fold, "", "auc", roc_auc(part["y"], part["score"]), math.nan, math.nan,
                         len(part)))

    write_json(result, metrics_json)
    write_csv(pd.DataFrame(rows), metrics_csv)
    pooled = test.drop(columns=["theta", "prediction", "y"]).assign(
        prediction_fixed=np.where(preds["fixed"], "malignant", "benign"),
        prediction_auto=np.where(preds["auto"], "malignant", "benign"))
    write_csv(pooled, pooled_slides)
    _plot_roc({arm: test}, roc_plot, title=f"ROC, arm {arm} (test slides of {len(folds)} folds)", per_fold=True)
    _log.info("arm %s: %d test slides, AUC %.3f, balanced accuracy fixed %.3f / auto %.3f", arm, len(test), auc,
              result["modes"]["fixed"]["pooled"]["balanced_accuracy"]["value"],
              result["modes"]["auto"]["pooled"]["balanced_accuracy"]["value"])
    return result


def _row(arm, scope, fold, mode, metric, value, low, high, n, theta=math.nan) -> dict:
    return {"arm": arm, "scope": scope, "fold": fold, "theta_mode": mode, "theta": float(theta), "metric": metric,
            "value": float(value), "ci_low": float(low), "ci_high": float(high), "n_slides": int(n)}


def _fold_key(fold: str):
    return (0, int(fold)) if str(fold).isdigit() else (1, str(fold))


def sweep_theta(*, slides: Sequence[str | os.PathLike], arm: str, table: str | os.PathLike,
                plot: str | os.PathLike, aggregate: dict) -> pd.DataFrame:
    """Slide metrics for every theta of the grid, on the pooled test slides and (for choosing) the
    pooled validation slides; the plot marks the configured theta and the best one on validation."""
    cfg = from_dict(AggregateConfig, aggregate, "aggregate")
    _log.info("arm %s: theta sweep over %d fold table(s)", arm, len(slides))
    tables = load_slide_tables(slides)
    test = _test_slides(tables)
    val = tables[tables["role"] == "val"]
    y_val = label_to_int(val["label"]) if len(val) else np.zeros(0, int)
    grid = sorted({float(t) for t in cfg.theta_grid} | {cfg.fixed_theta})
    rows = []
    for theta in grid:
        row = {"theta": theta, **binary_metrics(test["y"], test["score"] > theta),
               **confusion_counts(test["y"], test["score"] > theta), "n_test": len(test)}
        val_m = binary_metrics(y_val, val["score"].to_numpy(float) > theta)
        row.update({f"val_{k}": v for k, v in val_m.items()}, n_val=len(val))
        rows.append(row)
    out = pd.DataFrame(rows)
    best = choose_theta(val["score"], y_val, cfg.theta_grid, cfg.fixed_theta)
    out["configured"] = np.isclose(out["theta"], cfg.fixed_theta)
    out["best_on_validation"] = np.isclose(out["theta"], best)
    out.insert(0, "arm", arm)
    write_csv(out, table)
    _plot_sweep(out, plot, arm=arm, configured=cfg.fixed_theta, best=best, mode=cfg.mode)
    _log.info("arm %s: theta sweep over %d values; best on validation %.3g, configured %.3g", arm, len(grid), best,
              cfg.fixed_theta)
    return out


def compare_arms(*, metrics: Sequence[str | os.PathLike], pooled_slides: Sequence[str | os.PathLike],
                 arms: Sequence[str], fid: Mapping[str, Sequence[str | os.PathLike]], table: str | os.PathLike,
                 markdown: str | os.PathLike, roc_plot: str | os.PathLike, aggregate: dict) -> pd.DataFrame:
    """One table, arms as rows: metrics with CIs for the fixed and auto theta, FID / FD-DINO of the
    arm's synthetic set (mean over folds); CSV + Markdown, and the arms' ROC curves in one plot.

    ``fid`` maps an arm to its per-fold fidelity JSONs (empty for the ``real`` arm).
    """
    if not (len(metrics) == len(pooled_slides) == len(arms)):
        raise ValueError("metrics, pooled_slides and arms must list the same arms in the same order")
    cfg = from_dict(AggregateConfig, aggregate, "aggregate")
    _log.info("comparing %d arm(s): %s", len(arms), ", ".join(arms))
    rows = []
    for arm, path in zip(arms, metrics, strict=True):
        res = read_json(path)
        if res["arm"] != arm:
            raise ValueError(f"{path} holds arm {res['arm']!r}, expected {arm!r}")
        fidelity = _fidelity(fid.get(arm, ()))
        for mode in MODES:
            entry = res["modes"][mode]
            thetas = sorted(set(entry["theta_per_fold"].values()))
            row = {"arm": arm, "theta_mode": mode, "theta": thetas[0] if len(thetas) == 1 else math.nan,
                   "theta_per_fold": ";".join(f"{f}:{t:g}" for f, t in entry["theta_per_fold"].items()),
                   "n_slides": res["n_slides"]}
            for m in METRICS:
                row.update({m: entry["pooled"][m]["value"], f"{m}_ci_low": entry["pooled"][m]["ci_low"],
                            f"{m}_ci_high": entry["pooled"][m]["ci_high"]})
            row.update({"auc": res["auc"]["value"], "auc_ci_low": res["auc"]["ci_low"],
                        "auc_ci_high": res["auc"]["ci_high"], **fidelity})
            rows.append(row)
    out = pd.DataFrame(rows)
    write_csv(out, table)
    with atomic_path(markdown) as tmp:
        tmp.write_text(_markdown(out, cfg))
    _plot_roc({arm: _test_slides(load_slide_tables([p])) for arm, p in zip(arms, pooled_slides, strict=True)},
              roc_plot, title="ROC of the arms (pooled test slides)", per_fold=False)
    return out


def compare_fractions(*, metrics: Sequence[str | os.PathLike], arms: Sequence[str], table: str | os.PathLike,
                      plot: str | os.PathLike, aggregate: dict) -> pd.DataFrame:
    """Slide metrics against the synthetic fraction, one line per conditioning, at the configured theta.

    ``arms`` are ``real`` (drawn at fraction 0, the start of every line) and the arms of a fraction
    sweep (``real+ssl@0.1``), ``metrics`` their ``evaluate_arm`` JSONs in the same order. Writes a
    long table (``arm, condition, fraction, theta_mode, metric, value, ci_low, ci_high, n_slides, ci``) and
    one panel per metric (accuracy, sensitivity, specificity, balanced accuracy, ROC AUC) with the
    bootstrap CIs as error bars.
    """
    if len(metrics) != len(arms):
        raise ValueError("metrics and arms must list the same arms in the same order")
    cfg = from_dict(AggregateConfig, aggregate, "aggregate")
    rows = []
    for arm, path in zip(arms, metrics, strict=True):
        res = read_json(path)
        if res["arm"] != arm:
            raise ValueError(f"{path} holds arm {res['arm']!r}, expected {arm!r}")
        cond, fraction = arm_condition(arm), arm_fraction(arm)
        if (cond is None) != (fraction is None) or (cond is None and arm != "real"):
            raise ValueError(f"arm {arm!r} is neither `real` nor an arm of a fraction sweep (real+<cond>@<f>)")
        pooled = res["modes"][cfg.mode]["pooled"]
        for m in (*METRICS, "auc"):
            entry = res["auc"] if m == "auc" else pooled[m]
            rows.append({"arm": arm, "condition": cond or "", "fraction": fraction or 0.0, "theta_mode": cfg.mode,
                         "metric": m, "value": entry["value"], "ci_low": entry["ci_low"], "ci_high": entry["ci_high"],
                         "n_slides": res["n_slides"], "ci": res["bootstrap"]["ci"]})
    out = pd.DataFrame(rows).sort_values(["condition", "fraction", "metric"], ignore_index=True)
    write_csv(out, table)
    _plot_fractions(out, plot, mode=cfg.mode)
    _log.info("fraction sweep: %d arm(s), fractions %s", len(arms),
              ", ".join(f"{f:g}" for f in sorted(out["fraction"].unique())))
    return out


def _plot_fractions(table: pd.DataFrame, target: str | os.PathLike, *, mode: str) -> None:
    plt = pyplot()

    metrics = (*METRICS, "auc")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), sharey=True)
    real = table[table["condition"] == ""]
    conds = sorted(c for c in table["condition"].unique() if c)
    width = table["fraction"].max() or 1.0
    for ax, metric in zip(axes, metrics, strict=True):
        for k, cond in enumerate(conds):
            # the arms' CIs side by side: each conditioning a little to one side of its fractions
            part = pd.concat([real, table[table["condition"] == cond]])
            part = part[part["metric"] == metric].sort_values("fraction")
            x = part["fraction"] + (k - (len(conds) - 1) / 2) * 0.012 * width
            err = np.clip([part["value"] - part["ci_low"], part["ci_high"] - part["value"]], 0, None)
            ax.errorbar(x, part["value"], yerr=np.nan_to_num(err), fmt="-o", ms=4, capsize=3, label=f"real+{cond}")
        base = real[real["metric"] == metric]
        if len(base):
            ax.axhline(float(base["value"].iloc[0]), color="0.5", ls=":", lw=1, label="real (fraction 0)")
        ax.set(title=metric.replace("_", " ") if metric != "auc" else "ROC AUC", xlabel="synthetic fraction",
               ylim=(-0.02, 1.02), xticks=sorted(table["fraction"].unique()))
    axes[0].set_ylabel(f"pooled test slides (theta {mode})")
    axes[0].legend(fontsize="x-small", loc="best")
    fig.suptitle(f"Slide metrics against the share of synthetic patches ({table['ci'].iloc[0]:.0%} bootstrap CIs)",
                 fontsize="medium")
    fig.tight_layout()
    _save(fig, target)


def _fidelity(paths: Sequence[str | os.PathLike]) -> dict[str, float]:
    """Mean and SD over folds of FID and FD-DINO from the fidelity JSONs (NaN without a synthetic set)."""
    values: dict[str, list[float]] = {"fid": [], "fd_dino": []}
    for path in paths:
        data = {k.lower().replace("-", "_"): v for k, v in read_json(path).items()}
        for key, vals in values.items():
            if key not in data:
                raise ValueError(f"{path} has no {key!r} entry (keys: {', '.join(sorted(data))})")
            vals.append(math.nan if data[key] is None else float(data[key]))  # None: not computable
    out = {}
    for key, vals in values.items():
        vals = [v for v in vals if not math.isnan(v)]
        out[key] = float(np.mean(vals)) if vals else math.nan
        out[f"{key}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
    return out


def _fmt(value: float, low: float = math.nan, high: float = math.nan, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.{digits}f}"
    if not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _markdown(table: pd.DataFrame, cfg: AggregateConfig) -> str:
    header = ["arm", "theta", "accuracy", "sensitivity", "specificity", "balanced acc.", "ROC AUC", "FID",
              "FD-DINO"]
    intro = (f"Pooled test slides of the cross-validation folds; bootstrap CIs over slides in brackets. "
             f"The configured rule is theta = {cfg.theta}; both the fixed theta ({cfg.fixed_theta:g}) and the "
             "theta chosen per fold on validation slides (auto) are shown. FID and FD-DINO: mean over folds "
             "of the arm's synthetic set against real training patches.")
    lines = ["# Slide-level results per arm", "", intro, ""]
    for mode in (cfg.mode, *[m for m in MODES if m != cfg.mode]):
        part = table[table["theta_mode"] == mode]
        lines += [f"## theta {mode}{' (configured)' if mode == cfg.mode else ''}", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in part.iterrows():
            theta = (f"{r['theta']:g}" if not math.isnan(r["theta"]) else
                     ", ".join(t.split(":")[1] for t in r["theta_per_fold"].split(";")) + " (per fold)")
            cells = [r["arm"], theta] + [_fmt(r[m], r[f"{m}_ci_low"], r[f"{m}_ci_high"]) for m in
                                         (*METRICS, "auc")]
            cells += [_fmt(r["fid"], digits=2), _fmt(r["fd_dino"], digits=2)]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _plot_roc(arms: Mapping[str, pd.DataFrame], target: str | os.PathLike, *, title: str, per_fold: bool) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls=":")
    for arm, test in arms.items():
        curves = [("pooled" if per_fold else arm, test, 2.0)]
        if per_fold:
            curves += [(f"fold {f}", part, 0.8) for f, part in test.groupby("fold", sort=True)]
        for label, part, lw in curves:
            if part["y"].nunique() < 2:
                continue  # a ROC curve needs both classes
            fpr, tpr, _ = roc_curve(part["y"], part["score"])
            ax.plot(fpr, tpr, lw=lw, label=f"{label} (AUC {roc_auc(part['y'], part['score']):.2f}, "
                                           f"{len(part)} slides)")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(-0.01, 1.01), ylim=(-0.01, 1.02), title=title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    _save(fig, target)


def _plot_sweep(table: pd.DataFrame, target: str | os.PathLike, *, arm: str, configured: float, best: float,
                mode: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    # accuracy drawn wide and pale underneath: with balanced classes it coincides with balanced accuracy
    ax.plot(table["theta"], table["accuracy"], "-", lw=5, alpha=0.35, color="tab:green", label="accuracy (test)")
    for metric, style, color in (("sensitivity", "-o", "tab:blue"), ("specificity", "-s", "tab:orange"),
                                 ("balanced_accuracy", "-d", "tab:purple")):
        ax.plot(table["theta"], table[metric], style, ms=4, color=color, label=f"{metric.replace('_', ' ')} (test)")
    ax.plot(table["theta"], table["val_balanced_accuracy"], "--", color="0.4", label="balanced accuracy (validation)")
    ax.axvline(configured, color="k", ls=":", label=f"configured theta {configured:g}"
               + (" (auto's default)" if mode == "auto" else ""))
    ax.axvline(best, color="tab:red", ls="--", lw=1, label=f"best on validation {best:g}")
    ax.set(xlabel="theta (slide threshold on mean patch probability)", ylabel="slide-level metric",
           ylim=(-0.02, 1.02), title=f"Threshold sweep, arm {arm}")
    ax.legend(fontsize="x-small", loc="best")
    fig.tight_layout()
    _save(fig, target)


def _save(fig, target: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(target).suffix.lstrip(".") or "png")
    plt.close(fig)
