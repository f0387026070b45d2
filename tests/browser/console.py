#!/usr/bin/env python3
"""The console in a real browser: Debian's chromium over WebDriver.

Starts `target/debug/sluice run` with two file pipelines and an admin token,
loads /ui, gives the token, and checks what an operator sees: both pipelines
with their versions, rates that move while events flow, pause and resume,
uploading a version (the sha256 shown before confirming is the file's) and
rolling back, a shadowed candidate's differences side by side (and
aborting it), live events in the tap, and a pipeline's dead letters: filtered,
headers expanded, two replayed after a dry-run preview. Screenshots go to
target/console-*.png. Run through `scripts/browser.sh test`.

Every wait is on a condition with a deadline, never a bare sleep.
"""
import hashlib
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

ROOT = pathlib.Path(__file__).resolve().parents[2]
SLUICE = pathlib.Path(os.environ.get("SLUICE_BIN", ROOT / "target/debug/sluice"))
PLUGINS = ROOT / "plugins/target/wasm32-wasip2/release"
SHOTS = ROOT / "target"
WITHIN = 60
TOKEN = "console-write-token"


def toml(path):
    return json.dumps(str(path))


def config(cache, nats_url):
    return f"""[runtime]
cache_dir = {toml(cache)}

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"
read_token = "console-read-token"

[pipelines.archive]
source = {{ kind = "file", path = "archive.jsonl", follow = true }}
sink = {{ kind = "file", path = "archive-out.jsonl" }}
dead_letter = {{ kind = "file", path = "archive-dlq.jsonl" }}
plugin = {{ path = {toml(PLUGINS / "passthrough.wasm")} }}
restart = {{ initial_backoff = "1s", max_backoff = "2s", max_restarts = 4 }}

[pipelines.audit]
source = {{ kind = "file", path = "audit.jsonl", follow = true }}
sink = {{ kind = "file", path = "audit-out.jsonl" }}
dead_letter = {{ kind = "file", path = "audit-dlq.jsonl" }}
plugin = {{ path = {toml(PLUGINS / "chaos.wasm")} }}
policy = {{ max_attempts = 1 }}

[pipelines.payments]
source = {{ kind = "jetstream", url = "{nats_url}", stream = "PAYMENTS", consumer = "sluice", subjects = ["in.payments"] }}
sink = {{ kind = "file", path = "payments-out.jsonl" }}
dead_letter = {{ kind = "file", path = "payments-dlq.jsonl" }}
plugin = {{ path = {toml(PLUGINS / "passthrough.wasm")} }}

[pipelines.orders]
source = {{ kind = "file", path = "orders.jsonl", follow = true }}
sink = {{ kind = "file", path = "orders-out.jsonl" }}
dead_letter = {{ kind = "file", path = "orders-dlq.jsonl" }}
plugin = {{ path = {toml(PLUGINS / "tag_v1.wasm")} }}
"""


def wait(what, condition, within=WITHIN):
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class Feeder(threading.Thread):
    """Appends events to a pipeline's input file while it runs."""

    def __init__(self, path, payload, headers=None):
        super().__init__(daemon=True)
        self.path, self.payload, self.headers, self.stop = path, payload, headers or {}, threading.Event()
        self.sent = 0

    def run(self):
        while not self.stop.is_set():
            with open(self.path, "a") as f:
                for _ in range(20):
                    f.write(json.dumps({"payload": self.payload(self.sent), "headers": self.headers}) + "\n")
                    self.sent += 1
            self.stop.wait(0.25)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Publisher(threading.Thread):
    """Publishes events to a NATS subject (core NATS protocol over a socket;
    the stream captures them) while it runs."""

    def __init__(self, port, subject):
        super().__init__(daemon=True)
        self.port, self.subject, self.stop = port, subject, threading.Event()
        self.sent = 0

    def run(self):
        with socket.create_connection(("127.0.0.1", self.port)) as conn:
            conn.recv(4096)  # INFO
            conn.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
            while not self.stop.is_set():
                batch = b"".join(
                    f"PUB {self.subject} {len(p)}\r\n".encode() + p + b"\r\n"
                    for p in (f"payment {self.sent + i}".encode() for i in range(10)))
                conn.sendall(batch)
                self.sent += 10
                self.stop.wait(0.25)


def lines(path):
    return path.read_text().count("\n") if path.exists() else 0


def card(driver, name):
    return driver.find_element(By.CSS_SELECTOR, f"article[aria-labelledby='p-{name}']")


