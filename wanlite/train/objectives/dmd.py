"""`dmd`: DMD2-style distribution matching (Yin et al. 2024; what LightX2V and FastVideo ship for Wan). The student
is a few-step generator on its own schedule; the "real score" is the frozen teacher with CFG; the "fake score" is a
trainable Wan (a copy of the teacher, or of the student for less memory) fitted online to the student's samples
with the flow-matching loss. Per step:

1. `fake_steps` times (two time scales): a student sample x0 (no gradients), re-noised at a random σ, and one
   update of the fake score on MSE(v_fake(x_σ), ε − x0) with its own optimiser.
2. The generator: a student sample produced by backward simulation (a random number i < k of its own steps from
   noise without gradients, then step i with them: the inputs it meets when it samples), re-noised at σ ~ U[0.02,
   0.98] shifted; the teacher's and the fake score's x0 there; grad = (x0_fake − x0_real) / mean|x0 − x0_real|
   (DMD's normalisation) and the loss 0.5·MSE(x0, (x0 − grad).detach()), whose gradient is that direction.

The student's next state after an x0 prediction is the `student_solver`'s: `lcm` adds fresh noise at the next σ
(DMD's own rule, ComfyUI's `lcm` sampler) and `euler` takes the ODE step (ComfyUI's `euler`). Memory: teacher +
fake score + student, and the optimiser states of both trainable models (see the README, "What fits where").
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ...core.flow import add_noise, euler_step, predict_x0, rel_mse, shift_sigma, wan_forward
from ...errors import ConfigError
from ...evaluate.sampling import sample, solve_through
from ..data import fixed_batch
from ..inputs import keyed
from ..optim import make_optimizer, place
from .base import LossParts, Objective, student_sampling
from .trajectory import student_schedule

SIGMA_RANGE = (0.02, 0.98)  # where DMD re-noises (timesteps 20..980 upstream)


class DMD(Objective):
    """Distribution matching with a fake score trained online (see the module docstring)."""

    name = "dmd"

    def __init__(self, cfg, teacher, student, block_map, kept_channels, source, device):
        super().__init__(cfg, teacher, student, block_map, kept_channels, source, device)
        if not cfg.guidance > 0:
            raise ConfigError(f"guidance={cfg.guidance!r}: the real score is the teacher with CFG; give a scale > 0.")
        if cfg.fake_init not in ("teacher", "student"):
            raise ConfigError(
                f"fake_init={cfg.fake_init!r}; expected teacher (a copy of the teacher: the better "
                "start) or student (a copy of the student: less memory)."
            )
        if cfg.fake_steps < 1:
            raise ConfigError(f"fake_steps={cfg.fake_steps}: the fake score needs at least one update per step.")
        if cfg.w_feat > 0 or cfg.w_task > 0:
            raise ConfigError("w_feat and w_task belong to the velocity and guided objectives. Fix: set them to 0.")
        self.sigmas = student_schedule(cfg)
        self.fake_source = teacher if cfg.fake_init == "teacher" else student

    def prepare(self, acc) -> None:
        """The fake score and its optimiser, under accelerate (so every checkpoint holds them)."""
        from accelerate.utils import DistributedType

        if acc.distributed_type == DistributedType.FSDP:
            raise ConfigError(
                "objective dmd under FSDP is not supported: the fake score is a full copy per process. "
                "Fix: use DDP (fake_init: student keeps it small), or the trajectory objective."
            )
        fake = place(copy.deepcopy(self.fake_source), None, torch.float32).requires_grad_(True).train()
        optimizer = make_optimizer(
            self.cfg.optimizer,
            fake.parameters(),
            self.cfg.fake_lr or self.cfg.lr,
            self.cfg.weight_decay,
            **(self.cfg.optimizer_args or {}),
        )
        self.acc = acc
        self.fake, self.fake_optimizer = acc.prepare(fake, optimizer)
        del self.fake_source

    def _shape(self, batch: dict) -> tuple[int, ...]:
        """The latent shape of a sample: its latents' (a prompts-only cache has none: `latent_shape`)."""
        return tuple(batch["latents"].shape[1:]) if "latents" in batch else tuple(self.cfg.latent_shape)

    # ---- the student's own samples ----
    def _generate(self, student, noise, context, keys, tag: str, grad: bool) -> torch.Tensor:
        """x0 at a random step i of the student's sampling from `noise` (steps before i without gradients)."""
        k = len(self.sigmas) - 1
        i = min(int(keyed(keys[:1], self.cfg.seed, f"{tag}-step")[0] * k), k - 1)  # one step index per batch
        x = noise
        with torch.no_grad():
            for j in range(i):
                s, s_next = self.sigmas[j], self.sigmas[j + 1]
                v = wan_forward(student, x, s, context)
                if self.cfg.student_solver == "lcm":  # x0, then fresh noise at the next sigma
                    fresh = keyed(keys, self.cfg.seed, f"{tag}-renoise{j}", x.shape[1:], True, x.device)
                    x = add_noise(predict_x0(x, v, s), fresh, s_next)
                else:
                    x = euler_step(x, v, s, s_next)
        with torch.set_grad_enabled(grad):
            return predict_x0(x, wan_forward(student, x, self.sigmas[i], context), self.sigmas[i])

    def _renoise(self, x0, keys, tag: str):
        """(x_σ, σ, ε) at a keyed σ ~ U[SIGMA_RANGE] passed through Wan's shift."""
        lo, hi = SIGMA_RANGE
        sigma = shift_sigma(lo + (hi - lo) * keyed(keys, self.cfg.seed, f"{tag}-sigma"), self.cfg.shift).to(x0)
        eps = keyed(keys, self.cfg.seed, f"{tag}-eps", x0.shape[1:], True, x0.device)
        return add_noise(x0, eps, sigma), sigma, eps

    # ---- one step: fake-score updates, then the generator's loss ----
    def loss(self, student, batch: dict, keys: list[int]) -> LossParts:
        context = batch["context"].to(self.device).float()
        negative = batch.get("negative_context")
        negative = torch.zeros_like(context) if negative is None else negative.to(self.device).float()
        noise = keyed(keys, self.cfg.seed, "noise", self._shape(batch), True, self.device)
        fake_losses = [self._fake_step(student, noise, context, keys, f"fake{f}") for f in range(self.cfg.fake_steps)]
        loss = self.generator_loss(student, noise, context, negative, keys)
        return LossParts(loss, {"loss": loss, "dmd": loss.detach(), "fake": torch.stack(fake_losses).mean()})

    def generator_loss(self, student, noise, context, negative, keys) -> torch.Tensor:
        """0.5·MSE(x0, (x0 − grad).detach()): its gradient on the student's x0 is grad, the normalised difference
        of the fake and real scores' x0 at the re-noised sample (zero when the fake score equals the real one)."""
        x0 = self._generate(student, noise, context, keys, "gen", grad=True)
        x_t, sigma, _ = self._renoise(x0.detach(), keys, "gen")
        with torch.no_grad():
            v_cond = wan_forward(self.teacher, x_t, sigma, context)
            v_uncond = wan_forward(self.teacher, x_t, sigma, negative) if self.cfg.guidance != 1 else v_cond
            real = predict_x0(x_t, v_uncond + self.cfg.guidance * (v_cond - v_uncond), sigma)
            fake = predict_x0(x_t, wan_forward(self.fake, x_t, sigma, context), sigma)
            scale = (x0 - real).abs().mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clamp_min(1e-6)
            direction = torch.nan_to_num((fake - real) / scale)
        return 0.5 * F.mse_loss(x0, (x0 - direction).detach())

    def _fake_step(self, student, noise, context, keys, tag: str) -> torch.Tensor:
        """One update of the fake score on the student's current samples (flow matching, no CFG)."""
        x0 = self._generate(student, noise, context, keys, tag, grad=False)
        x_t, sigma, eps = self._renoise(x0, keys, tag)
        loss = F.mse_loss(wan_forward(self.fake, x_t, sigma, context), eps - x0)
        self.acc.backward(loss)
        if self.cfg.max_grad_norm > 0:
            self.acc.clip_grad_norm_(self.fake.parameters(), self.cfg.max_grad_norm)
        self.fake_optimizer.step()
        self.fake_optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # ---- validation: the student's k-step samples against the teacher's, from the same held-out noise ----
    def prepare_validation(self, indices: list[int]) -> None:
        batch = fixed_batch(self.source, indices)
        self.val_context = batch["context"].to(self.device).float()
        negative = batch.get("negative_context")
        shape = self._shape(batch)
        self.val_noise = keyed([-(i + 1) for i in range(len(indices))], self.cfg.seed, "val", shape, True, self.device)
        self.val_target = solve_through(
            self.teacher,
            self.val_noise,
            self.val_context,
            None if negative is None else negative.to(self.device),
            self.sigmas,
            self.cfg.guidance,
            self.cfg.shift,
            self.cfg.teacher_substeps,
        )[-1]

    @torch.no_grad()
    def validate(self, student) -> dict:
        x = sample(student, self.val_noise, self.val_context, sampling=self.sampling(), seed=self.cfg.seed).latents
        error = rel_mse(x, self.val_target)  # DMD matches the teacher's distribution, not each of its samples
        return {"rel_mse": error, "final_rel_mse": error}

    def sampling(self):
        return student_sampling(self.cfg, self.name)
