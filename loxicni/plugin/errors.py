"""The one place where failures of the layers below become CNI errors with their codes.

The kernel layer (``loxicni.net``) raises its own errors; each plugin step runs inside
``cni_errors`` naming what it was doing, so the runtime reads e.g. "attaching loxi1a2b to
bridge cni0: Device or resource busy" with code 103, never a traceback or code 999.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from loxicni.cni.errors import CniError, Code
from loxicni.net.masq import LabelTooLong
from loxicni.net.netns import NetnsGone, NotANetns
from loxicni.net.nft import NftError
from loxicni.net.rtnl import NetlinkError


@contextmanager
def cni_errors(what: str) -> Iterator[None]:
    try:
        yield
    except CniError:
        raise
    except NetnsGone as exc:
        raise CniError(Code.UNKNOWN_CONTAINER, f"{what}: netns {exc} does not exist") from exc
    except NotANetns as exc:
        raise CniError(Code.INVALID_ENV, f"{what}: not a network namespace ({exc})") from exc
    except NetlinkError as exc:
        raise CniError(Code.KERNEL_ERROR, f"{what}: {os.strerror(exc.errno)}", str(exc)) from exc
    except NftError as exc:
        raise CniError(Code.KERNEL_ERROR, f"{what}: {exc.what}", exc.details) from exc
    except LabelTooLong as exc:
        raise CniError(Code.INVALID_ENV, f"{what}: {exc}") from exc
    except OSError as exc:
        raise CniError(Code.IO_FAILURE, f"{what}: {exc.strerror or exc}") from exc
