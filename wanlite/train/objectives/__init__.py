"""What a student learns, one module per objective, all on the one training loop (`train.loop`):

* `velocity` — the teacher's velocity at every σ (output, feature and task terms); samples like the teacher.
* `guided` — the teacher's CFG velocity v_u + g·(v_c − v_u) at a fixed g: the student samples at cfg 1.
* `trajectory` — the teacher's ODE at the student's k steps: its Euler step lands on the teacher's next state.
* `dmd` — DMD2 distribution matching: a few-step generator, the teacher as real score, a fake score trained online.
"""

from ..config import OBJECTIVE_NAMES
from ..inputs import Noising, draw_sigma, keyed, model_inputs, sample_draws
from .base import LossParts, Objective, velocity_report
from .dmd import DMD
from .guided import Guided
from .trajectory import Trajectory, student_schedule
from .velocity import Velocity

OBJECTIVES = {"velocity": Velocity, "guided": Guided, "trajectory": Trajectory, "dmd": DMD}
assert tuple(OBJECTIVES) == OBJECTIVE_NAMES  # the config's vocabulary and the modules agree

__all__ = [
    "DMD",
    "Guided",
    "LossParts",
    "Noising",
    "OBJECTIVES",
    "Objective",
    "Trajectory",
    "Velocity",
    "draw_sigma",
    "keyed",
    "model_inputs",
    "sample_draws",
    "student_schedule",
    "velocity_report",
]
