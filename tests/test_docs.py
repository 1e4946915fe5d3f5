"""The README is the user's entry point: its commands and model table must follow the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from rtmw_edge.zoo import get_spec, list_models

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _fenced_after(marker: str) -> str:
    block = README.split(marker, 1)[1]
    return re.search(r"```bash\n(.*?)\n```", block, re.S).group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    printed = subprocess.run(
        ["awk", '/<!-- test-command -->/{found=1; next} found && /^```bash/{inblock=1; next} '
         'inblock && /^```/{exit} inblock{print}', str(ROOT / "README.md")],
        capture_output=True, text=True, check=True).stdout.strip()
    assert printed == _fenced_after("<!-- test-command -->")
    assert "pip install torch==2.13.0" in printed and "pytest" in printed
    assert "awk" in (ROOT / ".ci" / "run").read_text()


def test_readme_model_table_lists_every_registered_model_with_its_numbers():
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| ([a-z0-9-]+x?\d*[a-z-]*) \|.*$", README, re.M)}
    for name in list_models():
        spec = get_spec(name)
        assert name in rows, f"{name} missing from the README model table"
        row = rows[name]
        assert f"{spec.params / 1e6:.2f}M" in row
        assert f"{spec.input_size[0]}×{spec.input_size[1]}" in row
