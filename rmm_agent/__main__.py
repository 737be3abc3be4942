"""Command line: ``python -m rmm_agent install-account|enroll|run|supervise|update-check``.

Exit codes: 0 ok, 1 server unreachable, 2 usage / enrollment refused / not enrolled,
3 agent revoked or unknown (HTTP 401), 75 a new version was swapped in (start it),
76 a new version could not check in in time (roll it back).
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from . import __version__, keyring, release, tls, updater
from .accounts import DEFAULT_RUN_AS
from .agent import EXIT_UNAUTHORIZED, EXIT_UNREACHABLE, Agent, capabilities_of
from .client import Client, TransportError
from .facts import collect_facts
from .protocol import iso_utc
from .results import now_utc
from .state import NotEnrolled, StateDir

EXIT_USAGE = 2

log = logging.getLogger("rmm_agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmm_agent", description="RMM endpoint agent")
    parser.add_argument("--version", action="version", version=f"rmm_agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    enroll = commands.add_parser("enroll", help="exchange an enrollment token for an identity")
    enroll.add_argument("--server", required=True, help="server URL, e.g. https://rmm.example")
    enroll.add_argument("--token", required=True, help="one-time enrollment token")
    enroll.add_argument("--state-dir", required=True, help="directory for config and spool")
    enroll.add_argument("--hostname", help="report this hostname instead of the real one")
    enroll.add_argument(
        "--run-as",
        default=DEFAULT_RUN_AS,
        help=f"account for unprivileged instructions when running as root (default: {DEFAULT_RUN_AS})",
    )
    enroll.add_argument(
        "--ca-file", help="PEM bundle of the CA to trust for the https server instead of the system's (pinned)"
    )
    enroll.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="accept a plain http:// server that is not this machine (the secret and scripts travel in clear)",
    )

    install = commands.add_parser(
        "install-account", help="create the locked system account unprivileged instructions run as"
    )
    install.add_argument("--name", default=DEFAULT_RUN_AS, help=f"account name (default: {DEFAULT_RUN_AS})")

    run = commands.add_parser("run", help="heartbeat and run signed instructions")
    run.add_argument("--state-dir", required=True, help="directory given to enroll")
    run.add_argument(
        "--once",
        action="store_true",
        help="one heartbeat, run what was leased, then exit",
    )
    supervise = commands.add_parser(
        "supervise", help="run the agent of the install's current version; restart it, roll back a failed update"
    )
    supervise.add_argument("--state-dir", required=True, help="directory given to enroll")
    supervise.add_argument("--root", help="install root holding versions/ and current (default: this one's)")
    supervise.add_argument("--restart-seconds", type=float, default=5.0, help="pause before restarting (default 5)")

    check = commands.add_parser(
        "update-check", help="before a start: roll back a swapped-in version that did not check in"
    )
    check.add_argument("--state-dir", required=True, help="directory given to enroll")
    check.add_argument("--root", help="install root holding versions/ and current (default: this one's)")
    return parser


def _install(root: str | None) -> release.Install | None:
    found = Path(root) if root else release.install_root()
    return release.Install(found.absolute()) if found else None


def _fail(message: str, code: int) -> int:
    print(f"rmm_agent: {message}", file=sys.stderr)
    return code


NOLOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")


def _run_as_problem(name: str) -> str | None:
    """Why a root agent could not run unprivileged instructions as ``name``, or None."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return f"run-as account {name!r} does not exist; create it with: python -m rmm_agent install-account"
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        return f"run-as account {name!r} has uid or gid 0; it must be unprivileged"
    return None


