"""What the sampler does with the predicted x_0 at each step, measured: clipped to [-1, 1] (the engine's choice, as
improved-diffusion's `clip_denoised`), left alone, or Imagen's dynamic thresholding (Saharia et al. 2022, section 2.3:
s = the p-th percentile of |x_0| per image, at least 1; x_0 <- clamp(x_0, -s, s) / s). Each variant draws the same
images as `tinydiff eval --device D` would (same device, seed, labels, sampler and w), writes them to an .npz and scores it
with `tinydiff eval --npz`.

    python benchmarks/x0_handling.py runs/unet-small --data-dir ../shared/data --n 2000 --w 0.75

Run it alone: two torch jobs on a 2-core machine slow each other several times over.
"""
import argparse
from pathlib import Path

import torch

from npz_scoring import add_checkpoint_arguments, score_images
from tinydiff_cli.runtime.device import pick_device
from tinydiff_cli.diffusion.guidance import guided_denoiser
from tinydiff_cli.sampling.pipeline import Pipeline


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Saharia et al. (2022), section 2.3: per image, s = max(1, quantile(|x_0|, p)); clamp to [-s, s] and divide
    by s, so that saturated pixels are pulled back inside [-1, 1] instead of being cut off."""
    s = torch.quantile(x0.abs().flatten(1), percentile, dim=1).clamp(min=1.0).reshape(-1, *[1] * (x0.dim() - 1))
    return x0.clamp(-s, s) / s


def make_denoiser(pipe: Pipeline, variant: str, percentile: float):
    """pipe.denoiser with the x_0 step chosen: "clip" (what the engine does), "none" or "dynamic". Built on the
    engine's own guided_denoiser, so guidance (two passes, or a distilled student's w input) is the engine's."""
    def denoiser(labels: torch.Tensor, w: float | None = None, max_sigma: float | None = None):
        if w is None or max_sigma is None:
            own = pipe.plan(w=w, max_sigma=max_sigma)
            w, max_sigma = own.w, own.max_sigma
        engine = guided_denoiser(pipe.model, pipe.formulation, labels.to(pipe.device), null_class=pipe.null_class,
                                 w=w, clip_x0=variant == "clip", max_sigma=max_sigma)
        if variant != "dynamic":
            return engine

        def denoise(x, sigma):
            return dynamic_threshold(engine(x, sigma), percentile)

        return denoise

    return denoiser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--w", type=float, default=None, help="guidance weight [default: the model's own]")
    parser.add_argument("--variants", default="clip,none,dynamic")
    parser.add_argument("--percentile", type=float, default=0.995)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/x0_handling"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    pipe = Pipeline.from_checkpoint(args.checkpoint, device=pick_device(args.device))
    w = pipe.plan(w=args.w).w
    labels = pipe.labels("all", args.n)  # what `tinydiff eval` samples: the classes in turn
    rows = []
    for variant in args.variants.split(","):
        if variant not in ("clip", "none", "dynamic"):
            raise SystemExit(f"--variants: {variant!r} is not one of clip, none, dynamic")
        pipe.denoiser = make_denoiser(pipe, variant, args.percentile)  # this instance only
        images = pipe.sample(labels, sampler=args.sampler, steps=args.steps, w=w, seed=0)
        npz = args.out / (f"{variant}{args.percentile:g}" if variant == "dynamic" else variant)
        npz = npz.with_name(f"{npz.name}-{pipe.plan(args.sampler, args.steps).label}-w{w:g}-n{args.n}.npz")
        score = score_images(images, labels, npz, pipe.checkpoint.config.data.dataset, args.data_dir)
        rows.append((variant, score["fid"], score["fid_real_floor"], score["class_accuracy"]))
        print(f"{variant}: FID {score['fid']:.3f} (floor {score['fid_real_floor']:.3f}), "
              f"class accuracy {score['class_accuracy']:.2%}", flush=True)
    sampler = pipe.plan(args.sampler, args.steps).label
    print(f"\n{args.checkpoint}, {sampler}, w = {w:g}, N = {args.n}\n\n| x_0 | FID | floor | class accuracy |\n|---|---|---|---|")
    for variant, fid, floor, accuracy in rows:
        print(f"| {variant} | {fid:.2f} | {floor:.2f} | {accuracy:.1%} |")


if __name__ == "__main__":
    main()
