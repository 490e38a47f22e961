"""Signing and verification of manifest digests (key pair and Sigstore keyless)."""
