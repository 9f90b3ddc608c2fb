"""
Take the README's screenshots of the admin dashboard: a real gateway (the
shipped configuration plus an agent principal and a budget), a few real calls
(one failing, one refused login), then the system's headless Chromium.

    python docs/screenshots.py        # writes docs/admin-login.png, docs/admin-dashboard.png

Needs C{playwright} (the test extras) and Debian's C{chromium}.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
ADMIN = ("admin", "changeme")
AGENT = ("support-bot", "bot-password")


def request(url: str, method: str = "GET", body: Any = None, auth: tuple[str, str] = ADMIN) -> tuple[int, Any]:
    headers = {"Authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    call = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(call, timeout=15) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def main() -> None:
    sys.path.insert(0, str(REPO))
    from mcpgateway.policy.auth import hash_password

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as directory:
        config = json.loads((REPO / "config" / "config.json").read_text())
        config["server"]["principals"] = [{"name": AGENT[0], "role": "agent", "password_hash": hash_password(AGENT[1])}]
        config["budgets"] = {"rules": [{"principals": [AGENT[0]], "service": "todo", "limit": "100 per hour"}]}
        Path(directory, "config.json").write_text(json.dumps(config))
        env = {**os.environ, "MCP_PORT": str(port), "PYTHONPATH": str(REPO)}
        twistd = Path(sys.executable).parent / "twistd"
        gateway = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "mcpgateway", "--config", "config.json"],
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if request(url + "/health")[0] == 200:
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.1)
            for n, text in enumerate(["buy milk", "call the plumber", "book flights", "renew passport"] * 4):
                request(
                    url + "/services/todo/call",
                    "POST",
                    {"tool": "add_todo", "arguments": {"text": text}, "session_id": "call-1"},
                )
                request(
                    url + "/services/todo/call",
                    "POST",
                    {"tool": "list_todos", "session_id": f"agent-{n % 2}"},
                    auth=AGENT,
                )
                time.sleep(0.4 * (n % 5) + 0.5)
            request(
                url + "/services/todo/call",
                "POST",
                {"tool": "complete_todo", "arguments": {"id": 99}, "session_id": "call-1"},
            )
            request(url + "/services", auth=("admin", "guess"))
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url + "/admin")
                page.fill("input[name=user]", ADMIN[0])
                page.fill("input[name=password]", "wrong")
                with page.expect_navigation():
                    page.click("button[type=submit]")
                page.screenshot(
                    path=str(HERE / "admin-login.png"), clip={"x": 440, "y": 60, "width": 400, "height": 450}
                )
                page.fill("input[name=user]", ADMIN[0])
                page.fill("input[name=password]", ADMIN[1])
                with page.expect_navigation():
                    page.click("button[type=submit]")
                page.wait_for_function("document.getElementById('chart').dataset.updated !== undefined")
                page.screenshot(path=str(HERE / "admin-dashboard.png"), full_page=True)
                browser.close()
        finally:
            gateway.terminate()
            gateway.wait(timeout=10)


if __name__ == "__main__":
    main()
