"""Servers the tests run: distribution, token service, S3, hostile and faulty ones, Sigstore."""
