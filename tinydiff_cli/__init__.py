"""tinydiff: small diffusion models that train on a laptop CPU.

The engine is importable without the CLI:

    from tinydiff_cli.pipeline import Pipeline
    pipe = Pipeline.from_checkpoint("runs/unet-small")
    images = pipe.sample(pipe.labels("all", 10), sampler="ddim", steps=10, w=1.0)

and so are its parts: `schedules.make_schedule`, `samplers.SAMPLERS`, `parameterization.get_parameterization`,
`models.UNet`.
"""
__version__ = "0.3.0"
