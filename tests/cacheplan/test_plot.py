"""The cache-plan PNG (issue 24 §3): a one-layer plot is wide enough for its titles (none cut
at the figure's edges), each policy keeps its colour, and the pager's point stays visible where
another policy's point lies on it."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from engramctl.cacheplan.plan import CachePlan, CurvePoint, LayerPlan  # noqa: E402
from engramctl.cacheplan.plot import plan_figure, plot_plan  # noqa: E402

SIZES = [100, 1000, 4000, 8000]


def points(rates):
    return [
        CurvePoint(s, r, None if r is None else int(1000 * r), None if r is None else 10.0, None)
        for s, r in zip(SIZES, rates, strict=True)
    ]


def layer_plan(layer: int) -> LayerPlan:
    curves = {
        "lru": points([0.0, 0.0, 0.95, 0.962]),
        "pager": points([None, None, None, 0.962]),  # one point, on lru's and opt's
        "static": points([0.03, 0.25, 0.78, 0.78]),
        "opt": points([0.03, 0.33, 0.961, 0.962]),
    }
    return LayerPlan(
        layer=layer, table_rows=8088, distinct_rows=4062, accesses=27090, lookups=73728,
        unique_rows_per_batch_mean=3010.0, unique_rows_per_batch_p99=3100.0, dedup_ratio=2.7,
        rows_per_token=13.2, pager_min_rows=4007, curves=curves, reach={}, seconds={},
    )  # fmt: skip


def plan(layers=(1,)) -> CachePlan:
    return CachePlan(
        workload=["sample_data/bench/lm_heldout.jsonl"],
        cut="windows of 128 tokens (EOS-joined, as eval cuts them)", sequences=144,
        tokens=18000, positions=18432, counted_positions=16384, batch=16, seq_len=128,
        batches=9, warmup_batches=1, warmup_fraction=0.1, dtype="float8_e4m3fn", dim=256,
        row_bytes=264, tokens_per_s=None, sizes=SIZES, policies=["lru", "pager", "static", "opt"],
        layout={}, layers={layer: layer_plan(layer) for layer in layers},
    )  # fmt: skip


@pytest.fixture
def figure():
    import matplotlib.pyplot as plt

    made = []
    yield lambda p: made.append(plan_figure(p)) or made[-1]
    for fig in made:
        plt.close(fig)


@pytest.mark.parametrize("layers", [(1,), (1, 15)])
def test_titles_and_labels_fit_inside_the_figure(figure, layers):
    fig = figure(plan(layers))
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
    texts = [t for t in texts if t.get_text()]
    assert any("warm-up" in t.get_text() for t in texts)
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1, text.get_text()
        assert extent.y0 >= box.y0 - 1 and extent.y1 <= box.y1 + 1, text.get_text()


def test_one_layer_plot_is_wide_enough(figure):
    width_px = figure(plan()).get_size_inches()[0] * 100
    assert width_px >= 800


def policy_lines(fig):
    ax = fig.axes[0]
    return {line.get_label().split()[0]: line for line in ax.get_lines()}


def test_the_pager_point_is_drawn_on_top_and_the_others_are_hollow(figure):
    lines = policy_lines(figure(plan()))
    pager = lines["pager"]
    assert list(pager.get_xdata()) == [8000]
    others = [lines[p] for p in ("lru", "static", "opt")]
    assert all(pager.get_zorder() > line.get_zorder() for line in others)
    assert all(line.get_markerfacecolor() == "none" for line in others)


def test_each_policy_keeps_its_colour(figure):
    full = policy_lines(figure(plan()))
    without_pager = plan()
    del without_pager.layers[1].curves["pager"]
    fewer = policy_lines(figure(without_pager))
    for policy in ("lru", "static", "opt"):
        assert fewer[policy].get_color() == full[policy].get_color()


def test_a_pager_without_points_says_why_in_the_legend(figure):
    p = plan()
    p.layers[1].curves["pager"] = points([None, None, None, None])
    legend = figure(p).axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert any(label.startswith("pager") and "4,007" in label for label in labels), labels


def test_plot_plan_writes_a_png(tmp_path):
    out = plot_plan(plan(), tmp_path / "plan.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
