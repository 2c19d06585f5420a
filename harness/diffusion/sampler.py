"""The shared DDIM loop with step-level control, written once for every method.

Generalised DDIM (Song et al.; Haas et al. eqs. 2-5), with ᾱ the cumulative noise schedule:
    P_t(ε) = (x_t − sqrt(1−ᾱ_t) ε) / sqrt(ᾱ_t)
    D_t(ε) = sqrt(1 − ᾱ_{t−1} − σ_t²) ε
    σ_t    = η sqrt((1−ᾱ_{t−1})/(1−ᾱ_t)) sqrt(1 − ᾱ_t/ᾱ_{t−1})
    x_{t−1} = sqrt(ᾱ_{t−1}) P_t + D_t + σ_t z_t
Step control: `denoise(start=i, stop=j)` runs steps i..j-1 of the grid, so a method can stop at any
step, change the state, and continue; `predict` replaces the guided ε of a step and `after_step` the state
after it, for methods that guide or blend differently.
Asyrp injection uses the edited ε in P_t and the unedited ε in D_t.
The state is kept in float32 whatever the UNet dtype, so the step arithmetic never depends on precision.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch

from harness.diffusion.compile import use_compiled
from harness.diffusion.hspace import MidBlockHook

DeltaH = Callable[[int], "torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None"]
"""delta_h(i): the Δh of grid step i: a tensor, a function of that step's own h (h -> Δh, evaluated inside the
forward pass by MidBlockHook: Asyrp's f_t(h_t)), or None (no edit at that step)."""


@dataclass(frozen=True)
class Schedule:
    """The DDIM timestep grid of a backbone's scheduler (diffusers' spacing and steps_offset)."""

    timesteps: tuple[int, ...]
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: float
    prediction_type: str
    num_train_timesteps: int

    @classmethod
    def from_backbone(cls, backbone: Any, num_steps: int) -> "Schedule":
        sched = copy.deepcopy(backbone.scheduler)
        sched.set_timesteps(num_steps)
        return cls(
            timesteps=tuple(int(t) for t in sched.timesteps),
            alphas_cumprod=sched.alphas_cumprod.double().cpu(),
            final_alpha_cumprod=float(sched.final_alpha_cumprod),
            prediction_type=sched.config.prediction_type,
            num_train_timesteps=int(sched.config.num_train_timesteps),
        )

    def __len__(self) -> int:
        return len(self.timesteps)

    def alpha(self, i: int) -> float:
        return float(self.alphas_cumprod[self.timesteps[i]])

    def alpha_prev(self, i: int) -> float:
        prev = self.timesteps[i] - self.num_train_timesteps // len(self.timesteps)
        return float(self.alphas_cumprod[prev]) if prev >= 0 else self.final_alpha_cumprod

    def sigma(self, i: int, eta: float) -> float:
        a, a_prev = self.alpha(i), self.alpha_prev(i)
        return eta * ((1 - a_prev) / (1 - a)) ** 0.5 * (1 - a / a_prev) ** 0.5

    def step_index(self, fraction: float) -> int:
        """Index of the grid step nearest t = fraction·T (the papers' "0.7T" wording; ties go to the noisier step).

        With SD's 50-step grid [981, 961, ..., 1] this maps 0.7T to index 14 (t = 701), as methods-spec §0 does.
        """
        target = fraction * self.num_train_timesteps
        return min(range(len(self.timesteps)), key=lambda i: (abs(self.timesteps[i] - target), i))


@dataclass
class Condition:
    """Text conditioning with classifier-free guidance: one batched call on [uncond, cond]."""

    cond: torch.Tensor
    uncond: torch.Tensor
    guidance_scale: float

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale != 1.0


def make_condition(backbone: Any, prompts: Sequence[str], guidance_scale: float) -> Condition | None:
    if backbone.family != "text":
        return None
    cond = backbone.encode_text(list(prompts))
    uncond = backbone.encode_text([""] * len(prompts))
    return Condition(cond, uncond, guidance_scale)


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
"""What a UNet may output (diffusers' scheduler `prediction_type`); every method works on ε, converted below."""


