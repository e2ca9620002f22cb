"""End-to-end encrypted calls: the recorder as a visible MLS member (RFC 9420).

Ciphersuite 1 only (``MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519``), as Orange Meets
uses it (docs/e2ee-mls-choice.md): ``codec`` the wire's presentation language, ``crypto``
the primitives and HPKE, ``schedule`` the key schedule and secret tree, ``messages`` the
structures, ``protect`` message protection, ``tree`` the ratchet tree. Every check RFC
9420 asks for fails loudly; keys live in memory only. Imports the foundation only.
"""
