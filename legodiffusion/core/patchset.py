"""A LoRA patch set as requests and workflows spell it, parsed the same way by the runtime and the simulator."""

from __future__ import annotations

#: the components a LoRA patch set applies to (the others run unpatched)
PATCHABLE = ("denoiser", "text_encoder")


def parse_patches(spec: str | None) -> tuple[tuple[str, float], ...]:
    """``"name[:weight],..."`` -> ((name, weight), ...), sorted by name so equal sets compare equal."""
    if not spec:
        return ()
    out = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition(":")
        try:
            out[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"LoRA {part!r}: weight must be a number (NAME[:WEIGHT])") from None
    return tuple(sorted(out.items()))
