"""One import namespace: parallel/ and configs/ install as ringfa3.parallel and ringfa3.configs, from an
editable install and from a built wheel alike."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import ringfa3

ROOT = Path(__file__).resolve().parents[1]


def test_installed_package_imports_the_mapped_folders():
    import ringfa3.configs
    import ringfa3.parallel
    assert Path(ringfa3.parallel.__file__).parent.name == "parallel"
    assert callable(ringfa3.parallel.shard) and ringfa3.ring_flash_attn_func is ringfa3.parallel.ring_flash_attn_func
    assert ringfa3.configs.__file__


def test_wheel_contains_and_imports_the_namespace(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                             "outputs", "wandb", ".whl", ".build", "bench"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True)
    wheel = next((tmp_path / "dist").glob("ringfa3-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("ringfa3/parallel/__init__.py", "ringfa3/parallel/ring.py", "ringfa3/configs/__init__.py",
                     "ringfa3/ops/__init__.py"):
        assert required in names, f"{required} missing from the wheel"
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "import ringfa3, ringfa3.parallel, ringfa3.configs; print(ringfa3.parallel.__file__)"
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = [{str(site)!r}] + "
                          f"[p for p in {sys.path!r} if 'site-packages' in p and 'editable' not in p]; {code}"],
                         check=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.stdout.strip().startswith(str(site)), out.stdout
