"""Random weights are never silent: an open_clip name without weights is refused (API and
CLI) with its tags and how to ask for random weights; ``pretrained="random"`` gives them and
every record and report says so."""

from __future__ import annotations

import json
import time
from pathlib import Path

import open_clip
import pytest

import solens
from solens.describe.describe import describe_run, descriptions_path
from solens.describe.stats import compute_stats
from solens.errors import InputError, UnknownModelError
from solens.models.loading import load_model
from solens.models.model import RANDOM_WEIGHTS, Model, is_random
from solens.store import Run, run_effects

from .helpers import run_cli
from .store_helpers import TINY_CFG, image_folder, tiny_model

NAME = "solens-test-random-vit"  # an open_clip config without pretrained tags

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def small_config(tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("configs")
    (d / f"{NAME}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(d)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLENS_CACHE", str(tmp_path / "cache"))


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("solens: error:"), err
    return lines[0]


# --- the API ------------------------------------------------------------------------------
def test_load_model_without_weights_is_refused() -> None:
    t = time.perf_counter()
    with pytest.raises(UnknownModelError) as e:
        solens.load_model("ViT-B-32")
    msg = str(e.value)
    assert time.perf_counter() - t < 1.0  # refused before anything is built or fetched
    assert "\n" not in msg and "'ViT-B-32'" in msg
    assert "openai" in msg and "laion2b_s34b_b79k" in msg  # the tags are listed
    assert "pretrained='random' for randomly initialised weights" in msg
    with pytest.raises(UnknownModelError, match=r"ViT-B-32.*its tags: openai"):
        load_model("ViT-B/32")  # OpenAI-style spelling, same refusal
    with pytest.raises(UnknownModelError, match="no pretrained tags") as e:
        load_model(NAME)
    assert "pretrained='random' for randomly initialised weights" in str(e.value)
    with pytest.raises(UnknownModelError, match=r"no pretrained tags.*pretrained='random'"):
        load_model(NAME, "openai")


def test_random_weights_asked_for_explicitly() -> None:
    m = load_model(NAME, "random")
    assert m.info.pretrained == "random" and m.info.extra["weights"] == "random"
    assert is_random(m.info) and m.identity()["pretrained"] == "random"
    assert load_model(NAME, "RANDOM").info.pretrained == "random"
    with pytest.raises(UnknownModelError, match="not both"):
        load_model(NAME, "random", checkpoint="model.pt")
    clip = open_clip.create_model(NAME)
    wrapped = Model.from_open_clip(clip, name=NAME, pretrained="random")
    assert wrapped.info.pretrained == "random" and wrapped.info.extra == {"weights": "random"}
    # a model wrapped without a label stays as it was (its run identity is unchanged)
    plain = Model.from_open_clip(clip, name=NAME)
    assert plain.info.pretrained is None and plain.info.extra == {} and not is_random(plain.info)
    # runs written before "random" was the label: pretrained None, extra.weights "random"
    assert is_random({"name": NAME, "pretrained": None, "extra": {"weights": "random"}})


# --- the CLI and the reports --------------------------------------------------------------
def _effects(model: str, images: Path, out: Path, *extra: str) -> list[str]:
    return ["effects", "--model", model, "--images", str(images), "--out", str(out),
            "--layers", "1", "--device", "cpu", "--no-progress", "--workers", "1",
            *extra]  # fmt: skip


def test_cli_effects_without_weights_is_refused(tmp_path, capsys) -> None:
    images = image_folder(tmp_path / "imgs", n=2, extras=False)
    line = _one_line_error(*run_cli(_effects("ViT-B-32", images, tmp_path / "r"), capsys)[::2])
    assert "'ViT-B-32'" in line and "openai" in line and "--checkpoint PATH" in line
    assert "--pretrained random for randomly initialised weights" in line
    line = _one_line_error(*run_cli(_effects(NAME, images, tmp_path / "r"), capsys)[::2])
    assert "no pretrained tags" in line and "--pretrained random" in line
    assert not (tmp_path / "r").exists()


def test_random_run_is_flagged_everywhere(tmp_path, capsys) -> None:
    images = image_folder(tmp_path / "imgs", n=6, extras=False)
    out = tmp_path / "run"
    code, stdout, err = run_cli(_effects(NAME, images, out, "--pretrained", "random"), capsys)
    assert code == 0, err
    assert f"model {NAME} with {RANDOM_WEIGHTS}" in stdout  # the completion line

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["pretrained"] == "random"
    assert manifest["model"]["extra"]["weights"] == "random"
    run = Run.open(out)
    with pytest.raises(InputError, match="RANDOM WEIGHTS") as e:
        run.load_model()
    assert "\n" not in str(e.value) and "model=" in str(e.value)

    pool = tmp_path / "words.txt"
    pool.write_text("dog\ncat\nship\ncar\nred\nblue\n")
    line = _one_line_error(*run_cli(["describe", str(out), "--pool", str(pool), "--k", "2"],
                                 capsys)[::2])
    assert "RANDOM WEIGHTS" in line  # `solens describe` stops at Run.load_model

    docs = describe_run(run, str(pool), [1], model=load_model(NAME, "random"), n_terms=2, k=2)
    assert docs[0].model["pretrained"] == "random"
    header = descriptions_path(run, "words", 1, suffix=".md").read_text().splitlines()
    assert "RANDOM WEIGHTS" in header[0] and RANDOM_WEIGHTS in header[2]

    code, stdout, err = run_cli(["show", str(out), "1", "0", "--pool", str(pool)], capsys)
    assert code == 0, err
    assert stdout.startswith(RANDOM_WEIGHTS) and "layer 1 neuron 0" in stdout


def test_reports_of_trained_weights_say_nothing(tmp_path, capsys) -> None:
    from .store_helpers import save_local_model

    name = save_local_model(tmp_path / "model")
    images = image_folder(tmp_path / "imgs", n=4, extras=False)
    code, stdout, err = run_cli(_effects(name, images, tmp_path / "run"), capsys)
    assert code == 0, err
    assert "RANDOM" not in stdout
    compute_stats(Run.open(tmp_path / "run"), 1, 2)
    code, stdout, err = run_cli(["show", str(tmp_path / "run"), "1", "0"], capsys)
    assert code == 0 and "RANDOM" not in stdout


def test_run_of_a_model_given_in_python_is_not_reloaded(tmp_path) -> None:
    """pretrained=None (a model wrapped in Python, weights unknown): re-loading it by name
    would give other weights; the refusal says so instead of a misleading unknown model."""
    images = image_folder(tmp_path / "imgs", n=3, extras=False)
    run = run_effects(tiny_model(), images, [1], tmp_path / "run", progress=False, workers=1)
    with pytest.raises(InputError, match=r"given in Python.*not recorded") as e:
        run.load_model()
    assert "\n" not in str(e.value)
