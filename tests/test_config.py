"""Config schema, YAML inheritance, CLI overrides and error messages."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vmim import config
from vmim.config import ConfigError, config_to_yaml, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p for p in (ROOT / "configs").rglob("*") if p.suffix in (".yaml", ".yml"))

# The smallest valid set of overrides on top of the dataclass defaults.
MINIMAL = ["targets.pixel.weight=1", "data.datasets.digits_images.weight=1"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def raises_config_error(key: str, *fragments: str):
    """Context manager: ConfigError whose .key is ``key`` and whose message holds the quoted key and fragments."""
    return _Raises(key, fragments)


class _Raises:
    def __init__(self, key, fragments):
        self.key, self.fragments = key, fragments

    def __enter__(self):
        self._ctx = pytest.raises(ConfigError)
        self.info = self._ctx.__enter__()
        return self.info

    def __exit__(self, *exc):
        suppressed = self._ctx.__exit__(*exc)
        err = self.info.value
        message = str(err)
        assert err.key == self.key, message
        assert f"'{self.key}'" in message, message
        for fragment in self.fragments:
            assert fragment in message, message
        return suppressed


# ----------------------------------------------------------------------------------------------------
# Shipped configs
# ----------------------------------------------------------------------------------------------------


def test_config_dir_is_not_empty():
    assert CONFIG_FILES, "no YAML files found under configs/"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_loads_and_validates(path):
    # configs/methods/ are method recipes without data: they run once a dataset is added
    # (An entry's class is picked from its kind by construction: asserting it here could not fail.)
    extra = ["data.datasets.digits_images.weight=1"] if path.parent.name == "methods" else []
    cfg = load_config(path, extra)
    if cfg.task == "finetune":  # a supervised recipe: labeled eval data, no targets or masks
        assert path.parent.name == "methods" or cfg.eval.datasets, "a recipe names its evaluation data"


def test_demo_config_values():
    cfg = load_config(ROOT / "configs/demo/digits.yaml")
    assert cfg.model.backbone == "vit_tiny" and cfg.model.patch_size == 4 and cfg.data.img_size == 16
    assert cfg.targets["pixel"].kind == "pixel" and cfg.targets["pixel"].norm == "joint"
    assert cfg.data.datasets["digits_clips"].weight == 0.5
    assert cfg.optim.min_lr == pytest.approx(1e-5)  # "1e-5" is a string to YAML 1.1; the schema makes it a float


def test_defaults_need_a_target_and_a_dataset():
    with raises_config_error("targets"):
        load_config(None, ["data.datasets.digits_images.weight=1"])
    with raises_config_error("data.datasets"):
        load_config(None, ["targets.pixel.weight=1"])
    cfg = load_config(None, MINIMAL)
    assert cfg.model.patch_size == 16 and cfg.targets["pixel"].kind == "pixel"
    assert cfg.data.datasets["digits_images"].kind == "digits_images"


# ----------------------------------------------------------------------------------------------------
# Misspelled keys
# ----------------------------------------------------------------------------------------------------


def test_typo_on_command_line_suggests_key():
    with raises_config_error("model.pach_size", "did you mean 'model.patch_size'"):
        load_config(None, MINIMAL + ["model.pach_size=8"])


def test_typo_in_yaml_file_suggests_key(tmp_path):
    path = write(tmp_path / "typo.yaml", """
        model:
          backbone: vit_test
          pach_size: 8
        targets:
          pixel: {weight: 1.0}
        data:
          datasets:
            digits_images: {weight: 1.0}
        """)
    with raises_config_error("model.pach_size", "did you mean 'model.patch_size'"):
        load_config(path)


def test_typo_in_yaml_inside_base_file(tmp_path):
    write(tmp_path / "base.yaml", """
        optim:
          warmup_epoch: 5
        """)
    path = write(tmp_path / "child.yaml", """
        _base_: base.yaml
        targets:
          pixel: {weight: 1.0}
        data:
          datasets:
            digits_images: {weight: 1.0}
        """)
    with raises_config_error("optim.warmup_epoch", "did you mean 'optim.warmup_epochs'"):
        load_config(path)


def test_typo_inside_target_entry():
    with raises_config_error("targets.hog.nbin", "did you mean 'targets.hog.nbins'"):
        load_config(None, MINIMAL + ["targets.hog.nbin=3"])
    with raises_config_error("targets.hog.cel_size", "did you mean 'targets.hog.cell_size'"):
        load_config(None, MINIMAL + ["targets.hog.cel_size=4"])
    with raises_config_error("targets.pixel.head.dpth", "did you mean 'targets.pixel.head.depth'"):
        load_config(None, MINIMAL + ["targets.pixel.head.dpth=4"])


@pytest.mark.parametrize("override, key, owner", [
    ("targets.hog.norm=joint", "targets.hog.norm", "pixel targets"),  # a pixel key on a HOG target
    ("targets.pixel.nbins=3", "targets.pixel.nbins", "hog targets"),
    ("masking.block_min_area=0.5", "masking.block_min_area", "cube maskings"),  # tube masking has no blocks
    ("targets.pixel.loss.beta=2", "targets.pixel.loss.beta", "smooth_l1 losses"),  # mse has no beta
    ("data.datasets.digits_images.stride=2", "data.datasets.digits_images.stride", "video datasets"),
])
def test_key_of_another_kind_is_rejected_naming_its_owner(override, key, owner):
    with raises_config_error(key, owner):
        load_config(None, MINIMAL + [override])


def test_changing_a_kind_starts_the_entry_afresh():
    cfg = load_config(ROOT / "configs/demo/digits.yaml", ["targets.pixel.loss.kind=smooth_l1",
                                                          "targets.pixel.loss.beta=2"])
    assert type(cfg.targets["pixel"].loss) is config.SmoothL1LossConfig and cfg.targets["pixel"].loss.beta == 2.0
    cfg = load_config(ROOT / "configs/demo/digits.yaml", ["model.dense=true", "targets.pixel.head.kind=linear"])
    assert type(cfg.targets["pixel"].head) is config.LinearHeadConfig  # the demo's decoder keys did not carry over


def test_typo_inside_target_entry_in_yaml(tmp_path):
    path = write(tmp_path / "typo.yaml", """
        targets:
          hog:
            weight: 1.0
            head: {dept: 2}
        data:
          datasets:
            digits_images: {weight: 1.0}
        """)
    with raises_config_error("targets.hog.head.dept", "did you mean 'targets.hog.head.depth'"):
        load_config(path)


def test_typo_inside_dataset_entry():
    with raises_config_error("data.datasets.digits_images.wieght", "did you mean 'data.datasets.digits_images.weight'"):
        load_config(None, MINIMAL + ["data.datasets.digits_images.wieght=2"])


def test_typo_in_section_name():
    with raises_config_error("modle", "did you mean 'model'"):
        load_config(None, MINIMAL + ["modle.patch_size=8"])


def test_override_without_value():
    with pytest.raises(ConfigError, match="model.patch_size"):
        load_config(None, MINIMAL + ["model.patch_size"])


# ----------------------------------------------------------------------------------------------------
# Invalid values
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, key, fragments", [
    ("masking.ratio_video=1.0", "masking.ratio_video", ()),
    ("masking.ratio_video=0", "masking.ratio_video", ()),
    ("masking.ratio_image=1.5", "masking.ratio_image", ()),
    ("model.patch_size=10", "model.patch_size", ("224",)),  # 224 % 10 != 0
    ("model.tubelet_size=3", "model.tubelet_size", ("16",)),  # 16 frames % 3 != 0
    ("masking.kind=tubes", "masking.kind", ("did you mean 'tube'",)),
    ("targets.pixel.head.kind=linear", "targets.pixel.head.kind", ("model.dense",)),  # nothing at masked tokens
    ("model.pos_embed=rope", "model.pos_embed", ("sincos_3d",)),
    ("model.backbone=vit_bse", "model.backbone", ("did you mean 'vit_base'",)),
    ("targets.pixel.kind=hogg", "targets.pixel.kind", ("hog",)),
    ("targets.dino.weight=1", "targets.dino.kind", ("dino",)),  # kind defaults to the entry name
    ("targets.hog.cell_size=6", "targets.hog.cell_size", ("16",)),  # 16 % 6 != 0
    ("targets.pixel.head.heads=5", "targets.pixel.head.heads", ()),  # 5 does not divide 384
    ("targets.pixel.loss.kind=huber", "targets.pixel.loss.kind", ("smooth_l1",)),
    ("data.batch_size=abc", "data.batch_size", ("abc",)),
    ("model.drop_path=lots", "model.drop_path", ()),
    ("train.precision=fp8", "train.precision", ("fp8",)),
    ("resume=garbage", "resume", ("garbage",)),
    ("data.datasets.digits_image.weight=1", "data.datasets.digits_image.kind", ("did you mean 'digits_images'",)),
])
def test_invalid_value_names_key(override, key, fragments):
    with raises_config_error(key, *fragments):
        load_config(None, MINIMAL + [override])


# Values that passed validation and failed at run time, seconds later and after torch (issue 19): each now stops here
# naming its key. The comment says what each did before.
@pytest.mark.parametrize("override, key, fragments", [
    ("data.img_size=0", "data.img_size", (">= 1",)),  # 0 % patch == 0: passed, the model failed to build
    ("data.img_size=-16", "data.img_size", (">= 1",)),
    ("data.num_frames=0", "data.num_frames", (">= 1",)),  # 0 % tubelet == 0: passed
    ("data.num_frames=-4", "data.num_frames", (">= 1",)),
    ("data.img_size=16", "data.img_size", ("1x1", "at least 2 tokens")),  # one token: masks hid nothing, NaN loss
    ("optim.lr=inf", "optim.lr", ("finite",)),  # passed lr > 0
    ("optim.weight_decay=-0.1", "optim.weight_decay", (">= 0",)),  # torch AdamW: ValueError at build
    ("optim.eps=0", "optim.eps", ("positive",)),  # 0/0 in the first AdamW step
    ("optim.betas=[0.9,inf]", "optim.betas[1]", ("finite",)),
    ("data.mean=[nan,0.5,0.5]", "data.mean[0]", ("finite",)),  # NaN inputs: the run stopped on NaN losses
    ("data.std=[inf,1,1]", "data.std[0]", ("finite",)),
    ("data.datasets.digits_images.weight=inf", "data.datasets.digits_images.weight", ("finite",)),  # sampler crash
    ("data.datasets.digits_images.subset_seed=-1", "data.datasets.digits_images.subset_seed", ("0..",)),  # numpy
    ("train.seed=-1", "train.seed", ("0..",)),  # np.random.seed(-1): ValueError in the trainer
    ("train.seed=3000000000", "train.seed", ("0..",)),
    ("train.device=cpu", "train.precision", ("CUDA",)),  # with fp16 below: RuntimeError after the model was built
    ("log.image_every_steps=-1", "log.image_every_steps", (">= 0",)),  # step % -1: an image grid every step
    ("checkpoint.keep_every_steps=-5", "checkpoint.keep_every_steps", (">= 0",)),  # kept every 5 steps
    ("targets.pixel.head.block=12", "targets.pixel.head.block", ("12-block vit_base", "-12..11")),  # ValueError
    ("targets.pixel.head.block=-13", "targets.pixel.head.block", ("12-block",)),
])
def test_a_value_that_would_fail_at_run_time_names_its_key(override, key, fragments):
    extra = ["train.precision=fp16"] if override == "train.device=cpu" else []
    if override == "data.img_size=16":
        extra = ["model.patch_size=16", "data.img_size_schedule=[]"]
    with raises_config_error(key, *fragments):
        load_config(None, MINIMAL + extra + [override])


@pytest.mark.parametrize("overrides, key", [
    (["targets.mom.kind=momentum", "targets.mom.blocks=[-1,40]"], "targets.mom.blocks[1]"),  # ValueError at bind
    (["targets.mom.kind=momentum", "targets.mom.blocks=[-1,11]"], "targets.mom.blocks"),  # the same block twice
    (["targets.pixel.head.kind=linear", "targets.pixel.head.block=99", "targets.pixel.token_set=visible"],
     "targets.pixel.head.block"),
    (["masking.kind=window", "model.dense=true", "model.rel_pos_bias=per_block", "masking.window_frames=9"],
     "masking.window_frames"),  # more window frames than the clip's 8 tokens in time
])
def test_blocks_and_windows_are_checked_against_the_backbone(overrides, key):
    with raises_config_error(key):
        load_config(None, MINIMAL + overrides)


def test_backbone_depths_match_the_models():
    from vmim.models.mvit import MVIT_SIZES
    from vmim.models.vit import VIT_SIZES

    assert config.BACKBONE_DEPTHS == {**{name: s.depth for name, s in VIT_SIZES.items()},
                                      **{name: s.depth for name, s in MVIT_SIZES.items()}}
    assert set(config.BACKBONE_DEPTHS) == set(config.BACKBONES)


def test_every_float_must_be_finite_wherever_it_is():
    cfg = load_config(None, MINIMAL)
    cfg.targets["pixel"].loss = config.SmoothL1LossConfig(beta=float("inf"))  # deep in a mapping of entries
    with raises_config_error("targets.pixel.loss.beta", "finite"):
        config.check_finite(cfg)


# Fine-tuning keys that passed validation and failed later; what each did before is in the comment.
@pytest.mark.parametrize("override, key, fragments", [
    ("data.img_size=0", "data.img_size", (">= 1",)),  # ZeroDivisionError (a traceback) in digits_motion's check
    ("data.num_frames=0", "data.num_frames", (">= 1",)),
    ("head.init_scale=inf", "head.init_scale", ("finite",)),
    ("augment.mixup=inf", "augment.mixup", ("finite",)),  # Beta(inf, inf) in the first batch
    ("probe.C=inf", "probe.C", ("finite",)),
    ("augment.rand_augment=rand-m-n4", "augment.rand_augment", ("bad section 'm'",)),  # silently dropped by timm
    ("augment.rand_augment=rand-x9", "augment.rand_augment", ("unknown section 'x9'",)),  # AssertionError in timm
    ("augment.rand_augment=rand-m7-tfoo", "augment.rand_augment", ("'t' takes",)),  # timm: the default set
    ("augment.rand_augment=randfoo", "augment.rand_augment", ("rand-",)),  # passed startswith('rand')
    ("augment.rand_augment=rand-n20-tweights", "augment.rand_augment", ("at most 15",)),  # numpy ValueError
    ("eval.val_views=2", "eval.val_views", ("images",)),  # image eval data: ValueError in the first validation
    ("head.num_classes=5", "head.num_classes", ("digits_motion", "4 classes")),  # found after torch and the data
])
def test_a_finetune_value_that_would_fail_at_run_time_names_its_key(override, key, fragments):
    extra = ["eval.datasets.test.kind=digits_images"] if override.startswith("eval.val_views") else []
    with raises_config_error(key, *fragments):
        load_config(ROOT / "configs/demo/motion_finetune.yaml", extra + [override], task="finetune")


def test_cube_unit_must_tile_the_grid():
    with raises_config_error("masking.unit_size", "14, 14"):  # 3 does not tile the 14x14 token grid
        load_config(None, MINIMAL + ["masking.kind=cube", "masking.unit_size=[1,3,3]"])


def test_file_dataset_needs_rgb_model():
    ds = ["data.datasets.clips.kind=video", "data.datasets.clips.path=list.txt"]
    with raises_config_error("model.in_chans", "data.datasets.clips", "RGB"):
        load_config(None, MINIMAL + ds + ["model.in_chans=1", "data.mean=[0.5]", "data.std=[0.5]"])
    assert load_config(None, MINIMAL + ["model.in_chans=1", "data.mean=[0.5]", "data.std=[0.5]"]).model.in_chans == 1


@pytest.mark.parametrize("resume", ["auto", "never", "runs/x/checkpoints/last.pt", "/abs/step.pth"])
def test_valid_resume_values(resume):
    assert load_config(None, MINIMAL + [f"resume={resume}"]).resume == resume


def test_decoder_dim_incompatible_with_sincos_is_a_config_error():
    with raises_config_error("targets.pixel.head.dim"):
        load_config(None, MINIMAL + ["targets.pixel.head.dim=36", "targets.pixel.head.heads=6"])
    assert load_config(None, MINIMAL + ["targets.pixel.head.dim=36", "targets.pixel.head.heads=6",
                                        "model.pos_embed=sincos_1d"]).targets["pixel"].head.dim == 36


# ----------------------------------------------------------------------------------------------------
# _base_ inheritance and overrides
# ----------------------------------------------------------------------------------------------------


@pytest.fixture()
def base_files(tmp_path) -> Path:
    write(tmp_path / "base.yaml", """
        output_dir: runs/base
        model:
          backbone: vit_test
          patch_size: 8
          drop_path: 0.1
        masking:
          kind: tube
          ratio_video: 0.9
        targets:
          pixel: {weight: 1.0, norm: joint}
          hog: {weight: 0.5, cell_size: 4}
        data:
          img_size: 32
          num_frames: 4
          datasets:
            digits_images: {weight: 1.0}
        """)
    write(tmp_path / "other.yaml", """
        model:
          patch_size: 16
          drop_path: 0.2
        optim:
          lr: 3.0e-4
        """)
    return tmp_path


def test_child_overrides_base_and_merges_nested(base_files):
    path = write(base_files / "exp" / "child.yaml", """
        _base_: ../base.yaml
        model:
          drop_path: 0.3
        targets:
          hog: {weight: 2.0}
        """)
    cfg = load_config(path)
    assert cfg.model.drop_path == 0.3  # overridden
    assert cfg.model.backbone == "vit_test" and cfg.model.patch_size == 8  # siblings kept (nested merge)
    assert cfg.targets["hog"].weight == 2.0 and cfg.targets["hog"].cell_size == 4  # merged inside the entry
    assert cfg.targets["pixel"].norm == "joint"  # untouched entry inherited
    assert cfg.masking.ratio_video == 0.9 and cfg.output_dir == "runs/base"


def test_list_of_bases_merged_in_order(base_files):
    later = write(base_files / "later.yaml", """
        _base_: [base.yaml, other.yaml]
        """)
    cfg = load_config(later)
    assert cfg.model.patch_size == 16 and cfg.model.drop_path == 0.2  # other.yaml comes last and wins
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.model.backbone == "vit_test"
    earlier = write(base_files / "earlier.yaml", """
        _base_: [other.yaml, base.yaml]
        model: {drop_path: 0.05}
        """)
    cfg = load_config(earlier)
    assert cfg.model.patch_size == 8  # base.yaml last
    assert cfg.optim.lr == pytest.approx(3e-4)  # only other.yaml sets it
    assert cfg.model.drop_path == 0.05  # the file itself beats all bases


def test_replace_swaps_an_inherited_mapping(base_files):
    path = write(base_files / "child.yaml", """
        _base_: base.yaml
        targets:
          _replace_: true
          hog: {weight: 3.0}
        """)
    cfg = load_config(path)
    assert list(cfg.targets) == ["hog"]
    assert cfg.targets["hog"].weight == 3.0
    assert cfg.targets["hog"].cell_size == 8  # replaced, not merged: back to the default (8 divides 8)


def test_replace_false_merges_like_no_flag(base_files):
    path = write(base_files / "child.yaml", """
        _base_: base.yaml
        targets:
          _replace_: false
          hog: {weight: 3.0}
        """)
    cfg = load_config(path)
    assert set(cfg.targets) == {"pixel", "hog"} and cfg.targets["hog"].cell_size == 4


def test_cli_override_beats_file(base_files):
    path = write(base_files / "child.yaml", """
        _base_: base.yaml
        model: {drop_path: 0.3}
        """)
    cfg = load_config(path, ["model.drop_path=0.4", "targets.hog.weight=7", "output_dir=/tmp/elsewhere"])
    assert cfg.model.drop_path == 0.4 and cfg.targets["hog"].weight == 7.0 and cfg.output_dir == "/tmp/elsewhere"
    assert cfg.targets["hog"].cell_size == 4  # an override merges into the inherited entry


def test_delete_inherited_target(base_files):
    path = write(base_files / "child.yaml", """
        _base_: base.yaml
        """)
    cfg = load_config(path, ["~targets.pixel"])
    assert list(cfg.targets) == ["hog"]
    cfg = load_config(path, ["~targets.hog", "targets.pixel.weight=2"])
    assert list(cfg.targets) == ["pixel"] and cfg.targets["pixel"].weight == 2.0
    with raises_config_error("targets.nope", "no such entry"):
        load_config(path, ["~targets.nope"])


def test_missing_base_file_names_it(tmp_path):
    path = write(tmp_path / "child.yaml", """
        _base_: does_not_exist.yaml
        """)
    with pytest.raises(ConfigError, match="does_not_exist.yaml"):
        load_config(path)


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nothing_here.yaml"):
        load_config(tmp_path / "nothing_here.yaml")


def test_inheritance_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_invalid_yaml_is_a_config_error(tmp_path):
    path = write(tmp_path / "bad.yaml", "model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(path)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def run_cli(*args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vmim.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.perf_counter() - start


def test_cli_typo_fails_fast_without_creating_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc, seconds = run_cli("pretrain", "--config", "configs/demo/digits.yaml", "model.pach_size=3",
                            f"output_dir={run_dir}")
    assert proc.returncode != 0
    assert seconds < 5.0, f"took {seconds:.1f} s"
    assert "model.pach_size" in proc.stderr
    assert "model.patch_size" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_cli_print_config_round_trips(tmp_path):
    overrides = ["model.drop_path=0.1", "targets.hog.cell_size=4", "optim.min_lr=2e-6"]
    proc, _ = run_cli("pretrain", "--config", "configs/demo/digits.yaml", "--print-config", *overrides)
    assert proc.returncode == 0, proc.stderr
    printed = write(tmp_path / "printed.yaml", proc.stdout)
    want = load_config(ROOT / "configs/demo/digits.yaml", overrides)
    again = load_config(printed)
    assert again == want
    assert again.targets["hog"].kind == "hog" and again.model.drop_path == 0.1
    assert re.search(r"^model:", proc.stdout, re.M)


def test_config_to_yaml_round_trips_in_process(tmp_path):
    cfg = load_config(None, MINIMAL + ["masking.kind=cube", "masking.unit_size=[2,2,2]", "data.num_frames=8",
                                       "targets.pixel.loss.kind=smooth_l1", "targets.pixel.loss.beta=2"])
    again = load_config(write(tmp_path / "c.yaml", config_to_yaml(cfg)))
    assert again == cfg and again.masking.unit_size == [2, 2, 2]
