"""The rating page: one self-contained HTML document (inline CSS and JS, no external URL).

The rater id is kept in localStorage, so a reload resumes where the rater stopped; the server
decides which item is next. Videos are labelled only A (left) and B (right). Element ids are
stable: tests and raters' helpers may rely on them.
"""

from __future__ import annotations

import html
import json

from osora.eval.study.layout import ASPECTS

QUESTIONS = {
    "visual_quality": "Visual quality: which video looks better (sharpness, detail, artefacts)?",
    "prompt_adherence": "Prompt adherence: which video follows the prompt better?",
    "motion_quality": "Motion quality: which video moves more naturally and smoothly?",
}
OPTIONS = (("left", "A is better"), ("same", "About the same"), ("right", "B is better"))

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Video preference study</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em; }
  #videos { display: flex; gap: 1em; }
  #videos figure { flex: 1; margin: 0; }
  #videos video { width: 100%; background: #000; }
  figcaption { font-weight: bold; text-align: center; font-size: 1.3em; }
  fieldset { margin: 0.6em 0; border: 1px solid #ccc; }
  fieldset label { margin-right: 1.5em; }
  #prompt { font-size: 1.15em; }
  #error { color: #b00; }
  #submit { font-size: 1.1em; padding: 0.4em 2em; }
</style>
</head>
<body>
<h1>Which video is better?</h1>
<section id="login">
  <form id="rater-form">
    <label for="rater-id">Your rater id</label>
    <input id="rater-id" required autocomplete="off" pattern="[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}">
    <button id="rater-start" type="submit">Start</button>
  </form>
</section>
<section id="study" hidden>
  <p>Rater <b id="rater-name"></b> &middot; answered <span id="progress"></span>
     <button id="change-rater" type="button">Change rater</button></p>
  <p>Prompt: <q id="prompt"></q></p>
  <div id="videos">
    <figure><figcaption>A</figcaption>
      <video id="video-left" controls autoplay muted loop playsinline preload="auto"></video>
    </figure>
    <figure><figcaption>B</figcaption>
      <video id="video-right" controls autoplay muted loop playsinline preload="auto"></video>
    </figure>
  </div>
  <form id="answer-form">
    @QUESTIONS@
    <button id="submit" type="submit" disabled>Submit</button>
  </form>
</section>
<section id="done" hidden>
  <p>All done, thank you! You answered <span id="done-progress"></span> items.</p>
  <button id="done-change-rater" type="button">Change rater</button>
</section>
<p id="error" role="alert"></p>
<script>
"use strict";
const ASPECTS = @ASPECTS@;
const $ = (id) => document.getElementById(id);
const form = $("answer-form");
let rater = localStorage.getItem("osora-rater");
let item = null;

function show(section) {
  for (const s of ["login", "study", "done"]) $(s).hidden = s !== section;
}
async function api(path, body) {
  const init = body === undefined ? {} : {method: "POST",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const reply = await fetch(path, init);  // same origin: the server refuses any other
  const json = (reply.headers.get("Content-Type") || "").startsWith("application/json");
  const data = json ? await reply.json() : {error: (await reply.text()).trim()};
  if (!reply.ok) throw new Error(data.error || reply.statusText);
  return data;
}
function render(data) {
  const progress = data.progress.done + " / " + data.progress.total;
  $("progress").textContent = progress;
  $("done-progress").textContent = progress;
  $("rater-name").textContent = rater;
  item = data.item;
  if (item === null) { show("done"); return; }
  form.dataset.item = item.id;
  $("prompt").textContent = item.prompt;
  $("video-left").src = item.left;
  $("video-right").src = item.right;
  form.reset();
  updateSubmit();
  show("study");
}
async function next() {
  $("error").textContent = "";
  try {
    render(await api("/api/next?rater=" + encodeURIComponent(rater)));
    localStorage.setItem("osora-rater", rater);
  } catch (err) {
    $("error").textContent = err.message;
    if (err.message.startsWith("rater id")) {  // refused: ask again
      localStorage.removeItem("osora-rater");
      show("login");
    }
  }
}
function chosen(aspect) {
  const input = form.querySelector('input[name="' + aspect + '"]:checked');
  return input ? input.value : null;
}
function updateSubmit() { $("submit").disabled = !ASPECTS.every(chosen); }
function changeRater() {
  localStorage.removeItem("osora-rater");
  rater = null;
  $("rater-id").value = "";
  show("login");
}

form.addEventListener("change", updateSubmit);
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  $("submit").disabled = true;
  const answer = {rater: rater, item: item.id};
  for (const aspect of ASPECTS) answer[aspect] = chosen(aspect);
  $("error").textContent = "";
  try {
    render(await api("/api/answer", answer));
  } catch (err) {
    $("error").textContent = "Not saved: " + err.message + " (try again)";
    updateSubmit();
  }
});
$("rater-form").addEventListener("submit", (event) => {
  event.preventDefault();
  rater = $("rater-id").value.trim();
  next();
});
$("change-rater").addEventListener("click", changeRater);
$("done-change-rater").addEventListener("click", changeRater);
if (rater) next(); else show("login");
</script>
</body>
</html>
"""


def _question(aspect: str) -> str:
    radios = "".join(
        f'<label><input type="radio" id="{aspect}-{value}" name="{aspect}" value="{value}"> '
        f"{html.escape(text)}</label>"
        for value, text in OPTIONS)
    return (f'<fieldset id="q-{aspect}"><legend>{html.escape(QUESTIONS[aspect])}</legend>'
            f"{radios}</fieldset>")


def render_page() -> str:
    """The page's HTML; nothing in it depends on the study, so nothing in it can unblind."""
    return (_TEMPLATE.replace("@QUESTIONS@", "\n    ".join(_question(a) for a in ASPECTS))
            .replace("@ASPECTS@", json.dumps(list(ASPECTS))))
