"""Error messages a CLI user sees: one line, in option names (``--checkpoint``) with the
Python spelling beside them, and a mistyped ``--model`` answered without loading torch."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import open_clip
import pytest

from solens.cli import main
from solens.errors import InputError, UnknownModelError, UnsupportedModelError
from solens.models import catalog, hub
from solens.models.catalog import check_model_name, unknown_model_error
from solens.models.loading import load_model
from tests.helpers import tiny_model
from tests.store_helpers import save_local_model

REPO = Path(__file__).resolve().parents[1]


def one_line_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("solens: error: "), err
    return err.removeprefix("solens: error: ").rstrip("\n")


# --- unknown model names ------------------------------------------------------------------------
def test_unknown_model_close_names() -> None:
    known = ["ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", "solens-tiny"]
    assert str(unknown_model_error("ViT-B-99", known)) == (
        "unknown model 'ViT-B-99'; did you mean ViT-B-32, ViT-B-16, ViT-L-14?"
    )
    assert str(unknown_model_error("zzz", known)) == (
        "unknown model 'zzz'; a model is an open_clip name (open_clip.list_models()), "
        "hf:ORG/NAME or hf:FOLDER (transformers CLIP), hf-hub:ORG/REPO, local-dir:FOLDER or "
        "solens-tiny"
    )


def test_unknown_model_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "weights.pt"
    f.write_bytes(b"x")
    assert str(unknown_model_error(str(f), ["ViT-B-32"])) == (
        f"unknown model {str(f)!r}: it is a file; pass it with --checkpoint PATH and its "
        "architecture with --model NAME (Python: load_model(NAME, checkpoint=PATH))"
    )


def test_check_model_name_agrees_with_load_model() -> None:
    for name in ("ViT-B-32", "ViT-B/32", "solens-tiny", "hf-hub:org/repo", "local-dir:/x"):
        check_model_name(name)
    with pytest.raises(UnknownModelError) as e:
        check_model_name("ViT-B-99")
    with pytest.raises(UnknownModelError) as e2:
        load_model("ViT-B-99")
    assert str(e.value) == str(e2.value)
    assert str(e.value).startswith("unknown model 'ViT-B-99'; did you mean ViT-B-32")


def test_architecture_names_without_importing_open_clip(monkeypatch) -> None:
    bundled = [n for n in open_clip.list_models() if not n.startswith("solens-test")]
    monkeypatch.delitem(sys.modules, "open_clip")
    assert catalog.architecture_names() == sorted(bundled)


def test_cli_unknown_model_without_torch(tmp_path: Path) -> None:
    """``solens effects --model ViT-B-99`` answers before torch or open_clip is imported."""
    code = (
        "import sys\n"
        "from solens.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules, 'open_clip' in sys.modules)\n"
    )
    (tmp_path / "imgs").mkdir()
    args = ["effects", "--model", "ViT-B-99", "--pretrained", "openai", "--layers", "1",
            "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=120)  # fmt: skip
    assert p.stdout.split() == ["2", "False", "False"], p.stdout + p.stderr
    assert p.stderr.startswith("solens: error: unknown model 'ViT-B-99'; did you mean ViT-B-32")
    assert p.stderr.count("\n") == 1


# --- weights options: CLI names, Python names beside them ---------------------------------------
def test_tiny_refuses_checkpoint_and_quick_gelu(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnknownModelError) as e:
        load_model("solens-tiny", checkpoint="x.pt")
    assert str(e.value) == (
        "solens-tiny carries its own weights: drop --checkpoint (Python: checkpoint=)"
    )
    fake = types.ModuleType("solens.tiny.model")
    fake.load_tiny = lambda device="cpu": tiny_model()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "solens.tiny.model", fake)
    with pytest.raises(UnsupportedModelError) as e2:
        load_model("solens-tiny", quick_gelu=True)
    assert str(e2.value) == (
        "solens-tiny was trained without QuickGELU: drop --quick-gelu (Python: quick_gelu=)"
    )


def test_weights_given_twice(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError) as e:
        load_model("hf-hub:org/repo", "openai")
    assert str(e.value) == (
        "hf-hub:org/repo carries its own weights: drop --pretrained/--checkpoint "
        "(Python: pretrained=/checkpoint=)"
    )
    with pytest.raises(UnknownModelError) as e:
        load_model("ViT-B-32", "openai", checkpoint=tmp_path / "w.pt")
    assert str(e.value) == (
        "give --pretrained TAG or --checkpoint PATH, not both (Python: pretrained= or "
        "checkpoint=)"
    )


def test_cli_tiny_with_checkpoint(tmp_path: Path, capsys) -> None:
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    line = one_line_error(["effects", "--model", "solens-tiny", "--checkpoint", "w.pt",
                           "--layers", "1", "--images", str(tmp_path / "imgs"), "--out",
                           str(tmp_path / "run"), "--device", "cpu"], capsys)  # fmt: skip
    assert line == "solens-tiny carries its own weights: drop --checkpoint (Python: checkpoint=)"


def test_offline_weights_message() -> None:
    cfg = {"url": "https://example.org/w.pt"}
    assert str(hub._not_available("ViT-B-32", "openai", cfg)) == (
        "weights for ViT-B-32 pretrained='openai' are not available offline (not in the local "
        "cache); download https://example.org/w.pt where there is network and pass the file "
        "with --model ViT-B-32 --checkpoint PATH (Python: checkpoint=PATH)"
    )


# --- images none of which decode ----------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
def test_no_decodable_image_gives_the_first_reason(tmp_path: Path) -> None:
    from solens.store import Run, run_effects

    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (images / name).write_bytes(b"not a png")
    model = load_model(save_local_model(tmp_path / "model"))
    with pytest.raises(InputError) as e:
        run_effects(model, images, [1], tmp_path / "run", progress=False, workers=1)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("none of the 3 images could be decoded (first: a.png: "
                          "UnidentifiedImageError: cannot identify image file")  # fmt: skip
    assert msg.endswith(f"; all reasons in {tmp_path / 'run' / 'manifest.json'} 'skipped'); "
                        "the run is not complete: fix or replace the images and re-run the same "
                        "command")  # fmt: skip
    assert not Run.open(tmp_path / "run").complete


def test_demo_k_above_n_fails_before_any_work(tmp_path: Path, capsys) -> None:
    line = one_line_error(["demo", "--n", "50", "--out", str(tmp_path / "demo")], capsys)
    assert line == "--k 100 is more than the run's 50 images: give --k 50 or less (Python: k=50)"
    assert not (tmp_path / "demo").exists()
