# The project's metadata is in pyproject.toml. The bin/ scripts are plain scripts, not
# entry points, so that they also run from a checkout; setuptools takes them from here.
from setuptools import setup

setup(scripts=["bin/docker-dir-save", "bin/docker-dir-id", "bin/docker-dir-exec", "bin/docker-dir-push",
               "bin/docker-dir-store", "bin/docker-dir-mirror", "bin/git-annex-remote-docker-dir"])
