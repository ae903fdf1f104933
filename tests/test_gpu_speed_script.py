"""bench/gpu_speed.py on the CPU at tiny sizes: the table it writes, the budget that skips, lienzo alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
FAST = ["--device", "cpu", "--tiny", "--steps", "2", "--repeats", "1", "--warmup", "1"]


@pytest.fixture
def gpu_speed(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delitem(sys.modules, "gpu_speed", raising=False)
    import gpu_speed

    return gpu_speed


def table_lines(text: str) -> list[list[str]]:
    """The report's table rows as lists of cells, header and separator left out."""
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in rows[1:]]


def test_measures_both_libraries_and_writes_the_table(gpu_speed, tmp_path):
    out = tmp_path / "gpu_speed.md"
    rows = gpu_speed.main([*FAST, "--out", str(out)])
    measured = {(row.variant.case, row.library): row for row in rows if not row.note}
    assert set(measured) == {
        (case, library) for case in ("sd15", "sdxl") for library in ("lienzo", "diffusers")
    }
    for case in ("sd15", "sdxl"):
        ours, reference = measured[case, "lienzo"], measured[case, "diffusers"]
        assert ours.median > 0 and reference.median > 0
        assert ours.ratio == pytest.approx(ours.median / reference.median)
        assert float(ours.max_difference.split()[0]) < 1e-4, "both libraries must hold the same weights"
    skipped = {row.variant.label: row.note for row in rows if row.note}
    assert skipped["torch.compile"] == "skipped: no compiling on cpu without --compile"
    assert skipped["compile reduce-overhead"] == "skipped: CUDA graphs need a CUDA device"
    text = out.read_text(encoding="utf-8")
    assert "python bench/gpu_speed.py --device cpu --tiny" in text
    cells = table_lines(text)
    eager = [row for row in cells if row[1] == "eager"]
    assert [row[2] for row in eager] == ["lienzo", "diffusers", "lienzo", "diffusers"]
    for row in eager:
        assert float(row[3]) > 0
    assert all(float(row[6].strip("*")) > 0 for row in eager if row[2] == "lienzo")


def test_budget_zero_skips_every_variant_and_says_so(gpu_speed, tmp_path, capsys):
    out = tmp_path / "gpu_speed.md"
    rows = gpu_speed.main([*FAST, "--budget", "0", "--out", str(out)])
    assert len(rows) == len(gpu_speed.VARIANTS)
    assert all(row.note.startswith("skipped") and not row.runs for row in rows)
    assert any("--budget" in row.note for row in rows)
    printed = capsys.readouterr().out
    for name in gpu_speed.VARIANTS:
        assert f"{name}: skipped" in printed
    assert all(row[3].startswith("skipped") for row in table_lines(out.read_text(encoding="utf-8")))


def test_without_diffusers_measures_lienzo_alone(gpu_speed, monkeypatch, capsys):
    monkeypatch.setattr(gpu_speed, "diffusers_version", lambda: (None, "ImportError: no diffusers"))
    rows = gpu_speed.main([*FAST, "--variants", "sd15-eager"])
    assert [row.library for row in rows] == ["lienzo"]
    assert rows[0].median > 0 and rows[0].ratio is None
    printed = capsys.readouterr().out
    assert "diffusers cannot be imported (ImportError: no diffusers): measuring lienzo alone" in printed


def test_a_variant_running_past_budget_and_grace_is_cut_off_and_reported(tmp_path):
    out = tmp_path / "gpu_speed.md"
    command = [sys.executable, str(BENCH / "gpu_speed.py"), *FAST, "--warmup", "1000000"]
    command += ["--budget", "2", "--grace", "0", "--variants", "sd15-eager", "sdxl-eager", "--out", str(out)]
    root = BENCH.parent
    environment = {**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root / 'tests'}"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert completed.returncode == 3, completed.stderr
    cells = table_lines(out.read_text(encoding="utf-8"))
    assert [row[3] for row in cells] == ["stopped: still running 0 s past --budget"]
