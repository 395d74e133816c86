"""`record`: a small stand-in for `dataclasses.dataclass` for rule helpers.

Why not dataclasses: `auditor check` runs in pre-commit hooks, where start-up time is the
cost users feel. Importing `dataclasses` pulls in `inspect` (about 7 ms), and every
decorated class compiles generated methods with `exec` (about 1 ms each); the rules' fifteen
helper classes made the hook measurably slower. `record` builds the same methods from plain
closures: `__init__` (positional or keyword, defaults, `field(default_factory=...)`),
`__repr__`, `__eq__`, `__hash__` for frozen records, and `replace()`.
"""

from __future__ import annotations

from typing import Any, Callable

_MISSING = object()


class _Field:
    __slots__ = ("default", "default_factory")

    def __init__(self, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None):
        self.default = default
        self.default_factory = default_factory


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None) -> Any:
    return _Field(default, default_factory)


def _is_classvar(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "ClassVar" in text


def record(cls: type | None = None, *, frozen: bool = False, eq: bool = True) -> Any:
    """Decorate a class with annotated fields, like `@dataclass` / `@dataclass(frozen=True)`
    (frozen records are hashable; attribute assignment is not policed)."""

    def wrap(klass: type) -> type:
        names: list[str] = []
        defaults: dict[str, _Field] = {}
        for base in reversed(klass.__mro__[:-1]):
            for name, annotation in base.__dict__.get("__annotations__", {}).items():
                if _is_classvar(annotation):
                    continue
                if name not in names:
                    names.append(name)
                value = base.__dict__.get(name, _MISSING)
                if isinstance(value, _Field):
                    defaults[name] = value
                elif value is not _MISSING:
                    defaults[name] = _Field(default=value)
        for name, spec in defaults.items():
            if spec.default is not _MISSING:
                setattr(klass, name, spec.default)
            elif name in klass.__dict__:
                delattr(klass, name)
        fields = tuple(names)
        post_init = getattr(klass, "__post_init__", None)

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if len(args) > len(fields):
                raise TypeError(f"{klass.__name__}() takes {len(fields)} arguments, got {len(args)}")
            for name, value in zip(fields, args):
                if name in kwargs:
                    raise TypeError(f"{klass.__name__}() got two values for {name!r}")
                object.__setattr__(self, name, value)
            for name in fields[len(args) :]:
                if name in kwargs:
                    object.__setattr__(self, name, kwargs.pop(name))
                    continue
                spec = defaults.get(name)
                if spec is None:
                    raise TypeError(f"{klass.__name__}() missing argument {name!r}")
                value = spec.default_factory() if spec.default_factory is not None else spec.default
                object.__setattr__(self, name, value)
            if kwargs:
                raise TypeError(f"{klass.__name__}() got unexpected arguments {sorted(kwargs)}")
            if post_init is not None:
                post_init(self)

        def __repr__(self: Any) -> str:
            inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in fields)
            return f"{klass.__name__}({inner})"

        def _values(self: Any) -> tuple:
            return tuple(getattr(self, name) for name in fields)

        klass.__init__ = __init__  # type: ignore[misc]
        if "__repr__" not in klass.__dict__:
            klass.__repr__ = __repr__  # type: ignore[misc]
        klass.__record_fields__ = fields  # type: ignore[attr-defined]
        if eq and "__eq__" not in klass.__dict__:

            def __eq__(self: Any, other: Any) -> Any:
                if other.__class__ is not self.__class__:
                    return NotImplemented
                return _values(self) == _values(other)

            klass.__eq__ = __eq__  # type: ignore[misc]
            if frozen:
                klass.__hash__ = lambda self: hash(_values(self))  # type: ignore[misc]
            else:
                klass.__hash__ = None  # type: ignore[misc,assignment]
        return klass

    return wrap(cls) if cls is not None else wrap


def replace(obj: Any, **changes: Any) -> Any:
    """A copy of a record with some fields changed (`dataclasses.replace`)."""
    fields = obj.__record_fields__
    values = {name: getattr(obj, name) for name in fields}
    unknown = set(changes) - set(fields)
    if unknown:
        raise TypeError(f"unknown fields {sorted(unknown)}")
    values.update(changes)
    return type(obj)(**values)
