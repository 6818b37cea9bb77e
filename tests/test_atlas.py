"""The neuron atlas: its maths against the lens and numpy, the site it writes (also the
experiment pages, from fixture files written to the output contracts), resuming, the
command's errors, and the site in a real browser (headless Chromium via Playwright)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from solens.atlas.build import build_atlas, find_descriptions
from solens.atlas.figures import effective_terms, histograms, nearest
from solens.atlas.heatmaps import (
    MAX_ALPHA,
    heat_rgba,
    heat_scale,
    patch_contributions,
    trace_names_for,
)
from solens.describe.stats import load_stats
from solens.lens.second_order import token_projections
from solens.store.compute import default_preprocess
from solens.store.images import pixels
from solens.store.protocol import DescriptionsDoc

from .helpers import run_cli
from .test_ablate import described_run


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("atlas")
    model, run, _, docs = described_run(tmp)
    res = build_atlas(run, tmp / "site", model=model, n_top=3, progress=False)
    return {"model": model, "run": run, "docs": {d.layer: d for d in docs}, "tmp": tmp,
            "site": tmp / "site", "res": res}


# --- maths ---------------------------------------------------------------------------------
def test_patch_contributions_sum_to_the_projection_on_r_and_match_the_lens(env) -> None:
    model, run = env["model"], env["run"]
    rows = [0, 3, 7, 11]
    x = pixels(run.images(), default_preprocess(model), [run.row_candidates[r] for r in rows])
    trace = model.trace(x, trace_names_for([0, 1], model.info.n_layers))
    inv = np.asarray(run.inv_sigma_post[rows], dtype=np.float64)
    for layer in (0, 1):
        stats = load_stats(run, layer)
        r_coef = torch.from_numpy(np.array(stats.r_coef)).to(model.dtype)
        c = patch_contributions(model, trace, layer, r_coef)  # [B, T, N]
        assert c.shape == (4, model.info.n_tokens, run.n_neurons)
        # summed over tokens: inv_sigma_post * s . r_coef, from the run's stored arrays
        s = np.asarray(run.layer(layer).s[rows], dtype=np.float64)
        want = inv[:, None] * np.einsum("bnp,np->bn", s, np.asarray(stats.r_coef, np.float64))
        np.testing.assert_allclose(c.sum(1).double().numpy(), want, rtol=2e-4, atol=1e-6)
        # per token: the lens' token projections of neuron n on its own r_n
        for n in (0, 5, 77):
            r = torch.from_numpy(np.array(stats.r[n : n + 1])).to(model.dtype)
            tok = token_projections(model, trace, layer, r, neurons=[n])  # [B, 1, T, 1]
            torch.testing.assert_close(c[:, :, n], tok[:, 0, :, 0], rtol=1e-4, atol=1e-6)


def test_cached_heatmaps_are_the_top_images_patches(env) -> None:
    model, run, site = env["model"], env["run"], env["site"]
    heat = np.load(site / "cache" / "heat-layer-01.npy")  # [N, n_top, T - 1]
    doc = env["docs"][1]
    assert heat.shape == (run.n_neurons, 3, model.info.n_tokens - 1)
    n = 9
    rows = doc.neurons[n].top_images[:3]
    x = pixels(run.images(), default_preprocess(model), [run.row_candidates[r] for r in rows])
    trace = model.trace(x, trace_names_for([1], model.info.n_layers))
    r_coef = torch.from_numpy(np.array(load_stats(run, 1).r_coef)).to(model.dtype)
    c = patch_contributions(model, trace, 1, r_coef)[:, 1:, n].double().numpy()
    np.testing.assert_allclose(heat[n], c, rtol=1e-4, atol=1e-6)


def test_heat_colours_by_hand() -> None:
    rgba = heat_rgba(np.array([[1.0, -0.25], [0.0, -3.0]]), scale=1.0)
    assert rgba[0, 0].tolist() == [230, 70, 20, MAX_ALPHA]
    assert rgba[0, 1].tolist() == [30, 100, 235, round(MAX_ALPHA / 2)]  # sqrt(1/4)
    assert rgba[1, 0, 3] == 0 and rgba[1, 1, 3] == MAX_ALPHA  # clipped at the scale
    v = np.concatenate([np.linspace(-1, 1, 199), [50.0, np.nan]])
    assert heat_scale(v) == pytest.approx(np.percentile(np.abs(v[:-1]), 99))
    assert heat_scale(np.array([np.nan])) == 0.0


def test_effective_terms_by_hand() -> None:
    assert effective_terms([0.7]) == pytest.approx(1.0)
    assert effective_terms([1.0, -1.0]) == pytest.approx(2.0)
    assert effective_terms([2.0, 1.0]) == pytest.approx(25 / 17)
    assert effective_terms([0.5, 0.5, 0.5, -0.5]) == pytest.approx(4.0)
    assert effective_terms([]) == 0.0


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 30), st.integers(1, 6)),
              elements=st.floats(0, 50, width=32)),
       st.integers(1, 12))
def test_histograms_equal_numpy(values: np.ndarray, bins: int) -> None:
    counts, hi = histograms(values, bins)
    for j in range(values.shape[1]):
        v = values[:, j].astype(np.float64)
        want_hi = v.max() if v.max() > 0 else 1.0
        want, _ = np.histogram(v, bins=bins, range=(0.0, want_hi))
        assert hi[j] == want_hi
        np.testing.assert_array_equal(counts[j], want)


def test_nearest_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    r = rng.normal(size=(23, 5)).astype(np.float32)
    r[4] = 0.0
    idx, cos = nearest(r, 4, block=7)
    unit = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-30)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    for i in range(23):
        want = np.sort(sim[i])[::-1][:4]
        np.testing.assert_allclose(cos[i], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sim[i, idx[i]], want, rtol=1e-5, atol=1e-6)
        assert i not in idx[i]


# --- the site ------------------------------------------------------------------------------
def _data(site: Path) -> dict:
    text = (site / "data" / "neurons.js").read_text()
    return json.loads(text[text.index("=") + 1 : text.rindex(";")])


def test_site_lists_every_described_neuron(env) -> None:
    site, run, docs = env["site"], env["run"], env["docs"]
    N = run.n_neurons
    assert env["res"].n_neurons == 2 * N and env["res"].layers == [0, 1]
    data = _data(site)
    assert len(data["rows"]) == 2 * N and data["layers"] == [0, 1]
    for row in data["rows"][:: N // 4]:
        layer, n, href, terms = row[:4]
        e = docs[layer].neurons[n]
        assert terms == [("+" if t.coef >= 0 else "−") + t.text for t in e.terms]
        assert row[5] == pytest.approx(effective_terms([t.coef for t in e.terms]), abs=1e-3)
        page = (site / href).read_text()
        for t in e.terms:
            assert f"<td>{t.text}</td>" in page
        # its top images: thumbnails of the shown rows, with alt text, and a heatmap each
        for r in e.top_images[:3]:
            thumb = site / f"img/r{r:07d}.jpg"
            assert f'src="../../img/r{r:07d}.jpg"' in page and thumb.is_file()
            with Image.open(thumb) as im:
                assert im.size == (40, 40)  # the 48 x 40 images' centre square, not enlarged
        assert page.count('class="heat" src="data:image/png;base64,') == 3
        assert 'role="img"' in page and "tau = " in page
    for l in (0, 1):
        assert (site / f"layer-{l:02d}.html").read_text().count("<tr>") == N + 1
    html = "\n".join(p.read_text() for p in site.rglob("*.html"))
    assert not re.search(r"<img(?![^>]*\balt=\"[^\"]+\")[^>]*>", html), "an image without alt"
    manifest = json.loads((site / "manifest.json").read_text())
    assert manifest["format"] == "solens-atlas" and manifest["done"]["finished"]


def test_a_killed_build_resumes_with_the_pages_it_wrote(env, monkeypatch) -> None:
    import solens.atlas.build as B

    site = env["tmp"] / "resume"
    written: list[Path] = []
    real = B._write_page

    def killed_after_10(path: Path, text: str) -> None:
        if len(written) == 10:
            raise KeyboardInterrupt
        written.append(path)
        real(path, text)

    monkeypatch.setattr(B, "_write_page", killed_after_10)
    with pytest.raises(KeyboardInterrupt):
        build_atlas(env["run"], site, model=env["model"], n_top=3, progress=False)
    first = {p: p.stat().st_mtime_ns for p in written}
    monkeypatch.setattr(B, "_write_page", lambda p, t: (written.append(p), real(p, t)))
    # no model: the heatmaps come from the cache (a random-weights run cannot re-load it)
    build_atlas(env["run"], site, n_top=3, progress=False)
    pages = sorted((site / "neurons").rglob("*.html"))
    assert len(pages) == 2 * env["run"].n_neurons == len(written)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    assert (site / "neurons" / "layer-00" / "0000.html").read_text() == (
        env["site"] / "neurons" / "layer-00" / "0000.html").read_text()
    # again with the same inputs: nothing to write; a deleted page is written again
    written.clear()
    pages[5].unlink()
    build_atlas(env["run"], site, n_top=3, progress=False)
    assert written == [pages[5]]
    # new experiment files: every page anew (they show them), images and heatmaps kept
    (env["run"].path / "discover").mkdir()
    try:
        (env["run"].path / "discover" / "discover.json").write_text(json.dumps(
            {"format": "solens-discover", "version": 1, "images": []}))
        written.clear()
        build_atlas(env["run"], site, n_top=3, progress=False)
        assert len(written) == len(pages)
        assert 'href="../../discover.html"' in pages[0].read_text()
    finally:
        shutil.rmtree(env["run"].path / "discover")
    # other settings: everything again, and stale files go
    written.clear()
    (site / "cache" / "stale.npy").write_bytes(b"")
    build_atlas(env["run"], site, n_top=2, heatmaps=False, progress=False)
    assert len(written) == len(pages) and not (site / "cache").exists()
    assert "data:image/png" not in pages[0].read_text()


def _png(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(path)


def test_experiment_pages_follow_their_files(env, tmp_path) -> None:
    run = env["run"]
    runx = tmp_path / "run"
    shutil.copytree(run.path, runx, ignore=shutil.ignore_patterns("atlas"))
    from solens.store.run import Run

    r = Run.open(runx)
    N = r.n_neurons
    frac = [round(i / N, 4) for i in range(N)]
    (runx / "ablate").mkdir()
    (runx / "ablate" / "ablate.json").write_text(json.dumps({
        "format": "solens-ablate", "version": 1,
        "settings": {"run_id": r.run_id, "eval": {"spec": "synth:balanced:20:1"}, "k": 4},
        "m_capped": [1, 2],
        "layers": [{"layer": l, "baseline": 0.5,
                    "accuracy": {"second_order": 0.25, "rank1": 0.4875, "indirect": 0.3},
                    "text_reconstruction": {"words": {"1": 0.125, "2": 0.375}},
                    "pc1_variance": {"second_order": 0.6, "indirect": 0.1},
                    "frac_significant": frac} for l in (0, 1)]}))
    _png(runx / "ablate" / "fig3.png", 2000, 1000)
    seg = runx / "segment"
    seg.mkdir()
    (seg / "segment.json").write_text(json.dumps({
        "format": "solens-segment", "version": 1, "settings": {}, "n_images": 12,
        "split": "synth:balanced:12:0",
        "methods": {"second_order": {"pixel_acc": 0.781, "miou": 0.59, "map": 0.849},
                    "random_neurons": {"pixel_acc": 0.5, "miou": 0.3, "map": 0.4}}}))
    for i in range(3):
        _png(seg / "overlays" / f"{i:04d}.png", 1500, 500)
    pair = runx / "attack" / "dog-deer"
    pair.mkdir(parents=True)
    (pair / "summary.json").write_text(json.dumps({
        "format": "solens-attack", "version": 1, "pair": "dog:deer", "reliance": 0.42,
        "methods": {"random": {"mean": 0.05, "std": 0.01, "rates": [0.04, 0.06],
                               "words": ["tree"]},
                    "second_order": {"mean": 0.227, "std": 0.02, "rates": [0.2, 0.25],
                                     "words": ["antlers", "forest"]}},
        "n_images": 10, "repeats": 2}))
    _png(pair / "images" / "000.png", 512, 512)
    (runx / "attack" / "attack.json").write_text(json.dumps({"pairs": ["dog:deer"]}))
    (runx / "discover").mkdir()
    (runx / "discover" / "discover.json").write_text(json.dumps({
        "format": "solens-discover", "version": 1, "precision_at_5": 0.6, "baseline": 0.2,
        "images": [{"image": "a.png", "words": [{"text": "stripes", "score": 1.5,
                                                  "neurons": [[1, 3, 0.5]]}]}]}))

    site = tmp_path / "site"
    res = build_atlas(r, site, heatmaps=False, n_top=2, progress=False)
    assert res.sections == ["ablate", "segment", "attack", "discover"]
    index = (site / "index.html").read_text()
    for page in ("ablate.html", "segment.html", "attack.html", "discover.html"):
        assert f'href="{page}"' in index
    ab = (site / "ablate.html").read_text()
    assert "48.8%" in ab and "25.0%" in ab and "37.5%" in ab and "synth:balanced:20:1" in ab
    with Image.open(site / "files" / "ablate" / "fig3.png") as im:
        assert im.width == 1200  # a thumbnail
    data = _data(site)
    assert data["has_frac"] and [row[7] for row in data["rows"][:N]] == frac
    page = (site / "neurons" / "layer-01" / "0003.html").read_text()
    assert f"{100 * frac[3]:.1f}% of evaluation images" in page
    sg = (site / "segment.html").read_text()
    assert "78.1%" in sg and "59.0%" in sg and "random neurons" in sg
    assert sg.count('src="files/segment/') == 3
    with Image.open(site / "files" / "segment" / "0000.png") as im:
        assert im.size == (720, 240)
    at = (site / "attack.html").read_text()
    assert "dog:deer" in at and "22.7%" in at and "antlers, forest" in at
    row = '<th scope="row">'
    assert at.index(row + "second order") < at.index(row + "random")  # the contract's order
    assert (site / "files" / "attack" / "dog-deer" / "000.png").is_file()
    dc = (site / "discover.html").read_text()
    assert "stripes (1.5)" in dc and "60.0%" in dc
    # a section whose file is gone disappears (and so does its page)
    shutil.rmtree(runx / "segment")
    res = build_atlas(r, site, heatmaps=False, n_top=2, progress=False)
    assert "segment" not in res.sections and not (site / "segment.html").exists()
    assert 'href="segment.html"' not in (site / "index.html").read_text()


# --- errors --------------------------------------------------------------------------------
def test_run_without_descriptions_names_solens_describe(env, capsys) -> None:
    from solens.store import run_effects

    bare = env["tmp"] / "bare-run"
    run_effects(env["model"], env["tmp"] / "ref", [1], bare, batch_size=8, progress=False,
                workers=0)
    code, _out, err = run_cli(["atlas", str(bare)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("solens: error: "), err
    assert "no neuron descriptions" in lines[0] and f"`solens describe {bare}`" in lines[0]
    assert not (bare / "atlas").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--pool", "nosuch"], "`solens describe {run} --pool nosuch`"),
    (["--layers", "5"], "no neuron descriptions of layers [5]"),
    ([], "or build the atlas without heatmaps (--no-heatmaps)"),
    (["--out", "{busy}"], "holds no solens atlas"),
])
def test_command_errors(env, capsys, args, message) -> None:
    run = env["run"].path
    busy = env["tmp"] / "busy"
    busy.mkdir(exist_ok=True)
    (busy / "notes.txt").write_text("mine")
    args = [a.format(busy=busy) for a in args]
    code, _out, err = run_cli(["atlas", str(run), "--out", str(env["tmp"] / "cli"), *args,
                              "--no-progress"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("solens: error: "), err
    assert message.format(run=run) in lines[0]


def test_command_writes_the_site(env, capsys) -> None:
    out = env["tmp"] / "cli-ok"
    code, stdout, err = run_cli(["atlas", str(env["run"].path), "--out", str(out),
                                 "--no-heatmaps", "--n-top", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert f"wrote {out / 'index.html'}: {2 * env['run'].n_neurons} neurons" in stdout
    pool, files = find_descriptions(env["run"])
    assert pool == "words" and sorted(files) == [0, 1]
    assert DescriptionsDoc.read(files[0]).pool.name == "words"


# --- in a browser --------------------------------------------------------------------------
def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright (Python) is not installed (pip install -e '.[dev]')")
    return exe


def test_site_in_headless_chromium(env, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    site, doc = env["site"], env["docs"][0]
    word = "stripes"
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((site / "index.html").as_uri())
        total = 2 * env["run"].n_neurons
        assert page.locator("#rows tr").count() == total
        # keyboard: "/" jumps to the search box, then typing filters the index
        page.keyboard.press("/")
        assert page.evaluate("document.activeElement.id") == "q"
        page.keyboard.type(word)
        want = sum(1 for d in env["docs"].values() for e in d.neurons
                   if any(t.text == word for t in e.terms))
        page.wait_for_function(f"document.querySelectorAll('#rows tr').length == {want}")
        assert 0 < want < total
        terms = page.locator("#rows td.terms").all_inner_texts()
        assert all(word in t for t in terms)
        assert page.inner_text("#count").startswith(f"{want} of {total}")
        # sort by polysemy, largest first
        page.select_option("#sort", "polysemy")
        vals = [float(v) for v in page.locator("#rows td:nth-child(4)").all_inner_texts()]
        assert vals == sorted(vals, reverse=True)
        page.screenshot(path=str(tmp_path / "index.png"))
        # a neuron page: its terms and its images, loaded
        first = page.locator("#rows a").first
        first.focus()
        with page.expect_navigation():
            page.keyboard.press("Enter")
        layer, n = (int(v) for v in re.findall(r"layer-(\d+)/(\d+)\.html", page.url)[0])
        e = env["docs"][layer].neurons[n]
        assert page.locator("#terms tbody tr").count() == len(e.terms)
        assert page.locator("#terms tbody td:first-child").all_inner_texts() == [
            t.text for t in e.terms]
        imgs = page.locator("#gallery img.base")
        assert imgs.count() == 3
        assert all(page.evaluate("(el) => el.complete && el.naturalWidth > 0", h)
                   for h in imgs.element_handles())
        page.screenshot(path=str(tmp_path / "neuron.png"), full_page=True)
        browser.close()
    assert doc.neurons and not errors, errors
    assert (tmp_path / "index.png").stat().st_size > 0
    assert (tmp_path / "neuron.png").stat().st_size > 0
