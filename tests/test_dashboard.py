"""The live dashboard in a real browser (Debian's headless chromium, driven by selenium and
chromium-driver): ``freelance-status --discover --serve`` watches two producers and a worker;
the page shows the numbers ``Producer.status()`` gives, a failing job's traceback and a
running job's progress; a job is cancelled and a failure retried from the page (the token);
a job no connected worker can run is listed with what it needs and why;
a producer SIGKILLed mid-test turns "down" while the page keeps updating; and the time from
each poll's answer to the screen is measured. The screenshot goes to the test's directory
(and to $FREELANCE_RZ_DASHBOARD_PNG when set: docs/dashboard.png was made so)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import GROUP, TESTS_DIR

pytest.importorskip("aiohttp")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="needs Debian's chromium and chromium-driver "
                       "(apt-get install -y --no-install-recommends chromium chromium-driver)"),
]
TOKEN = "dashboard-test-token-0123456789"
# chromium reaches for Google's hosts unless told not to; these machines have no network
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1400"]
STATUS_CLI = [sys.executable, "-c", "import sys; from freelance_rz.cli import status_main; sys.exit(status_main())"]
IDLE_PRODUCER = """
import sys, time
from freelance_rz import Producer
with Producer(sys.argv[1], interfaces=["127.0.0.1"]) as producer:
    print(producer.endpoint, flush=True)
    time.sleep(600)
