"""What a call's generation settings resolve against: the served model (`ServedModel`, read once
from its config) and the settings a call asks for (`Wanted`: a settings object and keyword overrides).

Versions: a repository may serve several versions of one model side by side, each its own model
(fingerprint, latent layout, defaults). Every config lists them all in its `versions` parameter
(JSON: version number → that version's parameters); its top-level parameters are the newest
version's. `served_versions` reads every version, falling back to the top-level parameters for a
config that lists none (a repository written before versions could coexist).

Precedence, in `Wanted.resolve`: keyword overrides (`steps=30`) > the `settings` object > the
latents' own settings (decode: the settings their encode was made with, whose `schedule` is the
decode's and `encode_schedule` the encode's own) > the served model's defaults. Schedules go in
pairs: a `schedule` given at some level, with that level's `encode_schedule`, replaces both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypedDict

from grouplat.client.errors import ServerError
from grouplat.client.latents import Settings
from grouplat.schedule import Schedule
from grouplat.serving.contract import (
    DEFAULT_PARAMS,
    ENCODE_SCHEDULE_PARAM,
    ENCODE_STEPS_PARAM,
    FINGERPRINT_PARAM,
    GENERATE_SCHEDULE_PARAM,
    HIDE_PARAM,
    SOLVER_PARAM,
    SPACE_PARAM,
    STEPS_PARAM,
    TRAIN_SCHEDULE_PARAM,
    VERSIONS_PARAM,
)
from grouplat.space import LatentSpace


@dataclass(frozen=True)
class ServedModel:
    """What the client reads from the server once: one model version's identity, layout and defaults."""

    fingerprint: str
    space: LatentSpace
    # the generation defaults (config `solver`, `steps`, `generate_schedule`, `encode_schedule`)
    settings: Settings
    train_schedule: str
    hide: bool
    # Its Triton version number; "" when the config lists no versions and the client pins none.
    version: str = ""

    @classmethod
    def from_config(cls, config: dict[str, Any], version: str = "") -> ServedModel:
        """One version of the model, from a model config as JSON
        (`get_model_config(name, as_json=True)["config"]`).

        Args:
            config: the config.
            version: the version number wanted; "" for the newest.

        Raises:
            ServerError: the config lacks grouplat's parameters (not a grouplat model), or lists
                versions but not `version`.
        """
        models = served_versions(config, version)
        if not version:
            return models[newest(models)]
        if version not in models:
            raise ServerError(
                f"model {config.get('name', '?')!r} has no version {version}: the server serves "
                f"version{'s' * (len(models) > 1)} {', '.join(models)}"
            )
        return models[version]

    @classmethod
    def from_parameters(cls, params: dict[str, str], version: str = "", name: str = "?") -> ServedModel:
        """From a config's parameters as plain strings (one version's: see `version_parameters`).

        Raises:
            ServerError: grouplat's parameters are missing (not a grouplat model) or unreadable.
        """
        which = f"version {version} of model {name!r}" if version else f"model {name!r}"
        needed = (FINGERPRINT_PARAM, SPACE_PARAM, SOLVER_PARAM, STEPS_PARAM, GENERATE_SCHEDULE_PARAM)
        missing = [key for key in needed if not params.get(key)]
        if missing:
            raise ServerError(
                f"{which} is not a grouplat model: its config has no parameters {', '.join(missing)}"
            )
        try:
            space = LatentSpace.from_description(json.loads(params[SPACE_PARAM]))
            settings = Settings(
                params[SOLVER_PARAM],
                int(params[STEPS_PARAM]),
                params[GENERATE_SCHEDULE_PARAM],
                encode_schedule=params.get(ENCODE_SCHEDULE_PARAM) or None,  # absent: one schedule
                encode_steps=int(params.get(ENCODE_STEPS_PARAM) or 0) or None,  # absent: one count
            )
            settings = settings.check(space.k)
        except (TypeError, ValueError, KeyError) as e:
            raise ServerError(f"{which} has unreadable config parameters: {e}") from None
        return cls(
            fingerprint=params[FINGERPRINT_PARAM],
            space=space,
            settings=settings,
            train_schedule=params.get(TRAIN_SCHEDULE_PARAM, ""),
            hide=params.get(HIDE_PARAM, "true").strip().lower() in ("1", "true", "yes"),
            version=version,
        )


