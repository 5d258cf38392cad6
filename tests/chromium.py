"""Headless Chromium for the report tests: driven over its DevTools pipe (load a
page, wait for every image, collect console errors and exceptions), or run once per
page for its ``--dump-dom`` and ``--screenshot`` modes; and the readers that pull
text out of the dumped DOM."""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 60.0

IMAGES_JS = """(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return {
    images: imgs.map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
    scripts: document.scripts.length,
    fetched: performance.getEntriesByType("resource").map(e => e.name),
    title: document.title,
  };
})()"""


class Chromium:
    """A headless Chromium driven over the DevTools pipe; one page per :meth:`check`."""

    def __init__(self, executable: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--no-default-browser-check",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-pipe",
            "about:blank",
        ]  # fmt: skip
        self.pid = spawn_with_pipe(args, to_browser_r, from_browser_w, profile.parent / "log")
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._messages: queue.Queue = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                self._messages.put(json.loads(raw))
        self._messages.put(None)  # the browser closed the pipe

    def _next(self, deadline: float) -> dict:
        try:
            message = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError("no answer from Chromium in time") from None
        if message is None:
            raise RuntimeError("Chromium exited; see the log beside its profile")
        return message

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             events: list | None = None) -> dict:  # fmt: skip
        """Send a command; return its result, appending events that arrive meanwhile."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if events is not None and "method" in reply:
                events.append(reply)

    def wait_for(self, method: str, events: list) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e["method"] == method for e in events):
            message = self._next(deadline)
            if "method" in message:
                events.append(message)

    def check(self, url: str) -> tuple[dict, list[str]]:
        """Load ``url`` in a fresh tab; return what the page holds and the errors seen."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attach = {"targetId": target, "flatten": True}
        session = self.call("Target.attachToTarget", attach)["sessionId"]
        events: list[dict] = []
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable", session=session, events=events)
        self.call("Page.navigate", {"url": url}, session=session, events=events)
        self.wait_for("Page.loadEventFired", events)
        result = self.call(
            "Runtime.evaluate",
            {"expression": IMAGES_JS, "awaitPromise": True, "returnByValue": True},
            session=session, events=events,
        )  # fmt: skip
        self.call("Target.closeTarget", {"targetId": target}, events=events)
        return result["result"]["value"], page_errors(events)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close")
        deadline = time.monotonic() + 15
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._to_browser)


def spawn_with_pipe(args: list[str], read_fd: int, write_fd: int, log: Path) -> int:
    """Start ``args`` with ``read_fd`` as its fd 3 and ``write_fd`` as its fd 4.

    Why posix_spawn: the remapping happens in C between fork and exec; Popen's
    ``preexec_fn`` would run Python there, which can deadlock in a threaded process
    (torch starts threads). The high copies are close-on-exec, so only 0-4 (and any
    descriptor the parent left inheritable) reach Chromium.
    """
    high_r = fcntl.fcntl(read_fd, fcntl.F_DUPFD_CLOEXEC, 10)
    high_w = fcntl.fcntl(write_fd, fcntl.F_DUPFD_CLOEXEC, 10)
    try:
        return os.posix_spawn(
            args[0], args, dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
                (os.POSIX_SPAWN_DUP2, high_r, 3),
                (os.POSIX_SPAWN_DUP2, high_w, 4),
            ],
        )  # fmt: skip
    finally:
        os.close(high_r)
        os.close(high_w)


def page_errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and browser log errors, one line each."""
    errors = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in args)
            )
        elif method == "Runtime.exceptionThrown":
            errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:300])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
    return errors


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def run_headless(executable: str, profile: Path, *args: str, timeout: float = TIMEOUT_S) -> str:
    """Run Chromium once in headless mode with ``args`` (``--dump-dom URL``,
    ``--screenshot=PNG URL``, ...) and return what it printed on stdout.

    Why a separate process per call: ``--dump-dom`` and ``--screenshot`` are
    Chromium's own one-shot modes, independent of the DevTools driver above, so
    a test that reads numbers off the rendered page checks what a user sees.
    """
    command = [
        executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions",
        "--hide-scrollbars", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    done = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-500:]!r}")
    return done.stdout.decode("utf-8")


def dump_dom(executable: str, profile: Path, url: str) -> str:
    """The page's DOM after Chromium loaded and laid it out (``--dump-dom``)."""
    return run_headless(executable, profile, "--dump-dom", url)


def screenshot(
    executable: str, profile: Path, url: str, png: Path, size: tuple[int, int] = (1280, 2400)
) -> Path:
    """A PNG of the page as Chromium renders it, ``size`` pixels (width, height)."""
    run_headless(
        executable, profile, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", url
    )
    return png


class _TextsById(HTMLParser):
    """Collects the text inside every element that has an ``id``, nested text included."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link",
                      "meta", "source", "track", "wbr"})  # fmt: skip

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open: list[str | None] = []
        self.texts: dict[str, list[str]] = {}

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        element_id = dict(attrs).get("id")
        if element_id:
            self.texts.setdefault(element_id, [])
        self.open.append(element_id)

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.open:
            self.open.pop()

    def handle_data(self, data):
        for element_id in self.open:
            if element_id:
                self.texts[element_id].append(data)


def texts_by_id(page: str) -> dict[str, str]:
    """``{id: text}`` for every element of ``page`` with an id, whitespace collapsed."""
    parser = _TextsById()
    parser.feed(page)
    parser.close()
    return {k: " ".join("".join(v).split()) for k, v in parser.texts.items()}


def visible_text(page: str) -> str:
    """The text of ``page``'s body, whitespace collapsed (style content left out)."""
    body = re.sub(r"(?is)<(style|script)\b.*?</\1>", " ", page)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())
