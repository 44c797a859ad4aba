"""Does the embedding mean something? Linear and k-NN probes, before and after DINO fine-tuning.

For one fold: a logistic-regression probe and a k-NN classifier are trained on the embeddings of
the fold's training-slide patches and scored on its validation-slide patches (patch-level accuracy
and ROC AUC; plus slide-level accuracy of the mean patch probability), once with the fold's DINO
teacher and once with the initial backbone. A 2-D projection (t-SNE or UMAP) of both, coloured by
label and by slide, shows the same thing to the eye. Labels are used here only for diagnosis;
nothing downstream is selected with them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from duvflow.core.config import from_dict
from duvflow.core.figures import pyplot
from duvflow.core.io import atomic_path, read_json, write_csv, write_json
from duvflow.core.patches import LABEL_TO_INT
from duvflow.ssl.tables import read_embeddings

__all__ = ["ProbeConfig", "fit_probes", "probe_embeddings", "summarise_probes"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    projection: str = "tsne"
    max_points: int = 3000
    max_train_patches: int = 20000
    knn_k: int = 20
    logreg_c: float = 1.0


def fit_probes(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray,
               slides_eval: np.ndarray, cfg: ProbeConfig, threads: int = 1) -> dict:
    """Logistic-regression and k-NN probe metrics (``None`` where a metric is undefined)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        return {"error": "the training patches carry one label only; a probe needs both"}
    if len(y_eval) == 0:
        return {"error": "no evaluation patches"}
    probes = {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(C=cfg.logreg_c, max_iter=2000)),
        "knn": KNeighborsClassifier(n_neighbors=min(cfg.knn_k, len(y_train)), metric="cosine", n_jobs=threads),
    }
    out = {}
    for name, model in probes.items():
        model.fit(x_train, y_train)
        prob = model.predict_proba(x_eval)[:, list(model.classes_).index(1)]
        pred = (prob >= 0.5).astype(int)
        slide = pd.DataFrame({"slide": slides_eval, "prob": prob, "y": y_eval}).groupby("slide").mean()
        out[name] = {
            "accuracy": float(accuracy_score(y_eval, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_eval, pred)) if len(np.unique(y_eval)) > 1 else None,
            "auc": float(roc_auc_score(y_eval, prob)) if len(np.unique(y_eval)) > 1 else None,
            "slide_accuracy": float(((slide["prob"] >= 0.5).astype(int) == slide["y"].round()).mean()),
        }
    return out


def _align(meta_ref: pd.DataFrame, meta: pd.DataFrame, x: np.ndarray, what: str) -> np.ndarray:
    """Rows of ``x`` (keyed by ``meta``) reordered to ``meta_ref``'s (slide_id, patch_index) order."""
    key = ["slide_id", "patch_index"]
    pos = pd.Series(np.arange(len(meta)), index=pd.MultiIndex.from_frame(meta[key]))
    ref = pd.MultiIndex.from_frame(meta_ref[key])
    missing = ~ref.isin(pos.index)
    if missing.any():
        raise ValueError(f"{what} lacks {int(missing.sum())} patches of the fold's embeddings "
                         f"(e.g. {ref[missing][0]}); were they computed from the same tiles?")
    return x[pos.loc[ref].to_numpy()]


def probe_embeddings(*, embeddings: str | os.PathLike, initial: str | os.PathLike, fold: str,
                     output: str | os.PathLike, plot: str | os.PathLike, probe: dict, seed: int,
                     threads: int = 1) -> dict:
    """Probe fold ``fold``'s embeddings (roles from its parquet) against the initial backbone's."""
    cfg = from_dict(ProbeConfig, probe, "probe")
    meta, x_ft = read_embeddings(embeddings)
    meta_init, x_init = read_embeddings(initial)
    x_init = _align(meta, meta_init, x_init, str(initial))
    y = meta["label"].map(LABEL_TO_INT).to_numpy()
    role = meta["role"].to_numpy()
    rng = np.random.default_rng(seed)

    eval_role = "val" if (role == "val").any() else "test"
    if eval_role == "test":
        _log.warning("fold %s has no validation slides: the probe is scored on its test slides instead (a "
                     "diagnostic only: no model is selected with it)", fold)
    train_idx = np.flatnonzero(role == "train")
    if len(train_idx) > cfg.max_train_patches:
        train_idx = np.sort(rng.choice(train_idx, cfg.max_train_patches, replace=False))
    eval_idx = np.flatnonzero(role == eval_role)
    result = {
        "fold": str(fold), "eval_role": eval_role, "n_train": len(train_idx), "n_eval": len(eval_idx),
        "n_train_slides": int(meta["slide_id"].iloc[train_idx].nunique()),
        "n_eval_slides": int(meta["slide_id"].iloc[eval_idx].nunique()), "embed_dim": int(x_ft.shape[1]),
    }
    for name, x in (("initial", x_init), ("finetuned", x_ft)):
        result[name] = fit_probes(x[train_idx], y[train_idx], x[eval_idx], y[eval_idx],
                                  meta["slide_id"].to_numpy()[eval_idx], cfg, threads)
    result["delta"] = {
        p: {m: result["finetuned"][p][m] - result["initial"][p][m]
            for m in ("accuracy", "auc") if result["finetuned"][p].get(m) is not None
            and result["initial"][p].get(m) is not None}
        for p in ("logreg", "knn") if p in result["finetuned"] and p in result["initial"]
    }
    write_json(result, output)
    _log.info("probe fold %s: %s", fold, _summary_line(result))
    _plot_projection(meta, {"initial backbone": x_init, "DINO teacher": x_ft}, result, cfg, plot, seed, threads)
    return result


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _summary_line(r: dict) -> str:
    head = f"{r['n_train']} train / {r['n_eval']} {r['eval_role']} patches"
    parts = []
    for p in ("logreg", "knn"):
        ft, init = r["finetuned"].get(p), r["initial"].get(p)
        if ft is None or init is None:
            parts.append(f"{p}: {r['finetuned'].get('error') or r['initial'].get('error')}")
            continue
        parts.append(f"{p} acc {_fmt(ft['accuracy'])} AUC {_fmt(ft['auc'])} "
                     f"(initial {_fmt(init['accuracy'])} / {_fmt(init['auc'])})")
    return f"{head}; " + "; ".join(parts)


