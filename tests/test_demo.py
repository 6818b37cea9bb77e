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
