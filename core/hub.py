"""The one place w2s talks to the Hugging Face Hub: resolve a file to a local path, list a repo's files, or say in
one sentence what to pass instead when the Hub cannot be reached."""
import os
from pathlib import Path

from huggingface_hub import constants, get_session, hf_hub_download, list_repo_files
from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                    RevisionNotFoundError)
from huggingface_hub.file_download import repo_folder_name

from core.cli import UserError


class OfflineError(UserError, RuntimeError):
    """The file is neither local nor in the Hub cache, and the Hub cannot be reached."""


# None until asked, then False (reachable) or why not ("ConnectError: ..."): asked once per process, so that no file
# spends huggingface_hub's ~25 s of connection retries (5 per request, up to 8 s apart) before failing the same way
_unreachable = None
# seconds the probe waits for the Hub's answer (a working link answers in well under one); the name lookup before
# it is the system resolver's, unbounded here
PROBE_TIMEOUT = float(os.environ.get("W2S_HUB_TIMEOUT", 3))


def reachable():
    """Can the Hub be reached? One HEAD request to its endpoint (HF_ENDPOINT) through huggingface_hub's own client
    (its proxies and certificates), PROBE_TIMEOUT seconds at most, without retries, asked once per process. Any HTTP
    answer counts as reachable; offline mode (HF_HUB_OFFLINE=1) answers no at once."""
    global _unreachable
    if _unreachable is None:
        if constants.HF_HUB_OFFLINE:
            mark_unreachable("HF_HUB_OFFLINE is set")
        else:
            try:
                get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT)
                _unreachable = False
            except Exception as e:  # refused, timed out, no DNS, TLS or proxy failure: all "not from here"
                mark_unreachable(type(e).__name__ + (f": {e}" if str(e) else ""))
    return not _unreachable


def mark_unreachable(why):
    """From now on this process is offline, huggingface_hub included: its own requests (retries, and a user-agent
    registry it fetches with a 3 s timeout even for local_files_only) then end at once."""
    global _unreachable
    _unreachable = _unreachable or why
    constants.HF_HUB_OFFLINE = True


def why_unreachable():
    return f"the Hub ({constants.ENDPOINT}) cannot be reached ({_unreachable or 'no answer'})"


def hub_file(repo_id, filename, revision=None, repo_type="model", instead="a local directory"):
    """Path to `filename` of a Hub repo, from the huggingface_hub cache (HF_HOME, HF_HUB_OFFLINE and
    revisions honoured) or downloaded once into it. `instead` names what the user can pass instead."""
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, repo_type=repo_type,
                                    local_files_only=not reachable()))
    except LocalEntryNotFoundError as e:
        # raised both offline (HF_HUB_OFFLINE=1) and when the Hub cannot be reached
        mark_unreachable(type(e).__name__)
        raise OfflineError(
            f"{repo_type} '{repo_id}' file '{filename}' is not in the local Hugging Face cache and "
            f"{why_unreachable()}: pass {instead} instead."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise FileNotFoundError(f"{repo_type} '{repo_id}' (revision {revision or 'main'}) has no file '{filename}': {e}") from None


def repo_files(repo_id, repo_type="model", revision=None):
    """Names of a Hub repo's files, from the Hub; when it cannot be reached, those of the cached snapshot (the files
    once downloaded, possibly none) instead of retrying."""
    if reachable():
        return list_repo_files(repo_id, repo_type=repo_type, revision=revision)
    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    ref = folder / "refs" / (revision or constants.DEFAULT_REVISION)
    snapshot = folder / "snapshots" / (ref.read_text().strip() if ref.is_file() else str(revision))
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
