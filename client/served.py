"""What a call's generation settings resolve against: the served model (`ServedModel`, read once
from its config) and the settings a call asks for (`Wanted`: a settings object and keyword overrides).

Precedence, in `Wanted.resolve`: keyword overrides (`steps=30`) > the `settings` object > the
latents' own settings (decode: they invert the encode that made them) > the served model's defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypedDict

from grouplat.client.errors import ServerError
from grouplat.client.latents import Settings
from grouplat.serving.contract import (
    FINGERPRINT_PARAM,
    GENERATE_SCHEDULE_PARAM,
    HIDE_PARAM,
    SOLVER_PARAM,
    SPACE_PARAM,
    STEPS_PARAM,
    TRAIN_SCHEDULE_PARAM,
)
from grouplat.space import LatentSpace


@dataclass(frozen=True)
class ServedModel:
    """What the client reads from the server once: the model's identity, layout and defaults."""

    fingerprint: str
    space: LatentSpace
    settings: Settings  # the generation defaults (config `solver`, `steps`, `generate_schedule`)
    train_schedule: str
    hide: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ServedModel:
        """From a model config as JSON (`get_model_config(name, as_json=True)["config"]`).

        Raises:
            ServerError: the config lacks grouplat's parameters (not a grouplat model).
        """
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        needed = (FINGERPRINT_PARAM, SPACE_PARAM, SOLVER_PARAM, STEPS_PARAM, GENERATE_SCHEDULE_PARAM)
        missing = [name for name in needed if not params.get(name)]
        if missing:
            raise ServerError(
                f"model {config.get('name', '?')!r} is not a grouplat model: its config has no "
                f"parameters {', '.join(missing)}"
            )
        space = LatentSpace.from_description(json.loads(params[SPACE_PARAM]))
        settings = Settings(params[SOLVER_PARAM], int(params[STEPS_PARAM]), params[GENERATE_SCHEDULE_PARAM])
        return cls(
            fingerprint=params[FINGERPRINT_PARAM],
            space=space,
            settings=settings.check(space.k),
            train_schedule=params.get(TRAIN_SCHEDULE_PARAM, ""),
            hide=params.get(HIDE_PARAM, "true").strip().lower() in ("1", "true", "yes"),
        )


class Overrides(TypedDict, total=False):
    """Single generation settings given as keywords (`client.decode(z, steps=30)`); None: not given."""

    steps: int | None
    solver: str | None
    schedule: str | None


@dataclass(frozen=True)
class Wanted:
    """The generation settings one call asks for: a settings object and keyword overrides."""

    settings: Settings | None = None
    steps: int | None = None
    solver: str | None = None
    schedule: str | None = None

    @classmethod
    def of(cls, settings: Settings | None, overrides: Overrides) -> Wanted:
        """From a method's `settings` and `**overrides` (TypeError for anything else)."""
        unknown = sorted(set(overrides) - set(Overrides.__annotations__))
        if unknown:
            raise TypeError(
                f"unexpected keyword argument(s) {', '.join(unknown)}: use steps, solver, schedule"
            )
        if settings is not None and not isinstance(settings, Settings):
            raise TypeError(f"settings must be a grouplat GenerationSettings, got {type(settings).__name__}")
        return cls(settings, **overrides)

    def resolve(self, info: ServedModel, base: Settings | None = None) -> Settings:
        """Keywords over `settings` over `base` (a latent's own) over the model's defaults, checked.

        A field left None falls through to the next; the server applies its own spacing (it is not
        a request parameter).
        """
        fallback = base or info.settings
        start = self.settings or fallback
        schedules = (self.schedule, start.schedule, fallback.schedule)
        return Settings(
            self.solver if self.solver is not None else start.solver,
            self.steps if self.steps is not None else start.steps,
            next((s for s in schedules if s is not None), None),
        ).check(info.space.k)
