"""Keys: the server's signing keys (this app).

The signing keys live in :mod:`rmm.keys.keyset` (the key set each process signs and verifies
with), :mod:`rmm.keys.store` (where the private halves come from) and :mod:`rmm.keys.services`
(creating, rotating and retiring keys); the Django secret key in :mod:`rmm.core.private_files`.
"""
