import pytest

from tinydiff_cli.config import available_presets, config_from_dict, config_to_dict, load_config
from tinydiff_cli.errors import TinydiffError


def test_presets_ship_and_load():
    assert {"unet-small", "unet-base"} <= set(available_presets())
    cfg = load_config("unet-small")
    assert cfg.preset == "unet-small" and cfg.model.type == "unet"
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_overrides_apply_with_types():
    cfg = load_config("unet-small", ["train.lr=3e-4", "model.channel_mults=[1, 2]", "diffusion.objective=v",
                                     "train.max_minutes=2", "data.dataset=fashion-mnist"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.channel_mults == [1, 2]
    assert cfg.diffusion.objective == "v"
    assert cfg.train.max_minutes == 2.0
    assert cfg.data.dataset == "fashion-mnist"


def test_yaml_file_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  batch_size: 7\n")
    cfg = load_config(str(path))
    assert cfg.train.batch_size == 7 and cfg.preset == "mine"


@pytest.mark.parametrize("override, message", [
    ("train.bogus=1", "unknown setting 'train.bogus'"),
    ("trian.lr=1", "unknown config section 'trian'"),
    ("train.batch_size=abc", "train.batch_size must be int"),
    ("train.batch_size=1.5", "train.batch_size must be int"),
    ("diffusion.objective=score", "diffusion.objective must be one of eps, x0, v"),
    ("model.channel_mults=[1, 2, 2, 2]", "halve cleanly only 2 times"),
    ("diffusion.p_uncond=1.5", "diffusion.p_uncond must be in"),
    ("train.sample_w=-1", "train.sample_w, the model's guidance weight, must be >= 0"),
    ("train.lr", "must look like section.key=value"),
])
def test_bad_overrides_are_rejected_clearly(override, message):
    with pytest.raises(TinydiffError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config("unet-small", [override])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(TinydiffError, match="unet-small"):
        load_config("unet-huge")


def test_backbones_follow_the_image_size_and_refuse_sizes_they_cannot_take():
    from tinydiff_cli.models.config import adapt_to_image_size
    from tinydiff_cli.config import validate

    unet = load_config("unet-small").model
    assert adapt_to_image_size(unet, 28) == (unet, [])  # the presets' own size: unchanged
    adapted, notes = adapt_to_image_size(unet, 32)
    assert adapted.attn_resolutions == [8] and notes == ["model.attn_resolutions [7] -> [8] (the UNet's levels at 32x32 are 32, 16, 8)"]
    assert adapt_to_image_size(load_config("unet-base").model, 64)[0].attn_resolutions == [16]
    dit, notes = adapt_to_image_size(load_config("dit-small").model, 30)
    assert dit.patch_size == 5 and "36 tokens" in notes[0]
    with pytest.raises(TinydiffError, match=r"30x30 images halve cleanly only 1 times; use at most 2 levels, or a size "
                                            r"that halves 2 times \(--set data.image_size=32\)"):
        validate(load_config("unet-small"), 30)
    cfg = load_config("unet-small", ["data.dataset=/some/folder"])  # a folder of unknown size: checked once it is read
    assert cfg.data.dataset == "/some/folder"
    with pytest.raises(TinydiffError, match="data.image_size must be between 8 and 256"):
        load_config("unet-small", ["data.image_size=4"])
