"""Formulations: how images are noised, what the network predicts, and how its output becomes the denoised image,
one small object each, all in one noise level sigma.

The engine's contract (Karras et al. 2022, "EDM", sec. 2 and Table 1; k-diffusion's `Denoiser`): a noisy image at
noise level sigma is x = x_0 + sigma * eps, and a formulation turns a network F into the denoiser

    D(x; sigma) = to_x0(x, sigma, F(c_in(sigma) * x, c_noise(sigma)))        (an estimate of x_0)

Samplers (sampling.py) only ever see D and a descending grid of sigmas; nothing outside this module branches on a
formulation's name. A formulation also knows its training side: the distribution of noise levels it trains at,
the network's input and target for a clean batch, and the loss weight.

- `DiscreteVP` ("eps", "x0", "v"): a variance-preserving schedule of T steps (schedules.py), x_t = sqrt(alpha_bar)
  x_0 + sqrt(1 - alpha_bar) eps = c_in(sigma_t) * x with sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t); the
  network is trained and called at its own integer t (k-diffusion's `DiscreteEpsDDPMDenoiser` pattern).
- `EDM` ("edm"): Karras et al. 2022's preconditioning, log-normal training sigma, sigma_data.
- `Flow` ("flow"): flow matching / rectified flow (Lipman et al. 2023, Liu et al. 2023): x_t = (1 - t) x_0 + t eps,
  the network predicts the velocity eps - x_0, t is drawn logit-normal (Esser et al. 2024, sec. 3.1).

A new formulation is one class here and one line in FORMULATIONS.

    form = make_formulation("edm")     # or make_formulation("v", schedule="cosine", timesteps=1000)
    x0_hat = form.to_x0(x, sigma, net(form.c_in(sigma) * x, form.c_noise(sigma), labels))
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedules import Schedule, make_schedule


def at_t(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast against a batch of images (B, 1, 1, 1)."""
    return values[t].view(-1, 1, 1, 1)


