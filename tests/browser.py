"""A headless Chromium from the system's packages, driven over the DevTools protocol (a websocket,
spoken here with the standard library): load a page, wait for what its script renders, take a
screenshot. For the dashboard's browser test and ``benchmarks/dashboard_shot.py``."""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = "install one with `apt-get install -y chromium` (Debian/Ubuntu), or set CHROMIUM=/path/to/chromium"


def find_chromium() -> str | None:
    """``$CHROMIUM``, else the first of :data:`NAMES` on the PATH."""
    return os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, NAMES)), None)


class Page:
    """One page target over a websocket: :meth:`call` sends a DevTools command and returns its result."""

    def __init__(self, ws_url: str, timeout_s: float) -> None:
        host, port, path = _split(ws_url)
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("DevTools closed the websocket handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"DevTools refused the websocket: {head[:200]!r}")
        self._ids = 0

    def call(self, method: str, **params) -> dict:
        self._ids += 1
        self._send(json.dumps({"id": self._ids, "method": method, "params": params}).encode())
        while True:  # events arrive in between; only the answer to this call matters here
            msg = json.loads(self._recv())
            if msg.get("id") == self._ids:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20.0, poll_s: float = 0.1):
        """Poll ``expression`` until it is truthy (what the script rendered); returns its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never rendered {expression!r} within {timeout_s} s")
            time.sleep(poll_s)

    def screenshot(self, path: Path) -> None:
        """The whole page as PNG (its full height, not just the window)."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        width = int(self.evaluate("document.documentElement.scrollWidth"))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def _send(self, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        header = bytes([0x81]) + (
            bytes([0x80 | n]) if n < 126 else struct.pack("!BH", 0x80 | 126, n) if n < 65536 else struct.pack("!BQ", 0x80 | 127, n)
        )
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _recv(self) -> bytes:
        parts = []
        while True:
            first, second = self._read(2)
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            data = self._read(n)  # the server never masks
            if first & 0x0F == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            if first & 0x0F in (0x9, 0xA):  # ping / pong: not part of a message
                continue
            parts.append(data)
            if first & 0x80:  # FIN
                return b"".join(parts)

    def _read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("DevTools closed the websocket")
            out += chunk
        return bytes(out)


def _split(ws_url: str) -> tuple[str, int, str]:
    rest = ws_url.removeprefix("ws://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    return host, int(port), "/" + path


@contextmanager
def chromium(binary: str, width: int = 1400, height: int = 1000, timeout_s: float = 30.0) -> Iterator[Page]:
    """A headless Chromium with one blank page; stopped (and its profile removed) on exit."""
    profile = tempfile.mkdtemp(prefix="ld-chromium-")
    args = [
        binary,
        "--headless=new",
        "--no-sandbox",  # it loads only our own server's page; CI containers and root refuse the sandbox
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "about:blank",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        port = _devtools_port(lines, proc, timeout_s)
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout_s).read())
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"], timeout_s)
        try:
            yield page
        finally:
            page.sock.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(lines: queue.Queue, proc: subprocess.Popen, timeout_s: float) -> int:
    """The port Chromium prints as ``DevTools listening on ws://127.0.0.1:PORT/...``."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if line.startswith("DevTools listening on ws://"):
            return _split(line.split(" on ", 1)[1].strip())[1]
    raise RuntimeError(f"Chromium did not start its DevTools server: {''.join(seen)[-2000:]}")


def open_page(page: Page, url: str, api_key: str | None = None) -> None:
    """Navigate to ``url``, sending ``api_key`` as a bearer token with every request of the page."""
    page.call("Network.enable")
    if api_key is not None:
        page.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Bearer {api_key}"})
    page.call("Page.enable")
    page.call("Page.navigate", url=url)
