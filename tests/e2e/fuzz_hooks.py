"""Schemathesis hooks for tests/e2e/test_api_fuzz.py, loaded by the schemathesis CLI (SCHEMATHESIS_HOOKS).

Generated requests sometimes name the seeded objects instead of random ids, so that the fuzzing
reaches real rows as well as missing ones, and a body is sometimes JSON that is not an object;
every request sent is counted per operation and phase.
``RMM_FUZZ_SEEDED`` holds ``{"paths": {path prefix: [ids]}, "fields": {field: [values]}}``;
``RMM_FUZZ_COUNTS`` is the file that gets one line per request: the operation's label.
"""

from __future__ import annotations

import json
import os

import schemathesis
import schemathesis.transport.asgi  # noqa: F401 - see below
from hypothesis import strategies as st

# schemathesis.transport.asgi is imported here, in the main thread, before any test runs:
# schemathesis otherwise imports it on first use inside its worker thread, where compiling a
# module while Hypothesis has raised the recursion limit can fail ("AST constructor recursion
# depth mismatch", CPython 3.11).

SEEDED = json.loads(os.environ["RMM_FUZZ_SEEDED"])
COUNTS = os.environ["RMM_FUZZ_COUNTS"]


def seeded_ids(path: str) -> list[str]:
    """The seeded ids for a path's parameter: the longest matching prefix wins."""
    matches = [prefix for prefix in SEEDED["paths"] if path.startswith(prefix)]
    if not matches:
        raise LookupError(f"no seeded ids for {path}: add them to seed_world in test_api_fuzz.py")
    return SEEDED["paths"][max(matches, key=len)]


@schemathesis.hook
def before_generate_path_parameters(context, strategy):
    names = [parameter.name for parameter in context.operation.path_parameters]
    if not names:
        return strategy
    ids = seeded_ids(context.operation.path)
    return st.one_of(strategy, st.fixed_dictionaries({name: st.sampled_from(ids) for name in names}))


# JSON that is not an object, for bodies that must be one: a tenth of the bodies sent.
NOT_OBJECTS = st.sampled_from([[], ["reason"], "reason", 0, 1e308, False])


def _with_seeded_values(generated):
    if not isinstance(generated, dict):
        return st.just(generated)
    known = [name for name in generated if name in SEEDED["fields"]]
    if not known:
        return st.just(generated)
    real = st.fixed_dictionaries({name: st.sampled_from(SEEDED["fields"][name]) for name in known})
    return st.one_of(st.just(generated), real.map(lambda values: {**generated, **values}))


@schemathesis.hook
def flatmap_body(context, body):
    return st.integers(0, 9).flatmap(lambda n: NOT_OBJECTS if n == 0 else _with_seeded_values(body))


@schemathesis.hook
def flatmap_query(context, query):
    return _with_seeded_values(query)


@schemathesis.hook
def after_call(context, case, response):
    with open(COUNTS, "a", encoding="utf-8") as counts:
        phase = case.meta.phase.name.value if case.meta is not None else "?"
        counts.write(f"{case.operation.label}\t{phase}\n")
