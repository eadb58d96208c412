"""The README's screenshot of the live page (`cli.py serve`): serves a run, types an equation in
headless Chromium (the system's, driven by playwright), shows the cross-attention with one query
hovered and one map opened, and saves the page as a PNG.

Usage (in the README: run from a directory holding runs/ and data/):
    python docs/serve_screenshot.py RUN_DIR [--equation 7x^2+3556x+451612=0] [--out docs/serve.png]
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--equation", default="7x^2+3556x+451612=0", show_default=True)
@click.option("--out", default=str(ROOT / "docs" / "serve.png"), show_default=True, type=click.Path(dir_okay=False))
def main(run_dir, equation, out):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from analyze.serve import load_runs, start_in_thread

    url, stop = start_in_thread(load_runs([Path(run_dir)]))
    tmp = Path(out).with_name(f".{Path(out).name}.partial-{os.getpid()}.png")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url)
            page.fill("#field-equation", equation)
            page.click("#go")
            page.wait_for_selector("body[data-drawn=yes]", timeout=120_000)
            page.select_option("#kind", "cross")
            page.click("#modelview canvas[data-layer='1'][data-head='1']")
            page.hover("#headview", position={"x": 120, "y": 24 + 16 * 12 + 8})  # a query of the solution
            page.wait_for_timeout(1000)
            page.screenshot(path=str(tmp), full_page=True, clip={"x": 0, "y": 0, "width": 1100, "height": 1760})
            browser.close()
        # 256 colours (octree keeps the few pixels of each head's colour): a sixth of the bytes
        Image.open(tmp).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(tmp, optimize=True)
        tmp.replace(out)
    finally:
        stop()
        tmp.unlink(missing_ok=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
