"""localhub: a Hugging Face Hub-compatible server for offline use and tests.

Driven by the real `huggingface_hub` client (`HF_ENDPOINT=http://127.0.0.1:PORT` or
`HfApi(endpoint=...)`, with `HF_HUB_DISABLE_XET=1`: uploads use the LFS protocol, not Xet).
Model and dataset repos (`repo_type="dataset"`); repo ids are always `namespace/name`. A
dataset's URLs are a model's with `/api/datasets/` for `/api/models/` and a `datasets/`
prefix before the repo id (`/datasets/{repo}/resolve/...`, `/datasets/{repo}.git/...`);
a model and a dataset of one name are separate repos (refs, commits, LFS objects), and the
namespaces `datasets`, `spaces`, `models` are reserved.

Start it:
    mergebot localhub --port 8765 --data ./hub-data --user alice:hf_alice [--test-hooks]
    hub = serve_in_thread(tmp_path, {"alice": "hf_alice"}, test_hooks=True); hub.url; hub.stop()

Hub endpoints (same paths, JSON shapes, status codes and X-Error-Code headers as the Hub):
    GET    /api/whoami-v2
    POST   /api/repos/create                      DELETE /api/repos/delete
    PUT    /api/models/{repo}/settings            POST   /api/validate-yaml
    GET    /api/models/{repo}[/revision/{rev}]    (?blobs=1 for sizes/LFS, ?expand=...)
    GET    /api/models/{repo}/tree/{rev}[/{path}] (?recursive=1)
    POST   /api/models/{repo}/paths-info/{rev}
    GET    /api/models/{repo}/commits/{rev}       GET    /api/models/{repo}/refs
    POST|DELETE /api/models/{repo}/branch/{branch} (datasets: also refs/convert/parquet)
    POST   /api/models/{repo}/preupload/{rev}     POST   /api/models/{repo}/commit/{rev}
    POST   /{repo}.git/info/lfs/objects/batch     POST   /{repo}.git/info/lfs/objects/verify
    PUT    /_lfs/upload/{repo}/{oid}?sig=...      (signed URL handed out by the batch API)
    GET|HEAD /{repo}/resolve/{rev}/{path}         (Range requests -> 206)
    (each also for datasets: /api/datasets/{repo}/..., /datasets/{repo}/..., as on the Hub)
    GET|POST /api/settings/webhooks               GET|POST|DELETE /api/settings/webhooks/{id}
    POST   /api/settings/webhooks/{id}/enable|disable
Webhook deliveries: v3 `repo.content` payloads after each commit, `repo` create/delete
(watched `{"type": "model"|"dataset", "name": ...}` or a user/org).

Hostile callers: an LFS object belongs to the repos it was uploaded to (a commit, batch or
verify in another repo cannot use it by naming its sha256); JSON bodies are limited to
2 MiB and commit bodies to 64 MiB (413); file paths follow the Hub's rules (`paths.py`).
Hugging Face Jobs (`jobs.py`, `api_jobs.py`): POST/GET /api/jobs/{ns} (run, list by label),
GET /api/jobs/{ns}/{id} and /logs, POST /api/jobs/{ns}/{id}/cancel, GET /api/jobs/hardware;
each Job's command runs as a local subprocess with its env and secrets and HF_ENDPOINT set
to this server, with a timeout and kill on cancel.

Test extras (no auth with `--test-hooks`, else any valid token; see `testhooks.py`):
    GET  /_localhub/stats          counters: bytes served per file, safetensors header vs
                                   data bytes, uploads, commits, webhook deliveries
    POST /_localhub/stats/reset
    GET|POST|DELETE /_localhub/faults   {"path_regex", "status", "count", "method", "delay"}:
                                   answer the next matching requests with that status, or
                                   hold them `delay` seconds
    POST /_localhub/jobs/faults    {"action": delay|hang|exit, "count", ...}: what the next
                                   Jobs do instead (see `jobs.py`)

Known gaps: no spaces, orgs, tags, pull requests (create_pr), Xet, LFS multipart,
pagination (lists come in one page), `expand` on tree entries (lastCommit), blob GC. For
datasets: no parquet converter (the owner writes `refs/convert/parquet` by hand: create the
branch, commit `{config}/{split}/0000.parquet`), no dataset viewer API
(`datasets-server`: /splits, /rows, /parquet), no `cardData`-derived tags beyond the card's.
"""

from .server import LocalHub, serve, serve_in_thread

__all__ = ["LocalHub", "serve", "serve_in_thread"]
