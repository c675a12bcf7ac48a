"""Per-layer widths: ``--layer-bits SPEC`` on top of a simulated ``--quantize wXaY``.

SPEC is a comma list of ``NAME=wXaY`` (or a JSON file holding the same map), NAME being a
layer of the converted model (``features.1.depthwise``, ``layer2.0.conv2``, ``fc``) or the
alias ``first`` or ``last``. A layer's ``aY`` is the width of the activation it reads (its
input): ``last=w8a8`` keeps the classifier's weights and the pooled features it reads at 8
bits, the usual recipe. Torch-free: the command line checks a SPEC before any work.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import UserError

from .scheme import QuantScheme, parse_scheme

ALIASES = ("first", "last")
Bits = tuple[int, int]  # (weight bits, activation bits)


def parse_layer_bits(text: str) -> dict[str, str]:
    """``{NAME: "wXaY"}`` from SPEC (a comma list, or a JSON file of that map), in the
    order given; one sentence for a malformed entry, a name given twice or a bad width."""
    text = str(text).strip()
    if text.endswith(".json") or Path(text).is_file():
        return _checked(_read_json(Path(text)), f"--layer-bits {text}")
    entries: dict[str, str] = {}
    for entry in (part.strip() for part in text.split(",")):
        name, sep, scheme = (piece.strip() for piece in entry.partition("="))
        if not sep or not name or not scheme:
            raise UserError(
                f"--layer-bits entry {entry!r} is not NAME=wXaY (e.g. first=w8a8,last=w8a8)"
            )
        if name in entries:
            raise UserError(f"--layer-bits gives layer {name!r} twice")
        entries[name] = scheme
    return _checked(entries, "--layer-bits")


def _read_json(path: Path) -> dict:
    def pairs(items: list) -> dict:
        seen: dict = {}
        for key, value in items:
            if key in seen:
                raise UserError(f"--layer-bits file {path} gives layer {key!r} twice")
            seen[key] = value
        return seen

    try:
        data = json.loads(path.read_text(), object_pairs_hook=pairs)
    except FileNotFoundError:
        raise UserError(f"--layer-bits file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--layer-bits file {path} is not readable JSON ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise UserError(f'--layer-bits file {path} must hold one map {{"NAME": "wXaY", ...}}')
    return data


def _checked(entries: dict[str, str], what: str) -> dict[str, str]:
    if not entries:
        raise UserError(f"{what} names no layer")
    for name, scheme in entries.items():
        parsed = parse_scheme(scheme)  # a width outside 2-16 bits is one sentence here
        if not parsed.simulated:
            entries[name] = "w8a8"  # int8 means 8-bit weights and activations here
    return {name: parse_scheme(scheme).name for name, scheme in entries.items()}


def resolve_layer_bits(
    spec: dict[str, str] | None, layer_names: list[str], default: QuantScheme
) -> dict[str, Bits]:
    """Every layer's (weight bits, activation bits): the scheme's, or SPEC's for the layers
    it names (aliases resolved); one sentence for an unknown name or a layer given twice
    (by its name and by an alias)."""
    bits = {name: (default.weight_bits, default.activation_bits) for name in layer_names}
    given: dict[str, str] = {}
    for raw, scheme in (spec or {}).items():
        name = _layer_of(raw, layer_names)
        if name in given:
            raise UserError(
                f"--layer-bits gives layer {name} twice (as {given[name]!r} and as {raw!r})"
            )
        given[name] = raw
        parsed = parse_scheme(scheme)
        bits[name] = (parsed.weight_bits, parsed.activation_bits)
    return bits


def explicit_layers(spec: dict[str, str] | None, layer_names: list[str]) -> set[str]:
    """The layers SPEC names (aliases resolved)."""
    return {_layer_of(raw, layer_names) for raw in spec or {}}


def _layer_of(raw: str, layer_names: list[str]) -> str:
    if raw == "first":
        return layer_names[0]
    if raw == "last":
        return layer_names[-1]
    if raw in layer_names:
        return raw
    close = [name for name in layer_names if raw in name or name in raw][:3]
    hint = f"; close: {', '.join(close)}" if close else ""
    raise UserError(
        f"--layer-bits names {raw!r}, which is not a quantized layer of this model "
        f"(its layers run {layer_names[0]} ... {layer_names[-1]}, or say first/last{hint})"
    )


def weight_bits_mean(bits: dict[str, Bits], parameters: dict[str, int]) -> float:
    """The mean weight bits over every quantized layer, weighted by its parameter count."""
    total = sum(parameters[name] for name in bits)
    return sum(bits[name][0] * parameters[name] for name in bits) / total


def bits_names(bits: dict[str, Bits]) -> dict[str, str]:
    """``{layer: "wXaY"}`` as results.json records it."""
    return {name: f"w{w}a{a}" for name, (w, a) in bits.items()}
