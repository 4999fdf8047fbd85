"""What a student file records about how it was made, beside its weights: the `Recipe` asked for, the `Pruning`
done (every kept teacher index), and how they travel in safetensors metadata.

Records are small: kept indices are stored as bitmasks over their channel space (a width-pruned 14B student's
record is about 100 KB, not the 0.9 MB of plain JSON). Metadata holds a summary, the record's hash and, when it
fits in `INLINE_LIMIT` bytes, the record itself, else a pointer: directory exports carry the full record as
`pruning.json`, a single ComfyUI file too big to carry it as `NAME.pruning.json` beside it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import ConfigError, FormatError, RecipeError
from .spec import COMFY_HEAD_DIM, WanSpec, spec_of

DEPTH_SELECTIONS = ("uniform", "first", "importance")
WIDTH_SELECTIONS = ("importance", "magnitude")
BLOCK_SCORES = ("cosine", "skip")
PRUNING_FILE = "pruning.json"
INLINE_LIMIT = 64 * 1024  # bytes of compact record that may live inside the safetensors metadata


@dataclass(frozen=True)
class Recipe:
    """How to cut a teacher into a student. None keeps the teacher's value. JSON- and papermill-friendly."""

    num_blocks: int | None = None  # K blocks kept of the teacher's N (None: all, or len(blocks) when a list)
    blocks: str | tuple[int, ...] = "uniform"  # uniform (evenly spaced, first+last) | first | importance | indices
    num_heads: int | None = None  # heads kept per attention; student dim = num_heads * 128
    ffn_dim: int | None = None  # FFN width, one for every block (ComfyUI reads it from block 0)
    width_selection: str = "importance"  # which heads / neurons / channels: importance (calibrated) | magnitude
    block_score: str = (
        "cosine"  # depth importance: cosine (ShortGPT 1-cos) | skip (output change, calibrate(skip_blocks=True))
    )
    dim: int | None = None  # alternative to num_heads: must equal num_heads * 128

    def __post_init__(self):
        if isinstance(self.blocks, (list, tuple)):
            object.__setattr__(self, "blocks", tuple(self.blocks))
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.blocks):
                raise RecipeError(f"Recipe.blocks: explicit block indices must be integers; got {list(self.blocks)}.")
        elif self.blocks not in DEPTH_SELECTIONS:
            raise RecipeError(
                f"Recipe.blocks must be one of {DEPTH_SELECTIONS} or a list of teacher block indices; "
                f"got {self.blocks!r}."
            )
        if isinstance(self.ffn_dim, (list, tuple)):
            widths = sorted(set(self.ffn_dim))
            raise RecipeError(
                f"Recipe.ffn_dim: per-block FFN widths {list(self.ffn_dim)} are not loadable: ComfyUI "
                f"reads ffn_dim from block 0 and builds every block with it. Use one width, e.g. "
                f"ffn_dim={widths[-1]} (the widest) or {int(sum(self.ffn_dim) / len(self.ffn_dim))} (the mean)."
            )
        for name in ("num_blocks", "num_heads", "ffn_dim", "dim"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise RecipeError(f"Recipe.{name} must be an integer or None; got {v!r}.")
        if self.width_selection not in WIDTH_SELECTIONS:
            raise RecipeError(
                f"Recipe.width_selection must be one of {WIDTH_SELECTIONS}; got {self.width_selection!r}."
            )
        if self.block_score not in BLOCK_SCORES:
            raise RecipeError(f"Recipe.block_score must be one of {BLOCK_SCORES}; got {self.block_score!r}.")

    @classmethod
    def from_fractions(
        cls,
        teacher,
        depth: float = 1.0,
        width: float | None = None,
        ffn: float | None = None,
        projection_factor: float | None = None,
        **fields,
    ) -> "Recipe":
        """Kept fractions -> counts: blocks round(N*depth), heads round(H*width), ffn round(F*ffn) (ffn defaults
        to width). `teacher`: its WanSpec or the model. `projection_factor` is the seeds' name for `width`."""
        teacher = teacher if isinstance(teacher, WanSpec) else spec_of(teacher)
        if projection_factor is not None:
            if width is not None and width != projection_factor:
                raise RecipeError(f"width={width} and projection_factor={projection_factor} disagree; give one.")
            width = projection_factor
        width = 1.0 if width is None else width
        ffn = width if ffn is None else ffn
        for name, v in (("depth", depth), ("width", width), ("ffn", ffn)):
            if not 0 < v <= 1:
                raise RecipeError(f"Recipe.from_fractions: {name}={v} must be in (0, 1].")
        return cls(
            num_blocks=max(1, round(teacher.num_layers * depth)),
            num_heads=max(1, round(teacher.num_heads * width)),
            ffn_dim=max(1, round(teacher.ffn_dim * ffn)),
            **fields,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["blocks"] = list(self.blocks) if isinstance(self.blocks, tuple) else self.blocks
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping) -> "Recipe":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise RecipeError(
                f"Recipe has no field(s) {sorted(unknown)}; fields: {[f.name for f in dataclasses.fields(cls)]}."
            )
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls.from_dict(json.loads(text))

    def student_spec(self, teacher: WanSpec) -> WanSpec:
        """The student's WanSpec; a RecipeError (with the nearest valid recipe) when it cannot be built/loaded."""
        n, h, f = teacher.num_layers, teacher.num_heads, teacher.ffn_dim
        k = self.num_blocks
        if isinstance(self.blocks, tuple):
            bad = [i for i in self.blocks if not 0 <= i < n]
            if bad:
                raise RecipeError(
                    f"Recipe.blocks: index(es) {bad} out of range; the teacher has blocks 0..{n - 1}. "
                    f"Nearest valid: blocks={[i for i in self.blocks if 0 <= i < n]}."
                )
            repeated = sorted({i for i in self.blocks if self.blocks.count(i) > 1})
            if repeated:
                raise RecipeError(
                    f"Recipe.blocks: block(s) {repeated} repeated; each teacher block can be kept once. "
                    f"Nearest valid: blocks={list(dict.fromkeys(self.blocks))}."
                )
            if k is not None and k != len(self.blocks):
                raise RecipeError(f"Recipe: num_blocks={k} but {len(self.blocks)} explicit blocks; drop num_blocks.")
            k = len(self.blocks)
        k = n if k is None else k
        if not 1 <= k <= n:
            raise RecipeError(
                f"Recipe.num_blocks={k}: the teacher has {n} blocks; keep between 1 and {n} "
                f"(nearest valid: num_blocks={min(max(k, 1), n)})."
            )
        heads = self.num_heads
        if self.dim is not None:
            nearest = max(1, round(self.dim / COMFY_HEAD_DIM))
            if self.dim % COMFY_HEAD_DIM or self.dim <= 0:
                raise RecipeError(
                    f"Recipe.dim={self.dim} is not a multiple of 128: ComfyUI runs dim // 128 heads of 128 "
                    f"and would mis-load it. Nearest valid: num_heads={nearest} (dim={nearest * 128})."
                )
            if heads is not None and heads * COMFY_HEAD_DIM != self.dim:
                raise RecipeError(
                    f"Recipe: dim={self.dim} and num_heads={heads} disagree (dim = num_heads * 128); give one."
                )
            heads = self.dim // COMFY_HEAD_DIM
        heads = h if heads is None else heads
        if heads < 1:
            raise RecipeError(
                f"Recipe.num_heads={heads}: a student needs at least one head (ComfyUI divides by "
                f"dim // 128). Nearest valid: num_heads=1 (dim={teacher.head_dim})."
            )
        if heads > h:
            raise RecipeError(
                f"Recipe.num_heads={heads}: the teacher has only {h} heads; pruning cannot add heads. "
                f"Nearest valid: num_heads={h}."
            )
        ffn = f if self.ffn_dim is None else self.ffn_dim
        if not 1 <= ffn <= f:
            raise RecipeError(
                f"Recipe.ffn_dim={ffn}: the teacher's FFN is {f} wide; keep between 1 and {f} "
                f"(nearest valid: ffn_dim={min(max(ffn, 1), f)})."
            )
        student = teacher.replace(num_layers=k, num_heads=heads, dim=heads * teacher.head_dim, ffn_dim=ffn)
        new = [p for p in student.comfyui_problems() if p.field not in {q.field for q in teacher.comfyui_problems()}]
        if new:
            raise RecipeError("Recipe: ComfyUI would mis-load this student:\n" + "\n".join(f"  - {p}" for p in new))
        return student


@dataclass
class Pruning:
    """Exactly what was kept, as teacher indices (heads, channels and neurons ascending): reproducible, and
    carried by the student (`student.pruning`) through every save and load."""

    teacher: WanSpec  # the teacher's architecture
    student: WanSpec  # the student's architecture
    recipe: Recipe  # what was asked
    kept_blocks: list[int]  # teacher block index of each student block
    kept_heads: list[list[int]]  # per student block: teacher self-attention heads kept
    kept_cross_heads: list[list[int]]  # per student block: teacher cross-attention heads kept
    kept_channels: list[int]  # teacher residual-stream channels kept (len = student dim)
    kept_ffn: list[list[int]]  # per student block: teacher FFN neurons kept
    kept_embedding: dict[str, list[int]]  # text_hidden, time_hidden, text_context[, image_context] channels kept
    teacher_fingerprint: str = ""  # weights hash of the teacher (wanlite.compress.calibrate.teacher_fingerprint)
    calibration: str = ""  # cache key of the calibration used ("" = none needed)

    # ---- sizes of the spaces the indices live in (for the compact form) ----
    def _sizes(self) -> dict[str, int]:
        t = self.teacher
        return {
            "kept_heads": t.num_heads,
            "kept_cross_heads": t.num_heads,
            "kept_channels": t.dim,
            "kept_ffn": t.ffn_dim,
            "kept_embedding": t.dim,
        }

    def to_dict(self, compact: bool = False) -> dict:
        """Plain JSON types. `compact`: index lists as bitmasks (base64) over their space, for metadata."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(teacher=spec_json(self.teacher), student=spec_json(self.student), recipe=self.recipe.to_dict())
        if compact:
            sizes = self._sizes()
            d["kept_channels"] = _pack(self.kept_channels, sizes["kept_channels"])
            for name in ("kept_heads", "kept_cross_heads", "kept_ffn"):
                d[name] = [_pack(row, sizes[name]) for row in d[name]]
            d["kept_embedding"] = {k: _pack(v, sizes["kept_embedding"]) for k, v in self.kept_embedding.items()}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping) -> "Pruning":
        """From `to_dict`'s output, plain or compact."""
        d = dict(d)
        d.update(teacher=WanSpec(**d["teacher"]), student=WanSpec(**d["student"]), recipe=Recipe.from_dict(d["recipe"]))
        d["kept_channels"] = _unpack(d["kept_channels"])
        for name in ("kept_heads", "kept_cross_heads", "kept_ffn"):
            d[name] = [_unpack(row) for row in d[name]]
        d["kept_embedding"] = {k: _unpack(v) for k, v in d["kept_embedding"].items()}
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Pruning":
        return cls.from_dict(json.loads(text))

    def sha256(self) -> str:
        """Hash of the plain record: ties a `pruning.json` to the weights whose metadata names it."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def summary(self) -> dict:
        """What a person reads first: sizes and kept blocks, without the index lists."""
        t, s = self.teacher, self.student
        return {
            "teacher": str(t),
            "student": str(s),
            "kept_blocks": self.kept_blocks,
            "heads": f"{t.num_heads} -> {s.num_heads}",
            "ffn": f"{t.ffn_dim} -> {s.ffn_dim}",
            "blocks_by": self.recipe.blocks if isinstance(self.recipe.blocks, str) else "list",
            "width_by": self.recipe.width_selection,
        }

    def __repr__(self) -> str:
        t, s = self.teacher, self.student
        blocks = self.kept_blocks if len(self.kept_blocks) <= 16 else self.kept_blocks[:16] + ["..."]
        how = self.recipe.blocks if isinstance(self.recipe.blocks, str) else "list"
        return (
            f"Pruning({t.num_params() / 1e6:.1f}M -> {s.num_params() / 1e6:.1f}M params: blocks {t.num_layers} -> "
            f"{s.num_layers} {blocks}; heads {t.num_heads} -> {s.num_heads} (dim {t.dim} -> {s.dim}); "
            f"ffn {t.ffn_dim} -> {s.ffn_dim}; blocks by {how}, width by {self.recipe.width_selection})"
        )


def spec_json(spec: WanSpec) -> dict:
    """A WanSpec as plain JSON types."""
    d = dataclasses.asdict(spec)
    d["patch_size"] = list(d["patch_size"])
    return d


def _pack(indices, size: int) -> dict:
    """Ascending indices in range(size) as a bitmask: {"n": size, "bits": base64}."""
    mask = np.zeros(size, dtype=bool)
    mask[list(indices)] = True
    return {"n": size, "bits": base64.b64encode(np.packbits(mask, bitorder="little").tobytes()).decode()}


def _unpack(value) -> list[int]:
    """`_pack`'s output (or a plain list, as older records hold) -> ascending indices."""
    if isinstance(value, dict):
        bits = np.frombuffer(base64.b64decode(value["bits"]), dtype=np.uint8)
        return np.flatnonzero(np.unpackbits(bits, bitorder="little")[: value["n"]]).tolist()
    return [int(i) for i in value]


# ---------------------------------------------------------------- in safetensors metadata
def pruning_metadata(pruning: Pruning, beside: str = PRUNING_FILE) -> str:
    """The `wanlite.pruning` metadata value: summary and hash always; the compact record when it fits in
    INLINE_LIMIT bytes; else a pointer to the file `beside` the weights that holds the full record (a directory
    export's pruning.json; a single file's `<name>.pruning.json`, see `pruning_sidecar`)."""
    entry = {"summary": pruning.summary(), "sha256": pruning.sha256()}
    record = json.dumps(pruning.to_dict(compact=True), separators=(",", ":"))
    if len(record) <= INLINE_LIMIT:
        entry["record"] = json.loads(record)
    else:
        entry["file"] = beside
    return json.dumps(entry, separators=(",", ":"))


def pruning_sidecar(weights) -> str:
    """The name of the full record beside a single weights file: `NAME.pruning.json` for `NAME.safetensors`."""
    return Path(weights).with_suffix(".pruning.json").name


def pruning_file(value: str | None) -> str | None:
    """The file a `wanlite.pruning` metadata value points at (None when the record is inline or absent)."""
    try:
        entry = json.loads(value) if value else None
    except ValueError:
        return None
    return entry.get("file") if isinstance(entry, dict) else None


def pruning_from_metadata(value: str | None, folder=None, where: str = "metadata") -> Pruning | None:
    """The Pruning a `wanlite.pruning` metadata value describes (reading the file beside the weights it points at,
    in `folder`), or None when the value is absent. A pointed-at record that is missing, unreadable or does not
    match the hash is an error naming that file and the fix (ComfyUI never reads it: the weights load there)."""
    if not value:
        return None
    beside = None
    try:
        entry = json.loads(value)
        if not isinstance(entry, dict):
            raise TypeError(f"a JSON {type(entry).__name__}, not an object")
        if "sha256" not in entry:  # an older export: the plain record itself
            return Pruning.from_dict(entry)
        if "record" in entry:
            return Pruning.from_dict(entry["record"])
        name = str(entry.get("file", PRUNING_FILE))
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"'file': {name!r} is not a file name beside the weights")
        beside = Path(folder) / name if folder is not None else Path(name)
        if not beside.is_file():
            raise FormatError(
                f"{where}: its pruning record ({entry.get('summary')}) is not in the metadata (it is larger than "
                f"{INLINE_LIMIT} bytes) but in {name} beside the weights, and {beside} is missing. Fix: copy {name} "
                "from the export it came with next to them, or export the student again (save_wan writes both)."
            )
        pruning = Pruning.from_json(beside.read_text())
    except (ValueError, TypeError, KeyError, AttributeError) as err:  # JSONDecodeError is a ValueError
        if beside is None:
            what, fix = f"{where}: wanlite.pruning", "re-export the student with wanlite"
        else:
            what, fix = beside, "restore the file written with these weights (or re-export the student)"
        raise FormatError(f"{what} is not a valid pruning record ({err}). Fix: {fix}.") from None
    if pruning.sha256() != entry["sha256"]:
        raise FormatError(
            f"{beside} does not match the pruning hash in {where}'s metadata: it belongs to another export. Fix: "
            "restore the pruning record written with these weights."
        )
    return pruning


