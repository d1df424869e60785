"""The cryptography the protocol uses, all from ``cryptography``: X25519 key agreement,
HKDF-SHA256 to derive keys, AES-256-GCM to encrypt shares between clients through the server,
and AES-256-CTR as the PRG that expands a 32-byte seed into a mask.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedloom.secagg.ring import Ring, ring_mask

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_RAW = serialization.Encoding.Raw


class CryptoError(ValueError):
    """A key that is not a key, or a ciphertext that does not decrypt."""


def keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw ``(secret, public)`` bytes."""
    sk = X25519PrivateKey.generate()
    secret = sk.private_bytes(_RAW, serialization.PrivateFormat.Raw,
                              serialization.NoEncryption())
    return secret, sk.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def agree(secret: bytes, public: bytes, purpose: bytes) -> bytes:
    """A 32-byte key both ends derive: HKDF-SHA256 of the X25519 shared secret."""
    try:
        shared = X25519PrivateKey.from_private_bytes(secret).exchange(
            X25519PublicKey.from_public_bytes(public))
    except ValueError as err:  # a wrong length, or a low-order public key (all-zero secret)
        raise CryptoError(f"key agreement failed: {err}") from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"fedloom-secagg/" + purpose).derive(shared)


def public_key(secret: bytes) -> bytes:
    """The X25519 public key of a raw secret key (the server checks rebuilt keys with it)."""
    try:
        sk = X25519PrivateKey.from_private_bytes(secret)
    except ValueError as err:
        raise CryptoError(f"not an X25519 secret key: {err}") from None
    return sk.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def expand(seed: bytes, size: int, ring_bits: int) -> Ring:
    """``size`` pseudorandom ring elements from ``seed`` (AES-256-CTR keystream)."""
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = enc.update(bytes(8 * size)) + enc.finalize()
    return np.frombuffer(stream, dtype=np.uint64) & ring_mask(ring_bits)


def associated(round: int, sender: int, receiver: int) -> bytes:
    return struct.pack(">qqq", round, sender, receiver)


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise CryptoError("a ciphertext did not decrypt (wrong key, or tampered)") from None


__all__ = ["KEY_BYTES", "NONCE_BYTES", "TAG_BYTES", "CryptoError", "agree", "associated",
           "decrypt", "encrypt", "expand", "keypair", "public_key"]
