#!/usr/bin/env python3
"""Verify an RMM evidence bundle, offline, with the Python standard library alone.

Run it in the unpacked folder of the bundle:

    python3 verify.py                       # checks everything, prints a verdict
    python3 verify.py --fingerprint SHA256:...   # also insists on the server key you were given

It rechecks:
  1. the server's signature over manifest.json (Ed25519, with the key in server_key.json that its
     key id names);
  2. every file listed in the manifest against its sha256;
  3. every evidence blob against the hash recorded for it;
  4. every history anchor: its signature, by the key its key id names, which must be the
     manifest's key or one it succeeded (rotation statements in server_key.json, each signed by
     the key before and the key after, link them);
  5. the history segment: each event's hash, each link to the event before it, and that each
     window of events ends exactly at a signed anchor;
  6. that every item was recorded in that history, with the same hash.

It exits 0 with "VERDICT: PASS" when all of that holds, and 1 with "VERDICT: FAIL" and every
problem named otherwise. Compare the key fingerprint it prints with the one you obtained from
the operator by another route (see docs/evidence.md): a bundle can only prove that the holder
of that key produced it. A fingerprint you were given before the server rotated its key is
accepted when the rotation statements link it to the key that signed the bundle.

Ed25519 is not in the standard library. When the `cryptography` package is importable it is
used; otherwise (or with --pure-python) the signature is checked by the small verifier below,
the reference arithmetic of RFC 8032, section 6 ("Ed25519 Python illustration"). It is slow
(tens of milliseconds a signature), not constant-time (which does not matter: it only checks
public data), and it verifies exactly what the RFC specifies.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys

FORMAT = "rmm-evidence-export/1"
EXPORT_PURPOSE = "rmm.evidence_export"
ANCHOR_PURPOSE = "rmm.history_anchor"
ROTATION_PURPOSE = "rmm.signing_key_rotation"
KEY_PURPOSE = "evidence"
GENESIS_HASH = "0" * 64
MAX_LISTED = 50

# --- Ed25519 verification: RFC 8032, section 6 (reference arithmetic) ---------------------------

_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493


def _inv(x: int) -> int:
    return pow(x, _P - 2, _P)


_D = -121665 * _inv(121666) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _recover_x(y: int, sign: int):
    if y >= _P:
        return None
    x2 = (y * y - 1) * _inv(_D * y * y + 1)
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


_GY = 4 * _inv(5) % _P
_GX = _recover_x(_GY, 0)
_G = (_GX, _GY, 1, _GX * _GY % _P)


def _add(p1, p2):
    a = (p1[1] - p1[0]) * (p2[1] - p2[0]) % _P
    b = (p1[1] + p1[0]) * (p2[1] + p2[0]) % _P
    c = 2 * p1[3] * p2[3] * _D % _P
    d = 2 * p1[2] * p2[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f, g * h, f * g, e * h)


def _mul(s: int, point):
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, point)
        point = _add(point, point)
        s >>= 1
    return q


def _equal(p1, p2) -> bool:
    return (p1[0] * p2[2] - p2[0] * p1[2]) % _P == 0 and (p1[1] * p2[2] - p2[1] * p1[2]) % _P == 0


def _decompress(s: bytes):
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


def ed25519_verify_pure(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """RFC 8032 verification, in plain Python."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = _decompress(public_key)
    r = _decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _Q:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public_key + message).digest(), "little") % _Q
    return _equal(_mul(s, _G), _add(r, _mul(h, a)))


def _cryptography_verifier():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return None

    def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    return verify


# --- helpers ------------------------------------------------------------------------------------


def canonical_json(obj) -> bytes:
    """The server's canonical form: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_file(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def fingerprint(public_key: bytes) -> str:
    return "SHA256:" + hashlib.sha256(public_key).hexdigest()


def key_id(public_key: bytes) -> str:
    """The id a signature names its key by: the first 16 hex digits of the fingerprint's digest."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def decode_key(text) -> bytes:
    key = base64.b64decode(text, validate=True)
    if len(key) != 32:
        raise ValueError("not an Ed25519 key")
    return key


def event_body_sha256(event: dict) -> str:
    body = canonical_json(
        {
            "sequence": event["sequence"],
            "created_at": event["created_at"],
            "actor": event["actor"],
            "action": event["action"],
            "subject_type": event["subject_type"],
            "subject_id": event["subject_id"],
            "site_id": event["site_id"],
            "payload": event["payload"],
        }
    )
    return hashlib.sha256(body).hexdigest()


