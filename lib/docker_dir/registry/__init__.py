"""The registry client: images from and to a registry over HTTP, with no container engine.

A peer of the engine layer. Never imported on the hot paths (docker-dir-id,
docker-dir-exec with the image present).
"""
