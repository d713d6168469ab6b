"""Every registry of the package equals its config mapping, every kind a config may name builds, and ``vmim list``
prints every registered name.

``vmim.registries`` pairs each family's package registry (the code that builds a kind) with the config mapping
(the kind's dataclass, what a config may name). They must hold the same names in the same order: a name in one
and not the other is a kind that validates but cannot be built, or one that is built but that no config accepts.
A new family or name is picked up here without editing this file.

Independent checks only: ``registries.config_registries()`` *is* ``list(config.X)`` for each mapping, so comparing the
two (as a former test did) could not fail. Instead, each kind of the config is handed, with its dataclass defaults, to
the package's own builder, and what comes back is used (a mask drawn, a loss computed, a head and a backbone built).
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vmim import config, registries
from vmim.models import BACKBONES, create_backbone

ROOT = Path(__file__).resolve().parents[1]
CONFIG_REGISTRIES = registries.config_registries()
FAMILIES = list(CONFIG_REGISTRIES)

# Section title of each family in the ``vmim list`` output (a new family must be printed, and added here).
LIST_SECTIONS = {
    "backbones": "backbones", "maskings": "maskings", "targets": "targets", "heads": "heads", "losses": "losses",
    "datasets": "dataset kinds", "token_sets": "token sets", "index_formats": "index formats",
    "decoders": "video decoders", "poolings": "poolings",
}


@functools.lru_cache(maxsize=1)
def _package_registries() -> dict[str, list[str]] | ImportError:
    try:
        return registries.package_registries()
    except ImportError as err:
        return err


def package_registries() -> dict[str, list[str]]:
    """The package's registries; a registry the package does not export fails the calling test, naming it."""
    found = _package_registries()
    if isinstance(found, ImportError):
        pytest.fail(f"vmim.registries.package_registries() cannot import a package registry: {found}", pytrace=False)
    return found


def test_no_family_is_empty_or_names_a_kind_twice():
    """A tuple registry (index formats, decoders) can repeat a name, a dict cannot; neither may be empty."""
    for family, names in [*CONFIG_REGISTRIES.items(), *package_registries().items()]:
        assert names and len(set(names)) == len(names), f"{family}: empty or duplicated names {names}"


def defaults(family: str, kind: str):
    """The config dataclass of ``kind`` with its defaults, as a config naming only the kind gets it."""
    fam = config.FAMILIES[family]
    return fam.kinds[kind](**{fam.kind_field: kind})


@pytest.mark.parametrize("kind", list(config.MASKINGS))
def test_every_masking_kind_of_the_config_draws_a_mask(kind):
    from vmim.masking import build_mask_generator

    generator = build_mask_generator(defaults("maskings", kind))
    grid = (8, 14, 14)  # 16 frames of 224 px in 2 x 16 x 16 tubelets
    mask = generator(grid, np.random.default_rng(0))
    if isinstance(mask, np.ndarray):  # a mask over the grid; a windowed one (LoMaR) carries its own layout
        assert mask.dtype == bool and mask.shape == (8 * 14 * 14,), (mask.dtype, mask.shape)
        assert mask.sum() == generator.num_masked(grid) > 0
    else:
        assert mask is not None


@pytest.mark.parametrize("kind", list(config.LOSSES))
def test_every_loss_kind_of_the_config_is_a_per_token_loss(kind):
    from vmim.meta_arch import build_loss

    loss = build_loss(defaults("losses", kind))
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 8, generator=gen), torch.randn(2, 5, 8, generator=gen)
    apart, same = loss(pred, target), loss(target, target)
    assert apart.shape == same.shape == (2, 5)
    assert torch.all(apart > 0) and torch.allclose(same, torch.zeros(2, 5), atol=1e-6)


@pytest.mark.parametrize("kind", list(config.HEADS))
def test_every_head_kind_of_the_config_builds(kind):
    from vmim.models.heads import build_head

    head = build_head(defaults("heads", kind), 32, 48)
    assert isinstance(head, torch.nn.Module) and sum(p.numel() for p in head.parameters()) > 0


@pytest.mark.parametrize("name", list(config.BACKBONES))
def test_every_backbone_name_of_the_config_builds(name):
    with torch.device("meta"):
        model = create_backbone(defaults("backbones", name))
    assert isinstance(model, torch.nn.Module) and model.embed_dim > 0


def test_package_and_config_name_the_same_families():
    assert list(package_registries()) == FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_package_registry_equals_config_mapping(family):
    package, cfg = package_registries()[family], CONFIG_REGISTRIES[family]
    assert set(package) == set(cfg), (f"{family}: only in the package {sorted(set(package) - set(cfg))}, "
                                      f"only in vmim.config {sorted(set(cfg) - set(package))}")
    assert package == cfg, f"{family}: same names in another order: package {package} vs vmim.config {cfg}"


def test_decoder_maskings_are_the_grid_maskings_plus_none():
    """Every masking over the grid can be a decoder mask; a windowed one (LoMaR: over window tokens) cannot."""
    grid_kinds = [k for k, c in config.MASKINGS.items() if getattr(c, "decoder_mask", True)]
    assert "window" in config.MASKINGS and "window" not in grid_kinds
    assert list(config.DECODER_MASKINGS) == ["none", *grid_kinds]
    assert all(config.DECODER_MASKINGS[k] is config.MASKINGS[k] for k in grid_kinds)


# ----------------------------------------------------------------------------------------------------
# vmim list
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def list_output() -> str:
    proc = subprocess.run([sys.executable, "-m", "vmim.cli", "list"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def sections(text: str) -> dict[str, list[str]]:
    """Title (without the parenthesised config key) -> the first word of each indented line under it."""
    out: dict[str, list[str]] = {}
    title = None
    for line in text.splitlines():
        if line and not line[0].isspace():
            assert line.endswith(":"), f"unexpected line {line!r}"
            title = line[:-1].split(" (")[0]
            out[title] = []
        elif line.strip():
            assert title is not None, f"a name before any section title: {line!r}"
            out[title].append(line.split()[0])
    return out


def test_list_has_a_section_per_family(list_output):
    assert set(LIST_SECTIONS) == set(FAMILIES), "a new registry family: add its `vmim list` section title here"
    assert sorted(sections(list_output)) == sorted(LIST_SECTIONS.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_list_names_every_registered_name(list_output, family):
    listed = sections(list_output)[LIST_SECTIONS[family]]
    assert listed == CONFIG_REGISTRIES[family]




@pytest.mark.parametrize("name", list(BACKBONES))
def test_list_prints_backbone_parameter_count(list_output, name):
    """The count is that of the backbone the config's defaults build (16 px patches, 2-frame tubelets)."""
    match = re.search(rf"^\s+{re.escape(name)}\s+(\d+\.\d)M params\b", list_output, re.MULTILINE)
    assert match, f"no parameter count for {name} in:\n{list_output}"
    cls = config.BACKBONES[name]
    with torch.device("meta"):
        model = create_backbone(cls(**{config.FAMILIES["backbones"].kind_field: name}))
    count = sum(p.numel() for p in model.parameters())
    assert float(match.group(1)) == pytest.approx(count / 1e6, abs=0.051)


def test_list_without_params_names_every_backbone():
    proc = subprocess.run([sys.executable, "-m", "vmim.cli", "list", "--no-params"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    listed = sections(proc.stdout)
    assert listed["backbones"] == list(config.BACKBONES) and "M params" not in proc.stdout
    assert listed["maskings"] == list(config.MASKINGS)
