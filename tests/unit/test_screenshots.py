"""The checks tools/screenshots.py makes of the rendered Prefect UI, on DOM the UI really produced
(captured from Prefect 3.8.8's artifact pages, images cut short). No browser needed."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.unit.fake_time import TimeOn
from tools import screenshots

PNG_SRC = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"  # cut short

SUMMARY = f"""<article class="markdown-renderer artifact-data-markdown"><h1 class="p-heading">BERT serving validation:
<div class="markdown-renderer__text markdown-renderer__text--strong">ok</div></h1><div class="markdown-renderer__text
markdown-renderer__text--paragraph">Run directory: <code class="p-code-container">/runs/prophetic-cuckoo</code></div>
<div class="markdown-renderer__text--paragraph"><img src="{PNG_SRC}" alt="throughput and latency"
class="markdown-renderer__image" data-decoded="true"></div><div class="markdown-renderer__text--paragraph"><img
src="{PNG_SRC}" alt="latency histogram" class="markdown-renderer__image" data-decoded="true"></div></article>"""


def trend(first_column=("prophetic-cuckoo", "ruby-lion"), decoded="true"):
    rows = "".join(
        f'<tr class="p-table-row"><!----><td class="p-table-data p-table-column--first">{name}</td>'
        f'<td class="p-table-data">completed</td><td class="p-table-data">10</td></tr><!---->'
        for name in first_column
    )
    return (
        f'<article class="markdown-renderer artifact-data-markdown"><h1 class="p-heading">Trend: '
        f'nightly-cpu-embedded</h1><div class="markdown-renderer__text--paragraph"><img src="{PNG_SRC}" '
        f'alt="trend" class="markdown-renderer__image" data-decoded="{decoded}"></div><div class="p-table '
        f'markdown-renderer__table"><table class="p-table__table"><thead class="p-table-head"><tr '
        f'class="p-table-row"><!----><th class="p-table-header"><div class="markdown-renderer__table-heading">'
        f'run</div></th><th class="p-table-header"><div>status</div></th><th class="p-table-header"><div>'
        f'requests/s</div></th></tr></thead><tbody class="p-table-body">{rows}</tbody></table></div></article>'
    )


def test_a_summary_with_its_chart_passes():
    assert screenshots.check_summary(SUMMARY) == []


@pytest.mark.parametrize(
    "broken",
    [
        SUMMARY.replace('data-decoded="true"', 'data-decoded="false"'),  # in the DOM, but the browser could not draw it
        SUMMARY.replace("data:image/png", "https://example.invalid/chart.png"),  # not the embedded picture
        f"<p>![throughput and latency]({PNG_SRC})</p>",  # markdown shown as text, never rendered
    ],
)
def test_a_summary_without_a_drawn_chart_is_named(broken):
    assert screenshots.check_summary(broken) == [
        "summary page: no chart image (a decoded <img> with a data:image/png src)"
    ]


def test_a_trend_with_its_chart_and_this_run_in_the_first_column_passes():
    assert screenshots.check_trend(trend(), "ruby-lion") == []


def test_a_trend_that_lacks_this_run_is_named():
    assert screenshots.check_trend(trend(first_column=["ruby-lion"]), "prophetic-cuckoo") == [
        "trend page: no trend table whose first column lists this run, 'prophetic-cuckoo'"
    ]


def test_the_run_name_elsewhere_than_the_first_column_or_the_header_is_no_trend_row():
    elsewhere = trend(first_column=["ruby-lion"]).replace("completed", "prophetic-cuckoo")
    header = trend(first_column=[]).replace(">run</div>", ">prophetic-cuckoo</div>")
    for dom in (elsewhere, header):
        assert screenshots.check_trend(dom, "prophetic-cuckoo") == [
            "trend page: no trend table whose first column lists this run, 'prophetic-cuckoo'"
        ]


def test_a_trend_whose_chart_was_not_drawn_is_named():
    assert screenshots.check_trend(trend(decoded="false"), "ruby-lion") == [
        'trend page: no trend chart (a decoded <img alt="trend"> with a data:image/png src)'
    ]


def test_the_run_page_and_deployment_page_list_what_they_should():
    cards = (
        '<div class="artifact-card__title">summary-nightly-cpu-embedded</div>'
        '<div class="artifact-card__title">trend-nightly-cpu-embedded</div>'
    )
    keys = ["summary-nightly-cpu-embedded", "trend-nightly-cpu-embedded"]
    assert screenshots.check_run_page(cards, keys) == []
    assert screenshots.check_run_page(cards, [*keys, "run-config-nightly-cpu-embedded"]) == [
        "run page's Artifacts tab: no artifact 'run-config-nightly-cpu-embedded'"
    ]
    listed = '<span>bert-serving-validation</span><a href="/runs/flow-run/1">prophetic-cuckoo</a>'
    assert screenshots.check_deployment_page(listed, "prophetic-cuckoo") == []
    assert screenshots.check_deployment_page(listed, "ruby-lion") == ["deployment page: run 'ruby-lion' is not listed"]


def test_a_ui_that_cannot_reach_its_api_says_so():
    toast = (
        '<p class="p-toast__message"><article class="markdown-renderer"><div>Can\'t connect to Server API at '
        '<a href="http://127.0.0.1:4200/api">http://127.0.0.1:4200/api</a>. Check that it\'s accessible from '
        "your machine.</div></article></p>"
    )
    problems = screenshots.check_deployment_page(toast, "ruby-lion")
    assert problems[0].startswith("deployment page: the UI cannot reach its API") and len(problems) == 2


def test_the_run_directory_comes_from_the_summary_markdown():
    markdown = "# BERT serving validation: **ok**\n\nRun directory: `/work/runs/20261125-0200-ruby-lion`\n\n..."
    assert screenshots.RUN_DIRECTORY.search(markdown).group(1) == "/work/runs/20261125-0200-ruby-lion"


def test_no_chromium_is_a_clear_message_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(screenshots.shutil, "which", lambda name: None)
    assert screenshots.main(["--ui", "http://127.0.0.1:9", "--flow-run", "x"]) == 2
    said = capsys.readouterr().err
    assert "no Chromium found" in said and "apt-get install -y chromium" in said


class _BusyOnce(BaseHTTPRequestHandler):
    """A Prefect API that answers its first request as a server with a locked SQLite database does (503)."""

    answered: list[str] = []

    def _send(self, code: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.answered.append(self.path)
        if len(self.answered) == 1:
            return self._send(503, {"exception_message": "Service Unavailable"})
        self._send(200, {"id": "run-1", "name": "ruby-lion"})

    def do_POST(self):
        self.answered.append(self.path)
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send(200, [{"key": "summary-nightly-cpu", "data": "Run directory: `/runs/ruby-lion`\n"}])

    def log_message(self, *args):
        pass


def test_a_busy_prefect_api_is_asked_again_not_reported_as_an_error(fake_clock, monkeypatch):
    """Prefect's server answers 503 while its SQLite database is locked and its clients retry; so does this tool.
    The client's back-off before it asks again (about 2 s) passes on a fake clock."""
    import prefect.client.base

    monkeypatch.setattr(prefect.client.base, "time", TimeOn(fake_clock))
    _BusyOnce.answered = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BusyOnce)
    # The three requests expected, each answered as it comes (serve_forever would poll for its shutdown).
    serving = threading.Thread(target=lambda: [server.handle_request() for _ in range(3)], daemon=True)
    serving.start()
    try:
        facts = screenshots.run_facts(f"http://127.0.0.1:{server.server_port}", "run-1")
    finally:
        serving.join(10)
        server.server_close()
    assert _BusyOnce.answered == ["/api/flow_runs/run-1", "/api/flow_runs/run-1", "/api/artifacts/filter"]
    assert len(fake_clock.sleeps) == 1  # backed off once, as Prefect's client does
    assert facts["run"]["name"] == "ruby-lion" and facts["run_dir"] == Path("/runs/ruby-lion")
    assert facts["artifacts"]["summary"]["key"] == "summary-nightly-cpu" and facts["artifacts"]["trend"] is None
