"""The fault table: every bad input a careful user meets, and what the workflow must say about it.

Each row provokes one fault and asserts the message the user sees (key words, the file, the line or
key) and that nothing looking complete, and no hidden temporary file, is left behind. Rows that
behaved well before the table existed stay in it so that they cannot regress. Rows that need
Snakemake (start-of-run checks, the workflow profile) run ``snakemake -n`` and are marked slow.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from duvflow.classifier.model import build_classifier
from duvflow.cli import build_parser, main
from duvflow.core.io import atomic_path, write_json
from duvflow.core.sheet import read_sheet
from duvflow.core.splits import check_class_counts, make_splits
from duvflow.core.validation import check_config, check_config_files, config_files_in_argv
from duvflow.demo.cohort import write_pyramid_tiff
from duvflow.slides.tiling import tile_slide
from duvflow.train.checkpoint import CheckpointManager, load_weights, save_weights

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
HEADER = "slide_id,path,label\n"
KWARGS = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(autouse=True)
def _restore_process_state():
    """``duvflow predict`` sets up logging (to this test's captured stderr) and a SIGTERM handler."""
    root = logging.getLogger()
    handlers, level, sigterm = root.handlers[:], root.level, signal.getsignal(signal.SIGTERM)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    signal.signal(signal.SIGTERM, sigterm)


def _message(fn: Callable, *args, **kwargs) -> str:
    """The text of the error ``fn`` raises (the test fails when it raises none)."""
    with pytest.raises(Exception) as err:  # each row asserts the message itself
        fn(*args, **kwargs)
    return str(err.value)


# ---------------------------------------------------------------------------- sample sheets


def _sheet(tmp: Path, content: str | bytes, name: str = "slides.csv") -> Path:
    for slide in ("a.tiff", "b.tiff", "c.tiff"):
        (tmp / slide).write_bytes(b"II*\x00")
    (tmp / "folder.svs").mkdir(exist_ok=True)
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _read_sheet(content: str | bytes) -> Callable[[Path], str]:
    return lambda tmp: _message(read_sheet, _sheet(tmp, content))


# ---------------------------------------------------------------------------- model folders


def _model_folder(tmp: Path) -> Path:
    """A tiny classifier folder as train_classifier writes it."""
    folder = tmp / "model"
    model = build_classifier("vit_base_patch16_224", img_size=32, model_kwargs=KWARGS)
    save_weights(model.state_dict(), folder / "model.safetensors")
    write_json({"model": "vit_base_patch16_224", "model_kwargs": KWARGS, "img_size": 32, "arm": "real",
                "fold": "all", "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()},
               folder / "model.json")
    return folder


def _predict(tmp: Path, model: Path, capsys) -> str:
    slide = write_pyramid_tiff(tmp / "slide.tiff", np.zeros((300, 300, 3), np.uint8), 0.5)
    rc = main(["predict", str(slide), "--model", str(model), "--out", str(tmp / "pred")])
    err = capsys.readouterr().err
    return f"exit {rc}: {err}"


def _broken_model(break_it: Callable[[Path], None]) -> Callable:
    def run(tmp: Path, capsys) -> str:
        folder = _model_folder(tmp)
        break_it(folder)
        return _predict(tmp, folder, capsys)
    return run


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _drop_mean(folder: Path) -> None:
    meta = json.loads((folder / "model.json").read_text())
    del meta["mean"]
    (folder / "model.json").write_text(json.dumps(meta))


class _Payload:
    """A pickle that would create ``marker`` when loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _planted_pickle(tmp: Path, name: str) -> Path:
    import torch

    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 3, "model": {"w": torch.zeros(1)}, "evil": _Payload(tmp / "PAYLOAD_RAN")}, path)
    return path


def _pickle_weights(tmp: Path) -> str:
    return _message(load_weights, _planted_pickle(tmp, "init.pt"))


def _pickle_checkpoint(tmp: Path) -> str:
    _planted_pickle(tmp, "run/checkpoint-00000003.pt")
    return _message(CheckpointManager(tmp / "run", {"lr": 1}).load_latest)


# ---------------------------------------------------------------------------- config


def _config(tmp: Path, overlay: dict) -> Callable[[], None]:
    """``check_config`` on the tiny test config with ``overlay``'s sections merged in."""
    from snakemake.utils import update_config

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((ROOT / "tests" / "config.yaml").read_text()))
    update_config(config, overlay)
    return lambda: check_config(config, SCHEMA)


def _yaml_error(tmp: Path) -> str:
    path = tmp / "my-config.yaml"
    path.write_text("tiling:\n  patch_size: 128\n   level: 0\n")
    return _message(check_config_files, [path])


# ---------------------------------------------------------------------------- folds


def _folds_after_tiling(tmp: Path) -> str:
    labels = {f"B{i}": "benign" for i in range(3)} | {f"M{i}": "malignant" for i in range(3)}
    statuses = []
    for sid in labels:
        status = tmp / f"{sid}.json"
        write_json({"slide_id": sid, "status": "skipped" if sid == "B0" else "ok", "reason": "unreadable",
                    "n_patches": 0 if sid == "B0" else 5}, status)
        statuses.append(status)
    return _message(make_splits, statuses=statuses, labels=labels, output=tmp / "splits.csv",
                    splits={"n_folds": 3}, seed=0)


# ---------------------------------------------------------------------------- slides and writes


def _tile(tmp: Path, slide: Path, **cfg) -> dict:
    out = tmp / "tiles"
    return tile_slide(slide=slide, slide_id="s1", label="benign", tiling={"patch_size": 128, **cfg},
                      tiles=out / "s1.parquet", store=out / "s1.h5", status=out / "s1.json",
                      thumbnail=out / "s1.png")


def _truncated_tiff(tmp: Path, tiny_pyramid_tiff: Path) -> str:
    cut = tmp / "cut.tiff"
    cut.write_bytes(tiny_pyramid_tiff.read_bytes()[: tiny_pyramid_tiff.stat().st_size // 3])
    return _message(_tile, tmp, cut)


def _zero_tissue(tmp: Path, tissue_free_tiff: Path) -> str:
    record = _tile(tmp, tissue_free_tiff)
    (tmp / "tiles" / "s1.h5").unlink()  # a no-tissue slide's empty outputs are real; the row checks its record
    return f"{record['status']}: {record['reason']}"


def _entry_point(tmp: Path, body: str) -> subprocess.Popen:
    """A Python process that starts like a rule's entry point (``setup_logging``) and runs ``body``."""
    script = tmp / "job.py"
    script.write_text("import sys, time\nfrom duvflow.core.runtime import setup_logging\n"
                      f"setup_logging({str(tmp / 'job.log')!r})\n" + textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(script)], env=env)


def _wait_for(folder: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the job has a temporary file matching ``pattern`` in ``folder``."""
    deadline = time.monotonic() + timeout
    while not (folder.is_dir() and any(re.fullmatch(pattern, p.name) for p in folder.iterdir())):
        assert proc.poll() is None, f"the job ended (rc {proc.returncode}) before writing {pattern}"
        assert time.monotonic() < deadline, f"no {pattern} in {folder} after {timeout} s"
        time.sleep(0.05)


def _sigterm_while_tiling(tmp: Path, tiny_pyramid_tiff: Path) -> str:
    """SLURM's time-out or ``scancel`` while the patch store is half-written."""
    proc = _entry_point(tmp, f"""
        from duvflow.slides.store import PatchStoreWriter
        write = PatchStoreWriter.write_encoded
        def slow(self, *args):  # a big slide: the store takes a while
            time.sleep(0.05)
            write(self, *args)
        PatchStoreWriter.write_encoded = slow
        from duvflow.slides.tiling import tile_slide
        out = {str(tmp / 'tiles')!r}
        tile_slide(slide={str(tiny_pyramid_tiff)!r}, slide_id="s1", label="benign", tiling={{"patch_size": 64}},
                   tiles=out + "/s1.parquet", store=out + "/s1.h5", status=out + "/s1.json",
                   thumbnail=out + "/s1.png")
    """)
    _wait_for(tmp / "tiles", r"\.s1\..*\.tmp\.h5", proc)
    proc.send_signal(signal.SIGTERM)
    return f"exit {proc.wait(60)}"


def _sigkill_mid_write_then_rerun(tmp: Path) -> str:
    """SIGKILL cannot be caught: the temporary file stays until the same output is written again."""
    proc = _entry_point(tmp, f"""
        from duvflow.core.io import atomic_path
        with atomic_path({str(tmp / 'out' / 'table.csv')!r}) as tmp:
            tmp.write_text("half")
            time.sleep(600)
    """)
    _wait_for(tmp / "out", r"\.table\..*\.tmp\.csv", proc)
    proc.kill()
    rc = proc.wait(60)
    left = sorted(p.name for p in (tmp / "out").iterdir())
    neighbour = tmp / "out" / ".table.v2.abcdefgh.tmp.csv"  # another output's (table.v2.csv) live temporary
    neighbour.write_text("in use")
    with atomic_path(tmp / "out" / "table.csv") as path:  # the rule reruns
        path.write_text("complete")
    neighbour.unlink()  # it must have survived the sweep (unlink fails otherwise)
    assert (tmp / "out" / "table.csv").read_text() == "complete"
    return f"exit {rc}; left after the kill: {left}"


# ---------------------------------------------------------------------------- the table


# outputs that would look finished: the rows' writers must not leave them
FINISHED = ("tiles/s1.h5", "tiles/s1.json", "tiles/s1.parquet", "pred/predictions.csv", "splits.csv")


@dataclass(frozen=True)
class Fault:
    id: str
    run: Callable  # (tmp_path, *fixtures) -> the message the user sees
    words: tuple[str, ...]  # must all appear; "{tmp}" is the test's folder
    absent: tuple[str, ...] = ()  # must not appear
    fixtures: tuple[str, ...] = ()
    not_written: tuple[str, ...] = FINISHED


FAULTS = [
    # sample sheets
    Fault("sheet-0-bytes", _read_sheet(b""), ("sample sheet {tmp}/slides.csv is empty",)),
    Fault("sheet-not-utf8", _read_sheet(HEADER.encode() + b"a,a.tiff,benign\nb,b.tiff,b\xe9nign\n"),
          ("{tmp}/slides.csv", "line 3", "0xe9", "save the sheet as UTF-8")),
    Fault("sheet-blank-line", _read_sheet(HEADER + "a,a.tiff,benign\n\nb,b.tiff,tumour\n"),
          ("line 4 (b): unknown label 'tumour'",)),
    Fault("sheet-comment-line", _read_sheet("# cohort 2\n" + HEADER + "# batch 1\nb,b.tiff,tumour\n"),
          ("line 4 (b): unknown label 'tumour'",)),
    Fault("sheet-quoted-newline", _read_sheet(HEADER + 'a,a.tiff,benign,\n"c",c.tiff,"beni\ngn"\nb,b.tiff,x\n'),
          ("line 3 (c): unknown label", "line 5 (b): unknown label 'x'")),
    Fault("sheet-field-more-than-header", _read_sheet(HEADER + "a,a.tiff,benign,extra\nb,b.tiff,benign\n"),
          ("{tmp}/slides.csv", "line 2: 4 fields, the header has 3"), absent=("unknown label",)),
    Fault("slide-id-dot", _read_sheet(HEADER + ".,a.tiff,benign\n"), ("line 2: slide_id '.'", "must not start with '.'")),
    Fault("slide-id-dotdot", _read_sheet(HEADER + "..,a.tiff,benign\n"), ("line 2: slide_id '..'", "must not start")),
    Fault("slide-id-leading-dot", _read_sheet(HEADER + ".a,a.tiff,benign\n"), ("slide_id '.a'", "must not start")),
    Fault("slide-path-directory", _read_sheet(HEADER + "a,folder.svs,benign\n"),
          ("line 2 (a): {tmp}/folder.svs is a directory, not a slide file",), absent=("does not exist",)),
    Fault("sheet-duplicate-ids", _read_sheet(HEADER + "a,a.tiff,benign\na,b.tiff,benign\n"),
          ("lines 2, 3: duplicate slide_id 'a'",)),
    Fault("sheet-unknown-label", _read_sheet(HEADER + "a,a.tiff,tumour\n"),
          ("line 2 (a): unknown label 'tumour'", "benign, malignant")),
    Fault("sheet-missing-slide", _read_sheet(HEADER + "a,gone.tiff,benign\n"), ("{tmp}/gone.tiff does not exist",)),
    # folds
    Fault("n-folds-above-class-count", lambda tmp: _message(check_class_counts, ["benign"] * 2 + ["malignant"] * 5, 3),
          ("splits.n_folds = 3", "2 benign, 5 malignant", "Lower splits.n_folds to 2 or add benign slides")),
    Fault("n-folds-above-class-count-after-tiling", _folds_after_tiling,
          ("splits.n_folds = 3", "left out 1 slide(s) (B0", "2 benign, 3 malignant", "Lower splits.n_folds to 2")),
    # config
    Fault("config-float-integer", lambda tmp: _message(_config(tmp, {"tiling": {"patch_size": 128.0}})),
          ("tiling.patch_size = 128.0 must be of type integer", "write 128")),
    Fault("config-unknown-arm", lambda tmp: _message(_config(tmp, {"arms": ["real", "real+foo"]})),
          ("arms[1] = 'real+foo' is not allowed", "real, real+class, real+ssl")),
    Fault("config-unknown-key", lambda tmp: _message(_config(tmp, {"tiling": {"patch_sise": 128}})),
          ("unknown key(s) tiling.patch_sise", "section tiling allows:", "patch_size"), absent=("Failed validating",)),
    Fault("config-yaml-syntax", _yaml_error, ("config file {tmp}/my-config.yaml, line 3, column 9",)),
    # model folders
    Fault("model-folder-missing", lambda tmp, capsys: _predict(tmp, tmp / "nope", capsys),
          ("exit 2", "model folder {tmp}/nope does not exist"), fixtures=("capsys",)),
    Fault("model-json-truncated", _broken_model(lambda f: _truncate(f / "model.json", 40)),
          ("exit 2", "{tmp}/model/model.json is not valid JSON"), fixtures=("capsys",)),
    Fault("model-json-without-mean", _broken_model(_drop_mean), ("exit 2", "{tmp}/model/model.json lacks 'mean'"),
          fixtures=("capsys",)),
    Fault("model-safetensors-corrupt", _broken_model(lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 64)),
          ("exit 2", "{tmp}/model/model.safetensors is not a valid safetensors file"), absent=("Traceback",),
          fixtures=("capsys",)),
    Fault("pickle-weights-refused", _pickle_weights,
          ("{tmp}/init.pt", "delete it to start afresh", "never load untrusted pickles"), absent=("weights_only",)),
    Fault("pickle-checkpoint-refused", _pickle_checkpoint,
          ("{tmp}/run/checkpoint-00000003.pt", "delete it to start afresh"), absent=("weights_only",)),
    # slides and interrupted writes
    Fault("slide-truncated-tiff", _truncated_tiff, ("{tmp}/cut.tiff",), fixtures=("tiny_pyramid_tiff",)),
    # a slide without tissue is a QC entry (status no_tissue, empty tile table), not an error
    Fault("slide-zero-tissue", _zero_tissue, ("no_tissue", "no patch has >= 0.5 tissue"), fixtures=("tissue_free_tiff",),
          not_written=()),
    Fault("sigterm-during-tiling", _sigterm_while_tiling, ("exit 143",), fixtures=("tiny_pyramid_tiff",)),
    Fault("sigkill-mid-write-swept-on-rerun", _sigkill_mid_write_then_rerun, ("exit -9", "'.table."),
          not_written=()),  # the rerun completes; its swept temporary is checked below
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_fault_gives_a_clear_message_and_leaves_nothing_complete(fault, tmp_path, request):
    message = fault.run(tmp_path, *(request.getfixturevalue(name) for name in fault.fixtures))
    for word in fault.words:
        assert word.format(tmp=tmp_path) in message, f"{fault.id}: {word!r} not in:\n{message}"
    for word in fault.absent:
        assert word not in message, f"{fault.id}: {word!r} in:\n{message}"
    assert len(message.splitlines()) <= 8, f"{fault.id}: the message should be short:\n{message}"
    assert [p for p in fault.not_written if (tmp_path / p).exists()] == []
    hidden = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob(".*") if ".tmp" in p.name]
    assert hidden == [], f"{fault.id} left temporary files behind"
    assert not (tmp_path / "PAYLOAD_RAN").exists(), "a pickle payload ran"


# ---------------------------------------------------------------------------- rows that are not errors


def test_arms_real_alone_is_a_valid_config(tmp_path):
    _config(tmp_path, {"arms": ["real"]})()  # deploy.arm defaults to the last configured arm
    assert yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["deploy"]["arm"] is None


def test_safetensors_outputs_have_the_usual_mode(tmp_path):
    import torch

    save_weights({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    write_json({"a": 1}, tmp_path / "model.json")
    with atomic_path(tmp_path / "vae", suffix="") as folder:  # folders of weights (diffusers' save_pretrained)
        folder.mkdir()
        save_weights({"w": torch.zeros(2)}, folder / "weights.safetensors")
    mode = stat.S_IMODE((tmp_path / "model.json").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "vae" / "weights.safetensors").stat().st_mode) == mode
    assert mode & stat.S_IRUSR and not mode & stat.S_IXUSR


def test_config_files_are_found_on_a_snakemake_command_line(tmp_path):
    """What the workflow profile checks: every ``--configfile(s)`` file and the working directory's config."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("seed: 1\n")
    argv = ["snakemake", "-n", "--configfile", "a.yaml", "b.yaml", "--cores", "2", "all", "--configfiles=c.yaml",
            "--directory", str(tmp_path)]
    assert config_files_in_argv(argv) == [Path("a.yaml"), Path("b.yaml"), Path("c.yaml"),
                                          tmp_path / "config" / "config.yaml"]
    tabs = tmp_path / "tabs.json"
    tabs.write_text('{\n\t"seed": 3\n}\n')  # valid JSON, which Snakemake reads before trying YAML
    check_config_files([tabs, tmp_path / "missing.yaml"])


def test_help_documents_the_exit_codes():
    text = build_parser().format_help()
    assert "exit codes:" in text and "0  every slide was labelled" in text and "2  nothing was done" in text


# ---------------------------------------------------------------------------- through Snakemake


def _dry_run(tmp: Path, *configs: Path | str) -> tuple[int, str]:
    """``snakemake -n`` of the project's workflow in ``tmp`` (the default profile applies)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(tmp),
           "--cores", "1", "-n", "--configfile", *map(str, configs)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600, env=env, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _overlay(tmp: Path, text: str) -> Path:
    path = tmp / "overlay.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.slow
def test_snakemake_config_yaml_error_names_file_and_line(tmp_path):
    rc, out = _dry_run(tmp_path, ROOT / "tests" / "config.yaml", _overlay(tmp_path, "arms: [real\nseed: 1\n"))
    assert rc != 0
    assert f"config file {tmp_path}/overlay.yaml, line 2" in out, out
    assert "not valid JSON or YAML" not in out and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_snakemake_schema_errors_are_short(tmp_path):
    rc, out = _dry_run(tmp_path, ROOT / "tests" / "config.yaml",
                       _overlay(tmp_path, "tiling:\n  patch_size: 128.0\n  colour: red\narms: [real, real+foo]\n"))
    assert rc != 0
    assert "unknown key(s) tiling.colour; section tiling allows: background" in out, out
    assert "tiling.patch_size = 128.0 must be of type integer" in out
    assert "arms[1] = 'real+foo' is not allowed; use one of: real, real+class, real+ssl" in out
    assert len(out.splitlines()) < 30 and "Failed validating" not in out, out
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_snakemake_n_folds_checked_from_the_sheet_at_start(tmp_path):
    rows = [f"B{i},B{i}.tiff,benign" for i in range(2)] + [f"M{i},M{i}.tiff,malignant" for i in range(4)]
    for row in rows:
        (tmp_path / row.split(",")[1]).write_bytes(b"II*\x00")
    sheet = _sheet(tmp_path, HEADER + "\n".join(rows) + "\n")
    rc, out = _dry_run(tmp_path, ROOT / "tests" / "config.yaml",
                       _overlay(tmp_path, f"samples: {sheet}\ndemo:\n  enabled: false\nsplits:\n  n_folds: 3\n"))
    assert rc != 0
    assert f"sample sheet {sheet}: splits.n_folds = 3 needs at least 3 slides of each class" in out, out
    assert "2 benign, 4 malignant" in out and "Lower splits.n_folds to 2" in out
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.parametrize("deploy", ["{enabled: true}", "{enabled: false, arm: real+ssl}"])
def test_snakemake_arms_real_alone_runs(tmp_path, deploy):
    """The README's `arms: [real]` on the paper config: the deploy arm follows it (or is unused)."""
    rc, out = _dry_run(tmp_path, ROOT / "config" / "config.yaml",
                       _overlay(tmp_path, f"arms: [real]\ndeploy: {deploy}\ndemo:\n  enabled: true\n  n_slides: 4\n"
                                          "splits:\n  n_folds: 2\n"
                                          # offline here: no published weights (their check has its own test)
                                          "classifier:\n  init: random\ndino:\n  init: random\n"
                                          "vae:\n  pretrained: null\n"))
    assert rc == 0, out[-3000:]
    assert "train_classifier" in out and "train_ldm" not in out
