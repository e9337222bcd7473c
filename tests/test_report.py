"""`silc-eval report`: grouped tables, group means, deltas, compute columns, published rows, bad input, HTML."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from silc_eval.cli import main
from silc_eval.core.errors import UserError
from silc_eval.evaluate.records import RECORD_SCHEMA
from silc_eval.registry import load_benchmarks
from silc_eval.report.published import load_published

# name -> (group, task, main metric); names chosen so that name order differs from group order
BENCHMARKS = {
    "b-seg": ("zero-shot segmentation", "zeroshot_segmentation", "mIoU"),
    "a-ret": ("retrieval", "retrieval", "image_retrieval_recall@1"),
    "z-cls": ("classification", "zeroshot_classification", "acc1"),
    "y-cls": ("classification", "zeroshot_classification", "acc1"),
    "m-lin": ("linear segmentation", "linear_segmentation", "mIoU"),
    "c-few": ("few-shot", "linear_probe", "acc1_10shot_mean"),
    "o-ov": ("open-vocabulary segmentation", "openvocab_segmentation", "hIoU"),
    "k-other": ("zz custom group", "zeroshot_classification", "acc1"),
}
GROUPS_IN_ORDER = ["classification", "few-shot", "retrieval", "zero-shot segmentation",
                   "open-vocabulary segmentation", "linear segmentation", "zz custom group"]


def make_record(model: str, benchmark: str, value: float | None, sha: str = "0" * 64, source: str | None = None,
                extra: dict | None = None, facts: tuple[str, str, str] | None = None) -> dict:
    group, task, main_metric = facts or BENCHMARKS[benchmark]
    return {"schema": RECORD_SCHEMA,
            "model": {"name": model, "sha256": sha, "source": source or model, "architecture": "local-dir:x"},
            "benchmark": {"name": benchmark, "task": task, "group": group, "main_metric": main_metric},
            "dataset": {"name": benchmark, "fingerprint": "f" * 16, "size": 10, "declaration": {}},
            "protocol": {"batch_size": 8},
            "metrics": {main_metric: value, **(extra or {})},
            "provenance": {"silc_eval_version": "0.1.0", "git_commit": "abc123", "wall_time_s": 1.0}}


def write_record_file(folder: Path, record: dict) -> Path:
    path = folder / "records" / record["model"]["name"] / f"{record['benchmark']['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """An empty model zoo, so hand-made model names never pick up a real card."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    monkeypatch.setenv("SILC_EVAL_ZOO", str(folder))
    return folder


@pytest.fixture
def results(tmp_path, zoo):
    """Three models on every hand-made benchmark; 'gamma' lacks y-cls. Written in a scrambled order."""
    folder = tmp_path / "results"
    values = {"alpha": 0.50, "beta": 0.40, "gamma": 0.30}
    for benchmark in reversed(list(BENCHMARKS)):
        for model in ("gamma", "alpha", "beta"):
            if model == "gamma" and benchmark == "y-cls":
                continue
            value = values[model] + (0.2 if (model, benchmark) == ("beta", "y-cls") else 0.0)
            write_record_file(folder, make_record(model, benchmark, value))
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def delta_of(deltas: pd.DataFrame, model: str, column: str) -> float:
    """Return the delta (pp) of one model and column of a long deltas.csv (index: model)."""
    rows = deltas.loc[[model]]
    return float(rows.loc[rows["column"] == column, "delta_pp"].iloc[0])


