"""Every registry of the package equals its config mapping, and ``vmim list`` prints every registered name.

``vmim.registries`` pairs each family's package registry (the code that builds a kind) with the config mapping
(the kind's dataclass, what a config may name). They must hold the same names in the same order: a name in one
and not the other is a kind that validates but cannot be built, or one that is built but that no config accepts.
A new family or name is picked up here without editing this file.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

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
    "decoders": "video decoders",
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


def test_config_families_are_the_config_module_mappings():
    """The torch-free side reads the config's own mappings (a copy would drift)."""
    assert CONFIG_REGISTRIES["backbones"] == list(config.BACKBONES)
    for family in ("maskings", "targets", "heads", "losses", "datasets"):
        assert CONFIG_REGISTRIES[family] == list(config.FAMILIES[family].kinds), family
    assert CONFIG_REGISTRIES["token_sets"] == list(config.TOKEN_SETS)
    for family, names in CONFIG_REGISTRIES.items():
        assert names and len(set(names)) == len(names), f"{family}: empty or duplicated names {names}"


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
