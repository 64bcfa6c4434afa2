"""Where in its config each built object came from: ``file:line`` of the node that built it and
of its arguments, for the errors found when the object is used.

:mod:`rupq.config` records them while it builds; the objects' users (:mod:`rupq.tools`) read
them here, without importing the config builder (which imports every tag's package).
"""

import weakref

#: ``id(obj)`` → (weak reference to ``obj``, ``file:line`` of the node that built it, the
#: locations of its arguments) for every object a config built; an entry goes with its object.
_built: dict[int, tuple[weakref.ref, str, dict[str, str]]] = {}


def remember(obj, where: str, arguments: dict[str, str]) -> None:
    key = id(obj)

    def forget(reference, key=key):  # called when obj goes; its id may then serve another object
        entry = _built.get(key)
        if entry is not None and entry[0] is reference:
            _built.pop(key, None)

    try:
        reference = weakref.ref(obj, forget)
    except TypeError:  # an object without weak references keeps no location
        return
    _built[key] = (reference, where, arguments)


def _record(obj) -> tuple[weakref.ref, str, dict[str, str]] | None:
    entry = _built.get(id(obj))
    return entry if entry is not None and entry[0]() is obj else None


def location_of(obj) -> str | None:
    """``file:line`` of the config node that built ``obj``, when a config built it."""
    record = _record(obj)
    return record[1] if record else None


def argument_locations(obj, argument: str) -> dict[str, str]:
    """Locations under one argument of ``obj``, keyed relative to it; ``""`` is the argument itself.

    ``argument_locations(task, "optimizers")["sgd.name"]`` is the line of ``name:`` in the
    ``sgd`` entry of the task's optimizers mapping. Empty when no config built ``obj``.
    """
    record = _record(obj)
    found = {}
    for name, where in (record[2] if record else {}).items():
        if name == argument:
            found[""] = where
        elif name.startswith(argument + "."):
            found[name[len(argument) + 1 :]] = where
    return found
