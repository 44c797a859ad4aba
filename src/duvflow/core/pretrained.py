"""Where the configured pretrained weights come from, checked before any job starts.

Three models may start from published weights: the patch classifier (``classifier.model``, a timm
name with a pretrained tag or an ``hf-hub:`` name), the DINO backbone (``dino.backbone``, same
forms) and the latent diffusion model's autoencoder (``vae.pretrained``, a diffusers repo id).
Each comes from a local file or folder when the config names one, otherwise from the Hugging Face
hub: from the hub libraries' cache (``HF_HUB_CACHE`` / ``HF_HOME``) or, when the machine is online
and ``HF_HUB_OFFLINE`` is not set, downloaded by timm/diffusers in the job.

:func:`check_pretrained` finds every weight that cannot be had (offline and not cached, gated
without a token, no such repository, a bad local path) and returns one line per model naming the
model, its config key and both remedies, so that the workflow stops before its first job rather
than hours later in a training job. This module imports ``huggingface_hub`` only (no torch): the
Snakefile calls it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["INITS", "WeightSource", "check_pretrained", "hub_repo", "is_hub_repo_id", "weight_sources"]

INITS = ("pretrained", "dino", "random")  # classifier.init; dino.init takes the first and the last
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
HF_HUB_PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class WeightSource:
    """One model's configured weights: a local path, or a hub repository and the files it needs.

    ``files`` lists groups of alternatives: every group needs one of its files (e.g. the config
    plus safetensors-or-bin weights).
    """

    model: str
    key: str
    path_key: str
    local: str | None = None
    repo_id: str | None = None
    files: tuple[tuple[str, ...], ...] = ()


def is_hub_repo_id(name: str) -> bool:
    """``org/name`` (what diffusers' ``from_pretrained`` takes), as opposed to a path that exists."""
    return bool(_REPO_ID.match(name)) and not Path(name).exists()


def hub_repo(timm_name: str) -> str | None:
    """The hub repository timm loads ``timm_name``'s pretrained weights from; None if it names no tag.

    ``hf-hub:org/name`` -> ``org/name``; ``arch.tag`` -> ``timm/arch.tag`` (timm's convention for
    the weights it publishes, e.g. ``vit_base_patch16_224.augreg2_in21k_ft_in1k``). An untagged
    architecture name would fall back to timm's default tag, which may change between timm releases.
    """
    if timm_name.startswith(HF_HUB_PREFIX):
        return timm_name[len(HF_HUB_PREFIX):].split("@", 1)[0]
    arch, _, tag = timm_name.partition(".")
    return f"timm/{arch}.{tag}" if tag else None


def weight_sources(config: dict) -> tuple[list[WeightSource], list[str]]:
    """The hub or local weights the validated ``config`` needs, and problems found in the config itself."""
    sources, problems = [], []
    for section, name_key in (("classifier", "model"), ("dino", "backbone")):
        cfg = config.get(section, {})
        name, key, path_key = cfg.get(name_key, ""), f"{section}.{name_key}", f"{section}.weights"
        init, weights = cfg.get("init", "random"), cfg.get("weights")
        if weights and init != "pretrained":
            problems.append(f"{path_key} is set but {section}.init is {init!r}: set {section}.init: pretrained to "
                            f"start from {weights}, or remove {path_key}")
        if name.startswith(HF_HUB_PREFIX):  # timm reads the architecture from the repo's config.json
            files = (("config.json",),) + ((TIMM_WEIGHT_FILES,) if init == "pretrained" and not weights else ())
            sources.append(WeightSource(name, key, path_key, repo_id=hub_repo(name), files=files))
        elif init == "pretrained" and weights:
            sources.append(WeightSource(name, key, path_key, local=weights))
        elif init == "pretrained":
            repo = hub_repo(name)
            if repo is None:
                problems.append(f"{key}: {name!r} names no pretrained tag; name the weights (e.g. "
                                f"{name}.augreg2_in21k_ft_in1k, see timm.list_pretrained('{name}*')), or set "
                                f"{path_key} to a local weights file, or {section}.init: random")
            else:
                sources.append(WeightSource(name, key, path_key, repo_id=repo, files=(TIMM_WEIGHT_FILES,)))
    vae = config.get("vae", {}).get("pretrained")
    if vae:
        if is_hub_repo_id(vae):
            sources.append(WeightSource(vae, "vae.pretrained", "vae.pretrained", repo_id=vae,
                                        files=(("config.json",), VAE_WEIGHT_FILES)))
        else:
            sources.append(WeightSource(vae, "vae.pretrained", "vae.pretrained", local=vae))
    problems += _dino_init_problems(config)
    return sources, problems


def _dino_init_problems(config: dict) -> list[str]:
    """``classifier.init: dino`` needs the classifier to be the DINO backbone's architecture."""
    cls, dino = config.get("classifier", {}), config.get("dino", {})
    if cls.get("init") != "dino":
        return []
    kwargs = dict(cls.get("model_kwargs") or {})
    # a mean-pooled teacher has timm's fc_norm where a CLS-pooled one has norm: the heads must agree
    pool = kwargs.pop("global_pool", "token")
    wanted_pool = "avg" if dino.get("pooling") == "mean" else "token"
    same = (_architecture(cls.get("model", "")) == _architecture(dino.get("backbone", ""))
            and kwargs == dict(dino.get("model_kwargs") or {}))
    problems = []
    if not same:
        problems.append(f"classifier.init is dino (start from the fold's DINO teacher), but classifier.model "
                        f"{cls.get('model')!r} with model_kwargs {kwargs} is not dino.backbone "
                        f"{dino.get('backbone')!r} with model_kwargs {dino.get('model_kwargs') or {}}: make them "
                        f"the same architecture, or set classifier.init: pretrained | random")
    if pool != wanted_pool:
        problems.append(f"classifier.init is dino and dino.pooling is {dino.get('pooling')!r}: set "
                        f"classifier.model_kwargs.global_pool: {wanted_pool} so the classifier pools as the teacher")
    return problems


def _architecture(timm_name: str) -> str:
    return timm_name if timm_name.startswith(HF_HUB_PREFIX) else timm_name.partition(".")[0]


def check_pretrained(config: dict) -> list[str]:
    """One line per configured weight that cannot be had now (empty: all can), plus config problems."""
    sources, problems = weight_sources(config)
    for source in sources:
        reason = _local_problem(source) if source.local else _hub_problem(source)
        if reason:
            problems.append(_message(source, reason))
    return problems


def _local_problem(source: WeightSource) -> str | None:
    path = Path(source.local).expanduser()
    if not path.exists():
        return f"the local path {source.local} does not exist"
    if path.is_dir() and not any(path.iterdir()):
        return f"the local folder {source.local} is empty"
    return None


def _hub_problem(source: WeightSource) -> str | None:
    missing = [group for group in source.files if not any(_cached(source.repo_id, f) for f in group)]
    if not missing:
        return None
    if _offline():
        return f"HF_HUB_OFFLINE is set and {' / '.join(missing[0])} of {source.repo_id} is not in the hub cache " \
               f"{hub_cache_dir()}"
    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        auth_check(source.repo_id)
    except GatedRepoError:
        return f"{source.repo_id} is gated and no token with access to it is set (HF_TOKEN or `hf auth login`)"
    except RepositoryNotFoundError:
        return f"{source.repo_id} is not on the Hugging Face hub (or is private and no token with access is set)"
    except Exception as err:  # noqa: BLE001 - any network failure: the hub cannot be reached from here
        return f"{source.repo_id} is not in the hub cache {hub_cache_dir()} and the hub cannot be reached " \
               f"({type(err).__name__}: {str(err)[:120]})"
    return None


def _message(source: WeightSource, reason: str) -> str:
    if source.local:
        remedies = (f"point {source.path_key} at an existing local file or folder with these weights, or load them "
                    f"from the Hugging Face hub instead (name them in {source.key}: a timm name with a pretrained "
                    f"tag, an hf-hub: name or, for the VAE, a repo id such as stabilityai/sd-vae-ft-mse)")
    else:
        remedies = (f"set {source.path_key} to a local file or folder with these weights, or give access to "
                    f"{source.repo_id} on the hub (online: unset HF_HUB_OFFLINE and, for a gated model, accept its "
                    f"terms on huggingface.co and set HF_TOKEN; offline: `hf download {source.repo_id}` on an online "
                    f"machine and copy the cache to HF_HUB_CACHE)")
    return f"pretrained weights for {source.model} ({source.key}) cannot be had: {reason}. Remedies: {remedies}"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", "")).upper() in \
        {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The hub libraries' cache folder, read from the environment now (not at import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir())
    return isinstance(found, str) and os.path.isfile(found)
