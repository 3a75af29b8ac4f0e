"""Full-page PNG screenshots of every page of the documentation site, for review as a reader sees it.

    python scripts/screenshots.py [--out screenshots] [--width 1400] [--site DIR]

Builds the site (``mkdocs build --strict``) unless ``--site`` names a built one, then opens every page with
headless Chromium (Debian: ``apt-get install chromium``) from the files themselves (no server, no network: what
an offline reader sees) and writes ``OUT/<page>.png``, trimmed of the blank space below the page. Optional and
not part of the tests; needs the ``docs`` extra, Chromium and Pillow (a dependency of matplotlib).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("screenshots: no Chromium found: apt-get install chromium")


def _trim(png: Path) -> None:
    """Cut the blank rows below the page's last content."""
    from PIL import Image, ImageChops

    with Image.open(png) as im:
        im = im.convert("RGB")
        box = ImageChops.difference(im, Image.new("RGB", im.size, im.getpixel((im.width - 1, im.height - 1))))
        bbox = box.getbbox()
        if bbox:
            im.crop((0, 0, im.width, min(im.height, bbox[3] + 40))).save(png)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="screenshots", help="folder for the PNGs")
    ap.add_argument("--width", type=int, default=1400, help="window width in pixels")
    ap.add_argument("--height", type=int, default=12000, help="window height before trimming")
    ap.add_argument("--site", help="an already built site folder (default: build one)")
    args = ap.parse_args(argv)
    chromium, out = _chromium(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(args.site) if args.site else Path(tmp) / "site"
        if not args.site:
            env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
            subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                           env=env, check=True)
        pages = sorted(p for p in site.rglob("index.html") if "assets" not in p.parts and "search" not in p.parts)
        for page in pages:
            name = "-".join(page.relative_to(site).parent.parts) or "home"
            png = out / f"{name}.png"
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--window-size={args.width},{args.height}", f"--screenshot={png.resolve()}",
                            page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
            _trim(png)
            print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