# Read in one script call: the page redraws every 2 s, so elements found in
# one call may be gone by the next.
def rate(driver, name, label):
    return driver.execute_script("""
        const [name, label] = arguments;
        for (const cell of document.querySelectorAll(`article[aria-labelledby='p-${name}'] .rate`))
            if (cell.querySelector('.label').textContent === label) return cell.querySelector('.value').textContent;
        return null;""", name, label)


def fact(driver, name, term):
    return driver.execute_script("""
        const [name, term] = arguments;
        for (const dt of document.querySelectorAll(`article[aria-labelledby='p-${name}'] .facts dt`))
            if (dt.textContent === term) return dt.nextElementSibling.textContent;
        return null;""", name, term)


def badge(driver, name):
    return driver.execute_script("const b = document.querySelector(`article[aria-labelledby='p-${arguments[0]}'] .badge`); return b && b.textContent;", name)


def shot(driver, name):
    path = SHOTS / f"console-{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def main():
    if not SLUICE.is_file():
        sys.exit(f"{SLUICE} is missing: cargo build -p sluice")
    work = pathlib.Path(tempfile.mkdtemp(prefix="sluice-console-"))
    nats_port = free_port()
    nats = subprocess.Popen([shutil.which("nats-server") or "/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(work / "nats")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def nats_up():
        try:
            socket.create_connection(("127.0.0.1", nats_port), timeout=1).close()
            return True
        except OSError:
            return False
    wait("nats-server", nats_up)
    (work / "sluice.toml").write_text(config(ROOT / "target/sluice-tests/compiled", f"nats://127.0.0.1:{nats_port}"))
    for name in ["audit.jsonl", "orders.jsonl"]:
        (work / name).write_text("")
    # archive writes to a full disk: it fails, restarts 4 times, then stays failed.
    (work / "archive.jsonl").write_text(json.dumps({"payload": "kept"}) + "\n")
    (work / "archive-out.jsonl").symlink_to("/dev/full")
    addr_file = work / "admin.addr"
    env = dict(os.environ, SLUICE_ADMIN_ADDR_FILE=str(addr_file))
    log = open(work / "host.log", "w")
    host = subprocess.Popen([str(SLUICE), "run", "sluice.toml"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    driver = None
    feeders = []
    try:
        addr = wait("the admin address", lambda: addr_file.exists() and addr_file.read_text().strip())
        url = f"http://{addr}/ui"
        options = Options()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1360,1500", "--force-prefers-reduced-motion"]:
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
        driver.get(url)

        # The host requires a read token: the page asks for one.
        dialog = wait("the token dialog", lambda: driver.find_element(By.ID, "token-dialog").get_attribute("open") is not None and driver.find_element(By.ID, "token-dialog"))
        shot(driver, "token")
        driver.find_element(By.ID, "token-input").send_keys(TOKEN)
        dialog.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait("the four pipelines", lambda: [t.text for t in driver.find_elements(By.CSS_SELECTOR, ".card h3")] == ["archive", "audit", "orders", "payments"])
        # archive's sink fails: the card says it restarts, and why.
        wait("archive restarting", lambda: badge(driver, "archive") in ("restarting", "starting", "failed") and "No space left on device" in
             (driver.execute_script("return document.querySelector(`article[aria-labelledby='p-archive'] .problem`).textContent") or ""))
        # The keyboard reaches everything, with a visible focus ring: skip
        # link, token button, then the first pipeline's first action.
        driver.execute_script("document.activeElement && document.activeElement.blur()")
        focused = []
        for _ in range(3):
            ActionChains(driver).send_keys(Keys.TAB).perform()
            focused.append(driver.execute_script("const e = document.activeElement; return [e.textContent.trim(), getComputedStyle(e).outlineStyle];"))
        assert [f[0] for f in focused] == ["Skip to pipelines", "Forget token", "Live tap"], focused  # archive's actions are disabled
        assert all(f[1] == "solid" for f in focused), f"focus rings: {focused}"
        version = wait("orders' version", lambda: fact(driver, "orders", "Version"))
        v1 = hashlib.sha256((PLUGINS / "tag_v1.wasm").read_bytes()).hexdigest()
        assert version.startswith(v1[:12]), f"orders runs tag_v1 ({v1[:12]}): {version}"
        assert badge(driver, "orders") == "running"

        # Rates move while events flow.
        feeders = [Feeder(work / "orders.jsonl", lambda i: f"order {i}"), Feeder(work / "audit.jsonl", lambda i: f"reject:bad {i}" if i % 5 == 0 else f"ok:{i}",
                                                                                   {"Authorization": "Bearer hunter2", "trace": "t-1"})]
        feeders.append(Publisher(nats_port, "in.payments"))
        for f in feeders:
            f.start()
        wait("payments' (JetStream) received rate to rise", lambda: rate(driver, "payments", "Received") not in ("—", "0/s"))
        assert fact(driver, "payments", "Source lag") is not None, "a JetStream source reports its lag"
        wait("orders' received rate to rise", lambda: rate(driver, "orders", "Received") not in ("—", "0/s"))
        wait("audit's dead-letter rate to rise", lambda: rate(driver, "audit", "Dead-lettered") not in ("—", "0/s"))
        wait("sparklines with 6 points", lambda: card(driver, "orders").find_element(By.CSS_SELECTOR, ".rate polyline").get_attribute("points").count(",") >= 6)
        print("orders received:", rate(driver, "orders", "Received"), "payments received:", rate(driver, "payments", "Received"),
              "audit dead-lettered:", rate(driver, "audit", "Dead-lettered"), "latency:", rate(driver, "orders", "Call latency p50 / p99"))
        latency = rate(driver, "orders", "Call latency p50 / p99")
        assert re.fullmatch(r"[\d.]+ (µs|ms|s) / [\d.]+ (µs|ms|s)", latency), f"latency from /metrics: {latency}"
        shot(driver, "pipelines")

        # Pause and resume.
        pause = card(driver, "orders").find_element(By.XPATH, ".//button[text()='Pause']")
        pause.click()
        wait("orders paused", lambda: badge(driver, "orders") == "paused")
        wait("orders' received rate to drop to 0", lambda: rate(driver, "orders", "Received") == "0/s")
        shot(driver, "paused")
        card(driver, "orders").find_element(By.XPATH, ".//button[text()='Resume']").click()
        wait("orders running again", lambda: badge(driver, "orders") == "running")

        # Upload tag_v2: the sha256 shown is the file's; then roll back.
        v2_path = PLUGINS / "tag_v2.wasm"
        v2 = hashlib.sha256(v2_path.read_bytes()).hexdigest()
        card(driver, "orders").find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(v2_path))
        wait("the upload dialog", lambda: driver.find_element(By.ID, "upload-dialog").get_attribute("open") is not None)
        shown = wait("the sha256", lambda: driver.find_element(By.ID, "upload-sha").text)
        assert shown == v2, f"the dialog shows {shown}, the file's sha256 is {v2}"
        shot(driver, "upload")
        driver.find_element(By.ID, "upload-confirm").click()
        wait("orders to serve tag_v2", lambda: (fact(driver, "orders", "Version") or "").startswith(v2[:12]))
        wait("tag_v2 outputs", lambda: '"v2:' in (work / "orders-out.jsonl").read_text())
        # A file that is not a component is refused, and the page says why;
        # the current version keeps serving.
        bad = work / "not-a-plugin.wasm"
        bad.write_bytes(b"not a component")
        card(driver, "orders").find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(bad))
        wait("the upload dialog again", lambda: driver.find_element(By.ID, "upload-dialog").get_attribute("open") is not None)
        driver.find_element(By.ID, "upload-confirm").click()
        refused = wait("the refusal", lambda: driver.execute_script(
            "return document.querySelector(`article[aria-labelledby='p-orders'] .result.error`)?.textContent"))
        assert refused.startswith("Upload refused:"), refused
        wait("the refused version named on the card", lambda: "Last version refused (upload" in card(driver, "orders").find_element(By.CSS_SELECTOR, ".problem").text)
        assert (fact(driver, "orders", "Version") or "").startswith(v2[:12]), "the current version keeps serving"
        shot(driver, "refused")
        card(driver, "orders").find_element(By.XPATH, ".//button[text()='Roll back']").click()
        wait("orders back on tag_v1", lambda: (fact(driver, "orders", "Version") or "").startswith(v1[:12]))

        # tag_v2 as a shadowed candidate (through the API): the card shows
        # its counts and the differing events side by side; abort it there.
        request = urllib.request.Request(f"http://{addr}/pipelines/orders/candidate", data=v2_path.read_bytes(), method="POST",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert json.load(answer)["candidate"]["digest"] == v2
        candidate = wait("the candidate on the card", lambda: (fact(driver, "orders", "Candidate") or "") if " different" in (fact(driver, "orders", "Candidate") or "") else None)
        assert candidate.startswith(f"{v2[:12]} · shadow 1: "), candidate
        table = wait("the differing events", lambda: driver.execute_script(
            "return document.querySelector(`article[aria-labelledby='p-orders'] .candidate table`)?.textContent"))
        assert "output 1: payload" in table and '"payload":"v1:order' in table and '"payload":"v2:order' in table, table
        shot(driver, "candidate")
        card(driver, "orders").find_element(By.XPATH, ".//button[text()='Abort candidate']").click()
        wait("the aborted candidate", lambda: "aborted" in (fact(driver, "orders", "Last candidate") or ""))
        assert fact(driver, "orders", "Candidate") is None, "no candidate after the abort"

        # The live tap on audit: inputs, outputs and dead letters arrive.
        card(driver, "audit").find_element(By.XPATH, ".//button[text()='Live tap']").click()
        driver.find_element(By.ID, "tap-start").click()
        # Read in one script call: the tap re-renders its rows as events
        # arrive, so an element found first and read after may be gone.
        tapped = 'return [...document.querySelectorAll("#tap-rows .point")].map(p => p.innerText.trim())'
        wait("tapped outputs and dead letters", lambda: {"output", "dead-letter", "input"} <= set(driver.execute_script(tapped)))
        rows_text = driver.find_element(By.ID, "tap-rows").text
        assert "Authorization: <redacted>" in rows_text and "trace: t-1" in rows_text, "headers shown, credentials redacted"
        assert "hunter2" not in driver.page_source, "a credential never reaches the page"
        driver.find_element(By.ID, "tap-pause").click()
        # The table holds at most 200 rows, so compare the newest row, not the count.
        top = lambda: driver.execute_script("const r = document.querySelector('#tap-rows tr'); return r && r.textContent;")
        held = top()
        handled = lines(work / "audit-out.jsonl")
        wait("audit to handle 20 more events while the view is paused", lambda: lines(work / "audit-out.jsonl") > handled + 20)
        assert top() == held, "a paused view adds no rows"
        driver.execute_script("document.getElementById('tap').scrollIntoView()")
        shot(driver, "tap")
        driver.find_element(By.ID, "tap-pause").click()
        wait("new rows after resuming", lambda: top() != held)

        # Dead letters of audit (its rejections, in a file): filter, look,
        # preview a replay of two, replay them, and see them arrive on the
        # source. The feeders stop first, so the replayed lines are the last.
        for f in feeders:
            f.stop.set()
            f.join()
        card(driver, "audit").find_element(By.XPATH, ".//button[text()='Dead letters']").click()
        dlq_rows = lambda: driver.execute_script("""
            return [...document.querySelectorAll('#dlq-rows tr:not(.detail)')].map(r => [...r.cells].map(c => c.textContent));""")
        dlq_status = lambda: driver.find_element(By.ID, "dlq-status").text
        wait("audit's dead letters listed", lambda: dlq_rows() and "newest first" in dlq_status())
        assert "in file " in dlq_status() and "audit-dlq.jsonl" in dlq_status(), dlq_status()
        from selenium.webdriver.support.ui import Select
        Select(driver.find_element(By.ID, "dlq-reason")).select_by_value("retries-exhausted")
        wait("the empty state for a filter that matches nothing", lambda: dlq_status().startswith("No dead letters match these filters"))
        assert dlq_rows() == [], "no rows for retries-exhausted"
        Select(driver.find_element(By.ID, "dlq-reason")).select_by_value("rejected")
        Select(driver.find_element(By.ID, "dlq-since")).select_by_value("1h")
        rows = wait("rejected dead letters", lambda: "newest first" in dlq_status() and dlq_rows())
        assert all(r[2] == "rejected" and r[3] == "1" and r[4].startswith("bad ") and r[6].startswith("reject:bad ") for r in rows), rows[:3]
        audit_digest = hashlib.sha256((PLUGINS / "chaos.wasm").read_bytes()).hexdigest()
        assert rows[0][5] == f"chaos {audit_digest[:12]}", rows[0]
        # Headers on expand: the credential redacted.
        first = driver.find_element(By.CSS_SELECTOR, "#dlq-rows tr:not(.detail) button[aria-expanded]")
        first.click()
        detail = driver.find_element(By.CSS_SELECTOR, "#dlq-rows tr.detail:not([hidden])").text
        assert "Authorization\n<redacted>" in detail and "trace\nt-1" in detail, detail
        assert first.get_attribute("aria-expanded") == "true"
        assert "hunter2" not in driver.page_source, "a credential never reaches the page"
        # Select two (keyboard: focus and space), preview, then replay.
        boxes = driver.find_elements(By.CSS_SELECTOR, "#dlq-rows input[type=checkbox]")
        for box in boxes[:2]:
            driver.execute_script("arguments[0].focus()", box)
            ActionChains(driver).send_keys(Keys.SPACE).perform()
        assert driver.find_element(By.ID, "dlq-selected").text == "2 selected"
        assert not driver.find_element(By.ID, "dlq-replay").is_enabled(), "Replay waits for a preview"
        chosen = [r[6] for r in rows[:2]]
        source = work / "audit.jsonl"
        before = lines(source)
        driver.find_element(By.ID, "dlq-preview").click()
        title = wait("the preview", lambda: driver.find_element(By.ID, "dlq-outcome-title").text.startswith("Preview") and driver.find_element(By.ID, "dlq-outcome-title").text)
        # The source's path as the host resolved it (relative to the config's folder).
        assert re.fullmatch(r"Preview: would replay 2 to file:\S*audit\.jsonl", title), title
        items = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#dlq-outcome-list li")]
        assert len(items) == 2 and all(i.startswith("would replay: event audit.jsonl:") for i in items), items
        assert {i.rsplit(": ", 1)[1] for i in items} == set(chosen), (items, chosen)
        assert lines(source) == before, "a preview sends nothing"
        wait("Replay enabled after the preview", lambda: driver.find_element(By.ID, "dlq-replay").is_enabled())
        driver.execute_script("document.getElementById('dlq').scrollIntoView()")
        shot(driver, "dead-letters")
        driver.find_element(By.ID, "dlq-replay").click()
        wait("the replay dialog", lambda: driver.find_element(By.ID, "replay-dialog").get_attribute("open") is not None)
        assert driver.find_element(By.ID, "replay-what").text == "Replay 2 dead letters of audit to its source?"
        shot(driver, "replay-confirm")
        driver.find_element(By.ID, "replay-confirm").click()
        wait("the replay's result", lambda: dlq_status() == "Replayed 2.")
        items = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#dlq-outcome-list li")]
        assert len(items) == 2 and all(i.startswith("replayed: ") for i in items), items
        wait("the two replayed events on audit's source", lambda: lines(source) == before + 2)
        appended = [json.loads(line)["payload"] for line in source.read_text().splitlines()[-2:]]
        assert sorted(appended) == sorted(chosen), (appended, chosen)
        shot(driver, "replayed")

        # The page's first read is refused (401) until the token is given:
        # that is how it learns it needs one; the bad upload is refused
        # (422) on purpose. Nothing else may fail.
        expected = ["/pipelines - Failed to load resource: the server responded with a status of 401",
                    "/pipelines/orders/plugin?sha256=" + hashlib.sha256(b"not a component").hexdigest() + " - Failed to load resource: the server responded with a status of 422"]
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE" and not any(x in e.get("message", "") for x in expected)]
        assert not errors, f"browser console errors: {errors}"
        # archive ran out of restarts: failed, with its error.
        wait("archive failed for good", lambda: badge(driver, "archive") == "failed")
        problem = driver.execute_script("return document.querySelector(`article[aria-labelledby='p-archive'] .problem`).textContent")
        assert problem.startswith("Failed after 4 restart(s)") and "No space left on device" in problem, problem
        assert fact(driver, "archive", "Restarts") == "4", fact(driver, "archive", "Restarts")

        # Dark mode (the operator's system setting): the same page, its own colours.
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        driver.execute_script("window.scrollTo(0, 0)")
        background = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 21, 28)", f"dark background: {background}"
        shot(driver, "dark")
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "light"}]})

        # The host goes away: the page says so, and greys what it last saw.
        host.terminate()
        host.wait(timeout=30)
        wait("the page to say the API is unreachable", lambda: driver.find_element(By.ID, "status").text == "Cannot reach the admin API")
        assert "stale" in driver.find_element(By.TAG_NAME, "body").get_attribute("class")
        assert driver.find_element(By.ID, "notice").text.startswith("Cannot read the pipelines: the host does not answer")
        shot(driver, "unreachable")
        print("console browser test: ok")
    finally:
        for f in feeders:
            f.stop.set()
        if driver is not None:
            driver.quit()
        host.terminate()
        try:
            host.wait(timeout=30)
        except subprocess.TimeoutExpired:
            host.kill()
        log.close()
        nats.terminate()
        nats.wait(timeout=30)
        if os.environ.get("KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
