"""The documentation site builds from docs/ in strict mode: a broken link, a missing anchor, a
page left out of the navigation or a public name without a docstring, example or shapes (the
docs/hooks.py check) fails the build."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("mkdocs_jupyter")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING" not in r.stderr, r.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("vaelab.api.train", "vaelab.scores.score", "vaelab.detection.ood"):
        assert name in api, name
    assert (tmp_path / "site" / "tutorials" / "01-autoencoder-vs-vae" / "index.html").exists()
    reference = (tmp_path / "site" / "reference" / "distributions" / "index.html").read_text()
    assert "vaelab.distributions.DiagonalGaussian" in reference and "Examples" in reference
    assert "hooks.py" not in {p.name for p in (tmp_path / "site").rglob("*.py")}
    shutil.rmtree(ROOT / ".cache" / "mkdocs-jupyter", ignore_errors=True)  # the notebook plugin's scratch files
