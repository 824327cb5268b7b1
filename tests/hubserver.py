"""A local Hugging Face hub-compatible server for tests: the real huggingface_hub client talks to it.

It serves the repositories under a directory (<root>/<org>/<name>/...) at one revision, with the
endpoints and headers the client uses: GET /api/models/<repo>/revision/<rev> (model_info with file
sizes and LFS sha256) and HEAD/GET /<repo>/resolve/<rev>/<file> (X-Repo-Commit, ETag, sizes).
Repositories listed in `gated` answer 401 unless the request carries `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_THRESHOLD = 1024  # files larger than this are served as LFS files (sha256 in the metadata)


class HubServer:
    def __init__(self, root: Path, token: str | None = None, gated: tuple[str, ...] = ()) -> None:
        self.root = root
        self.token = token
        self.gated = set(gated)
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def commit(self, repo: str) -> str:
        """A stable 40-hex "commit" for the repository's current content."""
        digest = hashlib.sha1()
        for path in sorted((self.root / repo).rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(self.root / repo)).encode())
                digest.update(path.read_bytes())
        return digest.hexdigest()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _fail(self, status: int, code: str, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _repo(self, org: str, name: str) -> str | None:
                repo = f"{org}/{name}"
                if not (hub.root / repo).is_dir():
                    self._fail(404, "RepoNotFound", f"Repository {repo} not found")
                    return None
                if repo in hub.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._fail(401, "GatedRepo", f"Access to {repo} is restricted")
                    return None
                return repo

            def _route(self) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                parts = [
                    urllib.parse.unquote(p) for p in urllib.parse.urlparse(self.path).path.split("/") if p
                ]
                if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "revision":
                    repo = self._repo(parts[2], parts[3])
                    if repo is not None:
                        self._model_info(repo, parts[5])
                    return
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo = self._repo(parts[0], parts[1])
                    if repo is not None:
                        self._file(repo, parts[3], "/".join(parts[4:]))
                    return
                self._fail(404, "EntryNotFound", f"no route for {self.path}")

            def _model_info(self, repo: str, revision: str) -> None:
                if revision not in ("main", hub.commit(repo)):
                    self._fail(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                    return
                siblings = []
                for path in sorted((hub.root / repo).rglob("*")):
                    if not path.is_file():
                        continue
                    data = path.read_bytes()
                    entry = {
                        "rfilename": str(path.relative_to(hub.root / repo)),
                        "size": len(data),
                        "blobId": hashlib.sha1(data).hexdigest(),
                    }
                    if len(data) > LFS_THRESHOLD:
                        entry["lfs"] = {
                            "sha256": hashlib.sha256(data).hexdigest(),
                            "size": len(data),
                            "pointerSize": 134,
                        }
                    siblings.append(entry)
                body = json.dumps(
                    {
                        "id": repo,
                        "modelId": repo,
                        "sha": hub.commit(repo),
                        "siblings": siblings,
                        "private": False,
                        "gated": repo in hub.gated,
                        "disabled": False,
                        "downloads": 0,
                        "likes": 0,
                        "tags": [],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _file(self, repo: str, revision: str, filename: str) -> None:
                commit = hub.commit(repo)
                if revision not in ("main", commit):
                    self._fail(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                    return
                path = hub.root / repo / filename
                if not path.is_file():
                    self._fail(404, "EntryNotFound", f"{filename} does not exist at {revision}")
                    return
                data = path.read_bytes()
                etag = (
                    hashlib.sha256(data).hexdigest()
                    if len(data) > LFS_THRESHOLD
                    else hashlib.sha1(data).hexdigest()
                )
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(data)

            do_GET = _route
            do_HEAD = _route

        return Handler


if __name__ == "__main__":  # python -m tests.hubserver ROOT: serve until killed, print the URL first
    import sys
    import time

    with HubServer(Path(sys.argv[1])) as server:
        print(server.url, flush=True)
        while True:
            time.sleep(3600)
