"""The documentation pages under docs/ and the README: every code example runs as written, and the
API reference covers every public name.

A page is cut at its `## ` headings; each part's examples run in order, in one namespace, in a
temporary folder holding tiny checkpoints named as the examples name them. Python blocks are
executed; in `bash` blocks each `bilinear-kernels ...` line runs through the command's own `main`.
Install, launch and benchmark lines (LAUNCH_ONLY) are not run here: they need a network, several
processes or minutes (the benchmarks have their own smoke tests).
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import bilinear_kernels as bk  # noqa: E402
from bilinear_kernels import cli  # noqa: E402
from published_modules import ImageModel, MixedAutoencoder, PublishedMLP  # noqa: E402
from tests.tiny_checkpoints import write_bilinear_image, write_bilinear_lm, write_plain  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
LAUNCH_ONLY = ("pip ", "bash ", "torchrun ", "python -m benchmarks")
# the optional libraries a part's examples import
NEEDS = {
    ("guides/adapters.md", "transformers"): ["transformers"],
    ("guides/adapters.md", "TransformerLens"): ["transformer_lens"],
    ("guides/adapters.md", "nnsight"): ["nnsight", "transformers"],
    ("guides/features.md", "SAELens"): ["sae_lens"],
    ("guides/networks.md", "A whole image model from a checkpoint"): ["matplotlib"],
}


def published_lm():
    """A module laid out as the published language models' (transformer.h[i].mlp)."""
    lm = torch.nn.Module()
    lm.transformer = torch.nn.Module()
    lm.transformer.h = torch.nn.ModuleList([torch.nn.Module()])
    lm.transformer.h[0].mlp = PublishedMLP(8, 12, down="o")
    return lm


# the objects an example takes as given (a model "loaded as its authors load it"), built small
GIVEN = {
    ("guides/adapters.md", "The published bilinear models"): lambda: {"model": published_lm(),
                                                                      "image_model": ImageModel()},
    ("guides/features.md", "Bilinear autoencoders"): lambda: {
        "autoencoder": MixedAutoencoder(24, 2048, bottleneck=8).double()},
    ("guides/networks.md", "Whole networks"): lambda: {"image_model": ImageModel()},
    # test data for the "mnist" checkpoint that write_checkpoints writes (16 inputs, 5 classes)
    ("guides/networks.md", "A whole image model from a checkpoint"): lambda: {
        "x_test": torch.randn(20, 16, dtype=torch.float64), "y_test": torch.randint(0, 5, (20,))},
}


def parts() -> dict[tuple[str, str], list[tuple[str, str]]]:
    """{(page, part title): [(language, code), ...]} for every part holding a python or bash block."""
    out = {}
    for path in [DOCS.parent / "README.md", *sorted(DOCS.rglob("*.md"))]:
        if "_build" in path.parts:
            continue
        page = path.relative_to(DOCS).as_posix() if path.is_relative_to(DOCS) else path.name
        for part in re.split(r"\n## ", "\n" + path.read_text()):
            title = part.strip().splitlines()[0].lstrip("# ").strip() if part.strip() else ""
            blocks = re.findall(r"^```(python|bash)\n(.*?)^```", part, flags=re.S | re.M)
            if blocks:
                out[(page, title)] = blocks
    return out


PARTS = parts()


def write_checkpoints(folder: Path) -> None:
    """The files the examples name: a language model, an image model, a plain layer, SAE weights."""
    write_bilinear_lm(folder / "model", n_layer=13, n_vocab=2048)
    write_bilinear_image(folder / "mnist")
    write_plain(folder / "layer.safetensors")
    save_file({"W_enc": torch.randn(8, 4, generator=torch.Generator().manual_seed(0))},
              str(folder / "sae.safetensors"))


def command_lines(code: str) -> list[str]:
    joined = code.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def run_command(line: str) -> None:
    if line.startswith(LAUNCH_ONLY):
        return
    assert line.startswith("bilinear-kernels "), f"a command the page's test cannot run: {line}"
    argv = shlex.split(line, comments=True)[1:]
    if argv[0] == "decompose":
        argv.append("--quiet")
    assert cli.main(argv) == 0, line


def test_the_pages_have_examples_and_the_known_ones_are_there():
    for key in [*NEEDS, *GIVEN]:
        assert key in PARTS, f"{key} has no example any more: update NEEDS / GIVEN"
    assert len(PARTS) >= 15


@pytest.mark.parametrize("key", sorted(PARTS), ids=lambda key: f"{key[0]}:{key[1]}")
def test_example_runs_as_written(key, tmp_path, monkeypatch):
    for module in NEEDS.get(key, []):
        pytest.importorskip(module)
    write_checkpoints(tmp_path)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {"__name__": "docs_example", **GIVEN.get(key, dict)()}
    for number, (language, code) in enumerate(PARTS[key]):
        if language == "bash":
            for line in command_lines(code):
                run_command(line)
        else:
            # a file on disk: nnsight reads the source of its `with` blocks
            path = tmp_path / f"example_{number}.py"
            path.write_text(code)
            exec(compile(code, str(path), "exec"), namespace)


def test_every_public_name_is_in_the_reference_with_a_docstring():
    reference = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^\.\. auto\w+:: bilinear_kernels\.(\w+)$", reference, flags=re.M))
    public = set(bk.__all__) - {"__version__"}
    assert public - documented == set(), "public names missing from docs/api.md"
    assert documented - public == set(), "docs/api.md documents names that are not public"
    for name in public:
        assert (getattr(bk, name).__doc__ or "").strip(), f"bk.{name} has no docstring"


def test_the_readme_links_point_at_files_that_exist():
    readme = DOCS.parent / "README.md"
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme.read_text())
    assert links, "the README links into the pages"
    for link in links:
        if not link.startswith(("http://", "https://")):
            assert (readme.parent / link).is_file(), f"README links to a missing file: {link}"
