"""App responsiveness in a real browser: start-to-first-page and page-switch times (medians).

    HF_HUB_OFFLINE=1 python bench/bench_app.py [--home STORE] [--starts 3] [--rounds 3]

start: from spawning `streamlit run app.py` to the Home page's heading in an already open headless Chromium.
switch: from clicking a page in the sidebar to its heading shown and the script run finished
(Streamlit's running indicator gone). Targets: start <= 3 s, switch <= 1 s.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from peftcompare.service.procs import stop  # noqa: E402 - the bench runs from a clone, not an install

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
PAGES = ["Train", "Adapters", "Compare", "Curves", "Home"]
TARGET_START, TARGET_SWITCH = 3.0, 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PEFTCOMPARE_HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port",
                             str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_healthy(proc: subprocess.Popen, port: int, poll: float = 0.05) -> None:
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
            return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("streamlit exited during start-up")
            time.sleep(poll)


def wait_idle(page) -> None:
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)


def measure_start(p, home: Path) -> float:
    """Spawn to first page: the browser is open before the clock starts (its own start-up is not the app's)
    and loads the page as soon as the server answers its health check."""
    port = free_port()
    browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
    page = browser.new_page()
    t0 = time.perf_counter()
    proc = spawn(home, port)
    try:
        wait_healthy(proc, port)
        page.goto(f"http://127.0.0.1:{port}")
        page.get_by_role("heading", name="peftcompare", level=1).wait_for(timeout=60_000)
        return time.perf_counter() - t0
    finally:
        browser.close()
        stop(proc)


def measure_switches(p, home: Path, rounds: int) -> dict[str, list[float]]:
    port = free_port()
    proc = spawn(home, port)
    times: dict[str, list[float]] = {name: [] for name in PAGES}
    try:
        wait_healthy(proc, port, poll=0.1)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}")
        page.get_by_role("heading", name="peftcompare", level=1).wait_for(timeout=60_000)
        wait_idle(page)
        first = {}
        for r in range(rounds + 1):
            for name in PAGES:
                t0 = time.perf_counter()
                page.get_by_test_id("stSidebarNav").get_by_text(name, exact=True).click()
                heading = "peftcompare" if name == "Home" else name
                page.get_by_role("heading", name=heading, level=1).wait_for(timeout=60_000)
                wait_idle(page)
                dt = time.perf_counter() - t0
                if r == 0:
                    first[name] = dt  # first visit: caches fill, torch may still be warming up
                else:
                    times[name].append(dt)
        browser.close()
        return {"first": first, **times}
    finally:
        stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", help="an existing store to browse (copied; default: a fresh empty store)")
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print("chromium is not installed at /usr/bin/chromium", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        if args.home:
            shutil.copytree(args.home, home, ignore=shutil.ignore_patterns("*.lock", "worker.log"))
        else:
            home.mkdir()
        with sync_playwright() as p:
            starts = [measure_start(p, home) for _ in range(args.starts)]
            sw = measure_switches(p, home, args.rounds)
    med_start = statistics.median(starts)
    print(f"store: {args.home or 'empty'}   cpu cores: {os.cpu_count()}")
    print(f"start to first page: median {med_start:.2f} s  (runs: {', '.join(f'{s:.2f}' for s in starts)})"
          f"  target <= {TARGET_START:.0f} s  {'OK' if med_start <= TARGET_START else 'SLOW'}")
    worst = 0.0
    for name in PAGES:
        med = statistics.median(sw[name])
        worst = max(worst, med)
        print(f"switch to {name:<9} median {med:.2f} s  (first visit {sw['first'][name]:.2f} s)")
    print(f"slowest median switch {worst:.2f} s  target <= {TARGET_SWITCH:.0f} s  "
          f"{'OK' if worst <= TARGET_SWITCH else 'SLOW'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