def test_layout_is_grouped_and_byte_identical_between_runs(results, capsys):
    assert run_cli(capsys, "report", str(results), "--baseline", "alpha")[0] == 0
    first = {name: (results / name).read_bytes() for name in
             ("leaderboard.csv", "groups.csv", "deltas.csv", "leaderboard.md", "report.html", "results.csv")}
    assert run_cli(capsys, "report", str(results), "--baseline", "alpha")[0] == 0
    assert first == {name: (results / name).read_bytes() for name in first}

    leaderboard = pd.read_csv(results / "leaderboard.csv", index_col="model")
    assert list(leaderboard.index) == ["alpha", "beta", "gamma"]
    # group order as the papers, benchmarks by name inside a group (none of these is in a suite)
    assert list(leaderboard.columns) == ["y-cls", "z-cls", "c-few", "a-ret", "b-seg", "o-ov", "m-lin", "k-other",
                                         "mean"]
    groups = pd.read_csv(results / "groups.csv", index_col="model")
    assert list(groups.columns) == ["images_seen", "training_flops"] + GROUPS_IN_ORDER + ["mean"]
    markdown = (results / "leaderboard.md").read_text()
    headings = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert headings == ["Summary"] + [g[:1].upper() + g[1:] for g in GROUPS_IN_ORDER]
    assert "| model | y-cls (acc1) | z-cls (acc1) | classification mean |" in markdown
    assert "| model | a-ret (image_retrieval_recall@1) |" in markdown  # one benchmark: no group mean column


def test_group_means_and_deltas_on_hand_made_records(results, capsys):
    assert run_cli(capsys, "report", str(results), "--baseline", "alpha", "--format", "csv,md")[0] == 0
    groups = pd.read_csv(results / "groups.csv", index_col="model")
    assert groups.at["alpha", "classification"] == pytest.approx(50.0)
    assert groups.at["beta", "classification"] == pytest.approx(50.0)  # (40 + 60) / 2
    assert pd.isna(groups.at["gamma", "classification"])  # lacks y-cls: no partial group mean
    assert groups.at["gamma", "mean"] == pytest.approx(30.0)  # the overall mean uses what a model has
    assert groups.at["beta", "mean"] == pytest.approx((7 * 40 + 60) / 8)
    deltas = pd.read_csv(results / "deltas.csv", index_col="model")
    assert delta_of(deltas, "beta", "y-cls") == pytest.approx(10.0)
    assert delta_of(deltas, "beta", "z-cls") == pytest.approx(-10.0)
    assert delta_of(deltas, "beta", "classification") == pytest.approx(0.0)
    assert delta_of(deltas, "gamma", "a-ret") == pytest.approx(-20.0)
    assert "alpha" not in deltas.index  # the baseline has no row of its own
    # hand-made records name no sidecar: deltas without intervals or p-values
    assert deltas[["ci_low_pp", "ci_high_pp", "p_value"]].isna().all().all()
    markdown = (results / "leaderboard.md").read_text()
    assert "| alpha (baseline) | 50.00 | 50.00 | 50.00 |" in markdown
    assert "| beta | 60.00 (+10.00) | 40.00 (-10.00) | 50.00 (+0.00) |" in markdown
    assert "| gamma | — | 30.00 (-20.00) | — |" in markdown
    # without a baseline, no delta anywhere and no stale deltas.csv
    assert run_cli(capsys, "report", str(results), "--format", "csv,md")[0] == 0
    assert not (results / "deltas.csv").exists()
    assert "(+" not in (results / "leaderboard.md").read_text()


def test_compute_columns_come_from_the_card_of_the_evaluated_weights(tmp_path, zoo, capsys):
    folder = tmp_path / "results"
    local = tmp_path / "my-model"
    local.mkdir()
    (local / "card.yaml").write_text(yaml.safe_dump(
        {"weights": {"sha256": "a" * 64}, "compute": {"images_seen": 1234567, "training_flops": 5.5e15}}))
    (zoo / "zoo-model").mkdir()
    (zoo / "zoo-model" / "card.yaml").write_text(yaml.safe_dump(
        {"weights": {"sha256": "b" * 64}, "compute": {"images_seen": 20480, "training_flops": 3.05e13}}))
    (zoo / "stale-model").mkdir()
    (zoo / "stale-model" / "card.yaml").write_text(yaml.safe_dump(
        {"weights": {"sha256": "c" * 64}, "compute": {"images_seen": 1, "training_flops": 1.0}}))
    write_record_file(folder, make_record("my-model", "z-cls", 0.5, sha="a" * 64, source=f"local-dir:{local}"))
    write_record_file(folder, make_record("zoo-model", "z-cls", 0.6, sha="b" * 64))
    write_record_file(folder, make_record("stale-model", "z-cls", 0.7, sha="d" * 64))
    write_record_file(folder, make_record("ViT-B-32:w.pt", "z-cls", 0.7, source="ViT-B-32:/w/w.pt"))
    code, _, err = run_cli(capsys, "report", str(folder))
    assert code == 0
    groups = pd.read_csv(folder / "groups.csv", index_col="model")
    assert groups.at["my-model", "images_seen"] == 1234567
    assert groups.at["my-model", "training_flops"] == pytest.approx(5.5e15)
    assert groups.at["zoo-model", "images_seen"] == 20480
    assert pd.isna(groups.at["stale-model", "images_seen"]) and pd.isna(groups.at["ViT-B-32:w.pt", "training_flops"])
    assert "stale-model" in err and "other weights" in err
    markdown = (folder / "leaderboard.md").read_text()
    assert "| my-model | 1,234,567 | 5.5e+15 |" in markdown
    assert "| stale-model | — | — |" in markdown


