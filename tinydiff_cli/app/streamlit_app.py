"""The tinydiff denoising viewer page. Launched by `tinydiff visualize app`; TINYDIFF_APP_RUNS names the
folder searched for models. Layout only: loading and generation live in tinydiff_cli.app.logic."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from tinydiff_cli.app import logic
from tinydiff_cli.cli.options import GUIDANCE_HELP
from tinydiff_cli.errors import TinydiffError
from tinydiff_cli.sampling.pipeline import Pipeline
from tinydiff_cli.diffusion.sampling import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS

RUNS = Path(os.environ.get("TINYDIFF_APP_RUNS", "runs"))


@st.cache_resource(show_spinner="loading the model ...")
def load_model(path: str, mtime: float) -> Pipeline:
    """Loaded once per file version and kept across reruns and sessions."""
    return logic.load(path)


def sidebar(entries: list[logic.ModelEntry]):
    """The controls; returns (loaded model, generation settings) or stops the page with a message."""
    with st.sidebar:
        st.header("Settings")
        entry = st.selectbox("Checkpoint", entries, format_func=lambda e: e.label, key="checkpoint")
        try:
            pipe = load_model(str(entry.path), entry.path.stat().st_mtime)
        except (TinydiffError, OSError) as e:
            st.error(f"Cannot use {entry.path.name}: {e}")
            st.stop()
        classes = ["unconditional"] + list(pipe.class_names)
        choice = st.selectbox("Class", classes, index=min(4, len(classes) - 1), key="class")
        if pipe.distilled is not None:
            sampler, steps, eta, w = distilled_controls(pipe)
        else:
            names = list(SAMPLERS)
            sampler = st.radio("Sampler", names, index=names.index(DEFAULT_SAMPLER), format_func=str.upper,
                               horizontal=True, key="sampler")
            takes_steps, takes_eta = logic.sampler_controls(sampler)
            steps = st.slider("Steps", 1, pipe.T, min(DEFAULT_STEPS, pipe.T), key="steps") if takes_steps else None
            eta = st.slider("eta (0: deterministic, 1: DDPM-like noise)", 0.0, 1.0, 0.0, 0.1, key="eta") if takes_eta else 0.0
            if not takes_steps:
                st.caption(f"{sampler.upper()} runs all T = {pipe.T} steps.")
            w = st.slider("Guidance w", 0.0, 8.0, min(max(pipe.plan().w, 0.0), 8.0), 0.25, help=GUIDANCE_HELP,
                          key="w")
        seed = st.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="seed")
        st.caption("w: " + GUIDANCE_HELP)
        pressed = st.button("Generate", type="primary", key="generate", width="stretch")
    label = None if choice == "unconditional" else classes.index(choice) - 1
    settings = dict(label=label, sampler=sampler, steps=None if steps is None else int(steps), eta=float(eta), w=float(w),
                    seed=int(seed))
    return pipe, entry, settings, pressed


def distilled_controls(pipe: Pipeline):
    """A distilled model samples with its own sampler and steps, at a w inside the range it learned."""
    d = pipe.distilled
    st.caption(f"Distilled model: {d.sampler.upper()} in {d.steps} step{'s' if d.steps > 1 else ''}, one network "
               f"evaluation per step, w in [{d.w_min:g}, {d.w_max:g}].")
    w = d.w_min
    if d.w_max > d.w_min:
        w = st.slider("Guidance w", d.w_min, d.w_max, pipe.plan().w, 0.25, help=GUIDANCE_HELP,
                      key="w_distilled")
    return d.sampler, d.steps, 0.0, w


def generate(pipe: Pipeline, entry: logic.ModelEntry, settings: dict) -> None:
    with st.spinner("denoising ..."):
        traj = logic.generate(pipe, **settings)
    st.session_state.result = {"trajectory": traj, "frames": logic.render(traj), "settings": settings,
                               "model": entry.label, "seconds": traj.seconds, "sampler": traj.sampler}
    st.session_state.generations = st.session_state.get("generations", 0) + 1
    st.session_state.frame = traj.steps  # start the slider on the result


def viewer(result: dict) -> None:
    frames, settings = result["frames"], result["settings"]
    last = len(frames.captions) - 1
    what = "unconditional" if settings["label"] is None else f"class {settings['label']}"
    sampler = result["sampler"]
    st.caption(f"{result['model']} — {sampler}, {what}, w = {settings['w']:g}, seed {settings['seed']}: "
               f"generated in {result['seconds']:.2f} s")
    index = st.slider("Denoising step (scrubs the stored frames; the model is not run again)", 0, last, key="frame")
    st.markdown(f"**{frames.captions[index]}**")
    left, right = st.columns(2)
    left.image(frames.x[index].numpy(), caption="x_t (what the model sees)", clamp=True)
    right.image(frames.x0[index].numpy(), caption="predicted x_0", clamp=True)
    st.image(frames.strip.numpy(), caption="the whole trajectory: x_t (top) over predicted x_0 (bottom), noise to result",
             width="stretch")
    st.download_button("Download the animation (GIF)", frames.gif, file_name="tinydiff-denoise.gif", mime="image/gif")


def main() -> None:
    st.set_page_config(page_title="tinydiff denoising viewer", layout="wide")
    st.title("tinydiff: watch a diffusion model denoise")
    entries = logic.find_models(RUNS)
    if not entries:
        st.info(f"No checkpoints found under {RUNS.resolve()}. Train one with "
                f"`tinydiff train --preset unet-small --max-minutes 10`, or start the app with `--runs DIR`.")
        st.stop()
    pipe, entry, settings, pressed = sidebar(entries)
    if pressed:
        try:
            generate(pipe, entry, settings)
        except TinydiffError as e:
            st.error(str(e))
    result = st.session_state.get("result")
    if result is None:
        st.info("Choose a class, a sampler and the number of steps, then press **Generate**.")
        return
    viewer(result)


main()
