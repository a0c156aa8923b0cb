"""Format layer: reading docker-archive / OCI image directories. No subprocess here."""