def check_prediction_type(scheduler: Any, model: str) -> str:
    """The scheduler's prediction_type, or HarnessError naming the model when it cannot be converted to ε."""
    from harness.errors import HarnessError

    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise HarnessError(f"model {model}: scheduler prediction_type {kind!r} is not supported (supported: "
                           f"{', '.join(PREDICTION_TYPES)}); fix scheduler/scheduler_config.json or convert the model")
    return kind


def predict_eps(backbone: Any, x: torch.Tensor, t: int, cond: Condition | None) -> torch.Tensor:
    """ε-prediction (float32) at state x and timestep t, guidance applied.

    An h-space edit needs no argument here: a MidBlockHook registered on `backbone.unet` (a context manager)
    shifts or records h inside the UNet call, and `use_compiled` keeps hooked calls off the compiled graph.

    Other parameterisations are converted with ᾱ_t of the model's timestep t (the noise level the model was
    told the state has), from x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε:
    - v-prediction (v = √ᾱ_t ε − √(1−ᾱ_t) x₀): ε = √ᾱ_t v + √(1−ᾱ_t) x_t;
    - sample (x₀-prediction): ε = (x_t − √ᾱ_t x₀) / √(1−ᾱ_t).
    Guidance is applied to the raw outputs first; the conversions are affine in the output, so this equals
    guiding ε. In DDIM inversion the state is at the less noisy level t_prev while the model is called at t:
    converting with ᾱ_t (as here) rather than with ᾱ of the state's level (diffusers' DDIMInverseScheduler
    does the latter) is the model's own definition of v, and reconstructs better: on world-ddpm (v-prediction),
    round-trip error 0.47 against 1.04 with diffusers' conversion (issue 17.6). Kept on purpose.
    """
    unet = backbone.compiled_unet if use_compiled(backbone, x) else backbone.unet
    x_in = x.to(backbone.dtype)
    if cond is None:
        out = unet(x_in, t).sample
    elif cond.uses_cfg:
        emb = torch.cat([cond.uncond, cond.cond])
        out_u, out_c = unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=emb).sample.chunk(2)
        out = out_u + cond.guidance_scale * (out_c - out_u)
    else:
        out = unet(x_in, t, encoder_hidden_states=cond.cond).sample
    return _output_to_eps(backbone, out, x, t)


def _output_to_eps(backbone: Any, out: torch.Tensor, x: torch.Tensor, t: int) -> torch.Tensor:
    """The UNet's raw output (B, ≥C, ...) for states x (B, C, ...) at timestep t as ε (float32); see predict_eps."""
    out = out[:, : x.shape[1]].float()  # models with learned variance emit 2C channels; ε is the first C
    kind = check_prediction_type(backbone.scheduler, getattr(backbone, "name", "<unnamed backbone>"))
    a = float(backbone.scheduler.alphas_cumprod[t])
    if kind == "v_prediction":
        out = a**0.5 * out + (1 - a) ** 0.5 * x.float()
    elif kind == "sample":
        out = (x.float() - a**0.5 * out) / (1 - a) ** 0.5
    return out


def h_shape(backbone: Any) -> tuple[int, ...]:
    """Shape (C, H, W) of h for one sample, found with one forward pass.

    Here rather than in hspace.py: it needs the UNet call (predict_eps), and hspace.py must not import this
    module, which imports MidBlockHook from it (the cycle of issue 17.12).
    """
    x = torch.zeros((1, *backbone.state_shape()), device=backbone.device)
    cond = None
    if backbone.family == "text":
        emb = backbone.encode_text([""])
        cond = Condition(emb, emb, guidance_scale=1.0)
    with MidBlockHook(backbone.unet) as hook, torch.no_grad():
        predict_eps(backbone, x, int(backbone.scheduler.config.num_train_timesteps) - 1, cond)
        if hook.last is None:
            raise RuntimeError("the UNet call did not run its mid_block, so h has no shape to read")
        return tuple(hook.last.shape[1:])


