"""A real Label Studio server on 127.0.0.1 and a headless Chromium driven over DevTools.

Label Studio lives in its own virtual environment (scripts/setup_labelstudio.sh): its Django pins
clash with Prefect's. The server gets a free port, its own data directory, and a user with a legacy
API token; it is stopped with its whole process group.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from server_helpers import free_port, run_setup_script, serving, stop_process_group
from websockets.sync.client import connect

USER, PASSWORD, TOKEN = "reviewer@example.com", "review-pass-1", "cattune-review-token-0001"
STARTUP_SECONDS = 600


def install_labelstudio() -> Path:
    """Run the idempotent setup script; returns the label-studio executable."""
    return run_setup_script("setup_labelstudio.sh", timeout=1800)


@dataclass
class LabelStudio:
    url: str
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Token {TOKEN}"}, timeout=120
        )

    def session_cookie(self) -> str:
        """Log in through the web form, as a person would; returns the ``sessionid`` cookie."""
        with httpx.Client(base_url=self.url, timeout=60, follow_redirects=False) as web:
            web.get("/user/login/")
            csrf = web.cookies["csrftoken"]
            response = web.post(
                "/user/login/",
                data={"email": USER, "password": PASSWORD, "csrfmiddlewaretoken": csrf},
                headers={"Referer": f"{self.url}/user/login/"},
            )
            assert response.status_code in (302, 303), response.text[:500]
            return web.cookies["sessionid"]


@contextmanager
def running_labelstudio(workdir: Path) -> Iterator[LabelStudio]:
    executable = install_labelstudio()
    port = free_port()
    data = workdir / "ls-data"
    data.mkdir()
    # The setup script leaves a migrated database beside the venv; a copy saves minutes of start.
    shutil.copy(executable.parent.parent / "template" / "label_studio.sqlite3", data)
    log = workdir / "labelstudio.log"
    env = {
        **os.environ,
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    command = [
        str(executable),
        "start",
        "--no-browser",
        "--data-dir",
        str(data),
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--username",
        USER,
        "--password",
        PASSWORD,
        "--user-token",
        TOKEN,
        "--enable-legacy-api-token",
    ]
    url = f"http://127.0.0.1:{port}"
    with serving(
        "Label Studio",
        command,
        log=log,
        ready_url=f"{url}/health",
        startup_seconds=STARTUP_SECONDS,
        poll_seconds=2,
        env=env,
    ):
        yield LabelStudio(url=url, log=log)


# --- Chromium over the DevTools protocol ---------------------------------------------------------


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One tab of a headless Chromium, driven through its DevTools websocket."""

    def __init__(self, socket_url: str) -> None:
        self._socket = connect(socket_url, max_size=64 * 2**20, open_timeout=30)
        self._next = 0

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        self._socket.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv(timeout=120))
            if message.get("id") == self._next:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 180) -> Any:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(1)
        raise TimeoutError(f"page never satisfied {expression!r}")

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def drag(self, x0: float, x1: float, y: float) -> None:
        """Press the mouse at (x0, y), move to (x1, y) and release: a person selecting text."""
        self.send("Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y, button="left")
        for x in (x0 + (x1 - x0) / 2, x1):
            self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left")
        self.send("Input.dispatchMouseEvent", type="mouseReleased", x=x1, y=y, button="left")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self._socket.close()


@contextmanager
def headless_page(executable: str, workdir: Path) -> Iterator[Page]:
    port = free_port()
    profile = workdir / "chromium-profile"
    process = subprocess.Popen(
        [
            executable,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.5)
        page = Page(pages[0]["webSocketDebuggerUrl"])
        try:
            page.send("Page.enable")
            page.send("Network.enable")
            yield page
        finally:
            page.close()
    finally:
        stop_process_group(process)  # type: ignore[arg-type]
