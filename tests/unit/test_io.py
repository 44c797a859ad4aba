"""Atomic writes: a failed writer leaves neither the target nor a temporary file."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from duvflow.core.io import atomic_path, read_json, write_csv, write_json, write_parquet


def test_success_renames_into_place(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and not target.exists()
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_exception_leaves_no_target_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(ValueError, match="half-way"), atomic_path(target) as tmp:
        tmp.write_text('{"partial": ')
        raise ValueError("half-way")
    assert list(tmp_path.iterdir()) == []


def test_exception_keeps_previous_version(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("new, incomplete")
        raise KeyboardInterrupt  # a killed job (Ctrl-C) behaves the same
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_directory_target(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("x")
    with atomic_path(target, suffix="") as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_text("y")
    assert [p.name for p in target.iterdir()] == ["weights.bin"]
    with pytest.raises(OSError), atomic_path(tmp_path / "other", suffix="") as tmp:
        tmp.mkdir()
        (tmp / "f").write_text("z")
        raise OSError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="produced nothing"), atomic_path(tmp_path / "x.txt"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_json_parquet_csv_writers(tmp_path):
    import numpy as np

    write_json({"n": np.int64(3), "v": np.arange(2)}, tmp_path / "a.json")
    assert read_json(tmp_path / "a.json") == {"n": 3, "v": [0, 1]}
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    write_parquet(df, tmp_path / "t.parquet", metadata={"stage": "test"})
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "t.parquet")
    assert table.to_pandas().equals(df) and table.schema.metadata[b"stage"] == b"test"
    write_csv(df, tmp_path / "t.tsv")
    assert (tmp_path / "t.tsv").read_text().splitlines()[0] == "a\tb"
    with pytest.raises(TypeError):
        write_json({"bad": object()}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "t.parquet", "t.tsv"]
    assert json.loads((tmp_path / "a.json").read_text())["n"] == 3
