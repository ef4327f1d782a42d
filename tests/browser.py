"""A headless Chromium driven over the DevTools protocol (``--remote-debugging-pipe``; no extra package).

`open_page` loads a page, waits for its load event, and returns what the console and the
browser log reported as errors, whether every image decoded, and a PNG screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    """The first Chromium-family browser on PATH."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@dataclass
class PageResult:
    errors: list[str]
    images_ok: bool
    screenshot: bytes


class _Pipe:
    def __init__(self, browser: str, profile: str) -> None:
        self.to_browser_r, self.to_browser_w = os.pipe()
        self.from_browser_r, self.from_browser_w = os.pipe()

        def wire() -> None:  # the browser reads commands on fd 3 and writes replies on fd 4
            read, write = os.dup(self.to_browser_r), os.dup(self.from_browser_w)  # the pipes may sit on 3 or 4
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.process = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             f"--user-data-dir={profile}", "--hide-scrollbars", "about:blank"],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(self.to_browser_r)
        os.close(self.from_browser_w)
        self.buffer, self.next_id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser_w, json.dumps(message).encode() + b"\0")
        reply = self.wait(lambda m: m.get("id") == self.next_id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait(self, match, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if match(message):
                    return message
            chunk = os.read(self.from_browser_r, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed its DevTools pipe")
            self.buffer += chunk
        raise TimeoutError("no answer from the browser")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self.to_browser_w)
        os.close(self.from_browser_r)


def open_page(browser: str, page: Path, width: int = 1200, height: int = 2400) -> PageResult:
    """Load ``page`` from disk, then report console/log errors, image decoding and a screenshot."""
    with tempfile.TemporaryDirectory(prefix="fedcomp-browser-") as profile:
        pipe = _Pipe(browser, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
            pipe.send("Page.navigate", {"url": page.resolve().as_uri()}, session)
            pipe.wait(lambda m: m.get("method") == "Page.loadEventFired", 60)
            images = pipe.send("Runtime.evaluate", {"expression": "Array.from(document.images).every("
                                                    "i => i.complete && i.naturalWidth > 0)",
                                                    "returnByValue": True}, session)["result"]["value"]
            shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
        finally:
            pipe.close()
    errors = []
    for event in pipe.events:
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif event["method"] == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("text", "exception"))
        elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(params["entry"]["text"])
    return PageResult(errors, bool(images), base64.b64decode(shot))
