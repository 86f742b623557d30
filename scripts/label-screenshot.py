"""Screenshot of the label page for docs/: serve RUN (a human run waiting for labels), give one label as
"ana", capture the next pair
(or, with a third argument, the pair with that id). Needs Debian's chromium and playwright (the dev extra).

    .venv/bin/python scripts/label-screenshot.py RUN docs/label-page.png [PAIR_ID]
"""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from bpo.human.labels import LabelQueue

run, out = Path(sys.argv[1]), Path(sys.argv[2])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen([sys.executable, "-m", "bpo.cli", "label", str(run), "--port", str(port)])
try:
    time.sleep(4)
    url = f"http://127.0.0.1:{port}/?token={LabelQueue(run).token()}&labeller=ana"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        page.keyboard.press("1")
        page.wait_for_selector("body[data-ready='1']")
        while len(sys.argv) > 3 and page.get_attribute("body", "data-pair") not in (sys.argv[3], ""):
            page.keyboard.press("s")  # skip on to the pair asked for (a skip is not a label)
            page.wait_for_selector("body[data-ready='1']")
        page.screenshot(path=str(out))
        browser.close()
finally:
    server.terminate()
    server.wait()
print(f"wrote {out}")
