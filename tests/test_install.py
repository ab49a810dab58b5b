"""The built wheel works on its own: installed into a fresh virtualenv (dependencies from the
package index, not from this checkout), it migrates a new embedded database and grades."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the build reads (the Dockerfile's build stage copies the same).
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "labeval", "scoring", "migrations")


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_wheel_installs_migrates_and_grades(tmp_path: Path) -> None:
    # Build from a copy of the files a checkout has (as the Dockerfile does): a build/ directory
    # left in the working tree by an earlier build would otherwise leak stale modules in.
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dist, src, cwd=tmp_path)
    (wheel,) = dist.glob("labeval-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    _run(bin_dir / "python", "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path)

    # Run outside the checkout, so nothing can be imported from it.
    work = tmp_path / "work"
    work.mkdir()
    where = _run(bin_dir / "python", "-c", "import labeval.migrations as m; print(m.__file__)", cwd=work)
    assert where.stdout.strip().startswith(str(env_dir))

    # The pages' templates, styles and catalogues ship inside the package, and the installed
    # catalogue compiles (a page in Chinese needs nothing from the checkout).
    shipped = _run(bin_dir / "python", "-c",
                   "from labeval.web.i18n import translator; from labeval.web.templating import TEMPLATE_DIR; "
                   "from labeval.web.routes import STATIC_DIR; "
                   "print(translator('zh-CN')('Sign in'), (TEMPLATE_DIR / 'base.html').is_file(), "
                   "(STATIC_DIR / 'style.css').is_file(), TEMPLATE_DIR)", cwd=work)
    assert shipped.stdout.split()[:3] == ["登录", "True", "True"]
    assert shipped.stdout.split()[3].startswith(str(env_dir))

    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEVAL_")}
    env["LABEVAL_DATA_DIR"] = str(tmp_path / "data")
    migrated = _run(bin_dir / "labeval", "db", "migrate", cwd=work, env=env)
    lines = migrated.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["0001", "0002", "0003"]
    assert all(line.endswith("applied") for line in lines)

    graded = _run(bin_dir / "labeval", "grade", "--as-of", "2026-01-31", "--json", cwd=work, env=env)
    run = json.loads(graded.stdout)
    # An empty database: a stored run with no pairs and no labs, under the shipped policy.
    assert (run["as_of"], run["n_pairs"], run["n_labs"], run["policy_name"]) == ("2026-01-31", 0, 0, "default")
