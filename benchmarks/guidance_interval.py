"""Classifier-free guidance applied only on an interval of timesteps, measured (Kynkäänniemi et al. 2024, "Applying
guidance in a limited interval improves sample and distribution quality in diffusion models"): outside [t_lo, t_hi]
the sampler gets the plain conditional prediction (w = 0, one network pass instead of two). Each interval draws the
same images as `tinydiff eval` would (same device, seed, labels, sampler), writes them to an .npz and scores it with
`tinydiff eval --npz`.

    python benchmarks/guidance_interval.py runs/unet-small --n 2000 --w 0.5,1 --intervals 0-999,0-599,100-599

Run it alone: two torch jobs on a 2-core machine slow each other several times over.
"""
import argparse
import time
from pathlib import Path

import torch

from npz_scoring import add_checkpoint_arguments, score_images
from tinydiff_cli.runtime.device import pick_device
from tinydiff_cli.diffusion.guidance import guided_denoiser
from tinydiff_cli.sampling.pipeline import Pipeline


def interval_denoiser(pipe: Pipeline, t_lo: int, t_hi: int):
    """pipe.denoiser with guidance only where t_lo <= t <= t_hi; elsewhere conditional (w = 0). Every sampler calls
    the denoiser with one t for the whole batch, so the choice is made per step."""
    def denoiser(labels, w=None, max_sigma=None):  # max_sigma: the engine's upper end, replaced by [t_lo, t_hi]
        w = pipe.plan(w=w).w
        make = lambda weight: guided_denoiser(pipe.model, pipe.formulation, labels.to(pipe.device),  # noqa: E731
                                              null_class=pipe.null_class, w=weight)
        guided, plain = make(w), make(0.0)

        def denoise(x, sigma):
            t = round(float(pipe.formulation.timestep(torch.as_tensor(sigma).reshape(-1)[:1])))
            return guided(x, sigma) if t_lo <= t <= t_hi else plain(x, sigma)

        return denoise

    return denoiser


def parse_interval(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split("-"))
    except ValueError:
        raise SystemExit(f"--intervals: {text!r} is not of the form LO-HI (timesteps, such as 100-599)") from None
    return lo, hi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--w", default=None, help="guidance weights, comma-separated [default: the model's own]")
    parser.add_argument("--intervals", default="0-999", help="timestep intervals LO-HI where guidance applies")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/guidance_interval"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    pipe = Pipeline.from_checkpoint(args.checkpoint, device=pick_device(args.device))
    weights = [pipe.plan().w] if args.w is None else [float(v) for v in args.w.split(",")]
    labels = pipe.labels("all", args.n)  # what `tinydiff eval` samples: the classes in turn
    sampler = pipe.plan(args.sampler, args.steps).label
    print(f"{args.checkpoint}, {sampler} over t = {list(pipe.plan(args.sampler, args.steps).timesteps)}, N = {args.n}", flush=True)
    rows = []
    for w in weights:
        for text in args.intervals.split(","):
            lo, hi = parse_interval(text)
            pipe.denoiser = interval_denoiser(pipe, lo, hi)  # this instance only
            start = time.perf_counter()
            images = pipe.sample(labels, sampler=args.sampler, steps=args.steps, w=w, seed=0)
            seconds = time.perf_counter() - start
            npz = args.out / f"t{lo}-{hi}-{sampler}-w{w:g}-n{args.n}.npz"
            score = score_images(images, labels, npz, pipe.checkpoint.config.data.dataset, args.data_dir)
            rows.append((w, text, score["fid"], score["fid_real_floor"], score["class_accuracy"], seconds))
            print(f"w {w:g}, t in [{lo}, {hi}]: FID {score['fid']:.3f} (floor {score['fid_real_floor']:.3f}), "
                  f"class accuracy {score['class_accuracy']:.2%}, sampling {seconds:.0f} s", flush=True)
    print("\n| w | guided t | FID | floor | class accuracy | sampling seconds |\n|---|---|---|---|---|---|")
    for w, text, fid, floor, accuracy, seconds in rows:
        print(f"| {w:g} | {text} | {fid:.2f} | {floor:.2f} | {accuracy:.1%} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
