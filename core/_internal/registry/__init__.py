"""Registry access: the HTTP client and the embedded OCI-layout transport."""
