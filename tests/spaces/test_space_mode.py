"""The staged Space app run as a Space runs it (``python app.py``), pointed at the demo's
bot: anonymous users can read public recipes; checking and submitting ask to sign in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from spaces_app.demo import REPOS
from spaces_app.examples import examples
from spaces_app.stage import stage
from tests.bot.botutil import wait_for
from tests.spaces.conftest import Demo, demo_env, free_port

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def space(demo: Demo, tmp_path_factory):
    folder = stage(tmp_path_factory.mktemp("space") / "app")
    port = free_port()
    env = {
        **demo_env(),
        "MERGEBOT_API_URL": demo.url,
        "HF_ENDPOINT": demo.hub_url,
        "HF_HOME": str(folder.parent / "hf-home"),  # no stored token: no (mock) login
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
    }
    log = folder.parent / "space.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py"], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        assert proc.poll() is None, Path(log).read_text()
        try:
            return httpx2.get(url, timeout=2).status_code == 200
        except httpx2.TransportError:
            return False

    try:
        wait_for(up, 120, every=0.2, what="the Space app to serve")
        yield gradio_client.Client(url, verbose=False)
    finally:
        proc.terminate()
        proc.wait(15)


def test_anonymous_check_history_and_submit(space) -> None:
    seed = examples(*REPOS)[0].text
    assert space.predict(seed, api_name="/check").startswith("Sign in")
    caption, _table = space.predict(api_name="/history")
    assert caption == "Public recipes"
    message, recipe_id, job_id, _ = space.predict(seed, "anon", False, True, api_name="/submit")
    assert message.startswith("Sign in") and recipe_id is None and job_id is None
