"""Configs: YAML validated into typed objects; unknown keys and bad values fail with the key and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from medp2p.config import Config, ConfigError, config_from_dict, load_config, parse_override, save_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(None, ROOT / "configs" / f"{name}.yaml")
    assert isinstance(cfg, Config)
    assert cfg.data.source_keys and cfg.data.target_key


def test_task_defaults_fill_the_gaps() -> None:
    assert load_config("mri2ct").loss.l1 == 100.0 and load_config("mri2ct").data.mask_key == "mask"
    seg = load_config("seg")
    assert (seg.loss.dice, seg.loss.bce, seg.loss.gan, seg.data.target_key) == (1.0, 1.0, 0.0, "tumor")
    assert load_config("seg", overrides=["loss.gan=0.5"]).loss.gan == 0.5


def test_overrides_are_typed() -> None:
    cfg = load_config(
        "mri2ct", overrides=["train.lr=1e-4", "data.image_size=[128, 96]", "data.spacing_mm=null", "data.source_keys=[t1, t2]"]
    )
    assert cfg.train.lr == 1e-4 and cfg.data.image_size == (128, 96) and cfg.data.source_keys == ["t1", "t2"]
    assert parse_override("train.steps=5") == ("train.steps", 5)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr_rate=1", "Unknown key 'train.lr_rate'. Did you mean 'train.lr'?"),
        ("trian.steps=1", "Did you mean 'train.steps'?"),
        ("train.lr=fast", "'train.lr': Input should be a valid number"),
        ("train.lr=-1", "'train.lr': Input should be greater than 0"),
        ("data.axis=oblique", "'data.axis': Input should be 'axial', 'coronal' or 'sagittal'"),
        ("model.generator=unet256", "'model.generator'"),
        ("train.lr", "expected KEY=VALUE"),
        ("data.mr_percentiles=[99, 1]", "mr_percentiles must satisfy"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("mri2ct", overrides=[override])
    assert message in str(info.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("task: seg\ntrain:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match=r"my\.yaml: Unknown key 'train\.batchsize'\. Did you mean 'train\.batch_size'\?"):
        load_config(None, path)
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="a YAML mapping"):
        load_config(None, path)
    with pytest.raises(ConfigError, match="Unknown task 'ct2mr'"):
        load_config("ct2mr")


def test_inpaint_slices_need_context() -> None:
    with pytest.raises(ConfigError, match="needs neighbouring slices"):
        load_config("inpaint", overrides=["inpaint.kinds=[box, slices]"])
    assert load_config("inpaint", overrides=["inpaint.kinds=[box, slices]", "data.context_slices=1"]).inpaint.kinds == ["box", "slices"]


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config("inpaint", overrides=["train.steps=7", "data.context_slices=2"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(None, tmp_path / "config.yaml")
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg
