"""The README's five-minute tour runs as written: every ```bash and ```python block of its
"## A five-minute tour" section, in order, in a fresh folder, with EPOCHS=1."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## A five-minute tour"
SHELLS = ("bash", "sh")
FENCE = re.compile(r"^```([\w+-]*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)

#: Files the tour's text says it writes (run folders: README "Every training run writes a folder").
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "weights_init.safetensors", "weights_final.safetensors")
WRITTEN = [
    *(f"runs/{r}/{f}" for r in ("t", "n", "f", "r", "n-py") for f in RUN_FILES),
    "runs/t/layerwise.jsonl", "runs/n/layerwise.jsonl", "layerwise.png",
    "runs/toy/toy.csv", "runs/toy/figure1a.png", "runs/toy/figure1b.png", "runs/toy/figure5.png",
    "m.csv", "m-unit.csv", "study.toml", "reg.toml",
    "runs/s/report.md", "runs/reg/regularize.md", "runs/reg/regularize.png",
]


def tour_blocks(text: str) -> list[tuple[str, str]]:
    """The tour section's (language, code) fenced blocks, in order; only bash/sh and python blocks."""
    start = text.find("\n" + SECTION + "\n")
    if start < 0:
        raise AssertionError(f"README.md has no {SECTION!r} section")
    body = text[start + len(SECTION) + 2:]
    following = re.search(r"^## ", body, re.M)
    body = body[:following.start()] if following else body
    blocks = [(lang, code) for lang, code in FENCE.findall(body) if lang in SHELLS + ("python",)]
    languages = {lang for lang, _ in blocks}
    if not languages & set(SHELLS) or "python" not in languages:
        raise AssertionError(f"the tour must hold a ```bash and a ```python block; found {[lang for lang, _ in blocks]}")
    return blocks


def test_tour_blocks_are_found():
    blocks = tour_blocks(README.read_text(encoding="utf-8"))
    assert [lang for lang, _ in blocks][-1] == "python"
    with pytest.raises(AssertionError, match="no '## A five-minute tour' section"):
        tour_blocks("# srrlab\n\n## Layout\n")
    with pytest.raises(AssertionError, match="must hold"):
        tour_blocks(f"# srrlab\n\n{SECTION}\n\n```bash\nsrrlab models\n```\n\n## Layout\n\n```python\nimport srrlab\n```\n")


@pytest.mark.slow
def test_readme_tour_runs(tmp_path):
    blocks = tour_blocks(README.read_text(encoding="utf-8"))
    env = {k: v for k, v in os.environ.items() if k not in ("SRRLAB_DATA", "SRRLAB_DEBUG")}
    # one thread per process: torch's default (all cores) slows down several-fold when other processes share
    # the cores, as they do under pytest on a small machine; the results do not depend on it
    env.update(EPOCHS="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    for i, (lang, code) in enumerate(blocks):
        command = ["bash", "-euo", "pipefail", "-c", code] if lang in SHELLS else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (f"tour block {i + 1} ({lang}) exited {done.returncode}\n--- stdout\n"
                                      f"{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
    # what the blocks name as outputs (--out / --dir), and what the tour's text says they write
    named = re.findall(r"--(?:out|dir)\s+(\S+)", "\n".join(code for _, code in blocks))
    missing = [p for p in dict.fromkeys(named + WRITTEN) if not (tmp_path / p).exists()]
    assert not missing, f"the tour did not write {missing}"
    assert "measure.srr" in (tmp_path / "m.csv").read_text().splitlines()[0]
    assert "layernorm=all" in (tmp_path / "m-unit.csv").read_text()