def real_benchmark_record(model: str, name: str, metrics: dict) -> dict:
    benchmark = load_benchmarks()[name]
    return make_record(model, name, metrics[benchmark.main_metric], extra=metrics,
                       facts=(benchmark.group, benchmark.task, benchmark.main_metric))


def test_published_rows_stand_beside_our_own(tmp_path, zoo, capsys):
    folder = tmp_path / "results"
    write_record_file(folder, real_benchmark_record("mine", "imagenet1k-zeroshot", {"acc1": 0.6}))
    write_record_file(folder, real_benchmark_record("mine", "coco5k-retrieval", {
        "image_retrieval_recall@1": 0.3, "text_retrieval_recall@1": 0.5}))
    code, _, _ = run_cli(capsys, "report", str(folder), "--with-published", "--baseline", "mine")
    assert code == 0
    leaderboard = pd.read_csv(folder / "leaderboard.csv", index_col="model")
    assert leaderboard.columns[0] == "source"
    assert leaderboard.at["mine", "source"] == "silc-eval"
    row = "OpenAI CLIP (ViT-B-16 (openai))"
    assert leaderboard.at[row, "imagenet1k-zeroshot"] == pytest.approx(68.34)
    assert leaderboard.at[row, "coco5k-retrieval"] == pytest.approx(33.09)  # the main metric: image R@1
    assert "open_clip" in leaderboard.at[row, "source"]
    assert leaderboard.at["A-CLIP (ViT-B/16, YFCC15M, 25 epochs)", "imagenet1k-zeroshot"] == pytest.approx(43.9)
    assert not any(label.startswith("SCLIP") for label in leaderboard.index)  # no segmentation in these results
    assert list(leaderboard.index)[0] == "mine"  # own rows first, published after in file order
    deltas = pd.read_csv(folder / "deltas.csv", index_col="model")
    assert delta_of(deltas, row, "imagenet1k-zeroshot") == pytest.approx(8.34)
    markdown = (folder / "leaderboard.md").read_text()
    assert f"| *{row}* | published | 68.34 (+8.34) |" in markdown
    assert "## Published numbers" in markdown and "voc21-zeroshot-seg mIoU 59.63" in markdown
    # without the flag, no published row
    assert run_cli(capsys, "report", str(folder))[0] == 0
    assert list(pd.read_csv(folder / "leaderboard.csv", index_col="model").index) == ["mine"]


