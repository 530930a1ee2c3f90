"""The picture of the HTML report in the docs (docs/images/report.png), made for real: the
README's small model trained on the demo data, evaluated on fresh scans, its report opened in
headless Chromium.

    python benchmarks/make_report_screenshot.py [--out docs/images/report.png]
        [--work DIR] [--epochs 15] [--keep]

1. `covidzoo train regnet3d --depths 2,6,12,4` on the built-in demo data (the README's main
   command: about 3 minutes on an idle 2-core CPU), with a private COVIDZOO_CACHE. (Smaller models
   or fewer epochs do not learn the demo's signal: a report of a model at chance is no
   picture of one.)
2. `covidzoo data synth` 64 fresh scans (seed 1) to evaluate on, all of them (`split="all"`).
3. `covidzoo.evaluation.evaluate` with 1000 bootstrap resamples, and its `save_report` (what
   `covidzoo evaluate --report` writes: `covidzoo.report.evaluation_report` with the ROC and
   reliability plots and the thumbnails), written to `WORK/report.html`.
4. `chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars
   --screenshot=OUT --window-size=1280,1800 file://WORK/report.html`.

The work folder is a temporary one, removed at the end unless `--keep` (or `--work`) is given.
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
WINDOW = (1280, 1800)
MAIN_COMMAND = ("train", "regnet3d", "--depths", "2,6,12,4")


def run(*args: str, quiet: bool = False) -> None:
    """Run a command, echoed; `quiet` shows its output only when it fails (Chromium's stderr
    is noisy on a machine without D-Bus)."""
    print("$", " ".join(args), flush=True)
    done = subprocess.run(args, capture_output=quiet, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {done.stderr if quiet else ''}")


def build_report(work: Path, epochs: int) -> Path:
    """Train, evaluate and write `work/report.html`; its path."""
    os.environ["COVIDZOO_CACHE"] = str(work / "cache")
    covidzoo = (sys.executable, "-m", "covidzoo")
    fresh, out = work / "fresh", work / "run"
    if not (out / "best.safetensors").exists():
        run(*covidzoo, *MAIN_COMMAND, "--epochs", str(epochs), "--device", "cpu", "--out",
            str(out))
    if not fresh.exists():
        run(*covidzoo, "data", "synth", str(fresh), "--n", "64", "--seed", "1")

    from covidzoo.evaluation import evaluate

    report = evaluate(out / "best.safetensors", data=fresh, split="all", bootstrap=1000,
                      device="cpu")
    return report.save_report(work / "report.html")


def screenshot(page: Path, out: Path, profile: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    run(chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={profile}", f"--screenshot={out}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", page.as_uri(), quiet=True)
    from PIL import Image

    with Image.open(out) as image:
        if image.size != WINDOW:
            raise SystemExit(f"{out}: {image.size}, expected {WINDOW}")
        image.load()
    image.save(out, format="PNG", optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "report.png")
    parser.add_argument("--work", type=Path, help="Work folder (kept); default: a temporary one.")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary work folder.")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="covidzoo-report-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        page = build_report(work, args.epochs)
        screenshot(page, args.out.resolve(), work / "chromium-profile")
        print(f"report: {page}")
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
