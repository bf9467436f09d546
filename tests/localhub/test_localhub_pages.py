"""The human pages: repo, commit, tree, blob and user pages as plain HTML, escaped."""

from __future__ import annotations

import re

import httpx2
from huggingface_hub import CommitOperationAdd

CARD = (
    "---\nlicense: mit\n---\n\n# Hello card\n\n| role | model |\n| --- | --- |\n"
    "| base | alice/base |\n\n<script>alert(1)</script> <b>bold?</b>\n"
)


def _seed(hub) -> tuple[str, str]:
    api = hub.api("alice")
    api.create_repo("alice/m")
    first = api.create_commit(
        "alice/m",
        [
            CommitOperationAdd("README.md", CARD.encode()),
            CommitOperationAdd("sub/notes.txt", b"a <note> & more\n"),
            CommitOperationAdd("model.safetensors", b"\x00\x01" * 20),
        ],
        commit_message="Demo/Donor-1 main moved",
        commit_description="the <b>message</b> body",
    ).oid
    second = api.create_commit(
        "alice/m", [CommitOperationAdd("sub/notes.txt", b"changed\n")], commit_message="edit"
    ).oid
    return first, second


def _get(hub, path: str, token: str | None = None) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx2.get(f"{hub.url}{path}", headers=headers, timeout=10)


def test_repo_page_renders_card_files_branches_commits(hub):
    first, second = _seed(hub)
    page = _get(hub, "/alice/m")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "<h1>Hello card</h1>" in text
    assert "<td>alice/base</td>" in text  # the card's table is a table
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;bold?&lt;/b&gt;" in text
    assert "license: mit" in text  # the metadata is shown as text
    assert 'href="/alice/m/blob/main/README.md"' in text
    assert 'href="/alice/m/tree/main/sub"' in text
    assert f'href="/alice/m/commit/{first}"' in text and f'href="/alice/m/commit/{second}"' in text
    assert "Demo/Donor-1 main moved" in text  # the title keeps its case
    assert "<script" not in text.lower().replace("&lt;script", "")


def test_commit_page_lists_message_and_changed_files(hub):
    first, second = _seed(hub)
    page = _get(hub, f"/alice/m/commit/{first}")
    assert page.status_code == 200
    assert "Demo/Donor-1 main moved" in page.text
    assert "the &lt;b&gt;message&lt;/b&gt; body" in page.text
    for path in ("README.md", "sub/notes.txt", "model.safetensors"):
        assert f'href="/alice/m/blob/{first}/{path}"' in page.text
    later = _get(hub, f"/alice/m/commit/{second}").text
    assert "1 changed files" in later and "modified" in later
    assert f'href="/alice/m/commit/{first}"' in later  # the parent


def test_tree_blob_and_user_pages(hub):
    first, _ = _seed(hub)
    tree = _get(hub, "/alice/m/tree/main/sub")
    assert tree.status_code == 200 and 'href="/alice/m/blob/main/sub/notes.txt"' in tree.text
    blob = _get(hub, f"/alice/m/blob/{first}/sub/notes.txt")
    assert blob.status_code == 200 and "a &lt;note&gt; &amp; more" in blob.text
    binary = _get(hub, "/alice/m/blob/main/model.safetensors")
    assert "Binary or large file" in binary.text
    assert 'href="/alice/m/resolve/main/model.safetensors"' in binary.text
    user = _get(hub, "/alice")
    assert user.status_code == 200 and 'href="/alice/m"' in user.text
    assert 'href="/alice"' in _get(hub, "/").text


def test_missing_and_private_are_html_404_and_api_is_untouched(hub):
    _seed(hub)
    hub.api("alice").create_repo("alice/secret", private=True)
    for path in ("/alice/nope", "/alice/m/commit/" + "0" * 40, "/alice/m/blob/main/none",
                 "/nobody", "/alice/m/tree/main/none"):
        page = _get(hub, path)
        assert page.status_code == 404, path
        assert page.headers["content-type"].startswith("text/html")
    assert _get(hub, "/alice/secret").status_code == 404
    assert _get(hub, "/alice/secret", "hf_bob_token").status_code == 404
    assert _get(hub, "/alice/secret", "hf_alice_token").status_code == 200
    assert "alice/secret" not in _get(hub, "/alice").text
    assert _get(hub, "/api/models/alice/m").json()["id"] == "alice/m"
    assert re.search(r"<h1>", _get(hub, "/alice/m/commits/main").text)
