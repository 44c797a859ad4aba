"""Wall time of the demo end to end, per-rule breakdown, and the cost of a theta change.

1. Runs the workflow with ``config/demo.yaml`` in a working directory (a fresh temporary one
   unless ``--workdir`` is given; ``--reuse`` skips the run and uses a completed one there).
2. Sums Snakemake's benchmark files per rule (jobs, total and longest seconds).
3. Changes ``aggregate.theta`` through an extra config file, lists the jobs a dry run schedules
   (only aggregation-side rules may appear) and times the rerun (target <= 30 s).

Prints the figures and the demo's results table::

    python benchmarks/bench_demo.py                      # full demo in a temp dir (target <= 20 min)
    python benchmarks/bench_demo.py --workdir runs/demo  # keep the outputs
    python benchmarks/bench_demo.py --workdir runs/demo --reuse   # only the theta-change part
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
AGGREGATION_SIDE = {"aggregate_slides", "evaluate_arm", "sweep_theta", "compare_arms", "export_model",
                    "predict_new_slides", "all"}


def snakemake(workdir: Path, configs: list[Path], cores: int, *extra: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir),
           "--configfile", *map(str, configs), "--cores", str(cores), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                          env=dict(os.environ, DUVFLOW_PROGRESS="0"))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"snakemake {' '.join(extra)} failed:\n{proc.stderr[-5000:]}")
    return wall, proc.stdout + proc.stderr


def job_counts(log: str) -> dict[str, int]:
    """The "Job stats" table of a Snakemake run or dry run."""
    stats = log.split("Job stats:", 1)[1] if "Job stats:" in log else ""
    rows = re.finditer(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE)
    return {m.group(1): int(m.group(2)) for m in rows if m.group(1) != "total"}


def per_rule(results: Path) -> pd.DataFrame:
    rows = []
    for tsv in (results / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(results / "benchmarks").parts[0]
        rows.append({"rule": rule, "s": float(pd.read_csv(tsv, sep="\t")["s"].iloc[-1])})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return (df.groupby("rule")["s"].agg(jobs="count", total_s="sum", max_s="max")
            .sort_values("total_s", ascending=False).round(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--configfile", type=Path, default=ROOT / "config" / "demo.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="use a completed run in --workdir")
    parser.add_argument("--theta", default="0.3", help="the changed theta for the rerun (a number or auto)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="duvflow-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    import yaml

    output_dir = yaml.safe_load(args.configfile.read_text()).get("output_dir", "results")
    results = workdir / output_dir

    if not args.reuse:
        wall, _ = snakemake(workdir, [args.configfile], args.cores)
        print(f"demo end to end: {wall / 60:.1f} min wall on {args.cores} cores (target <= 20 min)")
    table = per_rule(results)
    if not table.empty:
        print("\nper rule (Snakemake benchmark files, seconds):")
        print(table.to_string())
        print(f"sum over jobs: {table['total_s'].sum() / 60:.1f} min")

    theta = args.theta if args.theta == "auto" else float(args.theta)
    extra = workdir / "theta-change.yaml"
    extra.write_text(yaml.safe_dump({"aggregate": {"theta": theta}}))
    _, dry = snakemake(workdir, [args.configfile, extra], args.cores, "-n")
    jobs = job_counts(dry)
    wall, _ = snakemake(workdir, [args.configfile, extra], args.cores)
    unexpected = sorted(set(jobs) - AGGREGATION_SIDE)
    print(f"\ntheta -> {theta}: {sum(jobs.values())} jobs ({', '.join(f'{k} {v}' for k, v in jobs.items())}), "
          f"rerun {wall:.1f} s wall (target <= 30 s); "
          + (f"UNEXPECTED upstream jobs: {unexpected}" if unexpected else "only aggregation-side jobs ran"))
    md = results / "comparison" / "arms.md"
    if md.is_file():
        print("\n" + md.read_text())
    print(f"outputs: {results}")


if __name__ == "__main__":
    main()
