"""tinydiff: small diffusion models that train on a laptop CPU.

The engine is importable without the CLI:

    from tinydiff_cli.schedules import make_schedule
    from tinydiff_cli.samplers import ddim_sample
    from tinydiff_cli.models import UNet
"""
__version__ = "0.1.0"
