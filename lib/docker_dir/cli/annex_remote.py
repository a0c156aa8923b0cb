"""git-annex-remote-docker-dir: git-annex starts it and speaks its protocol on stdin/stdout."""
from annexremote import Master

from ..application.annex_remote import DockerDirRemote


def entry_point():
    master = Master()
    master.LinkRemote(DockerDirRemote(master))
    master.Listen()
    return 0
