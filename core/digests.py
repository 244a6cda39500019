"""
Digests of files and records: what a run directory, the feature store, the data cache and a model's identity check
content by. A file is hashed once per process while its size and mtime stay the same (a model's weights are large).
"""
import hashlib
import json
from pathlib import Path

_digests = {}  # (path, size, mtime) -> sha256: a model's weights are hashed once per process


def sha256_file(path):
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def sha256_json(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def files_sha256(directory):
    """One sha256 over the model and tokenizer files of a directory, by name and content."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".txt", ".bpe"))
    return sha256_json({p.name: sha256_file(p) for p in files})
