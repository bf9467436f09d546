"""POST /api/validate on a Hub source whose pickle names another global: a 422 naming the
global, and nothing executed."""

from __future__ import annotations

from starlette.testclient import TestClient

from bot.server import create_app
from tests.bot.botutil import recipe_yaml
from tests.hubtools import USERS
from tests.pickles import malicious


def test_a_pickle_naming_os_system_is_422_and_nothing_runs(sources, make_settings, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "pytorch_model.bin").write_bytes(malicious(marker))
    api = sources.api("alice")
    api.create_repo("alice/evil")
    api.upload_folder(repo_id="alice/evil", folder_path=evil)
    with TestClient(create_app(make_settings(), workers=0)) as client:
        answer = client.post("/api/validate",
                             json={"recipe": recipe_yaml(donors=("alice/donor-1", "alice/evil"))},
                             headers={"Authorization": f"Bearer {USERS['alice']}"})
    assert answer.status_code == 422, answer.text
    message = answer.json()["errors"][0]["msg"]
    assert "names the global posix.system" in message and "\n" not in message
    assert not marker.exists()
