"""Debian's chromium as the browser suite and the picture tool drive it through Python playwright (standard library
only here; ``playwright install`` is never used): ``CHROMIUM`` (installed by scripts/setup_env.sh) and ``launch``."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")


def launch(playwright):
    """A headless ``CHROMIUM`` for ``playwright`` (a started ``sync_playwright()``): no sandbox (root in CI), no
    GPU, no /dev/shm (small in containers)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    )
