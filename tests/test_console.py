"""The web console (app/console) in a real browser against a live stack: headless Debian chromium driven
by selenium signs in, uploads files (one with problems, one to train on), edits the column mapping,
estimates and creates a job, watches its curves grow across a pause and a network drop, and asks the
fine-tuned model in the playground. Any severe browser console entry (a JS error, a CSP violation, a
failed request) fails the test. It also writes the screenshots of docs/console.md.

The browser comes from tests/install_browser.sh (called by `make test`)."""

from __future__ import annotations

import csv
import io
import json
import socket
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import EXAMPLES
from tests.support.live import unavailable

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "images"
WIDTH, HEIGHT = 1280, 800


class DroppableProxy:
    """A TCP relay between the browser and the API whose open connections the test can cut at once: a
    real network drop, seen by the browser as connections reset mid-stream."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.open |= {client, upstream}
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            self._close(source, target)

    def _close(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with self.lock:
                self.open.discard(sock)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def drop(self) -> None:
        with self.lock:
            cut = list(self.open)
        self._close(*cut)

    def close(self) -> None:
        self.listener.close()
        self.drop()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        unavailable("chromium and chromedriver are not installed: run `bash tests/install_browser.sh` as root")
    try:
        from selenium import webdriver
    except ImportError:
        unavailable("selenium is not installed: pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    # The window's size includes the (invisible) browser frame: fix the page's own, for the screenshots.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()


# --- helpers ----------------------------------------------------------------------------------------------

def _wait(driver, condition, timeout: float = 30, what: str = ""):
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # The job page re-renders as it polls: an element found a moment ago may be gone; look again.
        return WebDriverWait(driver, timeout, poll_frequency=0.2,
                             ignored_exceptions=[StaleElementReferenceException]).until(condition)
    except TimeoutException:
        page = driver.find_element("tag name", "body").text
        raise AssertionError(f"{what} within {timeout}s; the page shows:\n{page[:2000]}") from None


def _find(driver, css: str, timeout: float = 30):
    return _wait(driver, lambda d: (d.find_elements("css selector", css) or [None])[0], timeout, f"no {css}")


def _text(driver, css: str) -> str:
    elements = driver.find_elements("css selector", css)
    return elements[0].text if elements else ""


def _click(driver, css: str, timeout: float = 30) -> None:
    def clicked(d) -> bool:
        element = next((e for e in d.find_elements("css selector", css) if e.is_displayed() and e.is_enabled()), None)
        if element is None:
            return False
        element.click()  # a re-render between finding and clicking raises, and the wait looks again
        return True

    _wait(driver, clicked, timeout, f"no enabled {css}")


def _select(driver, css: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(_find(driver, css)).select_by_value(value)


def _points(driver, chart: str) -> int:
    return int(_find(driver, f"#{chart}").get_attribute("data-points") or 0)


def _reconnects(driver) -> int:
    return int(_find(driver, "#stream-state").get_attribute("data-reconnects") or 0)


def _severe(driver) -> list[str]:
    """The browser console's severe entries since the last call (reading the log empties it)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _upload(driver, path: Path) -> str:
    """Uploads through the Files page; answers the new file's id, once its detail page shows."""
    driver.get(driver.current_url.split("#")[0] + "#/files")
    _find(driver, "#upload-input").send_keys(str(path))
    before = driver.current_url
    _click(driver, "#upload-button")
    _wait(driver, lambda d: d.current_url != before and "#/files/file-" in d.current_url, 30, "upload did not finish")
    _find(driver, "#validation-table")
    return driver.current_url.rsplit("/", 1)[1]


# --- tests ------------------------------------------------------------------------------------------------