def _project(x: np.ndarray, method: str, seed: int, threads: int) -> np.ndarray:
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(x)
    if method != "tsne":
        raise ValueError(f"probe.projection must be tsne or umap, got {method!r}")
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if x.shape[1] > 50:  # the usual PCA pre-reduction: t-SNE cost grows with the dimension
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed,
                n_jobs=threads).fit_transform(x)


def _plot_projection(meta: pd.DataFrame, spaces: dict[str, np.ndarray], result: dict, cfg: ProbeConfig,
                     target, seed: int, threads: int) -> None:
    plt = pyplot()

    rng = np.random.default_rng(seed)
    idx = np.arange(len(meta)) if len(meta) <= cfg.max_points else np.sort(
        rng.choice(len(meta), cfg.max_points, replace=False))
    sub = meta.iloc[idx]
    slides = sorted(sub["slide_id"].unique())
    cmap = plt.get_cmap("tab20", max(len(slides), 1))
    fig, axes = plt.subplots(len(spaces), 2, figsize=(11, 5 * len(spaces)), constrained_layout=True, squeeze=False)
    for row, ((name, x), key) in enumerate(zip(spaces.items(), ("initial", "finetuned"), strict=True)):
        xy = _project(x[idx], cfg.projection, seed, threads)
        lr = result[key].get("logreg", {})
        for label, colour in (("benign", "tab:blue"), ("malignant", "tab:red")):
            m = (sub["label"] == label).to_numpy()
            axes[row, 0].scatter(xy[m, 0], xy[m, 1], s=4, c=colour, label=label, alpha=0.7, linewidths=0)
        axes[row, 0].legend(markerscale=3, fontsize=8)
        axes[row, 0].set_title(f"{name}: by label (probe acc {_fmt(lr.get('accuracy'))}, "
                               f"AUC {_fmt(lr.get('auc'))})", fontsize=10)
        for j, sid in enumerate(slides):
            m = (sub["slide_id"] == sid).to_numpy()
            marker = "o" if (sub.loc[m, "label"] == "benign").all() else "^"
            axes[row, 1].scatter(xy[m, 0], xy[m, 1], s=5, color=cmap(j), marker=marker, label=sid, alpha=0.7,
                                 linewidths=0)
        if len(slides) <= 20:
            axes[row, 1].legend(markerscale=2, fontsize=6, ncol=2)
        axes[row, 1].set_title(f"{name}: by slide (o benign, ^ malignant)", fontsize=10)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"fold {result['fold']}: {cfg.projection.upper()} of {len(idx)} patch embeddings")
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def summarise_probes(*, probes: Sequence[str | os.PathLike], table: str | os.PathLike,
                     plot: str | os.PathLike) -> pd.DataFrame:
    """One row per fold, probe and backbone (initial / finetuned) + a bar chart of the AUCs."""
    rows = []
    for path in probes:
        r = read_json(path)
        for model in ("initial", "finetuned"):
            for p in ("logreg", "knn"):
                m = r[model].get(p) or {}
                rows.append({"fold": r["fold"], "backbone": model, "probe": p, "eval_role": r["eval_role"],
                             "n_train": r["n_train"], "n_eval": r["n_eval"], "accuracy": m.get("accuracy"),
                             "auc": m.get("auc"), "slide_accuracy": m.get("slide_accuracy")})
    df = pd.DataFrame(rows)
    write_csv(df, table)

    plt = pyplot()

    folds = list(dict.fromkeys(df["fold"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    width = 0.38
    for ax, metric in zip(axes, ("accuracy", "auc"), strict=True):
        for k, p in enumerate(("logreg", "knn")):
            for j, (model, colour) in enumerate((("initial", "tab:gray"), ("finetuned", "tab:green"))):
                vals = [df[(df.fold == f) & (df.probe == p) & (df.backbone == model)][metric].astype(float).iloc[0]
                        for f in folds]
                pos = np.arange(len(folds)) * 2.2 + k * 1.0 + (j - 0.5) * width
                ax.bar(pos, np.nan_to_num(vals, nan=0.0), width, color=colour, hatch="//" if p == "knn" else None,
                       label=f"{p} {model}", edgecolor="black", linewidth=0.3)
        ax.set_xticks(np.arange(len(folds)) * 2.2 + 0.5, [f"fold {f}" for f in folds])
        ax.axhline(0.5, color="black", lw=0.6, ls=":")
        ax.set_ylim(0, 1)
        ax.set_title(f"patch-level {metric} (evaluation slides: val, else test)")
    axes[0].legend(fontsize=7)
    with atomic_path(plot) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return df
