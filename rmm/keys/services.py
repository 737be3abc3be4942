"""Creating, rotating and retiring signing keys. Every change is recorded in the history."""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from rmm.core.errors import Conflict, InvalidInput
from rmm.engine.states import JobStatus
from rmm.history import services as history
from rmm.keys import keyset, store
from rmm.keys.models import KeyPurpose, SigningKey
from rmm_agent import keyring
from rmm_agent.protocol import iso_utc

logger = logging.getLogger(__name__)


def _sign(private: Ed25519PrivateKey, text: str) -> str:
    return keyring.b64(private.sign(text.encode("utf-8")))


def _register_first(purpose: str, private: Ed25519PrivateKey, actor: str, how: str) -> SigningKey:
    raw = store.raw_public(private)
    now = timezone.now()
    row = SigningKey.objects.create(
        purpose=purpose, sequence=1, key_id=keyring.key_id(raw), public_key=keyring.b64(raw), not_before=now
    )
    history.append(
        actor,
        "signing_key.created",
        row,
        payload={"purpose": purpose, "key_id": row.key_id, "fingerprint": keyring.fingerprint(raw), "how": how},
    )
    return row


def _register_next(
    purpose: str,
    previous: SigningKey,
    previous_private: Ed25519PrivateKey,
    private: Ed25519PrivateKey,
    actor: str,
    not_before: datetime,
) -> SigningKey:
    raw = store.raw_public(private)
    now = timezone.now()
    text = keyring.rotation_payload(
        purpose,
        previous.sequence + 1,
        store.raw_public(previous_private),
        raw,
        iso_utc(not_before),
        iso_utc(now),
    )
    rotation = {
        "payload": text,
        "key_id": previous.key_id,
        "signature": _sign(previous_private, text),
        "new_key_signature": _sign(private, text),
    }
    row = SigningKey.objects.create(
        purpose=purpose,
        sequence=previous.sequence + 1,
        key_id=keyring.key_id(raw),
        public_key=keyring.b64(raw),
        not_before=not_before,
        created_at=now,
        rotation=rotation,
    )
    history.append(
        actor,
        "signing_key.rotated",
        row,
        payload={
            "purpose": purpose,
            "key_id": row.key_id,
            "fingerprint": keyring.fingerprint(raw),
            "previous_key_id": previous.key_id,
            "not_before": iso_utc(not_before),
        },
    )
    return row


def _retire(row: SigningKey, signer: SigningKey, signer_private: Ed25519PrivateKey, actor: str) -> None:
    now = timezone.now()
    text = keyring.retirement_payload(row.purpose, row.key_id, iso_utc(now))
    statement = {"payload": text, "key_id": signer.key_id, "signature": _sign(signer_private, text)}
    updated = SigningKey.objects.filter(pk=row.pk, retired_at__isnull=True).update(retired_at=now, retirement=statement)
    if not updated:
        raise Conflict(f"Key {row.key_id} is already retired.")
    row.retired_at, row.retirement = now, statement
    history.append(
        actor,
        "signing_key.retired",
        row,
        payload={"purpose": row.purpose, "key_id": row.key_id, "signed_by": signer.key_id},
    )


def ensure_first_keys(present: set[str]) -> None:
    """Give every purpose that has no key its first one. With keys on disk (the default): the key
    of a server from before key rotation (``RMM_SIGNING_KEY_FILE``) if there is one, since agents
    pinned it and anchors were signed with it (for evidence it is then rotated at once, so the
    two purposes stop sharing it); otherwise ``initial-<purpose>.pem``, generated once. With
    ``RMM_SIGNING_KEYS`` nothing is made: the operator registers keys (``rmm_signing_key``)."""
    if store.from_environment():
        return
    legacy = store.legacy_key()
    for purpose in keyset.PURPOSES:
        if purpose in present:
            continue
        try:
            with transaction.atomic():  # a savepoint: another process may be doing the same
                if legacy is None:
                    _register_first(purpose, store.initial_key(purpose), "system", "generated")
                    continue
                first = _register_first(purpose, legacy, "system", "imported from RMM_SIGNING_KEY_FILE")
                if purpose != keyset.INSTRUCTIONS:
                    own = store.initial_key(purpose)
                    second = _register_next(purpose, first, legacy, own, "system", timezone.now())
                    _retire(first, second, own, "system")
        except IntegrityError:
            logger.info("signing keys: the first %s key was registered by another process", purpose)


def _purpose(value: str) -> str:
    if value not in keyset.PURPOSES:
        raise InvalidInput(f"Unknown purpose {value!r}: one of {', '.join(keyset.PURPOSES)}.", field="purpose")
    return value


