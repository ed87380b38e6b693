"""A normal (non-editable) install works outside a checkout: the wheel carries every package and the shipped
configs (package data), and a preset, a recipe and `bert glue`'s task configs load from a folder that has no
`configs/`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e

PROBE = """
import sys
from pathlib import Path
import bert
from bert.config import PretrainConfig, load_config
from bert.glue import task_config
from bert.typed_yaml import CONFIG_ROOT
target = Path(sys.argv[1])
assert Path(bert.__file__).resolve().is_relative_to(target), bert.__file__  # the installed copy runs
assert CONFIG_ROOT.resolve().is_relative_to(target), CONFIG_ROOT
cfg = load_config(PretrainConfig, "configs/pretrain/demo.yaml", ["model=mini"])
assert cfg.model.hidden_size == 256, cfg.model
cfg = task_config("stsb", Path("model"), Path("glue"), Path("out"), [])
assert cfg.task.name == "stsb" and cfg.train.global_batch_size == 32
print("ok", CONFIG_ROOT)
"""


def _source_tree(destination: Path) -> Path:
    """The checkout's files as git sees them (tracked and new, not ignored): no build litter in the repo."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    )
    if listed.returncode != 0:
        pytest.skip("needs a git checkout")
    for name in listed.stdout.splitlines():
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def test_the_wheel_installs_anywhere_with_its_configs(tmp_path):
    source = _source_tree(tmp_path / "src")
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True
    )
    wheel = next(wheels.glob("bertsmith-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "bert").rglob("__init__.py")}
    assert {p for p in packages if f"{p}/__init__.py" not in names} == set()  # every package is shipped
    shipped = {str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml")}
    assert {f"bert/configs/{n}" for n in shipped} <= set(names)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(target)], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.startswith("ok")
    cli = subprocess.run(
        [sys.executable, "-m", "bert.cli", "pretrain", "configs/pretrain/demo.yaml", "model=tiny", "--print-config"],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert cli.returncode == 0 and "hidden_size: 128" in cli.stdout, cli.stderr[-2000:]


def test_code_imported_from_another_checkout_reads_that_checkouts_configs(tmp_path):
    # a worktree (a frozen copy for a long benchmark) beside an editable install of this checkout: the
    # editable install maps bert.configs here, but the copy's code must read the copy's configs
    copy = _source_tree(tmp_path / "copy")
    marker = copy / "configs" / "model" / "only_in_the_copy.yaml"
    marker.write_text((copy / "configs" / "model" / "mini.yaml").read_text())
    probe = "from bert.typed_yaml import CONFIG_ROOT; import bert; print(CONFIG_ROOT, bert.__file__)"
    env = {**os.environ, "PYTHONPATH": str(copy)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    assert Path(out[1]).resolve().is_relative_to(copy.resolve())  # the copy's code runs
    assert Path(out[0]).resolve() == (copy / "configs").resolve()
