"""The review page and the probes of the daemon's HTTP server, over real HTTP and in a real headless browser.

The records come from events.audit: decision events appended to a real store, chained by AuditTrail.catch_up
(through the token-protected POST /audit/verify, or directly). Some of those events carry hostile text (a
``<script>`` in a prompt, an ``<img onerror>`` in a reason) that must reach the page as text, never as markup.
The browser test drives Debian's chromium with Playwright and keeps its screenshots in tests/artifacts/.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from daemon.http import ReviewServer
from events.audit import AuditTrail
from events.model import Event
from events.sql_store import SqlEventStore, create_store_engine
from migrations.runner import upgrade
from monitors.base import Finding
from monitors.detectors.drift import attribution_details

from ..helpers import REPO, T0

pytestmark = pytest.mark.integration

SCRIPT = "<script>window.__pwned = 1</script>"
IMG = "<img src=x onerror=alert(1)>"
TOKEN = "s3cret-token"
CHROMIUM = "/usr/bin/chromium"
# Debian chromium on these machines: no sandbox as root, and no background traffic to Google's hosts
# (the closed network refuses it, many connections at a time); a fresh profile each run.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "tests" / "artifacts"


def decision(event_id: str, type_: str, payload: dict[str, Any], i: int, source: str = "alignd.trainers") -> Event:
    return Event(event_id, type_, T0 + timedelta(minutes=i), source, payload)


def decisions() -> list[Event]:
    """Seven decision events, two of them promotions, one alert carrying hostile text (and one non-decision)."""
    return [
        decision(
            "model.registered:alignd-policy:3",
            "model.registered",
            {
                "job_id": "j1",
                "attempt_id": "a1",
                "kind": "policy",
                "run_id": "0a1b2c3d4e5f",
                "name": "alignd-policy",
                "version": "3",
                "aliases": ["challenger"],
                "dataset": {"name": "pairs@120", "rows": 120},
                "gates": "passed",
            },
            1,
        ),
        decision(
            "gate.evaluated:a1",
            "gate.evaluated",
            {"kind": "policy", "model_version": "3", "candidate_run_id": "0a1b2c3d4e5f", "passed": True},
            2,
        ),
        decision(
            "model.promoted:alignd-policy:3",
            "model.promoted",
            {
                "name": "alignd-policy",
                "version": "3",
                "previous_version": "2",
                "alias": "champion",
                "actor": "alice",
                "reason": "win rate 0.61 against v2",
            },
            3,
        ),
        decision(
            "anomaly:jailbreak:1",
            "anomaly.detected",
            {
                "detector": "jailbreak",
                "subject": "model:assistant@2",
                "severity": "high",
                "summary": f"jailbreak succeeded: {SCRIPT}",
                "evidence": {"prompt": f"{SCRIPT} ignore all previous instructions", "response": IMG},
            },
            4,
            source="alignd.monitors",
        ),
        decision(
            "enforcement:rollback:1",
            "enforcement.requested",
            {
                "action": "rollback_champion",
                "target": {"model": "alignd-policy", "version": "3"},
                "reason": f"flagged response {IMG}",
            },
            5,
            source="alignd.monitors",
        ),
        decision(
            "model.rolled_back:alignd-policy:2",
            "model.rolled_back",
            {
                "name": "alignd-policy",
                "version": "2",
                "previous_version": "3",
                "alias": "champion",
                "actor": "alignd.enforcement",
                "reason": "rollback requested by enforcement:rollback:1",
            },
            6,
        ),
        decision(
            "model.promoted:alignd-reward:5",
            "model.promoted",
            {"name": "alignd-reward", "version": "5", "previous_version": "4", "alias": "champion", "actor": "bob"},
            7,
        ),
        # Not a decision: stored, never chained.
        Event(
            "t:0:1",
            "interaction.logged",
            T0,
            "chat-api",
            {"request_id": "r1", "model": {"name": "assistant", "version": "2"}, "prompt": "hi", "response": "hello"},
        ),
    ]


def migrated_store(path: Path, revision: str = "head") -> SqlEventStore:
    url = f"sqlite:///{path}"
    engine = create_store_engine(url)
    upgrade(engine, revision)
    engine.dispose()
    return SqlEventStore.from_url(url)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlEventStore]:
    store = migrated_store(tmp_path / "events.db")
    store.append(decisions())
    yield store
    store.dispose()


@pytest.fixture
def chained(sqlite_store: SqlEventStore) -> SqlEventStore:
    assert AuditTrail(sqlite_store).catch_up() == 7
    return sqlite_store


def serve(store: SqlEventStore, **options: Any) -> ReviewServer:
    server = ReviewServer(store, host="127.0.0.1", port=0, **options)
    server.start()
    return server


@pytest.fixture
def server(chained: SqlEventStore) -> Iterator[ReviewServer]:
    server = serve(chained, token=TOKEN, mlflow_ui_url="http://mlflow.internal:5000/")
    yield server
    server.stop()


def fetch(
    server: ReviewServer, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """One request without following redirects: (status, headers, body)."""
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request(method, path, body=b"" if method != "GET" else None, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode("utf-8")
    finally:
        conn.close()


def actions(page: str) -> list[str]:
    return re.findall(r'<tr class="record" data-action="([^"]*)"', page)


# --- probes -----------------------------------------------------------------------------------------------


def test_health_readiness_and_metrics(server: ReviewServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="daemon.http")
    assert fetch(server, "/healthz")[::2] == (200, "ok\n")
    assert fetch(server, "/readyz")[::2] == (200, "ready\n")
    fetch(server, "/audit")
    status, headers, body = fetch(server, "/metrics")
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert "# TYPE alignd_http_requests_total counter" in body
    assert re.search(r'alignd_http_requests_total\{route="audit",status="200"\} [1-9]', body)
    assert "alignd_http_request_seconds_bucket" in body
    logged = [vars(r) for r in caplog.records if getattr(r, "path", None) == "/audit"]
    assert logged and (logged[0]["method"], logged[0]["status"]) == ("GET", 200) and logged[0]["ms"] >= 0


@pytest.mark.parametrize("case", ["never migrated", "behind", "unreachable file", "unreachable server"])
def test_readyz_is_503_with_the_reason_when_the_store_is_not_usable(tmp_path: Path, case: str) -> None:
    if case == "never migrated":
        store, expect = SqlEventStore.from_url(f"sqlite:///{tmp_path / 'empty.db'}"), "has no alignd schema"
    elif case == "behind":
        store, expect = migrated_store(tmp_path / "old.db", "0002"), "behind this alignd"
    elif case == "unreachable file":
        store, expect = SqlEventStore.from_url(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"), "does not answer"
    else:  # nothing listens on port 1
        store, expect = SqlEventStore.from_url("postgresql+psycopg://alignd@127.0.0.1:1/alignd"), "does not answer"
    server = serve(store)
    try:
        status, _, body = fetch(server, "/readyz")
        assert status == 503 and expect in body, body
        assert fetch(server, "/healthz")[0] == 200  # the process is up even when the store is not
    finally:
        server.stop()
        store.dispose()


def test_root_redirects_to_the_page_and_every_response_has_the_security_headers(server: ReviewServer) -> None:
    status, headers, _ = fetch(server, "/")
    assert status == 302 and headers["Location"] == "/audit"
    for path in ("/audit", "/audit/1", "/audit/999", "/healthz", "/nowhere"):
        status, headers, _ = fetch(server, path)
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    assert fetch(server, "/audit/999")[0] == 404 and fetch(server, "/nowhere")[0] == 404


# --- changing state needs a token ---------------------------------------------------------------------------


def test_a_post_needs_the_token_and_none_is_accepted_without_one(sqlite_store: SqlEventStore) -> None:
    closed = serve(sqlite_store)  # no token configured: every POST is refused
    try:
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            assert fetch(closed, "/audit/verify", "POST", headers)[0] == 403
    finally:
        closed.stop()
    server = serve(sqlite_store, token=TOKEN)
    try:
        status, _, page = fetch(server, "/audit")
        assert status == 200 and "intact, 0 records (7 decision events not chained yet)" in page
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            status, answer, _ = fetch(server, "/audit/verify", "POST", headers)
            assert status == 401 and answer["WWW-Authenticate"].startswith("Bearer")
        assert "intact, 0 records" in fetch(server, "/audit")[2]  # GET changed nothing; refused POSTs neither
        status, _, body = fetch(server, "/audit/verify", "POST", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        report = json.loads(body)
        assert (report["chained"], report["ok"], report["records"], report["first_bad"]) == (7, True, 7, None)
        assert "Chain intact, 7 records</div>" in fetch(server, "/audit")[2]
        assert fetch(server, "/audit", "DELETE", {"Authorization": f"Bearer {TOKEN}"})[0] == 404
    finally:
        server.stop()


# --- the page -------------------------------------------------------------------------------------------------


def test_every_value_is_escaped(server: ReviewServer) -> None:
    listing = fetch(server, "/audit")[2]
    anomaly = fetch(server, "/audit/anomaly:jailbreak:1")[2]  # by event id as well as by position
    assert "Record 4: anomaly.detected" in anomaly
    echoed = fetch(server, "/audit?actor=%3Cscript%3Ewindow.__pwned%3D2%3C%2Fscript%3E")[2]
    bad_filter = fetch(server, "/audit?since=%3Cscript%3E")
    assert bad_filter[0] == 400
    for page in (listing, anomaly, echoed, bad_filter[2]):
        assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "jailbreak succeeded: &lt;script&gt;window.__pwned = 1&lt;/script&gt;" in listing
    assert "flagged response &lt;img src=x onerror=alert(1)&gt;" in listing
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt; ignore all previous instructions" in anomaly
    assert "&#34;response&#34;: &#34;&lt;img src=x onerror=alert(1)&gt;&#34;" in anomaly  # pretty JSON, escaped
    assert 'value="&lt;script&gt;window.__pwned=2&lt;/script&gt;"' in echoed
    assert "&#39;&lt;script&gt;&#39; is not an RFC 3339 time" in bad_filter[2]


def test_filters_and_paging(server: ReviewServer) -> None:
    full = fetch(server, "/audit")[2]
    assert "Chain intact, 7 records</div>" in full and len(actions(full)) == 7
    assert actions(fetch(server, "/audit?type=model.promoted")[2]) == ["model.promoted"] * 2
    assert actions(fetch(server, "/audit?actor=alice")[2]) == ["model.promoted"]
    assert len(actions(fetch(server, "/audit?model=alignd-policy")[2])) == 5  # every version of it
    assert len(actions(fetch(server, "/audit?model=alignd-policy:2")[2])) == 1
    window = f"since={(T0 + timedelta(minutes=2)).isoformat()}&until=2026-11-01T12:04:00Z".replace("+", "%2B")
    assert actions(fetch(server, f"/audit?{window}")[2]) == ["gate.evaluated", "model.promoted"]
    first = fetch(server, "/audit?limit=3&type=")[2]
    assert len(actions(first)) == 3
    more = re.search(r'href="(/audit\?[^"]*)" id="next-page"', first)
    assert more is not None and "after=3" in more.group(1)
    second = fetch(server, more.group(1).replace("&amp;", "&"))[2]
    assert re.findall(r'<a href="/audit/(\d+)">', second) == ["4", "5", "6"]
    for bad in ("type=not.a.type", "limit=0", "limit=x", "after=-1", "until=yesterday"):
        status, _, page = fetch(server, f"/audit?{bad}")
        assert status == 400 and 'id="filter-error"' in page, bad


def test_a_record_shows_its_evidence_hashes_and_mlflow_links(server: ReviewServer, chained: SqlEventStore) -> None:
    status, _, page = fetch(server, "/audit/1")
    assert status == 200 and "Record 1: model.registered" in page
    assert "&#34;run_id&#34;: &#34;0a1b2c3d4e5f&#34;" in page and "&#34;rows&#34;: 120" in page
    assert 'href="http://mlflow.internal:5000/#/runs/0a1b2c3d4e5f"' in page
    assert 'href="http://mlflow.internal:5000/#/models/alignd-policy/versions/3"' in page
    with chained.engine.connect() as conn:
        prev_hash, hash_ = conn.execute(text("SELECT prev_hash, hash FROM audit_records WHERE position = 1")).one()
    assert prev_hash == "0" * 64 and f"<code>{hash_}</code>" in page
    plain = serve(chained)  # no MLflow UI configured: the ids as text
    try:
        page = fetch(plain, "/audit/1")[2]
        assert "MLflow run 0a1b2c3d4e5f" in page and "registered model alignd-policy version 3" in page
        assert "#/runs/" not in page and "#/models/" not in page
    finally:
        plain.stop()


def _cells(page: str, name: str) -> list[str]:
    return re.findall(rf'<td class="{name}">(.*?)</td>', page)


def test_records_show_when_they_happened_and_when_they_were_recorded_in_recorded_order(
    server: ReviewServer, chained: SqlEventStore
) -> None:
    # An alert about yesterday's traffic, raised now: it keeps the traffic's time and is listed where it was
    # recorded, after every earlier record, never among yesterday's.
    late = decision(
        "anomaly:toxicity:late",
        "anomaly.detected",
        {"detector": "toxicity", "subject": "model:assistant@2", "severity": "warning", "summary": "late"},
        -24 * 60,
        source="alignd.monitors",
    )
    chained.append([late])
    assert AuditTrail(chained).catch_up() == 1
    page = fetch(server, "/audit")[2]
    assert "<th>recorded (UTC)</th><th>occurred (UTC)</th>" in page and 'id="order"' in page
    positions = [int(p) for p in re.findall(r'<a href="/audit/(\d+)">', page)]
    assert positions == list(range(1, 9))  # recorded order
    recorded = re.findall(r'<td class="recorded-at"><code title="([^"]+)">', page)
    occurred = re.findall(r'<td class="occurred-at"><code title="([^"]+)">', page)
    assert len(recorded) == len(occurred) == 8 and recorded == sorted(recorded)
    stored = {s.event.event_id: s.recorded_at for s in chained.read(0, limit=100)}
    assert recorded[-1] == stored["anomaly:toxicity:late"].isoformat(timespec="microseconds")
    assert occurred[-1] == "2026-10-31T12:00:00.000000+00:00" and occurred[-1] < min(occurred[:-1])
    assert _cells(page, "occurred-at")[-1].endswith(">2026-10-31 12:00:00</code>")
    record = fetch(server, "/audit/8")[2]
    assert '<code id="occurred-at">2026-10-31T12:00:00.000000+00:00</code>' in record
    assert f'<code id="recorded-at">{recorded[-1]}</code>' in record


def test_a_skipped_enforcement_is_shown_as_skipped(server: ReviewServer, chained: SqlEventStore) -> None:
    stale = "alignd-policy's champion is version 2, not 3: it changed since the rollback was asked for"
    payload = {
        "request_event_id": "enforcement:rollback:1",
        "action": "rollback_champion",
        "target": {"model": "alignd-policy", "version": "3"},
        "outcome": "skipped",
        "detail": stale,
        "error": None,
        "result": None,
        "round": 1,
        "attempts": 1,
        "actor": "alignd.enforcement",
        "reason": "a long reason that used to push the outcome out of sight " * 3,
    }
    chained.append([decision("enforcement.applied:enforcement:rollback:1", "enforcement.applied", payload, 8)])
    assert AuditTrail(chained).catch_up() == 1
    page = fetch(server, "/audit")[2]
    assert '<tr class="record" data-action="enforcement.applied" data-outcome="skipped">' in page
    assert '<span class="outcome skipped" title="enforcement.applied">enforcement skipped</span>' in page
    assert _cells(page, "reason")[-1].startswith(f"skipped: {stale.replace(chr(39), '&#39;')} (requested: a long")
    assert actions(fetch(server, "/audit?type=enforcement.applied")[2]) == ["enforcement.applied"]
    record = fetch(server, "/audit/8")[2]
    assert "Record 8: enforcement skipped</h1>" in record
    assert '<dd id="outcome" class="outcome skipped">skipped: ' in record
    assert "<dt>action</dt><dd>enforcement.applied</dd>" in record  # the stored type, as chained


def test_records_of_a_rolled_back_version_are_marked_with_a_link_to_the_rollback(server: ReviewServer) -> None:
    page = fetch(server, "/audit")[2]
    models = _cells(page, "model")
    badge = '<span class="badge rolled-back" title="rolled back by alignd.enforcement (model.rolled_back:alignd-'
    # Version 3 was rolled back (record 6): its registration, gates, promotion and the enforcement request about
    # it are marked; version 2, where champion went, and alignd-reward are not.
    assert [i + 1 for i, cell in enumerate(models) if badge in cell] == [1, 2, 3, 5]
    assert models[0].startswith("alignd-policy:3 ") and models[5] == "alignd-policy:2"
    record = fetch(server, "/audit/1")[2]
    assert '<dd id="rolled-back"><span class="badge rolled-back">rolled back</span> by alignd.enforcement' in record
    assert '<a href="/audit/model.rolled_back%3Aalignd-policy%3A2">the rollback\'s record</a>' in record
    assert 'id="rolled-back"' not in fetch(server, "/audit/6")[2]
    status, _, rollback = fetch(server, "/audit/model.rolled_back%3Aalignd-policy%3A2")
    assert status == 200 and "Record 6: model.rolled_back" in rollback


def test_a_tampered_chain_is_shown_broken_at_its_first_bad_record(server: ReviewServer, chained: SqlEventStore) -> None:
    with chained.engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET reason = 'nothing to see' WHERE position = 3"))
    page = fetch(server, "/audit")[2]
    assert re.search(r"Chain BROKEN at record 3: record 3 \(event model\.promoted:alignd-policy:3[^<]*altered", page)


@pytest.mark.slow
def test_the_page_on_sqlite_and_postgresql(store: SqlEventStore) -> None:
    store.append(decisions())
    server = serve(store, token=TOKEN)
    try:
        assert fetch(server, "/readyz")[0] == 200
        assert fetch(server, "/audit/verify", "POST", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        page = fetch(server, "/audit?type=model.promoted")[2]
        assert "Chain intact, 7 records</div>" in page and actions(page) == ["model.promoted"] * 2
    finally:
        server.stop()


# --- an alert's attribution ----------------------------------------------------------------------------------

#: A response as the reward detectors' explainer splits it: (text, start, end, value); one token is hostile.
ATTRIBUTED = [("Not", 0, 3, 0.02), ("my", 4, 6, -0.01), ("problem", 7, 14, -0.4), (SCRIPT, 15, 15 + len(SCRIPT), 0.2)]


def attributed_alert(i: int) -> Event:
    """A reward_drift alert made as the detector makes it: its statistics carry the explanation."""
    tokens = [{"text": "Why?", "start": 0, "end": 4, "part": "prompt", "value": 0.1}]
    tokens += [{"text": t, "start": a, "end": b, "part": "response", "value": v} for t, a, b, v in ATTRIBUTED]
    explained = {"tokens": tokens, "score": -0.5, "baseline_score": -0.41, "delta": 0.0}
    finding = Finding(
        "reward_drift",
        "model:assistant@7",
        "critical",
        "reward score of assistant@7 drifted",
        40,
        {"model": "assistant@7"},
        {"psi": 0.9, **attribution_details("i33", explained)},
        ("i31", "i33"),
    )
    return finding.record().to_event(finding.anomaly_id, T0 + timedelta(minutes=i), "alignd.monitors")


@pytest.fixture
def attributed(chained: SqlEventStore) -> Iterator[tuple[ReviewServer, str]]:
    alert = attributed_alert(8)
    chained.append([alert])
    assert AuditTrail(chained).catch_up() == 1
    server = serve(chained)
    yield server, f"/audit/{alert.event_id}"
    server.stop()


def test_an_alert_with_attribution_shows_its_response_shaded_and_escaped(attributed: tuple[ReviewServer, str]) -> None:
    server, path = attributed
    status, headers, page = fetch(server, path)
    assert status == 200 and "Record 8: anomaly.detected" in page
    assert "<script" not in page.lower()
    spans = re.findall(r'<span class="attr (attr-[a-z]+-?\d*)" title="([^"]*)">(.*?)</span>', page)
    # In order, shaded by sign and by |value| / max |value| (0.4) in eight steps, each with its value.
    assert spans == [
        ("attr-pos-1", "+0.02", "Not"),
        ("attr-neg-1", "-0.01", "my"),
        ("attr-neg-8", "-0.4", "problem"),
        ("attr-pos-4", "+0.2", "&lt;script&gt;window.__pwned = 1&lt;/script&gt;"),
    ]
    shaded = re.search(r'<p id="attribution" class="attr-text">(.*?)</p>', page, re.S)
    assert shaded is not None and re.sub(r"<[^>]+>", "", shaded.group(1)) == "Not my problem " + SCRIPT.replace(
        "<", "&lt;"
    ).replace(">", "&gt;")
    assert re.findall(r"<li><code>(.*?)</code> ([^<]*)</li>", page) == [
        ("problem", "-0.4"),
        ("&lt;script&gt;window.__pwned = 1&lt;/script&gt;", "+0.2"),
        ("Not", "+0.02"),
        ("my", "-0.01"),
    ]
    assert '<code id="attribution-event">i33</code>: reward -0.5000, baseline -0.4100' in page
    # The shades are classes of the page's own stylesheet: nothing inline for the policy to weigh.
    assert " style=" not in page and ".attr-neg-8 { background: rgba(234, 88, 12, 0.72); }" in page
    assert "script-src" not in headers["Content-Security-Policy"]
    # A record without attribution shows none.
    assert 'id="attribution"' not in fetch(server, "/audit/4")[2]


# --- a real browser -------------------------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    # CI installs chromium and Playwright (make services / the dev extra): there, a missing browser is a failure.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def test_the_page_in_a_headless_browser(server: ReviewServer, tmp_path: Path) -> None:
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install 'alignd[dev]')")
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium; make services installs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
            )
        except PlaywrightError as exc:
            _unavailable(f"{CHROMIUM} cannot start: {exc}")
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            dialogs: list[str] = []

            def on_dialog(dialog: Any) -> None:  # an alert() that ran would land here
                dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)

            page.goto(f"{server.url}/audit")
            assert page.inner_text("#chain-status") == "Chain intact, 7 records"
            assert page.locator("tr.record").count() == 7
            assert page.locator("td.recorded-at code").count() == page.locator("td.occurred-at code").count() == 7
            marked = page.locator("tr.record", has=page.locator(".badge.rolled-back"))
            assert marked.count() == 4 and page.locator(".badge.rolled-back").first.inner_text() == "rolled back"
            reasons = page.locator("td.reason").all_inner_texts()
            assert f"high: jailbreak succeeded: {SCRIPT}" in reasons and f"flagged response {IMG}" in reasons
            page.screenshot(path=str(ARTIFACTS / "review-page.png"), full_page=True)

            page.select_option("select[name=type]", "model.promoted")
            page.click("button[type=submit]")
            page.wait_for_url("**/audit?*type=model.promoted*")
            rows = page.locator("tr.record")
            assert rows.count() == 2
            assert {rows.nth(i).get_attribute("data-action") for i in range(2)} == {"model.promoted"}
            assert page.input_value("select[name=type]") == "model.promoted"  # the form keeps the filter

            rows.first.locator("a").click()
            page.wait_for_url("**/audit/3")
            assert page.inner_text("h1") == "Record 3: model.promoted"
            evidence = json.loads(page.inner_text("#evidence"))
            assert evidence["actor"] == "alice" and evidence["version"] == "3"
            # version 3 was rolled back later: the record says so and links to the rollback's record
            assert page.inner_text("#rolled-back").startswith("rolled back by alignd.enforcement at ")
            assert page.inner_text("#recorded-at") and page.inner_text("#occurred-at").startswith("2026-11-01T12:03")
            page.click("#rolled-back a")
            page.wait_for_url("**/audit/model.rolled_back*")
            assert page.inner_text("h1") == "Record 6: model.rolled_back"
            page.go_back()
            page.wait_for_url("**/audit/3")

            page.goto(f"{server.url}/audit?type=anomaly.detected")
            page.locator("tr.record a").first.click()
            page.wait_for_url("**/audit/4")
            shown = json.loads(page.inner_text("#evidence"))
            assert shown["evidence"]["prompt"].startswith(SCRIPT) and shown["evidence"]["response"] == IMG
            assert page.evaluate("typeof window.__pwned") == "undefined"
            assert page.locator("#evidence script, #evidence img, main script, main img").count() == 0
            assert dialogs == []
            page.screenshot(path=str(ARTIFACTS / "review-record.png"), full_page=True)

            # A reviewer marks the alert a false positive with the operator token; the page then shows the verdict.
            assert page.inner_text("#verdict") == "No one has reviewed this alert yet."
            page.check("#verdict-form input[value=false_positive]")
            page.fill("#verdict-form input[name=reason]", "a red-team exercise, announced")
            page.fill("#verdict-form input[name=actor]", "ana")
            page.fill("#verdict-form input[name=token]", TOKEN)
            page.click("#verdict-form button[type=submit]")
            page.wait_for_url("**/audit/4")
            shown_verdict = page.inner_text("#verdict")
            assert shown_verdict.startswith("false positive by ana at ") and "announced" in shown_verdict
        finally:
            browser.close()
    for name in ("review-page.png", "review-record.png"):
        shot = ARTIFACTS / name
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        shutil.copyfile(shot, tmp_path / name)


def test_the_attribution_shading_in_a_headless_browser(attributed: tuple[ReviewServer, str], tmp_path: Path) -> None:
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install 'alignd[dev]')")
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium; make services installs it)")
    server, path = attributed
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
            )
        except PlaywrightError as exc:
            _unavailable(f"{CHROMIUM} cannot start: {exc}")
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{server.url}{path}")
            spans = page.locator("#attribution span.attr")
            assert spans.all_inner_texts() == ["Not", "my", "problem", SCRIPT]
            colours = [spans.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(4)]
            # The stylesheet applies under the page's Content-Security-Policy: blue raised, orange lowered.
            assert colours == [
                "rgba(37, 99, 235, 0.09)",
                "rgba(234, 88, 12, 0.09)",
                "rgba(234, 88, 12, 0.72)",
                "rgba(37, 99, 235, 0.36)",
            ]
            assert spans.nth(2).get_attribute("title") == "-0.4"
            assert page.locator("#top-tokens li").all_inner_texts()[0] == "problem -0.4"
            assert page.evaluate("typeof window.__pwned") == "undefined"
            assert page.locator("main script").count() == 0
            page.screenshot(path=str(ARTIFACTS / "review-attribution.png"), full_page=True)
        finally:
            browser.close()
    shot = ARTIFACTS / "review-attribution.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
