"""The blob store the commands use: the one the environment names."""
from ..format.store import BlobStore


def blob_store():
    """The store $DOCKER_DIR_STORE or the cache names, or None when it is switched off."""
    return BlobStore.from_environment()
