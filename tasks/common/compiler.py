"""The Neuron compiler's arguments: what a run compiles with by default, how neuronx-cc reads them, and the parity
a graph it casts to 16 bits is held to (docs/neuron.md, "Compiler arguments and parity").
"""

from __future__ import annotations

# Spelled out, so a run compiles the same on old and new neuronx-cc (its --auto-cast default changed).
TUTORIAL_COMPILER_ARGS = ("--auto-cast", "matmult", "--auto-cast-type", "bf16")

# python -m tools.bf16_tolerance: --auto-cast matmult --auto-cast-type bf16 emulated on the CPU (every matrix
# multiply with bf16 operands, fp32 accumulation) on the embedded model over the MSR Paraphrase training split
# (3,674 pairs): largest |score diff| 2.18e-3, |probability diff| 1.09e-3. The tolerance is BF16_MARGIN x the
# larger, rounded up to two significant figures; a dropped attention mask moves scores by up to 0.47. docs/neuron.md,
# "Compiler arguments and parity", has the method.
BF16_MARGIN = 5
BF16_EMULATED_DRIFT = 2.18e-3
BF16_PARITY_TOLERANCE = 0.011


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
