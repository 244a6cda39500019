"""The one place w2s talks to the Hugging Face Hub: resolve a file to a local path, or say in one
sentence what to pass instead when the Hub cannot be reached."""
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from cli import UserError


class OfflineError(UserError, RuntimeError):
    """The file is neither local nor in the Hub cache, and the Hub cannot be reached."""


# set once the Hub is known to be unreachable: later files come from the cache only, instead of each one spending
# huggingface_hub's ~25 s of connection retries before failing the same way
_unreachable = None


def reachable(timeout=3.0):
    """Can the Hub be reached? One TCP connection, a few seconds at most, asked once per process. Offline mode
    (HF_HUB_OFFLINE=1) answers no at once; behind a proxy the question is left to huggingface_hub itself."""
    global _unreachable
    if _unreachable is None:
        if constants.HF_HUB_OFFLINE:
            _unreachable = True
        elif any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
            _unreachable = False
        else:
            url = urlparse(constants.ENDPOINT)
            try:
                socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                         timeout=timeout).close()
                _unreachable = False
            except OSError:
                _unreachable = True
    return not _unreachable


def hub_file(repo_id, filename, revision=None, repo_type="model", instead="a local directory"):
    """Path to `filename` of a Hub repo, from the huggingface_hub cache (HF_HOME, HF_HUB_OFFLINE and
    revisions honoured) or downloaded once into it. `instead` names what the user can pass instead."""
    global _unreachable
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, repo_type=repo_type,
                                    local_files_only=not reachable()))
    except LocalEntryNotFoundError:
        # raised both offline (HF_HUB_OFFLINE=1) and when the Hub cannot be reached
        _unreachable = True
        raise OfflineError(
            f"{repo_type} '{repo_id}' file '{filename}' is not in the local Hugging Face cache and the Hub "
            f"cannot be reached: pass {instead} instead."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise FileNotFoundError(f"{repo_type} '{repo_id}' (revision {revision or 'main'}) has no file '{filename}': {e}") from None
