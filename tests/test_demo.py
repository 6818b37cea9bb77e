"""``solens demo`` end to end on the shipped solens-tiny, and one set of figures: the demo's
summary.json, the README, the model card and the shipped evaluation (``solens-tiny.json``)
agree on every figure they share."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from solens.cli import main
from solens.tiny import model as tiny

pytestmark = pytest.mark.skipif(not tiny.WEIGHTS_PATH.exists(),
                                reason="solens-tiny weights not shipped")

ROOT = Path(__file__).resolve().parents[1]


def _text(path: Path) -> str:
    """A markdown file with its whitespace (line breaks included) collapsed."""
    return " ".join(path.read_text().split())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _quotes(text: str, pattern: str) -> list[Any]:
    found = re.findall(pattern, text)
    assert found, f"no quote matching {pattern!r}"
    return found


def _check_headline_quotes(readme: str, summary: dict[str, Any]) -> None:
    """Every zero-shot figure and largest drop the README quotes is the summary's, and the
    README says which scenes they come from."""
    z, ab, es = summary["zero_shot"], summary["ablation"], summary["eval_set"]
    assert set(_quotes(readme, r"zero-shot balanced (\d+\.\d)%")) == {_pct(z["balanced"])}
    assert set(_quotes(readme, r"conflict (\d+\.\d)%")) == {_pct(z["conflict"])}
    worst = ab["largest_drop"]
    assert set(_quotes(readme, r"largest second-order ablation drop: block (\d+) "
                               r"\((\d+\.\d) points\)")) == {(str(worst["block"]),
                                                            _pct(worst["drop"]))}
    base, so = ab["baseline"], ab["second_order"]
    others = max(base - v for l, v in so.items() if int(l) != worst["block"])
    assert set(_quotes(readme, r"every other block at most (\d+\.\d) points")) == {_pct(others)}
    n, seed, ref = es["n"], es["seed"], es["ablation"]
    assert (f"{n:,} held-out `balanced` and {n:,} `conflict` scenes (seed {seed})") in readme
    assert (f"on the same {n:,} balanced scenes and means from {ref['reference_n']:,} other "
            f"balanced scenes (seed {ref['reference_seed']})") in readme


def _shipped_as_summary() -> dict[str, Any]:
    """The shipped evaluation (``solens-tiny.json`` "eval") in the demo's summary layout."""
    ev = tiny.read_meta()["eval"]
    so, di = ev["block_ablation_second_order"], ev["block_ablation_direct"]
    block = max(so["drop"], key=lambda l: (so["drop"][l], -int(l)))
    return {
        "eval_set": ev["eval_set"],
        "zero_shot": {"balanced": ev["zero_shot_balanced"],
                      "conflict": ev["zero_shot_conflict"]},
        "ablation": {"baseline": so["baseline"], "second_order": so["blocks"],
                     "direct": di["blocks"],
                     "all_blocks": {"second_order": so["all_blocks"],
                                    "direct": di["all_blocks"]},
                     "largest_drop": {"block": int(block), "drop": so["drop"][block]}},
    }


def test_readme_and_model_card_quote_the_shipped_evaluation() -> None:
    """The README and the model card quote the evaluation stored with the shipped weights,
    on the headline set."""
    from solens.tiny.evaluate import HEADLINE

    ev = tiny.read_meta()["eval"]
    assert ev["eval_set"] == HEADLINE.to_dict()
    shipped = _shipped_as_summary()
    _check_headline_quotes(_text(ROOT / "README.md"), shipped)

    card = _text(ROOT / "docs" / "model-card.md")
    assert f"n = {HEADLINE.n:,} images per split, seed {HEADLINE.seed}" in card
    for name, key in (("zero-shot top-1, balanced (20 classes)", "zero_shot_balanced"),
                      ("zero-shot top-1, conflict", "zero_shot_conflict"),
                      ("colour classification (8-way, image→text)", "colour_cls"),
                      ("background classification (8-way)", "background_cls")):
        assert re.search(rf"\| {re.escape(name)} \| \**{_pct(ev[key])}%", card), name
    so, di = ev["block_ablation_second_order"], ev["block_ablation_direct"]
    base = so["baseline"]
    assert f"(baseline {_pct(base)}%" in card
    last = max(so["blocks"], key=int)
    for l in so["blocks"]:
        d_cell = f"{_pct(di['blocks'][l])}% ({100 * di['drop'][l]:+.1f})"
        s_cell = ("none (no later block)" if l == last
                  else f"{_pct(so['blocks'][l])}% ({100 * so['drop'][l]:+.1f})")
        row = (f"| {l} | {s_cell} | {so['rel_norm'][l]:.3f} | {d_cell} | "
               f"{di['rel_norm'][l]:.3f} |")
        assert row in card, row
    assert (f"All blocks' second-order effects ablated at once: {_pct(so['all_blocks'])}% "
            f"({100 * (base - so['all_blocks']):+.1f})") in card


