"""`mergebot localhub` as a subprocess, driven through HF_ENDPOINT-style configuration."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx2
import pytest
from huggingface_hub import HfApi

from bot.cli import build_parser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_parses_localhub_options():
    args = build_parser().parse_args(
        ["localhub", "--port", "1234", "--data", "d", "--user", "a:t", "--user", "b:u"]
    )
    assert (args.command, args.port, args.user, args.host) == (
        "localhub",
        1234,
        ["a:t", "b:u"],
        "127.0.0.1",
    )
    assert args.bandwidth is None and args.test_hooks is False


def test_cli_serves_the_hub_api(tmp_path):
    port = _free_port()
    command = [sys.executable, "-m", "bot.cli", "localhub", "--port", str(port)]
    command += ["--data", str(tmp_path / "data"), "--user", "carol:tok_c", "--log-level", "error"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx2.get(f"{url}/api/whoami-v2")
                break
            except httpx2.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"localhub did not start: {proc.stderr.read().decode()}")
                time.sleep(0.1)
        api = HfApi(endpoint=url, token="tok_c")
        assert api.whoami()["name"] == "carol"
        api.create_repo("carol/cli")
        api.upload_file(path_or_fileobj=b"hi", path_in_repo="hi.txt", repo_id="carol/cli")
        assert api.list_repo_files("carol/cli") == [".gitattributes", "hi.txt"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert (tmp_path / "data" / "repos" / "carol" / "cli" / "repo.json").is_file()


def test_cli_rejects_a_malformed_user(tmp_path, capsys):
    from bot.cli import main

    assert main(["localhub", "--data", str(tmp_path), "--user", "no-colon"]) == 2
    assert "NAME:TOKEN" in capsys.readouterr().err