def link_hash(prev_hash: str, body_sha256: str) -> str:
    """The chain, version 2: sha256(previous hash + sha256 of the event's canonical JSON)."""
    return hashlib.sha256((prev_hash + body_sha256).encode()).hexdigest()


def event_hash_v1(event: dict) -> str:
    """The chain, version 1 (older events): sha256(previous hash + the canonical JSON itself)."""
    body = canonical_json(
        {
            k: event[k]
            for k in ("sequence", "created_at", "actor", "action", "subject_type", "subject_id", "site_id", "payload")
        }
    )
    return hashlib.sha256(event["prev_hash"].encode() + body).hexdigest()


def safe_path(root: str, relative: str) -> str | None:
    """A path inside the bundle, or None for one that tries to leave it."""
    path = os.path.realpath(os.path.join(root, relative))
    if not path.startswith(os.path.realpath(root) + os.sep):
        return None
    return path


class Verifier:
    def __init__(self, root: str, verify_signature, expected_fingerprint: str | None):
        self.root = root
        self.verify_signature = verify_signature
        self.expected_fingerprint = expected_fingerprint
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.key = b""
        self.key_id = ""
        self.trusted: dict[str, bytes] = {}

    def fail(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def ok(self, text: str) -> None:
        print(f"  ok    {text}")

    def read_json(self, relative: str):
        path = safe_path(self.root, relative)
        if path is None:
            self.fail(relative, "points outside the bundle")
            return None
        try:
            with open(path, "rb") as fh:
                return json.loads(fh.read().decode("utf-8"))
        except FileNotFoundError:
            self.fail(relative, "is missing")
        except (UnicodeDecodeError, ValueError):
            self.fail(relative, "is not valid JSON (altered?)")
        return None

    # 1. the keys and the manifest's signature
    def check_key(self) -> bool:
        doc = self.read_json("server_key.json")
        try:
            self.key = decode_key(doc["public_key"])
        except Exception:  # noqa: BLE001 - any malformation is the same finding
            self.fail("server_key.json", "does not hold an Ed25519 public key")
            return False
        self.key_id = key_id(self.key)
        self.trusted = {self.key_id: self.key}
        self.follow_rotations(doc.get("rotations") if isinstance(doc.get("rotations"), list) else [])
        print(f"Server key fingerprint: {fingerprint(self.key)} (key id {self.key_id})")
        print("  Compare it with the fingerprint the operator gave you by another route.")
        if len(self.trusted) > 1:
            older = ", ".join(sorted(kid for kid in self.trusted if kid != self.key_id))
            print(f"  Earlier keys it succeeded, linked by signed rotation statements: {older}")
        if self.expected_fingerprint:
            expected = self.expected_fingerprint.strip()
            if expected == fingerprint(self.key):
                self.ok("the server key is the one you expected")
            elif expected in {fingerprint(key) for key in self.trusted.values()}:
                self.ok("the key you expected is an earlier key of this server: it signed the rotation to the next")
            else:
                self.fail("server_key.json", f"the key is not the one you expected ({self.expected_fingerprint})")
                return False
        return True

    def follow_rotations(self, rotations: list) -> None:
        """Trust the keys linked to the manifest's key by rotation statements: each names the key
        before and the key after, and both must have signed it."""
        links = []
        for n, envelope in enumerate(rotations):
            try:
                payload = json.loads(envelope["payload"])
                before = decode_key(payload["previous_public_key"])
                after = decode_key(payload["public_key"])
                data = envelope["payload"].encode("utf-8")
                well_formed = (
                    payload["purpose"] == ROTATION_PURPOSE
                    and payload["key_purpose"] == KEY_PURPOSE
                    and payload["previous_key_id"] == envelope["key_id"] == key_id(before)
                    and payload["key_id"] == key_id(after)
                )
                signed = well_formed and all(
                    self.verify_signature(key, data, base64.b64decode(signature, validate=True))
                    for key, signature in ((before, envelope["signature"]), (after, envelope["new_key_signature"]))
                )
            except Exception:  # noqa: BLE001 - any malformation is the same finding
                signed = False
            if not signed:
                self.fail(f"server_key.json rotation {n + 1}", "is not a rotation statement signed by both its keys")
                continue
            links.append((before, after))
        grew = True
        while grew:
            grew = False
            for before, after in links:
                for known, other in ((after, before), (before, after)):
                    if self.trusted.get(key_id(known)) == known and key_id(other) not in self.trusted:
                        self.trusted[key_id(other)] = other
                        grew = True

    def check_signature(self) -> bool:
        sig = self.read_json("signature.json")
        if sig is None:
            return False
        try:
            signed = {k: sig[k] for k in ("purpose", "export_id", "manifest_sha256", "signed_at")}
            signature = base64.b64decode(sig["signature"], validate=True)
        except Exception:  # noqa: BLE001
            self.fail("signature.json", "is not a well-formed signature")
            return False
        if sig.get("key_id", self.key_id) != self.key_id:
            self.fail("signature.json", f"names key {sig.get('key_id')}, not the server key in server_key.json")
            return False
        if signed["purpose"] != EXPORT_PURPOSE or not self.verify_signature(
            self.key, canonical_json(signed), signature
        ):
            self.fail("signature.json", "the server's signature does not verify with the server key")
            return False
        path = safe_path(self.root, "manifest.json")
        if path is None or not os.path.exists(path):
            self.fail("manifest.json", "is missing")
            return False
        if sha256_file(path) != signed["manifest_sha256"]:
            self.fail("manifest.json", "does not match the digest the server signed (altered)")
            return False
        self.ok(f"manifest.json is signed by the server key (export {signed['export_id']}, {signed['signed_at']})")
        return True

    # 2. files listed in the manifest
    def check_files(self, manifest: dict) -> None:
        bad = 0
        for relative, digest in sorted(manifest.get("files", {}).items()):
            path = safe_path(self.root, relative)
            if path is None:
                self.fail(relative, "points outside the bundle")
            elif not os.path.exists(path):
                self.fail(relative, "is missing")
            elif sha256_file(path) != digest:
                self.fail(relative, "does not match its digest in the manifest (altered)")
            else:
                continue
            bad += 1
        if not bad:
            self.ok(f"{len(manifest.get('files', {}))} files match their digests in the manifest")

    # 3. blobs, streamed: only (id, hash, type) of each item is kept, for the history check
    def check_blobs(self, items) -> dict:
        bad = count = 0
        wanted: dict = {}
        for item in items:
            count += 1
            where = f"{item.get('blob')} (item {item.get('id')})"
            path = safe_path(self.root, str(item.get("blob")))
            if item.get("problem"):
                self.fail(where, f"the server reported: {item['problem']}")
                bad += 1
            elif path is None or not os.path.exists(path):
                self.fail(where, "is missing")
                bad += 1
            elif sha256_file(path) != item.get("hash"):
                self.fail(where, "does not match its recorded hash (altered)")
                bad += 1
            wanted[item.get("history_sequence")] = (item.get("id"), item.get("hash"), item.get("evidence_type"))
        if not bad:
            self.ok(f"{count} evidence blobs match their recorded hashes")
        return wanted

    # 4. anchors
    def check_anchors(self, manifest: dict) -> dict:
        anchors = {}
        for listed in manifest.get("anchors", []):
            relative = listed.get("file", "?")
            doc = self.read_json(relative)
            if doc is None:
                continue
            name = os.path.basename(relative)
            path = safe_path(self.root, relative)
            if not name.endswith(f"-{sha256_file(path)}.json"):
                self.fail(relative, "its content does not match the hash in its name (altered)")
                continue
            try:
                signed = doc["anchor"]
                signature = base64.b64decode(doc["signature"], validate=True)
                key = base64.b64decode(doc["public_key"], validate=True)
                kid = doc.get("key_id", key_id(key))  # anchors from before key ids name only their key
                sequence, digest = int(signed["sequence"]), str(signed["hash"])
            except Exception:  # noqa: BLE001
                self.fail(relative, "is not a well-formed anchor")
                continue
            if self.trusted.get(kid) != key:
                self.fail(relative, f"is signed by another key ({fingerprint(key)})")
            elif signed.get("purpose") != ANCHOR_PURPOSE or set(signed) != {"purpose", "sequence", "hash", "time"}:
                self.fail(relative, "is not a well-formed anchor")
            elif not self.verify_signature(key, canonical_json(signed), signature):
                self.fail(relative, "its signature does not verify")
            elif listed.get("sequence") != sequence or listed.get("hash") != digest:
                self.fail(relative, "does not say what the manifest says it says")
            else:
                anchors[relative] = (sequence, digest, signed["time"])
        if len(anchors) == len(manifest.get("anchors", [])):
            self.ok(f"{len(anchors)} history anchors are signed by the server key or a key it succeeded")
        return anchors

    # 5. the history segment, and 6. the items in it
    def check_history(self, manifest: dict, anchors: dict, wanted: dict) -> None:
        spec = manifest.get("history", {})
        relative = spec.get("file", "history/segment.jsonl")
        windows = spec.get("windows", [])
        found: dict = {}
        chain_proved = 0
        path = safe_path(self.root, relative)
        if path is None or not os.path.exists(path):
            self.fail(relative, "is missing")
            return
        window_at = {w["from"]: w for w in windows}
        seen_windows = set()
        current = expect_seq = prev = last_withheld = None
        window_items: list = []
        events = withheld = unprovable = 0
        version_2 = False
        problems_before = len(self.problems)
        with open(path, "rb") as fh:
            for line_no, raw in enumerate(fh, 1):
                try:
                    event = json.loads(raw.decode("utf-8"))
                    seq = int(event["sequence"])
                except Exception:  # noqa: BLE001 - a damaged line is one finding, whatever broke it
                    self.fail(f"{relative} line {line_no}", "is not a valid event (altered?)")
                    if expect_seq is not None:  # assume it was the event expected here
                        seq, event = expect_seq, {"sequence": expect_seq, "broken": True}
                    else:
                        continue
                where = f"{relative} event {seq}"
                if current is None:
                    current = window_at.get(seq)
                    if current is None:
                        self.fail(where, "does not start a window listed in the manifest")
                        continue
                    seen_windows.add(seq)
                    prev = last_withheld = None
                    window_items = []
                elif seq != expect_seq:
                    self.fail(where, f"expected event {expect_seq} here: events are missing or out of order")
                    prev = None
                events += 1
                if event.get("broken"):
                    last_withheld, prev = seq, None  # nothing before it is proved by the chain
                else:
                    if prev is not None and event.get("prev_hash") != prev:
                        self.fail(where, "its previous hash does not match the event before it")
                    if event.get("withheld"):
                        withheld += 1
                        if "body_sha256" not in event:  # an older (version 1) event: only its links can be checked
                            unprovable += 1
                            last_withheld = seq
                            if version_2:
                                self.fail(where, "a version 1 event after version 2 events (altered)")
                        elif link_hash(str(event.get("prev_hash")), str(event["body_sha256"])) != event.get("hash"):
                            self.fail(where, "its hash does not match its content digest (altered)")
                        else:
                            version_2 = True
                    else:
                        try:
                            if link_hash(str(event["prev_hash"]), event_body_sha256(event)) == event.get("hash"):
                                version_2 = True
                            elif version_2 or event_hash_v1(event) != event.get("hash"):
                                self.fail(where, "its content does not match its hash (altered)")
                        except (KeyError, TypeError, AttributeError):
                            self.fail(where, "is not a complete event (altered?)")
                        if seq in wanted:
                            payload = event.get("payload") if isinstance(event.get("payload"), dict) else {}
                            found[seq] = (
                                event.get("action"),
                                event.get("subject_id"),
                                payload.get("hash"),
                                payload.get("evidence_type"),
                            )
                            window_items.append(seq)
                    prev = event.get("hash")
                expect_seq = seq + 1
                if seq == current["to"]:
                    anchor = anchors.get(current.get("anchor"))
                    if anchor is None:
                        self.fail(where, f"ends a window whose anchor {current.get('anchor')} did not verify")
                    elif anchor[0] != seq or anchor[1] != prev:
                        self.fail(where, f"its hash is not the one signed in {current.get('anchor')}")
                    else:
                        # Items after the last withheld event are proved by the chain alone.
                        chain_proved += sum(1 for s in window_items if last_withheld is None or s > last_withheld)
                    current = expect_seq = prev = None
        if current is not None:
            self.fail(relative, f"ends inside the window that should end at event {current['to']} (cut short)")
        for start in sorted(set(window_at) - seen_windows):
            self.fail(relative, f"the window starting at event {start} is missing")
        if len(self.problems) == problems_before:
            self.ok(f"{events} history events in {len(windows)} windows link and hash, each ending at a signed anchor")
        missing = 0
        for seq, (item_id, item_hash, item_type) in wanted.items():
            event = found.get(seq)
            where = f"item {item_id}"
            if event is None:
                self.fail(where, f"its recording event {seq} is not in the history segment")
            elif event != ("evidence.recorded", item_id, item_hash, item_type):
                self.fail(where, f"history event {seq} does not record this item with this hash")
            else:
                continue
            missing += 1
        if not missing:
            self.ok(f"{len(wanted)} items are recorded in the history with the same hash")
        if withheld:
            self.notes.append(
                f"{withheld} history events of other sites are withheld: each is shown by the digest of its "
                "content, so its link in the chain is proved without revealing what it says."
            )
        if unprovable:
            self.notes.append(
                f"{unprovable} withheld events predate version 2 of the chain and can only be checked for their "
                f"links. {chain_proved} of {len(wanted)} items are proved by the chain up to a signed anchor; for "
                "the others the proof rests on the server's signature over this bundle."
            )

    def open_manifest(self):
        """The manifest's header, and its items as a stream.

        The server writes every item on a line of its own, so a large manifest is read line by
        line; a manifest laid out otherwise is read whole.
        """
        path = safe_path(self.root, "manifest.json")
        try:
            with open(path, "rb") as fh:
                head = []
                for line in fh:
                    if line == b' "items": [\n':
                        break
                    head.append(line)
                else:
                    raise ValueError("not the line-per-item layout")
                text = b"".join(head).decode("utf-8").rstrip()
                header = json.loads(text[:-1] + "}" if text.endswith(",") else text)
        except (OSError, TypeError):
            self.fail("manifest.json", "is missing")
            return None, iter(())
        except (UnicodeDecodeError, ValueError):
            manifest = self.read_json("manifest.json")
            if not isinstance(manifest, dict):
                return None, iter(())
            return manifest, iter(manifest.get("items", []))
        return header, self._stream_items(path, len(head) + 1)

    def _stream_items(self, path: str, skip: int):
        with open(path, "rb") as fh:
            for line_no, line in enumerate(fh, 1):
                if line_no <= skip:
                    continue
                if line.startswith(b"]"):
                    return
                try:
                    item = json.loads(line.decode("utf-8").rstrip().rstrip(","))
                except (UnicodeDecodeError, ValueError):
                    self.fail(f"manifest.json line {line_no}", "is not a valid item (altered?)")
                    continue
                if isinstance(item, dict):
                    yield item
        self.fail("manifest.json", "ends inside its list of items (cut short)")

    def run(self) -> bool:
        print("RMM evidence bundle verification")
        print(f"Folder: {self.root}")
        if not self.check_key():
            return False
        signed = self.check_signature()
        manifest, items = self.open_manifest()
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            if manifest is not None:
                self.fail("manifest.json", f"is not a {FORMAT} manifest")
            return False
        export = manifest.get("export", {})
        counts = manifest.get("counts", {})
        print(f"Export {export.get('id')} by {export.get('requested_by')}, {counts.get('items', '?')} items")
        self.check_files(manifest)
        anchors = self.check_anchors(manifest)
        wanted = self.check_blobs(items)
        if counts.get("items") is not None and counts["items"] != len(wanted):
            self.fail("manifest.json", f"lists {len(wanted)} items but counts {counts['items']}")
        self.check_history(manifest, anchors, wanted)
        return signed and not self.problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Verify an RMM evidence bundle offline.")
    parser.add_argument("folder", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--fingerprint", help="the server key fingerprint you obtained out of band")
    parser.add_argument("--pure-python", action="store_true", help="do not use the cryptography package")
    args = parser.parse_args(argv)
    verify = None if args.pure_python else _cryptography_verifier()
    if verify is None:
        verify = ed25519_verify_pure
        print("Signatures: checked by the built-in RFC 8032 verifier (standard library only)")
    else:
        print("Signatures: checked by the cryptography package")
    checker = Verifier(os.path.abspath(args.folder), verify, args.fingerprint)
    passed = checker.run()
    for problem in checker.problems[:MAX_LISTED]:
        print(f"FAIL {problem}")
    if len(checker.problems) > MAX_LISTED:
        print(f"... and {len(checker.problems) - MAX_LISTED} more problems")
    for note in checker.notes:
        print(f"Note: {note}")
    if passed:
        print("VERDICT: PASS - every hash, the history chain and every signature check out.")
        return 0
    print(f"VERDICT: FAIL - {len(checker.problems) or 1} problem(s); this bundle is not what the server produced.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
