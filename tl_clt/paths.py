"""Where models and CLTs come from: a local folder, or a Hugging Face hub id fetched into the cache.

Every loader resolves names here, and the CLI checks them with the same rule (`is_hub_id`).
"""

from __future__ import annotations

import os
from pathlib import Path


def is_hub_id(name: str | os.PathLike) -> bool:
    """True when `name` reads as a hub id 'owner/name', not as a local path (existing or path-like)."""
    name = str(name)
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return False
    return name.count("/") == 1


def resolve_folder(name_or_path: str | os.PathLike, allow_patterns: list[str]) -> Path:
    """A local folder as is; otherwise a hub id fetched (or found in the cache) by huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if not is_hub_id(name):
        raise FileNotFoundError(
            f"{name!r} is neither a local folder nor a hub id of the form 'owner/name'. "
            "Pass the folder that holds config.json (or config.yaml for a CLT), or a hub id."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=allow_patterns))
    except Exception as err:  # network, auth, offline cache miss
        why = (str(err).strip().splitlines() or [""])[0][:160]
        what = (
            "config.yaml and the W_enc_*/W_dec_* files"
            if "config.yaml" in allow_patterns
            else "config.json and the *.safetensors weights"
        )
        raise FileNotFoundError(  # short: the hub's own traceback is left out (`from None`)
            f"Could not fetch {name!r} from the Hugging Face hub ({type(err).__name__}: {why}). "
            f"Pass a local folder instead (the one holding {what}), or try tl_clt without downloads: "
            "tl_clt.toyworld.load_toyworld() in Python, `tl-clt demo` on the command line."
        ) from None
