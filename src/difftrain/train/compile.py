"""train.compile: torch.compile the backbone in place, after checking that inductor can build."""

from __future__ import annotations

from torch import nn

from difftrain.config import ConfigError


def check_compiler() -> str:
    """The C++ compiler torch.compile's inductor backend will use; ConfigError when there is none.

    Inductor generates C++ for CPU kernels (and Triton's launcher needs a C compiler on GPUs); it
    looks for $CXX, else g++ (clang++ on macOS).
    """
    from torch._inductor import config as inductor_config
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        return get_cpp_compiler()
    except Exception as err:  # inductor raises its own InvalidCxxCompiler / RuntimeError
        wanted = [c for c in inductor_config.cpp.cxx if c] or ["g++"]
        raise ConfigError(
            f"train.compile = true needs a C++ compiler for torch.compile's inductor backend; "
            f"none found (looked for {', '.join(map(str, wanted))}: {type(err).__name__}). "
            "Install one (e.g. apt-get install g++) or point $CXX at it, or set "
            "train.compile = false"
        ) from None


def compile_backbone(denoiser: nn.Module) -> None:
    """Compile the backbone in place (nn.Module.compile): weight names, checkpoints unchanged."""
    check_compiler()
    getattr(denoiser, "backbone", denoiser).compile()
