"""`solens describe` / `solens show` end to end on a tiny open_clip model saved locally."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from solens.cli import main
from solens.describe.describe import (
    describe_run,
    descriptions_path,
    load_descriptions,
    neuron_report,
    resolve_terms,
)
from solens.describe.omp import omp, prepare_dictionary
from solens.describe.pools import embed_pool, load_pool
from solens.describe.stats import compute_stats, load_stats
from solens.errors import InputError
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
    assert json.loads(path.read_text()) == doc.to_dict()
    assert doc.layer == 2 and doc.k == 4 and doc.method == "omp"
    assert doc.pool.n_texts == len(WORDS) and len(doc.neurons) == 128
    st = load_stats(run, 2)
    D, _ = prepare_dictionary(embed_pool(env["model"], load_pool(env["pool"])))
    res = omp(D, np.asarray(st.r, np.float64), 6)
    for n in (0, 17, 127):
        e = doc.neurons[n]
        assert [t.text for t in e.terms] == [WORDS[i] for i, _ in res.terms(n)]
        assert [t.index for t in e.terms] == [i for i, _ in res.terms(n)]
        assert e.top_images == st.top_indices[n].tolist()
        assert e.tau == pytest.approx(float(st.tau[n]), rel=1e-5)
        abs_coefs = [abs(t.coef) for t in e.terms]
        assert abs_coefs == sorted(abs_coefs, reverse=True)
    rep = neuron_report(run, 2, 17, "words")
    assert rep["terms"] == [t.to_dict() for t in doc.neurons[17].terms]
    assert len(rep["top_image_paths"]) == 4 and rep["top_image_paths"][0].endswith(".png")


def test_run_load_model_reloads_local_dir(env) -> None:
    m = env["run"].load_model()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(m.encode_image(x), env["model"].encode_image(x))


def test_cli_describe_and_show(env, capsys) -> None:
    run = env["run"].path
    main(["describe", str(run), "--pool", str(env["pool"]), "--terms", "5", "--layers", "1",
          "2", "--k", "3", "--no-progress", "--nonneg"])
    out = capsys.readouterr().out
    assert "NNOMP" in out and "words-nonneg-layer-01.json" in out
    doc = load_descriptions(run, "words", 1, nonneg=True)
    assert doc.method == "nnomp" and doc.k == 3
    assert all(t.coef > 0 for e in doc.neurons for t in e.terms)
    main(["show", str(run), "1", "5", "--pool", str(env["pool"]), "--nonneg"])
    out = capsys.readouterr().out
    assert "layer 1 neuron 5" in out and "tau=" in out and "nnomp" in out
    assert doc.neurons[5].terms[0].text in out
    main(["show", str(run), "2", "5", "--pool", "world"])
    assert "no 'world' descriptions" in capsys.readouterr().out
    # without --pool, show takes a pool the layer is described with
    main(["describe", str(run), "--pool", str(env["pool"]), "--terms", "4", "--layers", "2",
          "--k", "3", "--no-progress"])
    capsys.readouterr()
    main(["show", str(run), "2", "5"])
    out = capsys.readouterr().out
    assert "words (omp)" in out
    assert load_descriptions(run, "words", 2).neurons[5].terms[0].text in out


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


def _no_model_no_pool(monkeypatch) -> None:
    """Loading the model or embedding the pool fails the test."""
    import solens.describe.describe as describe_mod

    def refuse(*a, **k):
        raise AssertionError("the model was loaded or the pool embedded")

    monkeypatch.setattr(describe_mod, "embed_pool", refuse)
    monkeypatch.setattr(Run, "load_model", refuse)


@pytest.mark.parametrize("args,message", [
    (["--k", "25"], "--k 25 is more than the run's 24 images: give --k 24 or less "
                    "(Python: k=24)"),
    (["--terms", "17"], "--terms 17 is more than the run's embedding dimension (16): at most "
                        "16 terms can be independent; give --terms 16 or less "
                        "(Python: n_terms=16)"),
])
def test_cli_k_and_terms_checked_before_the_pool_is_embedded(env, capsys, monkeypatch, args,
                                                             message) -> None:
    _no_model_no_pool(monkeypatch)
    with pytest.raises(SystemExit) as e:
        main(["describe", str(env["run"].path), "--pool", str(env["pool"]), "--no-progress",
              *args])
    assert e.value.code == 2
    assert capsys.readouterr().err == f"solens: error: {message}\n"
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        describe_run(env["run"], str(env["pool"]), [2], **(
            {"k": 25} if args[0] == "--k" else {"n_terms": 17}))


def test_resolve_terms() -> None:
    assert resolve_terms(None, 512, 30000) == 128
    assert resolve_terms(None, 96, 30000) == 96
    assert resolve_terms(None, 512, 40) == 40
    assert resolve_terms(7, 16, 30) == 7
    with pytest.raises(InputError) as e:
        resolve_terms(20, 512, 10, "pool 'mine'")
    assert str(e.value) == ("--terms 20 is more than the 10 texts of pool 'mine': give --terms "
                            "10 or less (Python: n_terms=10)")


def test_cli_default_terms_capped_and_recorded(env, capsys) -> None:
    run = env["run"].path
    main(["describe", str(run), "--pool", str(env["pool"]), "--layers", "2", "--k", "4",
          "--no-progress"])
    out, err = capsys.readouterr()
    assert err == "--terms 16: the default 128 capped at the run's embedding dimension\n"
    assert "OMP 16 terms" in " ".join(out.split())
    doc = load_descriptions(run, "words", 2)
    assert doc.n_terms == 16 and max(len(e.terms) for e in doc.neurons) <= 16
    assert describe_run(env["run"], str(env["pool"]), [2], model=env["model"], k=4,
                        n_terms=None)[0].n_terms == 16


def test_v1_descriptions_read_through_descriptions_doc(tmp_path) -> None:
    from solens.groundtruth.score import description_terms

    """A descriptions file as solens 0.1.0 wrote it reads as ``DescriptionsDoc``; its
    ``to_dict()`` is the original dict; versions this solens does not read are refused in
    one line naming the file."""
    from solens.describe.describe import summary_rows
    from solens.errors import InputError
    from solens.store.protocol import DescriptionsDoc, NeuronDescription, PoolRecord, Term

    from .store_helpers import write_v1_run

    v1 = write_v1_run(tmp_path / "run", tmp_path / "imgs")
    run = Run.open(tmp_path / "run")
    doc = load_descriptions(run, "words", 1)
    want = v1["descriptions"]
    assert isinstance(doc, DescriptionsDoc) and doc.to_dict() == want
    assert list(doc.to_dict()) == list(want)
    assert DescriptionsDoc.from_dict(want) == doc
    assert doc.pool == PoolRecord("words", "", 4, "c" * 64) and doc.method == "omp"
    assert doc.neurons[2] == NeuronDescription(
        2, [Term("dog", 2, 1.5), Term("cat", 3, 0.125)], 0.75,
        want["neurons"][2]["tau"], 0.9, 0.6, 0.1, [3, 0])  # fmt: skip
    assert description_terms(doc) == {0: ["sea", "cat"], 1: ["ship", "cat"],
                                      2: ["dog", "cat"]}  # fmt: skip
    assert summary_rows(doc)["mean_cosine"] == pytest.approx(0.75)
    rep = neuron_report(run, 1, 2, "words")
    assert rep["terms"] == want["neurons"][2]["terms"] and rep["cosine"] == 0.75
    assert rep["top_image_paths"] == ["dog/img4.png", "cat/img1.png"]  # rows 3, 0
    doc.write(tmp_path / "d.json")
    assert (tmp_path / "d.json").read_text() == json.dumps(want, separators=(",", ":")) + "\n"
    path = descriptions_path(run, "words", 1)
    for change, message in [({"version": 2}, "version 2, newer than this solens"),
                            ({"version": 0}, "re-run `solens describe`"),
                            ({"format": "x"}, "not a solens descriptions document"),
                            ({"method": "lasso"}, "unknown method 'lasso'")]:
        path.write_text(json.dumps({**want, **change}))
        with pytest.raises(InputError, match=message) as e:
            load_descriptions(run, "words", 1)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="run `solens describe` first"):
        load_descriptions(run, "words", 2)


def test_describe_allow_partial_reaches_the_statistics(env, tmp_path) -> None:
    imgs = image_folder(tmp_path / "images", n=6, extras=False)

    def crash(k: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_effects(env["model"], imgs, [2], tmp_path / "run", chunk_size=3, progress=False,
                    workers=1, on_chunk=crash)
    run = Run.open(tmp_path / "run")
    with pytest.raises(Exception, match="incomplete"):
        describe_run(run, str(env["pool"]), model=env["model"], n_terms=2, k=2)
    docs = describe_run(run, str(env["pool"]), model=env["model"], n_terms=2, k=2,
                        allow_partial=True)
    assert docs[0].n_images == 3 and len(docs[0].neurons) == 128