def rotate(
    purpose: str,
    actor: str,
    *,
    private: Ed25519PrivateKey | None = None,
    not_before: datetime | None = None,
) -> SigningKey:
    """Make a new key the purpose's newest, announced by a statement that the current newest key
    and the new key both sign (for a purpose without a key, its first key). The new private key
    is ``private`` (imported) or generated; with keys on disk it is written to the key directory
    before it is registered, so every worker that learns of it can find it.

    Instruction keys: agents learn the new key at their next heartbeat and the server signs with
    it for each agent once that agent reports holding it. Evidence keys: used from ``not_before``.
    """
    purpose = _purpose(purpose)
    now = timezone.now()
    not_before = not_before or now
    keys = keyset.reload()  # what the registry says now, not a worker's cache
    previous = SigningKey.objects.filter(purpose=purpose).order_by("-sequence").first()
    if private is None:
        if store.from_environment():
            raise InvalidInput(
                "Signing keys come from RMM_SIGNING_KEYS: generate the new key yourself "
                "(openssl genpkey -algorithm ed25519 -out new.pem), add it to RMM_SIGNING_KEYS, and pass --key-file.",
                field="key_file",
            )
        private = Ed25519PrivateKey.generate()
    kid = keyring.key_id(store.raw_public(private))
    if SigningKey.objects.filter(purpose=purpose, key_id=kid).exists():
        raise Conflict(f"Key {kid} is already a {purpose} key.")
    previous_private = keys.private.get(previous.key_id) if previous else None
    if previous is not None and previous_private is None:
        raise Conflict(
            f"The current {purpose} key {previous.key_id} has no private key here, and it must sign the rotation: "
            "run this where the server's keys are."
        )
    if not store.from_environment():
        with contextlib.suppress(FileExistsError):  # the same key imported again after a failed attempt
            store.save(purpose, private)
    try:
        with transaction.atomic():
            if previous is None:
                row = _register_first(purpose, private, actor, "rotate")
            else:
                row = _register_next(purpose, previous, previous_private, private, actor, not_before)
    except IntegrityError:
        raise Conflict("Another rotation of this purpose happened at the same time; look at the keys again.") from None
    return row


def retire(purpose: str, key_id: str, actor: str, *, force: bool = False) -> tuple[SigningKey, list]:
    """Stop signing with a key; agents stop trusting it. Old anchors and evidence signed with it
    still verify (the registry keeps its public half and the statements that link it). Its
    private key file is deleted from the key directory unless another purpose still uses the key;
    returns the key and the files deleted.

    The newest key cannot be retired (rotate first). Retiring an instruction key that unrevoked
    agents have not yet moved past, or that signed instructions still queued or running, makes
    those agents refuse them: that needs ``force``."""
    purpose = _purpose(purpose)
    keys = keyset.reload()
    row = SigningKey.objects.filter(purpose=purpose, key_id=key_id).first()
    if row is None:
        raise InvalidInput(f"No {purpose} key {key_id}.", field="key_id")
    if row.retired_at is not None:
        raise Conflict(f"Key {key_id} is already retired.")
    signer = SigningKey.objects.filter(purpose=purpose, retired_at__isnull=True).order_by("-sequence").first()
    if signer.pk == row.pk:
        raise Conflict(f"Key {key_id} is the newest {purpose} key: rotate before retiring it.")
    if signer.key_id not in keys.private:
        raise Conflict(f"The newest {purpose} key {signer.key_id} must sign the retirement: run this where it is.")
    if purpose == keyset.INSTRUCTIONS and not force:
        behind, queued = relying_on(row)
        if behind or queued:
            raise Conflict(
                f"{behind} active agent(s) have not acknowledged a newer key and {queued} queued or running "
                f"instruction(s) are signed with {key_id}: they would be refused. Wait, or pass --force."
            )
    with transaction.atomic():
        _retire(row, signer, keys.private[signer.key_id], actor)
    if SigningKey.objects.filter(key_id=key_id, retired_at__isnull=True).exists():
        return row, []  # the same key still serves another purpose (a server upgraded from one key)
    return row, store.discard(key_id)


def relying_on(row: SigningKey) -> tuple[int, int]:
    """Unrevoked agents whose newest acknowledged instruction key is this one or older, and
    instructions queued or running that this key signed."""
    from rmm.engine.models import Instruction
    from rmm.inventory.models import Agent

    older = list(
        SigningKey.objects.filter(purpose=KeyPurpose.INSTRUCTIONS, sequence__lte=row.sequence).values_list(
            "key_id", flat=True
        )
    )
    agents = Agent.objects.filter(revoked_at__isnull=True, signing_key_id__in=[*older, ""]).count()
    instructions = Instruction.objects.filter(
        key_id=row.key_id, status__in=[JobStatus.QUEUED, JobStatus.RUNNING]
    ).count()
    return agents, instructions


def agents_by_key() -> dict[str, int]:
    """Unrevoked agents per newest acknowledged instruction key ("" for agents that never said)."""
    from rmm.inventory.models import Agent

    rows = Agent.objects.filter(revoked_at__isnull=True).values("signing_key_id").annotate(n=Count("pk"))
    return {row["signing_key_id"]: row["n"] for row in rows}
