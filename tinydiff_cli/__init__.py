"""tinydiff: small diffusion models that train on a laptop CPU.

The engine is importable without the CLI:

    from tinydiff_cli.sampling.pipeline import Pipeline
    pipe = Pipeline.from_checkpoint("runs/unet-small")
    images = pipe.sample(pipe.labels("all", 10), sampler="ddim", steps=10, w=1.0)

and so are its parts, in noise levels sigma: `diffusion.schedules.make_schedule`, `diffusion.sampling.SAMPLERS`,
`diffusion.formulations.make_formulation` (eps, x0, v, edm, flow), `sampling.plan.plan_sampling`, `models.UNet`.
One subpackage per layer, bottom to top: diffusion, models and runtime; config and data; io; sampling and
evaluation; training; cli and app (tests/test_structure.py keeps every import pointing down).
"""
__version__ = "0.5.0"
