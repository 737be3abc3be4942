"""The agent's loop: heartbeat, verify, run concurrently, spool results for delivery
(rmm_agent/delivery.py); the credentials the server rotates are in rmm_agent/credentials.py.

The agent makes no decisions of its own: it runs what the server signed, for this agent,
unexpired, with the privilege the payload asks for, and reports every outcome.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from . import __version__, credentials, release, session, updater
from .accounts import DEFAULT_RUN_AS
from .artefacts import Fetcher
from .client import Client, Response, TransportError, Unauthorized
from .containment import boot_id
from .delivery import Delivery
from .facts import collect_namespaces
from .live import LiveOutput
from .logs import Reachability, one_line
from .protocol import (
    CAPABILITIES,
    CAPABILITY_REMOTE_SESSION,
    CAPABILITY_SELF_UPDATE,
    PROTOCOL_VERSION,
    REASON_BAD_SIGNATURE,
    REASON_REPLAYED,
    REASON_UNKNOWN_KEY,
    SESSION_ACTION,
    InstructionRefused,
    canonical_json,
    facts_hash,
    merge_diff,
    parse_iso,
    verify_instruction,
)
from .results import make_result, now_utc, refused_result
from .runner import AbortSignal, Runner
from .state import StateDir

log = logging.getLogger("rmm_agent")

MAX_CONCURRENT = 4
HEARTBEAT_SPACING = 1.0  # seconds from an early answer to the next heartbeat (the server's default spacing)
MIN_INTERVAL = 1
MAX_INTERVAL = 3600
ONCE_HEARTBEAT_ATTEMPTS = 3
ONCE_MAX_RETRY_AFTER = 60.0
SHUTDOWN_FLUSH_TIMEOUT = 5.0
# How a step's reboot is done; tests (and endpoints without systemd) name another command.
REBOOT_COMMAND_ENV = "RMM_AGENT_REBOOT_COMMAND"
DEFAULT_REBOOT_COMMAND = "systemctl reboot"
REBOOT_COMMAND_TIMEOUT = 60.0

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_UNAUTHORIZED = 3


@dataclass
class HeartbeatAnswer:
    """What one heartbeat produced (``ok`` False: unreachable, throttled or failed)."""

    ok: bool
    early: bool = False  # the server had something to say: check in again soon, not after an interval
    instructions: list = field(default_factory=list)
    abort: list = field(default_factory=list)
    retry_after: float | None = None


@dataclass
class _Running:
    thread: threading.Thread
    abort: AbortSignal


def _signed_field(envelope: dict, name: str) -> object:
    """A field of a payload whose signature verified (only called for such payloads)."""
    try:
        payload = json.loads(envelope["payload"])
    except (KeyError, TypeError, ValueError):
        return None
    return payload.get(name) if isinstance(payload, dict) else None


def capabilities_of(*, can_update: bool) -> list[str]:
    """What an agent can do beyond running scripts: all it knows, self-update only when it is
    installed and holds release keys to check a release with, remote sessions only with the
    websockets package."""
    lacking = set() if can_update else {CAPABILITY_SELF_UPDATE}
    if not session.available():
        lacking.add(CAPABILITY_REMOTE_SESSION)
    return [name for name in CAPABILITIES if name not in lacking]


class Agent:
    """One enrolled agent bound to its state directory."""

    def __init__(
        self, state: StateDir, config: dict, client: Client | None = None, install: release.Install | None = None
    ) -> None:
        self.state = state
        self.config = config
        self.agent_id: str = config["agent_id"]
        self.run_as: str = config.get("run_as") or DEFAULT_RUN_AS
        self.client = client or Client(
            config["server"],
            agent_id=config["agent_id"],
            secret=config["secret"],
            ca_file=config.get("ca_file"),
            allow_insecure_http=bool(config.get("allow_insecure_http")),
        )
        self.reach = Reachability()
        self.delivery = Delivery(state, self.client, self.reach)
        self.runner = Runner(
            state.work_dir, run_as=self.run_as, running_dir=state.running_dir, fetcher=Fetcher(self.client)
        )
        try:
            self.server_keys = credentials.server_keys_of(config)
        except ValueError as exc:
            raise ValueError(f"config server keys are unusable: {exc}") from exc
        try:
            self.release_keys = credentials.release_keys_of(config)
        except ValueError as exc:
            raise ValueError(f"config release keys are unusable: {exc}") from exc
        self.install = install
        self.updating: str | None = None  # the update instruction being carried out
        self.exit_code = EXIT_OK  # updater.EXIT_UPDATED once a new version is swapped in
        self.interval = self._clamp_interval(config.get("heartbeat_interval"), 30)
        self.running: dict[str, _Running] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()  # a result waits to be delivered, or the agent is stopping
        self.stop = threading.Event()
        self.dispatching = threading.Lock()  # held while leased instructions are being started
        self.revoked: str | None = None  # the server's 401, seen by any thread
        # A reboot noted before this process started: the endpoint came back from it, which the
        # next heartbeat says (once the step's result is delivered).
        self.came_back = state.pending_reboot()
        self.rebooting = False  # a step's reboot was started: take no more work
        self.reboot_done = threading.Event()  # its command ran (a --once run waits for it)

    # -- heartbeat ----------------------------------------------------------------------------

    @staticmethod
    def _clamp_interval(value: object, default: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            return default
        return max(MIN_INTERVAL, min(MAX_INTERVAL, value))

    def running_ids(self) -> list[str]:
        """Instructions currently executing (reported so the server can keep their leases)."""
        with self.lock:
            return sorted(self.running)

    def heartbeat(self, hold: float = 0) -> HeartbeatAnswer:
        """Check in once, letting the server hold the answer up to ``hold`` seconds while it has
        nothing for us; raises :class:`Unauthorized` on 401."""
        namespaces = collect_namespaces(hostname=self.config.get("hostname"))
        hashes = {name: facts_hash(facts) for name, facts in namespaces.items()}
        acked, bases = self.state.acked_namespaces()
        changed = sorted(name for name in namespaces if acked.get(name) != hashes[name])
        reports = {name: {"hash": hashes[name]} for name in namespaces}
        for name in changed:  # a patch against what the server acknowledged, when it is smaller
            base = bases.get(name)
            patch = merge_diff(base, namespaces[name]) if base and facts_hash(base) == acked.get(name) else None
            smaller = patch is not None and len(canonical_json(patch)) < len(canonical_json(namespaces[name]))
            reports[name]["patch" if smaller else "body"] = patch if smaller else namespaces[name]
        running = self.running_ids()
        pending = updater.load_pending(self.state)
        if pending is not None and pending["instruction_id"] not in running:
            running.append(pending["instruction_id"])  # its result follows this check-in
        body: dict = {
            "agent_version": __version__,
            "protocol": PROTOCOL_VERSION,
            # Every namespace's hash; a body or a patch only for those the server has not acknowledged.
            "namespaces": reports,
            "running": running,
            # rebooting, or an update (it waits for what runs, then restarts the agent): nothing new
            "capacity": 0 if self.rebooting or self.updating or pending else max(0, MAX_CONCURRENT - len(running)),
            "key_ids": sorted(self.server_keys),
            "capabilities": self.capabilities(),
        }
        if self.release_keys:
            body["release_key_ids"] = sorted(self.release_keys)
        came_back = self.came_back
        if came_back is not None and not self.state.is_spooled(came_back["instruction_id"]):
            body["rebooted"] = came_back["instruction_id"]
        if hold:
            body["wait"] = hold
        try:
            answer = self.client.heartbeat(body)
        except TransportError as exc:
            self.reach.failed(str(exc))
            return HeartbeatAnswer(ok=False)
        self.reach.answered()
        if answer.status == 401:
            raise Unauthorized(answer.detail)
        if answer.status in (429, 503):  # slow down, or a dependency of the server is down: wait as told
            if answer.status == 503:
                log.warning("heartbeat: %s (HTTP 503); again in %.0f s", one_line(answer.detail), answer.retry_after())
            return HeartbeatAnswer(ok=False, retry_after=answer.retry_after())
        if answer.status != 200 or not isinstance(answer.body, dict):
            log.warning(
                "heartbeat failed (HTTP %s): %s",
                answer.status,
                one_line(answer.detail),
            )
            return HeartbeatAnswer(ok=False)
        if "rebooted" in body:  # the server heard it: its next step may be issued
            self.state.clear_reboot()
            self.came_back = None
            log.info("reported coming back from the reboot after %s", body["rebooted"])
        return self._accept_heartbeat(answer, {name: (hashes[name], namespaces[name]) for name in changed})

    def _accept_heartbeat(self, answer: Response, sent: dict[str, tuple[str, dict]]) -> HeartbeatAnswer:
        """Apply a heartbeat's answer; ``sent``: the namespaces it carried, with hash and body."""
        body = answer.body
        if "new_secret" in body:
            self.config = credentials.rotate_secret(self.state, self.config, self.client, body["new_secret"])
        if "signing_keys" in body:  # before this answer's instructions, which may be signed by a new key
            self.config, self.server_keys = credentials.update_keys(
                self.state, self.config, self.server_keys, body["signing_keys"], "server_keys", "instructions"
            )
        if "release_keys" in body:
            self.config, self.release_keys = credentials.update_keys(
                self.state, self.config, self.release_keys, body["release_keys"], "release_keys", release.RELEASES
            )
        self._settle_update()
        wanted = self._acknowledge(sent, body.get("facts_wanted"), body.get("facts_required") is True)
        self.interval = self._clamp_interval(body.get("interval"), self.interval)
        instructions = body.get("instructions") or []
        abort = body.get("abort") or []
        return HeartbeatAnswer(
            ok=True,
            early=bool(instructions or abort or "new_secret" in body or wanted),
            instructions=[item for item in instructions if isinstance(item, dict)]
            if isinstance(instructions, list)
            else [],
            abort=[item for item in abort if isinstance(item, str)] if isinstance(abort, list) else [],
        )

    def _acknowledge(self, sent: dict[str, tuple[str, dict]], wanted: object, all_wanted: bool) -> bool:
        """Record the namespaces the server took as acknowledged, and forget those it wants in
        full (``facts_wanted``; all of them with ``facts_required``), so they travel whole next
        time. True when the server wants any."""
        hashes, bodies = ({}, {}) if all_wanted else self.state.acked_namespaces()
        if not all_wanted:
            for name, (digest, body) in sent.items():
                hashes[name], bodies[name] = digest, body
        names = [name for name in wanted if isinstance(name, str)] if isinstance(wanted, list) else []
        for name in names:
            hashes.pop(name, None)
            bodies.pop(name, None)
        self.state.set_acked_namespaces(hashes, bodies)
        return all_wanted or bool(names)

    def capabilities(self) -> list[str]:
        """What this agent can do beyond running scripts (the server sends nothing else)."""
        return capabilities_of(can_update=self.install is not None and bool(self.release_keys))

    def _settle_update(self) -> None:
        """After an accepted heartbeat: a pending update has its result now (this version checked
        in, or the previous one is back after a rollback)."""
        result = updater.outcome_after_start(self.state, self.install)
        if result is not None:
            self.delivery.spool(result)
            updater.clear_pending(self.state)
            self.wake.set()

    def _update(self, payload: dict, abort: AbortSignal) -> None:
        """Carry out a signed update order; on success stop the agent so the new version starts
        (its result is sent by the new version, or by this one after a rollback)."""
        instruction_id = payload["instruction_id"]
        while not abort.is_set() and [i for i in self.running_ids() if i != instruction_id]:
            abort.wait(0.5)  # no instruction may be cut short by the restart
        try:
            if abort.is_set():
                raise release.ReleaseRefused("aborted", abort.reason or "aborted by server")
            order = updater.read_order(payload["content"])
            updater.prepare(order, self.release_keys, self.install, self.client)
            updater.swap_in(
                self.state, self.install, instruction_id, order["version"], updater.order_check_in_seconds(order)
            )
        except release.ReleaseRefused as exc:
            outcome = "aborted" if exc.reason == "aborted" else "refused"
            self.delivery.spool(make_result(instruction_id, outcome, reason=str(exc)))
        except (TransportError, OSError) as exc:
            self.delivery.spool(make_result(instruction_id, "error", reason=f"update failed: {exc}"))
        else:
            self.exit_code = updater.EXIT_UPDATED
            self.stop.set()
        finally:
            self.updating = None
            with self.lock:
                self.running.pop(instruction_id, None)
            self.wake.set()

    # -- execution ----------------------------------------------------------------------------

    def handle(self, answer: HeartbeatAnswer) -> None:
        """Apply aborts, then verify and start (or refuse) each leased instruction."""
        with self.dispatching:
            if not self.stop.is_set():
                self._handle(answer)

    def _handle(self, answer: HeartbeatAnswer) -> None:
        for instruction_id in answer.abort:
            with self.lock:
                running = self.running.get(instruction_id)
            if running is not None:
                running.abort.set("aborted by server")
        for envelope in answer.instructions:
            self._dispatch(envelope, set(answer.abort))

    def _in_flight(self, instruction_id: str) -> bool:
        """Running, or its result still awaits delivery: a re-lease is ignored, not reported."""
        with self.lock:
            if instruction_id in self.running:
                return True
        return self.state.is_spooled(instruction_id)

    def _report(self, result: dict) -> None:
        self.delivery.spool(result)
        self.wake.set()

    def _remember(self, instruction_id: str, not_after: object) -> bool:
        """Record a signed instruction in the replay ledger; False if that failed.

        Recorded before it runs, so a crash mid-run cannot make it run twice either.
        """
        try:
            moment = parse_iso(not_after)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return True  # never valid: verification refuses it again, whenever it comes back
        try:
            self.state.mark_handled(instruction_id, moment, now_utc())
        except OSError as exc:
            log.error("could not record %s in the replay ledger: %s", instruction_id, one_line(str(exc)))
            return False
        return True

    def _dispatch(self, envelope: dict, aborted: set[str]) -> None:
        try:
            payload = verify_instruction(envelope, self.server_keys, self.agent_id, now_utc())
        except InstructionRefused as refusal:
            self._refuse(envelope, refusal)
            return
        instruction_id = payload["instruction_id"]
        if self._in_flight(instruction_id):
            return
        if self.state.is_handled(instruction_id):
            self._report(refused_result(instruction_id, REASON_REPLAYED))
            return
        if not self._remember(instruction_id, payload["not_after"]):
            # Without a ledger entry it could be replayed later: do not run it at all.
            self._report(make_result(instruction_id, "error", reason="agent could not record it as handled"))
            return
        if instruction_id in aborted:
            self._report(make_result(instruction_id, "aborted", reason="aborted by server"))
            return
        abort = AbortSignal()
        if payload["interpreter"] == updater.INTERPRETER:
            self.updating = instruction_id
        actions = {updater.INTERPRETER: self._update, SESSION_ACTION: self._session}
        target = actions.get(payload["interpreter"], self._execute)
        thread = threading.Thread(
            target=target,
            args=(payload, abort),
            name=f"instruction-{instruction_id}",
            daemon=True,
        )
        with self.lock:
            self.running[instruction_id] = _Running(thread=thread, abort=abort)
        if self.stop.is_set():
            abort.set("agent stopped")
        thread.start()

    def _refuse(self, envelope: dict, refusal: InstructionRefused) -> None:
        """Report a refusal once; a signed one is also remembered, so a replay is named as such."""
        instruction_id = refusal.instruction_id
        if instruction_id is None:
            log.error("refused an instruction without a usable id: %s", refusal.reason)
            return
        if self._in_flight(instruction_id):
            return
        if refusal.reason in (REASON_BAD_SIGNATURE, REASON_UNKNOWN_KEY):
            # Nothing in an unsigned payload is trusted, so it is neither looked up nor recorded.
            self._report(refused_result(instruction_id, refusal.reason))
            return
        if self.state.is_handled(instruction_id):
            self._report(refused_result(instruction_id, REASON_REPLAYED))
            return
        self._remember(instruction_id, _signed_field(envelope, "not_after"))
        self._report(refused_result(instruction_id, refusal.reason))

    def recover(self) -> None:
        """At start: end what a previous run of the agent left running, spool a result for each
        such instruction (so the server ends its job now, not when its lease runs out), and
        clean the work dirs."""
        log.info("instructions are contained by %s", self.runner.describe())
        for result in self.runner.recover():
            if not self.state.is_spooled(result["instruction_id"]):  # else its real result waits there
                self.delivery.spool(result)
            self.runner.finish(result["instruction_id"])

    def _session(self, payload: dict, abort: AbortSignal) -> None:
        """Relay a remote session for as long as it lasts, then report how it ended."""
        instruction_id = payload["instruction_id"]
        try:
            result = session.serve(self.client, payload, abort, self.runner)
        except Exception as exc:  # every leased instruction must still yield a result
            log.exception("agent failure while relaying %s", instruction_id)
            result = make_result(instruction_id, "error", reason=f"agent error: {exc}")
        try:
            self.delivery.spool(result)
            self.runner.finish(instruction_id)  # its record goes only once the result is safe
        finally:
            with self.lock:
                self.running.pop(instruction_id, None)
            self.wake.set()

    def _execute(self, payload: dict, abort: AbortSignal) -> None:
        instruction_id = payload["instruction_id"]
        try:
            live = LiveOutput(self.client, instruction_id) if payload.get("live_output") is True else None
            result = self.runner.run(payload, abort, live=live)
        except Exception as exc:  # every leased instruction must still yield a result
            log.exception("agent failure while running %s", instruction_id)
            result = make_result(instruction_id, "error", reason=f"agent error: {exc}")
        reboot = result.get("reboot") is True
        try:
            if reboot:  # noted first: a restart, whenever it comes, reports that it came back
                self.state.save_reboot(
                    {"instruction_id": instruction_id, "boot_id": boot_id(), "requested_at": now_utc().isoformat()}
                )
                self.rebooting = True
            self.delivery.spool(result)
            self.runner.finish(instruction_id)  # its record goes only once the result is safe
        finally:
            with self.lock:
                self.running.pop(instruction_id, None)
            self.wake.set()
        if reboot:
            self._reboot(instruction_id)

    def _reboot(self, instruction_id: str) -> None:
        """Deliver the step's result (it says a reboot follows), then reboot the endpoint through
        the reboot command. A result not delivered now is delivered after the restart."""
        try:
            with contextlib.suppress(Unauthorized):
                self.delivery.flush_spool(timeout=SHUTDOWN_FLUSH_TIMEOUT)
            command = shlex.split(os.environ.get(REBOOT_COMMAND_ENV) or DEFAULT_REBOOT_COMMAND)
            log.warning("rebooting after %s: %s", instruction_id, " ".join(command))
            try:
                done = subprocess.run(command, capture_output=True, timeout=REBOOT_COMMAND_TIMEOUT, check=False)  # noqa: S603 - the operator's command
            except (OSError, subprocess.SubprocessError) as exc:
                log.error("reboot command failed: %s", one_line(str(exc)))
                return
            if done.returncode != 0:
                stderr = one_line(done.stderr.decode(errors="replace"))
                log.error("reboot command exited %s: %s", done.returncode, stderr)
        finally:
            self.reboot_done.set()

    def abort_all(self, reason: str) -> None:
        """Kill every running process group and wait until their results are spooled."""
        with self.dispatching, self.lock:  # nothing is being started meanwhile
            running = list(self.running.values())
        for item in running:
            item.abort.set(reason)
        for item in running:
            item.thread.join()

    # -- modes --------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM end the agent cleanly instead of killing it mid-write."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop.set()
            self.wake.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def _shutdown(self, reason: str, *, flush: bool) -> None:
        self.abort_all(reason)
        if flush:
            with contextlib.suppress(Unauthorized):
                self.delivery.flush_spool(timeout=SHUTDOWN_FLUSH_TIMEOUT)

    def check_in_forever(self) -> None:
        """The check-in thread: heartbeats back to back, each held by the server until it has
        something for us or an interval has passed. So new work and aborts arrive at once, with
        one request per interval (docs/agent.md). A server that answers at once with nothing is
        asked again after an interval, one that asks us to slow down after its Retry-After."""
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                answer = self.heartbeat(hold=float(self.interval))
                if answer.ok:
                    self.handle(answer)
                if answer.ok and answer.early:  # spaced from the answer: the server counts from its check-in
                    self.stop.wait(HEARTBEAT_SPACING)
                    continue
                delay = answer.retry_after if answer.retry_after is not None else float(self.interval)
                self.stop.wait(max(0.0, started + delay - time.monotonic()))
        except Unauthorized as exc:
            self._revoked(exc)

    def _revoked(self, exc: Unauthorized) -> None:
        self.revoked = self.revoked or str(exc)
        self.stop.set()
        self.wake.set()

    def run_forever(self) -> int:
        """Check in from a thread of its own (:meth:`check_in_forever`) and deliver results from
        this one, until stopped or revoked; returns the exit code."""
        threading.Thread(target=self.check_in_forever, name="check-in", daemon=True).start()
        while not self.stop.is_set():
            self.wake.wait(self.interval)  # a result to deliver, a stop, or a retry of the spool
            self.wake.clear()
            try:
                self.delivery.flush_spool()
            except Unauthorized as exc:
                self._revoked(exc)
        if self.revoked is not None:
            log.error("server rejected this agent (HTTP 401: %s); stopping", one_line(self.revoked))
            self._shutdown("agent revoked", flush=False)
            return EXIT_UNAUTHORIZED
        self._shutdown("agent stopped", flush=True)
        return self.exit_code

    def run_once(self) -> int:
        """Flush, heartbeat once, run what was leased to completion, deliver; exit code."""
        try:
            self.delivery.flush_spool()
            answer = HeartbeatAnswer(ok=False)
            for _attempt in range(ONCE_HEARTBEAT_ATTEMPTS):
                if self.stop.is_set():
                    break
                answer = self.heartbeat()
                if answer.ok or answer.retry_after is None:
                    break
                self.stop.wait(min(answer.retry_after, ONCE_MAX_RETRY_AFTER))
            if not answer.ok:
                if not self.stop.is_set():
                    log.error("heartbeat failed; results stay spooled")
                    return EXIT_UNREACHABLE
                return EXIT_OK
            self.handle(answer)
            while self.running_ids():
                if self.stop.is_set():
                    self.abort_all("agent stopped")
                    break
                self.wake.wait(0.5)
                self.wake.clear()
                self.delivery.flush_spool()
            if self.rebooting:  # the step's reboot runs once its result is delivered
                self.reboot_done.wait(SHUTDOWN_FLUSH_TIMEOUT + REBOOT_COMMAND_TIMEOUT)
            if self.stop.is_set():
                self.delivery.flush_spool(timeout=SHUTDOWN_FLUSH_TIMEOUT)
                return EXIT_OK
            if not self.delivery.flush_spool():
                log.error("some results could not be delivered; they stay spooled")
                return EXIT_UNREACHABLE
            return EXIT_OK
        except Unauthorized as exc:
            log.error(
                "server rejected this agent (HTTP 401: %s); stopping",
                one_line(str(exc)),
            )
            self._shutdown("agent revoked", flush=False)
            return EXIT_UNAUTHORIZED
