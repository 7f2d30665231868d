"""Start-up of a sampling run: what `tinydiff sample` imports, and the grid it writes without torchvision."""
import subprocess
import sys

import pytest
import torch

from tinydiff_cli.io.images import grid_array


@pytest.mark.parametrize("n, ncols, channels", [(1, 10, 1), (3, 10, 1), (10, 10, 1), (23, 10, 1), (7, 3, 3), (16, 4, 3)])
def test_the_grid_is_make_grids_layout(n, ncols, channels):
    from torchvision.utils import make_grid

    images = torch.rand(n, channels, 9, 7, generator=torch.Generator().manual_seed(n)) * 2 - 1
    expected = (make_grid((images + 1) / 2, nrow=ncols, padding=2, pad_value=0.5) * 255).round().to(torch.uint8)
    expected = expected[0] if channels == 1 else expected.permute(1, 2, 0)
    assert torch.equal(grid_array(images, ncols), expected)
    assert torch.equal(grid_array(images, ncols, scale=3)[::3, ::3], expected)


def test_sampling_imports_neither_dynamo_nor_torchvision(tiny_run, tmp_path):
    """torch._dynamo (reached through a meta-device init or torchvision) costs a sampling run about 1 s of its start."""
    script = (f"import sys; from tinydiff_cli.cli.main import app\n"
              f"try:\n    app(['sample', '--checkpoint', {str(tiny_run[0])!r}, '--n', '4', '--device', 'cpu', "
              f"'--out', {str(tmp_path / 's.png')!r}])\nexcept SystemExit:\n    pass\n"
              f"print(sorted(m for m in ('torch._dynamo', 'torchvision', 'sympy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (tmp_path / "s.png").exists(), done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
