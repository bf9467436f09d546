"""Property: whatever body or file path a caller sends to localhub, the answer is a success
or a 4xx, never a 500; a path it accepts is one the Hub accepts."""

from __future__ import annotations

import json

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.localhub.paths import FORBIDDEN_FOLDERS
from tests.hostile import json_values, repo_paths
from tests.hubtools import USERS

ALICE = {"Authorization": f"Bearer {USERS['alice']}"}
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
ENDPOINTS = ["/api/repos/create", "/api/models/alice/f/preupload/main",
             "/api/models/alice/f/commit/main", "/alice/f.git/info/lfs/objects/batch",
             "/alice/f.git/info/lfs/objects/verify", "/api/models/alice/f/paths-info/main",
             "/api/settings/webhooks", "/api/models/alice/f/branch/dev"]


@pytest.fixture
def repo(hub):
    hub.api("alice").create_repo("alice/f")
    return hub


def hub_accepts(path: str) -> bool:
    """huggingface_hub's own rule (``_validate_path_in_repo``) plus the server's."""
    parts = path.split("/")
    return (bool(path) and not path.startswith("/") and "\\" not in path
            and not any(ord(c) < 32 or ord(c) == 127 for c in path)
            and all(p not in ("", ".", "..") and p not in FORBIDDEN_FOLDERS
                    and len(p.encode("utf-8", "replace")) <= 255 for p in parts))


@FUZZ
@given(path=repo_paths)
def test_any_path_in_a_commit_is_accepted_only_when_the_hub_would(repo, path):
    lines = [{"key": "header", "value": {"summary": "fuzz"}},
             {"key": "file", "value": {"path": path, "content": "aGk=", "encoding": "base64"}}]
    body = "\n".join(json.dumps(line) for line in lines).encode("utf-8", "surrogatepass")
    answer = httpx2.post(f"{repo.url}/api/models/alice/f/commit/main", content=body,
                         headers=ALICE)
    assert answer.status_code in (200, 400), answer.text
    assert (answer.status_code == 200) == hub_accepts(path), (path, answer.text)


@settings(FUZZ, max_examples=30)
@given(endpoint=st.sampled_from(ENDPOINTS),
       body=st.one_of(json_values.map(lambda v: json.dumps(v).encode()),
                      st.binary(max_size=200)))
def test_any_body_to_any_endpoint_is_answered_without_a_500(repo, endpoint, body):
    answer = httpx2.post(f"{repo.url}{endpoint}", content=body,
                         headers={**ALICE, "Content-Type": "application/json"})
    assert answer.status_code < 500, (endpoint, body, answer.text)
