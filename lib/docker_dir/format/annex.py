"""Telling content git-annex would provide (dropped, or an unlocked file's pointer) from
a directory that is broken: the first is `datalad get`'s job, the second a new save's."""
import errno
import os
import stat

from ..fs import open_regular

GET_CONTENT_HINT = "run 'datalad get {d}' or 'git annex get {d}'"
_ANNEX_OBJECTS = "annex/objects/"
_POINTER_MAX = 1024


def content_state(path):
    """"present"; "annexed" when git-annex would provide the content (a dangling link into
    an annex, or an unlocked file's pointer); else what is wrong: "missing", "a dangling
    symlink", "a symlink loop"."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        target = path
        for _ in range(40):  # the kernel's own limit on a chain of links
            try:
                target = os.path.join(os.path.dirname(target), os.readlink(target))
            except OSError:
                break
            if _ANNEX_OBJECTS in target:
                return "annexed"
        return "a dangling symlink" if os.path.islink(path) else "missing"
    except OSError as err:
        return "a symlink loop" if err.errno == errno.ELOOP else f"unreadable ({err.strerror})"
    if stat.S_ISREG(st.st_mode) and st.st_size < _POINTER_MAX:
        try:
            with open_regular(path) as stream:
                if stream.read(_POINTER_MAX).startswith(b"/" + _ANNEX_OBJECTS.encode()):
                    return "annexed"
        except OSError:
            pass
    return "present"
