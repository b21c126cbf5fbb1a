"""An independent, minimal writer of the dashboards format, for testing the reader (not tl_clt's builder).

It follows the format as circuit-tracer's frontend reads it (util.js / init-feature-examples.js):
`index.json.gz` = gzip JSON list per layer `{filename, offsets}`; a record = little-endian uint32 length
+ zlib(JSON). Records are made by hand.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path


def hand_record(layer: int, feature: int) -> dict:
    """A small record whose content encodes (layer, feature), with non-ASCII and escaped-byte tokens."""
    act = round(1.0 + layer + feature / 10, 3)
    return {
        "index": feature,
        "examples_quantiles": [
            {
                "quantile_name": "Top activations",
                "examples": [
                    {
                        "tokens": ["The", " year", f" {2000 + feature}", " café", "\\xe2"],
                        "tokens_acts_list": [0.0, 0.5, act, 0.25, 0.0],
                        "train_token_ind": 2,
                        "is_repeated_datapoint": False,
                    },
                    {
                        "tokens": ["In", f" L{layer}"],
                        "tokens_acts_list": [act / 2, 0.0],
                        "train_token_ind": 0,
                        "is_repeated_datapoint": True,
                    },
                ],
            },
            {"quantile_name": "Interval 0", "examples": []},
        ],
        "top_logits": [f" up{layer}_{feature}", " Obama"],
        "bottom_logits": [f" down{layer}_{feature}"],
        "act_min": 0.0,
        "act_max": act + 1,
        "quantile_values": [act / 4, act / 2, act],
        "histogram": [3, 2, 1, 0],
        "activation_frequency": feature / 1000,
    }


def write_folder(folder: Path, n_layers: int = 3, n_features: int = 5, index_as_dict: bool = False) -> dict:
    """Write hand-made records; returns {(layer, feature): record}."""
    folder.mkdir(parents=True, exist_ok=True)
    records, index = {}, []
    for layer in range(n_layers):
        blob, offsets = b"", [0]
        for feature in range(n_features):
            record = records[layer, feature] = hand_record(layer, feature)
            body = zlib.compress(json.dumps(record).encode("utf-8"))
            blob += struct.pack("<I", len(body)) + body
            offsets.append(len(blob))
        (folder / f"layer_{layer}.bin").write_bytes(blob)
        index.append({"filename": f"layer_{layer}.bin", "offsets": offsets})
    if index_as_dict:
        index = {str(i): entry for i, entry in enumerate(index)}
    (folder / "index.json.gz").write_bytes(gzip.compress(json.dumps(index).encode()))
    return records
