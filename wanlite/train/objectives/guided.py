"""`guided`: classifier-free guidance distillation. The target is the teacher's guided velocity
v_u + g·(v_c − v_u) at a fixed g: the student learns to produce in one forward what the teacher produces in two,
and samples at cfg 1 (half the forwards, no negative prompt). With `sigma_sampling: student` it trains only at the
sigmas its own few-step schedule visits, where all of its capacity is needed. Wan has no guidance input, and adding
one would break the Wan key and shape contract, so g is fixed by the config and recorded in the student's sampling
record.

Everything else is the `velocity` objective: the same noising (only conditional samples: a guidance-free student
has no unconditional branch to learn), feature and task terms, and a teacher-target cache can hold the guided
targets (`write_teacher_targets(..., guidance=g)`) so students train without the teacher.
"""

from __future__ import annotations

import dataclasses

from ...core.flow import wan_forward
from ...errors import ConfigError
from ..inputs import forward_args
from .base import student_sampling
from .velocity import Velocity


class Guided(Velocity):
    """The teacher's CFG velocity at guidance `cfg.guidance`, learned by a conditional-only student."""

    name = "guided"

    def __init__(self, cfg, teacher, student, block_map, kept_channels, source, device):
        if not cfg.guidance > 0:
            raise ConfigError(
                f"guidance={cfg.guidance!r}: the guided objective needs a classifier-free guidance scale "
                "> 0 (Wan's default is 5; 1 means no guidance and is the velocity objective)."
            )
        super().__init__(cfg, teacher, student, block_map, kept_channels, source, device)
        visited = student_sampling(cfg, self.name).schedule()[:-1]  # sigma_sampling "student" trains only there
        self.noising = dataclasses.replace(self.noising, uncond_fraction=0.0, schedule=visited)

    def _check_target_cache(self, source) -> None:
        super()._check_target_cache(source)
        made = source.meta.get("guidance")
        if made != self.cfg.guidance:
            how = "without guidance (conditional velocities)" if made is None else f"at guidance {made}"
            raise ConfigError(
                f"the target cache {source.path} was made {how}, but the guided objective learns the "
                f"teacher's velocity at guidance {self.cfg.guidance}. Fix: rebuild it with "
                f"write_teacher_targets(..., guidance={self.cfg.guidance}), or set guidance: {made}."
            )

    def teacher_velocity(self, inputs: dict):
        args = forward_args(inputs)
        v_cond = wan_forward(self.teacher, **args)
        if self.cfg.guidance == 1:
            return v_cond
        v_uncond = wan_forward(self.teacher, **{**args, "context": inputs["negative"]})
        return v_uncond + self.cfg.guidance * (v_cond - v_uncond)

    def sampling(self):
        return student_sampling(self.cfg, self.name)
