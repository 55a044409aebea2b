"""The base of every params model: unknown keys are errors, values are immutable once loaded;
and `params_of`: a dataclass the code takes, used as a params field type as it is."""

import dataclasses
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, WrapSerializer


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclasses.dataclass(frozen=True)
class NotParams:
    """Field metadata of a `params_of` type: the dataclass fields no params file states."""

    names: tuple[str, ...]

    def keys(self, cls: type) -> list[str]:
        """The params keys of dataclass `cls`: its fields but these."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in self.names]


def params_of(cls: type, not_params: tuple[str, ...] = ()) -> Any:
    """`cls` (a frozen dataclass of osora.models / osora.train, free of pydantic) as a params
    field type: pydantic checks the field types, the dataclass's __post_init__ the values, once.
    The dataclass's defaults serve code and tests; a params file states every field but
    `not_params` (fixed by the code, e.g. the RGB input channels), and a dump leaves those out,
    so `osora config show` and MLflow see the params keys alone."""
    marker = NotParams(not_params)
    keys = marker.keys(cls)

    def every_key_stated(value: Any) -> Any:
        # an unknown key (a misspelling, often) is left to pydantic, which names it
        if isinstance(value, dict) and set(value) <= set(keys) | set(not_params):
            missing = [k for k in keys if k not in value]
            if missing:
                raise ValueError(f"keys {missing} are missing; add them (see the fields of "
                                 f"{cls.__module__}.{cls.__qualname__})")
            fixed = [k for k in not_params if k in value]
            if fixed:
                raise ValueError(f"keys {fixed} are fixed by the code, not params; remove them")
        return value

    def params_keys_only(value: Any, dump: Any) -> Any:
        dumped = dump(value)
        return {k: v for k, v in dumped.items() if k not in not_params}

    return Annotated[cls, BeforeValidator(every_key_stated), WrapSerializer(params_keys_only),
                     marker]


def sub_fields(field_type: Any, metadata: tuple = ()) -> dict[str, tuple[Any, tuple]]:
    """The keys under a params field of type `field_type` (with its Annotated `metadata`), each
    with its own type and metadata: a params model's fields, or a `params_of` dataclass's keys
    (leaves: None, ()); {} for a leaf."""
    if isinstance(field_type, type) and issubclass(field_type, BaseModel):
        return {name: (f.annotation, tuple(f.metadata))
                for name, f in field_type.model_fields.items()}
    marker = next((m for m in metadata if isinstance(m, NotParams)), None)
    if marker is not None:
        return {key: (None, ()) for key in marker.keys(field_type)}
    return {}
