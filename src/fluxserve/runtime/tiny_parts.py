"""What every tiny model shares, whatever its family: the seed, the schedule settings and
the byte table the offline byte-level tokenizers are built on."""

from __future__ import annotations

SEED = 0

# FLUX.1 [dev]'s schedule settings (FLUX.2's pipelines compute their own shift from them).
SCHEDULER = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
    "max_shift": 1.15, "shift": 3.0, "use_dynamic_shifting": True,
}  # fmt: skip


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-printable-character table, which CLIP's byte-level BPE uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))