def test_shipped_published_numbers_cover_protocols_md():
    entries = {e.label: e for e in load_published()}
    seg = sorted(f"{stem}-zeroshot-seg" for stem in ("voc21", "pc60", "coco-object", "voc20", "cityscapes", "pc59",
                                                     "ade20k", "coco-stuff171"))  # the SCLIP family's 8
    sclip = entries["SCLIP (OpenAI CLIP ViT-B/16)"]
    assert sorted(sclip.scores) == seg
    assert sclip.scores["voc21-zeroshot-seg"] == {"mIoU": 59.63}
    assert sclip.scores["coco-stuff171-zeroshot-seg"] == {"mIoU": 22.77}
    for method in ("vanilla CLIP", "MaskCLIP"):
        assert sorted(entries[f"{method} (OpenAI CLIP ViT-B/16)"].scores) == seg
    # ClearCLIP's and NACLIP's own numbers stand beside the presets that run their own settings
    assert sorted(entries["ClearCLIP (OpenAI CLIP ViT-B/16)"].scores) == sorted(f"{b}-clearclip-paper" for b in seg)
    pamr = entries["NACLIP + PAMR (OpenAI CLIP ViT-B/16)"]
    assert sorted(pamr.scores) == sorted(f"{b}-naclip-paper" for b in seg)
    assert pamr.scores["voc21-zeroshot-seg-naclip-paper"] == {"mIoU": 64.07}
    assert entries["NACLIP (OpenAI CLIP ViT-B/16)"].scores["cityscapes-zeroshot-seg"] == {"mIoU": 35.5}
    assert entries["CAT-Seg (OpenAI CLIP ViT-B/16)"].scores["coco-stuff-to-ade150-openvocab"] == {"mIoU": 31.8}
    assert entries["SILC (SILC (model size unstated))"].scores["coco-stuff-to-voc20b-openvocab"] == {"mIoU": 82.5}
    openvocab = sorted(p.stem for p in (Path(__file__).parents[1] / "benchmarks" / "definitions").glob(
        "coco-stuff-to-*-openvocab.yaml"))
    assert len(openvocab) == 6 and all(sorted(entries[label].scores) == openvocab for label in (
        "CAT-Seg (OpenAI CLIP ViT-B/16)", "SILC (SILC (model size unstated))"))
    assert entries["OpenAI CLIP (ViT-L-14 (openai))"].scores["coco5k-retrieval"] == {
        "image_retrieval_recall@1": 36.51, "text_retrieval_recall@1": 56.34}
    assert entries["CLIP (ViT-B/16, YFCC15M, 25 epochs)"].scores == {"imagenet1k-zeroshot": {"acc1": 37.6}}
    assert all(e.source and e.protocol for e in entries.values())


@pytest.mark.parametrize("mutation, expected", [
    (lambda d: d["entries"][0].update(year=2024), "unknown column 'year'"),
    (lambda d: d.update(extra=1), "unknown column 'extra'"),
    (lambda d: d["entries"][0]["scores"].update({"no-such-benchmark": {"mIoU": 1.0}}), "unknown benchmark"),
    (lambda d: d["entries"][0]["scores"].update({"voc21-zeroshot-seg": {"mIoU": 0.5963e3}}), "0-100"),
    (lambda d: d["entries"][1].pop("source"), "missing 'source'"),
])
def test_a_bad_published_file_is_one_line_naming_it(tmp_path, results, capsys, mutation, expected):
    data = yaml.safe_load((Path(__file__).parents[1] / "model_zoo" / "published.yaml").read_text())
    mutation(data)
    bad = tmp_path / "bad-published.yaml"
    bad.write_text(yaml.safe_dump(data))
    code, _, err = run_cli(capsys, "report", str(results), "--published", str(bad))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(bad) in err and expected in err
    with pytest.raises(UserError, match=re.escape(str(bad))):
        load_published(bad)


def test_malformed_and_foreign_json_are_named_and_skipped_or_fatal_with_strict(results, capsys):
    broken = results / "records" / "alpha" / "broken.json"
    broken.write_text('{"schema": "silc-eval/result/v1", "model": ')
    foreign = results / "records" / "delta" / "other-tool.json"
    foreign.parent.mkdir()
    foreign.write_text(json.dumps({"schema": "someone-else/v3", "acc": 0.9}))
    code, _, err = run_cli(capsys, "report", str(results))
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("silc-eval: warning: skipping ") for line in lines)
    assert str(broken) in err and "not valid JSON" in err
    assert str(foreign) in err and "someone-else/v3" in err
    assert list(pd.read_csv(results / "leaderboard.csv", index_col="model").index) == ["alpha", "beta", "gamma"]

    before = (results / "leaderboard.csv").read_bytes()
    code, _, err = run_cli(capsys, "report", str(results), "--strict")
    assert code == 2 and err.count("\n") == 1 and str(broken) in err and "Traceback" not in err
    assert (results / "leaderboard.csv").read_bytes() == before  # nothing rewritten


