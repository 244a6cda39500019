"""The one place w2s talks to the Hugging Face Hub: resolve a file to a local path, or say in one
sentence what to pass instead when the Hub cannot be reached."""
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError


class OfflineError(RuntimeError):
    """The file is neither local nor in the Hub cache, and the Hub cannot be reached."""


# set once the Hub could not be reached: later files come from the cache only, instead of each one spending
# huggingface_hub's ~25 s of connection retries before failing the same way
_unreachable = False


def hub_file(repo_id, filename, revision=None, repo_type="model", instead="a local directory"):
    """Path to `filename` of a Hub repo, from the huggingface_hub cache (HF_HOME, HF_HUB_OFFLINE and
    revisions honoured) or downloaded once into it. `instead` names what the user can pass instead."""
    global _unreachable
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, repo_type=repo_type,
                                    local_files_only=_unreachable))
    except LocalEntryNotFoundError:
        # raised both offline (HF_HUB_OFFLINE=1) and when the Hub cannot be reached
        _unreachable = True
        raise OfflineError(
            f"{repo_type} '{repo_id}' file '{filename}' is not in the local Hugging Face cache and the Hub "
            f"cannot be reached: pass {instead} instead."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise FileNotFoundError(f"{repo_type} '{repo_id}' (revision {revision or 'main'}) has no file '{filename}': {e}") from None
