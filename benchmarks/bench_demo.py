"""Wall time of the demo end to end, where it goes per rule, and the cost of a theta change.

1. Runs the workflow with ``config/demo.yaml`` in a working directory (a fresh temporary one
   unless ``--workdir`` is given; ``--reuse`` skips the run and uses a completed one there).
2. Per rule, from Snakemake's job records (``.snakemake/metadata``: start and end of every job)
   and the rules' logs: jobs, summed and longest wall seconds, and the start-up overhead of a
   job (from its start to the first line of its log: process, imports, model set-up); also the
   rules' benchmark files. The demo's wall time is the span of its jobs when it was not run here.
3. Changes ``aggregate.theta`` through an extra config file, lists the jobs a dry run schedules
   (only aggregation-side rules may appear), times the rerun and reports its jobs the same way.

Targets (2 CPU cores): demo <= 10 min, theta rerun <= 10 s. Prints the figures and the demo's
results table::

    python benchmarks/bench_demo.py                      # full demo in a temp dir
    python benchmarks/bench_demo.py --workdir runs/demo  # keep the outputs
    python benchmarks/bench_demo.py --workdir runs/demo --reuse   # only the figures and the theta change
    python benchmarks/bench_demo.py --configfile tests/config.yaml --workdir runs/tiny   # the tiny DAG
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
AGGREGATION_SIDE = {"aggregate_slides", "evaluate_arm", "compare_arms", "compare_paired", "flag_failures", "export_model",
                    "predict_new_slides", "all"}
DEMO_TARGET_MIN, THETA_TARGET_S = 10, 10
# the timestamp setup_logging puts in front of every log line (local time, milliseconds)
LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", re.MULTILINE)


def snakemake(workdir: Path, configs: list[Path], cores: int, *extra: str) -> tuple[float, float, str]:
    """Run Snakemake; returns its wall seconds, the CPU seconds of it and all its jobs, and its output.

    The CPU seconds hardly depend on what else runs on the machine, the wall time does.
    """
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir),
           "--configfile", *map(str, configs), "--cores", str(cores), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                          env=dict(os.environ, DUVFLOW_PROGRESS="0"))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"snakemake {' '.join(extra)} failed:\n{proc.stderr[-5000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout + proc.stderr


def job_counts(log: str) -> dict[str, int]:
    """The "Job stats" table of a Snakemake run or dry run."""
    stats = log.split("Job stats:", 1)[1] if "Job stats:" in log else ""
    rows = re.finditer(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE)
    return {m.group(1): int(m.group(2)) for m in rows if m.group(1) != "total"}


def first_log_line(workdir: Path, logs: list[str], since: float) -> float:
    """Time of the first line a job wrote to its log at or after ``since`` (logs are appended to); NaN if none."""
    for log in logs:
        path = workdir / log
        if not path.is_file():
            continue
        for m in LOG_STAMP.finditer(path.read_text(errors="replace")):
            stamp = time.mktime(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timetuple()) + int(m.group(2)) / 1000
            if stamp >= since - 1e-3:
                return stamp
    return float("nan")


def jobs(workdir: Path, since: float = 0.0) -> pd.DataFrame:
    """One row per job that finished after ``since``: rule, start, end, wall and start-up seconds.

    Snakemake records every output's job start (when it marked the output incomplete) and end
    (the output's mtime); outputs of one job share its ``job_hash``.
    """
    rows = []
    for record in (workdir / ".snakemake" / "metadata").iterdir():
        data = json.loads(record.read_text())
        if data.get("starttime") and data["starttime"] >= since:
            rows.append({"rule": data["rule"], "job": data["job_hash"],
                         "start": data["starttime"], "end": data["endtime"], "log": tuple(data.get("log") or ())})
    if not rows:
        return pd.DataFrame(columns=["rule", "start", "end", "wall_s", "startup_s"])
    table = (pd.DataFrame(rows).groupby("job", sort=False)
             .agg(rule=("rule", "first"), start=("start", "min"), end=("end", "max"), log=("log", "first"))
             .reset_index(drop=True))
    table["wall_s"] = table["end"] - table["start"]
    table["startup_s"] = [first_log_line(workdir, list(log), start) - start
                          for log, start in zip(table["log"], table["start"], strict=True)]
    return table.drop(columns="log").sort_values("start", ignore_index=True)


def per_rule(table: pd.DataFrame) -> pd.DataFrame:
    """Jobs, summed / longest wall seconds and the median start-up (to the first log line) per rule."""
    if table.empty:
        return table
    return (table.groupby("rule").agg(jobs=("wall_s", "size"), total_s=("wall_s", "sum"), max_s=("wall_s", "max"),
                                      startup_median_s=("startup_s", "median"), startup_sum_s=("startup_s", "sum"))
            .sort_values("total_s", ascending=False).round(2))


def benchmark_files(results: Path) -> pd.DataFrame:
    """The rules' ``benchmark:`` files: jobs, summed and longest seconds, peak memory."""
    rows = []
    for tsv in (results / "benchmarks").rglob("*.tsv"):
        bench = pd.read_csv(tsv, sep="\t").iloc[-1]
        rows.append({"rule": tsv.relative_to(results / "benchmarks").parts[0], "s": float(bench["s"]),
                     "max_rss_mb": float(bench.get("max_rss", float("nan")))})
    if not rows:
        return pd.DataFrame()
    return (pd.DataFrame(rows).groupby("rule").agg(jobs=("s", "count"), total_s=("s", "sum"), max_s=("s", "max"),
                                                  max_rss_mb=("max_rss_mb", "max"))
            .sort_values("total_s", ascending=False).round(1))


# what Snakemake's preamble of a `script:` job imports before the entry point runs
PREAMBLE = "import snakemake.io, snakemake.iocontainers, snakemake.logging"
IMPORT_PROBE = """
import importlib, resource, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(usage.ru_utime + usage.ru_stime)
"""


def import_cost(rule: str) -> float:
    """CPU seconds a job of ``rule`` spends starting Python and importing what its entry point
    imports (Snakemake's script preamble included), measured in a fresh interpreter; NaN without a script."""
    script = ROOT / "workflow" / "scripts" / f"{rule}.py"
    if not script.is_file():
        return float("nan")
    modules = re.findall(r"^(?:from|import) (duvflow[\w.]*)", script.read_text(), re.MULTILINE)
    cmd = [sys.executable, "-c", PREAMBLE + "\n" + IMPORT_PROBE, *modules]
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT / "workflow" / "scripts"), os.getenv("PYTHONPATH")]))
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=path))
    return float(proc.stdout.split()[-1])


