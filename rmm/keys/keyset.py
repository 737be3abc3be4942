"""The signing-key set each process signs and verifies with, cached per process.

One :class:`KeySet` holds, per purpose, every key of the public registry in rotation order, and
the private keys this process holds. It is reloaded only when the registry's version changes: the
agent's check-in statement returns the version (:data:`VERSION_SQL`), so a heartbeat costs no
query for keys, and a rotation reaches every worker at its next heartbeat; elsewhere
:func:`current` asks for the version with one small query.

Signing (:meth:`KeySet.sign`) uses the newest key of the purpose that is not retired, whose
``not_before`` has passed and whose private half this process holds; for an agent, not newer
than the newest key that agent has acknowledged holding, so an agent that has not yet learnt of
a rotation keeps receiving instructions it can verify.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection
from django.utils import timezone

from rmm.core.errors import ServiceError
from rmm.keys import store
from rmm.keys.models import KeyPurpose, SigningKey
from rmm_agent import keyring

logger = logging.getLogger(__name__)

INSTRUCTIONS = KeyPurpose.INSTRUCTIONS.value
EVIDENCE = KeyPurpose.EVIDENCE.value
RELEASES = KeyPurpose.RELEASES.value
PURPOSES = (INSTRUCTIONS, EVIDENCE, RELEASES)

# Grows with every new key (ids only grow) and every retirement (one-way): a changed registry.
VERSION_SQL = f"(SELECT COUNT(retired_at) + COALESCE(MAX(id), 0) FROM {SigningKey._meta.db_table})"  # noqa: S608


class KeyUnavailable(ServiceError):
    """503: no key of a purpose can sign here (none registered, or its private half is missing);
    answered as the signing key being down (rmm.core.dependencies)."""

    status_code = 503
    dependency = "signing_key"


@dataclass(frozen=True)
class Key:
    purpose: str
    sequence: int
    key_id: str
    public_key: bytes
    created_at: datetime
    not_before: datetime
    retired_at: datetime | None
    rotation: dict  # {} for a purpose's first key
    retirement: dict

    @property
    def public_key_b64(self) -> str:
        return keyring.b64(self.public_key)

    @property
    def fingerprint(self) -> str:
        return keyring.fingerprint(self.public_key)

    @classmethod
    def of(cls, row: SigningKey) -> Key:
        return cls(
            row.purpose,
            row.sequence,
            row.key_id,
            base64.b64decode(row.public_key),
            row.created_at,
            row.not_before,
            row.retired_at,
            row.rotation or {},
            row.retirement or {},
        )


class KeySet:
    def __init__(self, version: int, keys: Iterable[Key], private: Mapping[str, Ed25519PrivateKey]):
        self.version = version
        self.by_purpose: dict[str, list[Key]] = {purpose: [] for purpose in PURPOSES}
        self.problems: list[str] = []
        for key in sorted(keys, key=lambda k: k.sequence):
            chain = self.by_purpose.setdefault(key.purpose, [])
            problem = _link_problem(chain[-1] if chain else None, key)
            if problem:
                # Not made by rmm_signing_key (someone wrote to the registry): never used, never sent.
                self.problems.append(f"{key.purpose} key #{key.sequence} ({key.key_id}) left out: {problem}")
            if not problem and not self.problems_in(key.purpose):
                chain.append(key)
        # Only private keys that are what the registry says (the same public half).
        registered = {k.key_id: k.public_key for ks in self.by_purpose.values() for k in ks}
        self.private = {kid: key for kid, key in private.items() if registered.get(kid) == store.raw_public(key)}

    def problems_in(self, purpose: str) -> list[str]:
        return [p for p in self.problems if p.startswith(f"{purpose} ")]

    # -- reading ----------------------------------------------------------------------------

    def keys(self, purpose: str) -> list[Key]:
        return self.by_purpose.get(purpose, [])

    def get(self, purpose: str, key_id: str) -> Key | None:
        return next((k for k in self.keys(purpose) if k.key_id == key_id), None)

    def active(self, purpose: str) -> list[Key]:
        """Keys that are not retired: what an agent enrolled now is told to trust."""
        return [k for k in self.keys(purpose) if k.retired_at is None]

    def first_id(self, purpose: str = INSTRUCTIONS) -> str:
        keys = self.keys(purpose)
        return keys[0].key_id if keys else ""

    def holds(self, key: Key) -> bool:
        return key.key_id in self.private

    # -- signing ----------------------------------------------------------------------------

    def signer(self, purpose: str, now: datetime | None = None, up_to: str | None = None) -> Key:
        """The key to sign with now: the newest usable one, not newer than the key ``up_to``
        (an agent's acknowledged key) when one of those is usable. KeyUnavailable if none is."""
        now = now or timezone.now()
        usable = [k for k in self.active(purpose) if k.not_before <= now and self.holds(k)]
        if not usable:
            raise KeyUnavailable(
                f"No {purpose} signing key can sign here: register one with "
                f"`manage.py rmm_signing_key rotate --purpose {purpose}`, and make its private key "
                "available to every server process (RMM_SIGNING_KEY_DIR or RMM_SIGNING_KEYS)."
            )
        limit = next((k.sequence for k in self.keys(purpose) if k.key_id == up_to), None)
        if limit is not None:
            older = [k for k in usable if k.sequence <= limit]
            if older:
                return older[-1]
        return usable[-1]

    def sign(self, purpose: str, data: bytes) -> tuple[str, str]:
        """(key id, base64 signature) of ``data`` by :meth:`signer`."""
        key = self.signer(purpose)
        return key.key_id, self.sign_with(key, data)

    def sign_with(self, key: Key, data: bytes) -> str:
        """Base64 signature of ``data`` by a key this process holds (one :meth:`signer` chose)."""
        return keyring.b64(self.private[key.key_id].sign(data))

    def signer_for_agent(self, acknowledged: str, now: datetime) -> Key:
        """An agent's instructions' key. An agent that never said (from before key ids) holds the
        purpose's first key, the one it pinned."""
        return self.signer(INSTRUCTIONS, now, up_to=acknowledged or self.first_id())

    # -- agents -----------------------------------------------------------------------------

    def acknowledged(self, reported: object) -> str | None:
        """The newest instruction key among those an agent says it holds (None: it said nothing
        this worker can use; the stored acknowledgement then stays)."""
        if not isinstance(reported, list):
            return None
        held = {kid for kid in reported[:50] if isinstance(kid, str)}
        known = [k for k in self.keys(INSTRUCTIONS) if k.key_id in held]
        return known[-1].key_id if known else None

    def update_for(self, reported: object, purpose: str = INSTRUCTIONS) -> dict | None:
        """What an agent holding the keys ``reported`` of a purpose (instructions, or releases)
        needs to learn: the rotation statements after the newest key it holds (a chain, each
        signed by the key before), and the retirements of keys it holds or is about to learn.
        None when it is up to date."""
        if not isinstance(reported, list):
            return None
        held = {kid for kid in reported[:50] if isinstance(kid, str)}
        keys = self.keys(purpose)
        newest = max((k.sequence for k in keys if k.key_id in held), default=0)
        rotations = [k for k in keys if k.sequence > newest and k.rotation]
        learnt = {k.key_id for k in rotations}
        retirements = [k.retirement for k in keys if k.retirement and (k.key_id in held or k.key_id in learnt)]
        if not rotations and not retirements:
            return None
        return {"rotations": [k.rotation for k in rotations], "retirements": retirements}

    # -- verifying --------------------------------------------------------------------------

    def verification_keys(self, purpose: str) -> dict[str, bytes]:
        """The keys whose signatures this server accepts as its own, for history anchors and
        evidence: the keys whose private halves it holds (the trust comes from outside the
        database), and every key linked to one of those by rotation statements whose two
        signatures verify, back to the purpose's first key. A key put into the registry
        without such a link (by someone with database rights) is not among them."""
        trusted = {k.key_id: k.public_key for k in self.keys(purpose) if self.holds(k)}
        links = []
        for key in self.keys(purpose):
            try:
                links.append(keyring.read_rotation(key.rotation, purpose))
            except keyring.StatementRefused:
                continue
        grew = True
        while grew:
            grew = False
            for link in links:
                known_before = trusted.get(link.previous_key_id) == link.previous_public_key
                known_after = trusted.get(link.key_id) == link.public_key
                if known_before and link.key_id not in trusted:
                    trusted[link.key_id], grew = link.public_key, True
                elif known_after and link.previous_key_id not in trusted:
                    trusted[link.previous_key_id], grew = link.previous_public_key, True
        return trusted

    def chain(self, purpose: str, key_ids: Iterable[str]) -> list[dict]:
        """The rotation statements that link the keys ``key_ids`` of a purpose (for a bundle that
        must prove, offline, that each of them belongs to the same server)."""
        wanted = [k.sequence for k in self.keys(purpose) if k.key_id in set(key_ids)]
        if not wanted:
            return []
        low, high = min(wanted), max(wanted)
        return [k.rotation for k in self.keys(purpose) if low < k.sequence <= high and k.rotation]


def _link_problem(before: Key | None, key: Key) -> str:
    """Why ``key`` does not follow ``before`` in its purpose's chain ("" when it does)."""
    if before is None:
        return "" if key.sequence == 1 and not key.rotation else "the chain does not start with it"
    try:
        link = keyring.read_rotation(key.rotation, key.purpose)
    except keyring.StatementRefused as exc:
        return f"its rotation statement is not valid ({exc})"
    if (link.previous_key_id, link.previous_public_key) != (before.key_id, before.public_key) or (
        link.key_id,
        link.public_key,
        link.sequence,
    ) != (key.key_id, key.public_key, key.sequence):
        return f"its rotation statement does not link it to key #{before.sequence} ({before.key_id})"
    return ""


# --- the per-process cache ---------------------------------------------------------------------

_cached: KeySet | None = None
_loading = threading.Lock()


def registry_version() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {VERSION_SQL}")  # noqa: S608 (a constant)
        return int(cursor.fetchone()[0])


def current(version: int | None = None) -> KeySet:
    """The key set, reloaded if the registry's ``version`` (asked for when not given) is not the
    cached one's. A purpose without any key gets its first one (:func:`rmm.keys.services.ensure`)."""
    cached = _cached
    if version is None:
        version = registry_version()
    if cached is not None and cached.version == version:
        return cached
    return reload()


def cached() -> KeySet:
    """The cached key set as it is (loading it if this process has none yet)."""
    return _cached or current()


def reload() -> KeySet:
    global _cached
    from rmm.keys import services

    with _loading:
        rows = list(SigningKey.objects.all())
        if {row.purpose for row in rows} != set(PURPOSES):
            services.ensure_first_keys({row.purpose for row in rows})
            rows = list(SigningKey.objects.all())
        version = sum(1 for row in rows if row.retired_at) + max((row.pk for row in rows), default=0)
        _cached = KeySet(version, [Key.of(row) for row in rows], store.private_keys())
        for problem in _cached.problems:
            logger.error("signing keys: %s", problem)
        return _cached
