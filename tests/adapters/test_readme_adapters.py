"""Every example of the README's "Models in memory" section runs as written."""
from __future__ import annotations

import os
import re
import runpy
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import bilinear_kernels as bk  # noqa: E402
from published_modules import ImageModel, PublishedMLP  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Models in memory"
NEEDS = {"transformers": ["transformers"], "TransformerLens": ["transformer_lens"], "SAELens": ["sae_lens"],
         "nnsight": ["nnsight", "transformers"], "The published bilinear models": []}


def examples() -> dict[str, str]:
    """{subsection title: its python code blocks joined}, from the README itself."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    out = {}
    for part in re.split(r"\n### ", text[start:end])[1:]:
        title, _, body = part.partition("\n")
        blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
        if blocks:
            out[title.strip()] = "\n".join(blocks)
    return out


def test_every_library_has_an_example():
    assert set(examples()) == set(NEEDS)


@pytest.mark.parametrize("title", sorted(NEEDS))
def test_readme_example_runs(title, tmp_path):
    for module in NEEDS[title]:
        pytest.importorskip(module)
    code = examples()[title]
    path = tmp_path / "example.py"  # a file on disk: nnsight reads the source of its `with` blocks
    path.write_text(code)
    torch.manual_seed(0)
    init = {}
    if title == "The published bilinear models":  # the papers' classes, mirrored in the tests
        lm = torch.nn.Module()
        lm.transformer = torch.nn.Module()
        lm.transformer.h = torch.nn.ModuleList([torch.nn.Module()])
        lm.transformer.h[0].mlp = PublishedMLP(8, 12, down="o")
        init = {"bk": bk, "model": lm, "image_model": ImageModel()}
    result = runpy.run_path(str(path), init_globals=init, run_name="readme_example")
    if title == "The published bilinear models":
        assert result["lm_layer"].d_hidden == 12 and result["image_layer"].p is None