def newest(versions: dict[str, Any]) -> str:
    """The highest version number among the keys of `versions` ("" sorts lowest)."""
    return max(versions, key=_number)


def _number(version: str) -> int:
    return int(version) if version.isdigit() else -1


def version_parameters(config: dict[str, Any], unlisted: str = "") -> dict[str, dict[str, str]]:
    """Every served version's config parameters as plain strings, by version number (ascending).

    A version's entry in the `versions` parameter holds its fingerprint, space, train_schedule,
    hide and defaults; a default it lacks is the config's (as the server's orchestrator does).
    A config without `versions` (an older repository) is one model, under the number `unlisted`.

    Raises:
        ServerError: a `versions` parameter that is not a JSON object of version number → object.
    """
    params = {k: str(v.get("string_value", "")) for k, v in config.get("parameters", {}).items()}
    listed = params.pop(VERSIONS_PARAM, "")
    if not listed:
        return {unlisted: params}
    try:
        entries = json.loads(listed)
        if not isinstance(entries, dict) or not entries:
            raise ValueError("not a non-empty object")
        for number, entry in entries.items():
            if not (number.isdigit() and isinstance(entry, dict)):
                raise ValueError(f"entry {number!r} is not version number → object")
    except ValueError as e:
        raise ServerError(
            f"model {config.get('name', '?')!r} has an unreadable versions parameter: {e}"
        ) from None
    shared = {
        k: v
        for k, v in params.items()
        if k not in (FINGERPRINT_PARAM, SPACE_PARAM, TRAIN_SCHEDULE_PARAM, HIDE_PARAM)
    }
    versions = {}
    for number in sorted(entries, key=int):
        entry = entries[number]
        own = {**shared, **{key: str(entry[key]) for key in DEFAULT_PARAMS if key in entry}}
        own[FINGERPRINT_PARAM] = str(entry.get("fingerprint", ""))
        if "space" in entry:
            own[SPACE_PARAM] = json.dumps(entry["space"])
        if "train_schedule" in entry:
            own[TRAIN_SCHEDULE_PARAM] = _schedule_text(entry["train_schedule"])
        if "hide" in entry:
            own[HIDE_PARAM] = "1" if entry["hide"] in (True, 1, "1", "true") else "0"
        versions[number] = own
    return versions


def version_fingerprints(config: dict[str, Any], unlisted: str = "") -> dict[str, str]:
    """Version number → fingerprint of every version a config lists (see `version_parameters`)."""
    return {
        number: p.get(FINGERPRINT_PARAM, "") for number, p in version_parameters(config, unlisted).items()
    }


def served_versions(config: dict[str, Any], unlisted: str = "") -> dict[str, ServedModel]:
    """Every served version of the model, by version number (ascending; see `version_parameters`).

    Raises:
        ServerError: not a grouplat model, or unreadable parameters.
    """
    name = str(config.get("name", "?"))
    return {
        number: ServedModel.from_parameters(params, number, name)
        for number, params in version_parameters(config, unlisted).items()
    }


def _schedule_text(description: Any) -> str:
    """A train schedule as the config's text, from a version entry's description (cuts or intervals)."""
    try:
        return Schedule.from_description(description).text
    except (TypeError, ValueError):
        return str(description)


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

        A field left None falls through to the next; the schedules and the steps each fall through
        as a pair (a keyword `schedule` or `steps` serves both directions). The server applies its
        own spacing (it is not a request parameter).
        """
        fallback = base or info.settings
        start = self.settings or fallback
        levels = ((self.schedule, None), (start.schedule, start.encode_schedule))
        schedule, encode_schedule = next(
            (pair for pair in levels if pair[0] is not None),
            (fallback.schedule, fallback.encode_schedule),
        )
        steps, encode_steps = (
            (self.steps, None) if self.steps is not None else (start.steps, start.encode_steps)
        )
        return Settings(
            self.solver if self.solver is not None else start.solver,
            steps,
            schedule,
            encode_schedule=encode_schedule,
            encode_steps=encode_steps,
        ).check(info.space.k)
