"""``solens demo`` end to end on the shipped solens-tiny (small settings)."""

from __future__ import annotations

import json

import pytest

from solens.cli import main
from solens.tiny import model as tiny

pytestmark = pytest.mark.skipif(not tiny.WEIGHTS_PATH.exists(),
                                reason="solens-tiny weights not shipped")


def test_demo_writes_summary_report_and_descriptions(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    main(["demo", "--out", str(out), "--n", "120", "--k", "12", "--pool", "world",
          "--terms", "8", "--no-progress"])
    summary = json.loads((out / "summary.json").read_text())
    z = summary["zero_shot"]
    assert set(z) == {"balanced", "conflict"} and all(0 <= v <= 1 for v in z.values())
    d = summary["describe"]
    assert set(d) >= {"hit_rate", "baselines", "polysemy", "n_selective"}
    assert set(d["baselines"]) == {"direct", "dissect"}
    assert (out / "report.md").read_text().startswith("# solens demo report")
    assert (out / "ablation.png").stat().st_size > 1000
    assert list((out / "run" / "descriptions").glob("world-layer-*.json"))
    assert "zero-shot balanced" in capsys.readouterr().out


def test_demo_headline_figures_match_the_readme() -> None:
    """The demo's balanced zero-shot accuracy and largest block-ablation drop at its default
    settings agree with the figures the README quotes, within 1 point."""
    import re
    from pathlib import Path

    from solens.demo import headline
    from solens.models.loading import load_model

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    text = " ".join(readme.split())
    zs = re.search(r"zero-shot balanced (\d+\.\d)%", text)
    drop = re.search(r"largest second-order ablation drop: block (\d+) \((\d+\.\d) points\)", text)
    assert zs and drop, "the README no longer quotes the demo's headline figures"
    model = load_model("solens-tiny")
    zero_shot, ab = headline(model, 1000, range(model.info.n_layers - 1))  # the demo's defaults
    assert 100 * zero_shot["balanced"] == pytest.approx(float(zs[1]), abs=1.0)
    worst = min(ab["second_order"], key=lambda l: ab["second_order"][l])
    assert worst == drop[1]
    got = 100 * (ab["baseline"] - ab["second_order"][worst])
    assert got == pytest.approx(float(drop[2]), abs=1.0)