def test_bad_baseline_and_missing_or_empty_folder_are_one_line_errors(results, tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", str(results), "--baseline", "omega")
    assert code == 2 and err.count("\n") == 1
    assert "baseline model 'omega' is not in the results" in err and "alpha, beta, gamma" in err
    code, _, err = run_cli(capsys, "report", str(tmp_path / "nowhere"))
    assert code == 2 and err.count("\n") == 1 and "not found" in err
    (tmp_path / "empty" / "records").mkdir(parents=True)
    code, _, err = run_cli(capsys, "report", str(tmp_path / "empty"))
    assert code == 2 and err.count("\n") == 1 and "no result records" in err
    only_foreign = tmp_path / "foreign"
    write_record_file(only_foreign, {**make_record("x", "z-cls", 0.1), "schema": "other/v1"})
    code, _, err = run_cli(capsys, "report", str(only_foreign))
    assert code == 2 and "no valid result record" in err.splitlines()[-1]
    code, _, err = run_cli(capsys, "report", str(results), "--format", "md,pdf")
    assert code == 2 and "unknown report format 'pdf'" in err


# ----------------------------------------------------------------------------- the HTML in a real browser

CHROMIUM = "/usr/bin/chromium"
IMAGE_PROBE = """<div id="probe-images">pending</div><script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; });
  document.getElementById("probe-images").textContent = "decoded " + ok.length + " of " + images.length;
});
</script>"""


def chromium_binary() -> str:
    binary = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if binary is None:
        pytest.fail("headless chromium is needed to check report.html renders: run `apt-get install chromium` "
                    "(Debian's package, /usr/bin/chromium)")
    return binary


def dump_dom(html_path: Path, profile: Path) -> str:
    command = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", html_path.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_html_is_self_contained_and_renders_in_headless_chromium(results, tmp_path, capsys):
    assert run_cli(capsys, "report", str(results), "--baseline", "alpha", "--format", "html")[0] == 0
    html = (results / "report.html").read_text()
    # offline: nothing fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html and "<script" not in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == len(GROUPS_IN_ORDER)  # a bar chart per group; no card gives compute here
    assert "No model card gives training FLOPs" in html
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"

    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", IMAGE_PROBE + "</body>"))
    dom = dump_dom(probe, tmp_path / "chromium-profile")
    assert f"decoded {len(images)} of {len(images)}" in dom
    cells = re.findall(r"<td[^>]*>(.*?)</td>", dom)
    for expected in ("alpha (baseline)", "beta", "gamma", "60.00 (+10.00)", "40.00 (-10.00)", "50.00 (+0.00)",
                     "30.00 (-20.00)", "—"):
        assert expected in cells, expected
    headers = re.findall(r"<th[^>]*>(.*?)</th>", dom)
    assert "y-cls (acc1)" in headers and "classification mean" in headers and "zz custom group" in headers
    assert re.findall(r"<h2>(.*?)</h2>", dom)[1:] == [g[:1].upper() + g[1:] for g in GROUPS_IN_ORDER]


def test_compute_plot_appears_only_with_compute(tmp_path, zoo, capsys):
    folder = tmp_path / "results"
    for name, flops in (("small", 1e12), ("large", 4e12)):
        (zoo / name).mkdir()
        (zoo / name / "card.yaml").write_text(yaml.safe_dump(
            {"weights": {"sha256": "e" * 64}, "compute": {"images_seen": 10, "training_flops": flops}}))
        write_record_file(folder, make_record(name, "z-cls", 0.5, sha="e" * 64))
    assert run_cli(capsys, "report", str(folder), "--format", "html")[0] == 0
    html = (folder / "report.html").read_text()
    assert 'alt="score versus training compute"' in html and "No model card gives training FLOPs" not in html