def per_row(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or one value per row (B,), shaped to broadcast against the images x."""
    return values.reshape(-1, *[1] * (x.dim() - 1))


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps (Ho et al. 2020, eq. 4)."""
    return at_t(schedule.sqrt_alpha_bar, t) * x0 + at_t(schedule.sqrt_one_minus_alpha_bar, t) * noise


class Formulation:
    """One way of noising and predicting. Subclasses set `name`, `sigma_max` and define the methods below; `to_x0`
    and `output_for` are affine in the network's output for fixed x and sigma (classifier-free guidance relies on
    that, see guidance.py)."""

    name: str
    discrete = False  # trained at the T timesteps of a schedule (DDPM applies, steps are at most T)
    sigma_max: float  # where sampling starts

    def to(self, device) -> "Formulation":
        """The formulation with its tables (if any) on `device`."""
        return self

    # ---- the denoiser ------------------------------------------------------------------------------------
    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        """The scale of the network's input: it sees c_in(sigma) * x."""
        raise NotImplementedError

    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's time input at noise level sigma."""
        raise NotImplementedError

    def to_x0(self, x: torch.Tensor, sigma: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """D(x; sigma): the network's output at x -> the predicted clean image."""
        raise NotImplementedError

    def output_for(self, x: torch.Tensor, sigma: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_x0`: what the network must output at x for its prediction to be x0."""
        raise NotImplementedError

    def prior_std(self) -> float:
        """The standard deviation of the noise that sampling starts from, at sigma_max."""
        raise NotImplementedError

    def sigmas(self, steps: int) -> torch.Tensor:
        """The default sampling grid: `steps` descending noise levels from sigma_max, then 0 (float32)."""
        raise NotImplementedError

    # ---- training ----------------------------------------------------------------------------------------
    def draw_levels(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise levels for a training batch of n, in the formulation's own coordinate (t or sigma)."""
        raise NotImplementedError

    def training_example(self, x0: torch.Tensor, level: torch.Tensor, eps: torch.Tensor):
        """(network input, network time input, target) for clean images x0 noised by eps at `level`."""
        raise NotImplementedError

    def loss_weight(self, level: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma (Hang et al. 2023, eq. 9 and sec. 3.4): weight the x_0 error by min(SNR, gamma), i.e. the
        target's MSE by min(SNR, gamma) / k, where ||target - guess||^2 = k ||x_0 - x0_guess||^2 (`mse_scale`).
        gamma = 0 turns it off: the plain MSE of the target (for EDM, its own weighting lambda(sigma))."""
        snr, k = self.snr_and_mse_scale(level)
        return torch.ones_like(snr) if gamma <= 0 else snr.clamp(max=gamma) / k

    def snr_and_mse_scale(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class DiscreteVP(Formulation):
    """A variance-preserving schedule of T timesteps, the network trained at integer t to predict eps (Ho et al.
    2020, eq. 14), x_0, or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022, sec. 4).

    In sigma: x = x_t / sqrt(alpha_bar_t), so c_in = 1 / sqrt(1 + sigma^2) and
        eps: x_0 = x - sigma * F;   x0: x_0 = F;   v: x_0 = c_in^2 x - sigma c_in F.
    The training side keeps Ho et al.'s own arithmetic on the schedule's tables (q_sample at integer t)."""

    discrete = True
    TARGETS = ("eps", "x0", "v")

    def __init__(self, target: str, schedule: Schedule):
        if target not in self.TARGETS:
            raise ValueError(f"unknown target {target!r}; choose one of {', '.join(self.TARGETS)}")
        self.name, self.schedule = target, schedule
        self.sigma_max = float(schedule.sigmas[-1])

    @property
    def T(self) -> int:
        return self.schedule.T

    def to(self, device) -> "DiscreteVP":
        return DiscreteVP(self.name, self.schedule.to(device))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The (fractional) t whose sigma_t is sigma, interpolated in log sigma (k-diffusion's `sigma_to_t`); exactly
        the integer t at the schedule's own sigmas, which are the only ones the samplers use."""
        table = self.schedule.sigmas
        flat = sigma.to(table.device, table.dtype).reshape(-1).contiguous()
        high = torch.searchsorted(table, flat).clamp(1, self.T - 1)
        log_low, log_high = table[high - 1].log(), table[high].log()
        frac = ((log_low - flat.log()) / (log_low - log_high)).clamp(0, 1)
        return ((high - 1) + frac).reshape(sigma.shape)

    def c_in(self, sigma):
        return (1 + sigma**2).rsqrt()

    def c_noise(self, sigma):
        return self.timestep(sigma)

    def to_x0(self, x, sigma, output):
        if self.name == "eps":
            return x - sigma * output
        if self.name == "x0":
            return output
        c_in = self.c_in(sigma)
        return c_in**2 * x - sigma * c_in * output

    def output_for(self, x, sigma, x0):
        if self.name == "eps":
            return (x - x0) / sigma
        if self.name == "x0":
            return x0
        c_in = self.c_in(sigma)
        return (c_in**2 * x - x0) / (sigma * c_in)

    def prior_std(self) -> float:
        return 1 / float(self.schedule.sqrt_alpha_bar[-1])  # x_T ~ N(0, I), Ho et al. Algorithm 2

    def timesteps(self, steps: int | None = None) -> list[int]:
        """`steps` timesteps from T-1 downwards, evenly spaced and ending near 0 ("trailing" spacing, Lin et al.
        2024, table 2), so that even one step starts from pure noise at t = T-1; None or T is the full grid."""
        steps = self.T if steps is None else steps
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must be between 1 and T={self.T}, got {steps}")
        return [round(self.T - i * self.T / steps) - 1 for i in range(steps)]

    def sigmas(self, steps):
        grid = torch.tensor(self.timesteps(steps), device=self.schedule.sigmas.device)
        return torch.cat([self.schedule.sigmas[grid], self.schedule.sigmas.new_zeros(1)])

    def draw_levels(self, n, device, generator=None):
        return torch.randint(0, self.T, (n,), device=device, generator=generator)  # uniform t, Ho et al. Alg. 1

    def training_example(self, x0, t, eps):
        x_t = q_sample(self.schedule, x0, t, eps)
        if self.name == "eps":
            target = eps
        elif self.name == "x0":
            target = x0
        else:
            target = at_t(self.schedule.sqrt_alpha_bar, t) * eps - at_t(self.schedule.sqrt_one_minus_alpha_bar, t) * x0
        return x_t, t, target

    def snr_and_mse_scale(self, t):
        snr = self.schedule.snr[t]
        # eps - eps_hat = sqrt(SNR) (x0_hat - x_0);  v - v_hat = sqrt(SNR + 1) (x0_hat - x_0)
        scale = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[self.name]
        return snr, scale

    def __repr__(self) -> str:
        return f"DiscreteVP({self.name!r}, T={self.T})"


class EDM(Formulation):
    """Karras et al. 2022 ("Elucidating the design space", Table 1): D = c_skip x + c_out F(c_in x, c_noise) with
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2), c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    c_in = 1 / sqrt(sigma^2 + sigma_data^2), c_noise = ln(sigma) / 4; training at ln sigma ~ N(P_mean, P_std^2),
    sampling on the rho = 7 grid of eq. 5. F's target has unit variance at every sigma, so its plain MSE is the
    paper's weighting lambda(sigma) = 1 / c_out^2."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, rho: float = 7.0):
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho

    def c_skip(self, sigma):
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma):
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()

    def c_in(self, sigma):
        return (sigma**2 + self.sigma_data**2).rsqrt()

    def c_noise(self, sigma):
        # Table 1's ln(sigma) / 4, times 1000: the backbones' sinusoidal time embedding is laid out for timesteps
        # 0..1000, and sigma in [0.002, 80] then spans about -1550..1100
        return 250 * sigma.log()

    def to_x0(self, x, sigma, output):
        return self.c_skip(sigma) * x + self.c_out(sigma) * output

    def output_for(self, x, sigma, x0):
        return (x0 - self.c_skip(sigma) * x) / self.c_out(sigma)

    def prior_std(self) -> float:
        return self.sigma_max  # Algorithm 1, line 2

    def sigmas(self, steps):
        # eq. 5: sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then 0
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        sigmas = (hi + ramp * (lo - hi)) ** self.rho
        return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()

    def draw_levels(self, n, device, generator=None):
        return (self.p_mean + self.p_std * torch.randn(n, device=device, generator=generator)).exp()

    def training_example(self, x0, sigma, eps):
        x = x0 + per_row(sigma, x0) * eps
        s = per_row(sigma, x0)
        return self.c_in(s) * x, self.c_noise(sigma), self.output_for(x, s, x0)

    def snr_and_mse_scale(self, sigma):
        return sigma**-2, self.c_out(sigma) ** -2  # D - x_0 = c_out (F_hat - F)

    def __repr__(self) -> str:
        return f"EDM(sigma_data={self.sigma_data:g}, P_mean={self.p_mean:g}, P_std={self.p_std:g})"


class Flow(Formulation):
    """Flow matching / rectified flow: x_t = (1 - t) x_0 + t eps for t in [0, 1], the network predicts the velocity
    dx_t/dt = eps - x_0 (Lipman et al. 2023; Liu et al. 2023), t ~ logit-normal(m, s) at training (Esser et al. 2024,
    eq. 19). In sigma: x_t = x / (1 + sigma) with sigma = t / (1 - t), so x_0 = x_t - t F. Sampling walks t evenly
    from t_max down to 0 (Euler in t is then DDIM in sigma)."""

    name = "flow"

    def __init__(self, t_mean: float = 0.0, t_std: float = 1.0, t_max: float = 0.999):
        self.t_mean, self.t_std, self.t_max = t_mean, t_std, t_max
        self.sigma_max = t_max / (1 - t_max)  # t = 1 is sigma = inf: start a hair short of it

    @staticmethod
    def t_of(sigma):
        return sigma / (1 + sigma)

    def c_in(self, sigma):
        return 1 / (1 + sigma)

    def c_noise(self, sigma):
        return 1000 * self.t_of(sigma)  # t on the 0..1000 range of the backbones' time embedding

    def to_x0(self, x, sigma, output):
        return self.c_in(sigma) * x - self.t_of(sigma) * output

    def output_for(self, x, sigma, x0):
        return (self.c_in(sigma) * x - x0) / self.t_of(sigma)

    def prior_std(self) -> float:
        return 1 + self.sigma_max  # x_t at t_max is (nearly) pure N(0, I) noise

    def sigmas(self, steps):
        t = self.t_max * (1 - torch.arange(steps + 1, dtype=torch.float64) / steps)
        return (t / (1 - t)).float()

    def draw_levels(self, n, device, generator=None):
        return torch.sigmoid(self.t_mean + self.t_std * torch.randn(n, device=device, generator=generator))

    def training_example(self, x0, t, eps):
        s = per_row(t, x0)
        return (1 - s) * x0 + s * eps, 1000 * t, eps - x0

    def snr_and_mse_scale(self, t):
        return ((1 - t) / t) ** 2, t**-2  # x_0 = x_t - t v, so x0_hat - x_0 = t (v - v_hat)

    def __repr__(self) -> str:
        return f"Flow(logit-normal t: m={self.t_mean:g}, s={self.t_std:g})"


@dataclass(frozen=True)
class FormulationSettings:
    """What a formulation is built from (a config's diffusion section has the same names). noise_mean / noise_std set
    the training noise-level distribution of EDM (ln sigma; None: -1.2, 1.2) and flow (logit t; None: 0, 1)."""

    schedule: str = "linear"
    timesteps: int = 1000
    sigma_data: float = 0.5
    noise_mean: float | None = None
    noise_std: float | None = None


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _discrete(target: str):
    return lambda s: DiscreteVP(target, make_schedule(s.schedule, s.timesteps))


# name -> builder from FormulationSettings; the config's diffusion.objective choices come from here
FORMULATIONS = {
    "eps": _discrete("eps"),
    "x0": _discrete("x0"),
    "v": _discrete("v"),
    "edm": lambda s: EDM(s.sigma_data, _or(s.noise_mean, -1.2), _or(s.noise_std, 1.2)),
    "flow": lambda s: Flow(_or(s.noise_mean, 0.0), _or(s.noise_std, 1.0)),
}
OBJECTIVES = tuple(FORMULATIONS)


def make_formulation(objective: str = "eps", **settings) -> Formulation:
    """The formulation `objective`, e.g. make_formulation("v", schedule="cosine") or make_formulation("edm")."""
    if objective not in FORMULATIONS:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    return FORMULATIONS[objective](FormulationSettings(**settings))
