"""tinydiff: small diffusion models that train on a laptop CPU.

The engine is importable without the CLI:

    from tinydiff_cli.pipeline import Pipeline
    pipe = Pipeline.from_checkpoint("runs/unet-small")
    images = pipe.sample(pipe.labels("all", 10), sampler="ddim", steps=10, w=1.0)

and so are its parts, in noise levels sigma: `diffusion.schedules.make_schedule`, `diffusion.sampling.SAMPLERS`,
`diffusion.formulations.make_formulation` (eps, x0, v, edm, flow),
`models.UNet`.
"""
__version__ = "0.4.0"