def test_the_page_is_public_and_locked_down(embedded_stack):
    page = httpx.get(f"{embedded_stack.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    script = httpx.get(f"{embedded_stack.url}/console/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"] == policy
    assert httpx.get(f"{embedded_stack.url}/console/../app/main.py").status_code == 404
    # The page holds no data; the API behind it still wants a key.
    assert httpx.get(f"{embedded_stack.url}/v1/files").status_code == 401
    assert "/" not in httpx.get(f"{embedded_stack.url}/openapi.json").json()["paths"]


def test_sign_in_train_watch_and_predict(embedded_stack, browser, tmp_path):
    stack, driver = embedded_stack, browser
    proxy = DroppableProxy(stack.port)  # the browser reaches the API through it, so the test can cut the network
    try:
        _walk_through(stack, driver, proxy, tmp_path)
    finally:
        proxy.close()


def _walk_through(stack, driver, proxy: DroppableProxy, tmp_path: Path) -> None:
    # Sign in: a wrong key is refused; the right one is kept in sessionStorage only, never in a cookie or URL.
    driver.get(f"{proxy.url}/")
    _find(driver, "#api-key").send_keys("sk-ft-not-a-real-key")
    _click(driver, "#sign-in button[type=submit]")
    _wait(driver, lambda d: "refused" in _text(d, "#sign-in-error"), 10, "a wrong key was not refused")
    assert all("401" in message for message in _severe(driver))  # the refusal itself, nothing else
    key_input = _find(driver, "#api-key")
    key_input.clear()
    key_input.send_keys(stack.key)
    _click(driver, "#sign-in button[type=submit]")
    _find(driver, "#jobs-table, #job-list p")
    assert driver.execute_script("return sessionStorage.getItem('finetune-console.api-key')") == stack.key
    assert driver.get_cookies() == [] and stack.key not in driver.current_url

    # A file with a problem: the validation table names its line and column.
    broken = tmp_path / "broken.csv"
    broken.write_text("text,label\nA fine film.,positive\nNo label here.,\nA dull film.,negative\n")
    _upload(driver, broken)
    rows = [r.text for r in driver.find_elements("css selector", "#validation-table tbody tr")]
    assert any(" 3 " in f" {row} " and "label" in row for row in rows), rows

    # The training file has an extra column, `review`, which the user maps to the text role by hand.
    reader = list(csv.DictReader(io.StringIO((EXAMPLES / "sentiment.csv").read_text())))
    training = tmp_path / "reviews.csv"
    with training.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["text", "label", "review"])
        writer.writeheader()
        writer.writerows({"text": "n/a", "label": r["label"], "review": r["text"]} for r in reader)
    file_id = _upload(driver, training)
    assert _text(driver, "#detected-task") == "text-classification"
    assert "No problems found" in _text(driver, "#validation-table")
    assert len(driver.find_elements("css selector", "#preview-table tbody tr")) == 20
    assert "The soundtrack was superb." in _text(driver, "#preview-table")

    # New job: the detected mapping is shown and edited; the estimate comes before "Create".
    _click(driver, "#train-on-file")
    _select(driver, "#job-model", "tiny/bert")
    assert _find(driver, "#mapping-text").get_attribute("value") == "text"
    _select(driver, "#mapping-text", "review")
    for name, value in (("n_epochs", "10"), ("batch_size", "16"), ("learning_rate", "0.002")):
        _find(driver, f"#hp-{name}").send_keys(value)
    assert not _find(driver, "#create-job").is_enabled()
    _click(driver, "#estimate-job")
    _find(driver, "#estimate-table tbody tr")
    assert "text-classification" in _text(driver, "#estimate")
    _click(driver, "#create-job")
    _wait(driver, lambda d: "#/jobs/ftjob-" in d.current_url, 20, "the job was not created")
    job_id = driver.current_url.rsplit("/", 1)[1]
    with stack.client() as api:
        job = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["column_mapping"]["text"] == "review" and job["training_file"] == file_id
    assert job["hyperparameters"]["n_epochs"] == 10

    # The curve grows: a pause (which saves a checkpoint) freezes it, a resume makes it grow again. While
    # the job is paused, the network drops: the stream reconnects with Last-Event-ID and misses nothing.
    _wait(driver, lambda d: _points(d, "loss-chart") >= 2, 120, "no training loss plotted")
    assert driver.find_elements("css selector", "#loss-chart canvas")
    _click(driver, "#job-pause")
    _wait(driver, lambda d: "paused" in _text(d, "#job-status"), 60, "the job did not pause")
    paused_at = _points(driver, "loss-chart")
    _find(driver, "#checkpoint-table tbody tr")
    _wait(driver, lambda d: _text(d, "#stream-state") == "live", 10, "the stream is not live")
    assert _severe(driver) == []
    proxy.drop()
    _wait(driver, lambda d: _reconnects(d) >= 1 and _text(d, "#stream-state") == "live", 30,
          "the stream did not reconnect after the drop")
    # The cut requests themselves are logged by the browser; nothing else may be.
    dropped = [m for m in _severe(driver) if "net::ERR_" not in m]
    assert not dropped, dropped
    _click(driver, "#job-resume")
    _wait(driver, lambda d: _points(d, "loss-chart") > paused_at, 120, "the curve did not grow after resume")

    _wait(driver, lambda d: "succeeded" in _text(d, "#job-status"), 180, "the job did not succeed")
    _wait(driver, lambda d: _text(d, "#stream-state") == "ended", 20, "the stream did not end")
    assert _points(driver, "eval-chart") >= 1
    shown = [int(row.get_attribute("data-seq")) for row in driver.find_elements("css selector", "#events tr")]
    assert sorted(shown) == [e["seq"] for e in stack.events(job_id)], "events missed or repeated"
    assert "100%" in _text(driver, "#progress-percent")
    driver.save_screenshot(str(SCREENSHOTS / "console-job.png"))

    # The jobs list shows it; the playground answers with the fine-tuned model.
    driver.get(f"{proxy.url}/#/jobs")
    _wait(driver, lambda d: job_id in _text(d, "#jobs-table") and "succeeded" in _text(d, "#jobs-table"), 15,
          "the job is not listed as succeeded")
    driver.get(f"{proxy.url}/#/jobs/{job_id}")
    _click(driver, "#open-playground")
    _find(driver, "#pg-text").send_keys("The soundtrack was superb.")
    _click(driver, "#pg-predict")
    scores = _find(driver, "#pg-scores")
    assert {row.find_element("css selector", "td").text for row in scores.find_elements("css selector", "tbody tr")} \
        == {"positive", "negative"}
    driver.save_screenshot(str(SCREENSHOTS / "console-playground.png"))

    assert _severe(driver) == []
    assert json.loads(driver.execute_script("return JSON.stringify(document.cookie)")) == ""