def install_account(args: argparse.Namespace) -> int:
    """Create the dedicated run-as account: a locked system account, no login shell, no home.

    Idempotent: an existing unprivileged account of that name is kept as it is.
    """
    if os.geteuid() != 0:
        return _fail("install-account must run as root", EXIT_USAGE)
    if _run_as_problem(args.name) is None:
        print(f"account {args.name} exists (uid {pwd.getpwnam(args.name).pw_uid})")
        return 0
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    shell = next((path for path in NOLOGIN_SHELLS if os.path.exists(path)), "/bin/false")
    command = [
        useradd,
        "--system",  # a system uid; no password, so the account is locked
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        shell,
        "--comment",
        "RMM agent unprivileged instructions",
        args.name,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        return _fail(f"cannot run useradd: {exc}", EXIT_USAGE)
    problem = _run_as_problem(args.name)
    if done.returncode != 0 or problem is not None:
        return _fail(f"could not create account {args.name}: {done.stderr.strip() or problem}", EXIT_USAGE)
    print(f"created system account {args.name} (uid {pwd.getpwnam(args.name).pw_uid})")
    return 0


def enroll(args: argparse.Namespace) -> int:
    """Enroll with the server and write the identity to the state dir."""
    if os.geteuid() == 0 and (problem := _run_as_problem(args.run_as)) is not None:
        return _fail(problem, EXIT_USAGE)  # before the token is used
    server = args.server.rstrip("/")
    ca_file = os.path.abspath(args.ca_file) if args.ca_file else None
    try:
        if ca_file:
            tls.check_ca_file(ca_file)
        client = Client(server, ca_file=ca_file, allow_insecure_http=args.allow_insecure_http)
    except tls.InsecureServer as exc:
        return _fail(str(exc), EXIT_USAGE)  # before the token is used
    facts = collect_facts(hostname=args.hostname)
    try:
        # Self-update needs release keys, which this answer brings: the first heartbeat says it.
        answer = client.enroll(args.token, facts, capabilities_of(can_update=False))
    except TransportError as exc:
        return _fail(f"cannot reach server: {exc}", EXIT_UNREACHABLE)
    if not 200 <= answer.status < 300:
        return _fail(f"enrollment refused (HTTP {answer.status}): {answer.detail}", EXIT_USAGE)
    body = answer.body if isinstance(answer.body, dict) else {}
    missing = [
        key
        for key in (
            "agent_id",
            "asset_id",
            "secret",
            "server_public_key",
            "heartbeat_interval",
        )
        if body.get(key) in (None, "")
    ]
    if missing:
        return _fail(f"enrollment answer lacks {', '.join(missing)}", EXIT_USAGE)
    try:
        pinned = keyring.decode_public_key(body["server_public_key"])
    except ValueError:
        return _fail("enrollment answer has an invalid server_public_key", EXIT_USAGE)
    # Every key the server signs instructions with now (during a rotation, the old one too).
    try:
        offered = body.get("server_keys") or {keyring.key_id(pinned): body["server_public_key"]}
        server_keys = keyring.trusted_keys(offered)
    except (ValueError, AttributeError):
        return _fail("enrollment answer has invalid server_keys", EXIT_USAGE)
    if server_keys.get(keyring.key_id(pinned)) != pinned:
        return _fail("enrollment answer's server_keys lack its server_public_key", EXIT_USAGE)

    # The release keys (the signers of the agent's own updates), pinned now like the instruction keys.
    try:
        pinned_releases = keyring.trusted_keys(body.get("release_keys") or {})
        release_keys = {kid: keyring.b64(raw) for kid, raw in pinned_releases.items()}
    except (ValueError, AttributeError):
        return _fail("enrollment answer has invalid release_keys", EXIT_USAGE)

    state = StateDir(args.state_dir)
    if state.config_path.exists():
        log.warning("replacing the existing enrollment in %s", state.root)
    # The pinned CA is kept with the identity, so later runs trust what this one did.
    pinned_ca = state.pin_ca(ca_file)
    state.save_config(
        {
            "server": server,
            "agent_id": str(body["agent_id"]),
            "asset_id": body["asset_id"],
            "secret": body["secret"],
            "server_public_key": body["server_public_key"],
            "server_keys": {kid: keyring.b64(raw) for kid, raw in server_keys.items()},
            "release_keys": release_keys,
            "heartbeat_interval": body["heartbeat_interval"],
            "run_as": args.run_as,
            "ca_file": pinned_ca,
            "allow_insecure_http": args.allow_insecure_http,
            "hostname": args.hostname,
            "enrolled_at": iso_utc(now_utc()),
        }
    )
    # A new identity: the server has acknowledged no facts for it through a heartbeat yet.
    state.save_state({})
    print(body["agent_id"])
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the agent loop (or a single pass with --once)."""
    state = StateDir(args.state_dir)
    try:
        config = state.load_config()
        state.ensure()
        agent = Agent(state, config, install=_install(None))
    except (NotEnrolled, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    if os.geteuid() == 0 and (problem := _run_as_problem(agent.run_as)) is not None:
        log.error("%s; unprivileged instructions will fail until it does", problem)
    agent.install_signal_handlers()
    _watch_check_in(state)
    agent.recover()
    code = agent.run_once() if args.once else agent.run_forever()
    if code == EXIT_UNAUTHORIZED:
        _fail(
            f"agent {config['agent_id']} was rejected by the server (revoked or unknown); enroll again",
            code,
        )
    return code


def _watch_check_in(state: StateDir) -> None:
    """A new version that has not checked in by its deadline exits, to be rolled back."""
    left = updater.check_in_deadline(state, __version__)
    if left is None:
        return

    def expire() -> None:
        if updater.check_in_deadline(state, __version__) is not None:
            log.error("version %s did not check in in time; exiting to be rolled back", __version__)
            os._exit(updater.EXIT_NO_CHECK_IN)

    timer = threading.Timer(left, expire)
    timer.daemon = True
    timer.start()


def update_check(args: argparse.Namespace) -> int:
    """The unit's ExecStartPre (the supervisor does the same before each start)."""
    reason = updater.update_check(StateDir(args.state_dir), _install(args.root))
    if reason:
        print(f"rolled back: {reason}")
    return 0


def supervise(args: argparse.Namespace) -> int:
    """Run ``python -m rmm_agent run`` from the install's ``current`` version, again whenever it
    ends (at once after an update, after a pause otherwise), and roll back a new version that
    does not check in in time. For hosts without systemd; this process keeps its own code, so a
    broken new version cannot take the supervisor with it."""
    install = _install(args.root)
    if install is None:
        return _fail("not a versioned install: give --root", EXIT_USAGE)
    state = StateDir(args.state_dir)
    stopping = threading.Event()
    child: list[subprocess.Popen] = []

    def handler(signum, frame) -> None:
        stopping.set()
        if child:
            child[0].send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stopping.is_set():
        updater.update_check(state, install)
        version_dir = os.path.realpath(install.current)
        env = {**os.environ, "PYTHONPATH": version_dir}
        command = [sys.executable, "-m", "rmm_agent", "run", "--state-dir", str(state.root)]
        child[:] = [subprocess.Popen(command, cwd=version_dir, env=env)]  # noqa: S603 (our own agent)
        code = _wait_for(child[0], state, install.current_version(), stopping)
        log.info("agent %s exited with %s", os.path.basename(version_dir), code)
        if stopping.is_set() or code in (EXIT_USAGE, EXIT_UNAUTHORIZED):
            return 0 if stopping.is_set() else code
        if code != updater.EXIT_UPDATED:
            stopping.wait(args.restart_seconds)
    return 0


def _wait_for(process: subprocess.Popen, state: StateDir, version: str | None, stopping: threading.Event) -> int:
    """The agent's exit code; an unconfirmed new version is ended once its deadline passed."""
    while True:
        try:
            return process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        left = updater.check_in_deadline(state, version)
        if left is not None and left <= 0 and not stopping.is_set():
            log.error("version %s did not check in in time; ending it", version)
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            return process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s rmm_agent %(levelname)s %(message)s",
    )
    args = _parser().parse_args(argv)
    if args.command == "install-account":
        return install_account(args)
    if args.command == "enroll":
        return enroll(args)
    if args.command == "supervise":
        return supervise(args)
    if args.command == "update-check":
        return update_check(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
