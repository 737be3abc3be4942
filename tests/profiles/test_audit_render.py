"""An audit's one instruction, run for real in a subprocess as the agent runs it (``sh`` on the
script, in a work directory): each item's read script gets its parameters, whatever they hold, and
the JSON document carries any bytes a read script prints; then parsing and comparing."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid

import pytest

from profiles import auditing, services
from profiles.auditing import AuditOutputError, Reading, compare
from profiles.models import Platform
from rmm_agent.protocol import MAX_STRUCTURED_BYTES, canonical_json, structured_problem
from tests.support.profiles import approved_key

# Prints its parameter back, or what its mode asks: absent, a failure, hostile bytes, a lot.
ECHO_READ = r"""case "$RMM_PARAM_MODE" in
  absent) exit 3 ;;
  fail) echo "no such thing" >&2; exit 7 ;;
  hostile) printf '\377\000"}]\\\n' ; printf 'x\n' ;;
  big) head -c 10000 /dev/zero | tr '\0' 'a' ;;
  *) printf '%s\n' "$RMM_PARAM_VALUE" ;;
esac
"""

HOSTILE = 'it\'s "quoted" $(touch pwned) `touch pwned2` \\ ${HOME} \n second line\n'


@pytest.fixture
def key(caller):
    tech, boss = caller("tech", "technician").user, caller("boss", "approver").user
    return approved_key(tech, boss, name="test.echo", read=ECHO_READ, parameters=("mode", "value"))


def items_of(tech, **values: tuple[str, str]):
    """A profile whose items echo ``{label: (mode, value)}``, in order; its items."""
    profile = services.create_profile(
        tech,
        name="echoes",
        profile_type="test",
        items=[
            {
                "config_key": "test.echo",
                "parameters": {"mode": mode, "value": value},
                "desired_value": "",
                "comparison": "absent",
            }
            for mode, value in values.values()
        ],
    )
    return list(profile.current_revision.items.select_related("config_key__read_script").order_by("position"))


def run(rendered: auditing.Rendered, cwd, result_path=None) -> subprocess.CompletedProcess:
    script = cwd / "instruction.sh"
    script.write_text(rendered.content)
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    if result_path:
        env["RMM_RESULT_PATH"] = str(result_path)
    return subprocess.run([rendered.interpreter, str(script)], cwd=cwd, env=env, capture_output=True, timeout=60)


def test_each_item_is_read_with_its_parameters_and_any_bytes_survive_the_document(key, caller, tmp_path):
    items = items_of(
        caller("tech", "technician").user,
        plain=("value", "no"),
        hostile_param=("value", HOSTILE),
        hostile_out=("hostile", "-"),
        absent=("absent", "-"),
        failing=("fail", "-"),
    )
    rendered = auditing.render(items)
    assert rendered.interpreter == "sh" and rendered.privileged is False
    done = run(rendered, tmp_path)
    assert done.returncode == 0, done.stderr
    readings = auditing.parse({"stdout": done.stdout, "structured": None})
    got = [readings[str(item.pk)] for item in items]
    assert got[0] == Reading(0, b"no\n", 3, b"")
    assert got[1].stdout == HOSTILE.encode() + b"\n" and got[1].exit_code == 0
    assert got[2].stdout == b'\xff\x00"}]\\\nx\n' and got[2].stdout_bytes == 9
    assert (got[3].exit_code, got[3].stdout) == (3, b"")
    assert (got[4].exit_code, got[4].stderr) == (7, b"no such thing\n")
    # nothing in a parameter ran as a command, and the work files are gone
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["instruction.sh"]
    json.loads(done.stdout)  # one JSON document, ASCII


def test_with_a_result_path_the_document_is_the_structured_result(key, caller, tmp_path):
    items = items_of(caller("tech", "technician").user, one=("value", "yes"))
    done = run(auditing.render(items), tmp_path, result_path=tmp_path / "result.json")
    assert done.returncode == 0 and done.stdout == b""
    document = json.loads((tmp_path / "result.json").read_text())
    readings = auditing.parse({"structured": document, "stdout": b""})
    assert readings[str(items[0].pk)].stdout == b"yes\n"


def test_a_long_value_is_cut_and_then_an_error(key, caller, tmp_path):
    items = items_of(caller("tech", "technician").user, big=("big", "-"))
    done = run(auditing.render(items), tmp_path)
    reading = auditing.parse({"stdout": done.stdout})[str(items[0].pk)]
    assert (reading.stdout_bytes, len(reading.stdout)) == (10000, auditing.VALUE_CAP)
    verdict = compare("equals", "string", "a", reading)
    assert verdict.state == "error" and "longer than 4096 bytes (10000)" in verdict.reason


def test_the_caps_shrink_with_the_item_count_so_the_document_fits_a_structured_result():
    assert auditing.caps(5) == (4096, 512)
    assert auditing.caps(50) == (2100, 300)
    assert auditing.caps(500) == (210, 30)


def test_the_largest_document_of_any_item_count_fits_a_structured_result():
    """For 1 to the most items a profile may hold, every entry as large as it can be."""
    for count in range(1, services.MAX_ITEMS + 1):
        value_cap, stderr_cap = auditing.caps(count)
        entry = {
            "item": str(uuid.uuid4()),
            "exit_code": -(2**31),
            "stdout_bytes": 2**40,
            "stdout": base64.b64encode(b"v" * value_cap).decode(),
            "stderr": base64.b64encode(b"e" * stderr_cap).decode(),
        }
        document = {"format": auditing.FORMAT, "items": [entry] * count}
        assert len(canonical_json(document)) <= MAX_STRUCTURED_BYTES, count


def test_items_printing_more_than_their_caps_still_make_a_usable_structured_result(caller, tmp_path):
    """Every read script prints more than its caps on both streams, run for real; the document is a
    usable structured result (the agent's and the server's check)."""
    count = 40
    tech, boss = caller("tech", "technician").user, caller("boss", "approver").user
    loud = "head -c 9000 /dev/zero | tr '\\0' 'a'; head -c 9000 /dev/zero | tr '\\0' 'e' >&2\n"
    approved_key(tech, boss, name="test.loud", read=loud, parameters=("n",))
    profile = services.create_profile(
        tech,
        name="loud",
        profile_type="test",
        items=[
            {"config_key": "test.loud", "parameters": {"n": str(n)}, "desired_value": "", "comparison": "absent"}
            for n in range(count)
        ],
    )
    items = list(profile.current_revision.items.select_related("config_key__read_script"))
    done = run(auditing.render(items), tmp_path, result_path=tmp_path / "result.json")
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "result.json").read_bytes()
    assert len(written) <= MAX_STRUCTURED_BYTES  # what the agent takes
    document = json.loads(written)
    assert len(canonical_json(document)) <= MAX_STRUCTURED_BYTES and structured_problem(document) is None
    readings = auditing.parse({"structured": document})
    assert len(readings) == count
    value_cap, stderr_cap = auditing.caps(count)
    assert {(len(r.stdout), r.stdout_bytes, len(r.stderr)) for r in readings.values()} == {
        (value_cap, 9000, stderr_cap)
    }


def test_a_privileged_read_script_makes_the_instruction_privileged(key, caller):
    items = items_of(caller("tech", "technician").user, one=("value", "x"))
    items[0].config_key.read_script.privileged = True
    assert auditing.render(items).privileged is True


def test_every_platform_has_an_audit_and_an_enforcement_renderer():
    assert set(auditing.RENDERERS) == set(auditing.ENFORCEMENT_RENDERERS) == set(Platform.values)


def test_a_platform_without_a_renderer_is_refused(key, caller):
    items = items_of(caller("tech", "technician").user, one=("value", "x"))
    items[0].config_key.platform = "macos"
    with pytest.raises(ValueError, match="no audit renderer for macos keys yet"):
        auditing.render(items)


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        (b"step 0\n", "not an audit document"),
        (b'{"format": "other"}', "not a rmm.profile_audit/1 document"),
        (b'{"format": "rmm.profile_audit/1", "items": {}}', "no item list"),
        (b'{"format": "rmm.profile_audit/1", "items": [{"item": 1}]}', "items[0] names no item"),
        (
            b'{"format": "rmm.profile_audit/1", "items": [{"item": "a", "exit_code": "0"}]}',
            "items[0].exit_code is not an integer",
        ),
        (
            b'{"format": "rmm.profile_audit/1", "items": '
            b'[{"item": "a", "exit_code": 0, "stdout_bytes": 1, "stdout": "!!"}]}',
            "items[0].stdout is not base64",
        ),
    ],
)
def test_output_that_is_not_an_audit_document_is_refused_with_the_reason(output, problem):
    with pytest.raises(AuditOutputError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        auditing.parse({"stdout": output, "structured": None})


def reading(value: bytes, exit_code: int = 0) -> Reading:
    return Reading(exit_code, value, len(value), b"")


@pytest.mark.parametrize(
    ("comparison", "value_type", "desired", "read", "state"),
    [
        ("equals", "string", "no", reading(b"no\n"), "compliant"),
        ("equals", "string", "no", reading(b"no \n"), "non_compliant"),
        ("equals", "string", "no", reading(b"", 3), "non_compliant"),
        ("not_equals", "string", "yes", reading(b"no\n"), "compliant"),
        ("regex", "string", "^pro.*word$", reading(b"prohibit-password\n"), "compliant"),
        ("regex", "string", "^no$", reading(b"yes\n"), "non_compliant"),
        ("contains", "string", "hib", reading(b"prohibit\n"), "compliant"),
        ("absent", "string", "", reading(b"", 3), "compliant"),
        ("absent", "string", "", reading(b"no\n"), "non_compliant"),
        ("at_least", "integer", "10", reading(b"12\n"), "compliant"),
        ("at_least", "integer", "10", reading(b"9\n"), "non_compliant"),
        ("at_most", "integer", "10", reading(b"-3\n"), "compliant"),
        ("equals", "integer", "1", reading(b"01\n"), "compliant"),
        ("at_most", "integer", "10", reading(b"ten\n"), "error"),
        ("equals", "string", "x", reading(b"", 2), "error"),
        ("equals", "string", "x", reading(b"\xff\n"), "error"),
        ("equals", "string", "x", None, "error"),
    ],
)
def test_each_comparison_is_made_on_the_server(comparison, value_type, desired, read, state):
    verdict = compare(comparison, value_type, desired, read)
    assert verdict.state == state, verdict
    assert verdict.compliant is {"compliant": True, "non_compliant": False, "error": None}[state]


def test_a_value_with_a_nul_is_compared_as_read_and_stored_escaped():
    verdict = compare("contains", "string", "b", reading(b"a\x00b\n"))
    assert verdict.state == "compliant" and verdict.observed_value == "a\\x00b"
