"""Files of a given size in the formats the product accepts, for tests and benchmarks of upload paths
(size and format matter there, not the weights)."""

from __future__ import annotations

import json
import os


def lora_safetensors(data_bytes: int) -> bytes:
    """A valid safetensors file named as a kohya LoRA (one ``U8`` tensor of ``data_bytes`` random bytes)."""
    header = json.dumps(
        {
            "lora_unet_x.lora_down.weight": {
                "dtype": "U8",
                "shape": [data_bytes],
                "data_offsets": [0, data_bytes],
            }
        }
    ).encode()
    return len(header).to_bytes(8, "little") + header + os.urandom(data_bytes)
