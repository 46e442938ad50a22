"""The Neuron compiler's arguments: what a run compiles with by default, how neuronx-cc reads them, and the parity
a graph it casts to 16 bits is held to (docs/neuron.md, "Compiler arguments and parity").
"""

from __future__ import annotations

# Spelled out, so a run compiles the same on old and new neuronx-cc (its --auto-cast default changed).
TUTORIAL_COMPILER_ARGS = ("--auto-cast", "matmult", "--auto-cast-type", "bf16")

# python -m tools.bf16_tolerance (stand-in BF16 graph of the embedded model, 216 golden + MRPC dev pairs
# at 128 tokens): healthy, largest |score diff| 2.0e-3 and |probability diff| 9.6e-4; x5 for margin.
# A dropped attention mask moves scores by 0.81 (probabilities 0.36). docs/neuron.md, "Compiler arguments and parity".
BF16_PARITY_TOLERANCE = 0.01


def auto_cast_type(backend: str, compiler_args: list[str]) -> str | None:
    """The 16-bit type neuronx-cc casts to under these arguments, or None when the graph stays fp32.

    Read the way neuronx-cc reads them: --auto-cast none|matmult|all (absent: none, since Neuron 2.27),
    --auto-cast-type bf16|fp16|tf32|fp8_e4m3 (absent: bf16). Only the neuron backend compiles with them.
    """
    if backend != "neuron":
        return None
    values: dict[str, str] = {}
    for index, arg in enumerate(compiler_args):
        name, _, inline = arg.partition("=")
        if name in ("--auto-cast", "--auto-cast-type"):
            values[name] = inline or (compiler_args[index + 1] if index + 1 < len(compiler_args) else "")
    if values.get("--auto-cast", "none") == "none":
        return None
    return values.get("--auto-cast-type") or "bf16"
