"""Headless Chromium for tests: finding it, its flags, and driving one page over the DevTools
protocol with aiohttp's WebSocket client (no browser-automation package needed)."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str:
    """A headless-capable Chromium, or skip the test; CI sets PETS_REQUIRE_CHROMIUM=1 so a
    missing browser fails instead."""
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    if os.environ.get("PETS_REQUIRE_CHROMIUM"):
        pytest.fail("PETS_REQUIRE_CHROMIUM is set but no Chromium is installed")
    pytest.skip("no Chromium found (apt-get install chromium); the page is not browser-checked")


def headless_flags(profile: Path) -> list[str]:
    """Chromium's flags for a quiet, offline, headless run with its own profile folder."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ]


class DevToolsError(RuntimeError):
    """The browser answered a DevTools command with an error, or a page script threw."""


class DevTools:
    """One page in a headless Chromium, driven over the DevTools protocol. Use as
    `async with DevTools(chromium, profile) as page: await page.send("Page.navigate", url=...)`.
    `events` holds every event the page sent (Runtime.exceptionThrown, ...)."""

    def __init__(self, chromium: str, profile: Path, timeout: float = 60.0) -> None:
        self.chromium, self.profile, self.timeout = chromium, profile, timeout
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def __aenter__(self) -> DevTools:
        self.profile.mkdir(parents=True, exist_ok=True)
        self._log = (self.profile.parent / f"{self.profile.name}.log").open("w")
        self._browser = subprocess.Popen(
            [
                self.chromium,
                *headless_flags(self.profile),
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=self._log,
            stderr=self._log,
        )
        active = self.profile / "DevToolsActivePort"  # Chromium writes its port here
        for _ in range(int(self.timeout * 10)):
            if active.exists() and len(active.read_text().split()) >= 2:
                break
            if self._browser.poll() is not None:
                raise DevToolsError(f"chromium exited ({self._browser.returncode})")
            await asyncio.sleep(0.1)
        else:
            raise DevToolsError("chromium did not open its DevTools port")
        port = active.read_text().split()[0]
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as answer:
            pages = [t for t in await answer.json() if t["type"] == "page"]
        self._socket = await self._session.ws_connect(
            pages[0]["webSocketDebuggerUrl"], max_msg_size=0
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        return self

    async def __aexit__(self, *_: object) -> None:
        self._reader.cancel()
        await self._socket.close()
        await self._session.close()
        self._browser.terminate()
        try:
            self._browser.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._browser.kill()
            self._browser.wait()
        self._log.close()

    async def _read(self) -> None:
        async for message in self._socket:
            data = message.json()
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result."""
        key = next(self._ids)
        self._waiting[key] = asyncio.get_running_loop().create_future()
        await self._socket.send_json({"id": key, "method": method, "params": params})
        answer = await asyncio.wait_for(self._waiting[key], self.timeout)
        if "error" in answer:
            raise DevToolsError(f"{method}: {answer['error']}")
        return answer["result"]

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str) -> Any:
        """The first truthy value of `expression`, polled until the timeout."""
        for _ in range(int(self.timeout * 10)):
            if value := await self.evaluate(expression):
                return value
            await asyncio.sleep(0.1)
        raise DevToolsError(f"still false after {self.timeout:.0f} s: {expression}")

    async def open(self, url: str) -> None:
        """Navigate to `url` and wait until it has loaded."""
        await self.send("Page.navigate", url=url)
        await self.wait_for(f"location.href === {url!r} && document.readyState === 'complete'")

    async def set_files(self, selector: str, files: list[Path]) -> None:
        """Pick `files` in the file input at `selector`, as a person would (fires `change`)."""
        root = await self.send("DOM.getDocument")
        node = await self.send(
            "DOM.querySelector", nodeId=root["root"]["nodeId"], selector=selector
        )
        await self.send(
            "DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(f) for f in files]
        )

    async def screenshot(self, path: Path) -> None:
        """A PNG of the page as shown."""
        import base64

        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
