"""Files written by earlier versions still load and draw the same pixels.

tests/fixtures/compat/ was written by tests/fixtures/make_compat_fixtures.py with the code from before the engine
refactor (a training checkpoint pair and two exported models; eps/linear, x0/sigmoid and v/cosine). Each model is
sampled again here with the same command-line flags: same seed and sampler must give the same uint8 pixels, with
at most a 1-2 grey level difference on at most 1% of pixels (float reordering)."""
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tinydiff_cli.cli.main import app
from tinydiff_cli.sampling.pipeline import Pipeline

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_compat_fixtures import PRESETS, SAMPLES, model_path  # noqa: E402

EXPECTED = np.load(FIXTURES / "compat" / "expected_samples.npz")
# Flags that now must be said: before 0.3 a sample without sampler flags was DDPM over all T (now DPM-Solver++).
SAID_NOW = {"ddpm_w1_all": ["--sampler", "ddpm"]}


@pytest.mark.parametrize("model", list(PRESETS))
@pytest.mark.parametrize("sample", list(SAMPLES))
def test_old_files_sample_the_same_pixels(model, sample, tmp_path):
    npz = tmp_path / "s.npz"
    result = CliRunner().invoke(app, ["sample", "--checkpoint", str(model_path(model)), *SAMPLES[sample],
                                      *SAID_NOW.get(sample, []), "--device", "cpu", "--out", str(tmp_path / "g.png"), "--npz", str(npz)])
    assert result.exit_code == 0, result.output
    got, expected = np.load(npz)["arr_0"].astype(int), EXPECTED[f"{model}/{sample}"].astype(int)
    assert got.shape == expected.shape
    diff = np.abs(got - expected)
    assert diff.max() <= 2 and (diff > 0).mean() <= 0.01, (diff.max(), (diff > 0).mean())


def test_old_files_load_into_a_pipeline():
    for model in PRESETS:
        pipe = Pipeline.from_checkpoint(model_path(model))
        assert pipe.num_classes == 10 and pipe.null_class == 10 and pipe.image_shape == (1, 28, 28)
        assert pipe.formulation.name == model.split("_")[1]
        assert pipe.checkpoint.config.diffusion.schedule == model.split("_")[2]
    raw = Pipeline.from_checkpoint(model_path("unet_eps_linear"), weights="raw")
    ema = Pipeline.from_checkpoint(model_path("unet_eps_linear"))
    assert any((a != b).any() for a, b in zip(raw.model.state_dict().values(), ema.model.state_dict().values()))
