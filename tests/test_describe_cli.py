"""`solens describe` / `solens show` end to end on a tiny open_clip model saved locally."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from solens.cli import main
from solens.describe.describe import (
    describe_run,
    descriptions_path,
    load_descriptions,
    model_for_run,
    neuron_report,
)
from solens.describe.omp import omp, prepare_dictionary
from solens.describe.pools import embed_pool, load_pool
from solens.describe.stats import compute_stats, load_stats
from solens.store import Run, run_effects

from .store_helpers import image_folder, save_local_model

WORDS = ["dog", "cat", "ship", "car", "red", "blue", "tree", "house", "sky", "sea", "grass",
         "road", "snow", "sand", "bird", "fish", "horse", "cow", "apple", "clock", "key", "cup",
         "star", "heart", "umbrella", "flower", "truck", "airplane", "green", "yellow"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    from solens.models.loading import load_model

    root = tmp_path_factory.mktemp("describe_cli")
    name = save_local_model(root / "model")
    model = load_model(name)
    imgs = image_folder(root / "images", n=24, extras=False)
    run = run_effects(model, imgs, [1, 2], root / "run", batch_size=8, chunk_size=10,
                      progress=False, workers=1)
    pool = root / "words.txt"
    pool.write_text("\n".join(WORDS) + "\n")
    compute_stats(run, 2, 4)  # `show` needs stored statistics
    return {"run": run, "model": model, "pool": pool, "root": root}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLENS_CACHE", str(tmp_path / "cache"))


def test_describe_api_matches_omp_of_r(env) -> None:
    run: Run = env["run"]
    docs = describe_run(run, str(env["pool"]), [2], model=env["model"], n_terms=6, k=4)
    doc = docs[0]
    path = descriptions_path(run, "words", 2)
    assert path.exists() and path.with_suffix(".md").exists()
    assert json.loads(path.read_text())["neurons"][0] == doc["neurons"][0]
    assert doc["layer"] == 2 and doc["k"] == 4 and doc["method"] == "omp"
    assert doc["pool"]["n_texts"] == len(WORDS) and len(doc["neurons"]) == 128
    st = load_stats(run, 2)
    D, _ = prepare_dictionary(embed_pool(env["model"], load_pool(env["pool"])))
    res = omp(D, np.asarray(st.r, np.float64), 6)
    for n in (0, 17, 127):
        e = doc["neurons"][n]
        assert [t["text"] for t in e["terms"]] == [WORDS[i] for i, _ in res.terms(n)]
        assert [t["index"] for t in e["terms"]] == [i for i, _ in res.terms(n)]
        assert e["top_images"] == st.top_indices[n].tolist()
        assert e["tau"] == pytest.approx(float(st.tau[n]), rel=1e-5)
        abs_coefs = [abs(t["coef"]) for t in e["terms"]]
        assert abs_coefs == sorted(abs_coefs, reverse=True)
    rep = neuron_report(run, 2, 17, "words")
    assert rep["terms"] == doc["neurons"][17]["terms"]
    assert len(rep["top_image_paths"]) == 4 and rep["top_image_paths"][0].endswith(".png")


def test_model_for_run_reloads_local_dir(env) -> None:
    m = model_for_run(env["run"])
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(m.encode_image(x), env["model"].encode_image(x))


def test_cli_describe_and_show(env, capsys) -> None:
    run = env["run"].path
    main(["describe", str(run), "--pool", str(env["pool"]), "--terms", "5", "--layers", "1",
          "2", "--k", "3", "--no-progress", "--nonneg"])
    out = capsys.readouterr().out
    assert "NNOMP" in out and "words-nonneg-layer-01.json" in out
    doc = load_descriptions(run, "words", 1, nonneg=True)
    assert doc["method"] == "nnomp" and doc["k"] == 3
    assert all(t["coef"] > 0 for e in doc["neurons"] for t in e["terms"])
    main(["show", str(run), "1", "5", "--pool", str(env["pool"]), "--nonneg"])
    out = capsys.readouterr().out
    assert "layer 1 neuron 5" in out and "tau=" in out and "nnomp" in out
    assert doc["neurons"][5]["terms"][0]["text"] in out
    main(["show", str(run), "2", "5", "--pool", "world"])
    assert "no 'world' descriptions" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["describe", "{root}/nope"], "does not exist"),
    (["describe", "{run}", "--layers", "3"], "layer 3 is not in run"),
    (["describe", "{run}", "--pool", "no-such-pool"], "unknown text pool"),
    (["show", "{run}", "0", "1"], "layer 0 is not in run"),
    (["show", "{run}", "2", "999"], "out of range"),
])
def test_cli_errors(env, capsys, args, message) -> None:
    argv = [a.format(root=env["root"], run=env["run"].path) for a in args]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("solens: error:") and message in err[0]
