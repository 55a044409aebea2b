"""`osora report` on real MLflow runs in a throwaway sqlite store: which runs it picks, how it
links evaluations to training runs, and that the tables, plots and files carry the logged
numbers."""

import base64
import re
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param

from mlflow import MlflowClient
from osora.cli import main
from osora.report import evals, plots
from osora.report.build import build_report
from osora.report.render import cell
from osora.report.runs import LOSS, THROUGHPUT, exp_filter, finished_training_runs, select_runs

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "osora"  # params/tracking.yaml's, which the CLI reads
PNG = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000  # seconds

DIT = {"dit.text.kind": "minilm", "store.uri": "data/store", "cost.device_kind": "cpu"}
LOSS_A = [(10, 2.0), (20, 1.5), (30, 1.2), (40, 1.0), (50, 0.9)]
LOSS_B = [(10, 2.0), (20, 1.4), (30, 1.0), (40, 0.7), (50, 0.75)]  # final 0.75, min 0.7
TPS_A = [(10, 100.0), (20, 200.0), (30, 210.0), (40, 190.0), (50, 205.0)]  # median 200
TPS_B = [(10, 300.0), (20, 400.0), (30, 410.0), (40, 390.0)]  # median 395


def log_run(client, exp, stage, start, end, params, metrics=None, curves=None, tags=None,
            status="FINISHED") -> str:
    """A run as stage_run records it (stage tag, params, cost metrics), at chosen times."""
    run = client.create_run(exp, start_time=(T0 + start) * 1000, run_name=stage,
                            tags={"osora.stage": stage, "git.commit": "c0ffee" * 6,
                                  "git.dirty": "False", **(tags or {})})
    rid = run.info.run_id
    ts = (T0 + end) * 1000
    logged = [Metric(k, v, ts, step) for k, curve in (curves or {}).items() for step, v in curve]
    logged += [Metric(k, v, ts, 0) for k, v in (metrics or {}).items()]
    client.log_batch(rid, metrics=logged, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(rid, status, end_time=ts)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two dit_stage1 runs of different seeds (A then B), a dit_stage2 run C of B's seed, an
    ae_train run, evaluations E1 (after A only) and E2, V (after B and C), and a newer failed
    dit_stage2 run. A ran in DVC experiment seed-1; B, C, V and the failed run in seed-2."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    seed1 = {**DIT, "dit.train.seed": 1}
    seed2 = {**DIT, "dit.train.seed": 2}
    latents = {"lance.input.latents_low.version": "3"}
    exp1, exp2 = {"dvc.exp_name": "seed-1"}, {"dvc.exp_name": "seed-2"}
    ids = {
        "A": log_run(client, exp, "dit_stage1", 0, 100, seed1, {"cost.usd": 0.5,
                     "cost.gpu_hours": 0.25}, {LOSS: LOSS_A, THROUGHPUT: TPS_A},
                     {**latents, **exp1}),
        "ae": log_run(client, exp, "ae_train", 50, 120, {"ae.dcae.widths": "[8]",
                      "store.uri": "data/store"}, {"cost.usd": 9.0},
                      {LOSS: [(1, 0.3)]}, {"lance.input.pyramid_all.version": "2"}),
        "E1": log_run(client, exp, "dit_sample", 150, 160, seed1, {
            "colour_accuracy": 0.5, "direction_accuracy": 0.25, "cost.usd": 0.01}, tags=latents),
        "B": log_run(client, exp, "dit_stage1", 200, 300, seed2, {"cost.usd": 0.75,
                     "cost.gpu_hours": 0.5}, {LOSS: LOSS_B, THROUGHPUT: TPS_B},
                     {**latents, **exp2}),
        "C": log_run(client, exp, "dit_stage2", 400, 500, seed2, {"cost.usd": 1.0,
                     "cost.gpu_hours": 1.0}, {LOSS: [(5, 0.6), (10, 0.5)]},
                     {**latents, **exp2}),
        "E2": log_run(client, exp, "dit_sample", 600, 650, seed2, {
            "colour_accuracy": 0.75, "direction_accuracy": 0.5, "temporal_flickering": 0.95,
            "cost.usd": 0.02}, tags=latents),
        "V": log_run(client, exp, "vbench", 700, 800, seed2, {
            "vbench/total": 0.8, "vbench/temporal_flickering": 0.97, "vbench/videos": 4.0},
            tags=exp2),
        "failed": log_run(client, exp, "dit_stage2", 900, 950, seed2, {"cost.usd": 0.1},
                          {LOSS: [(1, 9.0)]}, {**latents, **exp2}, status="FAILED"),
    }
    return uri, client, ids


@pytest.fixture
def cli_env(store, monkeypatch):
    """The CLI reads params/ of the checkout, its tracking store from the override."""
    uri, _, _ = store
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OSORA_TRACKING__URI", uri)
    return store


def test_default_is_the_newest_finished_run_of_each_stage(store):
    uri, client, ids = store
    runs = select_runs(client, uri, EXPERIMENT)
    assert {r.stage: r.run_id for r in runs} == {
        "dit_stage1": ids["B"], "dit_stage2": ids["C"], "ae_train": ids["ae"],
        "dit_sample": ids["E2"], "vbench": ids["V"]}  # the failed dit_stage2 run is newer
    curves = {r.stage: r.curves for r in runs}
    assert curves["dit_stage1"] == {LOSS: LOSS_B, THROUGHPUT: TPS_B}
    assert curves["dit_sample"] == {}  # evaluations have no curves


def test_stage_selection_overlays_its_runs_one_line_each(store):
    uri, client, ids = store
    runs = select_runs(client, uri, EXPERIMENT, stages=["dit_stage1", "dit_stage2"])
    assert [r.run_id for r in runs] == [ids["B"], ids["A"], ids["C"]]  # newest first
    fig = plots.curves_figure(runs, LOSS, "loss")
    stage1, stage2 = [ax for ax in fig.axes if ax.get_visible()]
    assert stage1.get_title() == "dit_stage1" and len(stage1.lines) == 2
    assert list(stage1.lines[0].get_ydata()) == [v for _, v in LOSS_B]
    assert len(stage2.lines) == 1
    only_a = select_runs(client, uri, EXPERIMENT, stages=["dit_stage1"], last=1)
    assert [r.run_id for r in only_a] == [ids["B"]]


def test_a_dvc_experiment_selects_the_runs_it_made(store):
    """--experiment: the stages a DVC experiment ran (tag dvc.exp_name), newest finished run
    of each; the MLflow UI filters on the same expression."""
    uri, client, ids = store
    runs = select_runs(client, uri, EXPERIMENT, dvc_exp="seed-2")
    assert {r.stage: r.run_id for r in runs} == {
        "dit_stage1": ids["B"], "dit_stage2": ids["C"], "vbench": ids["V"]}
    (a,) = select_runs(client, uri, EXPERIMENT, stages=["dit_stage1"], dvc_exp="seed-1")
    assert a.run_id == ids["A"] and a.dvc_exp == "seed-1"
    with pytest.raises(ValueError, match=r"DVC experiment 'seed-3'.*with runs: seed-1, seed-2"):
        select_runs(client, uri, EXPERIMENT, dvc_exp="seed-3")
    with pytest.raises(ValueError, match=r"stage 'ae_train' in experiment 'osora' \(DVC "
                                         r"experiment 'seed-1'\).*dit_stage1"):
        select_runs(client, uri, EXPERIMENT, stages=["ae_train"], dvc_exp="seed-1")
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    found = client.search_runs([experiment_id], filter_string=exp_filter("seed-1"))
    assert [r.info.run_id for r in found] == [ids["A"]]


def test_experiment_names_with_quotes_are_searched_with_the_other_quote():
    assert exp_filter("bob's") == "tags.`dvc.exp_name` = \"bob's\""
    with pytest.raises(ValueError, match="rename it"):
        exp_filter("bob's \"b\"")


def test_evaluations_link_to_the_training_runs_of_their_params_before_them(store):
    uri, client, ids = store
    runs = {r.run_id: r for r in select_runs(client, uri, EXPERIMENT, run_ids=list(ids.values()))}
    candidates = finished_training_runs(client, runs[ids["A"]].experiment_id)
    assert ids["failed"] not in {r.run_id for r in candidates}

    def linked(name):
        return [r.run_id for r in evals.trained_by(runs[ids[name]], candidates)]

    assert linked("E1") == [ids["A"]]  # B and C finished after E1 started
    assert linked("E2") == [ids["B"], ids["C"]]  # A has another seed; ae_train shares no params
    assert linked("V") == [ids["B"], ids["C"]]
    assert not evals.is_evaluation(runs[ids["B"]]) and evals.is_evaluation(runs[ids["V"]])


def test_tables_hold_the_logged_numbers(store):
    uri, client, ids = store
    report = build_report(client, uri, EXPERIMENT, [], ["dit_stage1", "dit_sample"])
    tables = {s.title: s for s in report.sections if hasattr(s, "rows")}
    training = {row[1]: dict(zip(tables["Training"].columns, row))
                for row in tables["Training"].rows}
    b = training[ids["B"][:8]]
    assert (b["last step"], b["final loss"], b["min loss"]) == (50, 0.75, 0.7)
    assert (b["median tokens/s"], b["GPU-hours"], b["USD"]) == (395.0, 0.5, 0.75)
    assert training[ids["A"][:8]]["median tokens/s"] == 200.0
    evaluation = {row[0]: dict(zip(tables["Evaluation: dit_sample"].columns, row))
                  for row in tables["Evaluation: dit_sample"].rows}
    e2, e1 = evaluation[ids["E2"][:8]], evaluation[ids["E1"][:8]]
    assert e2["training USD"] == 1.75 and e2["training GPU-hours"] == 1.5
    assert (e2["colour_accuracy"], e2["temporal_flickering"]) == (0.75, 0.95)
    assert e1["training USD"] == 0.5 and e1["temporal_flickering"] is None  # not logged
    assert e1["trained by"] == f"dit_stage1 {ids['A'][:8]}"


def test_vbench_counts_are_not_scores_and_dimensions_are_not_plotted(store):
    uri, client, ids = store
    (v,) = select_runs(client, uri, EXPERIMENT, run_ids=[ids["V"]])
    e = evals.Evaluation(v, ())
    assert e.scores == {"vbench/total": 0.8, "vbench/temporal_flickering": 0.97}
    assert e.headline == {"vbench/total": 0.8}


def test_html_report_is_self_contained_with_the_numbers_and_plots(cli_env, tmp_path):
    _, _, ids = cli_env
    out = tmp_path / "reports" / "runs.html"
    assert main(["report", "--out", str(out)]) == 0
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # loss, throughput, cost against scores
    assert all(base64.b64decode(data).startswith(PNG) for data in images)
    assert re.findall(r'(?:src|href)="', page) == ['src="'] * 3  # nothing but inline images
    assert "http://" not in page and "https://" not in page
    for value in (0.75, 0.7, 395.0, 1.75, 0.95, 0.8):  # B's loss, tps; E2's cost; V's score
        assert f"<td>{cell(value)}</td>" in page
    assert ids["failed"][:8] not in page


def test_the_report_of_a_dvc_experiment_holds_its_runs_only(cli_env, tmp_path):
    _, _, ids = cli_env
    out = tmp_path / "seed-1.md"
    assert main(["report", "--experiment", "seed-1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "DVC experiment: seed-1" in text
    assert f"| dit_stage1 | {ids['A'][:8]} | FINISHED |" in text
    assert "| seed-1 |" in text  # the runs table's DVC experiment column
    assert not [name for name in ("B", "C", "V", "ae") if ids[name][:8] in text]


def test_markdown_report_writes_its_plots_beside_it(cli_env, tmp_path):
    out = tmp_path / "runs.md"
    assert main(["report", "--stage", "dit_stage1", "--out", str(out)]) == 0
    text = out.read_text()
    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert linked == ["runs-loss.png", "runs-throughput.png"]  # no evaluation selected
    assert all((tmp_path / name).read_bytes().startswith(PNG) for name in linked)
    assert "| 50 | 0.75 | 0.7 | 395 | 0.5 | 0.75 |" in text


def test_unknown_inputs_are_clear_errors(cli_env, tmp_path, capsys):
    uri, _, _ = cli_env
    assert main(["report", "--run", "deadbeef", "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "deadbeef" in err and uri in err
    assert main(["report", "--stage", "dit_stage9", "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "dit_stage9" in err and "dit_stage1" in err  # lists the stages that have runs
    assert main(["report", "--mlflow-experiment", "nope", "--out",
                 str(tmp_path / "r.html")]) == 2
    assert "no MLflow experiment 'nope'" in capsys.readouterr().err
    assert main(["report", "--experiment", "nope", "--out", str(tmp_path / "r.html")]) == 2
    assert "no finished runs of DVC experiment 'nope'" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "r.pdf")]) == 2
    assert ".html" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_a_missing_store_is_not_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    db = tmp_path / "none" / "mlflow.db"
    monkeypatch.setenv("OSORA_TRACKING__URI", f"sqlite:///{db}")
    assert main(["report", "--out", str(tmp_path / "r.html")]) == 2
    assert "run the pipeline first" in capsys.readouterr().err
    assert not db.exists()


def test_reads_what_stage_run_writes(store, monkeypatch, tmp_path):
    """The metric and tag names the report reads are the ones osora.tracking writes: a training
    run (torchtitan's "throughput(tps)") and an evaluation of the same dit.train params."""
    from osora.config import load_settings
    from osora.tracking import stage_run

    uri, client, _ = store
    client.create_experiment("stage_run", artifact_location=tmp_path.as_uri())  # apart from
    monkeypatch.chdir(REPO)  # the fixture's runs
    monkeypatch.setenv("OSORA_TRACKING__URI", uri)
    monkeypatch.setenv("OSORA_TRACKING__EXPERIMENT", "stage_run")
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings()
    with stage_run("dit_stage1", settings, ("dit.text", "dit.train")) as run:
        for step, loss in ((1, 1.0), (2, 0.5)):
            run.log_metrics({LOSS: loss, "throughput(tps)": 100.0 * step}, step=step)
    with stage_run("dit_sample", settings, ("dit.sample", "dit.text", "dit.train")) as run:
        run.log_metrics({"colour_accuracy": 0.5})

    report = build_report(client, uri, "stage_run", [], [])
    tables = {s.title: s for s in report.sections if hasattr(s, "rows")}
    (train,) = tables["Training"].rows
    (logged,) = client.search_runs([client.get_experiment_by_name("stage_run").experiment_id],
                                   filter_string="tags.`osora.stage` = 'dit_stage1'")
    assert train[:6] == ("dit_stage1", logged.info.run_id[:8], 2, 0.5, 0.5, 150.0)
    assert train[7] == logged.data.metrics["cost.usd"]
    (evaluation,) = tables["Evaluation: dit_sample"].rows
    assert evaluation[1] == f"dit_stage1 {logged.info.run_id[:8]}"


def test_weights_hashes_give_the_exact_lineage(tmp_path):
    """Stage 1 → 2 → 3 chained by weights hashes, and a newer stage-3 run of the same params
    that wrote other weights: the evaluation of the first chain's weights links to that chain
    only, though the params rule alone would pick the newer run."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("lineage", artifact_location=tmp_path.as_uri())
    out = "weights.output.sha256"
    TRAINED = {LOSS: [(1, 1.0)]}  # noqa: N806 — what makes a run a training run
    ids = {
        "S1": log_run(client, exp, "dit_stage1", 0, 10, DIT, curves=TRAINED, tags={out: "h1"}),
        "S2": log_run(client, exp, "dit_stage2", 20, 30, DIT, curves=TRAINED,
                      tags={"weights.input.init.sha256": "h1", out: "h2"}),
        "S3": log_run(client, exp, "dit_stage3", 40, 50, DIT, curves=TRAINED,
                      tags={"weights.input.init.sha256": "h2", out: "h3"}),
        "S3b": log_run(client, exp, "dit_stage3", 60, 70, DIT, curves=TRAINED,
                       tags={"weights.input.init.sha256": "h2", out: "h4"}),
        "E": log_run(client, exp, "dit_sample", 80, 90, DIT, {"colour_accuracy": 0.5},
                     tags={"weights.input.checkpoint.sha256": "h3"}),
        "old": log_run(client, exp, "dit_sample", 80, 90, DIT, {"colour_accuracy": 0.5}),
    }
    runs = {r.run_id: r for r in select_runs(client, "", "lineage", run_ids=list(ids.values()))}
    candidates = finished_training_runs(client, exp)
    exact = evals.trained_by(runs[ids["E"]], candidates)
    assert [r.run_id for r in exact] == [ids["S1"], ids["S2"], ids["S3"]]
    # no hashes: the newest consistent run of each stage, S3b
    inferred = evals.trained_by(runs[ids["old"]], candidates)
    assert [r.run_id for r in inferred] == [ids["S1"], ids["S2"], ids["S3b"]]