# ---------------------------------------------------------------- how a student samples
SOLVERS = ("unipc", "euler", "lcm")  # diffusers' UniPC; flow Euler (ComfyUI `euler`); x0 + fresh noise (`lcm`)


def shifted_schedule(steps: int, shift: float) -> tuple[float, ...]:
    """Wan's shifted schedule of `steps` steps: s·t / (1 + (s − 1)·t) at t = 1, …, 1/steps, then 0. It is what
    ComfyUI's `simple` scheduler gives under ModelSamplingSD3(shift) whenever `steps` divides 1000."""
    ts = [1 - i / steps for i in range(steps + 1)]
    return tuple(round(shift * t / (1 + (shift - 1) * t), 8) for t in ts)


@dataclass(frozen=True)
class Sampling:
    """How a model samples: the student's own settings travel with it (`student.sampling`, metadata
    `wanlite.sampling`, the model card and a ComfyUI workflow), so every tool samples it the way it was trained."""

    steps: int = 20  # sampler steps
    guidance: float = 5.0  # classifier-free guidance scale to sample with (1 = no unconditional pass)
    shift: float = 5.0  # Wan's sigma shift of the schedule (ComfyUI: ModelSamplingSD3)
    solver: str = "unipc"  # unipc | euler | lcm (see SOLVERS)
    sigmas: tuple[float, ...] | None = None  # the exact schedule, 1 ... 0 (steps + 1 values); None: the solver's own
    objective: str = ""  # how a student learned to sample this way (velocity | guided | trajectory | dmd)
    trained_guidance: float | None = None  # the teacher's CFG scale baked into a guidance-free student

    def __post_init__(self):
        object.__setattr__(self, "sigmas", None if self.sigmas is None else tuple(float(s) for s in self.sigmas))
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ConfigError(f"Sampling.steps={self.steps!r}: a sampler needs at least one step (k >= 1).")
        if self.solver not in SOLVERS:
            raise ConfigError(f"Sampling.solver={self.solver!r}; expected one of {SOLVERS}.")
        if not self.guidance > 0:
            raise ConfigError(f"Sampling.guidance={self.guidance!r} must be > 0 (1 = no classifier-free guidance).")
        if self.sigmas is not None:
            check_schedule(self.sigmas, self.steps, "Sampling.sigmas")
            if self.solver == "unipc":
                raise ConfigError(
                    "Sampling.sigmas: an exact schedule needs solver='euler' or 'lcm' (ComfyUI's uni_pc "
                    "drops the penultimate sigma, and diffusers' UniPC re-shifts given sigmas)."
                )

    @property
    def forwards(self) -> int:
        """Transformer forwards per video: steps, twice with classifier-free guidance."""
        return self.steps * (1 if self.guidance == 1 else 2)

    def schedule(self) -> tuple[float, ...] | None:
        """The exact sigmas this sampling visits (None: UniPC's own schedule, which diffusers computes)."""
        if self.sigmas is not None:
            return self.sigmas
        return None if self.solver == "unipc" else shifted_schedule(self.steps, self.shift)

    def with_steps(self, steps: int) -> "Sampling":
        """The same sampler at another step count: an exact schedule becomes Wan's shifted one of `steps` steps
        (a `guided` student trained over all sigmas samples at any k; a `trajectory` one only at its own)."""
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"student steps={steps!r}: a sampler needs at least one step (k >= 1).")
        if steps == self.steps:
            return self
        sigmas = None if self.sigmas is None else shifted_schedule(steps, self.shift)
        return dataclasses.replace(self, steps=steps, sigmas=sigmas)

    def comfyui(self) -> dict:
        """What ComfyUI needs to reproduce this sampling: sampler, scheduler (or exact sigmas), steps, cfg, shift."""
        exact = self.schedule()
        simple = (
            exact is not None and 1000 % self.steps == 0 and _close(exact, shifted_schedule(self.steps, self.shift))
        )
        return {
            "sampler_name": {"unipc": "uni_pc", "euler": "euler", "lcm": "lcm"}[self.solver],
            "scheduler": "simple" if simple or exact is None else "manual sigmas",
            "steps": self.steps,
            "cfg": self.guidance,
            "shift": self.shift,
            "sigmas": None if simple or exact is None else list(exact),
        }

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sigmas"] = None if self.sigmas is None else list(self.sigmas)
        d["comfyui"] = self.comfyui()
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Sampling":
        d = {k: v for k, v in d.items() if k != "comfyui"}
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise FormatError(f"Sampling has no field(s) {sorted(unknown)}.")
        return cls(**d)

    def __repr__(self) -> str:
        how = f"{self.solver}, {self.steps} steps, cfg {self.guidance:g}, shift {self.shift:g}"
        if self.sigmas is not None:
            how += f", sigmas {[round(s, 4) for s in self.sigmas]}"
        made = f"; {self.objective}" if self.objective else ""
        baked = f" (teacher cfg {self.trained_guidance:g} baked in)" if self.trained_guidance else ""
        return f"Sampling({how}: {self.forwards} forwards/video{made}{baked})"


