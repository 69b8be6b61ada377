"""TensorBoard's HParams view of a real sweep, rendered by TensorBoard in headless Chromium.

TensorBoard (the real server, on a free port) serves the event files a ``TensorBoardCallback``
wrote; Chromium, driven over its DevTools protocol (the view is a JavaScript app drawn inside
shadow DOM, which ``--dump-dom`` does not show), opens the HParams tab until every trial's row
is on screen, and keeps a screenshot (docs/tensorboard-hparams.png is one).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import CHROMIUM, free_port

import hypersweep as hs
from hypersweep.integrations import TensorBoardCallback

pytestmark = pytest.mark.usefixtures("need_chromium")

# The page's text, shadow roots included (style and script text left out).
DEEP_TEXT = """(function text(node) {
  let out = '';
  if (node.shadowRoot) out += text(node.shadowRoot);
  for (const child of node.childNodes) {
    if (child.nodeType === 3) out += child.textContent + ' ';
    else if (child.nodeType === 1 && !['STYLE', 'SCRIPT'].includes(child.tagName))
      out += text(child);
  }
  return out;
})(document.body)"""


def _wait_for(url: str, process: subprocess.Popen[bytes], what: str) -> bytes:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return bytes(answer.read())
        except OSError:
            assert process.poll() is None, f"{what} exited"
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.2)


@contextmanager
def _running(command: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


class DevTools:
    """A Chromium page driven over the DevTools protocol (websocket-client, a kubernetes dep)."""

    def __init__(self, url: str) -> None:
        import websocket

        self._socket = websocket.create_connection(url, timeout=60)
        self._id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self._socket.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries the call's id
            message = json.loads(self._socket.recv())
            if message.get("id") == self._id:
                assert "error" not in message, message
                return dict(message["result"])

    def close(self) -> None:
        self._socket.close()


def objective(config: dict[str, Any]) -> float:
    loss = 0.0
    for step in range(1, 6):
        loss = (config["lr"] - 0.01) ** 2 * 100 / step + config["width"] / 1000
        hs.report(loss=loss, step=step)
    return loss


@pytest.mark.slow
def test_tensorboard_hparams_view_shows_every_trial(run_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "tb"
    result = hs.tune(
        {"lr": hs.loguniform(1e-4, 1e-1), "width": hs.choice([32, 64, 128])},
        objective,
        metric="loss",
        n_trials=6,
        name="hparams-demo",
        callbacks=[TensorBoardCallback(log_dir=str(logs))],
        verbose=False,
    )
    assert result.counts() == {"completed": 6}
    # Each row: the trial's folder, its config and final loss as the view prints them (5
    # significant digits, trailing zeros kept).
    rows = [
        [
            f"trial-{t.number}",
            format(t.config["lr"], "#.5g"),
            format(t.config["width"], "#.5g"),
            format(t.value, "#.5g"),
        ]
        for t in result.trials
    ]
    tensorboard = Path(sys.executable).parent / "tensorboard"
    serve = ["--logdir", str(logs / "hparams-demo"), "--host", "127.0.0.1"]
    port, devtools_port = free_port(), free_port()
    board = f"http://127.0.0.1:{port}"
    with (
        _running([str(tensorboard), *serve, "--port", str(port)]) as server,
        _running(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",  # tests may run as root
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1400,660",
                f"--remote-debugging-port={devtools_port}",
                "about:blank",
            ]
        ) as browser,
    ):
        _wait_for(f"{board}/data/plugins_listing", server, "tensorboard")
        targets = json.loads(
            _wait_for(f"http://127.0.0.1:{devtools_port}/json", browser, "chromium")
        )
        page = DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        try:
            page.call("Page.navigate", url=f"{board}/#hparams")
            deadline = time.monotonic() + 120
            while True:  # the view fetches the sessions, then draws the table
                shown = page.call("Runtime.evaluate", expression=DEEP_TEXT, returnByValue=True)
                words = " ".join(str(shown["result"].get("value", "")).split())
                missing = [row for row in rows if " ".join(row) not in words]
                if not missing:
                    break
                assert time.monotonic() < deadline, f"rows never shown: {missing}\n{words[-3000:]}"
                time.sleep(0.5)
            assert "Trial ID" in words and "TABLE VIEW" in words.upper()
            shot = page.call("Page.captureScreenshot", format="png")
        finally:
            page.close()
    image = base64.b64decode(shot["data"])
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 20_000  # a page, not a blank
    path = tmp_path / "tensorboard-hparams.png"
    path.write_bytes(image)
    print(f"screenshot: {path}")
