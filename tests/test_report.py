"""The HTML report: self-contained, complete, and rendered by a real headless browser."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from searchcomp.results.report import default_out, hypervolume_by_trial, render, write_report
from searchcomp.results.study import Results, load_results
from searchcomp.search.front import hypervolume

CHROMIUM = Path("/usr/bin/chromium")
N_PLOTS = 5  # three Pareto scatters, the choices heatmap, the hypervolume curve
EXTERNAL = re.compile(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", re.I)


@pytest.fixture(scope="module")
def report(finished_study, tmp_path_factory) -> Path:
    return write_report(finished_study, out=tmp_path_factory.mktemp("report") / "report.html")


def _assert_self_contained(text: str) -> None:
    assert 'src="http' not in text
    assert not EXTERNAL.search(text), EXTERNAL.search(text).group(0)
    assert not re.search(r"<script[^>]*cdn\.plot\.ly", text)
    assert text.count("* plotly.js v") == 1  # plotly.js inline, once


def test_report_is_written_and_self_contained(finished_study, report):
    res = load_results(finished_study)
    text = report.read_text(encoding="utf-8")
    _assert_self_contained(text)
    assert text.count('class="plotly-graph-div"') == N_PLOTS
    assert text.count("Plotly.newPlot(") == N_PLOTS
    for div in ("scatter-size_mib", "scatter-latency_ms", "scatter-params", "heatmap-choices",
                "hypervolume-curve"):
        assert f'id="{div}"' in text
    assert res.front and res.greedy
    for r in res.front:  # one table row per front member, with its summary
        row = re.search(rf'<tr class=front id="trial-{r["trial"]}".*?</tr>', text)
        assert row and r["summary"] in row.group(0)
    assert 'id="row-base"' in text and 'id="row-greedy"' in text
    assert f"{res.hypervolume:.4f}" in text
    assert res.base["latency_runtime"] in text
    assert "tiny-study" in text and str(finished_study.file) in text
    assert default_out(finished_study) == finished_study.study_dir() / "report.html"
    assert default_out(finished_study, "other") == (
        Path(finished_study.studies_dir) / "other" / "report.html")


def test_hypervolume_by_trial_matches_the_definition(finished_study):
    res = load_results(finished_study)
    done = sorted((r for r in res.rows if r["state"] == "complete"), key=lambda r: r["trial"])
    got = hypervolume_by_trial(res.rows, res.objectives, res.base)
    assert [p["trial"] for p in got] == [r["trial"] for r in done]
    for k, p in enumerate(got, start=1):
        assert p["hypervolume"] == pytest.approx(hypervolume(done[:k], res.objectives, res.base))
    assert got[-1]["hypervolume"] == pytest.approx(res.hypervolume)


def _results(**kw) -> Results:
    base = {"accuracy": 0.9, "params": 1000, "size_mib": 4.0, "latency_ms": 2.0, "flops": 1e6,
            "latency_runtime": "torch <eager>"}
    row = {"trial": 7, "state": "complete", "strategy": "search", "tag": None, "feasible": True,
           "recipe": {"blocks": {"b<1>": {"conv": "separable", "bits": 8}}, "head": "keep"},
           "summary": "<script>alert(1)</script>", "accuracy": 0.8, "params": 500,
           "size_mib": 1.0, "latency_ms": 1.5, "flops": 5e5}
    bad = {**row, "trial": 8, "feasible": False, "size_mib": 0.5, "summary": "x"}
    fields = dict(study="s&<t>", storage="sqlite:///x.db", objectives=["accuracy", "size_mib"],
                  base=base, rows=[row, bad], front=[row], greedy=None, hypervolume=0.6)
    return Results(**{**fields, **kw})


def test_single_point_front_without_greedy_and_escaping():
    text = render(_results(), ["b<1>", "b2"], "fc", "space<1>.yaml")
    _assert_self_contained(text)
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)" in text
    assert "s&amp;&lt;t&gt;" in text and "space&lt;1&gt;.yaml" in text
    assert 'id="trial-7"' in text and 'id="trial-8"' not in text  # infeasible: not in front
    assert 'id="row-greedy"' not in text and "no greedy run" in text
    assert text.count('class="plotly-graph-div"') == N_PLOTS


def test_empty_study_and_greedy_without_swap():
    g = {"threshold": 0.7, "kept": [], "trial": None, "steps": 3, "accuracy": 0.9,
         "params": 1000, "size_mib": 4.0, "latency_ms": 2.0, "flops": 1e6, "recipe": {}}
    text = render(_results(rows=[], front=[], greedy=g, hypervolume=0.0), [], "fc")
    assert "no complete trial yet" in text and "no block could be swapped" in text
    assert text.count('class="plotly-graph-div"') == 3  # the scatters show the base alone


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)")
def test_report_renders_in_headless_chromium(finished_study, report, tmp_path):
    from PIL import Image, ImageStat

    res = load_results(finished_study)
    url = report.resolve().as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # plotly drew every figure: each plot gets its own SVG layers and the class below
    assert html.count('class="main-svg"') >= 2 * N_PLOTS, html.count('class="main-svg"')
    assert html.count("js-plotly-plot") >= N_PLOTS
    assert html.count('<g class="hm"') == 3  # conv, prune and bits heatmaps drawn
    assert html.count('class="point"') >= 3 * len(res.front)  # markers in the scatters
    assert '<table class="front-table">' in html
    for r in res.front:
        assert f'id="trial-{r["trial"]}"' in html

    png = tmp_path / "report.png"
    shot = _chromium(tmp_path, f"--screenshot={png}", "--window-size=1280,2000", url)
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
    img = Image.open(png).convert("RGB")
    assert img.size == (1280, 2000)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"
    assert max(ImageStat.Stat(img).stddev) > 10
    # the first scatter (top of the page, below the header) is drawn, not an empty box
    plots = img.crop((0, 550, 1280, 1400)).convert("L")
    assert ImageStat.Stat(plots).stddev[0] > 10


def test_report_to_an_unwritable_path_is_a_clear_error(finished_study, tmp_path):
    from searchcomp.errors import SearchcompError

    with pytest.raises(SearchcompError, match="--out: cannot write"):
        write_report(finished_study, out=tmp_path)  # a directory