def check_schedule(sigmas, steps: int | None = None, where: str = "sigmas") -> tuple[float, ...]:
    """A student schedule must run strictly downward from 1 to 0 (steps + 1 values)."""
    sigmas = tuple(float(s) for s in sigmas)
    if len(sigmas) < 2 or abs(sigmas[0] - 1) > 1e-6 or sigmas[-1] != 0:
        raise ConfigError(f"{where}={list(sigmas)}: a schedule starts at 1 (pure noise) and ends at 0 (the sample).")
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])):
        raise ConfigError(f"{where}={list(sigmas)}: sigmas must be strictly decreasing.")
    if steps is not None and len(sigmas) != steps + 1:
        raise ConfigError(f"{where}: {len(sigmas)} values for {steps} steps; give steps + 1 values (ending at 0).")
    return sigmas


def _close(a, b, tol: float = 1e-6) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def sampling_from_metadata(value: str | None, where: str = "metadata") -> Sampling | None:
    if not value:
        return None
    try:
        return Sampling.from_dict(json.loads(value))
    except (ValueError, TypeError, AttributeError, KeyError, ConfigError) as err:
        raise FormatError(
            f"{where}: wanlite.sampling is not a valid sampling record ({err}). "
            "Fix: re-export the student with wanlite."
        ) from None
