"""Look at a flow run the way a person does: in the Prefect UI, rendered by headless Chromium.

    .venv/bin/python -m tools.screenshots --ui http://127.0.0.1:4200 --flow-run ID [--out DIR]

Saves four PNGs under the run directory's screenshots/ (the summary artifact names the run
directory; --out overrides): the run page's Artifacts tab, the run's deployment page, and the
pages of the run's summary and trend artifacts. It then checks the rendered pages, not the
markdown we sent: the Artifacts tab lists both artifacts, the deployment page lists the run, the
summary page shows the chart (an <img> whose src is a data:image/png URI) and the trend page shows
the trend chart and a table whose first column holds this run's name. Exit 1 names what is
missing; exit 2 says why nothing could be looked at (no Chromium, unknown run, ...).

Why the DevTools protocol, not `chromium --dump-dom`: the UI is a single-page app that fetches
everything after load, and the run page only shows its Artifacts tab once the run has loaded, so
`?tab=Artifacts` in the URL falls back to Logs. A script has to wait for what it needs to see,
and click the tab, as a person would. Needs Debian's `chromium` package (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from prefect.client.base import PrefectHttpxSyncClient
from websockets.sync.client import connect

from tasks.common.polling import TimedOut, wait_until
from tasks.common.processes import end, kill_group

BROWSERS = ("chromium", "chromium-browser")  # Debian's package, and the name elsewhere
NO_API = "Can't connect to Server API"  # the UI's own toast when its API URL is wrong
# An <img> in the DOM is not yet a picture on the screen: mark whether the browser decoded each one.
DECODED = "document.querySelectorAll('img').forEach(i => i.dataset.decoded = i.complete && i.naturalWidth > 0)"
PNG = "img[src^='data:image/png'][data-decoded=true]"
MAX_HEIGHT = 8000  # px: a screenshot of a page longer than this is cut there
RUN_DIRECTORY = re.compile(r"Run directory: `([^`]+)`")


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, BROWSERS)), None)


class Browser:
    """One headless Chromium with a throw-away profile, driven over the DevTools protocol."""

    def __init__(self, executable: str, width: int = 1400, height: int = 1800):
        self.profile = tempfile.TemporaryDirectory(prefix="screenshots-", ignore_cleanup_errors=True)
        self.socket, self.calls, self.width = None, 0, width
        self.saved: list[Path] = []
        # Its own session, so close() can end the renderers and helpers too, by this group's id; HOME
        # in the profile, so crash-report folders do not land in the user's ~/.config.
        self.process = subprocess.Popen(
            [
                executable,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                f"--user-data-dir={self.profile.name}",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(os.environ, HOME=self.profile.name),
        )
        try:
            port_file = Path(self.profile.name) / "DevToolsActivePort"  # "port\n/devtools/browser/<id>"
            if not wait(lambda: port_file.exists() and len(port_file.read_text().split()) == 2, 30):
                raise RuntimeError(f"{executable} did not open its DevTools port within 30 s")
            port = port_file.read_text().split()[0]
            page = next(t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page")
            self.socket = connect(page["webSocketDebuggerUrl"], max_size=None)
        except BaseException:
            self.close()
            raise

    def call(self, method: str, **params: object) -> dict:
        if self.socket is None:
            raise RuntimeError(f"{method}: the browser is closed")
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:  # events arrive in between; skip them
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, ready: str, timeout: float) -> bool:
        """Go to url and wait until the JavaScript expression `ready` is true; False if it never was."""
        self.call("Page.navigate", url=url)
        # The path first, so the page we left cannot answer for this one; !!: a node comes back as {}.
        ready = f"location.pathname === {json.dumps(urlsplit(url).path)} && !!({ready})"
        return wait(lambda: self.evaluate(f"{DECODED}; {ready}"), timeout)

    def save(self, path: Path) -> str:
        """Screenshot of the whole page to path; returns the rendered DOM, each <img> marked data-decoded."""
        # The UI scrolls inside its own container, not the document, so a page-length capture sees one
        # screen: grow the viewport to the content instead (the summary's charts sit below the first one).
        tall = self.evaluate("Math.max(innerHeight, ...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=min(int(tall), MAX_HEIGHT),
            deviceScaleFactor=1,
            mobile=False,
        )
        self.call(
            "Runtime.evaluate",
            awaitPromise=True,  # two frames: laid out and painted at the new size
            expression="new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))",
        )
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        self.saved.append(path)
        self.call("Emulation.clearDeviceMetricsOverride")
        return self.evaluate(f"{DECODED}; document.documentElement.outerHTML")

    def close(self) -> None:
        if self.socket:
            self.socket.close()
        end(self.process, grace=10)
        kill_group(self.process.pid)  # whatever of this browser's own group is left
        self.profile.cleanup()


def wait(condition, timeout: float) -> bool:
    """The project's one polling loop (tasks/common/polling.py), every 0.25 s, as a yes or no: the callers here
    name what was missing themselves."""
    try:
        wait_until(condition, timeout, "the page", first=0.25, factor=1.0)
    except TimedOut:
        return False
    return True


# -- what the rendered DOM holds: images and tables, read with the standard library's parser ------


class Rendered(HTMLParser):
    def __init__(self, dom: str):
        super().__init__()
        self.images: list[dict] = []  # attributes of each <img>
        self.tables: list[list[list[str]]] = []  # rows of cell texts, per <table>
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def png_images(self, alt: str | None = None) -> list[dict]:
        """The data:image/png images the browser could decode (with this alt text, if given)."""
        return [
            i
            for i in self.images
            if i.get("src", "").startswith("data:image/png")
            and i.get("data-decoded") == "true"
            and (alt is None or i.get("alt") == alt)
        ]

    def says(self, words: str) -> bool:
        return words in " ".join(" ".join(self.text).split())


def check_ui(page: Rendered, what: str) -> list[str]:
    return (
        [f'{what}: the UI cannot reach its API ("{NO_API}"; is PREFECT_UI_API_URL right?)'] if page.says(NO_API) else []
    )


def check_run_page(dom: str, keys: list[str]) -> list[str]:
    page = Rendered(dom)
    return check_ui(page, "run page") + [
        f"run page's Artifacts tab: no artifact {key!r}" for key in keys if not page.says(key)
    ]


def check_deployment_page(dom: str, run_name: str) -> list[str]:
    page = Rendered(dom)
    problems = check_ui(page, "deployment page")
    if not page.says(run_name):
        problems.append(f"deployment page: run {run_name!r} is not listed")
    return problems


def check_summary(dom: str) -> list[str]:
    page = Rendered(dom)
    problems = check_ui(page, "summary page")
    if not page.png_images():
        problems.append("summary page: no chart image (a decoded <img> with a data:image/png src)")
    return problems


def check_trend(dom: str, run_name: str) -> list[str]:
    page = Rendered(dom)
    problems = check_ui(page, "trend page")
    if not page.png_images("trend"):
        problems.append('trend page: no trend chart (a decoded <img alt="trend"> with a data:image/png src)')
    if not any(run_name in (row[0] for row in table[1:] if row) for table in page.tables):  # [1:]: not the header
        problems.append(f"trend page: no trend table whose first column lists this run, {run_name!r}")
    return problems


# -- the run, as the API knows it -----------------------------------------------------------------


def run_facts(ui: str, flow_run_id: str) -> dict:
    """The flow run, its deployment and its summary/trend artifacts (old bare keys or `<kind>-<suffix>`)."""
    # Prefect's own client: it retries a 503, which a busy server answers (its database locked).
    with PrefectHttpxSyncClient(base_url=f"{ui.rstrip('/')}/api", timeout=30, raise_on_all_errors=False) as api:
        run = api.get(f"/flow_runs/{flow_run_id}")
        run.raise_for_status()
        found = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        found.raise_for_status()
    artifacts = {}
    for kind in ("summary", "trend"):
        artifacts[kind] = next((a for a in found.json() if a["key"] and re.fullmatch(rf"{kind}(-.+)?", a["key"])), None)
    run_dir = RUN_DIRECTORY.search(artifacts["summary"]["data"]) if artifacts["summary"] else None
    return {"run": run.json(), "artifacts": artifacts, "run_dir": Path(run_dir.group(1)) if run_dir else None}


def take(ui: str, facts: dict, out: Path, browser: Browser, timeout: float = 60) -> list[str]:
    """Open each page, save its screenshot under out, and return what is missing from them."""
    ui, run, artifacts = ui.rstrip("/"), facts["run"], facts["artifacts"]
    problems = [f"the run has no {kind} artifact" for kind, a in artifacts.items() if a is None]
    keys = [a["key"] for a in artifacts.values() if a]
    out.mkdir(parents=True, exist_ok=True)

    # The Artifacts tab appears once the run has loaded; click it as a person would.
    browser.open(f"{ui}/runs/flow-run/{run['id']}", "document.querySelector('li.p-tab#artifacts')", timeout)
    browser.evaluate("document.querySelector('li.p-tab#artifacts')?.click()")
    wait(lambda: browser.evaluate(f"{json.dumps(keys)}.every(k => document.body.innerText.includes(k))"), timeout)
    problems += check_run_page(browser.save(out / "run-artifacts.png"), keys)

    if run.get("deployment_id"):
        browser.open(
            f"{ui}/deployments/deployment/{run['deployment_id']}",
            f"document.body.innerText.includes({json.dumps(run['name'])})",
            timeout,
        )
        problems += check_deployment_page(browser.save(out / "deployment.png"), run["name"])
    else:
        problems.append("the run has no deployment, so there is no deployment page")

    if artifacts["summary"]:
        browser.open(
            f"{ui}/artifacts/artifact/{artifacts['summary']['id']}",
            f"document.querySelector({json.dumps(PNG)})",
            timeout,
        )
        problems += check_summary(browser.save(out / "summary.png"))
    if artifacts["trend"]:
        browser.open(
            f"{ui}/artifacts/artifact/{artifacts['trend']['id']}",
            f"document.querySelector({json.dumps(PNG + '[alt=trend]')}) && document.querySelector('table')",
            timeout,
        )
        problems += check_trend(browser.save(out / "trend.png"), run["name"])
    return problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ui", required=True, help="the Prefect server, e.g. http://127.0.0.1:4200")
    parser.add_argument("--flow-run", required=True, help="flow run id")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: <run directory>/screenshots)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for each page (default: 60)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    executable = find_chromium()
    if executable is None:
        print(
            "no Chromium found (looked for: " + ", ".join(BROWSERS) + "); install it with "
            "`apt-get install -y chromium`",
            file=sys.stderr,
        )
        return 2
    try:
        facts = run_facts(args.ui, args.flow_run)
    except httpx.HTTPError as error:
        print(f"cannot read flow run {args.flow_run} from {args.ui}/api: {error}", file=sys.stderr)
        return 2
    out = args.out or (facts["run_dir"] / "screenshots" if facts["run_dir"] else None)
    if out is None:
        print("the run's summary names no run directory; pass --out", file=sys.stderr)
        return 2
    try:
        browser = Browser(executable)
    except (RuntimeError, OSError) as error:
        print(f"cannot drive {executable}: {error}", file=sys.stderr)
        return 2
    try:
        problems = take(args.ui, facts, out, browser, args.timeout)
    finally:
        browser.close()
    print("screenshots:", *map(str, browser.saved), sep="\n  ")
    for problem in problems:
        print(f"missing: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