def predict_eps_parts(backbone: Any, x: torch.Tensor, t: int, embeddings: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Unguided ε (float32) of x (B, ...) at t under each of several conditionings (each (B, L, D)), in one UNet call.

    For methods that combine more than CFG's two halves (SEGA's edit concepts, DiffEdit's two prompts): the
    batch is [x under embeddings[0], x under embeddings[1], ...]. The output is converted to ε as in predict_eps
    (the same helper: before it, x₀-predicting "sample" models were read as ε here).
    """
    k = len(embeddings)
    x_in = x.to(backbone.dtype)
    out = backbone.unet(torch.cat([x_in] * k), t, encoder_hidden_states=torch.cat(list(embeddings))).sample
    return list(_output_to_eps(backbone, out, torch.cat([x] * k), t).chunk(k))


def strength_start(num_steps: int, strength: float, what: str = "strength") -> int:
    """Grid index an image-to-image pass starts denoising at for a noise `strength` in (0, 1]: the last
    n = min(⌊N·strength⌋, N) steps are run (diffusers' img2img / DiffEdit `get_timesteps` rule), so it is N − n.
    Raises when n = 0 (no step would run); `what` names the option in the message."""
    n = min(int(num_steps * strength), num_steps)
    if n < 1:
        raise ValueError(f"{what} = {strength} runs no step of a {num_steps}-step grid; raise it or num_steps "
                         f"so that int(num_steps * {what}) >= 1")
    return num_steps - n


def noise_to(schedule: Schedule, i: int, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A sample of the forward process q(x_t | x_0) at grid step i: sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε.

    The state `denoise(start=i)` starts from (diffusers' `scheduler.add_noise` at timesteps[i])."""
    a = schedule.alpha(i)
    return a**0.5 * x0.float() + (1 - a) ** 0.5 * noise.float()


def pred_x0(schedule: Schedule, i: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    a = schedule.alpha(i)
    return (x - (1 - a) ** 0.5 * eps) / a**0.5


def ddim_step(schedule: Schedule, i: int, x: torch.Tensor, eps: torch.Tensor, *, eps_dir: torch.Tensor | None = None,
              eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One generalised DDIM step from grid index i. `eps_dir` (Asyrp) feeds D_t; default: `eps`."""
    a_prev = schedule.alpha_prev(i)
    sigma = schedule.sigma(i, eta) if eta > 0 else 0.0
    eps_dir = eps if eps_dir is None else eps_dir
    x_prev = a_prev**0.5 * pred_x0(schedule, i, x, eps) + (1 - a_prev - sigma**2) ** 0.5 * eps_dir
    if sigma > 0:
        if noise is None:
            raise ValueError("eta > 0 needs the pre-sampled variance noise z_t (fixed per sample)")
        x_prev = x_prev + sigma * noise
    return x_prev


@dataclass
class Trace:
    """What a denoising pass recorded: x_t before each step and h_t (conditional half) at each step."""

    steps: list[int] = field(default_factory=list)
    xs: list[torch.Tensor] = field(default_factory=list)
    hs: list[torch.Tensor] = field(default_factory=list)
    record_h: bool = True
    record_x: bool = True


def _h_of_cond_half(h: torch.Tensor, batch: int) -> torch.Tensor:
    return h[-batch:].detach()


@torch.no_grad()
def denoise(
    backbone: Any,
    x: torch.Tensor,
    schedule: Schedule,
    cond: Condition | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    eta: float = 0.0,
    noises: torch.Tensor | None = None,
    delta_h: DeltaH | None = None,
    injection: Literal["plain", "asyrp"] = "plain",
    trace: Trace | None = None,
    relative_delta: bool = False,
    predict: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run DDIM steps start..stop-1 from state x (B, C, H, W); returns the state after the last step.

    noises: (B, num_steps, C, H, W) variance noise, indexed by grid step, required when eta > 0.
    delta_h(i): Δh for step i (B or 1, *h_shape), a function h -> Δh of the step's own h, or None; injected as
    `injection` says.
    relative_delta: delta_h(i) is in units of each sample's ‖h_t‖ at that pass (MidBlockHook.relative).
    predict(x, i): the ε to step with at grid step i, in place of `predict_eps(backbone, x, t_i, cond)`, for
    methods that guide differently (SEGA); it excludes `cond`, `delta_h` and h recording.
    after_step(i, x_prev): the state to continue from after step i (DiffEdit's masked blend), or None.
    """
    if predict is not None and (cond is not None or delta_h is not None or (trace is not None and trace.record_h)):
        raise ValueError("`predict` replaces the UNet call: it cannot be combined with cond, delta_h or h recording")
    stop = len(schedule) if stop is None else stop
    x = x.float()
    batch = x.shape[0]
    # Hooked only when h is edited or recorded: a hook-free UNet call may go to the compiled graph.
    needs_hook = delta_h is not None or (trace is not None and trace.record_h)
    with (MidBlockHook(backbone.unet) if needs_hook else contextlib.nullcontext()) as hook:
        for i in range(start, stop):
            t = schedule.timesteps[i]
            delta = delta_h(i) if delta_h is not None else None
            if trace is not None and trace.record_x:
                trace.xs.append(x.detach().clone())
            if trace is not None:
                trace.steps.append(i)
            if hook is not None:
                hook.delta, hook.relative, hook.samples = delta, relative_delta, batch
            eps = predict(x, i) if predict is not None else predict_eps(backbone, x, t, cond)
            if trace is not None and trace.record_h:
                # Record the unshifted h: what the model produced before the edit.
                assert hook is not None  # needs_hook holds whenever h is recorded or edited
                trace.hs.append(_h_of_cond_half(hook.raw, batch).float())
            eps_dir = None
            if injection == "asyrp" and delta is not None:
                assert hook is not None
                hook.delta = None
                eps_dir = predict_eps(backbone, x, t, cond)
            noise = noises[:, i].to(x.device) if (noises is not None and eta > 0) else None
            x = ddim_step(schedule, i, x, eps, eps_dir=eps_dir, eta=eta, noise=noise)
            if after_step is not None:
                x = after_step(i, x)
    return x


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...], num_steps: int, eta: float,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """x_T and the per-step variance noise z_{T:1} of each sample, from its own seed.

    Drawn on the CPU in float32 so the same seed gives the same start on every device; one
    generator per sample, so a sample's noise never depends on which batch it is in.
    """
    xs, zs = [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        xs.append(torch.randn(shape, generator=g))
        if eta > 0:
            zs.append(torch.randn((num_steps, *shape), generator=g))
    x_T = torch.stack(xs).to(device)
    return x_T, (torch.stack(zs).to(device) if zs else None)


def ddim_invert(backbone: Any, x0: torch.Tensor, schedule: Schedule, cond: Condition | None = None,
                trace: Trace | None = None, start: int = 0) -> torch.Tensor:
    """Deterministic DDIM inversion (η = 0): x_0 -> x_T along the same grid, run backwards.

    start: invert only as far as the state `denoise(start=start)` starts from (grid step `start`'s x_t), as
    DiffEdit's encoding ratio asks; 0 inverts the whole grid. The trace records the state after each inverse
    step, least noisy first (trace.steps holds the grid index i whose input state each one is).
    """
    if not 0 <= start <= len(schedule):
        raise ValueError(f"start must be a grid index in [0, {len(schedule)}], got {start}")
    x = x0.float()
    with torch.no_grad():
        for i in reversed(range(start, len(schedule))):
            t = schedule.timesteps[i]
            a, a_prev = schedule.alpha(i), schedule.alpha_prev(i)
            # ε is evaluated at the less noisy state (the standard approximation of inversion).
            eps = predict_eps(backbone, x, t, cond)
            x0_pred = (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
            x = a**0.5 * x0_pred + (1 - a) ** 0.5 * eps
            if trace is not None:
                trace.steps.append(i)
                trace.xs.append(x.detach().clone())
    return x
