"""Sample sheet validation: every problem reported at once, naming the rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from duvflow.core.sheet import SampleSheetError, read_sheet


def _sheet(tmp_path: Path, text: str, name: str = "slides.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def slides(tmp_path):
    for name in ("a.tiff", "b.svs", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_valid_sheet_resolves_paths_and_keeps_extra_columns(slides):
    path = _sheet(slides, "slide_id,path,label,site\nb,b.svs,Malignant,x\na,a.tiff,benign,y\n")
    df = read_sheet(path)
    assert list(df.index) == ["a", "b"]  # sorted by id
    assert df.loc["b", "label"] == "malignant"  # case-normalised
    assert Path(df.loc["a", "path"]) == (slides / "a.tiff").resolve()
    assert df.loc["a", "site"] == "y"


def test_tsv_sheet(slides):
    df = read_sheet(_sheet(slides, "slide_id\tpath\tlabel\nc\tc.png\tbenign\n", "slides.tsv"))
    assert list(df["slide_id"]) == ["c"]


def test_all_problems_in_one_message(slides):
    path = _sheet(slides, "slide_id,path,label\n"
                          "a,a.tiff,benign\n"        # line 2: fine
                          "a,b.svs,malignant\n"      # line 3: duplicate of line 2
                          "c,missing.tiff,benign\n"  # line 4: file does not exist
                          "d,c.png,tumour\n")        # line 5: unknown label
    with pytest.raises(SampleSheetError) as err:
        read_sheet(path)
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "lines 2, 3: duplicate slide_id 'a'" in msg
    assert "line 4 (c)" in msg and "missing.tiff does not exist" in msg
    assert "line 5 (d): unknown label 'tumour'" in msg
    assert str(path) in msg


def test_empty_sheet(slides):
    with pytest.raises(SampleSheetError, match="no slides"):
        read_sheet(_sheet(slides, "slide_id,path,label\n"))


def test_missing_columns(slides):
    with pytest.raises(SampleSheetError, match="missing column.*label"):
        read_sheet(_sheet(slides, "slide_id,path\na,a.tiff\n"))


def test_bad_ids_and_empty_fields(slides):
    with pytest.raises(SampleSheetError) as err:
        read_sheet(_sheet(slides, "slide_id,path,label\nx y,a.tiff,benign\n,b.svs,benign\nz,,benign\n"))
    msg = str(err.value)
    assert "line 2: slide_id 'x y'" in msg and "line 3: empty slide_id" in msg and "line 4 (z): empty path" in msg


def test_sheet_does_not_exist(tmp_path):
    with pytest.raises(SampleSheetError, match="does not exist"):
        read_sheet(tmp_path / "nope.csv")


def test_check_files_off(tmp_path):
    df = read_sheet(_sheet(tmp_path, "slide_id,path,label\na,later.tiff,benign\n"), check_files=False)
    assert df.loc["a", "path"].endswith("later.tiff")