"""


def wait_for(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # the page may be between two renders
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout} s (last: {last!r})")


class Page:
    """The dashboard page in chromium, read by data attributes. The page rebuilds its tables
    at each poll, so each look is one script (atomic in the page's single thread)."""

    def __init__(self, driver) -> None:
        self.driver = driver

    def state(self) -> dict:
        return self.driver.execute_script("return window.frzState")

    def polls(self) -> int:
        state = self.state()
        return 0 if state is None else state["polls"]

    def cell(self, selector: str) -> str:
        """The text of the first element matching ``selector`` (hidden text too)."""
        text = self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null", selector)
        if text is None:
            raise LookupError(f"nothing matches {selector}")
        return text

    def click(self, selector: str) -> None:
        assert self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e", selector), selector

    def producer(self, producer_id: str, field: str) -> str:
        return self.cell(f'td[data-producer="{producer_id}"][data-field="{field}"]')

    def task(self, producer_id: str, task: str, field: str) -> str:
        return self.cell(f'td[data-producer="{producer_id}"][data-task="{task}"][data-field="{field}"]')

    def next_render(self) -> None:
        """Wait until the page has rendered two more polls (so it shows what was true before)."""
        start = self.polls()
        wait_for(lambda: self.polls() >= start + 2, 20, "two more polls on the page")


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=DRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield Page(driver)
    finally:
        driver.quit()


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []

    def start(args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(args, cwd=TESTS_DIR, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def test_dashboard_in_a_browser(make_producer, start_worker, processes, browser, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    producer = make_producer(admin_token=TOKEN)
    other = processes([sys.executable, "-c", IDLE_PRODUCER, GROUP])
    other_endpoint = other.stdout.readline().strip()
    assert other_endpoint.startswith("tcp://")
    dashboard = processes([*STATUS_CLI, "--discover", "--group", GROUP,
                           "--interface", "127.0.0.1", "--wait", "0.5", "--interval", "0.5",
                           "--serve", "127.0.0.1:0", "--token-file", str(token_file)])
    start_worker("dash-w", "--slots", "3")

    adds = [producer.submit("rztasks:add", i, 1) for i in range(20)]
    fails = [producer.submit("rztasks:fail", f"bad input {i}") for i in range(2)]
    assert [f.result(timeout=60) for f in adds] == list(range(1, 21))
    for future in fails:
        assert future.exception(timeout=60) is not None
    long_job = producer.submit("rztasks:steps", 600, 0.1)  # a minute, reporting progress
    wait_for(lambda: producer.progress(long_job), 30, "progress of the long job")

    url = dashboard_url(dashboard)
    browser.driver.get(url + "#token=" + TOKEN)
    pid = producer.producer_id
    wait_for(lambda: browser.producer(pid, "state") == "up", 30, "producer up on the page")

    # the numbers the page shows are the producer's own (nothing changes meanwhile but progress)
    status = producer.status(detail=True)
    browser.next_render()
    for field in ("pending", "leased", "done", "failed", "dead", "cancelled"):
        assert browser.producer(pid, field) == str(status[field]), field
    for entry in status["tasks"]:
        for field in ("pending", "leased", "done", "failed", "retried"):
            assert browser.task(pid, entry["task"], field) == str(entry[field]), (entry["task"], field)
    assert status["done"] == 20 and status["failed"] == 2 and status["leased"] == 1
    assert browser.cell('td[data-worker^="dash-w-"][data-field="busy"]') == "1"

    # some load while the page looks, for its charts
    load = [producer.submit("rztasks:whoami", 0.01 * (i % 7)) for i in range(400)]
    for future in load:
        future.result(timeout=60)
    browser.next_render()
    assert browser.producer(pid, "done") == str(producer.status()["done"]) == "420"

    # a failing job's traceback, a running job's progress
    failure = f'tr[data-failure="{pid}/{fails[0].job_id}"]'
    traceback = browser.cell(f"{failure} pre.traceback")
    assert "Traceback (most recent call last)" in traceback and "ValueError: bad input 0" in traceback
    assert "rztasks.py" in traceback
    running = f'tr[data-job="{pid}/{long_job.job_id}"]'
    assert "/ 600" in browser.cell(running)
    browser.cell(f"{running} .bar > div")  # a progress bar

    save_screenshot(browser, tmp_path)

    # admin: cancel the long job and retry a failure, from the page
    browser.click(f'{running} button[data-action="cancel"]')
    wait_for(long_job.cancelled, 30, "the long job cancelled")
    browser.click(f'{failure} button[data-action="retry"]')
    wait_for(lambda: producer.status(detail=True)["failed"] == 3, 30, "the retried failure failing again")
    fail_task = next(t for t in producer.status(detail=True)["tasks"] if t["task"] == "rztasks:fail")
    assert fail_task["submitted"] == 3

    # a job no connected worker can run (a label nobody carries) is shown, with why
    stuck = producer.options(labels={"zone": "nowhere"}).submit("rztasks:add", 1, 2)
    waiting = f'tr[data-waiting="{pid}/rztasks:add"]'
    wait_for(lambda: browser.cell(f'{waiting} td[data-field="jobs"]') == "1", 30, "the waiting job on the page")
    assert browser.cell(f'{waiting} td[data-field="needs"]') == "zone=nowhere"
    assert "carries label zone=nowhere" in browser.cell(f'{waiting} td[data-field="why"]')
    assert not stuck.done()

    # a producer killed mid-test turns "down"; the page keeps updating
    other_id = wait_for(lambda: next((p["id"] for p in browser.state()["producers"]
                                      if p["endpoint"] == other_endpoint and p["up"]), None),
                        30, "the second producer up")
    os.killpg(other.pid, signal.SIGKILL)
    wait_for(lambda: browser.producer(other_id, "state").startswith("down"), 30, "the killed producer down")
    browser.next_render()
    assert browser.producer(pid, "state") == "up"
    assert browser.producer(pid, "cancelled") == str(producer.status()["cancelled"]) == "1"
    assert browser.producer(pid, "failed") == "3"

    latencies = wait_for(lambda: [e["fromAnswer"] for e in browser.driver.execute_script(
        "return window.frzLatencies")][-20:] if browser.driver.execute_script(
        "return window.frzLatencies.length") >= 20 else None, 60, "20 renders")
    report_latency(latencies, tmp_path)


def dashboard_url(dashboard: subprocess.Popen) -> str:
    line = dashboard.stdout.readline()
    assert "dashboard at http://127.0.0.1:" in line, line + dashboard.stdout.read()
    url = line.split("dashboard at ", 1)[1].split()[0]
    with urllib.request.urlopen(url + "api/state", timeout=10) as response:
        assert json.load(response)["admin"] is True
    return url


def save_screenshot(browser: Page, tmp_path) -> None:
    browser.driver.execute_script("document.querySelectorAll('details').forEach((d, i) => { d.open = i === 0; })")
    path = tmp_path / "dashboard.png"
    browser.driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("FREELANCE_RZ_DASHBOARD_PNG"):
        shutil.copy(path, os.environ["FREELANCE_RZ_DASHBOARD_PNG"])
    print(f"screenshot: {path}")


def report_latency(latencies: list[float], tmp_path) -> None:
    """Print the refresh-to-screen latency (ms from a poll's answer at the dashboard to the
    page painted with it); a figure for the docs, not a test bound."""
    ordered = sorted(latencies)
    figures = {"renders": len(ordered), "p50_ms": statistics.median(ordered),
               "p95_ms": ordered[int(0.95 * (len(ordered) - 1))], "max_ms": ordered[-1]}
    (tmp_path / "latency.json").write_text(json.dumps(figures))
    print("refresh-to-screen latency:", json.dumps(figures))


def test_dashboard_action_refuses_a_job_id_the_wire_cannot_carry(make_producer, processes, tmp_path):
    """A job_id outside 1..2**63-1 is a 400 saying so (a huge one was a 500, OverflowError in
    send_admin; one from 2**63 reached the producer); a job id the wire takes reaches it."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    producer = make_producer(admin_token=TOKEN, announce=False)
    dashboard = processes([*STATUS_CLI, "--connect", producer.endpoint, "--interval", "0.5",
                           "--serve", "127.0.0.1:0", "--token-file", str(token_file)])
    url = dashboard_url(dashboard)
    wait_for(lambda: json.load(urllib.request.urlopen(url + "api/state", timeout=10))["producers"][0]["up"],
             30, "the producer up")

    def act(job_id: object) -> tuple[int, dict]:
        body = json.dumps({"endpoint": producer.endpoint, "action": "cancel", "job_id": job_id}).encode()
        request = urllib.request.Request(url + "api/action", method="POST", data=body,
                                         headers={"Authorization": "Bearer " + TOKEN})
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    for job_id in (99999999999999999999999, 2**64 - 1, 2**63, 0, -1, True, "7"):
        code, answer = act(job_id)
        assert code == 400, (job_id, code, answer)
        assert "job_id must be an integer from 1 to 9223372036854775807" in answer["error"], answer
    code, answer = act(2**63 - 1)  # the wire takes it: the producer answers (no such job)
    assert code == 409 and answer["error"], answer
    assert producer.status()["bad_messages"] == 0


def test_dashboard_refuses_foreign_hosts_and_actions_without_token(processes, tmp_path):
    """Read-only without a token, answers loopback Host names only, lists a producer that
    never answers as down, logs JSON lines, and stops cleanly on SIGTERM."""
    dashboard = processes([*STATUS_CLI, "--connect", "tcp://127.0.0.1:9",
                           "--serve", "127.0.0.1:0", "--interval", "0.5", "--log-format", "json"])
    line = dashboard.stdout.readline()
    url = line.split("dashboard at ", 1)[1].split()[0]
    assert "read-only" in line
    request = urllib.request.Request(url, headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 421
    action = urllib.request.Request(url + "api/action", method="POST", data=b"{}",
                                    headers={"Authorization": "Bearer " + TOKEN})
    with pytest.raises(urllib.error.HTTPError) as forbidden:
        urllib.request.urlopen(action, timeout=10)
    assert forbidden.value.code == 403
    state = wait_for(lambda: json.load(urllib.request.urlopen(url + "api/state", timeout=10))["producers"],
                     20, "the unreachable producer listed")
    assert state[0]["up"] is False and state[0]["error"]
    dashboard.send_signal(signal.SIGTERM)  # a clean stop, and its log as JSON lines
    assert dashboard.wait(20) == 0
    lines = [json.loads(line) for line in dashboard.stdout.read().splitlines() if line.startswith("{")]
    [down] = [line for line in lines if line["message"].startswith("producer ")]
    assert down["level"] == "WARNING" and down["component"] == "dashboard"
    assert down["endpoint"] == "tcp://127.0.0.1:9" and "down" in down["message"]
