"""The HTML report's first page (workflow/report/workflow.rst) and its categories."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pandas as pd
import pytest
import yaml
from docutils.core import publish_parts

ROOT = Path(__file__).resolve().parents[2]


def _config(**changes) -> dict:
    """The demo config with every schema default filled in, as the report sees it."""
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config.update(changes)
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def _first_page(config: dict, files: list) -> str:
    """The first page's HTML, rendered as Snakemake renders it (Jinja with its whitespace settings, then
    docutils); a docutils warning (a list item broken by a template block, say) fails the test."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # snakemake.report's
    text = env.from_string((ROOT / "workflow" / "report" / "workflow.rst").read_text())
    rst = text.render(snakemake=SimpleNamespace(config=config), categories={}, files=files)
    return publish_parts(rst, writer="html", settings_overrides={"halt_level": 2})["html_body"]


@pytest.fixture
def results_table(tmp_path) -> Path:
    path = tmp_path / "results" / "comparison" / "arms.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"arm": ["real", "real+ssl"], "theta_mode": ["fixed", "fixed"], "accuracy": [0.75, 0.8125]}).to_csv(
        path, index=False)
    return path


def test_the_first_page_shows_the_results_table(results_table):
    html = _first_page(_config(), [SimpleNamespace(path=results_table)])
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.DOTALL)
    cells = [re.findall(r"<t[dh][^>]*>(?:<p>)?(.*?)(?:</p>)?</t[dh]>", row, re.DOTALL) for row in rows]
    assert ["real+ssl", "fixed", "0.8125"] in cells, cells
    assert ["arm", "theta_mode", "accuracy"] in cells, cells


def test_without_the_results_table_the_first_page_says_so():
    assert "not in this report yet" in _first_page(_config(), [])


def test_the_settings_line_names_the_cohort_actually_used():
    demo = _first_page(_config(), [])
    assert "generated demo cohort" in demo and "slides.csv" not in demo
    own = _config(demo={"enabled": False}, samples="my/slides.tsv")
    assert "my/slides.tsv" in _first_page(own, []) and "demo cohort" not in _first_page(own, [])


def test_report_categories_are_numbered_without_gaps():
    rules = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    categories = set(re.findall(r'category="(\d+)\. ([^"]+)"', rules))
    numbers = sorted(int(n) for n, _ in categories)
    assert numbers == list(range(1, len(numbers) + 1)), sorted(categories)  # one name per number, no gaps


def test_the_first_page_describes_a_single_fraction_and_a_fraction_sweep():
    sweep = _first_page(_config(sampling={"synthetic_fraction": [0.1, 0.05]}), [])
    assert "0.05, 0.1 of the classifier training set" in sweep and "nested subsets" in sweep
    single = _first_page(_config(sampling={"synthetic_fraction": 0.05}), [])
    assert "5.0% of each classifier training set" in single and "nested" not in single