def test_demo_writes_summary_report_and_descriptions(tmp_path, capsys, monkeypatch) -> None:
    """A small demo (150 scenes per split instead of the headline set's 2,000, to stay fast;
    the full one is test_full_demo_matches_the_readme): its zero-shot figures and ablations
    are those of ``solens.tiny.evaluate.evaluate`` (the model card, ``synth eval``) on the
    same scenes, and its report says where each figure comes from."""
    import functools

    import solens.demo
    from solens.tiny.evaluate import EvalSet, evaluate

    small = EvalSet(n=150, seed=12345)
    monkeypatch.setattr(solens.demo, "run_demo",
                        functools.partial(solens.demo.run_demo, eval_set=small, ablate_n=60,
                                          segment_n=12, atlas_top=2, atlas_layers=[0],
                                          attack_n=6))
    out = tmp_path / "demo"
    main(["demo", "--out", str(out), "--n", "120", "--k", "12", "--pool", "world",
          "--terms", "8", "--no-progress"])
    summary = json.loads((out / "summary.json").read_text())
    z = summary["zero_shot"]
    assert set(z) == {"balanced", "conflict"} and all(0 <= v <= 1 for v in z.values())
    d = summary["describe"]
    assert set(d) >= {"hit_rate", "baselines", "polysemy", "n_selective", "examples"}
    assert set(d["baselines"]) == {"direct", "dissect", "chance"}
    assert summary["run_images"]["spec"] == "synth:balanced:120:12345"
    assert summary["eval_set"]["n"] == 150 and summary["eval_set"]["seed"] == 12345
    report = (out / "report.md").read_text()
    assert report.startswith("# solens demo report")
    for phrase in ("CLIP-Dissect-style baseline", "**Polysemantic** here means",
                   "the last block, has no second-order effect", "Examples from block 0",
                   "150 held-out `balanced` and 150 `conflict` scenes (seed 12345)",
                   "Not the headline set of the model card",
                   "the first 120 of those 150 balanced scenes"):
        assert phrase in report, phrase
    worst = summary["ablation"]["largest_drop"]
    assert d["examples"]["block"] == worst["block"] == 0
    assert (out / "ablation.png").stat().st_size > 1000
    assert list((out / "run" / "descriptions").glob("world-layer-*.json"))
    # solens ablate's section: the checked contract of summary.json["ablate"]
    a = summary["ablate"]
    assert set(a) >= {"layers", "baseline", "second_order", "significant_only",
                      "insignificant_only", "rank1", "indirect", "direct",
                      "text_reconstruction", "pc1_variance", "frac_significant_median"}
    assert a["layers"] == summary["layers"] and a["eval"] == "synth:balanced:60:12347:64"
    for v in ("second_order", "significant_only", "insignificant_only", "rank1", "indirect",
              "direct"):
        assert len(a[v]) == len(a["layers"]) and all(0 <= x <= 1 for x in a[v])
    assert list(a["text_reconstruction"]) == ["world"]
    assert list(a["text_reconstruction"]["world"]) == ["1", "2", "4", "8", "16", "32", "64",
                                                         "96"]  # capped at d = 96
    assert set(a["pc1_variance"]) == {"second_order", "indirect"}
    assert (out / "run" / "ablate" / "fig3.png").is_file()
    assert "## The paper's layer experiments" in report
    # solens segment's section: the checked contract of summary.json["segment"]
    sg = summary["segment"]
    assert sg["split"] == "balanced" and sg["n_images"] == 12
    assert set(sg) == {"split", "n_images", "second_order", "second_order_signed",
                       "raw_attention", "rollout", "chefer", "textspan", "gradcam",
                       "random_neurons"}
    for m in ("second_order", "second_order_signed", "raw_attention", "rollout", "chefer",
              "textspan", "gradcam", "random_neurons"):
        assert set(sg[m]) == {"pixel_acc", "miou", "map"}
        assert all(0 <= x <= 1 for x in sg[m].values())
    assert (out / "run" / "segment" / "overlays" / "00000.png").is_file()
    assert "## Zero-shot segmentation" in report
    # solens attack / discover: the checked contract of summary.json["attack"], ["discover"]
    (pair, e), = summary["attack"].items()
    assert pair == "ship:car"
    for m in ("second_order", "random", "similar_words", "indirect"):
        assert len(e[m]) == 2 and 0 <= e[m][0] <= 1 and e[m][1] >= 0
    assert e["reliance"] is not None and -1 <= e["reliance"] <= 1
    assert set(e) == {"second_order", "random", "similar_words", "indirect", "reliance"}
    assert set(summary["discover"]) == {"precision_at_5", "baseline"}
    assert 0 <= summary["discover"]["precision_at_5"] <= 1
    assert (out / "run" / "attack" / "ship-car" / "summary.json").is_file()
    assert "## Semantic adversarial images" in report and "## Attribute discovery" in report
    # the atlas: the checked contract of summary.json["atlas"]
    assert summary["atlas"] == "atlas/index.html" and (out / "atlas" / "index.html").is_file()
    assert len(list((out / "atlas" / "neurons" / "layer-00").glob("*.html"))) == 384
    assert "## Neuron atlas" in report and "[atlas/index.html](atlas/index.html)" in report
    captured = capsys.readouterr()
    assert f"atlas of 384 neurons: {out / 'atlas' / 'index.html'}" in captured.err
    printed = captured.out.strip().splitlines()[-1]
    assert printed.startswith("150 held-out scenes per split (seed 12345): zero-shot balanced")

    # one evaluation path: the demo's figures are evaluate()'s on the same scenes, and the
    # "no ablation" baseline is the balanced zero-shot figure
    ev = evaluate(tiny.load_tiny(), n=small.n, seed=small.seed)
    assert z == {"balanced": ev["zero_shot_balanced"], "conflict": ev["zero_shot_conflict"]}
    for kind in ("second_order", "direct"):
        blocks = ev[f"block_ablation_{kind}"]["blocks"]
        assert summary["ablation"][kind] == {str(l): v for l, v in blocks.items()}
    assert summary["ablation"]["baseline"] == z["balanced"]
    assert worst["drop"] == pytest.approx(
        ev["block_ablation_second_order"]["drop"][worst["block"]], abs=1e-12)


