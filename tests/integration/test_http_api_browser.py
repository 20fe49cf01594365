"""The web page in a real browser (Debian's headless Chromium over the DevTools protocol): log in with the
keyboard, submit a two-person job, and watch it live until the final image and both persons' mask
overlays are visible. The screenshot is kept (its path is printed)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from browser_cdp import Browser
from gateway_support import (  # noqa: F401 - fixtures
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
)
from http_api_support import http_api_fixture, http_api_overrides_fixture  # noqa: F401 - fixtures

from multipass.names import BUCKET_JOBS

pytestmark = pytest.mark.slow

TWO_PERSONS = "a ballroom BREAK photo, 85mm BREAK ohwx woman, red dress BREAK ohwx man, black suit"

FINAL_VISIBLE = """(() => {
  const img = document.getElementById('final-image-0');
  return !!img && img.complete && img.naturalWidth > 0 && img.getBoundingClientRect().width > 0;
})()"""
VISIBLE_OVERLAYS = """[...document.querySelectorAll('#overlay-0 img.mask-overlay')]
  .filter((img) => img.complete && img.naturalWidth > 0 && !img.hidden && img.getBoundingClientRect().width > 0)
  .map((img) => img.dataset.mask)"""


#: Fill the form with a small prompt and a generated PNG in the file field, then submit it.
SUBMIT_WITH_INPUT_IMAGE = """(async () => {
  const canvas = document.createElement('canvas'); canvas.width = 256; canvas.height = 256;
  const paint = canvas.getContext('2d'); paint.fillStyle = '#c03020'; paint.fillRect(0, 0, 256, 256);
  const blob = await new Promise((done) => canvas.toBlob(done, 'image/png'));
  const files = new DataTransfer(); files.items.add(new File([blob], 'wall.png', { type: 'image/png' }));
  document.getElementById('input-image').files = files.files;
  const set = (id, v) => { document.getElementById(id).value = v; };
  set('prompt', 'a painting of a red wall'); set('steps', '2'); set('w', '256'); set('h', '256');
  document.getElementById('submit-form').requestSubmit();
})()"""


def drive(browser: Browser, url: str, api_key: str, screenshots: Path) -> dict:
    browser.navigate(url)
    # Log in with the keyboard only: the key field has focus, Enter submits.
    assert browser.evaluate("document.activeElement.id") == "api-key"
    assert browser.evaluate("document.querySelector('label[for=api-key]').textContent") == "API key"
    browser.type_text(api_key)
    browser.press_key("Enter", "Enter", 13, "\r")
    browser.wait_for("!document.getElementById('home-view').hidden", 20, "the job list after logging in")
    stored = browser.evaluate(
        "[sessionStorage.getItem('multipass.apiKey'), localStorage.length, document.cookie]"
    )
    browser.evaluate("document.getElementById('prompt').focus()")
    browser.type_text(TWO_PERSONS)
    browser.evaluate(
        """(() => { const set = (id, v) => { document.getElementById(id).value = v; };
        set('steps', '2'); set('w', '256'); set('h', '256'); set('seed', '11');
        document.getElementById('submit-form').requestSubmit(); })()"""
    )
    job_id = browser.wait_for(
        "location.hash.startsWith('#/jobs/') && location.hash.slice(7)", 20, "the job page after submitting"
    )
    browser.wait_for(FINAL_VISIBLE, 90, "the final image")
    overlays = browser.wait_for(
        f"(() => {{ const m = {VISIBLE_OVERLAYS}; return m.length >= 2 && m; }})()", 30, "two mask overlays"
    )
    passes_shown = browser.evaluate(
        "[...document.querySelectorAll('#passes-0 figure')].map((f) => f.dataset.pass)"
    )
    timings = browser.wait_for(
        "(() => { const r = [...document.querySelectorAll('#passes-table tbody tr')]"
        ".map((tr) => [tr.cells[1].textContent, tr.cells[3].textContent]); "
        "return r.length && r.every(([, s]) => s !== '') && r; })()",
        20,
        "every pass's timing",
    )
    state = browser.wait_for(
        "document.getElementById('job-state').textContent === 'succeeded' && 'succeeded'",
        20,
        "the finished state",
    )
    alts = browser.evaluate(
        "[...document.querySelectorAll('#job-view img')].every((img) => img.alt.length > 0)"
    )
    shot = browser.screenshot(screenshots / "web-page-two-person-job.png")
    # The toggle hides that person's overlay.
    browser.evaluate("document.getElementById('toggle-0-person-0').click()")
    hidden = browser.evaluate("document.querySelector('#overlay-0 img[data-mask=\"person-0\"]').hidden")
    # A second job from an input image chosen in the file field (uploaded, then used by the job).
    browser.evaluate("location.hash = '#/'")
    browser.wait_for("!document.getElementById('home-view').hidden", 20, "the home view")
    browser.evaluate(SUBMIT_WITH_INPUT_IMAGE)
    input_job = browser.wait_for(
        f"location.hash.startsWith('#/jobs/') && location.hash.slice(7) !== '{job_id}' && location.hash.slice(7)",
        20,
        "the job page of the input-image job",
    )
    input_state = browser.wait_for(  # on this job's page: no state of the job shown before it lingers
        f"document.getElementById('job-title').textContent === 'Job {input_job}'"
        " && document.querySelectorAll('#passes-table tbody tr').length > 0"
        " && document.getElementById('job-state').textContent === 'succeeded' && 'succeeded'",
        90,
        "the input-image job to succeed",
    )
    input_passes = browser.evaluate(
        "[...document.querySelectorAll('#passes-table tbody tr')].map((tr) => tr.cells[1].textContent)"
    )
    # An ended job offers its zip, not a cancel; deleting it takes two clicks and goes back to the list.
    ended_controls = browser.evaluate(
        "[document.getElementById('download-zip').disabled, document.getElementById('cancel-job').hidden]"
    )
    browser.evaluate("document.getElementById('delete-job').click()")
    armed = browser.evaluate("location.hash.slice(7)")  # one click only arms the button
    browser.evaluate("document.getElementById('delete-job').click()")
    browser.wait_for("!document.getElementById('home-view').hidden", 20, "the list after deleting")
    listed = browser.wait_for(
        "[...document.querySelectorAll('#jobs-table tbody a')].map((a) => a.textContent).length > 0"
        " && [...document.querySelectorAll('#jobs-table tbody a')].map((a) => a.textContent)",
        20,
        "the job list",
    )
    # A tune tag that names no tune: one account of the problem, and how to find tune ids.
    browser.evaluate(
        "document.getElementById('prompt').value = 'a room <lora:999999:1>';"
        "document.getElementById('submit-form').requestSubmit()"
    )
    refusal = browser.wait_for(
        "document.getElementById('submit-error').textContent", 20, "the refusal of an unknown tune"
    )
    toggles = browser.evaluate(f"location.hash = '#/jobs/{job_id}'; 1") and browser.wait_for(
        "document.querySelectorAll('#toggles-0 label').length >= 2"
        " && [...document.querySelectorAll('#toggles-0 label')].map((l) => l.dataset.mask)",
        30,
        "the mask toggles of the first job",
    )
    return {
        "ended_controls": ended_controls,
        "armed_on": armed,
        "listed_after_delete": listed,
        "refusal": refusal,
        "toggles": toggles,
        "input_job": input_job,
        "input_state": input_state,
        "input_passes": input_passes,
        "job_id": job_id,
        "stored": stored,
        "overlays": overlays,
        "passes": passes_shown,
        "timings": timings,
        "state": state,
        "alts": alts,
        "hidden_after_toggle": hidden,
        "screenshot": shot,
    }


async def test_web_page_watches_a_two_person_job_live(http_api, tmp_path):
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    browser = await asyncio.to_thread(Browser, profile)
    try:
        seen = await asyncio.to_thread(drive, browser, http_api.url + "/", http_api.key, tmp_path)
    finally:
        await asyncio.to_thread(browser.close)
    print(f"\nscreenshot of the web page: {seen['screenshot']}")
    assert seen["screenshot"].stat().st_size > 10_000
    assert seen["state"] == "succeeded"
    assert seen["stored"] == [http_api.key, 0, ""]  # the key lives in this tab's session storage only
    assert {"person-0", "person-1"} <= set(seen["overlays"])
    assert {"base", "person-0", "person-1"} <= set(seen["passes"])
    assert {"base", "segment", "person-0", "person-1"} <= {name for name, _ in seen["timings"]}
    assert seen["alts"] is True and seen["hidden_after_toggle"] is True
    assert seen["ended_controls"] == [False, True]
    assert seen["armed_on"] == seen["input_job"]  # the first click did not delete
    assert (
        seen["input_job"] not in seen["listed_after_delete"] and seen["job_id"] in seen["listed_after_delete"]
    )
    assert "multipass tunes list" in seen["refusal"], seen["refusal"]
    assert seen["refusal"].count("does not exist") == 1, seen["refusal"]
    assert seen["toggles"][:2] == ["person-0", "person-1"], seen["toggles"]
    # The input image went up through /v1/uploads, the job ran on it, and the upload was deleted after.
    assert seen["input_state"] == "succeeded" and seen["input_passes"][0] == "prepare", seen["input_passes"]
    assert any(url.endswith("/v1/uploads") for url in browser.requests)
    for _ in range(50):
        if not await http_api.stack.store.list_keys(BUCKET_JOBS, f"uploads/{http_api.tenant}/"):
            break
        await asyncio.sleep(0.1)
    assert not await http_api.stack.store.list_keys(BUCKET_JOBS, f"uploads/{http_api.tenant}/")
    # Every request stayed on this origin (or blob: URLs); the key never appears in a URL.
    foreign = [
        url for url in browser.requests if not url.startswith((http_api.url, "blob:", "data:", "about:"))
    ]
    assert foreign == [], foreign
    assert not any(http_api.key in url for url in browser.requests)
    assert any(url.endswith(f"/v1/jobs/{seen['job_id']}/events") for url in browser.requests), json.dumps(
        browser.requests
    )
