"""The fidelity side of the tiny run: the generative floor (VAE reconstruction, guidance 0), the
memorisation audit, and a guidance sweep that reruns only sampling and fidelity jobs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image
from test_reruns import _planned

pytestmark = pytest.mark.slow


def test_the_fidelity_table_has_the_floor_the_audit_and_the_unconditional_sets(tiny_run):
    results = tiny_run / "results"
    table = pd.read_csv(results / "fid" / "summary.csv")
    main = table[~table["sweep"]]
    assert set(main["arm"]) == {"class", "ssl"} and (main["guidance"] == 2.0).all()
    # guidance 0 (unconditional) beside every guided set, with the same image counts
    floor = table[table["sweep"]]
    assert set(floor["arm"]) == {"class @ 0 (unconditional)", "ssl @ 0 (unconditional)"}
    assert (floor["guidance"] == 0).all() and len(floor) == len(main)
    assert table["rfid"].notna().all() and (table["psnr"] > 0).all()
    assert table["near_copy_fraction_dino"].between(0, 1).all()
    rec = json.loads((results / "fid" / "reconstruction" / "fold_0.json").read_text())
    assert rec["n_images"] > 0 and rec["rfid"] >= 0 and ("validation" in rec["patches"] or "training" in rec["patches"])
    manifest = pd.read_parquet(results / "synthetic_guidance" / "ssl" / "g0" / "fold_0" / "manifest.parquet")
    guided = pd.read_parquet(results / "synthetic" / "ssl" / "fold_0" / "manifest.parquet")
    assert (manifest["guidance"] == 0).all() and manifest["seed"].tolist() == guided["seed"].tolist()
    with Image.open(results / "fid" / "ssl" / "fold_0_neighbours.png") as im:
        assert im.size[0] > 200
    md = (results / "fid" / "summary.md").read_text()
    assert "Generative floor" in md and "near copies" in md and "conditioning space" in md


def test_adding_a_guidance_value_reruns_only_sampling_and_fidelity(tiny_run, tmp_path):
    jobs = _planned(tiny_run, tmp_path, {"sampling": {"guidance": [2.0, 4.0]}})
    rules = {rule for rule, _, _ in jobs}
    assert {"sample_ldm_guidance", "measure_fidelity_guidance", "summarise_fidelity"} <= rules, sorted(rules)
    assert rules <= {"sample_ldm_guidance", "measure_fidelity_guidance", "summarise_fidelity", "all"}, sorted(rules)
    assert {wc["guidance"] for rule, wc, _ in jobs if rule == "sample_ldm_guidance"} == {"4"}