@pytest.mark.slow
def test_full_demo_matches_the_readme(tmp_path, capsys) -> None:
    """``solens demo`` at its defaults (the README's command) prints the very line the README
    quotes, and every figure that its summary.json and the README both show agrees: zero-shot
    balanced and conflict, the largest drop and its block, the largest other drop, the
    description hit rates; the headline figures are also the shipped evaluation's."""
    from solens.demo import summary_line

    out = tmp_path / "demo"
    main(["demo", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert printed == summary_line(summary)
    readme = _text(ROOT / "README.md")
    assert printed in readme
    _check_headline_quotes(readme, summary)
    d, b = summary["describe"], summary["describe"]["baselines"]
    hit = _quotes(readme, r"hit rate (\d+\.\d)% \(direct (\d+\.\d)%, dissect (\d+\.\d)%, "
                          r"chance (\d+\.\d)%\)")
    assert set(hit) == {(_pct(d["hit_rate"]), _pct(b["direct"]), _pct(b["dissect"]),
                         _pct(b["chance"]))}
    assert f"descriptions of {summary['run_images']['n']:,} of those balanced scenes" in readme

    shipped = _shipped_as_summary()
    assert summary["eval_set"]["n"] == shipped["eval_set"]["n"]
    assert summary["zero_shot"] == pytest.approx(shipped["zero_shot"], abs=1e-6)
    for kind in ("second_order", "direct"):
        assert summary["ablation"][kind] == pytest.approx(shipped["ablation"][kind], abs=1e-6)