def report_run(table: pd.DataFrame, title: str) -> None:
    rules = per_rule(table)
    if rules.empty:
        print(f"\n{title}: no job records")
        return
    rules["imports_cpu_s"] = [round(import_cost(rule), 2) for rule in rules.index]
    print(f"\n{title} ({len(table)} jobs; start-up = job start to its first log line; imports_cpu_s = Python "
          "start and imports of one job, in CPU seconds):")
    print(rules.to_string())
    startup = table["startup_s"].dropna()
    imports = (rules["jobs"] * rules["imports_cpu_s"]).sum()
    print(f"sum over jobs: {table['wall_s'].sum() / 60:.1f} min, of it start-up {startup.sum() / 60:.1f} min "
          f"(median {startup.median():.1f} s per job); imports alone {imports / 60:.1f} CPU min")


def startup_costs() -> tuple[float, float]:
    """Wall seconds of importing Snakemake's API in a fresh interpreter (what every Snakemake command
    pays first), and of the SLURM executor plugin's ``scontrol show config`` probe inside it (NaN
    without ``scontrol``: the plugin then skips it). On a machine with a SLURM client but no
    reachable controller the probe waits for its time-out at every start."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import snakemake.api"], check=True, capture_output=True)
    imports = time.perf_counter() - start
    if not shutil.which("scontrol"):
        return imports, float("nan")
    start = time.perf_counter()
    try:
        subprocess.run(["scontrol", "show", "config"], check=False, capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        pass
    return imports, time.perf_counter() - start


def theta_change(workdir: Path, configfile: Path, cores: int, theta) -> None:
    import yaml

    extra = workdir / "theta-change.yaml"
    extra.write_text(yaml.safe_dump({"aggregate": {"theta": theta}}))
    dry_wall, dry_cpu, dry = snakemake(workdir, [configfile, extra], cores, "-n")
    planned = job_counts(dry)
    since = time.time()
    wall, cpu, _ = snakemake(workdir, [configfile, extra], cores)
    ran = jobs(workdir, since)
    unexpected = sorted(set(planned) - AGGREGATION_SIDE)
    print(f"\ntheta -> {theta}: {sum(planned.values())} jobs planned "
          f"({', '.join(f'{k} {v}' for k, v in planned.items())}), {len(ran)} ran; "
          f"rerun {wall:.1f} s wall (target <= {THETA_TARGET_S} s), {cpu:.1f} CPU s; "
          + (f"UNEXPECTED upstream jobs: {unexpected}" if unexpected else "only aggregation-side jobs ran"))
    if not ran.empty:
        span = ran["end"].max() - ran["start"].min()
        print(f"Snakemake alone (the dry run: start-up, DAG, what reruns): {dry_wall:.1f} s wall, {dry_cpu:.1f} CPU s")
        print(f"jobs' span {span:.1f} s; Snakemake's own start-up and bookkeeping {wall - span:.1f} s; "
              f"per-job start-up (to the first log line) mean {ran['startup_s'].mean():.2f} s, "
              f"max {ran['startup_s'].max():.2f} s")
        report_run(ran, "theta rerun per rule")
    imports, probe = startup_costs()
    print(f"every Snakemake command first imports its API: {imports:.1f} s wall here"
          + (f", of it {probe:.1f} s for the SLURM plugin's `scontrol show config` probe (a SLURM client "
             f"without a reachable controller waits for the time-out; without scontrol, or with a controller, "
             f"it is instant): the rerun without it would take about {wall - probe:.1f} s"
             if not math.isnan(probe) else " (no scontrol: no SLURM probe)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--configfile", type=Path, default=ROOT / "config" / "demo.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="use a completed run in --workdir")
    parser.add_argument("--theta", default="0.3", help="the changed theta for the rerun (a number or auto)")
    args = parser.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="duvflow-demo-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    import yaml

    output_dir = yaml.safe_load(args.configfile.read_text()).get("output_dir", "results")
    results = workdir / output_dir

    saved = workdir / "bench-demo-jobs.csv"  # the demo's jobs (later reruns replace their records)
    if args.reuse:
        demo = pd.read_csv(saved) if saved.is_file() else jobs(workdir)
        wall = demo["end"].max() - demo["start"].min() if not demo.empty else float("nan")
    else:
        since = time.time()
        wall, cpu, _ = snakemake(workdir, [args.configfile], args.cores)
        print(f"demo: {cpu / 60:.1f} CPU min (Snakemake and all jobs)")
        demo = jobs(workdir, since)
        demo.to_csv(saved, index=False)
    if not demo.empty:
        print(f"demo end to end: {wall / 60:.1f} min wall on {args.cores} cores (target <= {DEMO_TARGET_MIN} min)"
              + (" (span of the recorded jobs)" if args.reuse else ""))
        report_run(demo, "per rule")
    bench = benchmark_files(results)
    if not bench.empty:
        print("\nrules' benchmark files (seconds, MB):")
        print(bench.to_string())

    theta_change(workdir, args.configfile, args.cores, args.theta if args.theta == "auto" else float(args.theta))
    md = results / "comparison" / "arms.md"
    if md.is_file():
        print("\n" + md.read_text())
    print(f"outputs: {results}")


if __name__ == "__main__":
    main()
