"""End to end, nothing mocked: real samples (ffmpeg), `osora eval study`, `osora eval serve` as
a subprocess, headless Chromium driven by Selenium as two scripted raters, a SIGKILL of the
server mid-study, then `osora eval analyze` against the raters' own choices.

The raters decide from the key (the test may read it; the page never can): rater-1 prefers
sekritalpha's video on visual and motion quality; rater-2 prefers it on visual quality except
on one prompt ("same") and prefers hiddenbeta's motion; both answer "same" on prompt adherence.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from study_fakes import COLOURS, PROMPTS

from osora.cli import main
from osora.eval.study.layout import ASPECTS

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic")
REFERENCE, RIVAL = COLOURS  # the first --model is the analysis's reference
WAIT_S = 15


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium; a missing browser fails the test (never a silent skip)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: run scripts/setup.sh (it "
                    "installs Debian's chromium and chromium-driver)")
    try:
        from selenium import webdriver
    except ImportError:
        pytest.fail("selenium is not installed: run scripts/setup.sh (the dev extra pins it)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER),
                                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


class Server:
    """`osora eval serve` in its own process, on a fixed port so a restart keeps the URL."""

    def __init__(self, study: Path, log: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.study, self.log, self.proc = study, log, None

    def start(self) -> str:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "osora.cli", "eval", "serve", str(self.study),
                 "--port", str(self.port)], stdout=subprocess.PIPE, stderr=log, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], WAIT_S)
        line = self.proc.stdout.readline() if ready else ""
        assert f"http://127.0.0.1:{self.port}/" in line, (
            f"server did not start: {line!r}\n{self.log.read_text()[-2000:]}")
        return f"http://127.0.0.1:{self.port}/"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=WAIT_S)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=WAIT_S)


class Rater:
    """A scripted rater using the page only through its element ids."""

    def __init__(self, driver, key: dict):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.key, self.by = driver, key, By
        self.wait = WebDriverWait(driver, WAIT_S)

    def el(self, element_id: str):
        return self.driver.find_element(self.by.ID, element_id)

    def log_in(self, rater: str) -> None:
        self.wait.until(lambda d: self.el("rater-id").is_displayed())
        self.el("rater-id").send_keys(rater)
        self.el("rater-start").click()

    def current(self) -> tuple[str | None, str]:
        """(item id on screen or None when done, progress text), once the page has settled."""
        self.wait.until(lambda d: self.el("study").is_displayed() or self.el("done").is_displayed())
        if self.el("done").is_displayed():
            return None, self.el("done-progress").text
        return self.el("answer-form").get_attribute("data-item"), self.el("progress").text

    def answer(self, choices: dict[str, str]) -> None:
        item, progress = self.current()
        for k, aspect in enumerate(ASPECTS):
            assert not self.el("submit").is_enabled(), f"submit enabled with {k} of 3 answered"
            self.el(f"{aspect}-{choices[aspect]}").click()
        assert self.el("submit").is_enabled()
        self.el("submit").click()
        self.wait.until(lambda d: self.current() != (item, progress))

    def frame_colour(self, side: str) -> tuple[int, ...]:
        """The centre pixel of the video's current frame: it played, and it is the right one."""
        video = f"document.getElementById('video-{side}')"
        self.wait.until(lambda d: d.execute_script(f"return {video}.readyState >= 2"))
        assert self.driver.execute_script(f"return {video}.duration") > 0
        return tuple(self.driver.execute_script(f"""
            const v = {video}, c = document.createElement('canvas');
            c.width = v.videoWidth; c.height = v.videoHeight;
            const ctx = c.getContext('2d'); ctx.drawImage(v, 0, 0);
            return Array.from(ctx.getImageData(c.width / 2, c.height / 2, 1, 1).data.slice(0, 3));
        """))


def _choices(key: dict, item: str, rater: str) -> dict[str, str]:
    """The script: the side showing the model the rater prefers for each aspect."""
    entry = key["items"][item]
    side = {entry["left"]: "left", entry["right"]: "right"}
    visual = "same" if rater == "rater-2" and entry["prompt"] == PROMPTS[2] else side[REFERENCE]
    motion = side[REFERENCE if rater == "rater-1" else RIVAL]
    return {"visual_quality": visual, "prompt_adherence": "same", "motion_quality": motion}


def _nearest_model(colour: tuple[int, ...]) -> str:
    return min(COLOURS, key=lambda m: sum((a - b) ** 2 for a, b in zip(COLOURS[m], colour)))


def test_two_raters_resume_after_reload_and_server_kill_then_analysis(fake_models, browser,
                                                                     tmp_path, monkeypatch):
    study = tmp_path / "study"
    assert main(["eval", "study", "--model", f"{REFERENCE}={fake_models[REFERENCE]}",
                 "--model", f"{RIVAL}={fake_models[RIVAL]}", "--out", str(study),
                 "--seed", "11"]) == 0
    key = json.loads((study / "key.json").read_text())
    server = Server(study, tmp_path / "server.log")
    given: list[tuple[str, str, dict]] = []  # (rater, item, choices) as the script answered
    try:
        url = server.start()
        browser.get(url)
        page = browser.page_source
        assert not any(name in page for name in COLOURS)
        rater = Rater(browser, key)
        rater.log_in("rater-1")

        item, progress = rater.current()
        assert progress == "0 / 3"
        for side in ("left", "right"):  # media are served, play, and are the key's videos
            assert _nearest_model(rater.frame_colour(side)) == key["items"][item][side]
        given.append(("rater-1", item, _choices(key, item, "rater-1")))
        rater.answer(given[-1][2])

        shown = rater.current()
        browser.refresh()  # localStorage keeps the rater; the server knows what is answered
        assert rater.current() == shown and shown[1] == "1 / 3"
        given.append(("rater-1", shown[0], _choices(key, shown[0], "rater-1")))
        rater.answer(given[-1][2])
        third = rater.current()

        server.kill()  # SIGKILL: no chance to flush anything
        lines = (study / "answers" / "rater-1.jsonl").read_text().splitlines()
        assert [json.loads(line)["item"] for line in lines] == [g[1] for g in given]
        server.start()
        browser.refresh()
        assert rater.current() == third and third[1] == "2 / 3"
        given.append(("rater-1", third[0], _choices(key, third[0], "rater-1")))
        rater.answer(given[-1][2])
        assert rater.current() == (None, "3 / 3")

        rater.el("done-change-rater").click()
        rater.log_in("rater-2")
        while (item := rater.current()[0]) is not None:
            given.append(("rater-2", item, _choices(key, item, "rater-2")))
            rater.answer(given[-1][2])
        assert rater.current() == (None, "3 / 3")
    finally:
        server.stop()

    uri = _tracking_store(tmp_path, monkeypatch)
    assert main(["eval", "analyze", str(study), "--bootstraps", "200"]) == 0
    result = json.loads((study / "analysis.json").read_text())
    (pair,) = result["pairs"]
    assert (pair["model"], pair["rival"]) == (REFERENCE, RIVAL)
    for aspect in ASPECTS:  # the analysis equals a plain count of the script's choices
        expected = {"win": 0, "tie": 0, "loss": 0}
        for _, item, choices in given:
            choice = choices[aspect]
            chosen = None if choice == "same" else key["items"][item][choice]
            expected["tie" if chosen is None else "win" if chosen == REFERENCE else "loss"] += 1
        assert pair["aspects"][aspect]["counts"] == expected, aspect
    # by hand: visual 5 wins + 1 tie of 6; adherence 6 ties; motion 3 wins (rater-1), 3 losses
    assert pair["aspects"]["visual_quality"]["rates"]["win"] == pytest.approx(5 / 6)
    assert pair["aspects"]["prompt_adherence"]["rates"]["tie"] == 1.0
    assert pair["aspects"]["motion_quality"]["rates"]["win"] == pytest.approx(0.5)
    # motion: every item [1, 0, 1] → P_i = 0, P_e = 0.5 → κ = (0 − 0.5)/(1 − 0.5) = −1;
    # visual: [2,0,0], [2,0,0], [1,1,0] → P̄ = 2/3, P_e = (5/6)² + (1/6)² = 26/36 → κ = −0.2
    assert result["kappa"]["motion_quality"]["kappa"] == pytest.approx(-1.0)
    assert result["kappa"]["visual_quality"]["kappa"] == pytest.approx(-0.2)
    assert result["raters"] == ["rater-1", "rater-2"]
    assert (study / "figure1.png").is_file()
    # logged as an MLflow run of stage human_study, with the same numbers and the files
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("osora").experiment_id])
    assert run.data.tags["osora.stage"] == "human_study"
    prefix = f"study/{REFERENCE}_vs_{RIVAL}"
    assert run.data.metrics[f"{prefix}/visual_quality/win"] == pytest.approx(5 / 6)
    assert run.data.metrics["study/kappa/motion_quality"] == pytest.approx(-1.0)
    assert run.data.metrics["study/answers"] == len(given)
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"analysis.json", "analysis.md", "figure1.png"} <= logged


def _tracking_store(tmp_path: Path, monkeypatch) -> str:
    """A throwaway MLflow store for `osora eval analyze` (artifacts in tmp_path too)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("osora", artifact_location=(tmp_path / "art").as_uri())
    monkeypatch.setenv("OSORA_TRACKING__URI", uri)
    monkeypatch.setenv("OSORA_TRACKING__EXPERIMENT", "osora")
    for var in ("DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    return uri
